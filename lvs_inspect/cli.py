"""The one command line: ``lvs-inspect SUBCOMMAND ...``.

Exit status: 0 success (nothing at or above --fail-on), 1 findings, 2 the tool could not do
its job (one line on stderr naming the file and where).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from . import __version__
from .errors import InputError

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2
FORMAT_CHOICES = ("text", "json", "jsonl", "junit", "sarif", "github", "markdown")


def _add_trace_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--toa-kind", type=int, action="append", metavar="KIND",
                   help="extra TCP option kind to decode as TOA (254, 253 and 200 always are)")
    p.add_argument("--gue-port", type=int, action="append", metavar="PORT",
                   help="UDP port carrying GUE (default 6080)")
    p.add_argument("--no-checksums", action="store_true", help="skip checksum verification")


def _reader_kwargs(args) -> dict:
    kinds = (254, 253, 200) + tuple(args.toa_kind or ())
    return {"toa_kinds": kinds, "gue_ports": tuple(args.gue_port or (6080,)),
            "checksums": not args.no_checksums}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvs-inspect",
        description="Packet-trace analyzer and mode validator for LVS/IPVS, FullNAT and DPVS.")
    parser.add_argument("--version", action="version", version=f"lvs-inspect {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("frames", help="decode traces: per-input accounting and one line per frame",
                       description="Decode pcap/pcapng traces (plain, gzip or '-' for stdin) and show "
                                   "how every frame was accounted for, then the frames themselves.")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="show at most N frames")
    p.add_argument("--summary", action="store_true", help="only the accounting, no frame lines")
    p.add_argument("--columns", metavar="A,B,...", help="csv: the columns to write (default: all)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    _add_trace_options(p)
    p.set_defaults(func=cmd_frames)

    p = sub.add_parser("audit", help="check every hop of every connection against the mode's rewrites",
                       description="Decode the traces, stitch every connection across hops and capture points, "
                                   "evaluate the rules (rules/*.yaml and --rules packs) and report the findings. "
                                   "Exit status: 0 nothing at or above --fail-on, 1 findings at or above it, "
                                   "2 the tool could not do its job.")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("-t", "--topology", metavar="TOPOLOGY",
                   help="topology.toml, ipvsadm -Sn/-Ln output or keepalived.conf (default: inferred from the trace)")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--fail-on", choices=("error", "warning", "info", "never"), default="error")
    p.add_argument("--select", metavar="CODES", help="only these rules (codes or prefixes, comma-separated)")
    p.add_argument("--ignore", metavar="CODES", help="skip these rules (codes or prefixes, comma-separated)")
    p.add_argument("--rules", metavar="DIR", action="append", default=[], help="an extra rule pack (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    _add_trace_options(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("rules", help="the documentation of the rules",
                       description="Without CODE: the index of every rule. With CODE (or a name): its full "
                                   "documentation. --names SCOPE lists what a rule of that scope may use.")
    p.add_argument("code", nargs="?", metavar="CODE")
    p.add_argument("--rules", metavar="DIR", action="append", default=[], help="an extra rule pack (repeatable)")
    p.add_argument("--names", metavar="SCOPE", help="list the names of a scope (packet, pair, connection, arp, service)")
    p.set_defaults(func=cmd_rules)

    p = sub.add_parser("infer", help="propose a topology (TOML) from a bare trace",
                       description="Read the traces and propose a complete topology: services, real "
                                   "servers and their modes, the director's MACs and addresses, the profile "
                                   "and the role of every capture point, each with its evidence and a "
                                   "confidence as comments in the TOML it writes.")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("-o", "--output", metavar="FILE", help="write the TOML to FILE (default: stdout)")
    _add_trace_options(p)
    p.set_defaults(func=cmd_infer)
    return parser


def cmd_audit(args) -> int:
    from .checks.engine import audit
    from .report import exit_code, render

    show = sys.stderr.isatty() and not args.no_progress

    def progress(msg: str) -> None:
        if show:
            print(f"\rlvs-inspect: {msg}...\033[K", end="", file=sys.stderr, flush=True)

    kw = _reader_kwargs(args)
    result = audit(args.traces, topology_path=args.topology, rule_dirs=args.rules, select=args.select,
                   ignore=args.ignore, toa_kinds=kw["toa_kinds"], gue_ports=kw["gue_ports"],
                   stdin=sys.stdin.buffer, progress=progress)
    if show:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    if args.format == "github":
        from .report import github
        out = github.outputs(result)
        text = out.annotations
        github.append_step_summary(out.summary)
    else:
        color = args.format == "text" and not args.output and sys.stdout.isatty()
        text = render(result, args.format, color=color)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return exit_code(result, args.fail_on)


def cmd_rules(args) -> int:
    from .checks.docs import render_index, render_namespace, render_rule
    from .checks.engine import namespaces
    from .checks.rules import load_rules
    from .resources import rules_dir

    if args.names:
        ns = namespaces()
        if args.names not in ns:
            raise InputError("--names", f"unknown scope '{args.names}'; one of {', '.join(ns)}")
        sys.stdout.write(render_namespace(args.names, ns[args.names]) + "\n")
        return EXIT_OK
    rules = load_rules([rules_dir(), *args.rules])
    if args.code is None:
        sys.stdout.write(render_index(rules) + "\n")
        return EXIT_OK
    want = args.code.upper()
    for r in rules:
        if r.code == want or r.name == args.code:
            sys.stdout.write(render_rule(r) + "\n")
            return EXIT_OK
    raise InputError(args.code, "no such rule; `lvs-inspect rules` lists them")


def cmd_infer(args) -> int:
    from .capture import read_table
    from .topology import dump_toml
    from .topology.infer import infer_topology

    table = read_table(args.traces, stdin=sys.stdin.buffer, **_reader_kwargs(args))
    try:
        topo = infer_topology(table, source=" ".join(args.traces))
    except ValueError as e:
        raise InputError(", ".join(args.traces), str(e)) from None
    text = dump_toml(topo)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_frames(args) -> int:
    from .capture import read_table
    from .report.frames import frame_lines

    table = read_table(args.traces, stdin=sys.stdin.buffer, **_reader_kwargs(args))
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        acct = table.accounting()
        if args.format == "json":
            rows = [] if args.summary else _limited(table.to_pandas(text=True), args.limit).to_dict("records")
            json.dump({"version": 1, "inputs": acct, "frames": rows}, out, indent=1, default=int)
            out.write("\n")
        elif args.format == "csv":
            cols = args.columns.split(",") if args.columns else None
            _limited(table.to_pandas(cols, text=True), args.limit).to_csv(out, index=False)
        else:
            for a in acct:
                out.write(_accounting_line(a) + "\n")
            if not args.summary:
                for line in frame_lines(table, limit=args.limit):
                    out.write(line + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return EXIT_OK


def _limited(df, limit):
    return df if limit is None else df.head(limit)


def _accounting_line(a: dict) -> str:
    kind = a["format"] + (" (gzip)" if a["compressed"] else "")
    parts = [f"{a['path']}: {kind}, {a['frames']} frames: {a['decoded']} decoded",
             f"{a['ignored']} ignored", f"{a['undecodable']} undecodable"]
    line = ", ".join(parts)
    if a["truncated"]:
        line += f" ({a['truncated']} cut by snaplen)"
    if a["interfaces"]:
        line += "; interfaces: " + ", ".join(a["interfaces"])
    reasons = {k: v for k, v in a["reasons"].items() if k != "snaplen"}
    if reasons:
        line += "; " + ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
    for d in a["damage"]:
        line += f"\n{a['path']}: byte {d['offset']}: damaged: {d['message']}"
    return line


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as e:
        print(f"lvs-inspect: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        try:
            sys.stdout = None  # silence the flush at exit
        finally:
            return EXIT_OK
    except KeyboardInterrupt:
        print("lvs-inspect: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        name = getattr(e, "filename", None) or "output"
        print(f"lvs-inspect: {name}: {e.strerror or e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
