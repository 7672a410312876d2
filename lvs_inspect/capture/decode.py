"""Vectorised decoding of a batch of frames into PacketTable columns.

No Python object is made per packet: each layer is read through a fixed-width window per
frame (one strided-row gather), fields are strided views of that window, and every decision
is a numpy mask over all rows.  Loops exist only over things bounded by the protocol (VLAN
tags, IPv6 extension headers, TCP options), and shrink to the rows still concerned.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass
from dataclasses import fields as dc_fields

import numpy as np

from .schema import COLUMN, NONE16, OPT_BIT, Csum, Status, Tun, empty_column, group_columns
from .table import AddressBook

if TYPE_CHECKING:
    from .records import RecordBatch, Vantage

W = 64            # bytes per window row: covers an IPv4 header with options, a TCP header with options
PAD = 2 * W + 64  # zero bytes appended to a batch buffer so windows never run off its end

VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
ICMP4_ERRORS = (3, 4, 5, 11, 12)
ICMP6_ERRORS = (1, 2, 3, 4)
IPV6_EXT = (0, 43, 44, 51, 60, 135)

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
RAW_LINKTYPES = (LINKTYPE_RAW, 12, 14)  # 12/14: raw IP on some BSDs
SUPPORTED_LINKTYPES = (LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL,
                       LINKTYPE_LINUX_SLL2, LINKTYPE_IPV4, LINKTYPE_IPV6) + RAW_LINKTYPES


@dataclass(frozen=True)
class DecodeOptions:
    toa_kinds: tuple[int, ...] = (254, 253, 200)
    gue_ports: tuple[int, ...] = (6080,)
    checksums: bool = True
    #: False: the TCP option columns (tcp_opts .. toa_addr) keep their empty values, no frame
    #: gets the BAD_TCP_OPTIONS status (still "decoded") and the table holds no option bytes
    #: (for readers that need none: replay of a trace without FullNAT, a fifth faster)
    tcp_options: bool = True
    #: False: the option columns without the raw option bytes (PacketTable.opt_bytes is None)
    option_bytes: bool = True


# ----------------------------------------------------------------------------------------
# low-level helpers


class _Frames:
    """The batch buffer seen as one window row per byte position."""

    def __init__(self, batch: RecordBatch):
        buf = np.asarray(batch.buf, dtype=np.uint8)
        self.start = batch.data_off.astype(np.int64)
        self.cap = batch.caplen.astype(np.int64)
        self.wire = batch.wirelen.astype(np.int64)
        end = int((self.start + self.cap).max()) if len(self.start) else 0
        # windows may run past a frame (masked later) but never past the buffer
        self.buf = buf if len(buf) >= end + PAD else np.concatenate([buf, np.zeros(PAD, dtype=np.uint8)])
        self.limit = end
        self._views: dict[int, np.ndarray] = {}

    def window(self, pos: np.ndarray, sel: np.ndarray | None = None, width: int = W) -> np.ndarray:
        """n x width bytes starting at frame offset ``pos`` (bytes past caplen are junk)."""
        rows = self._views.get(width)
        if rows is None:
            # one element of ``width`` bytes per byte position: a gather copies whole elements
            # (about twice as fast as gathering rows of a 2-D uint8 view)
            rows = self._views[width] = np.ndarray((len(self.buf) - width + 1,), dtype=f"V{width}",
                                                   buffer=self.buf, strides=(1,))
        start = self.start if sel is None else self.start[sel]
        return rows[np.clip(start + pos, 0, self.limit)].view(np.uint8).reshape(-1, width)

    def byte(self, pos: np.ndarray, sel: np.ndarray) -> np.ndarray:
        return self.buf[np.clip(self.start[sel] + pos, 0, self.limit)]


def _f(w: np.ndarray, off: int, fmt: str) -> np.ndarray:
    """Field ``fmt`` (e.g. '>u2') at byte ``off`` of every window row, as a strided view."""
    dt = np.dtype({"names": ["f"], "formats": [fmt], "offsets": [off], "itemsize": w.shape[1]})
    return w.view(dt)["f"][:, 0]


def _u16(w, off):
    return _f(w, off, ">u2").astype(np.uint16)


def _u32(w, off):
    return _f(w, off, ">u4").astype(np.uint32)


def _u64(w, off):
    return _f(w, off, ">u8").astype(np.uint64)


def _mac(w, off):
    return (_u16(w, off).astype(np.uint64) << np.uint64(32)) | _u32(w, off + 2).astype(np.uint64)


def _any_of(a: np.ndarray, keys) -> np.ndarray:
    """``np.isin(a, keys)`` for a few small integer keys, as comparisons (no sort)."""
    out = np.zeros(a.shape, dtype=bool)
    for k in keys:
        out |= a == k
    return out


def _gather16(wins: np.ndarray, rows: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (wins[rows, pos].astype(np.uint32) << 8) | wins[rows, pos + 1]


def fold16(s: np.ndarray) -> np.ndarray:
    s = s.astype(np.uint64)
    for _ in range(4):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return s


def _set_status(status: np.ndarray, mask: np.ndarray, code: int) -> None:
    """Give ``code`` to rows in ``mask`` that are still fine (the first problem wins)."""
    np.copyto(status, np.uint8(code), where=mask & (status == 0))


def _cut(f: _Frames, need_end: np.ndarray, rows: np.ndarray, status: np.ndarray, code: int) -> np.ndarray:
    """Rows whose header would end past caplen: snaplen-cut or malformed. Returns rows still ok."""
    short = rows & (f.cap < need_end)
    _set_status(status, short & (f.cap < f.wire), Status.UNDECODABLE_SNAPLEN)
    _set_status(status, short, code)
    return rows & ~short


# ----------------------------------------------------------------------------------------
# the IP layer, used for the outer header, the inner header of a tunnel


@dataclass
class _IP:
    ver: np.ndarray
    hlen: np.ndarray      # header length incl. IPv6 extension headers
    tlen: np.ndarray      # total length
    proto: np.ndarray
    ttl: np.ndarray
    tos: np.ndarray
    ident: np.ndarray
    frag: np.ndarray
    csum_field: np.ndarray
    src4: np.ndarray
    dst4: np.ndarray
    src6: tuple           # (hi, lo)
    dst6: tuple
    win: np.ndarray       # the window at the header start
    ok: np.ndarray


def _ip_layer(f: _Frames, pos: np.ndarray, rows: np.ndarray, want: np.ndarray,
              status: np.ndarray, w: np.ndarray | None = None) -> _IP:
    """Decode an IPv4/IPv6 header at frame offset ``pos`` for ``rows``.

    ``want`` is the version the carrier announced (4 or 6, 0 = read the nibble).
    """
    if w is None:
        w = f.window(pos)
    rows = _cut(f, pos + 1, rows, status, Status.UNDECODABLE_IP_HEADER)   # the version nibble at least
    ver = (w[:, 0] >> 4).astype(np.uint8)
    want = np.where(want == 0, ver, want)
    bad_ver = rows & ((ver != want) | ((ver != 4) & (ver != 6)))
    _set_status(status, bad_ver, Status.UNDECODABLE_IP_VERSION)
    rows = rows & ~bad_ver
    v4 = rows & (ver == 4)
    v6 = rows & (ver == 6)

    ihl = ((w[:, 0] & 0x0F).astype(np.int64)) * 4
    v4_bad_ihl = v4 & (ihl < 20)
    _set_status(status, v4_bad_ihl, Status.UNDECODABLE_IP_HEADER)
    v4 &= ~v4_bad_ihl
    hdr_end = pos + np.where(v6, 40, np.maximum(ihl, 20))
    ok = _cut(f, hdr_end, v4 | v6, status, Status.UNDECODABLE_IP_HEADER)
    v4 &= ok
    v6 &= ok

    tot4 = _u16(w, 2).astype(np.int64)
    plen6 = _u16(w, 4).astype(np.int64)
    tlen = np.where(v6, 40 + plen6, tot4)
    room = f.wire - pos
    lying = (v4 & ((tot4 < ihl) | (tot4 > room))) | (v6 & ((tlen > room) & (plen6 != 0)))
    _set_status(status, lying, Status.UNDECODABLE_IP_LENGTH)
    v4 &= ~lying
    v6 &= ~lying
    tlen = np.where(v6 & (plen6 == 0), room, tlen)  # jumbogram: the rest of the frame

    proto = np.where(v6, w[:, 6], w[:, 9]).astype(np.uint8)
    hlen = np.where(v6, 40, ihl)
    frag = np.where(v4, _u16(w, 6), 0).astype(np.uint16)
    ident = np.where(v4, _u16(w, 4), 0).astype(np.uint32)

    # IPv6 extension headers: walk the chain, shrinking to the rows still in it.
    idx = np.flatnonzero(v6 & np.isin(proto, IPV6_EXT))
    p = (pos + 40)[idx] if len(idx) else np.zeros(0, dtype=np.int64)
    nh = proto[idx]
    for _ in range(16):
        if len(idx) == 0:
            break
        need = p + 8
        short = f.cap[idx] < need
        if short.any():
            bad = np.zeros(len(status), dtype=bool)
            bad[idx[short]] = True
            _set_status(status, bad & (f.cap < f.wire), Status.UNDECODABLE_SNAPLEN)
            _set_status(status, bad, Status.UNDECODABLE_EXT_HEADER)
            v6[idx[short]] = False
            idx, p, nh = idx[~short], p[~short], nh[~short]
            if len(idx) == 0:
                break
        b0 = f.byte(p, idx)
        b1 = f.byte(p + 1, idx).astype(np.int64)
        is_frag = nh == 44
        nonfirst = np.zeros(len(idx), dtype=bool)
        if is_frag.any():
            fi = idx[is_frag]
            fp = p[is_frag]
            fo = (f.byte(fp + 2, fi).astype(np.uint32) << 8) | f.byte(fp + 3, fi)
            frag[fi] = ((fo & 1) << 13) | (fo >> 3)
            nonfirst[is_frag] = (fo >> 3) != 0
            ident[fi] = ((f.byte(fp + 4, fi).astype(np.uint32) << 24) | (f.byte(fp + 5, fi).astype(np.uint32) << 16)
                         | (f.byte(fp + 6, fi).astype(np.uint32) << 8) | f.byte(fp + 7, fi))
        ln = np.where(is_frag, 8, np.where(nh == 51, (b1 + 2) * 4, (b1 + 1) * 8))
        p = p + ln
        nh = b0
        beyond = p > pos[idx] + tlen[idx]
        if beyond.any():
            bad = np.zeros(len(status), dtype=bool)
            bad[idx[beyond]] = True
            _set_status(status, bad, Status.UNDECODABLE_EXT_HEADER)
            v6[idx[beyond]] = False
        proto[idx] = nh
        hlen[idx] = p - pos[idx]
        keep = ~beyond & ~nonfirst & np.isin(nh, IPV6_EXT)
        idx, p, nh = idx[keep], p[keep], nh[keep]
    if len(idx):   # a chain longer than any real one: treat as malformed
        bad = np.zeros(len(status), dtype=bool)
        bad[idx] = True
        _set_status(status, bad, Status.UNDECODABLE_EXT_HEADER)
        v6[idx] = False

    return _IP(
        ver=np.where(v4, 4, np.where(v6, 6, 0)).astype(np.uint8),
        hlen=hlen.astype(np.int64),
        tlen=tlen.astype(np.int64),
        proto=proto,
        ttl=np.where(v6, w[:, 7], w[:, 8]).astype(np.uint8),
        tos=np.where(v6, (_u16(w, 0) >> 4) & 0xFF, w[:, 1]).astype(np.uint8),
        ident=ident,
        frag=frag,
        csum_field=_u16(w, 10),
        src4=_u32(w, 12),
        dst4=_u32(w, 16),
        src6=(_u64(w, 8), _u64(w, 16)),
        dst6=(_u64(w, 24), _u64(w, 32)),
        win=w,
        ok=v4 | v6,
    )


def _addr_keys(book: AddressBook, ver: np.ndarray, v4: np.ndarray, v6: tuple) -> np.ndarray:
    keys = np.where(ver == 4, v4.astype(np.uint64), np.uint64(0))
    six = np.flatnonzero(ver == 6)
    if len(six):
        keys[six] = book.intern_many(v6[0][six], v6[1][six])
    return keys


def _pick(mask, a, b):
    return np.where(mask, a, b)


# ----------------------------------------------------------------------------------------
# the batch decoder


def decode_batch(batch: RecordBatch, vantages: list[Vantage], book: AddressBook,
                 opts: DecodeOptions = DecodeOptions()):
    """Decode one RecordBatch. Returns (core columns, sparse groups, option bytes)."""
    n = len(batch.data_off)
    f = _Frames(batch)
    zero = np.zeros(n, dtype=np.int64)
    status = np.zeros(n, dtype=np.uint8)
    lt_of = np.array([v.linktype for v in vantages] or [1], dtype=np.int64)
    lt = lt_of[batch.iface.astype(np.int64)] if n else zero

    core = {name: empty_column(name, n) for name in (c.name for c in COLUMN.values() if c.group == "core")}
    core["frame"] = batch.frame.astype(np.uint32)
    core["iface"] = batch.iface.astype(np.uint16)
    core["ts_ns"] = batch.ts_ns.astype(np.int64)
    core["caplen"] = batch.caplen.astype(np.uint32)
    core["wirelen"] = batch.wirelen.astype(np.uint32)
    core["offset"] = batch.rec_off.astype(np.int64)

    # ---- link layer --------------------------------------------------------------------
    w0 = f.window(zero, width=24)
    l3 = np.zeros(n, dtype=np.int64)
    etype = np.zeros(n, dtype=np.int64)
    known = np.isin(lt, SUPPORTED_LINKTYPES)
    _set_status(status, ~known, Status.IGNORED_LINKTYPE)

    eth = lt == LINKTYPE_ETHERNET
    if eth.any():
        t0 = _u16(w0, 12).astype(np.int64)
        tag1 = eth & np.isin(t0, VLAN_TYPES)
        t1 = _u16(w0, 16).astype(np.int64)
        tag2 = tag1 & np.isin(t1, VLAN_TYPES)
        core["eth_dst"] = np.where(eth, _mac(w0, 0), 0).astype(np.uint64)
        core["eth_src"] = np.where(eth, _mac(w0, 6), 0).astype(np.uint64)
        core["vlan"] = np.where(tag1, _u16(w0, 14) & 0x0FFF, NONE16).astype(np.uint16)
        core["vlan2"] = np.where(tag2, _u16(w0, 18) & 0x0FFF, NONE16).astype(np.uint16)
        et = np.where(tag2, _u16(w0, 20), np.where(tag1, t1, t0))
        etype = np.where(eth, et, etype)
        l3 = np.where(eth, 14 + 4 * tag1 + 4 * tag2, l3)
    for code, hdr, proto_off, pk, addr_len_fmt, addr_off in (
        (LINKTYPE_LINUX_SLL, 16, 14, 1, (4, ">u2"), 6),
        (LINKTYPE_LINUX_SLL2, 20, 0, 10, (11, "u1"), 12),
    ):
        sll = lt == code
        if sll.any():
            alen = _f(w0, addr_len_fmt[0], addr_len_fmt[1]).astype(np.int64)
            etype = np.where(sll, _u16(w0, proto_off), etype)
            core["pkttype"] = np.where(sll, w0[:, pk], core["pkttype"]).astype(np.uint8)
            core["eth_src"] = np.where(sll & (alen == 6), _mac(w0, addr_off), core["eth_src"]).astype(np.uint64)
            l3 = np.where(sll, hdr, l3)
    null = (lt == LINKTYPE_NULL) | (lt == LINKTYPE_LOOP)
    if null.any():
        be = _u32(w0, 0).astype(np.int64)
        le = _f(w0, 0, "<u4").astype(np.int64)
        fam = np.where(lt == LINKTYPE_LOOP, be, np.where(be < 256, be, le))
        etype = np.where(null, np.where(fam == 2, 0x0800, np.where(np.isin(fam, (10, 24, 28, 30)), 0x86DD, 0)), etype)
        l3 = np.where(null, 4, l3)
    raw = np.isin(lt, RAW_LINKTYPES + (LINKTYPE_IPV4, LINKTYPE_IPV6))
    if raw.any():
        nib = w0[:, 0] >> 4
        et = np.where(lt == LINKTYPE_IPV4, 0x0800, np.where(lt == LINKTYPE_IPV6, 0x86DD,
                      np.where(nib == 6, 0x86DD, 0x0800)))
        etype = np.where(raw, et, etype)
    ok = _cut(f, l3, known, status, Status.UNDECODABLE_SHORT_L2)
    empty_frame = known & (f.cap == 0)
    _set_status(status, empty_frame & (f.cap < f.wire), Status.UNDECODABLE_SNAPLEN)
    _set_status(status, empty_frame, Status.UNDECODABLE_SHORT_L2)
    ok &= ~empty_frame
    cut_l2 = ~ok   # nothing of a link-layer header that is not all there
    if cut_l2.any():
        for name in ("eth_src", "eth_dst", "vlan", "vlan2", "pkttype"):
            core[name][cut_l2] = empty_column(name, 1)[0]
        etype = np.where(cut_l2, 0, etype)
    core["ethertype"] = etype.astype(np.uint16)

    is_arp = ok & (etype == 0x0806)
    is_ip = ok & ((etype == 0x0800) | (etype == 0x86DD))
    _set_status(status, ok & ~is_arp & ~is_ip, Status.IGNORED_ETHERTYPE)

    # ---- ARP -----------------------------------------------------------------------------
    sparse = {}
    w3 = f.window(l3)
    arp_rows = np.zeros(0, dtype=np.int64)
    if is_arp.any():
        good = _cut(f, l3 + 28, is_arp, status, Status.UNDECODABLE_ARP)
        eth_ip4 = good & (_u16(w3, 0) == 1) & (_u16(w3, 2) == 0x0800) & (w3[:, 4] == 6) & (w3[:, 5] == 4)
        _set_status(status, good & ~eth_ip4, Status.IGNORED_ARP_NON_IPV4)
        arp_rows = np.flatnonzero(eth_ip4)
        wa = w3[arp_rows]
        sparse["arp"] = {
            "rows": arp_rows,
            "arp_op": _u16(wa, 6),
            "arp_sha": _mac(wa, 8),
            "arp_spa": _u32(wa, 14),
            "arp_tha": _mac(wa, 18),
            "arp_tpa": _u32(wa, 24),
        }
    else:
        sparse["arp"] = empty_group("arp")

    # ---- IP (outer) ----------------------------------------------------------------------
    want = np.where(etype == 0x86DD, 6, 4)
    ip = _ip_layer(f, l3, is_ip, want, status, w3)
    ipok = ip.ok

    # ---- tunnels ---------------------------------------------------------------------------
    l4o = l3 + ip.hlen
    first_frag = (ip.frag & 0x1FFF) == 0
    tun = np.zeros(n, dtype=np.uint8)
    inner_pos = np.zeros(n, dtype=np.int64)
    inner_want = np.zeros(n, dtype=np.int64)
    out_sport = np.zeros(n, dtype=np.uint16)
    out_dport = np.zeros(n, dtype=np.uint16)
    tun_flags = np.zeros(n, dtype=np.uint16)

    ipip = ipok & first_frag & ((ip.proto == 4) | (ip.proto == 41))
    tun[ipip] = Tun.IPIP
    inner_pos = np.where(ipip, l4o, inner_pos)
    inner_want = np.where(ipip, np.where(ip.proto == 4, 4, 6), inner_want)

    # a tunnel header cut by snaplen cannot be read: the packet stays a plain GRE/UDP packet
    gre_c = ipok & first_frag & (ip.proto == 47) & (f.cap >= l4o + 4)
    gue_c = ipok & first_frag & (ip.proto == 17) & (f.cap >= l4o + 4)
    w4o = f.window(l4o) if (gre_c.any() or gue_c.any()) else None
    if gre_c.any():
        wg = w4o
        gflags = _u16(wg, 0)
        gproto = _u16(wg, 2)
        carries_ip = gre_c & ((gproto == 0x0800) | (gproto == 0x86DD)) & ((gflags & 0x4007) == 0)
        glen = 4 + 4 * ((gflags >> 15) & 1) + 4 * ((gflags >> 13) & 1) + 4 * ((gflags >> 12) & 1)
        gok = _cut(f, l4o + glen, carries_ip, status, Status.UNDECODABLE_TUNNEL)
        tun[gok] = Tun.GRE
        tun_flags = np.where(gok, gflags, tun_flags).astype(np.uint16)
        inner_pos = np.where(gok, l4o + glen, inner_pos)
        inner_want = np.where(gok, np.where(gproto == 0x0800, 4, 6), inner_want)

    if gue_c.any() and opts.gue_ports:
        wu = w4o
        udport = _u16(wu, 2)
        gue_c &= np.isin(udport, opts.gue_ports)
        if gue_c.any():
            short_gue = gue_c & ((ip.tlen - ip.hlen) < 12)   # the IP length leaves no room for UDP + GUE
            _set_status(status, short_gue, Status.UNDECODABLE_TUNNEL)
            gue_c = _cut(f, l4o + 12, gue_c & ~short_gue, status, Status.UNDECODABLE_TUNNEL)
            b0 = wu[:, 8]
            gver = b0 >> 6
            ghl = (b0 & 0x1F).astype(np.int64) * 4
            gproto = wu[:, 9]
            v0 = gue_c & (gver == 0) & (((b0 >> 5) & 1) == 0) & ((gproto == 4) | (gproto == 41))
            nib = wu[:, 8] >> 4
            v1 = gue_c & (gver == 1) & ((nib == 4) | (nib == 6))
            bad = gue_c & ~v0 & ~v1
            _set_status(status, bad, Status.UNDECODABLE_TUNNEL)
            g = v0 | v1
            tun[g] = Tun.GUE
            out_sport = np.where(g, _u16(wu, 0), 0).astype(np.uint16)
            out_dport = np.where(g, udport, 0).astype(np.uint16)
            tun_flags = np.where(v0, _u16(wu, 8), np.where(v1, 0x4000, tun_flags)).astype(np.uint16)
            inner_pos = np.where(v0, l4o + 12 + ghl, np.where(v1, l4o + 8, inner_pos))
            inner_want = np.where(v0, np.where(gproto == 4, 4, 6), np.where(v1, np.where(nib == 4, 4, 6), inner_want))

    tunnelled = tun > 0
    if tunnelled.any():
        inner_status = np.zeros(n, dtype=np.uint8)
        inner = _ip_layer(f, inner_pos, tunnelled & (status == 0), inner_want, inner_status)
        # a bad inner header is a bad tunnel payload, unless snaplen cut it
        inner_status[(inner_status != 0) & (inner_status != Status.UNDECODABLE_SNAPLEN)] = Status.UNDECODABLE_TUNNEL
        status[:] = np.where((status == 0) & (inner_status != 0), inner_status, status)
        tun[~inner.ok] = 0
        tunnelled = tun > 0
        sel = np.flatnonzero(tunnelled)
        sparse["tun"] = {
            "rows": sel,
            "tun": tun[sel],
            "out_ver": ip.ver[sel],
            "out_src": _addr_keys(book, ip.ver[sel], ip.src4[sel], (ip.src6[0][sel], ip.src6[1][sel])),
            "out_dst": _addr_keys(book, ip.ver[sel], ip.dst4[sel], (ip.dst6[0][sel], ip.dst6[1][sel])),
            "out_ttl": ip.ttl[sel],
            "out_id": ip.ident[sel].astype(np.uint16),
            "out_frag": ip.frag[sel],
            "out_tos": ip.tos[sel],
            "out_sport": out_sport[sel],
            "out_dport": out_dport[sel],
            "tun_flags": tun_flags[sel],
        }
        # from here on "the IP header" is the inner one for tunnelled rows
        ippos = np.where(tunnelled, inner_pos, l3)
        fin = _merge_ip(tunnelled, inner, ip, win=opts.checksums)
        fin.ok = ip.ok & (inner.ok | ~tunnelled) & (status == 0)
    else:
        sparse["tun"] = empty_group("tun")
        ippos = l3
        fin = ip
        fin.ok = ip.ok & (status == 0)

    ipok = fin.ok
    core["ip_ver"] = np.where(ipok, fin.ver, 0).astype(np.uint8)
    core["ip_src"] = np.where(ipok, _addr_keys(book, fin.ver * ipok, fin.src4, fin.src6), 0).astype(np.uint64)
    core["ip_dst"] = np.where(ipok, _addr_keys(book, fin.ver * ipok, fin.dst4, fin.dst6), 0).astype(np.uint64)
    for name, val in (("ip_ttl", fin.ttl), ("ip_id", fin.ident), ("ip_frag", fin.frag), ("ip_len", fin.tlen),
                      ("ip_hlen", fin.hlen), ("ip_tos", fin.tos), ("ip_proto", fin.proto)):
        core[name] = np.where(ipok, val, 0).astype(COLUMN[name].dtype)

    if opts.checksums:
        v4 = ipok & (fin.ver == 4)
        good = fold16(_word_sum(fin.win, 0, 10)) == 0xFFFF
        opt = np.flatnonzero(v4 & (fin.hlen > 20))   # rare: IPv4 options
        if len(opt):
            words = _f_words(fin.win[opt])
            lanes = np.arange(words.shape[1])[None, :]
            s = np.where(lanes < (fin.hlen[opt] // 2)[:, None], words, 0).sum(axis=1, dtype=np.uint64)
            good[opt] = fold16(s) == 0xFFFF
        core["ip_csum"] = np.where(v4, np.where(good, Csum.OK, Csum.BAD), Csum.NA).astype(np.uint8)

    # ---- transport --------------------------------------------------------------------------
    l4 = ippos + fin.hlen
    ipend = ippos + fin.tlen
    seglen = fin.tlen - fin.hlen
    first = ipok & ((fin.frag & 0x1FFF) == 0)
    proto = fin.proto
    tcp = first & (proto == 6)
    udp = first & (proto == 17)
    icmp = first & ((proto == 1) | (proto == 58))

    too_small = (tcp & (seglen < 20)) | (udp & (seglen < 8)) | (icmp & (seglen < 4))
    _set_status(status, too_small, Status.UNDECODABLE_L4_HEADER)
    tcp &= ~too_small
    udp &= ~too_small
    icmp &= ~too_small
    min_hdr = np.where(tcp, 20, np.where(udp, 8, 4))
    okl4 = _cut(f, l4 + min_hdr, tcp | udp | icmp, status, Status.UNDECODABLE_L4_HEADER)
    tcp &= okl4
    udp &= okl4
    icmp &= okl4

    w4 = w4o if (w4o is not None and not tunnelled.any()) else f.window(l4)
    sport = _u16(w4, 0)
    dport = _u16(w4, 2)
    core["sport"] = np.where(tcp | udp, sport, 0).astype(np.uint16)
    core["dport"] = np.where(tcp | udp, dport, 0).astype(np.uint16)

    # TCP
    thl = ((w4[:, 12] >> 4).astype(np.int64)) * 4
    bad_doff = tcp & ((thl < 20) | (thl > seglen))
    _set_status(status, bad_doff, Status.UNDECODABLE_L4_HEADER)
    tcp &= ~bad_doff
    tcp = _cut(f, l4 + thl, tcp, status, Status.UNDECODABLE_L4_HEADER)
    core["tcp_flags"] = np.where(tcp, ((w4[:, 12].astype(np.uint16) & 1) << 8) | w4[:, 13], 0).astype(np.uint16)
    core["tcp_seq"] = np.where(tcp, _u32(w4, 4), 0).astype(np.uint32)
    core["tcp_ack"] = np.where(tcp, _u32(w4, 8), 0).astype(np.uint32)
    core["tcp_win"] = np.where(tcp, _u16(w4, 14), 0).astype(np.uint16)
    core["tcp_hlen"] = np.where(tcp, thl, 0).astype(np.uint8)
    opt_bytes = (_tcp_options(core, w4, tcp, thl, status, book, opts) if opts.tcp_options
                 else None)

    # UDP
    ulen = _u16(w4, 4).astype(np.int64)
    more_frags = (fin.frag & 0x2000) != 0   # a first fragment: the UDP length counts the whole datagram
    bad_ulen = udp & ((ulen < 8) | ((ulen > seglen) & ~more_frags))
    _set_status(status, bad_ulen, Status.UNDECODABLE_L4_HEADER)
    udp &= ~bad_ulen

    # ICMP
    icmp_rows = np.flatnonzero(icmp)
    sparse["icmp"] = _icmp(f, w4, l4, fin, icmp_rows, book) if len(icmp_rows) else empty_group("icmp")

    # ---- payload ----------------------------------------------------------------------------
    l4hdr = np.where(tcp, thl, np.where(udp, 8, np.where(icmp, 8, 0)))
    plen = np.where(udp & ~more_frags, ulen - 8, seglen - l4hdr)
    plen = np.where(ipok & (status < 10), np.maximum(plen, 0), 0)
    pstart = l4 + l4hdr
    core["payload_len"] = plen.astype(np.uint32)
    core["payload_digest"] = _digest(f, pstart, plen)

    # ---- L4 checksums ------------------------------------------------------------------------
    if opts.checksums:
        core["l4_csum"] = _l4_checksums(f, fin, tcp, udp, icmp, l4, ipend, seglen, w4, status)

    snap = (status == 0) & (f.cap < f.wire)
    status[snap] = Status.SNAPLEN
    core["status"] = status
    return core, sparse, opt_bytes


def _merge_ip(mask: np.ndarray, a: _IP, b: _IP, win: bool = True) -> _IP:
    """Row-wise: ``a`` where mask, else ``b``. ``win=False``: without the header windows (only
    the checksums read them; the merge of two n x 64 arrays is the costly part)."""
    def pick(x, y):
        if isinstance(x, tuple):
            return tuple(pick(i, j) for i, j in zip(x, y))
        return np.where(mask if x.ndim == 1 else mask[:, None], x, y)
    return _IP(**{fl.name: (pick(getattr(a, fl.name), getattr(b, fl.name))
                            if win or fl.name != "win" else None) for fl in dc_fields(_IP)})


def _word_sum(w: np.ndarray, off: int, count: int) -> np.ndarray:
    """Sum of ``count`` big-endian 16-bit words from byte ``off`` of every window row."""
    s = np.zeros(len(w), dtype=np.uint64)
    for k in range(count):
        s += _f(w, off + 2 * k, ">u2")
    return s


def _f_words(w: np.ndarray) -> np.ndarray:
    """The window as big-endian 16-bit words (n x W/2)."""
    return np.ascontiguousarray(w).view(">u2").astype(np.uint32)


def empty_group(group: str) -> dict:
    g = {"rows": np.zeros(0, dtype=np.int64)}
    for name in group_columns(group):
        g[name] = np.zeros(0, dtype=COLUMN[name].dtype)
    return g


# ----------------------------------------------------------------------------------------
# TCP options


def _tcp_options(core, w4, tcp, thl, status, book: AddressBook, opts: DecodeOptions) -> np.ndarray:
    n = len(tcp)
    has = tcp & (thl > 20)
    # fast path: the layout of nearly every Linux segment after the handshake, NOP NOP TS
    fast = (has & (thl == 32) & (w4[:, 20] == 1) & (w4[:, 21] == 1) & (w4[:, 22] == 8)
            & (w4[:, 23] == 10))
    rows = np.flatnonzero(has & ~fast)
    bits = np.where(fast, np.uint32((1 << OPT_BIT["nop"]) | (1 << OPT_BIT["ts"])), 0).astype(np.uint32)
    mss = np.zeros(n, dtype=np.uint16)
    ws = np.full(n, 255, dtype=np.uint8)
    sackok = np.zeros(n, dtype=np.uint8)
    tsval = np.where(fast, _u32(w4, 24), 0).astype(np.uint32)
    tsecr = np.where(fast, _u32(w4, 28), 0).astype(np.uint32)
    toa_kind = np.zeros(n, dtype=np.uint8)
    toa_len = np.zeros(n, dtype=np.uint8)
    toa_port = np.zeros(n, dtype=np.uint16)
    toa_addr = np.zeros(n, dtype=np.uint64)
    toa_v6_rows, toa_v6_hi, toa_v6_lo = [], [], []
    toa_kinds = np.array(sorted(set(opts.toa_kinds)), dtype=np.uint8)

    idx = rows
    p = np.full(len(idx), 20, dtype=np.int64)
    end = thl[idx]
    for _ in range(40):
        if len(idx) == 0:
            break
        k = w4[idx, p]
        eol = k == 0
        nop = k == 1
        bits[idx[eol]] |= np.uint32(1 << OPT_BIT["eol"])
        bits[idx[nop]] |= np.uint32(1 << OPT_BIT["nop"])
        other = ~eol & ~nop
        ln = np.where(other, w4[idx, np.minimum(p + 1, W - 1)], 1).astype(np.int64)
        bad = other & ((p + 1 >= end) | (ln < 2) | (p + ln > end))
        if bad.any():
            m = np.zeros(n, dtype=bool)
            m[idx[bad]] = True
            _set_status(status, m, Status.BAD_TCP_OPTIONS)
        good = other & ~bad
        if good.any():
            gi, gp, gk, gl = idx[good], p[good], k[good], ln[good]
            sel = (gk == 2) & (gl == 4)
            mss[gi[sel]] = _gather16(w4, gi[sel], gp[sel] + 2)
            sel = (gk == 3) & (gl == 3)
            ws[gi[sel]] = w4[gi[sel], gp[sel] + 2]
            sel = (gk == 4) & (gl == 2)
            sackok[gi[sel]] = 1
            sel = (gk == 8) & (gl == 10)
            if sel.any():
                r, q = gi[sel], gp[sel]
                tsval[r] = (_gather16(w4, r, q + 2) << 16) | _gather16(w4, r, q + 4)
                tsecr[r] = (_gather16(w4, r, q + 6) << 16) | _gather16(w4, r, q + 8)
            named = {2: "mss", 3: "ws", 4: "sackok", 5: "sack", 8: "ts", 34: "tfo", 30: "mptcp"}
            for kind, name in named.items():
                sel = gk == kind
                bits[gi[sel]] |= np.uint32(1 << OPT_BIT[name])
            is_toa = _any_of(gk, toa_kinds) & ((gl == 8) | (gl == 20) | (gl == 7))
            first_toa = is_toa & (toa_kind[gi] == 0)
            if first_toa.any():
                r, q, kk, ll = gi[first_toa], gp[first_toa], gk[first_toa], gl[first_toa]
                toa_kind[r] = kk
                toa_len[r] = ll
                bits[r] |= np.uint32(1 << OPT_BIT["toa"])
                v4 = ll == 8
                toa_port[r[v4]] = _gather16(w4, r[v4], q[v4] + 2)
                a4 = (_gather16(w4, r[v4], q[v4] + 4) << 16) | _gather16(w4, r[v4], q[v4] + 6)
                toa_addr[r[v4]] = a4
                dc = ll == 7   # DCDN style: 1-byte type, IPv4, no port
                toa_addr[r[dc]] = (_gather16(w4, r[dc], q[dc] + 3) << 16) | _gather16(w4, r[dc], q[dc] + 5)
                v6 = ll == 20
                if v6.any():
                    r6, q6 = r[v6], q[v6]
                    toa_port[r6] = _gather16(w4, r6, q6 + 2)
                    hi = np.zeros(len(r6), dtype=np.uint64)
                    lo = np.zeros(len(r6), dtype=np.uint64)
                    for j in range(4):
                        hi = (hi << np.uint64(16)) | _gather16(w4, r6, q6 + 4 + 2 * j).astype(np.uint64)
                        lo = (lo << np.uint64(16)) | _gather16(w4, r6, q6 + 12 + 2 * j).astype(np.uint64)
                    toa_v6_rows.append(r6)
                    toa_v6_hi.append(hi)
                    toa_v6_lo.append(lo)
            known = _any_of(gk, (2, 3, 4, 5, 8, 34, 30)) | is_toa
            bits[gi[~known]] |= np.uint32(1 << OPT_BIT["other"])
        p = p + np.where(good, ln, 1)
        keep = ~eol & ~bad & (p < end)
        idx, p, end = idx[keep], p[keep], end[keep]
    if toa_v6_rows:
        r6 = np.concatenate(toa_v6_rows)
        toa_addr[r6] = book.intern_many(np.concatenate(toa_v6_hi), np.concatenate(toa_v6_lo))

    core.update(tcp_opts=bits, tcp_mss=mss, tcp_ws=ws, tcp_sackok=sackok, tcp_tsval=tsval,
                tcp_tsecr=tsecr, toa_kind=toa_kind, toa_len=toa_len, toa_port=toa_port, toa_addr=toa_addr)
    optlen = np.where(tcp, thl - 20, 0)
    if not opts.option_bytes:
        return None
    if not optlen.any():
        return np.zeros(0, dtype=np.uint8)
    return w4[:, 20:60][np.arange(40)[None, :] < optlen[:, None]]


# ----------------------------------------------------------------------------------------
# ICMP


def _icmp(f: _Frames, w4, l4, fin: _IP, rows: np.ndarray, book: AddressBook) -> dict:
    wi = w4[rows]
    typ = wi[:, 0]
    code = wi[:, 1]
    v6 = fin.ver[rows] == 6
    err = np.where(v6, np.isin(typ, ICMP6_ERRORS), np.isin(typ, ICMP4_ERRORS))
    epos = l4[rows] + 8
    cap = f.cap[rows]
    whole = cap >= epos       # the 8-byte ICMP header is all there
    mtu = np.where(whole & ~v6 & (typ == 3) & (code == 4), _u16(wi, 6),
                   np.where(whole & v6 & (typ == 2), _u32(wi, 4), 0)).astype(np.uint32)
    we = f.window(epos, rows)
    ever = (we[:, 0] >> 4).astype(np.uint8)
    ev4 = err & ~v6 & (ever == 4) & (cap >= epos + 20)
    ev6 = err & v6 & (ever == 6) & (cap >= epos + 40)
    ihl = np.where(ev6, 40, (we[:, 0] & 0x0F).astype(np.int64) * 4)
    ev4 &= ihl >= 20
    present = ev4 | ev6
    ver = np.where(ev4, 4, np.where(ev6, 6, 0)).astype(np.uint8)
    src = _addr_keys(book, ver, _u32(we, 12), (_u64(we, 8), _u64(we, 16)))
    dst = _addr_keys(book, ver, _u32(we, 16), (_u64(we, 24), _u64(we, 32)))
    eproto = np.where(ev6, we[:, 6], we[:, 9]).astype(np.uint8)
    ppos = epos + ihl
    wp = f.window(ppos, rows)
    has_ports = present & np.isin(eproto, (6, 17)) & (cap >= ppos + 4)
    has_seq = present & (eproto == 6) & (cap >= ppos + 8)
    return {
        "rows": rows,
        "icmp_type": typ.astype(np.uint8),
        "icmp_code": code.astype(np.uint8),
        "icmp_mtu": mtu,
        "icmp_in_ver": ver,
        "icmp_in_src": np.where(present, src, 0).astype(np.uint64),
        "icmp_in_dst": np.where(present, dst, 0).astype(np.uint64),
        "icmp_in_proto": np.where(present, eproto, 0).astype(np.uint8),
        "icmp_in_sport": np.where(has_ports, _u16(wp, 0), 0).astype(np.uint16),
        "icmp_in_dport": np.where(has_ports, _u16(wp, 2), 0).astype(np.uint16),
        "icmp_in_seq": np.where(has_seq, _u32(wp, 4), 0).astype(np.uint32),
    }


# ----------------------------------------------------------------------------------------
# payload digest and checksums

_K = np.uint64(0x9E3779B97F4A7C15)
# one odd multiplier per 8-byte lane (head lanes 0-3, tail lanes 4-7): position sensitive
_LANES = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                   0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9],
                  dtype=np.uint64)


def _digest(f: _Frames, pstart: np.ndarray, plen: np.ndarray) -> np.ndarray:
    """A digest of the captured payload: its length, first 32 and last 32 bytes.

    Position sensitive and cheap (no pass over whole payloads); meant to recognise the same
    segment at several vantage points together with ports and sequence numbers.
    """
    out = np.zeros(len(pstart), dtype=np.uint32)
    clen = np.clip(np.minimum(plen, f.cap - pstart), 0, None)
    rows = np.flatnonzero(clen > 0)
    if len(rows) == 0:
        return out
    c = clen[rows]
    ps = pstart[rows]
    head = f.window(ps, rows, width=32)
    t0 = np.maximum(32, c - 32)
    tail = f.window(ps + t0, rows, width=32)
    lane = np.arange(32)[None, :]
    short = np.flatnonzero(c < 64)          # partial head or tail: zero the bytes past the payload
    if len(short):
        head[short] = np.where(lane < np.minimum(c[short], 32)[:, None], head[short], 0)
        tail[short] = np.where(lane < (c[short] - t0[short])[:, None], tail[short], 0)
    words = np.concatenate([head.view("<u8"), tail.view("<u8")], axis=1)
    with np.errstate(over="ignore"):
        h = (words * _LANES[None, :]).sum(axis=1, dtype=np.uint64) + c.astype(np.uint64) * _K
        h ^= h >> np.uint64(31)
        h *= _K
        h ^= h >> np.uint64(29)
    d = ((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF))).astype(np.uint32)
    d[d == 0] = 1
    out[rows] = d
    return out


def ones_sum(buf: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Internet (ones' complement) sums of buf[a_i:b_i], as big-endian 16-bit values.

    One pass over the data: native 32-bit words summed with ``reduceat`` (2^16 = 1 mod 0xFFFF,
    so 32-bit words fold to the same sum as 16-bit ones), bytes outside the segment masked
    off at both ends, and the byte order fixed at the end (RFC 1071: the sum of byte-swapped
    words is the byte-swapped sum; a segment starting at an odd offset is paired the other way).
    ``buf`` must extend at least 4 bytes past every ``b``.
    """
    words = buf[: len(buf) - (len(buf) & 3)].view("<u4")
    wa = a // 4
    wb = (b + 3) // 4
    idx = np.empty(2 * len(a), dtype=np.int64)
    idx[0::2] = wa
    idx[1::2] = wb
    sums = np.add.reduceat(words, idx, dtype=np.uint64)[0::2]
    # bytes of the first word before the segment, and of the last word after it
    lead_mask = (np.uint64(1) << ((a & 3) * 8).astype(np.uint64)) - np.uint64(1)
    sums -= words[wa].astype(np.uint64) & lead_mask
    tb = (b & 3).astype(np.uint64)
    trail_keep = np.where(tb == 0, np.uint64(0xFFFFFFFF), (np.uint64(1) << (tb * np.uint64(8))) - np.uint64(1))
    sums -= words[wb - 1].astype(np.uint64) & ~trail_keep & np.uint64(0xFFFFFFFF)
    s = fold16(sums)
    swap = (a & 1) == 0    # little-endian words: an even start needs the swap, an odd one is paired the other way
    return np.where(swap, ((s & 0xFF) << 8) | (s >> 8), s).astype(np.uint64)


def _l4_checksums(f: _Frames, fin: _IP, tcp, udp, icmp, l4, ipend, seglen, w4, status) -> np.ndarray:
    n = len(tcp)
    out = np.zeros(n, dtype=np.uint8)
    cand = (tcp | udp | icmp) & (status < 10)
    frag = (fin.frag & 0x3FFF) != 0
    whole = cand & ~frag & (f.cap >= ipend)
    out[cand & ~whole] = Csum.UNVERIFIED
    rows = np.flatnonzero(whole)
    if len(rows) == 0:
        return out
    a = f.start[rows] + l4[rows]
    b = f.start[rows] + ipend[rows]
    s = ones_sum(f.buf, a, b)

    v6 = fin.ver[rows] == 6
    proto = fin.proto[rows].astype(np.uint64)
    length = seglen[rows].astype(np.uint64)
    wi = fin.win[rows]
    addr_sum = _word_sum(wi, 12, 4)                  # IPv4 source and destination
    six = np.flatnonzero(v6)
    if len(six):
        addr_sum[six] = _word_sum(wi[six], 8, 16)    # IPv6 source and destination
    pseudo = addr_sum + proto + (length >> np.uint64(16)) + (length & np.uint64(0xFFFF))
    is_icmp4 = icmp[rows] & ~v6
    pseudo = np.where(is_icmp4, 0, pseudo).astype(np.uint64)
    total = fold16(s + pseudo)
    ok = total == 0xFFFF
    field_at = np.where(tcp[rows], 16, np.where(udp[rows], 6, 2))
    w4r = w4[rows]
    field = _gather16(w4r, np.arange(len(rows)), field_at).astype(np.uint64)
    partial = ~ok & ~is_icmp4 & (field == fold16(pseudo))
    none = udp[rows] & (field == 0)
    res = np.where(ok, Csum.OK, np.where(none, Csum.NONE, np.where(partial, Csum.PARTIAL, Csum.BAD)))
    out[rows] = res
    return out
