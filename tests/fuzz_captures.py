"""Hypothesis strategies for the container fuzz tests (tests/test_fuzz.py): random pcap and
pcapng files made with the capture writers, their block layout, and damage (a cut at a random
byte, a flipped byte in a record/block header, a cut gzip stream).
"""
from __future__ import annotations

import gzip
import io
import struct
import zlib
from dataclasses import dataclass, field

from hypothesis import strategies as st

from fuzz_frames import SUPPORTED_LINKTYPES, TS0, U16, any_frame, branch, hexbytes
from lvs_inspect.capture.records import open_input
from lvs_inspect.capture.writer import PcapngWriter, PcapWriter

PCAP_HEADER = 24        # below this many bytes a pcap is refused (InputError)
PCAPNG_HEADER = 28      # the fixed part of the section header block
SHB_MAGIC = b"\x0a\x0d\x0d\x0a"
EPB = 6


@dataclass(frozen=True)
class Block:
    start: int
    end: int
    kind: str               # "file" (pcap header), "record", "shb", "idb", "epb", "isb"

    @property
    def header_bytes(self) -> list[int]:
        """Offsets of the bytes that hold the container's structure (not frame data)."""
        s, e = self.start, self.end
        if self.kind == "file":
            return list(range(s, e))
        if self.kind == "record":
            return list(range(s, s + 16))
        fixed = {"shb": 16, "idb": 8, "epb": 20, "isb": 12}[self.kind]
        return list(range(s, s + 8 + fixed)) + list(range(e - 4, e))


@dataclass(frozen=True)
class Capture:
    fmt: str                # "pcap" / "pcapng"
    data: bytes
    blocks: tuple[Block, ...] = field(repr=False)

    def __repr__(self) -> str:
        return f"Capture({self.fmt!r}, {hexbytes(self.data)})"

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))

    @property
    def header_len(self) -> int:
        return PCAP_HEADER if self.fmt == "pcap" else PCAPNG_HEADER

    def boundaries(self) -> set[int]:
        return {0} | {b.end for b in self.blocks}

    def block_at(self, offset: int) -> Block:
        for b in self.blocks:
            if b.start <= offset < b.end:
                return b
        raise ValueError(offset)


def pcap_layout(data: bytes) -> tuple[Block, ...]:
    order = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    blocks = [Block(0, PCAP_HEADER, "file")]
    pos = PCAP_HEADER
    while pos < len(data):
        incl, = struct.unpack_from(order + "I", data, pos + 8)
        blocks.append(Block(pos, pos + 16 + incl, "record"))
        pos += 16 + incl
    return tuple(blocks)


def pcapng_layout(data: bytes) -> tuple[Block, ...]:
    blocks = []
    pos = 0
    order = "<"
    names = {1: "idb", 5: "isb", EPB: "epb"}
    while pos < len(data):
        if data[pos:pos + 4] == SHB_MAGIC:
            order = "<" if data[pos + 8:pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        btype, blen = struct.unpack_from(order + "II", data, pos)
        kind = "shb" if btype == 0x0A0D0D0A else names[btype]
        blocks.append(Block(pos, pos + blen, kind))
        pos += blen
    return tuple(blocks)


def _ts_steps() -> st.SearchStrategy[int]:
    return branch(st.just(1000), st.integers(0, 10**9))


@st.composite
def pcap_capture(draw) -> Capture:
    lt = draw(st.sampled_from(SUPPORTED_LINKTYPES))
    frames = draw(st.lists(any_frame((lt,), max_lies=1), max_size=6))
    snaplen = draw(branch(st.just(262144), st.integers(1, 120)))
    buf = io.BytesIO()
    ts = TS0
    with PcapWriter(buf, lt, nanos=draw(st.booleans()), big_endian=draw(st.booleans()),
                    snaplen=snaplen) as w:
        for fr in frames:
            ts += draw(_ts_steps())
            w.write(ts, fr.data, wirelen=max(fr.wirelen, len(fr.data)))
    data = buf.getvalue()
    return Capture("pcap", data, pcap_layout(data))


@st.composite
def pcapng_section(draw) -> bytes:
    buf = io.BytesIO()
    ifaces = draw(st.lists(st.tuples(st.sampled_from(SUPPORTED_LINKTYPES + (147,)),
                                     st.sampled_from((0, 262144, 64)),
                                     st.sampled_from((9, 6, 3, 0x80 | 20))), min_size=1, max_size=3))
    comment = draw(branch(st.none(), st.text(max_size=8)))
    with PcapngWriter(buf, [(f"if{i}", lt, snap, res) for i, (lt, snap, res) in enumerate(ifaces)],
                      comment=comment, big_endian=draw(st.booleans())) as w:
        ts = TS0
        for _ in range(draw(st.integers(0, 6))):
            action = draw(st.sampled_from(("frame", "frame", "frame", "stats", "iface")))
            ts += draw(_ts_steps())
            if action == "iface":
                w.add_interface((f"if{len(w.interfaces)}", draw(st.sampled_from(SUPPORTED_LINKTYPES)), 0, 9))
                continue
            i = draw(st.integers(0, len(w.interfaces) - 1))
            if action == "stats":
                w.write_stats(i, ts, ifrecv=draw(U16), ifdrop=draw(U16))
                continue
            lt = w.interfaces[i].linktype
            fr = draw(any_frame((lt,) if lt in SUPPORTED_LINKTYPES else (1,), max_lies=1))
            w.write(i, ts, fr.data, max(fr.wirelen, len(fr.data)),
                    comment=draw(branch(st.none(), st.just("c"))))
    return buf.getvalue()


@st.composite
def pcapng_capture(draw) -> Capture:
    data = b"".join(draw(st.lists(pcapng_section(), min_size=1, max_size=2)))
    return Capture("pcapng", data, pcapng_layout(data))


def captures() -> st.SearchStrategy[Capture]:
    return branch(pcap_capture(), pcapng_capture())


@dataclass(frozen=True)
class Damaged:
    how: str                # "cut", "flip", "gzip-cut", "gzip-flip"
    data: bytes             # the damaged input as read
    at: int                 # decompressed offset of the damage (cut point / flipped byte /
                            # end of what the damaged gzip stream still yields intact)

    def __repr__(self) -> str:
        return f"Damaged({self.how!r}, at={self.at}, data={hexbytes(self.data)})"

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))


def decompressible(gz: bytes) -> int:
    """How many bytes a (cut) gzip stream yields."""
    d = zlib.decompressobj(wbits=31)
    try:
        return len(d.decompress(gz)) + len(d.flush())
    except zlib.error:
        return 0


def intact_prefix(gz: bytes, original: bytes) -> int:
    """How many leading bytes of ``original`` a damaged gzip stream still yields correctly (fed
    byte by byte, so that nothing zlib produced before it noticed the damage is lost)."""
    d = zlib.decompressobj(wbits=31)
    out = bytearray()
    try:
        for i in range(len(gz)):
            out += d.decompress(gz[i:i + 1])
            if d.eof:
                break
    except zlib.error:
        pass
    n = min(len(out), len(original))
    diff = next((i for i in range(n) if out[i] != original[i]), n)
    return diff


@st.composite
def damage(draw, cap: Capture) -> Damaged:
    how = draw(st.sampled_from(("cut", "flip", "gzip-cut", "gzip-flip")))
    if how == "cut":   # near a record boundary, past the file header, or anywhere
        n = len(cap.data)
        near = st.sampled_from(sorted(cap.boundaries())).flatmap(
            lambda b: st.integers(max(0, b - 4), min(n, b + 4)))
        c = draw(branch(near, st.integers(min(cap.header_len, n), n), st.integers(0, n)))
        return Damaged("cut", cap.data[:c], c)
    if how == "flip":
        block = draw(st.sampled_from(cap.blocks))
        at = draw(st.sampled_from(block.header_bytes))
        mask = draw(st.integers(1, 255))
        data = bytearray(cap.data)
        data[at] ^= mask
        return Damaged("flip", bytes(data), at)
    gz = gzip.compress(cap.data, mtime=0)
    if how == "gzip-cut":
        c = draw(st.integers(0, len(gz) - 1))
        return Damaged("gzip-cut", gz[:c], decompressible(gz[:c]))
    # a flipped byte in the deflate data or the trailer (CRC32, size): past the 10-byte gzip header
    at = draw(st.integers(10, len(gz) - 1))
    data = bytearray(gz)
    data[at] ^= draw(st.integers(1, 255))
    return Damaged("gzip-flip", bytes(data), intact_prefix(bytes(data), cap.data))


@dataclass
class Records:
    rows: list[tuple]       # (frame, rec_off, caplen, wirelen, ts_ns, iface, bytes) per record
    damage: list[tuple]     # (offset, message)
    fmt: str
    vantages: list[tuple]   # (id, index, linktype, snaplen)


def read_records(data: bytes, *, walk: str = "vector", chunk_bytes: int = 8 << 20) -> Records:
    """The record layer's view of an in-memory capture (raises what open_input raises)."""
    vantages: list = []
    rec = open_input("-", 0, vantages, chunk_bytes=chunk_bytes, stdin=io.BytesIO(data), walk=walk)
    rows = []
    for b in rec:
        for i in range(len(b)):
            rows.append((int(b.frame[i]), int(b.rec_off[i]), int(b.caplen[i]), int(b.wirelen[i]),
                         int(b.ts_ns[i]), int(b.iface[i]), b.frame_bytes(i)))
    return Records(rows, [(d.offset, d.message) for d in rec.damage], rec.format,
                   [(v.id, v.index, v.linktype, v.snaplen) for v in vantages])


__all__ = ["Block", "Capture", "Damaged", "Records", "captures", "damage", "read_records",
           "decompressible", "PCAP_HEADER", "PCAPNG_HEADER"]
