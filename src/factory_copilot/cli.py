"""The ``factory-copilot`` command: one sub-command per job, each defined beside the station it drives.

Every module listed in COMMANDS has ``register(subparsers)`` that adds its
sub-command(s) and sets ``func`` (sync or async) on the parser. The simulator's modules (``SIMULATOR``, outside the
runtime package) are imported only for their own commands and for the list of them all (``--help``): ``run``
and the other commands of a real line never load the simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import shlex
import shutil
import sys
from pathlib import Path

from factory_copilot import __version__
from factory_copilot.config import LineConfigError
from factory_copilot.plumbing.logs import setup_logging
from factory_copilot.plumbing.postgres import BadUrl, Unavailable, WrongRole

# module paths, in the order their sub-commands are listed in --help
COMMANDS: list[str] = [
    "simulators.cli",
    "factory_copilot.collect.cli",
    "factory_copilot.detect.cli",
    "factory_copilot.alarms.cli",
    "factory_copilot.publish.tail",
    "factory_copilot.plumbing.broker_site",
    "factory_copilot.copilot.explain",
    "factory_copilot.copilot.explainer",
    "factory_copilot.copilot.knowledge",
    "factory_copilot.copilot.model_files",
    "factory_copilot.copilot.incidents",
    "factory_copilot.check",
    "factory_copilot.service",
    "simulators.demo",
    "factory_copilot.store.cli",
    "factory_copilot.shift.cli",
    "factory_copilot.agents.cli",
]
# the simulator's modules in COMMANDS, and the sub-commands each registers (tests/test_architecture.py checks them)
SIMULATOR: dict[str, tuple[str, ...]] = {"simulators.cli": ("simulate",), "simulators.demo": ("demo",)}


def command() -> str:
    """How to run this CLI from here, as a user can type it in the shell that started it: ``factory-copilot`` when the
    shell finds this install's, else the path of this install's script (``.venv/bin/factory-copilot`` after the quick
    start, whose virtual environment is not on the PATH), else ``python -m factory_copilot.cli``."""
    script = Path(sys.executable).with_name("factory-copilot")  # a console script sits beside its interpreter
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m factory_copilot.cli"
    found = shutil.which("factory-copilot")
    if found and Path(found).resolve() == script.resolve():
        return "factory-copilot"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


def parse_user(text: str) -> tuple[str, str]:
    """``--user NAME:PASSWORD`` for the commands that connect to (or serve) OPC UA and MQTT."""
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError(f"--user {text!r}: expected NAME:PASSWORD")
    return name, password


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv`` (the arguments after the program name): without the simulator's modules unless
    ``argv`` names one of their commands, or none (the list of commands), or one the others do not know (the error
    lists them all). ``argv`` None: every command."""
    command = _command_in(argv) if argv is not None else None
    if command is None or any(command in names for names in SIMULATOR.values()):
        return _parser(with_simulator=True)
    parser = _parser(with_simulator=False)
    if command not in _subcommands(parser):
        return _parser(with_simulator=True)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The sub-command ``argv`` names, read past the options that come before it (None if it names none); a misread
    (an abbreviated option) is no command the others know, so it costs the simulator's import, not the command."""
    args = iter(argv)
    for arg in args:
        if arg == "--log-level":
            next(args, None)  # its value
        elif not arg.startswith("-"):
            return arg
    return None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _parser(with_simulator: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="factory-copilot", description="Factory Copilot: an edge copilot for factory-line diagnostics."
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--log-level", default=None,
                        help="DEBUG, INFO, WARNING (default INFO; WARNING for the report commands train and evaluate, "
                             "whose --verbose gives INFO)")
    parser.add_argument("--log-json", action="store_true", help="structured JSON log lines (for services)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for path in COMMANDS:
        if with_simulator or path not in SIMULATOR:
            importlib.import_module(path).register(sub)
    return parser


def log_level(args: argparse.Namespace) -> str:
    """The level asked for; else a report command's own quiet default (its output is its report), which its
    ``--verbose`` lifts to INFO; else INFO, as a service logs."""
    if args.log_level:
        return args.log_level
    if getattr(args, "verbose", False):
        return "INFO"
    return getattr(args, "default_log_level", "INFO")


def report_command(parser: argparse.ArgumentParser) -> None:
    """Make a sub-command a report: its standard output is the report alone, its log lines go to standard error at
    WARNING unless ``--verbose`` (or ``--log-level``) asks for more, as a compiler or a test runner keeps its
    progress out of what it prints."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what it does (INFO) to standard error; by default only warnings and errors")
    parser.set_defaults(default_log_level="WARNING")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(log_level(args), args.log_json)
    try:
        result = args.func(args)
        if inspect.iscoroutine(result):
            result = asyncio.run(result)
    except LineConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BadUrl as exc:  # a store URL (the line file's, or given) that names no server
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WrongRole as exc:  # the store's role may not act for this line: the owner must bind it first
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Unavailable as exc:  # the line file's store.url: a server that does not answer
        print(f"error: the store's database is unavailable: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        # the store's server answered no (a role without the grant, a read-only role asked to write): one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"error: the store's database refused it ({type(exc).__name__}): {first}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
