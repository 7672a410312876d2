"""``lvs-inspect infer``: propose a topology from a bare trace."""
from __future__ import annotations

import sys

from ..errors import InputError
from .common import EXIT_OK, add_trace_options, reader_kwargs


def register(sub) -> None:
    p = sub.add_parser("infer", help="propose a topology (TOML) from a bare trace",
                       description="Read the traces and propose a complete topology: services, real "
                                   "servers and their modes, the director's MACs and addresses, the profile "
                                   "and the role of every capture point, each with its evidence and a "
                                   "confidence as comments in the TOML it writes.")
    p.add_argument("traces", nargs="+", metavar="TRACE")
    p.add_argument("-o", "--output", metavar="FILE", help="write the TOML to FILE (default: stdout)")
    add_trace_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..capture import read_table
    from ..topology import dump_toml
    from ..topology.infer import infer_topology

    table = read_table(args.traces, stdin=sys.stdin.buffer, **reader_kwargs(args))
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
