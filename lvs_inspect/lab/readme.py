"""README.md of a lab fixture folder: the command, the set-up, the fault, what the client got and
what the audit reports, next to what expected.json requires."""
from __future__ import annotations

import json
import platform
import subprocess
from datetime import UTC, datetime

from . import plan as P
from .expected import summarize

MODE_TITLE = {"nat": "NAT", "dr": "DR", "tun": "TUN", "fullnat": "FullNAT"}


def _version(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "?"


def _stats_text(line: str) -> str:
    """A stand-in's JSON statistics line without the fields that only say what it is and how long it ran."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError:
        return line
    if isinstance(d, dict):
        for k in ("event", "seconds"):
            d.pop(k, None)
    return json.dumps(d, sort_keys=True)


def director_text(plan) -> str:
    if plan.director == "kernel":
        what = {
            "nat": "nftables `dnat` in prerouting (conntrack NAT), round robin per connection "
                   "(`numgen inc`); conntrack rewrites the replies back to VIP:80",
            "fullnat": "nftables `dnat` plus `snat` to the LIP toward the real servers (conntrack NAT): "
                       "a FullNAT-shaped path without TOA and without a sequence delta, the TTL "
                       "decremented on both hops",
            "dr": "nftables netdev `fwd ip to RIP` in the ingress hook of its interface: only the MACs "
                  "change and the TTL drops by one; the real server is picked by `jhash ip saddr . tcp sport`",
        }[plan.mode]
        return f"The kernel of the director namespace: {what}. The ruleset is in `director.nft`."
    tun = f" ({plan.tun.upper()})" if plan.tun else ""
    extra = f" with `{' '.join(plan.director_args)}`" if plan.director_args else ""
    return (f"The reference forwarder running live{extra}: `lvs-inspect director -t director.toml "
            f"{' '.join('-i ' + i for i in plan.director_ifaces)}` in the director namespace, "
            f"{MODE_TITLE[plan.mode]}{tun} as the `{plan.director_profile}` profile does it. It reads and "
            f"writes frames with AF_PACKET and keeps the director's kernel off them (a netdev ingress "
            f"drop table); the kernel still answers ARP for the director's addresses and the VIP. "
            f"Its configuration is in `director.toml`.")


def setup_rows(plan) -> list[str]:
    rows = ["| namespace | interface (capture point) | MAC | addresses, routes | settings |",
            "|---|---|---|---|---|",
            f"| client | client (captured) | {P.CLIENT_MAC} | {P.CIP}/24, default via {P.ROUTER_C} | "
            + ("route to the VIP through `toa0` (the TOA injector), rp_filter 0 |" if plan.client_forges_toa else "|"),
            (f"| router | r-client, r-lan{', r-rs' if plan.router_on_rs_segment else ''} | "
            f"{P.ROUTER_C_MAC}, {P.ROUTER_LAN_MAC}{', ' + P.ROUTER_RS_MAC if plan.router_on_rs_segment else ''} | "
            f"{P.ROUTER_C}/24, {P.ROUTER_LAN}/24{', ' + P.ROUTER_RS + '/24' if plan.router_on_rs_segment else ''} | ip_forward 1 (not captured) |")]
    fwd = "ip_forward 1" if plan.director == "kernel" and plan.nat_like else "ip_forward 0"
    if plan.nat_like:
        lip = f", LIP {P.LIP}/32" if plan.mode == "fullnat" else ""
        rows.append(f"| director | director-c, director-r (captured) | {P.DIR_C_MAC}, {P.DIR_R_MAC} | "
                    f"{P.DIR_LAN}/24 + VIP {P.VIP}/32; {P.DIR_RS}/24{lip}; default via {P.ROUTER_LAN} | {fwd} |")
    else:
        rows.append(f"| director | director (captured) | {P.DIR_C_MAC} | {P.DIR_LAN}/24 + VIP {P.VIP}/32, "
                    f"default via {P.ROUTER_LAN} | {fwd} |")
    for s in plan.servers:
        addrs = f"{s.ip}/24" + (f" + VIP {P.VIP}/32 on lo" if s.vip_on_lo else "")
        if s.gateway:
            addrs += f", default via {s.gateway}" + (f" advmss {s.advmss}" if s.advmss else "")
        sets = [f"arp_ignore {s.arp_ignore}", f"arp_announce {s.arp_announce}", f"rp_filter {s.rp_filter}"]
        if s.decap:
            sets.append("tunl0 (TUN device + userspace decapsulation), rp_filter 0 on tunl0")
        sets.append(f"web server on :{s.listen_port}" if s.http else "**no web server**")
        rows.append(f"| {s.name} | {s.name} (captured) | {s.mac} | {addrs} | {', '.join(sets)} |")
    seg = "the real servers' segment" if plan.nat_like else "the LAN (router, director, real servers)"
    rows.append(f"| switch | br0 | 02:05:... | | {seg}, a bridge; not captured |")
    return rows


def readme(res, *, command: str) -> str:
    plan = res.plan
    f = P.FAULTS.get(plan.fault) if plan.fault else None
    title = f"{MODE_TITLE[plan.mode]}{' ' + plan.tun.upper() if plan.tun else ''}, " + \
            (f.title if f else "healthy") + f", {plan.director} director"
    lines = [f"# {plan.case}: {title}", ""]
    lines.append("A real trace from the lab (`lvs-inspect lab run`): Linux network namespaces on one machine, the "
                 "kernel's own TCP and ARP in the client and the real servers, a web server on each real "
                 "server, every capture point recorded with dumpcap. See docs/lab.md for the drawing of "
                 "the topology and the stand-ins.")
    lines += ["", "## Command", "", f"    sudo {command}", "",
              ("Not deterministic (ports, sequence numbers, timestamps and the ARP races change per run); "
              "re-running replaces the files."), ""]
    lines += ["## Set-up", ""] + setup_rows(plan) + [""]
    lines.append(f"Service {P.VIP}:{P.VPORT}/tcp, scheduler {plan.scheduler}, {len(plan.servers)} real servers; "
                 f"declared profile `{plan.profile}`" + (f", TOA kind {plan.toa_declared[0]} length "
                                                         f"{plan.toa_declared[1]}" if plan.toa_declared else "") + ".")
    if plan.mode == "tun":
        lines.append("")
        lines.append(f"TUN stand-in: this kernel has no IPIP/GRE/FOU driver, so each real server runs "
                     f"`python -m lvs_inspect.lab.decap --dev tunl0 --gue-port {P.GUE_PORT}`: it receives the "
                     f"tunnel packets after the kernel's own IP input (raw sockets for IP protocols 4, 41 and "
                     f"47, a UDP socket on {P.GUE_PORT} for GUE; their presence keeps the kernel from answering "
                     f"protocol/port unreachable, as a loaded tunnel module does), strips the outer and tunnel "
                     f"headers as the ipip/gre/fou drivers do (ECN decapsulation included) and writes the inner "
                     f"packet into the TUN device `tunl0`; the kernel then accepts it for the VIP on lo and "
                     f"answers the client directly.")
    if plan.client_post:
        lines.append("")
        lines.append(f"The client uploads {plan.client_post} bytes (POST) per request: the direction that "
                     f"goes through the tunnel.")
    lines += ["", "## Director", "", director_text(plan), ""]
    stats = res.extra.get("director_stats")
    if stats:
        keep = {k: v for k, v in stats.items() if k not in ("event",)}
        lines += ["Its statistics at exit (stderr of `lvs-inspect director`):", "",
                  "    " + json.dumps(keep, sort_keys=True)[:1500], ""]
    aids = [(k, [_stats_text(x) for x in v]) for k, v in sorted(res.extra.items())
            if k.startswith(("decap", "toainject")) and v]
    if aids:
        lines.append("Stand-ins at exit: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in aids) + ".")
        lines.append("")
    lines += ["## Fault", ""]
    if f:
        lines.append(f"**{f.name}**: {f.how}")
    else:
        lines.append("None: the set-up as operators are told to make it.")
    for n in plan.notes:
        lines += ["", n]
    c = res.client
    lines += ["", "## What the client got", "",
              f"{c['requests']} requests, {c['ok']} answered, {c['failed']} failed"
              + (f" ({', '.join(f'{v} {k}' for k, v in sorted(c['errors'].items()))})" if c["errors"] else "")
              + (f"; answers by server: {', '.join(f'{k} {v}' for k, v in sorted(c['servers'].items()))}"
                 if c["servers"] else "") + "."]
    s = res.report["summary"]
    lines += ["", "## What the audit reports", "",
              "    lvs-inspect audit trace.pcapng -t topology.toml --format json", "",
              f"{s['frames']} frames, {s['connections']} connections ({s['complete']} complete, {s['failed']} failed); "
              f"by real server: " + (", ".join(f"{k} {v}" for k, v in sorted(s["by_real_server"].items())) or "none")
              + ".", ""]
    rows = summarize(res.report["findings"])
    if rows:
        lines += ["| code | severity | real server | count |", "|---|---|---|---|"]
        lines += [f"| {c_} | {sev} | {rs} | {n} |" for c_, sev, rs, n in rows]
    else:
        lines.append("No findings.")
    lines += ["", "`expected.json` requires: " + (", ".join(
        f"{e.code}" + (f" for {e.real_server}" if e.real_server else "") for e in plan.findings) or "no finding")
        + ("; allows: " + ", ".join(f"{e.code}" + (f" for {e.real_server}" if e.real_server else "")
                                     for e in plan.may) if plan.may else "")
        + "; every other rule must stay quiet.", ""]
    for e in plan.findings + plan.may:
        lines.append(f"- {e.code}: {e.why}.")
    lines.append("")
    if res.problems:
        lines.append("**The audit disagrees with expected.json:**")
        lines += [f"- {p}" for p in res.problems]
    else:
        lines.append("The audit agrees with expected.json.")
    cmds = res.extra.get("commands")
    if cmds:
        lines += ["", "## Set-up commands", "",
                  ("<details><summary>Every command the run made, in order (namespaces <code>lab-ROLE</code> "
                  "stand for the run's <code>lvslabPID-ROLE</code>; <code>&amp;</code>: in the background)</summary>"),
                  "", "```"] + cmds + ["```", "", "</details>"]
    lines += ["", "## Frames per capture point", "", "| capture point | frames |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in res.frames_per_vantage.items()]
    lines += ["", f"trace.pcapng: {res.trace_bytes} bytes.", "", "## Tools", "",
              f"- kernel: {platform.system()} {platform.release()}",
              f"- {_version(['nft', '--version'])}",
              f"- {_version(['dumpcap', '--version'])}",
              f"- Python {platform.python_version()} (web server, client, stand-ins)",
              "", (f"Captured on {datetime.now(UTC).strftime('%Y-%m-%d')}; documentation addresses and "
                  "02: MACs only."), ""]
    return "\n".join(lines)
