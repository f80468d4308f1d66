"""The ``rnnfast`` command. Each sub-command lives in its own module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "bench": ("rnnfast.benchmark", "benchmark rnnfast against PyTorch and ONNX Runtime"),
    "info": ("rnnfast.commands", "describe a model file (layers, shapes, parameters, format)"),
    "convert": ("rnnfast.commands", "convert a supported model file to the native format"),
    "run": ("rnnfast.commands", "run a model on a .npy input"),
    "generate": ("rnnfast.commands", "generate text with the shipped character-level model"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rnnfast", description="Fast CPU recurrent networks.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --help, and errors for unknown commands, exit here
        parser.print_help()
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"rnnfast {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser, name) if _takes_name(module) else module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    args.command = name
    return int(module.run(args) or 0)


def _takes_name(module) -> bool:
    import inspect

    return len(inspect.signature(module.add_arguments).parameters) == 2


if __name__ == "__main__":
    sys.exit(main())
