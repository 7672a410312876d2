"""Chosen frames of an uncompressed trace file, read again without a second parse: each frame
is located from the record offset the first read kept (the table's ``offset`` column), and the
file is read in large sequential pieces that hold them.

    pieces = reread_frames("trace.pcapng", "pcapng", rec_off, caplen, slack=S)  # rec_off ascending
    if pieces is not None:
        for lo, hi, buf, data in pieces:   # rows lo..hi-1: buf[data[i]:data[i] + caplen[lo + i]]
            ...                            # (and S more bytes readable after each frame's start)

Where a frame's bytes start within its record: pcap record header 16 bytes; pcapng Enhanced
and obsolete Packet Blocks 28, Simple Packet Block 12 (as records.py reads them). Each record's
header is checked against what the first read found (block type, captured length), so that a
file that changed in between is reported instead of giving wrong bytes. Compressed inputs and
streams cannot be read at an offset: ``None``, and the caller parses them again.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from ..errors import InputError
from .records import GZIP_MAGIC, PCAP_MAGICS

_EPB, _PB, _SPB = 6, 2, 3
PIECE = 32 << 20          # bytes read at a time (a single larger frame is read whole)


def _u32(b: np.ndarray, at: np.ndarray, big: np.ndarray | bool) -> np.ndarray:
    """The 32-bit words at byte offsets ``at`` of ``b``, big-endian where ``big``."""
    def words(order: str) -> np.ndarray:
        return np.ndarray((len(b) - 3,), dtype=order + "u4", buffer=b, strides=(1,))[at]
    if not np.any(big):
        return words("<").astype(np.uint32)
    if np.all(big):
        return words(">").astype(np.uint32)
    return np.where(big, words(">"), words("<")).astype(np.uint32)


def _is_packet_block(btype: np.ndarray) -> np.ndarray:
    return (btype == _EPB) | (btype == _SPB) | (btype == _PB)


def reread_frames(path: str, fmt: str, rec_off: np.ndarray, caplen: np.ndarray, *,
                  slack: int = 64, piece: int = PIECE
                  ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]] | None:
    """Pieces (lo, hi, buffer, where each of rows lo..hi-1 starts in it) of the records at
    ``rec_off`` (ascending) with ``caplen`` captured bytes; None when ``path`` is not a regular
    uncompressed pcap/pcapng file. The buffer has at least ``slack`` bytes after each frame's
    first byte (whole-width row views), valid up to the frame's end; it is reused by the next
    piece. The iterator raises InputError when the records no longer match the first read."""
    if fmt not in ("pcap", "pcapng") or path == "-":
        return None
    try:
        if not os.path.isfile(path):
            return None
        fh = open(path, "rb")
    except OSError:
        return None
    head = fh.read(4)
    if head[:2] == GZIP_MAGIC:                # the offsets are the decompressed stream's
        fh.close()
        return None
    return _pieces(fh, path, fmt, head, np.asarray(rec_off, dtype=np.int64),
                   np.asarray(caplen, dtype=np.int64), piece, slack)


def _pieces(fh, path: str, fmt: str, head: bytes, rec: np.ndarray, cap: np.ndarray,
            piece: int, slack: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    def changed(what: str, at: int) -> InputError:
        return InputError(path, f"the file changed while it was being read twice ({what} at "
                                f"byte {at} differs from the first read)")

    with fh:
        size = os.fstat(fh.fileno()).st_size
        n = len(rec)
        if n == 0:
            return
        if np.any(np.diff(rec) <= 0):
            raise ValueError("record offsets must be ascending")
        pcap_big = fmt == "pcap" and PCAP_MAGICS.get(head, ("<",))[0] == ">"
        # where each record ends for sure: its data (SPB's header is shorter: 28 is an upper
        # bound, and the piece is cut at the data's real end once the block type is known)
        bound = rec + (16 if fmt == "pcap" else 28) + cap
        buf = np.zeros(min(piece, int(bound.max() - rec.min())) + slack, dtype=np.uint8)
        lo = 0
        while lo < n:
            start = int(rec[lo])
            hi = max(lo + 1, int(np.searchsorted(bound, start + piece, side="right")))
            end = min(int(bound[hi - 1]), size)
            if end - start + slack > len(buf):
                buf = np.zeros(end - start + slack, dtype=np.uint8)
            fh.seek(start)
            got = fh.readinto(memoryview(buf)[:end - start]) if end > start else 0
            b = buf[:got]
            at = rec[lo:hi] - start
            c = cap[lo:hi]
            if int(at[-1]) + 16 > got:
                raise changed("a record", int(rec[lo + int(np.searchsorted(at + 16, got, side="right"))]))
            if fmt == "pcap":
                data = at + 16
                ok = _u32(b, at + 8, pcap_big) == c
            else:
                le = _u32(b, at, False)
                big = ~_is_packet_block(le)
                if big.any():              # a big-endian section
                    be = _u32(b, at, True)
                    big &= _is_packet_block(be)
                    btype = np.where(big, be, le)
                else:
                    btype = le
                spb = btype == _SPB
                data = at + np.where(spb, 12, 28)
                # EPB/PB: captured length at +20; SPB: original length at +8, at least that
                field = _u32(b, np.minimum(at + np.where(spb, 8, 20), max(got - 4, 0)), big)
                ok = _is_packet_block(btype) & np.where(spb, field >= c, field == c)
            ok &= data + c <= got
            if not ok.all():
                raise changed("the record", int(rec[lo + int(np.flatnonzero(~ok)[0])]))
            yield lo, hi, buf, data
            lo = hi
