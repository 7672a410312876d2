"""FullNAT local address (LIP) and local port (lport) allocation, one decision for the replay
and the live director (SEMANTICS §1.4, §3).

* **LIP**: the service's local addresses of the real server's family in round robin, per
  service (Alibaba LVS ``ip_vs_hbind_laddr``; DPVS per service and worker). When every port of
  the LIP whose turn it is is taken, the next LIP is tried.
* **lport**: ``profile.lport_range`` says where ports come from. With a range, sequential per
  LIP from where the previous connection on that LIP stopped (Alibaba ``lport_min..max``
  5000-65535, DPVS's sapool 1025-65535; DPVS's per-worker low bits are not modelled: one
  worker), a (LIP, lport, RIP, rport, protocol) tuple in use being skipped. Without a range
  (the kernel-forwarded FullNAT of the ``linux`` profiles, nftables ``snat``) the client's own
  port is kept when that tuple is free, else the same sequential search over
  :data:`FALLBACK_RANGE` (``nf_nat``'s range for ports above 1023).
* At most :data:`TRIES` ports are tried per LIP (Alibaba's "up to 10 000 tries"); then the
  LIP counts as full ("bind local address: no port available").

The allocator keeps the tuples in use itself: :meth:`LocalPorts.take_port` and
:meth:`~LocalPorts.allocate` mark what they return, :meth:`~LocalPorts.hold` marks a tuple
chosen elsewhere (the replay follows the trace's port), :meth:`~LocalPorts.release` frees a
tuple when its connection entry expires.

Addresses are packed ``bytes`` (4 or 16), as :mod:`.xmit` takes them.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from ..topology.model import Profile, get_profile
from .xmit import XmitError

__all__ = ["FALLBACK_RANGE", "TRIES", "LocalPorts", "NoLocalPort"]

#: ports when the client's own port is taken and the profile has no range (nf_nat, ports > 1023)
FALLBACK_RANGE = (1024, 65535)
#: ports tried on one LIP before it counts as full (Alibaba ip_vs_hbind_laddr)
TRIES = 10000
TCP = 6


class NoLocalPort(XmitError):
    """No local port left (Alibaba logs "bind local address: no port available", DPVS "no
    lip/lport available")."""


class LocalPorts:
    """Local address and port allocation of one director (see the module docstring).

    ``profile``: a :class:`~lvs_inspect.topology.model.Profile` or a profile name."""

    __slots__ = ("_next", "_rr", "_used", "high", "keep_client_port", "low")

    def __init__(self, profile: Profile | str):
        prof = get_profile(profile) if isinstance(profile, str) else profile
        rng = prof.lport_range
        self.keep_client_port = rng is None
        self.low, self.high = rng if rng is not None else FALLBACK_RANGE
        self._rr: dict = {}
        self._next: dict[bytes, int] = {}        # per LIP: offset of the next port to try
        self._used: set[tuple] = set()

    # ------------------------------------------------------------------ the two choices
    def pick_lip(self, svc_key, lips: Sequence[bytes]) -> bytes:
        """The next local address of a service (round robin over ``lips``)."""
        i = self._rr.get(svc_key, 0)
        self._rr[svc_key] = i + 1
        return lips[i % len(lips)]

    def free_port(self, lip: bytes, rip: bytes, rport: int, cport: int,
                  proto: int = TCP) -> int | None:
        """A port on ``lip`` toward ``rip:rport`` that is free, without taking it (None: the
        LIP is full). Moves the LIP's sequential counter past the port returned."""
        used = self._used
        if self.keep_client_port and (lip, cport, rip, rport, proto) not in used:
            return cport
        low = self.low
        span = self.high - low + 1
        nxt = self._next.get(lip, 0)
        for step in range(min(TRIES, span)):
            port = low + (nxt + step) % span
            if (lip, port, rip, rport, proto) not in used:
                self._next[lip] = (nxt + step + 1) % span
                return port
        return None

    def take_port(self, lip: bytes, rip: bytes, rport: int, cport: int,
                  proto: int = TCP) -> int:
        """A free local port on ``lip`` toward ``rip:rport``, now in use; raises
        :class:`NoLocalPort` when the LIP is full."""
        port = self.free_port(lip, rip, rport, cport, proto)
        if port is None:
            raise NoLocalPort(f"no local port left on {ipaddress.ip_address(lip)}")
        self._used.add((lip, port, rip, rport, proto))
        return port

    def allocate(self, svc_key, lips: Sequence[bytes], rip: bytes, rport: int, cport: int,
                 proto: int = TCP) -> tuple[bytes, int] | None:
        """(LIP, lport) for a new connection of a service, now in use: the LIP whose turn it
        is, else the following ones when it is full; None when every LIP is full or there is
        none."""
        if not lips:
            return None
        i = self._rr.get(svc_key, 0)
        self._rr[svc_key] = i + 1
        n = len(lips)
        for j in range(n):
            lip = lips[(i + j) % n]
            port = self.free_port(lip, rip, rport, cport, proto)
            if port is not None:
                self._used.add((lip, port, rip, rport, proto))
                return lip, port
        return None

    # ------------------------------------------------------------------ bookkeeping
    def hold(self, lip: bytes, port: int, rip: bytes, rport: int, proto: int = TCP) -> None:
        """Mark a tuple chosen elsewhere as in use."""
        self._used.add((lip, port, rip, rport, proto))

    def release(self, lip: bytes, port: int, rip: bytes, rport: int, proto: int = TCP) -> None:
        """Free a tuple (its connection entry expired)."""
        self._used.discard((lip, port, rip, rport, proto))

    def in_use(self, lip: bytes, port: int, rip: bytes, rport: int, proto: int = TCP) -> bool:
        return (lip, port, rip, rport, proto) in self._used
