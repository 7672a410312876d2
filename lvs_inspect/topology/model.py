"""The model of a load-balancer set-up: services, real servers, the director, the
implementation profile and where each capture point sits.

Everything here is a frozen dataclass built by a loader (TOML, ``ipvsadm``, keepalived) or
by inference from a trace; :func:`validate_topology` checks what the modes allow and raises
:class:`~lvs_inspect.errors.InputError` naming the file, the line and the key of the
offending item (each item carries a :class:`SourcePos`, which takes no part in equality).

Figures in the profiles come from ``SEMANTICS.md`` (section numbers in the comments) and
the sources it cites.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Iterable, Iterator, Mapping

from ..errors import InputError
from ..net import MAC, IPAddress, format_ip_port, parse_ip


# =========================================================================== vocabularies

class Mode(StrEnum):
    """Forwarding method of a real server."""
    NAT = "nat"          # ipvsadm -m, "Masq"
    DR = "dr"            # ipvsadm -g, "Route" (ipvsadm's default)
    TUN = "tun"          # ipvsadm -i, "Tunnel"
    FULLNAT = "fullnat"  # Alibaba LVS / DPVS ipvsadm -b, "FullNat"


class TunType(StrEnum):
    IPIP = "ipip"  # default; IP proto 4 / 41
    GUE = "gue"    # Linux 5.2, UDP to tun_port (SEMANTICS §1.3)
    GRE = "gre"    # Linux 5.3, IP proto 47


class Protocol(StrEnum):
    TCP = "tcp"
    UDP = "udp"


#: tunnel checksum options (ipvsadm --tun-nocsum/--tun-csum/--tun-remcsum); which tunnel
#: types take them follows ipvsadm's tunnel_types_v_options table (ipvsadm.c 1.31)
TUN_FLAGS = ("nocsum", "csum", "remcsum")
TUN_FLAGS_ALLOWED = {TunType.IPIP: (), TunType.GUE: TUN_FLAGS, TunType.GRE: ("nocsum", "csum")}

#: schedulers: kernel IPVS (SEMANTICS §7.1, Kconfig) plus DPVS's consistent hash
SCHEDULERS: dict[str, str] = {
    "rr": "round robin",
    "wrr": "weighted round robin",
    "lc": "least connection",
    "wlc": "weighted least connection (ipvsadm and keepalived default)",
    "lblc": "locality-based least connection",
    "lblcr": "locality-based least connection with replication",
    "dh": "destination hashing",
    "sh": "source hashing",
    "mh": "maglev hashing",
    "sed": "shortest expected delay",
    "nq": "never queue",
    "fo": "weighted failover",
    "ovf": "weighted overflow",
    "twos": "weighted random twos choice",
    "conhash": "consistent hashing (DPVS)",
}
DEFAULT_SCHEDULER = "wlc"

#: scheduler flags (ipvsadm -b) and the scheduler each belongs to (None: any)
SCHED_FLAGS: dict[str, str | None] = {
    "flag-1": None, "flag-2": None, "flag-3": None,
    "sh-fallback": "sh", "sh-port": "sh",
    "mh-fallback": "mh", "mh-port": "mh",
}

#: packets that may carry the TOA option toward the real server (SEMANTICS §4.2):
#: the SYN, the handshake ACK, data segments sent before R's first data byte, a FIN
TOA_PACKETS = ("syn", "ack", "data", "fin")

#: default persistence timeout of ``ipvsadm -p`` without a value and of keepalived's
#: ``persistence_timeout`` without a value: IPVS_SVC_PERSISTENT_TIMEOUT (6*60) in
#: ipvsadm's libipvs/libipvs.h and keepalived's copy of it (ipvsadm(8) says 300: the code wins)
DEFAULT_PERSISTENCE = 360

VANTAGE_KINDS = ("client", "director", "rs", "router", "unknown")
DIRECTOR_SIDES = ("client-side", "rs-side")


def suggest(word: str, choices: Iterable[str], *, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` or ``""``."""
    m = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=cutoff)
    return f" (did you mean '{m[0]}'?)" if m else ""


# =========================================================================== source positions

@dataclass(frozen=True)
class SourcePos:
    """Where an item was read: file, line of the item, and the line and spelling of each
    of its fields (``fields``: (field name, line, key as written in the file))."""

    path: str
    line: int | None = None
    key: str | None = None
    fields: tuple[tuple[str, int | None, str], ...] = ()

    def at(self, name: str) -> tuple[int | None, str | None]:
        for f, line, key in self.fields:
            if f == name:
                return (line if line is not None else self.line), key
        return self.line, self.key

    def error(self, name: str | None, message: str) -> InputError:
        line, key = self.at(name) if name else (self.line, self.key)
        return InputError(self.path, message, line=line, key=key)


def _error(pos: SourcePos | None, name: str | None, message: str, fallback: str = "<topology>") -> InputError:
    if pos is None:
        return InputError(fallback, message, key=name)
    return pos.error(name, message)


# =========================================================================== profiles

@dataclass(frozen=True)
class PerMode:
    """One integer per forwarding mode; ``pm[Mode.NAT]`` reads it."""
    nat: int
    dr: int
    tun: int
    fullnat: int

    def __getitem__(self, mode: Mode | str) -> int:
        return getattr(self, Mode(mode).value)


@dataclass(frozen=True)
class Timeouts:
    """Connection-table timeouts in seconds (``ipvsadm --set tcp tcpfin udp`` sets the first
    three). Field names are the TOML keys of ``[timeouts]``."""
    tcp: int          # ESTABLISHED
    tcpfin: int       # FIN_WAIT
    udp: int
    syn_sent: int
    syn_recv: int
    time_wait: int
    close: int
    close_wait: int
    last_ack: int
    listen: int
    synack: int
    none: int


# SEMANTICS §7.3, [K-TCP] net/netfilter/ipvs/ip_vs_proto_tcp.c tcp_timeouts[];
# `ipvsadm -L --timeout` on a stock kernel prints 900 120 300
KERNEL_TIMEOUTS = Timeouts(tcp=900, tcpfin=120, udp=300, syn_sent=120, syn_recv=60,
                           time_wait=120, close=10, close_wait=60, last_ack=30,
                           listen=120, synack=120, none=2)
# SEMANTICS §7.3: Alibaba LVS [ALI] ip_vs_proto_tcp.c and DPVS [DPVS]
# include/ipvs/proto_tcp.h share these (DPVS's sample config uses one second more)
FULLNAT_LB_TIMEOUTS = Timeouts(tcp=90, tcpfin=7, udp=300, syn_sent=3, syn_recv=30,
                               time_wait=7, close=3, close_wait=7, last_ack=7,
                               listen=120, synack=30, none=2)


@dataclass(frozen=True)
class ToaVariant:
    """The TCP option carrying the client address toward the real server (SEMANTICS §4).

    ``packets``: which client->RS packets carry it (subset of :data:`TOA_PACKETS`)."""

    kind: int = 254
    length: int = 8
    packets: frozenset[str] = frozenset({"ack", "data"})

    @property
    def family(self) -> int:
        """4 for the 8-byte form (port + IPv4), 6 for the 20-byte form."""
        return 4 if self.length == 8 else 6

    @property
    def in_syn(self) -> bool:
        return "syn" in self.packets

    def __str__(self) -> str:
        return f"kind {self.kind} length {self.length}"


@dataclass(frozen=True)
class Profile:
    """What an implementation does on the wire; the checks read their expectations here."""

    name: str
    title: str
    ttl_request: PerMode     # TTL / hop-limit decrement on D->R (TUN: outer TTL = inner after it)
    ttl_reply: PerMode       # decrement on D->C (NAT, FullNAT; DR/TUN replies bypass D)
    seq_delta: bool          # FullNAT remaps the client ISN toward R (D1), SACK shifted too
    mss_adjust: bool         # FullNAT SYN-ACK toward C: MSS reduced by the TOA length
    timestamp_removal: bool  # FullNAT SYN toward R: timestamp option overwritten with NOPs
    rst_on_expiry: bool      # ESTABLISHED entry expiry: LB sends RST to both sides
    toa_packets: frozenset[str]   # default TOA-carrying packets
    toa_v4: ToaVariant | None     # default TOA for IPv4 clients (None: no TOA)
    toa_v6: ToaVariant | None     # default TOA for IPv6 clients
    timeouts: Timeouts
    # FullNAT details the forwarder needs (SEMANTICS §3, §1.4)
    toa_full: str = "skip"        # no option room for TOA: "skip" it (Alibaba) or "prune" options first (DPVS)
    strip_client_toa: bool = False     # a client's own TOA-kind option becomes NOPs (DPVS, PR #925)
    reflect_l2: bool = False      # replies leave by the interface and MAC the client's frame came from
    lport_range: tuple[int, int] | None = None   # local ports per LIP; None: the client's port when free

    @property
    def toa_in_syn(self) -> bool:
        return "syn" in self.toa_packets

    def ttl_decrement(self, mode: Mode | str, hop: str = "request") -> int:
        """TTL decrement D applies on the ``request`` hop (D->R) or the ``reply`` hop (D->C)."""
        return (self.ttl_request if hop == "request" else self.ttl_reply)[mode]

    def default_toa(self, version: int) -> ToaVariant | None:
        return self.toa_v4 if version == 4 else self.toa_v6


PROFILES: dict[str, Profile] = {
    "linux": Profile(
        name="linux", title="Linux kernel IPVS, kernel >= 4.10",
        # SEMANTICS §0/§1.1-1.3: commit 8d8e20e2d7bb "ipvs: Decrement ttl" (v4.10) -1 on
        # D->R in NAT, DR and TUN; the NAT reply is routed by ip_forward (-1). Mainline has no
        # FullNAT: a kernel-forwarded one (nftables dnat+snat, §13) routes both ways (-1).
        ttl_request=PerMode(nat=1, dr=1, tun=1, fullnat=1),
        ttl_reply=PerMode(nat=1, dr=0, tun=0, fullnat=1),
        seq_delta=False, mss_adjust=False, timestamp_removal=False,
        rst_on_expiry=False,           # §1.4/§8 #22: silent expiry after 900 s
        toa_packets=frozenset({"ack", "data"}),
        toa_v4=None, toa_v6=None,      # no TOA in mainline
        timeouts=KERNEL_TIMEOUTS),
    "linux-legacy": Profile(
        name="linux-legacy", title="Linux kernel IPVS, kernel < 4.10",
        # SEMANTICS §0: before 4.10 no decrement on D->R; the NAT reply still goes through
        # ip_forward (-1, §0 [K-CORE]); FullNAT as for "linux" (kernel routing)
        ttl_request=PerMode(nat=0, dr=0, tun=0, fullnat=1),
        ttl_reply=PerMode(nat=1, dr=0, tun=0, fullnat=1),
        seq_delta=False, mss_adjust=False, timestamp_removal=False,
        rst_on_expiry=False,
        toa_packets=frozenset({"ack", "data"}),
        toa_v4=None, toa_v6=None,
        timeouts=KERNEL_TIMEOUTS),
    "alibaba": Profile(
        name="alibaba", title="Alibaba LVS (FullNAT kernel 2.6.32 patch)",
        # SEMANTICS §0/§1.4/§3: FullNAT never touches TTL ([ALI] ip_vs_xmit.c); NAT/DR/TUN are
        # the 2.6.32 kernel's (pre-4.10: no decrement on D->R, NAT reply via ip_forward -1)
        ttl_request=PerMode(nat=0, dr=0, tun=0, fullnat=0),
        ttl_reply=PerMode(nat=1, dr=0, tun=0, fullnat=0),
        seq_delta=True,                # §1.4 tcp ISN remap (secure_tcp_sequence_number)
        mss_adjust=True,               # §1.4 sysctl mss_adjust_entry=1 default
        timestamp_removal=True,        # §1.4 sysctl timestamp_remove_entry=1 default
        rst_on_expiry=True,            # §1.4 conn_expire_tcp_rst=1
        toa_packets=frozenset({"syn", "ack", "data"}),   # §4.2: SYN (if room), ACK, data; not FIN
        toa_v4=ToaVariant(254, 8, frozenset({"syn", "ack", "data"})),    # §4.1 TCPOPT_ADDR
        toa_v6=ToaVariant(253, 20, frozenset({"syn", "ack", "data"})),   # §4.1 TCPOPT_ADDR_V6
        timeouts=FULLNAT_LB_TIMEOUTS,
        toa_full="skip", strip_client_toa=False, reflect_l2=True,      # §3: no pruning, forged TOA passed on
        lport_range=(5000, 65535)),    # §3: lport_min/max, sequential per LIP
    "dpvs": Profile(
        name="dpvs", title="iQIYI DPVS (>= 1.9.6)",
        # SEMANTICS §0/§1.4: no TTL change in any mode unless xmit_ttl is configured
        ttl_request=PerMode(nat=0, dr=0, tun=0, fullnat=0),
        ttl_reply=PerMode(nat=0, dr=0, tun=0, fullnat=0),
        seq_delta=True, mss_adjust=True, timestamp_removal=True,  # §3: always
        rst_on_expiry=True,            # §1.4 tcp_send_rst on ESTABLISHED expiry
        toa_packets=frozenset({"ack", "data", "fin"}),  # §4.2: no SYN since 1.9.6 (30f421d1), FIN allowed (PR #666)
        toa_v4=ToaVariant(254, 8, frozenset({"ack", "data", "fin"})),    # §4.1 TCP_OPT_ADDR
        toa_v6=ToaVariant(254, 20, frozenset({"ack", "data", "fin"})),
        timeouts=FULLNAT_LB_TIMEOUTS,
        toa_full="prune", strip_client_toa=True, reflect_l2=True,      # §3: tcp_in_prune_options, PR #925
        lport_range=(1025, 65535)),    # §3: sapool
}
DEFAULT_PROFILE = "linux"


def get_profile(name: str) -> Profile:
    """The profile called ``name``; ``ValueError`` with a suggestion otherwise."""
    p = PROFILES.get(str(name).strip().lower())
    if p is None:
        raise ValueError(f"unknown profile '{name}'{suggest(name, PROFILES)}; "
                         f"one of {', '.join(PROFILES)}")
    return p


# =========================================================================== the set-up

@dataclass(frozen=True)
class Director:
    """The load balancer itself (all directors of a VRRP pair: list every MAC)."""

    macs: tuple[MAC, ...] = ()          # its MACs on every segment it sits on
    ips: tuple[IPAddress, ...] = ()     # its own addresses (not the VIPs)
    lips: tuple[IPAddress, ...] = ()    # FullNAT local addresses shared by all services
    vrrp_macs: tuple[MAC, ...] = ()     # VRRP virtual MACs (keepalived use_vmac)
    interfaces: tuple[str, ...] = ()    # its interface names (as pcapng if_name shows them)
    learn_lips: bool = False            # FullNAT LIPs unknown: learn them from the trace
    pos: SourcePos | None = field(default=None, compare=False, repr=False)
    note: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        if self.lips and self.learn_lips:
            object.__setattr__(self, "learn_lips", False)

    @property
    def vrrp_mac(self) -> MAC | None:
        return self.vrrp_macs[0] if self.vrrp_macs else None

    @property
    def all_macs(self) -> frozenset[MAC]:
        """Its own MACs and the VRRP virtual MACs: every MAC the director may send from."""
        return frozenset(self.macs) | frozenset(self.vrrp_macs)


@dataclass(frozen=True)
class RealServer:
    ip: IPAddress
    port: int                            # 0: the client's destination port (port-0 / fwmark services)
    weight: int = 1                      # 0 = quiesced: no new connections
    mode: Mode = Mode.DR
    tun: TunType | None = None           # TUN only; None with mode tun: type unknown (ipvsadm -Ln)
    tun_port: int | None = None          # GUE destination port
    tun_flags: str | None = None         # nocsum | csum | remcsum
    mac: MAC | None = None               # learned from the trace when absent
    u_threshold: int = 0                 # ipvsadm -x (0: none)
    l_threshold: int = 0                 # ipvsadm -y
    pos: SourcePos | None = field(default=None, compare=False, repr=False)
    note: str = field(default="", compare=False, repr=False)

    @property
    def family(self) -> int:
        return self.ip.version

    @property
    def quiesced(self) -> bool:
        return self.weight == 0

    @property
    def endpoint(self) -> str:
        return format_ip_port(self.ip, self.port)

    def __str__(self) -> str:
        return f"{self.endpoint} ({self.mode})"


@dataclass(frozen=True)
class Service:
    """A virtual service: ``vip:port/protocol``, or a firewall-mark service.

    A fwmark service has ``vip=None``; ``vips``/``ports`` say what the mark selects when
    known (the marking rules live in the firewall, not in the IPVS table).
    """

    vip: IPAddress | None
    port: int                                  # 0 = all ports (needs persistence)
    protocol: Protocol | None = Protocol.TCP   # None: a fwmark service for any protocol
    real_servers: tuple[RealServer, ...] = ()
    scheduler: str = DEFAULT_SCHEDULER
    sched_flags: tuple[str, ...] = ()          # sorted
    persistence: int = 0                       # seconds, 0 = off
    persistence_prefix: int | None = None      # -M granularity as a prefix length; None = host
    mode: Mode | None = None                   # default for its real servers (None: set on each)
    toa: ToaVariant | None = None              # FullNAT/TCP: the TOA expected on the RS side
    lips: tuple[IPAddress, ...] = ()           # FullNAT local addresses of this service
    fwmark: int | None = None
    vips: tuple[IPAddress, ...] = ()           # fwmark: addresses the mark selects
    ports: tuple[int, ...] = ()                # fwmark: ports the mark selects (empty: all)
    synproxy: bool = False                     # DPVS / Alibaba SYN proxy
    ops: bool = False                          # one-packet scheduling (UDP)
    persistence_engine: str | None = None      # ipvsadm --pe (sip)
    name: str = ""                             # a label (keepalived group name...)
    pos: SourcePos | None = field(default=None, compare=False, repr=False)
    note: str = field(default="", compare=False, repr=False)

    @property
    def key(self) -> str:
        """``203.0.113.100:80/tcp``, ``[2001:db8::1]:80/udp``, ``fwmark:1``."""
        if self.fwmark is not None:
            return f"fwmark:{self.fwmark}"
        proto = self.protocol.value if self.protocol else "any"
        return f"{format_ip_port(self.vip, self.port)}/{proto}"

    def __str__(self) -> str:
        return self.key

    @property
    def addresses(self) -> tuple[IPAddress, ...]:
        """The VIP, or the addresses a fwmark selects."""
        return (self.vip,) if self.vip is not None else self.vips

    @property
    def family(self) -> int | None:
        addrs = self.addresses
        if addrs:
            return addrs[0].version
        fams = {rs.family for rs in self.real_servers if rs.mode is not Mode.TUN}
        return fams.pop() if len(fams) == 1 else None

    @property
    def modes(self) -> frozenset[Mode]:
        return frozenset(rs.mode for rs in self.real_servers)

    def matches(self, addr: IPAddress, port: int, protocol: str | None) -> bool:
        """Does a client packet to ``addr:port/protocol`` belong to this service?"""
        if self.protocol is not None and protocol is not None and self.protocol != protocol:
            return False
        if addr not in self.addresses:
            return False
        if self.fwmark is not None:
            return not self.ports or port in self.ports
        return self.port == 0 or self.port == port

    def real_server(self, ip: IPAddress | str, port: int | None = None) -> RealServer | None:
        a = parse_ip(ip) if isinstance(ip, str) else ip
        for rs in self.real_servers:
            if rs.ip == a and (port is None or rs.port == port):
                return rs
        return None

    def mss_reduction(self, profile: Profile) -> int:
        """Bytes D takes off R's MSS in the SYN-ACK toward C (FullNAT with TOA)."""
        if self.toa is None or not profile.mss_adjust or Mode.FULLNAT not in self.modes:
            return 0
        return self.toa.length


@dataclass(frozen=True)
class VantageRole:
    """Where a capture point sits: ``client``, ``director`` (optionally ``director:client-side``
    / ``director:rs-side``), ``rs:<ip>``, ``router`` or ``unknown``."""

    kind: str
    side: str | None = None
    rs: IPAddress | None = None

    def __str__(self) -> str:
        if self.kind == "rs":
            return f"rs:{self.rs}"
        if self.kind == "director" and self.side:
            return f"director:{self.side}"
        return self.kind

    @classmethod
    def parse(cls, text: str) -> "VantageRole":
        if not isinstance(text, str):
            raise ValueError(f"a vantage role is a string, got {type(text).__name__}")
        s = text.strip()
        head, sep, tail = s.partition(":")
        head_l = head.lower()
        if head_l == "rs":
            if not tail:
                raise ValueError("'rs' needs the real server's address: rs:<ip>")
            return cls("rs", rs=parse_ip(tail))
        if head_l == "director":
            if not sep:
                return cls("director")
            side = tail.lower()
            if side not in DIRECTOR_SIDES:
                raise ValueError(f"unknown director side '{tail}'{suggest(side, DIRECTOR_SIDES)}; "
                                 f"one of {', '.join(DIRECTOR_SIDES)}")
            return cls("director", side=side)
        if head_l in ("client", "router", "unknown") and not sep:
            return cls(head_l)
        choices = ["client", "director", "director:client-side", "director:rs-side",
                   "rs:<ip>", "router", "unknown"]
        raise ValueError(f"unknown vantage role '{text}'{suggest(s, choices)}; "
                         f"one of {', '.join(choices)}")


UNKNOWN_ROLE = VantageRole("unknown")


@dataclass(frozen=True)
class Topology:
    """A whole set-up. ``timeouts`` defaults to the profile's."""

    profile: Profile
    director: Director = Director()
    services: tuple[Service, ...] = ()
    vantages: tuple[tuple[str, VantageRole], ...] = ()   # (capture-point name, role), in file order
    timeouts: Timeouts | None = None
    source: str = field(default="", compare=False)       # the file it was read from
    origin: str = field(default="", compare=False)       # toml | ipvsadm-save | ipvsadm-list | keepalived | inferred
    pos: SourcePos | None = field(default=None, compare=False, repr=False)
    note: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        if self.timeouts is None:
            object.__setattr__(self, "timeouts", self.profile.timeouts)

    # ---- look-ups used by flows and checks
    @property
    def vips(self) -> frozenset[IPAddress]:
        return frozenset(a for s in self.services for a in s.addresses)

    @property
    def rips(self) -> frozenset[IPAddress]:
        return frozenset(rs.ip for s in self.services for rs in s.real_servers)

    @property
    def lips(self) -> frozenset[IPAddress]:
        return frozenset(self.director.lips) | frozenset(a for s in self.services for a in s.lips)

    @property
    def modes(self) -> frozenset[Mode]:
        return frozenset(m for s in self.services for m in s.modes)

    def real_servers(self) -> Iterator[tuple[Service, RealServer]]:
        for s in self.services:
            for rs in s.real_servers:
                yield s, rs

    def service_for(self, addr: IPAddress | str, port: int, protocol: str | None = None) -> Service | None:
        """The service a client packet to ``addr:port`` reaches: an exact service first, then
        a port-0 service, then a fwmark service that lists the address (as IPVS looks up)."""
        a = parse_ip(addr) if isinstance(addr, str) else addr
        exact = wild = mark = None
        for s in self.services:
            if not s.matches(a, port, protocol):
                continue
            if s.fwmark is not None:
                mark = mark or s
            elif s.port == 0:
                wild = wild or s
            else:
                exact = exact or s
        return exact or wild or mark

    def services_of(self, rip: IPAddress | str) -> tuple[Service, ...]:
        a = parse_ip(rip) if isinstance(rip, str) else rip
        return tuple(s for s in self.services if any(rs.ip == a for rs in s.real_servers))

    @property
    def vantage_map(self) -> dict[str, VantageRole]:
        return dict(self.vantages)

    def vantage_role(self, name: str) -> VantageRole:
        """The role of a capture point by pcapng interface name or file name. A key written
        as a path (``captures/rs1.pcap.gz``) also matches its base name without ``.gz``."""
        for n, role in self.vantages:
            if n == name:
                return role
        for n, role in self.vantages:
            base = n.replace("\\", "/").rsplit("/", 1)[-1]
            if name in (base, base[:-3] if base.endswith(".gz") else None):
                return role
        return UNKNOWN_ROLE

    def lips_for(self, service: Service) -> tuple[IPAddress, ...]:
        """The local addresses a FullNAT service uses: its own, else the director's."""
        return service.lips or self.director.lips

    # ---- building new versions (inference fills a topology step by step)
    def replace(self, **changes) -> "Topology":
        return dataclasses.replace(self, **changes)

    def with_director(self, **changes) -> "Topology":
        return dataclasses.replace(self, director=dataclasses.replace(self.director, **changes))

    def with_vantages(self, roles: Mapping[str, VantageRole | str]) -> "Topology":
        """Add or replace vantage roles (existing names keep their position)."""
        new = {n: (VantageRole.parse(r) if isinstance(r, str) else r) for n, r in roles.items()}
        out = [(n, new.pop(n, r)) for n, r in self.vantages]
        out.extend(new.items())
        return dataclasses.replace(self, vantages=tuple(out))

    def with_real_server_mac(self, ip: IPAddress | str, mac: MAC | int | str) -> "Topology":
        """Set the MAC of real server ``ip`` in every service that has it."""
        a = parse_ip(ip) if isinstance(ip, str) else ip
        m = MAC(mac) if not isinstance(mac, MAC) else mac
        services = tuple(
            dataclasses.replace(s, real_servers=tuple(
                dataclasses.replace(rs, mac=m) if rs.ip == a else rs for rs in s.real_servers))
            for s in self.services)
        return dataclasses.replace(self, services=services)

    def with_services(self, services: Iterable[Service]) -> "Topology":
        return dataclasses.replace(self, services=tuple(services))


# =========================================================================== defaults + validation

def default_toa_for(s: "Service", profile: Profile) -> ToaVariant | None:
    """The TOA the profile inserts for a service: FullNAT services that may carry TCP."""
    if Mode.FULLNAT not in s.modes or s.protocol is Protocol.UDP:
        return None
    return profile.default_toa(s.family or 4)


def apply_defaults(topo: Topology, *, explicit_no_toa: frozenset[int] = frozenset()) -> Topology:
    """Fill what the profile implies: the TOA variant of FullNAT/TCP services of profiles that
    insert TOA (unless the service index is in ``explicit_no_toa``)."""
    services = []
    changed = False
    for i, s in enumerate(topo.services):
        if s.toa is None and i not in explicit_no_toa:
            toa = default_toa_for(s, topo.profile)
            if toa is not None:
                s = dataclasses.replace(s, toa=toa)
                changed = True
        services.append(s)
    return dataclasses.replace(topo, services=tuple(services)) if changed else topo


def validate_topology(topo: Topology) -> None:
    """Check what the modes allow; raise :class:`InputError` at the first problem.

    FullNAT real servers need local addresses unless ``director.learn_lips`` says they are
    to be learned from the trace (formats that cannot carry them: DPVS ``ipvsadm -S``)."""
    fb = topo.source or "<topology>"
    d = topo.director
    vips = topo.vips
    for ip in d.ips:
        if ip in vips:
            raise _error(d.pos, "ips", f"{ip} is a VIP: list the director's own addresses in "
                         "director.ips and the VIPs in the services", fb)
    seen_services: dict[tuple, Service] = {}
    for s in topo.services:
        _validate_service(topo, s, fb)
        ident = ("fwmark", s.fwmark, s.family) if s.fwmark is not None else (s.vip, s.port, s.protocol)
        if ident in seen_services:
            first = seen_services[ident]
            where = f" (first at line {first.pos.line})" if first.pos and first.pos.line else ""
            raise _error(s.pos, None, f"service {s.key} is defined twice{where}", fb)
        seen_services[ident] = s
    rips = topo.rips
    for name, role in topo.vantages:
        if role.kind == "rs" and role.rs not in rips:
            choices = [f"rs:{ip}" for ip in sorted(rips, key=lambda a: (a.version, int(a)))]
            raise _error(topo.pos, f"vantage:{name}",
                         f"vantage '{name}' is mapped to {role}, which is not a real server of any "
                         f"service{suggest(str(role), choices)}", fb)


def _validate_service(topo: Topology, s: Service, fb: str) -> None:
    pos = s.pos
    if s.fwmark is None:
        if s.vip is None:
            raise _error(pos, "vip", "service needs a vip (or a fwmark)", fb)
        if s.vips or s.ports:
            raise _error(pos, "vips", f"service {s.key}: vips/ports only describe fwmark services", fb)
        if s.protocol is None:
            raise _error(pos, "protocol", f"service {s.key}: protocol must be tcp or udp", fb)
        if s.port == 0 and s.persistence == 0:
            raise _error(pos, "port", f"service {s.key}: port 0 (all ports) needs persistence "
                         "(ipvsadm: zero port specified for non-persistent service)", fb)
    else:
        if not 1 <= s.fwmark <= 0xFFFFFFFF:
            raise _error(pos, "fwmark", f"fwmark {s.fwmark} is out of range 1..4294967295", fb)
        fams = {a.version for a in s.vips}
        if len(fams) > 1 and any(rs.mode is not Mode.TUN for rs in s.real_servers):
            raise _error(pos, "vips", f"service {s.key} mixes IPv4 and IPv6 addresses: only "
                         "possible when every real server is tunnelled", fb)
    if s.scheduler not in SCHEDULERS:
        raise _error(pos, "scheduler", f"unknown scheduler '{s.scheduler}'"
                     f"{suggest(s.scheduler, SCHEDULERS)}; one of {', '.join(SCHEDULERS)}", fb)
    for flag in s.sched_flags:
        if flag not in SCHED_FLAGS:
            raise _error(pos, "sched_flags", f"unknown scheduler flag '{flag}'"
                         f"{suggest(flag, SCHED_FLAGS)}; one of {', '.join(SCHED_FLAGS)}", fb)
        need = SCHED_FLAGS[flag]
        if need is not None and need != s.scheduler:
            raise _error(pos, "sched_flags", f"scheduler flag '{flag}' belongs to the {need} "
                         f"scheduler, not {s.scheduler}", fb)
    if s.persistence < 0:
        raise _error(pos, "persistence", f"persistence {s.persistence} is negative", fb)
    fam = s.family
    if s.persistence_prefix is not None:
        maxlen = 128 if fam == 6 else 32
        if not 1 <= s.persistence_prefix <= maxlen:
            raise _error(pos, "persistence_netmask", f"persistence netmask /{s.persistence_prefix} "
                         f"is out of range 1..{maxlen}", fb)
    if s.ops and s.protocol is Protocol.TCP and s.fwmark is None:
        raise _error(pos, "ops", f"service {s.key}: one-packet scheduling is only for UDP", fb)
    if s.synproxy and s.protocol is Protocol.UDP:
        raise _error(pos, "synproxy", f"service {s.key}: SYN proxy is TCP only", fb)
    for lip in s.lips:
        if lip in topo.vips:
            raise _error(pos, "lips", f"local address {lip} is also a VIP", fb)
    modes = s.modes
    if s.toa is not None:
        if Mode.FULLNAT not in modes:
            raise _error(pos, "toa", f"service {s.key}: a TOA option is only inserted by FullNAT; "
                         f"this service's real servers use {', '.join(sorted(modes)) or 'no mode'}", fb)
        if s.protocol is Protocol.UDP:
            raise _error(pos, "toa", f"service {s.key}: TOA is a TCP option, the service is UDP", fb)
        t = s.toa
        if not 1 <= t.kind <= 255 or t.kind == 1:
            raise _error(pos, "toa", f"TOA kind {t.kind} is not a usable TCP option kind (2..255)", fb)
        if t.length not in (8, 20):
            raise _error(pos, "toa", f"TOA length {t.length}: known variants are 8 (port + IPv4) "
                         "or 20 (port + IPv6)", fb)
        bad = set(t.packets) - set(TOA_PACKETS)
        if bad:
            b = sorted(bad)[0]
            raise _error(pos, "toa", f"unknown TOA packet '{b}'{suggest(b, TOA_PACKETS)}; "
                         f"one of {', '.join(TOA_PACKETS)}", fb)
    seen: dict[tuple, RealServer] = {}
    for rs in s.real_servers:
        _validate_rs(topo, s, rs, fb)
        ident = (rs.ip, rs.port)
        if ident in seen:
            first = seen[ident]
            where = f" (first at line {first.pos.line})" if first.pos and first.pos.line else ""
            raise _error(rs.pos, "ip", f"real server {rs.endpoint} is listed twice in service "
                         f"{s.key}{where}", fb)
        seen[ident] = rs


def _validate_rs(topo: Topology, s: Service, rs: RealServer, fb: str) -> None:
    pos = rs.pos
    if not 0 <= rs.weight <= 65535:
        raise _error(pos, "weight", f"weight {rs.weight} is out of range 0..65535", fb)
    if not 0 <= rs.port <= 65535:
        raise _error(pos, "port", f"port {rs.port} is out of range 0..65535", fb)
    for name in ("u_threshold", "l_threshold"):
        if getattr(rs, name) < 0:
            raise _error(pos, name, f"{name} {getattr(rs, name)} is negative", fb)
    fam = s.family
    if rs.mode is not Mode.TUN and fam is not None and rs.family != fam:
        raise _error(pos, "ip", f"real server {rs.ip} is IPv{rs.family} but service {s.key} is "
                     f"IPv{fam}: mixed address families only work with tun "
                     "(ipvsadm: different address family is allowed only for tunneling servers)", fb)
    if rs.mode in (Mode.DR, Mode.TUN):
        want = 0 if s.fwmark is not None else s.port
        if rs.port != want:
            if s.fwmark is not None:
                msg = (f"real server {rs.ip} port {rs.port}: a {rs.mode} real server of a fwmark "
                       "service takes the client's port; give no port (or 0)")
            else:
                msg = (f"real server {rs.ip} port {rs.port} differs from the service port "
                       f"{s.port}: {rs.mode} cannot map ports (only nat and fullnat can)")
            raise _error(pos, "port", msg, fb)
    if rs.mode is not Mode.TUN:
        for name in ("tun", "tun_port", "tun_flags"):
            if getattr(rs, name) is not None:
                raise _error(pos, name, f"real server {rs.ip}: {name} is a tunnel option but the "
                             f"mode is {rs.mode}", fb)
    elif rs.tun is None:
        # tunnel type not known (plain ipvsadm -Ln does not show it): learned from the trace
        for name in ("tun_port", "tun_flags"):
            if getattr(rs, name) is not None:
                raise _error(pos, name, f"real server {rs.ip}: {name} needs a known tunnel "
                             "type (tun)", fb)
    else:
        tun = rs.tun
        if tun is TunType.GUE:
            if rs.tun_port is None:
                raise _error(pos, "tun", f"real server {rs.ip}: a gue tunnel needs tun_port "
                             "(ipvsadm --tun-port)", fb)
            if not 1 <= rs.tun_port <= 65535:
                raise _error(pos, "tun_port", f"tun_port {rs.tun_port} is out of range 1..65535", fb)
        elif rs.tun_port is not None:
            raise _error(pos, "tun_port", f"real server {rs.ip}: tun_port is only for gue tunnels, "
                         f"this one is {tun}", fb)
        if rs.tun_flags is not None and rs.tun_flags not in TUN_FLAGS_ALLOWED[tun]:
            allowed = ", ".join(TUN_FLAGS_ALLOWED[tun]) or "none"
            raise _error(pos, "tun_flags", f"real server {rs.ip}: tun_flags '{rs.tun_flags}' not "
                         f"allowed for {tun} (allowed: {allowed})", fb)
    if rs.mode is Mode.FULLNAT:
        lips = topo.lips_for(s)
        if not lips and topo.director.learn_lips:
            return
        if not lips:
            raise _error(pos, "mode", f"real server {rs.ip} is fullnat but there are no local "
                         "addresses: set lips on the service or director.lips (or "
                         'director.lips = "learn" to take them from the trace)', fb)
        if not any(l.version == rs.family for l in lips):
            raise _error(pos, "mode", f"real server {rs.ip} is fullnat over IPv{rs.family} but no "
                         f"local address is IPv{rs.family}", fb)
