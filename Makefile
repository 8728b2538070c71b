# Two entry points for a fresh machine (see README):
#   make demo   -> create .venv if missing, install, run the embedded-benchmark demo
#   make test   -> create .venv if missing, install, run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python launch.py demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests $(ARGS)

clean:
	rm -rf results .pytest_cache
