"""The command line: every sub-command explains itself, and bad input gives one line, not a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from retrieval.cli import build_parser, main

REQUIRED_COMMANDS = {"data", "pretrain", "finetune", "index", "search", "evaluate", "quickstart", "app"}


def _walk(parser: argparse.ArgumentParser, prefix=()):
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, prefix + (name,))


def test_all_design_commands_exist():
    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert REQUIRED_COMMANDS <= set(top.choices)


@pytest.mark.parametrize("path", list(_walk(build_parser())), ids=lambda p: " ".join(p) or "hebbir")
def test_every_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hebbir") and len(out.splitlines()) >= 3


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "retrieval.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "quickstart" in out.stdout


def test_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    code = main(["data", "import", "cifar10", str(tmp_path / "nowhere.tar.gz"), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hebbir: error:") and "nowhere.tar.gz" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
