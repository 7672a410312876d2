"""A userspace tunnel end for a TUN-mode real server: IPIP, GUE and GRE decapsulation on a
TUN device, for kernels without the ipip / fou / gre drivers (the lab's machines).

What it does, in the real server's network namespace:

* opens an ``AF_PACKET`` socket on the interface facing the director (classic BPF: IPv4 and
  IPv6 frames to the interface's MAC only) and reads the tunnelled frames addressed to one
  of the namespace's own addresses: IP protocol 4 (IPv4 in IP) and 41 (IPv6 in IP), 47
  (GRE version 0 with the optional checksum, key and sequence words, protocol 0x0800 /
  0x86DD), and UDP to a GUE port (default 6080; GUE version 0 with ``hlen`` extension words,
  ``proto_ctype`` 4 or 41, and GUE version 1, the bare inner packet);
* strips the outer header and writes the inner packet to a TUN device (``IFF_TUN |
  IFF_NO_PI``, default name ``lvstun0``, brought up by the helper): the kernel stack receives
  the client's packet (CIP -> VIP) as if a tunnel driver had delivered it on that device, so
  the VIP must be configured on the real server (``lo``, as the selftest does) and reverse-path
  filtering relaxed on the TUN device (``rp_filter`` 0 or 2 on ``all`` and the device; the
  helper warns when the effective value is 1);
* installs an nftables table ``netdev lvs_inspect_decap`` whose ingress chain drops those
  outer packets before the kernel sees them (without it, the kernel answers each with ICMP
  protocol or port unreachable, which a real tunnel end does not send); ``AF_PACKET`` sees the
  frames before the netdev ingress hook. The table is removed at exit.

Frames it does not decapsulate (fragments of the outer packet, GUE control messages, other
GRE versions, anything not addressed to the namespace) are left to the kernel and counted.

Run::

    ip netns exec RS python -m lvs_inspect.forwarder.decap -i r0 [--tun lvstun0]
        [--gue-port 6080 ...] [--ready-file PATH]

It prints ``ready`` on stdout when the TUN device is up, the socket bound and the nft table
installed, runs until SIGTERM/SIGINT, then prints one JSON line of statistics on stderr
(``"event": "decap-stats"``) and exits 0; it exits 2 with one line on stderr when it cannot
start (not root, no such interface, ...).
"""
from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable

from .live import (
    ETH_P_ALL,
    SO_ATTACH_FILTER,
    DirectorError,
    _bpf_program,
    _ip,
    _json,
    _mac_bytes,
)

__all__ = ["NFT_DECAP_TABLE", "Decapsulator", "decapsulate", "main"]

NFT_DECAP_TABLE = "lvs_inspect_decap"
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
PACKET_IGNORE_OUTGOING = 23
SOL_PACKET = 263


def decapsulate(frame: bytes, local: set, gue_ports: Iterable[int]) -> tuple[str, bytes | None]:
    """(kind, inner IP packet) of an Ethernet frame carrying IPIP / GUE / GRE to a local
    address; kind is ``"ipip"``, ``"gue"``, ``"gre"``, or why it is not decapsulated
    (``"other"``, ``"not-local"``, ``"fragment"``, ``"gue-control"``, ``"gre-version"``,
    ``"short"``) with None."""
    n = len(frame)
    et = (frame[12] << 8) | frame[13]
    if et == 0x0800:
        if n < 34:
            return "short", None
        hl = (frame[14] & 15) * 4
        end = min(n, 14 + ((frame[16] << 8) | frame[17]))
        proto = frame[23]
        dst = (4, int.from_bytes(frame[30:34], "big"))
        frag = ((frame[20] << 8) | frame[21]) & 0x3FFF
        l4 = 14 + hl
    elif et == 0x86DD:
        if n < 54:
            return "short", None
        end = min(n, 54 + ((frame[18] << 8) | frame[19]))
        proto = frame[20]
        dst = (6, int.from_bytes(frame[38:54], "big"))
        frag = proto == 44
        l4 = 54
    else:
        return "other", None
    gue_port = None
    if proto == 17 and end >= l4 + 12:
        dport = (frame[l4 + 2] << 8) | frame[l4 + 3]
        if dport in gue_ports:
            gue_port = dport
    if proto not in (4, 41, 47) and gue_port is None:
        return "other", None
    if dst not in local:
        return "not-local", None
    if frag:
        return "fragment", None
    if proto in (4, 41):
        return "ipip", frame[l4:end]
    if proto == 47:
        if end < l4 + 4:
            return "short", None
        flags = (frame[l4] << 8) | frame[l4 + 1]
        if flags & 0x7 or flags & 0x4000:         # version 0 only, no routing
            return "gre-version", None
        off = l4 + 4 + (4 if flags & 0x8000 else 0) + (4 if flags & 0x2000 else 0) + \
            (4 if flags & 0x1000 else 0)
        ptype = (frame[l4 + 2] << 8) | frame[l4 + 3]
        if ptype not in (0x0800, 0x86DD) or off >= end:
            return "other", None
        return "gre", frame[off:end]
    g = l4 + 8
    ver = frame[g] >> 6
    if ver == 1:                                  # GUE version 1: the IP packet itself
        return "gue", frame[g:end]
    if ver != 0:
        return "other", None
    if frame[g] & 0x20:
        return "gue-control", None
    hlen = frame[g] & 0x1F
    if frame[g + 1] not in (4, 41):
        return "other", None
    off = g + 4 + hlen * 4
    if off >= end:
        return "short", None
    return "gue", frame[off:end]


class Decapsulator:
    """Read tunnelled frames on ``interface`` and write the inner packets to a TUN device."""

    def __init__(self, interface: str, *, stop: threading.Event, tun_name: str = "lvstun0",
                 gue_ports: Iterable[int] = (6080,), log: Callable[[str], None] | None = None,
                 install_nft: bool = True, stats_file=sys.stderr):
        self.interface = interface
        self.stop = stop
        self.tun_name = tun_name
        self.gue_ports = frozenset(int(p) for p in gue_ports)
        self.log = log or (lambda m: print(f"lvs-inspect decap: {m}", file=sys.stderr, flush=True))
        self.install_nft = install_nft
        self.stats_file = stats_file
        self.local: set = set()
        self.mac = b""
        self.rx = None
        self.tun_fd = None
        self._nft = False
        self._closed = False
        self.counts: dict[str, int] = {"frames_in": 0, "ipip": 0, "gue": 0, "gre": 0,
                                       "written": 0, "write_errors": 0}
        self.skipped: dict[str, int] = {}
        self.t0 = None

    def open(self) -> None:
        try:
            links = _json(_ip(["ip", "-j", "addr", "show"]))
            me = next((l for l in links if l.get("ifname") == self.interface), None)
            if me is None:
                raise DirectorError(f"no such interface '{self.interface}' in this network namespace")
            self.mac = _mac_bytes(me["address"])
            for l in links:
                for a in l.get("addr_info", ()):
                    try:
                        ip = ipaddress.ip_address(a["local"])
                    except (KeyError, ValueError):
                        continue
                    self.local.add((ip.version, int(ip)))
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR)
            except PermissionError:
                raise DirectorError("opening /dev/net/tun needs root (CAP_NET_ADMIN)") from None
            except FileNotFoundError:
                raise DirectorError("/dev/net/tun is missing (no TUN/TAP support)") from None
            self.tun_fd = fd
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", self.tun_name.encode(), IFF_TUN | IFF_NO_PI))
            _ip(["ip", "link", "set", self.tun_name, "up"])
            self._check_rp_filter()
            rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.rx = rx
            import ctypes
            prog = _bpf_program(self.mac)
            cbuf = ctypes.create_string_buffer(prog)
            rx.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                          struct.pack("HL", len(prog) // 8, ctypes.addressof(cbuf)))
            try:
                rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass
            rx.bind((self.interface, ETH_P_ALL))
            rx.setblocking(False)
            if self.install_nft:
                self._install_nft()
        except BaseException:
            self.close(quiet=True)
            raise
        self.t0 = time.monotonic()

    def _check_rp_filter(self) -> None:
        vals = []
        for dev in ("all", self.tun_name):
            try:
                with open(f"/proc/sys/net/ipv4/conf/{dev}/rp_filter") as f:
                    vals.append(int(f.read()))
            except (OSError, ValueError):
                pass
        if vals and max(vals) == 1:
            self.log(f"rp_filter is strict (1) on {self.tun_name}: the kernel will drop the "
                     "decapsulated packets; set net.ipv4.conf.all.rp_filter and "
                     f"net.ipv4.conf.{self.tun_name}.rp_filter to 0 or 2")

    def _install_nft(self) -> None:
        p = subprocess.run(["nft", "list", "table", "netdev", NFT_DECAP_TABLE], check=False, capture_output=True)
        if p.returncode == 0:
            raise DirectorError(f"nftables table 'netdev {NFT_DECAP_TABLE}' already exists "
                                "(another decapsulator in this namespace?)")
        rules = []
        for fam, ver in (("ip", 4), ("ip6", 6)):
            addrs = sorted(a for v, a in self.local if v == ver)
            if not addrs:
                continue
            aset = ", ".join(str(ipaddress.IPv4Address(a) if ver == 4 else ipaddress.IPv6Address(a))
                             for a in addrs)
            rules.append(f"meta protocol {fam} {fam} daddr {{ {aset} }} meta l4proto {{ 4, 41, 47 }} "
                         "counter drop")
            if self.gue_ports:
                ports = ", ".join(map(str, sorted(self.gue_ports)))
                rules.append(f"meta protocol {fam} {fam} daddr {{ {aset} }} udp dport {{ {ports} }} "
                             "counter drop")
        text = (f"table netdev {NFT_DECAP_TABLE} {{\n  chain ingress {{\n"
                f"    type filter hook ingress device \"{self.interface}\" priority -500; policy accept;\n"
                + "".join(f"    {r}\n" for r in rules) + "  }\n}\n")
        _ip(["nft", "-f", "-"], stdin=text)
        self._nft = True

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.rx.fileno(), select.POLLIN)
        buf = bytearray(1 << 17)
        mv = memoryview(buf)
        recv = self.rx.recv_into
        fd = self.tun_fd
        counts, skipped = self.counts, self.skipped
        local, ports = self.local, self.gue_ports
        while not self.stop.is_set():
            if not poller.poll(100):
                continue
            for _ in range(256):
                try:
                    n = recv(buf)
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                counts["frames_in"] += 1
                kind, inner = decapsulate(bytes(mv[:n]), local, ports)
                if inner is None:
                    skipped[kind] = skipped.get(kind, 0) + 1
                    continue
                counts[kind] += 1
                try:
                    os.write(fd, inner)
                    counts["written"] += 1
                except OSError:
                    counts["write_errors"] += 1

    def stats(self) -> dict:
        secs = time.monotonic() - self.t0 if self.t0 is not None else 0.0
        return {"event": "decap-stats", "seconds": round(secs, 3), "interface": self.interface,
                "tun": self.tun_name, **self.counts, "skipped": dict(sorted(self.skipped.items()))}

    def close(self, quiet: bool = False) -> dict:
        if self._closed:
            return self.stats()
        self._closed = True
        if self._nft:
            subprocess.run(["nft", "delete", "table", "netdev", NFT_DECAP_TABLE], check=False, capture_output=True)
            self._nft = False
        if self.rx is not None:
            self.rx.close()
        if self.tun_fd is not None:
            os.close(self.tun_fd)          # the (non-persistent) TUN device goes with it
        st = self.stats()
        if not quiet and self.stats_file is not None and self.t0 is not None:
            print(json.dumps(st, sort_keys=True), file=self.stats_file, flush=True)
        return st


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lvs_inspect.forwarder.decap",
                                description="Userspace IPIP/GUE/GRE decapsulation onto a TUN device "
                                            "(a TUN-mode real server's tunnel end).")
    p.add_argument("-i", "--interface", required=True, help="the interface facing the director")
    p.add_argument("--tun", default="lvstun0", help="TUN device to create (default lvstun0)")
    p.add_argument("--gue-port", type=int, action="append", metavar="PORT",
                   help="UDP port carrying GUE (repeatable; default 6080)")
    p.add_argument("--ready-file", metavar="PATH", help="create PATH once running")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("lvs-inspect decap: needs root (TUN device, AF_PACKET, nftables)", file=sys.stderr)
        return 2
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    d = Decapsulator(args.interface, stop=stop, tun_name=args.tun,
                     gue_ports=args.gue_port or (6080,))
    try:
        try:
            d.open()
        except DirectorError as e:
            print(f"lvs-inspect decap: {e}", file=sys.stderr, flush=True)
            return 2
        try:
            if args.ready_file:
                with open(args.ready_file, "w") as f:
                    f.write(f"{os.getpid()}\n")
            print("ready", flush=True)
            d.run()
        finally:
            d.close()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
