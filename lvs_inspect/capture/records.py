"""Record layer: pcap and pcapng containers -> columns of raw frames (RecordBatch).

The reader walks the container structure itself (no dpkt, no per-packet object):

* input: a file, a gzip-compressed file (detected by its magic, not its name) or ``-`` for
  stdin (a binary stream); read in chunks of ``chunk_bytes`` so memory stays bounded; a
  block larger than the chunk grows the buffer for that block only;
* classic pcap (µs and ns magics, both byte orders) and pcapng (any number of sections,
  each with its own byte order and interface numbering, EPB / SPB / obsolete PB, IDB
  options if_name, if_description, if_tsresol, if_tsoffset, ISB drop counters);
* timestamps are integer nanoseconds, never floats;
* frame numbers are those Wireshark shows: 1-based per input, counting every record
  Wireshark counts (pcapng custom blocks, systemd-journal and sysdig event blocks take a
  number too, although they yield no row here).

The record walk is vectorised.  Each chunk is scanned once with numpy for *candidate*
record starts (pcapng: 4-byte words with a small block type whose length field is a
multiple of 4 and whose trailing length copy matches; classic pcap: byte positions whose
high bytes of ts_sec / incl_len / orig_len are plausible).  The true chain of records is
then selected from the first record: consecutive candidates that link to each other are
taken as a run in O(1) numpy work; where a candidate lies inside another record's data
(a false candidate), the chain is followed with pointer doubling (jump tables
``J_k = J_{k-1}[J_{k-1}]`` and an expansion of the start's orbit).  Wherever the chain
stops (end of chunk, section header, unusual block, damage) one record is read by the
serial reference walker, which is the authority on structure and on every error, and the
vectorised walk resumes behind it.  ``walk="serial"`` uses the reference walker alone;
tests prove both give identical batches.
"""
from __future__ import annotations

import io
import os
import select
import stat
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Iterator

import numpy as np

from lvs_inspect.errors import InputError

__all__ = ["Vantage", "RecordBatch", "Damage", "InputRecords", "open_input"]

# ---------------------------------------------------------------------------------------
# Format constants

SHB_TYPE = 0x0A0D0D0A
SHB_MAGIC = b"\x0a\x0d\x0d\x0a"
BOM_LE = b"\x4d\x3c\x2b\x1a"
BOM_BE = b"\x1a\x2b\x3c\x4d"
IDB, PB, SPB, NRB, ISB, EPB = 1, 2, 3, 4, 5, 6
SYSTEMD_JOURNAL = 9
# Non-packet records Wireshark numbers as frames (custom blocks, systemd journal export,
# sysdig events): they take a frame number but produce no row.
NUMBERED_TYPES = frozenset({SYSTEMD_JOURNAL, 0x0BAD, 0x40000BAD,
                            0x204, 0x208, 0x216, 0x217, 0x221, 0x222})
# Smallest legal total length per block type (header 8 + fixed body + trailer 4).
MIN_BLOCK_LEN = {SHB_TYPE: 28, IDB: 20, PB: 32, SPB: 16, ISB: 24, EPB: 32}
BLOCK_NAMES = {SHB_TYPE: "SHB", IDB: "IDB", PB: "PB", SPB: "SPB", NRB: "NRB", ISB: "ISB",
               EPB: "EPB"}
MAX_BLOCK = 16 << 20          # larger block lengths are taken as corrupt
PCAP_MAX_RECORD = 262144      # Wireshark's standard maximum packet size
PCAP_MAGICS = {               # first 4 bytes -> (byte order, ns per fraction unit)
    b"\xd4\xc3\xb2\xa1": ("<", 1000),
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
GZIP_MAGIC = b"\x1f\x8b"
_VEC_TYPES = 10               # pcapng candidates: block types 1..10 (SHB is never one)
# Lookup tables indexed by block type 0..10 (vector path)
_MINLEN_LUT = np.array([12, 20, 32, 16, 12, 24, 32, 12, 12, 12, 12], dtype=np.int64)
_PKT_LUT = np.zeros(11, dtype=bool)
_PKT_LUT[[PB, SPB, EPB]] = True
_NUM_LUT = _PKT_LUT.copy()
_NUM_LUT[SYSTEMD_JOURNAL] = True

_OK, _NEED, _STOP = 0, 1, 2
_SLACK = 64                   # bytes allocated past each chunk for the row views


# ---------------------------------------------------------------------------------------
# Public data types

@dataclass
class Vantage:
    """One capture point: an interface of a pcapng, or a classic pcap file."""

    id: int                 # global vantage id (the ``iface`` column)
    input: int              # index of the input file in the read
    path: str               # input path as given ('-' for stdin)
    index: int              # pcapng section-relative IDB order, 0 for pcap
    name: str               # pcapng if_name, else the file's basename (without .gz)
    linktype: int           # DLT/LINKTYPE number
    snaplen: int            # 0 = no limit (pcapng)
    tsresol_ns: Fraction    # nanoseconds per timestamp unit (exact): 1000 = µs, 1 = ns
    description: str = ""   # pcapng if_description
    tsoffset_s: int = 0     # pcapng if_tsoffset: seconds added to every timestamp
    section: int = 0        # pcapng section number inside the input (0-based)


@dataclass
class RecordBatch:
    """Complete records of one input, in file order."""

    buf: np.ndarray         # uint8 buffer holding the frames' bytes
    data_off: np.ndarray    # int64 offset of each frame's first byte in buf
    caplen: np.ndarray      # uint32 bytes captured (all present in buf)
    wirelen: np.ndarray     # uint32 original length
    ts_ns: np.ndarray       # int64 ns since epoch
    iface: np.ndarray       # uint16 global vantage id
    rec_off: np.ndarray     # int64 byte offset of the record/block in the decompressed input
    frame: np.ndarray       # uint32 1-based frame number within the input

    def __len__(self) -> int:
        return len(self.data_off)

    def frame_bytes(self, i: int) -> bytes:
        """The captured bytes of row ``i`` (for tests and single-frame views)."""
        off = int(self.data_off[i])
        return self.buf[off:off + int(self.caplen[i])].tobytes()


@dataclass
class Damage:
    """A capture that is cut short or corrupt: frames before ``offset`` were kept."""

    path: str
    offset: int             # byte offset (decompressed input) of the bad record/block
    message: str

    def __str__(self) -> str:
        return f"{self.path}: byte {self.offset}: {self.message}"


# ---------------------------------------------------------------------------------------
# Byte sources

def _is_stream(f) -> bool:
    """A pipe, socket or terminal: data arrives over time (not a regular file)."""
    try:
        return not stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


STREAM_WAIT = 0.05            # s a stream keeps filling a chunk once it has data


def _ready(f, timeout: float) -> bool:
    try:
        return bool(select.select([f], [], [], max(timeout, 0.0))[0])
    except (OSError, ValueError, TypeError):
        return True


class _Patience:
    """Whether a stream read should go on: until ``min_bytes`` have come, then while more
    arrives within STREAM_WAIT of that moment (bounded latency, full chunks when fast)."""

    def __init__(self, f, min_bytes: int):
        self.f = f
        self.min_bytes = min_bytes
        self.deadline = None

    def more(self, got: int) -> bool:
        if got < self.min_bytes:
            return True
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + STREAM_WAIT
        return _ready(self.f, self.deadline - now)


class _PlainSource:
    """The input's bytes.  A regular file fills every buffer; a stream (pipe, e.g.
    ``dumpcap -w -``) returns once ``min_bytes`` have arrived and no more is ready, so a
    live capture is read as it comes instead of waiting for a full chunk."""

    def __init__(self, f: BinaryIO, prefix: bytes):
        self._f = f
        self._prefix = prefix
        self._stream = _is_stream(f)
        # read1: buffered bytes if there are any, else one raw read (readinto1 would also
        # block on a raw read when asked for more than the buffer holds)
        self._read1 = getattr(f, "read1", None) if self._stream else None
        self.eof = False
        self.note: tuple[int, str] | None = None

    def readinto(self, mv: memoryview, min_bytes: int = 1) -> int:
        n = len(mv)
        got = 0
        if self._prefix:
            got = min(len(self._prefix), n)
            mv[:got] = self._prefix[:got]
            self._prefix = self._prefix[got:]
        wait = _Patience(self._f, min_bytes) if self._stream else None
        while got < n and not self.eof:
            if wait is not None and not wait.more(got):
                break
            if self._read1 is not None:
                data = self._read1(n - got)
                k = len(data)
                mv[got:got + k] = data
            else:
                k = self._f.readinto(mv[got:])
            if not k:
                self.eof = True
                break
            got += k
        return got


def _salvage(d, data: bytes) -> bytes:
    """What ``d`` decompresses from ``data`` before raising: fed in pieces of 256 bytes, and
    the piece holding the damage again byte by byte, so nothing before the damage is lost
    (the output is not limited: this happens once per input)."""
    out = []
    for i in range(0, len(data), 256):
        piece = data[i:i + 256]
        keep = d.copy()
        try:
            out.append(d.decompress(piece))
        except zlib.error:
            for j in range(len(piece)):
                try:
                    out.append(keep.decompress(piece[j:j + 1]))
                except zlib.error:
                    break
            break
    return b"".join(out)


class _GzipSource:
    """Incremental gzip decompression (multi-member), bounded output per call."""

    IN_CHUNK = 1 << 20

    def __init__(self, f: BinaryIO, prefix: bytes):
        self._f = f
        self._stream = _is_stream(f)
        self._in = prefix
        self._d = zlib.decompressobj(wbits=31)
        self._out = memoryview(b"")
        self._member_end = False
        self._done = False
        self.total = 0              # decompressed bytes delivered
        self.note: tuple[int, str] | None = None

    @property
    def eof(self) -> bool:
        """Nothing more to deliver: the input is exhausted (or damaged) and no output is pending."""
        return self._done and not len(self._out)

    def _raw(self) -> bytes:
        if self._stream:
            read1 = getattr(self._f, "read1", None)
            return (read1 or self._f.read)(self.IN_CHUNK) or b""
        return self._f.read(self.IN_CHUNK) or b""

    def readinto(self, mv: memoryview, min_bytes: int = 1) -> int:
        n = len(mv)
        got = 0
        wait = _Patience(self._f, min_bytes) if self._stream else None
        while got < n:
            if len(self._out):
                k = min(len(self._out), n - got)
                mv[got:got + k] = self._out[:k]
                self._out = self._out[k:]
                got += k
                continue
            if self._done:
                break
            if not self._in:
                if wait is not None and not wait.more(got):
                    break
                self._in = self._raw()
                if not self._in:
                    if not self._member_end:
                        self.note = (self.total + got, "gzip stream cut short")
                    self._done = True
                    break
            if self._member_end:
                # Between members: another member, zero padding, or trailing garbage.
                while len(self._in) < 2:
                    more = self._raw()
                    if not more:
                        break
                    self._in += more
                if self._in[:2] == GZIP_MAGIC:
                    self._d = zlib.decompressobj(wbits=31)
                    self._member_end = False
                else:
                    if self._in.strip(b"\0"):
                        self.note = (self.total + got,
                                     "bytes after the end of the gzip stream ignored")
                    self._done = True
                    break
            backup = self._d.copy()
            try:
                out = self._d.decompress(self._in, max(n - got, 1 << 16))
            except zlib.error as err:
                # keep what decompresses before the damage: feed the same input again in
                # small pieces to a copy of the decompressor taken before this call
                out = _salvage(backup, self._in)
                self.note = (self.total + got + len(out), f"gzip data corrupt ({err})")
                self._done = True
                self._out = memoryview(out)
                continue
            if self._d.eof:
                self._in = self._d.unused_data
                self._member_end = True
            else:
                self._in = self._d.unconsumed_tail
            self._out = memoryview(out)
        self.total += got
        return got


# ---------------------------------------------------------------------------------------
# Timestamp conversion (shared by both walkers)

def _units_to_ns(units: np.ndarray, res: Fraction, offset_s: int) -> np.ndarray:
    """floor(units * res) + offset_s * 1e9 as int64, exact while the product fits."""
    num, den = res.numerator, res.denominator
    u = units.astype(np.uint64, copy=False)
    if den == 1:
        ns = u * np.uint64(num)
    else:
        if num * den >= 1 << 63:        # absurd resolutions (< 2^-52 s): keep 63 bits
            shift = (num * den).bit_length() - 63
            u = u >> np.uint64(shift)
            den >>= shift
        d = np.uint64(den)
        ns = (u // d) * np.uint64(num) + ((u % d) * np.uint64(num)) // d
    ns = ns.view(np.int64)
    if offset_s:
        ns = ns + np.int64(offset_s * 1_000_000_000)
    return ns


def _tsresol(code: int) -> Fraction:
    exp = code & 0x7F
    if code & 0x80:
        return Fraction(10 ** 9, 2 ** exp)
    return Fraction(10 ** 9, 10 ** exp)


# ---------------------------------------------------------------------------------------
# Candidate chains (vector walk)

def _take(mask: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rows of ``arrays`` where ``mask`` holds; no copy when it holds everywhere."""
    if mask.all():
        return arrays
    sel = np.flatnonzero(mask)
    return tuple(a[sel] for a in arrays)


class _Chain:
    """Candidate record starts ``c`` (sorted) with successors ``nx`` and extra fields.

    ``orbit(start)`` returns the indices (into c) of the chain of records beginning at
    ``start`` and following ``nx`` while it stays on candidates; ``None`` when ``start``
    is not a candidate.  Consecutive candidates that link up are taken as a run; when a
    record's successor lies beyond the next candidate (false candidates inside its data),
    candidates that no candidate points to are dropped and, if the chain still jumps over
    candidates, it is followed by pointer doubling.
    """

    def __init__(self, c: np.ndarray, nx: np.ndarray, limit: int, scratch: "_Scratch",
                 **fields: np.ndarray):
        self.c = c
        self.nx = nx
        self.f = fields
        self._limit = limit
        self._scratch = scratch
        self._pruned = False
        self._breaks: np.ndarray | None = None
        self._jumps: list[np.ndarray] | None = None

    def orbit(self, start: int) -> np.ndarray | None:
        s = self._find(start)
        if s is None:
            return None
        j, cont = self._run_end(s)
        if cont and not self._pruned:
            self._prune(start)
            s = self._find(start)
            j, cont = self._run_end(s)
        run = np.arange(s, j + 1)
        if cont:
            run = np.concatenate((run, self._orbit_from(cont)))
        return run

    def _find(self, start: int) -> int | None:
        c = self.c
        s = int(np.searchsorted(c, start))
        if s >= len(c) or c[s] != start:
            return None
        return s

    def _run_end(self, s: int) -> tuple[int, int]:
        """Last index of the run of linked candidates from s, and the candidate index
        the chain continues at after skipping candidates (0 if it ends)."""
        c, nx = self.c, self.nx
        if self._breaks is None:
            self._breaks = np.append(np.flatnonzero(c[1:] != nx[:-1]), len(c) - 1)
        br = self._breaks
        j = int(br[np.searchsorted(br, s)])
        t = nx[j]
        k = int(np.searchsorted(c, t))
        if k < len(c) and c[k] == t:
            return j, k
        return j, 0

    def _prune(self, start: int) -> None:
        keep = self._scratch.pointed(self.c, self.nx, self._limit)
        keep[np.searchsorted(self.c, start)] = True
        sel = np.flatnonzero(keep)
        self.c, self.nx = self.c[sel], self.nx[sel]
        self.f = {k: v[sel] for k, v in self.f.items()}
        self._pruned = True
        self._breaks = None

    def _orbit_from(self, k: int) -> np.ndarray:
        c, nx = self.c, self.nx
        m = len(c)
        if self._jumps is None:
            idx = np.searchsorted(c, nx)
            ok = idx < m
            ok[ok] = c[idx[ok]] == nx[ok]
            j0 = np.append(np.where(ok, idx, m), m).astype(np.intp)
            jumps = [j0]
            while True:
                jk = jumps[-1][jumps[-1]]
                if (jk[:m] == m).all():
                    break
                jumps.append(jk)
            self._jumps = jumps
        s = np.array([k], dtype=np.intp)
        for jk in reversed(self._jumps):
            t = jk[s]
            s = np.concatenate((s, t[t != m]))
        return np.sort(s)


class _Scratch:
    """Work arrays reused from chunk to chunk: fresh multi-MB arrays would page-fault on
    every chunk.  ``mark`` is kept all-False between uses."""

    def __init__(self):
        self._a: dict[str, np.ndarray] = {}
        self._mark = np.zeros(0, bool)

    def get(self, name: str, n: int, dtype) -> np.ndarray:
        a = self._a.get(name)
        if a is None or len(a) < n:
            a = self._a[name] = np.empty(max(n, 1), dtype)
        return a[:n]

    def pointed(self, c: np.ndarray, nx: np.ndarray, limit: int) -> np.ndarray:
        """Mask of the candidates ``c`` that some candidate's successor ``nx`` points to.

        A record other than the first of a chain always has its predecessor among the
        candidates, so dropping the others (false candidates, mostly) never changes the
        chain behind a kept start."""
        if len(self._mark) < limit + 1:
            self._mark = np.zeros(limit + 1, bool)
        mark = self._mark
        mark[nx] = True
        keep = mark[c]
        mark[nx] = False
        return keep


def _rows(a: np.ndarray, n: int, width: int) -> np.ndarray:
    """Read-only (n, width) view whose row i is a[i:i+width] (a has width-1 slack)."""
    return np.lib.stride_tricks.as_strided(a, shape=(n, width),
                                           strides=(a.strides[0], a.strides[0]),
                                           writeable=False)


def _empty_chain(scratch, *names) -> _Chain:
    e = np.empty(0, np.int64)
    return _Chain(e, e, 0, scratch, **{k: e for k in names})


def _pcapng_chain(w: np.ndarray, nw: int, scratch: _Scratch, wide: bool) -> _Chain:
    """Candidate block starts in native uint32 words ``w[:nw]`` (block-aligned at 0).

    Candidates are EPBs, or (``wide``) any block type 1..10: a true block that is not a
    candidate only costs a serial step, so the narrow filter is the fast default."""
    if nw < 3:
        return _empty_chain(scratch, "blen")
    typ = w[:nw - 2]
    bm = scratch.get("bool", nw - 2, bool)
    if wide:
        t1 = scratch.get("u32", nw - 2, np.uint32)
        np.subtract(typ, np.uint32(1), out=t1)
        np.less(t1, np.uint32(_VEC_TYPES), out=bm)
    else:
        np.equal(typ, np.uint32(EPB), out=bm)
    c = np.flatnonzero(bm)
    blen = w[c + 1]
    k = (blen >> np.uint32(2)).astype(np.int64)
    c, blen, k = _take(((blen & np.uint32(3)) == 0) & (blen >= np.uint32(12))
                       & (k <= nw - c), c, blen, k)
    c, blen, k = _take(w[c + k - 1] == blen, c, blen, k)
    return _Chain(c, c + k, nw, scratch, blen=blen.astype(np.int64))


def _pcap_chain(arr: np.ndarray, rows: np.ndarray, n: int, order: str, t0: int,
                maxrec: int, snaplen: int, fracmax: int, scratch: _Scratch) -> _Chain:
    """Candidate record starts (byte positions) in a classic pcap chunk ``arr[:n]``.

    Byte tests first (high bytes of incl_len and orig_len zero, high byte of ts_sec the
    first record's or one more), then the 16-byte headers of the survivors are gathered
    as rows and checked (incl_len plausible, fraction below one second)."""
    m = n - 15
    if m <= 0:
        return _empty_chain(scratch, "ts", "frac", "incl", "orig")
    if order == "<":
        hts, hin, hor = arr[3:3 + m], arr[11:11 + m], arr[15:15 + m]
    else:
        hts, hin, hor = arr[0:m], arr[8:8 + m], arr[12:12 + m]
    x = scratch.get("u8", m, np.uint8)
    y = scratch.get("u8b", m, np.uint8)
    mask = scratch.get("bool", m, bool)
    np.bitwise_or(hin, hor, out=x)                  # 0 where both high bytes are 0
    np.subtract(hts, np.uint8(t0), out=y)
    np.right_shift(y, np.uint8(1), out=y)           # 0 where ts_sec top byte is t0, t0+1
    np.bitwise_or(x, y, out=x)
    np.equal(x, 0, out=mask)
    c = np.flatnonzero(mask)
    hdr = rows[c].view(order + "u4")                # (k, 4): ts, frac, incl, orig
    if order != "=" and not hdr.dtype.isnative:
        hdr = hdr.astype(np.uint32)
    incl = hdr[:, 2].astype(np.int64)
    orig = hdr[:, 3]
    frac = hdr[:, 1]
    nx = c + 16 + incl
    c, hdr, nx = _take((incl <= maxrec) & ((incl <= orig) | (incl <= snaplen))
                       & (frac < fracmax) & (nx <= n), c, hdr, nx)
    return _Chain(c, nx, n, scratch, ts=hdr[:, 0], frac=hdr[:, 1], incl=hdr[:, 2],
                  orig=hdr[:, 3])


# ---------------------------------------------------------------------------------------
# Per-chunk accumulation

class _Acc:
    """Frames of one chunk: vector pieces and serially read frames, in file order."""

    COLS = ("rec_off", "data_off", "caplen", "wirelen", "ts", "vid", "seq", "nots")

    def __init__(self, ts_dtype):
        self.ts_dtype = ts_dtype    # int64 ns (pcap) or uint64 timestamp units (pcapng)
        self.pieces: list[dict] = []
        self.rows: list[tuple] = []

    def add_row(self, *row) -> None:
        self.rows.append(row)

    def add_piece(self, **cols) -> None:
        self._flush_rows()
        cols["ts"] = cols["ts"].astype(self.ts_dtype, copy=False)
        self.pieces.append(cols)

    def _flush_rows(self) -> None:
        if self.rows:
            cols = list(zip(*self.rows))
            self.rows = []
            self.pieces.append({
                "rec_off": np.array(cols[0], np.int64),
                "data_off": np.array(cols[1], np.int64),
                "caplen": np.array(cols[2], np.int64),
                "wirelen": np.array(cols[3], np.int64),
                "ts": np.array(cols[4], self.ts_dtype),
                "vid": np.array(cols[5], np.int64),
                "seq": np.array(cols[6], np.int64),
                "nots": np.array(cols[7], bool),
            })

    def columns(self) -> dict | None:
        self._flush_rows()
        if not self.pieces:
            return None
        if len(self.pieces) == 1:
            return self.pieces[0]
        out = {}
        for k in self.COLS:
            parts = [p[k] for p in self.pieces if k in p]
            if len(parts) == len(self.pieces):
                out[k] = np.concatenate(parts)
            elif k == "nots":
                out[k] = np.concatenate([p.get(k, np.zeros(len(p["seq"]), bool))
                                         for p in self.pieces])
        return out


# ---------------------------------------------------------------------------------------
# The reader

class InputRecords:
    """Records of one input, iterable over RecordBatch with bounded memory.

    Attributes: ``damage`` (list of Damage), ``frames`` (rows yielded so far),
    ``numbered`` (highest frame number used, as Wireshark counts), ``format``
    ("pcap"/"pcapng"), ``compressed``, ``stats`` ({vantage id: {"ifrecv", "ifdrop",
    "osdrop"}} from pcapng ISBs, last value per interface), ``vantages_added``.
    """

    def __init__(self, path: str, input_index: int, vantages: list[Vantage], *,
                 chunk_bytes: int = 8 << 20, stdin=None, walk: str = "vector"):
        if walk not in ("vector", "serial"):
            raise ValueError(f"walk must be 'vector' or 'serial', not {walk!r}")
        if int(chunk_bytes) < 1:
            raise ValueError("chunk_bytes must be positive")
        self.path = str(path)
        self.input = input_index
        self.vantages = vantages
        self.chunk_bytes = int(chunk_bytes)
        self.walk = walk
        self.damage: list[Damage] = []
        self.frames = 0
        self.numbered = 0
        self.format = ""
        self.compressed = False
        self.stats: dict[int, dict[str, int]] = {}
        self.vantages_added: list[Vantage] = []
        base = os.path.basename(self.path.rstrip("/")) or self.path
        self._basename = base[:-3] if base.endswith(".gz") and len(base) > 3 else base
        self._fh: BinaryIO | None = None
        self._owns_fh = False
        self._gen: Iterator[RecordBatch] | None = None
        # pcapng state
        self._order: str | None = None
        self._section = -1
        self._sec_ifaces: list[int] = []
        self._lut = np.zeros(0, np.int64)
        self._n_idb = 0
        # pcap state
        self._pcap_vid = -1
        self._scratch = _Scratch()
        self._wide = False          # pcapng candidates: EPB only until other blocks abound
        self._open(stdin)

    # -- opening -------------------------------------------------------------------------
    def _err(self, message: str, offset: int | None = None) -> InputError:
        return InputError(self.path, message, offset=offset)

    def _open(self, stdin) -> None:
        if self.path == "-":
            f = stdin if stdin is not None else sys.stdin
            f = getattr(f, "buffer", f)
            self._fh, self._owns_fh = f, False
        else:
            try:
                if os.path.isdir(self.path):
                    raise self._err("is a directory, not a capture file")
                self._fh = open(self.path, "rb")
                self._owns_fh = True
            except FileNotFoundError:
                raise self._err("no such file") from None
            except PermissionError:
                raise self._err("permission denied") from None
            except OSError as err:
                raise self._err(f"cannot open: {err.strerror or err}") from None
        try:
            self._detect()
        except BaseException:
            self.close()
            raise

    def _read_min(self, src, have: bytes, n: int) -> bytes:
        """``have`` extended to at least n bytes of the source (fewer only at its end)."""
        if len(have) >= n:
            return have
        buf = bytearray(n - len(have))
        mv = memoryview(buf)
        got = 0
        try:
            while got < len(buf) and not src.eof:
                got += src.readinto(mv[got:], min_bytes=len(buf) - got)
        except OSError as err:
            raise self._err(f"read error: {err.strerror or err}") from None
        return have + bytes(buf[:got])

    def _detect(self) -> None:
        raw = _PlainSource(self._fh, b"")
        magic = self._read_min(raw, b"", 2)
        if magic[:2] == GZIP_MAGIC:
            self._src = _GzipSource(self._fh, magic)
            self.compressed = True
        else:
            self._src = _PlainSource(self._fh, magic)
            self._src.eof = raw.eof
        head = self._read_min(self._src, b"", 4)
        if head[:4] in PCAP_MAGICS:
            head = self._read_min(self._src, head, 24)
        elif head[:4] == SHB_MAGIC:
            head = self._read_min(self._src, head, 28)
        gz = " (gzip-compressed)" if self.compressed else ""
        if not head:
            if self.compressed and self._src.note:
                raise self._err(self._src.note[1], offset=0)
            raise self._err("empty file" + gz)
        if head[:4] in PCAP_MAGICS:
            self._open_pcap(head)
        elif head[:4] == SHB_MAGIC:
            self._open_pcapng(head)
        else:
            head = self._read_min(self._src, head, 8)
            raise self._err(f"not a pcap or pcapng capture{gz}: starts with {head[:8]!r}",
                            offset=0)

    def _open_pcap(self, head: bytes) -> None:
        self.format = "pcap"
        if len(head) < 24:
            raise self._err(f"pcap file header cut short ({len(head)} of 24 bytes)",
                            offset=0)
        order, fracmul = PCAP_MAGICS[head[:4]]
        _maj, _min, _zone, _sig, snaplen, network = struct.unpack_from(
            order + "HHiIII", head, 4)
        self._p_order = order
        self._p_fracmul = fracmul
        self._p_fracmax = 1_000_000 if fracmul == 1000 else 1_000_000_000
        self._p_snaplen = snaplen
        # Wireshark's bound, capped so that a lying length cannot make us buffer GBs
        self._p_maxrec = min(max(snaplen, PCAP_MAX_RECORD), MAX_BLOCK)
        v = self._add_vantage(index=0, name=self._basename, linktype=network & 0xFFFF,
                              snaplen=snaplen,
                              tsresol=Fraction(1000) if fracmul == 1000 else Fraction(1),
                              section=0)
        self._pcap_vid = v.id
        self._leftover = head[24:]
        self._base = 24

    def _open_pcapng(self, head: bytes) -> None:
        self.format = "pcapng"
        if len(head) < 28:
            raise self._err(f"pcapng section header cut short ({len(head)} bytes)",
                            offset=0)
        bom = head[8:12]
        if bom not in (BOM_LE, BOM_BE):
            raise self._err(f"pcapng byte-order magic {bom.hex()} is invalid", offset=8)
        order = "<" if bom == BOM_LE else ">"
        blen, = struct.unpack_from(order + "I", head, 4)
        major, = struct.unpack_from(order + "H", head, 12)
        if blen % 4 or blen < 28 or blen > MAX_BLOCK:
            raise self._err(f"pcapng section header length {blen} is invalid", offset=4)
        if major != 1:
            raise self._err(f"pcapng version {major} is not supported", offset=12)
        self._leftover = head
        self._base = 0

    def _add_vantage(self, *, index, name, linktype, snaplen, tsresol, section,
                     description="", tsoffset=0) -> Vantage:
        v = Vantage(id=len(self.vantages), input=self.input, path=self.path, index=index,
                    name=name, linktype=linktype, snaplen=snaplen, tsresol_ns=tsresol,
                    description=description, tsoffset_s=tsoffset, section=section)
        if v.id > 0xFFFF:
            raise self._err("more than 65536 interfaces in one read")
        self.vantages.append(v)
        self.vantages_added.append(v)
        return v

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[RecordBatch]:
        if self._gen is None:
            self._gen = self._generate()
        return self._gen

    def __enter__(self) -> InputRecords:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def position(self) -> int | None:
        """Bytes of the file read so far (compressed bytes for gzip); None for a stream."""
        try:
            return self._fh.tell() if self._fh is not None else None
        except (OSError, AttributeError, ValueError):
            return None

    def close(self) -> None:
        if self._owns_fh and self._fh is not None:
            self._fh.close()
        self._fh = None

    def _note(self, offset: int, message: str) -> None:
        self.damage.append(Damage(self.path, offset, message))

    def _generate(self) -> Iterator[RecordBatch]:
        leftover = self._leftover
        self._leftover = b""
        base = self._base
        need = 0
        stopped = False
        try:
            while self._fh is not None:         # None: closed by the caller
                k = len(leftover)
                want = max(k + self.chunk_bytes, need)
                full = np.empty(want + _SLACK, dtype=np.uint8)   # slack for row views
                mv = memoryview(full)[:want]
                mv[:k] = leftover
                try:
                    got = (self._src.readinto(mv[k:], min_bytes=max(1, need - k))
                           if not self._src.eof else 0)
                except OSError as err:
                    self._note(base + k, f"read error: {err.strerror or err}")
                    got, stopped = 0, True
                n = k + got
                eof = stopped or self._src.eof
                if n == 0:
                    break
                arr = full[:n]
                self._acc = _Acc(np.int64 if self.format == "pcap" else np.uint64)
                self._base_cur = base
                if self.format == "pcap":
                    pos, need = self._chunk_pcap(full, n, eof)
                else:
                    pos, need = self._chunk_pcapng(full, n, eof)
                batch = self._batch(arr, base)
                self._acc = None
                if batch is not None:
                    self.frames += len(batch)
                    yield batch
                if need < 0 or stopped or (eof and pos >= n):
                    stopped = True
                    break
                leftover = arr[pos:n].tobytes()
                base += pos
        finally:
            src_note = self._src.note
            if src_note:
                self._note(src_note[0], src_note[1])
            self.close()

    # -- batch assembly ------------------------------------------------------------------
    def _batch(self, arr: np.ndarray, base: int) -> RecordBatch | None:
        cols = self._acc.columns()
        if cols is None:
            return None
        if self.format == "pcap":
            ts = cols["ts"]
        else:
            ts = self._convert_ts(cols["ts"], cols["vid"])
            nots = cols.get("nots")
            if nots is not None and nots.any():
                ts[nots] = 0
        return RecordBatch(
            buf=arr,
            data_off=cols["data_off"].astype(np.int64, copy=False),
            caplen=cols["caplen"].astype(np.uint32),
            wirelen=cols["wirelen"].astype(np.uint32),
            ts_ns=ts,
            iface=cols["vid"].astype(np.uint16),
            rec_off=cols["rec_off"].astype(np.int64, copy=False) + np.int64(base),
            frame=cols["seq"].astype(np.uint32),
        )

    def _convert_ts(self, units: np.ndarray, vid: np.ndarray) -> np.ndarray:
        present = np.flatnonzero(np.bincount(vid))
        params = {}
        for v in present.tolist():
            vt = self.vantages[v]
            params.setdefault((vt.tsresol_ns, vt.tsoffset_s), []).append(v)
        if len(params) == 1:
            (res, off), = params
            return _units_to_ns(units, res, off)
        ts = np.empty(len(units), np.int64)
        for (res, off), vids in params.items():
            m = np.isin(vid, vids)
            ts[m] = _units_to_ns(units[m], res, off)
        return ts

    # -- classic pcap ----------------------------------------------------------------------
    def _chunk_pcap(self, full: np.ndarray, n: int, eof: bool) -> tuple[int, int]:
        """Walk the records in full[:n]; returns (bytes consumed, bytes needed or -1)."""
        mv = memoryview(full)[:n]
        pos = 0
        chain = None
        while pos < n:
            if self.walk == "vector" and n - pos >= 16:
                if chain is None:
                    t0 = int(full[3] if self._p_order == "<" else full[0])
                    chain = _pcap_chain(full, _rows(full, n, 16), n, self._p_order, t0,
                                        self._p_maxrec, self._p_snaplen, self._p_fracmax,
                                        self._scratch)
                idx = chain.orbit(pos)
                if idx is not None:
                    self._take_pcap(chain, idx)
                    pos = int(chain.nx[idx[-1]])
                    if pos >= n:
                        break
            status, pos2, need = self._serial_pcap(mv, pos, n, eof)
            if status == _NEED:
                return pos, need
            if status == _STOP:
                return pos, -1
            pos = pos2
        return pos, 0

    def _take_pcap(self, chain: _Chain, idx: np.ndarray) -> None:
        f = chain.f
        p = chain.c[idx]
        ts = (f["ts"][idx].astype(np.int64) * 1_000_000_000
              + f["frac"][idx].astype(np.int64) * self._p_fracmul)
        cnt = len(idx)
        seq = np.arange(self.numbered + 1, self.numbered + 1 + cnt, dtype=np.int64)
        self.numbered += cnt
        self._acc.add_piece(rec_off=p, data_off=p + 16, caplen=f["incl"][idx],
                            wirelen=f["orig"][idx], ts=ts,
                            vid=np.full(cnt, self._pcap_vid, np.int64), seq=seq)

    def _serial_pcap(self, mv: memoryview, pos: int, n: int, eof: bool):
        rem = n - pos
        off = self._base_cur + pos
        if rem < 16:
            if eof:
                self._note(off, f"capture cut short inside a record header "
                                f"({rem} of 16 bytes)")
                return _STOP, pos, 0
            return _NEED, pos, 16
        ts, frac, incl, orig = struct.unpack_from(self._p_order + "IIII", mv, pos)
        if incl > self._p_maxrec:
            self._note(off, f"record length {incl} exceeds the maximum "
                            f"{self._p_maxrec} (snaplen {self._p_snaplen}); "
                            f"reading stopped")
            return _STOP, pos, 0
        if 16 + incl > rem:
            if eof:
                self._note(off, f"capture cut short: record of {16 + incl} bytes "
                                f"has only {rem}")
                return _STOP, pos, 0
            return _NEED, pos, 16 + incl
        self.numbered += 1
        self._acc.add_row(pos, pos + 16, incl, orig,
                          ts * 1_000_000_000 + frac * self._p_fracmul,
                          self._pcap_vid, self.numbered, False)
        return _OK, pos + 16 + incl, 0

    # -- pcapng ----------------------------------------------------------------------------
    def _chunk_pcapng(self, full: np.ndarray, n: int, eof: bool) -> tuple[int, int]:
        """Walk the blocks in full[:n]; returns (bytes consumed, bytes needed or -1)."""
        mv = memoryview(full)[:n]
        nw = n >> 2
        pos = 0
        chains: dict[str, tuple[np.ndarray, np.ndarray, _Chain]] = {}
        serial_steps = 0
        while pos < n:
            if self.walk == "vector" and self._order is not None:
                got = chains.get(self._order)
                if got is None:
                    # words of the whole chunk in this section's byte order, 8 words of
                    # slack so that every block start has an 8-word row
                    w = np.frombuffer(full, dtype=self._order + "u4", count=nw + 8)
                    if not w.dtype.isnative:
                        w = w.astype(np.uint32)     # big-endian section: one swap
                    got = chains[self._order] = (w, _rows(w, nw, 8),
                                                 _pcapng_chain(w, nw, self._scratch,
                                                               self._wide))
                w, rows, chain = got
                idx = chain.orbit(pos >> 2)
                if idx is not None:
                    pos = self._take_pcapng(w, rows, chain, idx)
                    if pos >= n:
                        break
            status, pos2, need = self._serial_pcapng(mv, pos, n, eof)
            if status == _NEED:
                return pos, need
            if status == _STOP:
                return pos, -1
            pos = pos2
            serial_steps += 1
            if serial_steps == 64 and self.walk == "vector" and not self._wide:
                # many blocks besides EPBs (SPB, PB, ...): widen the candidate types
                self._wide = True
                chains.clear()
        return pos, 0

    def _take_pcapng(self, w: np.ndarray, rows: np.ndarray, chain: _Chain,
                     idx: np.ndarray) -> int:
        """Take a chain of complete blocks; returns the byte position after the last one
        taken.  The first block failing a semantic check (too short for its type,
        unknown interface, captured length past the block) is left to the serial walker,
        which reports it."""
        p = chain.c[idx]
        blen = chain.f["blen"][idx]
        types = w[p]
        pk = _PKT_LUT[types]
        nif0 = len(self._sec_ifaces)
        allpk = bool(pk.all())
        if allpk:
            sel = None
            q, qt, ql = p, types, blen
            nifs = nif0
        else:
            sel = np.flatnonzero(pk)
            q, qt, ql = p[sel], types[sel], blen[sel]
            isidb = types == IDB
            nifs = (nif0 + np.cumsum(isidb) - isidb)[sel] if isidb.any() else nif0
        g = rows[q]                                   # words 0..7 of every packet block
        allepb = bool((qt == EPB).all())
        if allepb:
            ifid = g[:, 2]
            cap = g[:, 5]
            orig = g[:, 6]
            bad = (ql < 32) | (ifid >= nifs) | (cap > ql - 32)
            isspb = None
        else:
            isspb = qt == SPB
            ispb = qt == PB
            w2 = g[:, 2].astype(np.int64)
            pbid = (w2 >> 16) if self._order == ">" else (w2 & 0xFFFF)
            ifid = np.where(isspb, 0, np.where(ispb, pbid, w2))
            orig = np.where(isspb, w2, g[:, 6]).astype(np.int64)
            cap = g[:, 5].astype(np.int64)
            bad = ((ql < _MINLEN_LUT[qt]) | (ifid >= nifs)
                   | (~isspb & (cap > ql - 32)))
        b = len(p)
        if bad.any():
            j = int(np.argmax(bad))
            b = j if sel is None else int(sel[j])
        if not allpk:
            oth = np.flatnonzero(~pk)
            obad = blen[oth] < _MINLEN_LUT[types[oth]]
            if obad.any():
                b = min(b, int(oth[np.argmax(obad)]))
        if b == 0:
            return int(p[0]) << 2
        end = (int(p[b - 1]) << 2) + int(blen[b - 1])
        if b < len(p):
            p, blen, types, pk = p[:b], blen[:b], types[:b], pk[:b]
            jb = b if sel is None else int(np.searchsorted(sel, b))
            q, ql, g, ifid, cap, orig = q[:jb], ql[:jb], g[:jb], ifid[:jb], cap[:jb], orig[:jb]
            if isspb is not None:
                isspb = isspb[:jb]
            if sel is not None:
                sel = sel[:jb]
        # blocks that carry state (IDB, ISB), in file order: few
        if not allpk:
            for i in np.flatnonzero((types == IDB) | (types == ISB)).tolist():
                if types[i] == IDB:
                    self._handle_idb(w, int(p[i]), int(blen[i]))
                else:
                    self._handle_isb(w, int(p[i]), int(blen[i]))
        m = len(q)
        if allpk:
            seq = np.arange(self.numbered + 1, self.numbered + 1 + m, dtype=np.int64)
            self.numbered += m
        else:
            nums = np.cumsum(_NUM_LUT[types])
            seq = self.numbered + nums[sel]
            self.numbered += int(nums[-1])
        if m == 0:
            return end
        if isspb is None:
            hi, lo = g[:, 3], g[:, 4]
            doff = (q + 7) << 2
        else:
            hi = np.where(isspb, 0, g[:, 3])
            lo = np.where(isspb, 0, g[:, 4])
            spbcap = np.minimum(orig, ql - 16)
            if isspb.any():
                snap0 = self.vantages[self._sec_ifaces[0]].snaplen
                if snap0:
                    spbcap = np.minimum(spbcap, snap0)
            cap = np.where(isspb, spbcap, cap)
            doff = np.where(isspb, q + 3, q + 7) << 2
        units = (hi.astype(np.uint64) << np.uint64(32)) | lo.astype(np.uint64)
        lut = self._lut
        vid = lut[ifid] if len(lut) > 1 else np.full(m, lut[0], np.int64)
        piece = dict(rec_off=q << 2, data_off=doff, caplen=cap, wirelen=orig, ts=units,
                     vid=vid, seq=seq)
        if isspb is not None:
            piece["nots"] = isspb
        self._acc.add_piece(**piece)
        return end

    # state-carrying blocks, shared by both walkers (w: native words of the section order)
    def _handle_idb(self, w, wi: int, blen: int) -> None:
        linktype = int(w[wi + 2]) & 0xFFFF if self._order == "<" else int(w[wi + 2]) >> 16
        snaplen = int(w[wi + 3])
        name = desc = ""
        res = Fraction(1000)
        tsoff = 0
        for code, val in self._options(w, wi + 4, wi + (blen >> 2) - 1):
            if code == 2:
                name = val.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif code == 3:
                desc = val.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif code == 9 and len(val) >= 1:
                res = _tsresol(val[0])
            elif code == 14 and len(val) >= 8:
                tsoff, = struct.unpack(self._order + "q", val[:8])
        index = len(self._sec_ifaces)
        if not name:
            name = self._basename if self._n_idb == 0 else f"{self._basename}#{self._n_idb}"
        v = self._add_vantage(index=index, name=name, linktype=linktype, snaplen=snaplen,
                              tsresol=res, section=self._section, description=desc,
                              tsoffset=tsoff)
        self._n_idb += 1
        self._sec_ifaces.append(v.id)
        self._lut = np.array(self._sec_ifaces, dtype=np.int64)

    def _handle_isb(self, w, wi: int, blen: int) -> None:
        ifid = int(w[wi + 2])
        if ifid >= len(self._sec_ifaces):
            return
        st = {}
        for code, val in self._options(w, wi + 5, wi + (blen >> 2) - 1):
            key = {4: "ifrecv", 5: "ifdrop", 7: "osdrop"}.get(code)
            if key and len(val) >= 8:
                st[key], = struct.unpack(self._order + "Q", val[:8])
        if st:
            self.stats.setdefault(self._sec_ifaces[ifid], {}).update(st)

    def _options(self, w, start: int, end: int):
        """(code, value bytes) of the options in words [start, end) of the block."""
        if end <= start:
            return
        raw = w[start:end].astype(self._order + "u4").tobytes()
        p = 0
        fmt = self._order + "HH"
        while p + 4 <= len(raw):
            code, olen = struct.unpack_from(fmt, raw, p)
            if code == 0 or p + 4 + olen > len(raw):
                return
            yield code, raw[p + 4:p + 4 + olen]
            p += 4 + ((olen + 3) & ~3)

    def _serial_pcapng(self, mv: memoryview, pos: int, n: int, eof: bool):
        """Read one block at ``pos`` (the reference walker)."""
        rem = n - pos
        off = self._base_cur + pos
        if rem < 12:
            if eof:
                self._note(off, f"capture cut short inside a block header "
                                f"({rem} of 12 bytes)")
                return _STOP, pos, 0
            return _NEED, pos, 12
        is_shb = mv[pos:pos + 4] == SHB_MAGIC
        order = self._order
        if is_shb:
            bom = bytes(mv[pos + 8:pos + 12])
            if bom not in (BOM_LE, BOM_BE):
                self._note(off, f"section header byte-order magic {bom.hex()} is invalid; "
                                f"reading stopped")
                return _STOP, pos, 0
            order = "<" if bom == BOM_LE else ">"
        btype, blen = struct.unpack_from(order + "II", mv, pos)
        if blen % 4:
            self._note(off, f"block length {blen} is not a multiple of 4; reading stopped")
            return _STOP, pos, 0
        if blen < 12:
            self._note(off, f"block length {blen} is less than 12; reading stopped")
            return _STOP, pos, 0
        if blen > MAX_BLOCK:
            self._note(off, f"block length {blen} is absurd (over {MAX_BLOCK}); "
                            f"reading stopped")
            return _STOP, pos, 0
        if blen > rem:
            if eof:
                self._note(off, f"capture cut short: block of {blen} bytes has only {rem}")
                return _STOP, pos, 0
            return _NEED, pos, blen
        trailer, = struct.unpack_from(order + "I", mv, pos + blen - 4)
        if trailer != blen:
            self._note(off, f"block trailer length {trailer} differs from the header "
                            f"length {blen}; reading stopped")
            return _STOP, pos, 0
        minlen = MIN_BLOCK_LEN.get(btype, 12)
        if blen < minlen:
            self._note(off, f"{BLOCK_NAMES[btype]} length {blen} is less than its minimum "
                            f"{minlen}; reading stopped")
            return _STOP, pos, 0
        if is_shb:
            major, = struct.unpack_from(order + "H", mv, pos + 12)
            if major != 1:
                self._note(off, f"pcapng version {major} is not supported; reading stopped")
                return _STOP, pos, 0
            self._order = order
            self._section += 1
            self._sec_ifaces = []
            self._lut = np.zeros(0, np.int64)
            return _OK, pos + blen, 0
        if btype in (EPB, PB, SPB, IDB, ISB):
            w = np.frombuffer(mv[pos:pos + blen], dtype=order + "u4")
        if btype in (EPB, PB, SPB):
            nif = len(self._sec_ifaces)
            if btype == SPB:
                ifid = 0
            elif btype == EPB:
                ifid = int(w[2])
            else:
                ifid = int(w[2]) >> 16 if order == ">" else int(w[2]) & 0xFFFF
            if ifid >= nif:
                self._note(off, f"{BLOCK_NAMES[btype]} uses interface {ifid} but the "
                                f"section has {nif} interface description(s); "
                                f"reading stopped")
                return _STOP, pos, 0
            if btype == SPB:
                orig = int(w[2])
                cap = min(orig, blen - 16)
                snap0 = self.vantages[self._sec_ifaces[0]].snaplen
                if snap0:
                    cap = min(cap, snap0)
                units, doff, nots = 0, pos + 12, True
            else:
                cap, orig = int(w[5]), int(w[6])
                if cap > blen - 32:
                    self._note(off, f"{BLOCK_NAMES[btype]} captured length {cap} exceeds "
                                    f"the {blen - 32} bytes the block holds; "
                                    f"reading stopped")
                    return _STOP, pos, 0
                units, doff, nots = (int(w[3]) << 32) | int(w[4]), pos + 28, False
            self.numbered += 1
            self._acc.add_row(pos, doff, cap, orig, units,
                              self._sec_ifaces[ifid], self.numbered, nots)
        elif btype == IDB:
            self._handle_idb(w.astype(np.uint32), 0, blen)
        elif btype == ISB:
            self._handle_isb(w.astype(np.uint32), 0, blen)
        elif btype in NUMBERED_TYPES:
            self.numbered += 1
        return _OK, pos + blen, 0


def open_input(path: str, input_index: int, vantages: list[Vantage], *,
               chunk_bytes: int = 8 << 20, stdin=None, walk: str = "vector") -> InputRecords:
    """Open one capture input.  Raises InputError for a missing, empty or non-capture file.

    New vantages (the pcap file, or each pcapng IDB as it is read) are appended to
    ``vantages``; their ``id`` is their position there.  ``stdin`` replaces sys.stdin for
    path '-' (a binary stream).  ``walk="serial"`` selects the reference walker.
    """
    return InputRecords(path, input_index, vantages, chunk_bytes=chunk_bytes, stdin=stdin,
                        walk=walk)
