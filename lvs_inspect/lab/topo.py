"""The two topology files of a lab case: the one the operator declares (``topology.toml``, given
to the audit) and the one the director runs (``director.toml``, given to ``lvs-inspect
director``). They differ exactly by the fault (a weight, a port, a profile, the TOA)."""
from __future__ import annotations

import json

from . import plan as P
from .plan import Plan


def _s(v) -> str:
    return json.dumps(str(v))


def topology_toml(plan: Plan, *, which: str = "declared", command: str = "") -> str:
    """``which`` = "declared" (topology.toml) or "director" (what the director runs)."""
    declared = which == "declared"
    profile = plan.profile if declared else plan.director_profile
    toa = plan.toa_declared if declared else plan.toa_director
    lines = []
    if declared:
        lines += ["# The set-up the operator declares for this lab case: `lvs-inspect audit -t topology.toml`",
                  "# checks the trace against it." + (f" Made by: {command}" if command else "")]
    else:
        lines += ["# What the director of this lab case really runs (`lvs-inspect director -t director.toml`).",
                  "# It differs from topology.toml only where the case's fault says so."]
    if plan.fault:
        lines.append(f"# Fault: {plan.fault} - {P.FAULTS[plan.fault].title}.")
    lines += ["", f"profile = {_s(profile)}", "", "[director]",
              f"macs = [{', '.join(_s(m) for m in plan.director_macs)}]",
              f"ips = [{', '.join(_s(a) for a in plan.director_ips)}]"]
    if plan.mode == "fullnat":
        lines.append(f"lips = [{_s(P.LIP)}]")
    lines.append(f"interfaces = [{', '.join(_s(i) for i in plan.director_ifaces)}]")
    lines += ["", "[[service]]", f"vip = {_s(P.VIP)}", f"port = {P.VPORT}", 'protocol = "tcp"',
              f"scheduler = {_s(plan.scheduler)}"]
    if plan.scheduler == "sh":
        lines.append('sched_flags = ["sh-port"]   # the kernel stand-in hashes client address and port')
    lines += ["persistence = 0", f"mode = {_s(plan.mode)}"]
    if plan.mode == "fullnat":
        if toa is not None:
            lines.append(f"toa = {{ kind = {toa[0]}, length = {toa[1]} }}")
        elif profile in ("dpvs", "alibaba"):
            lines.append("toa = false   # no TOA inserted")
    for s in plan.servers:
        port = s.declared_port if declared else s.director_port
        weight = s.declared_weight if declared else s.director_weight
        lines += ["", "  [[service.real_server]]", f"  ip = {_s(s.ip)}", f"  port = {port}",
                  f"  weight = {weight}", f"  mac = {_s(s.mac)}"]
        if plan.mode == "tun":
            lines.append(f"  tun = {_s(plan.tun)}")
            if plan.tun == "gue":
                lines.append(f"  tun_port = {P.GUE_PORT}")
    lines += ["", "[vantage]"]
    for name, role in plan.vantages:
        lines.append(f"{_s(name)} = {_s(role)}")
    return "\n".join(lines) + "\n"
