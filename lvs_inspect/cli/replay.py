"""``lvs-inspect replay``: what the director should have sent, as a pcapng to open next to the trace."""
from __future__ import annotations

import sys

from .common import EXIT_OK, add_trace_options, reader_kwargs


def register(sub) -> None:
    p = sub.add_parser(
        "replay", help="feed a trace through the reference director and write the frames it should have sent",
        description="Take every packet that reached the director in the traces (the clients' packets and, for "
                    "NAT and FullNAT, the real servers' replies; each once, from the capture point nearest the "
                    "director), feed them in time order through the reference forwarder with the topology's "
                    "profile, and write the frames it should have sent: one pcapng interface per leg "
                    "(director-rs, director-client), each frame commented with the input frame it came from. "
                    "Where the trace shows the director's choices (the real server, FullNAT's local address, "
                    "port and sequence delta, the GUE source port) they are followed; scheduler choices that "
                    "differ are listed. A summary goes to stderr. Compare with `lvs-inspect diff`. "
                    "Exit status: 0 written, 2 bad input.")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("-t", "--topology", metavar="TOPOLOGY",
                   help="topology.toml, ipvsadm -Sn/-Ln output or keepalived.conf (default: inferred from the trace)")
    p.add_argument("-o", "--output", metavar="EXPECTED.pcapng", required=True,
                   help="where to write the expected frames (pcapng; .gz compresses)")
    p.add_argument("--no-follow", action="store_true",
                   help="let the model decide everything (real servers, LIPs, ports, sequence deltas) "
                        "instead of following what the trace shows")
    p.add_argument("--no-comments", action="store_true",
                   help="no per-frame comments (smaller file; diff then derives connections from the headers)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    add_trace_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..capture import read_table
    from ..errors import InputError
    from ..forwarder.replay import read_options, replay
    from ..topology import load_topology
    from ..topology.infer import infer_topology

    for path in args.traces:
        if path == "-":
            raise InputError("-", "replay reads its traces twice: give a file, not standard input")
    # decoded as replay() would read it (no checksum verification, TCP options only as needed)
    topo = load_topology(args.topology) if args.topology else None
    table = read_table(args.traces, **{**reader_kwargs(args), **read_options(topo)})
    if topo is None:
        try:
            topo = infer_topology(table, source=" ".join(args.traces))
        except ValueError as e:
            raise InputError(", ".join(args.traces), f"cannot infer a topology: {e} (give one with -t)") from None
    result = replay(args.traces, topo, table=table, follow_trace=not args.no_follow)
    n = result.write(args.output, comments=not args.no_comments)
    if not args.quiet:
        src = args.topology or "a topology inferred from the trace"
        print(f"lvs-inspect {result.summary()}", file=sys.stderr)
        print(f"  topology: {src} (profile {topo.profile.name})", file=sys.stderr)
        print(f"wrote {args.output}: {n} frames on {len(result.legs_used)} interfaces "
              f"({', '.join(result.legs_used) or 'none'})", file=sys.stderr)
    return EXIT_OK
