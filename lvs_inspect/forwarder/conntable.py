"""The director's connection table: IPVS entries, their TCP states and timers, persistence
templates, port reuse, and the per-server counters the schedulers read.

Modelled on ``net/netfilter/ipvs/ip_vs_conn.c``, ``ip_vs_core.c`` (``ip_vs_in``,
``ip_vs_sched_persist``) and ``ip_vs_proto_tcp.c`` (SEMANTICS §7), written from what they do:

* **Keys.** An entry is found by ``(family, protocol, client addr, client port, VIP, vport)``
  for client packets and, for NAT, by ``(family, protocol, RIP, rport, client addr, client
  port)`` for replies (FullNAT: by the local address/port given to :meth:`ConnTable.bind_local`).
  DR and TUN entries carry ``NOOUTPUT``: only client packets are seen, and the TCP states
  follow the kernel's INPUT-ONLY table.
* **States.** The kernel's ``tcp_states`` table (current kernels: an ACK on a ``NONE`` entry goes
  to ESTABLISHED). The event of a packet is RST, else SYN, else FIN, else ACK; a segment with
  none of these flags sets CLOSE, as ``set_tcp_state`` does. Every packet re-arms the entry's
  timer to ``now + timeout(state)``; timeouts come from the topology's :class:`Timeouts`
  (kernel 900/120/300, Alibaba LVS and DPVS 90/7/300, SEMANTICS §7.3). UDP entries have one
  state and the ``udp`` timeout. One-packet scheduling (``ops``, UDP) drops the entry as soon
  as its packet is through.
* **Counters.** A new entry counts as inactive (``inactconns``) and becomes active only in
  ESTABLISHED (and back when it leaves), so UDP entries are always inactive. Templates count in
  ``persistconns``. Upper/lower thresholds set and clear the overload flag as
  ``ip_vs_bind_dest``/``ip_vs_unbind_dest`` do (clear below ``l_threshold``, or below 3/4 of
  ``u_threshold`` when no lower one is set).
* **Persistence.** With ``persistence > 0`` a template keyed by the client address masked with
  the service's netmask (and the VIP:port; port 0 for port-0 and FTP services, the mark for
  fwmark services) holds the server; new connections of that client take it while the
  template lives. The template's timer is re-armed to ``now + persistence`` whenever a new
  connection uses it; when it fires while connections it controls are still in the table it
  is kept another 60 s (``expire_later`` sets the template's timeout to 60 s), so a template
  lasts at least ``persistence`` seconds after the client's last new connection and ends at
  the first timer run with no controlled entry left. A template whose server is gone (or
  quiesced, with ``expire_quiescent_template``) is dropped and the client rescheduled.
* **Port reuse** (``ip_vs_in``): a SYN that finds an entry not controlled by a template is
  rescheduled when ``expire_nodest_conn`` is set and the entry's server has weight 0, or when
  ``conn_reuse_mode`` is non-zero and the entry is in TIME_WAIT or CLOSE (bit 2 also: FIN_WAIT
  of a DR/TUN entry). The old entry expires at once and the SYN is scheduled afresh; with
  ``drop_on_reuse`` (kernels before 5.9 with ``conntrack=1``) that SYN is dropped instead and
  the client's retransmission is scheduled. Mode 0 sends the SYN down the old entry (to the
  old server). Entries under a persistence template are never rescheduled.
* **Clock.** Times are seconds on the caller's clock (packet timestamps); nothing reads the
  wall clock. An entry is gone at ``now >= expires``. A ``now`` earlier than one already seen
  is taken as the latest one seen (captures from several hosts can be slightly out of order).

Not modelled: the ``secure_tcp`` DoS table, sloppy SCTP, FTP/SIP helpers and persistence
engines, the sync daemon, ``ip_vs_todrop`` load shedding, ICMP-related lookups (the transmit
layer maps ICMP errors to entries with :meth:`ConnTable.lookup` / :meth:`ConnTable.lookup_out`).
Alibaba LVS and DPVS use the same rules here except for their timeouts.
"""
from __future__ import annotations

import heapq
import ipaddress
from enum import IntEnum
from typing import Callable, Iterator

from ..net import format_ip_port
from ..topology.model import KERNEL_TIMEOUTS, Mode, Timeouts, Topology
from .schedulers import ServiceState, ServiceTable, addr_int

__all__ = [
    "ConnTable", "Conn", "TcpState", "Verdict", "UDP_STATE", "TEMPLATE_LATER",
    "FIN", "SYN", "RST", "ACK", "IPPROTO_TCP", "IPPROTO_UDP",
    "F_INACTIVE", "F_NOOUTPUT", "F_TEMPLATE", "F_ONE_PACKET",
    "tcp_next_state", "state_timeout", "DIR_INPUT", "DIR_OUTPUT", "DIR_INPUT_ONLY",
]

IPPROTO_TCP = 6
IPPROTO_UDP = 17
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

#: seconds a template is kept once more when its timer fires with connections still under it
TEMPLATE_LATER = 60.0


class TcpState(IntEnum):
    NONE = 0
    ESTABLISHED = 1
    SYN_SENT = 2
    SYN_RECV = 3
    FIN_WAIT = 4
    TIME_WAIT = 5
    CLOSE = 6
    CLOSE_WAIT = 7
    LAST_ACK = 8
    LISTEN = 9
    SYNACK = 10


UDP_STATE = 11
STATE_NAMES = tuple(s.name for s in TcpState) + ("UDP",)

# TcpState -> Timeouts field
_TIMEOUT_FIELD = ("none", "tcp", "syn_sent", "syn_recv", "tcpfin", "time_wait", "close",
                  "close_wait", "last_ack", "listen", "synack")

DIR_INPUT, DIR_OUTPUT, DIR_INPUT_ONLY = 0, 4, 8

_NO, _ES, _SS, _SR, _FW, _TW, _CL, _CW, _LA, _LI, _SA = range(11)
# rows: direction offset + event (syn 0, fin 1, ack 2, rst 3); columns: current state
_TCP_STATES = (
    # INPUT
    (_SR, _ES, _ES, _SR, _SR, _SR, _SR, _SR, _SR, _SR, _SR),   # syn
    (_CL, _CW, _SS, _TW, _TW, _TW, _CL, _CW, _LA, _LI, _TW),   # fin
    (_ES, _ES, _SS, _ES, _FW, _TW, _CL, _CW, _CL, _LI, _ES),   # ack
    (_CL, _CL, _CL, _SR, _CL, _CL, _CL, _CL, _LA, _LI, _SR),   # rst
    # OUTPUT
    (_SS, _ES, _SS, _SR, _SS, _SS, _SS, _SS, _SS, _LI, _SR),
    (_TW, _FW, _SS, _TW, _FW, _TW, _CL, _TW, _LA, _LI, _TW),
    (_ES, _ES, _SS, _ES, _FW, _TW, _CL, _CW, _LA, _ES, _ES),
    (_CL, _CL, _SS, _CL, _CL, _TW, _CL, _CL, _CL, _CL, _CL),
    # INPUT-ONLY
    (_SR, _ES, _ES, _SR, _SR, _SR, _SR, _SR, _SR, _SR, _SR),
    (_CL, _FW, _SS, _TW, _FW, _TW, _CL, _CW, _LA, _LI, _TW),
    (_ES, _ES, _SS, _ES, _FW, _TW, _CL, _CW, _CL, _LI, _ES),
    (_CL, _CL, _CL, _SR, _CL, _CL, _CL, _CL, _LA, _LI, _CL),
)

F_INACTIVE = 0x1
F_NOOUTPUT = 0x2
F_TEMPLATE = 0x4
F_ONE_PACKET = 0x8


def _event(flags: int) -> int:
    if flags & RST:
        return 3
    if flags & SYN:
        return 0
    if flags & FIN:
        return 1
    if flags & ACK:
        return 2
    return -1


#: per TCP flags byte: the event (_TCP_STATES row within a direction), -1 for none
_EVENTS = tuple(_event(f) for f in range(256))


def tcp_next_state(state: int, direction: int, flags: int) -> int:
    """The kernel's next TCP state for a packet with ``flags`` seen in ``direction``
    (``DIR_INPUT``, ``DIR_OUTPUT`` or ``DIR_INPUT_ONLY``)."""
    ev = _event(flags)
    return _CL if ev < 0 else _TCP_STATES[direction + ev][state]


def state_timeout(timeouts: Timeouts, proto: int, state: int) -> float:
    """Seconds an entry in ``state`` lives without traffic."""
    if proto != IPPROTO_TCP:
        return float(timeouts.udp)
    return float(getattr(timeouts, _TIMEOUT_FIELD[state]))


class Verdict(IntEnum):
    """What the director does with a client packet."""
    FORWARD = 0        # an existing entry forwards it
    NEW = 1            # a new entry was scheduled and forwards it
    NO_SERVICE = 2     # no virtual service for this destination: not IPVS traffic
    NOT_SCHEDULED = 3  # no entry and not a connection start (TCP without SYN, or RST): the kernel
                       # passes it to the director's own stack
    NO_DEST = 4        # no server available: dropped, ICMP port unreachable to the client
    DROP = 5           # dropped: port reuse under conntrack (drop_on_reuse), or the entry's server
                       # was removed


class Conn:
    """One entry (a connection, or a persistence template with ``F_TEMPLATE``)."""

    __slots__ = ("af", "proto", "caddr", "cport", "vaddr", "vport", "daf", "daddr", "dport",
                 "laddr", "lport", "svc", "dest", "state", "flags", "timeout", "expires",
                 "heap_time", "control", "n_control", "created", "in_pkts", "out_pkts", "key",
                 "okey", "dead")

    def __init__(self, af, proto, caddr, cport, vaddr, vport, svc: ServiceState, dest: int,
                 flags: int, now: float):
        d = svc.dests[dest]
        self.af = af
        self.proto = proto
        self.caddr = caddr
        self.cport = cport
        self.vaddr = vaddr
        self.vport = vport
        self.daf = d.family
        self.daddr = d.ip
        self.dport = d.port or vport      # port 0: the client's destination port
        self.laddr = None                 # FullNAT local address/port (bind_local)
        self.lport = None
        self.svc = svc
        self.dest = dest
        self.state = UDP_STATE if proto != IPPROTO_TCP and not flags & F_TEMPLATE else 0
        self.flags = flags
        self.timeout = 0.0
        self.expires = now
        self.heap_time = float("inf")
        self.control: Conn | None = None
        self.n_control = 0
        self.created = now
        self.in_pkts = 0
        self.out_pkts = 0
        self.key = None
        self.okey = None
        self.dead = False

    # ---- read-outs
    @property
    def real_server(self):
        return self.svc.service.real_servers[self.dest]

    @property
    def mode(self) -> Mode:
        return self.real_server.mode

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state]

    @property
    def template(self) -> bool:
        return bool(self.flags & F_TEMPLATE)

    @property
    def active(self) -> bool:
        return not self.flags & (F_INACTIVE | F_TEMPLATE)

    def expires_in(self, now: float) -> float:
        return max(self.expires - now, 0.0)

    def _addr(self, value: int, af: int):
        return ipaddress.IPv6Address(value) if af == 6 else ipaddress.IPv4Address(value & 0xFFFFFFFF)

    def describe(self, now: float) -> str:
        """One line in the manner of ``ipvsadm -lnc``."""
        pro = "TCP" if self.proto == IPPROTO_TCP else "UDP" if self.proto == IPPROTO_UDP else "IP"
        left = int(round(self.expires_in(now)))
        if self.template and self.svc.fwmark and self.proto == 0:
            virt = f"fwmark:{self.vaddr}:{self.vport}"
        else:
            virt = format_ip_port(self._addr(self.vaddr, self.af), self.vport)
        return (f"{pro:<4}{left // 60:02d}:{left % 60:02d}  {self.state_name:<12}"
                f"{format_ip_port(self._addr(self.caddr, self.af), self.cport):<24}"
                f"{virt:<24}{format_ip_port(self._addr(self.daddr, self.daf), self.dport)}")

    def __repr__(self) -> str:
        return f"Conn({self.describe(self.expires)})"


class ConnTable:
    """The entries of one director.

    ``conn_reuse_mode``, ``expire_nodest_conn`` and ``expire_quiescent_template`` are the
    sysctls of the same names (kernel defaults 1, 0, 0); ``drop_on_reuse`` models kernels
    before 5.9 with ``conntrack=1``; ``sloppy_tcp`` schedules on any TCP packet, not only SYNs.
    ``on_expire(conn, when)`` is called for every entry that leaves the table (FullNAT frees its
    local port there, profiles with ``rst_on_expiry`` send their resets)."""

    def __init__(self, timeouts: Timeouts = KERNEL_TIMEOUTS, *, conn_reuse_mode: int = 1,
                 expire_nodest_conn: bool = False, expire_quiescent_template: bool = False,
                 drop_on_reuse: bool = False, sloppy_tcp: bool = False,
                 on_expire: Callable[[Conn, float], None] | None = None):
        self.timeouts = timeouts
        self._tcp_to = tuple(float(getattr(timeouts, f)) for f in _TIMEOUT_FIELD)
        self._udp_to = float(timeouts.udp)
        self.conn_reuse_mode = int(conn_reuse_mode)
        self.expire_nodest_conn = bool(expire_nodest_conn)
        self.expire_quiescent_template = bool(expire_quiescent_template)
        self.drop_on_reuse = bool(drop_on_reuse)
        self.sloppy_tcp = bool(sloppy_tcp)
        self.on_expire = on_expire
        self._tab: dict[tuple, Conn] = {}
        self._out: dict[tuple, Conn] = {}
        self._tpl: dict[tuple, Conn] = {}
        self._heap: list = []
        self._seq = 0
        self.clock = float("-inf")
        #: the scheduler's (or template's) choice for the last new entry, even when the caller
        #: forced another server
        self.last_expected: int | None = None
        self.stats = {"created": 0, "expired": 0, "rescheduled": 0, "templates": 0,
                      "no_dest": 0, "dropped": 0}

    @classmethod
    def for_topology(cls, topo: Topology, **opts) -> "ConnTable":
        """A table with the topology's timeouts (its own, else its profile's)."""
        return cls(topo.timeouts or topo.profile.timeouts, **opts)

    # ------------------------------------------------------------------ timers
    def _arm(self, cp: Conn, now: float) -> None:
        t = now + cp.timeout
        cp.expires = t
        if t < cp.heap_time:
            self._seq += 1
            heapq.heappush(self._heap, (t, self._seq, cp))
            cp.heap_time = t

    def advance(self, now: float) -> None:
        """Run every timer due at or before ``now``."""
        if now > self.clock:
            self.clock = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            t, _, cp = heapq.heappop(heap)
            if cp.dead or t != cp.heap_time:
                continue
            cp.heap_time = float("inf")
            if cp.expires > t:             # re-armed since: wait for the later time
                self._seq += 1
                heapq.heappush(heap, (cp.expires, self._seq, cp))
                cp.heap_time = cp.expires
                continue
            if cp.flags & F_TEMPLATE and cp.n_control:
                cp.timeout = TEMPLATE_LATER
                self._arm(cp, t)
                continue
            self._expire(cp, t)

    def _expire(self, cp: Conn, when: float) -> None:
        if cp.dead:
            return
        cp.dead = True
        d = cp.svc.dests[cp.dest]
        if cp.flags & F_TEMPLATE:
            if cp.key is not None and self._tpl.get(cp.key) is cp:
                del self._tpl[cp.key]
            d.unbind(template=True)
        else:
            if cp.key is not None and self._tab.get(cp.key) is cp:
                del self._tab[cp.key]
            if cp.okey is not None and self._out.get(cp.okey) is cp:
                del self._out[cp.okey]
            d.unbind(active=not cp.flags & F_INACTIVE)
            ct = cp.control
            if ct is not None:
                ct.n_control -= 1
            self.stats["expired"] += 1
        if self.on_expire is not None:
            self.on_expire(cp, when)

    def expire_now(self, cp: Conn, now: float | None = None) -> None:
        """Fire an entry's timer now (``ip_vs_conn_expire_now``): it leaves the table, except a
        template that still controls entries, which is kept another 60 s."""
        when = self.clock if now is None else now
        if cp.dead:
            return
        if cp.flags & F_TEMPLATE and cp.n_control:
            cp.timeout = TEMPLATE_LATER
            cp.heap_time = float("inf")        # drop the pending timer, arm a fresh one
            self._arm(cp, when)
            return
        self._expire(cp, when)

    # ------------------------------------------------------------------ lookups
    def lookup(self, af: int, proto: int, caddr, cport: int, vaddr, vport: int) -> Conn | None:
        """The entry of a client packet, without touching it."""
        return self._tab.get((af, proto, addr_int(caddr), cport, addr_int(vaddr), vport))

    def lookup_out(self, af: int, proto: int, raddr, rport: int, daddr, dport: int) -> Conn | None:
        """The entry of a real server's reply ``raddr:rport -> daddr:dport`` (NAT: to the client;
        FullNAT: to the local address)."""
        return self._out.get((af, proto, addr_int(raddr), rport, addr_int(daddr), dport))

    def template_for(self, svc: ServiceState, caddr, vaddr=None, vport: int | None = None) -> Conn | None:
        """The live persistence template that would serve ``caddr``."""
        key = self._template_key(svc, addr_int(caddr), svc.vaddr if vaddr is None else addr_int(vaddr),
                                 svc.port if vport is None else vport)
        return self._tpl.get(key)

    def bind_local(self, cp: Conn, laddr, lport: int) -> None:
        """FullNAT: the local address and port D uses toward the real server; replies from the
        server to it find the entry."""
        if cp.okey is not None and self._out.get(cp.okey) is cp:
            del self._out[cp.okey]
        cp.laddr = addr_int(laddr)
        cp.lport = lport
        cp.okey = (cp.daf, cp.proto, cp.daddr, cp.dport, cp.laddr, lport)
        self._out[cp.okey] = cp

    # ------------------------------------------------------------------ packets
    def _transition(self, cp: Conn, direction: int, flags: int) -> None:
        if cp.proto != IPPROTO_TCP:
            cp.timeout = self._udp_to
            return
        off = direction
        if cp.flags & F_NOOUTPUT:
            if off == DIR_OUTPUT:
                cp.flags &= ~F_NOOUTPUT
            else:
                off = DIR_INPUT_ONLY
        ev = _EVENTS[flags & 0xFF]
        new = _CL if ev < 0 else _TCP_STATES[off + ev][cp.state]
        if new != cp.state:
            self._state_change(cp, new)
        cp.timeout = self._tcp_to[new]

    @staticmethod
    def _state_change(cp: Conn, new: int) -> None:
        """A TCP entry moves to state ``new``: the server's active/inactive counters follow."""
        if not cp.flags & F_INACTIVE:
            if new != _ES:
                d = cp.svc.dests[cp.dest]
                d.activeconns -= 1
                d.inactconns += 1
                cp.flags |= F_INACTIVE
        elif new == _ES:
            d = cp.svc.dests[cp.dest]
            d.activeconns += 1
            d.inactconns -= 1
            cp.flags &= ~F_INACTIVE
        cp.state = new

    def packet_in(self, now: float, services, af: int, proto: int, caddr, cport: int, vaddr,
                  vport: int, tcp_flags: int = 0, *, force_dest: int | None = None
                  ) -> tuple[Verdict, Conn | None]:
        """A client packet reaching the director: find or create its entry, update its state.

        ``services``: the :class:`ServiceState` of the destination, a :class:`ServiceTable` to
        look it up in (only done when no entry exists), or None. ``force_dest`` makes a new
        entry use that server (replay follows the trace); :attr:`last_expected` then holds what
        the director would have chosen itself."""
        if proto != IPPROTO_TCP and proto != IPPROTO_UDP:
            raise ValueError(f"protocol {proto}: the connection table holds TCP (6) and UDP (17)")
        # the clock (_tick, inline: this is the per-packet path)
        if now < self.clock:
            now = self.clock
        else:
            self.clock = now
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.advance(now)
        if type(caddr) is not int:
            caddr = addr_int(caddr)
        if type(vaddr) is not int:
            vaddr = addr_int(vaddr)
        key = (af, proto, caddr, cport, vaddr, vport)
        cp = self._tab.get(key)
        if (cp is not None and not (tcp_flags & SYN and proto == IPPROTO_TCP and cp.control is None)
                and cp.svc.dests[cp.dest].available):
            # an existing entry and nothing to reschedule: _transition and _arm, inline
            if proto == IPPROTO_TCP:
                off = DIR_INPUT
                cf = cp.flags
                if cf & F_NOOUTPUT:
                    off = DIR_INPUT_ONLY
                ev = _EVENTS[tcp_flags & 0xFF]
                state = cp.state
                new = _CL if ev < 0 else _TCP_STATES[off + ev][state]
                if new != state:
                    self._state_change(cp, new)
                cp.timeout = self._tcp_to[new]
            else:
                cp.timeout = self._udp_to
            cp.in_pkts += 1
            t = now + cp.timeout
            cp.expires = t
            if t < cp.heap_time:
                self._seq += 1
                heapq.heappush(heap, (t, self._seq, cp))
                cp.heap_time = t
            return Verdict.FORWARD, cp
        if cp is not None:
            if tcp_flags & SYN and proto == IPPROTO_TCP and cp.control is None:
                d = cp.svc.dests[cp.dest]
                if self.expire_nodest_conn and d.weight == 0:
                    resched = True
                elif self.conn_reuse_mode and (
                        cp.state == _TW or cp.state == _CL
                        or (self.conn_reuse_mode & 2 and cp.state == _FW and cp.flags & F_NOOUTPUT)):
                    resched = True
                else:
                    resched = False
                if resched:
                    self.stats["rescheduled"] += 1
                    self._expire(cp, now)
                    if self.drop_on_reuse:
                        self.stats["dropped"] += 1
                        return Verdict.DROP, None
                    cp = None
            if cp is not None:
                if not cp.svc.dests[cp.dest].available:
                    if self.expire_nodest_conn:
                        self._expire(cp, now)
                    self.stats["dropped"] += 1
                    return Verdict.DROP, None
                self._transition(cp, DIR_INPUT, tcp_flags)
                cp.in_pkts += 1
                self._arm(cp, now)
                return Verdict.FORWARD, cp
        # ---- no entry: schedule
        svc = services.lookup(af, proto, vaddr, vport) if isinstance(services, ServiceTable) else services
        if svc is None:
            return Verdict.NO_SERVICE, None
        if proto == IPPROTO_TCP and (not (tcp_flags & SYN or self.sloppy_tcp) or tcp_flags & RST):
            return Verdict.NOT_SCHEDULED, None
        cp = self._new_conn(now, svc, af, proto, caddr, cport, vaddr, vport, force_dest)
        if cp is None:
            self.stats["no_dest"] += 1
            return Verdict.NO_DEST, None
        self._transition(cp, DIR_INPUT, tcp_flags)
        cp.in_pkts += 1
        if cp.flags & F_ONE_PACKET:
            self._expire(cp, now)
        else:
            self._arm(cp, now)
        return Verdict.NEW, cp

    def _tick(self, now: float) -> float:
        """The clock never goes back (a timestamp earlier than the latest counts as the latest);
        entries due by then expire first."""
        if now < self.clock:
            now = self.clock
        else:
            self.clock = now
        if self._heap and self._heap[0][0] <= now:
            self.advance(now)
        return now

    def packet_out(self, now: float, af: int, proto: int, raddr, rport: int, daddr, dport: int,
                   tcp_flags: int = 0) -> Conn | None:
        """A real server's reply reaching the director (NAT, FullNAT): its entry, updated, or
        None when the director has none (the kernel lets such a packet through untouched)."""
        if now < self.clock:               # _tick, inline
            now = self.clock
        else:
            self.clock = now
        heap = self._heap
        if heap and heap[0][0] <= now:
            self.advance(now)
        if type(raddr) is not int:
            raddr = addr_int(raddr)
        if type(daddr) is not int:
            daddr = addr_int(daddr)
        cp = self._out.get((af, proto, raddr, rport, daddr, dport))
        if cp is None:
            return None
        if proto == IPPROTO_TCP:           # _transition, inline
            off = DIR_OUTPUT
            if cp.flags & F_NOOUTPUT:
                cp.flags &= ~F_NOOUTPUT
            ev = _EVENTS[tcp_flags & 0xFF]
            state = cp.state
            new = _CL if ev < 0 else _TCP_STATES[off + ev][state]
            if new != state:
                self._state_change(cp, new)
            cp.timeout = self._tcp_to[new]
        else:
            cp.timeout = self._udp_to
        cp.out_pkts += 1
        t = now + cp.timeout               # _arm, inline
        cp.expires = t
        if t < cp.heap_time:
            self._seq += 1
            heapq.heappush(heap, (t, self._seq, cp))
            cp.heap_time = t
        return cp

    # ------------------------------------------------------------------ scheduling
    def _new_conn(self, now, svc: ServiceState, af, proto, caddr, cport, vaddr, vport,
                  force_dest) -> Conn | None:
        ct = None
        if svc.persistent:
            dest, ct, expected = self._sched_persist(now, svc, af, proto, caddr, cport, vaddr,
                                                     vport, force_dest)
        else:
            expected = svc.scheduler.schedule(svc, caddr, cport, vaddr, vport, now)
            dest = expected if force_dest is None else force_dest
        self.last_expected = expected
        if dest is None:
            return None
        d = svc.dests[dest]
        flags = F_INACTIVE
        if d.mode is Mode.DR or d.mode is Mode.TUN:
            flags |= F_NOOUTPUT
        if svc.ops and proto == IPPROTO_UDP:
            flags |= F_ONE_PACKET
        cp = Conn(af, proto, caddr, cport, vaddr, vport, svc, dest, flags, now)
        d.bind()
        if ct is not None:
            cp.control = ct
            ct.n_control += 1
        self.stats["created"] += 1
        if not flags & F_ONE_PACKET:
            cp.key = (af, proto, caddr, cport, vaddr, vport)
            self._tab[cp.key] = cp
            if d.mode is Mode.NAT:
                cp.okey = (cp.daf, proto, cp.daddr, cp.dport, caddr, cport)
                self._out[cp.okey] = cp
        return cp

    @staticmethod
    def _template_key(svc: ServiceState, caddr: int, vaddr: int, vport: int) -> tuple:
        snet = caddr & svc.netmask
        if svc.fwmark:
            return (svc.af, 0, snet, svc.fwmark, 0, 1)
        if svc.port and vport == svc.port:
            return (svc.af, svc.proto, snet, vaddr, 0 if svc.port == 21 else svc.port, 0)
        return (svc.af, svc.proto, snet, vaddr, 0, 0)

    def _unhash_template(self, ct: Conn) -> None:
        if ct.key is not None and self._tpl.get(ct.key) is ct:
            del self._tpl[ct.key]
        ct.key = None

    def _sched_persist(self, now, svc: ServiceState, af, proto, caddr, cport, vaddr, vport,
                       force_dest):
        key = self._template_key(svc, caddr, vaddr, vport)
        ct = self._tpl.get(key)
        if ct is not None:
            d = svc.dests[ct.dest]
            if not d.available or (self.expire_quiescent_template and d.weight == 0):
                self._unhash_template(ct)          # invalid: orphaned until its entries go
                ct = None
        if ct is None:
            expected = svc.scheduler.schedule(svc, caddr, cport, vaddr, vport, now)
            dest = expected if force_dest is None else force_dest
            if dest is None:
                return None, None, expected
            ct = Conn(af, key[1], key[2], 0, key[3], key[4], svc, dest, F_TEMPLATE, now)
            ct.timeout = svc.timeout
            ct.key = key
            self._tpl[key] = ct
            svc.dests[dest].bind(template=True)
            self.stats["templates"] += 1
        else:
            expected = ct.dest
            dest = ct.dest if force_dest is None else force_dest
        self._arm(ct, now)
        return dest, ct, expected

    # ------------------------------------------------------------------ read-outs
    def __len__(self) -> int:
        return len(self._tab)

    def __iter__(self) -> Iterator[Conn]:
        return iter(list(self._tab.values()))

    @property
    def templates(self) -> list[Conn]:
        """Live templates, including orphaned ones still controlling entries."""
        seen = {id(c): c for c in self._tpl.values()}
        for c in self._tab.values():
            if c.control is not None and not c.control.dead:
                seen.setdefault(id(c.control), c.control)
        return list(seen.values())

    def listing(self, now: float | None = None) -> str:
        """The table in the manner of ``ipvsadm -lnc``."""
        t = self.clock if now is None else now
        rows = [c.describe(t) for c in self.templates] + [c.describe(t) for c in self._tab.values()]
        head = "pro expire state       source                  virtual                 destination"
        return "\n".join([head] + rows)

    def flush(self) -> None:
        """Expire everything now (``ipvsadm -C`` drops the entries with the services)."""
        tpls = self.templates
        for cp in list(self._tab.values()):
            self._expire(cp, self.clock)
        for ct in tpls:
            self._expire(ct, self.clock)
        self._out.clear()
        self._heap.clear()
