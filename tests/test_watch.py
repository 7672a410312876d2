"""``lvs-inspect watch``: one line per new finding, status on stderr, clean exits, exit codes; and (lab)
real dumpcap on veths in a namespace while a fixture is replayed into them."""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAK = ROOT / "fixtures" / "synth" / "dr-arp-leak"
LEAK_CODES = ["DR101", "DR104", "DR102", "SVC102"]
CLI = [sys.executable, "-m", "lvs_inspect"]

LINGER = textwrap.dedent("""
    import sys, time
    sys.stdout.buffer.write(open(sys.argv[1], "rb").read()); sys.stdout.buffer.flush()
    time.sleep(float(sys.argv[2]))
""")


def _watch(*args, env=None, timeout=30):
    return subprocess.run([*CLI, "watch", *args], check=False, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env=env)


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


class _Proc:
    """A running command whose stdout and stderr lines are collected by threads."""

    def __init__(self, argv, **kw):
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **kw)
        self.out: list[str] = []
        self.err: list[str] = []
        self.events: queue.Queue = queue.Queue()
        for stream, sink in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream, sink):
        for line in stream:
            sink.append(line.rstrip("\n"))
            self.events.put(None)

    def wait_for(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            try:
                self.events.get(timeout=0.1)
            except queue.Empty:
                pass
        return pred()

    def end(self, sig=signal.SIGTERM, timeout: float = 10) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait()
            time.sleep(0.05)        # let the pumps take the last lines


def test_one_line_per_finding_and_exit_codes():
    cap = f"cat {LEAK / 'trace.pcapng'}"
    r = _watch("--capture-cmd", cap, "-t", str(LEAK / "topology.toml"), "--no-ring")
    assert r.returncode == 0, r.stderr
    lines = _lines(r.stdout)
    assert [ln.split()[1] for ln in lines] == LEAK_CODES
    assert lines[0].startswith("error   DR101 192.0.2.11 02:00:00:00:00:11 (192.0.2.11) claims VIP")
    err = _lines(r.stderr)
    assert err[0] == f"lvs-inspect watch: capturing on {cap}"
    assert err[-1].startswith("lvs-inspect watch: 1,600 frames; drops: kernel 0, capture ?, analyzer 0")
    assert "findings 4 (2 error, 2 warning, 0 info)" in err[-1]
    r = _watch("--capture-cmd", cap, "-t", str(LEAK / "topology.toml"), "--no-ring", "--format", "jsonl",
               "--fail-on", "error")
    assert r.returncode == 1
    rows = [json.loads(ln) for ln in _lines(r.stdout)]
    assert [x["code"] for x in rows] == LEAK_CODES
    assert all(x["time"].endswith("Z") and x["severity"] in ("error", "warning") for x in rows)
    assert rows[0]["real_server"] == "192.0.2.11" and rows[0]["frames"]
    r = _watch("--capture-cmd", cap, "-t", str(LEAK / "topology.toml"), "--no-ring", "--select", "SVC",
               "--fail-on", "warning")
    assert r.returncode == 1 and [ln.split()[1] for ln in _lines(r.stdout)] == ["SVC102"]


def test_sigterm_and_ctrl_c_exit_cleanly(tmp_path):
    script = tmp_path / "linger.py"
    script.write_text(LINGER)
    for sig in (signal.SIGTERM, signal.SIGINT):
        w = _Proc([*CLI, "watch", "--capture-cmd", f"{sys.executable} {script} {LEAK / 'trace.pcapng'} 60",
                   "-t", str(LEAK / "topology.toml"), "--ring", str(tmp_path / "ring")])
        try:
            assert w.wait_for(lambda w=w: len(w.out) == 4, 15), (w.out, w.err)
            t = time.monotonic()
            rc = w.end(sig)
            assert time.monotonic() - t < 5
        finally:
            w.end(signal.SIGKILL)
        assert rc == 0, w.err
        assert [ln.split()[1] for ln in w.out] == LEAK_CODES
        assert w.err[0].endswith(f"; ring {tmp_path / 'ring'}")
        assert w.err[-1].startswith("lvs-inspect watch: 1,600 frames; drops:")


def test_duration_ends_after_the_last_window(tmp_path):
    script = tmp_path / "linger.py"
    script.write_text(LINGER)
    t = time.monotonic()
    r = _watch("--capture-cmd", f"{sys.executable} {script} {LEAK / 'trace.pcapng'} 60", "--duration", "1",
               "--no-ring", "--format", "jsonl")
    assert time.monotonic() - t < 10
    assert r.returncode == 0, r.stderr
    codes = [json.loads(ln)["code"] for ln in _lines(r.stdout)]
    assert sorted(codes) == sorted(set(codes)) and {"DR101", "DR102", "DR104"} <= set(codes)
    assert any("topology inferred from the traffic" in ln for ln in _lines(r.stderr))


def test_capture_errors_are_one_line_and_status_2(tmp_path):
    r = _watch("-i", "lvs-no-such0", "--no-ring")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "lvs-inspect: lvs-no-such0: no such network interface\n"
    env = dict(os.environ, PATH=str(tmp_path))          # no dumpcap on PATH
    r = _watch("-i", "lo", "--no-ring", env=env)
    assert r.returncode == 2 and _lines(r.stderr) == [_lines(r.stderr)[0]]
    assert r.stderr.startswith("lvs-inspect: dumpcap: not found")
    r = _watch("--no-ring")
    assert r.returncode == 2 and r.stderr.startswith("lvs-inspect: watch: no interface given")
    r = _watch("--capture-cmd", "sh -c 'exit 4'", "--no-ring")
    assert r.returncode == 2 and r.stderr == "lvs-inspect: sh exited with status 4\n"


# --------------------------------------------------------------------------- lab: real dumpcap

# replays a multi-vantage trace: each frame into the veth whose peer is named like its capture point
# ("p-client" -> sent on "q-client"), in time order, at the trace's own pace
SENDER = textwrap.dedent("""
    import socket, sys, time
    from lvs_inspect.capture.records import open_input
    vantages, frames = [], []
    for b in open_input(sys.argv[1], 0, vantages):
        frames += [(int(b.ts_ns[i]), i + len(frames), int(b.iface[i]), b.frame_bytes(i)) for i in range(len(b))]
    frames.sort()
    socks = {}
    for v in vantages:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("q" + v.name[1:], 0))
        socks[v.id] = s
    t0, start = frames[0][0], time.perf_counter()
    for ts, _, vid, data in frames:
        due = start + (ts - t0) / 1e9
        while time.perf_counter() < due:
            pass
        socks[vid].send(data)
    print(len(frames))
""")
VANTAGES = ("p-client", "p-dir-c", "p-dir-r", "p-rs1")


def _sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


@pytest.fixture
def lab_ns():
    """A namespace with a veth pair per capture point of the synthetic fixtures (p-X <-> q-X),
    IPv6 off and no addresses: the only traffic is what the test sends."""
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network namespaces)")
    ip = shutil.which("ip")
    if not ip or not shutil.which("dumpcap"):
        pytest.fail("the lab tests need iproute2 and dumpcap (scripts/ensure-system-deps)")
    ns = f"lvswatch{os.getpid()}"
    try:
        _sh(ip, "netns", "add", ns)
        _sh(ip, "netns", "exec", ns, "sysctl", "-q", "net.ipv6.conf.default.disable_ipv6=1")
        for k, name in enumerate(VANTAGES):
            peer = "q" + name[1:]
            _sh(ip, "-n", ns, "link", "add", name, "address", f"02:00:00:00:0d:{2 * k + 1:02x}", "type", "veth",
                "peer", "name", peer, "address", f"02:00:00:00:0d:{2 * k + 2:02x}")
            for dev in (name, peer):
                _sh(ip, "netns", "exec", ns, "sysctl", "-q", f"net.ipv6.conf.{dev}.disable_ipv6=1")
                _sh(ip, "-n", ns, "link", "set", dev, "up")
        yield ns
    finally:
        _sh(ip, "netns", "del", ns, check=False)


@pytest.mark.lab
def test_watch_with_dumpcap_on_veths_reports_each_finding_once(lab_ns, tmp_path):
    ring = tmp_path / "ring"
    argv = ["ip", "netns", "exec", lab_ns, *CLI, "watch", "-t", str(LEAK / "topology.toml"), "--ring", str(ring),
            "--format", "jsonl", "--status-interval", "0"]
    for name in VANTAGES:
        argv += ["-i", name]
    w = _Proc(argv)
    try:
        assert w.wait_for(lambda: any("capturing on" in ln for ln in w.err), 15), w.err
        sent = _sh("ip", "netns", "exec", lab_ns, sys.executable, "-c", SENDER, str(LEAK / "trace.pcapng"))
        assert sent.stdout.strip() == "1600"
        assert w.wait_for(lambda: len(w.out) >= 4, 15), (w.out, w.err)
        time.sleep(1.5)              # another window or two: nothing new may come
        rc = w.end(signal.SIGTERM)
    finally:
        w.end(signal.SIGKILL)
    assert rc == 0, w.err
    rows = [json.loads(ln) for ln in w.out]
    # each once; a service's share first: the others wait until their evidence is 2 s old
    assert sorted(x["code"] for x in rows) == sorted(LEAK_CODES) and rows[0]["code"] == "SVC102"
    dr101 = next(x for x in rows if x["code"] == "DR101")
    assert dr101["real_server"] == "192.0.2.11" and dr101["mac"] == "02:00:00:00:00:11"
    final = w.err[-1]
    assert final.startswith("lvs-inspect watch: 1,600 frames; drops: kernel 0, capture 0, analyzer 0"), final
    assert "p-client 753/0/0, p-dir-c 131/0/0, p-dir-r 132/0/0, p-rs1 584/0/0" in final
    # the ring is the capture: auditing it again finds the same
    files = sorted(str(p) for p in ring.iterdir())
    r = subprocess.run([*CLI, "audit", *files, "-t", str(LEAK / "topology.toml"), "--format", "json"],
                       check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)
    report = json.loads(r.stdout)
    assert sorted(f["code"] for f in report["findings"]) == sorted(LEAK_CODES)
    assert report["summary"]["frames"] == 1600


@pytest.mark.lab
def test_watch_without_capture_rights_says_so(lab_ns):
    r = subprocess.run(["ip", "netns", "exec", lab_ns, "setpriv", "--reuid", "65534", "--regid", "65534",
                        "--clear-groups", *CLI, "watch", "-i", "p-client", "--no-ring"],
                       check=False, capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    (line,) = _lines(r.stderr)
    assert line.startswith("lvs-inspect: dumpcap: You do not have permission to capture on device \"p-client\"")
