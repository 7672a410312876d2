"""The transmit functions of :mod:`.xmit` for many frames at once: whole-column numpy over one
buffer, for the common shape of packet, byte for byte what the per-packet functions give.

The frames sit in one ``uint8`` buffer ``buf`` at offsets ``off`` (``int64``), each ``n``
bytes captured. :func:`shape` says, per frame, which batch paths it can take:

* :data:`IP4` — an untagged Ethernet frame carrying a whole IPv4 packet with a 20-byte header
  (``end = 14 + total length <= n``): :func:`dr4` and :func:`tun4` apply;
* :data:`WHOLE` — an :data:`IP4` frame that is not a fragment;
* :data:`L4` — besides, TCP (data offset 5..15 within the packet) or UDP, not a fragment, with
  an L4 checksum the decoder found right (``Csum.OK``): :func:`rewrite4` applies (NAT both
  ways, FullNAT both ways for segments without option work).

The TTL must be above the decrement (the caller checks: an expiring packet gets the per-packet
function, which answers with an ICMP error). Everything else (IPv6, VLAN tags, IP options,
fragments, cut frames, partial or wrong checksums, SYNs and SYN-ACKs of FullNAT, TOA
insertion without room in the TCP header, client TOAs, SACK edges) goes through :mod:`.xmit`
one frame at a time.

Frames that grow (a TOA: 8 bytes; a tunnel's outer headers: 20, 24 or 32 bytes) are made in
place too when the caller leaves that much room before each frame: their first bytes are
written that many bytes earlier (:func:`rewrite4` with ``toa``, :func:`tun4` + :func:`place`).

Checksums. The IPv4 header checksum is recomputed over the 20 bytes, as :mod:`.xmit` does. The
TCP/UDP checksum is updated incrementally (RFC 1624, eqn. 3, on residues modulo 0xFFFF) from
the words that change: addresses, ports, sequence and acknowledgement numbers. When the
incoming checksum is right this gives exactly the field a recomputation over the whole
segment gives (``xmit``'s ``csum="auto"``), ±0 included: both are ``0xFFFF - (r or 0xFFFF)``
of the same residue ``r``; UDP's 0 becomes 0xFFFF as in :mod:`.xmit`. ``tests/test_xmit.py``
checks the bytes against the per-packet functions on every fixture frame.
"""
from __future__ import annotations

import numpy as np

from ..capture.decode import fold16, ones_sum

__all__ = ["IP4", "L4", "WHOLE", "shape", "rewrite4", "options4", "dr4", "tun4", "place", "TUN_CODES"]

IP4, L4, WHOLE = 1, 2, 4
TCP, UDP = 6, 17
TUN_CODES = {"ipip": 1, "gre": 2, "gue": 3}
_CHUNK = 4 << 20
_I64 = np.int64


def _u16(buf: np.ndarray, pos: np.ndarray) -> np.ndarray:
    return (buf[pos].astype(_I64) << 8) | buf[pos + 1]


def _final(res: np.ndarray) -> np.ndarray:
    return np.where(res == 0, 0, 0xFFFF - res)


class _Headers:
    """The first ``width`` bytes of each frame as one row each (``uint8``), read and written
    back whole rows at a time (a sliding-window view of the buffer: a memory copy per row,
    not a lookup per byte); ``n``: each frame's length, past which nothing is written."""

    def __init__(self, buf: np.ndarray, off: np.ndarray, width: int, n: np.ndarray):
        self.buf, self.off, self.n, self.width = buf, off, n, width
        k = len(off)
        lim = len(buf) - width
        self.full = (off <= lim) & (n >= width)      # rows written back whole
        self.win = (np.lib.stride_tricks.sliding_window_view(buf, width, writeable=True)
                    if lim >= 0 else None)
        inside = off <= lim
        if k and inside.all():
            self.h = self.win[off]
        else:                          # rows near the buffer's end: one at a time
            self.h = np.zeros((k, width), dtype=np.uint8)
            if inside.any():
                self.h[inside] = self.win[off[inside]]
            for i in np.flatnonzero(~inside).tolist():
                seg = buf[off[i]:off[i] + width]
                self.h[i, :len(seg)] = seg

    def col(self, j: int) -> np.ndarray:
        return self.h[:, j].astype(_I64)

    def u16(self, j: int) -> np.ndarray:
        return self.h[:, j:j + 2].view(">u2")[:, 0].astype(_I64)

    def u32(self, j: int) -> np.ndarray:
        return self.h[:, j:j + 4].view(">u4")[:, 0].astype(_I64)

    def words(self, j: int, end: int) -> np.ndarray:
        """Sum of the 16-bit words of columns j..end."""
        return self.h[:, j:end].view(">u2").sum(axis=1, dtype=_I64)

    def put(self, j: int, size: int, v, m=None) -> None:
        """Write ``v`` (int, big-endian, ``size`` 1, 2, 4 or 6 bytes) at column ``j`` (rows
        ``m``, a mask; None: all)."""
        if size == 6:
            self.put(j, 2, v >> 32, m)
            self.put(j + 2, 4, v & 0xFFFFFFFF, m)
            return
        view = self.h[:, j:j + size].view({1: "u1", 2: ">u2", 4: ">u4"}[size])[:, 0]
        view[:] = v if m is None else np.where(m, v, view)

    def put_mac(self, j: int, mac: np.ndarray) -> None:
        m = mac >= 0
        if m.all():
            self.put(j, 6, mac)
        elif m.any():
            self.put(j, 6, mac, m)

    def ip4_check(self, l3: int = 14) -> None:
        """Recompute the checksum of the 20-byte IPv4 header at column ``l3``."""
        s = self.words(l3, l3 + 10) + self.words(l3 + 12, l3 + 20)
        self.put(l3 + 10, 2, _final(s % 0xFFFF))

    def store(self) -> None:
        """Write the rows back (rows of frames shorter than ``width`` up to their end)."""
        full = self.full
        if full.all():
            self.win[self.off] = self.h
            return
        if full.any():
            self.win[self.off[full]] = self.h[full]
        for i in np.flatnonzero(~full).tolist():
            o, n = int(self.off[i]), int(min(self.n[i], self.width))
            self.buf[o:o + n] = self.h[i, :n]


def shape(buf: np.ndarray, off: np.ndarray, n: np.ndarray,
          l4_ok: np.ndarray | None = None) -> np.ndarray:
    """Per frame: the bits :data:`IP4`, :data:`WHOLE`, :data:`L4` of the paths it can take (see
    the module docstring). ``l4_ok``: the decoder found the TCP/UDP checksum right; None:
    check it here (``buf`` must then extend 4 bytes past every frame)."""
    if l4_ok is None:
        l4_ok = np.ones(len(off), dtype=bool)
        sh = shape(buf, off, n, l4_ok)
        cand = np.flatnonzero(sh & L4)
        sh[cand[~l4_valid(buf, off[cand])]] &= ~np.uint8(L4)
        return sh
    out = np.zeros(len(off), dtype=np.uint8)
    ok = n >= 34
    if not ok.any():
        return out
    idx = np.flatnonzero(ok)
    o = off[idx]
    m = (buf[o + 12] == 8) & (buf[o + 13] == 0) & (buf[o + 14] == 0x45)
    end = 14 + _u16(buf, o + 16)
    m &= (end >= 34) & (end <= n[idx])
    ip4 = idx[m]
    out[ip4] = IP4
    o, end = off[ip4], end[m]
    proto = buf[o + 23]
    frag = _u16(buf, o + 20) & 0x3FFF
    out[ip4[frag == 0]] |= WHOLE
    l4 = (frag == 0) & l4_ok[ip4]
    tcp = l4 & (proto == TCP) & (end >= 54)
    if tcp.any():
        # data offset 5..15 and the header within the packet (no reads past the frame)
        pos = np.where(tcp, o + 46, o)
        doff = buf[pos].astype(_I64) >> 4
        tcp &= (doff >= 5) & (34 + doff * 4 <= end)
    udp = l4 & (proto == UDP) & (end >= 42)
    out[ip4[tcp | udp]] |= L4
    return out


def l4_valid(buf: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Is the TCP/UDP checksum of each IPv4 frame right (what the decoder calls ``Csum.OK``)?
    Frames at ``off`` of :data:`IP4` shape carrying TCP or UDP, not fragments; UDP without a
    checksum (0) is not "right" (``Csum.NONE``)."""
    if len(off) == 0:
        return np.zeros(0, dtype=bool)
    end = off + 14 + _u16(buf, off + 16)
    if int(end.max()) + 8 > len(buf):                # ones_sum reads whole 32-bit words
        buf = np.concatenate([buf, np.zeros(8, dtype=np.uint8)])
    # one pass over the buffer, in order, a few MB at a time: ones_sum's reduceat works on a
    # 64-bit copy of what it is given, and fresh memory costs more than the sums
    order = np.argsort(off, kind="stable")
    a, b = off[order] + 34, end[order]
    s = np.empty(len(off), dtype=np.uint64)
    out = np.empty(len(off), dtype=np.uint64)
    i = 0
    while i < len(a):
        j = int(np.searchsorted(a, a[i] + _CHUNK, side="left"))
        j = max(j, i + 1)
        base = int(a[i]) & ~3
        top = int(b[i:j].max()) + 8
        out[i:j] = ones_sum(buf[base:top], a[i:j] - base, b[i:j] - base)
        i = j
    s[order] = out
    proto = buf[off + 23].astype(_I64)
    pseudo = sum(_u16(buf, off + j) for j in (26, 28, 30, 32)) + proto + (end - off - 34)
    ok = fold16(s + pseudo.astype(np.uint64)) == 0xFFFF
    udp = proto == UDP
    return ok & ~(udp & (_u16(buf, off + 40) == 0))


def rewrite4(buf: np.ndarray, off: np.ndarray, *, ttl_dec: np.ndarray, src: np.ndarray,
             dst: np.ndarray, sport: np.ndarray, dport: np.ndarray, seq_add: np.ndarray,
             ack_add: np.ndarray, src_mac: np.ndarray, dst_mac: np.ndarray,
             end: np.ndarray | None = None, toa: np.ndarray | None = None) -> np.ndarray:
    """NAT / FullNAT in place on :data:`L4` frames: TTL - ``ttl_dec``; source / destination
    address and port (``-1``: keep); TCP seq + ``seq_add``, ack + ``ack_add`` (mod 2**32);
    IPv4 header checksum recomputed, TCP/UDP checksum updated; MACs (``-1``: keep). All
    arguments are ``int64`` arrays, one value per frame (``end``: offset of each IP packet's
    end, by default read from the header). What :func:`.xmit.nat_request`,
    :func:`.xmit.nat_reply`, :func:`.xmit.fullnat_request` (without TOA, SYN or client TOA)
    and :func:`.xmit.fullnat_reply` (without SYN-ACK or SACK) write.

    ``toa`` (FullNAT requests): per frame the kind of a TOA option to insert (``-1``: none),
    the 8-byte IPv4 form carrying the frame's own source address and port (before the
    rewrite), right after the 20-byte TCP header as :func:`.xmit.fullnat_request` with
    ``toa_on`` does it — for TCP frames with room for it (data offset <= 13). Such a frame
    grows by 8 bytes: its first 54 bytes move 8 bytes toward the buffer's start (the caller
    leaves that much room before each one) and the option fills the gap. Returns each frame's
    new start (``off - 8`` with a TOA, else ``off``)."""
    if len(off) == 0:
        return off
    if end is None:
        end = off + 14 + _u16(buf, off + 16)
    h = _Headers(buf, off, 54, end - off)
    tcp = h.h[:, 23] == TCP
    # the words that change: addresses and ports, and for TCP seq and ack
    told, aold = h.u32(38), h.u32(42)
    old = h.words(26, 38)
    grow = None
    if toa is not None:
        want = toa >= 0
        if (want & ~(tcp & ((h.h[:, 46] >> 4) <= 13))).any():
            raise ValueError("a TOA asked for a frame that is not TCP with room for it")
        grow = np.flatnonzero(want)
        if len(grow):
            # the option: kind, length 8, the client's port and address (network order)
            opt = np.empty((len(grow), 8), dtype=np.uint8)
            opt[:, 0] = toa[grow]
            opt[:, 1] = 8
            opt[:, 2:8] = h.h[grow][:, [34, 35, 26, 27, 28, 29]]
            ow = opt.view(">u2").sum(axis=1, dtype=_I64)
            sub = h.h[grow]
            sub[:, 16:18].view(">u2")[:, 0] += 8             # IP total length
            sub[:, 46] += 0x20                                # data offset + 2 words
            h.h[grow] = sub
    h.h[:, 22] -= ttl_dec.astype(np.uint8)
    for val, at in ((src, 26), (dst, 30)):
        m = val >= 0
        if m.any():
            h.put(at, 4, val, None if m.all() else m)
    for val, at in ((sport, 34), (dport, 36)):
        m = val >= 0
        if m.any():
            h.put(at, 2, val, None if m.all() else m)
    tnew = np.where(tcp, (told + seq_add) & 0xFFFFFFFF, told)
    anew = np.where(tcp, (aold + ack_add) & 0xFFFFFFFF, aold)
    h.put(38, 4, tnew, tcp)
    h.put(42, 4, anew, tcp)
    new = h.words(26, 38)
    w = lambda v: (v >> 16) + (v & 0xFFFF)          # noqa: E731
    old = old + np.where(tcp, w(told) + w(aold), 0)
    new = new + np.where(tcp, w(tnew) + w(anew), 0)
    if grow is not None and len(grow):
        # the option's words, 8 more bytes in the pseudo header, 2 more in the data offset
        new[grow] += ow + 8 + 0x2000
    oldc = np.where(tcp, h.u16(50), h.u16(40))
    x = _final(((0xFFFF - oldc) - old + new) % 0xFFFF)
    x = np.where(~tcp & (x == 0), 0xFFFF, x)
    h.put(50, 2, x, tcp)
    h.put(40, 2, x, ~tcp)
    h.ip4_check()
    h.put_mac(0, dst_mac)
    h.put_mac(6, src_mac)
    if grow is None or not len(grow):
        h.store()
        return off
    keep = np.ones(len(off), dtype=bool)
    keep[grow] = False
    rows = np.empty((len(grow), 62), dtype=np.uint8)
    rows[:, :54] = h.h[grow]
    rows[:, 54:] = opt
    start = off.copy()
    start[grow] -= 8
    if keep.any():
        h.h, h.off, h.n, h.full = h.h[keep], off[keep], h.n[keep], h.full[keep]
        h.store()
    place(buf, start[grow], rows)
    return start


def options4(buf: np.ndarray, off: np.ndarray, *, remove_ts: np.ndarray,
             mss_sub: np.ndarray) -> None:
    """TCP option work in place on :data:`L4` TCP frames, before :func:`rewrite4`: the first
    timestamp option (kind 8, length 10) becomes 10 NOPs where ``remove_ts``
    (:func:`.xmit.remove_timestamp`, a FullNAT SYN); the first MSS option (kind 2, length 4)
    is lowered by ``mss_sub`` (mod 2**16; 0: untouched — :func:`.xmit._adjust_mss`, a FullNAT
    SYN-ACK). The options are found by the walk of :func:`.xmit._opts_walk` (NOPs skipped, EOL
    or a malformed option ends it); the TCP checksum is updated incrementally (RFC 1624), so
    a right checksum stays right."""
    if len(off) == 0:
        return
    l4 = off + 34
    stop = l4 + (buf[off + 46].astype(_I64) >> 4) * 4
    ts_at = np.full(len(off), -1, dtype=_I64)
    mss_at = np.full(len(off), -1, dtype=_I64)
    want_ts, want_mss = remove_ts.astype(bool), mss_sub != 0
    idx = np.flatnonzero(want_ts | want_mss)
    pos = l4[idx] + 20
    while len(idx):                     # one option of every frame per round (at most 40)
        live = pos < stop[idx]
        idx, pos = idx[live], pos[live]
        if not len(idx):
            break
        k = buf[pos]
        nop = k == 1
        sz = buf[np.minimum(pos + 1, len(buf) - 1)].astype(_I64)
        opt = (k > 1) & (pos + 1 < stop[idx])
        opt &= (sz >= 2) & (sz <= stop[idx] - pos)
        hit = opt & (k == 8) & (sz == 10) & want_ts[idx] & (ts_at[idx] < 0)
        ts_at[idx[hit]] = pos[hit]
        hit = opt & (k == 2) & (sz == 4) & want_mss[idx] & (mss_at[idx] < 0)
        mss_at[idx[hit]] = pos[hit]
        # frames still looking for an option go on (EOL, a malformed option: the walk ends)
        more = (nop | opt) & (((ts_at[idx] < 0) & want_ts[idx]) | ((mss_at[idx] < 0) & want_mss[idx]))
        step = np.where(nop, 1, sz)
        idx, pos = idx[more], (pos + step)[more]
    delta = np.zeros(len(off), dtype=_I64)       # new - old, as one's complement weights

    def weights(at, base, n):
        """(index of each byte, its weight in the segment's word sum: 256 at an even
        distance from the TCP header ``base``, else 1) of the ``n`` bytes at ``at``."""
        cols = at[:, None] + np.arange(n)
        return cols, np.where(((cols - base[:, None]) & 1) == 0, 256, 1)

    ts_sel = np.flatnonzero(ts_at >= 0)
    if len(ts_sel):
        cols, wt = weights(ts_at[ts_sel], l4[ts_sel], 10)
        oldb = buf[cols].astype(_I64)
        delta[ts_sel] += ((1 - oldb) * wt).sum(axis=1)
        buf[cols] = 1
    mss_sel = np.flatnonzero(mss_at >= 0)
    if len(mss_sel):
        cols, wt = weights(mss_at[mss_sel] + 2, l4[mss_sel], 2)
        oldv = (buf[cols[:, 0]].astype(_I64) << 8) | buf[cols[:, 1]]
        newv = (oldv - mss_sub[mss_sel]) & 0xFFFF
        nb = np.stack([newv >> 8, newv & 0xFF], axis=1)
        delta[mss_sel] += ((nb - buf[cols].astype(_I64)) * wt).sum(axis=1)
        buf[cols] = nb.astype(np.uint8)
    ch = np.flatnonzero(delta)
    if len(ch):
        at = off[ch] + 50
        oldc = _u16(buf, at)
        x = _final(((0xFFFF - oldc) + delta[ch]) % 0xFFFF)
        buf[at] = (x >> 8).astype(np.uint8)
        buf[at + 1] = (x & 0xFF).astype(np.uint8)


def place(buf: np.ndarray, start: np.ndarray, rows: np.ndarray) -> None:
    """Write ``rows`` (``uint8``, one per frame) into ``buf`` at offsets ``start``."""
    if len(start) == 0:
        return
    w = rows.shape[1]
    np.lib.stride_tricks.sliding_window_view(buf, w, writeable=True)[start] = rows


def dr4(buf: np.ndarray, off: np.ndarray, *, ttl_dec: np.ndarray, src_mac: np.ndarray,
        dst_mac: np.ndarray) -> None:
    """DR in place on :data:`IP4` frames (:func:`.xmit.dr`): TTL, IPv4 header checksum, MACs."""
    if len(off) == 0:
        return
    h = _Headers(buf, off, 34, np.full(len(off), 34))
    h.h[:, 22] -= ttl_dec.astype(np.uint8)
    h.ip4_check()
    h.put_mac(0, dst_mac)
    h.put_mac(6, src_mac)
    h.store()


def tun4(buf: np.ndarray, off: np.ndarray, end: np.ndarray, *, kind: int, ttl_dec: np.ndarray,
         outer_src: np.ndarray, outer_dst: np.ndarray, gue_sport: np.ndarray,
         gue_dport: np.ndarray, src_mac: np.ndarray, dst_mac: np.ndarray) -> np.ndarray:
    """TUN of IPv4 in IPv4 (:func:`.xmit.tun` with ``pmtu_disc``, no ``mtu``, ``ident`` 0,
    no tunnel checksum) for :data:`WHOLE` frames of one tunnel ``kind`` (:data:`TUN_CODES`):
    the inner packet's TTL and header checksum are updated in ``buf``; returns the link and
    outer headers, one row per frame (``uint8``, 34 bytes for IPIP, 38 for GRE, 46 for GUE).
    The frame to send is a row followed by ``buf[off + 14:end]``."""
    k = len(off)
    extra = {1: 0, 2: 4, 3: 12}[kind]
    out = _Headers(np.zeros(0, np.uint8), np.zeros(0, np.int64), 34 + extra, np.zeros(0))
    out.h = np.zeros((k, 34 + extra), dtype=np.uint8)
    if k == 0:
        return out.h
    h = _Headers(buf, off, 34, np.full(k, 34))
    h.h[:, 22] -= ttl_dec.astype(np.uint8)
    h.ip4_check()
    h.store()
    inner = end - off - 14
    o = out.h
    o[:, 0:12] = h.h[:, 0:12]
    o[:, 12] = 0x08
    o[:, 14] = 0x45
    ds = h.col(15)
    o[:, 15] = np.where(ds & 3 == 3, (ds & 0xFC) | 2, ds)
    out.put(16, 2, 20 + extra + inner)
    o[:, 20] = h.h[:, 20] & 0x40       # DF copied; ID 0, fragment offset 0
    o[:, 22] = h.h[:, 22]
    o[:, 23] = {1: 4, 2: 47, 3: UDP}[kind]
    out.put(26, 4, outer_src)
    out.put(30, 4, outer_dst)
    out.ip4_check()
    if kind == 2:                      # GRE: flags 0, protocol 0x0800
        o[:, 36] = 0x08
    elif kind == 3:                    # GUE: UDP (checksum 0) + version 0, proto_ctype 4
        out.put(34, 2, gue_sport)
        out.put(36, 2, gue_dport)
        out.put(38, 2, 12 + inner)
        o[:, 43] = 4
    out.put_mac(0, dst_mac)
    out.put_mac(6, src_mac)
    return o
