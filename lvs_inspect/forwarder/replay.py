"""Replay a trace through the reference forwarder: what the director should have sent.

    result = replay(["trace.pcapng"], topology)
    result.frames[i], result.leg[i]          # expected frame i and its leg (LEGS code)
    result.src_input[i], result.src_frame[i]  # the input frame it came from
    result.write("expected.pcapng")           # one pcapng interface per leg
    print(result.summary())

What goes in. Every packet that reached the director, once: the client's packets
(``client-director``) and, for NAT and FullNAT connections, the real servers' replies
(``rs-director``; also a NAT reply that bypassed the director, ``rs-client``: it should have
reached the director, and the expected frame it gives is then missing from the director's
leg), and ICMP errors about a connection's packets (SEMANTICS §6: from the client side, sent to
a VIP about a reply; from the server side, sent back to the source of a packet the director
sent to a real server). A packet seen at several capture points is taken once, from the
capture point nearest the director: a director vantage first; else, for client packets, a router or client vantage,
for replies the real server's own vantage. A copy taken beyond a router gets the TTL the
director would have seen (the TTL difference between the two capture points, learned from
the packets seen at both). Inputs are fed in time order (timestamp, then file order).

The model. Per packet, :class:`~.conntable.ConnTable` finds or creates the connection entry
(:class:`~.schedulers.ServiceTable` schedules new ones) and a transmit function of
:mod:`.xmit` builds the frame, with the topology's profile: TTL decrement per mode and
direction, TOA variant and the packets that carry it, sequence delta, timestamp removal in the
SYN, MSS lowering in the SYN-ACK, DPVS pruning / Alibaba skipping when a TOA does not fit,
DPVS's stripping of client-sent TOA options.

Following the trace. What the director decides but the wire shows is taken from the trace
where it is visible, so that the expected frames can be compared packet by packet:

* the real server of each connection (the observed ``director-rs`` copy); when the
  scheduler (or a persistence template) would have chosen another one, the connection is
  listed in :attr:`ReplayResult.disagreements` (and the trace's choice is followed);
* FullNAT: the local port, the local address when it is one the topology lists (another one
  is a fault: the model's own LIP is used, so the difference shows), the sequence delta D1
  (from the two SYNs, else from any client packet and its ``director-rs`` copy);
* TUN/GUE: the outer UDP source port (the kernel's flow hash has a boot-time random seed).

Where nothing is visible the model decides: the scheduler, LIP round robin and ports as the
profile allocates them (Alibaba sequential from 5000, DPVS from 1025, Linux keeps the client's
port), a deterministic D1, the GUE port from :func:`.xmit.gue_source_port`.

Link layer. Toward a real server: source = the director's real-server-side MAC, destination =
the server's MAC (topology, else learned from ARP or its frames); toward the client: source =
the MAC the client's packets were sent to, destination = the MAC they came from (per
connection where the director captured the client's packet, else the most common pair) —
FullNAT's "fast xmit" reflection, and the route back for NAT. Frames of non-Ethernet captures
(Linux cooked, raw IP) are given an Ethernet header first.

ICMP errors are translated with :func:`.xmit.nat_icmp_to_rs` / ``nat_icmp_to_client`` /
``fullnat_icmp_to_rs`` / ``fullnat_icmp_to_client`` (DR and TUN: sent on like the connection's
packets); the entry is looked up, its state is not changed.

Not modelled (counted with a reason in :attr:`ReplayResult.drops`): packets without an entry
that are not connection starts (the director's own stack answers them: RST, ICMP), no server
available (ICMP port unreachable), fragments (reassembled by the director first), an ICMP error
about the director's own tunnel packet (the kernel sends the client a new one), the MTU toward
the real servers (the topology does not give it: no frag-needed is predicted), SYN proxy;
connections whose first packet in the trace is not a SYN (started before the capture) are
adopted as the kernel's ``sloppy_tcp`` would. A NAT reply that finds no entry is forwarded
unchanged, as the kernel does (:attr:`ReplayResult.unmatched_replies`).

Speed: decoding and stitching are whole-column numpy work
(:func:`lvs_inspect.capture.read_table`, without checksum verification: the inputs' checksums
are checked here, only theirs; without the TCP option columns unless a FullNAT service needs
them, and never the raw option bytes; :func:`lvs_inspect.flows.stitch`). The inputs' bytes are
read again into one buffer: from an uncompressed file at the record offsets the table kept
(:func:`lvs_inspect.capture.reread.reread_frames`, in large pieces, each record's header
checked against the first read), copied into fixed-width slots with one numpy assignment per
width; a compressed file is parsed a second time. The per-packet loop is the connection
table's; it leaves the common packets — untagged IPv4 TCP/UDP with a right checksum, not
expiring; for FullNAT also SYNs (timestamp removal), SYN-ACKs (MSS lowered) and segments taking
an 8-byte TOA with room for it, but not client TOAs or SACK edges — to :mod:`.xmit_batch`,
which rewrites them all at once with numpy (RFC 1624 incremental checksums, byte for byte what
:mod:`.xmit` gives; ``batch=False`` turns it off), and calls the :mod:`.xmit` functions for the
others. Frames that grow (TOA, tunnel headers) are made in place too: the gathered frames have
32 spare bytes before each, and stay in that buffer (:class:`ExpectedFrames`). The cyclic
garbage collector is off during a replay. ``timings`` has each stage's seconds;
bench/bench_replay.py.
"""
from __future__ import annotations

import gc
import ipaddress
import mmap
import time
import zlib
from collections import Counter
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..capture import read_table
from ..capture.reread import reread_frames
from ..capture.records import open_input
from ..capture.table import PacketTable
from ..errors import InputError
from ..flows import stitch
from ..flows.legs import C_D, D_C, D_R, LEGS, MODE_CODES, R_C, R_D, ROLE_CODES
from ..net import format_ip_port
from ..topology.model import Mode, Topology, TunType
from ..capture.schema import OPT_BIT
from . import xmit as X
from . import xmit_batch as XB
from .conntable import ConnTable, Verdict
from .localports import LocalPorts, NoLocalPort
from .schedulers import ServiceTable

__all__ = ["replay", "ReplayResult", "ExpectedFrames", "Disagreement", "LocalPorts", "COMMENT_PREFIX",
           "connection_text"]

#: first words of every expected frame's pcapng comment (diff reads the connection from it)
COMMENT_PREFIX = "lvs-inspect replay"

_NAT, _DR, _TUN, _FNAT = (MODE_CODES[m] for m in ("nat", "dr", "tun", "fullnat"))
_MODE_OF = {Mode.NAT: _NAT, Mode.DR: _DR, Mode.TUN: _TUN, Mode.FULLNAT: _FNAT}
_SYN, _ACK, _FIN, _RST = 0x02, 0x10, 0x01, 0x04
_KIND_CLIENT, _KIND_REPLY, _KIND_ICMP_C, _KIND_ICMP_R = 0, 1, 2, 3
_ICMP4_IPVS, _ICMP6_IPVS = (3, 4, 11), (1, 2, 3)      # errors IPVS relates to a connection (§6)
_ROLE_DIRECTOR, _ROLE_RS = ROLE_CODES["director"], ROLE_CODES["rs"]
_ROLE_ROUTER, _ROLE_CLIENT = ROLE_CODES["router"], ROLE_CODES["client"]
#: per input leg, the preference of capture-point roles (lower first): unknown, client,
#: director, rs, router
_PRIORITY = {
    C_D: np.array([4, 2, 0, 3, 1], dtype=np.int64),
    R_D: np.array([4, 3, 0, 1, 2], dtype=np.int64),
    R_C: np.array([4, 3, 1, 0, 2], dtype=np.int64),
}
_LINK_ETHERNET, _LINK_SLL, _LINK_SLL2 = 1, 113, 276
_LINK_RAW = (101, 228, 229, 12, 14)
_TUN_NAMES = {1: "ipip", 2: "gre", 3: "gue"}       # capture.schema.Tun codes


# =========================================================================== results

@dataclass
class Disagreement:
    """A connection whose real server (as the trace shows) is not the scheduler's choice."""

    connection: str          # "198.18.0.5:40000 > 203.0.113.100:80/tcp"
    observed_rs: str         # "192.0.2.12:80"
    model_rs: str | None     # the scheduler's (or persistence template's) choice; None: none available
    template: bool           # the model's choice came from a persistence template
    why: str                 # what the model knows against the observed server ("" if nothing)
    input: int               # index of the trace in the inputs
    frame: int               # the connection's first packet at the director
    ts_ns: int

    def __str__(self) -> str:
        who = "persistence template" if self.template else "scheduler"
        extra = f" ({self.observed_rs} is {self.why})" if self.why else ""
        return (f"{self.connection}: trace shows {self.observed_rs}, the {who} would have chosen "
                f"{self.model_rs or 'no server'}{extra}")


class ExpectedFrames(SequenceABC):
    """The expected frames of a replay, each ``bytes`` when read: the batch transmit made most
    of them in place in one buffer (frame i is ``buf[start[i]:end[i]]``), the per-packet
    functions the others (``made``: index -> bytes). Kept that way rather than as a list of
    bytes objects: writing them (:meth:`views`) needs no copy of each first."""

    __slots__ = ("_buf", "_start", "_end", "_made")

    def __init__(self, buf, start: np.ndarray, end: np.ndarray, made: dict):
        self._buf = buf
        self._start = start.tolist()
        self._end = end.tolist()
        self._made = made

    def __len__(self) -> int:
        return len(self._start)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self._start)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError(f"expected frame {i} out of range ({n} frames)")
        f = self._made.get(j)
        return f if f is not None else self._buf[self._start[j]:self._end[j]]

    def __iter__(self):
        return (bytes(v) for v in self.views())

    def __eq__(self, other) -> bool:
        if not isinstance(other, SequenceABC) or isinstance(other, (str, bytes)):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<ExpectedFrames: {len(self)} frames>"

    def views(self):
        """Each frame as a buffer (memoryview into the batch buffer, or bytes): no copies."""
        mv = memoryview(self._buf)
        made = self._made
        for j, (a, b) in enumerate(zip(self._start, self._end)):
            f = made.get(j) if made else None
            yield f if f is not None else mv[a:b]


@dataclass
class ReplayResult:
    """The expected frames (in input order) and what happened to every input."""

    traces: list[str]
    topology: Topology
    vantages: list                           # the traces' capture points (records.Vantage)
    frames: Sequence[bytes]                  # expected frames (ExpectedFrames)
    leg: np.ndarray                          # uint8 LEGS code per expected frame
    ts_ns: np.ndarray                        # int64: the timestamp of its input
    src_input: np.ndarray                    # int32: index in ``traces`` of its input frame
    src_frame: np.ndarray                    # int64: 1-based frame number of its input frame
    src_vantage: np.ndarray                  # int32: vantage id (``vantages``) of its input frame
    conn: np.ndarray                         # int32: connection id (index in ``connections``)
    connections: list[str]                   # per connection id: "CIP:cport > VIP:vport/proto"
    inputs: int = 0                          # packets that reached the director (deduplicated)
    new_connections: int = 0                 # entries the model created
    unmatched_replies: int = 0               # NAT replies without an entry: forwarded unchanged
    inputs_by_leg: dict = field(default_factory=dict)    # input leg name -> count
    frames_read: int = 0                     # frames in the traces
    drops: Counter = field(default_factory=Counter)       # reason -> count
    drop_examples: dict = field(default_factory=dict)     # reason -> (input, frame)
    disagreements: list[Disagreement] = field(default_factory=list)
    followed: Counter = field(default_factory=Counter)    # what was taken from the trace -> count
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)      # stage -> seconds (read, stitch, prepare, gather, model)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def legs_used(self) -> list[str]:
        codes = np.unique(self.leg) if len(self.leg) else []
        return [LEGS[int(c)] for c in codes]

    def by_leg(self) -> dict[str, int]:
        counts = np.bincount(self.leg, minlength=len(LEGS)) if len(self.leg) else np.zeros(len(LEGS), int)
        return {LEGS[i]: int(c) for i, c in enumerate(counts) if c}

    def comment(self, i: int) -> str:
        """The pcapng comment of expected frame ``i``: where it came from and its connection."""
        v = self.vantages[int(self.src_vantage[i])]
        return (f"{COMMENT_PREFIX} of {self.traces[int(self.src_input[i])]} frame "
                f"{int(self.src_frame[i])} ({v.name}); conn {self.connections[int(self.conn[i])]}")

    def write(self, path, *, comments: bool = True) -> int:
        """Write the expected frames as pcapng: one Ethernet interface per leg (``if_name`` =
        the leg's name), every frame with a comment naming its input frame and its connection
        (:meth:`comment`). Returns the number of frames written."""
        from ..capture.writer import PcapngWriter

        used = self.legs_used
        index = {LEGS.index(name): i for i, name in enumerate(used)}
        ifaces = [(name, 1, 262144, 9, f"expected {name} frames (lvs-inspect replay)") for name in used]
        note = (f"lvs-inspect replay of {', '.join(self.traces)} with "
                f"{self.topology.source or 'an inferred topology'} (profile {self.topology.profile.name})")
        legs = self.leg.tolist()
        ts = self.ts_ns.tolist()
        with PcapngWriter(path, ifaces, comment=note) as w:
            write = w.write
            frames = self.frames.views() if isinstance(self.frames, ExpectedFrames) else self.frames
            for i, frame in enumerate(frames):
                write(index[legs[i]], ts[i], frame, comment=self.comment(i) if comments else None)
        return len(self.frames)

    def summary(self) -> str:
        """What an operator reads on stderr."""
        out = []
        n_in = ", ".join(f"{v} {k}" for k, v in self.inputs_by_leg.items())
        out.append(f"replay: {self.frames_read} frames read, {len(self.connections)} connections; "
                   f"{self.inputs} packets reached the director ({n_in or 'none'})")
        legs = self.by_leg()
        out.append(f"  expected frames: {len(self.frames)}" + ("" if not legs else " (" + ", ".join(
            f"{k} {v}" for k, v in legs.items()) + ")"))
        if self.unmatched_replies:
            out.append(f"  NAT replies that found no connection entry, forwarded unchanged as the kernel "
                       f"does: {self.unmatched_replies}")
        if self.drops:
            out.append(f"  not transmitted: {sum(self.drops.values())}")
            for reason, n in self.drops.most_common():
                ex = self.drop_examples.get(reason)
                where = f" (first: {self.traces[ex[0]]} frame {ex[1]})" if ex else ""
                out.append(f"    {n:>7}  {reason}{where}")
        out.append(f"  scheduler disagreements: {len(self.disagreements)} of {self.new_connections} "
                   "new connections")
        for d in self.disagreements[:10]:
            out.append(f"    {d} ({self.traces[d.input]} frame {d.frame})")
        if len(self.disagreements) > 10:
            out.append(f"    ... {len(self.disagreements) - 10} more")
        if self.followed:
            out.append("  taken from the trace: " + ", ".join(f"{k} {v}" for k, v in sorted(self.followed.items())))
        for n in self.notes:
            out.append(f"  note: {n}")
        return "\n".join(out)


def connection_text(cip, cport: int, vip, vport: int, proto: int) -> str:
    """``198.18.0.5:40000 > 203.0.113.100:80/tcp`` (IPv6 in brackets)."""
    p = {6: "tcp", 17: "udp"}.get(int(proto), str(int(proto)))
    return f"{format_ip_port(cip, int(cport))} > {format_ip_port(vip, int(vport))}/{p}"


#: no local port or address left for a new FullNAT entry
XmitFull = NoLocalPort


# =========================================================================== helpers

class _Dest:
    """Transmit parameters of one real server of one service (computed once)."""

    __slots__ = ("ver", "mode", "rs_ip", "rs_mac", "src_mac", "ttl_req", "ttl_rep", "tun_kind",
                 "tun_known", "tun_port", "tun_csum", "outer_src", "toa", "mss_reduce", "remove_ts", "toa_full", "strip_toa", "seq_delta",
                 "lips", "endpoint", "svc_key", "rows")


class _Conn:
    """What the replay keeps per connection entry besides the table's own state."""

    __slots__ = ("d", "c", "lip", "lport", "d1", "gue_sport", "isn1", "first_ack",
                 "cmac_src", "cmac_dst", "vip", "vport", "cip", "cport", "vq", "vv", "vr", "vg")


def _packed(value: int, af: int) -> bytes:
    return value.to_bytes(4 if af == 4 else 16, "big")


def _key_ints(table: PacketTable, keys: np.ndarray) -> list:
    """Address keys -> Python ints (IPv4 value, IPv6 128-bit value), one conversion per
    distinct key."""
    if len(keys) == 0:
        return []
    v6 = (keys >> np.uint64(63)).astype(bool)
    if not v6.any():
        return keys.tolist()
    uniq, inv = np.unique(keys, return_inverse=True)
    vals = np.empty(len(uniq), dtype=object)
    addrs6 = table.addrs6
    for i, k in enumerate(uniq.tolist()):
        vals[i] = int.from_bytes(addrs6[k & ((1 << 63) - 1)], "big") if k >> 63 else k
    return vals[inv.reshape(-1)].tolist()


def _key_ip(table: PacketTable, key: int):
    return ipaddress.ip_address(table.addr_str(int(key))) if key else None


def _first_per(group: np.ndarray, order_keys: tuple, rows: np.ndarray):
    """For rows (indices) with a group id each: (groups, the first row of each group by
    order_keys (last key = primary, as np.lexsort; None: the row index))."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.lexsort(tuple(rows if k is None else k[rows] for k in order_keys) + (group[rows],))
    g = group[rows][order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = g[1:] != g[:-1]
    return g[keep].astype(np.int64), rows[order[keep]]


def _most_common(values: np.ndarray, exclude=()) -> int:
    v = values[values != 0]
    for e in exclude:
        v = v[v != e]
    if len(v) == 0:
        return 0
    u, c = np.unique(v, return_counts=True)
    return int(u[np.argmax(c)])


def _buffer(size: int):
    """A writable buffer of ``size`` zero bytes whose slices are ``bytes``: anonymous memory,
    its pages mapped at once where the kernel can (MAP_POPULATE: one call instead of a page
    fault per 4 KB, which is what a large fresh buffer costs most)."""
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    if flags and hasattr(mmap, "MAP_POPULATE"):
        try:
            return mmap.mmap(-1, max(size, 1), flags=flags | mmap.MAP_POPULATE)
        except OSError:
            pass
    return mmap.mmap(-1, max(size, 1))


def _gather_frames(paths: Sequence[str], table: PacketTable, rows: np.ndarray,
                   room: int = 0) -> tuple[mmap.mmap, np.ndarray, np.ndarray]:
    """The captured bytes of table rows ``rows`` (any order), read again from the inputs, in
    one buffer: (buffer, offset of row i's frame, its length), ``room`` zero bytes before each
    frame (where xmit_batch puts the bytes a frame grows by). Frames of other link types are
    given an Ethernet header (those frames are placed after the others).

    Layout: one slot per frame, ``room`` + a width (its length rounded up: to 64 at least, to
    16 bytes up to 2048, to a power of two above), the slots of one width side by side, so
    that the frames of a piece of an uncompressed input
    (:func:`~lvs_inspect.capture.reread.reread_frames`) are copied with one numpy assignment
    per width (fixed-size records), not one Python operation per frame."""
    n_rows = len(rows)
    off = np.zeros(n_rows, dtype=np.int64)
    ln = np.zeros(n_rows, dtype=np.int64)
    if n_rows == 0:
        return _buffer(64), off, ln
    inp = table["input"]
    order = np.argsort(rows, kind="stable")
    srows = rows[order]
    starts = np.searchsorted(inp, np.arange(len(paths) + 1))      # rows are grouped by input
    frame_col = table["frame"]
    vantages = table.vantages
    linktype = np.array([v.linktype for v in vantages] or [1], dtype=np.int64)
    caplen = table["caplen"][rows].astype(np.int64)
    ln[:] = caplen
    lt = linktype[table["iface"][rows]]
    odd = np.flatnonzero(lt != _LINK_ETHERNET)
    # the slots: a width per row, a region per width, the rank of a row within its region
    width = np.where(caplen <= 64, 64, np.where(
        caplen <= 2048, (caplen + 15) & ~15,
        np.left_shift(1, np.ceil(np.log2(np.maximum(caplen, 1))).astype(np.int64))))
    sizes, wid, counts = np.unique(width, return_inverse=True, return_counts=True)
    region = np.zeros(len(sizes) + 1, dtype=np.int64)
    region[1:] = np.cumsum(counts * (sizes + room))
    by_width = np.argsort(wid, kind="stable")
    rank = np.empty(n_rows, dtype=np.int64)
    rank[by_width] = np.arange(n_rows) - np.searchsorted(wid[by_width], wid[by_width])
    off[:] = region[wid] + rank * (width + room) + room
    # other link types get an Ethernet header: room for the rewritten frames after the rest;
    # 64 bytes to spare at the end (xmit_batch reads whole header rows)
    slots = int(region[-1])
    buf = _buffer(slots + int(caplen[odd].sum()) + (14 + room) * len(odd) + 64)
    at = slots
    dst_rows = [np.ndarray((int(c),), dtype=f"V{int(w)}", buffer=buf, offset=int(r) + room,
                           strides=(int(w) + room,))
                for w, c, r in zip(sizes, counts, region)]
    offset_col = table["offset"]
    for i, path in enumerate(paths):
        lo, hi = np.searchsorted(srows, [starts[i], starts[i + 1]])
        if lo == hi:
            continue
        summary = table.inputs[i] if i < len(table.inputs) else None
        mine = order[lo:hi]
        pieces = (reread_frames(path, summary.format, offset_col[srows[lo:hi]], caplen[mine],
                                slack=int(width[mine].max()))
                  if summary is not None and not summary.compressed else None)
        if pieces is not None:
            # an uncompressed file: the frames read at their offsets, no second parse
            for a, b, piece, data in pieces:
                dest = mine[a:b]
                wd = wid[dest]
                for u in np.unique(wd).tolist():
                    sel = wd == u
                    w = int(sizes[u])
                    src = np.ndarray((len(piece) - w + 1,), dtype=f"V{w}", buffer=piece,
                                     strides=(1,))
                    dst_rows[u][rank[dest[sel]]] = src[data[sel]]
            continue
        # compressed: parsed a second time, the frames copied one by one
        want = srows[lo:hi] - starts[i]           # positions within this input
        pos = 0
        j = 0
        vts: list = []
        for batch in open_input(path, i, vts):
            n = len(batch)
            k = int(np.searchsorted(want, pos + n))
            if k > j:
                local = want[j:k] - pos
                if not np.array_equal(batch.frame[local], frame_col[srows[lo + j:lo + k]]):
                    raise InputError(path, "the file changed while it was being replayed (frame "
                                     "numbers differ on the second read)")
                dest = mine[j:k]
                if not np.array_equal(batch.caplen[local], caplen[dest]):
                    raise InputError(path, "the file changed while it was being replayed "
                                     "(frame lengths differ on the second read)")
                mv = memoryview(batch.buf)
                for o, a, n_ in zip(off[dest].tolist(), batch.data_off[local].tolist(),
                                    caplen[dest].tolist()):
                    buf[o:o + n_] = mv[a:a + n_]
                j = k
            pos += n
            if j >= len(want):
                break
        if j < len(want):
            raise InputError(path, "the file is shorter on the second read than on the first")
    del dst_rows
    # other link types: an Ethernet header from the decoded columns
    if len(odd):
        esrc = table["eth_src"][rows[odd]].tolist()
        etype = table["ethertype"][rows[odd]].tolist()
        for t, o, s, e in zip(lt[odd].tolist(), odd.tolist(), esrc, etype):
            f = buf[off[o]:off[o] + ln[o]]
            cut = 16 if t == _LINK_SLL else 20 if t == _LINK_SLL2 else 0 if t in _LINK_RAW else None
            if cut is None:
                continue
            if t in _LINK_RAW and f:
                e = 0x86DD if f[0] >> 4 == 6 else 0x0800
            f = b"\0" * 6 + s.to_bytes(6, "big") + e.to_bytes(2, "big") + f[cut:]
            at += room
            buf[at:at + len(f)] = f
            off[o], ln[o] = at, len(f)
            at += len(f)
    return buf, off, ln


def _has_fullnat(topo: Topology) -> bool:
    return any(rs.mode is Mode.FULLNAT for svc in topo.services for rs in svc.real_servers)


def read_options(topo: Topology | None = None) -> dict:
    """What replay needs decoded (``read_table`` keyword arguments): no checksum verification
    (the inputs' checksums are checked by _batch_shapes, only theirs), no raw TCP option bytes,
    and the option columns only where FullNAT needs them (stitching by TOA, the batch shapes:
    client TOA, SACK blocks) — all of them while the topology is not known yet."""
    return {"checksums": False, "option_bytes": False,
            "tcp_options": topo is None or _has_fullnat(topo)}


def _outer_source(rs_ip, ips) -> bytes | None:
    """The director's address on the route to a real server: the one of its addresses
    sharing the longest prefix with the server's (same family)."""
    best, best_len = None, -1
    for a in ips:
        if a.version != rs_ip.version:
            continue
        width = 32 if a.version == 4 else 128
        common = width - (int(a) ^ int(rs_ip)).bit_length()
        if common > best_len:
            best, best_len = a, common
    return best.packed if best is not None else None


# =========================================================================== replay

def replay(traces: Sequence[str], topology: Topology, *, table: PacketTable | None = None,
           flows=None, follow_trace: bool = True, batch: bool = True,
           **reader_kwargs) -> ReplayResult:
    """Feed what reached the director in ``traces`` through the model and return the frames it
    should have sent. ``table``/``flows`` may be given when already read (same traces);
    ``follow_trace=False`` lets the model decide everything (real servers, LIPs, ports, D1);
    ``batch=False`` makes every frame with the per-packet functions of :mod:`.xmit` (the same
    bytes, slower: for tests)."""
    # millions of short-lived objects and no reference cycles: the cyclic garbage collector
    # would only walk them again and again (a quarter of the per-packet loop)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        return _replay(traces, topology, table=table, flows=flows, follow_trace=follow_trace,
                       batch=batch, **reader_kwargs)
    finally:
        if gc_was:
            gc.enable()


def _replay(traces, topology, *, table, flows, follow_trace, batch, **reader_kwargs):
    paths = [str(p) for p in traces]
    for p in paths:
        if p == "-":
            raise InputError("-", "replay reads its traces twice: give a file, not standard input")
    topo = topology
    clock = time.perf_counter
    timings = {}
    t0 = clock()
    if table is None:
        table = read_table(paths, **{**read_options(topo), **reader_kwargs})
    t1 = clock()
    timings["read"] = t1 - t0
    if flows is None:
        flows = stitch(table, topo, counters=False)
    t0 = clock()
    timings["stitch"] = t0 - t1
    profile = topo.profile
    ep = flows.endpoints
    n_rows = len(table)
    leg, conn, obs, role = flows.leg, flows.conn, flows.obs, flows.role
    ts_col = table["ts_ns"]
    iface = table["iface"]
    cons = flows.connections
    nconn = len(cons)
    conn_mode = cons["mode"].to_numpy() if nconn else np.zeros(0, np.int64)
    result_notes: list[str] = []

    # ---------------------------------------------------------------- inputs
    mode_of_row = np.zeros(n_rows, dtype=np.int64)
    on_conn = conn >= 0
    mode_of_row[on_conn] = conn_mode[conn[on_conn]]
    back = np.isin(mode_of_row, (_NAT, _FNAT))
    cand = np.flatnonzero(on_conn & ((leg == C_D) | (back & ((leg == R_D) | (leg == R_C)))))
    # one copy per observation: the capture point nearest the director
    prio = np.full(n_rows, 9, dtype=np.int64)
    for lg, table_ in _PRIORITY.items():
        m = cand[leg[cand] == lg]
        prio[m] = table_[role[m]]
    _, chosen = _first_per(obs, (None, prio), cand)
    # TTL seen beyond a router: learn the offset to the director's copy per (vantage, leg)
    ttl_fix = _ttl_offsets(table, flows, cand, chosen, prio)
    icmp_rows, icmp_kind, tunnel_errors = _icmp_inputs(table, flows)
    chosen = np.concatenate([chosen, icmp_rows])
    kind_of = np.full(n_rows, -1, dtype=np.int64)
    kind_of[chosen[:len(chosen) - len(icmp_rows)]] = _KIND_REPLY
    kind_of[chosen[leg[chosen] == C_D]] = _KIND_CLIENT
    kind_of[icmp_rows] = icmp_kind
    order = np.lexsort((chosen, ts_col[chosen]))
    rows = chosen[order]
    n_in = len(rows)
    kind = kind_of[rows]

    # ---------------------------------------------------------------- per connection
    services = ServiceTable(topo)
    target = []                                  # ep.real_servers index -> (state, dest index)
    for si, rs in ep.real_servers:
        svc = ep.services[si]
        st = services.state_of(svc)
        j = next((k for k, r in enumerate(svc.real_servers) if r is rs), None)
        target.append((st, j))
    rs_col = flows.rs
    dr_rows = np.flatnonzero((leg == D_R) & on_conn)
    c_dr, first_dr = _first_per(conn, (None, ts_col), dr_rows)
    obs_rs = np.full(nconn, -1, dtype=np.int64)
    obs_rs[c_dr] = rs_col[first_dr]
    obs_lip = np.zeros(nconn, dtype=np.uint64)
    obs_lport = np.full(nconn, -1, dtype=np.int64)
    fn_dr = first_dr[conn_mode[c_dr] == _FNAT] if len(c_dr) else first_dr
    c_fn = conn[fn_dr]
    obs_lip[c_fn] = table["ip_src"][fn_dr]
    obs_lport[c_fn] = table["sport"][fn_dr]
    obs_gue = np.full(nconn, -1, dtype=np.int64)
    obs_tun = np.zeros(nconn, dtype=np.int64)          # Tun code of the observed copy (0: none)
    obs_gport = np.zeros(nconn, dtype=np.int64)
    if len(first_dr):
        tk = table.take("tun", first_dr).astype(np.int64)
        obs_tun[c_dr] = tk
        gue_rows = first_dr[tk == 3]
        obs_gue[conn[gue_rows]] = table.take("out_sport", gue_rows)
        obs_gport[conn[gue_rows]] = table.take("out_dport", gue_rows)
    obs_rsmac = np.zeros(nconn, dtype=np.uint64)
    obs_rsmac[c_dr] = table["eth_dst"][first_dr]
    d1 = _seq_deltas(table, flows, nconn) if profile.seq_delta else np.full(nconn, -1, np.int64)

    # the director's MACs and the client's L2, from the client packets captured at the director
    at_dir = rows[(kind == _KIND_CLIENT) & (role[rows] == _ROLE_DIRECTOR)]
    dmacs = [int(m) for m in topo.director.all_macs]
    cside = _most_common(table["eth_dst"][at_dir]) if len(at_dir) else 0
    if not cside:
        # a capture without destination MACs (Linux cooked): the MAC the director sends to
        # clients from, as its own frames toward them show
        seen = _most_common(table["eth_src"][np.flatnonzero((leg == D_C) & on_conn)])
        cside = seen or (dmacs[0] if dmacs else 0)
    gateway = _most_common(table["eth_src"][at_dir], exclude=dmacs) if len(at_dir) else 0
    other = [m for m in dmacs if m != cside]
    if len(other) == 1:
        rside = other[0]
    else:
        seen = _most_common(table["eth_src"][dr_rows])
        rside = seen if (seen and (not dmacs or seen in dmacs)) else (other[0] if other else cside)
    if not dmacs and not cside:
        result_notes.append("the director's MACs are unknown: the expected frames keep the input's")
    c_l2, first_l2 = _first_per(conn, (None, ts_col), at_dir)
    conn_esrc = np.zeros(nconn, dtype=np.uint64)
    conn_edst = np.zeros(nconn, dtype=np.uint64)
    conn_esrc[c_l2] = table["eth_src"][first_l2]
    conn_edst[c_l2] = table["eth_dst"][first_l2]
    # connections first seen mid-stream (no client SYN in the trace)
    cl_rows = np.flatnonzero(on_conn & (leg == C_D))
    c_first, first_cl = _first_per(conn, (None, ts_col), cl_rows)
    midstream = np.zeros(nconn, dtype=bool)
    midstream[c_first] = (table["ip_proto"][first_cl] == 6) & ((table["tcp_flags"][first_cl] & _SYN) == 0)

    # connection texts
    cip_k = cons["cip"].to_numpy().astype(np.uint64) if nconn else np.zeros(0, np.uint64)
    vip_k = cons["vip"].to_numpy().astype(np.uint64) if nconn else np.zeros(0, np.uint64)
    texts = _conn_texts(table, cip_k, cons["cport"].to_numpy() if nconn else [],
                        vip_k, cons["vport"].to_numpy() if nconn else [],
                        cons["proto"].to_numpy() if nconn else [])

    # ---------------------------------------------------------------- per input columns
    t1 = clock()
    timings["prepare"] = t1 - t0
    # room before each frame for the bytes the batch path adds (a tunnel's outer headers, a TOA)
    grows = bool(batch) and bool(np.isin(conn_mode, (_TUN, _FNAT)).any())
    inbuf, f_off, f_len = _gather_frames(paths, table, rows, room=_ROOM if grows else 0)
    t0 = clock()
    timings["gather"] = t0 - t1
    if ttl_fix is not None:
        fix = ttl_fix[rows]
        for k in np.flatnonzero(fix).tolist():
            o, n = int(f_off[k]), int(f_len[k])
            inbuf[o:o + n] = _set_ttl_delta(inbuf[o:o + n], int(fix[k]))
    # the batch paths each input frame may take (xmit_batch), and its IPv4 TTL
    vk, ttl_in = _batch_shapes(table, rows, inbuf, f_off, f_len, batch,
                               l4=bool(np.isin(conn_mode, (_NAT, _FNAT)).any()))
    inview = memoryview(inbuf)
    offs = f_off.tolist()
    ends = (f_off + f_len).tolist()
    frames: list = [None] * n_in          # expected frames made one by one
    vop = [0] * n_in                      # or the batch operation (_V_*) that makes it
    vpar = [0] * n_in                     # and its parameter row
    vparams: list = []
    ts0 = int(ts_col[rows].min()) if n_in else 0
    ts_s = ((ts_col[rows] - ts0) / 1e9).tolist()
    af = np.where(table["ip_ver"][rows] == 6, 6, 4).tolist()
    proto = table["ip_proto"][rows].tolist()
    flags = table["tcp_flags"][rows].tolist()
    src = _key_ints(table, table["ip_src"][rows])
    dst = _key_ints(table, table["ip_dst"][rows])
    sport = table["sport"][rows].tolist()
    dport = table["dport"][rows].tolist()
    # sequence numbers and payload lengths: for FullNAT only (D1's ISN, the TOA decision)
    if _has_fullnat(topo):
        seq = table["tcp_seq"][rows].tolist()
        ack = table["tcp_ack"][rows].tolist()
        plen = table["payload_len"][rows].tolist()
    else:
        seq = ack = plen = None
    cid = conn[rows].tolist()
    out_conn = list(cid)                        # the connection of each expected frame
    is_icmp = kind >= _KIND_ICMP_C
    if is_icmp.any():
        irows = rows[is_icmp]
        pos = np.flatnonzero(is_icmp).tolist()
        e_src = _key_ints(table, table.take("icmp_in_src", irows))
        e_dst = _key_ints(table, table.take("icmp_in_dst", irows))
        e_sp = table.take("icmp_in_sport", irows).tolist()
        e_dp = table.take("icmp_in_dport", irows).tolist()
        e_pr = table.take("icmp_in_proto", irows).tolist()
        for k, a, b, x, y, z in zip(pos, e_src, e_dst, e_sp, e_dp, e_pr):
            src[k], dst[k], sport[k], dport[k], proto[k] = a, b, x, y, z   # the quoted packet
    kinds = kind.tolist()
    obs_of_conn = obs_rs.tolist() if follow_trace else [-1] * nconn
    force_of = [_UNSET] * nconn                 # the dest index to force, per connection
    lip_of = obs_lip.tolist()
    lport_of = obs_lport.tolist()
    gue_of = obs_gue.tolist() if follow_trace else [-1] * nconn
    tun_of = obs_tun.tolist()
    gport_of = obs_gport.tolist()
    d1_of = d1.tolist() if follow_trace else [-1] * nconn
    rsmac_of = obs_rsmac.tolist()
    esrc_of = conn_esrc.tolist()
    edst_of = conn_edst.tolist()
    mid_of = midstream.tolist()
    lips_cfg = {a.packed for a in topo.lips}
    learn_lips = not lips_cfg

    # ---------------------------------------------------------------- the model
    ports = LocalPorts(profile)
    states: dict = {}

    def on_expire(cp, when):
        s = states.pop(cp, None)
        if s is not None and s.lip is not None:
            ports.release(s.lip, s.lport, s.d.rs_ip, cp.dport, cp.proto)

    ct = ConnTable.for_topology(topo, on_expire=on_expire)
    dests: dict = {}
    bmac = lambda m: m.to_bytes(6, "big") if m else None          # noqa: E731
    cside_b, gateway_b, rside_b = bmac(cside), bmac(gateway), bmac(rside)
    rs_mac_learned = ep.rs_mac.tolist()
    rs_index = {id(rs): i for i, (_, rs) in enumerate(ep.real_servers)}

    def dest_params(svc_state, j: int) -> _Dest:
        d = dests.get((id(svc_state), j))
        if d is not None:
            return d
        svc = svc_state.service
        rs = svc.real_servers[j]
        d = _Dest()
        d.ver = 0                      # + 1 whenever a transmit parameter changes
        d.mode = _MODE_OF[rs.mode]
        d.rs_ip = rs.ip.packed
        d.endpoint = rs.endpoint
        mac = int(rs.mac) if rs.mac is not None else 0
        if not mac:
            i = rs_index.get(id(rs))
            mac = rs_mac_learned[i] if i is not None else 0
        d.rs_mac = bmac(mac)
        d.src_mac = rside_b
        d.ttl_req = profile.ttl_decrement(rs.mode, "request")
        d.ttl_rep = profile.ttl_decrement(rs.mode, "reply")
        d.tun_kind = (rs.tun or TunType.IPIP).value
        d.tun_known = rs.tun is not None
        d.tun_port = rs.tun_port or 6080
        d.tun_csum = rs.tun_flags in ("csum", "remcsum")
        if rs.tun_flags == "remcsum":
            result_notes.append(f"{rs.endpoint}: GUE remote checksum offload is not modelled "
                                "(the UDP checksum is, not the 8 bytes of private data)")
        d.outer_src = _outer_source(rs.ip, topo.director.ips)
        toa = svc.toa if d.mode == _FNAT else None
        d.toa = toa
        d.mss_reduce = svc.mss_reduction(profile)
        d.remove_ts = profile.timestamp_removal
        d.toa_full = profile.toa_full
        d.strip_toa = profile.strip_client_toa
        d.seq_delta = profile.seq_delta
        d.lips = [a.packed for a in topo.lips_for(svc) if a.version == rs.ip.version]
        d.svc_key = id(svc_state)
        d.rows = {}                    # batch parameter rows its connections share (_vq)
        dests[(id(svc_state), j)] = d
        return d

    out_leg = [0] * n_in                 # LEGS code of each input's expected frame (0: none)
    unmatched = 0                        # NAT replies without an entry, forwarded unchanged
    new_conns: Counter = Counter()       # scheduler name -> new entries
    drops: Counter = Counter()
    drop_first: dict = {}
    disagreements: list[Disagreement] = []
    followed: Counter = Counter()

    def drop(k: int, reason: str) -> None:
        drops[reason] += 1
        if reason not in drop_first:
            drop_first[reason] = k

    packet_in, packet_out = ct.packet_in, ct.packet_out
    nat_request, nat_reply, xdr, xtun = X.nat_request, X.nat_reply, X.dr, X.tun
    fn_req, fn_rep = X.fullnat_request, X.fullnat_reply
    toa_wanted = X.toa_wanted
    XmitError, IcmpError = X.XmitError, X.IcmpError
    NEW, FORWARD, NOT_SCHEDULED = Verdict.NEW, Verdict.FORWARD, Verdict.NOT_SCHEDULED
    get_state = states.get
    cols = zip(range(n_in), cid, flags, kinds, ts_s, af, proto, src, sport, dst, dport, vk,
               ttl_in)
    for k, c, fl, kd, t, a_, pr, sa, sp, da, dp, vk_, ttl_ in cols:
        if kd == _KIND_CLIENT:
            # ------------------------------------------------ a client packet
            force = force_of[c]
            if force is _UNSET:
                force = force_of[c] = _forced(services, target, obs_of_conn[c], a_, pr, da, dp)
            try:
                verdict, cp = packet_in(t, services, a_, pr, sa, sp, da, dp, fl, force_dest=force)
            except ValueError as e:
                drop(k, f"not modelled: {e}")
                continue
            if verdict is FORWARD:
                s = get_state(cp)
                if s is None:
                    drop(k, "entry created outside the replay")
                    continue
                d = s.d
            elif verdict is NEW or (verdict is NOT_SCHEDULED and mid_of[c]):
                if verdict is not NEW:
                    ct.sloppy_tcp = True
                    try:
                        verdict, cp = packet_in(t, services, a_, pr, sa, sp, da, dp, fl, force_dest=force)
                    finally:
                        ct.sloppy_tcp = False
                    if verdict is not NEW:
                        drop(k, _VERDICT_REASON.get(verdict, str(verdict)))
                        continue
                    followed["connections adopted mid-stream"] += 1
                svc_state = cp.svc
                d = dest_params(svc_state, cp.dest)
                new_conns[svc_state.scheduler.name] += 1
                exp = ct.last_expected
                if force is not None and exp != force:
                    model = dest_params(svc_state, exp).endpoint if exp is not None else None
                    disagreements.append(Disagreement(
                        texts[c], d.endpoint, model,
                        cp.control is not None and cp.control.created < cp.created,
                        _why(svc_state, force), 0, int(rows[k]), int(ts_col[rows[k]])))
                    _sync_scheduler(svc_state, force)
                elif force is None and obs_of_conn[c] >= 0:
                    followed["real server not in the looked-up service (model's choice kept)"] += 1
                s = _new_state(cp, c, d, gue_of[c], esrc_of[c], edst_of[c], gateway_b, cside_b,
                               followed)
                if d.mode == _FNAT:
                    s.d1 = _model_d1(s, d, d1_of[c], followed)
                    try:
                        _bind_fullnat(ct, cp, s, d, ports, lip_of[c], lport_of[c], lips_cfg,
                                      learn_lips, follow_trace, followed, result_notes)
                    except XmitError as e:
                        drop(k, f"FullNAT: {e}")
                        ct.expire_now(cp)
                        continue
                if d.rs_mac is None and rsmac_of[c]:
                    d.rs_mac = bmac(rsmac_of[c])
                    d.ver += 1
                if d.mode == _TUN and not d.tun_known and tun_of[c]:
                    # the tunnel type is not in the topology (ipvsadm -Ln does not show it)
                    d.tun_kind = _TUN_NAMES.get(tun_of[c], d.tun_kind)
                    if tun_of[c] == 3 and gport_of[c]:
                        d.tun_port = gport_of[c]
                    d.tun_known = True
                    d.ver += 1
                    followed["tunnel types"] += 1
                states[cp] = s
            else:
                drop(k, _VERDICT_REASON.get(verdict, str(verdict)))
                continue
            m = d.mode
            if m == _NAT:
                if vk_ & _VK_L4 and ttl_ > d.ttl_req:
                    pid = s.vq if s.vv == d.ver else _vq(s, d, cp, vparams)
                    if pid >= 0:
                        vop[k], vpar[k], out_leg[k] = _V_REWRITE, pid, D_R
                        continue
            elif m == _DR:
                if vk_ & _VK_IP4 and ttl_ > d.ttl_req:
                    pid = s.vq if s.vv == d.ver else _vq(s, d, cp, vparams)
                    if pid >= 0:
                        vop[k], vpar[k], out_leg[k] = _V_DR, pid, D_R
                        continue
            elif m == _TUN:
                if vk_ & _VK_WHOLE and ttl_ > d.ttl_req and grows:
                    if s.vv != d.ver and s.gue_sport is None and d.tun_kind == "gue":
                        # the flow hash of a whole packet: the same for all of the connection's
                        s.vg = X.gue_source_port(bytes(inview[offs[k] + 14:ends[k]]))
                    pid = s.vq if s.vv == d.ver else _vq(s, d, cp, vparams)
                    if pid >= 0:
                        vop[k], vpar[k], out_leg[k] = _V_TUN, pid, D_R
                        continue
            else:
                toa_on = False
                if d.toa is not None and pr == 6:
                    a = ack[k]
                    if s.first_ack is None and not fl & _SYN:
                        s.first_ack = a       # R's SYN-ACK not in the trace: the first ack
                    toa_on = toa_wanted(d.toa.packets, fl, a,
                                        s.isn1 if s.isn1 is not None else s.first_ack,
                                        plen[k] > 0)
                if vk_ & (_VK_FN_REQ | _VK_FN_SYN) and ttl_ > d.ttl_req and (
                        not toa_on or (vk_ & _VK_TOA_ROOM and d.toa.length == 8 and grows)):
                    pid = s.vq if s.vv == d.ver else _vq(s, d, cp, vparams)
                    if pid >= 0:
                        op = _V_TOA if toa_on else _V_REWRITE
                        if vk_ & _VK_FN_SYN and d.remove_ts:
                            op |= _V_NOTS
                        vop[k], vpar[k], out_leg[k] = op, pid, D_R
                        continue
            f = bytes(inview[offs[k]:ends[k]])
            try:
                if m == _NAT:
                    out = nat_request(f, d.rs_ip, cp.dport, src_mac=d.src_mac, dst_mac=d.rs_mac,
                                      ttl_dec=d.ttl_req)
                elif m == _DR:
                    out = xdr(f, src_mac=d.src_mac, rs_mac=d.rs_mac, ttl_dec=d.ttl_req)
                elif m == _TUN:
                    if d.outer_src is None:
                        raise XmitError("the director has no address of the real server's "
                                        "family (director.ips) for the outer header")
                    out = xtun(f, kind=d.tun_kind, outer_src=d.outer_src, rs_ip=d.rs_ip,
                               ttl_dec=d.ttl_req, gue_port=d.tun_port, gue_sport=s.gue_sport,
                               src_mac=d.src_mac, dst_mac=d.rs_mac, csum=d.tun_csum)
                else:
                    out = fn_req(f, s.lip, s.lport, d.rs_ip, cp.dport, seq_delta=s.d1,
                                 toa=d.toa, toa_on=toa_on, remove_ts=d.remove_ts,
                                 ttl_dec=d.ttl_req, src_mac=d.src_mac, dst_mac=d.rs_mac,
                                 toa_full=d.toa_full, strip_client_toa=d.strip_toa)
            except XmitError as e:
                drop(k, f"transmit: {e}")
                continue
            if out is None:
                drop(k, "dropped by the transmitter (tunnel MTU below the minimum, or an "
                        "expiring ICMP error)")
                continue
            frames[k] = out
            out_leg[k] = D_C if (type(out) is not bytes and isinstance(out, IcmpError)) else D_R
        elif kd >= _KIND_ICMP_C:
            # ------------------------------------------------ an ICMP error about a connection
            # (sa:sp -> da:dp, pr: the packet it quotes); the entry is looked up, not changed
            if kd == _KIND_ICMP_C:        # from the client side, about a packet toward the client
                cp = ct.lookup(a_, pr, da, dp, sa, sp)
            else:                         # from the server side, about a packet toward the server
                cp = ct.lookup_out(a_, pr, da, dp, sa, sp)
            s = get_state(cp) if cp is not None else None
            if s is None:
                drop(k, "ICMP error about no connection entry (not IPVS traffic)")
                continue
            d = s.d
            m = d.mode
            f = bytes(inview[offs[k]:ends[k]])
            try:
                if kd == _KIND_ICMP_C:
                    if m == _NAT:
                        out = X.nat_icmp_to_rs(f, d.rs_ip, cp.dport, ttl_dec=d.ttl_req,
                                               src_mac=d.src_mac, dst_mac=d.rs_mac)
                    elif m == _FNAT:
                        out = X.fullnat_icmp_to_rs(f, s.lip, s.lport, d.rs_ip, cp.dport,
                                                   ttl_dec=d.ttl_req, src_mac=d.src_mac,
                                                   dst_mac=d.rs_mac)
                    elif m == _DR:
                        out = xdr(f, src_mac=d.src_mac, rs_mac=d.rs_mac, ttl_dec=d.ttl_req)
                    else:
                        out = xtun(f, kind=d.tun_kind, outer_src=d.outer_src, rs_ip=d.rs_ip,
                                   ttl_dec=d.ttl_req, gue_port=d.tun_port, gue_sport=s.gue_sport,
                                   src_mac=d.src_mac, dst_mac=d.rs_mac, csum=d.tun_csum)
                    lg = D_R
                else:
                    if m == _NAT:
                        out = X.nat_icmp_to_client(f, s.vip, s.vport, ttl_dec=d.ttl_rep,
                                                   src_mac=s.cmac_dst, dst_mac=s.cmac_src)
                    elif m == _FNAT:
                        out = X.fullnat_icmp_to_client(f, s.vip, s.vport, s.cip, s.cport,
                                                       seq_delta=s.d1, ttl_dec=d.ttl_rep,
                                                       src_mac=s.cmac_dst, dst_mac=s.cmac_src)
                    else:
                        drop(k, "ICMP error about a DR/TUN packet from the server side: the "
                                "tunnel error relay is not modelled")
                        continue
                    lg = D_C
            except XmitError as e:
                drop(k, f"transmit: {e}")
                continue
            if out is None:
                drop(k, "ICMP error dropped by the transmitter (TTL expired)")
                continue
            frames[k] = out
            out_leg[k] = lg
            out_conn[k] = s.c
        else:
            # ------------------------------------------------ a real server's reply
            try:
                cp = packet_out(t, a_, pr, sa, sp, da, dp, fl)
            except ValueError as e:
                drop(k, f"not modelled: {e}")
                continue
            if cp is None:
                if conn_mode[c] == _NAT and profile.name != "dpvs":
                    # no entry: the kernel forwards the reply unchanged (SEMANTICS §1.1)
                    try:
                        out = nat_reply(bytes(inview[offs[k]:ends[k]]), _packed(sa, a_), None, src_mac=cside_b,
                                        dst_mac=bmac(esrc_of[c]) or gateway_b,
                                        ttl_dec=profile.ttl_decrement(Mode.NAT, "reply"))
                    except XmitError as e:
                        drop(k, f"transmit: {e}")
                        continue
                    if out is None:
                        drop(k, "reply without an entry, TTL expired")
                        continue
                    unmatched += 1
                    frames[k] = out
                    out_leg[k] = D_C
                else:
                    drop(k, "reply without a connection entry")
                continue
            s = get_state(cp)
            if s is None:
                drop(k, "entry created outside the replay")
                continue
            d = s.d
            if d.mode == _NAT:
                if vk_ & _VK_L4 and ttl_ > d.ttl_rep:
                    pid = s.vr if s.vr >= 0 else _vr(s, d, vparams)
                    if pid >= 0:
                        vop[k], vpar[k], out_leg[k] = _V_REWRITE, pid, D_C
                        continue
            elif d.mode == _FNAT:
                if pr == 6 and fl & 0x12 == 0x12:
                    s.isn1 = (seq[k] + 1) & 0xFFFFFFFF
                if vk_ & (_VK_FN_REP | _VK_FN_SYNACK) and ttl_ > d.ttl_rep:
                    pid = s.vr if s.vr >= 0 else _vr(s, d, vparams)
                    if pid >= 0:
                        vop[k], vpar[k], out_leg[k] = (
                            _V_REWRITE | _V_MSS if vk_ & _VK_FN_SYNACK and d.mss_reduce
                            else _V_REWRITE), pid, D_C
                        continue
            f = bytes(inview[offs[k]:ends[k]])
            try:
                if d.mode == _NAT:
                    out = nat_reply(f, s.vip, s.vport, src_mac=s.cmac_dst, dst_mac=s.cmac_src,
                                    ttl_dec=d.ttl_rep)
                elif d.mode == _FNAT:
                    out = fn_rep(f, s.vip, s.vport, s.cip, s.cport, seq_delta=s.d1,
                                 mss_reduce=d.mss_reduce, ttl_dec=d.ttl_rep,
                                 src_mac=s.cmac_dst, dst_mac=s.cmac_src)
                else:
                    drop(k, "a reply to a DR/TUN connection reached the director")
                    continue
            except XmitError as e:
                drop(k, f"transmit: {e}")
                continue
            if out is None:
                drop(k, "reply dropped by the transmitter (TTL expired)")
                continue
            frames[k] = out
            out_leg[k] = D_R if (type(out) is not bytes and isinstance(out, IcmpError)) else D_C
    t1 = clock()
    timings["model"] = t1 - t0
    # ---------------------------------------------------------------- batch transmit
    del inview
    v_start, v_end = _batch_transmit(inbuf, f_off, vop, vpar, vparams)
    drops = Counter({r: n for r, n in drops.items() if n})
    tunnel_reason = ("ICMP error about the director's tunnel packet (its relay to the client, a new "
                     "ICMP from the director, is not modelled)")
    if len(tunnel_errors):
        drops[tunnel_reason] = len(tunnel_errors)

    leg_arr = np.array(out_leg, dtype=np.uint8)
    ok = np.flatnonzero(leg_arr)
    src_rows = rows[ok]
    in_place = v_end[ok] > 0
    out_frames = ExpectedFrames(inbuf, v_start[ok], v_end[ok], {
        i: frames[k] for i, k in zip(np.flatnonzero(~in_place).tolist(), ok[~in_place].tolist())})
    del frames, inbuf
    timings["transmit"] = clock() - t1
    inputs_by_leg: Counter = Counter()
    if n_in:
        icmp_in = kind >= _KIND_ICMP_C
        for i, n in enumerate(np.bincount(leg[rows][~icmp_in].astype(np.int64),
                                          minlength=len(LEGS)).tolist()):
            if n:
                inputs_by_leg[LEGS[i]] = n
        if icmp_in.any():
            inputs_by_leg["icmp-error"] = int(icmp_in.sum())
    return ReplayResult(
        traces=paths, topology=topo, vantages=list(table.vantages), frames=out_frames,
        leg=leg_arr[ok],
        ts_ns=ts_col[src_rows].astype(np.int64),
        src_input=table["input"][src_rows].astype(np.int32),
        src_frame=table["frame"][src_rows].astype(np.int64),
        src_vantage=iface[src_rows].astype(np.int32),
        conn=np.array(out_conn, dtype=np.int32)[ok],
        connections=texts,
        inputs=n_in, inputs_by_leg=dict(inputs_by_leg), frames_read=n_rows,
        drops=drops,
        drop_examples={**{r: (int(table["input"][rows[k]]), int(table["frame"][rows[k]]))
                          for r, k in drop_first.items()},
                       **({tunnel_reason: (int(table["input"][tunnel_errors[0]]),
                                           int(table["frame"][tunnel_errors[0]]))}
                          if len(tunnel_errors) else {})},
        disagreements=_fix_inputs(disagreements, table),
        followed=followed, notes=_dedup(result_notes + _order_hint(disagreements, new_conns)),
        timings=timings, new_connections=sum(new_conns.values()), unmatched_replies=unmatched)


# =========================================================================== batch transmit

#: batch operations (xmit_batch) an input frame's expected frame comes from
_V_REWRITE, _V_DR, _V_TUN, _V_TOA = 1, 2, 3, 4
#: and the option work before a rewrite (bits above those): a SYN's timestamp -> NOPs, a
#: SYN-ACK's MSS lowered (xmit_batch.options4)
_V_NOTS, _V_MSS, _V_OP = 8, 16, 7
#: bits of _batch_shapes: xmit_batch.shape's, the FullNAT segments without option work, and
#: TCP headers with room for an 8-byte TOA
_VK_IP4, _VK_L4, _VK_WHOLE = XB.IP4, XB.L4, XB.WHOLE
_VK_FN_REQ, _VK_FN_REP, _VK_TOA_ROOM = 8, 16, 32
#: FullNAT SYNs (no ACK) without client TOA, SYN-ACKs without SACK blocks
_VK_FN_SYN, _VK_FN_SYNACK = 64, 128
#: option kinds the decoder names (tcp_opts): a TOA of another kind shows as "other"
_NAMED_KINDS = (0, 1, 2, 3, 4, 5, 8, 30, 34)
#: bytes left before each gathered frame: the most a batch-made frame grows by (GUE: 32)
_ROOM = 32
_OPT_TOA = (1 << OPT_BIT["toa"]) | (1 << OPT_BIT["other"])
_OPT_SACK = 1 << OPT_BIT["sack"]
#: columns of a batch parameter row
(_P_TTL, _P_SRC, _P_DST, _P_SPORT, _P_DPORT, _P_SEQ, _P_ACK, _P_SMAC, _P_DMAC, _P_TUN,
 _P_GSPORT, _P_GDPORT, _P_TOA, _P_MSS) = range(14)


def _batch_shapes(table: PacketTable, rows: np.ndarray, buf: bytearray, off: np.ndarray,
                  n: np.ndarray, batch: bool = True, l4: bool = True) -> tuple[list, list]:
    """Per input: the batch paths it may take (_VK_* bits) and its IPv4 TTL (0 if none).
    ``l4=False`` (no NAT or FullNAT connection: DR and TUN need only the IP shape) leaves the
    L4 bits unset and the TCP/UDP checksums unchecked."""
    if len(rows) == 0:
        return [], []
    if not batch:
        return [0] * len(rows), [0] * len(rows)
    b = np.frombuffer(buf, dtype=np.uint8)
    sh = XB.shape(b, off, n, None if l4 else np.zeros(len(off), dtype=bool)).astype(np.int64)
    l4 = (sh & _VK_L4) != 0
    plain = l4 & ((table["tcp_flags"][rows] & _SYN) == 0)
    opts = table["tcp_opts"][rows]
    sh |= np.where(plain & ((opts & _OPT_TOA) == 0), _VK_FN_REQ, 0)
    sh |= np.where(plain & ((opts & _OPT_SACK) == 0), _VK_FN_REP, 0)
    fl = table["tcp_flags"][rows] & 0x12
    tcpf = l4 & (table["ip_proto"][rows] == 6)
    sh |= np.where(tcpf & (fl == _SYN) & ((opts & _OPT_TOA) == 0), _VK_FN_SYN, 0)
    sh |= np.where(tcpf & (fl == 0x12) & ((opts & _OPT_SACK) == 0), _VK_FN_SYNACK, 0)
    tcp = l4 & (b[np.where(l4, off + 23, 0)] == 6)
    sh |= np.where(tcp & ((b[np.where(tcp, off + 46, 0)] >> 4) <= 13), _VK_TOA_ROOM, 0)
    ttl = np.where(sh & _VK_IP4, b[np.minimum(off + 22, max(len(b) - 1, 0))], 0)
    return sh.tolist(), ttl.tolist()


def _mac_int(m) -> int:
    return int.from_bytes(m, "big") if m is not None else -1


def _vq(s: _Conn, d: _Dest, cp, vparams: list) -> int:
    """The batch parameter row of a connection's packets toward the real server (-1: the
    per-packet functions must make them: another address family). NAT, DR and TUN rows
    depend on the server, not the connection (but for the port and the GUE source port):
    the connections of a server share them."""
    m = d.mode
    if m != _FNAT:
        key = (d.ver, cp.dport if m == _NAT else 0,
               (s.gue_sport if s.gue_sport is not None else s.vg) if m == _TUN else None)
        pid = d.rows.get(key)
        if pid is None:
            pid = d.rows[key] = _vq_row(s, d, cp, vparams)
        s.vq, s.vv = pid, d.ver
        return pid
    pid = _vq_row(s, d, cp, vparams)
    s.vq, s.vv = pid, d.ver
    return pid


def _vq_row(s: _Conn, d: _Dest, cp, vparams: list) -> int:
    """A new batch parameter row for :func:`_vq` (its index, or -1)."""
    smac, dmac = _mac_int(d.src_mac), _mac_int(d.rs_mac)
    m, pid = d.mode, -1
    if m == _NAT:
        if len(d.rs_ip) == 4:
            pid = len(vparams)
            vparams.append((d.ttl_req, -1, int.from_bytes(d.rs_ip, "big"), -1,
                            cp.dport or -1, 0, 0, smac, dmac, 0, 0, 0, -1, 0))
    elif m == _DR:
        pid = len(vparams)
        vparams.append((d.ttl_req, -1, -1, -1, -1, 0, 0, smac, dmac, 0, 0, 0, -1, 0))
    elif m == _TUN:
        code = XB.TUN_CODES.get(d.tun_kind, 0)
        if (code and len(d.rs_ip) == 4 and not d.tun_csum and d.outer_src is not None
                and len(d.outer_src) == 4):
            gs = s.gue_sport if s.gue_sport is not None else s.vg
            if code != 3 or gs is not None:
                pid = len(vparams)
                vparams.append((d.ttl_req, int.from_bytes(d.outer_src, "big"),
                                int.from_bytes(d.rs_ip, "big"), -1, -1, 0, 0, smac, dmac, code,
                                gs or 0, d.tun_port, -1, 0))
    elif (len(d.rs_ip) == 4 and s.lip is not None and len(s.lip) == 4
          and not (d.toa is not None and d.strip_toa and d.toa.kind in _NAMED_KINDS)):
        # (a client option of a TOA kind the decoder names would pass _batch_shapes unseen)
        pid = len(vparams)
        vparams.append((d.ttl_req, int.from_bytes(s.lip, "big"), int.from_bytes(d.rs_ip, "big"),
                        s.lport, cp.dport, s.d1, 0, smac, dmac, 0, 0, 0,
                        d.toa.kind if d.toa is not None else -1, 0))
    return pid


def _vr(s: _Conn, d: _Dest, vparams: list) -> int:
    """The batch parameter row of a connection's replies toward the client (-1: none)."""
    pid = -1
    if len(s.vip) == 4:
        smac, dmac = _mac_int(s.cmac_dst), _mac_int(s.cmac_src)
        pid = len(vparams)
        if d.mode == _NAT:
            vparams.append((d.ttl_rep, int.from_bytes(s.vip, "big"), -1, s.vport or -1, -1,
                            0, 0, smac, dmac, 0, 0, 0, -1, 0))
        else:
            vparams.append((d.ttl_rep, int.from_bytes(s.vip, "big"), int.from_bytes(s.cip, "big"),
                            s.vport, s.cport, 0, -s.d1, smac, dmac, 0, 0, 0, -1,
                            d.mss_reduce))
    s.vr = pid
    return pid


def _batch_transmit(buf, off: np.ndarray, vop: list, vpar: list,
                    vparams: list) -> tuple[np.ndarray, np.ndarray]:
    """Make the expected frames of the inputs the loop left to xmit_batch (``vop``), all in
    place in ``buf``: frame k is then ``buf[start[k]:end[k]]`` (a frame that grew starts
    before ``off[k]``: a TOA, a tunnel's outer headers). Returns (start, end); end is 0 for the
    frames not made here."""
    ops = np.array(vop, dtype=np.int8)
    todo = np.flatnonzero(ops)
    start = off.copy()
    if len(todo) == 0:
        return start, np.zeros(len(off), dtype=np.int64)
    b = np.frombuffer(buf, dtype=np.uint8)
    par = np.array(vpar, dtype=np.int64)
    cols = np.array(vparams, dtype=np.int64).reshape(-1, 14).T.copy()   # one row per parameter
    o = off[todo]
    ends = np.zeros(len(off), dtype=np.int64)
    ends[todo] = o + 14 + ((b[o + 16].astype(np.int64) << 8) | b[o + 17])
    base = ops & _V_OP
    work = np.flatnonzero(ops & (_V_NOTS | _V_MSS))
    if len(work):
        XB.options4(b, off[work], remove_ts=(ops[work] & _V_NOTS) != 0,
                    mss_sub=np.where(ops[work] & _V_MSS, cols[_P_MSS][par[work]], 0))
    ops = base
    sel = np.flatnonzero((ops == _V_REWRITE) | (ops == _V_TOA))
    if len(sel):
        ps = par[sel]
        toa = np.where(ops[sel] == _V_TOA, cols[_P_TOA][ps], -1)
        start[sel] = XB.rewrite4(
            b, off[sel], ttl_dec=cols[_P_TTL][ps], src=cols[_P_SRC][ps], dst=cols[_P_DST][ps],
            sport=cols[_P_SPORT][ps], dport=cols[_P_DPORT][ps], seq_add=cols[_P_SEQ][ps],
            ack_add=cols[_P_ACK][ps], src_mac=cols[_P_SMAC][ps], dst_mac=cols[_P_DMAC][ps],
            end=ends[sel], toa=toa if (toa >= 0).any() else None)
    sel = np.flatnonzero(ops == _V_DR)
    if len(sel):
        ps = par[sel]
        XB.dr4(b, off[sel], ttl_dec=cols[_P_TTL][ps], src_mac=cols[_P_SMAC][ps],
               dst_mac=cols[_P_DMAC][ps])
    sel = np.flatnonzero(ops == _V_TUN)
    for code in (1, 2, 3):
        g = sel[cols[_P_TUN][par[sel]] == code] if len(sel) else sel
        if len(g):
            ps = par[g]
            h = XB.tun4(b, off[g], ends[g], kind=code, ttl_dec=cols[_P_TTL][ps],
                        outer_src=cols[_P_SRC][ps], outer_dst=cols[_P_DST][ps],
                        gue_sport=cols[_P_GSPORT][ps], gue_dport=cols[_P_GDPORT][ps],
                        src_mac=cols[_P_SMAC][ps], dst_mac=cols[_P_DMAC][ps])
            # the link and outer headers end where the inner packet starts
            start[g] = off[g] + 14 - h.shape[1]
            XB.place(b, start[g], h)
    del b
    return start, ends


_VERDICT_REASON = {
    Verdict.NO_SERVICE: "no virtual service for the destination",
    Verdict.NOT_SCHEDULED: "no connection entry and not a connection start (the director's own "
                           "stack answers it: not modelled)",
    Verdict.NO_DEST: "no real server available (ICMP port unreachable: not modelled)",
    Verdict.DROP: "dropped by the connection table (port reuse with conntrack, or the entry's "
                  "server was removed)",
}


_UNSET = object()


def _forced(services: ServiceTable, target: list, obs: int, af: int, proto: int, vaddr: int,
            vport: int):
    """The destination index (in the service the packet reaches) of the real server the trace
    shows, None when unknown or in another service."""
    if obs < 0:
        return None
    svc_state, j = target[obs]
    if j is None or services.lookup(af, proto, vaddr, vport) is not svc_state:
        return None
    return j


def _new_state(cp, c: int, d: _Dest, gue: int, esrc: int, edst: int, gateway_b, cside_b,
               followed: Counter) -> _Conn:
    s = _Conn()
    s.d = d
    s.c = c
    s.lip = None
    s.lport = 0
    s.isn1 = None
    s.first_ack = None
    s.cmac_src = esrc.to_bytes(6, "big") if esrc else gateway_b
    s.cmac_dst = edst.to_bytes(6, "big") if edst else cside_b
    s.vip = _packed(cp.vaddr, cp.af)
    s.vport = cp.vport
    s.cip = _packed(cp.caddr, cp.af)
    s.cport = cp.cport
    s.gue_sport = gue if gue >= 0 else None
    if s.gue_sport is not None:
        followed["GUE source ports"] += 1
    s.d1 = 0
    s.vq, s.vv, s.vr, s.vg = -1, -1, -1, None      # batch parameter rows (see _vq, _vr)
    return s


def _order_hint(dis: list[Disagreement], new_conns: Counter) -> list[str]:
    """A note when a rotating scheduler disagrees nearly always: the servers' order."""
    rot = sum(n for name, n in new_conns.items() if name in ("rr", "wrr"))
    plain = sum(1 for d in dis if not d.template and not d.why)
    if rot >= 4 and plain * 2 > rot:
        return [f"{plain} of {rot} round-robin choices differ: the real servers may have been added in "
                "another order than the topology lists them (the kernel's list runs newest first; a TOML "
                "topology lists them in the order they were added, an ipvsadm listing in the kernel's)"]
    return []


def _why(svc_state, j: int) -> str:
    """What makes the observed server an unlikely choice, as the model sees it now."""
    d = svc_state.dests[j]
    if not d.available:
        return "removed"
    if d.weight == 0:
        return "quiesced (weight 0)"
    if d.overloaded:
        return "overloaded (upper threshold)"
    return ""


def _sync_scheduler(svc_state, j: int) -> None:
    """After following the trace's choice, put a round-robin scheduler where the director's
    must be (its last choice is the observed server), so that the next prediction starts from
    the director's real position and one disagreement does not cascade."""
    sched = svc_state.scheduler
    d = svc_state.dests[j]
    if d not in svc_state.dlist:
        return
    pos = svc_state.dlist.index(d)
    if sched.name == "rr":
        sched.pos = pos
    elif sched.name == "wrr":
        sched.cl = pos


def _icmp_inputs(table: PacketTable, flows) -> tuple[np.ndarray, np.ndarray]:
    """ICMP errors that reach the director about a connection's packet (SEMANTICS §6), once
    each (the director's capture first): (rows, kind, errors about the director's own tunnel
    packets — their relay to the client is not modelled). Client side: the error goes to a VIP
    and quotes a packet from it (a reply toward the client). Server side: it goes back to the
    quoted packet's source and quotes a packet to a real server (what the director sent). The
    director's own ICMP errors (from a VIP) are outputs, not inputs."""
    empty = np.zeros(0, dtype=np.int64)
    rows = table.rows_of("icmp")
    if len(rows) == 0:
        return empty, empty, empty
    rows = rows[table["status"][rows] < 10]
    ver = table["ip_ver"][rows]
    typ = table.take("icmp_type", rows)
    err = ((ver == 4) & np.isin(typ, _ICMP4_IPVS)) | ((ver == 6) & np.isin(typ, _ICMP6_IPVS))
    err &= table.take("icmp_in_ver", rows) != 0
    iproto = table.take("icmp_in_proto", rows)
    # errors about the director's tunnel packets (IPIP, GRE) sent back to it
    own_ips = [int(k) for k in (table.addr_key(str(a)) for a in flows.topology.director.ips) if k]
    tunnel = rows[err & np.isin(iproto, (4, 41, 47)) & np.isin(table["ip_dst"][rows], own_ips)]
    if len(tunnel):
        _, first = np.unique(table["ip_id"][tunnel].astype(np.int64) << 32
                             | table.take("icmp_in_seq", tunnel).astype(np.int64), return_index=True)
        tunnel = tunnel[np.sort(first)]
    rows = rows[err & np.isin(iproto, (6, 17))]
    if len(rows) == 0:
        return empty, empty, tunnel
    ep = flows.endpoints
    vips = ep.svc_vip[ep.svc_vip != 0]
    rips = ep.rs_ip[ep.rs_ip != 0]
    src, dst = table["ip_src"][rows], table["ip_dst"][rows]
    isrc, idst = table.take("icmp_in_src", rows), table.take("icmp_in_dst", rows)
    own = np.isin(src, vips)
    client_side = np.isin(dst, vips) & (dst == isrc) & ~own
    server_side = np.isin(idst, rips) & (dst == isrc) & ~own & ~client_side
    keep = client_side | server_side
    rows, client_side = rows[keep], client_side[keep]
    if len(rows) == 0:
        return empty, empty, tunnel
    # one copy per error: same addresses, type, IP ID, quoted sequence number and bytes
    key = [table["ip_src"][rows], table["ip_dst"][rows], table["ip_id"][rows],
           table.take("icmp_type", rows), table.take("icmp_code", rows),
           table.take("icmp_in_seq", rows), table["payload_digest"][rows]]
    ids = pd_factorize(key)
    prio = np.where(flows.role[rows] == _ROLE_DIRECTOR, 0, 1)
    order = np.lexsort((np.arange(len(rows)), prio, ids))
    first = np.ones(len(order), dtype=bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    pick = order[first]
    kind = np.where(client_side[pick], _KIND_ICMP_C, _KIND_ICMP_R).astype(np.int64)
    return rows[pick].astype(np.int64), kind, tunnel


def pd_factorize(cols: list[np.ndarray]) -> np.ndarray:
    """Group ids of rows by their tuple of values."""
    from ..flows.keys import group_ids
    return group_ids(cols)[0]


def _dedup(notes: list[str]) -> list[str]:
    seen, out = set(), []
    for n in notes:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def _fix_inputs(dis: list[Disagreement], table: PacketTable) -> list[Disagreement]:
    """Disagreements carry the table row in ``frame`` until here: make it (input, frame)."""
    if not dis:
        return dis
    rows = np.array([d.frame for d in dis], dtype=np.int64)
    inp = table["input"][rows].tolist()
    fr = table["frame"][rows].tolist()
    for d, i, f in zip(dis, inp, fr):
        d.input, d.frame = int(i), int(f)
    return dis


def _conn_texts(table, cip_k, cport, vip_k, vport, proto) -> list[str]:
    """:func:`connection_text` per connection, each address formatted once."""
    if len(cip_k) == 0:
        return []
    keys = np.unique(np.concatenate([cip_k, vip_k]))
    text = {}
    for k in keys.tolist():
        if k:
            a = table.addr_str(int(k))
            text[k] = f"[{a}]" if ":" in a else a
    pname = {6: "tcp", 17: "udp"}
    return [f"{text[a]}:{p} > {text[b]}:{q}/{pname.get(r, r)}" if a and b else f"? > ?/{r}"
            for a, p, b, q, r in zip(cip_k.tolist(), list(cport), vip_k.tolist(), list(vport),
                                     [int(x) for x in proto])]


def _seq_deltas(table: PacketTable, flows, nconn: int) -> np.ndarray:
    """FullNAT D1 per connection (-1 unknown): from the two SYNs (flows), else from any client
    packet and its director-rs copy (same IP ID and payload)."""
    d1 = flows.connections["seq_delta"].to_numpy().astype(np.int64) if nconn else np.zeros(0, np.int64)
    unknown = np.flatnonzero(d1 < 0)
    if len(unknown) == 0:
        return d1
    leg, conn = flows.leg, flows.conn
    want = np.zeros(nconn, dtype=bool)
    want[unknown] = True
    fn = (flows.mode == _FNAT)
    on = (conn >= 0)
    sel = np.flatnonzero(on)
    sel = sel[want[conn[sel]]]
    a = sel[leg[sel] == C_D]
    b = sel[(leg[sel] == D_R) & fn[sel]]
    if len(a) == 0 or len(b) == 0:
        return d1
    ip_id, dig, seq = table["ip_id"], table["payload_digest"], table["tcp_seq"].astype(np.int64)
    key_a = (conn[a].astype(np.int64) << 32) | ip_id[a].astype(np.int64)
    key_b = (conn[b].astype(np.int64) << 32) | ip_id[b].astype(np.int64)
    sa = np.argsort(key_a, kind="stable")
    pos = np.searchsorted(key_a[sa], key_b)
    pos = np.minimum(pos, len(sa) - 1)
    hit = (key_a[sa][pos] == key_b) & (dig[a[sa][pos]] == dig[b])
    if hit.any():
        cb = conn[b[hit]]
        delta = (seq[b[hit]] - seq[a[sa][pos[hit]]]) % (1 << 32)
        # the first such pair per connection
        _, first = np.unique(cb, return_index=True)
        d1[cb[first]] = delta[first]
    return d1


def _ttl_offsets(table: PacketTable, flows, cand: np.ndarray, chosen: np.ndarray,
                 prio: np.ndarray) -> np.ndarray | None:
    """Per row: TTL to add to a chosen copy that was not captured where the director would
    see the packet (0 elsewhere), learned per (vantage, leg) from observations seen at both;
    None when nothing needs fixing."""
    role = flows.role
    odd = chosen[(role[chosen] != _ROLE_DIRECTOR) & (flows.leg[chosen] != R_C)]
    if len(odd) == 0:
        return None
    obs = flows.obs
    # (the columns are read at the rows needed only: whole-column copies cost page faults)
    ttl_col, iface, legs = table["ip_ttl"], table["iface"], flows.leg
    ref_rows = cand[role[cand] == _ROLE_DIRECTOR]
    if len(ref_rows) == 0:
        return None
    ref_ttl = np.full(int(obs.max()) + 1, -1, dtype=np.int64)
    ref_ttl[obs[ref_rows]] = ttl_col[ref_rows]
    others = cand[(role[cand] != _ROLE_DIRECTOR)]
    others = others[ref_ttl[obs[others]] >= 0]
    fix = np.zeros(len(table), dtype=np.int64)
    if len(others) == 0:
        return None
    key = iface[others].astype(np.int64) * 16 + legs[others]
    diff = ref_ttl[obs[others]] - ttl_col[others]
    odd_key = iface[odd].astype(np.int64) * 16 + legs[odd]
    for kv in np.unique(key).tolist():
        dv = diff[key == kv]
        off = int(np.median(dv))
        if off:
            tgt = odd[odd_key == kv]
            fix[tgt] = off
    return fix if fix.any() else None


def _set_ttl_delta(frame: bytes, delta: int) -> bytes:
    """The frame with its (first) IP header's TTL moved by ``delta`` (IPv4 checksum redone)."""
    try:
        l3, et = X._l2(frame)
    except X.XmitError:
        return frame
    b = bytearray(frame)
    if et == X.ETH_IP4 and len(b) >= l3 + 20:
        b[l3 + 8] = max(0, min(255, b[l3 + 8] + delta))
        hl = (b[l3] & 15) * 4
        if len(b) >= l3 + hl:
            X._ip4_check(b, l3, hl)
    elif et == X.ETH_IP6 and len(b) >= l3 + 40:
        b[l3 + 7] = max(0, min(255, b[l3 + 7] + delta))
    return bytes(b)


def _model_d1(s: _Conn, d: _Dest, observed: int, followed: Counter) -> int:
    if not d.seq_delta:
        return 0
    if observed >= 0:
        followed["FullNAT sequence deltas"] += 1
        return observed
    # a deterministic stand-in for the director's hash-based ISN
    return zlib.crc32(s.cip + s.cport.to_bytes(2, "big") + s.vip + s.vport.to_bytes(2, "big")) or 1


def _bind_fullnat(ct: ConnTable, cp, s: _Conn, d: _Dest, ports: LocalPorts, obs_lip: int,
                  obs_lport: int, lips_cfg: set, learn: bool, follow: bool, followed: Counter,
                  notes: list) -> None:
    """Choose the local address and port of a new FullNAT entry: the trace's where visible (a
    LIP only when the topology lists it, or has none to list), else the model's allocation;
    replies are looked up by what the director really used."""
    size = 4 if cp.daf == 4 else 16
    seen = (obs_lip.to_bytes(size, "big") if follow and obs_lip and obs_lport >= 0
            and not obs_lip >> 63 and obs_lip < 1 << (8 * size) else None)
    if seen is not None and (learn or seen in lips_cfg):
        lip = seen
        followed["FullNAT local addresses"] += 1
    elif seen is None:
        got = ports.allocate(d.svc_key, d.lips, d.rs_ip, cp.dport, cp.cport, cp.proto)
        if got is None:
            raise XmitFull("no local address of the real server's family" if not d.lips else
                           "no local port left on any local address of the service")
        s.lip, s.lport = got
        ct.bind_local(cp, int.from_bytes(got[0], "big"), got[1])
        return
    else:
        lip = ports.pick_lip(d.svc_key, d.lips or [seen])
        if d.lips:
            notes.append(f"the trace uses {ipaddress.ip_address(seen)} as a FullNAT local address, "
                         "which the topology does not list: the expected frames use the topology's")
    # the trace shows the port (and the address the replies go to)
    ports.hold(lip, obs_lport, d.rs_ip, cp.dport, cp.proto)
    followed["FullNAT local ports"] += 1
    s.lip, s.lport = lip, obs_lport
    ct.bind_local(cp, int.from_bytes(seen, "big"), obs_lport)
