"""The reference forwarder: a userspace model of the director (issue 5).

Written from ``SEMANTICS.md`` independently of the checks so that the two can catch each
other's mistakes. This part holds the decisions the director makes before a packet is
transmitted:

* :mod:`.schedulers` — the kernel's real-server selection (rr, wrr, lc, wlc, sed, nq, fo, ovf,
  sh, dh, mh, lblc, lblcr, twos) and DPVS's conhash, per-destination counters and weights,
  kernel list order (:class:`ServiceState`, :class:`ServiceTable`);
* :mod:`.conntable` — the connection table: TCP states for both-way (NAT/FullNAT) and
  input-only (DR/TUN) entries, timeouts per profile, persistence templates, port reuse
  (:class:`ConnTable`).

Typical use by the replay::

    services = ServiceTable(topology)
    table = ConnTable.for_topology(topology)
    verdict, conn = table.packet_in(ts, services, 4, IPPROTO_TCP, cip, cport, vip, vport, flags)
    ...
    conn = table.packet_out(ts, 4, IPPROTO_TCP, rip, rport, cip, cport, flags)   # NAT reply

Imports: :mod:`lvs_inspect.topology` (the model), :mod:`lvs_inspect.net` and the standard
library only.
"""
from __future__ import annotations

from .conntable import (
    ACK, DIR_INPUT, DIR_INPUT_ONLY, DIR_OUTPUT, F_INACTIVE, F_NOOUTPUT, F_ONE_PACKET, F_TEMPLATE,
    FIN, IPPROTO_TCP, IPPROTO_UDP, RST, SYN, TEMPLATE_LATER, UDP_STATE, Conn, ConnTable, TcpState,
    Verdict, state_timeout, tcp_next_state,
)
from .schedulers import (
    MH_DEFAULT_SIZE, MH_PRIMES, SCHEDULER_CLASSES, Dest, Scheduler, ServiceState, ServiceTable,
    addr_int, fold_addr, hash_32, hsiphash_u32, make_scheduler, persistence_mask, siphash,
)

__all__ = [
    "ConnTable", "Conn", "TcpState", "Verdict", "UDP_STATE", "TEMPLATE_LATER",
    "FIN", "SYN", "RST", "ACK", "IPPROTO_TCP", "IPPROTO_UDP",
    "F_INACTIVE", "F_NOOUTPUT", "F_TEMPLATE", "F_ONE_PACKET",
    "DIR_INPUT", "DIR_OUTPUT", "DIR_INPUT_ONLY", "tcp_next_state", "state_timeout",
    "Dest", "ServiceState", "ServiceTable", "Scheduler", "SCHEDULER_CLASSES", "make_scheduler",
    "hash_32", "fold_addr", "siphash", "hsiphash_u32", "addr_int", "persistence_mask",
    "MH_PRIMES", "MH_DEFAULT_SIZE",
]
