"""The TUN real servers' decapsulation end, in userspace: this kernel has no IPIP/GRE/FOU driver.

``python -m lvs_inspect.lab.decap [--dev tunl0] [--gue-port 6080]`` run inside a real server's
namespace plays the part of the ``ipip`` module's ``tunl0`` (and of ``gre0`` and a ``fou`` GUE
receive port):

* a raw socket for IP protocol 4 (IPIP) and one for 47 (GRE) receive the director's tunnel
  packets addressed to this host. While a raw socket for a protocol is open, the kernel does not
  answer "protocol unreachable" for it (``ip_local_deliver_finish`` sends that only when no raw
  socket took the packet), which is what a loaded ``ipip`` module looks like from outside;
* a UDP socket on the GUE port receives GUE (UDP, Linux ``fou`` in gue mode, version 0 with the
  inner protocol in ``proto_ctype``, or version 1 = a bare IP packet);
* the outer headers are stripped and the inner packet is written into the TUN device ``--dev``,
  so the kernel receives CIP -> VIP as if ``tunl0`` had decapsulated it: the VIP on ``lo``
  accepts it, ``rp_filter`` applies to the TUN device as it does to ``tunl0``, and the reply
  leaves directly toward the client (source VIP), as in kernel IPVS TUN.

Packets whose inner header is not IPv4 are counted and dropped. Prints ``ready`` once every
socket is open, runs until SIGTERM, then prints a one-line JSON count of what it did.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import sys

from .tundev import open_tun

IPPROTO_IPIP = 4
IPPROTO_GRE = 47


def strip_ipip(pkt: bytes) -> bytes | None:
    """Inner packet of an outer IPv4 packet carrying protocol 4 (as a raw socket returns it)."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    return pkt[ihl:]


def strip_gre(pkt: bytes) -> bytes | None:
    """Inner IPv4 packet of an outer IPv4 + GRE (RFC 2784/2890: C, K, S bits) packet."""
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    g = pkt[ihl:]
    if len(g) < 4:
        return None
    flags, proto = struct.unpack("!HH", g[:4])
    if flags & 0x0007:            # version must be 0
        return None
    off = 4 + (4 if flags & 0x8000 else 0) + (4 if flags & 0x2000 else 0) + (4 if flags & 0x1000 else 0)
    if proto != 0x0800:
        return None
    return g[off:]


def strip_gue(payload: bytes) -> bytes | None:
    """Inner packet of a GUE UDP payload (draft-ietf-intarea-gue: version 0 header, or version 1 =
    the IP packet itself)."""
    if not payload:
        return None
    ver = payload[0] >> 6
    if ver == 1:
        return payload
    if ver != 0 or len(payload) < 4:
        return None
    c = (payload[0] >> 5) & 1
    hlen = payload[0] & 0x1F
    proto = payload[1]
    if c or proto != 4:           # control messages and non-IPv4 payloads are not for us
        return None
    return payload[4 + 4 * hlen:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_inspect.lab.decap")
    ap.add_argument("--dev", default="tunl0", help="the TUN device to create (default tunl0)")
    ap.add_argument("--gue-port", type=int, default=6080, help="UDP port for GUE (0: none)")
    a = ap.parse_args(argv)

    tun = open_tun(a.dev)
    socks: dict[int, str] = {}
    ipip = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
    socks[ipip.fileno()] = "ipip"
    gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
    socks[gre.fileno()] = "gre"
    gue = None
    if a.gue_port:
        gue = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        gue.bind(("0.0.0.0", a.gue_port))
        socks[gue.fileno()] = "gue"
    by_fd = {ipip.fileno(): ipip, gre.fileno(): gre}
    if gue is not None:
        by_fd[gue.fileno()] = gue
    counts = {"ipip": 0, "gre": 0, "gue": 0, "dropped": 0}

    running = True

    def stop(_sig, _frame):
        nonlocal running
        running = False
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    while running:
        try:
            ready, _, _ = select.select(list(by_fd), [], [], 0.2)
        except InterruptedError:
            continue
        for fd in ready:
            kind = socks[fd]
            data = by_fd[fd].recv(65535)
            inner = {"ipip": strip_ipip, "gre": strip_gre, "gue": strip_gue}[kind](data)
            if not inner or inner[0] >> 4 != 4:
                counts["dropped"] += 1
                continue
            os.write(tun, inner)
            counts[kind] += 1
    print(json.dumps({"decap": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
