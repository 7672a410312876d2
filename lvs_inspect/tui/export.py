"""What the UI writes: the findings in a report format, a connection's frames as pcapng, and the
captured bytes of single frames (for the Wireshark dissection). No Textual here.

Frames are read back from the inputs: a plain file is read at each frame's record offset (the
``offset`` column), a gzip-compressed one is streamed again up to the last frame wanted. An input
read from standard input cannot be read again: that is said in one line.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..capture.records import open_input
from ..capture.table import PacketTable
from ..capture.writer import DEFAULT_SNAPLEN, PcapngWriter
from ..checks.finding import AuditResult, Finding
from ..errors import InputError

#: report formats the UI exports, with their file suffix
REPORT_SUFFIX = {"junit": "junit.xml", "sarif": "sarif", "json": "json", "markdown": "md", "text": "txt"}

_EPB, _PB, _SPB = 6, 2, 3


def unique_path(directory: str | os.PathLike, stem: str, suffix: str) -> Path:
    """``directory/stem.suffix``, or ``stem-2.suffix``... when that exists already."""
    d = Path(directory)
    path = d / f"{stem}.{suffix}"
    k = 2
    while path.exists():
        path = d / f"{stem}-{k}.{suffix}"
        k += 1
    return path


def export_findings(result: AuditResult, findings: list[Finding], fmt: str, directory: str | os.PathLike) -> Path:
    """Write ``findings`` (those shown) with the audit's inputs and summary in format ``fmt``."""
    from ..report import render
    shown = AuditResult(inputs=result.inputs, summary=result.summary, findings=list(findings),
                        topology=result.topology)
    text = render(shown, fmt)
    path = unique_path(directory, "lvs-inspect-findings", REPORT_SUFFIX[fmt])
    path.write_text(text, encoding="utf-8")
    return path


def frame_bytes(table: PacketTable, rows, *, locate=None) -> list[bytes]:
    """The captured bytes of ``rows`` of ``table``, read back from their input files.

    ``locate`` (a live source's ``ring_locate``: stream frame -> (ring file, frame in it) or None)
    finds the frames of a stream input in the capture ring."""
    rows = np.asarray(rows, dtype=np.int64)
    out: list[bytes | None] = [None] * len(rows)
    if not len(rows):
        return []
    inputs = table.vantage_inputs()[table["iface"][rows]]
    for i in np.unique(inputs).tolist():
        mine = np.flatnonzero(inputs == i)
        summary = table.inputs[i]
        path = summary.path
        if path == "-" and locate is not None:
            got = _ring_frames(locate, table["frame"][rows[mine]])
        elif path == "-":
            raise InputError(path, "the trace came from standard input: its frames cannot be read again")
        elif summary.compressed:
            got = _stream_frames(path, table["frame"][rows[mine]])
        else:
            got = _seek_frames(path, summary.format, table["offset"][rows[mine]], table["caplen"][rows[mine]])
        for k, data in zip(mine.tolist(), got):
            out[k] = data
    return out      # type: ignore[return-value]


def _ring_frames(locate, frames: np.ndarray) -> list[bytes]:
    """Frames of a live capture, from the ring files they were written to."""
    where = []
    for fr in frames.tolist():
        loc = locate(int(fr))
        if loc is None:
            raise InputError("capture ring", f"live frame {fr} has left the ring")
        where.append((str(loc[0]), int(loc[1])))
    out: list[bytes | None] = [None] * len(where)
    for path in sorted({p for p, _ in where}):
        idx = [k for k, (p, _) in enumerate(where) if p == path]
        got = _stream_frames(path, np.array([where[k][1] for k in idx], dtype=np.int64))
        for k, data in zip(idx, got):
            out[k] = data
    return out      # type: ignore[return-value]


def _seek_frames(path: str, fmt: str, offsets: np.ndarray, caplens: np.ndarray) -> list[bytes]:
    got = []
    try:
        with open(path, "rb") as f:
            for off, cap in zip(offsets.tolist(), caplens.tolist()):
                f.seek(off)
                if fmt == "pcap":
                    start = off + 16
                else:
                    head = f.read(4)
                    if len(head) < 4:
                        raise InputError(path, "the file is shorter than when it was read", offset=off)
                    kind = int.from_bytes(head, "little")
                    if kind not in (_EPB, _PB, _SPB):
                        kind = int.from_bytes(head, "big")
                    if kind in (_EPB, _PB):
                        start = off + 28
                    elif kind == _SPB:
                        start = off + 12
                    else:
                        raise InputError(path, "no packet block here any more: the file changed since it was read",
                                         offset=off)
                f.seek(start)
                data = f.read(cap)
                if len(data) != cap:
                    raise InputError(path, "the file is shorter than when it was read", offset=off)
                got.append(data)
    except FileNotFoundError:
        raise InputError(path, "no such file (any more)") from None
    return got


def _stream_frames(path: str, frames: np.ndarray) -> list[bytes]:
    """Read the input again (it is compressed: no seeking) until every wanted frame is found."""
    want = np.unique(frames.astype(np.int64))
    found: dict[int, bytes] = {}
    last = int(want[-1])
    rec = open_input(path, 0, [])
    try:
        for batch in rec:
            fr = batch.frame.astype(np.int64)
            hit = np.flatnonzero(np.isin(fr, want))
            for k in hit.tolist():
                found[int(fr[k])] = batch.frame_bytes(k)
            if len(fr) and int(fr[-1]) >= last:
                break
    finally:
        rec.close()
    missing = [int(x) for x in want if int(x) not in found]
    if missing:
        raise InputError(path, f"frame {missing[0]} is no longer in the file")
    return [found[int(x)] for x in frames.tolist()]


def write_frames(table: PacketTable, rows, path: str | os.PathLike, *, comment: str | None = None,
                 locate=None) -> int:
    """Write ``rows`` (in time order) to a pcapng, one interface per capture point they came from.
    Returns the number of frames written."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows):
        rows = rows[np.lexsort((rows, table["ts_ns"][rows]))]
    data = frame_bytes(table, rows, locate=locate)
    vids = table["iface"][rows].tolist()
    used = sorted(set(vids))
    ifaces = []
    for v in used:
        vt = table.vantages[v]
        ifaces.append((vt.name, vt.linktype, vt.snaplen or DEFAULT_SNAPLEN, 9, vt.description))
    index = {v: k for k, v in enumerate(used)}
    ts = table["ts_ns"][rows].tolist()
    wire = table["wirelen"][rows].tolist()
    frames = table["frame"][rows].tolist()
    inputs = table.vantage_inputs()[table["iface"][rows]].tolist()
    with PcapngWriter(path, ifaces, comment=comment) as w:
        for v, t, b, wl, fr, inp in zip(vids, ts, data, wire, frames, inputs):
            path = table.inputs[inp].path
            w.write(index[v], int(t), b, wirelen=max(int(wl), len(b)),
                    comment=f"{path}#{fr}" if path != "-" else f"live capture frame {fr}")
    return len(rows)


def export_connection(table: PacketTable, rows, label: str, directory: str | os.PathLike, *,
                      locate=None) -> tuple[Path, int]:
    """A connection's frames (every capture point) as ``lvs-inspect-conn-<client>.pcapng``."""
    safe = "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in label)
    path = unique_path(directory, f"lvs-inspect-conn-{safe}", "pcapng")
    n = write_frames(table, rows, path, comment=f"lvs-inspect: connection {label}", locate=locate)
    return path, n
