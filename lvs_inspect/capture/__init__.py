"""Capture: pcap/pcapng (plain, gzip, stdin) into the columnar PacketTable.

    table = read_table(["trace.pcapng"])
    table["ip_src"], table["tcp_flags"], table.accounting(), table.addr_str(key)

``iter_tables`` streams the same thing chunk by chunk with bounded memory.
"""
from __future__ import annotations

from typing import BinaryIO, Iterator, Sequence

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
    """

    def __init__(self, paths: Sequence[str], *, chunk_bytes: int = DEFAULT_CHUNK,
                 toa_kinds: Sequence[int] = (254, 253, 200), gue_ports: Sequence[int] = (6080,),
                 checksums: bool = True, stdin: BinaryIO | None = None, stop=None):
        self.paths = [str(p) for p in paths]
        self.chunk_bytes = chunk_bytes
        self.opts = DecodeOptions(tuple(toa_kinds), tuple(gue_ports), checksums)
        self.stdin = stdin
        self.stop = stop
        self.book = AddressBook()
        self.vantages: list = []
        self.inputs: list[InputSummary] = []

    def __iter__(self) -> Iterator[PacketTable]:
        for i, path in enumerate(self.paths):
            rec = open_input(path, i, self.vantages, chunk_bytes=self.chunk_bytes, stdin=self.stdin)
            summary = InputSummary(path=path, format=rec.format, compressed=rec.compressed,
                                   damage=rec.damage, stats=rec.stats)
            self.inputs.append(summary)
            for batch in rec:
                if len(batch.data_off):
                    core, sparse, opt = decode_batch(batch, self.vantages, self.book, self.opts)
                    yield PacketTable(len(batch.data_off), core, sparse, opt, self.vantages, self.book,
                                      self.inputs)
                if self.stop is not None and self.stop.is_set():
                    return
            summary.damage = rec.damage
            summary.stats = rec.stats

    def empty(self) -> PacketTable:
        core = {name: empty_column(name, 0) for name in CORE_COLUMNS}
        sparse = {g: empty_group(g) for g in ("arp", "tun", "icmp")}
        return PacketTable(0, core, sparse, np.zeros(0, dtype=np.uint8), self.vantages, self.book,
                           self.inputs)


def iter_tables(paths: Sequence[str], **kwargs) -> Iterator[PacketTable]:
    """Stream PacketTable chunks (bounded memory); see TraceReader for the options."""
    return iter(TraceReader(paths, **kwargs))


def read_table(paths: Sequence[str], **kwargs) -> PacketTable:
    """Read every frame of every input into one PacketTable."""
    reader = TraceReader(paths, **kwargs)
    parts = list(reader)
    return PacketTable.concat(parts) if parts else reader.empty()


__all__ = ["read_table", "iter_tables", "TraceReader", "PacketTable", "Status", "COLUMNS", "mac_str"]
