"""What every subcommand shares: exit codes, trace-decoding options."""
from __future__ import annotations

import argparse

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
FORMAT_CHOICES = ("text", "json", "jsonl", "junit", "sarif", "github", "markdown")


def add_trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--toa-kind", type=int, action="append", metavar="KIND",
                   help="extra TCP option kind to decode as TOA (254, 253 and 200 always are)")
    p.add_argument("--gue-port", type=int, action="append", metavar="PORT",
                   help="UDP port carrying GUE (default 6080)")
    p.add_argument("--no-checksums", action="store_true", help="skip checksum verification")


def reader_kwargs(args) -> dict:
    kinds = (254, 253, 200) + tuple(args.toa_kind or ())
    return {"toa_kinds": kinds, "gue_ports": tuple(args.gue_port or (6080,)),
            "checksums": not args.no_checksums}


TOPOLOGY_HELP = "topology.toml, ipvsadm -Sn/-Ln output or keepalived.conf"


def add_topology_option(p: argparse.ArgumentParser, default: str | None = "inferred from the trace") -> None:
    """``-t/--topology``; ``default=None`` makes it required."""
    p.add_argument("-t", "--topology", metavar="TOPOLOGY", required=default is None,
                   help=TOPOLOGY_HELP + (f" (default: {default})" if default else ""))


def add_rule_options(p: argparse.ArgumentParser, *, selection: bool = True) -> None:
    """``--select``/``--ignore`` (with ``selection``) and ``--rules DIR`` (repeatable)."""
    if selection:
        p.add_argument("--select", metavar="CODES", help="only these rules (codes or prefixes, comma-separated)")
        p.add_argument("--ignore", metavar="CODES", help="skip these rules (codes or prefixes, comma-separated)")
    p.add_argument("--rules", metavar="DIR", action="append", default=[], help="an extra rule pack (repeatable)")

