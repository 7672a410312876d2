"""One readable line per decoded frame (the `frames` command)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..capture.schema import Csum, Status, Tun
from ..capture.table import PacketTable, mac_str

_FLAGS = ((0x02, "SYN"), (0x10, "ACK"), (0x01, "FIN"), (0x04, "RST"), (0x08, "PSH"), (0x20, "URG"),
          (0x40, "ECE"), (0x80, "CWR"), (0x100, "NS"))
_L4 = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6", 47: "GRE", 4: "IPIP", 41: "IPv6-in-IP"}
_TUN = {Tun.IPIP: "IPIP", Tun.GRE: "GRE", Tun.GUE: "GUE"}


def tcp_flag_text(flags: int) -> str:
    return ",".join(name for bit, name in _FLAGS if flags & bit) or "none"


def frame_lines(t: PacketTable, limit: int | None = None) -> Iterator[str]:
    n = len(t) if limit is None else min(limit, len(t))
    if n == 0:
        return
    cols = {name: t[name][:n].tolist() for name in (
        "frame", "iface", "ts_ns", "wirelen", "status", "eth_src", "eth_dst", "vlan", "ethertype", "ip_ver",
        "ip_src", "ip_dst", "ip_ttl", "ip_id", "ip_proto", "ip_frag", "sport", "dport", "tcp_flags", "tcp_seq",
        "tcp_ack", "tcp_mss", "toa_kind", "toa_port", "toa_addr", "payload_len", "l4_csum", "arp_op", "arp_sha",
        "arp_spa", "arp_tpa", "tun", "out_src", "out_dst", "icmp_type", "icmp_code", "icmp_mtu", "icmp_in_src",
        "icmp_in_dst", "icmp_in_sport", "icmp_in_dport")}
    t0 = int(np.min(t["ts_ns"][: max(n, 1)])) if n else 0
    names = [v.name for v in t.vantages]
    for i in range(n):
        c = {k: v[i] for k, v in cols.items()}
        head = f"{c['frame']:>7} {(c['ts_ns'] - t0) / 1e9:11.6f} {names[c['iface']] if names else '':<10}"
        yield head + " " + _describe(t, c)


def _describe(t: PacketTable, c: dict) -> str:
    st = c["status"]
    if st >= 10:
        return f"[{Status(st).name.lower()}] ethertype=0x{c['ethertype']:04x} len={c['wirelen']}"
    if c["arp_op"]:
        from ipaddress import IPv4Address
        spa, tpa = IPv4Address(c["arp_spa"]), IPv4Address(c["arp_tpa"])
        if c["arp_op"] == 1:
            what = f"who-has {tpa} tell {spa}" + (" (gratuitous)" if spa == tpa else "")
        else:
            what = f"{spa} is-at {mac_str(c['arp_sha'])}"
        return f"ARP {what} [{mac_str(c['eth_src'])} > {mac_str(c['eth_dst'])}]"
    src, dst = t.addr_str(c["ip_src"]), t.addr_str(c["ip_dst"])
    proto = c["ip_proto"]
    if proto in (6, 17) and not (c["ip_frag"] & 0x1FFF):
        if ":" in src:
            src, dst = f"[{src}]", f"[{dst}]"
        ends = f"{src}:{c['sport']} > {dst}:{c['dport']}"
    else:
        ends = f"{src} > {dst}"
    parts = [ends, _L4.get(proto, f"proto {proto}")]
    if proto == 6:
        parts.append(f"[{tcp_flag_text(c['tcp_flags'])}] seq={c['tcp_seq']} ack={c['tcp_ack']}")
        if c["tcp_mss"]:
            parts.append(f"mss={c['tcp_mss']}")
        if c["toa_kind"]:
            parts.append(f"TOA({c['toa_kind']})={t.addr_str(c['toa_addr'])}:{c['toa_port']}")
    elif proto in (1, 58):
        parts.append(f"type={c['icmp_type']} code={c['icmp_code']}")
        if c["icmp_mtu"]:
            parts.append(f"mtu={c['icmp_mtu']}")
        if c["icmp_in_src"]:
            parts.append(f"about {t.addr_str(c['icmp_in_src'])}:{c['icmp_in_sport']} > "
                         f"{t.addr_str(c['icmp_in_dst'])}:{c['icmp_in_dport']}")
    parts.append(f"len={c['payload_len']} ttl={c['ip_ttl']} id={c['ip_id']}")
    if c["ip_frag"] & 0x3FFF:
        parts.append(f"frag off={(c['ip_frag'] & 0x1FFF) * 8}{' MF' if c['ip_frag'] & 0x2000 else ''}")
    if c["tun"]:
        parts.append(f"in {_TUN.get(c['tun'], 'tunnel')} {t.addr_str(c['out_src'])} > {t.addr_str(c['out_dst'])}")
    if c["l4_csum"] == Csum.BAD:
        parts.append("BAD-CHECKSUM")
    elif c["l4_csum"] == Csum.PARTIAL:
        parts.append("csum-offload")
    if c["vlan"] != 0xFFFF:
        parts.append(f"vlan={c['vlan']}")
    if st == Status.SNAPLEN:
        parts.append("[cut by snaplen]")
    elif st == Status.BAD_TCP_OPTIONS:
        parts.append("[bad TCP options]")
    return " ".join(parts)
