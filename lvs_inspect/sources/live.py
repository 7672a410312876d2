"""Live interfaces as a source: dumpcap on a pipe, analysed in windows, findings kept across them.

    src = LiveSource(["eth0", "eth1"], topology_path="topo.toml", ring_dir="/var/tmp/lvs-ring")
    threading.Thread(target=src.run, args=(emit, stop)).start()

Three threads, none waiting on another:

* **reading** — dumpcap (started by us in its own session: ``dumpcap -q -B 32 -C 128MiB -N ...
  [-f BPF] -i IF... -w -``, see :func:`.dumpcap.command`) writes pcapng on a pipe (1 MiB of pipe
  buffer); our record reader turns it into PacketTable chunks (a chunk is handed over as soon as
  whole records are there and the pipe has been quiet for 50 ms, or 1 MiB has come), the chunk joins
  the window, its bytes go to the ring. It never waits for the analysis: if the analysis falls
  behind, chunks leave the window unanalysed and are counted as analyzer drops
  (``LiveStats.dropped_analyzer``), never silently. While the analysis holds the interpreter, the
  capture waits in dumpcap's queue and the kernel's buffer, not lost (see ``run`` for the switch
  interval);
* **analysis** — every ``interval`` seconds (1 s; later if the last analysis took longer, so that
  it uses at most about half of a core) the engine's :func:`~lvs_inspect.checks.engine.analyse`
  runs over the window: the chunks whose traffic lies within ``window`` seconds (10 s) of the
  newest frame (and at most ``max_window_frames``). The first analysis waits ``interval`` after
  the first frame. Its findings are merged into the ones already found (see :func:`finding_key`);
* **the caller's** (``run``) — reads dumpcap's drop counters (see :mod:`.dumpcap`), emits a
  :class:`~lvs_inspect.sources.Snapshot` every ``emit_interval`` (0.25 s; 1 s while paused) and
  stops everything when ``stop`` is set or the capture ends.

Snapshots have stage ``live`` while capturing, ``done`` when the capture ended by itself (end of
the capture command's output, ``duration`` reached: the last window is analysed first) and
``error`` when the capture could not start or failed (one line). After ``stop`` is set nothing
more is emitted (as for :class:`~lvs_inspect.sources.TraceSource`); :meth:`LiveSource.snapshot`
still gives the final state, with the drop counts dumpcap reported as it stopped.

``snapshot.analysis`` is the latest window's analysis (its table, topology, flows and summary)
whose ``findings`` (and ``result.findings``) are *every distinct finding since the start*: a
finding from an earlier window may name frames that are no longer in ``analysis.table``; they are
in the ring (:meth:`LiveSource.ring_locate`).

Pause: the capture, the counters and the ring go on (the kernel must not drop, and the paused
moment can still be audited from the ring), the analysis stops and the snapshot's analysis stays
the one shown when pausing; snapshots then come once a second with ``live.paused`` set, so drops
stay visible. Frames that leave the window while paused are not analyzer drops.

Judging a window (see :meth:`LiveSource._hold_back_edge` and :meth:`LiveSource._settle`):

* the leading edge: a finding whose first evidence was captured less than ``edge_grace`` (2 s)
  ago waits for a later window (a SYN captured just before the window was cut has no answer *yet*);
  a fault that goes on is reported from the next window, with older evidence;
* without a topology each window's traffic is used to infer one; it is kept once three windows in
  a row agree on it (traffic ramping up shows some real servers first), and until then the windows'
  analyses are shown without findings; the snapshot's notes say which.

The last window of a capture that ended (its stream ended, or ``duration``) judges everything, as
``lvs-inspect audit`` would judge the stream.
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from fractions import Fraction

import numpy as np

from ..capture import PacketTable, TraceReader
from ..checks.engine import Analysis, analyse, namespaces
from ..checks.finding import Finding
from ..checks.rules import load_rules, select_rules
from ..errors import InputError
from ..resources import rules_dir
from ..topology import Topology, load_topology
from . import Emit, InterfaceStats, LiveStats, Snapshot
from . import dumpcap as dc
from .ring import CaptureRing, isb_block

F_SETPIPE_SZ = 1031
SWITCH_INTERVAL = 0.001   # s: see LiveSource.run
SETTLE_WINDOWS = 3        # an inferred topology is kept once this many windows in a row agree on it
SETTLE_MAX = 10           # ... or after this many windows at the latest


def topology_signature(t: Topology) -> tuple:
    """What an inferred topology says: its services, their real servers and modes."""
    return tuple(sorted((s.key, tuple(sorted((str(r.ip), r.port, str(r.mode)) for r in s.real_servers)))
                        for s in t.services))


def finding_key(f: Finding) -> tuple:
    """What makes two findings the same finding across windows: the rule and what the engine groups
    a rule's hits by (service, real server, MAC). The connection a finding names is only its first
    example (the engine folds every connection of a (service, real server, MAC) into one finding),
    so it is not part of the key: a fault that goes on is one finding, not one per window."""
    return (f.code, f.service or "", f.real_server or "", f.mac or "")


def _sort_key(f: Finding):
    return (-int(f.severity), f.code, f.real_server or "", f.connection or "")


class LiveError(Exception):
    """The capture cannot start or failed: one line."""


class _Tee:
    """The capture's stdout as the record reader sees it (``read1``/``fileno`` of a stream); every
    byte read is also handed to the ring."""

    def __init__(self, fd: int, ring: CaptureRing | None):
        self._fd = fd
        self.ring = ring
        self.bytes = 0

    def fileno(self) -> int:
        return self._fd

    def read1(self, n: int = -1) -> bytes:
        data = os.read(self._fd, n if n and n > 0 else 1 << 20)
        if data:
            self.bytes += len(data)
            if self.ring is not None:
                self.ring.feed(data)
        return data

    read = read1


@dataclasses.dataclass
class _Chunk:
    seq: int
    table: PacketTable
    ts_min: int
    ts_max: int
    paused: bool          # arrived while the analysis was paused


def _view(t: PacketTable) -> PacketTable:
    """A table sharing ``t``'s arrays but not its dicts: PacketTable.concat releases the columns of
    the parts it joins, and a window's chunks are joined again for the next window."""
    return PacketTable(t.n, dict(t.core), {g: dict(cols) for g, cols in t.sparse.items()}, t.opt_bytes,
                       t.vantages, t.book, t.inputs)


class LiveSource:
    """Live capture on ``interfaces`` with dumpcap, analysed in windows. See the module doc.

    ``capture_cmd`` replaces dumpcap: an argv list or a shell-free command string (split with
    shlex) whose stdout is a pcapng or pcap stream, e.g. ``cat trace.pcapng`` in tests or
    ``ssh director dumpcap -q -i eth0 -w -``; ``interfaces`` then only names the expected
    interfaces. ``duration`` (seconds) ends the capture like the end of its stream (the last
    window is analysed, stage ``done``).
    """

    def __init__(self, interfaces: Sequence[str] = (), *, topology_path: str | None = None,
                 topology: Topology | None = None, bpf: str | None = None, ring_dir: str | None = None,
                 ring_files: int = 8, ring_bytes: int = 64 << 20, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, capture_cmd: Sequence[str] | str | None = None,
                 interval: float = 1.0, emit_interval: float = 0.25, duration: float | None = None,
                 buffer_mib: int = 32, chunk_bytes: int = 1 << 20, max_window_frames: int = 2_000_000,
                 rule_dirs: Sequence[str] = (), select: str | None = None, ignore: str | None = None,
                 toa_kinds: Sequence[int] = (254, 253, 200), gue_ports: Sequence[int] = (6080,),
                 checksums: bool = True, edge_grace: float = 2.0):
        self.interfaces = [str(i) for i in interfaces]
        self.topology_path = topology_path
        self.bpf = bpf
        self.ring_dir = ring_dir
        self.ring_files = int(ring_files)
        self.ring_bytes = int(ring_bytes)
        self.window = float(window)
        self.clock = clock
        if isinstance(capture_cmd, str):
            capture_cmd = shlex.split(capture_cmd)
        self.capture_cmd = list(capture_cmd) if capture_cmd else None
        self.interval = float(interval)
        self.emit_interval = float(emit_interval)
        self.duration = duration
        self.buffer_mib = int(buffer_mib)
        self.chunk_bytes = int(chunk_bytes)
        self.max_window_frames = int(max_window_frames)
        self.edge_grace = float(edge_grace)
        self.rule_dirs, self.select, self.ignore = tuple(rule_dirs), select, ignore
        self.toa_kinds, self.gue_ports, self.checksums = tuple(toa_kinds), tuple(gue_ports), checksums
        if self.capture_cmd:
            self.title = "live: " + " ".join(shlex.quote(a) for a in self.capture_cmd)
        else:
            self.title = "live: " + (", ".join(self.interfaces) or "?")
        self._topology = topology
        self._topology_note: str | None = None
        self._lock = threading.Lock()
        self._paused = False
        self._state_reset()

    def _state_reset(self) -> None:
        self._window: deque[_Chunk] = deque()
        self._window_frames = 0
        self._seq = 0                 # chunks received
        self._claimed = 0             # chunks taken by an analysis
        self._newest_ts = None
        self._frames = 0
        self._bytes = 0
        self._per_vantage = np.zeros(0, dtype=np.int64)
        self._dropped_analyzer = 0
        self._latest: Analysis | None = None
        self._latest_span = 0.0
        self._found: dict[tuple, Finding] = {}
        self._first_seen: dict[tuple, float] = {}
        self._internal_error: str | None = None
        self._final: dict[str, dict[str, int | None]] | None = None
        self._snapshot: Snapshot | None = None
        self._rates: deque = deque()
        self._proc = None
        self._ring: CaptureRing | None = None
        self._drops: dc.SocketDrops | None = None
        self._reader: TraceReader | None = None
        self._eof = threading.Event()
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._analysis_done = threading.Event()
        self._first_data_at: float | None = None
        self._stderr: deque[str] = deque(maxlen=200)
        self._stderr_thread: threading.Thread | None = None
        self._reader_thread: threading.Thread | None = None
        self._analysis_thread: threading.Thread | None = None
        self._tee: _Tee | None = None
        self._read_error: InputError | None = None
        self._signalled = False       # we asked the capture to end (its exit status is then normal)
        self._rule_set = None
        self._infer_sig = None
        self._infer_stable = 0
        self._infer_windows = 0
        self.windows_analysed = 0
        self._analysis_seconds: deque[float] = deque(maxlen=1000)
        self._recheck_at: float | None = None     # wall time: findings held back at the edge are due
        self._analysis_error: str | None = None
        self._ring_made = False                   # we made the ring's directory (removed if left empty)
        self._lag_max = 0.0
        self._report: dict = {}

    # ------------------------------------------------------------------------------ public
    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Stop analysing and keep capturing (into the window's memory and the ring)."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    def ring_paths(self) -> list[str]:
        """The ring's pcapng files, oldest first (the last one is being written)."""
        return self._ring.paths() if self._ring is not None else []

    def ring_locate(self, frame: int) -> tuple[str, int] | None:
        """Where live frame ``frame`` (a FrameRef's frame) is on disk: (ring file, frame number in
        it), or None once it has left the ring."""
        return self._ring.locate(frame) if self._ring is not None else None

    def first_seen(self, f: Finding) -> float | None:
        """The clock when this finding (by :func:`finding_key`) was first found."""
        return self._first_seen.get(finding_key(f))

    def diagnostics(self) -> dict:
        """For benchmarks: windows analysed, how long each analysis took (the last 1000), the
        largest delay between a frame's capture timestamp and its arrival in the window (live
        capture only: a replayed file's timestamps are old), chunks read, bytes read from the pipe."""
        return {"windows_analysed": self.windows_analysed, "analysis_seconds": list(self._analysis_seconds),
                "reader_lag_max": self._lag_max, "chunks": self._seq,
                "pipe_bytes": self._tee.bytes if self._tee is not None else 0,
                "capture_report": dict(self._report), "socket_drops": dict(self._drops.drops) if self._drops else {}}

    def snapshot(self) -> Snapshot | None:
        """The latest state (after ``run`` returned: the final one, with dumpcap's closing drop counts)."""
        return self._snapshot

    # ------------------------------------------------------------------------------ run
    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Capture until ``stop`` is set or the capture ends; see the module doc.

        While it runs the interpreter's thread switch interval is 1 ms (it is 5 ms by default):
        the reading thread waits at most that long for the interpreter each time the analysis
        holds it, so that the pipe is drained steadily. The previous value is restored at the end."""
        self._state_reset()
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, SWITCH_INTERVAL))
        try:
            self._run(emit, stop)
        finally:
            sys.setswitchinterval(switch)

    def _run(self, emit: Emit, stop: threading.Event) -> None:
        try:
            self._start()
        except (LiveError, InputError) as e:
            self._shutdown()
            self._emit(emit, self._make("error", error=str(e)))
            return
        try:
            stage, error = self._supervise(emit, stop)
        finally:
            self._shutdown()
        if stage is None:            # stopped: nothing more is emitted
            self._snapshot = self._make("done")
            return
        self._emit(emit, self._make(stage, error=error))

    def _emit(self, emit: Emit, snap: Snapshot) -> None:
        self._snapshot = snap
        emit(snap)

    # ------------------------------------------------------------------------------ start
    def _start(self) -> None:
        if self.topology_path and self._topology is None:
            self._topology = load_topology(self.topology_path)
        if self.capture_cmd:
            cmd = self.capture_cmd
        else:
            if not self.interfaces:
                raise LiveError("no interface to capture on: give one or more with -i IFACE")
            exe = dc.find_dumpcap()
            if exe is None:
                raise LiveError("dumpcap: not found (it is Wireshark's capture engine: "
                                "apt-get install wireshark-common, or put it on PATH)")
            for name in self.interfaces:
                if name != "any" and not name.isdigit():
                    try:
                        socket.if_nametoindex(name)
                    except OSError:
                        raise LiveError(f"{name}: no such network interface") from None
            cmd = dc.command(exe, self.interfaces, bpf=self.bpf, buffer_mib=self.buffer_mib)
        self._reader = TraceReader(["-"], chunk_bytes=self.chunk_bytes, toa_kinds=self.toa_kinds,
                                   gue_ports=self.gue_ports, checksums=self.checksums)
        # the rules once (bad rule packs end the start); every window's table shares this address book
        self._rule_set = select_rules(load_rules([rules_dir(), *self.rule_dirs], namespaces(self._reader.book.key)),
                                      self.select, self.ignore)
        if self.ring_files > 0:
            self._ring_made = self.ring_dir is None
            ring_dir = self.ring_dir or tempfile.mkdtemp(prefix="lvs-inspect-ring-")
            try:
                self._ring = CaptureRing(ring_dir, files=self.ring_files, file_bytes=self.ring_bytes,
                                         trailer=self._ring_trailer)
            except OSError as e:
                raise LiveError(f"{ring_dir}: {e.strerror or e}") from None
            self.ring_dir = ring_dir
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, start_new_session=True, bufsize=0)
        except FileNotFoundError:
            raise LiveError(f"{cmd[0]}: not found") from None
        except PermissionError:
            raise LiveError(f"{cmd[0]}: permission denied") from None
        except OSError as e:
            raise LiveError(f"{cmd[0]}: {e.strerror or e}") from None
        fd = self._proc.stdout.fileno()
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)     # slack for the reading thread
        except OSError:
            pass
        if not self.capture_cmd:
            self._drops = dc.SocketDrops(self._proc.pid)
        self._tee = _Tee(fd, self._ring)
        self._reader.stdin = self._tee
        self._stderr_thread = threading.Thread(target=self._stderr_loop, name="live-capture-stderr", daemon=True)
        self._reader_thread = threading.Thread(target=self._read_loop, name="live-reader", daemon=True)
        self._analysis_thread = threading.Thread(target=self._analysis_loop, name="live-analysis", daemon=True)
        self._stderr_thread.start()
        self._reader_thread.start()
        self._analysis_thread.start()

    def _stderr_loop(self) -> None:
        for raw in iter(self._proc.stderr.readline, b""):
            self._stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    # ------------------------------------------------------------------------------ supervise
    def _supervise(self, emit: Emit, stop: threading.Event) -> tuple[str | None, str | None]:
        """Returns (final stage, error) or (None, None) when stopped."""
        t0 = time.monotonic()
        next_emit = 0.0
        next_poll = 0.0
        ending = False
        while True:
            now = time.monotonic()
            if stop.is_set():
                self._halt.set()
                self._end_capture()
                self._collect_final()
                return None, None
            if self.duration is not None and not ending and now - t0 >= self.duration:
                ending = True
                self._end_capture(wait=False)
            if now >= next_poll:
                next_poll = now + 0.5
                self._poll_drops()
            if self._eof.is_set():
                # the stream has ended: the last window is analysed, then the final snapshot
                self._reap()
                if self._analysis_done.is_set():
                    self._collect_final()
                    err = self._capture_error()
                    if err is not None:
                        return "error", err
                    return "done", None
            elif now >= next_emit and self._tee.bytes:
                next_emit = now + (1.0 if self._paused else self.emit_interval)
                self._emit(emit, self._make("live"))
            stop.wait(0.05)

    def _poll_drops(self) -> None:
        d = self._drops
        if d is None or d.error is not None or self._final is not None:
            return
        if d.held < len(self.interfaces) and self._proc.poll() is None:
            d.attach(expected=len(self.interfaces))
        d.poll()

    def _end_capture(self, wait: bool = True) -> None:
        """Ask the capture to stop (dumpcap then writes its closing ISBs), and if ``wait``, let the
        reader reach the end of the stream (a few seconds at most: then the capture is killed)."""
        p = self._proc
        if p is None:
            return
        if p.poll() is None:
            self._signalled = True
            try:
                os.killpg(p.pid, signal.SIGTERM if self.capture_cmd else signal.SIGINT)
            except ProcessLookupError:
                pass
        if not wait:
            return
        # the end of the stream, then the capture's exit (dumpcap writes its report after closing
        # the stream): 3 s for both, then it is killed
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not self._eof.is_set():
            self._eof.wait(0.05)
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        if p.poll() is None or not self._eof.is_set():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._eof.wait(2.0)
        self._reap()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self._proc.wait()

    def _capture_error(self) -> str | None:
        """Why the capture ended abnormally (one line), or None."""
        if self._internal_error:
            return self._internal_error
        rc = self._proc.returncode if self._proc is not None else 0
        failed = rc not in (0, None) and not self._signalled
        if failed or (self._read_error is not None and not self._frames):
            lines = list(self._stderr)
            msg = None if self.capture_cmd else dc.error_line(lines)
            if msg is None and failed:
                tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
                who = self.capture_cmd[0] if self.capture_cmd else "dumpcap"
                msg = f"{who} exited with status {rc}" + (f": {tail}" if tail else "")
            if msg is not None:
                return msg
        if self._read_error is not None:
            e = self._read_error
            who = os.path.basename(self.capture_cmd[0]) if self.capture_cmd else "dumpcap"
            return str(InputError(f"{who} output", e.message, line=e.line, offset=e.offset))
        return None

    def _collect_final(self) -> None:
        """The drop counts once the capture has stopped: dumpcap's closing report (plus what we
        read from its sockets), else the stream's closing ISBs."""
        self._reap()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=3.0)     # dumpcap's closing report (it has exited)
        if self._drops is not None and self._drops.attached:
            self._drops.poll()
        report = dc.final_report(list(self._stderr), self.interfaces) if not self.capture_cmd else {}
        final: dict[str, dict[str, int | None]] = {}
        self._report = report
        ours = self._drops.drops if self._drops is not None else {}
        if report:
            for name, r in report.items():
                final[name] = {"kernel": r["pcap"] + ours.get(name, 0), "capture": r["dumpcap"] + r["flushed"]}
        elif self._reader is not None:
            for summary in self._reader.inputs:
                for vid, st in (summary.stats or {}).items():
                    name = self._reader.vantages[vid].name
                    final[name] = {"kernel": st.get("ifdrop"), "capture": st.get("osdrop")}
        self._final = final
        if self._drops is not None:
            self._drops.close()
        if self._ring is not None and not self._reader_thread_alive():
            self._ring.close()       # after the final counts: the last file's ISBs carry them

    def _shutdown(self) -> None:
        self._halt.set()
        self._wake.set()
        if self._proc is not None and self._proc.poll() is None:
            self._end_capture()
        if self._reader_thread is not None:
            self._reader_thread.join(timeout=3.0)
        if self._drops is not None:
            self._drops.close()
        if self._ring is not None and not self._reader_thread_alive():
            self._ring.close()
            if self._ring_made and not self._ring.written:
                shutil.rmtree(self._ring.directory, ignore_errors=True)     # nothing was captured
        if self._proc is not None and not self._reader_thread_alive():
            for f in (self._proc.stdout, self._proc.stderr):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass

    def _reader_thread_alive(self) -> bool:
        t = getattr(self, "_reader_thread", None)
        return t is not None and t.is_alive()

    # ------------------------------------------------------------------------------ reading
    def _read_loop(self) -> None:
        try:
            for part in self._reader:
                self._ingest(part)
        except InputError as e:
            self._read_error = e
            self._end_capture(wait=False)
        except Exception as e:  # noqa: BLE001  (a bug: say it instead of hanging)
            self._internal_error = f"live reader: internal error: {type(e).__name__}: {e}"
            self._end_capture(wait=False)
        finally:
            # whatever is still in the pipe (e.g. a capture that wrote after an error) is read
            # so that the writer can exit
            try:
                while self._tee.read1(1 << 16):
                    pass
            except OSError:
                pass
            self._eof.set()
            self._wake.set()

    def _ingest(self, part: PacketTable) -> None:
        n = len(part)
        iface = part["iface"]
        ts = part["ts_ns"]
        counts = np.bincount(iface)
        nbytes = int(part["wirelen"].sum(dtype=np.int64))
        ts_min, ts_max = int(ts.min()), int(ts.max())
        off = part["offset"]
        frames = part["frame"]
        if self._first_data_at is None:
            self._first_data_at = time.monotonic()
        self._lag_max = max(self._lag_max, time.time() - ts_max / 1e9)
        paused = self._paused
        limit = self.window * 1e9
        with self._lock:
            if len(counts) > len(self._per_vantage):
                grown = np.zeros(len(counts), dtype=np.int64)
                grown[:len(self._per_vantage)] = self._per_vantage
                self._per_vantage = grown
            self._per_vantage[:len(counts)] += counts
            self._frames += n
            self._bytes += nbytes
            self._seq += 1
            self._window.append(_Chunk(self._seq, part, ts_min, ts_max, paused))
            self._window_frames += n
            self._newest_ts = ts_max if self._newest_ts is None else max(self._newest_ts, ts_max)
            cutoff = self._newest_ts - limit
            w = self._window
            while len(w) > 1 and (w[0].ts_max < cutoff or self._window_frames > self.max_window_frames):
                old = w.popleft()
                self._window_frames -= old.table.n
                if old.seq > self._claimed and not old.paused:
                    self._dropped_analyzer += old.table.n
        if self._ring is not None:
            self._ring.commit(int(off[0]), int(off[-1]), int(frames[0]), int(frames[-1]))
        self._wake.set()

    def _ring_trailer(self, order: str) -> bytes:
        """ISBs for a ring file being closed: frames received and drops so far, per interface."""
        reader = self._reader
        if reader is None:
            return b""
        kernel, capture = self._drop_counts()
        now_ns = time.time_ns()
        out = []
        with self._lock:
            per = self._per_vantage.copy()
        for v in reader.vantages:
            if v.section != 0:
                continue
            units = int(Fraction(now_ns - v.tsoffset_s * 1_000_000_000) / v.tsresol_ns)
            out.append(isb_block(order, v.index, units,
                                 ifrecv=int(per[v.id]) if v.id < len(per) else 0,
                                 ifdrop=kernel.get(v.name), osdrop=capture.get(v.name),
                                 comment="Counters provided by lvs-inspect (live ring)"))
        return b"".join(out)

    # ------------------------------------------------------------------------------ analysis
    def _analysis_loop(self) -> None:
        try:
            self._analysis_loop_inner()
        except Exception as e:  # noqa: BLE001  (a bug: say it instead of going quiet)
            self._internal_error = f"live analysis: internal error: {type(e).__name__}: {e}"
        finally:
            self._analysis_done.set()

    def _analysis_loop_inner(self) -> None:
        next_start = None
        while True:
            while True:
                if self._halt.is_set():
                    return
                eof = self._eof.is_set()
                with self._lock:
                    new = self._seq > self._claimed
                if eof:
                    if new or self._recheck_at is not None:
                        break           # the last window: everything is judged
                    return
                recheck = self._recheck_at is not None and time.time() >= self._recheck_at
                if (new or recheck) and not self._paused and self._first_data_at is not None:
                    if next_start is None:
                        next_start = self._first_data_at + self.interval
                    if time.monotonic() >= next_start:
                        break
                self._wake.wait(0.1)
                self._wake.clear()
            started = time.monotonic()
            try:
                self._analyse_window(final=eof)
                self._analysis_error = None
            except Exception as e:  # noqa: BLE001  (one bad window must not end the monitoring)
                self._analysis_error = (f"the analysis of the window ending {datetime.now():%H:%M:%S} failed "
                                        f"({type(e).__name__}: {e}); the capture goes on")
            took = time.monotonic() - started
            self._analysis_seconds.append(took)
            # at most about half of a core for the analysis: wait at least as long as it took
            next_start = max(started + self.interval, time.monotonic() + took)

    def _analyse_window(self, final: bool = False) -> None:
        with self._lock:
            chunks = list(self._window)
            if not chunks:
                return
            self._claimed = chunks[-1].seq
        views = [_view(c.table) for c in chunks]
        table = PacketTable.concat(views) if len(views) > 1 else views[0]
        inferring = self._topology is None
        try:
            analysis = analyse(table, topology=self._topology, rules=self._rule_set, toa_kinds=self.toa_kinds,
                               label=self.title)
        except InputError as e:
            if not inferring:
                raise
            self._topology_note = (f"no topology yet ({e.message.split('; give a topology')[0]}): "
                                   f"inferring again from the next window")
            return
        if inferring:
            analysis = self._settle(analysis)
        if not final:
            analysis = self._hold_back_edge(analysis, table)
        else:
            self._recheck_at = None
        ts = table["ts_ns"]
        span = (int(ts.max()) - int(ts.min())) / 1e9 if len(ts) else 0.0
        merged = self._merge(analysis)
        with self._lock:
            self._latest = merged
            self._latest_span = span
            self.windows_analysed += 1

    def _hold_back_edge(self, a: Analysis, table: PacketTable) -> Analysis:
        """Findings whose first evidence was captured less than ``edge_grace`` seconds ago wait for a
        later window: the answer to a SYN captured a millisecond before the window was cut has not
        arrived yet, and a window's leading edge would otherwise report it as unanswered. A fault
        that goes on shows again, with older evidence, in the next window; an analysis is run again
        once the grace has passed even if no traffic came. The last window of a capture that ended
        judges everything, like an audit of the stream."""
        self._recheck_at = None
        if self.edge_grace <= 0 or not a.findings:
            return a
        now_ns = time.time_ns()
        ts = table["ts_ns"]
        recent = ts >= now_ns - int(self.edge_grace * 1e9)
        if not recent.any():
            return a
        edge_frame = int(table["frame"][recent].min())
        keep = [f for f in a.findings if not f.frames or min(r.frame for r in f.frames) < edge_frame]
        if len(keep) == len(a.findings):
            return a
        self._recheck_at = time.time() + self.edge_grace
        self._wake.set()
        return dataclasses.replace(a, findings=keep, result=dataclasses.replace(a.result, findings=keep))

    def _settle(self, a: Analysis) -> Analysis:
        """A topology inferred from one window is kept once consecutive windows agree on it (while
        traffic ramps up, the first window may show only some of the real servers, and findings
        judged against a partial topology would be wrong). Until then the window's analysis is shown
        without its findings."""
        sig = topology_signature(a.topology)
        if sig == self._infer_sig:
            self._infer_stable += 1
        else:
            self._infer_sig, self._infer_stable = sig, 1
        self._infer_windows += 1
        n_svc = len(a.topology.services)
        n_rs = sum(len(s.real_servers) for s in a.topology.services)
        what = f"{n_svc} service(s), {n_rs} real server(s)"
        if self._infer_stable >= SETTLE_WINDOWS or self._infer_windows >= SETTLE_MAX or self._eof.is_set():
            self._topology = a.topology
            at = datetime.now().strftime("%H:%M:%S")
            self._topology_note = (f"topology inferred from the traffic at {at} ({what}); "
                                   f"give one with -t to check against the intended set-up")
            return a
        self._topology_note = (f"inferring the topology from the traffic ({what} so far): findings are shown "
                               f"once {SETTLE_WINDOWS} windows in a row agree on it")
        return dataclasses.replace(a, findings=[], result=dataclasses.replace(a.result, findings=[]))

    def _merge(self, a: Analysis) -> Analysis:
        now = self.clock()
        for f in a.findings:
            k = finding_key(f)
            old = self._found.get(k)
            if old is None:
                self._found[k] = f
                self._first_seen[k] = now
            elif f.count > old.count:
                self._found[k] = dataclasses.replace(old, count=f.count)
        findings = sorted(self._found.values(), key=_sort_key)
        return dataclasses.replace(a, findings=findings, result=dataclasses.replace(a.result, findings=findings))

    # ------------------------------------------------------------------------------ snapshots
    def _drop_counts(self) -> tuple[dict[str, int | None], dict[str, int | None]]:
        """(kernel drops, capture-engine drops) per interface name; None where unknown."""
        kernel: dict[str, int | None] = {}
        capture: dict[str, int | None] = {}
        if self._final:
            for name, d in self._final.items():
                kernel[name], capture[name] = d["kernel"], d["capture"]
            return kernel, capture
        d = self._drops
        if d is not None and d.error is None:
            kernel.update(d.counts())
        return kernel, capture

    def _interface_stats(self) -> tuple[InterfaceStats, ...]:
        with self._lock:
            per = self._per_vantage.copy()
        received: dict[str, int] = {}
        if self._reader is not None:
            for v in list(self._reader.vantages):
                received[v.name] = received.get(v.name, 0) + (int(per[v.id]) if v.id < len(per) else 0)
        kernel, capture = self._drop_counts()
        names = list(self.interfaces)
        for extra in list(received) + list(kernel):
            if extra not in names:
                names.append(extra)
        return tuple(InterfaceStats(name=n, received=received.get(n, 0), dropped_kernel=kernel.get(n),
                                    dropped_capture=capture.get(n)) for n in names)

    def _rate(self) -> tuple[float, float]:
        now = self.clock()
        with self._lock:
            frames, nbytes = self._frames, self._bytes
        r = self._rates
        r.append((now, frames, nbytes))
        while len(r) > 2 and now - r[1][0] >= 2.0:
            r.popleft()
        t0, f0, b0 = r[0]
        dt = now - t0
        if dt <= 0:
            return 0.0, 0.0
        return (frames - f0) / dt, (nbytes - b0) / dt

    def _notes(self) -> tuple[str, ...]:
        notes = []
        if self._topology_note:
            notes.append(self._topology_note)
        if self._analysis_error:
            notes.append(self._analysis_error)
        if self._drops is not None and self._drops.error and not self._final:
            notes.append(f"drop counts known only when dumpcap stops: {self._drops.error}")
        if self.capture_cmd and not self._final:
            notes.append("capture-engine drop counts known only when the capture command's stream ends")
        if self._ring is not None:
            notes.append(f"ring stopped: {self._ring.disabled}" if self._ring.disabled
                         else f"capture kept in {self._ring.directory}")
        return tuple(notes)

    def _make(self, stage: str, *, error: str | None = None) -> Snapshot:
        pps, bps = self._rate()
        with self._lock:
            analysis, span = self._latest, self._latest_span
            frames, dropped = self._frames, self._dropped_analyzer
        live = LiveStats(interfaces=self._interface_stats(), packets_per_second=pps, bytes_per_second=bps,
                         dropped_analyzer=dropped, window_seconds=span, ring_files=tuple(self.ring_paths()),
                         paused=self._paused)
        return Snapshot(stage=stage, clock=self.clock(), fraction=None, frames=frames, analysis=analysis,
                        live=live, error=error, notes=self._notes())


__all__ = ["LiveError", "LiveSource", "finding_key"]
