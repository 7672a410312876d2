#!/usr/bin/env python3
"""Benchmark the packet engine against tshark -T fields and dpkt objects, on the same trace.

    python bench/bench_decode.py [--frames N] [--trace PATH] [--json OUT] [--prefix K] [--only LIST]

Without --trace, bench/make_trace.py writes a deterministic N-frame multi-vantage pcapng into
--workdir (default bench/out/, reused while the generator and its arguments are unchanged), and a
2N-frame one for the streaming check.  Every measurement runs in its own child process pinned to
one CPU, so peak RSS (from os.wait4 of that child) and time are per tool:

  ours        lvs_inspect.capture.read_table([PATH]): the whole packet table in memory
  stream      lvs_inspect.capture.iter_tables([PATH]) with each chunk dropped, on N and 2N frames:
              the peak must not grow with the file
  tshark      tshark -r PATH -T fields -e <the same fields> > /dev/null
  dpkt        dpkt's pcapng/pcap reader + dpkt.ethernet.Ethernet per frame, touching the same fields

Prints a Markdown table (for bench/README.md) and the targets of issue 2; --json writes everything.
Exit status: 0 when every requested measurement ran, 1 when one failed (its error is printed), 2 for
bad arguments.  Targets missed are reported, not turned into a failure: this is a benchmark.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The fields asked of tshark and touched in dpkt: what the packet table holds for these frames.
TSHARK_FIELDS = [
    "frame.number", "frame.time_epoch", "frame.interface_id", "frame.len", "frame.cap_len",
    "eth.src", "eth.dst", "eth.type",
    "ip.src", "ip.dst", "ip.ttl", "ip.id", "ip.flags", "ip.len", "ip.hdr_len", "ip.dsfield", "ip.proto",
    "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.seq_raw", "tcp.ack_raw", "tcp.window_size_value",
    "tcp.hdr_len", "tcp.len", "tcp.options.mss_val", "tcp.options.wscale.shift", "tcp.options.sack_perm",
    "tcp.options.timestamp.tsval", "tcp.options.timestamp.tsecr",
    "udp.srcport", "udp.dstport", "icmp.type", "icmp.code",
    "arp.opcode", "arp.src.hw_mac", "arp.src.proto_ipv4", "arp.dst.hw_mac", "arp.dst.proto_ipv4",
]

TARGETS = {  # issue 2, "Speed and memory"
    "frames_per_s": 1_000_000,
    "x_tshark": 25.0,
    "x_dpkt": 10.0,
    "table_bytes_per_frame": 200.0,
    "stream_growth": 1.15,   # peak RSS(2N) / peak RSS(N) at most this: "does not grow with file size"
}


# =============================================================================== child side
def _rss_mb() -> float:
    """Peak RSS of this process image (VmHWM).

    Not ru_maxrss: Linux carries the parent's high-water mark across fork+exec into the child's
    ru_maxrss, so a child of a big parent would report the parent's size.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _table_bytes(t) -> dict:
    """Bytes the table holds: its own nbytes() when it has one, and a walk of its arrays.

    The walk sums every numpy array reachable from the table's attributes, counting each memory
    block once (views of one buffer are not counted twice), grouped by top-level attribute.
    """
    import numpy as np

    spans: list[tuple[int, int, str]] = []
    seen: set[int] = set()

    def walk(o, top: str, depth: int):
        if depth > 6 or id(o) in seen:
            return
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            base = o
            while isinstance(base.base, np.ndarray):
                base = base.base
            ptr = base.__array_interface__["data"][0]
            spans.append((ptr, ptr + base.nbytes, top))
        elif isinstance(o, dict):
            for v in o.values():
                walk(v, top, depth + 1)
        elif isinstance(o, (list, tuple)):
            if len(o) < 10_000:
                for v in o:
                    walk(v, top, depth + 1)
        elif hasattr(o, "__dict__") and not isinstance(o, type):
            for v in vars(o).values():
                walk(v, top, depth + 1)

    for name, value in vars(t).items():
        walk(value, name, 0)
    spans.sort()
    by_attr: dict[str, int] = {}
    total, end = 0, 0
    for a, b, top in spans:
        a = max(a, end)
        if b > a:
            total += b - a
            by_attr[top] = by_attr.get(top, 0) + (b - a)
            end = b
    out = {"walked": total, "by_attribute": by_attr}
    nb = getattr(t, "nbytes", None)
    if callable(nb):
        out["nbytes"] = int(nb())
    elif isinstance(nb, int):
        out["nbytes"] = nb
    return out


def child_ours(path: str) -> dict:
    t0 = time.perf_counter()
    from lvs_inspect.capture import read_table
    t_import = time.perf_counter() - t0
    base = _rss_mb()
    t1 = time.perf_counter()
    table = read_table([path])
    secs = time.perf_counter() - t1
    rows = len(table)
    acc = table.accounting() if hasattr(table, "accounting") else []
    counts = {k: sum(int(a.get(k, 0)) for a in acc) for k in ("frames", "decoded", "ignored", "undecodable", "truncated")}
    return {"frames": rows, "seconds": secs, "import_seconds": t_import, "baseline_rss_mb": base,
            "table": _table_bytes(table), "accounting": counts}


def child_stream(path: str) -> dict:
    t0 = time.perf_counter()
    from lvs_inspect.capture import iter_tables
    t_import = time.perf_counter() - t0
    base = _rss_mb()
    t1 = time.perf_counter()
    rows = chunks = biggest = 0
    for chunk in iter_tables([path]):
        n = len(chunk)
        rows += n
        chunks += 1
        biggest = max(biggest, n)
        del chunk
    secs = time.perf_counter() - t1
    return {"frames": rows, "seconds": secs, "import_seconds": t_import, "baseline_rss_mb": base,
            "chunks": chunks, "largest_chunk_rows": biggest}


def child_dpkt(path: str, limit: int) -> dict:
    import dpkt

    with open(path, "rb") as f:
        magic = f.read(4)
    base = _rss_mb()
    eth_cls, ip_cls, tcp_cls, udp_cls = dpkt.ethernet.Ethernet, dpkt.ip.IP, dpkt.tcp.TCP, dpkt.udp.UDP
    icmp_cls, arp_cls = dpkt.icmp.ICMP, dpkt.arp.ARP
    parse_opts = dpkt.tcp.parse_opts
    n = 0
    t1 = time.perf_counter()
    with open(path, "rb") as f:
        reader = dpkt.pcapng.Reader(f) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(f)
        for ts, buf in reader:
            n += 1
            eth = eth_cls(buf)
            _ = (ts, len(buf), eth.src, eth.dst, eth.type)
            ip = eth.data
            if isinstance(ip, ip_cls):
                _ = (ip.src, ip.dst, ip.ttl, ip.id, ip.off, ip.len, ip.hl, ip.tos, ip.p)
                l4 = ip.data
                if isinstance(l4, tcp_cls):
                    _ = (l4.sport, l4.dport, l4.flags, l4.seq, l4.ack, l4.win, l4.off, len(l4.data))
                    if l4.opts:
                        for kind, val in parse_opts(l4.opts):
                            if kind == 2:      # MSS
                                _ = int.from_bytes(val, "big")
                            elif kind == 3:    # window scale
                                _ = val[0]
                            elif kind == 8:    # timestamps
                                _ = (int.from_bytes(val[:4], "big"), int.from_bytes(val[4:8], "big"))
                elif isinstance(l4, udp_cls):
                    _ = (l4.sport, l4.dport)
                elif isinstance(l4, icmp_cls):
                    _ = (l4.type, l4.code)
            elif isinstance(ip, arp_cls):
                _ = (ip.op, ip.sha, ip.spa, ip.tha, ip.tpa)
            if n == limit:
                break
    secs = time.perf_counter() - t1
    return {"frames": n, "seconds": secs, "baseline_rss_mb": base, "dpkt": dpkt.__version__}


def child_main(kind: str, path: str, limit: int) -> int:
    try:
        if kind == "ours":
            res = child_ours(path)
        elif kind == "stream":
            res = child_stream(path)
        elif kind == "dpkt":
            res = child_dpkt(path, limit)
        else:
            raise ValueError(kind)
        res["ok"] = True
    except Exception as e:  # reported by the parent as this measurement's failure
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    res["peak_rss_mb"] = _rss_mb()
    print(json.dumps(res))
    return 0


# ============================================================================== parent side
def _pin(cpu: int | None):
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def run_measured(cmd: list[str], cpu: int | None, *, capture: bool, env: dict | None = None) -> dict:
    """Run cmd pinned to cpu; wall time, CPU time and peak RSS of that child alone (os.wait4)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                             stderr=err, preexec_fn=_pin(cpu), env=env)
        out = p.stdout.read() if capture else b""
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if capture:
            p.stdout.close()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return {"rc": p.returncode, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime,
            "peak_rss_mb": ru.ru_maxrss / 1024.0, "stdout": out.decode(errors="replace"), "stderr": stderr}


def run_child(kind: str, path: str, cpu: int | None, limit: int = 0) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", kind, "--trace", path, "--limit", str(limit)]
    env = dict(os.environ)   # the checkout's lvs_inspect first, whether or not it is installed
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = run_measured(cmd, cpu, capture=True, env=env)
    lines = [ln for ln in r["stdout"].splitlines() if ln.startswith("{")]
    if r["rc"] != 0 or not lines:
        tail = (r["stderr"].strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"child exited {r['rc']}: {tail}"}
    res = json.loads(lines[-1])
    res.update(wall=r["wall"], cpu=r["cpu"])
    res.setdefault("peak_rss_mb", r["peak_rss_mb"])
    if res.get("ok") and res.get("seconds"):
        res["frames_per_s"] = res["frames"] / res["seconds"]
    return res


def editcap_prefix(path: str, k: int, workdir: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    out = os.path.join(workdir, f"{stem}.first{k}.pcapng")
    if not (os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(path)):
        subprocess.run(["editcap", "-r", "-F", "pcapng", path, out, f"1-{k}"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out


def measure_tshark(path: str, frames: int, prefix: int, workdir: str, cpu: int | None) -> dict:
    if not shutil.which("tshark") or not shutil.which("editcap"):
        return {"ok": False, "error": "tshark/editcap not found: install Debian's tshark (scripts/ensure-system-deps)"}
    fields = [a for f in TSHARK_FIELDS for a in ("-e", f)]
    one = editcap_prefix(path, 1, workdir)
    target = path
    timed = frames
    if 0 < prefix < frames:
        target, timed = editcap_prefix(path, prefix, workdir), prefix
    startup = run_measured(["tshark", "-n", "-r", one, "-T", "fields", *fields], cpu, capture=False)
    r = run_measured(["tshark", "-n", "-r", target, "-T", "fields", *fields], cpu, capture=False)
    if r["rc"] != 0:
        msg = [ln for ln in r["stderr"].splitlines() if "Running as user" not in ln]
        return {"ok": False, "error": f"tshark exited {r['rc']}: {' '.join(msg)[-300:]}"}
    steady = max(r["wall"] - startup["wall"], 1e-9)
    res = {"ok": True, "frames": timed, "wall": r["wall"], "cpu": r["cpu"], "peak_rss_mb": r["peak_rss_mb"],
           "startup_seconds": startup["wall"], "seconds": steady, "frames_per_s": timed / steady,
           "frames_per_s_with_startup": timed / r["wall"], "prefix": timed < frames,
           "fields": len(TSHARK_FIELDS), "version": _tshark_version()}
    if timed < frames:
        res["scaled_seconds_for_all"] = startup["wall"] + frames / res["frames_per_s"]
    return res


def _tshark_version() -> str:
    try:
        out = subprocess.run(["tshark", "--version"], capture_output=True, text=True).stdout
        return out.splitlines()[0].strip().rstrip(".")
    except (OSError, IndexError):
        return "?"


def ensure_trace(frames: int, seed: int, workdir: str, *, mode: str | None = None,
                 prefix: str = "trace") -> tuple[str, dict]:
    """bench/out/PREFIX[-MODE]-N-sS.pcapng, regenerated when the generator or its arguments changed
    (``mode``: make_trace's --mode; None: its default, NAT). Shared by the benchmarks."""
    gen = os.path.join(HERE, "make_trace.py")
    with open(gen, "rb") as f:
        gen_hash = hashlib.sha1(f.read()).hexdigest()[:12]
    name = f"{prefix}-{mode}-{frames}-s{seed}" if mode else f"{prefix}-{frames}-s{seed}"
    path = os.path.join(workdir, name + ".pcapng")
    side = path + ".json"
    want = {"frames": frames, "seed": seed, "generator": gen_hash} | ({"mode": mode} if mode else {})
    if os.path.exists(path) and os.path.exists(side):
        with open(side) as f:
            info = json.load(f)
        if all(info.get(k) == v for k, v in want.items()) and info.get("bytes") == os.path.getsize(path):
            return path, info
    # in a child: this process stays small, so the measured children do not inherit its peak RSS
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import make_trace; "
            "kw = {'mode': sys.argv[5]} if len(sys.argv) > 5 else {}; "
            "print(json.dumps(make_trace.make_trace(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), quiet=True, "
            "**kw)))")
    out = subprocess.run([sys.executable, "-c", code, HERE, path, str(frames), str(seed), *([mode] if mode else [])],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{prefix}: make_trace failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    info.update(want)
    with open(side, "w") as f:
        json.dump(info, f, indent=1)
    return path, info


def count_frames(path: str) -> int:
    out = subprocess.run(["capinfos", "-M", "-c", "-T", "-r", path], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().split("\t")[-1])


def environment(cpu: int | None) -> dict:
    import numpy as np

    env = {"python": platform.python_version(), "numpy": np.__version__, "machine": platform.machine()}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        env["numpy_blas"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
        simd = cfg.get("SIMD Extensions", {})
        env["numpy_simd"] = " ".join(simd.get("baseline", []) + simd.get("found", []))
    except Exception as e:  # older numpy: no dict mode
        env["numpy_blas"] = f"unknown ({e})"
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env[var] = os.environ.get(var, "")
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        env["cpu_model"] = "?"
    env["cpus"] = os.cpu_count()
    env["pinned_cpu"] = cpu
    env["loadavg_at_start"] = os.getloadavg()[0]
    return env


# ================================================================================= report
def _fmt_rate(x):
    if x is None:
        return "—"
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.0f} k"


def report(res: dict) -> str:
    N = res["trace"]["frames"]
    ours = res.get("ours", {})
    rate = ours.get("frames_per_s") if ours.get("ok") else None
    lines = ["| measurement | frames timed | seconds | frames/s | peak RSS MB | table bytes/frame | ours is × faster |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def row(name, r, bpf="—", other=True):
        if not r:
            return
        if not r.get("ok"):
            lines.append(f"| {name} | — | — | not run: {r.get('error', '?')} | — | — | — |")
            return
        fps = r.get("frames_per_s")
        ratio = f"{rate / fps:.1f}" if rate and fps and other else "—"
        lines.append(f"| {name} | {r['frames']:,} | {r['seconds']:.2f} | {_fmt_rate(fps)} | "
                     f"{r['peak_rss_mb']:.0f} | {bpf} | {ratio} |")

    if ours:
        bpf = "—"
        if ours.get("ok") and ours["frames"]:
            tb = ours["table"]
            bpf = f"{tb.get('nbytes', tb['walked']) / ours['frames']:.0f}"
        row("lvs-inspect read_table", ours, bpf, other=False)
    for key, label in (("stream_n", f"lvs-inspect iter_tables, {N:,} frames"),
                       ("stream_2n", f"lvs-inspect iter_tables, {2 * N:,} frames")):
        row(label, res.get(key), other=False)
    t = res.get("tshark")
    if t:
        row(f"tshark -T fields ({t.get('fields', len(TSHARK_FIELDS))} fields)"
            + (" on a prefix" if t.get("prefix") else ""), t)
    d = res.get("dpkt")
    if d:
        row("dpkt Reader + Ethernet objects" + (" on a prefix" if d.get("prefix") else ""), d)

    tr, env = res["trace"], res["environment"]
    notes = [
        "",
        f"Trace: {tr['path']} ({N:,} frames, {tr['bytes'] / 1e6:.0f} MB"
        + (f", {tr['avg_frame_bytes']} B average frame" if "avg_frame_bytes" in tr else "") + ").",
        f"Machine: {env['cpu_model']}, {env['cpus']} CPUs, each measurement pinned to CPU {env['pinned_cpu']}; "
        f"load average {env['loadavg_at_start']:.2f} at start. Python {env['python']}, numpy {env['numpy']} "
        f"({env.get('numpy_blas', '?')}; SIMD {env.get('numpy_simd', '?')}); OPENBLAS_CORETYPE="
        f"{env['OPENBLAS_CORETYPE'] or '(unset)'}, OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE'] or '(unset)'}.",
    ]
    if t and t.get("ok"):
        s = (f"tshark: {t['version']}; seconds exclude its start-up ({t['startup_seconds']:.2f} s, timed on a "
             f"1-frame file), which favours tshark; with start-up {_fmt_rate(t['frames_per_s_with_startup'])} frames/s.")
        if t.get("prefix"):
            s += (f" Timed on the first {t['frames']:,} frames (editcap -r); all {N:,} would take about "
                  f"{t['scaled_seconds_for_all']:.0f} s (scaled).")
        notes.append(s)
    if d and d.get("ok"):
        s = ("dpkt: each frame becomes an Ethernet/IP/TCP object, the fields are read and TCP options parsed; "
             "nothing is stored, which favours dpkt.")
        if d.get("prefix"):
            s += f" Rate from the first {d['frames']:,} frames."
        notes.append(s)
    if ours.get("ok"):
        tb = ours["table"]
        parts = ", ".join(f"{k} {v / ours['frames']:.0f}" for k, v in sorted(tb["by_attribute"].items(),
                                                                          key=lambda kv: -kv[1]) if v)
        notes.append(f"Table bytes per frame by attribute: {parts}. Seconds exclude interpreter start and imports "
                     f"({ours['import_seconds']:.2f} s); peak RSS includes them ({ours['baseline_rss_mb']:.0f} MB "
                     f"before reading).")
    lines += notes

    # targets
    lines += ["", "| target (issue 2) | figure | met |", "|---|---:|:---:|"]

    def tgt(name, value, ok):
        lines.append(f"| {name} | {value} | {'—' if ok is None else ('yes' if ok else 'NO')} |")

    verdict = res["targets"]
    tgt(f">= {TARGETS['frames_per_s']:,} frames/s on one core", _fmt_rate(rate), verdict.get("frames_per_s"))
    tgt(f">= {TARGETS['x_tshark']:.0f}x tshark -T fields", _ratio(res, "tshark"), verdict.get("x_tshark"))
    tgt(f">= {TARGETS['x_dpkt']:.0f}x dpkt objects", _ratio(res, "dpkt"), verdict.get("x_dpkt"))
    bpf = res.get("table_bytes_per_frame")
    tgt(f"<= {TARGETS['table_bytes_per_frame']:.0f} bytes of table per frame",
        "—" if bpf is None else f"{bpf:.0f}", verdict.get("table_bytes_per_frame"))
    g = res.get("stream_growth")
    tgt("flat peak memory when streaming (peak RSS 2N / N)",
        "—" if g is None else f"{g:.2f} ({res['stream_n']['peak_rss_mb']:.0f} → {res['stream_2n']['peak_rss_mb']:.0f} MB)",
        verdict.get("stream_growth"))
    return "\n".join(lines)


def _ratio(res, key):
    o, r = res.get("ours", {}), res.get(key, {})
    if o.get("ok") and r.get("ok"):
        return f"{o['frames_per_s'] / r['frames_per_s']:.1f}x"
    return "—"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames of the generated trace (default 1,000,000)")
    ap.add_argument("--trace", help="benchmark this capture instead of a generated one (no 2N streaming check "
                                    "unless --trace2 is given)")
    ap.add_argument("--trace2", help="with --trace: a capture about twice as long, for the streaming check")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--prefix", type=int, default=0, metavar="K",
                    help="time tshark and dpkt on the first K frames only and scale (0 = the whole trace)")
    ap.add_argument("--only", default="ours,stream,tshark,dpkt",
                    help="comma-separated subset of: ours, stream, tshark, dpkt")
    ap.add_argument("--workdir", default=os.path.join(HERE, "out"), help="where generated traces go")
    ap.add_argument("--cpu", type=int, default=None,
                    help="CPU to pin every measurement to (default: the last CPU this process may use)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        return child_main(a._child, a.trace, a.limit)
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    bad = only - {"ours", "stream", "tshark", "dpkt"}
    if bad:
        ap.error(f"--only: unknown measurement(s) {', '.join(sorted(bad))}")
    if a.frames < 1:
        ap.error("--frames must be at least 1")
    if a.trace and not os.path.isfile(a.trace):
        print(f"bench_decode: {a.trace}: no such file", file=sys.stderr)
        return 2
    cpu = a.cpu if a.cpu is not None else max(os.sched_getaffinity(0))
    os.makedirs(a.workdir, exist_ok=True)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

    res: dict = {"environment": environment(cpu), "targets": {}}
    say = lambda msg: print(msg, file=sys.stderr, flush=True)
    if a.trace:
        path, path2 = a.trace, a.trace2
        info = {"path": path, "frames": count_frames(path), "bytes": os.path.getsize(path)}
    else:
        t = time.perf_counter()
        say(f"trace: {a.frames:,} frames ...")
        path, info = ensure_trace(a.frames, a.seed, a.workdir)
        info = dict(info, path=path)
        say(f"trace: {path} ready ({time.perf_counter() - t:.1f} s)")
        path2 = None
        if "stream" in only:
            path2, _ = ensure_trace(2 * a.frames, a.seed, a.workdir)
    res["trace"] = info
    N = info["frames"]

    if "ours" in only:
        say("ours: read_table ...")
        res["ours"] = run_child("ours", path, cpu)
    if "stream" in only:
        say("ours: iter_tables on N and 2N frames ...")
        res["stream_n"] = run_child("stream", path, cpu)
        if path2:
            res["stream_2n"] = run_child("stream", path2, cpu)
        else:
            res["stream_2n"] = {"ok": False, "error": "no 2N trace (give --trace2 with --trace)"}
    if "tshark" in only:
        say("tshark -T fields ...")
        res["tshark"] = measure_tshark(path, N, a.prefix, a.workdir, cpu)
    if "dpkt" in only:
        say("dpkt objects ...")
        limit = a.prefix if 0 < a.prefix < N else 0
        d = run_child("dpkt", path, cpu, limit)
        if d.get("ok"):
            d["prefix"] = bool(limit)
        res["dpkt"] = d

    # figures against the targets
    o = res.get("ours", {})
    v = res["targets"]
    if o.get("ok"):
        v["frames_per_s"] = o["frames_per_s"] >= TARGETS["frames_per_s"]
        tb = o["table"]
        res["table_bytes_per_frame"] = tb.get("nbytes", tb["walked"]) / max(o["frames"], 1)
        v["table_bytes_per_frame"] = res["table_bytes_per_frame"] <= TARGETS["table_bytes_per_frame"]
        if o["frames"] != N:
            o["warning"] = f"table has {o['frames']} rows for {N} frames"
        for key, tk in (("tshark", "x_tshark"), ("dpkt", "x_dpkt")):
            r = res.get(key, {})
            if r.get("ok"):
                res[f"ours_over_{key}"] = o["frames_per_s"] / r["frames_per_s"]
                v[tk] = res[f"ours_over_{key}"] >= TARGETS[tk]
    s1, s2 = res.get("stream_n", {}), res.get("stream_2n", {})
    if s1.get("ok") and s2.get("ok"):
        res["stream_growth"] = s2["peak_rss_mb"] / s1["peak_rss_mb"]
        v["stream_growth"] = res["stream_growth"] <= TARGETS["stream_growth"]

    print(report(res))
    failed = [k for k in ("ours", "stream_n", "stream_2n", "tshark", "dpkt") if k in res and not res[k].get("ok")]
    if o.get("warning"):
        print(f"\nwarning: {o['warning']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    if failed:
        print(f"\nbench_decode: not measured: {', '.join(failed)} (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
