"""``lvs-inspect diff``: compare the frames the director should have sent with the trace."""
from __future__ import annotations

import sys

from .common import EXIT_FINDINGS, EXIT_OK, add_trace_options, reader_kwargs


def register(sub) -> None:
    p = sub.add_parser(
        "diff", help="compare expected frames (lvs-inspect replay) with the observed trace",
        description="Align the expected frames (written by `lvs-inspect replay`) with the observed trace per "
                    "connection and leg, packet by packet, and report each connection's first divergence field "
                    "by field, with the packets expected but missing and those observed but unexpected. "
                    "Exit status: 0 same, 1 different, 2 the tool could not do its job.")
    p.add_argument("expected", metavar="EXPECTED", help="the expected frames (pcapng from lvs-inspect replay)")
    p.add_argument("observed", nargs="+", metavar="OBSERVED", help="the observed trace(s)")
    p.add_argument("-t", "--topology", metavar="TOPOLOGY",
                   help="topology.toml, ipvsadm -Sn/-Ln output or keepalived.conf (default: inferred from OBSERVED)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    p.add_argument("--limit", type=int, default=50, metavar="N",
                   help="text: show at most N divergent connections (default 50; JSON lists all)")
    add_trace_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..forwarder.diff import diff

    result = diff([args.expected], args.observed, args.topology, **reader_kwargs(args))
    text = result.to_json() if args.format == "json" else result.render_text(limit=max(args.limit, 0))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK if result.same else EXIT_FINDINGS
