"""A tiny sub-command dispatcher shared by `python -m cxrcore` and `python -m data_prep`."""
from __future__ import annotations

import argparse
import importlib
import sys


def dispatch(commands: dict[str, tuple[str, str]], prog: str, description: str, argv: list[str] | None = None) -> int:
    """Run one command; `commands` maps name -> (module, help) and each module has add_arguments and main."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    argv = sys.argv[1:] if argv is None else argv
    for name, (module_name, help_text) in commands.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:  # import only the command being run: `--help` stays fast
            importlib.import_module(module_name).add_arguments(command_parser)
    args = parser.parse_args(argv)
    return int(importlib.import_module(commands[args.command][0]).main(args) or 0)
