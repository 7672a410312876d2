"""What a lab case is: the modes, the faults, the two directors, the addresses, and — for each
combination — every setting of every host and the findings a correct audit must report.

Nothing here touches the system: :func:`make_plan` turns ``(mode, fault, director, profile,
tun)`` into a :class:`Plan` that :mod:`lvs_inspect.lab.run` builds and that
:mod:`lvs_inspect.lab.topo` writes as topology files. A fault is a difference between what the
operator declares (``topology.toml``, the file the audit is given) and what the hosts really do
(sysctls, routes, listeners, the director's own configuration), exactly as it happens in the
field.

Addresses (documentation ranges only) and MACs (locally administered)::

    client 203.0.113.10 --- 203.0.113.1 router 192.0.2.1 --- LAN 192.0.2.0/24
        DR/TUN: director 192.0.2.2 (+ VIP 192.0.2.100), rs1 192.0.2.11, rs2 192.0.2.12 on the LAN
        NAT/FullNAT: director 192.0.2.2 (+ VIP) on the LAN, 198.51.100.1 (+ LIP 198.51.100.200)
                     on the real servers' segment 198.51.100.0/24: rs1 .11, rs2 .12 (port 8080)
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

MODES = ("nat", "dr", "tun", "fullnat")
DIRECTORS = ("forwarder", "kernel")
PROFILES = ("linux", "linux-legacy", "alibaba", "dpvs")
TUN_TYPES = ("ipip", "gue", "gre")
TUN_OVERHEAD = {"ipip": 20, "gre": 24, "gue": 32}     # SEMANTICS §1.3 (IPv4 outer)
GUE_PORT = 6080

# ----------------------------------------------------------------------------- addresses
CIP = "203.0.113.10"
CLIENT_MAC = "02:0c:00:00:00:10"
ROUTER_C = "203.0.113.1"            # the client's gateway
ROUTER_C_MAC = "02:0e:00:00:00:01"
ROUTER_LAN = "192.0.2.1"            # the LAN's gateway (and the real servers' in DR/TUN)
ROUTER_LAN_MAC = "02:0e:00:00:00:02"
ROUTER_RS = "198.51.100.254"        # NAT rs-wrong-gateway: the router also on the RS segment
ROUTER_RS_MAC = "02:0e:00:00:00:03"
VIP = "192.0.2.100"
VPORT = 80
DIR_LAN = "192.0.2.2"
DIR_C_MAC = "02:0d:00:00:00:01"
DIR_RS = "198.51.100.1"             # NAT/FullNAT: the director's address on the RS segment (DIP)
DIR_R_MAC = "02:0d:00:00:00:02"
LIP = "198.51.100.200"
FORGED_TOA_ADDR = "203.0.113.66"    # toa-forged: the address the client claims
FORGED_TOA_PORT = 4242
RS_MACS = ("02:0a:00:00:00:11", "02:0a:00:00:00:12")


def rs_ips(mode: str) -> tuple[str, str]:
    return ("192.0.2.11", "192.0.2.12") if mode in ("dr", "tun") else ("198.51.100.11", "198.51.100.12")


# ----------------------------------------------------------------------------- faults
@dataclass(frozen=True)
class Fault:
    name: str
    title: str
    modes: tuple[str, ...]
    directors: tuple[str, ...]
    how: str                  # how the lab makes it (README)
    why_only: str = ""        # why some modes/directors are left out (lab list)
    director_option: str = "" # an option of `lvs-inspect director` the fault needs


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("arp-leak", "rs1 answers ARP for the VIP", ("dr", "tun"), DIRECTORS,
          "rs1 keeps arp_ignore=0 and arp_announce=0 (the defaults: the sysctls were never set), "
          "so it answers the router's ARP request for the VIP it holds on lo, racing the director."),
    Fault("arp-announce", "rs1 announces the VIP in its ARP requests", ("dr", "tun"), DIRECTORS,
          "rs1 sets arp_ignore=1 but leaves arp_announce=0: when it resolves its gateway to send a "
          "reply whose source is the VIP, its ARP request carries the VIP as sender address."),
    Fault("rs-no-vip", "rs2 does not hold the VIP", ("dr", "tun"), DIRECTORS,
          "rs2 has no VIP on lo: the frames the director sends it are not for any of its addresses "
          "and, with ip_forward=0, are dropped silently; the client retries and times out."),
    Fault("rs-wrong-gateway", "rs1's replies bypass the director", ("nat",), DIRECTORS,
          "rs1's default route points at the router (198.51.100.254) instead of the director: "
          "its SYN-ACKs leave with source RIP:8080 straight to the client, which resets them.",
          "only NAT routes replies back through the director (FullNAT replies go to the LIP)"),
    Fault("rs-down", "nothing listens on rs2", MODES, DIRECTORS,
          "rs2's web server is not running: rs2 answers every SYN with a RST."),
    Fault("no-toa", "the director inserts no TOA", ("fullnat",), ("forwarder",),
          "the director runs with `toa = false` while topology.toml expects the profile's TOA "
          "(kind 254, 8 bytes): the real servers' TOA module sees the LIP as the client.",
          "TOA is inserted only by the reference forwarder (the kernel has no TOA)"),
    Fault("toa-wrong", "the TOA carries the wrong client port", ("fullnat",), ("forwarder",),
          "the director writes the client port into the TOA in host byte order "
          "(`lvs-inspect director --toa-port-byteorder host`), so the real servers log a wrong port.",
          "TOA is inserted only by the reference forwarder", director_option="--toa-port-byteorder"),
    Fault("toa-forged", "the client sends its own TOA option", ("fullnat", "nat"), DIRECTORS,
          "the client inserts a TOA (kind 254: 203.0.113.66:4242) into every TCP segment it sends "
          "to the VIP: its kernel's route to the VIP goes into a TUN device, a userspace injector "
          "adds the option and transmits the frames on the client's interface."),
    Fault("wrong-port", "the director sends rs2's connections to the wrong port", ("nat", "fullnat"), DIRECTORS,
          "the director's real-server entry for rs2 says port 80 while the application listens on "
          "8080 (ipvsadm -a ... -r 198.51.100.12:80): rs2 resets every connection.",
          "only NAT and FullNAT translate ports"),
    Fault("mtu", "client segments do not fit into the tunnel", ("tun",), ("forwarder",),
          "the real servers do not lower their advertised MSS for the tunnel overhead, and the "
          "client uploads 3000 bytes: its full-size segments plus the tunnel header exceed the "
          "director's 1500-byte MTU, the director answers ICMP fragmentation-needed.",
          "the kernel cannot encapsulate here (no IPIP/GRE driver)"),
    Fault("weight-zero-traffic", "a quiesced server still gets connections", MODES, DIRECTORS,
          "topology.toml declares rs2 with weight 0 (quiesced) but the director still schedules "
          "it with weight 1 (the change was never applied)."),
    Fault("ttl", "the director does not decrement the TTL", ("nat", "dr", "tun"), ("forwarder",),
          "the director behaves like a kernel older than 4.10 (it runs the linux-legacy profile: "
          "no TTL decrement toward the real servers) while topology.toml declares profile linux.",
          "the kernel director always decrements (nftables cannot add to a TTL)"),
)}


def director_modes(director: str) -> tuple[str, ...]:
    return MODES if director == "forwarder" else ("nat", "dr", "fullnat")


def supported(mode: str, fault: str | None, director: str) -> str | None:
    """None when the combination can be run, else why not."""
    if mode not in MODES:
        return f"unknown mode '{mode}' (one of {', '.join(MODES)})"
    if director not in DIRECTORS:
        return f"unknown director '{director}' (one of {', '.join(DIRECTORS)})"
    if mode not in director_modes(director):
        return "the kernel cannot play a TUN director here (no IPIP/GRE/FOU driver): use --director forwarder"
    if fault is None:
        return None
    f = FAULTS.get(fault)
    if f is None:
        from difflib import get_close_matches
        m = get_close_matches(fault, list(FAULTS), n=1)
        hint = f" (did you mean '{m[0]}'?)" if m else ""
        return f"unknown fault '{fault}'{hint}; `lvs-inspect lab list` shows them"
    if mode not in f.modes:
        return f"fault '{fault}' applies to {', '.join(f.modes)}, not {mode}" + (f": {f.why_only}" if f.why_only else "")
    if director not in f.directors:
        return f"fault '{fault}' needs --director {' or '.join(f.directors)}" + (f": {f.why_only}" if f.why_only else "")
    if director == "forwarder" and f.director_option:
        why = director_option_missing(f.director_option)
        if why:
            return f"fault '{fault}' needs {why}"
    return None


def director_option_missing(option: str) -> str | None:
    """None when ``lvs-inspect director`` accepts ``option``, else what is missing."""
    import argparse
    import importlib
    try:
        mod = importlib.import_module("lvs_inspect.cli.director")
    except ModuleNotFoundError as e:
        if e.name != "lvs_inspect.cli.director":
            raise
        return "`lvs-inspect director` (lvs_inspect/cli/director.py), which this tree does not have"
    parser = argparse.ArgumentParser()
    mod.register(parser.add_subparsers())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    director = sub.choices.get("director")
    if director is None or option not in director._option_string_actions:
        return f"`lvs-inspect director {option}`, which the reference forwarder does not offer yet"
    return None


# ----------------------------------------------------------------------------- the plan
@dataclass
class RealServerPlan:
    name: str                 # rs1, rs2 (also its interface and capture point)
    ip: str
    mac: str
    listen_port: int          # the application's port
    http: bool = True         # the web server runs
    vip_on_lo: bool = False   # DR/TUN
    arp_ignore: int = 0
    arp_announce: int = 0
    rp_filter: int = 1        # conf/all and the interface (a distribution default)
    gateway: str | None = None
    advmss: int | None = None          # TUN: MSS advertised toward the clients
    decap: bool = False                # TUN: userspace decapsulation end
    declared_port: int = 0             # topology.toml
    declared_weight: int = 1
    director_port: int = 0             # what the director really uses
    director_weight: int = 1


@dataclass
class Expect:
    code: str
    real_server: str | None   # the server's IP, or None: any / not about one server
    why: str


@dataclass
class Plan:
    mode: str
    fault: str | None
    director: str
    profile: str              # declared profile (topology.toml)
    director_profile: str     # what the director runs (forwarder) / behaves as (kernel)
    tun: str | None
    requests: int
    servers: list[RealServerPlan]
    scheduler: str = "rr"
    toa_declared: tuple[int, int] | None = None     # (kind, length) in topology.toml
    toa_director: tuple[int, int] | None = None     # what the forwarder inserts
    client_post: int = 0                            # bytes uploaded per request (0: GET)
    client_forges_toa: bool = False
    router_on_rs_segment: bool = False
    director_args: list[str] = field(default_factory=list)
    findings: list[Expect] = field(default_factory=list)
    may: list[Expect] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # README: caveats of this case

    @property
    def case(self) -> str:
        parts = [self.mode]
        if self.tun and self.tun != "ipip":
            parts.append(self.tun)
        if self.profile != default_profile(self.mode, self.director):
            parts.append(self.profile)
        parts.append(self.fault or "healthy")
        parts.append(self.director)
        return "-".join(parts)

    @property
    def nat_like(self) -> bool:
        return self.mode in ("nat", "fullnat")

    @property
    def vantages(self) -> list[tuple[str, str]]:
        """(capture point = interface name, role) in capture order."""
        out = [("client", "client")]
        if self.nat_like:
            out += [("director-c", "director:client-side"), ("director-r", "director:rs-side")]
        else:
            out += [("director", "director")]
        out += [(s.name, f"rs:{s.ip}") for s in self.servers]
        return out

    @property
    def director_ifaces(self) -> list[str]:
        return ["director-c", "director-r"] if self.nat_like else ["director"]

    @property
    def director_macs(self) -> list[str]:
        return [DIR_C_MAC, DIR_R_MAC] if self.nat_like else [DIR_C_MAC]

    @property
    def director_ips(self) -> list[str]:
        return [DIR_LAN, DIR_RS] if self.nat_like else [DIR_LAN]

    def server(self, name: str) -> RealServerPlan:
        return next(s for s in self.servers if s.name == name)


def default_profile(mode: str, director: str) -> str:
    """FullNAT by the forwarder is DPVS-like by default; everything else is the Linux kernel."""
    return "dpvs" if mode == "fullnat" and director == "forwarder" else "linux"


def make_plan(mode: str, fault: str | None = None, director: str = "forwarder", *,
              profile: str | None = None, tun: str | None = None, requests: int = 10) -> Plan:
    """The complete set-up of one case; ``ValueError`` for a combination the lab cannot run."""
    why = supported(mode, fault, director)
    if why:
        raise ValueError(why)
    profile = profile or default_profile(mode, director)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile '{profile}' (one of {', '.join(PROFILES)})")
    if director == "kernel" and profile != "linux":
        raise ValueError("the kernel director behaves as Linux >= 4.10: use --profile linux "
                         "(or --director forwarder for other profiles)")
    if tun is not None and mode != "tun":
        raise ValueError("--tun applies to --mode tun only")
    if mode == "tun":
        tun = tun or "ipip"
        if tun not in TUN_TYPES:
            raise ValueError(f"unknown tunnel '{tun}' (one of {', '.join(TUN_TYPES)})")
    if requests < 1:
        raise ValueError("--requests must be at least 1")

    ips = rs_ips(mode)
    servers = []
    for i, (ip, mac) in enumerate(zip(ips, RS_MACS), start=1):
        port = 8080 if mode in ("nat", "fullnat") else VPORT
        s = RealServerPlan(name=f"rs{i}", ip=ip, mac=mac, listen_port=port, declared_port=port,
                           director_port=port)
        if mode == "nat":
            s.gateway = DIR_RS
        elif mode in ("dr", "tun"):
            # the operators' recipe (SEMANTICS §5.1): VIP/32 on lo, arp_ignore=1, arp_announce=2
            s.vip_on_lo, s.arp_ignore, s.arp_announce, s.gateway = True, 1, 2, ROUTER_LAN
        if mode == "tun":
            s.decap = True
            s.rp_filter = 0          # the decapsulated packet "arrives" on tunl0 (SEMANTICS §2)
            s.advmss = 1500 - 40 - TUN_OVERHEAD[tun]
        servers.append(s)

    p = Plan(mode=mode, fault=fault, director=director, profile=profile, director_profile=profile,
             tun=tun, requests=requests, servers=servers)
    if mode == "fullnat" and profile in ("dpvs", "alibaba"):
        p.toa_declared = p.toa_director = (254, 8)
    if fault in ("no-toa", "toa-wrong") and p.toa_declared is None:
        raise ValueError(f"fault '{fault}' is about the TOA the director inserts: use --profile dpvs or "
                         f"alibaba (profile {profile} has none)")
    if mode == "tun":
        p.client_post = 3000         # uploads: the direction that goes through the tunnel
    if mode == "fullnat" and director == "kernel":
        p.notes.append("The kernel FullNAT stand-in (nftables dnat + snat to the LIP) inserts no TOA, keeps "
                       "the client's sequence numbers and decrements the TTL both ways: topology.toml "
                       "declares profile linux and no TOA, which is what an audit must check it against.")
    if director == "kernel" and mode == "dr":
        p.scheduler = "sh"
        p.notes.append("The kernel DR director chooses the real server by a hash of the client address and "
                       "port (nftables jhash), so the split between rs1 and rs2 varies from run to run.")

    rs1, rs2 = servers
    a, b = rs1.ip, rs2.ip
    f = fault
    if f == "arp-leak":
        rs1.arp_ignore = rs1.arp_announce = 0
        p.findings.append(Expect("DR101", a, "rs1's ARP reply for the VIP is captured on rs1"))
        p.may.append(Expect("DR104", a, "only when rs1's ARP reply reaches the router before the "
                                        "director's: then the client's packets go straight to rs1"))
        p.may.append(Expect("DR102", a, "only if rs1 has to resolve the router itself while answering "
                                        "from the VIP (it usually learned the router from the ARP request)"))
    elif f == "arp-announce":
        rs1.arp_announce = 0
        p.findings.append(Expect("DR102", a, "rs1 resolves the router with the VIP as ARP sender address "
                                             "when it sends its first SYN-ACK"))
        p.may.append(Expect("DR104", a, "the router takes rs1's MAC for the VIP from that request once "
                                        "its ARP lock time (1 s) has passed; later connections then go "
                                        "straight to rs1"))
    elif f == "rs-no-vip":
        rs2.vip_on_lo = False
        p.findings.append(Expect("CONN101", b, "rs2 drops the SYNs the director sends it"))
    elif f == "rs-wrong-gateway":
        rs1.gateway = ROUTER_RS
        p.router_on_rs_segment = True
        p.findings.append(Expect("NAT103", a, "rs1's SYN-ACKs (source RIP) reach the client without the director"))
        p.may.append(Expect("CONN103", a, "the client retransmits its SYN after resetting rs1's SYN-ACK; "
                                          "whether a third SYN fits in the client's 2 s timeout varies"))
    elif f == "rs-down":
        rs2.http = False
        p.findings.append(Expect("CONN102", b, "rs2 answers every SYN with a RST"))
    elif f == "no-toa":
        p.toa_director = None
        for s in servers:
            p.findings.append(Expect("TOA101", s.ip, "handshake ACKs reach the server without TOA"))
            p.findings.append(Expect("TOA105", s.ip, "a director configured without TOA does not lower the "
                                                     "SYN-ACK's MSS for it either, which the declared TOA requires"))
    elif f == "toa-wrong":
        p.director_args += ["--toa-port-byteorder", "host"]
        for s in servers:
            p.findings.append(Expect("TOA102", s.ip, "the TOA's port is byte-swapped"))
    elif f == "toa-forged":
        p.client_forges_toa = True
        p.findings.append(Expect("TOA104", None, "every client segment carries kind 254 on the client side"))
        if mode == "fullnat" and p.toa_director is None:
            for s in servers:
                p.findings.append(Expect("TOA102", s.ip, "the client's forged TOA reaches the server unchanged "
                                                         "(the kernel stand-in inserts no TOA of its own)"))
    elif f == "wrong-port":
        rs2.director_port = 80
        code = "NAT101" if mode == "nat" else "FNAT101"
        p.findings.append(Expect(code, b, "the director rewrites rs2's connections to port 80, not 8080"))
        p.findings.append(Expect("CONN102", b, "nothing listens on rs2's port 80: RST"))
    elif f == "mtu":
        for s in servers:
            s.advmss = None
        p.findings.append(Expect("TUN103", None, "the director answers the first full-size upload segment "
                                                 "with ICMP fragmentation-needed (MTU 1500 - tunnel overhead)"))
    elif f == "weight-zero-traffic":
        rs2.declared_weight = 0
        p.findings.append(Expect("SVC101", b, "rs2 is declared with weight 0 but gets connections"))
    elif f == "ttl":
        p.director_profile = "linux-legacy"
        for s in servers:
            p.findings.append(Expect("TTL101", s.ip, "requests reach the server with the client's TTL unchanged"))
    return p


def all_cases() -> list[tuple[str, str | None, str]]:
    """Every (mode, fault, director) the lab can run, healthy first."""
    out = []
    for director in DIRECTORS:
        for mode in MODES:
            if supported(mode, None, director) is None:
                out.append((mode, None, director))
    for name in FAULTS:
        for director in DIRECTORS:
            for mode in MODES:
                if supported(mode, name, director) is None:
                    out.append((mode, name, director))
    return out


def with_requests(plan: Plan, n: int) -> Plan:
    return replace(plan, requests=n)
