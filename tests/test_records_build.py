"""Byte-by-byte builders of pcap and pcapng files for the record-layer tests.

Every builder also records what a correct reader must report for each packet (offset,
bytes, lengths, integer-ns timestamp computed here with Python ints, interface ordinal,
frame number as Wireshark counts), so tests compare the reader against an independent
expectation.  No tests live here.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from fractions import Fraction

SHB = 0x0A0D0D0A


@dataclass
class Frame:
    offset: int          # byte offset of the record/block
    data: bytes          # captured bytes
    wirelen: int
    ts_ns: int
    iface: int           # input-wide interface ordinal (IDB order across sections)
    frame: int           # Wireshark frame number


def eth_frame(n: int, seed: int = 0) -> bytes:
    """An Ethernet/IPv4-looking frame of n bytes with locally administered MACs."""
    head = bytes.fromhex("020000000002020000000001" "0800" "4500")
    body = bytes((seed * 31 + i * 7) & 0xFF for i in range(max(0, n - len(head))))
    return (head + body)[:n]


def opt(code: int, value: bytes, order: str = "<") -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def end_opt(order: str = "<") -> bytes:
    return struct.pack(order + "HH", 0, 0)


@dataclass
class Pcapng:
    """Append blocks with the methods; ``data`` is the file, ``frames`` the expectation."""

    order: str = "<"
    data: bytearray = field(default_factory=bytearray)
    frames: list[Frame] = field(default_factory=list)
    numbered: int = 0
    section: int = -1
    sec_ifaces: list[tuple[int, Fraction, int, int]] = field(default_factory=list)
    n_ifaces: int = 0
    block_offsets: list[int] = field(default_factory=list)

    def block(self, btype: int, body: bytes, *, order: str | None = None) -> int:
        order = order or self.order
        body = body + b"\0" * (-len(body) % 4)
        blen = 12 + len(body)
        off = len(self.data)
        self.data += struct.pack(order + "II", btype, blen) + body + struct.pack(order + "I",
                                                                                 blen)
        self.block_offsets.append(off)
        return off

    def shb(self, order: str | None = None, options: bytes = b"") -> int:
        if order:
            self.order = order
        self.section += 1
        self.sec_ifaces = []
        return self.block(SHB, struct.pack(self.order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
                          + options)

    def idb(self, linktype: int = 1, snaplen: int = 0, *, name: str | None = None,
            description: str | None = None, tsresol: int | None = None,
            tsoffset: int | None = None, extra_opts: bytes = b"") -> int:
        o = self.order
        opts = b""
        if name is not None:
            opts += opt(2, name.encode(), o)
        if description is not None:
            opts += opt(3, description.encode(), o)
        if tsresol is not None:
            opts += opt(9, bytes([tsresol]), o)
        if tsoffset is not None:
            opts += opt(14, struct.pack(o + "q", tsoffset), o)
        opts += extra_opts
        if opts:
            opts += end_opt(o)
        res = Fraction(1000)
        if tsresol is not None:
            exp = tsresol & 0x7F
            res = Fraction(10 ** 9, (2 if tsresol & 0x80 else 10) ** exp)
        self.sec_ifaces.append((self.n_ifaces, res, tsoffset or 0, snaplen))
        self.n_ifaces += 1
        return self.block(1, struct.pack(o + "HHI", linktype, 0, snaplen) + opts)

    def _ts(self, ifid: int, units: int) -> int:
        _, res, off, _ = self.sec_ifaces[ifid]
        return (units * res.numerator) // res.denominator + off * 10 ** 9

    def epb(self, ifid: int, units: int, data: bytes, wirelen: int | None = None,
            options: bytes = b"") -> int:
        o = self.order
        wl = len(data) if wirelen is None else wirelen
        body = struct.pack(o + "IIIII", ifid, units >> 32, units & 0xFFFFFFFF, len(data), wl)
        body += data + b"\0" * (-len(data) % 4) + options
        off = self.block(6, body)
        self.numbered += 1
        self.frames.append(Frame(off, data, wl, self._ts(ifid, units),
                                 self.sec_ifaces[ifid][0], self.numbered))
        return off

    def pb(self, ifid: int, units: int, data: bytes, wirelen: int | None = None) -> int:
        o = self.order
        wl = len(data) if wirelen is None else wirelen
        body = struct.pack(o + "HHIIII", ifid, 0, units >> 32, units & 0xFFFFFFFF,
                           len(data), wl) + data
        off = self.block(2, body)
        self.numbered += 1
        self.frames.append(Frame(off, data, wl, self._ts(ifid, units),
                                 self.sec_ifaces[ifid][0], self.numbered))
        return off

    def spb(self, data: bytes, wirelen: int | None = None) -> int:
        """``data`` is what the block holds; the reader reports min(wirelen, snaplen)."""
        o = self.order
        wl = len(data) if wirelen is None else wirelen
        off = self.block(3, struct.pack(o + "I", wl) + data)
        snap = self.sec_ifaces[0][3]
        room = len(data) + (-len(data) % 4)
        cap = min(wl, room) if not snap else min(wl, room, snap)
        padded = data + b"\0" * (-len(data) % 4)
        self.numbered += 1
        self.frames.append(Frame(off, padded[:cap], wl, 0, self.sec_ifaces[0][0],
                                 self.numbered))
        return off

    def isb(self, ifid: int, units: int = 0, **counters: int) -> int:
        o = self.order
        codes = {"ifrecv": 4, "ifdrop": 5, "osdrop": 7}
        opts = b"".join(opt(codes[k], struct.pack(o + "Q", v), o) for k, v in counters.items())
        if opts:
            opts += end_opt(o)
        return self.block(5, struct.pack(o + "III", ifid, units >> 32, units & 0xFFFFFFFF)
                          + opts)

    def nrb(self) -> int:
        o = self.order
        rec = struct.pack(o + "HH", 1, 12) + bytes([192, 0, 2, 1]) + b"a.test\0\0"
        return self.block(4, rec + struct.pack(o + "HH", 0, 0))

    def dsb(self) -> int:
        o = self.order
        secret = b"CLIENT_RANDOM 00 11\n"
        return self.block(10, struct.pack(o + "II", 0x544C534B, len(secret)) + secret)

    def custom(self, copyable: bool = True) -> int:
        """A custom block: Wireshark numbers it as a frame, we yield no row."""
        off = self.block(0x0BAD if copyable else 0x40000BAD,
                         struct.pack(self.order + "I", 32473) + b"custom data!")
        self.numbered += 1
        return off

    def journal(self) -> int:
        off = self.block(9, b"__REALTIME_TIMESTAMP=1700000000000000\nMESSAGE=x\n")
        self.numbered += 1
        return off

    def unknown(self, btype: int = 0x12345, size: int = 8) -> int:
        return self.block(btype, bytes(range(size)))

    def bytes(self) -> bytes:
        return bytes(self.data)


def pcap(records, *, order: str = "<", nano: bool = False, snaplen: int = 262144,
         network: int = 1, header: bool = True):
    """Classic pcap bytes and expected frames; records are (ts_sec, frac, data[, wirelen])."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = bytearray(struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, network)
                    if header else b"")
    frames = []
    for i, r in enumerate(records, 1):
        ts, frac, data = r[:3]
        wl = r[3] if len(r) > 3 else len(data)
        off = len(out)
        out += struct.pack(order + "IIII", ts, frac, len(data), wl) + data
        frames.append(Frame(off, data, wl, ts * 10 ** 9 + frac * (1 if nano else 1000), 0, i))
    return bytes(out), frames


def write(tmp_path, name: str, data: bytes) -> str:
    p = os.path.join(str(tmp_path), name)
    with open(p, "wb") as f:
        f.write(data)
    return p
