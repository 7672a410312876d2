"""The frames of an uncompressed trace file, in place: the file memory-mapped, each frame
located from the record offset the table keeps (``offset`` column), no second parse.

    located = map_frames("trace.pcapng", "pcapng", rec_off, caplen)
    if located is not None:
        mm, data_off = located          # frame i = mm[data_off[i]:data_off[i] + caplen[i]]

Where a frame's bytes start within its record: pcap record header 16 bytes; pcapng Enhanced
and obsolete Packet Blocks 28, Simple Packet Block 12 (records.py reads them the same way).
Each record's header is checked against what the first read found (block type, captured
length), so that a file that changed in between is reported instead of giving wrong bytes.
Compressed inputs and streams cannot be mapped: ``None``, and the caller reads them again.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from ..errors import InputError
from .records import GZIP_MAGIC, PCAP_MAGICS

_EPB, _PB, _SPB = 6, 2, 3


def _u32(b: np.ndarray, at: np.ndarray, big: bool) -> np.ndarray:
    """The 32-bit words at byte offsets ``at`` of ``b``, in either byte order."""
    w = [b[at + i].astype(np.uint32) for i in range(4)]
    if big:
        return (w[0] << 24) | (w[1] << 16) | (w[2] << 8) | w[3]
    return w[0] | (w[1] << 8) | (w[2] << 16) | (w[3] << 24)


def map_frames(path: str, fmt: str, rec_off: np.ndarray, caplen: np.ndarray
               ) -> tuple[mmap.mmap, np.ndarray] | None:
    """(the file mapped read-only, each frame's first byte in it) for the records at
    ``rec_off`` with ``caplen`` captured bytes, or None when ``path`` is not a regular
    uncompressed pcap/pcapng file. Raises InputError when the records no longer match."""
    if fmt not in ("pcap", "pcapng") or path == "-":
        return None
    try:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return None
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    if mm[:2] == GZIP_MAGIC:                          # the offsets are decompressed ones
        mm.close()
        return None
    rec = np.asarray(rec_off, dtype=np.int64)
    cap = np.asarray(caplen, dtype=np.int64)
    if len(rec) == 0:
        return mm, rec.copy()
    b = np.frombuffer(mm, dtype=np.uint8)

    def changed(what: str, at: int) -> InputError:
        return InputError(path, f"the file changed while it was being read twice ({what} at "
                                f"byte {at} differs from the first read)")

    if int(rec.min()) < 0 or int(rec.max()) + 16 > size:
        bad = int(rec[(rec < 0) | (rec + 16 > size)][0])
        raise changed("a record", bad)
    if fmt == "pcap":
        data = rec + 16
        big = PCAP_MAGICS.get(mm[:4], ("<",))[0] == ">"
        ok = _u32(b, rec + 8, big) == cap
    else:
        le, be = _u32(b, rec, False), _u32(b, rec, True)
        big = np.isin(be, (_EPB, _PB, _SPB)) & ~np.isin(le, (_EPB, _PB, _SPB))
        btype = np.where(big, be, le)
        spb = btype == _SPB
        data = rec + np.where(spb, 12, 28)
        # EPB/PB: captured length at +20; SPB: original length at +8, at least the captured
        at = rec + np.where(spb, 8, 20)
        field = np.where(big, _u32(b, np.minimum(at, size - 4), True),
                         _u32(b, np.minimum(at, size - 4), False)).astype(np.int64)
        ok = np.isin(btype, (_EPB, _PB, _SPB)) & np.where(spb, field >= cap, field == cap)
    ok &= data + cap <= size
    if not ok.all():
        raise changed("the record", int(rec[np.flatnonzero(~ok)[0]]))
    del b
    return mm, data
