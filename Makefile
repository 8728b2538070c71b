# Two entry points for a fresh machine (see README):
#   make demo   -> create .venv if missing, install, run the embedded-benchmark demo
#   make test   -> create .venv if missing, install, run the test suite
#   make mlflow-ui -> the MLflow web UI on the runs the commands logged (./mlflow.db; STORE=... for another)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean mlflow-ui

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python launch.py demo $(ARGS)

# the suite in four pytest processes (tests/suite.py says why); ARGS go to pytest
test: $(STAMP)
	$(BIN)/python -m tests.suite $(ARGS)

# The UI is the full `mlflow` package (its own venv: it pins pyarrow<26, which this project's
# environment does not need); installed on first use, then `mlflow ui` on the local store.
UI_VENV := .venv-mlflow-ui
STORE ?= sqlite:///mlflow.db
mlflow-ui:
	test -x $(UI_VENV)/bin/mlflow || ($(PY) -m venv $(UI_VENV) && $(UI_VENV)/bin/python -m pip install -q "mlflow==3.17.2")
	$(UI_VENV)/bin/mlflow ui --workers 1 --backend-store-uri $(STORE) $(ARGS)

clean:
	rm -rf results .pytest_cache
