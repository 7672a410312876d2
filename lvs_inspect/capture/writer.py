"""Small, exact capture writers: pcapng (several named interfaces) and classic pcap.

Used by the fixture generators, the ``replay`` command and the lab.  Timestamps are integer
nanoseconds since the epoch; the pcapng writer stores them with ``if_tsresol`` = 9 by default so
they survive a round trip exactly.

    with PcapngWriter("trace.pcapng", [("p-client", 1), ("p-dir", 1, 262144, 9)],
                      comment="made by ...") as w:
        w.write(0, 1_700_000_000_123_456_789, frame_bytes)

    with PcapWriter("trace.pcap.gz", linktype=1, nanos=False) as w:   # gzip from the suffix
        w.write(ts_ns, frame_bytes)

A frame longer than the interface's snaplen is cut to the snaplen and its wire length kept, as a
capture tool would do; ``wirelen`` overrides the wire length (it may not be smaller than what is
written).  Gzip output is deterministic (no name, mtime 0).
"""
from __future__ import annotations

import gzip as _gzip
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Sequence

__all__ = ["Interface", "PcapngWriter", "PcapWriter", "LINKTYPE"]

# The link types lvs-inspect meets; any other number is accepted as well.
LINKTYPE = {
    "ETHERNET": 1,
    "RAW": 101,
    "LINUX_SLL": 113,
    "IPV4": 228,
    "IPV6": 229,
    "LINUX_SLL2": 276,
}

DEFAULT_SNAPLEN = 262144

# pcapng block types and option codes (draft-ietf-opsawg-pcapng)
_SHB, _IDB, _EPB, _ISB = 0x0A0D0D0A, 0x00000001, 0x00000006, 0x00000005
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_SHB_HARDWARE, _SHB_OS, _SHB_USERAPPL = 2, 3, 4
_IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL = 2, 3, 9
_ISB_STARTTIME, _ISB_ENDTIME, _ISB_IFRECV, _ISB_IFDROP = 2, 3, 4, 5

_USERAPPL = "lvs-inspect capture writer"


@dataclass(frozen=True)
class Interface:
    """One pcapng interface (capture point)."""

    name: str
    linktype: int = 1
    snaplen: int = DEFAULT_SNAPLEN
    tsresol: int = 9            # if_tsresol byte: n = 10**-n s units; 0x80|n = 2**-n s units
    description: str = ""

    @classmethod
    def coerce(cls, spec) -> "Interface":
        if isinstance(spec, Interface):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, dict):
            return cls(**spec)
        return cls(*spec)


def _open_dest(dest, compress: bool | None) -> tuple[BinaryIO, list]:
    """Return (stream to write to, list of objects to close in order)."""
    to_close: list = []
    if isinstance(dest, (str, os.PathLike)):
        path = os.fspath(dest)
        raw = open(path, "wb")
        to_close.append(raw)
        if compress is None:
            compress = path.endswith(".gz")
    else:
        raw = dest
        if not hasattr(raw, "write"):
            raise TypeError(f"expected a path or a binary file object, got {type(dest).__name__}")
    if compress:
        gz = _gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        to_close.insert(0, gz)
        return gz, to_close
    return raw, to_close


def _frame_bytes(frame) -> bytes | memoryview:
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, memoryview) and frame.contiguous and frame.ndim == 1 and frame.itemsize == 1:
        return frame                    # written as it is: no copy first
    # bytearray, other memoryviews, dpkt packets and anything else with a bytes() form
    return bytes(frame)


def _check_ts(ts_ns) -> int:
    if isinstance(ts_ns, bool) or not isinstance(ts_ns, int):
        try:
            import numpy as np  # numpy integers are fine, floats are not
            if isinstance(ts_ns, np.integer):
                return int(ts_ns)
        except ImportError:  # pragma: no cover - numpy is a dependency
            pass
        raise TypeError(f"timestamp must be integer nanoseconds, got {type(ts_ns).__name__}")
    if ts_ns < 0:
        raise ValueError(f"timestamp {ts_ns} ns is before the epoch")
    return ts_ns


class _Writer:
    _out: BinaryIO
    _to_close: list

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def close(self) -> None:
        if self._to_close is None:
            return
        try:
            if not self._to_close:      # a caller's file object: flush, leave it open
                self._out.flush()
            for f in self._to_close:
                f.close()
        finally:
            self._to_close = None

    @property
    def closed(self) -> bool:
        return self._to_close is None

    def _ensure_open(self):
        if self._to_close is None:
            raise ValueError("write to a closed capture writer")


class PcapngWriter(_Writer):
    """Write a pcapng file with one section and any number of named interfaces.

    ``interfaces``: a sequence of ``(name, linktype, snaplen, tsresol[, description])`` tuples
    (trailing items optional; a bare string is an Ethernet interface), dicts or :class:`Interface`.
    ``comment``: section comment (shown by ``capinfos``).  ``gzip``: compress (default: when the
    path ends in ``.gz``).  ``big_endian``: write the section in big-endian byte order.
    """

    def __init__(self, dest, interfaces: Iterable = (), *, comment: str | None = None,
                 gzip: bool | None = None, big_endian: bool = False,
                 hardware: str | None = None, os_name: str | None = None,
                 userappl: str = _USERAPPL):
        self._e = ">" if big_endian else "<"
        self.interfaces: list[Interface] = []
        self._out, self._to_close = _open_dest(dest, gzip)
        self.frames = 0
        opts = []
        if comment:
            opts.append((_OPT_COMMENT, comment.encode()))
        if hardware:
            opts.append((_SHB_HARDWARE, hardware.encode()))
        if os_name:
            opts.append((_SHB_OS, os_name.encode()))
        if userappl:
            opts.append((_SHB_USERAPPL, userappl.encode()))
        body = struct.pack(self._e + "IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + self._options(opts)
        self._block(_SHB, body)
        for spec in interfaces:
            self.add_interface(spec)

    # -- blocks --------------------------------------------------------------------------
    def _options(self, opts: Sequence[tuple[int, bytes]]) -> bytes:
        if not opts:
            return b""
        parts = []
        for code, value in opts:
            if len(value) > 0xFFFF:
                raise ValueError(f"pcapng option {code} too long ({len(value)} bytes)")
            parts.append(struct.pack(self._e + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4))
        parts.append(struct.pack(self._e + "HH", _OPT_END, 0))
        return b"".join(parts)

    def _block(self, btype: int, body: bytes) -> None:
        body += b"\0" * (-len(body) % 4)
        total = len(body) + 12
        self._out.write(struct.pack(self._e + "II", btype, total) + body + struct.pack(self._e + "I", total))

    def add_interface(self, spec) -> int:
        """Append an interface description block; returns the new interface's index."""
        self._ensure_open()
        iface = Interface.coerce(spec)
        if not 0 <= iface.linktype <= 0xFFFF:
            raise ValueError(f"link type {iface.linktype} out of range")
        if not 0 <= iface.snaplen <= 0xFFFFFFFF:
            raise ValueError(f"snaplen {iface.snaplen} out of range")
        exp = iface.tsresol & 0x7F
        if not 0 <= iface.tsresol <= 0xFF or (iface.tsresol & 0x80 and exp > 62) or \
                (not iface.tsresol & 0x80 and exp > 18):
            raise ValueError(f"if_tsresol {iface.tsresol} not supported")
        opts = []
        if iface.name:
            opts.append((_IF_NAME, iface.name.encode()))
        if iface.description:
            opts.append((_IF_DESCRIPTION, iface.description.encode()))
        if iface.tsresol != 6:           # 6 (microseconds) is the default when absent
            opts.append((_IF_TSRESOL, bytes([iface.tsresol])))
        body = struct.pack(self._e + "HHI", iface.linktype, 0, iface.snaplen) + self._options(opts)
        self._block(_IDB, body)
        self.interfaces.append(iface)
        return len(self.interfaces) - 1

    def _units(self, iface: Interface, ts_ns: int) -> int:
        """Timestamp in the interface's units (truncated if the resolution is coarser than ns)."""
        r = iface.tsresol
        if r & 0x80:
            return (ts_ns << (r & 0x7F)) // 1_000_000_000
        if r >= 9:
            return ts_ns * 10 ** (r - 9)
        return ts_ns // 10 ** (9 - r)

    def _iface(self, index: int) -> Interface:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.interfaces):
            raise ValueError(f"interface index {index!r} not defined ({len(self.interfaces)} interfaces)")
        return self.interfaces[index]

    def write(self, iface_index: int, ts_ns: int, frame, wirelen: int | None = None,
              *, comment: str | None = None) -> None:
        """Write one Enhanced Packet Block.  ``comment`` becomes the packet's opt_comment
        (Wireshark's ``frame.comment``)."""
        self._ensure_open()
        iface = self._iface(iface_index)
        ts = self._units(iface, _check_ts(ts_ns))
        if ts >> 64:
            raise ValueError(f"timestamp {ts_ns} ns does not fit in 64 bits at if_tsresol {iface.tsresol}")
        data = _frame_bytes(frame)
        orig = len(data) if wirelen is None else int(wirelen)
        if iface.snaplen and len(data) > iface.snaplen:
            data = data[:iface.snaplen]
        if orig < len(data):
            raise ValueError(f"wire length {orig} smaller than the {len(data)} bytes written")
        if orig > 0xFFFFFFFF:
            raise ValueError(f"wire length {orig} out of range")
        opts = [(_OPT_COMMENT, comment.encode())] if comment else []
        body = (struct.pack(self._e + "IIIII", iface_index, ts >> 32, ts & 0xFFFFFFFF, len(data), orig)
                + data + b"\0" * (-len(data) % 4) + self._options(opts))
        self._block(_EPB, body)
        self.frames += 1

    def write_stats(self, iface_index: int, ts_ns: int, *, ifrecv: int | None = None,
                    ifdrop: int | None = None, start_ns: int | None = None,
                    end_ns: int | None = None, comment: str | None = None) -> None:
        """Write an Interface Statistics Block (received / dropped counters)."""
        self._ensure_open()
        iface = self._iface(iface_index)
        ts = self._units(iface, _check_ts(ts_ns))
        opts = []
        if comment:
            opts.append((_OPT_COMMENT, comment.encode()))
        for code, ns in ((_ISB_STARTTIME, start_ns), (_ISB_ENDTIME, end_ns)):
            if ns is not None:
                u = self._units(iface, _check_ts(ns))
                opts.append((code, struct.pack(self._e + "II", u >> 32, u & 0xFFFFFFFF)))
        for code, v in ((_ISB_IFRECV, ifrecv), (_ISB_IFDROP, ifdrop)):
            if v is not None:
                opts.append((code, struct.pack(self._e + "Q", v)))
        body = struct.pack(self._e + "III", iface_index, ts >> 32, ts & 0xFFFFFFFF) + self._options(opts)
        self._block(_ISB, body)


class PcapWriter(_Writer):
    """Write a classic libpcap file.

    ``nanos``: nanosecond magic (0xa1b23c4d) or microseconds (0xa1b2c3d4, timestamps truncated);
    ``big_endian``: byte order of the file; ``gzip``: compress (default: path ends in ``.gz``).
    """

    def __init__(self, dest, linktype: int = 1, *, nanos: bool = True, big_endian: bool = False,
                 snaplen: int = DEFAULT_SNAPLEN, gzip: bool | None = None):
        if not 0 <= linktype <= 0x0FFFFFFF:
            raise ValueError(f"link type {linktype} out of range")
        if not 0 < snaplen <= 0xFFFFFFFF:
            raise ValueError(f"snaplen {snaplen} out of range")
        self._e = ">" if big_endian else "<"
        self.linktype = linktype
        self.snaplen = snaplen
        self.nanos = nanos
        self.frames = 0
        self._out, self._to_close = _open_dest(dest, gzip)
        magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
        self._out.write(struct.pack(self._e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))

    def write(self, ts_ns: int, frame, wirelen: int | None = None) -> None:
        self._ensure_open()
        ts_ns = _check_ts(ts_ns)
        sec, sub = divmod(ts_ns, 1_000_000_000)
        if not self.nanos:
            sub //= 1000
        if sec > 0xFFFFFFFF:
            raise ValueError(f"timestamp {ts_ns} ns does not fit a 32-bit pcap seconds field")
        data = _frame_bytes(frame)
        orig = len(data) if wirelen is None else int(wirelen)
        if len(data) > self.snaplen:
            data = data[:self.snaplen]
        if orig < len(data):
            raise ValueError(f"wire length {orig} smaller than the {len(data)} bytes written")
        if orig > 0xFFFFFFFF:
            raise ValueError(f"wire length {orig} out of range")
        self._out.write(struct.pack(self._e + "IIII", sec, sub, len(data), orig) + data)
        self.frames += 1

