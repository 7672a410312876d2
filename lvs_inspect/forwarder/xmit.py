"""What the director puts on the wire: the transmit functions of the reference forwarder.

Pure functions on raw Ethernet frames (``bytes`` in, ``bytes`` out), written from
``SEMANTICS.md`` (§0, §1.1-1.4, §3, §4, §6) independently of the checks. No per-packet
object is built beyond the output buffer; headers are read and written with ``struct``.

=====================  ==========================================================================
:func:`nat_request`    NAT C->D->R: dst VIP:vport -> RIP:rport, TTL -``ttl_dec`` (§1.1)
:func:`nat_reply`      NAT R->D->C: src RIP:rport -> VIP:vport, TTL -``ttl_dec``
:func:`dr`             DR: MACs, TTL, IPv4 header checksum; L4 bytes untouched (§1.2)
:func:`tun`            TUN: IPIP / GUE / GRE outer header, MTU check, frag-needed (§1.3)
:func:`fullnat_request` FullNAT C->D->R: LIP:lport -> RIP:rport, seq + D1, TS -> NOPs in the SYN,
                       TOA insertion with the profile's "no room" handling (§1.4, §3, §4)
:func:`fullnat_reply`  FullNAT R->D->C: VIP:vport -> CIP:cport, ack/SACK - D1, MSS lowered in
                       the SYN-ACK
:func:`icmp_rewrite`   an ICMP error about a forwarded packet, rewritten for the other side (§6);
                       wrappers :func:`nat_icmp_to_rs`, :func:`nat_icmp_to_client`,
                       :func:`fullnat_icmp_to_rs`, :func:`fullnat_icmp_to_client`
=====================  ==========================================================================

Results. A function returns the frame to transmit (``bytes``; :func:`fullnat_request` returns
a :class:`FullNatFrame`, a ``bytes`` that also says what became of the TOA), or an
:class:`IcmpError` (a ``bytes`` as well) when the director answers the sender instead of
forwarding (TTL expired with ``ttl_dec``: Time Exceeded; ``DF`` and longer than ``mtu`` minus
the encapsulation overhead: Fragmentation Needed / Packet Too Big), or ``None`` when the
director drops the packet without a word (tunnel MTU below 68 / 1280, an ICMP error that may
not be answered). Frames the function cannot handle (not IPv4/IPv6, cut inside a header, a
non-first fragment where L4 must be rewritten, a family mismatch) raise :class:`XmitError`,
whose message says why; the caller adds the file and frame.

Addresses are ``str``, :mod:`ipaddress` objects, packed ``bytes`` (4 or 16) or ``int`` (the
frame's family; in :func:`tun` an ``int`` below 2**32 is IPv4). MACs are ``bytes`` (6),
``int`` (:class:`lvs_inspect.net.MAC`) or ``"02:..."`` text; ``None`` keeps the frame's MAC.
The input's VLAN tags are kept (:func:`set_l2` rewrites the whole link header) and Ethernet
padding after the IP packet is dropped.

Checksums (``csum`` keyword): ``"auto"`` (default) recomputes the L4 checksum over the whole
segment when the frame holds it completely, so a checksum left partial by the sender's
offload (what host captures show) comes out right; a frame cut by the snaplen gets the
RFC 1624 incremental update of the bytes that changed. ``"incremental"`` always updates
incrementally, as the kernel does, so a wrong incoming checksum stays wrong. IPv4 header
checksums are always recomputed. UDP over IPv4 with checksum 0 keeps 0.

TTL and MTU come in the order of the path: IPVS transmitters (requests) decrement first, so a
frag-needed embeds the decremented packet; forwarded packets (NAT replies, FullNAT with a
decrement, i.e. kernel-routed) check the MTU on the packet as received. The director's own
ICMP errors come from the address the packet was sent to (the VIP) unless ``icmp_src`` says
otherwise; on reply paths, without ``icmp_src``, an expiring packet is dropped silently.
ICMP rate limiting (``icmp_ratelimit``) is not modelled.

What the kernel does that cannot be predicted is a parameter: the outer IPv4 ID when DF is
clear (``ident``), the GUE source port (``gue_sport``; by default a deterministic flow hash
mapped into the local port range with the kernel's ``udp_flow_src_port`` arithmetic — the
kernel's hash has a boot-time random seed, so only the range can be checked), the ID of the
director's own ICMP errors (``icmp_ident``).

Not modelled: fragmenting an oversized non-DF packet (the whole packet is returned; the
caller may split it), GUE remote checksum offload (``remcsum``), UOA for FullNAT UDP, SYN proxy
window rescaling, NAT46/64, Proxy Protocol, the DPVS TUN variant (no TTL decrement, IPv6-in-IPv4
with DF set and TOS 0).
"""
from __future__ import annotations

import ipaddress
import struct
import zlib
from typing import Iterable

from ..topology.model import ToaVariant

__all__ = [
    "XmitError", "IcmpError", "FullNatFrame",
    "nat_request", "nat_reply", "dr", "tun", "fullnat_request", "fullnat_reply",
    "icmp_rewrite", "nat_icmp_to_rs", "nat_icmp_to_client", "fullnat_icmp_to_rs",
    "fullnat_icmp_to_client", "set_l2", "tun_overhead", "gue_source_port",
    "remove_timestamp", "prune_options", "toa_option", "toa_wanted", "inet_checksum",
    "LOCAL_PORT_RANGE", "ICMP_ERROR_TTL", "TOA_PORT_BYTEORDERS",
]

# --------------------------------------------------------------------------- constants

ETH_IP4, ETH_IP6 = 0x0800, 0x86DD
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

#: net.ipv4.ip_local_port_range default: GUE source ports come from [low, high)
LOCAL_PORT_RANGE = (32768, 60999)
#: TTL / hop limit of the director's own ICMP errors (ip_default_ttl, IPv6 hop_limit)
ICMP_ERROR_TTL = 64
_ICMP4_ROOM = 576 - 20 - 8     # icmp_send: the error fits in 576 bytes
_ICMP6_ROOM = 1280 - 40 - 8    # icmp6_send: the error fits in the IPv6 minimum MTU
_ICMP4_ERRORS = frozenset((3, 4, 5, 11, 12))   # types icmp_send never answers
_IPVS_ICMP4 = frozenset((3, 4, 11))            # errors IPVS relates to a connection (§6)

_TUN_KINDS = ("ipip", "gue", "gre")
_V6_EXT = frozenset((0, 43, 60))   # hop-by-hop, routing, destination options


class XmitError(ValueError):
    """The frame cannot go through this transmit function; the message says why."""


class IcmpError(bytes):
    """An ICMP / ICMPv6 error the director sends back toward the packet's source instead of
    forwarding it. ``icmp_type``, ``icmp_code`` and ``info`` (next-hop MTU or 0) say which."""

    icmp_type: int
    icmp_code: int
    info: int

    def __repr__(self) -> str:
        return (f"IcmpError(type={self.icmp_type}, code={self.icmp_code}, info={self.info}, "
                f"{len(self)} bytes)")


class FullNatFrame(bytes):
    """A FullNAT frame toward the real server; ``toa`` says what became of the TOA:

    ``"off"`` not asked for, ``"inserted"``, ``"pruned"`` (inserted after DPVS pruned the
    options), ``"skipped-room"`` / ``"skipped-mtu"`` (Alibaba: no TCP option room / packet
    within 8 or 20 bytes of the MTU: sent without TOA), ``"failed-room"`` / ``"failed-mtu"``
    (DPVS: still no room after pruning; the options may have been pruned anyway)."""

    toa: str

    def __repr__(self) -> str:
        return f"FullNatFrame(toa={self.toa!r}, {len(self)} bytes)"


# --------------------------------------------------------------------------- small helpers

_addr_cache: dict = {}
_mac_cache: dict = {}


def _addr(x, size: int | None = None) -> bytes:
    """Packed address; ``size`` (4/16) is the family ints and checks take."""
    if isinstance(x, (bytes, bytearray)):
        b = bytes(x)
        if len(b) not in (4, 16):
            raise XmitError(f"a packed address has 4 or 16 bytes, not {len(b)}")
    elif isinstance(x, int) and not isinstance(x, bool):
        n = size or (4 if x < 1 << 32 else 16)
        if x < 0 or x >= 1 << (8 * n):
            raise XmitError(f"address {x} does not fit IPv{4 if n == 4 else 6}")
        b = x.to_bytes(n, "big")
    else:
        b = _addr_cache.get(x)
        if b is None:
            try:
                b = (x if isinstance(x, (ipaddress.IPv4Address, ipaddress.IPv6Address))
                     else ipaddress.ip_address(str(x).strip())).packed
            except ValueError:
                raise XmitError(f"'{x}' is not an IP address") from None
            if len(_addr_cache) < 65536:
                _addr_cache[x] = b
    if size is not None and len(b) != size:
        raise XmitError(f"address {_fmt(b)} is IPv{4 if len(b) == 4 else 6} but the packet "
                        f"is IPv{4 if size == 4 else 6} (this mode does not mix families)")
    return b


def _fmt(b: bytes) -> str:
    return str(ipaddress.ip_address(bytes(b)))


def _mac(x) -> bytes:
    if isinstance(x, (bytes, bytearray)):
        if len(x) != 6:
            raise XmitError(f"a MAC address has 6 bytes, not {len(x)}")
        return bytes(x)
    b = _mac_cache.get(x)
    if b is None:
        if isinstance(x, int):
            if not 0 <= x < 1 << 48:
                raise XmitError(f"MAC {x} is out of range")
            b = x.to_bytes(6, "big")
        else:
            s = str(x).strip().replace("-", ":")
            try:
                parts = [int(p, 16) for p in s.split(":")]
            except ValueError:
                parts = []
            if len(parts) != 6 or not all(0 <= p <= 255 for p in parts):
                raise XmitError(f"'{x}' is not a MAC address")
            b = bytes(parts)
        if len(_mac_cache) < 4096:
            _mac_cache[x] = b
    return b


def checksum_residue(b) -> int:
    """The 16-bit one's complement sum of ``b`` modulo 0xFFFF (2**16 = 1 mod 0xFFFF, so the
    big-endian integer of the bytes has the same residue as the sum of its words)."""
    n = int.from_bytes(b, "big")
    if len(b) & 1:
        n <<= 8
    return n % 0xFFFF


def checksum_field(res: int) -> int:
    """Checksum field for a sum with residue ``res`` (data never all zero here)."""
    return 0xFFFF - (res or 0xFFFF)


def inet_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data`` (the value to store in the field)."""
    if not any(data):
        return 0xFFFF
    return checksum_field(checksum_residue(data))


def _ip4_check(buf: bytearray, l3: int, hl: int) -> None:
    buf[l3 + 10] = buf[l3 + 11] = 0
    c = checksum_field(checksum_residue(buf[l3:l3 + hl]))
    buf[l3 + 10] = c >> 8
    buf[l3 + 11] = c & 0xFF


# --------------------------------------------------------------------------- parsing

def _l2(buf) -> tuple[int, int]:
    """(offset of the IP header, ethertype) of an Ethernet frame, VLAN tags skipped."""
    n = len(buf)
    if n < 14:
        raise XmitError(f"frame of {n} bytes is shorter than an Ethernet header")
    et = (buf[12] << 8) | buf[13]
    off = 14
    while et in _VLAN_TPIDS:
        if n < off + 4:
            raise XmitError("frame ends inside a VLAN tag")
        et = (buf[off + 2] << 8) | buf[off + 3]
        off += 4
    if et != ETH_IP4 and et != ETH_IP6:
        raise XmitError(f"ethertype 0x{et:04x} is not IPv4 or IPv6")
    return off, et


def _ip(buf, l3: int, et: int):
    """(version, header length incl. IPv6 extension headers, protocol, end of the IP packet,
    fragment offset (bytes), more-fragments, routing header with segments left).

    ``end`` may exceed ``len(buf)`` (frame cut by the snaplen)."""
    n = len(buf)
    if et == ETH_IP4:
        if n < l3 + 20:
            raise XmitError("frame ends inside the IPv4 header")
        vhl = buf[l3]
        if vhl >> 4 != 4:
            raise XmitError(f"IP version {vhl >> 4} under ethertype 0x0800")
        hl = (vhl & 15) * 4
        if hl < 20 or n < l3 + hl:
            raise XmitError(f"IPv4 header length {hl} is invalid or cut by the capture")
        tot = (buf[l3 + 2] << 8) | buf[l3 + 3]
        if tot < hl:
            raise XmitError(f"IPv4 total length {tot} is smaller than its header ({hl})")
        fo = ((buf[l3 + 6] << 8) | buf[l3 + 7])
        return 4, hl, buf[l3 + 9], l3 + tot, (fo & 0x1FFF) * 8, bool(fo & 0x2000), False
    if n < l3 + 40:
        raise XmitError("frame ends inside the IPv6 header")
    if buf[l3] >> 4 != 6:
        raise XmitError(f"IP version {buf[l3] >> 4} under ethertype 0x86dd")
    end = l3 + 40 + ((buf[l3 + 4] << 8) | buf[l3 + 5])
    nh = buf[l3 + 6]
    off = l3 + 40
    frag, mf, routed = 0, False, False
    for _ in range(16):
        if nh in _V6_EXT:
            if n < off + 8:
                raise XmitError("frame ends inside an IPv6 extension header")
            if nh == 43 and buf[off + 3]:
                routed = True
            nh, off = buf[off], off + 8 + buf[off + 1] * 8
        elif nh == 44:
            if n < off + 8:
                raise XmitError("frame ends inside an IPv6 fragment header")
            fo = (buf[off + 2] << 8) | buf[off + 3]
            frag, mf = fo & 0xFFF8, bool(fo & 1)
            nh, off = buf[off], off + 8
        else:
            break
    else:
        raise XmitError("IPv6 extension header chain too long")
    if off > end:
        raise XmitError("IPv6 extension headers run past the payload length")
    return 6, off - l3, nh, end, frag, mf, routed


def _pseudo(buf, l3: int, ver: int, proto: int, l4len: int) -> int:
    if ver == 4:
        return (int.from_bytes(buf[l3 + 12:l3 + 20], "big") + proto + l4len) % 0xFFFF
    return (int.from_bytes(buf[l3 + 8:l3 + 40], "big") + proto + l4len) % 0xFFFF


def _csum_off(proto: int) -> int:
    return 16 if proto == TCP else 6 if proto == UDP else 2


def _l4_hdr_len(buf, l4: int, proto: int) -> int:
    if proto == TCP:
        return (buf[l4 + 12] >> 4) * 4
    return 8


def _frame_start(frame, l3: int, end: int) -> bytearray:
    """Mutable copy of the frame up to the end of the IP packet (Ethernet padding dropped)."""
    return bytearray(memoryview(frame)[:end]) if len(frame) > end else bytearray(frame)


def _set_macs(buf: bytearray, src, dst) -> None:
    if dst is not None:
        buf[0:6] = _mac(dst)
    if src is not None:
        buf[6:12] = _mac(src)


class _L4:
    """Where the transport header is and how to redo its checksum (one per call)."""

    __slots__ = ("l3", "ver", "hl", "proto", "l4", "end", "hlen", "complete", "old", "csum_mode")

    def __init__(self, buf, l3, ver, hl, proto, end, csum_mode, what):
        if proto not in (TCP, UDP):
            raise XmitError(f"{what}: IP protocol {proto} is not TCP or UDP")
        self.l3, self.ver, self.hl, self.proto, self.end = l3, ver, hl, proto, end
        self.l4 = l4 = l3 + hl
        n = len(buf)
        if n < l4 + (20 if proto == TCP else 8):
            raise XmitError(f"frame ends inside the {'TCP' if proto == TCP else 'UDP'} header")
        self.hlen = hlen = _l4_hdr_len(buf, l4, proto)
        if hlen < 20 and proto == TCP:
            raise XmitError(f"TCP data offset {hlen // 4} is below 5")
        if n < l4 + hlen:
            raise XmitError("frame ends inside the TCP options")
        if l4 + hlen > end:
            raise XmitError("the IP length leaves no room for the transport header")
        if csum_mode not in ("auto", "incremental"):
            raise ValueError(f"csum must be 'auto' or 'incremental', not {csum_mode!r}")
        self.csum_mode = csum_mode
        self.complete = n >= end
        self.old = None
        if csum_mode == "incremental" or not self.complete:
            self.old = self._region(buf)

    def _region(self, buf) -> int:
        """Residue of pseudo header + transport header with its checksum field zeroed."""
        l4, hlen = self.l4, self.hlen
        co = l4 + _csum_off(self.proto)
        hdr = bytes(buf[l4:co]) + b"\0\0" + bytes(buf[co + 2:l4 + hlen])
        return (_pseudo(buf, self.l3, self.ver, self.proto, self.end - l4) + checksum_residue(hdr)) % 0xFFFF

    def finish(self, buf: bytearray) -> None:
        """Recompute the IPv4 header checksum and the transport checksum."""
        if self.ver == 4:
            _ip4_check(buf, self.l3, self.hl)
        l4, proto = self.l4, self.proto
        co = l4 + _csum_off(proto)
        oldc = (buf[co] << 8) | buf[co + 1]
        if proto == UDP and self.ver == 4 and oldc == 0:
            return                                  # sender chose no UDP checksum
        if self.old is None:                        # whole segment present: from scratch
            buf[co] = buf[co + 1] = 0
            c = checksum_field((_pseudo(buf, self.l3, self.ver, proto, self.end - l4)
                        + int.from_bytes(buf[l4:self.end], "big")
                        * (256 if (self.end - l4) & 1 else 1)) % 0xFFFF)
        else:                                       # RFC 1624 on the bytes that changed
            x = ((0xFFFF - oldc) - self.old + self._region(buf)) % 0xFFFF
            c = checksum_field(x)
        if proto == UDP and c == 0:
            c = 0xFFFF
        buf[co] = c >> 8
        buf[co + 1] = c & 0xFF


# --------------------------------------------------------------------------- ICMP errors by D

def _icmp_error(frame, buf, l3: int, ver: int, end: int, typ: int, code: int, info: int,
                src, ident: int) -> IcmpError:
    """The director's own ICMP error about the IP packet ``buf[l3:end]``, sent back toward its
    source with the frame's MACs swapped (icmp_send / icmp6_send). None when the source
    address to use is unknown (:data:`_NO_ICMP`)."""
    if src is _NO_ICMP:
        return None
    pkt = bytes(buf[l3:min(end, len(buf))])
    l2 = bytearray(frame[:l3])
    l2[0:6], l2[6:12] = frame[6:12], frame[0:6]
    if ver == 4:
        osrc, odst = pkt[12:16], pkt[16:20]
        s = _addr(src, 4) if src is not None else odst
        body = pkt[:_ICMP4_ROOM]
        if typ == 3 and code == 4:
            rest = struct.pack("!HH", 0, info)
        else:
            rest = struct.pack("!I", info)
        icmp = bytearray(struct.pack("!BBH", typ, code, 0) + rest + body)
        c = inet_checksum(icmp)
        icmp[2], icmp[3] = c >> 8, c & 0xFF
        tos = (pkt[1] & 0x1E) | 0xC0              # RT_TOS(tos) | IPTOS_PREC_INTERNETCONTROL
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(icmp), ident & 0xFFFF,
                                    0, ICMP_ERROR_TTL, ICMP, 0, s, osrc))
        c = inet_checksum(hdr)
        hdr[10], hdr[11] = c >> 8, c & 0xFF
        l2[-2:] = b"\x08\x00"
        out = IcmpError(bytes(l2) + bytes(hdr) + bytes(icmp))
    else:
        osrc, odst = pkt[8:24], pkt[24:40]
        s = _addr(src, 16) if src is not None else odst
        body = pkt[:_ICMP6_ROOM]
        icmp = bytearray(struct.pack("!BBHI", typ, code, 0, info) + body)
        res = (int.from_bytes(s + osrc, "big") + len(icmp) + ICMP6 + checksum_residue(icmp)) % 0xFFFF
        c = checksum_field(res)
        icmp[2], icmp[3] = c >> 8, c & 0xFF
        hdr = struct.pack("!IHBB16s16s", 0x60000000, len(icmp), ICMP6, ICMP_ERROR_TTL, s, osrc)
        l2[-2:] = b"\x86\xdd"
        out = IcmpError(bytes(l2) + hdr + bytes(icmp))
    out.icmp_type, out.icmp_code, out.info = typ, code, info
    return out


def _is_icmp_error(buf, l4: int, ver: int, proto: int, ipvs_only: bool = False) -> bool:
    if len(buf) <= l4:
        return False
    if ver == 4 and proto == ICMP:
        return buf[l4] in (_IPVS_ICMP4 if ipvs_only else _ICMP4_ERRORS)
    if ver == 6 and proto == ICMP6:
        return buf[l4] < 128
    return False


def _answerable(buf, l3: int, ver: int, hl: int, proto: int, frag: int) -> bool:
    """icmp_send / icmp6_send answer neither non-first fragments nor ICMP errors."""
    return frag == 0 and not _is_icmp_error(buf, l3 + hl, ver, proto)


def _ttl(frame, buf: bytearray, l3: int, ver: int, hl: int, proto: int, end: int, frag: int,
         ttl_dec: int, icmp_src, icmp_ident: int):
    """Decrement TTL / hop limit (decrement_ttl). Returns None when forwarded, else what to
    return instead (an IcmpError, or None for a silent drop: a second value says which)."""
    if not ttl_dec:
        return False, None
    i = l3 + 8 if ver == 4 else l3 + 7
    t = buf[i]
    if t <= ttl_dec:
        if not _answerable(buf, l3, ver, hl, proto, frag):
            return True, None
        if ver == 4:
            return True, _icmp_error(frame, buf, l3, 4, end, 11, 0, 0, icmp_src, icmp_ident)
        return True, _icmp_error(frame, buf, l3, 6, end, 3, 0, 0, icmp_src, icmp_ident)
    buf[i] = t - ttl_dec
    return False, None


def _ttl_mtu(frame, buf: bytearray, l3: int, ver: int, hl: int, proto: int, end: int,
             frag: int, ttl_dec: int, mtu: int | None, icmp_src, icmp_ident: int,
             forwarded: bool):
    """TTL and MTU in the order the path takes them: IPVS transmitters decrement first and
    then check the MTU (the error embeds the decremented packet); ``forwarded`` packets
    (ip_forward: NAT replies, kernel-routed FullNAT) check expiry, then the MTU on the packet
    as received, then decrement. Returns (stop, what to return)."""
    if forwarded and mtu is not None:
        t = buf[l3 + (8 if ver == 4 else 7)]
        if not (ttl_dec and t <= ttl_dec):
            stop, res = _mtu_check(frame, buf, l3, ver, hl, proto, end, frag, mtu, icmp_src,
                                   icmp_ident)
            if stop:
                return stop, res
        return _ttl(frame, buf, l3, ver, hl, proto, end, frag, ttl_dec, icmp_src, icmp_ident)
    stop, res = _ttl(frame, buf, l3, ver, hl, proto, end, frag, ttl_dec, icmp_src, icmp_ident)
    if stop or mtu is None:
        return stop, res
    if ver == 4:
        _ip4_check(buf, l3, hl)
    return _mtu_check(frame, buf, l3, ver, hl, proto, end, frag, mtu, icmp_src, icmp_ident)


def _mtu_check(frame, buf: bytearray, l3: int, ver: int, hl: int, proto: int, end: int,
               frag: int, mtu: int | None, icmp_src, icmp_ident: int, *,
               tunnel: bool = False, pmtu_disc: bool = True):
    """ensure_mtu_is_adequate: (stop, what to return)."""
    if mtu is None:
        return False, None
    size = end - l3
    if size <= mtu:
        return False, None
    ipvs_icmp = _is_icmp_error(buf, l3 + hl, ver, proto, ipvs_only=True)
    if ver == 6:
        if frag == 0 and not ipvs_icmp:
            return True, _icmp_error(frame, buf, l3, 6, end, 2, 0, mtu, icmp_src, icmp_ident)
        return True, None
    if tunnel and not pmtu_disc:
        return False, None                          # fragmented by the stack
    df = buf[l3 + 6] & 0x40
    if df and not ipvs_icmp:
        if frag == 0:
            return True, _icmp_error(frame, buf, l3, 4, end, 3, 4, mtu, icmp_src, icmp_ident)
        return True, None
    return False, None                              # no DF: fragmented on output


# --------------------------------------------------------------------------- link layer

def set_l2(frame, src_mac, dst_mac, vlans: Iterable[int] = ()) -> bytes:
    """The frame with a new Ethernet header: MACs and 802.1Q tags (``vlans``: VLAN ids, outer
    first, TPID 0x8100; the priority bits of each TCI are 0)."""
    buf = bytes(frame)
    l3, et = _l2(buf)
    tags = b"".join(struct.pack("!HH", 0x8100, v & 0x0FFF) for v in vlans)
    return _mac(dst_mac) + _mac(src_mac) + tags + struct.pack("!H", et) + buf[l3:]


# --------------------------------------------------------------------------- NAT

def _nat4_fast(frame, addr, port, src: bool, src_mac, dst_mac, ttl_dec: int, mtu):
    """The common case in one go: untagged IPv4 without options, TCP/UDP, whole segment
    captured, not a fragment, TTL not expiring, within the MTU. None: take the general path
    (which gives the same bytes)."""
    n = len(frame)
    if n < 54 or frame[12] != 8 or frame[13] != 0 or frame[14] != 0x45:
        return None
    proto = frame[23]
    if proto != TCP and proto != UDP:
        return None
    end = 14 + ((frame[16] << 8) | frame[17])
    if end > n or end < 42 or ((frame[20] << 8) | frame[21]) & 0x3FFF or frame[22] <= ttl_dec:
        return None
    if mtu is not None and end - 14 > mtu:
        return None
    if type(addr) is not bytes or len(addr) != 4:
        return None
    co = 50 if proto == TCP else 40
    if proto == TCP:
        if end < 54 or frame[46] >> 4 < 5 or 34 + (frame[46] >> 4) * 4 > end:
            return None
    elif frame[40] == 0 and frame[41] == 0:
        return None                                  # UDP without checksum: general path
    buf = bytearray(memoryview(frame)[:end]) if n > end else bytearray(frame)
    buf[22] -= ttl_dec
    if src:
        buf[26:30] = addr
    else:
        buf[30:34] = addr
    if port:
        p = 34 if src else 36
        buf[p] = (port >> 8) & 0xFF
        buf[p + 1] = port & 0xFF
    buf[24] = buf[25] = 0
    r = int.from_bytes(buf[14:34], "big") % 0xFFFF
    c = 0xFFFF - (r or 0xFFFF)
    buf[24] = c >> 8
    buf[25] = c & 0xFF
    buf[co] = buf[co + 1] = 0
    seg = int.from_bytes(buf[34:end], "big")
    if (end - 34) & 1:
        seg <<= 8
    r = (int.from_bytes(buf[26:34], "big") + proto + end - 34 + seg) % 0xFFFF
    c = 0xFFFF - (r or 0xFFFF)
    if c == 0 and proto == UDP:
        c = 0xFFFF
    buf[co] = c >> 8
    buf[co + 1] = c & 0xFF
    if dst_mac is not None:
        buf[0:6] = dst_mac if type(dst_mac) is bytes and len(dst_mac) == 6 else _mac(dst_mac)
    if src_mac is not None:
        buf[6:12] = src_mac if type(src_mac) is bytes and len(src_mac) == 6 else _mac(src_mac)
    return bytes(buf)


def _nat(frame, addr, port, *, src: bool, src_mac, dst_mac, ttl_dec: int, mtu, csum: str,
         icmp_src, icmp_ident: int, what: str):
    if csum == "auto" and type(frame) is bytes:
        out = _nat4_fast(frame, _addr_cache.get(addr, addr) if type(addr) is str else addr,
                         port, src, src_mac, dst_mac, ttl_dec, mtu)
        if out is not None:
            return out
    l3, et = _l2(frame)
    ver, hl, proto, end, frag, mf, routed = _ip(frame, l3, et)
    if frag or mf:
        raise XmitError(f"{what}: an IP fragment (the director reassembles before IPVS)")
    if routed:
        raise XmitError(f"{what}: IPv6 routing header with segments left")
    buf = _frame_start(frame, l3, end)
    size = 4 if ver == 4 else 16
    a = _addr(addr, size)
    seg = _L4(buf, l3, ver, hl, proto, end, csum, what)
    stop, res = _ttl_mtu(frame, buf, l3, ver, hl, proto, end, 0, ttl_dec, mtu, icmp_src,
                         icmp_ident, forwarded=src)
    if stop:
        return res
    if ver == 4:
        o = l3 + (12 if src else 16)
        buf[o:o + 4] = a
    else:
        o = l3 + (8 if src else 24)
        buf[o:o + 16] = a
    if port:
        p = seg.l4 + (0 if src else 2)
        buf[p] = (port >> 8) & 0xFF
        buf[p + 1] = port & 0xFF
    seg.finish(buf)
    _set_macs(buf, src_mac, dst_mac)
    return bytes(buf)


def nat_request(frame, rs_ip, rs_port: int | None, *, src_mac=None, dst_mac=None,
                ttl_dec: int = 1, mtu: int | None = None, csum: str = "auto",
                icmp_src=None, icmp_ident: int = 0):
    """NAT hop 2 (D->R): destination VIP:vport -> ``rs_ip``:``rs_port`` (``rs_port`` 0 or
    None keeps the port), TTL - ``ttl_dec``, IPv4 header and L4 checksums; IP ID, DSCP/ECN
    and DF unchanged (SEMANTICS §1.1). ``mtu``: route MTU toward R; a DF packet longer gets
    frag-needed (IPv6: packet too big) from ``icmp_src`` (default: the VIP it was sent to),
    embedding the packet as received with its TTL already decremented (decrement_ttl runs
    before the MTU check)."""
    return _nat(frame, rs_ip, rs_port, src=False, src_mac=src_mac, dst_mac=dst_mac,
                ttl_dec=ttl_dec, mtu=mtu, csum=csum, icmp_src=icmp_src, icmp_ident=icmp_ident,
                what="nat_request")


def nat_reply(frame, vip, vport: int | None, *, src_mac=None, dst_mac=None, ttl_dec: int = 1,
              mtu: int | None = None, csum: str = "auto", icmp_src=None, icmp_ident: int = 0):
    """NAT hop 4 (D->C): source RIP:rport -> ``vip``:``vport``, TTL - ``ttl_dec`` (the reply is
    forwarded by ip_forward: -1 on every kernel), checksums. A reply whose TTL runs out is
    answered with Time Exceeded from ``icmp_src`` (pass the director's address toward R: the
    reply was not addressed to the director)."""
    if ttl_dec and icmp_src is None:
        icmp_src = _NO_ICMP
    return _nat(frame, vip, vport, src=True, src_mac=src_mac, dst_mac=dst_mac,
                ttl_dec=ttl_dec, mtu=mtu, csum=csum, icmp_src=icmp_src, icmp_ident=icmp_ident,
                what="nat_reply")


class _NoIcmp:
    """Marker: the director's source address for an ICMP error is unknown: drop silently."""


_NO_ICMP = _NoIcmp()


# --------------------------------------------------------------------------- DR

def dr(frame, *, src_mac, rs_mac, ttl_dec: int = 1, mtu: int | None = None, icmp_src=None,
       icmp_ident: int = 0):
    """DR hop 2: Ethernet source/destination -> ``src_mac``/``rs_mac``, TTL - ``ttl_dec``,
    IPv4 header checksum; nothing else (SEMANTICS §1.2). Fragments pass as they are."""
    l3, et = _l2(frame)
    ver, hl, proto, end, frag, mf, routed = _ip(frame, l3, et)
    buf = _frame_start(frame, l3, end)
    stop, res = _ttl_mtu(frame, buf, l3, ver, hl, proto, end, frag, ttl_dec, mtu, icmp_src,
                         icmp_ident, forwarded=False)
    if stop:
        return res
    if ver == 4:
        _ip4_check(buf, l3, hl)
    _set_macs(buf, src_mac, rs_mac)
    return bytes(buf)


# --------------------------------------------------------------------------- TUN

def tun_overhead(kind: str, outer_version: int = 4, csum: bool = False) -> int:
    """Bytes the encapsulation adds: outer IP (20/40) + GUE UDP+header (12) or GRE (4, 8 with
    the checksum flag) (SEMANTICS §1.3)."""
    if kind not in _TUN_KINDS:
        raise ValueError(f"tunnel kind must be one of {', '.join(_TUN_KINDS)}, not {kind!r}")
    base = 20 if outer_version == 4 else 40
    return base + (12 if kind == "gue" else (8 if csum else 4) if kind == "gre" else 0)


def gue_source_port(inner: bytes, port_range: tuple[int, int] = LOCAL_PORT_RANGE) -> int:
    """A GUE source port as ``udp_flow_src_port`` picks it: a flow hash of the inner packet
    (here CRC-32 of addresses, protocol and ports instead of the kernel's seeded hash),
    ``hash ^= hash << 16``, then ``(hash * (high - low)) >> 32) + low``."""
    lo, hi = port_range
    ver = inner[0] >> 4
    if ver == 4:
        hl = (inner[0] & 15) * 4
        key = bytes(inner[12:20]) + bytes(inner[9:10])
        frag = ((inner[6] << 8) | inner[7]) & 0x1FFF
        if inner[9] in (TCP, UDP) and not frag and len(inner) >= hl + 4:
            key += bytes(inner[hl:hl + 4])
    else:
        key = bytes(inner[8:40]) + bytes(inner[6:7])
        if inner[6] in (TCP, UDP) and len(inner) >= 44:
            key += bytes(inner[40:44])
    h = zlib.crc32(key) & 0xFFFFFFFF
    h ^= (h << 16) & 0xFFFFFFFF
    return ((h * (hi - lo)) >> 32) + lo


def tun(frame, *, kind: str = "ipip", outer_src, rs_ip, ttl_dec: int = 1, pmtu_disc: bool = True,
        gue_port: int = 6080, gue_sport: int | None = None, src_mac=None, dst_mac=None,
        mtu: int | None = None, ident: int = 0, csum: bool = False,
        port_range: tuple[int, int] = LOCAL_PORT_RANGE, icmp_src=None, icmp_ident: int = 0):
    """TUN hop 2: the client's packet (TTL - ``ttl_dec``, IPv4 header checksum recomputed)
    inside an outer header from ``outer_src`` to ``rs_ip`` (SEMANTICS §1.3):

    * outer TTL / hop limit = inner TTL after the decrement; TOS / traffic class = inner DSCP
      with ECN encapsulated (CE -> ECT(0), else copied); IPv6 flow label 0;
    * IPv4 outer: DF copied from an IPv4 inner when ``pmtu_disc`` (0 for an IPv6 inner and
      without pmtu_disc), ID 0 when DF else ``ident``, IHL 5;
    * protocol 4 / 41 (``ipip``), 17 (``gue``: UDP to ``gue_port`` from ``gue_sport`` or
      :func:`gue_source_port`, checksum 0 unless ``csum``, then the 4-byte GUE header version
      0, hlen 0, proto_ctype 4 / 41), 47 (``gre``: flags 0 — C bit with ``csum`` and then a
      checksum word — and protocol 0x0800 / 0x86DD).

    ``mtu`` (route MTU toward R): the room left for the inner packet is ``mtu`` minus
    :func:`tun_overhead`; below 68 (IPv4 outer) / 1280 (IPv6 outer) the packet is dropped
    (None); an inner IPv4 packet with DF that is longer gets frag-needed with that MTU (unless
    ``pmtu_disc`` is off: it is then sent and fragmented), an inner IPv6 packet packet too big.
    """
    if kind not in _TUN_KINDS:
        raise XmitError(f"tunnel kind must be one of {', '.join(_TUN_KINDS)}, not {kind!r}")
    l3, et = _l2(frame)
    ver, hl, proto, end, frag, mf, routed = _ip(frame, l3, et)
    if len(frame) < end:
        raise XmitError("tun: the frame was cut by the capture; the whole packet is needed "
                        "to encapsulate it")
    dst = _addr(rs_ip)
    src = _addr(outer_src, len(dst))
    buf = _frame_start(frame, l3, end)
    stop, res = _ttl(frame, buf, l3, ver, hl, proto, end, frag, ttl_dec, icmp_src, icmp_ident)
    if stop:
        return res
    if ver == 4:
        _ip4_check(buf, l3, hl)
    ov = 4 if len(dst) == 4 else 6
    if mtu is not None:
        room = mtu - tun_overhead(kind, ov, csum)
        if room < (68 if ov == 4 else 1280):
            return None
        stop, res = _mtu_check(frame, buf, l3, ver, hl, proto, end, frag, room, icmp_src,
                               icmp_ident, tunnel=True, pmtu_disc=pmtu_disc)
        if stop:
            return res
    inner = bytes(buf[l3:])
    if ver == 4:
        ds, ttl = inner[1], inner[8]
        df = (inner[6] & 0x40) if pmtu_disc else 0
        nproto = 4
    else:
        ds = ((inner[0] & 15) << 4) | (inner[1] >> 4)
        ttl = inner[7]
        df = 0
        nproto = 41
    if ds & 3 == 3:
        ds = (ds & 0xFC) | 2                        # INET_ECN_encapsulate: CE -> ECT(0)
    if kind == "ipip":
        payload, oproto = inner, nproto
    elif kind == "gre":
        eproto = ETH_IP4 if nproto == 4 else ETH_IP6
        if csum:
            g = bytearray(struct.pack("!HHHH", 0x8000, eproto, 0, 0))
            c = inet_checksum(bytes(g) + inner)
            g[4], g[5] = c >> 8, c & 0xFF
            payload = bytes(g) + inner
        else:
            payload = struct.pack("!HH", 0, eproto) + inner
        oproto = 47
    else:
        sport = gue_sport if gue_sport is not None else gue_source_port(inner, port_range)
        ulen = 8 + 4 + len(inner)
        udp = bytearray(struct.pack("!HHHHBBH", sport, gue_port, ulen, 0, 0, nproto, 0) + inner)
        if csum:
            res_ = (int.from_bytes(src + dst, "big") + UDP + ulen + checksum_residue(udp)) % 0xFFFF
            c = checksum_field(res_) or 0xFFFF
            udp[6], udp[7] = c >> 8, c & 0xFF
        payload, oproto = bytes(udp), UDP
    if ov == 4:
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, ds, 20 + len(payload),
                                    0 if df else ident & 0xFFFF, 0x4000 if df else 0, ttl,
                                    oproto, 0, src, dst))
        c = inet_checksum(hdr)
        hdr[10], hdr[11] = c >> 8, c & 0xFF
        etype = b"\x08\x00"
    else:
        hdr = struct.pack("!IHBB16s16s", 0x60000000 | (ds << 20), len(payload), oproto, ttl,
                          src, dst)
        etype = b"\x86\xdd"
    l2 = bytearray(frame[:l3])
    l2[-2:] = etype
    _set_macs(l2, src_mac, dst_mac)
    return bytes(l2) + bytes(hdr) + payload


# --------------------------------------------------------------------------- TCP options

def _opts_walk(buf, start: int, stop: int):
    """Yield (kind, offset, size) of each option; NOPs are skipped, EOL and a malformed option
    end the walk (the kernels' and DPVS's option loops)."""
    i = start
    while i < stop:
        k = buf[i]
        if k == 0:
            return
        if k == 1:
            i += 1
            continue
        if i + 1 >= stop:
            return
        sz = buf[i + 1]
        if sz < 2 or sz > stop - i:
            return
        yield k, i, sz
        i += sz


def remove_timestamp(buf: bytearray, l4: int) -> bool:
    """Overwrite the first timestamp option (kind 8, length 10) with 10 NOPs
    (``tcp_in_remove_ts``); True when one was found."""
    hlen = (buf[l4 + 12] >> 4) * 4
    for k, i, sz in _opts_walk(buf, l4 + 20, l4 + hlen):
        if k == 8 and sz == 10:
            buf[i:i + 10] = b"\x01" * 10
            return True
    return False


def _nop_kind(buf: bytearray, l4: int, kind: int) -> int:
    """Replace every option of ``kind`` with NOPs; returns how many."""
    hlen = (buf[l4 + 12] >> 4) * 4
    hits = [(i, sz) for k, i, sz in _opts_walk(buf, l4 + 20, l4 + hlen) if k == kind]
    for i, sz in hits:
        buf[i:i + sz] = b"\x01" * sz
    return len(hits)


def _adjust_mss(buf: bytearray, l4: int, reduce: int) -> None:
    hlen = (buf[l4 + 12] >> 4) * 4
    for k, i, sz in _opts_walk(buf, l4 + 20, l4 + hlen):
        if k == 2 and sz == 4:
            v = (((buf[i + 2] << 8) | buf[i + 3]) - reduce) & 0xFFFF
            buf[i + 2], buf[i + 3] = v >> 8, v & 0xFF
            return


def _adjust_sack(buf: bytearray, l4: int, delta: int) -> None:
    """Subtract ``delta`` from every edge of the first SACK option (tcp_out_adjust_seq)."""
    hlen = (buf[l4 + 12] >> 4) * 4
    for k, i, sz in _opts_walk(buf, l4 + 20, l4 + hlen):
        if k == 5 and sz >= 10 and (sz - 2) % 8 == 0:
            for j in range(i + 2, i + sz, 4):
                v = (int.from_bytes(buf[j:j + 4], "big") - delta) & 0xFFFFFFFF
                buf[j:j + 4] = v.to_bytes(4, "big")
            return


def _add32(buf: bytearray, o: int, delta: int) -> None:
    v = (int.from_bytes(buf[o:o + 4], "big") + delta) & 0xFFFFFFFF
    buf[o:o + 4] = v.to_bytes(4, "big")


#: DPVS tcp_in_prune_options: options kept when trimming, with their longest accepted size
_PROTECTED_SYN = (2, 3, 4, 8, 30, 34)   # MSS, WS, SACK-perm, TS, MPTCP, TFO
_PROTECTED = (8,)                        # non-SYN: TS only (SACK blocks are dropped)
_PROTECTED_MAX = {2: 4, 3: 3, 4: 2, 8: 10, 30: 40, 34: 18}


def prune_options(opts: bytes, reqlen: int, syn: bool, toa_kind: int = 254) -> tuple[bytes, int]:
    """DPVS's option pruning before a TOA retry: drop NOPs and ``toa_kind`` options and compact
    (an EOL or a malformed option ends the list: what follows is dropped too); if that frees
    fewer than ``reqlen`` bytes, drop unprotected options in order until enough is free; pad
    with zero bytes to a multiple of 4. Returns (new options, bytes removed); the options are
    unchanged when they are shorter than ``reqlen``. The new options can be as long as the old
    ones (0 removed) yet compacted."""
    optlen = len(opts)
    if optlen < reqlen:
        return bytes(opts), 0
    kept = bytearray()
    for k, i, sz in _opts_walk(opts, 0, optlen):
        if k != toa_kind:
            kept += opts[i:i + sz]
    freed = optlen - len(kept)
    if freed < reqlen:
        prot = set(_PROTECTED_SYN if syn else _PROTECTED)
        out = bytearray()
        j, n = 0, len(kept)
        while j < n:
            k, sz = kept[j], kept[j + 1]
            if k in prot and sz <= _PROTECTED_MAX[k]:
                out += kept[j:j + sz]
                prot.discard(k)
            else:
                freed += sz
                if freed >= reqlen:
                    out += kept[j + sz:]
                    break
            j += sz
        kept = out
        freed = optlen - len(kept)
    while freed & 3:
        kept.append(0)
        freed -= 1
    return bytes(kept), freed


#: byte orders of the TOA's port field: ``network`` (right), ``host`` (little-endian, as on the
#: x86 hosts these directors run on: the fault of a TOA writer that forgot ``htons``)
TOA_PORT_BYTEORDERS = ("network", "host")


def toa_wanted(packets, flags: int, ack: int, first_ack: int | None, payload: bool) -> bool:
    """Does a client->RS TCP segment carry the TOA (SEMANTICS §4.2)? ``packets``: which kinds
    do (:data:`~lvs_inspect.topology.model.TOA_PACKETS` subset); ``first_ack``: R's ISN + 1,
    the ack of every client segment sent before R's first data byte (None: unknown yet);
    ``payload``: the segment carries data. A SYN (without ACK) when ``"syn"`` is listed;
    otherwise an ACK segment, not RST, acknowledging ``first_ack``: a FIN only when
    ``"fin"`` is listed, and then as a data segment (``"data"``) or a bare ACK (``"ack"``)."""
    if flags & SYN:
        return not flags & ACK and "syn" in packets
    if flags & RST or not flags & ACK or first_ack is None or ack != first_ack:
        return False
    if flags & FIN and "fin" not in packets:
        return False
    return ("data" if payload else "ack") in packets


def toa_option(toa: ToaVariant, addr: bytes, port: int, port_byteorder: str = "network") -> bytes:
    """The TOA option: kind, length, port and address in network order (SEMANTICS §4.1).
    ``port_byteorder="host"`` writes the port little-endian (byte-swapped on the wire): a
    fault, for the lab."""
    if port_byteorder not in TOA_PORT_BYTEORDERS:
        raise ValueError(f"port_byteorder must be 'network' or 'host', not {port_byteorder!r}")
    if port_byteorder == "host":
        port = ((port & 0xFF) << 8) | (port >> 8)
    if toa.length not in (8, 20):
        raise XmitError(f"TOA length {toa.length} is not supported (8: IPv4, 20: IPv6)")
    if len(addr) != (4 if toa.length == 8 else 16):
        raise XmitError(f"TOA {toa} carries an IPv{4 if toa.length == 8 else 6} address, the "
                        f"client is IPv{4 if len(addr) == 4 else 6}")
    return bytes((toa.kind, toa.length)) + struct.pack("!H", port) + addr


def _insert_option(buf: bytearray, seg: _L4, opt: bytes) -> None:
    l4 = seg.l4
    buf[l4 + 20:l4 + 20] = opt
    n = len(opt)
    buf[l4 + 12] = (buf[l4 + 12] & 0x0F) | (((seg.hlen + n) // 4) << 4)
    _grow(buf, seg, n)


def _grow(buf: bytearray, seg: _L4, n: int) -> None:
    """The TCP header grew by ``n`` bytes (negative: shrank): IP lengths and bookkeeping."""
    l3 = seg.l3
    if seg.ver == 4:
        v = ((buf[l3 + 2] << 8) | buf[l3 + 3]) + n
        buf[l3 + 2], buf[l3 + 3] = v >> 8, v & 0xFF
    else:
        v = ((buf[l3 + 4] << 8) | buf[l3 + 5]) + n
        buf[l3 + 4], buf[l3 + 5] = v >> 8, v & 0xFF
    seg.hlen += n
    seg.end += n


# --------------------------------------------------------------------------- FullNAT

def _set_addrs(buf: bytearray, l3: int, ver: int, src: bytes, dst: bytes) -> None:
    """Write the IP source and destination (checksums are the caller's)."""
    if ver == 4:
        buf[l3 + 12:l3 + 16] = src
        buf[l3 + 16:l3 + 20] = dst
    else:
        buf[l3 + 8:l3 + 24] = src
        buf[l3 + 24:l3 + 40] = dst


def _fullnat_finish(buf: bytearray, l3: int, ver: int, seg: _L4, src: bytes, dst: bytes, sport: int,
                    dport: int, src_mac, dst_mac) -> bytes:
    """Both FullNAT directions end alike: the new addresses and ports, the checksums, the MACs."""
    _set_addrs(buf, l3, ver, src, dst)
    buf[seg.l4:seg.l4 + 4] = struct.pack("!HH", sport, dport)
    seg.finish(buf)
    _set_macs(buf, src_mac, dst_mac)
    return bytes(buf)


def _fullnat_start(frame, name: str, csum, ttl_dec, mtu, icmp_src, icmp_ident):
    """What both FullNAT directions do first: parse, refuse fragments and routed IPv6, copy the
    frame, find the L4 header, then the TTL and MTU checks. Returns (l3, ver, hl, proto, end,
    address size, buffer, segment, stop, result); ``stop`` means return ``result`` (an ICMP
    error to send back, or None: dropped)."""
    l3, et = _l2(frame)
    ver, hl, proto, end, frag, mf, routed = _ip(frame, l3, et)
    if frag or mf:
        raise XmitError(f"{name}: an IP fragment (the director reassembles first)")
    if routed:
        raise XmitError(f"{name}: IPv6 routing header with segments left")
    buf = _frame_start(frame, l3, end)
    seg = _L4(buf, l3, ver, hl, proto, end, csum, name)
    stop, res = _ttl_mtu(frame, buf, l3, ver, hl, proto, end, 0, ttl_dec, mtu, icmp_src,
                         icmp_ident, forwarded=bool(ttl_dec))
    return l3, ver, hl, proto, end, (4 if ver == 4 else 16), buf, seg, stop, res


def fullnat_request(frame, lip, lport: int, rs_ip, rs_port: int, *, seq_delta: int = 0,
                    toa: ToaVariant | None = None, toa_on: bool = False, remove_ts: bool = True,
                    ttl_dec: int = 0, src_mac=None, dst_mac=None, toa_full: str = "skip",
                    strip_client_toa: bool = False, ack_delta: int = 0,
                    mtu: int | None = None, csum: str = "auto", icmp_src=None,
                    icmp_ident: int = 0, toa_port_byteorder: str = "network"):
    """FullNAT hop 2 (D->R), SEMANTICS §1.4, §3, §4:

    * source CIP:cport -> ``lip``:``lport``, destination VIP:vport -> ``rs_ip``:``rs_port``;
      TTL - ``ttl_dec`` (0 for Alibaba LVS and DPVS); IP ID, TOS, DF unchanged;
    * TCP seq + ``seq_delta`` (D1) on every segment; ack and SACK edges - ``ack_delta`` (D2,
      SYN proxy only);
    * in a SYN (without ACK) with ``remove_ts``: the timestamp option becomes 10 NOPs;
    * ``strip_client_toa``: options of the TOA kind sent by the client become NOPs first
      (DPVS's fix against forged TOA);
    * ``toa_on`` with a ``toa`` variant: the option (client port and address from the packet)
      goes right after the 20-byte header, data offset and IP length grow. When the header has
      no room (``60 - doff*4 < len``) or the packet is longer than ``mtu - len``:
      ``toa_full="skip"`` (Alibaba LVS) sends it without TOA; ``"prune"`` (DPVS) prunes the
      options (:func:`prune_options`) and retries once if that freed at least ``len`` bytes.
    * ``toa_port_byteorder="host"``: the TOA's port byte-swapped (a deliberate fault, see
      :func:`toa_option`).

    UDP is translated (addresses, ports) without TOA. The result's ``.toa`` tells the outcome.
    A DF packet longer than ``mtu`` gets frag-needed as in :func:`nat_request` (checked before
    any option is added)."""
    if toa_full not in ("skip", "prune"):
        raise ValueError(f"toa_full must be 'skip' or 'prune', not {toa_full!r}")
    l3, ver, hl, proto, end, size, buf, seg, stop, res = _fullnat_start(
        frame, "fullnat_request", csum, ttl_dec, mtu, icmp_src, icmp_ident)
    if stop:
        return res
    la, ra = _addr(lip, size), _addr(rs_ip, size)
    l4 = seg.l4
    status = "off"
    if proto == TCP:
        flags = buf[l4 + 13]
        if remove_ts and flags & SYN and not flags & ACK:
            remove_timestamp(buf, l4)
        if strip_client_toa and toa is not None:
            _nop_kind(buf, l4, toa.kind)
        if toa_on and toa is not None:
            caddr = bytes(buf[l3 + 12:l3 + 16]) if ver == 4 else bytes(buf[l3 + 8:l3 + 24])
            opt = toa_option(toa, caddr, (buf[l4] << 8) | buf[l4 + 1], toa_port_byteorder)
            status = _add_toa(buf, seg, opt, mtu, toa_full, bool(flags & SYN), toa.kind)
        if seq_delta:
            _add32(buf, l4 + 4, seq_delta)
        if ack_delta:
            _add32(buf, l4 + 8, -ack_delta)
            _adjust_sack(buf, l4, ack_delta)
    out = FullNatFrame(_fullnat_finish(buf, l3, ver, seg, la, ra, lport, rs_port, src_mac, dst_mac))
    out.toa = status
    return out


def _toa_error(buf: bytearray, seg: _L4, n: int, mtu: int | None) -> str | None:
    if mtu is not None and seg.end - seg.l3 > mtu - n:
        return "mtu"
    if 60 - seg.hlen < n:
        return "room"
    return None


def _add_toa(buf: bytearray, seg: _L4, opt: bytes, mtu, toa_full: str, syn: bool,
             kind: int) -> str:
    n = len(opt)
    err = _toa_error(buf, seg, n, mtu)
    if err is None:
        _insert_option(buf, seg, opt)
        return "inserted"
    if toa_full == "skip":
        return "skipped-" + err
    l4 = seg.l4
    old = bytes(buf[l4 + 20:l4 + seg.hlen])
    new, freed = prune_options(old, n, syn, kind)
    if new != old:
        buf[l4 + 20:l4 + seg.hlen] = new
        if freed:
            buf[l4 + 12] = (buf[l4 + 12] & 0x0F) | (((seg.hlen - freed) // 4) << 4)
            _grow(buf, seg, -freed)
    if freed < n:
        return "failed-" + err
    err = _toa_error(buf, seg, n, mtu)
    if err is not None:
        return "failed-" + err
    _insert_option(buf, seg, opt)
    return "pruned"


def fullnat_reply(frame, vip, vport: int, cip, cport: int, *, seq_delta: int = 0,
                  mss_reduce: int = 0, ttl_dec: int = 0, src_mac=None, dst_mac=None,
                  seq_add: int = 0, mtu: int | None = None, csum: str = "auto",
                  icmp_src=None, icmp_ident: int = 0):
    """FullNAT hop 4 (D->C): source RIP:rport -> ``vip``:``vport``, destination LIP:lport ->
    ``cip``:``cport``; TCP ack - ``seq_delta`` (D1) and the edges of the first SACK option
    too, on every segment as DPVS does (ACK flag or not); seq + ``seq_add`` (D2, SYN proxy
    only); in a SYN-ACK the MSS option lowered by ``mss_reduce`` (8 for an IPv4 TOA, 20 for
    IPv6; 0: no adjustment); TTL - ``ttl_dec``; checksums (SEMANTICS §1.4)."""
    if ttl_dec and icmp_src is None:
        icmp_src = _NO_ICMP
    l3, ver, hl, proto, end, size, buf, seg, stop, res = _fullnat_start(
        frame, "fullnat_reply", csum, ttl_dec, mtu, icmp_src, icmp_ident)
    if stop:
        return res
    va, ca = _addr(vip, size), _addr(cip, size)
    l4 = seg.l4
    if proto == TCP:
        flags = buf[l4 + 13]
        if mss_reduce and flags & SYN and flags & ACK:
            _adjust_mss(buf, l4, mss_reduce)
        if seq_add:
            _add32(buf, l4 + 4, seq_add)
        if seq_delta:
            _add32(buf, l4 + 8, -seq_delta)
            _adjust_sack(buf, l4, seq_delta)
    return _fullnat_finish(buf, l3, ver, seg, va, ca, vport, cport, src_mac, dst_mac)


# --------------------------------------------------------------------------- ICMP translation

def icmp_rewrite(frame, *, outer_src=None, outer_dst=None, inner_src=None, inner_dst=None,
                 inner_sport: int | None = None, inner_dport: int | None = None,
                 inner_seq_sub: int = 0, ttl_dec: int = 0, src_mac=None, dst_mac=None):
    """Rewrite an ICMP / ICMPv6 error about a forwarded packet (SEMANTICS §6): outer addresses,
    the embedded packet's addresses and TCP/UDP ports, the embedded TCP seq minus
    ``inner_seq_sub``; outer TTL - ``ttl_dec``; the outer IPv4, embedded IPv4 header and ICMP
    checksums are recomputed, the embedded L4 checksum is left as it was (as IPVS and DPVS
    do). ``None`` leaves a field unchanged."""
    l3, et = _l2(frame)
    ver, hl, proto, end, frag, mf, routed = _ip(frame, l3, et)
    if frag or mf:
        raise XmitError("icmp_rewrite: an IP fragment")
    want = ICMP if ver == 4 else ICMP6
    if proto != want:
        raise XmitError(f"icmp_rewrite: IP protocol {proto} is not {'ICMP' if ver == 4 else 'ICMPv6'}")
    buf = _frame_start(frame, l3, end)
    size = 4 if ver == 4 else 16
    l4 = l3 + hl
    n = len(buf)
    if n < l4 + 8:
        raise XmitError("frame ends inside the ICMP header")
    typ = buf[l4]
    if (ver == 4 and typ not in _IPVS_ICMP4) or (ver == 6 and typ >= 128):
        raise XmitError(f"icmp_rewrite: ICMP type {typ} is not an error IPVS relates to a "
                        "connection")
    complete = n >= end
    old_icmp = None if complete else bytes(buf[l4:l4 + 8])
    # embedded packet
    i3 = l4 + 8
    if n < i3 + 1:
        raise XmitError("ICMP error without an embedded packet")
    iv = buf[i3] >> 4
    if iv != ver:
        raise XmitError(f"ICMP error embeds an IPv{iv} packet in IPv{ver}")
    if ver == 4:
        ihl = (buf[i3] & 15) * 4
        if ihl < 20 or n < i3 + ihl:
            raise XmitError("the embedded IPv4 header is cut")
        iproto = buf[i3 + 9]
        ifrag = ((buf[i3 + 6] << 8) | buf[i3 + 7]) & 0x1FFF
        isrc, idst = i3 + 12, i3 + 16
    else:
        if n < i3 + 40:
            raise XmitError("the embedded IPv6 header is cut")
        iproto, o, ifrag = buf[i3 + 6], i3 + 40, 0
        while iproto in _V6_EXT or iproto == 44:
            if n < o + 8:
                break
            if iproto == 44:
                ifrag = ((buf[o + 2] << 8) | buf[o + 3]) & 0xFFF8
                iproto, o = buf[o], o + 8
            else:
                iproto, o = buf[o], o + 8 + buf[o + 1] * 8
        ihl = o - i3
        isrc, idst = i3 + 8, i3 + 24
    il4 = i3 + ihl
    # the ICMP body bytes that change (for the incremental path): embedded header + 8 bytes
    span_end = min(n, il4 + 8)
    old_span = None if complete else bytes(buf[i3:span_end])
    old_pseudo = None
    if not complete and ver == 6:
        old_pseudo = int.from_bytes(buf[l3 + 8:l3 + 40], "big")
    if outer_src is not None:
        o = l3 + (12 if ver == 4 else 8)
        buf[o:o + size] = _addr(outer_src, size)
    if outer_dst is not None:
        o = l3 + (16 if ver == 4 else 24)
        buf[o:o + size] = _addr(outer_dst, size)
    if inner_src is not None:
        buf[isrc:isrc + size] = _addr(inner_src, size)
    if inner_dst is not None:
        buf[idst:idst + size] = _addr(inner_dst, size)
    if iproto in (TCP, UDP) and not ifrag:
        if inner_sport is not None and n >= il4 + 2:
            buf[il4:il4 + 2] = struct.pack("!H", inner_sport)
        if inner_dport is not None and n >= il4 + 4:
            buf[il4 + 2:il4 + 4] = struct.pack("!H", inner_dport)
        if iproto == TCP and inner_seq_sub and n >= il4 + 8:
            _add32(buf, il4 + 4, -inner_seq_sub)
    if ver == 4:
        _ip4_check(buf, i3, ihl)
    if ttl_dec:
        t = l3 + (8 if ver == 4 else 7)
        if buf[t] <= ttl_dec:
            return None                               # no ICMP about an ICMP error
        buf[t] -= ttl_dec
    if ver == 4:
        _ip4_check(buf, l3, hl)
    # ICMP checksum
    if complete:
        buf[l4 + 2] = buf[l4 + 3] = 0
        body = buf[l4:end]
        if ver == 4:
            c = checksum_field(checksum_residue(body))
        else:
            c = checksum_field((int.from_bytes(buf[l3 + 8:l3 + 40], "big") + (end - l4) + ICMP6
                        + checksum_residue(body)) % 0xFFFF)
    else:
        oldc = (old_icmp[2] << 8) | old_icmp[3]
        ro = checksum_residue(old_icmp[:2] + b"\0\0" + old_icmp[4:]) + checksum_residue(old_span)
        rn = checksum_residue(bytes(buf[l4:l4 + 2]) + b"\0\0" + bytes(buf[l4 + 4:l4 + 8])) \
            + checksum_residue(bytes(buf[i3:span_end]))
        if ver == 6:
            ro += old_pseudo
            rn += int.from_bytes(buf[l3 + 8:l3 + 40], "big")
        c = checksum_field(((0xFFFF - oldc) - ro + rn) % 0xFFFF)
    buf[l4 + 2], buf[l4 + 3] = c >> 8, c & 0xFF
    _set_macs(buf, src_mac, dst_mac)
    return bytes(buf)


def nat_icmp_to_rs(frame, rs_ip, rs_port: int | None, *, ttl_dec: int = 1, src_mac=None,
                   dst_mac=None):
    """NAT, an ICMP error from the client side about a D->C reply (embedded VIP:vport ->
    CIP:cport): outer destination VIP -> RIP, embedded source VIP:vport -> RIP:rport; the
    originator (outer source) is kept; sent like a NAT packet (``ip_vs_nat_icmp``)."""
    return icmp_rewrite(frame, outer_dst=rs_ip, inner_src=rs_ip, inner_sport=rs_port or None,
                        ttl_dec=ttl_dec, src_mac=src_mac, dst_mac=dst_mac)


def nat_icmp_to_client(frame, vip, vport: int | None, *, ttl_dec: int = 1, src_mac=None,
                       dst_mac=None):
    """NAT, an ICMP error from the real-server side about a D->R packet (embedded CIP:cport ->
    RIP:rport): outer source (R or a router) -> VIP, embedded destination -> VIP:vport
    (``handle_response_icmp``)."""
    return icmp_rewrite(frame, outer_src=vip, inner_dst=vip, inner_dport=vport or None,
                        ttl_dec=ttl_dec, src_mac=src_mac, dst_mac=dst_mac)


def fullnat_icmp_to_rs(frame, lip, lport: int, rs_ip, rs_port: int, *, seq_sub: int = 0,
                       ttl_dec: int = 0, src_mac=None, dst_mac=None):
    """FullNAT, an ICMP error from the client side about a D->C reply (embedded VIP:vport ->
    CIP:cport): outer source -> LIP, outer destination -> RIP; embedded VIP:vport -> RIP:rport,
    CIP:cport -> LIP:lport; embedded seq - ``seq_sub`` (the SYN-proxy delta D2, 0 without)."""
    return icmp_rewrite(frame, outer_src=lip, outer_dst=rs_ip, inner_src=rs_ip, inner_dst=lip,
                        inner_sport=rs_port, inner_dport=lport, inner_seq_sub=seq_sub,
                        ttl_dec=ttl_dec, src_mac=src_mac, dst_mac=dst_mac)


def fullnat_icmp_to_client(frame, vip, vport: int, cip, cport: int, *, seq_delta: int = 0,
                           ttl_dec: int = 0, src_mac=None, dst_mac=None):
    """FullNAT, an ICMP error from the real-server side about a D->R packet (embedded
    LIP:lport -> RIP:rport): outer source -> VIP, outer destination -> CIP; embedded
    LIP:lport -> CIP:cport, RIP:rport -> VIP:vport; embedded seq - ``seq_delta`` (D1), so it
    matches what the client sent."""
    return icmp_rewrite(frame, outer_src=vip, outer_dst=cip, inner_src=cip, inner_dst=vip,
                        inner_sport=cport, inner_dport=vport, inner_seq_sub=seq_delta,
                        ttl_dec=ttl_dec, src_mac=src_mac, dst_mac=dst_mac)
