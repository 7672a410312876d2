"""``lvs-inspect frames``: decode traces, show the accounting and the frames."""
from __future__ import annotations

import contextlib
import json
import sys

from .common import EXIT_OK, add_trace_options, reader_kwargs


def register(sub) -> None:
    p = sub.add_parser("frames", help="decode traces: per-input accounting and one line per frame",
                       description="Decode pcap/pcapng traces (plain, gzip or '-' for stdin) and show "
                                   "how every frame was accounted for, then the frames themselves.")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="show at most N frames")
    p.add_argument("--summary", action="store_true", help="only the accounting, no frame lines")
    p.add_argument("--columns", metavar="A,B,...", help="csv: the columns to write (default: all)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    add_trace_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..capture import read_table
    from ..report.frames import frame_lines

    table = read_table(args.traces, stdin=sys.stdin.buffer, **reader_kwargs(args))
    with open(args.output, "w") if args.output else contextlib.nullcontext(sys.stdout) as out:
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
