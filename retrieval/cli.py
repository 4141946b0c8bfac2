"""The `hebbir` command line. Each sub-command lives in `retrieval/commands/<name>.py` with `register()`."""

from __future__ import annotations

import argparse
import importlib
import sys

from hebb.errors import UserError

#: Sub-command modules, in the order `hebbir --help` lists them.
COMMAND_MODULES = ["data", "train", "evaluate", "index", "search", "duplicates", "quickstart", "app"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hebbir",
        description="Content-based image retrieval on CNN features learned with fast Hebbian rules and few "
                    "labels. Start with `hebbir quickstart`, then `hebbir app`.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"retrieval.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"hebbir: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hebbir: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
