"""``lvs-inspect tui``: the terminal UI on trace files, live interfaces, or the bundled demo."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from ..resources import DEMO, DEMO_TITLE
from .common import EXIT_OK, add_rule_options, add_topology_option


def demo_dir() -> Path:
    """The bundled demo folder (see :func:`lvs_inspect.resources.demo_dir`)."""
    from ..resources import demo_dir as find
    try:
        return find()
    except FileNotFoundError as e:
        raise InputError("demo", str(e)) from None


def register(sub) -> None:
    p = sub.add_parser(
        "tui", help="the terminal UI: walk through a trace, or watch a director live",
        description="Open the terminal UI on trace files, on live interfaces (-i, captured with dumpcap), or, "
                    "with neither, on the bundled demo (a lab capture of a DR real server answering ARP for the VIP). "
                    "Keys are shown in the footer; ? lists them all, ctrl+p opens the command palette. "
                    "Rebind keys in $XDG_CONFIG_HOME/lvs-inspect/keys.toml (see --list-keys).")
    p.add_argument("traces", nargs="*", metavar="TRACE", help="pcap/pcapng files (gzip too)")
    p.add_argument("-i", "--interface", action="append", default=[], metavar="IFACE",
                   help="capture live on this interface (repeatable)")
    add_topology_option(p, "inferred")
    p.add_argument("-f", "--bpf", metavar="FILTER", help="capture filter for -i (BPF syntax)")
    add_rule_options(p)
    p.add_argument("--toa-kind", type=int, action="append", metavar="KIND",
                   help="extra TCP option kind to decode as TOA (254, 253 and 200 always are)")
    p.add_argument("--gue-port", type=int, action="append", metavar="PORT", help="UDP port carrying GUE (6080)")
    p.add_argument("--keys", metavar="FILE", help="key bindings file (default: $XDG_CONFIG_HOME/lvs-inspect/keys.toml)")
    p.add_argument("--list-keys", action="store_true", help="print the binding ids and their default keys, and exit")
    p.add_argument("--export-dir", metavar="DIR", default=".", help="where exports are written (default: .)")
    p.set_defaults(func=run)


def make_source(args):
    """The source the arguments ask for (trace files, live interfaces, or the demo)."""
    toa = (254, 253, 200) + tuple(args.toa_kind or ())
    gue = tuple(args.gue_port or (6080,))
    common = {"rule_dirs": args.rules, "select": args.select, "ignore": args.ignore}
    if args.traces and args.interface:
        raise InputError("-i", "give trace files or live interfaces (-i), not both")
    if args.bpf and not args.interface:
        raise InputError("-f", "a capture filter needs a live interface (-i)")
    if args.interface:
        try:
            from ..sources.live import LiveSource
        except ModuleNotFoundError as e:
            if e.name != "lvs_inspect.sources.live":
                raise
            raise InputError("-i", "live capture is not available in this build (lvs_inspect.sources.live)") \
                from None
        return LiveSource(list(args.interface), topology_path=args.topology, bpf=args.bpf, toa_kinds=toa,
                          gue_ports=gue, **common)
    from ..sources import TraceSource
    if args.traces:
        for path in args.traces:
            if path != "-" and not os.path.exists(path):
                raise InputError(path, "no such file")
        if args.topology and not os.path.exists(args.topology):
            raise InputError(args.topology, "no such file")
        return TraceSource(args.traces, topology_path=args.topology, toa_kinds=toa, gue_ports=gue, **common)
    d = demo_dir()
    src = TraceSource([str(d / "trace.pcapng")], topology_path=args.topology or str(d / "topology.toml"),
                      toa_kinds=toa, gue_ports=gue, **common)
    src.title = f"demo: {DEMO} ({DEMO_TITLE})"
    return src


def run(args) -> int:
    from ..tui.app import LvsInspectApp, binding_ids, key_rows
    from ..tui.keys import default_keys_path, load_keymap

    if args.list_keys:
        for keys, what, bid in key_rows():
            if not bid.startswith("("):
                print(f"{bid:<18} {keys:<14} {what}")
        return EXIT_OK
    keymap = load_keymap(args.keys, binding_ids())
    if not os.path.isdir(args.export_dir):
        raise InputError(args.export_dir, "no such directory (for exports)")
    source = make_source(args)
    keys_path = args.keys or str(default_keys_path())
    LvsInspectApp(source, keymap=keymap, export_dir=args.export_dir, rule_dirs=args.rules,
                  keys_path=keys_path).run()
    return EXIT_OK
