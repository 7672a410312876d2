"""The columns of the PacketTable: one row per captured frame.

This module is the single place where column names, dtypes and meanings are settled.
Everything downstream (flows, checks, rules, reports, the TUI) refers to these names.

Conventions
- Addresses (``ip_src``, ``out_dst``, ``toa_addr``, ...) are *address keys* (uint64):
  an IPv4 address is its 32-bit value; an IPv6 address is ``V6_FLAG | n`` where ``n``
  indexes ``PacketTable.addrs6`` (interned per read).  0 means "absent".  Use
  :func:`lvs_inspect.net.addr_key` / :meth:`PacketTable.addr_key` to turn a text
  address into a key and :meth:`PacketTable.addr_str` for the reverse.
- MAC addresses are uint64 holding the 48-bit value; 0 means absent.
- ``NONE16`` (0xFFFF) marks an absent VLAN id; other absent integer fields are 0 and the
  field's meaning is tied to a presence column (``ip_ver``, ``ip_proto``, ``tun`` ...).
- Sparse groups (ARP, tunnel outer header, ICMP errors) are stored only for the rows that
  have them; ``PacketTable[name]`` materialises any column densely on demand.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

V6_FLAG = np.uint64(1 << 63)
NONE16 = 0xFFFF


class Status(IntEnum):
    """Decode status of a frame: the category is the value's range.

    0        decoded
    1        decoded, but snaplen cut the frame after its headers (payload partly missing)
    2        decoded, but the TCP options are malformed (read up to the bad one)
    10..49   ignored (a valid frame outside what lvs-inspect analyses), reason in the name
    50..99   undecodable (malformed or cut inside a header), reason in the name
    """

    DECODED = 0
    SNAPLEN = 1                # headers complete, payload cut by the capture's snaplen
    BAD_TCP_OPTIONS = 2        # decoded, but a TCP option's length runs past the header: options read up to it
    IGNORED_ETHERTYPE = 10     # not IPv4/IPv6/ARP (LLDP, STP, 802.3 length frames, ...)
    IGNORED_LINKTYPE = 11      # link type lvs-inspect does not decode
    IGNORED_ARP_NON_IPV4 = 12  # ARP for another protocol/hardware than Ethernet/IPv4
    UNDECODABLE_SHORT_L2 = 50  # frame shorter than its link-layer header
    UNDECODABLE_IP_VERSION = 51  # IP version nibble does not match the ethertype/link
    UNDECODABLE_IP_HEADER = 52   # bad IHL / header length past the frame
    UNDECODABLE_IP_LENGTH = 53   # total length smaller than the header (a lying length)
    UNDECODABLE_L4_HEADER = 54   # TCP/UDP/ICMP header cut or TCP data offset < 5
    UNDECODABLE_SNAPLEN = 55     # snaplen cut the frame inside a header
    UNDECODABLE_TUNNEL = 56      # tunnel header (GRE/GUE/IPIP inner) malformed
    UNDECODABLE_ARP = 57         # ARP body cut short
    UNDECODABLE_EXT_HEADER = 58  # IPv6 extension header chain runs past the frame


def status_category(code: int) -> str:
    """'decoded', 'ignored' or 'undecodable' for a status code."""
    if code < 10:
        return "decoded"
    if code < 50:
        return "ignored"
    return "undecodable"


class Tun(IntEnum):
    NONE = 0
    IPIP = 1   # IPv4/IPv6 directly in IPv4/IPv6 (protocol 4 or 41)
    GRE = 2    # GRE (protocol 47), plain or with checksum/key/sequence
    GUE = 3    # GUE over UDP (configurable ports, default 6080)


class Csum(IntEnum):
    NA = 0          # no such checksum (no IP / not TCP-UDP-ICMP / IPv6 header)
    OK = 1
    BAD = 2         # wrong, and not explained by offload
    UNVERIFIED = 3  # bytes missing (snaplen) or a fragment: cannot check
    PARTIAL = 4     # holds the pseudo-header sum: checksum offload on the capturing host
    NONE = 5        # UDP over IPv4 with checksum 0 (sender chose none)


# TCP option presence bits in ``tcp_opts``
OPT_BIT = {"eol": 0, "nop": 1, "mss": 2, "ws": 3, "sackok": 4, "sack": 5, "ts": 8,
           "tfo": 9, "mptcp": 10, "toa": 30, "other": 31}


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    group: str          # "core" (dense) or a sparse group: "arp", "tun", "icmp"
    doc: str


def _c(name: str, dtype: str, group: str, doc: str) -> Column:
    return Column(name, dtype, group, doc)


COLUMNS: tuple[Column, ...] = (
    # --- accounting -------------------------------------------------------------
    _c("frame", "u4", "core", "1-based frame number within its input file (Wireshark's frame.number)"),
    _c("iface", "u2", "core", "vantage id: index into PacketTable.vantages (input file + interface)"),
    _c("ts_ns", "i8", "core", "capture timestamp, integer nanoseconds since the epoch"),
    _c("caplen", "u4", "core", "bytes captured"),
    _c("wirelen", "u4", "core", "bytes on the wire"),
    _c("status", "u1", "core", "Status code: decoded / ignored / undecodable, with reason"),
    _c("offset", "i8", "core", "byte offset of the frame's record in the (decompressed) input"),
    # --- link layer --------------------------------------------------------------
    _c("eth_src", "u8", "core", "source MAC (Ethernet, or SLL link-layer address), 0 if none"),
    _c("eth_dst", "u8", "core", "destination MAC, 0 if none (SLL has none)"),
    _c("vlan", "u2", "core", "outer 802.1Q/802.1ad VLAN id, NONE16 if untagged"),
    _c("vlan2", "u2", "core", "inner VLAN id (QinQ), NONE16 if none"),
    _c("ethertype", "u2", "core", "ethertype after VLAN tags (SLL: protocol; raw IP: 0x0800/0x86DD)"),
    _c("pkttype", "u1", "core", "Linux cooked packet type (0 to us, 4 outgoing, ...); 255 if not SLL"),
    # --- network layer (inner header when tunnelled) -------------------------------
    _c("ip_ver", "u1", "core", "4 or 6; 0 when the frame has no IP header"),
    _c("ip_src", "u8", "core", "source address key"),
    _c("ip_dst", "u8", "core", "destination address key"),
    _c("ip_ttl", "u1", "core", "TTL / hop limit"),
    _c("ip_id", "u4", "core", "IPv4 identification; IPv6 fragment header identification"),
    _c("ip_frag", "u2", "core", "IPv4 flags+fragment offset field (DF 0x4000, MF 0x2000, offset*8 in low 13 bits); IPv6 fragment header mapped the same way"),
    _c("ip_len", "u4", "core", "total length of the IP packet including its header (IPv6: 40 + payload length)"),
    _c("ip_hlen", "u2", "core", "IP header length in bytes (IPv6: 40 + extension headers)"),
    _c("ip_tos", "u1", "core", "IPv4 TOS / IPv6 traffic class (DSCP << 2 | ECN)"),
    _c("ip_proto", "u1", "core", "IPv4 protocol / IPv6 final next header"),
    # --- transport ----------------------------------------------------------------
    _c("sport", "u2", "core", "TCP/UDP source port"),
    _c("dport", "u2", "core", "TCP/UDP destination port"),
    _c("tcp_flags", "u2", "core", "TCP flags, 9 bits (FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10 URG 0x20 ECE 0x40 CWR 0x80 NS 0x100)"),
    _c("tcp_seq", "u4", "core", "raw sequence number"),
    _c("tcp_ack", "u4", "core", "raw acknowledgment number"),
    _c("tcp_win", "u2", "core", "raw window field (not scaled)"),
    _c("tcp_hlen", "u1", "core", "TCP header length in bytes (data offset * 4)"),
    _c("tcp_opts", "u4", "core", "bit set of TCP options present (OPT_BIT)"),
    _c("tcp_mss", "u2", "core", "MSS option value, 0 if absent"),
    _c("tcp_ws", "u1", "core", "window scale shift, 255 if absent"),
    _c("tcp_sackok", "u1", "core", "1 if SACK-permitted is present"),
    _c("tcp_tsval", "u4", "core", "timestamp value (tcp_opts has bit 'ts' when present)"),
    _c("tcp_tsecr", "u4", "core", "timestamp echo reply"),
    _c("toa_kind", "u1", "core", "TOA option kind (254, 253, 200 or a configured one), 0 if none"),
    _c("toa_len", "u1", "core", "TOA option length (8: IPv4, 20: IPv6)"),
    _c("toa_port", "u2", "core", "client port carried by TOA"),
    _c("toa_addr", "u8", "core", "client address key carried by TOA"),
    _c("payload_len", "u4", "core", "L4 payload length from the IP lengths (not what was captured)"),
    _c("payload_digest", "u4", "core", "position-sensitive digest of the captured L4 payload (0 if empty)"),
    _c("ip_csum", "u1", "core", "Csum of the (inner) IPv4 header"),
    _c("l4_csum", "u1", "core", "Csum of TCP/UDP/ICMP"),
    # --- ARP (sparse) -------------------------------------------------------------
    _c("arp_op", "u2", "arp", "ARP opcode (1 request, 2 reply); 0 if not ARP"),
    _c("arp_sha", "u8", "arp", "sender hardware address"),
    _c("arp_spa", "u4", "arp", "sender IPv4 address"),
    _c("arp_tha", "u8", "arp", "target hardware address"),
    _c("arp_tpa", "u4", "arp", "target IPv4 address"),
    # --- tunnel outer header (sparse) ----------------------------------------------
    _c("tun", "u1", "tun", "Tun kind, 0 when not tunnelled"),
    _c("out_ver", "u1", "tun", "outer IP version"),
    _c("out_src", "u8", "tun", "outer source address key"),
    _c("out_dst", "u8", "tun", "outer destination address key"),
    _c("out_ttl", "u1", "tun", "outer TTL / hop limit"),
    _c("out_id", "u2", "tun", "outer IPv4 identification"),
    _c("out_frag", "u2", "tun", "outer IPv4 flags+fragment offset field"),
    _c("out_tos", "u1", "tun", "outer TOS / traffic class"),
    _c("out_sport", "u2", "tun", "GUE: outer UDP source port"),
    _c("out_dport", "u2", "tun", "GUE: outer UDP destination port"),
    _c("tun_flags", "u2", "tun", "GRE: first 16 bits (C/K/S flags, version); GUE: first 16 bits of the GUE header"),
    # --- ICMP / ICMPv6 (sparse) ----------------------------------------------------
    _c("icmp_type", "u1", "icmp", "ICMP/ICMPv6 type (valid where ip_proto is 1 or 58)"),
    _c("icmp_code", "u1", "icmp", "ICMP/ICMPv6 code"),
    _c("icmp_mtu", "u4", "icmp", "next-hop MTU of frag-needed / packet-too-big, else 0"),
    _c("icmp_in_ver", "u1", "icmp", "IP version of the embedded (offending) packet, 0 if none"),
    _c("icmp_in_src", "u8", "icmp", "embedded packet's source address key"),
    _c("icmp_in_dst", "u8", "icmp", "embedded packet's destination address key"),
    _c("icmp_in_proto", "u1", "icmp", "embedded packet's protocol"),
    _c("icmp_in_sport", "u2", "icmp", "embedded TCP/UDP source port"),
    _c("icmp_in_dport", "u2", "icmp", "embedded TCP/UDP destination port"),
    _c("icmp_in_seq", "u4", "icmp", "embedded TCP sequence number"),
)

COLUMN = {c.name: c for c in COLUMNS}
GROUPS = {"arp": "arp_op", "tun": "tun", "icmp": "icmp_type"}  # presence column per sparse group
CORE_COLUMNS = tuple(c.name for c in COLUMNS if c.group == "core")


def group_columns(group: str) -> tuple[str, ...]:
    return tuple(c.name for c in COLUMNS if c.group == group)


def empty_column(name: str, n: int) -> np.ndarray:
    """A column of n rows holding the field's 'absent' value."""
    c = COLUMN[name]
    if name in ("vlan", "vlan2"):
        return np.full(n, NONE16, dtype=c.dtype)
    if name in ("tcp_ws", "pkttype"):
        return np.full(n, 255, dtype=c.dtype)
    return np.zeros(n, dtype=c.dtype)
