"""The reference forwarder running live: a userspace director on AF_PACKET sockets.

:class:`LiveDirector` forwards real traffic in the network namespace it runs in, with the
same model the replay uses: :class:`~.schedulers.ServiceTable` picks the real server,
:class:`~.conntable.ConnTable` keeps the connections, and the transmit function of the real
server's mode in :mod:`.xmit` makes the bytes (NAT, DR, TUN with IPIP/GUE/GRE, FullNAT with
LIP/lport, sequence delta, timestamp removal, MSS adjustment and TOA per profile).

How a frame travels
-------------------
* **Receive.** One ``AF_PACKET``/``SOCK_RAW`` socket per interface, bound to ``ETH_P_ALL``
  with a classic BPF filter (created unbound, filter attached, then bound, so no unfiltered
  frame is ever queued) that passes only IPv4/IPv6 frames whose destination MAC is the
  interface's own: broadcast, multicast, ARP and frames for other hosts stay with the kernel.
  ``PACKET_IGNORE_OUTGOING`` keeps the frames the director sends off its own sockets (the MAC
  filter would too: what it sends is addressed to the next hop), so ``recv_into`` needs no
  address tuple to tell ``PACKET_OUTGOING`` frames apart. ``PACKET_VNET_HDR`` gives
  each frame a virtio-net header: it says when the sender left the L4 checksum to offload
  (``NEEDS_CSUM``, the usual case between veth peers) and when a frame is a GSO super-frame
  (up to 64 KB, what a TSO sender puts on a veth). Super-frames are cut into the segments a
  NIC would have sent (``gso_size`` payload each, IPv4 ID +1, seq advanced, FIN/PSH on the
  last, CWR on the first, checksums computed), each handled as one packet.
* **Classify.** A TCP/UDP packet to a service (VIP, protocol, port; port-0 and fwmark
  services by address) is a client packet: :meth:`ConnTable.packet_in` finds or schedules
  its connection. A packet from a NAT/FullNAT real server's address and port is a reply when
  it goes to a FullNAT local address (LIP), or, for NAT, to an address that is not the
  director's: :meth:`ConnTable.packet_out`. Everything else (the director's own traffic, ARP,
  ICMP, other ports) is left to the kernel.
* **Transmit.** By the connection's mode: :func:`.xmit.nat_request` /
  :func:`.xmit.nat_reply`, :func:`.xmit.dr`, :func:`.xmit.tun`,
  :func:`.xmit.fullnat_request` / :func:`.xmit.fullnat_reply`, with the profile's TTL
  decrements and the egress interface's MTU. Checksums: one left partial by the sender's
  offload is computed from scratch; a complete one that is right is recomputed (the same
  bytes an incremental update gives, on xmit's faster path); a wrong one is updated
  incrementally, as the kernel does, so it stays wrong. DR and TUN, which do not touch L4,
  complete a partial checksum first, so the wire carries what a NIC would have sent. An
  :class:`~.xmit.IcmpError` (Time Exceeded, Fragmentation Needed / Packet Too Big) goes
  back out of the interface the packet came in on, to the sender's MAC. An oversized IPv4 packet without DF is fragmented. Like the kernel's IPVS:
  a TCP packet without SYN that has no connection gets the RST the director's own stack
  would send (the VIP is local there and nothing listens), and a service without an
  available real server answers ICMP port unreachable.
* **Egress and next hop.** The namespace's addresses and routes are read once at start
  (``ip -j addr``, ``ip -j route``, ``ip -6 -j route``): the egress interface is the one
  whose connected subnet holds the destination (longest prefix), else the one of the longest
  matching route among the director's interfaces, whose gateway is then the next hop. The
  next hop's MAC is the real server's ``mac`` from the topology when given (DR, NAT, TUN,
  FullNAT toward a real server that is the next hop), else the kernel's neighbour table
  (``ip -j neigh``), read by a helper thread every 2 s and at once when an address is
  missing. A missing address is resolved by the kernel itself: the director adds a
  *managed* neighbour entry (``ip neigh replace ADDR dev DEV managed``, Linux >= 5.16), which
  makes the kernel send ARP / neighbour solicitations and keep the entry fresh, without any
  packet to the host; entries the director created are deleted at exit. Up to 64 frames
  per next hop wait for the answer (3 s, then they are dropped as ``no-neighbour``).
  FullNAT replies of a profile with ``reflect_l2`` (``dpvs``, ``alibaba``) do not route: they
  go back the way the client's frame came (its source MAC, out of the interface it arrived
  on), as those implementations' "fast xmit" does (SEMANTICS §1.4). FullNAT local addresses
  and ports come from :class:`~.localports.LocalPorts` (the profile's ``lport_range``), the
  TOA handling from the profile's ``toa_full`` and ``strip_client_toa``.
* **The kernel keeps out.** The director's kernel must not also process these packets (it
  would RST SYNs to the VIP, or forward NAT replies a second time). At start an nftables
  table ``netdev lvs_inspect_director`` is installed with an ingress chain per interface that
  drops exactly the frames classified above (client packets to services; NAT replies from a
  real server's address and port to a non-local address; FullNAT replies to a LIP).
  ``AF_PACKET`` taps run before the netdev ingress hook (``__netif_receive_skb_core``
  delivers to ``ptype_all`` first), so the director's sockets still see them: checked on
  this kernel (6.18) with a veth pair, a netdev ingress chain dropping UDP, a UDP socket
  that received nothing and an ``AF_PACKET`` socket that saw every datagram. ARP and
  everything else stays with the kernel, which therefore answers ARP for the VIP, the
  director's addresses and the LIPs: whoever sets up the namespace configures them on its
  interfaces (VIP on the client-facing interface, LIPs on the real-server-facing one). The
  table is removed at exit; when it already exists at start (another director in this
  namespace, or a stale one after ``kill -9``) the director refuses to start.

Fault injection (for the lab)
-----------------------------
``toa_port_byteorder="host"`` (``lvs-inspect director --toa-port-byteorder host``) writes
the port in the TOA option little-endian, i.e. byte-swapped on the wire, as TOA modules and
directors that forget ``htons`` do: the real server's TOA module then reports a wrong client
port. Everything else stays right, so a trace of it shows exactly that fault. The default,
``network``, is what every implementation is meant to do (SEMANTICS §4.1).

Not done live: IP reassembly (fragments of service traffic are dropped and counted), SYN
proxy (a ``synproxy`` service is forwarded without it), LB-originated RSTs on entry expiry
(``rst_on_expiry``), translation of ICMP errors about connections, VLAN tags, UDP GSO.

Performance: one thread, ``poll`` over the sockets, each ready socket drained with
``recv_into`` a preallocated buffer (Python has no ``recvmmsg``), no per-packet object
beyond the frame bytes and the output. Measured on the 2-core lab machine (shared): UDP NAT
flooded by a blaster on the other core, about 40-50 k packets/s forwarded (DR up to 70 k);
one bulk TCP upload through NAT about 33 MB/s, through DPVS FullNAT about 24 MB/s; without
the socket calls, the model path alone runs 80-125 k packets/s. At exit :meth:`close` writes
one JSON line of statistics to stderr (packets in/out, drops by reason, connections, packets
per second).
"""
from __future__ import annotations

import ipaddress
import json
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable

from ..topology.model import Mode, Topology, TunType
from . import xmit
from .conntable import IPPROTO_TCP, IPPROTO_UDP, ConnTable, Verdict
from .localports import LocalPorts
from .schedulers import ServiceTable
from .xmit import checksum_field, checksum_residue

__all__ = [
    "NFT_TABLE",
    "DirectorError",
    "LiveDirector",
    "fill_l4_checksum",
    "fragment_ipv4",
    "icmp_unreachable_for",
    "segment_tcp",
    "tcp_reset_for",
]

NFT_TABLE = "lvs_inspect_director"

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
VNET_LEN = 10
VNET_F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80

RX_BUF = 1 << 18          # a 64 KB GSO frame and then some (MSG_TRUNC tells the real size)
BATCH = 256               # frames read from one socket before looking at the others
PENDING_MAX = 64          # frames waiting for one next hop's MAC
PENDING_WAIT = 3.0        # seconds a next hop may take to resolve
NEIGH_REFRESH = 2.0       # seconds between neighbour-table reads
USABLE_NUD = frozenset(("REACHABLE", "STALE", "DELAY", "PROBE", "PERMANENT", "NOARP"))

TCP, UDP = IPPROTO_TCP, IPPROTO_UDP
FIN, SYN, RST, PSH, ACK, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x80
M32 = 0xFFFFFFFF



class DirectorError(Exception):
    """The director cannot start or run; ``str()`` is the one line to print."""


def _default_log(msg: str) -> None:
    print(f"lvs-inspect director: {msg}", file=sys.stderr, flush=True)


def _ip(cmd: list[str], *, stdin: str | None = None, check: bool = True) -> str:
    try:
        p = subprocess.run(cmd, check=False, input=stdin, capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        raise DirectorError(f"'{cmd[0]}' is not installed (needed for the live director)") from None
    except subprocess.TimeoutExpired:
        raise DirectorError(f"'{' '.join(cmd)}' did not finish in 20 s") from None
    if check and p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()
        raise DirectorError(f"'{' '.join(cmd)}' failed: {err[0] if err else f'exit {p.returncode}'}")
    return p.stdout


def _json(text: str) -> list:
    text = text.strip()
    return json.loads(text) if text else []


def _mac_bytes(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def _mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _packed(ver: int, addr: int) -> bytes:
    return addr.to_bytes(4 if ver == 4 else 16, "big")


def _astr(ver: int, addr: int) -> str:
    return str(ipaddress.IPv4Address(addr) if ver == 4 else ipaddress.IPv6Address(addr))


# =========================================================================== packet helpers

def _ip4_header_checksum(buf: bytearray, l3: int, hl: int) -> None:
    buf[l3 + 10] = buf[l3 + 11] = 0
    c = checksum_field(checksum_residue(buf[l3:l3 + hl]))
    buf[l3 + 10], buf[l3 + 11] = c >> 8, c & 0xFF


def fill_l4_checksum(buf: bytearray, l3: int, ver: int, proto: int, l4: int, end: int) -> None:
    """Compute the TCP/UDP checksum of ``buf[l4:end]`` from scratch (what the NIC does for a
    checksum left to offload)."""
    co = l4 + (16 if proto == TCP else 6)
    buf[co] = buf[co + 1] = 0
    if ver == 4:
        pseudo = int.from_bytes(buf[l3 + 12:l3 + 20], "big")
    else:
        pseudo = int.from_bytes(buf[l3 + 8:l3 + 40], "big")
    c = checksum_field((pseudo + proto + (end - l4) + checksum_residue(buf[l4:end])) % 0xFFFF)
    if proto == UDP and c == 0:
        c = 0xFFFF
    buf[co], buf[co + 1] = c >> 8, c & 0xFF


_V6_EXT = frozenset((0, 43, 44, 60))


def _v6_transport(frame: bytes, end: int):
    """(protocol, header length incl. extension headers, is a fragment) of an IPv6 packet at
    offset 14 whose first next header is an extension header; None when malformed."""
    nh, off, frag = frame[20], 54, False
    for _ in range(8):
        if nh not in _V6_EXT:
            return nh, off - 14, frag
        if off + 8 > min(end, len(frame)):
            return None
        if nh == 44:
            frag = True
            nh, off = frame[off], off + 8
        else:
            nh, off = frame[off], off + 8 + frame[off + 1] * 8
    return None


def _l4_valid(frame: bytes, ver: int, proto: int, l4: int, end: int) -> bool:
    """Is the TCP/UDP checksum of a frame (IP header at 14) right? UDP/IPv4 without a
    checksum counts as right."""
    if proto == UDP and ver == 4 and frame[l4 + 6] == 0 and frame[l4 + 7] == 0:
        return True
    pseudo = int.from_bytes(frame[26:34] if ver == 4 else frame[22:54], "big")
    seg = int.from_bytes(frame[l4:end], "big")
    if (end - l4) & 1:
        seg <<= 8
    return (pseudo + proto + end - l4 + seg) % 0xFFFF == 0


def segment_tcp(frame: bytes, l3: int, ver: int, hl: int, end: int, gso_size: int) -> list[bytes]:
    """Cut a TCP GSO super-frame into the segments a NIC would send (``tcp_gso_segment``):
    ``gso_size`` payload bytes each; seq advanced; IPv4 ID + 1 per segment; FIN and PSH only
    on the last, CWR only on the first; IP lengths and all checksums computed."""
    l4 = l3 + hl
    thl = (frame[l4 + 12] >> 4) * 4
    hdr_end = l4 + thl
    plen = end - hdr_end
    if gso_size <= 0 or plen <= gso_size:
        buf = bytearray(frame[:end])
        if ver == 4:
            _ip4_header_checksum(buf, l3, hl)
        fill_l4_checksum(buf, l3, ver, TCP, l4, end)
        return [bytes(buf)]
    head = frame[:hdr_end]
    seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
    flags = frame[l4 + 13]
    ident = (frame[l3 + 4] << 8) | frame[l3 + 5] if ver == 4 else 0
    out = []
    offs = range(hdr_end, end, gso_size)
    last = len(offs) - 1
    for i, o in enumerate(offs):
        chunk = frame[o:min(o + gso_size, end)]
        buf = bytearray(head)
        buf += chunk
        seg_end = len(buf)
        if ver == 4:
            tot = seg_end - l3
            buf[l3 + 2], buf[l3 + 3] = tot >> 8, tot & 0xFF
            idn = (ident + i) & 0xFFFF
            buf[l3 + 4], buf[l3 + 5] = idn >> 8, idn & 0xFF
            _ip4_header_checksum(buf, l3, hl)
        else:
            pl = seg_end - l3 - 40
            buf[l3 + 4], buf[l3 + 5] = pl >> 8, pl & 0xFF
        s = (seq + (o - hdr_end)) & M32
        buf[l4 + 4:l4 + 8] = s.to_bytes(4, "big")
        f = flags
        if i != last:
            f &= ~(FIN | PSH)
        if i:
            f &= ~CWR
        buf[l4 + 13] = f
        fill_l4_checksum(buf, l3, ver, TCP, l4, seg_end)
        out.append(bytes(buf))
    return out


def _swap_l2(frame: bytes, l3: int, etype: bytes) -> bytes:
    return frame[6:12] + frame[0:6] + frame[12:l3 - 2] + etype


def tcp_reset_for(frame: bytes, l3: int, ver: int, hl: int, end: int) -> bytes | None:
    """The RST the director's own stack sends for a TCP segment to a local address with no
    socket (``tcp_v4_send_reset`` / ``tcp_v6_send_reset``): with ACK, seq = its ack; without,
    RST|ACK acknowledging its sequence space. TTL 64, IPv4 ID 0 with DF. None for a RST."""
    l4 = l3 + hl
    flags = frame[l4 + 13]
    if flags & RST:
        return None
    sport, dport, seq, ack, off = struct.unpack_from("!HHIIB", frame, l4)
    plen = end - l4 - (off >> 4) * 4
    if flags & ACK:
        rseq, rack, rflags = ack, 0, RST
    else:
        rseq, rack = 0, (seq + plen + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)) & M32
        rflags = RST | ACK
    tcp = bytearray(struct.pack("!HHIIBBHHH", dport, sport, rseq, rack, 0x50, rflags, 0, 0, 0))
    if ver == 4:
        src, dst = frame[l3 + 16:l3 + 20], frame[l3 + 12:l3 + 16]
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, TCP, 0, src, dst))
        _ip4_header_checksum(ip, 0, 20)
        pkt = ip + tcp
        fill_l4_checksum(pkt, 0, 4, TCP, 20, 40)
        return _swap_l2(frame, l3, b"\x08\x00") + bytes(pkt)
    src, dst = frame[l3 + 24:l3 + 40], frame[l3 + 8:l3 + 24]
    pkt = bytearray(struct.pack("!IHBB16s16s", 0x60000000, 20, TCP, 64, src, dst)) + tcp
    fill_l4_checksum(pkt, 0, 6, TCP, 40, 60)
    return _swap_l2(frame, l3, b"\x86\xdd") + bytes(pkt)


def icmp_unreachable_for(frame: bytes, l3: int, ver: int, end: int) -> bytes:
    """ICMP port unreachable (IPv6: destination unreachable, port unreachable) from the
    address the packet was sent to, embedding as much of it as fits in 576 / 1280 bytes: what
    IPVS sends when no real server is available (``ip_vs_leave``)."""
    pkt = frame[l3:end]
    if ver == 4:
        body = pkt[:576 - 28]
        icmp = bytearray(struct.pack("!BBHI", 3, 3, 0, 0) + body)
        c = xmit.inet_checksum(bytes(icmp))
        icmp[2], icmp[3] = c >> 8, c & 0xFF
        tos = (pkt[1] & 0x1E) | 0xC0
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(icmp), 0, 0, 64, 1, 0,
                                   pkt[16:20], pkt[12:16]))
        _ip4_header_checksum(ip, 0, 20)
        return _swap_l2(frame, l3, b"\x08\x00") + bytes(ip) + bytes(icmp)
    body = pkt[:1280 - 48]
    src, dst = pkt[24:40], pkt[8:24]
    icmp = bytearray(struct.pack("!BBHI", 1, 4, 0, 0) + body)
    res = (int.from_bytes(src + dst, "big") + len(icmp) + 58 + checksum_residue(icmp)) % 0xFFFF
    c = checksum_field(res)
    icmp[2], icmp[3] = c >> 8, c & 0xFF
    ip = struct.pack("!IHBB16s16s", 0x60000000, len(icmp), 58, 64, src, dst)
    return _swap_l2(frame, l3, b"\x86\xdd") + ip + bytes(icmp)


def fragment_ipv4(frame: bytes, l3: int, mtu: int) -> list[bytes]:
    """Fragments of an IPv4 packet without DF that exceeds ``mtu`` (``ip_fragment``): payload
    cut at multiples of 8 bytes, MF on all but the last, options copied whole."""
    hl = (frame[l3] & 15) * 4
    end = l3 + ((frame[l3 + 2] << 8) | frame[l3 + 3])
    fo0 = ((frame[l3 + 6] << 8) | frame[l3 + 7])
    base_off = (fo0 & 0x1FFF) * 8
    more = fo0 & 0x2000
    step = (mtu - hl) & ~7
    if step <= 0:
        return []
    out = []
    data0 = l3 + hl
    for o in range(data0, end, step):
        chunk = frame[o:min(o + step, end)]
        buf = bytearray(frame[:data0]) + chunk
        tot = hl + len(chunk)
        buf[l3 + 2], buf[l3 + 3] = tot >> 8, tot & 0xFF
        last = o + step >= end
        fo = ((base_off + o - data0) // 8) | (0 if last and not more else 0x2000) | (fo0 & 0x4000)
        buf[l3 + 6], buf[l3 + 7] = fo >> 8, fo & 0xFF
        _ip4_header_checksum(buf, l3, hl)
        out.append(bytes(buf))
    return out


def _bpf_program(mac: bytes) -> bytes:
    """Classic BPF: accept IPv4/IPv6 frames whose destination MAC is ``mac``."""
    hi = int.from_bytes(mac[:4], "big")
    lo = int.from_bytes(mac[4:6], "big")
    insns = [
        (0x20, 0, 0, 0),          # ld  [0]
        (0x15, 0, 6, hi),         # jeq #hi, next, drop
        (0x28, 0, 0, 4),          # ldh [4]
        (0x15, 0, 4, lo),         # jeq #lo, next, drop
        (0x28, 0, 0, 12),         # ldh [12]
        (0x15, 1, 0, 0x0800),     # jeq #IPv4, accept
        (0x15, 0, 1, 0x86DD),     # jeq #IPv6, accept, drop
        (0x06, 0, 0, RX_BUF),     # accept
        (0x06, 0, 0, 0),          # drop
    ]
    return b"".join(struct.pack("HBBI", *i) for i in insns)


# =========================================================================== namespace view

class Interface:
    """One interface the director works on: MAC, MTU, addresses and its two sockets."""

    __slots__ = ("addrs", "index", "mac", "mtu", "name", "rx", "send", "tx", "up")

    def __init__(self, name: str, index: int, mac: bytes, mtu: int, addrs: list, up: bool):
        self.name, self.index, self.mac, self.mtu = name, index, mac, mtu
        self.addrs = addrs            # [(ver, addr int, prefixlen)]
        self.rx = self.tx = self.send = None
        self.up = up

    def first_addr(self, ver: int, near: int | None = None) -> int | None:
        """Its address of family ``ver``, preferably one whose subnet holds ``near``."""
        best = None
        for v, a, plen in self.addrs:
            if v != ver:
                continue
            bits = 32 if v == 4 else 128
            if near is not None and plen < bits and (a ^ near) >> (bits - plen) == 0:
                return a
            if best is None and not (v == 6 and a >> 118 == 0x3FA):   # skip fe80::/10
                best = a
        if best is None:
            best = next((a for v, a, _ in self.addrs if v == ver), None)
        return best


class _Routes:
    """Connected subnets and routes of the director's interfaces, longest prefix first."""

    def __init__(self, ifaces: dict[str, Interface], routes: Iterable[dict]):
        entries = []
        for ifc in ifaces.values():
            for v, a, plen in ifc.addrs:
                bits = 32 if v == 4 else 128
                if plen >= bits:
                    continue
                mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
                entries.append((v, a & mask, mask, plen, 0, 0, ifc, None, a))
        for r in routes:
            dev = r.get("dev")
            if dev not in ifaces or r.get("type", "unicast") != "unicast":
                continue
            v = r["_ver"]
            bits = 32 if v == 4 else 128
            dst = r.get("dst", "default")
            if dst == "default":
                net, plen = 0, 0
            else:
                n = ipaddress.ip_network(dst if "/" in dst else f"{dst}/{bits}", strict=False)
                net, plen = int(n.network_address), n.prefixlen
            mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1) if plen else 0
            gw = r.get("gateway")
            gwi = int(ipaddress.ip_address(gw)) if gw else None
            src = r.get("prefsrc")
            srci = int(ipaddress.ip_address(src)) if src else None
            entries.append((v, net, mask, plen, 1 if gwi else 0, int(r.get("metric", 0)),
                            ifaces[dev], gwi, srci))
        entries.sort(key=lambda e: (-e[3], e[4], e[5]))
        self.entries = entries
        self.cache: dict[tuple, tuple | None] = {}

    def lookup(self, ver: int, dst: int):
        """(interface, next hop, source address) toward ``dst``, or None."""
        key = (ver, dst)
        try:
            return self.cache[key]
        except KeyError:
            pass
        res = None
        for v, net, mask, plen, has_gw, metric, ifc, gw, src in self.entries:
            if v == ver and dst & mask == net:
                nh = gw if gw is not None else dst
                res = (ifc, nh, src if src is not None else ifc.first_addr(ver, nh))
                break
        if len(self.cache) > 65536:
            self.cache.clear()
        self.cache[key] = res
        return res


class _Neighbours(threading.Thread):
    """The kernel's neighbour table, read with ``ip -j neigh`` every NEIGH_REFRESH seconds and
    at once when the director asks for an address it lacks; such an address gets a managed
    neighbour entry so that the kernel resolves it (see the module docstring)."""

    def __init__(self, log: Callable[[str], None]):
        super().__init__(name="lvs-director-neigh", daemon=True)
        self.log = log
        self.table: dict[tuple[str, int], bytes] = {}
        self._asked: dict[tuple[str, int, int], float] = {}
        self._new: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._quit = threading.Event()
        self.created: list[tuple[str, str]] = []
        self.managed_ok = True

    def read(self) -> None:
        out = _ip(["ip", "-j", "neigh", "show"], check=False)
        table = {}
        try:
            rows = _json(out)
        except ValueError:
            return
        for n in rows:
            mac, dst, dev = n.get("lladdr"), n.get("dst"), n.get("dev")
            if not mac or not dst or not dev or not USABLE_NUD.intersection(n.get("state", ())):
                continue
            try:
                table[(dev, int(ipaddress.ip_address(dst)))] = _mac_bytes(mac)
            except ValueError:
                continue
        self.table = table

    def ask(self, dev: str, ver: int, addr: int) -> None:
        key = (dev, ver, addr)
        now = time.monotonic()
        with self._lock:
            last = self._asked.get(key)
            if last is not None and now - last < 1.0:
                return
            self._asked[key] = now
            self._new.append(key)
        self._wake.set()

    def _resolve(self, dev: str, ver: int, addr: int) -> None:
        if (dev, addr) in self.table:
            return
        a = _astr(ver, addr)
        if self.managed_ok:
            p = subprocess.run(["ip", "neigh", "replace", a, "dev", dev, "managed"], check=False,
                               capture_output=True, text=True)
            if p.returncode == 0:
                if (dev, a) not in self.created:
                    self.created.append((dev, a))
                return
            self.managed_ok = False
            self.log(f"managed neighbour entries unavailable ({p.stderr.strip()}); "
                     "resolving next hops with a UDP datagram to port 9 instead")
        try:
            fam = socket.AF_INET if ver == 4 else socket.AF_INET6
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
                s.sendto(b"", (a, 9))
        except OSError as e:
            self.log(f"cannot trigger neighbour resolution of {a} on {dev}: {e}")

    def run(self) -> None:
        while not self._quit.is_set():
            with self._lock:
                new, self._new = self._new, []
            for key in new:
                self._resolve(*key)
            if new:
                time.sleep(0.005)
            self.read()
            with self._lock:
                pending = bool(self._new) or any(
                    (d, a) not in self.table for (d, v, a) in self._asked)
            self._wake.wait(0.02 if pending else NEIGH_REFRESH)
            self._wake.clear()
            if pending:
                with self._lock:
                    now = time.monotonic()
                    for k, t in list(self._asked.items()):
                        if (k[0], k[2]) in self.table or now - t > 30:
                            del self._asked[k]

    def stop(self) -> None:
        self._quit.set()
        self._wake.set()

    def cleanup(self) -> None:
        for dev, a in self.created:
            subprocess.run(["ip", "neigh", "del", a, "dev", dev], check=False, capture_output=True)
        self.created.clear()


class _FullNat:
    """FullNAT state of one connection beside its ConnTable entry."""

    __slots__ = ("cifc", "cmac", "d1", "lip", "lip_b", "lport", "r_isn", "toa")

    def __init__(self, lip, lip_b, lport, d1, cmac, cifc, toa):
        self.lip, self.lip_b, self.lport, self.d1 = lip, lip_b, lport, d1
        self.r_isn = None
        self.cmac, self.cifc, self.toa = cmac, cifc, toa


class _Plan:
    """What is fixed per (service, real server): mode, addresses, tunnel, TTL decrements."""

    __slots__ = (
        "gue_port",
        "mac",
        "mode",
        "rip",
        "rip_b",
        "rs",
        "ttl_rep",
        "ttl_req",
        "tun",
        "tun_csum",
        "ver",
    )

    def __init__(self, topo: Topology, rs):
        prof = topo.profile
        self.rs = rs
        self.mode = rs.mode
        self.ver = rs.ip.version
        self.rip = int(rs.ip)
        self.rip_b = rs.ip.packed
        self.mac = int(rs.mac).to_bytes(6, "big") if rs.mac is not None else None
        self.tun = (rs.tun or TunType.IPIP).value
        self.gue_port = rs.tun_port or 6080
        self.tun_csum = rs.tun_flags in ("csum", "remcsum")
        self.ttl_req = prof.ttl_decrement(rs.mode, "request")
        self.ttl_rep = prof.ttl_decrement(rs.mode, "reply")


# =========================================================================== the director

class LiveDirector:
    """The reference forwarder as the director of a network namespace.

    ``topology``: the services and real servers; ``interfaces``: the names of the interfaces
    to forward on (client side and real-server side, or one shared segment); ``stop``: set it
    to end :meth:`run`; ``log``: where one-line notices go (default: stderr);
    ``toa_port_byteorder``: ``"network"`` (right) or ``"host"`` (a fault for the lab: the TOA's
    port written byte-swapped, see the module docstring).

    Use::

        d = LiveDirector(topo, ["d-c", "d-r"], stop=ev)
        d.open()            # sockets bound, nft table installed: ready
        try:
            d.run()         # until ev is set
        finally:
            d.close()       # nft table and managed neighbours removed, statistics printed
    """

    def __init__(self, topology: Topology, interfaces: Iterable[str], *, stop: threading.Event,
                 log: Callable[[str], None] | None = None, install_nft: bool = True,
                 stats_file=sys.stderr, toa_port_byteorder: str = "network"):
        self.topo = topology
        self.names = list(dict.fromkeys(interfaces))
        if not self.names:
            raise DirectorError("no interface given (-i IFACE)")
        if not topology.services:
            raise DirectorError(f"{topology.source or 'topology'}: no service to forward")
        if toa_port_byteorder not in xmit.TOA_PORT_BYTEORDERS:
            raise DirectorError(f"TOA port byte order must be one of "
                                f"{', '.join(xmit.TOA_PORT_BYTEORDERS)}, not '{toa_port_byteorder}'")
        self.toa_port_byteorder = toa_port_byteorder
        self.stop = stop
        self.log = log or _default_log
        self.install_nft = install_nft
        self.stats_file = stats_file
        self.profile = topology.profile
        self.services = ServiceTable(topology)
        self.table = ConnTable.for_topology(topology, on_expire=self._expired)
        self.ifaces: dict[str, Interface] = {}
        self.routes: _Routes | None = None
        self.neigh = _Neighbours(self.log)
        self._fn: dict = {}
        self._plans: dict = {}
        self.ports = LocalPorts(self.profile)
        self._lips: dict = {}
        self._pending: dict = {}
        self._nft_installed = False
        self._opened = False
        self._closed = False
        self.ip_forward = {4: False, 6: False}
        self.local_addrs: set[tuple[int, int]] = set()
        self._build_match_sets()
        self.counts = {"frames_in": 0, "handled": 0, "packets_out": 0, "client_packets": 0,
                       "reply_packets": 0, "gso_frames": 0, "gso_segments": 0, "icmp_sent": 0,
                       "rst_sent": 0, "fragments_out": 0, "forwarded_untouched": 0}
        self._tx_errors_logged = 0
        self.out_by_mode = {m.value: 0 for m in Mode}
        self.drops: dict[str, int] = {}
        self.t_start = self.t_end = None
        self.peak_pps = 0

    # ------------------------------------------------------------------ classification sets
    def _build_match_sets(self) -> None:
        svc_ports, svc_any = set(), set()
        for s in self.topo.services:
            protos = ([6 if s.protocol.value == "tcp" else 17] if s.protocol is not None
                      else [6, 17])
            for a in s.addresses:
                v, ai = a.version, int(a)
                for p in protos:
                    if s.fwmark is not None:
                        if s.ports:
                            svc_ports.update((v, p, ai, port) for port in s.ports)
                        else:
                            svc_any.add((v, p, ai))
                    elif s.port == 0:
                        svc_any.add((v, p, ai))
                    else:
                        svc_ports.add((v, p, ai, s.port))
        rs_nat, rs_fnat = set(), set()
        for s in self.topo.services:
            protos = ([6 if s.protocol.value == "tcp" else 17] if s.protocol is not None
                      else [6, 17])
            for rs in s.real_servers:
                if rs.mode not in (Mode.NAT, Mode.FULLNAT):
                    continue
                dst = rs_nat if rs.mode is Mode.NAT else rs_fnat
                ports = [rs.port] if rs.port else (
                    [s.port] if s.port else list(s.ports) if s.ports else [0])
                for p in protos:
                    for port in ports:
                        dst.add((rs.ip.version, p, int(rs.ip), port))
        self.svc_ports, self.svc_any = svc_ports, svc_any
        self.rs_nat, self.rs_fnat = rs_nat, rs_fnat
        self.lips = {(a.version, int(a)) for a in self.topo.lips}
        self.vip_addrs = {(a.version, int(a)) for a in self.topo.vips}

    # ------------------------------------------------------------------ start / stop
    def open(self) -> None:
        """Read the namespace, open and bind the sockets, install the nft table."""
        if self._opened:
            return
        try:
            self._read_namespace()
            self._open_sockets()
            if self.install_nft:
                self._install_nft()
            self.neigh.read()
            self.neigh.start()
            self._warm_neighbours()
        except BaseException:
            self.close(quiet=True)
            raise
        self._opened = True
        self.t_start = time.monotonic()

    def _read_namespace(self) -> None:
        links = _json(_ip(["ip", "-j", "addr", "show"]))
        by_name = {l.get("ifname"): l for l in links}
        for l in links:
            for a in l.get("addr_info", ()):
                try:
                    ip = ipaddress.ip_address(a["local"])
                except (KeyError, ValueError):
                    continue
                self.local_addrs.add((ip.version, int(ip)))
        for name in self.names:
            l = by_name.get(name)
            if l is None:
                have = ", ".join(sorted(n for n in by_name if n and n != "lo")) or "none"
                raise DirectorError(f"no such interface '{name}' in this network namespace "
                                    f"(interfaces: {have})")
            if l.get("link_type") != "ether" or not l.get("address"):
                raise DirectorError(f"interface '{name}' is not an Ethernet interface")
            addrs = []
            for a in l.get("addr_info", ()):
                try:
                    ip = ipaddress.ip_address(a["local"])
                except (KeyError, ValueError):
                    continue
                addrs.append((ip.version, int(ip), int(a.get("prefixlen", ip.max_prefixlen))))
            up = "UP" in l.get("flags", ())
            if not up:
                self.log(f"interface {name} is down")
            self.ifaces[name] = Interface(name, int(l["ifindex"]), _mac_bytes(l["address"]),
                                          int(l.get("mtu", 1500)), addrs, up)
        routes = []
        for ver, fam in ((4, "-4"), (6, "-6")):
            for r in _json(_ip(["ip", fam, "-j", "route", "show", "table", "main"])):
                r["_ver"] = ver
                routes.append(r)
        self.routes = _Routes(self.ifaces, routes)
        for ver, path in ((4, "/proc/sys/net/ipv4/ip_forward"),
                          (6, "/proc/sys/net/ipv6/conf/all/forwarding")):
            try:
                with open(path) as f:
                    self.ip_forward[ver] = f.read().strip() == "1"
            except OSError:
                pass
        for s in self.topo.services:
            for a in s.addresses:
                if (a.version, int(a)) not in self.local_addrs:
                    self.log(f"VIP {a} is not configured on this namespace: the kernel will not "
                             "answer ARP for it")
        for a in (self.topo.lips if Mode.FULLNAT in self.topo.modes else ()):
            if (a.version, int(a)) not in self.local_addrs:
                self.log(f"local address {a} is not configured on this namespace: real "
                         "servers cannot resolve it")

    def _open_sockets(self) -> None:
        for ifc in self.ifaces.values():
            try:
                rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            except PermissionError:
                raise DirectorError("AF_PACKET sockets need root (CAP_NET_RAW)") from None
            ifc.rx = rx
            prog = _bpf_program(ifc.mac)
            import ctypes
            cbuf = ctypes.create_string_buffer(prog)
            fprog = struct.pack("HL", len(prog) // 8, ctypes.addressof(cbuf))
            rx.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            rx.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            try:
                rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass                       # kernels < 4.20: the MAC filter does the job
            try:
                rx.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)   # SO_RCVBUFFORCE
            except OSError:
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            rx.bind((ifc.name, ETH_P_ALL))
            rx.setblocking(False)
            tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            tx.bind((ifc.name, 0))
            try:
                tx.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)   # SO_SNDBUFFORCE
            except OSError:
                pass
            ifc.tx = tx
            ifc.send = tx.send

    def _nft_text(self) -> str:
        rules = []
        for s in self.topo.services:
            protos = (["tcp"] if s.protocol is None or s.protocol.value == "tcp" else []) + \
                     (["udp"] if s.protocol is None or s.protocol.value == "udp" else [])
            for a in s.addresses:
                fam = "ip" if a.version == 4 else "ip6"
                ports = ([] if s.fwmark is None and s.port == 0 else
                         list(s.ports) if s.fwmark is not None else [s.port])
                for p in protos:
                    pm = f" th dport {{ {', '.join(map(str, ports))} }}" if ports else ""
                    if s.fwmark is not None and not s.ports:
                        pm = ""
                    rules.append(f"meta protocol {fam} {fam} daddr {a} meta l4proto {p}{pm} "
                                 "counter drop comment \"service\"")
        locals_ = {4: sorted(a for v, a in self.local_addrs if v == 4),
                   6: sorted(a for v, a in self.local_addrs if v == 6)}
        lips = {4: sorted(a for v, a in self.lips if v == 4),
                6: sorted(a for v, a in self.lips if v == 6)}
        for kind, group in (("nat", self.rs_nat), ("fullnat", self.rs_fnat)):
            for v, p, a, port in sorted(group):
                fam = "ip" if v == 4 else "ip6"
                pname = "tcp" if p == 6 else "udp"
                pm = f" th sport {port}" if port else ""
                base = f"meta protocol {fam} {fam} saddr {_astr(v, a)} meta l4proto {pname}{pm}"
                if kind == "nat":
                    loc = locals_[v]
                    cond = (f" {fam} daddr != {{ {', '.join(_astr(v, x) for x in loc)} }}"
                            if loc else "")
                    rules.append(f"{base}{cond} counter drop comment \"nat reply\"")
                elif lips[v]:
                    rules.append(f"{base} {fam} daddr {{ {', '.join(_astr(v, x) for x in lips[v])} }}"
                                 " counter drop comment \"fullnat reply\"")
        lines = [f"table netdev {NFT_TABLE} {{"]
        for i, ifc in enumerate(self.ifaces.values()):
            lines.append(f"  chain ingress_{i} {{")
            lines.append(f"    type filter hook ingress device \"{ifc.name}\" priority -500; "
                         "policy accept;")
            lines.extend(f"    {r}" for r in rules)
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _install_nft(self) -> None:
        p = subprocess.run(["nft", "list", "table", "netdev", NFT_TABLE], check=False, capture_output=True)
        if p.returncode == 0:
            raise DirectorError(f"nftables table 'netdev {NFT_TABLE}' already exists: another "
                                "director runs in this namespace (or a stale one: `nft delete "
                                f"table netdev {NFT_TABLE}`)")
        _ip(["nft", "-f", "-"], stdin=self._nft_text())
        self._nft_installed = True

    def _remove_nft(self) -> None:
        if self._nft_installed:
            subprocess.run(["nft", "delete", "table", "netdev", NFT_TABLE], check=False, capture_output=True)
            self._nft_installed = False

    def _warm_neighbours(self) -> None:
        """Ask the kernel to resolve the real servers' next hops now (no packet to them)."""
        for s, rs in self.topo.real_servers():
            if rs.mac is not None and rs.mode is Mode.DR:
                continue
            r = self.routes.lookup(rs.ip.version, int(rs.ip))
            if r is not None and (r[0].name, r[1]) not in self.neigh.table:
                self.neigh.ask(r[0].name, rs.ip.version, r[1])

    def close(self, quiet: bool = False) -> dict:
        """Remove the nft table and the managed neighbour entries, close the sockets, print
        the statistics line (once). Returns the statistics."""
        if self._closed:
            return self.stats()
        self._closed = True
        self.t_end = time.monotonic()
        self._remove_nft()
        self.neigh.stop()
        if self.neigh.is_alive():
            self.neigh.join(2)
        self.neigh.cleanup()
        for ifc in self.ifaces.values():
            for s in (ifc.rx, ifc.tx):
                if s is not None:
                    s.close()
            ifc.rx = ifc.tx = ifc.send = None
        st = self.stats()
        if not quiet and self.stats_file is not None and self._opened:
            try:
                print(json.dumps(st, sort_keys=True), file=self.stats_file, flush=True)
            except (OSError, ValueError):
                pass
        return st

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()

    def stats(self) -> dict:
        end = self.t_end if self.t_end is not None else time.monotonic()
        secs = (end - self.t_start) if self.t_start is not None else 0.0
        c = self.counts
        t = self.table.stats
        return {
            "event": "director-stats",
            "seconds": round(secs, 3),
            "interfaces": self.names,
            **c,
            "dropped": dict(sorted(self.drops.items())),
            "dropped_total": sum(self.drops.values()),
            "out_by_mode": {k: v for k, v in self.out_by_mode.items() if v},
            "connections": {"created": t["created"], "expired": t["expired"],
                            "rescheduled": t["rescheduled"], "templates": t["templates"],
                            "no_dest": t["no_dest"], "in_table": len(self.table)},
            "pps_avg": round(c["handled"] / secs, 1) if secs > 0 else 0.0,
            "pps_peak": self.peak_pps,
        }

    def _drop(self, reason: str) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1

    def _expired(self, cp, when) -> None:
        st = self._fn.pop(cp, None)
        if st is not None:
            self.ports.release(st.lip_b, st.lport, _packed(cp.daf, cp.daddr), cp.dport, cp.proto)

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        """Forward until ``stop`` is set."""
        if not self._opened:
            self.open()
        poller = select.poll()
        fdmap = {}
        for ifc in self.ifaces.values():
            poller.register(ifc.rx.fileno(), select.POLLIN)
            fdmap[ifc.rx.fileno()] = ifc
        buf = bytearray(RX_BUF)
        mv = memoryview(buf)
        stop = self.stop
        counts = self.counts
        handle = self._frame
        trunc = socket.MSG_TRUNC
        next_tick = time.monotonic() + 1.0
        last_handled = 0
        while not stop.is_set():
            events = poller.poll(10 if self._pending else 100)
            now = time.monotonic()
            for fd, ev in events:
                ifc = fdmap[fd]
                recv = ifc.rx.recv_into
                for _ in range(BATCH):
                    try:
                        n = recv(buf, RX_BUF, trunc)
                    except BlockingIOError:
                        break
                    except InterruptedError:
                        continue
                    except OSError as e:          # the interface went down or away
                        self._drop("rx-error")
                        self.log(f"receive on {ifc.name} failed: {e.strerror or e}")
                        break
                    counts["frames_in"] += 1
                    if n > RX_BUF:
                        self._drop("truncated")
                        continue
                    if n <= VNET_LEN + 14:
                        continue
                    try:
                        handle(mv, n, ifc, now)
                    except xmit.XmitError:
                        self._drop("xmit-error")
                    except OSError as e:
                        self._drop("tx-error")
                        if self._tx_errors_logged < 5:
                            self._tx_errors_logged += 1
                            self.log(f"send failed: {e}")
                    except Exception as e:  # noqa: BLE001  (one bad frame is never fatal)
                        self._drop("internal-error")
                        if self._tx_errors_logged < 5:
                            self._tx_errors_logged += 1
                            self.log(f"frame dropped: {type(e).__name__}: {e}")
            if self._pending:
                self._flush_pending(now)
            if now >= next_tick:
                h = counts["handled"]
                self.peak_pps = max(self.peak_pps, int((h - last_handled) / (now - next_tick + 1.0)))
                last_handled = h
                next_tick = now + 1.0
                self.table.advance(now)

    # ------------------------------------------------------------------ one frame
    def _frame(self, mv, n: int, ifc: Interface, now: float) -> None:
        vflags = mv[0]
        gso = mv[1] & 0x7F
        frame = bytes(mv[VNET_LEN:n])
        et = (frame[12] << 8) | frame[13]
        if et == 0x0800:
            ver, l3 = 4, 14
            hl = (frame[14] & 15) * 4
            if hl < 20 or frame[14] >> 4 != 4:
                return
            proto = frame[23]
            if ((frame[20] << 8) | frame[21]) & 0x3FFF:
                return self._fragment_in(frame, 4, proto, int.from_bytes(frame[30:34], "big"))
            src = int.from_bytes(frame[26:30], "big")
            dst = int.from_bytes(frame[30:34], "big")
            end = 14 + ((frame[16] << 8) | frame[17])
        elif et == 0x86DD:
            ver, l3, hl = 6, 14, 40
            proto = frame[20]
            end = 54 + ((frame[18] << 8) | frame[19])
            if proto in _V6_EXT:
                r = _v6_transport(frame, end)
                if r is None:
                    return
                proto, hl, frag = r
                if frag:
                    return self._fragment_in(frame, 6, proto, int.from_bytes(frame[38:54], "big"))
            src = int.from_bytes(frame[22:38], "big")
            dst = int.from_bytes(frame[38:54], "big")
        else:
            return
        if proto != TCP and proto != UDP:
            return
        l4 = l3 + hl
        if end > len(frame) or end < l4 + (20 if proto == TCP else 8):
            return
        sport = (frame[l4] << 8) | frame[l4 + 1]
        dport = (frame[l4 + 2] << 8) | frame[l4 + 3]
        if (ver, proto, dst, dport) in self.svc_ports or (ver, proto, dst) in self.svc_any:
            client = True
        elif (ver, dst) in self.lips:
            if (ver, proto, src, sport) not in self.rs_fnat and (ver, proto, src, 0) not in self.rs_fnat:
                return
            client = False
        elif (ver, proto, src, sport) in self.rs_nat or (ver, proto, src, 0) in self.rs_nat:
            if (ver, dst) in self.local_addrs:
                return
            client = False
        else:
            return
        self.counts["handled"] += 1
        needs_csum = bool(vflags & VNET_F_NEEDS_CSUM)
        if gso:
            if proto != TCP or gso not in (GSO_TCPV4, GSO_TCPV6):
                self._drop("gso-unsupported")
                return
            gso_size = (mv[4] | (mv[5] << 8))
            segs = segment_tcp(frame, l3, ver, hl, end, gso_size)
            self.counts["gso_frames"] += 1
            self.counts["gso_segments"] += len(segs)
            self.counts["handled"] += len(segs) - 1
            for seg in segs:
                self._packet(seg, ifc, now, client, ver, hl, proto, src, dst, sport, dport,
                             len(seg), False)
            return
        if len(frame) > end:
            frame = frame[:end]
        self._packet(frame, ifc, now, client, ver, hl, proto, src, dst, sport, dport, end,
                     needs_csum)

    def _fragment_in(self, frame: bytes, ver: int, proto: int, dst: int) -> None:
        """A fragment to a VIP: the live director does not reassemble; counted and dropped
        (the kernel, which gets it too, cannot complete the packet either)."""
        if (ver, dst) in self.vip_addrs:
            self.counts["handled"] += 1
            self._drop("fragment")

    def _packet(self, frame: bytes, ifc: Interface, now: float, client: bool, ver: int, hl: int,
                proto: int, src: int, dst: int, sport: int, dport: int, end: int,
                needs_csum: bool) -> None:
        l3 = 14
        flags = frame[l3 + hl + 13] if proto == TCP else 0
        # a partial checksum (offload) is computed from scratch; a complete one is updated
        # incrementally as the kernel does, so a wrong one stays wrong -- for a right one
        # both give the same bytes and "auto" is the faster path in xmit
        if needs_csum or _l4_valid(frame, ver, proto, 14 + hl, end):
            csum = "auto"
        else:
            csum = "incremental"
        if client:
            self.counts["client_packets"] += 1
            verdict, cp = self.table.packet_in(now, self.services, ver, proto, src, sport, dst,
                                               dport, flags)
            if verdict is Verdict.FORWARD or verdict is Verdict.NEW:
                self._request(frame, ifc, cp, ver, hl, proto, end, flags, csum, needs_csum,
                              verdict is Verdict.NEW)
            elif verdict is Verdict.NOT_SCHEDULED:
                self._drop("no-connection")
                if proto == TCP:
                    rst = tcp_reset_for(frame, l3, ver, hl, end)
                    if rst is not None:
                        ifc.send(rst)
                        self.counts["rst_sent"] += 1
                        self.counts["packets_out"] += 1
            elif verdict is Verdict.NO_DEST:
                self._drop("no-real-server")
                ifc.send(icmp_unreachable_for(frame, l3, ver, end))
                self.counts["icmp_sent"] += 1
                self.counts["packets_out"] += 1
            elif verdict is Verdict.DROP:
                self._drop("conn-drop")
            else:
                self._drop("no-service")
            return
        self.counts["reply_packets"] += 1
        cp = self.table.packet_out(now, ver, proto, src, sport, dst, dport, flags)
        if cp is None:
            if (ver, dst) in self.lips or not self.ip_forward[ver]:
                self._drop("reply-no-connection")
                return
            self._route_untouched(frame, ifc, ver, dst)
            return
        self._reply(frame, ifc, cp, ver, hl, proto, end, flags, csum)

    # ------------------------------------------------------------------ transmit
    def _plan(self, cp) -> _Plan:
        key = (id(cp.svc), cp.dest)
        p = self._plans.get(key)
        if p is None:
            p = self._plans[key] = _Plan(self.topo, cp.real_server)
        return p

    def _request(self, frame, ifc, cp, ver, hl, proto, end, flags, csum, needs_csum, new) -> None:
        p = self._plan(cp)
        mode = p.mode
        r = self.routes.lookup(p.ver, p.rip)
        if r is None:
            self._drop("no-route")
            return
        out_if, nh, src = r
        mac = p.mac if (p.mac is not None and nh == p.rip) else self.neigh.table.get(
            (out_if.name, nh))
        if mode is Mode.NAT:
            out = xmit.nat_request(frame, p.rip_b, cp.dport, src_mac=out_if.mac, dst_mac=mac,
                                   ttl_dec=p.ttl_req, mtu=out_if.mtu, csum=csum)
        elif mode is Mode.DR:
            if needs_csum:
                buf = bytearray(frame)
                fill_l4_checksum(buf, 14, ver, proto, 14 + hl, end)
                frame = bytes(buf)
            out = xmit.dr(frame, src_mac=out_if.mac, rs_mac=mac, ttl_dec=p.ttl_req,
                          mtu=out_if.mtu)
        elif mode is Mode.TUN:
            if needs_csum:
                buf = bytearray(frame)
                fill_l4_checksum(buf, 14, ver, proto, 14 + hl, end)
                frame = bytes(buf)
            if src is None:
                self._drop("no-source-address")
                return
            out = xmit.tun(frame, kind=p.tun, outer_src=_packed(p.ver, src), rs_ip=p.rip_b,
                           ttl_dec=p.ttl_req, gue_port=p.gue_port, csum=p.tun_csum,
                           src_mac=out_if.mac, dst_mac=mac, mtu=out_if.mtu)
        else:
            out = self._fullnat_request(frame, ifc, cp, p, ver, hl, proto, flags, csum, new,
                                        out_if, mac)
            if out is False:
                return
        self._emit(out, ifc, out_if, nh, mac, mode.value, ver)

    def _fullnat_request(self, frame, ifc, cp, p: _Plan, ver, hl, proto, flags, csum, new,
                         out_if, mac):
        st = self._fn.get(cp)
        prof = self.profile
        if st is None:
            st = self._bind_fullnat(frame, ifc, cp, p, proto, flags, hl)
            if st is None:
                self._drop("no-local-port")
                self.table.expire_now(cp)
                return False
        toa_on = False
        if st.toa is not None and proto == TCP:
            l4 = 14 + hl
            toa_on = xmit.toa_wanted(
                st.toa.packets, flags, int.from_bytes(frame[l4 + 8:l4 + 12], "big"),
                (st.r_isn + 1) & M32 if st.r_isn is not None else None,
                len(frame) - l4 - (frame[l4 + 12] >> 4) * 4 > 0)
        return xmit.fullnat_request(
            frame, st.lip_b, st.lport, p.rip_b, cp.dport, seq_delta=st.d1, toa=st.toa,
            toa_on=toa_on, remove_ts=prof.timestamp_removal, ttl_dec=p.ttl_req,
            src_mac=out_if.mac, dst_mac=mac, toa_full=prof.toa_full,
            strip_client_toa=prof.strip_client_toa, mtu=out_if.mtu, csum=csum,
            toa_port_byteorder=self.toa_port_byteorder)

    def _bind_fullnat(self, frame, ifc, cp, p: _Plan, proto, flags, hl) -> _FullNat | None:
        svc = cp.svc.service
        lips = self._lips.get(id(svc))
        if lips is None:
            lips = self._lips[id(svc)] = [a.packed for a in self.topo.lips_for(svc)]
        got = self.ports.allocate(id(svc), [a for a in lips if len(a) == len(p.rip_b)],
                                  p.rip_b, cp.dport, cp.cport, proto)
        if got is None:
            return None
        lip_b, lport = got
        d1 = 0
        if self.profile.seq_delta and proto == TCP and flags & SYN:
            isn = int.from_bytes(frame[14 + hl + 4:14 + hl + 8], "big")
            d1 = (random.getrandbits(32) - isn) & M32
        toa = svc.toa if proto == TCP else None
        st = _FullNat(int.from_bytes(lip_b, "big"), lip_b, lport, d1, frame[6:12], ifc, toa)
        self.table.bind_local(cp, st.lip, lport)
        self._fn[cp] = st
        return st

    def _reply(self, frame, ifc, cp, ver, hl, proto, end, flags, csum) -> None:
        p = self._plan(cp)
        vip_b = _packed(cp.af, cp.vaddr)
        if p.mode is Mode.NAT:
            r = self._toward(ver, cp.caddr)
            if r is None:
                return
            out_if, nh, mac = r
            icmp_src = ifc.first_addr(ver)
            out = xmit.nat_reply(frame, vip_b, cp.vport, src_mac=out_if.mac, dst_mac=mac,
                                 ttl_dec=p.ttl_rep, mtu=out_if.mtu, csum=csum,
                                 icmp_src=_packed(ver, icmp_src) if icmp_src else None)
            self._emit(out, ifc, out_if, nh, mac, "nat", ver)
            return
        st = self._fn.get(cp)
        if st is None:
            self._drop("reply-no-connection")
            return
        if proto == TCP and flags & SYN and flags & ACK:
            st.r_isn = int.from_bytes(frame[14 + hl + 4:14 + hl + 8], "big")
        if self.profile.reflect_l2:
            out_if, nh, mac = st.cifc, None, st.cmac
        else:
            r = self._toward(cp.af, cp.caddr)
            if r is None:
                return
            out_if, nh, mac = r
        icmp_src = ifc.first_addr(ver)
        out = xmit.fullnat_reply(
            frame, vip_b, cp.vport, _packed(cp.af, cp.caddr), cp.cport, seq_delta=st.d1,
            mss_reduce=cp.svc.service.mss_reduction(self.profile), ttl_dec=p.ttl_rep,
            src_mac=out_if.mac, dst_mac=mac, mtu=out_if.mtu, csum=csum,
            icmp_src=_packed(ver, icmp_src) if icmp_src else None)
        self._emit(out, ifc, out_if, nh, mac, "fullnat", cp.af)

    def _toward(self, ver, dst):
        """(egress interface, next hop, its MAC or None) of a routed packet to ``dst``; None
        (counted as ``no-route``) without a route."""
        r = self.routes.lookup(ver, dst)
        if r is None:
            self._drop("no-route")
            return None
        out_if, nh, _src = r
        return out_if, nh, self.neigh.table.get((out_if.name, nh))

    def _route_untouched(self, frame, ifc, ver, dst) -> None:
        """A NAT real server's packet without a connection, forwarded by the kernel as it is
        (SEMANTICS §1.1: the RIP leaks toward the client)."""
        r = self._toward(ver, dst)
        if r is None:
            return
        out_if, nh, mac = r
        out = xmit.dr(frame, src_mac=out_if.mac, rs_mac=mac, ttl_dec=1,
                      mtu=out_if.mtu, icmp_src=_packed(ver, ifc.first_addr(ver) or 0))
        self.counts["forwarded_untouched"] += 1
        self._emit(out, ifc, out_if, nh, mac, None, ver)

    def _emit(self, out, in_if: Interface, out_if: Interface, nh, mac, mode, ver) -> None:
        if out is None:
            self._drop("xmit-dropped")
            return
        if isinstance(out, xmit.IcmpError):
            in_if.send(out)
            self.counts["icmp_sent"] += 1
            self.counts["packets_out"] += 1
            ttl = out.icmp_type == 11 if out[12:14] == b"\x08\x00" else out.icmp_type == 3
            self._drop("ttl-expired" if ttl else "too-big-icmp")
            return
        if len(out) - 14 > out_if.mtu:
            if out[12:14] == b"\x08\x00" and not out[20] & 0x40:
                frags = fragment_ipv4(out, 14, out_if.mtu)
                self.counts["fragments_out"] += len(frags)
            else:
                self._drop("too-big")
                return
        else:
            frags = (out,)
        if mac is None:
            self._queue(frags, out_if, nh, ver, mode)
            return
        send = out_if.send
        for f in frags:
            send(f)
        self.counts["packets_out"] += len(frags)
        if mode is not None:
            self.out_by_mode[mode] += 1

    # ------------------------------------------------------------------ waiting for a MAC
    def _queue(self, frames, out_if: Interface, nh: int, ver: int, mode) -> None:
        key = (out_if.name, nh)
        q = self._pending.get(key)
        if q is None:
            q = self._pending[key] = [time.monotonic() + PENDING_WAIT, [], out_if, mode, ver]
            self.neigh.ask(out_if.name, ver, nh)
        if len(q[1]) >= PENDING_MAX:
            self._drop("neighbour-queue-full")
            return
        q[1].extend(frames)

    def _flush_pending(self, now: float) -> None:
        table = self.neigh.table
        for key in list(self._pending):
            deadline, frames, out_if, mode, ver = self._pending[key]
            mac = table.get(key)
            if mac is not None:
                del self._pending[key]
                for f in frames:
                    try:
                        out_if.send(mac + f[6:])
                    except OSError:
                        self._drop("tx-error")
                        continue
                    self.counts["packets_out"] += 1
                    if mode is not None:
                        self.out_by_mode[mode] += 1
            elif now > deadline:
                del self._pending[key]
                self.drops["no-neighbour"] = self.drops.get("no-neighbour", 0) + len(frames)
                self.log(f"no MAC for next hop {_astr(ver, key[1])} "
                         f"on {key[0]} after {PENDING_WAIT:g} s: {len(frames)} frame(s) dropped")
