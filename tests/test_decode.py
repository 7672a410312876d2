"""The decoder on hand-built frames: every layer, every TOA variant, every status."""
from __future__ import annotations

import struct

import dpkt
import numpy as np
import pytest

from lvs_inspect.capture.schema import NONE16, OPT_BIT, Csum, Status, Tun
from packets import (CIP, CIP6, DIP, MAC_C, MAC_D, RIP, RIP6, VIP, VIP6, a4, a6, csum16, decode, eth, ip4,
                     ip6, tcp, udp)

TS_OPT = bytes([1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 6])
SYN_OPTS = bytes([2, 4, 0x05, 0xB4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7])


def row(t, i=0, *names):
    return {n: t[n][i].item() for n in names}


# ---- link layers --------------------------------------------------------------------------


def test_ethernet_ipv4_tcp_fields(tmp_path):
    fr = eth(ip4(tcp(opts=SYN_OPTS), ttl=63, ident=4321))
    t = decode(tmp_path, [fr])
    r = row(t, 0, "status", "ip_ver", "ip_ttl", "ip_id", "ip_proto", "sport", "dport", "tcp_flags", "tcp_seq",
            "tcp_mss", "tcp_ws", "tcp_sackok", "tcp_tsval", "tcp_hlen", "ip_frag", "ip_csum", "l4_csum")
    assert r == dict(status=0, ip_ver=4, ip_ttl=63, ip_id=4321, ip_proto=6, sport=40000, dport=80, tcp_flags=2,
                     tcp_seq=1000, tcp_mss=1460, tcp_ws=7, tcp_sackok=1, tcp_tsval=1, tcp_hlen=40,
                     ip_frag=0x4000, ip_csum=Csum.OK, l4_csum=Csum.OK)
    assert t.addr_str(t["ip_src"][0]) == CIP and t.addr_str(t["ip_dst"][0]) == VIP
    assert t.mac_str(t["eth_src"][0]) == "02:00:00:00:00:01"
    assert t["vlan"][0] == NONE16
    bits = int(t["tcp_opts"][0])
    for name in ("mss", "sackok", "ts", "ws", "nop"):
        assert bits & (1 << OPT_BIT[name]), name
    assert t.tcp_option_bytes(0) == SYN_OPTS


def test_vlan_and_qinq(tmp_path):
    inner = ip4(tcp())
    one = MAC_D + MAC_C + struct.pack("!HHH", 0x8100, 0x2000 | 42, 0x0800) + bytes(inner)
    two = MAC_D + MAC_C + struct.pack("!HHHHH", 0x88A8, 100, 0x8100, 200, 0x0800) + bytes(inner)
    t = decode(tmp_path, [one, two])
    assert t["vlan"].tolist() == [42, 100]
    assert t["vlan2"].tolist() == [NONE16, 200]
    assert t["status"].tolist() == [0, 0]
    assert t["dport"].tolist() == [80, 80]


def test_linux_cooked_v1_v2_raw_and_null(tmp_path):
    pkt = bytes(ip4(tcp()))
    sll = struct.pack("!HHH", 4, 1, 6) + MAC_C + b"\0\0" + struct.pack("!H", 0x0800) + pkt
    sll2 = struct.pack("!HHIHBB", 0x0800, 0, 3, 1, 0, 6) + MAC_C + b"\0\0" + pkt
    t1 = decode(tmp_path, [sll], linktype=113, name="a.pcap")
    t2 = decode(tmp_path, [sll2], linktype=276, name="b.pcap")
    t3 = decode(tmp_path, [pkt, ip6(tcp())], linktype=101, name="c.pcap")
    t4 = decode(tmp_path, [struct.pack("<I", 2) + pkt], linktype=0, name="d.pcap")
    for t in (t1, t2):
        assert t["status"][0] == 0 and t["dport"][0] == 80
        assert t.mac_str(t["eth_src"][0]) == "02:00:00:00:00:01"
    assert t1["pkttype"][0] == 4 and t2["pkttype"][0] == 0
    assert t3["ip_ver"].tolist() == [4, 6] and t3["status"].tolist() == [0, 0]
    assert t4["status"][0] == 0 and t4["ip_ver"][0] == 4


def test_unknown_linktype_and_ethertypes_are_ignored(tmp_path):
    lldp = eth(b"\x02\x07\x04" + b"\0" * 40, etype=0x88CC)
    stp = MAC_D + MAC_C + struct.pack("!H", 38) + b"\x42\x42\x03" + b"\0" * 35
    t = decode(tmp_path, [lldp, stp])
    assert t["status"].tolist() == [Status.IGNORED_ETHERTYPE] * 2
    t = decode(tmp_path, [b"\x00" * 30], linktype=147, name="u.pcap")
    assert t["status"].tolist() == [Status.IGNORED_LINKTYPE]


# ---- ARP -------------------------------------------------------------------------------


def arp(op, sha, spa, tha, tpa):
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + a4(spa) + tha + a4(tpa)


def test_arp_request_reply_gratuitous(tmp_path):
    bc = b"\xff" * 6
    frames = [eth(arp(1, MAC_C, CIP, b"\0" * 6, VIP), 0x0806, dst=bc),
              eth(arp(2, MAC_D, VIP, MAC_C, CIP), 0x0806),
              eth(arp(1, MAC_D, VIP, b"\0" * 6, VIP), 0x0806, dst=bc),
              eth(struct.pack("!HHBBH", 6, 0x0800, 6, 4, 1) + b"\0" * 20, 0x0806)]
    t = decode(tmp_path, frames)
    assert t["arp_op"].tolist() == [1, 2, 1, 0]
    assert t["status"].tolist() == [0, 0, 0, Status.IGNORED_ARP_NON_IPV4]
    assert t["arp_spa"][1] == int.from_bytes(a4(VIP), "big")
    assert t.mac_str(t["arp_sha"][1]) == "02:00:00:00:00:02"
    assert t["arp_spa"][2] == t["arp_tpa"][2]
    assert t.rows_of("arp").tolist() == [0, 1, 2]


# ---- TOA ---------------------------------------------------------------------------------


def toa_frame(opt: bytes, *, ack=True):
    return eth(ip4(tcp(flags=dpkt.tcp.TH_ACK if ack else dpkt.tcp.TH_SYN, opts=opt, dport=8080),
                   src=DIP, dst=RIP))


@pytest.mark.parametrize("kind,length,addr,port", [
    (254, 8, "198.51.100.7", 40001),        # Alibaba / DPVS / Huawei IPv4
    (253, 20, "2001:db8::7", 40002),        # Alibaba IPv6
    (200, 8, "198.51.100.8", 40003),        # UCloud / Tencent
    (254, 20, "2001:db8:ffff::1", 40004),   # DPVS IPv6 / NAT64
])
def test_toa_variants(tmp_path, kind, length, addr, port):
    raw = a4(addr) if length == 8 else a6(addr)
    opt = bytes([kind, length]) + struct.pack("!H", port) + raw
    opt += b"\x01" * (-len(opt) % 4)
    t = decode(tmp_path, [toa_frame(opt)])
    r = row(t, 0, "status", "toa_kind", "toa_len", "toa_port")
    assert r == dict(status=0, toa_kind=kind, toa_len=length, toa_port=port)
    assert t.addr_str(t["toa_addr"][0]) == addr
    assert t["tcp_opts"][0] & (1 << OPT_BIT["toa"])
    assert t["l4_csum"][0] == Csum.OK


def test_toa_after_other_options_and_first_one_wins(tmp_path):
    first = bytes([254, 8]) + struct.pack("!H", 1111) + a4("198.51.100.1")
    second = bytes([254, 8]) + struct.pack("!H", 2222) + a4("198.51.100.2")
    t = decode(tmp_path, [toa_frame(TS_OPT + first + second)])
    assert t["toa_port"][0] == 1111 and t.addr_str(t["toa_addr"][0]) == "198.51.100.1"
    assert t["tcp_opts"][0] & (1 << OPT_BIT["ts"])
    assert t["tcp_tsval"][0] == 5 and t["tcp_tsecr"][0] == 6


def test_toa_kinds_are_configurable_and_other_lengths_are_not_toa(tmp_path):
    exp_254_len4 = bytes([254, 4, 0xF9, 0x89])  # RFC 6994 experimental option with an ExID
    custom = bytes([252, 8]) + struct.pack("!H", 3333) + a4("198.51.100.3")
    t = decode(tmp_path, [toa_frame(exp_254_len4), toa_frame(custom)])
    assert t["toa_kind"].tolist() == [0, 0]
    assert t["tcp_opts"][1] & (1 << OPT_BIT["other"])
    t = decode(tmp_path, [toa_frame(custom)], toa_kinds=(254, 252))
    assert t["toa_kind"][0] == 252 and t["toa_port"][0] == 3333


def test_dcdn_style_toa_len7(tmp_path):
    opt = bytes([28, 7, 1]) + a4("198.51.100.9") + b"\x01"
    t = decode(tmp_path, [toa_frame(opt)], toa_kinds=(28,))
    assert t["toa_kind"][0] == 28 and t["toa_len"][0] == 7
    assert t.addr_str(t["toa_addr"][0]) == "198.51.100.9"


def test_lying_option_length_keeps_the_frame(tmp_path):
    bad = bytes([2, 4, 0x05, 0xB4, 8, 30, 0, 0])  # a TS option claiming 30 bytes in an 8-byte area
    t = decode(tmp_path, [toa_frame(bad)])
    assert t["status"][0] == Status.BAD_TCP_OPTIONS
    assert t["tcp_mss"][0] == 1460 and t["dport"][0] == 8080


# ---- tunnels -----------------------------------------------------------------------------


def outer4(proto, payload, src=DIP, dst=RIP):
    ip = dpkt.ip.IP(src=a4(src), dst=a4(dst), p=proto, ttl=63, id=9, data=bytes(payload))
    ip.df = 1
    ip.len = len(ip)
    return ip


def test_ipip_4in4_6in4_4in6(tmp_path):
    inner4 = ip4(tcp(), ttl=63)
    inner6 = ip6(tcp(), hlim=63)
    f1 = eth(outer4(4, inner4))
    f2 = eth(outer4(41, inner6))
    o6 = struct.pack("!IHBB", 0x60000000, len(bytes(inner4)), 4, 62) + a6("2001:db8::2") + a6(RIP6)
    f3 = eth(o6 + bytes(inner4), etype=0x86DD)
    t = decode(tmp_path, [f1, f2, f3])
    assert t["status"].tolist() == [0, 0, 0]
    assert t["tun"].tolist() == [Tun.IPIP] * 3
    assert [t.addr_str(k) for k in t["ip_src"]] == [CIP, CIP6, CIP]
    assert [t.addr_str(k) for k in t["out_dst"]] == [RIP, RIP, RIP6]
    assert t["out_ver"].tolist() == [4, 4, 6]
    assert t["out_ttl"].tolist() == [63, 63, 62]
    assert t["ip_ttl"].tolist() == [63, 63, 63]
    assert t["out_frag"][0] == 0x4000
    assert t["dport"].tolist() == [80, 80, 80]
    assert t["l4_csum"].tolist() == [Csum.OK] * 3


def test_gre_plain_and_with_checksum_and_key(tmp_path):
    inner = bytes(ip4(tcp()))
    plain = struct.pack("!HH", 0, 0x0800) + inner
    body = struct.pack("!HHHH", 0xA000, 0x0800, 0, 0) + struct.pack("!I", 77) + inner
    t = decode(tmp_path, [eth(outer4(47, plain)), eth(outer4(47, body))])
    assert t["tun"].tolist() == [Tun.GRE, Tun.GRE]
    assert t["tun_flags"].tolist() == [0, 0xA000]
    assert t["dport"].tolist() == [80, 80]
    assert t.addr_str(t["ip_dst"][1]) == VIP


def test_gue_on_configured_port_only(tmp_path):
    inner = bytes(ip4(tcp()))
    gue = bytes([0x00, 4, 0, 0]) + inner
    u = struct.pack("!HHHH", 51000, 6080, 8 + len(gue), 0) + gue
    u2 = struct.pack("!HHHH", 51000, 7000, 8 + len(gue), 0) + gue
    t = decode(tmp_path, [eth(outer4(17, u)), eth(outer4(17, u2))])
    assert t["tun"].tolist() == [Tun.GUE, 0]
    assert t["out_dport"][0] == 6080 and t["out_sport"][0] == 51000
    assert t["ip_proto"].tolist() == [6, 17]
    assert t["l4_csum"][1] == Csum.NONE
    t = decode(tmp_path, [eth(outer4(17, u2))], gue_ports=(7000,))
    assert t["tun"][0] == Tun.GUE


def test_tunnel_with_bad_inner_is_undecodable(tmp_path):
    t = decode(tmp_path, [eth(outer4(4, b"\x45" + b"\0" * 5))])
    assert t["status"][0] == Status.UNDECODABLE_TUNNEL


# ---- ICMP ---------------------------------------------------------------------------------


def test_icmp_frag_needed_embeds_the_offending_header(tmp_path):
    offending = bytes(ip4(tcp(sport=40000, dport=80, seq=123456, data=b"x" * 1400)))[:28]
    body = struct.pack("!HH", 0, 1480) + offending
    ic = dpkt.icmp.ICMP(type=3, code=4, data=body)
    t = decode(tmp_path, [eth(ip4(ic, src=DIP, dst=CIP))])
    r = row(t, 0, "status", "ip_proto", "icmp_type", "icmp_code", "icmp_mtu", "icmp_in_proto",
            "icmp_in_sport", "icmp_in_dport", "icmp_in_seq", "l4_csum")
    assert r == dict(status=0, ip_proto=1, icmp_type=3, icmp_code=4, icmp_mtu=1480, icmp_in_proto=6,
                     icmp_in_sport=40000, icmp_in_dport=80, icmp_in_seq=123456, l4_csum=Csum.OK)
    assert t.addr_str(t["icmp_in_dst"][0]) == VIP
    assert t["sport"][0] == 0  # the embedded ports are not the ICMP packet's own


def test_icmpv6_packet_too_big(tmp_path):
    offending = ip6(tcp(), src=CIP6, dst=VIP6)[:48]
    body = bytes([2, 0, 0, 0]) + struct.pack("!I", 1280) + offending
    pkt = struct.pack("!IHBB", 0x60000000, len(body), 58, 64) + a6("2001:db8::2") + a6(CIP6) + body
    t = decode(tmp_path, [eth(pkt, etype=0x86DD)])
    assert t["icmp_type"][0] == 2 and t["icmp_mtu"][0] == 1280
    assert t.addr_str(t["icmp_in_dst"][0]) == VIP6 and t["icmp_in_dport"][0] == 80
    assert t["l4_csum"][0] == Csum.BAD  # we put a zero checksum there


# ---- IPv6 extension headers and fragments -----------------------------------------------------


def test_ipv6_hop_by_hop_and_fragments(tmp_path):
    l4 = bytes(tcp())
    hbh = bytes([44, 0]) + b"\x01\x04\0\0\0\0"
    frag_first = bytes([6, 0]) + struct.pack("!HI", 0x0001, 0xABCD)
    frag_later = bytes([6, 0]) + struct.pack("!HI", (8 << 3), 0xABCD)
    def pkt(ext, payload):
        return struct.pack("!IHBB", 0x60000000, len(ext) + len(payload), 0, 64) + a6(CIP6) + a6(VIP6) + ext + payload
    t = decode(tmp_path, [eth(pkt(hbh + frag_first, l4), 0x86DD), eth(pkt(hbh + frag_later, b"z" * 24), 0x86DD)])
    assert t["status"].tolist() == [0, 0]
    assert t["ip_proto"].tolist() == [6, 6]
    assert t["ip_hlen"].tolist() == [56, 56]
    assert t["ip_id"].tolist() == [0xABCD, 0xABCD]
    assert t["ip_frag"].tolist() == [0x2000, 8]
    assert t["dport"].tolist() == [80, 0]
    assert t["l4_csum"][0] == Csum.UNVERIFIED
    assert t["payload_len"][1] == 24


def test_ipv4_fragments(tmp_path):
    whole = ip4(udp(data=b"d" * 100), df=False)
    raw = bytes(whole)
    hdr = bytearray(raw[:20])
    first = bytearray(hdr)
    struct.pack_into("!H", first, 2, 20 + 64)
    struct.pack_into("!H", first, 6, 0x2000)
    later = bytearray(hdr)
    struct.pack_into("!H", later, 2, 20 + 44)
    struct.pack_into("!H", later, 6, 8)
    for h in (first, later):
        struct.pack_into("!H", h, 10, 0)
        struct.pack_into("!H", h, 10, 0xFFFF - csum16(bytes(h)))
    t = decode(tmp_path, [eth(bytes(first) + raw[20:84]), eth(bytes(later) + raw[84:])])
    assert t["status"].tolist() == [0, 0]
    assert t["dport"].tolist() == [53, 0]
    assert t["l4_csum"].tolist() == [Csum.UNVERIFIED, Csum.NA]
    assert t["ip_csum"].tolist() == [Csum.OK, Csum.OK]
    assert t["payload_len"].tolist() == [56, 44]


# ---- malformed, truncated -----------------------------------------------------------------------


def test_malformed_frames_get_a_reason(tmp_path):
    good = bytearray(bytes(ip4(tcp(data=b"abc"))))
    ihl4 = bytearray(good); ihl4[0] = 0x44
    short_total = bytearray(good); struct.pack_into("!H", short_total, 2, 12)
    lying_total = bytearray(good); struct.pack_into("!H", lying_total, 2, 900)
    doff4 = bytearray(good); doff4[32] = 0x40
    ver7 = bytearray(good); ver7[0] = 0x75
    cut_tcp = bytes(good)[:30]
    frames = [eth(x) for x in (ihl4, short_total, lying_total, doff4, ver7)] + [eth(cut_tcp), MAC_D + MAC_C]
    t = decode(tmp_path, frames)
    assert t["status"].tolist() == [Status.UNDECODABLE_IP_HEADER, Status.UNDECODABLE_IP_LENGTH,
                                    Status.UNDECODABLE_IP_LENGTH, Status.UNDECODABLE_L4_HEADER,
                                    Status.UNDECODABLE_IP_VERSION, Status.UNDECODABLE_IP_LENGTH,
                                    Status.UNDECODABLE_SHORT_L2]
    acct = t.accounting()[0]
    assert acct["frames"] == 7 and acct["undecodable"] == 7 and acct["decoded"] == 0


def test_snaplen_cut_after_and_inside_headers(tmp_path):
    full = eth(ip4(tcp(data=b"p" * 400)))
    cut_payload = full[:100]
    cut_header = full[:40]
    t = decode(tmp_path, [cut_payload, cut_header], wirelens=[len(full), len(full)])
    assert t["status"].tolist() == [Status.SNAPLEN, Status.UNDECODABLE_SNAPLEN]
    assert t["payload_len"][0] == 400
    assert t["l4_csum"][0] == Csum.UNVERIFIED
    acct = t.accounting()[0]
    assert (acct["decoded"], acct["undecodable"], acct["truncated"]) == (1, 1, 1)


# ---- checksums and digests ----------------------------------------------------------------------------


def test_checksum_bad_offload_and_none(tmp_path):
    ok = bytearray(eth(ip4(tcp(data=b"hello"))))
    bad = bytearray(ok); bad[-1] ^= 0xFF
    partial = bytearray(ok)
    ip = bytes(ok[14:34])
    seg_len = len(ok) - 34
    pseudo = csum16(ip[12:20] + struct.pack("!BBH", 0, 6, seg_len))
    struct.pack_into("!H", partial, 34 + 16, pseudo)
    u0 = bytearray(eth(ip4(udp())))
    struct.pack_into("!H", u0, 34 + 6, 0)
    # odd-length frames before them shift the buffer alignment of what follows
    pads = [eth(ip4(tcp(data=b"x" * k))) for k in (1, 2, 3)]
    t = decode(tmp_path, pads + [bytes(ok), bytes(bad), bytes(partial), bytes(u0)])
    assert t["l4_csum"].tolist() == [Csum.OK] * 3 + [Csum.OK, Csum.BAD, Csum.PARTIAL, Csum.NONE]


def test_payload_digest_follows_the_payload_not_the_headers(tmp_path):
    body = b"GET /index.html HTTP/1.1\r\nHost: x\r\n" + b"A" * 200 + b"\r\n\r\n"
    hop1 = eth(ip4(tcp(data=body), src=CIP, dst=VIP, ttl=64))
    hop2 = eth(ip4(tcp(data=body, dport=8080), src=CIP, dst=RIP, ttl=63))
    other = eth(ip4(tcp(data=body[:-1] + b"!")))
    empty = eth(ip4(tcp()))
    t = decode(tmp_path, [hop1, hop2, other, empty])
    d = t["payload_digest"].tolist()
    assert d[0] == d[1] and d[0] != d[2] and d[3] == 0


def test_every_frame_is_counted(tmp_path):
    frames = [eth(ip4(tcp())), eth(b"\0" * 5, 0x88CC), b"\x01\x02", eth(ip4(udp()))]
    t = decode(tmp_path, frames)
    a = t.accounting()[0]
    assert a["frames"] == 4 == a["decoded"] + a["ignored"] + a["undecodable"]
    assert (a["decoded"], a["ignored"], a["undecodable"]) == (2, 1, 1)
    assert np.array_equal(t["frame"], [1, 2, 3, 4])


def test_ones_complement_sum_matches_a_plain_reference_at_every_alignment():
    from lvs_inspect.capture.decode import ones_sum
    rng = np.random.default_rng(7)
    buf = np.concatenate([rng.integers(0, 256, 6000, dtype=np.uint8), np.zeros(16, np.uint8)])
    a = np.sort(rng.integers(0, 5000, 3000))
    b = a + rng.integers(1, 900, 3000)

    def ref(seg):
        seg = bytes(seg) + b"\0" * (len(seg) % 2)
        s = sum(struct.unpack(f"!{len(seg) // 2}H", seg))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        return s

    got = ones_sum(buf, a, b)
    assert got.tolist() == [ref(buf[x:y]) for x, y in zip(a, b)]


def test_reading_without_tcp_options_leaves_only_the_option_columns_empty():
    """replay reads non-FullNAT traces with tcp_options=False (every other column is the same),
    FullNAT ones with option_bytes=False (every column is the same, no raw option bytes)."""
    from pathlib import Path

    from lvs_inspect.capture import read_table
    from lvs_inspect.capture.schema import COLUMNS, empty_column

    trace = str(Path(__file__).resolve().parent.parent / "fixtures" / "synth" / "fullnat" / "trace.pcapng")
    full = read_table([trace])
    bare = read_table([trace], tcp_options=False)
    option_cols = {"tcp_opts", "tcp_mss", "tcp_ws", "tcp_sackok", "tcp_tsval", "tcp_tsecr",
                   "toa_kind", "toa_len", "toa_port", "toa_addr"}
    assert (full["toa_kind"] != 0).any() and (full["tcp_mss"] != 0).any()
    for c in COLUMNS:
        if c.group != "core":
            continue
        if c.name in option_cols:
            assert np.array_equal(bare[c.name], empty_column(c.name, len(bare))), c.name
        else:
            assert np.array_equal(full[c.name], bare[c.name]), c.name
    assert full.tcp_option_bytes(int(np.flatnonzero(full["tcp_hlen"] > 20)[0]))
    with pytest.raises(ValueError, match="without TCP option bytes"):
        bare.tcp_option_bytes(0)
    # the columns without the raw bytes
    cols = read_table([trace], option_bytes=False)
    assert cols.opt_bytes is None and full.opt_bytes is not None
    for c in COLUMNS:
        if c.group == "core":
            assert np.array_equal(full[c.name], cols[c.name]), c.name
