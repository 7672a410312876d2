"""The TUN real servers' tunnel end, in userspace: this kernel has no ipip/sit/gre/fou driver.

``python -m lvs_inspect.lab.decap [--dev tunl0] [--gue-port 6080 ...] [-i IF]``, run inside a
real server's network namespace, plays the part of the ``ipip`` module's ``tunl0`` (and of
``sit``, ``gre0`` and a ``fou`` GUE receive port):

* it receives the director's tunnel packets through the kernel's own IP input path: raw
  sockets for IP protocols 4 (IPv4 in IP), 41 (IPv6 in IP) and 47 (GRE), over IPv4 and, where
  the namespace has IPv6, over IPv6, and a UDP socket per GUE port. So the outer packet is
  accepted exactly when the kernel would hand it to a tunnel driver: addressed to one of the
  host's addresses (whenever it was added), IP header checksum good, reverse-path filter and
  the INPUT hooks passed, fragments reassembled, UDP checksum checked (GUE). While a raw socket
  for a protocol is open the kernel sends no "protocol unreachable" for it
  (``ip_local_deliver_finish`` / ``ip6_protocol_deliver_rcu`` send that only when no raw socket
  took the packet) and the bound UDP socket keeps "port unreachable" away: from the outside the
  host looks like one with the modules loaded. Nothing is installed that could outlive the
  process (no nftables table, no persistent device);
* it parses the tunnel header as the drivers do: GRE version 0 with the optional checksum
  (verified), key and sequence words, protocol 0x0800 / 0x86DD, no routing; GUE version 0 with
  ``hlen`` extension words and ``proto_ctype`` 4 / 41 (control messages dropped) and GUE
  version 1 (the bare IPv4 or IPv6 packet); the inner IP version must match what the outer
  header announces;
* it applies ECN decapsulation as ``ip_tunnel_rcv`` does (``INET_ECN_decapsulate``): outer CE
  marks an ECN-capable inner packet CE, and drops a Not-ECT one;
* it writes the inner packet into the TUN device ``--dev`` (``IFF_TUN | IFF_NO_PI``, created and
  brought up here), so the kernel receives CIP -> VIP on it as if ``tunl0`` had decapsulated it:
  the VIP on ``lo`` accepts it, ``rp_filter`` applies to the TUN device as to ``tunl0`` (a
  warning on stderr when the effective value is strict when the first packet goes in), and the
  reply leaves directly toward the client (source VIP), as in kernel IPVS TUN.

``-i IF`` restricts reception to tunnel packets arriving on ``IF`` (``SO_BINDTODEVICE``).
Prints ``ready`` on stdout once every socket is open, runs until SIGTERM/SIGINT, then prints one
JSON line of statistics on stderr (``"event": "decap-stats"``) and exits 0; exits 2 with one
line on stderr when it cannot start (not root, no such interface, ...).

:func:`decapsulate` does the same parsing on a captured Ethernet frame (tests, offline use).
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
import time
from collections.abc import Iterable

from .tundev import csum, open_tun

__all__ = ["Decapsulator", "decapsulate", "ecn_decapsulate", "main", "strip_gue", "strip_tunnel"]

IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_GRE = 4, 41, 47
TUNNEL_PROTOS = (IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_GRE)
GRE_C, GRE_R, GRE_K, GRE_S = 0x8000, 0x4000, 0x2000, 0x1000
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
IPV6_RECVTCLASS = getattr(socket, "IPV6_RECVTCLASS", 66)
IPV6_TCLASS = getattr(socket, "IPV6_TCLASS", 67)
UDP_NO_CHECK6_RX = 102          # accept zero UDP checksums over IPv6, as fou does by default
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

Result = tuple[str, bytes | None]


def _inner_version_ok(inner: bytes, want: int) -> bool:
    return len(inner) >= (20 if want == 4 else 40) and inner[0] >> 4 == want


def strip_tunnel(proto: int, payload: bytes) -> Result:
    """(kind, inner IP packet) of the payload of an outer IP packet of protocol ``proto`` (4, 41
    or 47), or (why it is dropped, None): ``"gre-version"`` (version other than 0, or the
    routing bit), ``"gre-checksum"``, ``"inner-mismatch"`` (the inner packet is not the IP version
    the outer header announces), ``"short"``, ``"other"`` (another protocol)."""
    if proto == IPPROTO_IPIP:
        return ("ipip", payload) if _inner_version_ok(payload, 4) else ("inner-mismatch", None)
    if proto == IPPROTO_IPV6:
        return ("ipip", payload) if _inner_version_ok(payload, 6) else ("inner-mismatch", None)
    if proto != IPPROTO_GRE:
        return "other", None
    if len(payload) < 4:
        return "short", None
    flags, ptype = struct.unpack_from("!HH", payload)
    if flags & 0x7 or flags & GRE_R:                # gre_parse_header: version 0, no routing
        return "gre-version", None
    off = 4 + 4 * (bool(flags & GRE_C) + bool(flags & GRE_K) + bool(flags & GRE_S))
    if off > len(payload):
        return "short", None
    if flags & GRE_C and csum(payload) != 0:        # the checksum covers the GRE header and payload
        return "gre-checksum", None
    want = {ETH_P_IP: 4, ETH_P_IPV6: 6}.get(ptype)
    if want is None:
        return "other", None
    inner = payload[off:]
    return ("gre", inner) if _inner_version_ok(inner, want) else ("inner-mismatch", None)


def strip_gue(payload: bytes) -> Result:
    """(``"gue"``, inner IP packet) of a GUE UDP payload (draft-ietf-intarea-gue: version 0 with
    ``hlen`` words of extension fields, ``proto_ctype`` 4 or 41; version 1, the IP packet
    itself), or (``"gue-control"`` / ``"gue-version"`` / ``"inner-mismatch"`` / ``"short"`` /
    ``"other"``, None)."""
    if not payload:
        return "short", None
    ver = payload[0] >> 6
    if ver == 1:                                    # first nibble 4 or 6: the inner packet's version
        nib = payload[0] >> 4
        if nib not in (4, 6):
            return "other", None
        return ("gue", payload) if _inner_version_ok(payload, nib) else ("inner-mismatch", None)
    if ver != 0:
        return "gue-version", None
    if len(payload) < 4:
        return "short", None
    if payload[0] & 0x20:
        return "gue-control", None
    off = 4 + 4 * (payload[0] & 0x1F)
    want = {IPPROTO_IPIP: 4, IPPROTO_IPV6: 6}.get(payload[1])
    if want is None:
        return "other", None
    if off > len(payload):
        return "short", None
    inner = payload[off:]
    return ("gue", inner) if _inner_version_ok(inner, want) else ("inner-mismatch", None)


def ecn_decapsulate(outer_ds: int, inner: bytes) -> bytes | None:
    """The inner packet after ECN decapsulation against the outer DS byte (Linux
    ``INET_ECN_decapsulate``): outer CE sets CE on an ECT inner packet (IPv4 header checksum
    updated) and drops (None) a Not-ECT one; anything else leaves it unchanged."""
    if outer_ds & 3 != 3:
        return inner
    if inner[0] >> 4 == 4:
        if inner[1] & 3 == 0:
            return None
        if inner[1] & 3 == 3:
            return inner
        hl = (inner[0] & 0x0F) * 4
        hdr = bytearray(inner[:hl])
        hdr[1] |= 3
        hdr[10:12] = b"\0\0"
        hdr[10:12] = struct.pack("!H", csum(bytes(hdr)))
        return bytes(hdr) + inner[hl:]
    ecn = (inner[1] >> 4) & 3                       # IPv6: traffic class bits 4..11
    if ecn == 0:
        return None
    if ecn == 3:
        return inner
    return inner[:1] + bytes([inner[1] | 0x30]) + inner[2:]


def _ecn(outer_ds: int, res: Result) -> Result:
    kind, inner = res
    if inner is None:
        return res
    inner = ecn_decapsulate(outer_ds, inner)
    return (kind, inner) if inner is not None else ("ecn-ce-not-ect", None)


def decapsulate(frame: bytes, local: set, gue_ports: Iterable[int]) -> Result:
    """(kind, inner IP packet) of an Ethernet frame carrying IPIP / GUE / GRE to a local address
    (``local``: a set of ``(4 or 6, int(address))``); kind is ``"ipip"``, ``"gue"``, ``"gre"``,
    or why it is not decapsulated (``"other"``, ``"not-local"``, ``"fragment"`` — the kernel
    reassembles before a tunnel driver sees the packet, a single frame cannot —, ``"short"`` and
    the reasons of :func:`strip_tunnel` / :func:`strip_gue`) with None."""
    n = len(frame)
    et = (frame[12] << 8) | frame[13] if n >= 14 else 0
    if et == ETH_P_IP:
        if n < 34:
            return "short", None
        l3 = 14
        l4 = l3 + (frame[l3] & 15) * 4
        end = min(n, l3 + ((frame[l3 + 2] << 8) | frame[l3 + 3]))
        proto, ds = frame[l3 + 9], frame[l3 + 1]
        dst = (4, int.from_bytes(frame[l3 + 16:l3 + 20], "big"))
        frag = ((frame[l3 + 6] << 8) | frame[l3 + 7]) & 0x3FFF
    elif et == ETH_P_IPV6:
        if n < 54:
            return "short", None
        l4 = 54
        end = min(n, l4 + ((frame[18] << 8) | frame[19]))
        proto, ds = frame[20], ((frame[14] & 15) << 4) | (frame[15] >> 4)
        dst = (6, int.from_bytes(frame[38:54], "big"))
        frag = proto == 44
    else:
        return "other", None
    if frag:                                        # the kernel reassembles first; one frame cannot
        if et == ETH_P_IP and proto not in (*TUNNEL_PROTOS, 17):
            return "other", None
        return ("fragment" if dst in local else "not-local"), None
    gue = proto == 17 and end >= l4 + 8 and ((frame[l4 + 2] << 8) | frame[l4 + 3]) in set(gue_ports)
    if proto not in TUNNEL_PROTOS and not gue:
        return "other", None
    if dst not in local:
        return "not-local", None
    if gue:
        return _ecn(ds, strip_gue(bytes(frame[l4 + 8:end])))
    return _ecn(ds, strip_tunnel(proto, bytes(frame[l4:end])))


def _ancillary_ds(ancdata) -> int:
    for level, typ, data in ancdata:
        if level == socket.IPPROTO_IP and typ == socket.IP_TOS and data:
            return data[0]
        if level == socket.IPPROTO_IPV6 and typ == IPV6_TCLASS and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder) & 0xFF
    return 0


class StartError(Exception):
    """The decapsulator cannot start (one line for the user)."""


class Decapsulator:
    """The sockets, the TUN device and the counts of one decapsulation end."""

    def __init__(self, *, dev: str = "tunl0", gue_ports: Iterable[int] = (6080,),
                 interface: str | None = None):
        self.dev = dev
        self.gue_ports = tuple(sorted({int(p) for p in gue_ports if int(p)}))
        self.interface = interface
        self.tun: int | None = None
        self.socks: dict[int, tuple[socket.socket, int, int]] = {}   # fd -> (socket, protocol, family)
        self.counts = {"received": 0, "ipip": 0, "gre": 0, "gue": 0, "written": 0, "write_errors": 0}
        self.skipped: dict[str, int] = {}
        self.ipv6 = False
        self.t0 = time.monotonic()
        self._rp_checked = False

    # ------------------------------------------------------------------ set-up
    def open(self) -> None:
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        if self.interface:
            try:
                socket.if_nametoindex(self.interface)
            except OSError:
                raise StartError(f"no such interface '{self.interface}' in this network namespace") from None
        try:
            self.tun = open_tun(self.dev)
        except PermissionError:
            raise StartError("creating a TUN device needs root (CAP_NET_ADMIN)") from None
        except FileNotFoundError:
            raise StartError("/dev/net/tun is missing (no TUN/TAP support)") from None
        except OSError as e:
            raise StartError(f"cannot create the TUN device '{self.dev}' ({e.strerror}): another "
                             "decapsulator or a tunnel driver's device holds that name") from None
        self._link_up()
        for fam in (socket.AF_INET, socket.AF_INET6):
            for proto in TUNNEL_PROTOS:
                try:
                    s = socket.socket(fam, socket.SOCK_RAW, proto)
                except PermissionError:
                    raise StartError("raw sockets need root (CAP_NET_RAW)") from None
                except OSError as e:
                    if fam == socket.AF_INET6:          # no IPv6 in this kernel: IPv4 only
                        break
                    raise StartError(f"cannot open a raw socket for IP protocol {proto} ({e.strerror})") from None
                if fam == socket.AF_INET6:
                    self.ipv6 = True
                    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
                self._add(s, proto, fam)
            for port in self.gue_ports:
                if fam == socket.AF_INET6 and not self.ipv6:
                    break
                s = socket.socket(fam, socket.SOCK_DGRAM)
                if fam == socket.AF_INET:
                    s.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
                else:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVTCLASS, 1)
                    try:
                        s.setsockopt(socket.IPPROTO_UDP, UDP_NO_CHECK6_RX, 1)
                    except OSError:
                        pass
                try:
                    s.bind(("0.0.0.0" if fam == socket.AF_INET else "::", port))
                except OSError as e:
                    s.close()
                    raise StartError(f"cannot bind UDP port {port} for GUE ({e.strerror})") from None
                self._add(s, socket.IPPROTO_UDP, fam)

    def _add(self, s: socket.socket, proto: int, fam: int) -> None:
        self.socks[s.fileno()] = (s, proto, fam)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if self.interface:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
        s.setblocking(False)

    def _link_up(self) -> None:
        import fcntl
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16sH", self.dev.encode(), 0)
            flags = struct.unpack_from("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
            fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", self.dev.encode(), flags | IFF_UP))

    def _check_rp_filter(self) -> None:
        """Warn once, when the first packet goes in (the operator's sysctls are set by then)."""
        self._rp_checked = True
        vals = []
        for conf in ("all", self.dev):
            try:
                with open(f"/proc/sys/net/ipv4/conf/{conf}/rp_filter") as f:
                    vals.append(int(f.read()))
            except (OSError, ValueError):
                pass
        if vals and max(vals) == 1:
            print(f"lvs-inspect decap: rp_filter is strict (1) on {self.dev}: the kernel drops the "
                  f"decapsulated packets; set net.ipv4.conf.all.rp_filter and "
                  f"net.ipv4.conf.{self.dev}.rp_filter to 0 or 2", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ the loop
    def handle(self, data: bytes, proto: int, fam: int, outer_ds: int) -> None:
        """Decapsulate one datagram received on a socket for ``proto`` (raw IPv4: with its IP
        header; raw IPv6 and UDP: the payload only; ``outer_ds`` from the ancillary data) and write
        the inner packet into the TUN device."""
        self.counts["received"] += 1
        if proto == socket.IPPROTO_UDP:
            res = strip_gue(data)
        elif fam == socket.AF_INET:
            if len(data) < 20:
                res = ("short", None)
            else:
                outer_ds = data[1]
                end = min(len(data), (data[2] << 8) | data[3])
                res = strip_tunnel(proto, data[(data[0] & 15) * 4:end])
        else:
            res = strip_tunnel(proto, data)
        kind, inner = _ecn(outer_ds, res)
        if inner is None:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            return
        self.counts[kind] += 1
        if not self._rp_checked:
            self._check_rp_filter()
        try:
            os.write(self.tun, inner)
            self.counts["written"] += 1
        except OSError:
            self.counts["write_errors"] += 1

    def run(self, running) -> None:
        """Until ``running()`` is false."""
        poller = select.poll()
        for fd in self.socks:
            poller.register(fd, select.POLLIN)
        while running():
            try:
                events = poller.poll(200)
            except InterruptedError:
                continue
            for fd, _ev in events:
                s, proto, fam = self.socks[fd]
                for _ in range(256):
                    try:
                        data, anc, _flags, _addr = s.recvmsg(65535, 64)
                    except (BlockingIOError, InterruptedError):
                        break
                    self.handle(data, proto, fam, _ancillary_ds(anc))

    def stats(self) -> dict:
        return {"event": "decap-stats", "seconds": round(time.monotonic() - self.t0, 3), "dev": self.dev,
                "interface": self.interface or "any", "ipv6": self.ipv6, "gue_ports": list(self.gue_ports),
                **self.counts, "skipped": dict(sorted(self.skipped.items()))}

    def close(self) -> None:
        for s, _proto, _fam in self.socks.values():
            s.close()
        self.socks.clear()
        if self.tun is not None:
            os.close(self.tun)              # the (non-persistent) TUN device goes with it
            self.tun = None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lvs_inspect.lab.decap",
                                 description="Userspace IPIP/GRE/GUE decapsulation onto a TUN device "
                                             "(a TUN-mode real server's tunnel end).")
    ap.add_argument("--dev", default="tunl0", help="the TUN device to create (default tunl0)")
    ap.add_argument("--gue-port", type=int, action="append", metavar="PORT",
                    help="UDP port carrying GUE (repeatable; default 6080; 0: none)")
    ap.add_argument("-i", "--interface", help="only tunnel packets arriving on this interface")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("lvs-inspect decap: needs root (TUN device, raw sockets)", file=sys.stderr)
        return 2
    d = Decapsulator(dev=a.dev, gue_ports=(6080,) if a.gue_port is None else a.gue_port,
                     interface=a.interface)
    stop = []
    old = {s: signal.signal(s, lambda *_: stop.append(1)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            d.open()
        except (StartError, OSError) as e:
            print(f"lvs-inspect decap: {getattr(e, 'strerror', None) or e}", file=sys.stderr, flush=True)
            return 2
        try:
            print("ready", flush=True)
            d.run(lambda: not stop)
        finally:
            d.close()
            print(json.dumps(d.stats(), sort_keys=True), file=sys.stderr, flush=True)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0


if __name__ == "__main__":
    sys.exit(main())
