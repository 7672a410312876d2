#!/usr/bin/env python3
"""Benchmark ``lvs-inspect replay`` (issue 5): packets through the reference director per second.

    python bench/bench_replay.py [--mode nat|dr|tun|fullnat] [--frames N] [--seed S] [--trace PATH -t TOPO]
                                 [--cpu C] [--repeat R] [--write] [--json OUT]

Without --trace, bench/make_trace.py writes a deterministic multi-vantage trace of the mode
(bench/out/replay-MODE-N-sS.pcapng, reused while the generator and its arguments are unchanged)
and the matching topology is the synthetic fixture's (fixtures/synth/MODE/topology.toml: the same
addresses, MACs and profile; FullNAT is DPVS). Each run is a child process pinned to one CPU
(default 0, as `taskset -c 0`) that calls ``replay()`` once and reports the time of each stage:

  read     read_table: decode every frame of the trace
  stitch   flows.stitch: legs, connections, observations
  prepare  the inputs (one copy per packet, nearest the director), per-connection facts
  gather   the inputs' bytes read again from the file into one buffer
  model    the per-packet loop: connection table per input packet, the per-packet transmit
           functions for the packets the batch path does not take, the batch shapes
  transmit the batch transmit (lvs_inspect.forwarder.xmit_batch, numpy over all the inputs at
           once) and the expected frames as bytes objects
  write    (--write) the expected pcapng with per-frame comments, one interface per leg

Figures: **packets/s** = packets that reached the director (the model's inputs: client packets,
server replies) / seconds; **frames/s** = the trace's frames / seconds. Both are given for the
model (per-packet loop + batch transmit) and for the whole replay (read to the expected frames). The target of issue 5 is >= 100,000
packets/s on one core. Exit status 0 when the runs completed, 1 when one failed, 2 for bad
arguments; a missed target is reported, not turned into a failure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET = 100_000
MODES = {"nat": "nat", "dr": "dr", "tun": "tun", "fullnat": "fullnat"}


def ensure_trace(mode: str, frames: int, seed: int, workdir: str) -> tuple[str, dict]:
    """bench/out/replay-MODE-N-sS.pcapng (see bench_decode.ensure_trace)."""
    sys.path.insert(0, HERE)
    import bench_decode
    return bench_decode.ensure_trace(frames, seed, workdir, mode=mode, prefix="replay")


def child(trace: str, topo_path: str, write: str | None) -> int:
    import time

    sys.path.insert(0, ROOT)
    t0 = time.perf_counter()
    from lvs_inspect.forwarder.replay import replay
    from lvs_inspect.topology import load_topology
    imports = time.perf_counter() - t0
    topo = load_topology(topo_path)
    t0 = time.perf_counter()
    res = replay([trace], topo)
    total = time.perf_counter() - t0
    out = {"imports": imports, "total": total, **res.timings, "inputs": res.inputs,
           "expected": len(res), "frames": res.frames_read, "connections": len(res.connections),
           "drops": sum(res.drops.values()), "by_leg": res.by_leg()}
    if write:
        t0 = time.perf_counter()
        res.write(write)
        out["write"] = time.perf_counter() - t0
        os.unlink(write)
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                out["peak_rss_mb"] = int(line.split()[1]) / 1024
    print(json.dumps(out))
    return 0


def run_child(trace: str, topo: str, cpu: int | None, write: bool, workdir: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", trace, "-t", topo]
    if write:
        cmd += ["--_write", os.path.join(workdir, "expected-bench.pcapng")]

    def pin():
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin)
    if p.returncode != 0:
        raise RuntimeError((p.stderr.strip().splitlines() or ["child failed"])[-1])
    return json.loads(p.stdout.strip().splitlines()[-1])


def report(runs: list[dict], trace: str, info: dict, cpu, mode: str) -> tuple[str, dict]:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
    best = min(runs, key=lambda r: r["total"])
    n_in, frames = best["inputs"], best["frames"]
    whole = best["total"]
    model = best["model"] + best.get("transmit", 0.0)
    lines = [
        f"replay benchmark: {trace} ({frames:,} frames, mode {mode}, {best['connections']:,} connections); "
        f"CPU {cpu if cpu is not None else 'any'}, {len(runs)} run(s), best shown, medians in brackets",
        f"load average at start: {os.getloadavg()[0]:.2f}",
        "",
        "| stage | seconds | packets/s | frames/s |",
        "|---|---:|---:|---:|",
    ]
    for k in ("read", "stitch", "prepare", "gather", "model", "transmit"):
        if k in best:
            lines.append(f"| {k} | {best[k]:.2f} ({med[k]:.2f}) | | |")
    lines.append(f"| model + transmit | {model:.2f} | {n_in / model:,.0f} | {frames / model:,.0f} |")
    lines.append(f"| whole replay() | {whole:.2f} ({med['total']:.2f}) | {n_in / whole:,.0f} | {frames / whole:,.0f} |")
    if "write" in best:
        rate = best["expected"] / best["write"]
        lines.append(f"| write expected pcapng (+ comments) | {best['write']:.2f} | {rate:,.0f} | |")
    lines += [
        "",
        f"packets that reached the director (the model's inputs): {n_in:,}; expected frames: {best['expected']:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in best['by_leg'].items())}); not transmitted: {best['drops']:,}; "
        f"peak RSS {best.get('peak_rss_mb', 0):.0f} MB; imports {best['imports']:.2f} s (not counted)",
        f"target >= {TARGET:,} packets/s on one core: model + transmit {n_in / model:,.0f} "
        f"({'met' if n_in / model >= TARGET else 'NOT met'}), whole replay {n_in / whole:,.0f} "
        f"({'met' if n_in / whole >= TARGET else 'NOT met'}); whole replay in trace frames {frames / whole:,.0f}/s",
    ]
    return "\n".join(lines), {"runs": runs, "best": best, "median": med, "trace": trace, "info": info,
                              "cpu": cpu, "packets_per_s_model": n_in / model,
                              "packets_per_s_whole": n_in / whole, "frames_per_s_whole": frames / whole}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=tuple(MODES), default="nat")
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trace", help="an existing trace (then give -t)")
    ap.add_argument("-t", "--topology", help="topology for --trace (default: the synthetic fixture of --mode)")
    ap.add_argument("--cpu", type=int, default=0, help="CPU to pin the runs to (default 0; -1: no pinning)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="also time writing the expected pcapng")
    ap.add_argument("--json", help="write the figures as JSON")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_write", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return child(args._child, args.topology, args._write)
    if args.repeat < 1 or args.frames < 1000:
        ap.error("--repeat must be >= 1 and --frames >= 1000")
    topo = args.topology or os.path.join(ROOT, "fixtures", "synth", MODES[args.mode], "topology.toml")
    workdir = os.path.join(HERE, "out")
    os.makedirs(workdir, exist_ok=True)
    if args.trace:
        trace, info = args.trace, {"frames": None}
    else:
        trace, info = ensure_trace(args.mode, args.frames, args.seed, workdir)
    cpu = None if args.cpu < 0 else args.cpu
    # one read first: every run finds the file in the page cache
    with open(trace, "rb") as f:
        while f.read(16 << 20):
            pass
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            try:
                runs.append(run_child(trace, topo, cpu, args.write, tmp))
            except RuntimeError as e:
                print(f"bench_replay: run failed: {e}", file=sys.stderr)
                return 1
    text, doc = report(runs, os.path.relpath(trace, ROOT), info, cpu, args.mode)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
