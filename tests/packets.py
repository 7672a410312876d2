"""Hand-built frames for decoder tests (dpkt for the headers it knows, struct for the rest)."""
from __future__ import annotations

import socket
import struct
from pathlib import Path

import dpkt

from lvs_inspect.capture import read_table
from lvs_inspect.capture.writer import PcapngWriter, PcapWriter

MAC_C = bytes.fromhex("020000000001")
MAC_D = bytes.fromhex("020000000002")
CIP, VIP, RIP, DIP, LIP = "198.51.100.10", "203.0.113.100", "192.0.2.11", "192.0.2.2", "192.0.2.200"
CIP6, VIP6, RIP6 = "2001:db8::10", "2001:db8:1::100", "2001:db8:2::11"


def a4(s: str) -> bytes:
    return socket.inet_aton(s)


def a6(s: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6, s)


def tcp(sport=40000, dport=80, flags=dpkt.tcp.TH_SYN, opts=b"", data=b"", seq=1000, ack=0, win=64240):
    t = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, win=win, opts=opts, data=data)
    t.off = (20 + len(opts)) // 4
    return t


def udp(sport=5353, dport=53, data=b"q" * 12):
    return dpkt.udp.UDP(sport=sport, dport=dport, data=data, ulen=8 + len(data))


def ip4(l4, src=CIP, dst=VIP, ttl=64, ident=77, proto=None, df=True, tos=0):
    p = proto if proto is not None else {dpkt.tcp.TCP: 6, dpkt.udp.UDP: 17, dpkt.icmp.ICMP: 1}.get(type(l4), 0)
    ip = dpkt.ip.IP(src=a4(src), dst=a4(dst), p=p, ttl=ttl, id=ident, tos=tos, data=l4)
    ip.df = 1 if df else 0
    ip.len = len(ip)
    return ip


def ip6(l4, src=CIP6, dst=VIP6, hlim=64, nxt=None):
    nh = nxt if nxt is not None else {dpkt.tcp.TCP: 6, dpkt.udp.UDP: 17}.get(type(l4), 59)
    payload = bytes(l4) if not isinstance(l4, bytes) else l4
    if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)):
        payload = l4_with_v6_checksum(l4, src, dst, nh)
    hdr = struct.pack("!IHBB", 0x60000000, len(payload), nh, hlim) + a6(src) + a6(dst)
    return hdr + payload


def csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def l4_with_v6_checksum(l4, src, dst, nh) -> bytes:
    l4.sum = 0
    raw = bytearray(bytes(l4))
    pseudo = a6(src) + a6(dst) + struct.pack("!IxxxB", len(raw), nh)
    c = 0xFFFF - csum16(pseudo + bytes(raw))
    off = 16 if nh == 6 else 6
    raw[off:off + 2] = struct.pack("!H", c or 0xFFFF)
    return bytes(raw)


def eth(payload, etype=0x0800, src=MAC_C, dst=MAC_D) -> bytes:
    return dst + src + struct.pack("!H", etype) + bytes(payload)


def vlan(payload, vid, etype=0x0800, tpid=0x8100) -> bytes:
    return struct.pack("!HH", vid, etype) + bytes(payload), tpid


def write_pcap(path: Path, frames, linktype=1, snaplen=262144, wirelens=None) -> Path:
    with PcapWriter(str(path), linktype, snaplen=snaplen) as w:
        for i, fr in enumerate(frames):
            w.write(1_700_000_000_000_000_000 + i * 1000, bytes(fr),
                    wirelen=None if wirelens is None else wirelens[i])
    return path


def decode(tmp_path: Path, frames, linktype=1, name="t.pcap", **kw):
    p = write_pcap(tmp_path / name, frames, linktype=linktype, wirelens=kw.pop("wirelens", None))
    return read_table([str(p)], **kw)


__all__ = ["PcapngWriter", "PcapWriter", "decode", "write_pcap"]
