"""Transmit functions of the reference director (lvs_inspect.forwarder.xmit) against
hand-built expected frames (dpkt for the headers it knows, struct for the rest), and every
output through our decoder: IPv4 header and L4 checksums must read OK."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from packets import (  # noqa: E402
    CIP, CIP6, DIP, LIP, MAC_C, MAC_D, RIP, RIP6, VIP, VIP6, a4, a6, csum16, decode, eth, ip4,
    ip6, tcp, udp,
)

from lvs_inspect.capture.schema import Csum, Tun  # noqa: E402
from lvs_inspect.forwarder import xmit as X  # noqa: E402
from lvs_inspect.topology.model import ToaVariant  # noqa: E402

MAC_R = bytes.fromhex("020000000011")
MAC_D2 = bytes.fromhex("020000000022")
LIP6, DIP6 = "2001:db8:2::200", "2001:db8:2::2"
ROUTER = "198.51.100.1"

#: a Linux SYN's options: MSS 1460, SACK-perm, TS, NOP, WS 7
SYN_OPTS = (b"\x02\x04\x05\xb4" + b"\x04\x02" + b"\x08\x0a\x00\x00\x10\x00\x00\x00\x00\x00"
            + b"\x01" + b"\x03\x03\x07")
SYN_OPTS_NO_TS = b"\x02\x04\x05\xb4" + b"\x04\x02" + b"\x01" * 10 + b"\x01" + b"\x03\x03\x07"
ACK, SYN, PSH, FIN, RST = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST


# --------------------------------------------------------------------------- helpers

def decoded(tmp_path, frames, **kw):
    return decode(tmp_path, [bytes(f) for f in frames], **kw).to_pandas()


def assert_checksums_ok(tmp_path, frames, *, udp_none_ok=False, **kw):
    """Every frame decodes, its IPv4 header checksum (if any) and L4 checksum read OK."""
    df = decoded(tmp_path, frames, **kw)
    assert len(df) == len(frames)
    for i, row in df.iterrows():
        assert row["status"] == 0, (i, row["status"])
        if row["ip_ver"] == 4:
            assert row["ip_csum"] == Csum.OK, (i, row["ip_csum"])
        ok = {Csum.OK, Csum.NONE} if udp_none_ok else {Csum.OK}
        assert row["l4_csum"] in ok, (i, row["l4_csum"])
    return df


def eth6(payload, src=MAC_C, dst=MAC_D):
    return eth(payload, etype=0x86DD, src=src, dst=dst)


def ip4_hdr_ok(b: bytes) -> bool:
    hl = (b[0] & 15) * 4
    return csum16(b[:hl]) == 0xFFFF


def fragment(pkt: bytes, field: int) -> bytes:
    """An IPv4 packet with its flags+offset field set (header checksum redone)."""
    b = bytearray(pkt)
    struct.pack_into("!H", b, 6, field)
    struct.pack_into("!H", b, 10, 0)
    struct.pack_into("!H", b, 10, 0xFFFF - csum16(bytes(b[:20])))
    return bytes(b)


def tcp4(src=CIP, dst=VIP, ttl=64, ident=77, df=True, tos=0, **kw):
    return ip4(tcp(**kw), src=src, dst=dst, ttl=ttl, ident=ident, df=df, tos=tos)


def partial_checksum(frame: bytes, l3=14) -> bytes:
    """The frame with its TCP checksum left as the sender's offload would: the folded
    pseudo-header sum (CHECKSUM_PARTIAL)."""
    b = bytearray(frame)
    hl = (b[l3] & 15) * 4
    tot = struct.unpack_from("!H", b, l3 + 2)[0]
    pseudo = bytes(b[l3 + 12:l3 + 20]) + struct.pack("!BBH", 0, 6, tot - hl)
    struct.pack_into("!H", b, l3 + hl + 16, csum16(pseudo))
    return bytes(b)


def icmp4_error(typ, code, rest4: bytes, embedded: bytes, src, dst, ttl=64, tos=0xC0, ident=0,
                df=False):
    """An ICMP error built with struct (independent of the module under test)."""
    icmp = bytearray(struct.pack("!BBH", typ, code, 0) + rest4 + embedded)
    struct.pack_into("!H", icmp, 2, 0xFFFF - csum16(bytes(icmp)))
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(icmp), ident,
                                0x4000 if df else 0, ttl, 1, 0, a4(src), a4(dst)))
    struct.pack_into("!H", hdr, 10, 0xFFFF - csum16(bytes(hdr)))
    return bytes(hdr) + bytes(icmp)


def icmp6_error(typ, code, rest4: bytes, embedded: bytes, src, dst, hlim=64):
    icmp = bytearray(struct.pack("!BBH", typ, code, 0) + rest4 + embedded)
    pseudo = a6(src) + a6(dst) + struct.pack("!IxxxB", len(icmp), 58)
    c = 0xFFFF - csum16(pseudo + bytes(icmp))
    struct.pack_into("!H", icmp, 2, c)
    return struct.pack("!IHBB16s16s", 0x60000000, len(icmp), 58, hlim, a6(src), a6(dst)) + bytes(icmp)


# --------------------------------------------------------------------------- NAT

def test_nat_request_ipv4_tcp_exact(tmp_path):
    inp = eth(tcp4(tos=0x2E << 2 | 1, opts=SYN_OPTS))
    out = X.nat_request(inp, RIP, 8080, src_mac=MAC_D2, dst_mac=MAC_R, ttl_dec=1)
    exp = eth(tcp4(dst=RIP, ttl=63, tos=0x2E << 2 | 1, dport=8080, opts=SYN_OPTS),
              src=MAC_D2, dst=MAC_R)
    assert type(out) is bytes and out == exp
    df = assert_checksums_ok(tmp_path, [inp, out])
    assert df["ip_id"].tolist() == [77, 77] and df["ip_frag"].tolist() == [0x4000, 0x4000]


def test_nat_request_udp_and_ipv6(tmp_path):
    inp = eth(ip4(udp(sport=5353, dport=53, data=b"hello?!")))
    out = X.nat_request(inp, RIP, 5300, src_mac=MAC_D2, dst_mac=MAC_R, ttl_dec=0)
    exp = eth(ip4(udp(sport=5353, dport=5300, data=b"hello?!"), dst=RIP), src=MAC_D2, dst=MAC_R)
    assert out == exp
    inp6 = eth6(ip6(tcp(flags=ACK, data=b"GET / HTTP/1.0\r\n\r\n"), src=CIP6, dst=VIP6, hlim=50))
    out6 = X.nat_request(inp6, RIP6, 8080, src_mac=MAC_D2, dst_mac=MAC_R)
    exp6 = eth6(ip6(tcp(flags=ACK, dport=8080, data=b"GET / HTTP/1.0\r\n\r\n"), src=CIP6,
                    dst=RIP6, hlim=49), src=MAC_D2, dst=MAC_R)
    assert out6 == exp6
    assert_checksums_ok(tmp_path, [out, out6])


def test_nat_reply_ipv4_and_ipv6(tmp_path):
    inp = eth(tcp4(src=RIP, dst=CIP, sport=8080, dport=40000, flags=SYN | ACK, ident=0,
                   opts=SYN_OPTS), src=MAC_R, dst=MAC_D2)
    out = X.nat_reply(inp, VIP, 80, src_mac=MAC_D, dst_mac=MAC_C)
    exp = eth(tcp4(src=VIP, dst=CIP, sport=80, dport=40000, flags=SYN | ACK, ident=0, ttl=63,
                   opts=SYN_OPTS), src=MAC_D, dst=MAC_C)
    assert out == exp
    inp6 = eth6(ip6(tcp(sport=8080, dport=40000, flags=ACK, data=b"x" * 33), src=RIP6, dst=CIP6))
    out6 = X.nat_reply(inp6, VIP6, 80, ttl_dec=1)
    exp6 = eth6(ip6(tcp(sport=80, dport=40000, flags=ACK, data=b"x" * 33), src=VIP6, dst=CIP6,
                    hlim=63))
    assert out6 == exp6
    assert_checksums_ok(tmp_path, [out, out6])


def test_nat_port_zero_keeps_port_and_macs_none_keep_macs():
    inp = eth(tcp4(dport=443))
    out = X.nat_request(inp, RIP, 0, ttl_dec=0)
    assert out == eth(tcp4(dst=RIP, dport=443))
    assert X.nat_request(inp, RIP, None, ttl_dec=0) == out


def test_nat_checksum_recomputed_from_partial_offload(tmp_path):
    good = eth(tcp4(flags=ACK | PSH, data=b"payload bytes, odd length!"))
    part = partial_checksum(good)
    df = decoded(tmp_path, [part])
    assert df["l4_csum"][0] == Csum.PARTIAL
    out = X.nat_request(part, RIP, 8080)
    exp = eth(tcp4(dst=RIP, ttl=63, dport=8080, flags=ACK | PSH,
                   data=b"payload bytes, odd length!"))
    assert out == exp
    # the kernel's incremental update carries the partial value along: wrong on the wire
    inc = X.nat_request(part, RIP, 8080, csum="incremental")
    assert inc != exp and inc[:50] == exp[:50] and inc[52:] == exp[52:]
    assert decoded(tmp_path, [inc], name="i.pcap")["l4_csum"][0] == Csum.BAD
    # incremental on a correct checksum gives the same bytes as the full recomputation
    assert X.nat_request(good, RIP, 8080, csum="incremental") == exp


def test_nat_on_frame_cut_by_snaplen_updates_incrementally():
    full = eth(tcp4(flags=ACK, data=bytes(range(256)) * 4))
    cut = full[:14 + 20 + 20 + 100]
    out = X.nat_request(cut, RIP, 8080)
    exp = eth(tcp4(dst=RIP, ttl=63, dport=8080, flags=ACK, data=bytes(range(256)) * 4))
    assert out == exp[:len(cut)]
    cut6 = eth6(ip6(tcp(flags=ACK, data=b"z" * 999), src=CIP6, dst=VIP6))[:100]
    exp6 = eth6(ip6(tcp(flags=ACK, dport=8080, data=b"z" * 999), src=CIP6, dst=RIP6, hlim=63))
    assert X.nat_request(cut6, RIP6, 8080) == exp6[:100]


def test_nat_udp_without_checksum_keeps_zero(tmp_path):
    u = bytearray(eth(ip4(udp(data=b"abcdef"))))
    u[14 + 20 + 6:14 + 20 + 8] = b"\0\0"
    out = X.nat_request(bytes(u), RIP, 5300, ttl_dec=0)
    assert out[14 + 20 + 6:14 + 20 + 8] == b"\0\0"
    df = assert_checksums_ok(tmp_path, [out], udp_none_ok=True)
    assert df["l4_csum"][0] == Csum.NONE and df["dport"][0] == 5300


def test_nat_padding_dropped_and_vlan_kept(tmp_path):
    inp = eth(tcp4(flags=ACK))
    padded = inp + b"\0" * 6
    assert len(padded) == 60
    assert X.nat_request(padded, RIP, 80) == X.nat_request(inp, RIP, 80)
    tagged = inp[:12] + struct.pack("!HH", 0x8100, 42) + inp[12:]
    out = X.nat_request(tagged, RIP, 8080, src_mac=MAC_D2, dst_mac=MAC_R)
    exp = eth(tcp4(dst=RIP, ttl=63, dport=8080, flags=ACK), src=MAC_D2, dst=MAC_R)
    assert out == exp[:12] + struct.pack("!HH", 0x8100, 42) + exp[12:]
    df = assert_checksums_ok(tmp_path, [out])
    assert df["vlan"][0] == 42


def test_ttl_expiry_answers_time_exceeded_from_the_vip(tmp_path):
    pkt = tcp4(ttl=1, flags=SYN, opts=SYN_OPTS)
    inp = eth(pkt)
    out = X.nat_request(inp, RIP, 8080, icmp_ident=9)
    assert isinstance(out, X.IcmpError) and (out.icmp_type, out.icmp_code) == (11, 0)
    exp = eth(icmp4_error(11, 0, b"\0" * 4, bytes(pkt), VIP, CIP, ident=9), src=MAC_D, dst=MAC_C)
    assert bytes(out) == exp
    # IPv6: hop limit exceeded, ICMPv6 type 3
    p6 = ip6(tcp(flags=SYN), src=CIP6, dst=VIP6, hlim=1)
    out6 = X.dr(eth6(p6), src_mac=MAC_D2, rs_mac=MAC_R)
    assert bytes(out6) == eth6(icmp6_error(3, 0, b"\0" * 4, p6, VIP6, CIP6), src=MAC_D, dst=MAC_C)
    assert_checksums_ok(tmp_path, [out, out6])
    # no decrement: TTL 1 goes through; a reply's expiry needs the director's address
    assert X.nat_request(inp, RIP, 8080, ttl_dec=0)[14 + 8] == 1
    rep = eth(tcp4(src=RIP, dst=CIP, ttl=1, sport=8080, dport=40000, flags=ACK))
    assert X.nat_reply(rep, VIP, 80) is None
    te = X.nat_reply(rep, VIP, 80, icmp_src="192.0.2.2")
    assert te.icmp_type == 11 and te[14 + 12:14 + 16] == a4("192.0.2.2") and te[14 + 16:14 + 20] == a4(RIP)


def test_nat_mtu_frag_needed_embeds_decremented_packet(tmp_path):
    data = bytes(range(256)) * 6                 # 1536 + 40 bytes: over a 1500 MTU
    inp = eth(tcp4(flags=ACK, data=data))
    out = X.nat_request(inp, RIP, 8080, mtu=1500)
    assert isinstance(out, X.IcmpError) and (out.icmp_type, out.icmp_code, out.info) == (3, 4, 1500)
    embedded = bytes(tcp4(flags=ACK, ttl=63, data=data))[:548]   # 576 - 20 - 8
    exp = eth(icmp4_error(3, 4, struct.pack("!HH", 0, 1500), embedded, VIP, CIP),
              src=MAC_D, dst=MAC_C)
    assert bytes(out) == exp and len(out) == 14 + 576
    # not DF: sent whole (the stack fragments it)
    nodf = X.nat_request(eth(tcp4(flags=ACK, data=data, df=False)), RIP, 8080, mtu=1500)
    assert type(nodf) is bytes and len(nodf) == 14 + 20 + 20 + len(data)
    # a reply is forwarded: the MTU check sees the packet as received (TTL not decremented)
    rep = eth(tcp4(src=RIP, dst=CIP, sport=8080, dport=40000, flags=ACK, data=data))
    fn = X.nat_reply(rep, VIP, 80, mtu=1500, icmp_src=DIP)
    assert fn.icmp_type == 3 and fn[14 + 28 + 8] == 64
    assert_checksums_ok(tmp_path, [out, fn])


# --------------------------------------------------------------------------- DR

def test_dr_changes_only_macs_ttl_and_ip_checksum(tmp_path):
    pkt = tcp4(flags=SYN, opts=SYN_OPTS, tos=0x11)
    inp = eth(pkt)
    out = X.dr(inp, src_mac=MAC_D2, rs_mac=MAC_R, ttl_dec=1)
    exp = eth(tcp4(flags=SYN, opts=SYN_OPTS, tos=0x11, ttl=63), src=MAC_D2, dst=MAC_R)
    assert out == exp
    assert out[14 + 20:] == inp[14 + 20:]         # L4 bytes untouched
    p6 = ip6(tcp(flags=ACK, data=b"q"), src=CIP6, dst=VIP6, hlim=64)
    out6 = X.dr(eth6(p6), src_mac=MAC_D2, rs_mac=MAC_R)
    assert out6 == eth6(p6[:7] + b"\x3f" + p6[8:], src=MAC_D2, dst=MAC_R)
    assert X.dr(inp, src_mac=MAC_D2, rs_mac=MAC_R, ttl_dec=0) == eth(pkt, src=MAC_D2, dst=MAC_R)
    assert_checksums_ok(tmp_path, [out, out6])


def test_dr_passes_fragments_and_bad_l4_checksums(tmp_path):
    raw = fragment(bytes(ip4(udp(data=b"a" * 100), df=False)), 0x2000 | 10)   # MF, offset 80
    out = X.dr(eth(raw), src_mac=MAC_D2, rs_mac=MAC_R)
    assert out[14 + 20:] == raw[20:] and out[14 + 8] == 63 and ip4_hdr_ok(out[14:])
    bad = bytearray(eth(tcp4(flags=ACK)))
    bad[14 + 20 + 16] ^= 0xFF
    assert X.dr(bytes(bad), src_mac=MAC_D2, rs_mac=MAC_R)[14 + 20:] == bytes(bad[14 + 20:])


# --------------------------------------------------------------------------- TUN

def outer4(payload: bytes, proto: int, *, tos=0, ttl=63, df=True, ident=0, src=DIP, dst=RIP):
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident,
                              0x4000 if df else 0, ttl, proto, 0, a4(src), a4(dst)))
    struct.pack_into("!H", h, 10, 0xFFFF - csum16(bytes(h)))
    return bytes(h) + payload


def outer6(payload: bytes, nh: int, *, tc=0, hlim=63, src=DIP6, dst=RIP6):
    return struct.pack("!IHBB16s16s", 0x60000000 | tc << 20, len(payload), nh, hlim,
                       a6(src), a6(dst)) + payload


def test_tun_ipip_outer_header_exact(tmp_path):
    inp = eth(tcp4(flags=SYN, opts=SYN_OPTS, tos=0xB7, ident=4321))    # DSCP 45, ECN CE
    out = X.tun(inp, kind="ipip", outer_src=DIP, rs_ip=RIP, src_mac=MAC_D2, dst_mac=MAC_R)
    inner = bytes(tcp4(flags=SYN, opts=SYN_OPTS, tos=0xB7, ident=4321, ttl=63))
    exp = eth(outer4(inner, 4, tos=0xB6, ttl=63, df=True, ident=0), src=MAC_D2, dst=MAC_R)
    assert out == exp
    # inner DF clear: outer DF clear, ID = the counter passed in; ECT(1) copied as is
    inp2 = eth(tcp4(flags=ACK, df=False, tos=0x01, ttl=30))
    out2 = X.tun(inp2, kind="ipip", outer_src=DIP, rs_ip=RIP, ident=0xBEEF)
    exp2 = eth(outer4(bytes(tcp4(flags=ACK, df=False, tos=0x01, ttl=29)), 4, tos=0x01, ttl=29,
                      df=False, ident=0xBEEF))
    assert out2 == exp2
    # pmtu_disc off: DF never copied; no decrement (older kernels): outer TTL = inner TTL
    out3 = X.tun(inp, kind="ipip", outer_src=DIP, rs_ip=RIP, pmtu_disc=False, ident=7, ttl_dec=0)
    exp3 = eth(outer4(bytes(tcp4(flags=SYN, opts=SYN_OPTS, tos=0xB7, ident=4321)), 4,
                      tos=0xB6, ttl=64, df=False, ident=7))
    assert out3 == exp3
    df = assert_checksums_ok(tmp_path, [out, out2, out3])
    assert (df["tun"] == Tun.IPIP).all()
    assert df["out_ttl"].tolist() == [63, 29, 64] and df["ip_ttl"].tolist() == [63, 29, 64]
    assert df["out_tos"].tolist() == [0xB6, 0x01, 0xB6]
    assert df["out_frag"].tolist() == [0x4000, 0, 0] and df["out_id"].tolist() == [0, 0xBEEF, 7]


def test_tun_gue_and_gre_outer_headers_exact(tmp_path):
    inp = eth(tcp4(flags=ACK, data=b"hello"))
    inner = bytes(tcp4(flags=ACK, data=b"hello", ttl=63))
    gue = X.tun(inp, kind="gue", outer_src=DIP, rs_ip=RIP, gue_port=6080, gue_sport=40001)
    udp_ = struct.pack("!HHHH", 40001, 6080, 8 + 4 + len(inner), 0) + b"\x00\x04\x00\x00" + inner
    assert gue == eth(outer4(udp_, 17))
    gre = X.tun(inp, kind="gre", outer_src=DIP, rs_ip=RIP)
    assert gre == eth(outer4(b"\x00\x00\x08\x00" + inner, 47))
    # GRE with the checksum flag: C bit, checksum over GRE header and payload, reserved 0
    grec = X.tun(inp, kind="gre", outer_src=DIP, rs_ip=RIP, csum=True)
    body = bytearray(b"\x80\x00\x08\x00\x00\x00\x00\x00" + inner)
    struct.pack_into("!H", body, 4, 0xFFFF - csum16(bytes(body)))
    assert grec == eth(outer4(bytes(body), 47))
    # GUE with a UDP checksum (tun_flags csum)
    guec = X.tun(inp, kind="gue", outer_src=DIP, rs_ip=RIP, gue_sport=40001, csum=True)
    u = bytearray(udp_)
    ph = a4(DIP) + a4(RIP) + struct.pack("!BBH", 0, 17, len(u))
    struct.pack_into("!H", u, 6, (0xFFFF - csum16(ph + bytes(u))) or 0xFFFF)
    assert guec == eth(outer4(bytes(u), 17))
    # default source port: the flow hash in the local port range, stable per flow
    g1 = X.tun(inp, kind="gue", outer_src=DIP, rs_ip=RIP)
    sport = struct.unpack_from("!H", g1, 14 + 20)[0]
    assert 32768 <= sport < 60999
    assert X.tun(eth(tcp4(flags=ACK, data=b"other")), kind="gue", outer_src=DIP, rs_ip=RIP)[34:36] == g1[34:36]
    df = assert_checksums_ok(tmp_path, [gue, gre, grec, guec, g1])
    assert df["tun"].tolist() == [Tun.GUE, Tun.GRE, Tun.GRE, Tun.GUE, Tun.GUE]
    assert df["out_dport"][0] == 6080 and df["out_sport"][0] == 40001
    assert df["tun_flags"][2] == 0x8000 and df["tun_flags"][0] == 0x0004


def test_tun_ipv6_inner_and_outer(tmp_path):
    p6 = ip6(tcp(flags=ACK, data=b"six"), src=CIP6, dst=VIP6, hlim=64)
    p6 = bytes([0x6B, 0x30]) + p6[2:]            # traffic class 0xB3: DSCP 44, ECN CE
    in6 = eth6(p6)
    dec = p6[:7] + b"\x3f" + p6[8:]
    # IPv6 in IPv4: protocol 41, DF 0 (no DF to copy), ID = counter
    o = X.tun(in6, kind="ipip", outer_src=DIP, rs_ip=RIP, ident=5)
    assert o == eth(outer4(dec, 41, tos=0xB2, df=False, ident=5))
    # IPv4 in IPv6: next header 4, traffic class from the inner TOS, flow label 0
    in4 = eth(tcp4(flags=ACK, tos=0x28))
    o2 = X.tun(in4, kind="ipip", outer_src=DIP6, rs_ip=RIP6)
    assert o2 == eth6(outer6(bytes(tcp4(flags=ACK, tos=0x28, ttl=63)), 4, tc=0x28))
    # IPv6 in IPv6 over GRE and GUE
    o3 = X.tun(in6, kind="gre", outer_src=DIP6, rs_ip=RIP6)
    assert o3 == eth6(outer6(b"\x00\x00\x86\xdd" + dec, 47, tc=0xB2))
    o4 = X.tun(in6, kind="gue", outer_src=DIP6, rs_ip=RIP6, gue_sport=33333, gue_port=5555)
    u = struct.pack("!HHHH", 33333, 5555, 12 + len(dec), 0) + b"\x00\x29\x00\x00" + dec
    assert o4 == eth6(outer6(u, 17, tc=0xB2))
    df = assert_checksums_ok(tmp_path, [o, o2, o3, o4], udp_none_ok=True, gue_ports=(5555,))
    assert df["tun"].tolist() == [Tun.IPIP, Tun.IPIP, Tun.GRE, Tun.GUE]
    assert df["out_ver"].tolist() == [4, 6, 6, 6]


@pytest.mark.parametrize("kind,csum,overhead", [("ipip", False, 20), ("gre", False, 24),
                                                ("gre", True, 28), ("gue", False, 32)])
def test_tun_frag_needed_with_each_overhead(tmp_path, kind, csum, overhead):
    assert X.tun_overhead(kind, 4, csum) == overhead
    mtu = 1500
    room = mtu - overhead
    fits = eth(tcp4(flags=ACK, data=b"d" * (room - 40)))
    out = X.tun(fits, kind=kind, csum=csum, outer_src=DIP, rs_ip=RIP, mtu=mtu)
    assert type(out) is bytes and len(out) == 14 + mtu
    over = eth(tcp4(flags=ACK, data=b"d" * (room - 39)))
    err = X.tun(over, kind=kind, csum=csum, outer_src=DIP, rs_ip=RIP, mtu=mtu)
    assert isinstance(err, X.IcmpError) and (err.icmp_type, err.icmp_code, err.info) == (3, 4, room)
    embedded = bytes(tcp4(flags=ACK, ttl=63, data=b"d" * (room - 39)))[:548]
    assert bytes(err) == eth(icmp4_error(3, 4, struct.pack("!HH", 0, room), embedded, VIP, CIP),
                             src=MAC_D, dst=MAC_C)
    df = assert_checksums_ok(tmp_path, [out, err])
    assert df["icmp_mtu"][1] == room and df["icmp_type"][1] == 3 and df["icmp_code"][1] == 4
    # without DF, or with pmtu_disc off, the packet is encapsulated (and fragmented later)
    nodf = X.tun(eth(tcp4(flags=ACK, df=False, data=b"d" * (room - 39))), kind=kind, csum=csum,
                 outer_src=DIP, rs_ip=RIP, mtu=mtu)
    assert type(nodf) is bytes and len(nodf) == 14 + mtu + 1
    off = X.tun(over, kind=kind, csum=csum, outer_src=DIP, rs_ip=RIP, mtu=mtu, pmtu_disc=False)
    assert type(off) is bytes and off[14 + 6] & 0x40 == 0
    # an IPv6 inner packet gets packet too big with the same MTU
    p6 = ip6(tcp(flags=ACK, data=b"s" * (room - 60 + 1)), src=CIP6, dst=VIP6)
    ptb = X.tun(eth6(p6), kind=kind, csum=csum, outer_src=DIP, rs_ip=RIP, mtu=mtu)
    assert (ptb.icmp_type, ptb.icmp_code, ptb.info) == (2, 0, room)
    emb = (p6[:7] + b"\x3f" + p6[8:])[:1232]
    assert bytes(ptb) == eth6(icmp6_error(2, 0, struct.pack("!I", room), emb, VIP6, CIP6),
                              src=MAC_D, dst=MAC_C)
    # too small a route MTU: dropped without an answer
    assert X.tun(fits, kind=kind, csum=csum, outer_src=DIP, rs_ip=RIP, mtu=67 + overhead) is None


def test_tun_ipv6_outer_minimum_mtu_and_icmp_errors_not_answered():
    inp = eth(tcp4(flags=ACK, data=b"x" * 1400))
    assert X.tun(inp, kind="ipip", outer_src=DIP6, rs_ip=RIP6, mtu=1319) is None
    r = X.tun(inp, kind="ipip", outer_src=DIP6, rs_ip=RIP6, mtu=1320)
    assert isinstance(r, X.IcmpError) and r.info == 1280
    # an ICMP error IPVS relates to a connection is tunnelled even when too big
    e = icmp4_error(3, 4, struct.pack("!HH", 0, 1400), b"\0" * 1400, ROUTER, VIP, tos=0, df=True)
    out = X.tun(eth(e), kind="ipip", outer_src=DIP, rs_ip=RIP, mtu=1400)
    assert type(out) is bytes


# --------------------------------------------------------------------------- FullNAT: TOA

TOA_CASES = [
    (ToaVariant(254, 8), 4),     # Alibaba / DPVS / Huawei IPv4
    (ToaVariant(253, 20), 6),    # Alibaba IPv6
    (ToaVariant(200, 8), 4),     # UCloud / Tencent
    (ToaVariant(254, 20), 6),    # DPVS IPv6
]


def client_pkt(ver, *, flags, opts=b"", data=b"", seq=1000, ack=0, sport=40000):
    t = tcp(sport=sport, dport=80, flags=flags, opts=opts, data=data, seq=seq, ack=ack)
    if ver == 4:
        return eth(ip4(t))
    return eth6(ip6(t, src=CIP6, dst=VIP6))


def rs_side(ver, t):
    if ver == 4:
        return eth(ip4(t, src=LIP, dst=RIP), src=MAC_D2, dst=MAC_R)
    return eth6(ip6(t, src=LIP6, dst=RIP6), src=MAC_D2, dst=MAC_R)


@pytest.mark.parametrize("toa,ver", TOA_CASES, ids=[str(t) for t, _ in TOA_CASES])
def test_fullnat_toa_every_variant(tmp_path, toa, ver):
    lip, rip = (LIP, RIP) if ver == 4 else (LIP6, RIP6)
    caddr = a4(CIP) if ver == 4 else a6(CIP6)
    opt = struct.pack("!BBH", toa.kind, toa.length, 40000) + caddr
    D1 = 0x1000_0000
    # the handshake ACK carries TOA
    inp = client_pkt(ver, flags=ACK, seq=1001, ack=5001)
    out = X.fullnat_request(inp, lip, 5000, rip, 8080, seq_delta=D1, toa=toa, toa_on=True,
                            src_mac=MAC_D2, dst_mac=MAC_R)
    exp = rs_side(ver, tcp(sport=5000, dport=8080, flags=ACK, seq=1001 + D1, ack=5001, opts=opt))
    assert isinstance(out, X.FullNatFrame) and out.toa == "inserted" and out == exp
    # a SYN (Alibaba puts TOA there too): TS overwritten with NOPs, TOA in front of the rest
    syn = client_pkt(ver, flags=SYN, opts=SYN_OPTS)
    out2 = X.fullnat_request(syn, lip, 5000, rip, 8080, seq_delta=D1, toa=toa, toa_on=True,
                             remove_ts=True, src_mac=MAC_D2, dst_mac=MAC_R)
    exp2 = rs_side(ver, tcp(sport=5000, dport=8080, flags=SYN, seq=1000 + D1,
                            opts=opt + SYN_OPTS_NO_TS))
    assert out2 == exp2 and out2.toa == "inserted"
    # a data segment with an odd payload
    dat = client_pkt(ver, flags=ACK | PSH, seq=1001, ack=5001, data=b"GET /index.html\r\n\r\n!")
    out3 = X.fullnat_request(dat, lip, 5000, rip, 8080, seq_delta=D1, toa=toa, toa_on=True,
                             src_mac=MAC_D2, dst_mac=MAC_R)
    exp3 = rs_side(ver, tcp(sport=5000, dport=8080, flags=ACK | PSH, seq=1001 + D1, ack=5001,
                            opts=opt, data=b"GET /index.html\r\n\r\n!"))
    assert out3 == exp3
    df = assert_checksums_ok(tmp_path, [out, out2, out3])
    # decoded TOA with the variant's kind
    t = decode(tmp_path, [out, out2, out3], name="toa.pcap", toa_kinds=(toa.kind,))
    assert (t["toa_kind"] == toa.kind).all() and (t["toa_len"] == toa.length).all()
    assert (t["toa_port"] == 40000).all()
    assert t.addr_str(int(t["toa_addr"][0])) == (CIP if ver == 4 else CIP6)
    assert df["ip_len"][0] == (20 if ver == 4 else 40) + 20 + toa.length


def test_fullnat_no_toa_when_off_and_seq_wraps():
    inp = client_pkt(4, flags=ACK, seq=0xFFFFFF00, ack=7)
    out = X.fullnat_request(inp, LIP, 5000, RIP, 80, seq_delta=0x200, toa=ToaVariant(), toa_on=False)
    assert out.toa == "off"
    exp = eth(ip4(tcp(sport=5000, dport=80, flags=ACK, seq=0x100, ack=7), src=LIP, dst=RIP))
    assert out == exp
    # remove_ts only in the SYN: an ACK's timestamp is kept
    ts = b"\x01\x01\x08\x0a\x00\x00\x00\x05\x00\x00\x00\x06"
    a = X.fullnat_request(client_pkt(4, flags=ACK, opts=ts), LIP, 5000, RIP, 80, remove_ts=True)
    assert a[14 + 40:14 + 52] == ts
    s = X.fullnat_request(client_pkt(4, flags=SYN, opts=ts), LIP, 5000, RIP, 80, remove_ts=False)
    assert s[14 + 40:14 + 52] == ts
    # TTL per profile: kernel-routed FullNAT decrements
    assert X.fullnat_request(inp, LIP, 5000, RIP, 80, ttl_dec=1)[14 + 8] == 63


FULL_SYN_OPTS = (b"\x02\x04\x05\xb4" + b"\x01\x03\x03\x07" + b"\x04\x02"   # MSS, NOP WS, SACKOK
                 + b"\x08\x0a" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x00"  # TS
                 + b"\x22\x0a" + b"\x11" * 8                                # TFO cookie (10)
                 + b"\x1e\x04\x00\x81" + b"\x01\x01")                         # MPTCP capable, NOPs
assert len(FULL_SYN_OPTS) == 36


def test_fullnat_no_room_alibaba_skips(tmp_path):
    opts = FULL_SYN_OPTS + b"\x01" * 4                   # 40 bytes of options
    syn = client_pkt(4, flags=SYN, opts=opts)
    out = X.fullnat_request(syn, LIP, 5000, RIP, 80, toa=ToaVariant(254, 8), toa_on=True,
                            remove_ts=True, toa_full="skip")
    assert out.toa == "skipped-room"
    no_ts = opts.replace(b"\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00", b"\x01" * 10)
    assert out == eth(ip4(tcp(sport=5000, flags=SYN, opts=no_ts), src=LIP, dst=RIP))
    # MTU: a packet within 8 bytes of the MTU goes without TOA
    big = client_pkt(4, flags=ACK, data=b"m" * 1455)      # 1495 bytes
    o = X.fullnat_request(big, LIP, 5000, RIP, 80, toa=ToaVariant(254, 8), toa_on=True, mtu=1500)
    assert o.toa == "skipped-mtu" and len(o) == 14 + 1495
    o2 = X.fullnat_request(big, LIP, 5000, RIP, 80, toa=ToaVariant(254, 8), toa_on=True, mtu=1503)
    assert o2.toa == "inserted" and len(o2) == 14 + 1503
    assert_checksums_ok(tmp_path, [out, o, o2])


def test_fullnat_no_room_dpvs_prunes(tmp_path):
    toa = ToaVariant(254, 8)
    opt = struct.pack("!BBH", 254, 8, 40000) + a4(CIP)
    # ACK: NOP NOP TS, NOP NOP SACK (2 blocks), kind 99 (8 bytes): 40 bytes
    ts = b"\x08\x0a\x00\x00\x00\x07\x00\x00\x00\x08"
    sack = b"\x05\x12" + struct.pack("!IIII", 100, 200, 300, 400)
    x99 = b"\x63\x08" + b"\xab" * 6
    opts = b"\x01\x01" + ts + b"\x01\x01" + sack + x99
    assert len(opts) == 40
    ack = client_pkt(4, flags=ACK, opts=opts, seq=1001, ack=5001)
    out = X.fullnat_request(ack, LIP, 5000, RIP, 80, toa=toa, toa_on=True, toa_full="prune")
    assert out.toa == "pruned"
    # NOPs go, the unprotected SACK goes, zero padding to a multiple of 4, TOA in front
    exp_opts = opt + ts + x99 + b"\0\0"
    assert out == eth(ip4(tcp(sport=5000, flags=ACK, opts=exp_opts, seq=1001, ack=5001),
                          src=LIP, dst=RIP))
    # SYN: NOPs and a client's own kind-254 option removed is enough
    x99s = b"\x63\x04\xcd\xcd"
    syn_opts = b"\x02\x04\x05\xb4\x01\x01\x04\x02\x01\x03\x03\x07" + b"\xfe\x08" + b"\x99" * 6 + \
        b"\x01" * 4 + b"\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x00" + b"\x01\x01" + x99s
    assert len(syn_opts) == 40
    syn = client_pkt(4, flags=SYN, opts=syn_opts)
    out2 = X.fullnat_request(syn, LIP, 5000, RIP, 80, toa=toa, toa_on=True, toa_full="prune",
                             remove_ts=True)
    # TS became NOPs first, so pruning drops it with the other NOPs
    exp2 = opt + b"\x02\x04\x05\xb4\x04\x02\x03\x03\x07" + x99s + b"\0\0\0"
    assert out2.toa == "pruned"
    assert out2 == eth(ip4(tcp(sport=5000, flags=SYN, opts=exp2), src=LIP, dst=RIP))
    # SYN whose options are all protected: only its 7 NOPs go (4 bytes once padded), not
    # enough: TOA fails, the segment leaves with the compacted options, 4 bytes shorter
    syn3 = client_pkt(4, flags=SYN, opts=FULL_SYN_OPTS + b"\x01" * 4)
    out3 = X.fullnat_request(syn3, LIP, 5000, RIP, 80, toa=toa, toa_on=True, toa_full="prune",
                             remove_ts=False)
    assert out3.toa == "failed-room"
    compact = (b"\x02\x04\x05\xb4" + b"\x03\x03\x07" + b"\x04\x02" + FULL_SYN_OPTS[10:30]
               + b"\x1e\x04\x00\x81" + b"\0\0\0")
    assert out3 == eth(ip4(tcp(sport=5000, flags=SYN, opts=compact), src=LIP, dst=RIP))
    # a client-sent TOA replaced by NOPs (DPVS) before ours is inserted
    forged = client_pkt(4, flags=ACK, opts=b"\xfe\x08\x9c\x40\x0a\x0a\x0a\x0a", seq=1, ack=2)
    out4 = X.fullnat_request(forged, LIP, 5000, RIP, 80, toa=toa, toa_on=True,
                             strip_client_toa=True)
    assert out4 == eth(ip4(tcp(sport=5000, flags=ACK, seq=1, ack=2, opts=opt + b"\x01" * 8),
                           src=LIP, dst=RIP))
    assert_checksums_ok(tmp_path, [out, out2, out3, out4])


def test_prune_options_rules():
    # shorter than the request: untouched
    assert X.prune_options(b"\x01\x01\x01\x01", 8, False) == (b"\x01\x01\x01\x01", 0)
    # an EOL ends the list: everything after it goes too
    new, freed = X.prune_options(b"\x02\x04\x05\xb4\x00\x01\x01\x01" + b"\x08\x0a" + b"\0" * 10,
                                 8, True)
    assert new == b"\x02\x04\x05\xb4" and freed == 16
    # only NOPs freed (2), all else protected in a SYN: padded back to the same length (compacted), nothing removed
    new, freed = X.prune_options(b"\x01\x01\x04\x02" + b"\x08\x0a" + b"\1" * 8 + b"\x02\x04\x05\xb4",
                                 8, True)
    assert freed == 0 and new == b"\x04\x02\x08\x0a" + b"\1" * 8 + b"\x02\x04\x05\xb4\0\0"


def test_fullnat_dpvs_prune_for_mtu():
    toa = ToaVariant(254, 8)
    opt = struct.pack("!BBH", 254, 8, 40000) + a4(CIP)
    ts = b"\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x02"
    # NOPs alone free 2 bytes, padding takes them back: nothing freed, TOA fails, options
    # come out compacted (TS, two zero bytes) at the same length
    pkt = client_pkt(4, flags=ACK, opts=b"\x01\x01" + ts, data=b"p" * 1440)      # 1492 bytes
    out = X.fullnat_request(pkt, LIP, 5000, RIP, 80, toa=toa, toa_on=True, mtu=1496,
                            toa_full="prune")
    assert out.toa == "failed-mtu" and len(out) == 14 + 1492
    assert out[14 + 40:14 + 52] == ts + b"\0\0"
    # NOPs and a SACK block go: 12 bytes freed, the packet now fits with TOA
    sack = b"\x05\x0a" + struct.pack("!II", 10, 20)
    pkt2 = client_pkt(4, flags=ACK, opts=b"\x01\x01" + ts + b"\x01\x01" + sack,
                      data=b"p" * 1440)                                            # 1504 bytes
    out2 = X.fullnat_request(pkt2, LIP, 5000, RIP, 80, toa=toa, toa_on=True, mtu=1510,
                             toa_full="prune")
    assert out2.toa == "pruned"
    assert out2 == eth(ip4(tcp(sport=5000, flags=ACK, opts=opt + ts + b"\0\0", data=b"p" * 1440),
                           src=LIP, dst=RIP))
    # no options at all: nothing to prune
    short = client_pkt(4, flags=ACK, data=b"p" * 1456)                             # 1496 bytes
    o3 = X.fullnat_request(short, LIP, 5000, RIP, 80, toa=toa, toa_on=True, mtu=1496,
                           toa_full="prune")
    assert o3.toa == "failed-mtu" and len(o3) == 14 + 1496


def test_fullnat_udp_is_translated_without_toa(tmp_path):
    inp = eth(ip4(udp(sport=5353, dport=53, data=b"query")))
    out = X.fullnat_request(inp, LIP, 5000, RIP, 5300, toa=ToaVariant(), toa_on=True, seq_delta=5)
    assert out == eth(ip4(udp(sport=5000, dport=5300, data=b"query"), src=LIP, dst=RIP))
    assert out.toa == "off"
    assert_checksums_ok(tmp_path, [out])


def test_fullnat_synproxy_ack_delta_shifts_ack_and_sack():
    sack = b"\x01\x01\x05\x0a" + struct.pack("!II", 9000, 9100)
    inp = client_pkt(4, flags=ACK, opts=sack, seq=10, ack=9000)
    out = X.fullnat_request(inp, LIP, 5000, RIP, 80, seq_delta=100, ack_delta=500)
    exp_sack = b"\x01\x01\x05\x0a" + struct.pack("!II", 8500, 8600)
    assert out == eth(ip4(tcp(sport=5000, flags=ACK, opts=exp_sack, seq=110, ack=8500),
                          src=LIP, dst=RIP))


# --------------------------------------------------------------------------- FullNAT: reply

def test_fullnat_reply_synack_mss_and_ack(tmp_path):
    D1 = 0x7000_0000
    synack_opts = b"\x02\x04\x05\xb4\x01\x01\x04\x02\x01\x03\x03\x07"
    inp = eth(ip4(tcp(sport=8080, dport=5000, flags=SYN | ACK, seq=777, ack=1001 + D1,
                      opts=synack_opts), src=RIP, dst=LIP), src=MAC_R, dst=MAC_D2)
    out = X.fullnat_reply(inp, VIP, 80, CIP, 40000, seq_delta=D1, mss_reduce=8,
                          src_mac=MAC_D, dst_mac=MAC_C)
    exp_opts = b"\x02\x04\x05\xac" + synack_opts[4:]
    exp = eth(ip4(tcp(sport=80, dport=40000, flags=SYN | ACK, seq=777, ack=1001,
                      opts=exp_opts), src=VIP, dst=CIP), src=MAC_D, dst=MAC_C)
    assert out == exp
    # an ACK with SACK blocks: ack and every block edge - D1; MSS untouched outside the SYN-ACK
    sack = b"\x01\x01\x05\x12" + struct.pack("!IIII", 2000 + D1, 2100 + D1, 2200 + D1, 2300 + D1)
    a = eth(ip4(tcp(sport=8080, dport=5000, flags=ACK, seq=778, ack=1500 + D1, opts=sack),
                src=RIP, dst=LIP))
    out2 = X.fullnat_reply(a, VIP, 80, CIP, 40000, seq_delta=D1, mss_reduce=8)
    exp_sack = b"\x01\x01\x05\x12" + struct.pack("!IIII", 2000, 2100, 2200, 2300)
    assert out2 == eth(ip4(tcp(sport=80, dport=40000, flags=ACK, seq=778, ack=1500,
                               opts=exp_sack), src=VIP, dst=CIP))
    # IPv6: MSS - 20, ack wraps below zero
    i6 = eth6(ip6(tcp(sport=8080, dport=5000, flags=SYN | ACK, seq=1, ack=5,
                      opts=b"\x02\x04\x05\xa0"), src=RIP6, dst=LIP6))
    o6 = X.fullnat_reply(i6, VIP6, 80, CIP6, 40000, seq_delta=10, mss_reduce=20)
    assert o6 == eth6(ip6(tcp(sport=80, dport=40000, flags=SYN | ACK, seq=1, ack=0xFFFFFFFB,
                              opts=b"\x02\x04\x05\x8c"), src=VIP6, dst=CIP6))
    # SYN proxy: seq + D2
    o7 = X.fullnat_reply(a, VIP, 80, CIP, 40000, seq_delta=D1, seq_add=3)
    assert struct.unpack_from("!I", o7, 14 + 20 + 4)[0] == 781
    assert_checksums_ok(tmp_path, [out, out2, o6, o7])


# --------------------------------------------------------------------------- ICMP translation

def tcp_head(src, dst, sport, dport, seq, ttl=64, ver=4, payload=b""):
    """The embedded (offending) packet: IP header + full TCP header + payload."""
    t = tcp(sport=sport, dport=dport, flags=ACK, seq=seq, ack=1, data=payload)
    if ver == 4:
        return bytes(ip4(t, src=src, dst=dst, ttl=ttl))
    return ip6(t, src=src, dst=dst, hlim=ttl)


def test_nat_icmp_both_ways(tmp_path):
    # C's router says frag-needed about a D->C reply VIP:80 -> CIP:40000
    emb = tcp_head(VIP, CIP, 80, 40000, 5555, ttl=60, payload=b"r" * 100)
    e = eth(icmp4_error(3, 4, struct.pack("!HH", 0, 1400), emb, ROUTER, VIP, tos=0, ttl=60))
    out = X.nat_icmp_to_rs(e, RIP, 8080, src_mac=MAC_D2, dst_mac=MAC_R)
    emb2 = bytearray(emb)
    emb2[12:16] = a4(RIP)
    emb2[20:22] = struct.pack("!H", 8080)
    emb2[10:12] = b"\0\0"
    struct.pack_into("!H", emb2, 10, 0xFFFF - csum16(bytes(emb2[:20])))   # inner IP csum redone
    exp = eth(icmp4_error(3, 4, struct.pack("!HH", 0, 1400), bytes(emb2), ROUTER, RIP, tos=0,
                          ttl=59), src=MAC_D2, dst=MAC_R)
    assert out == exp
    assert emb2[20 + 16:20 + 18] == emb[20 + 16:20 + 18]                    # inner L4 csum kept
    # R's side: port unreachable about CIP:40000 -> RIP:8080
    emb3 = tcp_head(CIP, RIP, 40000, 8080, 1234)
    e3 = eth(icmp4_error(3, 3, b"\0" * 4, emb3, RIP, CIP, tos=0), src=MAC_R, dst=MAC_D2)
    out3 = X.nat_icmp_to_client(e3, VIP, 80, src_mac=MAC_D, dst_mac=MAC_C)
    emb4 = bytearray(emb3)
    emb4[16:20] = a4(VIP)
    emb4[22:24] = struct.pack("!H", 80)
    emb4[10:12] = b"\0\0"
    struct.pack_into("!H", emb4, 10, 0xFFFF - csum16(bytes(emb4[:20])))
    assert out3 == eth(icmp4_error(3, 3, b"\0" * 4, bytes(emb4), VIP, CIP, tos=0, ttl=63),
                       src=MAC_D, dst=MAC_C)
    df = assert_checksums_ok(tmp_path, [out, out3])
    assert df["icmp_in_sport"].tolist() == [8080, 40000]
    assert df["icmp_in_dport"].tolist() == [40000, 80]
    # a frame cut by the snaplen: incremental ICMP checksum, same bytes
    cut = X.nat_icmp_to_rs(e[:14 + 20 + 8 + 40 + 10], RIP, 8080, src_mac=MAC_D2, dst_mac=MAC_R)
    assert cut == exp[:14 + 20 + 8 + 40 + 10]


def test_nat_icmpv6_both_ways(tmp_path):
    emb = tcp_head(VIP6, CIP6, 80, 40000, 99, ver=6)
    e = eth6(icmp6_error(2, 0, struct.pack("!I", 1280), emb, "2001:db8::1", VIP6))
    out = X.nat_icmp_to_rs(e, RIP6, 8080)
    emb2 = bytearray(emb)
    emb2[8:24] = a6(RIP6)
    emb2[40:42] = struct.pack("!H", 8080)
    assert out == eth6(icmp6_error(2, 0, struct.pack("!I", 1280), bytes(emb2), "2001:db8::1",
                                   RIP6, hlim=63))
    cut = X.nat_icmp_to_rs(e[:14 + 40 + 8 + 40 + 12], RIP6, 8080)
    assert cut == out[:14 + 40 + 8 + 40 + 12]
    emb3 = tcp_head(CIP6, RIP6, 40000, 8080, 5, ver=6)
    e3 = eth6(icmp6_error(1, 4, b"\0" * 4, emb3, RIP6, CIP6))
    out3 = X.nat_icmp_to_client(e3, VIP6, 80)
    assert out3[14 + 8:14 + 24] == a6(VIP6) and out3[14 + 48 + 24:14 + 48 + 40] == a6(VIP6)
    assert_checksums_ok(tmp_path, [out, out3])


def test_fullnat_icmp_both_ways_with_inner_seq(tmp_path):
    D1 = 0x1000
    # R's side: frag-needed from a router about LIP:5000 -> RIP:8080 with seq s + D1
    emb = tcp_head(LIP, RIP, 5000, 8080, 7000 + D1)
    e = eth(icmp4_error(3, 4, struct.pack("!HH", 0, 1300), emb, "192.0.2.254", LIP, tos=0))
    out = X.fullnat_icmp_to_client(e, VIP, 80, CIP, 40000, seq_delta=D1)
    exp_emb = bytes(tcp_head(CIP, VIP, 40000, 80, 7000))
    # the embedded TCP checksum is left as it was (IPVS/DPVS do not update it)
    exp_emb = exp_emb[:20 + 16] + emb[20 + 16:20 + 18] + exp_emb[20 + 18:]
    assert out == eth(icmp4_error(3, 4, struct.pack("!HH", 0, 1300), exp_emb, VIP, CIP, tos=0))
    # client's side: about VIP:80 -> CIP:40000 (SYN proxy delta 0)
    emb2 = tcp_head(VIP, CIP, 80, 40000, 333)
    e2 = eth(icmp4_error(11, 0, b"\0" * 4, emb2, ROUTER, VIP, tos=0))
    out2 = X.fullnat_icmp_to_rs(e2, LIP, 5000, RIP, 8080, seq_sub=3)
    exp2 = bytes(tcp_head(RIP, LIP, 8080, 5000, 330))
    exp2 = exp2[:36] + emb2[36:38] + exp2[38:]
    assert out2 == eth(icmp4_error(11, 0, b"\0" * 4, exp2, LIP, RIP, tos=0))
    df = assert_checksums_ok(tmp_path, [out, out2])
    assert df["icmp_in_seq"].tolist() == [7000, 330]


# --------------------------------------------------------------------------- odds and ends

def test_set_l2_and_errors():
    inp = eth(tcp4(flags=ACK))
    tagged = X.set_l2(inp, MAC_D2, MAC_R, vlans=(7, 300))
    assert tagged == MAC_R + MAC_D2 + struct.pack("!HHHHH", 0x8100, 7, 0x8100, 300, 0x0800) + inp[14:]
    assert X.set_l2(tagged, "02:00:00:00:00:01", 0x020000000002) == eth(tcp4(flags=ACK))
    with pytest.raises(X.XmitError, match="ethertype 0x0806"):
        X.nat_request(b"\xff" * 12 + b"\x08\x06" + b"\0" * 28, RIP, 80)
    with pytest.raises(X.XmitError, match="shorter than an Ethernet header"):
        X.dr(b"\0" * 10, src_mac=MAC_D, rs_mac=MAC_R)
    with pytest.raises(X.XmitError, match="inside the IPv4 header"):
        X.nat_request(inp[:30], RIP, 80)
    with pytest.raises(X.XmitError, match="inside the TCP"):
        X.nat_request(inp[:14 + 20 + 10], RIP, 80)
    frag = fragment(bytes(ip4(udp(data=b"a" * 100), df=False)), 0x2000)
    with pytest.raises(X.XmitError, match="fragment"):
        X.nat_request(eth(frag), RIP, 80)
    with pytest.raises(X.XmitError, match="does not mix families"):
        X.nat_request(inp, RIP6, 80)
    with pytest.raises(X.XmitError, match="not TCP or UDP"):
        X.nat_request(eth(icmp4_error(3, 3, b"\0" * 4, b"", CIP, VIP)), RIP, 80)
    with pytest.raises(X.XmitError, match="tunnel kind"):
        X.tun(inp, kind="vxlan", outer_src=DIP, rs_ip=RIP)
    with pytest.raises(X.XmitError, match="carries an IPv4"):
        X.fullnat_request(client_pkt(6, flags=ACK), LIP6, 5000, RIP6, 80, toa=ToaVariant(254, 8),
                          toa_on=True)
    with pytest.raises(X.XmitError, match="not an error"):
        X.icmp_rewrite(eth(icmp4_error(8, 0, b"\0" * 4, b"ping", CIP, VIP)), outer_dst=RIP)


def test_addresses_and_macs_in_every_spelling():
    import ipaddress
    inp = eth(tcp4(flags=ACK))
    ref = X.nat_request(inp, RIP, 8080, src_mac=MAC_D2, dst_mac=MAC_R)
    for rip in (ipaddress.ip_address(RIP), a4(RIP), int(ipaddress.ip_address(RIP))):
        assert X.nat_request(inp, rip, 8080, src_mac=0x020000000022,
                             dst_mac="02:00:00:00:00:11") == ref


# --------------------------------------------------------------------------- properties

@settings(max_examples=150, deadline=None)
@given(data=st.binary(min_size=0, max_size=300), nopts=st.integers(0, 10),
       ver=st.sampled_from([4, 6]), proto=st.sampled_from([6, 17]),
       port=st.integers(1, 65535), cut=st.integers(0, 40))
def test_checksums_valid_and_incremental_matches_full(data, nopts, ver, proto, port, cut):
    if proto == 6:
        l4 = tcp(flags=ACK, opts=b"\x01" * (nopts * 4), data=data)
    else:
        l4 = udp(data=data)
    frame = eth(ip4(l4)) if ver == 4 else eth6(ip6(l4, src=CIP6, dst=VIP6))
    rip = RIP if ver == 4 else RIP6
    full = X.nat_request(frame, rip, port)
    assert X.nat_request(frame, rip, port, csum="incremental") == full
    # the IPv4 fast path (bytes input) and the general path (bytearray input) agree
    assert X.nat_request(bytearray(frame), rip, port) == full
    assert X.nat_reply(frame, rip, port, ttl_dec=0) == X.nat_reply(bytearray(frame), rip, port,
                                                                    ttl_dec=0)
    # verify the checksum independently
    l3 = 14
    if ver == 4:
        assert ip4_hdr_ok(full[l3:])
        seg = full[l3 + 20:]
        pseudo = full[l3 + 12:l3 + 20] + struct.pack("!BBH", 0, proto, len(seg))
    else:
        seg = full[l3 + 40:]
        pseudo = full[l3 + 8:l3 + 40] + struct.pack("!IxxxB", len(seg), proto)
    assert csum16(pseudo + seg) == 0xFFFF
    # a snaplen cut inside the payload: same bytes as far as they go
    hdr_end = len(frame) - len(data)
    keep = min(len(frame), hdr_end + cut)
    assert X.nat_request(frame[:keep], rip, port) == full[:keep]
    # FullNAT with TOA over the same frames
    if proto == 6 and ver == 4 and nopts <= 8:
        out = X.fullnat_request(frame, LIP, 5000, RIP, port, seq_delta=123456789,
                                toa=ToaVariant(200, 8), toa_on=True)
        assert out.toa == "inserted"
        seg = out[l3 + 20:]
        pseudo = out[l3 + 12:l3 + 20] + struct.pack("!BBH", 0, 6, len(seg))
        assert csum16(pseudo + seg) == 0xFFFF and ip4_hdr_ok(out[l3:])
        # cut by the snaplen: the TOA goes in, the checksum is updated incrementally
        cut_out = X.fullnat_request(frame[:keep], LIP, 5000, RIP, port, seq_delta=123456789,
                                    toa=ToaVariant(200, 8), toa_on=True)
        assert cut_out == out[:keep + 8]


# --------------------------------------------------------------------------- xmit_batch

FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures"


def _fixture_frames(limit_per_trace: int = 600) -> list[bytes]:
    """Ethernet frames of every fixture trace (the first ``limit_per_trace`` of each)."""
    from lvs_inspect.capture.records import open_input
    out: list[bytes] = []
    for trace in sorted(FIXTURES_DIR.glob("*/*/trace.pcap*")):
        vts: list = []
        got = 0
        try:
            for batch in open_input(str(trace), 0, vts):
                lt = [v.linktype for v in vts]
                for i in range(len(batch)):
                    if lt[batch.iface[i] if batch.iface[i] < len(lt) else 0] != 1:
                        continue
                    a = int(batch.data_off[i])
                    out.append(batch.buf[a:a + int(batch.caplen[i])].tobytes())
                    got += 1
                    if got >= limit_per_trace:
                        break
                if got >= limit_per_trace:
                    break
        except Exception as e:  # noqa: BLE001  (a deliberately damaged fixture)
            if "damage" not in str(trace) and "malformed" not in str(trace):
                raise AssertionError(f"{trace}: {e}") from e
    assert len(out) > 5000, "the fixtures hold too few frames for this test"
    return out


_FRAMES: list[bytes] = []


def batch_frames():
    """(buffer with 64 bytes to spare, offsets, lengths, frames) of the fixture frames."""
    import numpy as np
    if not _FRAMES:
        _FRAMES.extend(_fixture_frames())
    lens = np.array([len(f) for f in _FRAMES], dtype=np.int64)
    off = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    buf = np.frombuffer(bytearray(b"".join(_FRAMES) + bytes(64)), dtype=np.uint8)
    return buf, off, lens, _FRAMES


def test_batch_shape_and_checksum_check_agree_with_the_decoder_and_xmit():
    """xmit_batch.shape's L4 verdict is the decoder's Csum.OK, checked here on raw frames."""
    import numpy as np

    from lvs_inspect.forwarder import xmit_batch as XB
    buf, off, lens, frames = batch_frames()
    sh = XB.shape(buf, off, lens)
    l4 = np.flatnonzero(sh & XB.L4)
    ip4 = np.flatnonzero(sh & XB.IP4)
    assert len(l4) > 3000 and len(ip4) > len(l4)
    for i in range(0, len(frames), 7):
        f = frames[i]
        is_ip4 = len(f) >= 34 and f[12:14] == b"\x08\x00" and f[14] == 0x45
        assert bool(sh[i] & XB.IP4) == (is_ip4 and 14 + struct.unpack("!H", f[16:18])[0] <= len(f)
                                        and struct.unpack("!H", f[16:18])[0] >= 20)
    # the checksum verdict against a from-scratch computation
    for i in l4[::5].tolist():
        f = frames[i]
        end = 14 + struct.unpack("!H", f[16:18])[0]
        seg = f[34:end]
        pseudo = f[26:34] + struct.pack("!BBH", 0, f[23], len(seg))
        assert csum16(pseudo + seg) == 0xFFFF, i        # the folded sum of a right segment
    # and frames the batch refuses because of a wrong checksum
    bad = bytearray(frames[int(l4[0])])
    bad[-1] ^= 0x55
    b2 = np.frombuffer(bytearray(bytes(bad) + bytes(64)), dtype=np.uint8)
    one = np.zeros(1, dtype=np.int64)
    assert XB.shape(b2, one, np.array([len(bad)]))[0] & XB.L4 == 0


_ADDR = st.integers(1, 0xFFFFFFFF)
_PORT = st.integers(1, 0xFFFF)
_MAC = st.one_of(st.just(-1), st.integers(0, (1 << 48) - 1))


@settings(max_examples=12, deadline=None)
@given(ttl=st.integers(0, 2), a=_ADDR, b=_ADDR, p=_PORT, q=_PORT,
       d1=st.integers(0, 0xFFFFFFFF), smac=_MAC, dmac=_MAC, which=st.sampled_from(
           ["nat_request", "nat_reply", "fullnat_request", "fullnat_reply"]))
def test_batch_rewrite_is_byte_identical_to_xmit(ttl, a, b, p, q, d1, smac, dmac, which):
    """RFC 1624 in numpy over every fixture frame the batch path takes, against the
    per-packet functions' full recomputation: the same bytes, frame for frame."""
    import numpy as np

    from lvs_inspect.forwarder import xmit_batch as XB
    buf, off, lens, frames = batch_frames()
    sh = XB.shape(buf, off, lens)
    sel = np.flatnonzero(sh & XB.L4)
    ttl_in = buf[off[sel] + 22]
    syn = (buf[off[sel] + 47] & 0x02).astype(bool) & (buf[off[sel] + 23] == 6)
    sel = sel[(ttl_in > ttl) & ~(syn if which.startswith("fullnat") else False)]
    k = len(sel)
    full = lambda v: np.full(k, v, dtype=np.int64)       # noqa: E731
    mac = lambda m: None if m < 0 else m.to_bytes(6, "big")     # noqa: E731
    kw = dict(ttl_dec=full(ttl), src=full(-1), dst=full(-1), sport=full(-1), dport=full(-1),
              seq_add=full(0), ack_add=full(0), src_mac=full(smac), dst_mac=full(dmac))
    ab, bb = a.to_bytes(4, "big"), b.to_bytes(4, "big")
    if which == "nat_request":
        kw.update(dst=full(a), dport=full(p))
        ref = lambda f: X.nat_request(f, ab, p, src_mac=mac(smac), dst_mac=mac(dmac), ttl_dec=ttl)  # noqa: E731
    elif which == "nat_reply":
        kw.update(src=full(a), sport=full(p))
        ref = lambda f: X.nat_reply(f, ab, p, src_mac=mac(smac), dst_mac=mac(dmac), ttl_dec=ttl)  # noqa: E731
    elif which == "fullnat_request":
        kw.update(src=full(a), dst=full(b), sport=full(p), dport=full(q), seq_add=full(d1))
        ref = lambda f: X.fullnat_request(f, ab, p, bb, q, seq_delta=d1, ttl_dec=ttl,  # noqa: E731
                                          src_mac=mac(smac), dst_mac=mac(dmac))
    else:
        kw.update(src=full(a), dst=full(b), sport=full(p), dport=full(q), ack_add=full(-d1))
        sack = np.array([_has_sack(frames[i]) for i in sel.tolist()], dtype=bool)
        sel = sel[~sack]
        kw = {n: (v[~sack] if isinstance(v, np.ndarray) else v) for n, v in kw.items()}
        ref = lambda f: X.fullnat_reply(f, ab, p, bb, q, seq_delta=d1, ttl_dec=ttl,  # noqa: E731
                                        src_mac=mac(smac), dst_mac=mac(dmac))
    work = buf.copy()
    end = off[sel] + 14 + ((work[off[sel] + 16].astype(np.int64) << 8) | work[off[sel] + 17])
    XB.rewrite4(work, off[sel], end=end, **kw)
    blob = work.tobytes()
    assert len(sel) > 2000
    for i, e in zip(sel.tolist(), end.tolist()):
        assert blob[off[i]:e] == bytes(ref(frames[i])), (which, i)


def _has_sack(f: bytes) -> bool:
    if f[23] != 6:
        return False
    hlen = (f[46] >> 4) * 4
    return any(k == 5 for k, _, _ in X._opts_walk(f, 54, 34 + hlen))


@settings(max_examples=6, deadline=None)
@given(ttl=st.integers(0, 2), smac=_MAC, dmac=_MAC, a=_ADDR, b=_ADDR, gport=_PORT,
       kind=st.sampled_from(["ipip", "gre", "gue"]))
def test_batch_dr_and_tun_are_byte_identical_to_xmit(ttl, smac, dmac, a, b, gport, kind):
    import numpy as np

    from lvs_inspect.forwarder import xmit_batch as XB
    buf, off, lens, frames = batch_frames()
    sh = XB.shape(buf, off, lens)
    mac = lambda m: None if m < 0 else m.to_bytes(6, "big")     # noqa: E731
    sel = np.flatnonzero(sh & XB.IP4)
    sel = sel[buf[off[sel] + 22] > ttl]
    k = len(sel)
    full = lambda v: np.full(k, v, dtype=np.int64)       # noqa: E731
    work = buf.copy()
    XB.dr4(work, off[sel], ttl_dec=full(ttl), src_mac=full(smac), dst_mac=full(dmac))
    blob = work.tobytes()
    for i in sel.tolist():
        f = frames[i]
        end = 14 + struct.unpack("!H", f[16:18])[0]
        assert blob[off[i]:off[i] + end] == X.dr(f, src_mac=mac(smac), rs_mac=mac(dmac),
                                                 ttl_dec=ttl), i
    sel = np.flatnonzero(sh & XB.WHOLE)
    sel = sel[buf[off[sel] + 22] > ttl]
    k = len(sel)
    work = buf.copy()
    end = off[sel] + 14 + ((work[off[sel] + 16].astype(np.int64) << 8) | work[off[sel] + 17])
    sports = np.array([X.gue_source_port(frames[i][14:]) for i in sel.tolist()], dtype=np.int64)
    h = XB.tun4(work, off[sel], end, kind=XB.TUN_CODES[kind], ttl_dec=full(ttl),
                outer_src=full(a), outer_dst=full(b), gue_sport=sports, gue_dport=full(gport),
                src_mac=full(smac), dst_mac=full(dmac))
    blob = work.tobytes()
    for row, i, e in zip(h, sel.tolist(), end.tolist()):
        want = X.tun(frames[i], kind=kind, outer_src=a.to_bytes(4, "big"),
                     rs_ip=b.to_bytes(4, "big"), ttl_dec=ttl, gue_port=gport,
                     src_mac=mac(smac), dst_mac=mac(dmac))
        assert row.tobytes() + blob[off[i] + 14:e] == want, (kind, i)


def _with_room(frames: list[bytes], room: int):
    """(buffer, offsets, lengths) of ``frames`` with ``room`` zero bytes before each (where the
    batch path writes the bytes a frame grows by) and 64 to spare at the end."""
    import numpy as np
    lens = np.array([len(f) for f in frames], dtype=np.int64)
    off = room + np.concatenate([[0], np.cumsum(lens + room)[:-1]]).astype(np.int64)
    pad = bytes(room)
    buf = np.frombuffer(bytearray(b"".join(pad + f for f in frames) + bytes(64)), dtype=np.uint8)
    return buf, off, lens


@settings(max_examples=8, deadline=None)
@given(ttl=st.integers(0, 2), a=_ADDR, b=_ADDR, p=_PORT, q=_PORT,
       d1=st.integers(0, 0xFFFFFFFF), smac=_MAC, dmac=_MAC, kind=st.sampled_from([254, 200, 30]),
       every=st.integers(1, 3))
def test_batch_toa_insertion_is_byte_identical_to_xmit(ttl, a, b, p, q, d1, smac, dmac, kind,
                                                       every):
    """FullNAT requests carrying a TOA, made in place by rewrite4 (the frame grows by 8 bytes
    into the room before it), mixed with frames without one: the bytes of
    xmit.fullnat_request(toa_on=True) / (toa_on=False), frame for frame; neighbours untouched."""
    import numpy as np

    from lvs_inspect.forwarder import xmit_batch as XB
    _, _, _, frames = batch_frames()
    buf, off, lens = _with_room(frames, 8)
    sh = XB.shape(buf, off, lens)
    sel = np.flatnonzero(sh & XB.L4)
    o = off[sel]
    tcp = buf[o + 23] == 6
    ok = tcp & ((buf[o + 47] & 0x02) == 0) & ((buf[o + 46] >> 4) <= 13) & (buf[o + 22] > ttl)
    sel = sel[ok]
    k = len(sel)
    assert k > 2000
    toa = np.where(np.arange(k) % every == 0, kind, -1).astype(np.int64)
    full = lambda v: np.full(k, v, dtype=np.int64)       # noqa: E731
    mac = lambda m: None if m < 0 else m.to_bytes(6, "big")     # noqa: E731
    work = buf.copy()
    end = off[sel] + 14 + ((work[off[sel] + 16].astype(np.int64) << 8) | work[off[sel] + 17])
    start = XB.rewrite4(work, off[sel], end=end, ttl_dec=full(ttl), src=full(a), dst=full(b),
                        sport=full(p), dport=full(q), seq_add=full(d1), ack_add=full(0),
                        src_mac=full(smac), dst_mac=full(dmac), toa=toa)
    assert (start == off[sel] - np.where(toa >= 0, 8, 0)).all()
    blob = work.tobytes()
    ab, bb = a.to_bytes(4, "big"), b.to_bytes(4, "big")
    for i, s, e, t in zip(sel.tolist(), start.tolist(), end.tolist(), toa.tolist()):
        want = X.fullnat_request(frames[i], ab, p, bb, q, seq_delta=d1, ttl_dec=ttl,
                                 toa=ToaVariant(kind, 8), toa_on=t >= 0,
                                 src_mac=mac(smac), dst_mac=mac(dmac))
        assert want.toa == ("inserted" if t >= 0 else "off")
        assert blob[s:e] == bytes(want), (kind, i)
    # frames the batch did not take are untouched
    other = np.setdiff1d(np.arange(len(frames)), sel)
    for i in other[::3].tolist():
        assert blob[off[i]:off[i] + lens[i]] == frames[i]
    # a TOA asked for a frame without room is refused, not written wrong
    no_room = o[~tcp | ((buf[o + 46] >> 4) > 13)][:1]
    assert len(no_room), "the fixtures have no UDP frame or TCP header without room"
    one = lambda v: np.full(1, v, dtype=np.int64)        # noqa: E731
    with pytest.raises(ValueError):
        XB.rewrite4(buf.copy(), no_room, ttl_dec=one(0), src=one(-1), dst=one(-1),
                    sport=one(-1), dport=one(-1), seq_add=one(0), ack_add=one(0),
                    src_mac=one(-1), dst_mac=one(-1), toa=one(kind))


@settings(max_examples=6, deadline=None)
@given(ttl=st.integers(0, 2), smac=_MAC, dmac=_MAC, a=_ADDR, b=_ADDR, gport=_PORT,
       kind=st.sampled_from(["ipip", "gre", "gue"]))
def test_batch_tun_in_place_is_byte_identical_to_xmit(ttl, smac, dmac, a, b, gport, kind):
    """TUN encapsulation wholly in numpy: tun4's header rows placed in the room before each
    frame (they end where the inner packet starts), no per-frame join: xmit.tun's bytes."""
    import numpy as np

    from lvs_inspect.forwarder import xmit_batch as XB
    _, _, _, frames = batch_frames()
    buf, off, lens = _with_room(frames, 32)
    sh = XB.shape(buf, off, lens)
    sel = np.flatnonzero(sh & XB.WHOLE)
    sel = sel[buf[off[sel] + 22] > ttl]
    k = len(sel)
    full = lambda v: np.full(k, v, dtype=np.int64)       # noqa: E731
    mac = lambda m: None if m < 0 else m.to_bytes(6, "big")     # noqa: E731
    work = buf.copy()
    end = off[sel] + 14 + ((work[off[sel] + 16].astype(np.int64) << 8) | work[off[sel] + 17])
    sports = np.array([X.gue_source_port(frames[i][14:]) for i in sel.tolist()], dtype=np.int64)
    h = XB.tun4(work, off[sel], end, kind=XB.TUN_CODES[kind], ttl_dec=full(ttl),
                outer_src=full(a), outer_dst=full(b), gue_sport=sports, gue_dport=full(gport),
                src_mac=full(smac), dst_mac=full(dmac))
    start = off[sel] + 14 - h.shape[1]
    XB.place(work, start, h)
    blob = work.tobytes()
    for i, s, e in zip(sel.tolist(), start.tolist(), end.tolist()):
        want = X.tun(frames[i], kind=kind, outer_src=a.to_bytes(4, "big"),
                     rs_ip=b.to_bytes(4, "big"), ttl_dec=ttl, gue_port=gport,
                     src_mac=mac(smac), dst_mac=mac(dmac))
        assert blob[s:e] == want, (kind, i)


@settings(max_examples=8, deadline=None)
@given(mss=st.integers(0, 0xFFFF), every=st.integers(1, 3), a=_ADDR, b=_ADDR, p=_PORT, q=_PORT,
       d1=st.integers(0, 0xFFFFFFFF))
def test_batch_syn_options_are_byte_identical_to_xmit(mss, every, a, b, p, q, d1):
    """options4 (a SYN's timestamp -> NOPs, a SYN-ACK's MSS lowered) then rewrite4 (with a
    TOA on some SYNs): the bytes of xmit.fullnat_request(remove_ts=True) and
    xmit.fullnat_reply(mss_reduce=...), on every fixture TCP frame with SYN set."""
    import numpy as np

    from lvs_inspect.forwarder import xmit_batch as XB
    _, _, _, frames = batch_frames()
    buf, off, lens = _with_room(frames, 8)
    sh = XB.shape(buf, off, lens)
    sel = np.flatnonzero(sh & XB.L4)
    o = off[sel]
    syn = (buf[o + 23] == 6) & ((buf[o + 47] & 0x02) != 0)
    sel = sel[syn]
    assert len(sel) > 200
    o = off[sel]
    synack = (buf[o + 47] & 0x12) == 0x12
    sack = np.array([_has_sack(frames[i]) for i in sel.tolist()], dtype=bool)
    room = (buf[o + 46] >> 4) <= 13
    sel, synack, room = sel[~sack], synack[~sack], room[~sack]
    k = len(sel)
    toa = np.where(~synack & room & (np.arange(k) % every == 0), 254, -1).astype(np.int64)
    work = buf.copy()
    XB.options4(work, off[sel], remove_ts=~synack, mss_sub=np.where(synack, mss, 0))
    full = lambda v: np.full(k, v, dtype=np.int64)       # noqa: E731
    end = off[sel] + 14 + ((work[off[sel] + 16].astype(np.int64) << 8) | work[off[sel] + 17])
    start = XB.rewrite4(work, off[sel], end=end, ttl_dec=full(0), src=full(a), dst=full(b),
                        sport=full(p), dport=full(q), seq_add=np.where(synack, 0, d1),
                        ack_add=np.where(synack, -d1, 0), src_mac=full(-1), dst_mac=full(-1),
                        toa=toa)
    blob = work.tobytes()
    ab, bb = a.to_bytes(4, "big"), b.to_bytes(4, "big")
    for i, s, e, sa, t in zip(sel.tolist(), start.tolist(), end.tolist(), synack.tolist(),
                              toa.tolist()):
        if sa:
            want = X.fullnat_reply(frames[i], ab, p, bb, q, seq_delta=d1, mss_reduce=mss)
        else:
            want = X.fullnat_request(frames[i], ab, p, bb, q, seq_delta=d1, remove_ts=True,
                                     toa=ToaVariant(254, 8), toa_on=t >= 0)
        assert blob[s:e] == bytes(want), (i, sa, t)
