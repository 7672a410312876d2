"""``lvs-inspect watch``: the live engine without a screen, one line per new finding.

stdout gets one line per finding the first time it is found (``text``: severity, code, real server
or MAC, message; ``jsonl``: the finding's JSON object with a ``time`` key, UTC ISO 8601), flushed
at once, for monitoring pipelines. stderr gets the status: when the capture starts, every
``--status-interval`` seconds (frames, rates, drops of the kernel / capture engine / analyzer,
findings) and once at exit. Drops are always printed, zero or not.

Exit status: 0 when nothing at or above ``--fail-on`` was found (default ``never``: a monitor
that was stopped is not a failure), 1 when something was, 2 when the capture could not run
(dumpcap missing, no such interface, permission denied, a bad filter or topology: one line).
Ctrl-C and SIGTERM stop it cleanly.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from datetime import UTC, datetime

from .common import (
    EXIT_ERROR,
    EXIT_FINDINGS,
    EXIT_OK,
    add_rule_options,
    add_topology_option,
    add_trace_options,
    reader_kwargs,
)


def register(sub) -> None:
    p = sub.add_parser("watch", help="watch live interfaces: one line per new finding, for monitoring",
                       description="Capture on live interfaces with dumpcap, analyse the traffic in windows and "
                                   "print each finding once, the first time it is found. Status and drop counts "
                                   "go to stderr. Exit status: 0 nothing at or above --fail-on (default never), "
                                   "1 findings at or above it, 2 the capture could not run.")
    p.add_argument("-i", "--interface", dest="interfaces", action="append", default=[], metavar="IFACE",
                   help="interface to capture on (repeatable; all go into one capture)")
    add_topology_option(p, "inferred from the traffic, kept once three windows agree")
    p.add_argument("-f", "--filter", dest="bpf", metavar="BPF", help="capture filter (libpcap syntax), all interfaces")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--ring", metavar="DIR",
                   help="keep the capture in a ring of pcapng files in DIR (default: a new directory in $TMPDIR)")
    p.add_argument("--no-ring", action="store_true", help="keep no ring of capture files")
    p.add_argument("--ring-files", type=int, default=8, metavar="N", help="files in the ring (default 8)")
    p.add_argument("--ring-size", type=float, default=64, metavar="MB", help="MiB per ring file (default 64)")
    p.add_argument("--duration", type=float, metavar="SECONDS",
                   help="stop after SECONDS (the last window is analysed first)")
    p.add_argument("--window", type=float, default=10.0, metavar="SECONDS",
                   help="span of traffic each analysis covers (default 10)")
    p.add_argument("--status-interval", type=float, default=10.0, metavar="SECONDS",
                   help="status line on stderr every SECONDS (0: only at start and exit; default 10)")
    p.add_argument("--fail-on", choices=("error", "warning", "info", "never"), default="never",
                   help="exit status 1 when a finding at or above this severity was found (default never)")
    add_rule_options(p)
    p.add_argument("--capture-cmd", metavar="CMD",
                   help="run CMD instead of dumpcap (split like a shell would, not run by one); it must write "
                        "pcapng or pcap on stdout, e.g. 'ssh director dumpcap -q -i eth0 -w -'")
    add_trace_options(p)
    p.set_defaults(func=run)


def finding_line(f, fmt: str, now: float | None = None) -> str:
    if fmt == "jsonl":
        when = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
        return json.dumps({"time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"), **f.to_json()},
                          sort_keys=False)
    who = f.real_server or f.mac or "-"
    return f"{f.severity!s:<7} {f.code} {who} {f.message}"


def _count(n: float) -> str:
    return f"{n:,.0f}"


def status_line(snap, *, final: bool = False) -> str:
    """``lvs-inspect watch: 1,234 frames, 50,012 pkt/s, 21.4 MB/s; drops kernel 0, capture ?, analyzer 0; ...``"""
    live = snap.live
    parts = [f"{_count(snap.frames)} frames"]
    if live is not None and not final:
        parts.append(f"{_count(live.packets_per_second)} pkt/s, {live.bytes_per_second / 1e6:.1f} MB/s")
    head = ", ".join(parts)
    drops = ""
    if live is not None:
        def total(attr):
            vals = [getattr(i, attr) for i in live.interfaces]
            known = [v for v in vals if v is not None]
            if not known:
                return "?"
            return _count(sum(known)) + ("" if len(known) == len(vals) else "+?")
        drops = f"; drops: kernel {total('dropped_kernel')}, capture {total('dropped_capture')}, " \
                f"analyzer {_count(live.dropped_analyzer)}"
        if final and len(live.interfaces) > 1:
            per = ", ".join(f"{i.name} {_count(i.received)}/"
                            f"{'?' if i.dropped_kernel is None else _count(i.dropped_kernel)}/"
                            f"{'?' if i.dropped_capture is None else _count(i.dropped_capture)}"
                            for i in live.interfaces)
            drops += f" (per interface received/kernel/capture: {per})"
    found = ""
    if snap.analysis is not None:
        counts = snap.analysis.result.counts()
        found = f"; findings {len(snap.analysis.findings)} ({counts['error']} error, {counts['warning']} warning, " \
                f"{counts['info']} info)"
        if live is not None:
            found += f", window {live.window_seconds:.1f} s"
    paused = "; paused" if live is not None and live.paused else ""
    return f"lvs-inspect watch: {head}{drops}{found}{paused}"


def run(args) -> int:
    from ..checks.finding import Severity
    from ..sources.live import LiveSource, finding_key

    if not args.interfaces and not args.capture_cmd:
        print("lvs-inspect: watch: no interface given: -i IFACE (repeatable)", file=sys.stderr)
        return EXIT_ERROR
    kw = reader_kwargs(args)
    src = LiveSource(args.interfaces, topology_path=args.topology, bpf=args.bpf,
                     ring_dir=args.ring, ring_files=0 if args.no_ring else args.ring_files,
                     ring_bytes=int(args.ring_size * (1 << 20)), window=args.window, capture_cmd=args.capture_cmd,
                     duration=args.duration, rule_dirs=args.rules, select=args.select, ignore=args.ignore,
                     toa_kinds=kw["toa_kinds"], gue_ports=kw["gue_ports"], checksums=kw["checksums"])
    stop = threading.Event()
    printed: set = set()
    notes_seen: set = set()
    state = {"started": False, "next_status": 0.0, "error": None, "last": None, "worst": None, "broken": False}
    out, err = sys.stdout, sys.stderr

    def print_new(snap) -> None:
        if snap.analysis is None or state["broken"]:
            return
        lines = []
        for f in snap.analysis.findings:
            k = finding_key(f)
            if k not in printed:
                printed.add(k)
                lines.append(finding_line(f, args.format))
                if state["worst"] is None or f.severity > state["worst"]:
                    state["worst"] = f.severity
        if lines:
            try:
                out.write("\n".join(lines) + "\n")
                out.flush()
            except BrokenPipeError:
                state["broken"] = True
                stop.set()

    def emit(snap) -> None:
        state["last"] = snap
        if snap.stage == "error":
            state["error"] = snap.error
        # the first live snapshot says the capture runs; a short capture may end before the
        # first one is due (its first snapshot is the final one, "done")
        if not state["started"] and snap.stage in ("live", "done"):
            state["started"] = True
            where = ", ".join(args.interfaces) if args.interfaces else args.capture_cmd
            ring = f"; ring {src.ring_dir}" if src.ring_dir and not args.no_ring else ""
            print(f"lvs-inspect watch: capturing on {where}{ring}", file=err, flush=True)
            state["next_status"] = time.monotonic() + args.status_interval
        if state["started"]:
            for note in snap.notes:            # each note once, when it first appears
                if note not in notes_seen and not note.startswith("capture kept in"):
                    notes_seen.add(note)
                    print(f"lvs-inspect watch: {note}", file=err, flush=True)
        print_new(snap)
        if snap.stage == "live" and args.status_interval > 0 and time.monotonic() >= state["next_status"]:
            state["next_status"] = time.monotonic() + args.status_interval
            print(status_line(snap), file=err, flush=True)

    def on_signal(signum, frame) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker = threading.Thread(target=src.run, args=(emit, stop), name="lvs-watch", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    final = src.snapshot() or state["last"]
    if state["error"]:
        if final is not None and final.frames:
            print(status_line(final, final=True), file=err, flush=True)
        print(f"lvs-inspect: {state['error']}", file=err, flush=True)
        return EXIT_ERROR
    if final is not None:
        print_new(final)
        print(status_line(final, final=True), file=err, flush=True)
    if state["broken"]:
        sys.stdout = None       # whoever read our output has gone: nothing more to flush there
    if args.fail_on != "never" and state["worst"] is not None and state["worst"] >= Severity.parse(args.fail_on):
        return EXIT_FINDINGS
    return EXIT_OK
