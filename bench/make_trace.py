#!/usr/bin/env python3
"""Write a realistic, deterministic multi-vantage LVS trace for the benchmark and the synthetic fixtures.

    python bench/make_trace.py --frames 1000000 --out bench/out/trace-1000000.pcapng [--seed 1]
                               [--mode nat|dr|tun|fullnat] [--tun ipip|gue|gre] [--profile dpvs|alibaba]
                               [--fault NAME ...] [--small] [--rate N] [--persistence]
                               [--format pcapng|pcap] [--split]

The trace is what one dumpcap on the lab host would write while watching four veth ends:

    p-client   the site router's upstream link  (clients 198.18.0.0/15 arrive here, from 02:00:00:00:0a:01)
    p-dir-c    router <-> director, client side  (VIP 203.0.113.100 on the director, 02:00:00:00:00:02)
    p-dir-r    director <-> real servers          (DIP 192.0.2.1, RIPs 192.0.2.11-14, 02:00:00:00:00:11-14;
                                                   FullNAT: LIPs 192.0.2.200 and 192.0.2.201 on it too)
    p-rs1      real server 1's own interface     (only RS1's traffic and the segment's broadcasts)

Traffic: HTTP/1.1 over TCP to 203.0.113.100:80 (handshake with MSS/SACK-permitted/timestamps/window
scale, 1-3 requests per connection with keep-alive, responses of log-normal size cut into full
segments sent in slow-start rounds, delayed ACKs, FIN or RST), DNS over UDP to 203.0.113.100:53 (the
same virtual service machinery), a few pings to the VIP answered by the director, and ARP on every
segment.  Each packet appears at every vantage point it crosses, with the rewrites of the mode
(SEMANTICS.md section 1):

nat      VIP->RIP on the D->R hop and RIP->VIP on the way back, TTL-1 per router hop and on D->R (kernel
         >= 4.10), MACs per segment, IP and L4 checksums recomputed.
dr       MACs and TTL only on D->R; replies go from the real server straight to the router (192.0.2.254).
tun      D->R: the client packet (TTL-1, inner IP checksum recomputed) in an outer IPv4 header, src DIP
         192.0.2.1, dst RIP, outer TTL = inner TTL after the decrement, DF and TOS copied from the inner
         header, outer ID 0 when DF is set.  --tun ipip (protocol 4, the default), gue (UDP to 6080 from
         a per-flow source port in 32768-60999, UDP checksum 0, 4-byte GUE header: version 0, C=0,
         hlen 0, proto_ctype 4) or gre (protocol 47, 4-byte header, protocol 0x0800).  Real servers
         answer straight to the client (src VIP:vport, RS port = service port) through the router, as DR.
fullnat  D->R: LIP:lport -> RIP:rport (rport 8080 for HTTP, 53 for DNS; LIPs 192.0.2.200/201 round robin
         per connection; lport DPVS: per-LIP, per-worker (2 workers, worker = low bit), per-destination
         sapool taken in order from 1025-65535; Alibaba: sequential per LIP from 5000), TTL/ID/TOS/DF
         unchanged, seq + D1 (a random per-connection delta); the SYN's timestamp option becomes 10 NOP
         bytes, so the real server answers without timestamps and the whole connection runs without
         them (full segments are 1460 bytes); TOA (kind 254, len 8, client port and IPv4 in network
         order, right after the 20-byte header: doff +2, IP total length +8) on every client segment whose
         ack is the server's ISN+1 (the handshake ACK and the first request), not on SYN/RST; --profile
         dpvs (default, DPVS >= 1.9.6: not on the SYN, FIN allowed) or alibaba (also on the SYN, not on
         FIN).  R->D: RIP:rport -> LIP:lport, ack + D1.  D->C: VIP:vport -> CIP:cport, ack back to the
         client's numbers, the SYN-ACK's MSS lowered by 8, TTL unchanged.  UDP (DNS) gets the same
         address and port rewrite (no TOA, no UOA).  The real servers resolve the LIPs by ARP.

Faults (--fault NAME, repeatable; each only where it says):

toa-missing          fullnat: about 15 % of the connections (always the second one) have no TOA on
                     the handshake ACK toward the real server (their first request still carries it).
toa-wrong            fullnat: about 15 % of the connections (always the second one) carry a TOA whose
                     port is the client port in host byte order (bytes swapped; cport^1 when the swap is
                     a no-op) on every TOA-carrying segment.
toa-forged           fullnat: about 15 % of the clients (always the second connection's) put their own
                     kind-254 option (len 8, 198.51.100.99:1234) right after the TCP header of their
                     handshake ACK and first request.  DPVS replaces it with 8 NOPs behind its own TOA;
                     Alibaba passes it through behind its own TOA (SEMANTICS section 3).
nat-bypass           nat: real server 1 has a route to 198.18.0.0/16 via the site router (192.0.2.254)
                     instead of the director (SEMANTICS section 8 #1).  Its connections from those clients:
                     the D->R SYN is normal, RS1's SYN-ACK leaves with src RIP:80 toward the router
                     (p-rs1, then p-client with TTL 63) and never reaches the director; the client answers
                     RST to RIP (p-client, then p-rs1), retransmits the SYN after 1 s and 3 s (same
                     pattern each time, a new server ISN) and gives up.  DNS answers from RS1 to those
                     clients take the same way (src RIP:53) and are ignored.  RS1 resolves the router by ARP.
ttl-not-decremented  nat, dr, tun: the director does not decrement the TTL on the D->R hop (kernel < 4.10
                     behaviour), for every packet; the TUN outer TTL equals the unchanged inner TTL.  The
                     NAT reply hop still loses 1 (ordinary forwarding).
arp-leak             dr: the router's director-side segment and the real servers' segment are one L2
                     domain (broadcasts of both appear on p-dir-c, p-dir-r and p-rs1) and RS1 answers ARP
                     for the VIP (arp_ignore 0): every router ARP request for the VIP (one is placed at 30 %
                     of the traffic) gets the director's reply and then RS1's ("VIP is-at 02:..:11"), which
                     wins.  From RS1's first reply on, every client packet for the VIP goes from the router
                     (eth_src 02:00:00:00:01:02) to RS1's MAC with TTL ttl0-1 (never decremented by the
                     director) and is seen only on p-client and p-rs1, with no D->R copy: new connections,
                     DNS and pings are all served by RS1 (replies with src VIP through the router);
                     connections already scheduled on RS2-4 get RS1's RST (seq = the ack of the first
                     diverted segment) and end there.  RS1's ARP requests for its gateway carry sender IP =
                     VIP (arp_announce 0).
wrong-port           nat: the director maps VIP:80 to 192.0.2.13:8080 (RS3 listens there): RS3's D->R packets
                     go to port 8080 and its replies come from 192.0.2.13:8080, rewritten back to VIP:80.
reply-not-rewritten  nat: about 15 % of the connections (always the second) lose their director entry right
                     after the first request was forwarded.  The real server's answer (its pure ACK and first
                     slow-start round) is forwarded unchanged: src RIP:80, TTL-1, from the director's client-side
                     MAC; the client answers each segment with a RST (seq = its ack, IP ID 0) to the RIP, which the
                     router delivers on the real servers' segment; once that RST arrives the server sends nothing
                     more.  The client retransmits its request after its RTO (rtt + max(2 rtt, 200 ms)); it reaches
                     the director, which (no entry, not a SYN) answers from its own stack: RST from VIP:80, TTL 64.
syn-drop             nat: the director silently drops the first SYN of about 15 % of the connections
                     (conn_reuse_mode 1 with conntrack 1, kernels < 5.9) and, on about 40 % of those (always the
                     second connection), the first retransmission too.  The dropped SYNs reach p-client and p-dir-c
                     only; the client sends the same SYN again 1 s and 3 s after the first (same sequence number and
                     options, IP ID +1, TS value moved on); the whole connection runs 1 s (or 3 s) late.
bad-checksum         any mode: on about 15 % of the connections (always the second) the client's delayed ACKs (pure
                     ACKs during a response, not the handshake ACK nor the last ACK) carry a TCP checksum with bit
                     0x0400 flipped on the D->R hop (p-dir-r, p-rs1) - never the offload pseudo-header value; the
                     client-side copies are correct.  The real server drops them; the next cumulative ACK covers it.
arp-announce         dr, tun: RS1's ARP requests for its gateway carry sender IP = VIP (arp_announce 0) and the
                     router's replies target the VIP; RS1 does not answer ARP for the VIP, traffic is unchanged.
rs-no-vip            dr, tun: RS2 has no VIP and drops silently what the director forwards to it: its clients'
                     SYNs are retransmitted 1, 3, 7, 15, 31 and 63 s after the first (IP ID +1 each), each
                     forwarded to RS2 again; its DNS queries are repeated once after 5 s; nothing is answered.
rs-down              dr, tun: RS3 has the VIP but nothing listens on port 80: each forwarded SYN gets RST+ACK from
                     VIP:80 (seq 0, ack ISN+1, window 0, no options, IP ID 0, TTL 64) straight to the router.
rs-masquerade        dr: RS4 was added with -m and routes the clients via the director: its packets (HTTP and
                     DNS) take the NAT path (D->R dst RIP, replies from RIP through the director, rewritten to VIP).
not-encapsulated     tun: RS3 was added with -g: the director sends it plain DR frames (dst VIP, RS3's MAC, TTL-1,
                     no outer header); RS3 has the VIP and answers directly like the others.
no-decap             tun: RS2 cannot decapsulate (no ipip module; GUE: no fou socket).  For each tunnel packet, as
                     far as Linux's per-destination ICMP rate limit allows (icmp_ratelimit 1 s, burst 6), it sends
                     ICMP 3/2 (GUE: 3/3) to the tunnel source 192.0.2.1, TTL 64, TOS 0xc0, quoting the packet from
                     its outer header on (up to 576 bytes in all, as icmp_send does); the director relays each error
                     to the client (ip_vs_in_icmp: same type and code, from the VIP, quoting the inner packet), whose
                     connect() fails at once.  Packets that drew no ICMP are retransmitted (SYN: 1, 3, 7 ... s;
                     DNS: once after 5 s); RS2 never answers DNS.
wrong-lip            fullnat: the local address pool is the director's own 192.0.2.1 instead of 192.0.2.200/201:
                     D->R from 192.0.2.1:lport, R->D to it, the real servers resolve 192.0.2.1 by ARP.
mss-not-lowered      fullnat: the SYN-ACK toward the client keeps the real server's MSS 1460 (Alibaba with
                     mss_adjust_entry 0; a DPVS build whose SYN-ACK path skips the adjustment).
mtu                  tun: the director's path MTU toward the real servers is 1500, so a DF client packet longer
                     than 1480 (1500 - the 20-byte IPIP header; GUE 32, GRE 24) does not fit in the tunnel.  Some
                     connections start with an upload: the first request is one
                     full segment (1448 bytes of POST, IP length 1500, DF); about 8 % (always the second).  The director does not forward it
                     (p-client and p-dir-c only) and answers with ICMP 3/4 (frag-needed, next-hop MTU 1500 - the
                     overhead) from the VIP to the client (ensure_mtu_is_adequate -> icmp_send; TTL 64, TOS 0xc0,
                     no DF), quoting the client's IP header (TTL as received) and the first 8 bytes of TCP.  After
                     its RTT the client resends the data in segments of MSS 1500 - overhead - 40 (with timestamps
                     12 bytes less of payload: 1428 + 20 bytes for IPIP), IP IDs +1 and +2, which are forwarded
                     normally; the rest of the connection runs that much later, sequence numbers moved on by the
                     upload.
rs-routes-onward     dr: RS2 has no VIP but ip_forward 1: every frame the director hands it (p-dir-r: dst MAC RS2,
                     dst VIP) leaves RS2 again toward its default gateway (02:00:00:00:01:03, src MAC RS2's, on
                     p-dir-r) unchanged but TTL - 1 (IP checksum adjusted; no ICMP redirect: the source is not
                     on-link).  The site router drops it (reverse-path filter: the clients are routed upstream), so
                     nothing answers: the clients retransmit the SYN 1, 3, 7 ... s after the first, each forwarded
                     and re-emitted again; DNS queries are repeated after 5 s.  RS2 resolves its gateway by ARP.
persistence-broken   nat: the returning clients of --persistence (below), but the director ignores the persistence
                     template (lost, or not applied): every connection is scheduled round robin on its own, so each
                     returning client's 3-5 connections reach 2-4 different real servers.  Implies the returning
                     clients; the same clients and connections as with --persistence, only the real servers differ.

--persistence (nat) gives the HTTP service persistence (ipvsadm -p, template per client address): 8 clients
(fewer below 40 connections) that appear nowhere else each open 3-5 connections spread over the trace (new
source ports, TTL and everything else as any client), and every connection of such a client goes to the real
server its first connection got; the round robin advances only for a client's first connection.  Without it
each connection comes from a random one of 5000 clients (a repeat is rare) and the output is unchanged.

--rate N (new TCP connections per second, default 3000; DNS and pings scale with it) sets how long a trace
of --frames frames lasts: at 3000 a 1600-frame trace covers 0.15 s, at 12 about 4 s, long enough for the
1 s / 3 s retransmissions of syn-drop, rs-no-vip and no-decap (at the default rate they fall past the end).

--small shrinks payloads for committed fixtures (short request and response headers, cookies of at
most 16 characters, bodies a tenth of the size: 40 B - 2.5 KB); without it the output for nat and dr
is byte-identical to what this generator wrote before tun, fullnat and the faults existed.

Blocks are written in dumpcap's order: each interface in time order, interfaces interleaved in
per-interface batches (so not in strict time order across interfaces).  Only documentation
addresses and locally administered MACs are used.

Speed: packets are never objects.  Each logical packet is a row of numpy columns; each observation
(packet x vantage point) is a row of a fixed-width uint8 header matrix filled column by column
through big-endian views; checksums are vectorised sums (payloads through a prefix sum of the
payload pool); the file is written as joins of header slices, payload slices and block trailers.
"""
from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from dataclasses import dataclass

import numpy as np

EPOCH_NS = 1_714_564_800 * 1_000_000_000          # 2024-05-01T12:00:00Z, fixed: output is deterministic
US = 1_000
MS = 1_000_000
MSS = 1460
SEG = MSS - 12                                    # payload per full segment with the timestamp option
IW = 10                                           # initial congestion window, segments


def _mac(s: str) -> int:
    return int(s.replace(":", ""), 16)


def _ip(s: str) -> int:
    a, b, c, d = (int(x) for x in s.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


BROADCAST = 0xFFFF_FFFF_FFFF
UPSTREAM = _mac("02:00:00:00:0a:01")   # upstream router (clients come through it)
GW_UP = _mac("02:00:00:00:01:01")      # site router, upstream side (198.51.100.2)
GW_DIR = _mac("02:00:00:00:01:02")     # site router, director side (203.0.113.1)
GW_RS = _mac("02:00:00:00:01:03")      # site router, real-server side (192.0.2.254; DR return path)
DIR_EXT = _mac("02:00:00:00:00:02")    # director, client side (203.0.113.2 + VIP)
DIR_INT = _mac("02:00:00:00:00:03")    # director, real-server side (192.0.2.1)
RS_MACS = np.array([_mac(f"02:00:00:00:00:{0x11 + k:02x}") for k in range(4)], dtype=np.uint64)
RIPS = np.array([_ip(f"192.0.2.{11 + k}") for k in range(4)], dtype=np.uint64)
VIP = _ip("203.0.113.100")
UPSTREAM_IP, GW_UP_IP = _ip("198.51.100.1"), _ip("198.51.100.2")
GW_DIR_IP, DIR_EXT_IP = _ip("203.0.113.1"), _ip("203.0.113.2")
DIP, GW_RS_IP = _ip("192.0.2.1"), _ip("192.0.2.254")
CLIENT_NET = _ip("198.18.0.0")         # 198.18.0.0/15
HTTP_PORT, DNS_PORT = 80, 53
LIPS = np.array([_ip("192.0.2.200"), _ip("192.0.2.201")], dtype=np.uint64)   # FullNAT local addresses
FNAT_RPORT_HTTP = 8080                 # FullNAT: the real servers listen on 8080 for VIP:80
FNAT_MSS = MSS                         # FullNAT: no timestamps (the SYN's TS option is NOP'd), full segments
GUE_PORT = 6080
BYPASS_NET, BYPASS_MASK = _ip("198.18.0.0"), 0xFFFF0000   # nat-bypass: RS1's stray route (a /16)
FORGED_IP, FORGED_PORT = _ip("198.51.100.99"), 1234        # toa-forged: what the client claims

VANTAGES = ("p-client", "p-dir-c", "p-dir-r", "p-rs1")
V_CLIENT, V_DIRC, V_DIRR, V_RS1 = range(4)
V_HOST_MAC = (GW_UP, DIR_EXT, DIR_INT, int(RS_MACS[0]))   # whose interface each vantage is
V_SEGMENT = (0, 1, 2, 2)

K_TCP, K_UDP, K_ICMP, K_ARP = range(4)
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# header matrix layout: 28 bytes of block header (pcapng EPB; pcap uses its last 16), then the frame:
# Ethernet, [tunnel outer headers], IPv4, TCP/UDP/ICMP header (or ARP right after Ethernet)
PRE = 28
ETH = PRE

# TCP option layouts (per observation): the bytes after the 20-byte header, before any TOA prefix
OPT_NONE, OPT_TS, OPT_SYN, OPT_SYN_TSNOP, OPT_SYNACK_NOTS = range(5)
OPT_DERIVE = 255                                  # logical column "opt": take the default layout
OPT_LEN = np.array([0, 12, 20, 20, 12], dtype=np.int64)
# tunnel encapsulation (TUN D->R): bytes between Ethernet and the inner IPv4 header
ENC_NONE, ENC_IPIP, ENC_GUE, ENC_GRE = range(4)
ENC_LEN = np.array([0, 20, 32, 24], dtype=np.int64)
ENC_PROTO = np.array([0, 4, 17, 47], dtype=np.uint64)
TUN_ENC = {"ipip": ENC_IPIP, "gue": ENC_GUE, "gre": ENC_GRE}
# path of a logical packet when a fault sends it another way (observe() routes by it)
PATH_NORMAL, PATH_BYPASS, PATH_LEAK = 0, 1, 2
PATH_DROP_D = 3      # reaches the director's client side and goes no further
PATH_NOREWRITE = 4   # a real server's reply the director forwards as it came (no connection entry)
PATH_FROM_D = 5      # sent by the director itself toward the client (its own TCP stack)
PATH_TO_DIP = 6      # a real server's packet to the director's own address (DIP), seen on p-dir-r only
# per-row forwarding method when a real server is configured with another one than the mode's
FWD_MODE, FWD_NAT, FWD_DR = 0, 1, 2
SYN_RTO = (1, 3, 7, 15, 31, 63)        # Linux SYN retransmissions (s after the first SYN; tcp_syn_retries 6)
DNS_RETRY = 5                          # glibc resolver: timeout 5 s, attempts 2
ICMP_QUOTE = 576 - 20 - 8              # Linux icmp_send quotes the offending packet up to 576 bytes in all
ICMP_RATELIMIT_MS, ICMP_BURST = 1000, 6   # net.ipv4.icmp_ratelimit, XRLIM_BURST_FACTOR (per destination)
IPTOS_PREC_INTERNETCONTROL = 0xC0      # TOS of Linux ICMP errors
RATE = 3000                            # new TCP connections per second (--rate)
# faults whose clients retry seconds later: the trace is cut while new connections still arrive, so
# that a capture of --frames frames is busy to its end (the retries past the cut are not in it)
LATE_FAULTS = {"reply-not-rewritten", "syn-drop", "rs-no-vip", "no-decap", "rs-routes-onward"}
WRONG_PORT = 8080                      # wrong-port: where the director sends RS3's connections

FAULTS = {  # name: modes it applies to (documented in the module docstring)
    "toa-missing": ("fullnat",), "toa-wrong": ("fullnat",), "toa-forged": ("fullnat",),
    "nat-bypass": ("nat",), "ttl-not-decremented": ("nat", "dr", "tun"), "arp-leak": ("dr",),
    "wrong-port": ("nat",), "reply-not-rewritten": ("nat",), "syn-drop": ("nat",),
    "bad-checksum": ("nat", "dr", "tun", "fullnat"), "arp-announce": ("dr", "tun"),
    "rs-no-vip": ("dr", "tun"), "rs-down": ("dr", "tun"), "rs-masquerade": ("dr",),
    "not-encapsulated": ("tun",), "no-decap": ("tun",), "wrong-lip": ("fullnat",),
    "mss-not-lowered": ("fullnat",), "mtu": ("tun",), "rs-routes-onward": ("dr",),
    "persistence-broken": ("nat",),
}
PERSIST_CLIENTS = 8                    # --persistence / persistence-broken: clients with 3-5 connections each
TUN_PMTU = 1500                        # mtu: the director's path MTU toward the real servers
UPLOAD = SEG                           # mtu: the first client segment of an upload, full size (IP length 1500)


# ---------------------------------------------------------------------------------------- payloads
class Pool:
    """All payload bytes, each template at an even offset, plus a prefix sum of its 16-bit words."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, b: bytes) -> tuple[int, int]:
        off = self.size
        self.parts.append(b)
        self.size += len(b)
        if self.size & 1:
            self.parts.append(b"\0")
            self.size += 1
        return off, len(b)

    def freeze(self):
        self.data = b"".join(self.parts) + b"\0\0"
        words = np.frombuffer(self.data[: len(self.data) & ~1], dtype=">u2").astype(np.uint64)
        self.prefix = np.concatenate(([np.uint64(0)], np.cumsum(words, dtype=np.uint64)))
        self.bytes_ = np.frombuffer(self.data, dtype=np.uint8)

    def word_sum(self, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Ones-complement-ready sum of the big-endian 16-bit words of pool[start:start+length]."""
        s = start.astype(np.int64) // 2
        full = length.astype(np.int64) // 2
        total = self.prefix[s + full] - self.prefix[s]
        odd = (length & 1).astype(bool)
        last = self.bytes_[(start + length - 1)[odd].astype(np.int64)].astype(np.uint64) << np.uint64(8)
        total[odd] += last
        return total


_WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
          "labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris "
          "nisi aliquip ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse "
          "cillum fugiat nulla pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui "
          "officia deserunt mollit anim id est laborum").split()


def build_pool(rng: np.random.Generator, small: bool = False):
    pool = Pool()
    # a body text to cut responses from: HTML-ish words
    words = rng.choice(np.array(_WORDS), size=160_000)
    text = " ".join(words.tolist())
    body = ("<html><head><title>lvs-inspect bench</title></head><body><p>" + text).encode()
    paths = ["/", "/index.html", "/static/app.js", "/static/style.css", "/api/v1/items", "/img/logo.png",
             "/api/v1/session", "/search", "/healthz", "/favicon.ico"]
    agents = ["curl/7.88.1", "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Firefox/115.0",
              "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
              "python-requests/2.31.0", "Wget/1.21.3"]
    req = []
    for i in range(512):
        cookie = "".join(rng.choice(list("0123456789abcdef"), size=int(rng.integers(0, 640))).tolist())
        if small:
            cookie = cookie[:16]
        r = (f"GET {paths[i % len(paths)]}?id={i} HTTP/1.1\r\nHost: www.example.com\r\n"
             f"User-Agent: {agents[i % len(agents)]}\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
             + (f"Cookie: session={cookie}\r\n" if cookie else "") + "Connection: keep-alive\r\n\r\n")
        if small:
            r = (f"GET {paths[i % len(paths)]}?id={i} HTTP/1.1\r\nHost: www.example.com\r\n"
                 + (f"Cookie: s={cookie}\r\n" if cookie else "") + "\r\n")
        req.append(pool.add(r.encode()))
    resp = []
    sizes = np.clip(rng.lognormal(np.log(1500), 1.25, size=512), 40, 180_000).astype(int)
    if small:
        sizes = np.clip(sizes // 10, 40, 2500)
    for i, n in enumerate(sizes.tolist()):
        ctype = ("text/html", "application/json", "text/css", "application/javascript", "image/png")[i % 5]
        hdr = (f"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 01 May 2024 12:00:00 GMT\r\n"
               f"Content-Type: {ctype}\r\nContent-Length: {n}\r\nConnection: keep-alive\r\n\r\n").encode()
        if small:
            hdr = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {n}\r\n\r\n".encode()
        start = int(rng.integers(0, len(body) - n - 1))
        resp.append(pool.add(hdr + body[start:start + n]))
    dns_q, dns_r = [], []
    for i in range(64):
        name = f"svc{i}.example.com"
        qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
        qid = (i * 7919 + 17) & 0xFFFF
        opt = b"\0\0\x29\x04\xd0\0\0\0\0\0\0"
        q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1) + qname + struct.pack(">HH", 1, 1) + opt
        n_an = 1 + i % 4
        ans = b"".join(struct.pack(">HHHIH4s", 0xC00C, 1, 1, 300, 4, bytes([203, 0, 113, 100 + a]))
                       for a in range(n_an))
        r = struct.pack(">HHHHHH", qid, 0x8180, 1, n_an, 0, 1) + qname + struct.pack(">HH", 1, 1) + ans + opt
        dns_q.append(pool.add(q))
        dns_r.append(pool.add(r))
    ping = pool.add(struct.pack("<QQ", 1_714_564_800, 0) + bytes(range(0x10, 0x38)))
    pool.freeze()
    arr = lambda lst: (np.array([a for a, _ in lst], dtype=np.int64), np.array([b for _, b in lst], dtype=np.int64))
    return pool, arr(req), arr(resp), arr(dns_q), arr(dns_r), ping


# ------------------------------------------------------------------------------- logical packets
class Cols:
    """Column-wise accumulator: add(**arrays) per packet group, then concat()."""

    def __init__(self):
        self.groups: list[dict] = []

    def add(self, n: int, **cols):
        self.groups.append({k: np.broadcast_to(np.asarray(v), (n,)) for k, v in cols.items()} | {"_n": n})

    def concat(self, defaults: dict) -> dict:
        names = set(defaults)
        out = {}
        for name in names:
            dt = defaults[name][1]
            out[name] = np.concatenate([g[name].astype(dt) if name in g else
                                        np.full(g["_n"], defaults[name][0], dtype=dt)
                                        for g in self.groups])
        return out


LOGICAL = {  # name: (default, dtype)
    "kind": (K_TCP, np.uint8), "dir": (0, np.uint8), "td": (0, np.int64), "conn": (-1, np.int64),
    "cip": (0, np.uint64), "cport": (0, np.uint16), "vport": (0, np.uint16), "rs": (-1, np.int8),
    "ttl0": (64, np.uint8), "flags": (0, np.uint16), "seq": (0, np.uint64), "ack": (0, np.uint64),
    "win": (0, np.uint16), "tsval": (0, np.uint64), "tsecr": (0, np.uint64), "syn_opts": (0, np.uint8),
    "wscale": (7, np.uint8), "ip_id": (0, np.uint16), "df": (1, np.uint8),
    "pl_start": (0, np.int64), "pl_len": (0, np.int64),
    "icmp_type": (0, np.uint8), "icmp_id": (0, np.uint16), "icmp_seq": (0, np.uint16),
    "arp_op": (0, np.uint16), "arp_sha": (0, np.uint64), "arp_spa": (0, np.uint64),
    "arp_tha": (0, np.uint64), "arp_tpa": (0, np.uint64), "arp_dst": (0, np.uint64), "seg": (0, np.uint8),
    "path": (PATH_NORMAL, np.uint8), "opt": (OPT_DERIVE, np.uint8),
    # fault columns: the real server's port when it differs from the service port, a corrupted TCP
    # checksum on the D->R hop, the forwarding method of the row's real server (FWD_*), the ICMP code
    # and IP TOS, and for ICMP errors the logical row whose frame they quote (inner: from its inner
    # IP header on, as the director relays it)
    "rport": (0, np.uint16), "csum_bad": (0, np.uint8), "fwd": (FWD_MODE, np.uint8),
    "icmp_code": (0, np.uint8), "tos": (0, np.uint8), "quote_of": (-1, np.int64), "quote_inner": (0, np.uint8),
}


def _grp_rank(keys: list[np.ndarray]) -> np.ndarray:
    """0-based rank of each row within its group (groups = equal keys[:-1], ordered by keys[-1])."""
    order = np.lexsort(keys[::-1])
    n = len(order)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    sk = [k[order] for k in keys[:-1]]
    new = np.ones(n, dtype=bool)
    new[1:] = np.zeros(n - 1, dtype=bool)
    for k in sk:
        new[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(new)
    idx = np.arange(n)
    rank_sorted = idx - np.repeat(starts, np.diff(np.append(starts, n)))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = rank_sorted
    return rank


def _returning_clients(prng: np.random.Generator, cl: np.ndarray, n_clients: int) -> np.ndarray:
    """PERSIST_CLIENTS clients (not otherwise in cl) get 3-5 connections each, spread over the trace (new
    source ports), in slots chosen so that plain round robin (conn % 4) gives every one of them at least
    two real servers: the same clients in the healthy and the persistence-broken traces."""
    C = len(cl)
    npc = max(1, min(PERSIST_CLIENTS, C // 5))
    spare = np.setdiff1d(np.arange(n_clients), cl)
    who = prng.choice(spare, size=npc, replace=False)
    n_each = prng.integers(3, 6, npc)
    while n_each.sum() > C:
        n_each = np.maximum(n_each - 1, 1)
    owner = np.repeat(np.arange(npc), n_each)
    while True:
        slots = prng.choice(C, size=len(owner), replace=False)
        spread = [len(np.unique(slots[owner == k] % 4)) for k in range(npc)]
        if min(spread) >= min(2, C):
            break
    cl = cl.copy()
    cl[slots] = who[owner]
    return cl


def gen_logical(seed: int, n_conn: int, mode: str, small: bool = False, rate: int = RATE, persist: str = ""):
    """All packets once, at the director (td = time at the director, ns from the trace start).

    Returns the logical columns P, the payload pool and K, per-connection arrays (index = conn)
    that the fault and FullNAT passes need.  DNS exchanges and pings get conn ids after the TCP
    connections (C + i and C + nd + i) so that their two packets can be paired.  persist: "" (every
    connection from its own random client), "sticky" (returning clients, --persistence) or "broken"
    (returning clients scheduled plain round robin, --fault persistence-broken)."""
    rng = np.random.default_rng(seed)
    pool, (req_off, req_len), (rsp_off, rsp_len), (dq_off, dq_len), (dr_off, dr_len), ping = build_pool(rng, small)
    seg_max = FNAT_MSS if mode == "fullnat" else SEG   # FullNAT connections run without timestamps
    L = Cols()
    C = n_conn
    # --- clients and connections
    n_clients = 5000
    c_ip = CLIENT_NET + rng.choice(np.arange(1, 131_070, dtype=np.uint64), size=n_clients, replace=False)
    c_ttl0 = np.where(rng.random(n_clients) < 0.75, 64, 128) - rng.integers(4, 19, n_clients)
    cl = rng.integers(0, n_clients, C)
    if persist:   # returning clients (their own generator: without persist nothing else changes)
        cl = _returning_clients(np.random.default_rng([seed, 6]), cl, n_clients)
    cip = c_ip[cl]
    ttl0 = c_ttl0[cl].astype(np.uint8)
    cport = rng.integers(32768, 61000, C).astype(np.uint16)
    rs = (np.arange(C) % 4).astype(np.int8)                    # scheduler rr
    if persist == "sticky":   # persistence template per client address: rr only for a client's first connection
        _, first, inv = np.unique(cl, return_index=True, return_inverse=True)
        new = np.zeros(C, dtype=bool)
        new[first] = True
        rs = ((np.cumsum(new) - 1)[first[inv.ravel()]] % 4).astype(np.int8)
    t0 = np.cumsum(rng.exponential(1e9 / float(rate), C)).astype(np.int64) + 5 * MS
    rtt_c = np.clip(rng.lognormal(np.log(20 * MS), 0.8, C), 1 * MS, 300 * MS).astype(np.int64)
    rtt_s = rng.integers(80 * US, 400 * US, C)
    proc = np.clip(rng.lognormal(np.log(0.6 * MS), 1.0, C), 50 * US, 80 * MS).astype(np.int64)
    isn_c = rng.integers(0, 1 << 32, C, dtype=np.uint64)
    isn_s = rng.integers(0, 1 << 32, C, dtype=np.uint64)
    tsb_c = rng.integers(0, 1 << 31, C, dtype=np.uint64)
    tsb_s = rng.integers(0, 1 << 31, C, dtype=np.uint64)
    win_c = rng.integers(501, 2049, C)
    win_s = rng.integers(501, 1025, C)
    ws_c = rng.choice(np.array([7, 8, 9, 10]), C)
    nex = rng.choice(np.array([1, 2, 3]), C, p=[0.6, 0.25, 0.15])
    rst = rng.random(C) < 0.02

    t_syn = t0
    t_synack = t0 + rtt_s
    t_ack = t_synack + rtt_c

    # TCP timestamps: both clocks tick in ms from the connection's start (each from its own random
    # base); the echo is the peer's clock when it sent the latest packet that had arrived by then.
    def c2s_ts(c, t, syn=False):
        tv = tsb_c[c] + ((t - t0[c]) // MS).astype(np.uint64)
        te = tsb_s[c] + (np.maximum(t - t0[c] - rtt_c[c], rtt_s[c]) // MS).astype(np.uint64)
        return tv, (np.zeros_like(te) if syn else te)

    def s2c_ts(c, t):
        tv = tsb_s[c] + ((t - t0[c]) // MS).astype(np.uint64)
        te = tsb_c[c] + (np.maximum(t - t0[c] - rtt_s[c], 0) // MS).astype(np.uint64)
        return tv, te

    tcp = dict(kind=K_TCP, vport=HTTP_PORT)
    c_all = np.arange(C)
    # handshake
    tv, te = c2s_ts(c_all, t_syn, syn=True)
    L.add(C, **tcp, dir=0, td=t_syn, conn=c_all, flags=SYN, seq=isn_c, ack=0, win=64240, tsval=tv, tsecr=te,
          syn_opts=1, wscale=ws_c)
    tv, te = s2c_ts(c_all, t_synack)
    L.add(C, **tcp, dir=1, td=t_synack, conn=c_all, flags=SYN | ACK, seq=isn_s, ack=isn_c + 1, win=65160,
          tsval=tv, tsecr=te, syn_opts=1, wscale=7)
    tv, te = c2s_ts(c_all, t_ack)
    L.add(C, **tcp, dir=0, td=t_ack, conn=c_all, flags=ACK, seq=isn_c + 1, ack=isn_s + 1, win=win_c,
          tsval=tv, tsecr=te)

    # exchanges, one round at a time (at most 3 per connection)
    qcum = np.zeros(C, dtype=np.uint64)
    rcum = np.zeros(C, dtype=np.uint64)
    t_end = t_ack.copy()
    for k in range(3):
        c = np.flatnonzero(nex > k)
        if len(c) == 0:
            break
        think = np.where(k == 0, 20 * US, rng.integers(1 * MS, 60 * MS, len(c)))
        t_req = t_end[c] + think
        qi = rng.integers(0, len(req_off), len(c))
        ri = rng.integers(0, len(rsp_off), len(c))
        q, r = req_len[qi], rsp_len[ri]
        # request
        tv, te = c2s_ts(c, t_req)
        L.add(len(c), **tcp, dir=0, td=t_req, conn=c, flags=PSH | ACK, seq=isn_c[c] + 1 + qcum[c],
              ack=isn_s[c] + 1 + rcum[c], win=win_c[c], tsval=tv, tsecr=te, pl_start=req_off[qi], pl_len=q)
        q_after = qcum[c] + q.astype(np.uint64)
        # the server's pure ACK of the request (when it takes its time to answer)
        pa = proc[c] > 1 * MS
        cp = c[pa]
        tv, te = s2c_ts(cp, t_req[pa] + rtt_s[cp])
        L.add(len(cp), **tcp, dir=1, td=t_req[pa] + rtt_s[cp], conn=cp, flags=ACK, seq=isn_s[cp] + 1 + rcum[cp],
              ack=isn_c[cp] + 1 + q_after[pa], win=win_s[cp], tsval=tv, tsecr=te)
        # response segments in slow-start rounds
        nseg = (r + seg_max - 1) // seg_max
        e = np.repeat(np.arange(len(c)), nseg)
        j = np.arange(len(e)) - np.repeat(np.cumsum(nseg) - nseg, nseg)
        rnd = np.floor(np.log2(j / IW + 1)).astype(np.int64)
        t_first = t_req + rtt_s[c] + proc[c]
        ce = c[e]
        t_seg = t_first[e] + rnd * rtt_c[ce] + (j - IW * (2 ** rnd - 1)) * 12 * US
        seg_len = np.minimum(seg_max, r[e] - j * seg_max)
        last = j == nseg[e] - 1
        tv, te = s2c_ts(ce, t_seg)
        L.add(len(e), **tcp, dir=1, td=t_seg, conn=ce, flags=np.where(last, PSH | ACK, ACK),
              seq=isn_s[ce] + 1 + rcum[ce] + (j * seg_max).astype(np.uint64), ack=isn_c[ce] + 1 + q_after[e],
              win=win_s[ce], tsval=tv, tsecr=te, pl_start=rsp_off[ri][e] + j * seg_max, pl_len=seg_len)
        # delayed ACKs: every second segment and the last one
        am = (j % 2 == 1) | last
        ea, ja = e[am], j[am]
        ca = c[ea]
        t_a = t_seg[am] + rtt_c[ca]
        tv, te = c2s_ts(ca, t_a)
        acked = np.minimum((ja + 1) * seg_max, r[ea]).astype(np.uint64)
        L.add(len(ea), **tcp, dir=0, td=t_a, conn=ca, flags=ACK, seq=isn_c[ca] + 1 + q_after[ea],
              ack=isn_s[ca] + 1 + rcum[ca] + acked, win=win_c[ca], tsval=tv, tsecr=te)
        last_t = np.zeros(len(c), dtype=np.int64)
        np.maximum.at(last_t, ea, t_a)
        t_end[c] = last_t
        qcum[c] = q_after
        rcum[c] += r.astype(np.uint64)

    # close: client FIN, server FIN, last ACK; or a client RST
    t_close = t_end + rng.integers(500 * US, 20 * MS, C)
    cf = np.flatnonzero(~rst)
    cr = np.flatnonzero(rst)
    tv, te = c2s_ts(cr, t_close[cr])
    L.add(len(cr), **tcp, dir=0, td=t_close[cr], conn=cr, flags=RST | ACK, seq=isn_c[cr] + 1 + qcum[cr],
          ack=isn_s[cr] + 1 + rcum[cr], win=0, tsval=tv, tsecr=te)
    tf = t_close[cf]
    tv, te = c2s_ts(cf, tf)
    L.add(len(cf), **tcp, dir=0, td=tf, conn=cf, flags=FIN | ACK, seq=isn_c[cf] + 1 + qcum[cf],
          ack=isn_s[cf] + 1 + rcum[cf], win=win_c[cf], tsval=tv, tsecr=te)
    tf2 = tf + rtt_s[cf]
    tv, te = s2c_ts(cf, tf2)
    L.add(len(cf), **tcp, dir=1, td=tf2, conn=cf, flags=FIN | ACK, seq=isn_s[cf] + 1 + rcum[cf],
          ack=isn_c[cf] + 2 + qcum[cf], win=win_s[cf], tsval=tv, tsecr=te)
    tf3 = tf2 + rtt_c[cf]
    tv, te = c2s_ts(cf, tf3)
    L.add(len(cf), **tcp, dir=0, td=tf3, conn=cf, flags=ACK, seq=isn_c[cf] + 2 + qcum[cf],
          ack=isn_s[cf] + 2 + rcum[cf], win=win_c[cf], tsval=tv, tsecr=te)

    duration = int(t0[-1]) + 50 * MS
    # --- DNS over UDP to the VIP (same virtual-service rewrites), ~60 queries/s (at --rate 3000)
    nd = max(1, duration * 60 * rate // (RATE * 1_000_000_000))
    td_q = np.sort(rng.integers(0, duration, nd))
    dcl = rng.integers(0, n_clients, nd)
    dport_c = rng.integers(32768, 61000, nd)
    drs = rng.integers(0, 4, nd)
    di = rng.integers(0, len(dq_off), nd)
    d_rtt = rng.integers(80 * US, 400 * US, nd) + rng.integers(50 * US, 2 * MS, nd)
    udp = dict(kind=K_UDP, vport=DNS_PORT, cip=c_ip[dcl], cport=dport_c, rs=drs, ttl0=c_ttl0[dcl],
               conn=C + np.arange(nd))
    L.add(nd, **udp, dir=0, td=td_q, ip_id=rng.integers(0, 65536, nd), pl_start=dq_off[di], pl_len=dq_len[di])
    L.add(nd, **udp, dir=1, td=td_q + d_rtt, ip_id=rng.integers(0, 65536, nd), df=0,
          pl_start=dr_off[di], pl_len=dr_len[di])
    # --- pings to the VIP, answered by the director (~4/s at --rate 3000)
    npg = max(1, duration * 4 * rate // (RATE * 1_000_000_000))
    td_p = np.sort(rng.integers(0, duration, npg))
    pcl = rng.integers(0, n_clients, npg)
    pid = rng.integers(1, 65536, npg)
    pseq = rng.integers(1, 200, npg)
    icmp = dict(kind=K_ICMP, cip=c_ip[pcl], ttl0=c_ttl0[pcl], icmp_id=pid, icmp_seq=pseq,
                pl_start=ping[0], pl_len=ping[1], conn=C + nd + np.arange(npg))
    L.add(npg, **icmp, dir=0, td=td_p, icmp_type=8, ip_id=rng.integers(0, 65536, npg))
    L.add(npg, **icmp, dir=1, td=td_p + rng.integers(40 * US, 200 * US, npg), icmp_type=0,
          ip_id=rng.integers(0, 65536, npg), df=0)
    # --- ARP on every segment, each pair about once a second
    pairs = [  # (segment, asker mac, asker ip, target mac, target ip)
        (0, UPSTREAM, UPSTREAM_IP, GW_UP, GW_UP_IP),
        (1, GW_DIR, GW_DIR_IP, DIR_EXT, VIP),
        (1, DIR_EXT, DIR_EXT_IP, GW_DIR, GW_DIR_IP),
    ] + [(2, DIR_INT, DIP, int(RS_MACS[k]), int(RIPS[k])) for k in range(4)]
    if mode in ("dr", "tun"):
        pairs.append((2, int(RS_MACS[0]), int(RIPS[0]), GW_RS, GW_RS_IP))
    if mode == "fullnat":   # the real servers resolve the LIPs they answer to
        pairs += [(2, int(RS_MACS[k]), int(RIPS[k]), DIR_INT, int(LIPS[k % 2])) for k in range(4)]
    na = max(1, duration // 1_000_000_000)
    for seg, amac, aip, tmac, tip in pairs:
        ta = np.sort(rng.integers(0, duration, na))
        arp = dict(kind=K_ARP, seg=seg, df=0)
        L.add(na, **arp, td=ta, arp_op=1, arp_sha=amac, arp_spa=aip, arp_tha=0, arp_tpa=tip, arp_dst=BROADCAST)
        L.add(na, **arp, td=ta + rng.integers(20 * US, 300 * US, na), arp_op=2, arp_sha=tmac, arp_spa=tip,
              arp_tha=amac, arp_tpa=aip, arp_dst=amac)

    P = L.concat(LOGICAL)
    # fill per-connection columns of the TCP rows
    t = P["kind"] == K_TCP
    ct = P["conn"][t]
    P["cip"][t] = cip[ct]
    P["cport"][t] = cport[ct]
    P["rs"][t] = rs[ct]
    P["ttl0"][t] = ttl0[ct]
    # Linux IP IDs: per socket, a random start incremented per packet (direction = socket)
    rank = _grp_rank([P["conn"][t], P["dir"][t], P["td"][t]])
    base = np.where(P["dir"][t] == 0, isn_c[ct] >> np.uint64(7), isn_s[ct] >> np.uint64(11))
    P["ip_id"][t] = ((base + rank.astype(np.uint64)) & np.uint64(0xFFFF)).astype(np.uint16)
    P["seq"] &= np.uint64(0xFFFF_FFFF)
    P["ack"] &= np.uint64(0xFFFF_FFFF)
    P["tsval"] &= np.uint64(0xFFFF_FFFF)
    P["tsecr"] &= np.uint64(0xFFFF_FFFF)
    K = dict(C=C, nd=nd, npg=npg, duration=duration, cip=cip, cport=cport, rs=rs, ttl0=ttl0, t0=t0,
             rtt_c=rtt_c, rtt_s=rtt_s, isn_c=isn_c, isn_s=isn_s, tsb_c=tsb_c, tsb_s=tsb_s, ws_c=ws_c)
    return P, pool, K


# ----------------------------------------------------------------------- faults and FullNAT passes
M32 = np.uint64(0xFFFF_FFFF)


def _append(P: dict, L: Cols) -> dict:
    """P with the rows collected in L appended (columns L does not set take their LOGICAL default)."""
    if not L.groups:
        return P
    Q = L.concat(LOGICAL)
    return {k: np.concatenate([P[k], Q[k].astype(P[k].dtype)]) for k in P}


def _pick(rng: np.random.Generator, n: int, frac: float = 0.15) -> np.ndarray:
    """Some connections for a fault: about `frac` of them, always connection 1 (early in any trace)."""
    sel = rng.random(n) < frac
    sel[min(1, n - 1)] = True
    return sel


def _arp_exchange(L: Cols, rng, duration: int, seg: int, amac: int, aip: int, tmac: int, tip: int):
    """Who-has/is-at pairs about once a second, as gen_logical makes them."""
    na = max(1, duration // 1_000_000_000)
    ta = np.sort(rng.integers(0, duration, na))
    arp = dict(kind=K_ARP, seg=seg, df=0)
    L.add(na, **arp, td=ta, arp_op=1, arp_sha=amac, arp_spa=aip, arp_tha=0, arp_tpa=tip, arp_dst=BROADCAST)
    L.add(na, **arp, td=ta + rng.integers(20 * US, 300 * US, na), arp_op=2, arp_sha=tmac, arp_spa=tip,
          arp_tha=amac, arp_tpa=aip, arp_dst=amac)


def fault_nat_bypass(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """RS1 routes 198.18.0.0/16 via the site router: its replies to those clients skip the director."""
    C = K["C"]
    tcp = P["kind"] == K_TCP
    ci = np.where(tcp, P["conn"], 0)
    aff = (K["rs"] == 0) & ((K["cip"] & np.uint64(BYPASS_MASK)) == np.uint64(BYPASS_NET))
    rows = tcp & aff[ci]
    syn = P["syn_opts"] == 1
    P["path"][rows & syn & (P["dir"] == 1)] = PATH_BYPASS       # RS1's SYN-ACK, src RIP, toward the router
    syn_id = np.zeros(C, dtype=np.uint64)
    s = rows & syn & (P["dir"] == 0)
    syn_id[P["conn"][s]] = P["ip_id"][s]
    P = {k: v[~rows | syn] for k, v in P.items()}               # the connection never gets further
    c = np.flatnonzero(aff)
    n = len(c)
    L = Cols()
    base = dict(kind=K_TCP, vport=HTTP_PORT, conn=c, cip=K["cip"][c], cport=K["cport"][c], rs=K["rs"][c],
                ttl0=K["ttl0"][c])
    isn_c = K["isn_c"][c]
    for a, off in enumerate((0, 1000 * MS, 3000 * MS)):       # the SYN and its retransmissions (RTO 1 s, 2 s)
        t_syn = K["t0"][c] + off
        t_sa = t_syn + K["rtt_s"][c]
        if a:
            tv = K["tsb_c"][c] + np.uint64(off // MS)
            L.add(n, **base, dir=0, td=t_syn, flags=SYN, seq=isn_c, ack=0, win=64240, tsval=tv, tsecr=0,
                  syn_opts=1, wscale=K["ws_c"][c], ip_id=(syn_id[c] + np.uint64(a)) & np.uint64(0xFFFF))
            L.add(n, **base, dir=1, td=t_sa, flags=SYN | ACK, seq=rng.integers(0, 1 << 32, n, dtype=np.uint64),
                  ack=isn_c + 1, win=65160, tsval=K["tsb_s"][c] + ((t_sa - K["t0"][c]) // MS).astype(np.uint64),
                  tsecr=tv, syn_opts=1, wscale=7, ip_id=0, path=PATH_BYPASS)
        # the client has no socket for RIP:80: RST, seq = the SYN-ACK's ack, no options
        L.add(n, **base, dir=0, td=t_sa + K["rtt_c"][c], flags=RST, seq=isn_c + 1, ack=0, win=0, ip_id=0,
              opt=OPT_NONE, path=PATH_BYPASS)
    # DNS answers from RS1 to those clients go the same way (and are ignored)
    u = (P["kind"] == K_UDP) & (P["dir"] == 1) & (P["rs"] == 0) & \
        ((P["cip"] & np.uint64(BYPASS_MASK)) == np.uint64(BYPASS_NET))
    P["path"][u] = PATH_BYPASS
    _arp_exchange(L, rng, K["duration"], 2, int(RS_MACS[0]), int(RIPS[0]), GW_RS, GW_RS_IP)
    P = _append(P, L)
    P["seq"] &= M32
    P["ack"] &= M32
    P["tsval"] &= M32
    return P


def fault_arp_leak(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """RS1 answers the router's ARP for the VIP after the director and wins: traffic skips the director.
    (Deterministic: takes `rng` only to share apply_passes' signature of fault passes.)"""
    C, dur = K["C"], K["duration"]
    rs1 = int(RS_MACS[0])
    L = Cols()
    arp = P["kind"] == K_ARP
    # one more router ARP for the VIP at 30 % of the traffic (the director answers within 300 us)
    t_q = np.array([dur * 3 // 10], dtype=np.int64)
    a = dict(kind=K_ARP, seg=1, df=0)
    L.add(1, **a, td=t_q, arp_op=1, arp_sha=GW_DIR, arp_spa=GW_DIR_IP, arp_tha=0, arp_tpa=VIP, arp_dst=BROADCAST)
    L.add(1, **a, td=t_q + 150 * US, arp_op=2, arp_sha=DIR_EXT, arp_spa=VIP, arp_tha=GW_DIR, arp_tpa=GW_DIR_IP,
          arp_dst=GW_DIR)
    q = arp & (P["arp_op"] == 1) & (P["arp_sha"] == GW_DIR) & (P["arp_tpa"] == VIP)
    t_rs1 = np.concatenate([P["td"][q], t_q]) + 400 * US      # RS1 answers every one of them, last
    L.add(len(t_rs1), **a, td=t_rs1, arp_op=2, arp_sha=rs1, arp_spa=VIP, arp_tha=GW_DIR, arp_tpa=GW_DIR_IP,
          arp_dst=GW_DIR)
    t_leak = int(t_rs1.min())
    # RS1 (arp_announce 0) asks for its gateway with the VIP as sender address
    g = arp & (P["arp_op"] == 1) & (P["arp_sha"] == rs1) & (P["arp_tpa"] == GW_RS_IP)
    P["arp_spa"][g] = VIP
    g = arp & (P["arp_op"] == 2) & (P["arp_sha"] == GW_RS) & (P["arp_tha"] == rs1)
    P["arp_tpa"][g] = VIP

    kind, td, c2s, conn = P["kind"], P["td"], P["dir"] == 0, P["conn"]
    tcp = kind == K_TCP
    ci = np.where(tcp, conn, 0)
    new = tcp & (K["t0"] >= t_leak)[ci]                       # connections opened after the flip: RS1's
    P["rs"][new] = 0
    P["path"][new & c2s] = PATH_LEAK
    late = tcp & c2s & (td >= t_leak) & ~new
    on1 = (K["rs"] == 0)[ci]
    P["path"][late & on1] = PATH_LEAK                           # RS1 has these sockets: they go on
    rows = np.flatnonzero(late & ~on1)                          # RS2-4's connections: RS1 answers RST
    o = rows[np.lexsort((td[rows], conn[rows]))]
    _, first = np.unique(conn[o], return_index=True)
    hit = o[first]
    cut = np.full(C, np.iinfo(np.int64).max, dtype=np.int64)
    cut[conn[hit]] = td[hit]
    P["path"][hit] = PATH_LEAK
    h = hit[(P["flags"][hit] & RST) == 0]
    L.add(len(h), kind=K_TCP, vport=HTTP_PORT, dir=1, td=td[h] + 100 * US, conn=conn[h], cip=P["cip"][h],
          cport=P["cport"][h], rs=0, ttl0=P["ttl0"][h], flags=RST, seq=P["ack"][h], ack=0, win=0, ip_id=0,
          opt=OPT_NONE, path=PATH_LEAK)
    keep = ~(tcp & (td > cut[ci]))
    # DNS and pings after the flip: RS1 gets the query and answers (src VIP, through the router)
    for k in (K_UDP, K_ICMP):
        m = kind == k
        qc = conn[m & c2s & (td >= t_leak)]
        both = m & np.isin(conn, qc)
        P["rs"][both] = 0
        P["path"][both & (c2s if k == K_UDP else True)] = PATH_LEAK
    P = {k: v[keep] for k, v in P.items()}
    return _append(P, L)


# --- faults added for the rule fixtures: helpers
def _copy_rows(P: dict, idx: np.ndarray, **over) -> dict:
    """Copies of the logical rows `idx`, with some columns replaced (scalars or arrays)."""
    Q = {k: v[idx].copy() for k, v in P.items()}
    for k, v in over.items():
        Q[k] = np.broadcast_to(np.asarray(v), (len(idx),)).astype(P[k].dtype)
    return Q


def _add_rows(P: dict, *Qs: dict) -> dict:
    return {k: np.concatenate([P[k]] + [Q[k] for Q in Qs]) for k in P}


def _ident(ids, plus) -> np.ndarray:
    """IP IDs `plus` packets further along a per-socket counter."""
    return ((np.asarray(ids).astype(np.int64) + plus) & 0xFFFF).astype(np.uint16)


def _conn_rows(P: dict, K: dict, sel: np.ndarray):
    """(TCP rows of the connections selected by the per-connection mask `sel`, conn index per row)."""
    tcp = P["kind"] == K_TCP
    ci = np.where(tcp, P["conn"], 0)
    return tcp & sel[ci], ci


def _syn_rows(P: dict, rows: np.ndarray) -> np.ndarray:
    """The client's first SYN among `rows` (one per connection: gen_logical makes one)."""
    return np.flatnonzero(rows & (P["syn_opts"] == 1) & (P["dir"] == 0))


def _syn_retransmissions(P: dict, syn: np.ndarray, offsets_s, path=PATH_NORMAL) -> list[dict]:
    """The client's retransmissions of the SYNs `syn` after offsets_s[a] seconds: same sequence number
    and options, the timestamp clock moved on, the next IP ID of the socket."""
    out = []
    for a, off in enumerate(offsets_s, 1):
        d = int(off) * 1000 * MS
        out.append(_copy_rows(P, syn, td=P["td"][syn] + d, tsval=(P["tsval"][syn] + np.uint64(off * 1000)) & M32,
                              ip_id=_ident(P["ip_id"][syn], a), path=path))
    return out


def fault_wrong_port(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """The director maps VIP:80 to RS3's port 8080 (the real server listens there and answers)."""
    rows = (P["kind"] == K_TCP) & (P["rs"] == 2) & (P["vport"] == HTTP_PORT)
    P["rport"][rows] = WRONG_PORT
    return P


def fault_syn_drop(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """The director silently drops the first SYN of some connections (conn_reuse_mode=1 with conntrack=1,
    kernels < 5.9), and on some of them the first retransmission too; the client's retransmission after
    1 s (or 3 s) gets through and the connection runs from there."""
    C = K["C"]
    sel = _pick(rng, C)
    three = sel & (rng.random(C) < 0.4)
    three[min(1, C - 1)] = True
    n_drop = np.where(three, 2, np.where(sel, 1, 0))
    delay_s = np.array([0, 1, 3])[n_drop]
    rows, ci = _conn_rows(P, K, sel)
    syn = _syn_rows(P, rows)
    dropped = [_copy_rows(P, syn, path=PATH_DROP_D)]
    two = syn[n_drop[P["conn"][syn]] == 2]
    dropped += _syn_retransmissions(P, two, (1,), path=PATH_DROP_D)
    # the connection as it was generated now starts at the SYN that passed
    c2s = P["dir"] == 0
    d_ms = (delay_s[ci] * 1000).astype(np.uint64)
    P["td"] = np.where(rows, P["td"] + delay_s[ci] * 1000 * MS, P["td"])
    P["tsval"] = np.where(rows & c2s, (P["tsval"] + d_ms) & M32, P["tsval"])      # the client's clock ran on
    P["tsecr"] = np.where(rows & ~c2s, (P["tsecr"] + d_ms) & M32, P["tsecr"])     # the server echoes it
    P["ip_id"] = np.where(rows & c2s, _ident(P["ip_id"], n_drop[ci]), P["ip_id"]).astype(np.uint16)
    return _add_rows(P, *dropped)


def fault_reply_not_rewritten(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """The director loses the connection entry of some connections right after their first request was
    forwarded; the real server's answer is then forwarded as it came (src RIP:80)."""
    C = K["C"]
    sel = _pick(rng, C)
    rows, ci = _conn_rows(P, K, sel)
    td, c2s = P["td"], P["dir"] == 0
    big = np.iinfo(np.int64).max
    req = rows & c2s & (P["pl_len"] > 0)
    t_req = np.full(C, big, dtype=np.int64)
    np.minimum.at(t_req, P["conn"][req], td[req])
    first_req = np.flatnonzero(req & (td == t_req[ci]))
    after = rows & (td > t_req[ci])
    srv = after & ~c2s
    t_first = np.full(C, big, dtype=np.int64)
    np.minimum.at(t_first, P["conn"][srv], td[srv])
    # the client answers each of them with a RST (no socket for RIP:80); once the first one reaches the
    # real server (after the client's RTT) it sends nothing more
    cut = np.where(t_first < big, t_first + K["rtt_c"] + 20 * US, big)
    sent = np.flatnonzero(srv & (td < cut[ci]))
    P["path"][sent] = PATH_NOREWRITE
    rst = _copy_rows(P, sent, dir=0, td=td[sent] + K["rtt_c"][P["conn"][sent]], flags=RST, seq=P["ack"][sent],
                     ack=0, win=0, ip_id=0, opt=OPT_NONE, pl_len=0, pl_start=0, syn_opts=0, path=PATH_BYPASS)
    # the client retransmits its request after its RTO (one RTT sample: rtt + max(2 rtt, 200 ms)); the
    # director has no entry, so its own TCP stack answers with a RST from VIP:80 (seq = the request's ack)
    c = P["conn"][first_req]
    rtt = K["rtt_c"][c] + K["rtt_s"][c]
    rto = rtt + np.maximum(2 * rtt, 200 * MS)
    again = _copy_rows(P, first_req, td=td[first_req] + rto,
                       tsval=(P["tsval"][first_req] + (rto // MS).astype(np.uint64)) & M32,
                       ip_id=_ident(P["ip_id"][first_req], 1), path=PATH_DROP_D)
    reset = _copy_rows(P, first_req, dir=1, td=td[first_req] + rto + 30 * US, flags=RST, seq=P["ack"][first_req],
                       ack=0, win=0, ip_id=0, opt=OPT_NONE, pl_len=0, pl_start=0, path=PATH_FROM_D)
    keep = ~after | (P["path"] == PATH_NOREWRITE)
    P = {k: v[keep] for k, v in P.items()}
    return _add_rows(P, rst, again, reset)


def fault_bad_checksum(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """Some connections' delayed ACKs reach the real servers with a corrupted TCP checksum (one bit
    flipped on the D->R hop); the real server drops them and the next cumulative ACK covers them."""
    sel = _pick(rng, K["C"])
    rows, ci = _conn_rows(P, K, sel)
    c2s = rows & (P["dir"] == 0)
    last = np.full(K["C"], -1, dtype=np.int64)
    np.maximum.at(last, P["conn"][c2s], P["td"][c2s])
    hs_ack = (K["isn_s"][ci] + np.uint64(1)) & M32
    m = c2s & (P["flags"] == ACK) & (P["pl_len"] == 0) & (P["ack"] != hs_ack) & (P["td"] < last[ci])
    P["csum_bad"][m] = 1
    return P


def fault_arp_announce(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """RS1 (arp_announce 0) asks for its gateway with the VIP as sender address; it does not answer
    ARP for the VIP (arp_ignore 1), and the router's VIP-side neighbours are on another segment."""
    rs1 = int(RS_MACS[0])
    arp = P["kind"] == K_ARP
    g = arp & (P["arp_op"] == 1) & (P["arp_sha"] == rs1) & (P["arp_tpa"] == GW_RS_IP)
    P["arp_spa"][g] = VIP
    g = arp & (P["arp_op"] == 2) & (P["arp_sha"] == GW_RS) & (P["arp_tha"] == rs1)
    P["arp_tpa"][g] = VIP
    return P


def fault_rs_no_vip(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """RS2 has no VIP: it drops what the director forwards (not a local address, ip_forward 0)."""
    rows, _ = _conn_rows(P, K, K["rs"] == 1)
    syn = _syn_rows(P, rows)
    again = _syn_retransmissions(P, syn, SYN_RTO)
    u = (P["kind"] == K_UDP) & (P["rs"] == 1)
    q = np.flatnonzero(u & (P["dir"] == 0))
    retry = _copy_rows(P, q, td=P["td"][q] + DNS_RETRY * 1000 * MS,
                       ip_id=rng.integers(0, 65536, len(q)).astype(np.uint16))
    keep = ~(rows | u)
    keep[syn] = True
    keep[q] = True
    P = {k: v[keep] for k, v in P.items()}
    return _add_rows(P, *again, retry)


def fault_rs_down(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """RS3 has the VIP but nothing listens on port 80: it answers each SYN with RST+ACK from VIP:80."""
    rows, _ = _conn_rows(P, K, K["rs"] == 2)
    syn = _syn_rows(P, rows)
    c = P["conn"][syn]
    rst = _copy_rows(P, syn, dir=1, td=P["td"][syn] + K["rtt_s"][c], flags=RST | ACK, seq=0,
                     ack=(P["seq"][syn] + np.uint64(1)) & M32, win=0, ip_id=0, opt=OPT_NONE, syn_opts=0)
    keep = ~rows
    keep[syn] = True
    P = {k: v[keep] for k, v in P.items()}
    return _add_rows(P, rst)


def fault_rs_masquerade(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """RS4 is added with -m (masquerading) and routes the clients via the director, as NAT needs."""
    P["fwd"][((P["kind"] == K_TCP) | (P["kind"] == K_UDP)) & (P["rs"] == 3)] = FWD_NAT
    return P


def fault_not_encapsulated(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """RS3 is added with -g (gatewaying) instead of -i: its packets go DR-style, without a tunnel."""
    P["fwd"][((P["kind"] == K_TCP) | (P["kind"] == K_UDP)) & (P["rs"] == 2)] = FWD_DR
    return P


def fault_no_decap(P: dict, K: dict, rng: np.random.Generator, tun: str = "ipip") -> dict:
    """RS2 cannot decapsulate: it answers the tunnel packets with ICMP unreachable to the director,
    within Linux's per-destination ICMP rate limit; the director relays each such error to the client
    (ip_vs_in_icmp), whose connect() then fails; packets that got no ICMP are retransmitted."""
    rows, _ = _conn_rows(P, K, K["rs"] == 1)
    syn = _syn_rows(P, rows)
    q = np.flatnonzero((P["kind"] == K_UDP) & (P["rs"] == 1) & (P["dir"] == 0))
    # every attempt a client may make: (time, first row, attempt number); TCP: SYN_RTO, DNS: one retry
    ev_t, ev_r, ev_a, ev_k = [], [], [], []
    for a, off in enumerate((0,) + SYN_RTO):
        ev_t.append(P["td"][syn] + off * 1000 * MS)
        ev_r.append(syn)
        ev_a.append(np.full(len(syn), a))
        ev_k.append(np.zeros(len(syn), dtype=np.int64))
    for a, off in enumerate((0, DNS_RETRY)):
        ev_t.append(P["td"][q] + off * 1000 * MS)
        ev_r.append(q)
        ev_a.append(np.full(len(q), a))
        ev_k.append(np.ones(len(q), dtype=np.int64))
    ev_t, ev_r, ev_a, ev_k = (np.concatenate(x) for x in (ev_t, ev_r, ev_a, ev_k))
    order = np.lexsort((ev_a, ev_t))
    # sequential by nature: RS2's token bucket toward the director (icmp_ratelimit 1 s, burst 6)
    tokens, last = float(ICMP_BURST * ICMP_RATELIMIT_MS), None
    done = set()
    sent, icmp = [], []
    for i in order.tolist():
        r = int(ev_r[i])
        if r in done:
            continue
        t = int(ev_t[i])
        sent.append(i)
        tokens = min(ICMP_BURST * ICMP_RATELIMIT_MS, tokens + ((t - last) / MS if last is not None else 0.0))
        last = t
        if tokens >= ICMP_RATELIMIT_MS:
            tokens -= ICMP_RATELIMIT_MS
            icmp.append(i)
            done.add(r)
    sent = np.array(sent, dtype=np.int64)
    icmp = np.array(icmp, dtype=np.int64)
    keep = ~rows
    keep[syn] = True
    keep &= ~((P["kind"] == K_UDP) & (P["rs"] == 1) & (P["dir"] == 1))   # RS2 never answers DNS either
    # retransmissions (attempt > 0) become rows of their own
    re = sent[ev_a[sent] > 0]
    base = ev_r[re]
    is_tcp = ev_k[re] == 0
    off_ms = ((ev_t[re] - P["td"][base]) // MS).astype(np.uint64)
    ids = np.where(is_tcp, _ident(P["ip_id"][base], ev_a[re]), rng.integers(0, 65536, len(re)))
    again = _copy_rows(P, base, td=ev_t[re], ip_id=ids,
                       tsval=np.where(is_tcp, (P["tsval"][base] + off_ms) & M32, P["tsval"][base]))
    n0 = len(P["kind"])
    row_of = {}                                   # event -> logical row of the packet it sent
    for j, i in enumerate(re.tolist()):
        row_of[i] = n0 + j
    for i in sent[ev_a[sent] == 0].tolist():
        row_of[i] = int(ev_r[i])
    quoted = np.array([row_of[i] for i in icmp.tolist()], dtype=np.int64)
    P = _add_rows(P, again)
    t = ev_t[icmp]
    code = 3 if tun == "gue" else 2              # GUE: no fou socket on the port; IPIP/GRE: no protocol
    common = dict(kind=K_ICMP, icmp_type=3, icmp_code=code, icmp_id=0, icmp_seq=0, df=0,
                  tos=IPTOS_PREC_INTERNETCONTROL, quote_of=quoted, cport=0, vport=0, flags=0, seq=0, ack=0,
                  syn_opts=0, pl_start=0, pl_len=0, conn=-1, tsval=0, tsecr=0, win=0, fwd=FWD_MODE)
    from_rs = _copy_rows(P, quoted, **common, dir=1, td=t + 40 * US, path=PATH_TO_DIP,
                         ip_id=rng.integers(0, 65536, len(t)), quote_inner=0)
    relayed = _copy_rows(P, quoted, **common, dir=1, td=t + 60 * US, path=PATH_NORMAL,
                         ip_id=rng.integers(0, 65536, len(t)), quote_inner=1, rs=-1)
    keep = np.concatenate([keep, np.ones(len(re), dtype=bool)])
    P = {k: v[keep] for k, v in P.items()}
    # the rows of P moved: re-point the quotes
    new_index = np.cumsum(keep) - 1
    from_rs["quote_of"] = new_index[from_rs["quote_of"]]
    relayed["quote_of"] = new_index[relayed["quote_of"]]
    return _add_rows(P, from_rs, relayed)


def fault_rs_routes_onward(P: dict, K: dict, rng: np.random.Generator) -> dict:
    """RS2 has no VIP but ip_forward 1: it routes what the director forwards on to its default gateway
    (observe() emits the copy); nothing answers, so the clients retry as with rs-no-vip."""
    P = fault_rs_no_vip(P, K, rng)
    L = Cols()
    _arp_exchange(L, rng, K["duration"], 2, int(RS_MACS[1]), int(RIPS[1]), GW_RS, GW_RS_IP)
    return _append(P, L)


def fault_mtu(P: dict, K: dict, rng: np.random.Generator, pool: Pool, tun: str = "ipip") -> dict:
    """Some connections start with an upload whose first, full-size DF segment does not fit in the tunnel:
    the director answers ICMP frag-needed from the VIP, the client resends it in smaller segments."""
    C = K["C"]
    sel = _pick(rng, C, 0.08)                                   # a few uploads
    rows, ci = _conn_rows(P, K, sel)
    td, c2s = P["td"], P["dir"] == 0
    big = np.iinfo(np.int64).max
    req = rows & c2s & (P["pl_len"] > 0)
    t_req = np.full(C, big, dtype=np.int64)
    np.minimum.at(t_req, P["conn"][req], td[req])
    first = np.flatnonzero(req & (td == t_req[ci]))
    c = P["conn"][first]
    # the upload: a POST of exactly one full segment (headers and body)
    hdr = b"POST /api/v1/upload HTTP/1.1\r\nHost: www.example.com\r\nContent-Type: application/octet-stream\r\n"
    hdr += f"Content-Length: {UPLOAD - len(hdr) - 24}\r\n\r\n".encode()
    body = (b"lvs-inspect upload " * 100)[: UPLOAD - len(hdr)]
    up_off, _ = pool.add(hdr + body)
    pool.freeze()
    mss = TUN_PMTU - int(ENC_LEN[TUN_ENC[tun]]) - 40          # the client's new MSS after the ICMP
    s1 = mss - 12                                               # payload per segment with timestamps
    parts = [(0, s1), (s1, UPLOAD - s1)]
    delta = (np.uint64(UPLOAD) - P["pl_len"][first].astype(np.uint64))   # the request grew to the upload
    d_c = np.zeros(C, dtype=np.uint64)
    d_c[c] = delta
    # the client resends after its RTT (the ICMP's way back and the resend's way in); all later rows move
    wait = np.zeros(C, dtype=np.int64)
    wait[c] = K["rtt_c"][c]
    after = rows & (td >= t_req[ci]) & ~np.isin(np.arange(len(td)), first)
    d_ms = (wait // MS).astype(np.uint64)
    dropped = _copy_rows(P, first, pl_start=up_off, pl_len=UPLOAD, path=PATH_DROP_D)
    icmp = _copy_rows(P, first, kind=K_ICMP, dir=1, td=td[first] + 30 * US, icmp_type=3, icmp_code=4, icmp_id=0,
                      icmp_seq=TUN_PMTU - int(ENC_LEN[TUN_ENC[tun]]), df=0, tos=IPTOS_PREC_INTERNETCONTROL,
                      quote_of=-1, quote_inner=2, cport=0, vport=0, flags=0, seq=0, ack=0, syn_opts=0, pl_start=0,
                      pl_len=0, conn=-1, rs=-1, tsval=0, tsecr=0, win=0, fwd=FWD_MODE,
                      ip_id=rng.integers(0, 65536, len(first)))
    resent = []
    for k, (off, n) in enumerate(parts):
        resent.append(_copy_rows(P, first, td=td[first] + wait[c] + k * 12 * US, pl_start=up_off + off, pl_len=n,
                                 seq=(P["seq"][first] + np.uint64(off)) & M32,
                                 tsval=(P["tsval"][first] + d_ms[c]) & M32, tsecr=(P["tsecr"][first] + d_ms[c]) & M32,
                                 ip_id=_ident(P["ip_id"][first], k + 1),
                                 flags=(ACK if k < len(parts) - 1 else P["flags"][first])))
    P["td"] = np.where(after, td + wait[ci], td)
    P["tsval"] = np.where(after, (P["tsval"] + d_ms[ci]) & M32, P["tsval"])
    P["tsecr"] = np.where(after, (P["tsecr"] + d_ms[ci]) & M32, P["tsecr"])
    P["seq"] = np.where(after & c2s, (P["seq"] + d_c[ci]) & M32, P["seq"])
    P["ack"] = np.where(after & ~c2s, (P["ack"] + d_c[ci]) & M32, P["ack"])
    P["ip_id"] = np.where(after & c2s, _ident(P["ip_id"], len(parts)), P["ip_id"]).astype(np.uint16)
    keep = np.ones(len(td), dtype=bool)
    keep[first] = False
    P = {k: v[keep] for k, v in P.items()}
    n0 = len(P["kind"])
    icmp["quote_of"] = np.arange(n0, n0 + len(first))         # the dropped rows, appended first
    return _add_rows(P, dropped, icmp, *resent)


def fullnat_assign(P: dict, K: dict, profile: str, rng: np.random.Generator, lips: np.ndarray = LIPS) -> None:
    """LIP, lport, rport and D1 per connection/DNS exchange, and which client segments carry TOA."""
    kind, conn = P["kind"], P["conn"]
    tcp = kind == K_TCP
    svc = tcp | (kind == K_UDP)
    nflow = K["C"] + K["nd"]
    f = conn[svc]
    start = np.full(nflow, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(start, f, P["td"][svc])
    rank = np.empty(nflow, dtype=np.int64)
    rank[np.argsort(start, kind="stable")] = np.arange(nflow)
    lip_i = rank % len(lips)                                   # LIPs round robin per connection
    f_rs = np.zeros(nflow, dtype=np.int64)
    f_rs[f] = P["rs"][svc]
    f_rport = np.zeros(nflow, dtype=np.uint64)
    f_rport[f] = np.where(tcp[svc], FNAT_RPORT_HTTP, DNS_PORT)
    f_cip = np.zeros(nflow, dtype=np.uint64)
    f_cip[f] = P["cip"][svc]
    f_cport = np.zeros(nflow, dtype=np.uint64)
    f_cport[f] = P["cport"][svc]
    if profile == "alibaba":                                   # lport_min + per-LIP counter++
        lport = 5000 + (rank // len(lips)) % (65536 - 5000)
    else:  # DPVS sapool: per LIP, per worker (port low bit), per destination hash bucket, in port order
        h = (f_cip * np.uint64(0x9E3779B1) + f_cport * np.uint64(0x85EBCA6B)) & M32
        worker = ((h >> np.uint64(16)) & np.uint64(1)).astype(np.int64)
        bucket = ((RIPS[f_rs] & np.uint64(0xFFFF)) + f_rport) % np.uint64(16)
        r = _grp_rank([lip_i, worker, bucket.astype(np.int64), start])
        lport = np.where(worker == 1, 1025, 1026) + 2 * (r % np.where(worker == 1, 32256, 32255))
    fi = np.where(svc, conn, 0)
    P["lip"] = np.where(svc, lips[lip_i[fi]], 0).astype(np.uint64)
    P["lport"] = np.where(svc, lport[fi], 0).astype(np.uint16)
    P["rport"] = np.where(svc, f_rport[fi], 0).astype(np.uint16)
    d1 = rng.integers(0, 1 << 32, K["C"], dtype=np.uint64)
    ci = np.where(tcp, conn, 0)
    P["d1"] = np.where(tcp, d1[ci], 0).astype(np.uint64)
    fl = P["flags"]
    c2s = tcp & (P["dir"] == 0)
    first_ack = c2s & (P["ack"] == ((K["isn_s"][ci] + np.uint64(1)) & M32)) & ((fl & (SYN | RST)) == 0)
    if profile == "alibaba":
        toa = (first_ack & ((fl & FIN) == 0)) | (c2s & ((fl & SYN) != 0))
    else:
        toa = first_ack
    P["toa"] = toa.astype(np.uint8)
    P["toa_port"] = P["cport"].copy()
    P["toa_addr"] = P["cip"].copy()
    P["xopt"] = np.zeros(len(kind), dtype=np.uint8)            # 1: the client's own kind-254 option
    P["first_ack"] = first_ack


def fault_toa(P: dict, K: dict, faults, rng: np.random.Generator) -> None:
    tcp = P["kind"] == K_TCP
    ci = np.where(tcp, P["conn"], 0)
    C = K["C"]
    if "toa-missing" in faults:
        hs = tcp & (P["dir"] == 0) & (P["flags"] == ACK) & (P["pl_len"] == 0) & \
            (P["seq"] == ((K["isn_c"][ci] + np.uint64(1)) & M32)) & P["first_ack"]
        P["toa"][hs & _pick(rng, C)[ci]] = 0
    if "toa-wrong" in faults:
        rows = tcp & _pick(rng, C)[ci]
        cp = P["cport"][rows].astype(np.uint32)
        sw = ((cp >> 8) | (cp << 8)) & 0xFFFF
        P["toa_port"][rows] = np.where(sw == cp, cp ^ 1, sw)
    if "toa-forged" in faults:
        P["xopt"][P["first_ack"] & _pick(rng, C)[ci]] = 1


def apply_passes(P: dict, K: dict, mode: str, seed: int, profile: str, faults, tun: str = "ipip",
                 pool: Pool | None = None) -> dict:
    """Faults that change the traffic, then (FullNAT) the director's allocations and the TOA faults."""
    rng = np.random.default_rng([seed, 3])
    if "nat-bypass" in faults:
        P = fault_nat_bypass(P, K, rng)
    if "arp-leak" in faults:
        P = fault_arp_leak(P, K, rng)
    passes = {"wrong-port": fault_wrong_port, "syn-drop": fault_syn_drop,
              "reply-not-rewritten": fault_reply_not_rewritten, "bad-checksum": fault_bad_checksum,
              "arp-announce": fault_arp_announce, "rs-no-vip": fault_rs_no_vip, "rs-down": fault_rs_down,
              "rs-masquerade": fault_rs_masquerade, "not-encapsulated": fault_not_encapsulated,
              "rs-routes-onward": fault_rs_routes_onward}
    for name, fn in passes.items():
        if name in faults:
            P = fn(P, K, np.random.default_rng([seed, 4, list(FAULTS).index(name)]))
    if "no-decap" in faults:
        P = fault_no_decap(P, K, np.random.default_rng([seed, 4, list(FAULTS).index("no-decap")]), tun)
    if "mtu" in faults:
        P = fault_mtu(P, K, np.random.default_rng([seed, 4, list(FAULTS).index("mtu")]), pool, tun)
    if mode == "fullnat":
        lips = LIPS
        if "wrong-lip" in faults:   # the local address pool is the director's own 192.0.2.1
            lips = np.array([DIP], dtype=np.uint64)
            arp = P["kind"] == K_ARP
            P["arp_tpa"][arp & (P["arp_op"] == 1) & np.isin(P["arp_tpa"], LIPS)] = DIP
            P["arp_spa"][arp & (P["arp_op"] == 2) & np.isin(P["arp_spa"], LIPS)] = DIP
        fullnat_assign(P, K, profile, rng, lips)
        fault_toa(P, K, faults, rng)
    return P


# ---------------------------------------------------------------------------- vantage expansion
EXTRA = {  # per-observation columns of the tun and fullnat modes: dtype
    "sport": np.uint16, "dport": np.uint16, "seq": np.uint64, "ack": np.uint64, "opt": np.uint8,
    "mss": np.uint16, "toa": np.uint8, "toa_port": np.uint16, "toa_addr": np.uint64, "xopt": np.uint8,
    "enc": np.uint8, "out_src": np.uint64, "out_dst": np.uint64, "out_ttl": np.uint8, "out_sport": np.uint16,
    "csum_bad": np.uint8,
}


def observe(P: dict, mode: str, rng: np.random.Generator, tun: str = "ipip", profile: str = "dpvs",
            faults=()) -> dict:
    """Every (logical packet, vantage point) pair that is captured, with the per-hop rewrites."""
    kind, d, rs = P["kind"], P["dir"], P["rs"]
    svc = (kind == K_TCP) | (kind == K_UDP)
    icmp = kind == K_ICMP
    arp = kind == K_ARP
    c2s, s2c = d == 0, d == 1
    rs_mac = np.where(rs >= 0, RS_MACS[np.maximum(rs, 0)], 0)
    rip = np.where(rs >= 0, RIPS[np.maximum(rs, 0)], 0)
    cip, ttl0 = P["cip"], P["ttl0"].astype(np.int64)
    path = P["path"]
    p0, byp, leak = path == PATH_NORMAL, path == PATH_BYPASS, path == PATH_LEAK
    dropd, norw, fromd, todip = (path == PATH_DROP_D), (path == PATH_NOREWRITE), (path == PATH_FROM_D), \
        (path == PATH_TO_DIP)
    dec = 0 if "ttl-not-decremented" in faults else 1          # the director's TTL decrement on D->R
    flat = "arp-leak" in faults                                 # segments 1 and 2 are one L2 domain
    nat = mode == "nat"
    natr = (P["fwd"] == FWD_NAT) | nat                          # rows the director masquerades
    # the real server's port on the D->R / R->D hop (wrong-port), and the corrupted checksums there
    rport = np.where(P["rport"] > 0, P["rport"], P["vport"])
    rs_hop = {}
    if (P["rport"] > 0).any():
        rs_hop.update(sport=np.where(c2s, P["cport"], rport), dport=np.where(c2s, rport, P["cport"]))
    if P["csum_bad"].any():
        rs_hop["csum_bad"] = np.where(c2s, P["csum_bad"], 0)
    out = []

    def arp_seen(v):
        host = np.uint64(V_HOST_MAC[v])
        dst, seg = P["arp_dst"], P["seg"]
        on = ((seg == 1) | (seg == 2)) if flat and V_SEGMENT[v] in (1, 2) else seg == V_SEGMENT[v]
        return arp & on & ((dst == BROADCAST) | (dst == host) | (P["arp_sha"] == host))

    def emit(v, m, off, esrc, edst, isrc, idst, ttl, **extra):
        idx = np.flatnonzero(m)
        pick = lambda a: a[idx] if np.ndim(a) else np.full(len(idx), a)
        jitter = rng.integers(0, 3 * US, len(idx))
        o = dict(lidx=idx, iface=np.full(len(idx), v, dtype=np.uint16),
                 ts=P["td"][idx] + pick(off) + jitter,
                 eth_src=pick(esrc).astype(np.uint64), eth_dst=pick(edst).astype(np.uint64),
                 ip_src=pick(isrc).astype(np.uint64), ip_dst=pick(idst).astype(np.uint64),
                 ttl=pick(ttl).astype(np.uint8))
        for k, a in extra.items():
            o[k] = pick(a).astype(EXTRA[k])
        out.append(o)

    asha, adst = P["arp_sha"], P["arp_dst"]
    if mode in ("nat", "dr"):
        # p-client: the site router's upstream link
        s2c_ttl_client = np.where(icmp | byp | fromd, 63, np.where(natr, 62, 63))
        vip = np.where(byp | norw, rip, VIP)                    # nat-bypass: RS1 answers from its RIP
        m = ((svc | icmp) & (c2s | s2c)) | arp_seen(V_CLIENT)
        emit(V_CLIENT, m,
             np.where(arp, 0, np.where(c2s, -60 * US, 60 * US)),
             np.where(arp, asha, np.where(c2s, UPSTREAM, GW_UP)), np.where(arp, adst, np.where(c2s, GW_UP, UPSTREAM)),
             np.where(c2s, cip, vip), np.where(c2s, vip, cip),
             np.where(c2s, ttl0, s2c_ttl_client))
        # p-dir-c: router <-> director
        m = (((svc & (c2s | natr | fromd)) | icmp) & (p0 | dropd | norw | fromd)) | arp_seen(V_DIRC)
        emit(V_DIRC, m, 0,
             np.where(arp, asha, np.where(c2s, GW_DIR, DIR_EXT)), np.where(arp, adst, np.where(c2s, DIR_EXT, GW_DIR)),
             np.where(c2s, cip, np.where(norw, rip, VIP)), np.where(c2s, VIP, cip),
             np.where(c2s, ttl0 - 1, np.where(icmp | fromd, 64, 63)))
        # p-dir-r: director <-> real servers
        for v, only_rs1 in ((V_DIRR, False), (V_RS1, True)):
            m = svc & (c2s | natr) & (p0 | norw)
            if only_rs1:
                m &= rs == 0
            m |= arp_seen(v)
            hop = (20 if only_rs1 else 15) * US          # D->R wire time; RS1 sees a little later
            emit(v, m, np.where(arp, 0, np.where(c2s, hop, -hop)),
                 np.where(arp, asha, np.where(c2s, DIR_INT, rs_mac)), np.where(arp, adst, np.where(c2s, rs_mac, DIR_INT)),
                 np.where(c2s, cip, np.where(natr, rip, VIP)), np.where(c2s, np.where(natr, rip, VIP), cip),
                 np.where(c2s, ttl0 - 1 - dec, 64), **rs_hop)
        if "rs-routes-onward" in faults:  # RS2 routes the frames it got on to its gateway, TTL - 1
            m = svc & c2s & p0 & (rs == 1) & ~natr
            emit(V_DIRR, m, 45 * US, int(RS_MACS[1]), GW_RS, cip, VIP, ttl0 - 2 - dec)
        if not nat:  # DR: replies leave the real server for the router (seen on RS1's own interface)
            m = (svc | (icmp & leak)) & s2c & (rs == 0) & ~natr
            emit(V_RS1, m, -20 * US, rs_mac, GW_RS, VIP, cip, 64)
        if byp.any():  # nat-bypass: RS1 <-> router directly, with the RIP
            emit(V_RS1, byp & s2c & (rs == 0), -20 * US, rs_mac, GW_RS, rip, cip, 64)
            emit(V_RS1, byp & c2s & (rs == 0), 20 * US, GW_RS, rs_mac, cip, rip, ttl0 - 1)
        if leak.any():  # arp-leak: router -> RS1 directly, never through the director
            emit(V_RS1, leak & c2s, 10 * US, GW_DIR, int(RS_MACS[0]), cip, VIP, ttl0 - 1)
    elif mode == "tun":
        # GUE source port: a per-flow hash in 32768-60999 (udp_flow_src_port-like)
        fh = (cip * np.uint64(0x9E3779B1) + P["cport"].astype(np.uint64) * np.uint64(0x85EBCA6B)
              + P["vport"].astype(np.uint64) * np.uint64(0xC2B2AE35) + kind.astype(np.uint64)) & M32
        plain = dict(enc=ENC_NONE, out_src=0, out_dst=0, out_ttl=0, out_sport=0)
        m = (((svc | icmp) & (c2s | s2c)) & ~todip) | arp_seen(V_CLIENT)
        emit(V_CLIENT, m, np.where(arp, 0, np.where(c2s, -60 * US, 60 * US)),
             np.where(arp, asha, np.where(c2s, UPSTREAM, GW_UP)), np.where(arp, adst, np.where(c2s, GW_UP, UPSTREAM)),
             np.where(c2s, cip, VIP), np.where(c2s, VIP, cip), np.where(c2s, ttl0, 63), **plain)
        m = (svc & c2s) | (icmp & ~todip) | arp_seen(V_DIRC)
        emit(V_DIRC, m, 0,
             np.where(arp, asha, np.where(c2s, GW_DIR, DIR_EXT)), np.where(arp, adst, np.where(c2s, DIR_EXT, GW_DIR)),
             np.where(c2s, cip, VIP), np.where(c2s, VIP, cip), np.where(c2s, ttl0 - 1, 64), **plain)
        inner_ttl = ttl0 - 1 - dec
        enc = np.where(svc & (P["fwd"] != FWD_DR), TUN_ENC[tun], ENC_NONE)   # not-encapsulated: DR-style
        for v, only_rs1 in ((V_DIRR, False), (V_RS1, True)):
            m = svc & c2s & ~dropd
            if only_rs1:
                m &= rs == 0
            m |= arp_seen(v)
            hop = (20 if only_rs1 else 15) * US
            emit(v, m, np.where(arp, 0, hop),
                 np.where(arp, asha, DIR_INT), np.where(arp, adst, rs_mac), cip, VIP, inner_ttl,
                 enc=enc, out_src=DIP, out_dst=rip, out_ttl=inner_ttl,
                 out_sport=32768 + (fh >> np.uint64(7)) % np.uint64(28232), **rs_hop)
        emit(V_RS1, svc & s2c & (rs == 0), -20 * US, rs_mac, GW_RS, VIP, cip, 64, **plain)
        if todip.any():  # no-decap: the real server's ICMP errors to the director's address
            emit(V_DIRR, todip, -5 * US, rs_mac, DIR_INT, rip, DIP, 64, **plain)
    else:  # fullnat
        tcp = kind == K_TCP
        syn = tcp & (P["syn_opts"] == 1)
        csyn, synack = syn & c2s, syn & s2c
        opt_c = np.where(csyn, OPT_SYN, np.where(synack, OPT_SYNACK_NOTS, OPT_NONE))
        opt_c = np.where(P["opt"] != OPT_DERIVE, P["opt"], opt_c)
        opt_r = np.where(csyn, OPT_SYN_TSNOP, opt_c)              # the SYN's timestamps become 10 NOPs
        d1 = P["d1"]
        mss_c = FNAT_MSS if "mss-not-lowered" in faults else FNAT_MSS - 8
        client_side = dict(
            sport=np.where(c2s, P["cport"], P["vport"]), dport=np.where(c2s, P["vport"], P["cport"]),
            seq=P["seq"], ack=P["ack"], opt=opt_c, mss=np.where(synack, mss_c, MSS),
            toa=0, toa_port=0, toa_addr=0, xopt=np.where(c2s, P["xopt"], 0))
        rs_side = dict(
            sport=np.where(c2s, P["lport"], P["rport"]), dport=np.where(c2s, P["rport"], P["lport"]),
            seq=np.where(c2s & tcp, (P["seq"] + d1) & M32, P["seq"]),
            ack=np.where(s2c & tcp, (P["ack"] + d1) & M32, P["ack"]),
            opt=opt_r, mss=np.where(synack, FNAT_MSS, MSS), toa=np.where(c2s, P["toa"], 0),
            toa_port=P["toa_port"], toa_addr=P["toa_addr"],
            xopt=np.where(c2s & (P["xopt"] > 0), 2 if profile == "dpvs" else 1, 0))
        if "csum_bad" in rs_hop:
            rs_side["csum_bad"] = rs_hop["csum_bad"]
        m = ((svc | icmp) & (c2s | s2c)) | arp_seen(V_CLIENT)
        emit(V_CLIENT, m, np.where(arp, 0, np.where(c2s, -60 * US, 60 * US)),
             np.where(arp, asha, np.where(c2s, UPSTREAM, GW_UP)), np.where(arp, adst, np.where(c2s, GW_UP, UPSTREAM)),
             np.where(c2s, cip, VIP), np.where(c2s, VIP, cip), np.where(c2s, ttl0, 63), **client_side)
        m = svc | icmp | arp_seen(V_DIRC)
        emit(V_DIRC, m, 0,
             np.where(arp, asha, np.where(c2s, GW_DIR, DIR_EXT)), np.where(arp, adst, np.where(c2s, DIR_EXT, GW_DIR)),
             np.where(c2s, cip, VIP), np.where(c2s, VIP, cip), np.where(c2s, ttl0 - 1, 64), **client_side)
        lip = P["lip"]
        for v, only_rs1 in ((V_DIRR, False), (V_RS1, True)):
            m = svc.copy()
            if only_rs1:
                m &= rs == 0
            m |= arp_seen(v)
            hop = (20 if only_rs1 else 15) * US
            emit(v, m, np.where(arp, 0, np.where(c2s, hop, -hop)),
                 np.where(arp, asha, np.where(c2s, DIR_INT, rs_mac)), np.where(arp, adst, np.where(c2s, rs_mac, DIR_INT)),
                 np.where(c2s, lip, rip), np.where(c2s, rip, lip), np.where(c2s, ttl0 - 1, 64), **rs_side)
    # columns some capture points set and others leave to the defaults (0: derive sport/dport, no corruption)
    keys = set().union(*(o.keys() for o in out))
    for o in out:
        for k in keys - o.keys():
            if k not in ("sport", "dport", "csum_bad"):
                raise AssertionError(f"observe: column {k} missing on some capture points")
            o[k] = np.zeros(len(o["lidx"]), dtype=EXTRA[k])
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def attach_quotes(P: dict, O: dict, pool: Pool) -> dict:
    """ICMP errors quote the frame they are about: fill their payload with the bytes of the quoted
    packet as it left the director (p-dir-r), from its outer IPv4 header on (the real server's error)
    or from its inner one (the director's relay), cut at ICMP_QUOTE bytes as Linux's icmp_send does;
    the director's own frag-needed (quote_inner 2, fault mtu) quotes the client's packet as it reached
    the director (p-dir-c): its IP header and the first 8 bytes of TCP."""
    q = np.flatnonzero(P["quote_of"] >= 0)
    if len(q) == 0:
        return P
    at = np.full(len(P["kind"]), -1, dtype=np.int64)
    dr = np.flatnonzero(O["iface"] == V_DIRR)
    at[O["lidx"][dr]] = dr
    at_c = np.full(len(P["kind"]), -1, dtype=np.int64)   # quote_inner 2: as it reached the director (p-dir-c)
    dc = np.flatnonzero(O["iface"] == V_DIRC)
    at_c[O["lidx"][dc]] = dc
    own = P["quote_inner"][q] == 2
    obs = np.where(own, at_c[P["quote_of"][q]], at[P["quote_of"][q]])
    if (obs < 0).any():
        raise AssertionError("attach_quotes: a quoted packet was not seen where its error quotes it")
    sub = {k: v[obs] for k, v in O.items()}
    B = build_headers(P, sub, pool)
    enc = sub["enc"].astype(np.int64) if "enc" in sub else np.zeros(len(obs), dtype=np.int64)
    starts, lens = [], []
    for i in range(len(q)):          # a few hundred bytes per ICMP error, only where the fault made them
        skip = 14 + (int(ENC_LEN[enc[i]]) if P["quote_inner"][q[i]] == 1 else 0)
        head = B.H[i, PRE + skip:PRE + int(B.hl[i])].tobytes()
        a = int(B.pl_start[i])
        cut = 20 + 8 if own[i] else ICMP_QUOTE      # mtu: the IP header and 8 bytes of TCP
        data = (head + pool.data[a:a + int(B.pl_len[i])])[:cut]
        off, n = pool.add(data)
        starts.append(off)
        lens.append(n)
    pool.freeze()
    P["pl_start"][q] = starts
    P["pl_len"][q] = lens
    return P


def write_order(O: dict, rng: np.random.Generator) -> np.ndarray:
    """dumpcap's block order: per interface in time order, interfaces flushed in batches."""
    ts, iface = O["ts"], O["iface"].astype(np.int64)
    period = np.array([2 * MS, 3 * MS, 2 * MS, 5 * MS])[iface]
    phase = np.array([int(x) for x in rng.integers(0, 2 * MS, 4)])[iface]
    flush = ((ts - phase) // period + 1) * period + phase
    return np.lexsort((ts, iface, flush))


# ------------------------------------------------------------------------------------- writing
@dataclass
class Built:
    H: np.ndarray         # (n, W) uint8 headers, block header in the first PRE bytes
    hl: np.ndarray        # frame header length per row
    pl_start: np.ndarray
    pl_len: np.ndarray
    caplen: np.ndarray
    ts: np.ndarray        # ns since the epoch
    iface: np.ndarray


def _fold(s: np.ndarray) -> np.ndarray:
    for _ in range(3):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return (~s) & np.uint64(0xFFFF)


def build_headers(P: dict, O: dict, pool: Pool) -> Built:
    """The frame headers of every observation.  O may carry per-observation overrides (EXTRA) of the
    ports, seq/ack, TCP option layout, MSS, TOA, the client's own option and the tunnel headers."""
    li = O["lidx"]
    g = lambda name: P[name][li]
    n = len(li)
    u64 = np.uint64
    kind = g("kind")
    tcp, udp, icmp, arp = (kind == K_TCP), (kind == K_UDP), (kind == K_ICMP), (kind == K_ARP)
    syn = tcp & (g("syn_opts") == 1)
    d = g("dir")
    pl_len = g("pl_len").astype(np.int64)
    pl_start = g("pl_start").astype(np.int64)
    # TCP options: [TOA][the client's own option or 8 NOPs][layout]
    if "opt" in O:
        opt = O["opt"].astype(np.int64)
    else:
        po = g("opt")
        opt = np.where(po != OPT_DERIVE, po, np.where(syn, OPT_SYN, OPT_TS)).astype(np.int64)
    opt = np.where(tcp, opt, OPT_NONE)
    toa = (O["toa"] > 0) & tcp if "toa" in O else np.zeros(n, dtype=bool)
    xopt = np.where(tcp, O["xopt"], 0) if "xopt" in O else np.zeros(n, dtype=np.uint8)
    pre = 8 * toa.astype(np.int64) + 8 * (xopt > 0)
    l4h = np.where(tcp, 20 + pre + OPT_LEN[opt], np.where(udp | icmp, 8, 0)).astype(np.int64)
    enc = np.where(arp, ENC_NONE, O["enc"]).astype(np.int64) if "enc" in O else np.zeros(n, dtype=np.int64)
    elen = ENC_LEN[enc]
    hl = np.where(arp, 42, 14 + elen + 20 + l4h).astype(np.int64)
    caplen = hl + pl_len
    # inner (or only) IPv4 header
    proto = np.where(tcp, 6, np.where(udp, 17, 1)).astype(np.uint64)
    IPH = np.zeros((n, 20), dtype=np.uint8)
    iw = IPH.view(">u2")
    iw[:, 0] = 0x4500 | g("tos").astype(np.uint64)
    iw[:, 1] = caplen - 14 - elen
    iw[:, 2] = g("ip_id")
    df = g("df") == 1
    iw[:, 3] = np.where(df, 0x4000, 0)
    iw[:, 4] = (O["ttl"].astype(np.uint64) << u64(8)) | proto
    src, dst = O["ip_src"], O["ip_dst"]
    iw[:, 6], iw[:, 7] = src >> u64(16), src & u64(0xFFFF)
    iw[:, 8], iw[:, 9] = dst >> u64(16), dst & u64(0xFFFF)
    iw[:, 5] = _fold(iw.sum(axis=1, dtype=np.uint64))
    # L4 header (TCP written for every row, overwritten below for UDP/ICMP)
    LW = 40 + (int(pre.max()) if n else 0)          # room for a TOA/client prefix in front of any layout
    TH = np.zeros((n, LW), dtype=np.uint8)
    tw = TH.view(">u2")
    sport = np.where(d == 0, g("cport"), g("vport")).astype(np.uint64)     # 0 in O: these defaults
    dport = np.where(d == 0, g("vport"), g("cport")).astype(np.uint64)
    if "sport" in O:
        sport = np.where(O["sport"] > 0, O["sport"], sport).astype(np.uint64)
        dport = np.where(O["dport"] > 0, O["dport"], dport).astype(np.uint64)
    seq = O["seq"] if "seq" in O else g("seq")
    ack = O["ack"] if "ack" in O else g("ack")
    tv, te = g("tsval"), g("tsecr")
    tw[:, 0], tw[:, 1] = sport, dport
    tw[:, 2], tw[:, 3] = seq >> u64(16), seq & u64(0xFFFF)
    tw[:, 4], tw[:, 5] = ack >> u64(16), ack & u64(0xFFFF)
    tw[:, 6] = ((l4h // 4).astype(np.uint64) << u64(12)) | g("flags").astype(np.uint64)
    tw[:, 7] = g("win")
    OB = np.zeros((n, 20), dtype=np.uint8)                   # the option layout
    ow = OB.view(">u2")
    mss = O["mss"].astype(np.uint64) if "mss" in O else np.full(n, MSS, dtype=np.uint64)
    ws = g("wscale").astype(np.uint64)
    r = np.flatnonzero(opt == OPT_TS)
    ow[r, 0], ow[r, 1] = 0x0101, 0x080A
    ow[r, 2], ow[r, 3], ow[r, 4], ow[r, 5] = tv[r] >> u64(16), tv[r] & u64(0xFFFF), te[r] >> u64(16), te[r] & u64(0xFFFF)
    r = np.flatnonzero((opt == OPT_SYN) | (opt == OPT_SYN_TSNOP))
    ow[r, 0], ow[r, 1], ow[r, 2], ow[r, 3] = 0x0204, mss[r], 0x0402, 0x080A
    ow[r, 4], ow[r, 5], ow[r, 6], ow[r, 7] = tv[r] >> u64(16), tv[r] & u64(0xFFFF), te[r] >> u64(16), te[r] & u64(0xFFFF)
    ow[r, 8], ow[r, 9] = 0x0103, u64(0x0300) | ws[r]
    r = np.flatnonzero(opt == OPT_SYN_TSNOP)
    ow[r, 3:8] = 0x0101                                       # timestamp option overwritten with 10 NOPs
    r = np.flatnonzero(opt == OPT_SYNACK_NOTS)                # Linux without timestamps: MSS, NOP NOP SACK-perm, NOP WS
    ow[r, 0], ow[r, 1], ow[r, 2], ow[r, 3] = 0x0204, mss[r], 0x0101, 0x0402
    ow[r, 4], ow[r, 5] = 0x0103, u64(0x0300) | ws[r]
    if pre.any():
        PB = np.zeros((n, 16), dtype=np.uint8)
        pw = PB.view(">u2")
        t = np.flatnonzero(toa)
        tp, ta = O["toa_port"].astype(np.uint64), O["toa_addr"]
        pw[t, 0], pw[t, 1], pw[t, 2], pw[t, 3] = 0xFE08, tp[t], ta[t] >> u64(16), ta[t] & u64(0xFFFF)
        x = np.flatnonzero(xopt > 0)
        col = np.where(toa[x], 4, 0)
        forged = xopt[x] == 1
        for k, word in enumerate((0xFE08, FORGED_PORT, FORGED_IP >> 16, FORGED_IP & 0xFFFF)):
            pw[x, col + k] = np.where(forged, word, 0x0101)
        for p in np.unique(pre).tolist():
            r = np.flatnonzero(pre == p)
            TH[r, 20:20 + p] = PB[r, :p]
            TH[r, 20 + p:40 + p] = OB[r]
    else:
        TH[:, 20:40] = OB
    del OB
    # UDP / ICMP
    sm = np.flatnonzero(udp | icmp)
    if len(sm):
        w4 = np.zeros((len(sm), LW // 2), dtype=np.uint64)
        u = udp[sm]
        w4[:, 0] = np.where(u, sport[sm], (g("icmp_type")[sm].astype(np.uint64) << u64(8))
                            | g("icmp_code")[sm].astype(np.uint64))
        w4[:, 1] = np.where(u, dport[sm], 0)
        w4[:, 2] = np.where(u, 8 + pl_len[sm], g("icmp_id")[sm])
        w4[:, 3] = np.where(u, 0, g("icmp_seq")[sm])
        tw[sm] = w4
    # L4 checksums (the header matrix is zero past each header)
    hsum = tw.astype(np.uint32).sum(axis=1, dtype=np.uint64)
    l4len = (l4h + pl_len).astype(u64)
    pseudo = (src >> u64(16)) + (src & u64(0xFFFF)) + (dst >> u64(16)) + (dst & u64(0xFFFF)) + proto + l4len
    total = hsum + pool.word_sum(pl_start, pl_len) + np.where(icmp, u64(0), pseudo)
    c = _fold(total)
    c = np.where(udp & (c == 0), u64(0xFFFF), c)
    if "csum_bad" in O:   # bad-checksum: one bit flipped, never landing on the offload (pseudo-header) value
        part = (~_fold(pseudo)) & u64(0xFFFF)
        bad = c ^ u64(0x0400)
        bad = np.where(bad == part, c ^ u64(0x0800), bad)
        c = np.where(tcp & (O["csum_bad"] > 0), bad, c)
    tcol = np.where(tcp, 8, 1)          # TCP checksum at word 8, ICMP at word 1, UDP at word 3
    tcol = np.where(udp, 3, tcol)
    nz = ~arp
    tw[np.flatnonzero(nz), tcol[nz]] = c[nz]
    # the frame: Ethernet, [outer IPv4 + GUE/GRE], IPv4, L4
    emax = int(elen.max()) if n else 0
    H = np.zeros((n, PRE + 14 + emax + 20 + LW), dtype=np.uint8)
    ew = H[:, ETH:ETH + 14].view(">u2")
    for i, name in ((0, "eth_dst"), (3, "eth_src")):
        mac = O[name]
        ew[:, i] = (mac >> u64(32)) & u64(0xFFFF)
        ew[:, i + 1] = (mac >> u64(16)) & u64(0xFFFF)
        ew[:, i + 2] = mac & u64(0xFFFF)
    ew[:, 6] = np.where(arp, 0x0806, 0x0800)
    b = ETH + 14
    H[:, b:b + 20] = IPH                  # every row; tunnelled and ARP rows are rewritten below
    H[:, b + 20:b + 20 + LW] = TH
    for e in (ENC_IPIP, ENC_GUE, ENC_GRE):
        r = np.flatnonzero(enc == e)
        if not len(r):
            continue
        E = int(ENC_LEN[e])
        OH = np.zeros((len(r), E), dtype=np.uint8)
        hw = OH.view(">u2")
        hw[:, 0] = 0x4500 | IPH[r, 1].astype(np.uint64)       # outer TOS = inner TOS
        hw[:, 1] = caplen[r] - 14
        hw[:, 2] = np.where(df[r], 0, g("ip_id")[r] ^ 0x5A5A)  # ID 0 with DF, else a hashed value
        hw[:, 3] = np.where(df[r], 0x4000, 0)                   # DF copied from the inner header
        hw[:, 4] = (O["out_ttl"][r].astype(np.uint64) << u64(8)) | ENC_PROTO[e]
        os_, od = O["out_src"][r], O["out_dst"][r]
        hw[:, 6], hw[:, 7] = os_ >> u64(16), os_ & u64(0xFFFF)
        hw[:, 8], hw[:, 9] = od >> u64(16), od & u64(0xFFFF)
        hw[:, 5] = _fold(hw[:, :10].sum(axis=1, dtype=np.uint64))
        if e == ENC_GUE:   # UDP (checksum 0) + GUE version 0, C=0, hlen 0, proto_ctype 4, flags 0
            hw[:, 10], hw[:, 11], hw[:, 12], hw[:, 13] = O["out_sport"][r], GUE_PORT, caplen[r] - 34, 0
            hw[:, 14], hw[:, 15] = 0x0004, 0
        elif e == ENC_GRE:  # no checksum, key or sequence; protocol IPv4
            hw[:, 10], hw[:, 11] = 0, 0x0800
        H[r, b:b + E] = OH
        H[r, b + E:b + E + 20] = IPH[r]
        H[r, b + E + 20:b + E + 20 + LW] = TH[r]
    del IPH, TH
    # ARP
    a = np.flatnonzero(arp)
    if len(a):
        aw = np.zeros((len(a), 14), dtype=np.uint64)
        aw[:, 0], aw[:, 1], aw[:, 2] = 1, 0x0800, 0x0604
        aw[:, 3] = g("arp_op")[a]
        for col, name in ((4, "arp_sha"), (9, "arp_tha")):
            m = g(name)[a]
            aw[:, col], aw[:, col + 1], aw[:, col + 2] = m >> u64(32), (m >> u64(16)) & u64(0xFFFF), m & u64(0xFFFF)
        for col, name in ((7, "arp_spa"), (12, "arp_tpa")):
            ip = g(name)[a]
            aw[:, col], aw[:, col + 1] = ip >> u64(16), ip & u64(0xFFFF)
        H[a, b:b + 28] = aw.astype(">u2").view(np.uint8).reshape(len(a), 28)
        H[a, b + 28:] = 0
    ts = (EPOCH_NS + O["ts"]).astype(np.int64)
    return Built(H, hl, pl_start, pl_len, caplen, ts, O["iface"])


def _opt(code: int, data: bytes) -> bytes:
    return struct.pack("<HH", code, len(data)) + data + b"\0" * (-len(data) % 4)


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def pcapng_head(names, comment: str | None = None) -> bytes:
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)
                 + (_opt(1, comment.encode()) if comment else b"")
                 + _opt(2, b"lab host (2 cores)") + _opt(3, b"Linux 6.1.0-lab")
                 + _opt(4, b"lvs-inspect bench/make_trace.py (dumpcap order)") + _opt(0, b""))
    idbs = b"".join(_block(1, struct.pack("<HHI", 1, 0, 262144) + _opt(2, name.encode())
                           + _opt(9, b"\x09") + _opt(12, b"Linux 6.1.0-lab") + _opt(0, b""))
                    for name in names)
    return shb + idbs


def pcapng_tail(counts, t_start, t_end) -> bytes:
    out = []
    for i, cnt in enumerate(counts):
        body = (struct.pack("<III", i, t_end >> 32, t_end & 0xFFFFFFFF)
                + _opt(2, struct.pack("<II", t_start >> 32, t_start & 0xFFFFFFFF))
                + _opt(3, struct.pack("<II", t_end >> 32, t_end & 0xFFFFFFFF))
                + _opt(4, struct.pack("<Q", cnt)) + _opt(5, struct.pack("<Q", 0)) + _opt(0, b""))
        out.append(_block(5, body))
    return b"".join(out)


def write_frames(f, B: Built, pool: Pool, fmt: str, rows: np.ndarray, chunk: int = 65536) -> int:
    """Write the frames of `rows` (in that order); returns bytes written."""
    H, u32 = B.H, np.uint32
    W = H.shape[1]
    n = len(rows)
    written = 0
    data = pool.data
    for a in range(0, n, chunk):
        r = rows[a:a + chunk]
        m = len(r)
        blk = np.zeros((m, PRE), dtype=np.uint8)
        cap = B.caplen[r]
        ts = B.ts[r]
        if fmt == "pcapng":
            pad = (-cap) % 4
            total = 32 + cap + pad
            bw = blk.view("<u4")
            bw[:, 0] = 6
            bw[:, 1] = total
            bw[:, 2] = B.iface[r]
            bw[:, 3] = (ts >> 32).astype(u32)
            bw[:, 4] = (ts & 0xFFFFFFFF).astype(u32)
            bw[:, 5] = cap
            bw[:, 6] = cap
            trail = np.zeros((m, 8), dtype=np.uint8)
            tv = trail.view("<u4")
            tv[:, 1] = total                    # length at bytes 4..7; the trailer is bytes 4-pad..7
            tb = trail.tobytes()
            t_lo = (np.arange(m) * 8 + 4 - pad).tolist()
            t_hi = (np.arange(m) * 8 + 8).tolist()
            first = 0
        else:
            bw = blk.view("<u4")
            bw[:, 3] = (ts // 1_000_000_000).astype(u32)
            bw[:, 4] = (ts % 1_000_000_000).astype(u32)
            bw[:, 5] = cap
            bw[:, 6] = cap
            first = PRE - 16
        hdr = np.concatenate([blk, H[r, PRE:]], axis=1)
        hb = hdr.tobytes()
        h_lo = (np.arange(m) * W + first).tolist()
        h_hi = (np.arange(m) * W + PRE + B.hl[r]).tolist()
        p_lo = B.pl_start[r]
        p_hi = (p_lo + B.pl_len[r]).tolist()
        p_lo = p_lo.tolist()
        heads = [hb[x:y] for x, y in zip(h_lo, h_hi)]
        pays = [data[x:y] for x, y in zip(p_lo, p_hi)]
        if fmt == "pcapng":
            tails = [tb[x:y] for x, y in zip(t_lo, t_hi)]
            out = b"".join([p for trio in zip(heads, pays, tails) for p in trio])
        else:
            out = b"".join([p for duo in zip(heads, pays) for p in duo])
        f.write(out)
        written += len(out)
    return written


def check_options(mode: str, tun: str = "ipip", profile: str = "dpvs", faults=(), rate: int = RATE,
                  persistence: bool = False) -> None:
    """ValueError naming the first option that does not fit."""
    if persistence and mode != "nat":
        raise ValueError(f"--persistence applies to --mode nat, not {mode}")
    if not 1 <= rate <= 1_000_000:
        raise ValueError(f"--rate {rate}: new connections per second must be 1-1000000")
    if mode not in ("nat", "dr", "tun", "fullnat"):
        raise ValueError(f"unknown mode {mode!r} (nat, dr, tun or fullnat)")
    if tun not in TUN_ENC:
        raise ValueError(f"unknown tunnel type {tun!r} (ipip, gue or gre)")
    if profile not in ("dpvs", "alibaba"):
        raise ValueError(f"unknown FullNAT profile {profile!r} (dpvs or alibaba)")
    for f in faults:
        if f not in FAULTS:
            raise ValueError(f"unknown fault {f!r} (one of {', '.join(FAULTS)})")
        if mode not in FAULTS[f]:
            raise ValueError(f"fault {f!r} applies to --mode {' or '.join(FAULTS[f])}, not {mode}")


def make_trace(out: str, frames: int, seed: int = 1, mode: str = "nat", fmt: str = "pcapng",
               split: bool = False, quiet: bool = False, *, tun: str = "ipip", profile: str = "dpvs",
               faults=(), small: bool = False, rate: int = RATE, persistence: bool = False) -> dict:
    faults = tuple(dict.fromkeys(faults))
    check_options(mode, tun, profile, faults, rate, persistence)
    persist = "broken" if "persistence-broken" in faults else "sticky" if persistence else ""
    t_begin = time.perf_counter()
    n_conn = max(8, frames // 45)
    while True:
        P, pool, K = gen_logical(seed, n_conn, mode, small, rate, persist)
        P = apply_passes(P, K, mode, seed, profile, faults, tun, pool)
        rng = np.random.default_rng([seed, 2])
        O = observe(P, mode, rng, tun=tun, profile=profile, faults=faults)
        got = len(O["lidx"])
        if LATE_FAULTS.intersection(faults):   # retransmissions seconds later: fill the frames with traffic
            got = int(np.count_nonzero(O["ts"] <= K["duration"]))   # while connections still arrive
        if got >= frames:
            break
        n_conn = int(n_conn * frames / max(got, 1) * 1.03) + 8
    P = attach_quotes(P, O, pool)
    order = write_order(O, rng)[:frames]
    O = {k: v[order] for k, v in O.items()}
    B = build_headers(P, O, pool)
    rows = np.arange(frames)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    files = []
    what = f"mode={mode}" + (f" tun={tun}" if mode == "tun" else "") + \
        (f" profile={profile}" if mode == "fullnat" else "") + "".join(f" fault={x}" for x in faults) + \
        (f" rate={rate}" if rate != RATE else "") + (" persistence" if persistence else "") + \
        (" small" if small else "")
    comment = None if what == f"mode={mode}" and mode in ("nat", "dr") else \
        f"bench/make_trace.py {what} seed={seed} frames={frames}"
    if fmt == "pcapng":
        counts = np.bincount(B.iface, minlength=len(VANTAGES)).tolist()
        with open(out, "wb") as f:
            f.write(pcapng_head(VANTAGES, comment))
            write_frames(f, B, pool, fmt, rows)
            f.write(pcapng_tail(counts, int(B.ts.min()), int(B.ts.max())))
        files.append(out)
    else:
        groups = [(out, rows)]
        if split:
            stem, ext = os.path.splitext(out)
            groups = [(f"{stem}.{name}{ext or '.pcap'}", np.flatnonzero(B.iface == v))
                      for v, name in enumerate(VANTAGES)]
        for path, rr in groups:
            with open(path, "wb") as f:
                f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))
                write_frames(f, B, pool, fmt, rr)
            files.append(path)
    size = sum(os.path.getsize(p) for p in files)
    info = {
        "files": files, "frames": frames, "format": fmt, "mode": mode, "seed": seed, "bytes": size,
        "tun": tun if mode == "tun" else None, "profile": profile if mode == "fullnat" else None,
        "faults": list(faults), "small": small, "rate": rate, "persistence": persistence,
        "avg_frame_bytes": round(float(B.caplen.mean()), 1),
        "per_interface": dict(zip(VANTAGES, np.bincount(B.iface, minlength=4).tolist())),
        "tcp_connections": int(len(np.unique(P["conn"][O["lidx"]][P["kind"][O["lidx"]] == K_TCP]))),
        "by_kind": dict(zip(("tcp", "udp", "icmp", "arp"),
                            np.bincount(P["kind"][O["lidx"]], minlength=4).tolist())),
        "out_of_order": int(np.count_nonzero(np.diff(B.ts) < 0)),
        "duration_s": round(float(B.ts.max() - B.ts.min()) / 1e9, 3),
        "seconds": round(time.perf_counter() - t_begin, 2),
    }
    if not quiet:
        print(f"wrote {', '.join(files)}: {frames} frames, {size / 1e6:.1f} MB, avg frame {info['avg_frame_bytes']} B, "
              f"{info['tcp_connections']} TCP connections, {info['duration_s']} s of traffic, "
              f"{info['out_of_order']} blocks earlier than their predecessor, in {info['seconds']} s", file=sys.stderr)
        print(f"  per interface: {info['per_interface']}; by kind: {info['by_kind']}", file=sys.stderr)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1_000_000, help="number of frames (exact)")
    ap.add_argument("--out", required=True, help="output path")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mode", choices=("nat", "dr", "tun", "fullnat"), default="nat",
                    help="LVS forwarding method (default nat)")
    ap.add_argument("--tun", choices=tuple(TUN_ENC), default="ipip", help="with --mode tun: encapsulation (default ipip)")
    ap.add_argument("--profile", choices=("dpvs", "alibaba"), default="dpvs",
                    help="with --mode fullnat: whose FullNAT (default dpvs)")
    ap.add_argument("--fault", action="append", default=[], metavar="NAME",
                    help=f"inject a fault (repeatable): {', '.join(FAULTS)}; see the module docstring")
    ap.add_argument("--small", action="store_true", help="small payloads (for committed fixtures)")
    ap.add_argument("--rate", type=int, default=RATE,
                    help=f"new TCP connections per second (default {RATE}; DNS and pings scale with it): a low "
                         "rate makes a short trace span seconds, so that 1 s / 3 s retransmissions fit in it")
    ap.add_argument("--persistence", action="store_true",
                    help="with --mode nat: returning clients, each one's connections kept on one real server "
                         "(a persistent service); see the module docstring")
    ap.add_argument("--format", choices=("pcapng", "pcap"), default="pcapng",
                    help="pcapng: one file, one interface per vantage point; pcap: classic nanosecond pcap "
                         "(all vantage points in one file unless --split)")
    ap.add_argument("--split", action="store_true", help="with --format pcap: one file per vantage point, "
                                                         "named OUT-STEM.<vantage>.pcap")
    a = ap.parse_args(argv)
    if a.frames < 1:
        ap.error("--frames must be at least 1")
    if a.split and a.format != "pcap":
        ap.error("--split goes with --format pcap (a pcapng keeps the vantage points as interfaces)")
    if a.tun != "ipip" and a.mode != "tun":
        ap.error("--tun goes with --mode tun")
    if a.profile != "dpvs" and a.mode != "fullnat":
        ap.error("--profile goes with --mode fullnat")
    try:
        check_options(a.mode, a.tun, a.profile, a.fault, a.rate, a.persistence)
    except ValueError as e:
        ap.error(str(e))
    make_trace(a.out, a.frames, a.seed, a.mode, a.format, a.split, tun=a.tun, profile=a.profile,
               faults=a.fault, small=a.small, rate=a.rate, persistence=a.persistence)
    return 0


if __name__ == "__main__":
    sys.exit(main())
