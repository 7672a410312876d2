"""Small pieces shared by the lab's userspace stand-ins: a TUN device, Internet checksums.

A TUN device (``IFF_TUN | IFF_NO_PI``) hands whole IP packets between the kernel and a process:
what the process writes is received by the kernel as if it had arrived on that interface; what
the kernel routes into it the process reads. No offloads are negotiated, so the kernel computes
every checksum of what it sends there.
"""
from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name: str) -> int:
    """Create (or attach to) the TUN device ``name`` in the current namespace; returns its fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def csum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data`` (the value to store)."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip4_header_checksum(hdr: bytearray) -> None:
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", csum(bytes(hdr)))


def tcp4_checksum(src: bytes, dst: bytes, segment: bytearray) -> None:
    """Recompute the TCP checksum of ``segment`` (header + payload) in place."""
    segment[16:18] = b"\0\0"
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(segment))
    segment[16:18] = struct.pack("!H", csum(pseudo + bytes(segment)))


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))
