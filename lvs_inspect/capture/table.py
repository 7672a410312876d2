"""PacketTable: the columnar table of decoded frames (one row per captured frame)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from . import schema
from .schema import COLUMN, CORE_COLUMNS, GROUPS, V6_FLAG, Status

if TYPE_CHECKING:
    from .records import Vantage


class AddressBook:
    """Interns IPv6 addresses into compact keys (shared by every chunk of one read).

    IPv4 keys are the address value itself; IPv6 keys are ``V6_FLAG | index``.
    """

    def __init__(self) -> None:
        self.addrs6: list[bytes] = [b"\0" * 16]  # index 0 reserved: key 0 means "absent"
        self._index: dict[bytes, int] = {}

    def intern_many(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Keys for IPv6 addresses given as big-endian (hi, lo) uint64 halves."""
        if len(hi) == 0:
            return np.zeros(0, dtype=np.uint64)
        pairs = np.empty(len(hi), dtype=[("hi", "u8"), ("lo", "u8")])
        pairs["hi"] = hi
        pairs["lo"] = lo
        uniq, inverse = np.unique(pairs, return_inverse=True)
        keys = np.empty(len(uniq), dtype=np.uint64)
        for i, (h, l) in enumerate(uniq.tolist()):
            b = int(h).to_bytes(8, "big") + int(l).to_bytes(8, "big")
            idx = self._index.get(b)
            if idx is None:
                idx = len(self.addrs6)
                self.addrs6.append(b)
                self._index[b] = idx
            keys[i] = idx
        return keys[inverse.reshape(-1)] | V6_FLAG

    def key(self, text: str) -> int | None:
        """Key of a text address, or None for an IPv6 address that never appeared."""
        a = ipaddress.ip_address(text)
        if a.version == 4:
            return int(a)
        idx = self._index.get(a.packed)
        return None if idx is None else int(V6_FLAG) | idx

    def text(self, key: int) -> str:
        key = int(key)
        if key == 0:
            return ""
        if key & (1 << 63):
            return str(ipaddress.IPv6Address(self.addrs6[key & ((1 << 63) - 1)]))
        return str(ipaddress.IPv4Address(key))


def mac_str(value: int) -> str:
    b = int(value).to_bytes(8, "big")[2:]
    return ":".join(f"{x:02x}" for x in b)


@dataclass
class InputSummary:
    path: str
    format: str = ""
    compressed: bool = False
    damage: list = field(default_factory=list)   # records.Damage
    stats: dict = field(default_factory=dict)    # per vantage id: capture-engine counters (pcapng ISB)


class PacketTable:
    """Dense core columns plus sparse groups (ARP, tunnel outer header, ICMP)."""

    def __init__(self, n: int, core: dict[str, np.ndarray], sparse: dict[str, dict[str, np.ndarray]],
                 opt_bytes: np.ndarray, vantages: Sequence[Vantage], book: AddressBook,
                 inputs: Sequence[InputSummary]):
        self.n = n
        self.core = core
        self.sparse = sparse          # group -> {"rows": int64, col: values}
        self.opt_bytes = opt_bytes    # raw TCP option bytes of every row, concatenated (None:
                                      # read without them, TraceReader(option_bytes=False))
        self.vantages = list(vantages)
        self.book = book
        self.inputs = list(inputs)
        self._opt_index: np.ndarray | None = None
        self._ordered: dict[str, bool] = {}      # sparse group -> its rows strictly increase

    # ---- column access -----------------------------------------------------------
    def __len__(self) -> int:
        return self.n

    def __contains__(self, name: str) -> bool:
        return name in COLUMN or name == "input"

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.core:
            return self.core[name]
        if name == "input":
            return self.vantage_inputs()[self.core["iface"]]
        col = COLUMN.get(name)
        if col is None:
            raise KeyError(f"no column {name!r}")
        grp = self.sparse[col.group]
        dense = schema.empty_column(name, self.n)
        dense[grp["rows"]] = grp[name]
        return dense

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """``self[name][rows]`` for row indices ``rows``, without materialising a sparse column
        for every row of the table."""
        if name in self.core:
            return self.core[name][rows]
        if name == "input":
            return self.vantage_inputs()[self.core["iface"][rows]]
        col = COLUMN.get(name)
        if col is None:
            raise KeyError(f"no column {name!r}")
        grp = self.sparse[col.group]
        have = grp["rows"]
        rows = np.asarray(rows)
        if col.group not in self._ordered:
            self._ordered[col.group] = bool(len(have) < 2 or (have[1:] > have[:-1]).all())
        if not self._ordered[col.group] or (len(rows) and rows.min() < 0):
            return self[name][rows]
        out = schema.empty_column(name, len(rows))
        if len(have) and len(rows):
            pos = np.minimum(np.searchsorted(have, rows), len(have) - 1)
            hit = have[pos] == rows
            out[hit] = grp[name][pos[hit]]
        return out

    def rows_of(self, group: str) -> np.ndarray:
        """Row indices that carry a sparse group (ARP frames, tunnelled frames, ICMP)."""
        return self.sparse[group]["rows"]

    def group(self, group: str) -> dict[str, np.ndarray]:
        """The sparse group's own compact columns (plus 'rows')."""
        return self.sparse[group]

    def vantage_inputs(self) -> np.ndarray:
        return np.array([v.input for v in self.vantages] or [0], dtype=np.uint16)

    # ---- addresses -----------------------------------------------------------------
    @property
    def addrs6(self) -> list[bytes]:
        return self.book.addrs6

    def addr_key(self, text: str) -> int | None:
        return self.book.key(text)

    def addr_str(self, key: int) -> str:
        return self.book.text(key)

    mac_str = staticmethod(mac_str)

    # ---- TCP options -----------------------------------------------------------------
    def tcp_option_bytes(self, row: int) -> bytes:
        """Raw option bytes of the TCP header of a row (b'' when none)."""
        if self.opt_bytes is None:
            raise ValueError("this table was read without TCP option bytes (option_bytes=False)")
        if self._opt_index is None:
            lens = np.maximum(self.core["tcp_hlen"].astype(np.int64) - 20, 0)
            self._opt_index = np.concatenate([[0], np.cumsum(lens)])
        a, b = self._opt_index[row], self._opt_index[row + 1]
        return self.opt_bytes[a:b].tobytes()

    # ---- accounting ------------------------------------------------------------------
    def accounting(self) -> list[dict]:
        """Per input: frames, decoded (incl. snaplen-cut), ignored, undecodable, truncated, damage."""
        inp = self["input"] if self.n else np.zeros(0, dtype=np.uint16)
        st = self.core["status"]
        out = []
        for i, s in enumerate(self.inputs):
            m = inp == i
            sti = st[m]
            rec = {
                "path": s.path,
                "format": s.format,
                "compressed": s.compressed,
                "frames": int(m.sum()),
                "decoded": int((sti < 10).sum()),
                "ignored": int(((sti >= 10) & (sti < 50)).sum()),
                "undecodable": int((sti >= 50).sum()),
                "truncated": int((sti == Status.SNAPLEN).sum()),
                "interfaces": [v.name for v in self.vantages if v.input == i],
                "damage": [{"offset": d.offset, "message": d.message} for d in s.damage],
                "reasons": {},
            }
            codes, counts = np.unique(sti[sti != 0], return_counts=True)
            rec["reasons"] = {Status(int(c)).name.lower(): int(k) for c, k in zip(codes, counts)}
            out.append(rec)
        return out

    def nbytes(self) -> int:
        total = sum(a.nbytes for a in self.core.values()) + (
            self.opt_bytes.nbytes if self.opt_bytes is not None else 0)
        for g in self.sparse.values():
            total += sum(a.nbytes for a in g.values())
        return total

    # ---- conversions -----------------------------------------------------------------
    def to_pandas(self, columns: Iterable[str] | None = None, *, text: bool = False):
        """A pandas DataFrame of the chosen columns (all by default).

        ``text=True`` renders addresses and MACs as strings (slow; for display and tests).
        """
        import pandas as pd

        names = list(columns) if columns is not None else [c.name for c in schema.COLUMNS]
        data = {}
        for name in names:
            col = self[name]
            if text and name in ADDRESS_COLUMNS:
                col = [self.addr_str(k) for k in col.tolist()]
            elif text and name in MAC_COLUMNS:
                col = [mac_str(k) if k else "" for k in col.tolist()]
            data[name] = col
        return pd.DataFrame(data)

    @staticmethod
    def concat(parts: Sequence["PacketTable"]) -> "PacketTable":
        """Join chunk tables into one. The parts are consumed (their columns are released)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        offsets = np.cumsum([0] + [p.n for p in parts])
        # column by column, releasing each part's copy as soon as it is joined, and handing the
        # freed pages back to the system as we go: the peak stays near one table, not two
        core = {}
        freed = 0
        for k in list(first.core):
            core[k] = np.concatenate([p.core[k] for p in parts])
            freed += core[k].nbytes
            for p in parts:
                p.core[k] = None
            if freed >= _TRIM_EVERY:
                release_freed_memory()
                freed = 0
        sparse = {}
        for g, cols in first.sparse.items():
            sparse[g] = {}
            for k in cols:
                if k == "rows":
                    sparse[g][k] = np.concatenate([p.sparse[g][k] + off for p, off in zip(parts, offsets)])
                else:
                    sparse[g][k] = np.concatenate([p.sparse[g][k] for p in parts])
        opt = (None if any(p.opt_bytes is None for p in parts)
               else np.concatenate([p.opt_bytes for p in parts]))
        for p in parts:
            p.opt_bytes = None
        release_freed_memory()
        last = parts[-1]
        return PacketTable(int(offsets[-1]), core, sparse, opt, last.vantages, last.book, last.inputs)


#: bytes joined between two hand-backs of freed memory in concat (a trim costs about a millisecond)
_TRIM_EVERY = 8 << 20
_malloc_trim = None


def release_freed_memory() -> None:
    """Return the free pages of the C heap to the system (glibc's ``malloc_trim``).

    The chunk tables' columns are small enough to live on the heap, and glibc keeps the pages
    of freed blocks that are not at its top: without this, a process that joined a table keeps
    the chunks' pages too (twice the table in RSS). Elsewhere than glibc this does nothing.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            fn = ctypes.CDLL(None).malloc_trim
            fn.argtypes = [ctypes.c_size_t]
            fn.restype = ctypes.c_int
            _malloc_trim = fn
        except (OSError, AttributeError, TypeError):     # no C library to ask, or no malloc_trim in it
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


ADDRESS_COLUMNS = frozenset({"ip_src", "ip_dst", "out_src", "out_dst", "toa_addr", "icmp_in_src",
                             "icmp_in_dst"})
MAC_COLUMNS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha"})
IPV4_COLUMNS = frozenset({"arp_spa", "arp_tpa"})

__all__ = ["PacketTable", "AddressBook", "InputSummary", "mac_str", "CORE_COLUMNS", "GROUPS"]
