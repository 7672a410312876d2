"""Address helpers shared by every layer (stdlib only).

IP addresses are :mod:`ipaddress` objects everywhere above the packet table. Inside the
table an address is a *key* (uint64): an IPv4 address is its 32-bit value, an IPv6 address
is ``V6_FLAG | n`` where ``n`` indexes the table's interned IPv6 list. :func:`addr_key`
builds the IPv4 key itself and asks the table's interning function for IPv6.

MAC addresses are :class:`MAC`, an ``int`` holding the 48-bit value (so it compares equal
to the uint64 MAC columns) that prints as ``02:00:00:00:00:02``.

Every parser raises ``ValueError`` with a message fit for a user; loaders wrap it in
:class:`lvs_inspect.errors.InputError` with the file and line.
"""
from __future__ import annotations

import ipaddress
from typing import Callable, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: high bit of an address key: set for IPv6 (the low bits index the interned list)
V6_FLAG = 1 << 63


# --------------------------------------------------------------------------- IP addresses

def parse_ip(text: str) -> IPAddress:
    """``"203.0.113.1"`` or ``"2001:db8::1"`` (brackets allowed) -> address object."""
    if not isinstance(text, str):
        raise ValueError(f"expected an IP address as a string, got {type(text).__name__}")
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    if "%" in s:
        raise ValueError(f"'{text}' has a zone index; use a global address")
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        raise ValueError(f"'{text}' is not an IPv4 or IPv6 address") from None


def parse_port(text: str | int, *, what: str = "port") -> int:
    """A decimal port number 0..65535."""
    if isinstance(text, bool):
        raise ValueError(f"{what} must be a number 0..65535, not a boolean")
    if isinstance(text, int):
        n = text
    else:
        s = str(text).strip()
        if not s.isdigit():
            raise ValueError(f"{what} '{text}' is not a number 0..65535")
        n = int(s)
    if not 0 <= n <= 65535:
        raise ValueError(f"{what} {n} is out of range 0..65535")
    return n


def parse_ip_port(text: str, *, default_port: int | None = None) -> tuple[IPAddress, int | None]:
    """``"203.0.113.1:80"``, ``"[2001:db8::1]:80"``, ``"203.0.113.1"`` -> (address, port).

    A bare IPv6 address (no brackets) has no port. Without a port, ``default_port`` is
    returned (``None`` unless given).
    """
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ValueError(f"'{text}': missing ']' after the IPv6 address")
        addr = parse_ip(s[1:end])
        rest = s[end + 1:]
        if not rest:
            return addr, default_port
        if not rest.startswith(":"):
            raise ValueError(f"'{text}': expected ':port' after ']'")
        return addr, parse_port(rest[1:])
    if s.count(":") > 1:            # bare IPv6, no port
        return parse_ip(s), default_port
    if ":" in s:
        host, _, port = s.rpartition(":")
        return parse_ip(host), parse_port(port)
    return parse_ip(s), default_port


def format_ip_port(addr: IPAddress, port: int) -> str:
    """``203.0.113.1:80`` / ``[2001:db8::1]:80``."""
    if addr.version == 6:
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"


def family(addr: IPAddress) -> int:
    """4 or 6."""
    return addr.version


def addr_key(addr: IPAddress | str, intern: Callable[[ipaddress.IPv6Address], int] | None = None) -> int:
    """The packet-table key of an address.

    IPv4: the 32-bit value. IPv6: ``V6_FLAG | intern(addr)``; ``intern`` is the table's
    interning function (``PacketTable`` owns the list of IPv6 addresses). Without it an IPv6
    address has no key and ``ValueError`` is raised.
    """
    a = parse_ip(addr) if isinstance(addr, str) else addr
    if a.version == 4:
        return int(a)
    if intern is None:
        raise ValueError(f"{a}: IPv6 keys are interned per table; pass the table's intern function")
    return V6_FLAG | int(intern(a))


def v4_from_key(key: int) -> ipaddress.IPv4Address:
    """The IPv4 address of a key (raises for an IPv6 key, which needs its table)."""
    if key & V6_FLAG:
        raise ValueError("an IPv6 key can only be resolved by the table that interned it")
    return ipaddress.IPv4Address(key & 0xFFFFFFFF)


def prefix_from_netmask(value: str | int, version: int) -> int:
    """Persistence granularity: ``"255.255.255.0"``, ``"/24"``, ``"24"`` or ``24`` -> 24.

    IPv6 takes a prefix length only (as ``ipvsadm -M`` does).
    """
    maxlen = 32 if version == 4 else 128
    if isinstance(value, bool):
        raise ValueError("netmask must be a prefix length or a dotted mask, not a boolean")
    if isinstance(value, int):
        n = value
    else:
        s = str(value).strip().lstrip("/")
        if s.isdigit():
            n = int(s)
        elif version == 4:
            try:
                mask = int(ipaddress.IPv4Address(s))
            except ValueError:
                raise ValueError(f"'{value}' is neither a prefix length nor a dotted netmask") from None
            inv = (~mask) & 0xFFFFFFFF
            if inv & (inv + 1):
                raise ValueError(f"'{value}' is not a contiguous netmask")
            n = 32 - inv.bit_length()
        else:
            raise ValueError(f"'{value}': an IPv6 netmask is a prefix length 1..128")
    if not 1 <= n <= maxlen:
        raise ValueError(f"prefix length {n} is out of range 1..{maxlen}")
    return n


def netmask_from_prefix(prefix: int) -> str:
    """24 -> ``"255.255.255.0"`` (IPv4 only)."""
    return str(ipaddress.IPv4Address((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF))


# --------------------------------------------------------------------------- MAC addresses

class MAC(int):
    """A 48-bit MAC address: an ``int`` that prints as ``02:00:00:00:00:02``."""

    __slots__ = ()

    def __new__(cls, value: int | str):
        if isinstance(value, str):
            return parse_mac(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a MAC address, got {type(value).__name__}")
        if not 0 <= value < (1 << 48):
            raise ValueError(f"MAC value {value:#x} does not fit in 48 bits")
        return super().__new__(cls, value)

    def __str__(self) -> str:
        return mac_str(self)

    def __repr__(self) -> str:
        return f"MAC('{mac_str(self)}')"

    @property
    def locally_administered(self) -> bool:
        return bool((int(self) >> 40) & 0x02)

    @property
    def multicast(self) -> bool:
        return bool((int(self) >> 40) & 0x01)


def parse_mac(text: str) -> MAC:
    """``02:00:00:00:00:02``, ``02-00-00-00-00-02``, ``0200.0000.0002`` or ``020000000002``."""
    if not isinstance(text, str):
        raise ValueError(f"expected a MAC address as a string, got {type(text).__name__}")
    s = text.strip().lower()
    for sep in (":", "-"):
        if sep in s:
            parts = s.split(sep)
            if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
                raise ValueError(f"'{text}' is not a MAC address (six hex bytes)")
            s = "".join(p.zfill(2) for p in parts)
            break
    else:
        if "." in s:
            parts = s.split(".")
            if len(parts) != 3 or not all(len(p) == 4 for p in parts):
                raise ValueError(f"'{text}' is not a MAC address")
            s = "".join(parts)
    if len(s) != 12 or any(c not in "0123456789abcdef" for c in s):
        raise ValueError(f"'{text}' is not a MAC address (six hex bytes)")
    return int.__new__(MAC, int(s, 16))


def mac_str(value: int) -> str:
    """48-bit int -> ``02:00:00:00:00:02``."""
    v = int(value)
    return ":".join(f"{(v >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def vrrp_mac(vrid: int, version: int = 4) -> MAC:
    """The VRRP virtual router MAC (RFC 5798 §7.3): 00-00-5E-00-01-{VRID} for IPv4,
    00-00-5E-00-02-{VRID} for IPv6."""
    if not 1 <= vrid <= 255:
        raise ValueError(f"virtual router id {vrid} is out of range 1..255")
    return int.__new__(MAC, (0x00005E000100 if version == 4 else 0x00005E000200) | vrid)
