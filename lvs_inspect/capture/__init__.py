"""Capture: pcap/pcapng (plain, gzip, stdin) into the columnar PacketTable.

    table = read_table(["trace.pcapng"])
    table["ip_src"], table["tcp_flags"], table.accounting(), table.addr_str(key)

``iter_tables`` streams the same thing chunk by chunk with bounded memory.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

import numpy as np

from .decode import DecodeOptions, decode_batch, empty_group
from .records import open_input
from .schema import COLUMNS, CORE_COLUMNS, Status, empty_column
from .table import AddressBook, InputSummary, PacketTable, mac_str

DEFAULT_CHUNK = 8 << 20


class TraceReader:
    """Reads a list of inputs into PacketTable chunks sharing one address book and vantage list.

    Damage notes and capture statistics of an input are complete once it is exhausted.
    ``stop`` is an optional ``threading.Event``: when set, reading ends after the current chunk.
    ``progress`` is called after every chunk with the fraction of the input bytes read so far
    (``None`` when an input is a stream, whose size is unknown).
    """

    def __init__(self, paths: Sequence[str], *, chunk_bytes: int = DEFAULT_CHUNK,
                 toa_kinds: Sequence[int] = (254, 253, 200), gue_ports: Sequence[int] = (6080,),
                 checksums: bool = True, tcp_options: bool = True, option_bytes: bool = True,
                 stdin: BinaryIO | None = None, stop=None,
                 progress: Callable[[float | None], None] | None = None):
        self.paths = [str(p) for p in paths]
        self.chunk_bytes = chunk_bytes
        self.opts = DecodeOptions(tuple(toa_kinds), tuple(gue_ports), checksums, tcp_options,
                                  option_bytes and tcp_options)
        self.stdin = stdin
        self.stop = stop
        self.progress = progress
        self._sizes = _sizes(self.paths)
        self.total_bytes = sum(self._sizes) if self._sizes is not None else None
        self._done_bytes = 0
        self._current = None
        self.book = AddressBook()
        self.vantages: list = []
        self.inputs: list[InputSummary] = []

    def __iter__(self) -> Iterator[PacketTable]:
        for i, path in enumerate(self.paths):
            rec = open_input(path, i, self.vantages, chunk_bytes=self.chunk_bytes, stdin=self.stdin)
            summary = InputSummary(path=path, format=rec.format, compressed=rec.compressed,
                                   damage=rec.damage, stats=rec.stats)
            self.inputs.append(summary)
            self._current = rec
            for batch in rec:
                if len(batch.data_off):
                    core, sparse, opt = decode_batch(batch, self.vantages, self.book, self.opts)
                    yield PacketTable(len(batch.data_off), core, sparse, opt, self.vantages, self.book,
                                      self.inputs)
                if self.progress is not None:
                    self.progress(self.fraction())
                if self.stop is not None and self.stop.is_set():
                    return
            summary.damage = rec.damage
            summary.stats = rec.stats
            self._current = None
            if self._sizes is not None:
                self._done_bytes += self._sizes[i]

    def fraction(self) -> float | None:
        """How much of the inputs has been read, 0..1 (None when an input is a stream)."""
        if not self.total_bytes:
            return None
        pos = self._current.position() if self._current is not None else 0
        return min(1.0, (self._done_bytes + (pos or 0)) / self.total_bytes)

    def empty(self) -> PacketTable:
        core = {name: empty_column(name, 0) for name in CORE_COLUMNS}
        sparse = {g: empty_group(g) for g in ("arp", "tun", "icmp")}
        return PacketTable(0, core, sparse, np.zeros(0, dtype=np.uint8), self.vantages, self.book,
                           self.inputs)


def _sizes(paths: Sequence[str]) -> list[int] | None:
    """Each input's size in bytes, or None when one is a stream (or missing: open_input says so)."""
    try:
        return [os.path.getsize(p) for p in paths] if "-" not in paths else None
    except OSError:
        return None


def iter_tables(paths: Sequence[str], **kwargs) -> Iterator[PacketTable]:
    """Stream PacketTable chunks (bounded memory); see TraceReader for the options."""
    return iter(TraceReader(paths, **kwargs))


def read_table(paths: Sequence[str], **kwargs) -> PacketTable:
    """Read every frame of every input into one PacketTable."""
    reader = TraceReader(paths, **kwargs)
    parts = list(reader)
    return PacketTable.concat(parts) if parts else reader.empty()


__all__ = ["read_table", "iter_tables", "TraceReader", "PacketTable", "Status", "COLUMNS", "mac_str"]
