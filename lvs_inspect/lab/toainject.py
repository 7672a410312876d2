"""A client that forges its own TOA: ``python -m lvs_inspect.lab.toainject --dev toa0 --out IFACE ...``.

The client's kernel TCP stack makes the connections; its route to the VIP points into the TUN
device ``--dev``. This process reads each packet the kernel sends there, inserts a TOA option
(kind/length, a forged address and port) right after the 20-byte TCP header — what a
malicious client, or a client behind another TOA-inserting proxy, sends — fixes lengths and
checksums, and transmits the frame on the real interface ``--out`` with an AF_PACKET socket
(source MAC = that interface's, destination MAC = ``--gw-mac``, the next hop). Replies come back
on the real interface to the kernel as usual (the client needs ``rp_filter`` 0: its route to
the VIP goes through the TUN device). Packets without room for the option (TCP options already
longer than 32 bytes) are sent unchanged and counted.

Prints ``ready`` once the device exists, runs until SIGTERM, then prints a JSON count.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import sys

from .tundev import ip4_header_checksum, mac_bytes, open_tun, tcp4_checksum


def insert_toa(pkt: bytes, option: bytes) -> bytes | None:
    """``pkt`` (IPv4 + TCP) with ``option`` inserted in front of its TCP options; None when it does
    not fit (or is not TCP over IPv4)."""
    if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    frag = struct.unpack("!H", pkt[6:8])[0]
    if frag & 0x3FFF:                 # a fragment: leave it alone
        return None
    tcp = pkt[ihl:]
    doff = (tcp[12] >> 4) * 4
    if doff + len(option) > 60:
        return None
    new_doff = doff + len(option)
    seg = bytearray(tcp[:20] + option + tcp[20:])
    seg[12] = ((new_doff // 4) << 4) | (seg[12] & 0x0F)
    hdr = bytearray(pkt[:ihl])
    hdr[2:4] = struct.pack("!H", ihl + len(seg))
    ip4_header_checksum(hdr)
    tcp4_checksum(bytes(hdr[12:16]), bytes(hdr[16:20]), seg)
    return bytes(hdr) + bytes(seg)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_inspect.lab.toainject")
    ap.add_argument("--dev", default="toa0", help="TUN device the client's route to the VIP uses")
    ap.add_argument("--out", required=True, help="the real interface to transmit on")
    ap.add_argument("--gw-mac", required=True, help="destination MAC (the next hop toward the VIP)")
    ap.add_argument("--addr", required=True, help="the forged client address in the option")
    ap.add_argument("--port", type=int, default=4242, help="the forged client port in the option")
    ap.add_argument("--kind", type=int, default=254)
    a = ap.parse_args(argv)
    addr = ipaddress.IPv4Address(a.addr).packed
    option = struct.pack("!BBH", a.kind, 8, a.port) + addr

    tun = open_tun(a.dev)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    out.bind((a.out, 0))
    with open(f"/sys/class/net/{a.out}/address") as f:
        src_mac = mac_bytes(f.read().strip())
    l2 = mac_bytes(a.gw_mac) + src_mac + b"\x08\x00"
    counts = {"forged": 0, "unchanged": 0}
    running = True

    def stop(_sig, _frame):
        nonlocal running
        running = False
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("ready", flush=True)
    while running:
        try:
            ready, _, _ = select.select([tun], [], [], 0.2)
        except InterruptedError:
            continue
        if not ready:
            continue
        pkt = os.read(tun, 65535)
        if not pkt or pkt[0] >> 4 != 4:
            continue                  # IPv6 is off in the lab; nothing else to pass on
        forged = insert_toa(pkt, option)
        if forged is None:
            counts["unchanged"] += 1
            forged = pkt
        else:
            counts["forged"] += 1
        frame = l2 + forged
        out.send(frame + b"\0" * max(0, 60 - len(frame)))
    print(json.dumps({"toainject": counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
