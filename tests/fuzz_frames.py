"""Hypothesis strategies for the decoder fuzz tests (tests/test_fuzz.py).

A frame is built with struct, layer by layer (link header, VLAN tags, IPv4/IPv6 with
extension headers, TCP/UDP/ICMP, GRE/GUE/IPIP with an inner packet, ARP), with every field
value drawn.  Lies are explicit: each frame draws a small set of *lie sites* (``LIE_SITES``:
``ip_len``, ``tcp_doff``, ``ext_len`` ...) and only the fields at those sites take a dishonest
value (a little off, or anything).  The shrinker removes lies it does not need, so a failure
shrinks to the one field that matters.  Every frame ends in random tail bytes.  The ``snaplen``
site (not a lie) keeps only the frame's start and its wire length; a ``cut`` lie truncates it
and the record claims it is whole; a ``wirelen`` lie makes the record's wire length differ
from what was captured (longer, or shorter: a lying record).  Cut points prefer header
boundaries (``Pkt.marks``), where a decoder that reads past the captured bytes shows it.
Packets may carry zero "bulk" up to their length fields' limits (65535-byte IP packets).

Also here: byte-exact capture builders (``pcap_bytes`` lets a record's wire length lie, which
the writer refuses) and the table normaliser used to compare two decodes.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from hypothesis import strategies as st

from lvs_inspect.capture import read_table
from lvs_inspect.capture.schema import COLUMNS
from lvs_inspect.capture.table import ADDRESS_COLUMNS
from lvs_inspect.capture.writer import PcapngWriter
from packets import csum16  # noqa: E402  (the one Internet checksum of the tests)


@st.composite
def branch(draw, *options):
    """One of ``options`` (strategies or plain values), each equally likely; shrinks towards the
    first.  (``st.one_of`` is no use here: ``one_of(just(x), integers())`` almost never gives x.)"""
    opt = options[draw(st.sampled_from(range(len(options))))]
    return draw(opt) if isinstance(opt, st.SearchStrategy) else opt


U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U128 = st.integers(0, (1 << 128) - 1)
PORT = branch(st.sampled_from((80, 443, 53, 6080)), U16)
TAIL = st.binary(max_size=48)

SUPPORTED_LINKTYPES = (1, 101, 113, 228, 229, 276, 0)   # the link types frames are built for
DECODED_LINKTYPES = SUPPORTED_LINKTYPES + (108, 12, 14)  # also decoded: OpenBSD loopback, BSD raw IP
UNSUPPORTED_LINKTYPE = 147          # LINKTYPE_USER0
MAX_DEPTH = 2                       # tunnels and ICMP errors nest at most this deep
MAX_EXT_UNITS = 40                  # IPv6 extension header length field (8-byte units - 1) at most
MAX_BULK = 0xFFFF                   # zero bytes that may lengthen a packet
TS0 = 1_700_000_000_000_000_000

LIE_SITES = (
    "snaplen",                        # not a lie: the capture kept only the frame's start
    "cut", "wirelen",                                             # the record
    "etype", "sll_alen", "null_family", "payload",                # link layer
    "arp",
    "ip_ver", "ihl", "ip_len", "ip_csum", "ip_frag",              # IPv4
    "v6_plen", "ext_len", "ext_frag",                             # IPv6
    "tcp_doff", "tcp_opt", "udp_len", "udp_csum",                 # transport
    "gre_flags", "gre_proto", "gue_hlen", "gue_cbit", "gue_proto", "inner_ver",   # tunnels
)


@dataclass(frozen=True)
class Frame:
    linktype: int
    data: bytes
    wirelen: int
    rest: bytes = field(default=b"", compare=False)   # what a cut removed (a neighbour test's junk)
    marks: tuple = field(default=(), compare=False)   # header boundaries in data + rest

    def __repr__(self) -> str:     # what hypothesis prints for a falsifying example
        return f"Frame(linktype={self.linktype}, data={hexbytes(self.data)}, wirelen={self.wirelen})"

    def _repr_pretty_(self, p, cycle) -> None:    # hypothesis' printer for st.data() draws
        p.text(repr(self))


def hexbytes(b: bytes) -> str:
    """Python source for ``b``: hex, with a long run of trailing zero bytes written as bytes(n)."""
    body = b.rstrip(b"\0")
    zeros = len(b) - len(body)
    if zeros < 16:
        body, zeros = b, 0
    text = f"bytes.fromhex({body.hex()!r})"
    return f"{text} + bytes({zeros})" if zeros else text


class Pkt(bytes):
    """Bytes that remember where their headers start and end (``marks``): cut points there
    are where a decoder is most likely to read past the end of a frame."""

    marks: tuple[int, ...] = ()


def cat(*parts: bytes) -> Pkt:
    """Concatenate, marking every part boundary and keeping the parts' own marks."""
    out = Pkt(b"".join(parts))
    marks, pos = {0}, 0
    for part in parts:
        marks.update(pos + m for m in getattr(part, "marks", ()))
        pos += len(part)
        marks.add(pos)
    out.marks = tuple(sorted(marks))
    return out


def head(p: bytes, n: int) -> Pkt:
    """The first ``n`` bytes, keeping the marks that fall inside."""
    out = Pkt(p[:n])
    out.marks = tuple(m for m in getattr(p, "marks", ()) if m <= n)
    return out


@st.composite
def cut_point(draw, p: bytes) -> int:
    """Where to cut ``p``: near one of its header boundaries (mostly), or anywhere."""
    marks = getattr(p, "marks", ()) or (0,)
    near = branch(st.just(0), st.integers(-2, 8))
    k = draw(branch(st.tuples(st.sampled_from(marks), near).map(sum), st.integers(0, len(p))))
    return min(max(k, 0), len(p))


def _clip(v: int, bits: int) -> int:
    return min(max(v, 0), (1 << bits) - 1)


def pick(draw, lies: frozenset, site: str, honest, lie: st.SearchStrategy):
    """The honest value, or a drawn one when ``site`` is one of this frame's lies."""
    return draw(lie) if site in lies else honest


def lying_len(true: int, bits: int = 16) -> st.SearchStrategy[int]:
    """A dishonest length field: a little off, or anything."""
    return branch(st.integers(-16, 16).map(lambda d: _clip(true + d, bits)),
                     st.integers(0, (1 << bits) - 1))


@st.composite
def bulk(draw, room: int) -> bytes:
    """Zero bytes that make a packet long (up to ``room``, the most its length fields allow):
    big packets are honest, and a capture usually keeps only their start (snaplen)."""
    room = min(room, MAX_BULK)
    if room <= 0:
        return b""
    how = draw(st.sampled_from(("none", "none", "none", "some", "all")))
    n = 0 if how == "none" else room if how == "all" else draw(st.integers(0, room))
    return b"\0" * n


# ---- transport ---------------------------------------------------------------------------

_TOA_KINDS = (254, 253, 200)


@st.composite
def tcp_option(draw, lies: frozenset) -> bytes:
    kinds = ("nop", "mss", "ws", "sackok", "sack", "ts", "tfo", "mptcp", "toa4", "toa6", "toa7", "eol")
    kind = draw(st.sampled_from(kinds + (("lying",) if "tcp_opt" in lies else ())))
    if kind == "eol":
        return b"\x00"
    if kind == "nop":
        return b"\x01"
    if kind == "mss":
        return struct.pack("!BBH", 2, 4, draw(U16))
    if kind == "ws":
        return struct.pack("!BBB", 3, 3, draw(U8))
    if kind == "sackok":
        return b"\x04\x02"
    if kind == "sack":
        n = draw(st.integers(1, 4))
        return struct.pack("!BB", 5, 2 + 8 * n) + draw(st.binary(min_size=8 * n, max_size=8 * n))
    if kind == "ts":
        return struct.pack("!BBII", 8, 10, draw(U32), draw(U32))
    if kind in ("tfo", "mptcp"):
        body = draw(st.binary(max_size=16))
        return struct.pack("!BB", 34 if kind == "tfo" else 30, 2 + len(body)) + body
    if kind == "toa4":
        return struct.pack("!BBHI", draw(st.sampled_from(_TOA_KINDS)), 8, draw(U16), draw(U32))
    if kind == "toa6":
        return (struct.pack("!BBH", draw(st.sampled_from(_TOA_KINDS)), 20, draw(U16))
                + draw(U128).to_bytes(16, "big"))
    if kind == "toa7":
        return struct.pack("!BBBI", draw(st.sampled_from(_TOA_KINDS)), 7, draw(U8), draw(U32))
    # a lying option: any kind, any length byte (0, 1, past the header ...), any body
    return struct.pack("!BB", draw(U8), draw(U8)) + draw(st.binary(max_size=12))


@st.composite
def tcp_segment(draw, lies: frozenset, room: int = 0) -> bytes:
    opts = b""
    for opt in draw(st.lists(tcp_option(lies), max_size=6)):
        if len(opts) + len(opt) <= 40:      # whole options only: a cut one would be a lie
            opts += opt
    # pad with EOL or NOP (a lying option kind when options lie)
    fill = draw(st.sampled_from((b"\x00", b"\x01") + ((b"\xfe",) if "tcp_opt" in lies else ())))
    opts += fill * (-len(opts) % 4)
    doff = pick(draw, lies, "tcp_doff", 5 + len(opts) // 4, st.integers(0, 15))
    flags = draw(st.integers(0, 0x1FF))
    hdr = struct.pack("!HHIIBBHHH", draw(PORT), draw(PORT), draw(U32), draw(U32),
                      (doff << 4) | (flags >> 8), flags & 0xFF, draw(U16), draw(U16), draw(U16))
    seg = cat(hdr, opts, draw(st.binary(max_size=40)))
    return cat(seg, draw(bulk(room - len(seg))))


@st.composite
def udp_datagram(draw, lies: frozenset, depth: int, room: int = 0) -> bytes:
    sport = draw(PORT)
    dport = draw(PORT)
    if dport == 6080 and depth >= MAX_DEPTH:
        dport = 6081                        # the GUE port would need a GUE header
    if dport == 6080:
        payload = draw(gue_payload(lies, depth))
    else:
        payload = draw(st.binary(max_size=40))
        payload += draw(bulk(room - 8 - len(payload)))
    ulen = pick(draw, lies, "udp_len", 8 + len(payload), lying_len(8 + len(payload)))
    csum = pick(draw, lies, "udp_csum", 0, U16)
    return cat(struct.pack("!HHHH", sport, dport, ulen, csum), payload)


@st.composite
def gue_payload(draw, lies: frozenset, depth: int) -> bytes:
    """A GUE header: variant 0 (with extension words) or variant 1 (the bare inner IP header)."""
    ver = draw(st.sampled_from((4, 6)))
    inner = draw(ip_packet(ver, lies, depth + 1))
    if draw(st.booleans()):
        return inner                                                   # variant 1
    words = draw(st.integers(0, 3))
    hlen = pick(draw, lies, "gue_hlen", words, st.integers(0, 31))
    cbit = pick(draw, lies, "gue_cbit", 0, st.just(1))
    proto = pick(draw, lies, "gue_proto", 4 if ver == 4 else 41, U8)
    hdr = struct.pack("!BBH", (cbit << 5) | hlen, proto, draw(U16))
    return cat(hdr, draw(st.binary(min_size=4 * words, max_size=4 * words)), inner)


@st.composite
def gre_packet(draw, lies: frozenset, depth: int) -> bytes:
    c, k, s = draw(st.booleans()), draw(st.booleans()), draw(st.booleans())
    flags = pick(draw, lies, "gre_flags", (c << 15) | (k << 13) | (s << 12), U16)   # reserved bits, version
    ver = draw(st.sampled_from((4, 6)))
    proto = pick(draw, lies, "gre_proto", 0x0800 if ver == 4 else 0x86DD,
                 branch(st.sampled_from((0x0800, 0x86DD, 0x6558)), U16))
    extra = 4 * (c + k + s)
    return cat(struct.pack("!HH", flags, proto), draw(st.binary(min_size=extra, max_size=extra)),
               draw(ip_packet(ver, lies, depth + 1)))


ICMP4_TYPES = (3, 11, 0, 8, 4, 5, 12)
ICMP6_TYPES = (1, 2, 3, 4, 128, 129, 135)


@st.composite
def icmp_message(draw, lies: frozenset, proto: int, depth: int) -> bytes:
    typ = draw(branch(st.sampled_from(ICMP4_TYPES if proto == 1 else ICMP6_TYPES), U8))
    code = draw(branch(st.just(4), U8))
    rest = draw(st.binary(min_size=4, max_size=4))
    if depth < MAX_DEPTH and draw(st.booleans()):
        body = draw(ip_packet(draw(st.sampled_from((4, 6))), lies, depth + 1))
        body = head(body, draw(cut_point(body)))                        # ICMP quotes a prefix
    else:
        body = draw(st.binary(max_size=40))
    return cat(struct.pack("!BBH", typ, code, draw(U16)), rest, body)


@st.composite
def l4_payload(draw, lies: frozenset, proto: int, depth: int, room: int = 0) -> bytes:
    """The IP payload for ``proto``; ``room``: how long it may grow (0: no bulk)."""
    if proto == 6:
        return draw(tcp_segment(lies, room))
    if proto == 17:
        return draw(udp_datagram(lies, depth, room))
    if proto in (1, 58):
        return draw(icmp_message(lies, proto, depth))
    if proto == 47 and depth < MAX_DEPTH:
        return draw(gre_packet(lies, depth))
    if proto in (4, 41) and depth < MAX_DEPTH:
        ver = 4 if proto == 4 else 6
        ver = pick(draw, lies, "inner_ver", ver, st.just(10 - ver))
        return draw(ip_packet(ver, lies, depth + 1))
    data = draw(st.binary(max_size=40))
    return cat(data, draw(bulk(room - len(data))))


# ---- network -------------------------------------------------------------------------------

IPV6_EXT_TYPES = (0, 60, 43, 44, 51, 135)


def _protos(ver: int, depth: int) -> st.SearchStrategy[int]:
    """Protocols an honest header may announce: the ones built here, or any other (an IPv6
    extension header type or, at the deepest level, a tunnel would need its header)."""
    common = (6, 17, 1 if ver == 4 else 58) + ((47, 4, 41) if depth < MAX_DEPTH else ())
    avoid = set(IPV6_EXT_TYPES if ver == 6 else ()) | ({47, 4, 41} if depth >= MAX_DEPTH else set())
    return branch(st.sampled_from(common), U8.filter(lambda p: p not in avoid))


@st.composite
def ipv4_packet(draw, lies: frozenset, depth: int = 0) -> bytes:
    proto = draw(_protos(4, depth))
    opts = draw(st.binary(max_size=40))
    opts += b"\0" * (-len(opts) % 4)
    ihl_true = 5 + len(opts) // 4
    payload = draw(l4_payload(lies, proto, depth, 0xFFFF - 4 * ihl_true if depth == 0 else 0))
    ihl = pick(draw, lies, "ihl", ihl_true, st.integers(0, 15))
    ver = pick(draw, lies, "ip_ver", 4, st.integers(0, 15))
    total = pick(draw, lies, "ip_len", 4 * ihl_true + len(payload), lying_len(4 * ihl_true + len(payload)))
    frag = pick(draw, lies, "ip_frag", draw(st.sampled_from((0x4000, 0))), branch(st.just(0x2000), U16))
    hdr = bytearray(struct.pack("!BBHHHBBH", (ver << 4) | ihl, draw(U8), total, draw(U16), frag,
                                draw(U8), proto, 0)
                    + draw(U32).to_bytes(4, "big") + draw(U32).to_bytes(4, "big") + opts)
    good = 0xFFFF - csum16(bytes(hdr))
    struct.pack_into("!H", hdr, 10, pick(draw, lies, "ip_csum", good, U16))
    return cat(bytes(hdr[:20]), bytes(hdr[20:]), payload)


@st.composite
def ipv6_ext_chain(draw, lies: frozenset) -> tuple[list[int], list[bytes]]:
    """(types, headers without their next-header byte) of an extension header chain."""
    types = draw(st.lists(st.sampled_from(IPV6_EXT_TYPES), max_size=4))
    out = []
    for t in types:
        if t == 44:    # fragment: reserved, offset << 3 | M, identification
            off = pick(draw, lies, "ext_frag", 0, branch(st.just(1), U16))
            out.append(struct.pack("!BHI", draw(U8), off, draw(U32)))
        elif t == 51:  # AH: length in 4-byte units minus 2
            words = draw(st.integers(1, 4))
            field = pick(draw, lies, "ext_len", words, U8)
            out.append(bytes([field]) + draw(st.binary(min_size=4 * words + 6, max_size=4 * words + 6)))
        else:          # hop-by-hop, routing, destination options, mobility: 8-byte units minus 1
            units = draw(branch(st.integers(0, min(3, MAX_EXT_UNITS)), st.integers(0, MAX_EXT_UNITS)))
            field = pick(draw, lies, "ext_len", units, U8)
            out.append(bytes([field]) + draw(st.binary(min_size=8 * units + 6, max_size=8 * units + 6)))
    return types, out


@st.composite
def ipv6_packet(draw, lies: frozenset, depth: int = 0) -> bytes:
    proto = draw(_protos(6, depth))
    types, chain = draw(ipv6_ext_chain(lies))
    nexts = types[1:] + [proto]
    ext = b"".join(bytes([nh]) + body for nh, body in zip(nexts, chain))
    payload = draw(l4_payload(lies, proto, depth, 0xFFFF - len(ext) if depth == 0 else 0))
    first = types[0] if types else proto
    ver = pick(draw, lies, "ip_ver", 6, st.integers(0, 15))
    plen = pick(draw, lies, "v6_plen", len(ext) + len(payload),
                branch(st.just(0), lying_len(len(ext) + len(payload))))   # 0: jumbogram
    word0 = (ver << 28) | (draw(U8) << 20) | draw(st.integers(0, 0xFFFFF))
    hdr = (struct.pack("!IHBB", word0, plen, first, draw(U8)) + draw(U128).to_bytes(16, "big")
           + draw(U128).to_bytes(16, "big"))
    return cat(hdr, *(bytes([nh]) + body for nh, body in zip(nexts, chain)), payload)


def ip_packet(ver: int, lies: frozenset, depth: int = 0) -> st.SearchStrategy[bytes]:
    if ver == 4:
        return ipv4_packet(lies, depth)
    if ver == 6:
        return ipv6_packet(lies, depth)
    return st.binary(max_size=60)


@st.composite
def arp_body(draw, lies: frozenset) -> bytes:
    hdr = pick(draw, lies, "arp", (1, 0x0800, 6, 4), st.tuples(U16, U16, U8, U8))
    return struct.pack("!HHBBH", *hdr, draw(st.sampled_from((1, 2)))) + draw(st.binary(min_size=20, max_size=20))


# ---- link layer ----------------------------------------------------------------------------

ETYPE = {"ip4": 0x0800, "ip6": 0x86DD, "arp": 0x0806}


@st.composite
def link_frame(draw, linktype: int, lies: frozenset) -> bytes:
    """A whole frame for ``linktype``: link header, network payload, random tail (uncut)."""
    kinds = ("ip4", "ip6", "arp") if linktype in (1, 113, 276) else ("ip4", "ip6")   # ARP needs an ethertype
    kind = pick(draw, lies, "payload", draw(st.sampled_from(kinds)), st.just("other"))
    if linktype == 228 and kind != "other":
        kind = pick(draw, lies, "ip_ver", "ip4", st.sampled_from(("ip4", "ip6")))
    elif linktype == 229 and kind != "other":
        kind = pick(draw, lies, "ip_ver", "ip6", st.sampled_from(("ip4", "ip6")))
    etype = pick(draw, lies, "etype", ETYPE.get(kind, 0x88CC), U16)
    if linktype == 1:
        tags = draw(st.lists(st.tuples(st.sampled_from((0x8100, 0x88A8, 0x9100)), U16), max_size=2))
        hdr = draw(st.binary(min_size=12, max_size=12))
        for tpid, tci in tags:
            hdr += struct.pack("!HH", tpid, tci)
        hdr += struct.pack("!H", etype)
    elif linktype == 113:
        alen = pick(draw, lies, "sll_alen", 6, U16)
        hdr = (struct.pack("!HHH", draw(st.integers(0, 4)), draw(U16), alen)
               + draw(st.binary(min_size=8, max_size=8)) + struct.pack("!H", etype))
    elif linktype == 276:
        alen = pick(draw, lies, "sll_alen", 6, U8)
        hdr = (struct.pack("!HHIHBB", etype, 0, draw(U32), draw(U16), draw(st.integers(0, 4)), alen)
               + draw(st.binary(min_size=8, max_size=8)))
    elif linktype == 0:
        fam = {"ip4": 2, "ip6": draw(st.sampled_from((10, 24, 28, 30)))}.get(kind, 0)
        fam = pick(draw, lies, "null_family", fam, U32)
        hdr = struct.pack(draw(st.sampled_from(("<I", ">I"))), fam)
    else:
        hdr = b""
    if kind == "ip4":
        body = draw(ipv4_packet(lies))
    elif kind == "ip6":
        body = draw(ipv6_packet(lies))
    elif kind == "arp":
        body = draw(arp_body(lies))
    else:
        body = draw(st.binary(max_size=60))
    return cat(hdr, body, draw(TAIL))


@st.composite
def frames_for(draw, linktype: int, max_lies: int = 2, lies: frozenset | None = None) -> Frame:
    """A frame for ``linktype`` with up to ``max_lies`` lie sites (or exactly ``lies``)."""
    if lies is None:
        lies = draw(st.frozensets(st.sampled_from(LIE_SITES), max_size=max_lies))
    data = full = draw(link_frame(linktype, lies))
    whole = len(data)
    if whole > 1500:   # a long packet: mostly captured with a snaplen, as it would be
        data = head(data, draw(branch(st.integers(0, 300), st.just(whole))))
    data = head(data, pick(draw, lies, "snaplen", len(data), cut_point(data)))
    # a "cut" lie truncates the frame and the record claims it is whole
    data = head(data, pick(draw, lies, "cut", len(data), cut_point(data)))
    honest_wire = len(data) if "cut" in lies else whole
    wirelen = pick(draw, lies, "wirelen", honest_wire, branch(
        st.integers(1, 2000).map(lambda d: len(data) + d),       # snaplen cut
        st.integers(0, 0x2_0000).map(lambda d: len(data) + d),   # ... by a lot
        st.integers(0, len(data)),                               # lying: shorter than captured
    ))
    return Frame(linktype, bytes(data), wirelen, bytes(full[len(data):]), full.marks)


def any_frame(linktypes=SUPPORTED_LINKTYPES, max_lies: int = 2) -> st.SearchStrategy[Frame]:
    return st.sampled_from(linktypes).flatmap(lambda lt: frames_for(lt, max_lies))


@st.composite
def random_bytes_frame(draw, linktypes=DECODED_LINKTYPES + (UNSUPPORTED_LINKTYPE,)) -> Frame:
    lt = draw(st.sampled_from(linktypes))
    data = draw(st.binary(max_size=160))
    wirelen = draw(branch(st.just(len(data)), st.integers(0, 0xFFFFFFFF)))
    return Frame(lt, data, wirelen)


# ---- containers -----------------------------------------------------------------------------

def pcap_bytes(frames: list[Frame], linktype: int | None = None,
               stamps: list[tuple[int, int]] | None = None) -> bytes:
    """A classic little-endian ns pcap, byte-exact; record wire lengths are taken as given
    (they may be smaller than the captured length: a lying record).  ``stamps``: (seconds,
    nanoseconds) per record; these are the bytes right behind the previous frame."""
    lt = linktype if linktype is not None else (frames[0].linktype if frames else 1)
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, lt)]
    for i, fr in enumerate(frames):
        assert fr.linktype == lt, "a classic pcap has one link type"
        sec, ns = stamps[i] if stamps else divmod(TS0 + i * 1000, 1_000_000_000)
        out.append(struct.pack("<IIII", sec, ns, len(fr.data), fr.wirelen) + fr.data)
    return b"".join(out)


STAMPS_RANDOM = st.tuples(U32, st.integers(0, 999_999_999))


def stamp_from(b: bytes) -> tuple[int, int]:
    """The record timestamp whose 8 bytes (little-endian seconds, nanoseconds) are ``b``."""
    return struct.unpack("<II", (b + bytes(8))[:8])


def pcapng_bytes(frames: list[Frame]) -> bytes:
    """A pcapng with one interface per link type met (first-use order); wire lengths smaller
    than the captured length are raised to it (the writer refuses them)."""
    buf = io.BytesIO()
    order: list[int] = []
    for fr in frames:
        if fr.linktype not in order:
            order.append(fr.linktype)
    with PcapngWriter(buf, [(f"lt{lt}", lt, 0, 9) for lt in order]) as w:
        for i, fr in enumerate(frames):
            w.write(order.index(fr.linktype), TS0 + i * 1000, fr.data, max(fr.wirelen, len(fr.data)))
    return buf.getvalue()


def read_bytes(data: bytes, **kw):
    """read_table on an in-memory capture (given as stdin)."""
    return read_table(["-"], stdin=io.BytesIO(data), **kw)


# ---- comparing decodes ----------------------------------------------------------------------

ALL_COLUMNS = tuple(c.name for c in COLUMNS)


def table_rows(t, skip=()) -> list[dict]:
    """Every column of every row as plain Python values; address keys become text (IPv6
    keys depend on the order of interning) and each row gets its raw TCP option bytes."""
    cols = {}
    for name in ALL_COLUMNS:
        if name in skip:
            continue
        vals = t[name].tolist()
        if name in ADDRESS_COLUMNS:
            vals = [t.addr_str(k) for k in vals]
        cols[name] = vals
    rows = [dict(zip(cols, vs)) for vs in zip(*cols.values())]
    for i, r in enumerate(rows):
        r["tcp_option_bytes"] = t.tcp_option_bytes(i).hex()
    return rows


def row_diff(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


__all__ = ["Frame", "Pkt", "branch", "cat", "head", "cut_point", "hexbytes", "csum16", "LIE_SITES",
           "STAMPS_RANDOM", "stamp_from", "any_frame", "frames_for", "link_frame", "random_bytes_frame",
           "pcap_bytes", "pcapng_bytes", "read_bytes", "table_rows", "row_diff", "SUPPORTED_LINKTYPES",
           "DECODED_LINKTYPES", "UNSUPPORTED_LINKTYPE"]
