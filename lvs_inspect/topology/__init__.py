"""The topology of a load-balancer set-up: model, loaders and writer.

``load_topology(path)`` reads any of the formats ``-t`` accepts and recognises it by content,
not by file name:

* topology TOML (:mod:`.toml_loader`, every key checked),
* ``ipvsadm -Sn`` rules or ``ipvsadm -Ln`` / ``-G`` / ``--timeout`` listings, kernel, Alibaba
  LVS or DPVS (:mod:`.ipvsadm`),
* keepalived.conf with includes, including the Alibaba/DPVS FullNAT extensions
  (:mod:`.keepalived`).

``dump_toml(topology)`` writes TOML that reads back to an equal model. Bad input raises
:class:`lvs_inspect.errors.InputError` naming the file, the line and the key.

This package imports only the standard library, :mod:`lvs_inspect.net` and
:mod:`lvs_inspect.errors`.
"""
from __future__ import annotations

import re

from ..errors import InputError
from .model import (
    DEFAULT_PERSISTENCE, DEFAULT_PROFILE, PROFILES, SCHEDULERS, SCHED_FLAGS, TOA_PACKETS,
    Director, Mode, PerMode, Profile, Protocol, RealServer, Service, SourcePos, Timeouts,
    ToaVariant, Topology, TunType, VantageRole, apply_defaults, get_profile, validate_topology,
)

FORMATS = ("toml", "ipvsadm", "keepalived")

__all__ = [
    "load_topology", "loads_topology", "detect_format", "dump_toml", "read_text", "FORMATS",
    "Topology", "Service", "RealServer", "Director", "Profile", "PerMode", "Timeouts",
    "ToaVariant", "VantageRole", "SourcePos", "Mode", "Protocol", "TunType", "PROFILES",
    "DEFAULT_PROFILE", "DEFAULT_PERSISTENCE", "SCHEDULERS", "SCHED_FLAGS", "TOA_PACKETS",
    "get_profile", "validate_topology", "apply_defaults",
]


def read_text(path: str) -> str:
    """A topology file's text; ``InputError`` for a missing, unreadable, binary or empty file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not a topology file") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    if b"\x00" in data:
        raise InputError(path, "binary data, not a topology file (TOML, ipvsadm output or "
                         "keepalived.conf)", offset=data.index(b"\x00"))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(path, "not UTF-8 text", offset=e.start) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise InputError(path, "empty file: expected a topology (TOML, ipvsadm -Sn/-Ln output "
                         "or keepalived.conf)")
    return text


_KEEPALIVED_TOP = re.compile(
    r"^\s*(global_defs|vrrp_instance|vrrp_sync_group|vrrp_script|virtual_server|"
    r"virtual_server_group|local_address_group|static_ipaddress|static_routes|include[rmwba]?|"
    r"net_namespace|SSL|linkbeat_interfaces|track_file|bfd_instance)\b")
_TOML_LINE = re.compile(r"^\s*(\[\[?\s*[A-Za-z0-9_.\"' -]+\]\]?\s*(#.*)?$|[A-Za-z0-9_\"'.-]+\s*=)")


def detect_format(text: str) -> str | None:
    """``"toml"``, ``"ipvsadm"``, ``"keepalived"`` or None, from the content."""
    from .ipvsadm import looks_like_listing, looks_like_rules
    lines = text.splitlines()
    if looks_like_listing(lines):
        return "ipvsadm"
    first = None
    for ln in lines:
        s = ln.strip()
        if not s or s[0] in "#!":
            continue
        first = s
        break
    if first is None:
        return None
    if _KEEPALIVED_TOP.match(first) or first[0] in "$@":
        return "keepalived"
    if _TOML_LINE.match(first):
        return "toml"
    if looks_like_rules(lines):
        return "ipvsadm"
    if "{" in text or "}" in text:      # keepalived block syntax with a stray first line
        return "keepalived"
    return None


def loads_topology(text: str, path: str = "<topology>", *, profile: str | None = None,
                   fmt: str | None = None) -> Topology:
    """Parse topology text of any supported format (``fmt`` forces one)."""
    kind = fmt or detect_format(text)
    if kind == "toml":
        from .toml_loader import loads_toml
        return loads_toml(text, path, profile=profile)
    if kind == "ipvsadm":
        from .ipvsadm import loads_ipvsadm
        return loads_ipvsadm(text, path, profile=profile)
    if kind == "keepalived":
        from .keepalived import loads_keepalived
        return loads_keepalived(text, path, profile=profile)
    if kind is not None:
        raise InputError(path, f"unknown topology format '{kind}'; one of {', '.join(FORMATS)}")
    first = next((i for i, ln in enumerate(text.splitlines(), 1) if ln.strip()), None)
    raise InputError(path, "not a topology: expected TOML, ipvsadm -Sn / -Ln output or "
                     "keepalived.conf", line=first)


def load_topology(path: str, *, profile: str | None = None, fmt: str | None = None) -> Topology:
    """Read a topology file of any supported format, recognised by its content.

    ``profile`` overrides the profile the file names or implies."""
    return loads_topology(read_text(path), path, profile=profile, fmt=fmt)


def dump_toml(topology: Topology) -> str:
    """The topology as TOML that :func:`load_topology` reads back to an equal model."""
    from .toml_writer import dump_toml as _dump
    return _dump(topology)
