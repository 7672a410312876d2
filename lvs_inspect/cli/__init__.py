"""The one command line: ``lvs-inspect SUBCOMMAND ...``.

Each subcommand lives in its own module here, with ``register(subparsers)`` and ``run(args)``.
Exit status: 0 success (nothing at or above --fail-on), 1 findings, 2 the tool could not do
its job (one line on stderr naming the file and where).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import InputError
from .common import EXIT_ERROR, EXIT_FINDINGS, EXIT_OK  # noqa: F401  (re-exported)

# the order `lvs-inspect --help` lists them in
COMMANDS = ("audit", "tui", "watch", "infer", "replay", "diff", "rules", "frames", "director", "lab")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvs-inspect",
        description="Packet-trace analyzer and mode validator for LVS/IPVS, FullNAT and DPVS.")
    parser.add_argument("--version", action="version", version=f"lvs-inspect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"lvs-inspect: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        sys.stdout = None  # silence the flush at exit
        return EXIT_OK
    except KeyboardInterrupt:
        print("lvs-inspect: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        name = getattr(e, "filename", None) or "output"
        print(f"lvs-inspect: {name}: {e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR
