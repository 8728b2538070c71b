"""launch.py: one-line errors with the fix, and --help with an example on every subcommand."""
import pytest

import launch
from tests.conftest import tiny_overrides
from tests.test_eval_cli import one_line_error


def test_missing_config(capsys):
    one_line_error(capsys, ["train", "--config", "missing.yaml"], "config file 'missing.yaml' not found")


def test_address_pointing_at_nothing(capsys, tiny_shards, tmp_path):
    # inputs exist (they are checked first, before Ray): the unreachable address is the error
    one_line_error(capsys, ["train", "--config", "configs/tiny.yaml", "--address", "127.0.0.1:1",
                            *tiny_overrides(tiny_shards, tmp_path / "runs")],
                   "no Ray cluster at 127.0.0.1:1")


def test_unknown_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.main(["trian"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown subcommand 'trian'" in err and "train" in err


def test_bad_override(capsys):
    one_line_error(capsys, ["train", "--config", "configs/tiny.yaml", "loss.bta=0.1"], "did you mean 'loss.beta'")


@pytest.mark.parametrize("command", launch.COMMANDS)
def test_help_has_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        launch.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out.lower() and f"launch.py {command}" in out


def test_building_the_parser_imports_none_of_the_heavy_libraries():
    """`--help` (and the parse before every command) stays under a second: no subcommand's
    parser imports torch, torchvision or Ray Train / Tune / Data (each command imports what it
    needs when it runs, MLflow included; optuna's top-level import is cheap and lazy, so it may come along)."""
    import subprocess
    import sys
    from pathlib import Path

    heavy = ["torch", "torchvision", "ray.train", "ray.tune", "ray.data", "mlflow"]
    code = ("import sys, launch; launch.build_parser(); "
            f"print(' '.join(m for m in {heavy!r} if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=Path(launch.__file__).parent, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "", f"building the parser imported: {run.stdout.strip()}"
