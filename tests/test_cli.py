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


def _parsers(parser: argparse.ArgumentParser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, prefix + (name,))


#: Options several commands share, defined once in retrieval.commands.common (help, type, default, choices).
SHARED = ("--dataset", "--data-dir", "--device", "--seed", "--split-seed", "--index", "--quiet", "--exclude",
          "--pooling", "--projection", "--dim")


@pytest.mark.parametrize("flag", SHARED)
def test_a_shared_option_means_the_same_in_every_command(flag):
    found = {" ".join(path): action for path, parser in _parsers(build_parser()) for action in parser._actions
             if flag in action.option_strings}
    assert len(found) >= 2, f"{flag} is not shared"
    settings = {(a.help, a.type, repr(a.default), repr(a.choices), a.required) for a in found.values()}
    assert len(settings) == 1, f"{flag} differs between {', '.join(found)}"


def test_add_options_refuses_an_option_it_does_not_share():
    from retrieval.commands.common import add_options

    with pytest.raises(ValueError, match="epochs"):
        add_options(argparse.ArgumentParser(), "device", "epochs")
    with pytest.raises(ValueError, match="seed"):
        add_options(argparse.ArgumentParser(), "device", seed={"default": 1})


def test_method_lists_name_each_method_once(capsys):
    from hebb.recipes import UNTRAINED_METHODS, methods

    def listed(argv, start, end):
        with pytest.raises(SystemExit):
            main([*argv, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        return text.split(start, 1)[1].split(end, 1)[0]

    evaluated = listed(["evaluate"], "--methods METHODS comma-separated, from ", " (default").split(", ")
    assert evaluated == list(methods()) and len(set(evaluated)) == len(evaluated)
    rules = listed(["pretrain"], "--rule RULE learning rule: ", " --arch").split(" | ")
    assert rules == [m for m in methods() if m not in UNTRAINED_METHODS] and len(set(rules)) == len(rules)
