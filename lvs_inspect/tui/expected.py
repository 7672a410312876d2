"""The ladder's "expected" column: what the reference forwarder says each packet should look like.

The hook is small on purpose. :func:`find_expected` returns a factory ``analysis -> source`` (or
None when the forwarder's replay is not there); a source has

    state: str                 # "idle", "running", "ready" or "unavailable"
    message: str               # why it is unavailable, or what it is doing
    prepare(stop) -> None      # slow (replays the whole trace): the app runs it in a thread worker
    fields(rows) -> dict[int, dict[str, str]]   # observed table rows -> expected fields, once ready

Field names are those of :data:`lvs_inspect.tui.model.FIELDS` ("eth.src", "ip.dst", "ip.ttl",
"dport", "seq", "toa", ...). The ladder shows the expected value next to the observed ones, the
differences in red; without a source the column is left out.

:class:`ReplayExpected` is the source over :func:`lvs_inspect.forwarder.replay.replay`: it replays
the trace once (the packets that reached the director), decodes the frames the director should
have sent, and pairs each with the observation after the director that the flows pair with its
input (:func:`lvs_inspect.flows.pairs.pair_rows`). It needs the input files (not stdin, not a live
pipe). A large trace is replayed in a child process (``python -m lvs_inspect.tui.expected DIR``),
so the screens keep the interpreter to themselves.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import import_module

import numpy as np

from ..checks.engine import Analysis

MODULE = "lvs_inspect.forwarder.replay"


#: traces up to this many frames are replayed in the app's process (a thread: milliseconds to a
#: few seconds); larger ones in a child process, so that the replay's per-packet loop does not take
#: the interpreter lock from the screens
IN_PROCESS_FRAMES = 200_000


#: the expected frames' columns the ladder shows (lvs_inspect.tui.model.packet_fields reads these)
COLUMNS = ("eth_src", "eth_dst", "ip_src", "ip_dst", "ip_ttl", "ip_id", "ip_proto", "sport", "dport", "tcp_flags",
           "tcp_seq", "tcp_ack", "payload_len", "tcp_mss", "toa_kind", "toa_addr", "toa_port", "tun", "out_src",
           "out_dst", "l4_csum", "ip_ver")


class Columns:
    """The expected frames as the few columns the ladder reads (what a child process hands back)."""

    def __init__(self, cols: dict, addrs6: list[bytes]):
        from ..capture.table import AddressBook
        self.cols = cols
        self.book = AddressBook()
        self.book.addrs6 = list(addrs6)

    @classmethod
    def of(cls, table) -> "Columns":
        return cls({name: table[name] for name in COLUMNS}, table.addrs6)

    def __len__(self) -> int:
        return len(self.cols["ip_ver"])

    def take(self, name: str, rows):
        return self.cols[name][rows]

    def addr_str(self, key: int) -> str:
        return self.book.text(key)


class ReplayExpected:
    def __init__(self, analysis: Analysis, replay: Callable):
        self.analysis = analysis
        self._replay = replay
        self.state = "idle"
        self.message = ""
        self._exp_of_obs = np.zeros(0, dtype=np.int64)
        self._exp_table = None
        self._cache: dict[int, dict[str, str]] = {}
        self.frame_index = None          # the model's (input, frame) -> row index, when it has one

    def prepare(self, stop=None) -> None:
        """Replay the trace (``stop``: a threading.Event that abandons a child-process replay)."""
        from ..capture import read_table

        a = self.analysis
        t = a.table
        paths = [i.path for i in t.inputs]
        if not paths or any(p == "-" or not os.path.isfile(p) for p in paths):
            self.state, self.message = "unavailable", "the forwarder replays trace files (not a stream)"
            return
        self.state, self.message = "running", "replaying the trace through the reference forwarder…"
        try:
            with tempfile.TemporaryDirectory(prefix="lvs-inspect-") as tmp:
                if len(t) <= IN_PROCESS_FRAMES:
                    res = self._replay(paths, a.topology, table=t, flows=a.flows)
                    n = len(res)
                    refs = after_director(t, a.flows, np.asarray(res.src_input), np.asarray(res.src_frame),
                                          self.frame_index)
                    exp = None
                    if n:
                        path = os.path.join(tmp, "expected.pcapng")
                        res.write(path, comments=False)
                        exp = Columns.of(read_table([path]))
                else:
                    n, refs, exp = _replay_in_child(paths, a.topology, tmp, stop)
                    if n is None:
                        self.state, self.message = "idle", ""
                        return
            self._map(exp, refs)
            self._exp_table = exp
            self.state = "ready"
            self.message = f"expected: reference forwarder ({n:,} frames replayed)"
        except Exception as e:      # the forwarder is an aid: its failure leaves the column out
            self.state, self.message = "unavailable", f"forwarder replay failed: {type(e).__name__}: {e}"

    def _map(self, exp, refs) -> None:
        """Expected frame j belongs to the observation of the frame ``refs`` names for it (the
        packet after the director that the flows pair with j's input)."""
        from .model import FrameIndex

        f = self.analysis.flows
        nobs = int(f.obs.max()) + 1 if len(f.obs) else 0
        exp_of_obs = np.full(nobs + 1, -1, dtype=np.int64)      # index nobs: "no observation"
        if exp is not None and nobs:
            index = self.frame_index if self.frame_index is not None else FrameIndex(self.analysis.table)
            rows = index.lookup(refs["out_input"], refs["out_frame"])
            j = np.flatnonzero(rows >= 0)
            obs = f.obs[rows[j]].astype(np.int64)
            keep = obs >= 0
            exp_of_obs[obs[keep]] = j[keep]
        self._exp_of_obs = exp_of_obs

    def fields(self, rows) -> dict[int, dict[str, str]]:
        from .model import packet_fields
        if self.state != "ready" or self._exp_table is None:
            return {}
        rows = np.asarray(rows, dtype=np.int64)
        obs = self.analysis.flows.obs[rows].astype(np.int64)
        js = np.where(obs >= 0, self._exp_of_obs[np.where(obs >= 0, obs, len(self._exp_of_obs) - 1)], -1)
        out = {}
        for r, j in zip(rows.tolist(), js.tolist()):
            if j < 0:
                continue
            if j not in self._cache:
                self._cache[j] = packet_fields(self._exp_table, np.array([j]))[0]
            out[r] = self._cache[j]
        return out


def after_director(table, flows, src_input: np.ndarray, src_frame: np.ndarray, index=None) -> dict:
    """For each expected frame (given by its input frame), the (input, frame) of the observed packet
    after the director that the flows pair with that input; -1 where none was captured."""
    from ..flows.legs import C_D, D_C, D_R, LEGS, R_D
    from ..flows.pairs import pair_rows
    from .model import FrameIndex

    n = len(src_input)
    out_input = np.full(n, -1, dtype=np.int64)
    out_frame = np.full(n, -1, dtype=np.int64)
    nobs = int(flows.obs.max()) + 1 if len(flows.obs) else 0
    if not n or not nobs:
        return {"out_input": out_input, "out_frame": out_frame}
    after = np.full(nobs + 1, -1, dtype=np.int64)           # observation -> a row of the one after D
    for leg_in, leg_out in ((C_D, D_R), (R_D, D_C)):
        p = pair_rows(flows, LEGS[leg_in], LEGS[leg_out])
        if p is None:
            continue
        ok = p.out_row >= 0
        after[flows.obs[p.in_row[ok]]] = p.out_row[ok]
    index = index if index is not None else FrameIndex(table)
    in_rows = index.lookup(src_input, src_frame)
    have = np.flatnonzero(in_rows >= 0)
    out_rows = after[flows.obs[in_rows[have]]]          # obs -1 reads the last entry: -1
    got = out_rows >= 0
    at, rows = have[got], out_rows[got]
    out_input[at] = table.vantage_inputs()[table["iface"][rows]]
    out_frame[at] = table["frame"][rows]
    return {"out_input": out_input, "out_frame": out_frame}


def _replay_in_child(paths, topology, tmp: str, stop):
    """Run the replay in ``python -m lvs_inspect.tui.expected TMP``: (frames, refs, Columns), or
    (None, {}, None) when stopped. The child decodes the expected frames too, and hands back only
    the columns the ladder reads: nothing heavy is left for this process."""
    with open(os.path.join(tmp, "job.pickle"), "wb") as fh:
        pickle.dump({"paths": list(paths), "topology": topology}, fh)
    proc = subprocess.Popen([sys.executable, "-m", "lvs_inspect.tui.expected", tmp], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        while True:
            try:
                _out, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stop is not None and stop.is_set():
                    proc.kill()
                    proc.communicate()
                    return None, {}, None
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode != 0:
        lines = [ln for ln in (err or "").strip().splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"exit status {proc.returncode}")
    with np.load(os.path.join(tmp, "expected.npz")) as z:
        data = {k: z[k] for k in z.files}
    n = int(data.pop("count"))
    refs = {"out_input": data.pop("out_input"), "out_frame": data.pop("out_frame")}
    addrs6 = [bytes(row) for row in data.pop("addrs6")]
    return n, refs, (Columns(data, addrs6) if n else None)


def _child(job_dir: str) -> int:
    """The child process: read and stitch the trace, replay it, pair each expected frame with the
    observed packet after the director, decode the expected frames; save what the parent needs."""
    from ..capture import read_table
    from ..flows import stitch
    from ..forwarder.replay import replay
    with open(os.path.join(job_dir, "job.pickle"), "rb") as fh:
        job = pickle.load(fh)
    table = read_table(job["paths"])
    flows = stitch(table, job["topology"])
    res = replay(job["paths"], job["topology"], table=table, flows=flows)
    out = after_director(table, flows, np.asarray(res.src_input), np.asarray(res.src_frame))
    out["count"] = np.array(len(res))
    del table, flows
    addrs6 = [b"\0" * 16]
    if len(res):
        path = os.path.join(job_dir, "expected.pcapng")
        res.write(path, comments=False)
        exp = read_table([path])
        out.update({name: exp[name] for name in COLUMNS})
        addrs6 = exp.addrs6
    out["addrs6"] = np.frombuffer(b"".join(addrs6), dtype=np.uint8).reshape(-1, 16)
    np.savez(os.path.join(job_dir, "expected.npz"), **out)
    return 0


def find_expected() -> Callable[[Analysis], object] | None:
    """A factory of expected-field sources, or None while the forwarder's replay is not there."""
    try:
        module = import_module(MODULE)
    except Exception:       # not there yet, or broken: the ladder goes without the column
        return None
    replay = getattr(module, "replay", None)
    if not callable(replay):
        return None
    return lambda analysis: ReplayExpected(analysis, replay)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
