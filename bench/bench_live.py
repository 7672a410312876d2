#!/usr/bin/env python3
"""Live benchmark: replay a multi-vantage trace into lab interfaces at a fixed packet rate while the
live engine (dumpcap + our reader + windowed analysis) captures them, pinned to one CPU.

    sudo .venv/bin/python bench/bench_live.py                       # 50,000 packets/s for 60 s
    sudo .venv/bin/python bench/bench_live.py --seconds 20 --json bench/out/live.json
    sudo .venv/bin/python bench/bench_live.py --sender tcpreplay    # one interface, tcpreplay --pps

A benchmark, not a test: it reports the rate the sender reached, the rate the engine received,
dumpcap's drops (kernel capture buffer, capture engine), the analyzer's drops, how long each window's
analysis took, the engine's CPU time and peak memory. Everything runs inside a network namespace
made for the run (veth pairs, no addresses, IPv6 off) and deleted at the end.

Senders:
* ``python`` (default): our own AF_PACKET sender, one veth pair per capture point of the trace
  (``p-client`` <- ``q-client`` ...), frames in file order, paced to ``--pps`` in batches of at most
  1 ms, the trace looped; the engine captures on the four ``p-*`` interfaces like a director's
  dumpcap would;
* ``tcpreplay``: ``tcpreplay -K --pps PPS --loop 0 --duration S`` into one veth: every capture point's
  frames on one interface (the engine then sees one vantage).

Exit status: 0 when it ran (a missed target is reported, not a failure), 1 when it could not run,
2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
VANTAGES = ("p-client", "p-dir-c", "p-dir-r", "p-rs1")
DEFAULT_TOPOLOGY = ROOT / "fixtures" / "synth" / "nat" / "topology.toml"    # make_trace.py's NAT set-up


# --------------------------------------------------------------------------- children

def engine_main(args) -> int:
    """Runs inside the namespace, pinned: LiveSource until its duration ends; JSON on stdout."""
    sys.path.insert(0, str(ROOT))
    from lvs_inspect.sources.live import LiveSource

    src = LiveSource(args.interfaces, topology_path=args.topology or None, window=args.window,
                     ring_dir=args.ring, ring_files=4, ring_bytes=256 << 20, duration=args.duration)
    peak = {"pps": 0.0}
    ready = threading.Event()
    last = {}

    def emit(s):
        last["s"] = s
        if s.stage == "live" and s.analysis is not None:
            last["live"] = [f.code for f in s.analysis.findings]
        if s.stage == "live" and not ready.is_set():
            ready.set()
            print("READY", file=sys.stderr, flush=True)
        if s.live is not None:
            peak["pps"] = max(peak["pps"], s.live.packets_per_second)

    t0 = time.monotonic()
    src.run(emit, threading.Event())
    wall = time.monotonic() - t0
    final = src.snapshot() or last.get("s")
    times = os.times()
    with open("/proc/self/status") as f:
        hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    d = src.diagnostics()
    an = d["analysis_seconds"]
    out = {
        "stage": final.stage, "error": final.error, "frames": final.frames, "wall_s": wall,
        "interfaces": [{"name": i.name, "received": i.received, "dropped_kernel": i.dropped_kernel,
                        "dropped_capture": i.dropped_capture} for i in final.live.interfaces],
        "dropped_analyzer": final.live.dropped_analyzer, "peak_pps": peak["pps"],
        "windows_analysed": d["windows_analysed"],
        "analysis_s_mean": sum(an) / len(an) if an else None, "analysis_s_max": max(an) if an else None,
        "reader_lag_max_s": d["reader_lag_max"], "pipe_bytes": d["pipe_bytes"],
        "dumpcap_report": d["capture_report"], "socket_drops": d["socket_drops"],
        "findings": [f.code for f in final.analysis.findings] if final.analysis else [],
        "findings_while_live": last.get("live", []),
        "window_frames": len(final.analysis.table) if final.analysis else 0,
        "cpu_engine_s": times.user + times.system, "cpu_dumpcap_s": times.children_user + times.children_system,
        "peak_rss_mb": hwm / 1024,
    }
    print(json.dumps(out))
    return 0


def sender_main(args) -> int:
    """Runs inside the namespace, pinned: sends the trace's frames at --pps for --seconds."""
    import socket

    sys.path.insert(0, str(ROOT))
    from lvs_inspect.capture.records import open_input

    vantages: list = []
    frames = []
    socks: dict[int, object] = {}
    for batch in open_input(args.trace, 0, vantages):
        for v in vantages:
            if v.id not in socks:
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                s.bind(("q" + v.name[1:], 0))
                socks[v.id] = s
        buf = batch.buf
        ids = batch.iface.tolist()
        for off, cap, vid in zip(batch.data_off.tolist(), batch.caplen.tolist(), ids):
            frames.append((socks[vid].send, buf[off:off + cap].tobytes()))
    n = len(frames)
    print("LOADED", n, file=sys.stderr, flush=True)
    sys.stdin.readline()                       # the go
    pps, seconds = args.pps, args.seconds
    sent = i = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        k = min(int((now - t0) * pps) - sent, 2000)
        if k <= 0:
            time.sleep(0.0002)
            continue
        for _ in range(k):
            send, data = frames[i]
            send(data)
            i += 1
            if i == n:
                i = 0
        sent += k
    elapsed = time.perf_counter() - t0
    print(json.dumps({"sent": sent, "elapsed_s": elapsed, "rate_pps": sent / elapsed, "trace_frames": n}))
    return 0


# --------------------------------------------------------------------------- the run

def sh(*args, check=True):
    r = subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=60)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def make_namespace(ns: str, names: list[str]) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "net.ipv6.conf.default.disable_ipv6=1")
    for k, name in enumerate(names):
        peer = "q" + name[1:]
        sh("ip", "-n", ns, "link", "add", name, "address", f"02:00:00:00:0e:{2 * k + 1:02x}", "type", "veth",
           "peer", "name", peer, "address", f"02:00:00:00:0e:{2 * k + 2:02x}")
        for dev in (name, peer):
            sh("ip", "netns", "exec", ns, "sysctl", "-q", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", dev, "up")


def ensure_trace(frames: int) -> Path:
    path = OUT / f"live-{frames}-r1000-s1.pcapng"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        # --rate 1000: about 47,000 packets/s of the trace's own time, close to the replay rate
        sh(sys.executable, str(ROOT / "bench" / "make_trace.py"), "--frames", str(frames), "--seed", "1",
           "--rate", "1000", "--out", str(path))
    return path


def read_line_with(proc, pattern: str, timeout: float, sink: list[str]) -> bool:
    """Wait for a stderr line containing ``pattern`` (lines kept in ``sink``)."""
    got = threading.Event()

    def pump():
        for line in proc.stderr:
            sink.append(line.rstrip("\n"))
            if pattern in line:
                got.set()
    threading.Thread(target=pump, daemon=True).start()
    return got.wait(timeout)


def stop(proc) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args) -> int:
    if os.geteuid() != 0:
        print("bench_live: needs root (network namespaces)", file=sys.stderr)
        return 1
    need = ["ip", "taskset", "dumpcap"] + (["tcpreplay"] if args.sender == "tcpreplay" else [])
    missing = [t for t in need if not shutil.which(t)]
    if missing:
        print(f"bench_live: missing {', '.join(missing)} (scripts/ensure-system-deps)", file=sys.stderr)
        return 1
    cpus = sorted(os.sched_getaffinity(0))
    engine_cpu = args.engine_cpu if args.engine_cpu is not None else cpus[0]
    sender_cpu = args.sender_cpu if args.sender_cpu is not None else cpus[-1]
    trace = Path(args.trace) if args.trace else ensure_trace(args.frames)
    names = list(VANTAGES) if args.sender == "python" else ["p-all"]
    ns = f"lvsbench{os.getpid()}"
    ring = OUT / f"live-ring-{os.getpid()}"
    engine = sender = None
    engine_err: list[str] = []
    sender_err: list[str] = []
    result = {"sender": args.sender, "pps_target": args.pps, "seconds": args.seconds, "trace": str(trace),
              "engine_cpu": engine_cpu, "sender_cpu": sender_cpu, "window_s": args.window,
              "load_before": os.getloadavg()}
    try:
        make_namespace(ns, names)
        if args.sender == "python":          # load the frames first: the engine's clock starts later
            sender = subprocess.Popen(["taskset", "-c", str(sender_cpu), "ip", "netns", "exec", ns, sys.executable,
                                       __file__, "--send", "--trace", str(trace), "--pps", str(args.pps),
                                       "--seconds", str(args.seconds)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
            if not read_line_with(sender, "LOADED", 300, sender_err):
                raise RuntimeError(f"the sender did not load the trace: {sender_err[-3:]}")
        cmd = ["taskset", "-c", str(engine_cpu), "ip", "netns", "exec", ns, sys.executable, __file__, "--engine",
               "--window", str(args.window), "--duration", str(args.seconds + 4), "--ring", str(ring)]
        if args.topology != "infer":
            cmd += ["--topology", args.topology]
        for name in names:
            cmd += ["--interface", name]
        engine = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if not read_line_with(engine, "READY", 60, engine_err):
            raise RuntimeError(f"the engine did not start: {engine_err[-3:]}")
        t0 = time.monotonic()
        if args.sender == "python":
            sender.stdin.write("go\n")
            sender.stdin.flush()
            out, _ = sender.communicate(timeout=args.seconds + 60)
            result["send"] = json.loads(out.strip().splitlines()[-1])
        else:
            r = subprocess.run(["taskset", "-c", str(sender_cpu), "ip", "netns", "exec", ns, "tcpreplay",
                                "-i", "q-all", "-K", "--pps", str(args.pps), "--loop", "0",
                                "--duration", str(max(1, round(args.seconds))), str(trace)],
                               check=False, capture_output=True, text=True, timeout=args.seconds + 120)
            m = re.search(r"Actual: (\d+) packets .* sent in ([\d.]+) seconds", r.stdout)
            rated = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", r.stdout)
            if not m:
                raise RuntimeError(f"tcpreplay: {r.stderr.strip() or r.stdout.strip()}")
            result["send"] = {"sent": int(m[1]), "elapsed_s": float(m[2]),
                              "rate_pps": float(rated[1]) if rated else int(m[1]) / float(m[2])}
        result["send_wall_s"] = time.monotonic() - t0
        out, _ = engine.communicate(timeout=args.seconds + 120)
        result["engine"] = json.loads(out.strip().splitlines()[-1])
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as e:
        print(f"bench_live: {e}", file=sys.stderr)
        for line in (engine_err + sender_err)[-10:]:
            print(f"  {line}", file=sys.stderr)
        return 1
    finally:
        stop(sender)
        stop(engine)
        sh("ip", "netns", "del", ns, check=False)
        if not args.keep_ring:
            shutil.rmtree(ring, ignore_errors=True)
    result["load_after"] = os.getloadavg()
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def report(r: dict) -> None:
    e, s = r["engine"], r["send"]
    kern = sum(i["dropped_kernel"] or 0 for i in e["interfaces"])
    capt = sum(i["dropped_capture"] or 0 for i in e["interfaces"])
    unknown = [i["name"] for i in e["interfaces"] if i["dropped_kernel"] is None or i["dropped_capture"] is None]
    rx_rate = e["frames"] / s["elapsed_s"] if s["elapsed_s"] else 0
    rows = [
        ("sender", f"{r['sender']} on CPU {r['sender_cpu']}"),
        ("target", f"{r['pps_target']:,} packets/s for {r['seconds']} s"),
        ("sent", f"{s['sent']:,} frames in {s['elapsed_s']:.1f} s = {s['rate_pps']:,.0f} packets/s"),
        ("engine", f"dumpcap + reader + analysis on CPU {r['engine_cpu']} (taskset), window {r['window_s']:g} s"),
        ("received", (f"{e['frames']:,} frames = {rx_rate:,.0f} packets/s over the send time "
                     f"(peak {e['peak_pps']:,.0f}/s)")),
        ("dumpcap drops", f"kernel {kern:,}, capture engine {capt:,}" + (f" (unknown: {unknown})" if unknown else "")),
        ("analyzer drops", f"{e['dropped_analyzer']:,}"),
        ("not received", f"{s['sent'] - e['frames'] - kern - capt:,} (sent - received - dumpcap drops)"),
        ("windows", (f"{e['windows_analysed']} analysed, {e['analysis_s_mean'] or 0:.2f} s each on average, "
                    f"{e['analysis_s_max'] or 0:.2f} s at most; last window {e['window_frames']:,} frames")),
        ("reader lag", f"{e['reader_lag_max_s']:.2f} s at most (capture timestamp to window)"),
        ("CPU", (f"engine {e['cpu_engine_s']:.1f} s + dumpcap {e['cpu_dumpcap_s']:.1f} s "
                f"in {e['wall_s']:.1f} s wall ({(e['cpu_engine_s'] + e['cpu_dumpcap_s']) / e['wall_s'] * 100:.0f}% "
                f"of the core)")),
        ("peak memory", f"{e['peak_rss_mb']:.0f} MB (engine process)"),
        ("findings", (f"while capturing: {', '.join(sorted(set(e['findings_while_live']))) or 'none'}; "
                     f"with the last window (the replay cut mid-connection): "
                     f"{', '.join(sorted(set(e['findings']))) or 'none'}")),
        ("load average", f"{r['load_before'][0]:.2f} before, {r['load_after'][0]:.2f} after (shared machine)"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    ok = e["dropped_analyzer"] == 0 and kern == 0 and capt == 0 and s["rate_pps"] >= 0.98 * r["pps_target"]
    print(f"{'verdict':<{width}}  " + ("kept up: no drops at the target rate" if ok else "did NOT keep up (see above)"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--pps", type=int, default=50_000)
    p.add_argument("--sender", choices=("python", "tcpreplay"), default="python")
    p.add_argument("--trace", help="trace to replay (default: make_trace.py, --frames frames, NAT)")
    p.add_argument("--frames", type=int, default=600_000, help="frames of the generated trace (default 600000)")
    p.add_argument("--topology", default=str(DEFAULT_TOPOLOGY),
                   help="topology for the engine, or 'infer' (default: the synthetic NAT set-up)")
    p.add_argument("--window", type=float, default=10.0)
    p.add_argument("--engine-cpu", type=int)
    p.add_argument("--sender-cpu", type=int)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep-ring", action="store_true", help="keep the engine's ring in bench/out")
    # children
    p.add_argument("--engine", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--send", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--interface", dest="interfaces", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    p.add_argument("--ring", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.engine:
        return engine_main(args)
    if args.send:
        return sender_main(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
