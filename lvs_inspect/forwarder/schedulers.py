"""Real-server selection as the director does it: the kernel IPVS schedulers and DPVS's
``conhash``, with per-destination state and the persistence granularity.

Written from what ``net/netfilter/ipvs/ip_vs_{rr,wrr,lc,wlc,sed,nq,fo,ovf,sh,dh,mh,lblc,lblcr,
twos}.c`` do (SEMANTICS §7.1), not copied from them. What each scheduler looks at:

=========  ===================================================================================
rr         next destination after the last one chosen, in list order; weight 0 / overloaded
           skipped
wrr        the gcd/max-weight walk: ``cw`` starts at ``max - (gcd - 1)``, every pass picks the
           destinations with ``weight >= cw`` in list order, then ``cw -= gcd``
lc         least ``(activeconns << 8) + inactconns``; ties: the first in list order
wlc        least overhead/weight compared as ``loh * dw > doh * lw``; ties: the first
sed        as wlc with ``activeconns + 1``
nq         the first idle destination (no active connection), else as sed
fo         highest weight; ties: the first
ovf        highest weight among those with ``activeconns <= weight``; ties: the first
sh / dh    256-bucket table tiled in list order (sh: each destination ``weight`` buckets, dh: one
           each), bucket ``hash_32(addr [+ port]) `` (golden-ratio multiply, top 8 bits);
           ``sh-fallback`` walks the table from there, ``sh-port`` adds the client port
mh         Maglev: prime table (default 4093, CONFIG_IP_VS_MH_TAB_INDEX=12), per-destination
           offset/skip from two HalfSipHash values, ``last_weight/gcd >> rshift`` turns per
           round; ``mh-fallback`` / ``mh-port`` as for sh
lblc       per destination address: keep the cached server unless it is quiesced or
           overloaded (``active > weight`` while some server has ``active * 2 < weight``), then
           wlc; entries unused for ``lblc_expiration`` (24 h) are collected by the periodic
           timer (every 60 s, full scan every 30 runs; 6 min when the table holds more than
           16384 entries)
lblcr      per destination address a server *set*: wlc inside the set; grows by a wlc pick when
           its choice is overloaded; drops its most loaded member when the set has not changed
           for ``lblcr_expiration`` (24 h)
twos       two weighted random picks (``prandom_u32() % (total + 1)``), the less loaded per
           weight wins; our RNG is ``random.Random(seed)`` so runs are repeatable
conhash    DPVS: ring of ``weight / gcd * 160`` MD5 virtual nodes per destination, looked up by
           the source address (libconhash in DPVS's ``src/ipvs``)
=========  ===================================================================================

Hashes. ``sh``/``dh``/``lblc``/``lblcr`` use ``hash_32`` of the host-order address (IPv6: the XOR
of its four 32-bit words) as current kernels do; ``legacy_hash=True`` gives the older
``(addr * 2654435761) & mask`` of kernels before the switch to ``hash_32`` (and of the 2.6.32
kernel Alibaba LVS is built on). ``mh`` uses the kernel's fixed keys (2654435761 and 2654446892
in both key words, ``generate_hash_secret``): they are constants, not random, so the table
here is the one a 64-bit little-endian kernel builds (there ``hsiphash`` is SipHash-1-3
truncated to 32 bits; 32-bit kernels run the real HalfSipHash and get other tables). Not
checked against a running kernel (this machine has no IPVS): the hash code is checked against
the SipHash reference vectors and the tables against the Maglev properties.

List order. The kernel adds every new destination at the *head* of the service's list
(``list_add_rcu``), so the list runs newest first, and ``ipvsadm -L``/``-S`` print it in that
order. ``ServiceState(listed_as="added")`` (the default: TOML, keepalived) takes the topology
order as the order the servers were added; ``listed_as="kernel"`` (a topology read from
``ipvsadm`` output) takes it as the list itself. ``sched_init="add"`` replays what ipvsadm and
keepalived do (create the service, then add the servers one by one, each add running the
scheduler's ``add_dest``: this is what makes wrr start at ``cw = 1``); ``"edit"`` binds the
scheduler to a service that already has its servers (``ipvsadm -E -s``).

Addresses are ``int`` (IPv4: 32 bits, IPv6: 128 bits) or :mod:`ipaddress` objects; the family
is the service's. Times are seconds on the caller's clock (no wall clock is read).
"""
from __future__ import annotations

import bisect
import hashlib
import ipaddress
import random
from math import gcd
from typing import Iterator

from ..topology.model import Protocol, RealServer, Service, Topology

__all__ = [
    "Dest", "ServiceState", "ServiceTable", "Scheduler", "SCHEDULER_CLASSES", "make_scheduler",
    "hash_32", "fold_addr", "siphash", "hsiphash_u32", "addr_int", "persistence_mask",
    "MH_PRIMES", "MH_DEFAULT_SIZE",
]

M32 = 0xFFFFFFFF
M64 = 0xFFFFFFFFFFFFFFFF
GOLDEN_RATIO_32 = 0x61C88647          # include/linux/hash.h
LEGACY_MULT = 2654435761              # the multiplier of the pre-hash_32 table hashes


# =========================================================================== helpers

def addr_int(addr) -> int:
    """An address as an int (``int`` passes through)."""
    if isinstance(addr, int):
        return addr
    if isinstance(addr, str):
        return int(ipaddress.ip_address(addr))
    return int(addr)


def fold_addr(addr: int, af: int) -> int:
    """The 32-bit value the kernel hashes: the host-order IPv4 address, or for IPv6 the XOR of
    the four 32-bit words (``ip6[0]^ip6[1]^ip6[2]^ip6[3]`` then ``ntohl``)."""
    if af == 6:
        return ((addr >> 96) ^ (addr >> 64) ^ (addr >> 32) ^ addr) & M32
    return addr & M32


def hash_32(val: int, bits: int) -> int:
    """``hash_32()`` of include/linux/hash.h: golden-ratio multiply, keep the top ``bits``."""
    return ((val * GOLDEN_RATIO_32) & M32) >> (32 - bits)


def persistence_mask(prefix: int | None, af: int) -> int:
    """The ``-M`` netmask as an int (None: host)."""
    width = 128 if af == 6 else 32
    p = width if prefix is None else prefix
    return ((1 << width) - 1) ^ ((1 << (width - p)) - 1)


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M64


def siphash(data: bytes, k0: int, k1: int, c_rounds: int = 2, d_rounds: int = 4) -> int:
    """SipHash-c-d of ``data`` with the 128-bit key (``k0``, ``k1``: little-endian words), 64-bit
    result. Defaults give SipHash-2-4; the kernel's 64-bit ``hsiphash`` is SipHash-1-3."""
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1

    def rounds(n, v0, v1, v2, v3):
        for _ in range(n):
            v0 = (v0 + v1) & M64; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & M64; v3 = _rotl(v3, 16); v3 ^= v2
            v0 = (v0 + v3) & M64; v3 = _rotl(v3, 21); v3 ^= v0
            v2 = (v2 + v1) & M64; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)
        return v0, v1, v2, v3

    n = len(data)
    end = n - (n % 8)
    for i in range(0, end, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = rounds(c_rounds, v0, v1, v2, v3)
        v0 ^= m
    b = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= b
    v0, v1, v2, v3 = rounds(c_rounds, v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    v0, v1, v2, v3 = rounds(d_rounds, v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """The kernel's ``hsiphash(&v, 4, key)`` on a 64-bit little-endian machine: SipHash-1-3 of
    the four bytes of ``v``, truncated to 32 bits."""
    return siphash((value & M32).to_bytes(4, "little"), key[0], key[1], 1, 3) & M32


# =========================================================================== destinations

class Dest:
    """One real server of a service as the scheduler sees it (``struct ip_vs_dest``)."""

    __slots__ = ("index", "rs", "ip", "family", "port", "mode", "weight", "last_weight",
                 "activeconns", "inactconns", "persistconns", "u_threshold", "l_threshold",
                 "overloaded", "available")

    def __init__(self, index: int, rs: RealServer):
        self.index = index                 # position in Service.real_servers
        self.rs = rs
        self.ip = int(rs.ip)
        self.family = rs.ip.version
        self.port = rs.port
        self.mode = rs.mode
        self.weight = rs.weight
        self.last_weight = rs.weight       # latest non-zero weight (set as given on add)
        self.activeconns = 0
        self.inactconns = 0
        self.persistconns = 0
        self.u_threshold = rs.u_threshold
        self.l_threshold = rs.l_threshold
        self.overloaded = False            # IP_VS_DEST_F_OVERLOAD
        self.available = True              # IP_VS_DEST_F_AVAILABLE (False once removed)

    @property
    def overhead(self) -> int:
        """``ip_vs_dest_conn_overhead``: ``(activeconns << 8) + inactconns``."""
        return (self.activeconns << 8) + self.inactconns

    @property
    def totalconns(self) -> int:
        return self.activeconns + self.inactconns

    # ---- counters, maintained by the connection table (ip_vs_bind_dest / unbind / state)
    def bind(self, *, template: bool = False, active: bool = False) -> None:
        if template:
            self.persistconns += 1
        elif active:
            self.activeconns += 1
        else:
            self.inactconns += 1
        u = self.u_threshold
        if u and self.activeconns + self.inactconns >= u:
            self.overloaded = True

    def unbind(self, *, template: bool = False, active: bool = False) -> None:
        if template:
            self.persistconns -= 1
        elif active:
            self.activeconns -= 1
        else:
            self.inactconns -= 1
        total = self.activeconns + self.inactconns
        if self.l_threshold:
            if total < self.l_threshold:
                self.overloaded = False
        elif self.u_threshold:
            if total * 4 < self.u_threshold * 3:
                self.overloaded = False

    def __repr__(self) -> str:
        return (f"Dest({self.rs.endpoint} w={self.weight} act={self.activeconns} "
                f"inact={self.inactconns}{' OVERLOAD' if self.overloaded else ''})")


# =========================================================================== schedulers

class Scheduler:
    """Common interface. ``schedule`` returns the chosen destination's index in
    ``Service.real_servers`` or None when none is available (the kernel then sends ICMP port
    unreachable). The hooks mirror ``init_service``/``add_dest``/``del_dest``/``upd_dest``."""

    name = ""
    #: the state after a series of adds depends only on the final list (table schedulers):
    #: ServiceState then builds it once instead of once per add
    rebuilds_from_list = False

    def __init__(self, **opts):
        if opts:
            raise TypeError(f"scheduler {self.name}: unknown option(s) {', '.join(sorted(opts))}")

    def init_service(self, svc: "ServiceState") -> None:
        pass

    def add_dest(self, svc: "ServiceState", dest: Dest) -> None:
        pass

    def del_dest(self, svc: "ServiceState", dest: Dest, pos: int) -> None:
        pass

    def upd_dest(self, svc: "ServiceState", dest: Dest) -> None:
        pass

    def schedule(self, svc: "ServiceState", caddr: int, cport: int, daddr: int, dport: int,
                 now: float = 0.0) -> int | None:
        d = self.pick(svc, caddr, cport, daddr, dport, now)
        return None if d is None else d.index

    def pick(self, svc, caddr, cport, daddr, dport, now) -> Dest | None:  # pragma: no cover
        raise NotImplementedError


def _wlc_pick(dlist: list[Dest]) -> Dest | None:
    """The weighted least-connection choice (wlc, and lblc/lblcr's fallback)."""
    least = None
    it = iter(dlist)
    for d in it:
        if not d.overloaded and d.weight > 0:
            least = d
            loh = d.overhead
            break
    if least is None:
        return None
    for d in it:
        if d.overloaded:
            continue
        doh = d.overhead
        if loh * d.weight > doh * least.weight:
            least, loh = d, doh
    return least


class RoundRobin(Scheduler):
    name = "rr"

    def init_service(self, svc):
        self.pos = -1                      # -1: the list head

    def del_dest(self, svc, dest, pos):
        # the kernel steps back to the previous entry when the current one is unlinked
        if pos <= self.pos:
            self.pos -= 1

    def pick(self, svc, caddr, cport, daddr, dport, now):
        dl = svc.dlist
        last = self.pos
        order = list(range(last + 1, len(dl)))
        if last != -1:
            order += range(0, last + 1)    # second pass from the head, up to 'last' itself
        for i in order:
            d = dl[i]
            if not d.overloaded and d.weight > 0:
                self.pos = i
                return d
        return None


class WeightedRoundRobin(Scheduler):
    name = "wrr"

    def _compute(self, svc):
        g = 0
        mx = 0
        for d in svc.dlist:
            if d.weight > 0:
                g = gcd(d.weight, g) if g > 0 else d.weight
            mx = max(mx, d.weight)
        di = g if g else 1
        return di, mx - (di - 1)

    def init_service(self, svc):
        self.cl = -1
        self.di, self.mw = self._compute(svc)
        self.cw = self.mw

    def _changed(self, svc):
        self.cl = -1
        self.di, self.mw = self._compute(svc)
        if self.cw > self.mw or not self.cw:
            self.cw = self.mw
        elif self.di > 1:
            self.cw = (self.cw // self.di) * self.di + 1

    def add_dest(self, svc, dest):
        self._changed(svc)

    def del_dest(self, svc, dest, pos):
        self._changed(svc)

    def upd_dest(self, svc, dest):
        self._changed(svc)

    def pick(self, svc, caddr, cport, daddr, dport, now):
        dl = svc.dlist
        n = len(dl)
        p = self.cl
        if self.mw == 0:
            return None
        last = p
        stop = None
        last_pass = restarted = False
        while True:
            for q in range(p + 1, n):
                d = dl[q]
                if not d.overloaded and d.weight >= self.cw:
                    self.cl = q
                    return d
                if q == stop:
                    self.cl = q
                    return None
            p = -1
            self.cw -= self.di
            if self.cw <= 0:
                self.cw = self.mw
                if last_pass or last == -1:
                    self.cl = -1
                    return None
                restarted = True
            last_pass = self.cw <= self.di
            if last_pass and restarted and last != -1:
                stop = last


class LeastConnection(Scheduler):
    name = "lc"

    def pick(self, svc, caddr, cport, daddr, dport, now):
        least = None
        loh = 0
        for d in svc.dlist:
            if d.overloaded or d.weight == 0:
                continue
            doh = d.overhead
            if least is None or doh < loh:
                least, loh = d, doh
        return least


class WeightedLeastConnection(Scheduler):
    name = "wlc"

    def pick(self, svc, caddr, cport, daddr, dport, now):
        return _wlc_pick(svc.dlist)


class ShortestExpectedDelay(Scheduler):
    name = "sed"

    def pick(self, svc, caddr, cport, daddr, dport, now):
        least = None
        it = iter(svc.dlist)
        for d in it:
            if not d.overloaded and d.weight > 0:
                least, loh = d, d.activeconns + 1
                break
        if least is None:
            return None
        for d in it:
            if d.overloaded:
                continue
            doh = d.activeconns + 1
            if loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least


class NeverQueue(Scheduler):
    name = "nq"

    def pick(self, svc, caddr, cport, daddr, dport, now):
        least = None
        loh = 0
        for d in svc.dlist:
            if d.overloaded or not d.weight:
                continue
            doh = d.activeconns + 1
            if d.activeconns == 0:
                return d
            if least is None or loh * d.weight > doh * least.weight:
                least, loh = d, doh
        return least


class WeightedFailover(Scheduler):
    name = "fo"

    def pick(self, svc, caddr, cport, daddr, dport, now):
        best = None
        hw = 0
        for d in svc.dlist:
            if not d.overloaded and d.weight > hw:
                best, hw = d, d.weight
        return best


class WeightedOverflow(Scheduler):
    name = "ovf"

    def pick(self, svc, caddr, cport, daddr, dport, now):
        best = None
        hw = 0
        for d in svc.dlist:
            w = d.weight
            if d.overloaded or d.activeconns > w or w == 0:
                continue
            if best is None or w > hw:
                best, hw = d, w
        return best


class _HashTable(Scheduler):
    """Shared by sh and dh: a 2**bits bucket table rebuilt whenever the list changes."""

    weighted = True
    default_bits = 8
    rebuilds_from_list = True

    def __init__(self, *, tab_bits: int | None = None, legacy_hash: bool = False, **opts):
        super().__init__(**opts)
        self.bits = tab_bits or self.default_bits
        self.size = 1 << self.bits
        self.mask = self.size - 1
        self.legacy = legacy_hash
        self.buckets: list[Dest | None] = [None] * self.size

    def _rebuild(self, svc, dest=None):
        dl = svc.dlist
        if not dl:
            self.buckets = [None] * self.size
            return
        out = []
        p = 0
        count = 0
        for _ in range(self.size):
            d = dl[p]
            out.append(d)
            if self.weighted:
                count += 1
                if count >= d.weight:          # weight 0 still takes one bucket
                    p = (p + 1) % len(dl)
                    count = 0
            else:
                p = (p + 1) % len(dl)
        self.buckets = out

    init_service = add_dest = upd_dest = _rebuild

    def del_dest(self, svc, dest, pos):
        self._rebuild(svc)

    def hashkey(self, fold: int, port: int, offset: int) -> int:
        if self.legacy:
            return (offset + ((port + fold) & M32) * LEGACY_MULT) & self.mask
        return (offset + hash_32((port + fold) & M32, self.bits)) & self.mask

    @staticmethod
    def _unavailable(d: Dest) -> bool:
        return d.weight <= 0 or d.overloaded


class SourceHash(_HashTable):
    name = "sh"

    def pick(self, svc, caddr, cport, daddr, dport, now):
        fold = fold_addr(caddr, svc.af)
        port = cport if "sh-port" in svc.flags else 0
        ihash = self.hashkey(fold, port, 0)
        d = self.buckets[ihash]
        if d is None:
            return None
        if not self._unavailable(d):
            return d
        if "sh-fallback" not in svc.flags:
            return None
        for offset in range(self.size):
            roffset = (offset + ihash) % self.size
            d = self.buckets[self.hashkey(fold, port, roffset)]
            if d is None:
                break
            if not self._unavailable(d):
                return d
        return None


class DestinationHash(_HashTable):
    name = "dh"
    weighted = False

    def pick(self, svc, caddr, cport, daddr, dport, now):
        d = self.buckets[self.hashkey(fold_addr(daddr, svc.af), 0, 0)]
        if d is None or not d.available or self._unavailable(d):
            return None
        return d


MH_PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
MH_DEFAULT_SIZE = 4093                     # CONFIG_IP_VS_MH_TAB_INDEX default 12
MH_KEY1 = (2654435761, 2654435761)         # generate_hash_secret() in ip_vs_mh.c
MH_KEY2 = (2654446892, 2654446892)


class MaglevHash(Scheduler):
    name = "mh"
    rebuilds_from_list = True

    def __init__(self, *, table_size: int = MH_DEFAULT_SIZE, **opts):
        super().__init__(**opts)
        if table_size not in MH_PRIMES:
            raise ValueError(f"mh table size {table_size} is not one of the kernel's primes "
                             f"{', '.join(map(str, MH_PRIMES))}")
        self.size = table_size
        self.tab_bits = (MH_PRIMES.index(table_size) + 8) // 2   # CONFIG_IP_VS_MH_TAB_INDEX / 2
        self.lookup: list[Dest | None] = [None] * table_size

    @staticmethod
    def hashkey(fold: int, port: int, key, offset: int) -> int:
        return hsiphash_u32((offset + port + fold) & M32, key)

    def _dest_fold(self, svc, d: Dest) -> int:
        if svc.af == 6:
            return fold_addr(d.ip, 6) if d.family == 6 else d.ip & M32
        return (d.ip >> 96) & M32 if d.family == 6 else d.ip & M32

    def _reassign(self, svc, dest=None):
        dl = svc.dlist
        g = 0
        for d in dl:
            if d.last_weight > 0:
                g = gcd(d.last_weight, g) if g > 0 else d.last_weight
        m = self.size
        if g < 1:
            self.lookup = [None] * m
            return
        mw = max(d.last_weight for d in dl) // g
        rshift = max(mw.bit_length() - self.tab_bits, 0)
        setup = []
        for d in dl:
            fold = self._dest_fold(svc, d)
            offset = self.hashkey(fold, d.port, MH_KEY1, 0) % m
            skip = self.hashkey(fold, d.port, MH_KEY2, 0) % (m - 1) + 1
            lw = d.last_weight
            turns = ((lw // g) >> rshift) or (1 if lw != 0 else 0)
            setup.append([offset, skip, turns, d])
        used = bytearray(m)
        lookup: list[Dest | None] = [None] * m          # populate fills every slot
        n = 0
        while n < m:
            i = 0
            dt_count = 0
            while i < len(setup):
                ds = setup[i]
                if ds[2] < 1:
                    i += 1
                    continue
                c = ds[0]
                while used[c]:
                    c += ds[1]
                    if c >= m:
                        c -= m
                ds[0] = c
                used[c] = 1
                lookup[c] = ds[3]
                n += 1
                if n == m:
                    break
                dt_count += 1
                if dt_count >= ds[2]:
                    dt_count = 0
                    i += 1
            else:
                continue
            break
        self.lookup = lookup

    init_service = add_dest = upd_dest = _reassign

    def del_dest(self, svc, dest, pos):
        self._reassign(svc)

    @staticmethod
    def _unavailable(d: Dest) -> bool:
        return d.weight <= 0 or d.overloaded

    def slot(self, svc, caddr: int, cport: int = 0) -> int:
        """The table slot a client maps to (port used with ``mh-port`` only)."""
        port = cport if "mh-port" in svc.flags else 0
        return self.hashkey(fold_addr(caddr, svc.af), port, MH_KEY1, 0) % self.size

    def pick(self, svc, caddr, cport, daddr, dport, now):
        fold = fold_addr(caddr, svc.af)
        port = cport if "mh-port" in svc.flags else 0
        ihash = self.hashkey(fold, port, MH_KEY1, 0) % self.size
        d = self.lookup[ihash]
        if d is None:
            return None
        if not self._unavailable(d):
            return d
        if "mh-fallback" not in svc.flags:
            return None
        for offset in range(self.size):
            roffset = (offset + ihash) % self.size
            d = self.lookup[self.hashkey(fold, port, MH_KEY1, roffset) % self.size]
            if d is None:
                break
            if not self._unavailable(d):
                return d
        return None


def _lb_overloaded(d: Dest, dlist: list[Dest]) -> bool:
    """lblc/lblcr ``is_overloaded``: more active connections than weight while some server of
    the service is below half of its weight."""
    if d.activeconns > d.weight:
        for o in dlist:
            if o.activeconns * 2 < o.weight:
                return True
    return False


class _Locality(Scheduler):
    """The cache table and periodic garbage collection shared by lblc and lblcr."""

    CHECK_EXPIRE_INTERVAL = 60.0
    ENTRY_TIMEOUT = 360.0
    COUNT_FOR_FULL_EXPIRATION = 30

    def __init__(self, *, expiration: float = 86400.0, tab_bits: int = 10, **opts):
        super().__init__(**opts)
        self.expiration = float(expiration)
        self.tab_bits = tab_bits
        self.tab_size = 1 << tab_bits
        self.max_size = self.tab_size * 16
        self.table: dict[int, list] = {}   # address -> entry (lastuse first)
        self.rover = 0
        self.counter = 1
        self.next_tick: float | None = None
        self.af = 4

    def init_service(self, svc):
        self.af = svc.af

    def _bucket(self, addr: int) -> int:
        return hash_32(fold_addr(addr, self.af), self.tab_bits)

    def _scan(self, now: float, limit: float, goal: int | None) -> None:
        """Walk the buckets from ``rover + 1`` removing entries with ``now >= lastuse + limit``
        (all of them, or until ``goal`` removals once a bucket is done)."""
        buckets: dict[int, list[int]] = {}
        for addr in self.table:
            buckets.setdefault(self._bucket(addr), []).append(addr)
        j = self.rover
        for _ in range(self.tab_size):
            j = (j + 1) & (self.tab_size - 1)
            for addr in reversed(buckets.get(j, ())):      # hlist_add_head: newest first
                if now >= self.table[addr][0] + limit:
                    del self.table[addr]
                    if goal is not None:
                        goal -= 1
            if goal is not None and goal <= 0:
                break
        self.rover = j

    def _tick(self, t: float) -> None:
        if self.counter % self.COUNT_FOR_FULL_EXPIRATION == 0:
            self._scan(t, self.expiration, None)
            self.counter = 1
            return
        n = len(self.table)
        if n <= self.max_size:
            self.counter += 1
            return
        goal = min((n - self.max_size) * 4 // 3, self.max_size // 2)
        self._scan(t, self.ENTRY_TIMEOUT, goal)

    def collect(self, now: float) -> None:
        """Run the periodic timer up to ``now`` (the first call starts it)."""
        if self.next_tick is None:
            self.next_tick = now + self.CHECK_EXPIRE_INTERVAL
            return
        step = self.CHECK_EXPIRE_INTERVAL
        while self.next_tick <= now:
            if len(self.table) <= self.max_size:
                # only full checks can change anything: jump to the next one
                k = (-self.counter) % self.COUNT_FOR_FULL_EXPIRATION   # ticks that just count
                full_at = self.next_tick + k * step
                if full_at > now:
                    ticks = int((now - self.next_tick) // step) + 1
                    self.counter += ticks
                    self.next_tick += ticks * step
                    break
                self.counter = 0
                self.next_tick = full_at
            self._tick(self.next_tick)
            self.next_tick += step


class LocalityLeastConnection(_Locality):
    name = "lblc"

    def pick(self, svc, caddr, cport, daddr, dport, now):
        self.collect(now)
        en = self.table.get(daddr)
        if en is not None:
            en[0] = now
            d = en[1]
            if d.available and d.weight > 0 and not _lb_overloaded(d, svc.dlist):
                return d
        d = _wlc_pick(svc.dlist)
        if d is None:
            return None
        if en is None:
            self.table[daddr] = [now, d]
        else:
            en[1] = d
        return d


class LocalityLeastConnectionReplicated(_Locality):
    name = "lblcr"

    @staticmethod
    def _set_min(members: list[Dest]) -> Dest | None:
        least = None
        it = iter(members)
        for d in it:
            if d.overloaded:
                continue
            if d.weight > 0 and d.available:
                least, loh = d, d.overhead
                break
        if least is None:
            return None
        for d in it:
            if d.overloaded:
                continue
            doh = d.overhead
            if loh * d.weight > doh * least.weight and d.available:
                least, loh = d, doh
        return least

    @staticmethod
    def _set_max(members: list[Dest]) -> Dest | None:
        most = None
        it = iter(members)
        for d in it:
            if d.weight > 0:
                most, moh = d, d.overhead
                break
        if most is None:
            return None
        for d in it:
            doh = d.overhead
            if moh * d.weight < doh * most.weight and d.weight > 0:
                most, moh = d, doh
        return most

    def pick(self, svc, caddr, cport, daddr, dport, now):
        self.collect(now)
        en = self.table.get(daddr)         # [lastuse, members (newest first), lastmod]
        if en is not None:
            en[0] = now
            members = en[1]
            d = self._set_min(members)
            if len(members) > 1 and now > en[2] + self.expiration:
                m = self._set_max(members)
                if m is not None:
                    members.remove(m)
                    en[2] = now
            if d is not None and not _lb_overloaded(d, svc.dlist):
                return d
            d = _wlc_pick(svc.dlist)
            if d is None:
                return None
            if d not in members:
                members.insert(0, d)
                en[2] = now
            return d
        d = _wlc_pick(svc.dlist)
        if d is None:
            return None
        self.table[daddr] = [now, [d], now]
        return d


class WeightedRandomTwos(Scheduler):
    name = "twos"

    def __init__(self, *, seed: int = 0, rng: random.Random | None = None, **opts):
        super().__init__(**opts)
        self.rng = rng if rng is not None else random.Random(seed)

    def pick(self, svc, caddr, cport, daddr, dport, now):
        total = 0
        choice1 = None
        for d in svc.dlist:
            if not d.overloaded and d.weight > 0:
                total += d.weight
                choice1 = d
        if choice1 is None:
            return None
        total += 1
        r1 = self.rng.getrandbits(32) % total
        r2 = self.rng.getrandbits(32) % total
        choice2 = None
        w1 = w2 = -1
        oh1 = oh2 = 0
        for d in svc.dlist:
            if d.overloaded or d.weight <= 0:
                continue
            r1 -= d.weight
            r2 -= d.weight
            if r1 <= 0 and w1 == -1:
                choice1, w1, oh1 = d, d.weight, d.overhead
            if r2 <= 0 and w2 == -1:
                choice2, w2, oh2 = d, d.weight, d.overhead
            if w1 != -1 and w2 != -1:
                break
        if choice2 is not None and w2 * oh1 > w1 * oh2:
            choice1 = choice2
        return choice1


class ConsistentHash(Scheduler):
    """DPVS ``conhash`` (source-address target): libconhash's MD5 ring. DPVS keeps ports and
    addresses in network order and prints them with ``%d``/``%u``, so on a little-endian host
    the node name carries the byte-swapped port and the key is the byte-swapped address; that
    is reproduced here (an inference from the code, not checked against a running DPVS)."""

    name = "conhash"
    REPLICA = 160
    rebuilds_from_list = True

    def __init__(self, **opts):
        super().__init__(**opts)
        self.keys: list[int] = []
        self.nodes: list[Dest] = []

    @staticmethod
    def _hash(text: str) -> int:
        dg = hashlib.md5(text.encode()).digest()
        h = sum(int.from_bytes(dg[i:i + 4], "little") for i in range(0, 16, 4))
        a = h & M64
        a = ((a + 0x7ED55D16) + (a << 12)) & M64
        a = ((a ^ 0xC761C23C) ^ (a >> 19)) & M64
        a = ((a + 0x165667B1) + (a << 5)) & M64
        a = ((a + 0xD3A2646C) ^ (a << 9)) & M64
        a = ((a + 0xFD7046C5) + (a << 3)) & M64
        a = ((a ^ 0xB55A4F09) ^ (a >> 16)) & M64
        a = (a * 3221225473) & M64
        return a - (1 << 64) if a >> 63 else a           # the rbtree compares signed longs

    @staticmethod
    def _swap16(v: int) -> int:
        return ((v & 0xFF) << 8) | (v >> 8)

    @staticmethod
    def _swap32(v: int) -> int:
        return int.from_bytes((v & M32).to_bytes(4, "big"), "little")

    def _rebuild(self, svc, dest=None):
        g = 0
        for d in svc.dlist:
            if d.weight > 0:
                g = gcd(d.weight, g) if g > 0 else d.weight
        ring: dict[int, Dest] = {}
        for d in svc.dlist:
            if d.weight <= 0:
                continue
            iden = f"{d.rs.ip}{self._swap16(d.port)}"     # "%s%d" of inet_ntop and the be16 port
            for i in range(d.weight // g * self.REPLICA):
                ring.setdefault(self._hash(f"{iden}-{i:03d}"), d)
        self.keys = sorted(ring)
        self.nodes = [ring[k] for k in self.keys]

    init_service = add_dest = upd_dest = _rebuild

    def del_dest(self, svc, dest, pos):
        self._rebuild(svc)

    def pick(self, svc, caddr, cport, daddr, dport, now):
        if not self.keys:
            return None
        if svc.af == 6:
            fold = self._swap32(fold_addr(caddr, 6))
        else:
            fold = self._swap32(caddr)
        h = self._hash(str(fold))
        i = bisect.bisect_left(self.keys, h)
        d = self.nodes[i if i < len(self.keys) else 0]
        if not d.available or d.overloaded or d.weight <= 0:
            return None
        return d


SCHEDULER_CLASSES: dict[str, type[Scheduler]] = {
    c.name: c for c in (RoundRobin, WeightedRoundRobin, LeastConnection, WeightedLeastConnection,
                        ShortestExpectedDelay, NeverQueue, WeightedFailover, WeightedOverflow,
                        SourceHash, DestinationHash, MaglevHash, LocalityLeastConnection,
                        LocalityLeastConnectionReplicated, WeightedRandomTwos, ConsistentHash)
}


def make_scheduler(name: str, **opts) -> Scheduler:
    """A fresh scheduler by its ipvsadm name; options go to its constructor (``seed`` for twos,
    ``table_size`` for mh, ``tab_bits``/``legacy_hash`` for sh/dh, ``expiration`` for
    lblc/lblcr)."""
    cls = SCHEDULER_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"unknown scheduler '{name}'; one of {', '.join(SCHEDULER_CLASSES)}")
    return cls(**opts)


# =========================================================================== service state

class ServiceState:
    """A virtual service as the director holds it: destinations in kernel list order
    (``dlist``), counters and the bound scheduler.

    ``dests`` is indexed like ``service.real_servers``; schedulers return those indexes."""

    def __init__(self, service: Service, *, listed_as: str = "added", sched_init: str = "add",
                 scheduler: Scheduler | None = None, **sched_opts):
        if listed_as not in ("added", "kernel"):
            raise ValueError(f"listed_as must be 'added' or 'kernel', not {listed_as!r}")
        if sched_init not in ("add", "edit"):
            raise ValueError(f"sched_init must be 'add' or 'edit', not {sched_init!r}")
        self.service = service
        self.af = service.family or 4
        self.flags = frozenset(service.sched_flags)
        self.proto = 6 if service.protocol is Protocol.TCP else 17 if service.protocol is Protocol.UDP else 0
        self.port = service.port
        self.fwmark = service.fwmark or 0
        self.vaddr = int(service.vip) if service.vip is not None else 0
        self.persistent = service.persistence > 0
        self.timeout = float(service.persistence)
        self.netmask = persistence_mask(service.persistence_prefix, self.af)
        self.ops = bool(service.ops)
        self.dests = [Dest(i, rs) for i, rs in enumerate(service.real_servers)]
        self.scheduler = scheduler if scheduler is not None else make_scheduler(service.scheduler, **sched_opts)
        add_order = list(self.dests) if listed_as == "added" else list(reversed(self.dests))
        self.dlist: list[Dest] = []
        if sched_init == "add" and not self.scheduler.rebuilds_from_list:
            self.scheduler.init_service(self)
            for d in add_order:
                self.dlist.insert(0, d)    # list_add_rcu: at the head
                self.scheduler.add_dest(self, d)
        else:
            for d in add_order:
                self.dlist.insert(0, d)
            self.scheduler.init_service(self)

    @classmethod
    def for_topology(cls, topo: Topology, service: Service, **opts) -> "ServiceState":
        """``listed_as`` from where the topology was read: ipvsadm listings show the kernel's
        list, configuration files the order servers are added in."""
        opts.setdefault("listed_as", "kernel" if (topo.origin or "").startswith("ipvsadm") else "added")
        return cls(service, **opts)

    def schedule(self, caddr, cport: int = 0, daddr=None, dport: int = 0, now: float = 0.0) -> int | None:
        """The scheduler's choice for a new connection (index in ``service.real_servers``)."""
        ca = addr_int(caddr)
        da = self.vaddr if daddr is None else addr_int(daddr)
        return self.scheduler.schedule(self, ca, cport, da, dport, now)

    # ---- administration (ipvsadm -e / -d)
    def set_weight(self, index: int, weight: int) -> None:
        d = self.dests[index]
        d.weight = weight
        if weight != 0:
            d.last_weight = weight
        if d.available:
            self.scheduler.upd_dest(self, d)

    def remove_dest(self, index: int) -> None:
        d = self.dests[index]
        if not d.available:
            return
        pos = self.dlist.index(d)
        del self.dlist[pos]
        d.available = False
        self.scheduler.del_dest(self, d, pos)

    @property
    def list_order(self) -> list[int]:
        """Indexes of ``service.real_servers`` in kernel list order."""
        return [d.index for d in self.dlist]

    def __repr__(self) -> str:
        return f"ServiceState({self.service.key} {self.scheduler.name} {self.dlist})"


class ServiceTable:
    """Every service of a topology with its state, and the IPVS service lookup for a client
    packet (an exact service, then a port-0 one, then a fwmark service; ``Topology.service_for``)."""

    def __init__(self, topo: Topology, **opts):
        self.topology = topo
        self.states = [ServiceState.for_topology(topo, s, **opts) for s in topo.services]
        self._by_service = {id(s): st for s, st in zip(topo.services, self.states)}
        self._cache: dict[tuple, ServiceState | None] = {}

    def lookup(self, af: int, proto: int, vaddr, vport: int) -> ServiceState | None:
        va = addr_int(vaddr)
        key = (af, proto, va, vport)
        try:
            return self._cache[key]
        except KeyError:
            pass
        ip = ipaddress.IPv6Address(va) if af == 6 else ipaddress.IPv4Address(va)
        pname = "tcp" if proto == 6 else "udp" if proto == 17 else None
        svc = self.topology.service_for(ip, vport, pname)
        st = self._by_service.get(id(svc)) if svc is not None else None
        self._cache[key] = st
        return st

    def state_of(self, service: Service) -> ServiceState:
        return self._by_service[id(service)]

    def __iter__(self) -> Iterator[ServiceState]:
        return iter(self.states)
