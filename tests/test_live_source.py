"""The live source: a capture stream analysed in windows, findings once, stop, pause, the ring, errors,
and (lab) dumpcap's drop counts read while it runs."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lvs_inspect.capture import read_table
from lvs_inspect.sources import Snapshot
from lvs_inspect.sources import dumpcap as dc
from lvs_inspect.sources.live import LiveSource, finding_key

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "synth"
LEAK = FIX / "dr-arp-leak"
LEAK_CODES = ["DR101", "DR104", "DR102", "SVC102"]      # what `audit -t topology.toml` finds there

# writes a capture (with "now": its timestamps moved so that its last frame is now), then
# (optionally) its packet blocks again shifted by SHIFT seconds, then sleeps
FEEDER = textwrap.dedent("""
    import struct, sys, time
    path, shift, gap, linger, now = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), \\
        sys.argv[5] == "now"
    data = open(path, "rb").read()
    out = sys.stdout.buffer

    def blocks(delta, packets_only):
        got, p = [], 0
        while p < len(data):
            btype, blen = struct.unpack_from("<II", data, p)
            b = data[p:p + blen]
            if btype == 6:                                   # EPB: timestamps in ns (if_tsresol 9)
                b = bytearray(b)
                hi, lo = struct.unpack_from("<II", b, 12)
                ts = ((hi << 32) | lo) + delta
                struct.pack_into("<II", b, 12, ts >> 32, ts & 0xFFFFFFFF)
                got.append((ts, bytes(b)))
            elif not packets_only:
                got.append((None, b))
            p += blen
        return got

    if now:
        last = max(ts for ts, _ in blocks(0, True))
        out.write(b"".join(b for _, b in blocks(time.time_ns() - last, False)))
    else:
        out.write(data)
    out.flush()
    if shift:
        time.sleep(gap)
        out.write(b"".join(b for _, b in blocks(int(shift * 1e9), True))); out.flush()
    time.sleep(linger)
""")


@pytest.fixture
def feeder(tmp_path):
    script = tmp_path / "feeder.py"
    script.write_text(FEEDER)

    def cmd(path=LEAK / "trace.pcapng", shift=0.0, gap=0.0, linger=0.0, now=False):
        return [sys.executable, str(script), str(path), str(shift), str(gap), str(linger), "now" if now else "-"]
    return cmd


def _run(src: LiveSource, stop: threading.Event | None = None, timeout: float = 20.0) -> list[Snapshot]:
    out: list[Snapshot] = []
    t = threading.Thread(target=src.run, args=(out.append, stop or threading.Event()), daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the live source did not end"
    return out


def _codes(snap: Snapshot) -> list[str]:
    return [f.code for f in snap.analysis.findings]


def test_fixture_findings_each_once_and_the_ring_is_the_capture(tmp_path):
    ring = tmp_path / "ring"
    src = LiveSource(capture_cmd=["cat", str(LEAK / "trace.pcapng")], topology_path=str(LEAK / "topology.toml"),
                     ring_dir=str(ring))
    snaps = _run(src)
    final = snaps[-1]
    assert final.stage == "done" and final.error is None and final.frames == 1600
    assert sorted(_codes(final)) == sorted(LEAK_CODES)
    assert len({finding_key(f) for f in final.analysis.findings}) == len(LEAK_CODES)
    assert all(s.stage == "live" for s in snaps[:-1])
    assert {i.name: i.received for i in final.live.interfaces} == {"p-client": 753, "p-dir-c": 131,
                                                                   "p-dir-r": 132, "p-rs1": 584}
    assert final.live.dropped_analyzer == 0 and not final.live.paused
    # the ring holds the stream byte for byte, then our ISBs with the counts
    (only,) = final.live.ring_files
    data = Path(only).read_bytes()
    original = (LEAK / "trace.pcapng").read_bytes()
    assert data.startswith(original) and len(data) > len(original)
    t = read_table([only])
    assert len(t) == 1600 and t.inputs[0].damage == []
    recv = {t.vantages[v].name: st.get("ifrecv") for v, st in t.inputs[0].stats.items()}
    assert recv == {"p-client": 753, "p-dir-c": 131, "p-dir-r": 132, "p-rs1": 584}
    assert src.ring_locate(1) == (only, 1) and src.ring_locate(1600) == (only, 1600)


def test_same_finding_in_consecutive_windows_is_one(feeder):
    # the trace, then the same traffic 30 s later: two windows (10 s each) find the same faults
    src = LiveSource(capture_cmd=feeder(shift=30, gap=1.0), topology_path=str(LEAK / "topology.toml"),
                     ring_files=0, interval=0.2, edge_grace=0)
    snaps = _run(src)
    final = snaps[-1]
    assert final.stage == "done" and final.frames == 3200
    assert src.windows_analysed == 2
    assert sorted(_codes(final)) == sorted(LEAK_CODES)
    first = next(s for s in snaps if s.analysis is not None)
    assert sorted(_codes(first)) == sorted(LEAK_CODES)
    # the first occurrence is kept: its frames are in the first copy
    assert all(fr.frame <= 1600 for f in final.analysis.findings for fr in f.frames)
    # the last window holds only the second copy; the first left it analysed, not dropped
    assert final.live.dropped_analyzer == 0
    assert len(final.analysis.table) == 1600 and final.live.window_seconds < 1


def test_findings_at_the_leading_edge_wait_for_the_grace(feeder):
    """Traffic captured 'now': the first analysis holds its findings back (their evidence is younger
    than the grace), a later one (no new traffic) reports them."""
    src = LiveSource(capture_cmd=feeder(linger=60, now=True), topology_path=str(LEAK / "topology.toml"),
                     ring_files=0, interval=0.2, edge_grace=1.0)
    stop = threading.Event()
    seen: list[tuple[float, Snapshot]] = []
    t = threading.Thread(target=src.run, args=(lambda s: seen.append((time.monotonic(), s)), stop), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (seen and seen[-1][1].analysis
                                                   and len(seen[-1][1].analysis.findings) == len(LEAK_CODES)):
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(10)
    analysed = [(at, s) for at, s in seen if s.analysis is not None]
    # held back: everything with frames (a service's share has none: it is not about one moment)
    assert analysed and _codes(analysed[0][1]) == ["SVC102"]
    reported = [(at, s) for at, s in analysed if len(s.analysis.findings) == len(LEAK_CODES)]
    assert reported and sorted(_codes(reported[0][1])) == sorted(LEAK_CODES)
    assert reported[0][0] - analysed[0][0] > 0.4
    assert src.windows_analysed >= 2


def test_inferred_topology_is_said_and_used():
    src = LiveSource(capture_cmd=["cat", str(LEAK / "trace.pcapng")], ring_files=0)
    final = _run(src)[-1]
    assert final.stage == "done"
    assert any(n.startswith("topology inferred from the traffic") for n in final.notes), final.notes
    assert final.analysis.result.topology == "inferred"
    assert {"DR101", "DR102", "DR104"} <= set(_codes(final))


def test_stop_is_honoured_quickly_and_the_capture_ends(feeder):
    src = LiveSource(capture_cmd=feeder(linger=60), topology_path=str(LEAK / "topology.toml"), ring_files=0,
                     interval=0.2, edge_grace=0)
    stop = threading.Event()
    seen: list[Snapshot] = []
    stopped_at: list[float] = []

    def emit(s):
        assert not stop.is_set(), "a snapshot after stop"
        seen.append(s)
        if s.analysis is not None and not stop.is_set():
            stopped_at.append(time.monotonic())
            stop.set()
    t = threading.Thread(target=src.run, args=(emit, stop), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive() and stopped_at
    # the feeder would linger 60 s: the source ended it
    assert time.monotonic() - stopped_at[0] < 3.0
    assert src._proc.poll() is not None
    final = src.snapshot()
    assert final.stage == "done" and sorted(_codes(final)) == sorted(LEAK_CODES)


def test_pause_keeps_capturing_and_resume_analyses(feeder, tmp_path):
    src = LiveSource(capture_cmd=feeder(linger=60), topology_path=str(LEAK / "topology.toml"),
                     ring_dir=str(tmp_path / "ring"), interval=0.2, edge_grace=0)
    src.pause()
    stop = threading.Event()
    seen: list[Snapshot] = []
    t = threading.Thread(target=src.run, args=(seen.append, stop), daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (seen and seen[-1].frames == 1600):
            time.sleep(0.05)
        time.sleep(1.2)                      # well past the analysis interval
        paused = list(seen)
        assert paused and paused[-1].frames == 1600
        assert all(s.analysis is None and s.live.paused for s in paused)
        assert src.windows_analysed == 0
        # captured all the same, into the ring
        assert len(read_table([paused[-1].live.ring_files[-1]])) == 1600
        src.resume()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (seen and seen[-1].analysis is not None):
            time.sleep(0.05)
        last = seen[-1]
        assert last.analysis is not None and not last.live.paused
        assert sorted(_codes(last)) == sorted(LEAK_CODES)
        assert last.live.dropped_analyzer == 0
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def test_ring_rotates_and_every_file_is_a_capture(tmp_path):
    ring = tmp_path / "ring"
    src = LiveSource(capture_cmd=["cat", str(LEAK / "trace.pcapng")], topology_path=str(LEAK / "topology.toml"),
                     ring_dir=str(ring), ring_files=3, ring_bytes=40_000, chunk_bytes=16 << 10)
    final = _run(src)[-1]
    files = list(final.live.ring_files)
    assert len(files) == 3 and sorted(os.listdir(ring)) == [os.path.basename(f) for f in files]
    numbers = [int(Path(f).stem.split("-")[1]) for f in files]
    assert numbers[0] > 1 and numbers == list(range(numbers[0], numbers[0] + 3))   # the oldest went
    whole = read_table([str(LEAK / "trace.pcapng")])
    for f in files:
        t = read_table([f])
        assert len(t) and t.inputs[0].damage == [] and [v.name for v in t.vantages] == \
            [v.name for v in whole.vantages]
        # frame k of the file is the stream frame that locate() names
        first_live = int(whole["frame"][0])
        n = len(t)
        located = [src.ring_locate(fr) for fr in range(1, 1601)]
        mine = [i + 1 for i, loc in enumerate(located) if loc and loc[0] == f]
        assert len(mine) == n and [src.ring_locate(m)[1] for m in mine] == list(range(1, n + 1))
        rows = [m - first_live for m in mine]
        for col in ("ts_ns", "caplen", "ip_src", "eth_dst"):
            assert (t[col] == whole[col][rows]).all(), col
        if f != files[-1]:
            assert t.inputs[0].stats, "a closed ring file ends with ISBs"


def test_errors_are_one_line_snapshots(tmp_path, monkeypatch):
    snaps = _run(LiveSource(capture_cmd=["sh", "-c", "echo 'boom: no capture' >&2; exit 3"], ring_files=0))
    assert [s.stage for s in snaps] == ["error"]
    assert snaps[0].error == "sh exited with status 3: boom: no capture"
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not a capture at all\n" * 10)
    snaps = _run(LiveSource(capture_cmd=["cat", str(junk)], ring_files=0))
    assert snaps[-1].stage == "error" and snaps[-1].error.startswith("cat output: byte 0: not a pcap or pcapng")
    snaps = _run(LiveSource(["lvs-no-such0"], ring_files=0))
    assert [s.error for s in snaps] == ["lvs-no-such0: no such network interface"]
    snaps = _run(LiveSource([], ring_files=0))
    assert snaps[0].error.startswith("no interface to capture on")
    monkeypatch.setattr(dc, "find_dumpcap", lambda: None)
    snaps = _run(LiveSource(["lo"], ring_files=0))
    assert snaps[0].stage == "error" and snaps[0].error.startswith("dumpcap: not found")
    bad = tmp_path / "topo.toml"
    bad.write_text("[director\n")
    snaps = _run(LiveSource(capture_cmd=["cat", str(LEAK / "trace.pcapng")], topology_path=str(bad), ring_files=0))
    assert snaps[0].stage == "error" and snaps[0].error.startswith(str(bad))


def test_dumpcap_messages():
    lines = ["Capturing on 'va'", "dumpcap: Invalid capture filter \"tcp port\" for interface 'va'.", "",
             "That string isn't a valid capture filter (can't parse filter expression: syntax error).",
             "See the User's Guide for a description of the capture filter syntax."]
    assert dc.error_line(lines) == ("dumpcap: Invalid capture filter \"tcp port\" for interface 'va'. "
                                    "(can't parse filter expression: syntax error)")
    assert dc.error_line(["Capturing on 'va'", "dumpcap: You do not have permission to capture on device \"va\".",
                          "(socket: Operation not permitted)", "Please check ..."]) == \
        "dumpcap: You do not have permission to capture on device \"va\". (socket: Operation not permitted)"
    report = ["Packets captured: 49",
              ("Packets received/dropped on interface 'Loopback: lo': 49/7 (pcap:5/dumpcap:1/flushed:1/ps_ifdrop:2) "
               "(87.5%)")]
    assert dc.final_report(report, ["lo"]) == {"lo": {"recv": 49, "pcap": 5, "dumpcap": 1, "flushed": 1,
                                                      "ifdrop": 2}}
    assert dc.command("/usr/bin/dumpcap", ["a", "b"], bpf="tcp", buffer_mib=16) == \
        ["/usr/bin/dumpcap", "-q", "-B", "16", "-C", str(128 << 20), "-N", "10000000", "-f", "tcp", "-i", "a", "-i", "b",
         "-w", "-"]


# --------------------------------------------------------------------------- lab: dumpcap's drops

def _sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=30)


@pytest.mark.lab
def test_kernel_drops_are_read_while_dumpcap_runs(tmp_path):
    """dumpcap held (stopped, its pipe not read), a flood on the interface: the drops show while it runs, and
    what we read plus dumpcap's closing report plus what it wrote accounts for the frames sent."""
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network namespaces)")
    ip, dumpcap = shutil.which("ip"), shutil.which("dumpcap")
    if not ip or not dumpcap:
        pytest.fail("the lab tests need iproute2 and dumpcap (scripts/ensure-system-deps)")
    ns = f"lvsdrop{os.getpid()}"
    sent = 30000
    try:
        _sh(ip, "netns", "add", ns)
        _sh(ip, "-n", ns, "link", "add", "lv0", "address", "02:00:00:00:0c:01", "type", "veth",
            "peer", "name", "lv1", "address", "02:00:00:00:0c:02")
        for dev in ("lv0", "lv1"):
            _sh(ip, "netns", "exec", ns, "sysctl", "-q", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            _sh(ip, "-n", ns, "link", "set", dev, "up")
        cap = subprocess.Popen([ip, "netns", "exec", ns, *dc.command(dumpcap, ["lv0"], buffer_mib=1)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            pid = None
            deadline = time.monotonic() + 10
            while pid is None and time.monotonic() < deadline:       # `ip netns exec` execs dumpcap
                exe = os.path.realpath(f"/proc/{cap.pid}/exe") if os.path.exists(f"/proc/{cap.pid}") else ""
                if exe.endswith("dumpcap"):
                    pid = cap.pid
                time.sleep(0.02)
            assert pid, "dumpcap did not start"
            drops = dc.SocketDrops(pid)
            deadline = time.monotonic() + 10
            while not drops.attach() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert drops.attached, drops.error
            flood = ("import socket\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('lv1', 0))\n"
                     "f = bytes.fromhex('02000000000c0102000000000c020800') + bytes(1000)\n"
                     f"for i in range({sent}): s.send(f)\n")
            # dumpcap stopped while the flood runs: its 1 MiB kernel buffer fills and the kernel drops
            # (running, its capture thread could queue everything in its own memory on a busy machine)
            os.kill(pid, signal.SIGSTOP)
            try:
                _sh(ip, "netns", "exec", ns, sys.executable, "-c", flood)
                drops.poll()
            finally:
                os.kill(pid, signal.SIGCONT)
            live = drops.counts()
            assert set(live) == {"lv0"} and live["lv0"] > 0      # seen while dumpcap runs
            os.killpg(cap.pid, signal.SIGINT)
            out, err = cap.communicate(timeout=20)                # drains the pipe: dumpcap ends
            drops.poll()
            ours = drops.counts()["lv0"]
            drops.close()
        finally:
            if cap.poll() is None:
                os.killpg(cap.pid, signal.SIGKILL)
                cap.wait()
    finally:
        _sh(ip, "netns", "del", ns, check=False)
    report = dc.final_report(err.decode().splitlines(), ["lv0"])["lv0"]
    trace = tmp_path / "lv0.pcapng"
    trace.write_bytes(out)
    written = len(read_table([str(trace)]))
    # every frame was written, dropped (counted by us or in dumpcap's report, never both), or was
    # still in the kernel's 1 MiB capture buffer when dumpcap stopped (at most ~1000 of these frames)
    accounted = written + ours + report["pcap"] + report["dumpcap"] + report["flushed"]
    assert sent - 1000 <= accounted <= sent, (written, ours, report)
