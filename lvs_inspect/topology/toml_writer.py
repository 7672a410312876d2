""":class:`Topology` -> topology.toml text that :func:`load_topology` reads back to an equal
model. ``note`` fields (inference puts its evidence and confidence there) become comments.
"""
from __future__ import annotations

import json
import re

from ..net import netmask_from_prefix
from .model import (
    DEFAULT_SCHEDULER, TOA_PACKETS, Mode, Service, Topology, default_toa_for,
)

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _s(v) -> str:
    """A TOML basic string (JSON string escapes are valid TOML escapes)."""
    return json.dumps(str(v), ensure_ascii=False)


def _arr(items) -> str:
    return "[" + ", ".join(_s(x) for x in items) + "]"


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else _s(k)


def _comment(text: str, indent: str = "") -> list[str]:
    out = []
    for line in str(text).splitlines() or [""]:
        out.append(f"{indent}# {line}".rstrip())
    return out


def dump_toml(topo: Topology) -> str:
    """The topology as TOML (see :mod:`lvs_inspect.topology.toml_loader` for the keys)."""
    lines: list[str] = ["# lvs-inspect topology"]
    if topo.origin or topo.source:
        what = topo.origin or "file"
        lines.append(f"# from {what}" + (f": {topo.source}" if topo.source else ""))
    if topo.note:
        lines += _comment(topo.note)
    lines.append("")
    lines.append(f"profile = {_s(topo.profile.name)}   # {topo.profile.title}")

    d = topo.director
    dl = []
    if d.macs:
        dl.append(f"macs = {_arr(d.macs)}")
    if d.ips:
        dl.append(f"ips = {_arr(d.ips)}")
    if d.lips:
        dl.append(f"lips = {_arr(d.lips)}")
    elif d.learn_lips:
        dl.append('lips = "learn"   # FullNAT local addresses: take them from the trace')
    if d.vrrp_macs:
        dl.append(f"vrrp_mac = {_s(d.vrrp_macs[0]) if len(d.vrrp_macs) == 1 else _arr(d.vrrp_macs)}")
    if d.interfaces:
        dl.append(f"interfaces = {_arr(d.interfaces)}")
    if dl or d.note:
        lines.append("")
        lines.append("[director]")
        if d.note:
            lines += _comment(d.note)
        lines += dl

    base = topo.profile.timeouts
    diffs = [(name, getattr(topo.timeouts, name)) for name in base.__dataclass_fields__
             if getattr(topo.timeouts, name) != getattr(base, name)]
    if diffs:
        lines.append("")
        lines.append(f"[timeouts]   # overrides of the {topo.profile.name} profile's")
        lines += [f"{k} = {v}" for k, v in diffs]

    for s in topo.services:
        lines.append("")
        lines += _service(topo, s)

    if topo.vantages:
        lines.append("")
        lines.append("[vantage]")
        for name, role in topo.vantages:
            lines.append(f"{_s(name)} = {_s(str(role))}")
    return "\n".join(lines) + "\n"


def _service(topo: Topology, s: Service) -> list[str]:
    out = ["[[service]]"]
    if s.note:
        out += _comment(s.note)
    if s.name:
        out.append(f"name = {_s(s.name)}")
    if s.fwmark is not None:
        out.append(f"fwmark = {s.fwmark}")
        if s.vips:
            out.append(f"vips = {_arr(s.vips)}")
        if s.ports:
            out.append("ports = [" + ", ".join(str(p) for p in s.ports) + "]")
        if s.protocol is not None:
            out.append(f"protocol = {_s(s.protocol.value)}")
    else:
        out.append(f"vip = {_s(s.vip)}")
        out.append(f"port = {s.port}")
        out.append(f"protocol = {_s(s.protocol.value)}")
    out.append(f"scheduler = {_s(s.scheduler or DEFAULT_SCHEDULER)}")
    if s.sched_flags:
        out.append(f"sched_flags = {_arr(s.sched_flags)}")
    out.append(f"persistence = {s.persistence}")
    if s.persistence_prefix is not None:
        fam = s.family or 4
        if fam == 4:
            out.append(f"persistence_netmask = {_s(netmask_from_prefix(s.persistence_prefix))}")
        else:
            out.append(f"persistence_netmask = {s.persistence_prefix}")
    if s.persistence_engine:
        out.append(f"persistence_engine = {_s(s.persistence_engine)}")
    if s.mode is not None:
        out.append(f"mode = {_s(s.mode.value)}")
    if s.toa is not None:
        pk = [p for p in TOA_PACKETS if p in s.toa.packets]
        out.append(f"toa = {{ kind = {s.toa.kind}, length = {s.toa.length}, packets = {_arr(pk)} }}")
    elif default_toa_for(s, topo.profile) is not None:
        out.append("toa = false   # no TOA expected (the profile would insert one)")
    if s.lips:
        out.append(f"lips = {_arr(s.lips)}")
    if s.synproxy:
        out.append("synproxy = true")
    if s.ops:
        out.append("ops = true")
    for rs in s.real_servers:
        out.append("")
        out.append("  [[service.real_server]]")
        if rs.note:
            out += _comment(rs.note, "  ")
        out.append(f"  ip = {_s(rs.ip)}")
        out.append(f"  port = {rs.port}")
        out.append(f"  weight = {rs.weight}")
        if s.mode is None or rs.mode is not s.mode:
            out.append(f"  mode = {_s(rs.mode.value)}")
        if rs.mode is Mode.TUN and rs.tun is None:
            out.append('  tun = "unknown"   # not in the source (ipvsadm -Ln): from the trace')
        elif rs.tun is not None:
            out.append(f"  tun = {_s(rs.tun.value)}")
        if rs.tun_port is not None:
            out.append(f"  tun_port = {rs.tun_port}")
        if rs.tun_flags is not None:
            out.append(f"  tun_flags = {_s(rs.tun_flags)}")
        if rs.mac is not None:
            out.append(f"  mac = {_s(rs.mac)}")
        if rs.u_threshold:
            out.append(f"  u_threshold = {rs.u_threshold}")
        if rs.l_threshold:
            out.append(f"  l_threshold = {rs.l_threshold}")
    return out
