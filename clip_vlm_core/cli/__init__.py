"""`clip-vlm`: the command line, a thin shell over the library.

Each subcommand lives in its own module with a `register(subparsers)` function that adds its parser
and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from clip_vlm_core import __version__
from clip_vlm_core.errors import UserError

# Subcommand modules, in the order `--help` lists them. A module that is not there yet is skipped.
SUBCOMMANDS = ("caption", "ask", "data", "train", "eval", "bag", "label", "bench")  # label: also `search`


class CommandParser(argparse.ArgumentParser):
    """Every clip-vlm parser, its subcommands' included (argparse makes them of their parent's class):
    descriptions and epilogs keep their line breaks, for the examples they hold."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="clip-vlm",
        description="Describe in plain language what a car's cameras see: caption images, answer questions, build data, "
        "train, evaluate, convert or replay nuScenes rosbags, and label and search a fleet's bags.",
        epilog="Run 'clip-vlm COMMAND --help' for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"clip-vlm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"clip_vlm_core.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"clip_vlm_core.cli.{name}":
                continue
            if not exc.name or exc.name.startswith("clip_vlm_core"):
                raise
            # A library only this command needs is not installed (a GPU machine without rosbags, say): the
            # other commands still work, and this one says what it lacks when it is run.
            _register_missing(subparsers, name, exc.name.split(".")[0])
            continue
        module.register(subparsers)
    return parser


def _register_missing(subparsers: argparse._SubParsersAction, name: str, package: str) -> None:
    def refuse(args: argparse.Namespace) -> int:
        raise UserError(f"this command needs the Python package {package!r}, which is not installed here "
                        f"(pip install -e . installs every dependency)")

    parser = subparsers.add_parser(name, help=f"(unavailable: needs {package})", add_help=False)
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(func=refuse)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Third-party libraries stay at WARNING (open_clip logs every load step at INFO); ours says more.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("clip_vlm_core").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a reader that went away shows up here, not at exit
        return code
    except UserError as exc:
        print(f"clip-vlm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clip-vlm {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`clip-vlm bag info BAG | head`): stop quietly, as command-line
        # tools do on SIGPIPE, with the shell's status for it. stdout goes to devnull so that Python's own
        # flush at exit does not fail again (the recipe of the signal module's documentation).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
