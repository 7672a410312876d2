#!/usr/bin/env python3
"""Benchmark the whole audit against tshark -T fields, on the same trace (issue 4).

    python bench/bench_audit.py [--frames N] [--trace PATH] [--repeat R] [--json OUT] [--prefix K] [--only LIST]

Without --trace, bench/make_trace.py writes the deterministic N-frame multi-vantage pcapng that
bench_decode.py uses (bench/out/trace-N-s1.pcapng, reused while the generator is unchanged).
Every measurement runs in its own child process pinned to one CPU:

  audit    `lvs-inspect audit PATH --format json -o FILE` (topology inferred from the trace, every
           rule), R times: seconds are the wall time of the whole command, interpreter start and
           imports included; peak RSS is the child's VmHWM
  stages   the same audit step by step in one child (read, infer, stitch, checks, report): seconds
           and peak RSS of each step (VmHWM reset between steps through /proc/self/clear_refs)
  tshark   tshark -n -r PATH -T fields -e <bench_decode's 39 fields> > /dev/null, start-up excluded

Prints Markdown tables (for bench/README.md) and the targets of issue 4; --json writes everything.
Exit status: 0 when every requested measurement ran, 1 when one failed (its error is printed), 2
for bad arguments. A missed target is reported, not turned into a failure: this is a benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_decode as bd  # noqa: E402  (the trace, tshark and the pinned children are shared)

TARGETS = {  # issue 4
    "x_tshark": 10.0,        # audit frames/s (whole command) over tshark -T fields frames/s (start-up excluded)
    "peak_rss_mb": 400.0,
}
STAGES = ("read", "infer", "stitch", "checks", "report")


# =============================================================================== child side
def _reset_peak() -> bool:
    """Start a new VmHWM window (Linux >= 4.0); False when the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def child_audit(path: str, out: str) -> dict:
    from lvs_inspect import cli
    from lvs_inspect.checks import engine

    inner = engine.audit
    timed = {}

    def audit(*args, **kwargs):      # the time of the audit() call itself, inside the command
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            timed["seconds"] = time.perf_counter() - t

    engine.audit = audit
    rc = cli.main(["audit", path, "--format", "json", "-o", out, "--no-progress", "--fail-on", "never"])
    if rc != 0:
        raise RuntimeError(f"lvs-inspect audit exited {rc}")
    with open(out, encoding="utf-8") as f:
        report = json.load(f)
    s = report.get("summary", {})
    return {"audit_seconds": timed["seconds"], "frames": s.get("frames"),
            "connections": s.get("connections"), "findings": s.get("findings")}


def child_stages(path: str) -> dict:
    """The audit as lvs_inspect.checks.engine.audit runs it, cut at its progress messages."""
    t0 = time.perf_counter()
    from lvs_inspect.checks.engine import audit
    from lvs_inspect.report import render
    import_seconds = time.perf_counter() - t0
    base = _vm("VmHWM")
    names = {"reading": "read", "inferring the topology": "infer", "stitching": "stitch", "checking": "checks"}
    stages: dict = {}
    current: list = []

    def close():
        if current:
            name, t, before, resettable = current.pop()
            stages[name] = {"seconds": time.perf_counter() - t, "rss_before_mb": before,
                            "peak_rss_mb": _vm("VmHWM") if resettable else None}

    def progress(msg: str, fraction: float | None = None):
        if current and current[-1][0] == names.get(msg, msg):
            return          # the same stage, further along
        close()
        resettable = _reset_peak()
        current.append((names.get(msg, msg), time.perf_counter(), _vm("VmRSS"), resettable))

    result = audit([path], progress=progress)
    progress("report")
    render(result, "json")
    close()
    return {"import_seconds": import_seconds, "baseline_rss_mb": base, "frames": sum(i.frames for i in result.inputs),
            "stages": stages}


def child_main(kind: str, path: str) -> int:
    try:
        if kind == "audit":
            with tempfile.TemporaryDirectory() as d:
                res = child_audit(path, os.path.join(d, "audit.json"))
        elif kind == "stages":
            res = child_stages(path)
        else:
            raise ValueError(kind)
        res["ok"] = True
    except Exception as e:  # reported by the parent as this measurement's failure
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    res["peak_rss_mb"] = bd._rss_mb()
    print(json.dumps(res))
    return 0


# ============================================================================== parent side
def run_child(kind: str, path: str, cpu: int | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_child", kind, "--trace", path]
    env = dict(os.environ)   # the checkout's lvs_inspect first, whether or not it is installed
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    r = bd.run_measured(cmd, cpu, capture=True, env=env)
    lines = [ln for ln in r["stdout"].splitlines() if ln.startswith("{")]
    if r["rc"] != 0 or not lines:
        tail = (r["stderr"].strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "error": f"child exited {r['rc']}: {tail}"}
    res = json.loads(lines[-1])
    res.update(wall=r["wall"], cpu=r["cpu"])
    return res


def measure_audit(path: str, frames: int, repeat: int, cpu: int | None, say) -> dict:
    runs = []
    for i in range(repeat):
        say(f"audit: run {i + 1} of {repeat} ...")
        r = run_child("audit", path, cpu)
        if not r.get("ok"):
            return r
        runs.append(r)
    walls = [r["wall"] for r in runs]
    med = statistics.median(walls)
    res = {"ok": True, "frames": frames, "runs": runs, "seconds": med, "seconds_min": min(walls),
           "seconds_max": max(walls), "frames_per_s": frames / med,
           "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
           "startup_seconds": statistics.median(r["wall"] - r["audit_seconds"] for r in runs),
           "connections": runs[-1].get("connections"), "findings": runs[-1].get("findings")}
    if runs[-1].get("frames") not in (None, frames):
        res["warning"] = f"the report counts {runs[-1]['frames']} frames for {frames}"
    return res


def warm(path: str) -> None:
    """Read the file once so that every tool finds it in the page cache."""
    with open(path, "rb") as f:
        while f.read(8 << 20):
            pass


# ================================================================================= report
def report(res: dict) -> str:
    N = res["trace"]["frames"]
    a, t = res.get("audit", {}), res.get("tshark", {})
    lines = ["| measurement | frames | seconds | frames/s | peak RSS MB | audit is × faster |",
             "|---|---:|---:|---:|---:|---:|"]
    arate = a.get("frames_per_s") if a.get("ok") else None
    if a:
        if a.get("ok"):
            spread = f" (min {a['seconds_min']:.2f}, max {a['seconds_max']:.2f}, {len(a['runs'])} runs)" \
                if len(a["runs"]) > 1 else ""
            lines.append(f"| lvs-inspect audit (whole command, median{spread}) | {N:,} | {a['seconds']:.2f} | "
                         f"{bd._fmt_rate(arate)} | {a['peak_rss_mb']:.0f} | — |")
        else:
            lines.append(f"| lvs-inspect audit | — | — | not run: {a.get('error', '?')} | — | — |")
    if t:
        name = f"tshark -T fields ({t.get('fields', len(bd.TSHARK_FIELDS))} fields)" + \
            (" on a prefix" if t.get("prefix") else "")
        if t.get("ok"):
            ratio = f"{arate / t['frames_per_s']:.1f}" if arate else "—"
            lines.append(f"| {name} | {t['frames']:,} | {t['seconds']:.2f} | {bd._fmt_rate(t['frames_per_s'])} | "
                         f"{t['peak_rss_mb']:.0f} | {ratio} |")
        else:
            lines.append(f"| {name} | — | — | not run: {t.get('error', '?')} | — | — |")

    st = res.get("stages", {})
    if st.get("ok"):
        lines += ["", "| audit step (one child, in process) | seconds | RSS before MB | peak RSS MB |",
                  "|---|---:|---:|---:|",
                  f"| interpreter start and imports | {st['import_seconds']:.2f} | — | {st['baseline_rss_mb']:.0f} |"]
        for name in [n for n in STAGES if n in st["stages"]]:
            s = st["stages"][name]
            peak = "—" if s["peak_rss_mb"] is None else f"{s['peak_rss_mb']:.0f}"
            lines.append(f"| {name} | {s['seconds']:.2f} | {s['rss_before_mb']:.0f} | {peak} |")
    elif st:
        lines += ["", f"audit steps: not run: {st.get('error', '?')}"]

    tr, env = res["trace"], res["environment"]
    lines += [
        "",
        f"Trace: {tr['path']} ({N:,} frames, {tr['bytes'] / 1e6:.0f} MB). The audit infers the topology "
        f"from the trace and runs every rule"
        + (f"; its seconds are the whole command's wall time (interpreter start, imports and writing the "
           f"report included: {a['startup_seconds']:.2f} s of it is outside the audit() call); "
           f"{a['connections']:,} connections, findings {a['findings']}" if a.get("ok") else "") + ".",
        f"Machine: {env['cpu_model']}, {env['cpus']} CPUs, each measurement pinned to CPU {env['pinned_cpu']}; "
        f"load average {env['loadavg_at_start']:.2f} at start. Python {env['python']}, numpy {env['numpy']}, "
        f"pandas {env.get('pandas', '?')}; OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE'] or '(unset)'}, "
        f"OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE'] or '(unset)'}. The trace is read once before timing, "
        "so every tool finds it in the page cache.",
    ]
    if t.get("ok"):
        s = (f"tshark: {t['version']}; its seconds exclude its start-up ({t['startup_seconds']:.2f} s), the audit's "
             f"include everything, which favours tshark; with start-up tshark does "
             f"{bd._fmt_rate(t['frames_per_s_with_startup'])} frames/s.")
        if t.get("prefix"):
            s += (f" Timed on the first {t['frames']:,} frames (editcap -r); all {N:,} would take about "
                  f"{t['scaled_seconds_for_all']:.0f} s (scaled).")
        lines.append(s)

    lines += ["", "| target (issue 4) | figure | met |", "|---|---:|:---:|"]
    v = res["targets"]
    x = res.get("audit_over_tshark")
    lines.append(f"| full audit >= {TARGETS['x_tshark']:.0f}x tshark -T fields | "
                 f"{'—' if x is None else f'{x:.1f}x'} | {_met(v.get('x_tshark'))} |")
    peak = f"{a['peak_rss_mb']:.0f} MB" if a.get("ok") else "—"
    lines.append(f"| audit peak RSS <= {TARGETS['peak_rss_mb']:.0f} MB | {peak} | {_met(v.get('peak_rss_mb'))} |")
    return "\n".join(lines)


def _met(ok) -> str:
    return "—" if ok is None else ("yes" if ok else "NO")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames of the generated trace (default 1,000,000)")
    ap.add_argument("--trace", help="benchmark this capture instead of a generated one")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="audit runs; the median is reported (default 3)")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--prefix", type=int, default=0, metavar="K",
                    help="time tshark on the first K frames only and scale (0 = the whole trace)")
    ap.add_argument("--only", default="audit,stages,tshark", help="comma-separated subset of: audit, stages, tshark")
    ap.add_argument("--workdir", default=os.path.join(HERE, "out"), help="where generated traces go")
    ap.add_argument("--cpu", type=int, default=None,
                    help="CPU to pin every measurement to (default: the last CPU this process may use)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._child:
        return child_main(a._child, a.trace)
    only = {x.strip() for x in a.only.split(",") if x.strip()}
    bad = only - {"audit", "stages", "tshark"}
    if bad:
        ap.error(f"--only: unknown measurement(s) {', '.join(sorted(bad))}")
    if a.frames < 1 or a.repeat < 1:
        ap.error("--frames and --repeat must be at least 1")
    if a.trace and not os.path.isfile(a.trace):
        print(f"bench_audit: {a.trace}: no such file", file=sys.stderr)
        return 2
    cpu = a.cpu if a.cpu is not None else max(os.sched_getaffinity(0))
    os.makedirs(a.workdir, exist_ok=True)

    env = bd.environment(cpu)
    try:
        import pandas
        env["pandas"] = pandas.__version__
    except ImportError:
        pass
    res: dict = {"environment": env, "targets": {}}
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if a.trace:
        path = a.trace
        info = {"path": path, "frames": bd.count_frames(path), "bytes": os.path.getsize(path)}
    else:
        t = time.perf_counter()
        say(f"trace: {a.frames:,} frames ...")
        path, info = bd.ensure_trace(a.frames, a.seed, a.workdir)
        info = dict(info, path=path)
        say(f"trace: {path} ready ({time.perf_counter() - t:.1f} s)")
    res["trace"] = info
    N = info["frames"]
    warm(path)

    if "audit" in only:
        res["audit"] = measure_audit(path, N, a.repeat, cpu, say)
    if "stages" in only:
        say("audit step by step ...")
        res["stages"] = run_child("stages", path, cpu)
    if "tshark" in only:
        say("tshark -T fields ...")
        res["tshark"] = bd.measure_tshark(path, N, a.prefix, a.workdir, cpu)

    au, ts, v = res.get("audit", {}), res.get("tshark", {}), res["targets"]
    if au.get("ok"):
        v["peak_rss_mb"] = au["peak_rss_mb"] <= TARGETS["peak_rss_mb"]
        if ts.get("ok"):
            res["audit_over_tshark"] = au["frames_per_s"] / ts["frames_per_s"]
            v["x_tshark"] = res["audit_over_tshark"] >= TARGETS["x_tshark"]

    print(report(res))
    if au.get("warning"):
        print(f"\nwarning: {au['warning']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    failed = [k for k in ("audit", "stages", "tshark") if k in res and not res[k].get("ok")]
    if failed:
        print(f"\nbench_audit: not measured: {', '.join(failed)} (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
