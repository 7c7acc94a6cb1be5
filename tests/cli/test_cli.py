import contextlib
import io
import logging

import pytest

from mlvos.cli import main
from mlvos.model.checkpoint import load_model


def test_model_info_prints_table(capsys):
    assert main(["model", "info", "--variant", "tiny", "stm-r50"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "stm-r50" in out and "params (M)" in out
    assert "--read-topk K --read-kernel SIGMA" in out  # the read priors are documented


def test_model_info_unknown_variant(capsys):
    assert main(["model", "info", "--variant", "nope"]) == 1
    assert "unknown variant 'nope'" in capsys.readouterr().err


def test_model_init_writes_seeded_checkpoint(tmp_path, capsys):
    out = tmp_path / "c.pt"
    assert main(["model", "init", "--variant", "tiny", "--out", str(out), "--seed", "5"]) == 0
    model, state = load_model(out)
    assert state["variant"] == "tiny" and state["extra"]["seed"] == 5
    # Refuses to overwrite without --force.
    assert main(["model", "init", "--variant", "tiny", "--out", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["model", "init", "--variant", "tiny", "--out", str(out), "--force"]) == 0


def test_env_runs(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for key in ("python", "numpy", "torch", "onnxruntime", "tensorrt", "gpu"):
        assert key in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2


@pytest.mark.parametrize("argv", [["--version"]])
def test_version(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0


def test_cli_logs_info_to_stdout_and_warnings_to_stderr(capsys, caplog):
    """main() configures the "mlvos" loggers: bare INFO lines on the current stdout, warnings on
    the current stderr, DEBUG hidden, nothing passed on to the root logger's handlers (caplog's);
    a second main() in the process adds no second handler."""
    assert main([]) == 2 and main([]) == 2  # no command: help, after configuring logging
    capsys.readouterr()
    progress = logging.getLogger("mlvos.export.api")
    progress.info("progress line")
    progress.debug("debug line")
    logging.getLogger("mlvos.runtime.backends.trt.build").warning("warning line")
    assert capsys.readouterr() == ("progress line\n", "warning line\n")
    assert not caplog.records
    # The stream is looked up per record: a later replacement of sys.stdout receives the lines.
    with contextlib.redirect_stdout(io.StringIO()) as buf:
        progress.info("redirected line")
    assert buf.getvalue() == "redirected line\n" and capsys.readouterr().out == ""


def test_every_option_of_every_command_has_help():
    """`mlvos <cmd> --help` explains every option (defaults and choices included)."""
    import argparse

    from mlvos.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                if not action.help:
                    missing.append(f"{' '.join(path)} {action.option_strings[0]}")

    walk(build_parser(), ["mlvos"])
    assert not missing, missing
