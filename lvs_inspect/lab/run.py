"""``lvs-inspect lab run``: build a case's namespaces, make real requests, capture every vantage
point, write the fixture folder and audit it.

Order of a run (every step inside ``try``/``finally``: the namespaces go whatever happens):

1. namespaces and links (:mod:`.netns`), addresses, routes and sysctls per :class:`~.plan.Plan`;
2. the real servers' web servers (and, for TUN, the userspace decapsulation end), the client's
   TOA injector when the fault needs one;
3. the director: the nftables ruleset (:mod:`.kernel`) or ``lvs-inspect director`` live;
4. one dumpcap per namespace on its captured interfaces (named for their role);
5. the client's requests (real kernel TCP); a short wait for the last FINs; captures stopped;
6. the captures merged into ``trace.pcapng``; ``topology.toml``, ``expected.json``, the
   director's configuration and ``README.md`` written; the trace audited against expected.json.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import plan as P
from .expected import compare, expected_dict
from .kernel import ruleset
from .netns import Interrupted, LabError, Netlab, install_signal_handlers
from .plan import Plan
from .topo import topology_toml

MAX_TRACE_BYTES = 400_000
TOOLS = ("ip", "nft", "dumpcap", "mergecap")


@dataclass
class RunResult:
    out: Path
    plan: Plan
    client: dict
    report: dict
    problems: list[str]
    attempts: int = 1
    trace_bytes: int = 0
    frames_per_vantage: dict[str, int] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def agrees(self) -> bool:
        return not self.problems


def check_environment(plan: Plan) -> None:
    """Root and the tools; LabError with the one thing that is missing."""
    if os.geteuid() != 0:
        raise PermissionError("lab run needs root: it creates network namespaces, loads nftables "
                              "rules and captures packets (run it with sudo)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise LabError(f"{', '.join(missing)} not found: install iproute2, nftables and wireshark's "
                       "dumpcap/mergecap (Debian: apt-get install iproute2 nftables tshark)")
    if not Path("/dev/net/tun").exists() and (plan.mode == "tun" or plan.client_forges_toa):
        raise LabError("/dev/net/tun is missing: the TUN stand-ins need the tun driver")


def director_command_available() -> str | None:
    """None when ``lvs-inspect director`` exists, else why not."""
    try:
        import importlib
        importlib.import_module("lvs_inspect.cli.director")
    except ModuleNotFoundError as e:
        if e.name == "lvs_inspect.cli.director":
            return ("the reference forwarder's live command (`lvs-inspect director`, "
                    "lvs_inspect/cli/director.py) is not installed in this tree: use --director kernel")
        raise
    return None


# ============================================================================ building

def _switch_mac(i: int) -> str:
    return f"02:05:00:00:00:{i:02x}"


def build(lab: Netlab, plan: Plan) -> None:
    for role in ("c", "r", "d", "sw", *[s.name for s in plan.servers]):
        lab.add_ns(role)
    # links -------------------------------------------------------------
    lab.veth("c", "client", P.CLIENT_MAC, "r", "r-client", P.ROUTER_C_MAC)
    ports = []
    if plan.nat_like:
        lab.veth("r", "r-lan", P.ROUTER_LAN_MAC, "d", "director-c", P.DIR_C_MAC)
        lab.veth("d", "director-r", P.DIR_R_MAC, "sw", "sw-d", _switch_mac(2))
        ports.append("sw-d")
        if plan.router_on_rs_segment:
            lab.veth("r", "r-rs", P.ROUTER_RS_MAC, "sw", "sw-r", _switch_mac(1))
            ports.append("sw-r")
    else:
        lab.veth("r", "r-lan", P.ROUTER_LAN_MAC, "sw", "sw-r", _switch_mac(1))
        lab.veth("d", "director", P.DIR_C_MAC, "sw", "sw-d", _switch_mac(2))
        ports += ["sw-r", "sw-d"]
    for i, s in enumerate(plan.servers):
        lab.veth(s.name, s.name, s.mac, "sw", f"sw-{s.name}", _switch_mac(0x10 + i + 1))
        ports.append(f"sw-{s.name}")
    lab.bridge("sw", "br0", ports)

    # client ---------------------------------------------------------------
    lab.ip("c", "addr", "add", f"{P.CIP}/24", "dev", "client")
    lab.ip("c", "link", "set", "client", "up")
    lab.ip("c", "route", "add", "default", "via", P.ROUTER_C)

    # router ---------------------------------------------------------------
    lab.sysctl("r", **{"net.ipv4.ip_forward": 1})
    lab.ip("r", "addr", "add", f"{P.ROUTER_C}/24", "dev", "r-client")
    lab.ip("r", "addr", "add", f"{P.ROUTER_LAN}/24", "dev", "r-lan")
    lab.ip("r", "link", "set", "r-client", "up")
    lab.ip("r", "link", "set", "r-lan", "up")
    if plan.router_on_rs_segment:
        lab.ip("r", "addr", "add", f"{P.ROUTER_RS}/24", "dev", "r-rs")
        lab.ip("r", "link", "set", "r-rs", "up")

    # director --------------------------------------------------------------
    kernel_forwards = plan.director == "kernel" and plan.nat_like
    lab.sysctl("d", **{"net.ipv4.ip_forward": 1 if kernel_forwards else 0,
                       "net.ipv4.conf.all.send_redirects": 0})
    if plan.nat_like:
        lab.ip("d", "addr", "add", f"{P.DIR_LAN}/24", "dev", "director-c")
        lab.ip("d", "addr", "add", f"{P.VIP}/32", "dev", "director-c")
        lab.ip("d", "addr", "add", f"{P.DIR_RS}/24", "dev", "director-r")
        if plan.mode == "fullnat":
            lab.ip("d", "addr", "add", f"{P.LIP}/32", "dev", "director-r")
        lab.ip("d", "link", "set", "director-c", "up")
        lab.ip("d", "link", "set", "director-r", "up")
    else:
        lab.ip("d", "addr", "add", f"{P.DIR_LAN}/24", "dev", "director")
        lab.ip("d", "addr", "add", f"{P.VIP}/32", "dev", "director")
        lab.ip("d", "link", "set", "director", "up")
    lab.ip("d", "route", "add", "default", "via", P.ROUTER_LAN)

    # real servers ------------------------------------------------------------
    for s in plan.servers:
        n = s.name
        values = {"net.ipv4.conf.all.rp_filter": s.rp_filter, f"net.ipv4.conf.{n}.rp_filter": s.rp_filter}
        if s.arp_ignore:
            values.update({"net.ipv4.conf.all.arp_ignore": s.arp_ignore, f"net.ipv4.conf.{n}.arp_ignore": s.arp_ignore})
        if s.arp_announce:
            values.update({"net.ipv4.conf.all.arp_announce": s.arp_announce,
                           f"net.ipv4.conf.{n}.arp_announce": s.arp_announce})
        lab.sysctl(n, **values)
        lab.ip(n, "addr", "add", f"{s.ip}/24", "dev", n)
        if s.vip_on_lo:
            lab.ip(n, "addr", "add", f"{P.VIP}/32", "dev", "lo")
        lab.ip(n, "link", "set", n, "up")
        if s.gateway:
            route = ["route", "add", "default", "via", s.gateway]
            if s.advmss:
                route += ["advmss", str(s.advmss)]
            lab.ip(n, *route)


def start_services(lab: Netlab, plan: Plan, py: str, size: int) -> None:
    for s in plan.servers:
        if s.decap:
            # creates tunl0 and brings it up, as loading the ipip module and `ip link set tunl0 up` do
            proc = lab.spawn(f"decap-{s.name}", s.name, [py, "-m", "lvs_inspect.lab.decap", "--dev", "tunl0",
                                                         "--gue-port", str(P.GUE_PORT)], pipe_stdout=True)
            lab.wait_line(proc, "ready")
            lab.sysctl(s.name, **{"net.ipv4.conf.tunl0.rp_filter": 0})
        if s.http:
            proc = lab.spawn(f"httpd-{s.name}", s.name, [py, "-m", "lvs_inspect.lab.httpd", "0.0.0.0",
                                                         str(s.listen_port), s.name, "--size", str(size)],
                             pipe_stdout=True)
            lab.wait_line(proc, "ready")
    if plan.client_forges_toa:
        proc = lab.spawn("toainject", "c", [py, "-m", "lvs_inspect.lab.toainject", "--dev", "toa0", "--out", "client",
                                            "--gw-mac", P.ROUTER_C_MAC, "--addr", P.FORGED_TOA_ADDR,
                                            "--port", str(P.FORGED_TOA_PORT)], pipe_stdout=True)
        lab.wait_line(proc, "ready")
        # room for the 8 option bytes in a full-size segment; the route to the VIP goes through the
        # injector, the replies come back on `client` (rp_filter 0: that is asymmetric on purpose)
        lab.ip("c", "link", "set", "toa0", "mtu", "1492", "up")
        lab.sysctl("c", **{"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.client.rp_filter": 0,
                           "net.ipv4.conf.toa0.rp_filter": 0})
        lab.ip("c", "route", "add", f"{P.VIP}/32", "dev", "toa0", "src", P.CIP)


def start_director(lab: Netlab, plan: Plan, py: str, work: Path):
    if plan.director == "kernel":
        lab.nft("d", ruleset(plan), "director.nft")
        return None
    why = director_command_available()
    if why:
        raise LabError(why)
    cmd = [py, "-m", "lvs_inspect", "director", "-t", str(work / "director.toml")]
    for i in plan.director_ifaces:
        cmd += ["-i", i]
    cmd += plan.director_args
    proc = lab.spawn("director", "d", cmd, pipe_stdout=True)
    lab.wait_line(proc, "ready", timeout=20)
    return proc


def start_captures(lab: Netlab, plan: Plan, work: Path) -> list[tuple[object, Path]]:
    groups: list[tuple[str, list[str]]] = [("c", ["client"]), ("d", plan.director_ifaces)]
    groups += [(s.name, [s.name]) for s in plan.servers]
    caps = []
    for role, ifaces in groups:
        path = work / f"cap-{role}.pcapng"
        cmd = ["dumpcap", "-q", "-w", str(path)]
        for i in ifaces:
            cmd += ["-i", i]
        proc = lab.spawn(f"dumpcap-{role}", role, cmd)
        caps.append((proc, path))
    for proc, path in caps:
        lab.wait_file(proc, path)
    time.sleep(0.3)
    return caps


def run_client(lab: Netlab, plan: Plan, py: str, timeout: float) -> dict:
    cmd = [py, "-m", "lvs_inspect.lab.client", P.VIP, str(P.VPORT), "-n", str(plan.requests),
           "--timeout", str(timeout)]
    if plan.client_post:
        cmd += ["--post", str(plan.client_post)]
    proc = lab.spawn("client", "c", cmd, pipe_stdout=True)
    try:
        out, _ = proc.popen.communicate(timeout=plan.requests * (timeout + 2) + 15)
    except subprocess.TimeoutExpired:
        raise LabError("the client did not finish in time") from None
    lines = [json.loads(x) for x in out.decode().splitlines() if x.strip().startswith("{")]
    summary = next((x["summary"] for x in lines if "summary" in x), None)
    if summary is None:
        raise LabError(f"the client failed (exit {proc.popen.returncode}): {proc.log_text()}")
    summary["results"] = [x for x in lines if "summary" not in x]
    return summary


# ============================================================================ the run

def run_case(plan: Plan, out: Path, *, command: str, verbose: bool = False, log=print,
             size: int = 2000, client_timeout: float = 2.0, retries: int = 2,
             python: str | None = None) -> RunResult:
    """Run ``plan`` and write the fixture folder ``out``; retried (up to ``retries`` more times)
    when a scheduler that hashes sent no connection to the server the fault is about."""
    check_environment(plan)
    if plan.director == "forwarder":
        why = director_command_available()
        if why:
            raise LabError(why)
    attempt = 0
    while True:
        attempt += 1
        result = _run_once(plan, out, command=command, verbose=verbose, log=log, size=size,
                           client_timeout=client_timeout, python=python)
        result.attempts = attempt
        starved = _starved_servers(plan, result)
        if result.agrees or not starved or attempt > retries:
            return result
        log(f"lab: the {plan.scheduler} scheduler sent no connection to {', '.join(starved)}; running again")


def _starved_servers(plan: Plan, result: RunResult) -> list[str]:
    if plan.scheduler != "sh":
        return []
    got = {str(k).split(":")[0] for k, v in result.report["summary"].get("by_real_server", {}).items() if v}
    about = {e.real_server for e in plan.findings if e.real_server}
    return sorted(a for a in about if a not in got)


def _run_once(plan: Plan, out: Path, *, command: str, verbose: bool, log, size: int,
              client_timeout: float, python: str | None) -> RunResult:
    py = python or sys.executable
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="lvslab-"))
    restore = install_signal_handlers()
    director_out: list[str] = []
    extra: dict = {}
    try:
        (work / "director.toml").write_text(topology_toml(plan, which="director"))
        with Netlab(work, verbose=verbose, log=log) as lab:
            build(lab, plan)
            start_services(lab, plan, py, size)
            director = start_director(lab, plan, py, work)
            caps = start_captures(lab, plan, work)
            client = run_client(lab, plan, py, client_timeout)
            time.sleep(0.6)                     # the last FIN/ACKs and TIME_WAIT ACKs
            for proc, _path in caps:
                lab.stop(proc)
            if plan.director == "kernel":
                extra["ruleset_live"] = lab.nsx("d", "nft", "list", "ruleset", record=False).stdout
            if director is not None:
                rc = lab.stop(director)
                director_out = director.lines
                for line in reversed(director.log_text(limit=20000).splitlines()):
                    if "director-stats" in line and line.strip().startswith("{"):
                        try:
                            extra["director_stats"] = json.loads(line)
                        except json.JSONDecodeError:
                            pass
                        break
                if rc not in (0, None, -15, 143):
                    log(f"lab: the director exited with status {rc}: {director.log_text()}")
            for proc in lab.procs:
                if proc.name.startswith(("decap", "toainject")):
                    lab.stop(proc)
                    # their statistics: one JSON line at exit (the decapsulator's on stderr, in the log)
                    extra[proc.name] = [x for x in proc.log_text(limit=20000).splitlines() if x.startswith("{")]
        extra["commands"] = [c.replace(lab.prefix + "-", "lab-").replace(str(work) + "/", "").replace(py, "python3")
                             for c in lab.commands]
        trace = out / "trace.pcapng"
        files = [str(p) for _proc, p in caps]
        r = subprocess.run(["mergecap", "-w", str(trace), *files], capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise LabError(f"mergecap failed: {r.stderr.strip()}")
    finally:
        restore()
        shutil.rmtree(work, ignore_errors=True)

    trace_bytes = trace.stat().st_size
    if trace_bytes > MAX_TRACE_BYTES:
        log(f"lab: warning: {trace} is {trace_bytes} bytes (more than {MAX_TRACE_BYTES}): use fewer --requests")
    extra["director_output"] = director_out
    return finish(plan, out, client, command=command, trace_bytes=trace_bytes, extra=extra)


def finish(plan: Plan, out: Path, client: dict, *, command: str, trace_bytes: int, extra: dict) -> RunResult:
    """Write topology.toml, the director's configuration, expected.json; audit; write README.md."""
    from ..checks.engine import audit, namespaces
    from ..checks.rules import load_rules
    from ..resources import rules_dir
    from .readme import readme

    (out / "topology.toml").write_text(topology_toml(plan, which="declared", command=command))
    for stale in ("director.toml", "director.nft"):
        (out / stale).unlink(missing_ok=True)
    if plan.director == "kernel":
        (out / "director.nft").write_text(ruleset(plan))
    else:
        (out / "director.toml").write_text(topology_toml(plan, which="director"))
    codes = [r.code for r in load_rules([rules_dir()], namespaces()) if not r.deprecated]
    expected = expected_dict(plan, codes)
    (out / "expected.json").write_text(json.dumps(expected, indent=2) + "\n")

    result = audit([str(out / "trace.pcapng")], topology_path=str(out / "topology.toml"))
    report = result.to_json_dict()
    problems = compare(expected, report["findings"])
    per_vantage = vantage_counts(out / "trace.pcapng")
    res = RunResult(out=out, plan=plan, client=client, report=report, problems=problems,
                    trace_bytes=trace_bytes, frames_per_vantage=per_vantage, extra=extra)
    (out / "README.md").write_text(readme(res, command=command))
    return res


def vantage_counts(trace: Path) -> dict[str, int]:
    import numpy as np

    from ..capture import read_table
    t = read_table([str(trace)])
    ids, counts = np.unique(t["iface"], return_counts=True)
    names = {v.id: v.name for v in t.vantages}
    return {names[int(i)]: int(n) for i, n in zip(ids, counts)}


def format_command(argv: list[str]) -> str:
    return "lvs-inspect " + " ".join(shlex.quote(a) for a in argv)


__all__ = ["Interrupted", "LabError", "RunResult", "check_environment", "format_command", "run_case"]
