"""Schedulers of the reference forwarder against the kernel's selection rules."""
from __future__ import annotations

from collections import Counter
from ipaddress import ip_address as IP

import pytest

from lvs_inspect.forwarder import (
    MH_PRIMES, SCHEDULER_CLASSES, ServiceState, ServiceTable, fold_addr, hash_32, hsiphash_u32,
    make_scheduler, persistence_mask, siphash,
)
from lvs_inspect.topology.model import (
    PROFILES, SCHEDULERS, Mode, Protocol, RealServer, Service, Topology,
)

VIP = IP("203.0.113.10")
NAMES = "ABCDEFGH"


def service(weights, sched="wlc", *, flags=(), mode=Mode.NAT, port=80, **kw) -> Service:
    rss = tuple(RealServer(IP(f"192.0.2.{10 + i}"), port, weight=w, mode=mode)
                for i, w in enumerate(weights))
    return Service(VIP, port, real_servers=rss, scheduler=sched, sched_flags=tuple(sorted(flags)), **kw)


def state(weights, sched="wlc", *, flags=(), listed_as="kernel", sched_init="edit", **opts):
    return ServiceState(service(weights, sched, flags=flags), listed_as=listed_as,
                        sched_init=sched_init, **opts)


def client(i: int) -> int:
    """Distinct client addresses in 198.18.0.0/15."""
    return int(IP("198.18.0.0")) + i


def seq(st: ServiceState, n: int) -> str:
    return "".join(NAMES[st.schedule(client(0), 1000, VIP, 80)] for _ in range(n))


# ------------------------------------------------------------------------------ hashes

def test_siphash_reference_vectors():
    # SipHash-2-4 reference (Aumasson & Bernstein): key 00..0f
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    assert siphash(b"", k0, k1) == 0x726FDB47DD0E0E31
    assert siphash(bytes(range(15)), k0, k1) == 0xA129CA6149BE45E5
    assert siphash(bytes(range(8)), k0, k1) == 0x93F5F5799A932462
    # the 1-3 variant is the same code with fewer rounds: deterministic, 32-bit
    v = hsiphash_u32(0xC6336401, (2654435761, 2654435761))
    assert v == hsiphash_u32(0xC6336401, (2654435761, 2654435761)) and 0 <= v <= 0xFFFFFFFF
    assert v != hsiphash_u32(0xC6336401, (2654446892, 2654446892))


def test_hash_32_and_fold():
    assert hash_32(1, 8) == 0x61                       # 0x61C88647 >> 24
    assert hash_32(0, 8) == 0
    assert hash_32(0xFFFFFFFF, 32) == (0xFFFFFFFF * 0x61C88647) & 0xFFFFFFFF
    assert fold_addr(int(IP("192.0.2.1")), 4) == 0xC0000201
    a = int(IP("2001:db8::1:2"))
    assert fold_addr(a, 6) == 0x20010DB8 ^ 0 ^ 0 ^ 0x00010002
    assert persistence_mask(None, 4) == 0xFFFFFFFF
    assert persistence_mask(24, 4) == 0xFFFFFF00
    assert persistence_mask(64, 6) == ((1 << 64) - 1) << 64


def test_every_model_scheduler_is_implemented():
    assert set(SCHEDULERS) == set(SCHEDULER_CLASSES)
    with pytest.raises(ValueError, match="unknown scheduler 'wrrr'"):
        make_scheduler("wrrr")
    with pytest.raises(TypeError, match="unknown option"):
        make_scheduler("rr", seed=1)
    with pytest.raises(ValueError, match="not one of the kernel's primes"):
        make_scheduler("mh", table_size=4096)


# ------------------------------------------------------------------------------ rr / wrr

def test_wrr_432_kernel_order_when_bound_to_existing_servers():
    # gcd 1, mw 4: pass cw=4 -> A; cw=3 -> A B; cw=2 -> A B C; cw=1 -> A B C
    st = state([4, 3, 2], "wrr", listed_as="kernel", sched_init="edit")
    assert seq(st, 27) == "AABABCABC" * 3


def test_wrr_432_as_ipvsadm_builds_it():
    # ipvsadm -A then -a A, -a B, -a C: each add goes to the list head (list C, B, A) and
    # re-runs wrr's dest_changed; cw is 1 after the first add and stays 1 -> C B A first
    st = state([4, 3, 2], "wrr", listed_as="added", sched_init="add")
    assert st.list_order == [2, 1, 0]
    assert seq(st, 21) == "CBA" + "ABACBACBA" * 2
    # the same server set read back from `ipvsadm -Ln` (listed C, B, A) is the same list
    st2 = ServiceState(Service(VIP, 80, real_servers=tuple(reversed(service([4, 3, 2]).real_servers)),
                               scheduler="wrr"), listed_as="kernel")
    assert [st2.service.real_servers[i].ip for i in st2.list_order] == \
           [st.service.real_servers[i].ip for i in st.list_order]


def test_wrr_proportions_gcd_and_quiesce():
    st = state([4, 2], "wrr")                        # gcd 2: cw 3, 1 -> A, A B
    assert seq(st, 6) == "AABAAB"
    st = state([5, 0, 3], "wrr")
    assert Counter(seq(st, 80)) == Counter({"A": 50, "C": 30})
    st.set_weight(0, 0)
    assert set(seq(st, 10)) == {"C"}
    st = state([0, 0], "wrr")
    assert st.schedule(client(0), 1, VIP, 80) is None


def test_wrr_skips_overloaded_and_reports_none_when_all_are():
    st = state([3, 1], "wrr")
    st.dests[0].overloaded = True
    assert set(seq(st, 8)) == {"B"}
    st.dests[1].overloaded = True
    assert st.schedule(client(0), 1, VIP, 80) is None
    st.dests[0].overloaded = st.dests[1].overloaded = False
    assert set(seq(st, 8)) == {"A", "B"}


def test_rr_list_order_skips_weight0_and_overloaded():
    st = state([1, 0, 5, 1], "rr")
    assert seq(st, 6) == "ACDACD"                     # weights ignored except 0
    st.dests[2].overloaded = True
    assert seq(st, 4) == "ADAD"
    st = state([1, 1, 1], "rr", listed_as="added", sched_init="add")
    assert seq(st, 6) == "CBACBA"                     # kernel list runs newest first
    st.remove_dest(1)                                 # rr steps back past the removed entry
    assert seq(st, 4) == "CACA"


# ------------------------------------------------------------------------------ least-connection family

def _load(st: ServiceState, *counts):
    for d, (act, inact) in zip(st.dests, counts):
        d.activeconns, d.inactconns = act, inact


def test_lc_overhead_is_active_shifted_8_plus_inactive():
    st = state([1, 1], "lc")
    _load(st, (1, 0), (0, 255))                       # 256 vs 255
    assert st.schedule(client(0)) == 1
    _load(st, (1, 0), (0, 256))                       # tie: the first in list order
    assert st.schedule(client(0)) == 0
    _load(st, (0, 300), (1, 0))
    assert st.schedule(client(0)) == 1
    st = state([0, 1], "lc")
    _load(st, (0, 0), (50, 50))
    assert st.schedule(client(0)) == 1                # weight 0 never chosen


def test_wlc_divides_by_weight_and_breaks_ties_by_list_order():
    st = state([1, 3], "wlc")
    _load(st, (1, 0), (2, 0))                         # 256/1 > 512/3
    assert st.schedule(client(0)) == 1
    _load(st, (1, 0), (3, 0))                         # 256/1 == 768/3: first wins
    assert st.schedule(client(0)) == 0
    st = state([2, 2, 2], "wlc", listed_as="added", sched_init="add")  # list C, B, A
    assert st.schedule(client(0)) == 2                # all idle: the list head
    _load(st, (0, 0), (0, 0), (0, 1))
    assert st.schedule(client(0)) == 1


def test_wlc_picks_least_loaded_as_connections_accumulate():
    st = state([1, 2, 1], "wlc")
    picks = []
    for _ in range(8):
        i = st.schedule(client(0))
        st.dests[i].activeconns += 1
        picks.append(i)
    assert Counter(picks) == Counter({1: 4, 0: 2, 2: 2})


def test_sed_and_nq():
    st = state([1, 3], "sed")
    _load(st, (1, 100), (2, 0))                       # (1+1)/1 vs (2+1)/3: B; inactive ignored
    assert st.schedule(client(0)) == 1
    _load(st, (0, 0), (3, 0))                         # 1/1 vs 4/3: A
    assert st.schedule(client(0)) == 0
    st = state([5, 1, 1], "nq")
    _load(st, (3, 0), (1, 0), (0, 9))                 # C idle (no active) wins despite weight
    assert st.schedule(client(0)) == 2
    _load(st, (3, 0), (1, 0), (1, 0))                 # none idle: sed 4/5 < 2/1
    assert st.schedule(client(0)) == 0


def test_fo_and_ovf():
    st = state([2, 5, 5, 1], "fo")
    assert st.schedule(client(0)) == 1                # highest weight, first of equals
    st.dests[1].overloaded = True
    assert st.schedule(client(0)) == 2
    st = state([1, 3, 2], "ovf")
    order = []
    for _ in range(9):
        i = st.schedule(client(0))
        if i is None:
            order.append(None)
            break
        st.dests[i].activeconns += 1
        order.append(i)
    # B until its active conns exceed its weight (4 > 3), then C (3 > 2), then A (2 > 1)
    assert order == [1, 1, 1, 1, 2, 2, 2, 0, 0]
    st.dests[0].activeconns += 1
    assert st.schedule(client(0)) is None


def test_thresholds_set_and_clear_overload():
    st = state([1, 1], "rr")
    a = st.dests[0]
    a.u_threshold = 4
    for _ in range(4):
        a.bind()
    assert a.overloaded                               # total 4 >= u_threshold
    assert set(seq(st, 4)) == {"B"}
    a.unbind()                                        # 3*4 < 4*3 is false: still overloaded
    assert a.overloaded
    a.unbind()                                        # 2*4 < 12: cleared
    assert not a.overloaded
    b = st.dests[1]
    b.u_threshold, b.l_threshold = 3, 1
    for _ in range(3):
        b.bind(active=True)
    assert b.overloaded
    b.unbind(active=True)
    b.unbind(active=True)
    assert b.overloaded                               # 1 is not below l_threshold 1
    b.unbind(active=True)
    assert not b.overloaded


# ------------------------------------------------------------------------------ hashing

def test_sh_is_stable_per_client_and_weighted():
    st = state([1, 2, 3], "sh")
    table = st.scheduler.buckets
    # tiled A B B C C C ... over 256 buckets: 42 full rounds, then A B B C
    assert Counter(d.index for d in table) == Counter({0: 43, 1: 86, 2: 127})
    for i in range(200):
        first = st.schedule(client(i), 1000 + i)
        assert all(st.schedule(client(i), p) == first for p in (1, 2, 60000))
    spread = Counter(st.schedule(client(i)) for i in range(6000))
    assert spread[2] > spread[1] > spread[0]


def test_sh_bucket_is_hash_32_of_address_plus_port():
    st = state([1, 1, 1, 1], "sh", flags=("sh-port",))
    c = client(7)
    b = hash_32((c + 4242) & 0xFFFFFFFF, 8)
    assert st.schedule(c, 4242) == st.scheduler.buckets[b].index
    legacy = state([1, 1, 1, 1], "sh", legacy_hash=True)
    assert legacy.scheduler.hashkey(c, 0, 0) == (c * 2654435761) & 0xFF
    ports = Counter(st.schedule(c, p) for p in range(1000, 1400))
    assert len(ports) == 4                            # sh-port spreads one client's ports


def test_sh_fallback_moves_only_the_clients_of_a_quiesced_server():
    plain = state([1, 1, 1], "sh")
    fb = state([1, 1, 1], "sh", flags=("sh-fallback",))
    before = {i: fb.schedule(client(i)) for i in range(600)}
    for st in (plain, fb):
        st.set_weight(1, 0)
    for i, old in before.items():
        if old != 1:
            assert fb.schedule(client(i)) == old
        else:
            assert fb.schedule(client(i)) in (0, 2)
            assert plain.schedule(client(i)) is None   # without the flag: no server


def test_dh_hashes_the_destination_address():
    rss = tuple(RealServer(IP(f"192.0.2.{10 + i}"), 0, weight=1, mode=Mode.DR) for i in range(4))
    svc = Service(None, 0, Protocol.TCP, rss, scheduler="dh", fwmark=1, persistence=0)
    st = ServiceState(svc, listed_as="kernel")
    dsts = [int(IP("198.51.100.0")) + i for i in range(400)]
    got = {d: st.schedule(client(1), 1000, d, 80) for d in dsts}
    assert all(st.schedule(client(i), 5, d, 80) == got[d] for i in range(3) for d in dsts[:50])
    assert set(got.values()) == {0, 1, 2, 3}
    d0 = dsts[0]
    assert got[d0] == st.scheduler.buckets[hash_32(d0, 8)].index


def test_mh_even_spread_and_table_size():
    st = state([1, 1, 1, 1, 1], "mh")
    assert len(st.scheduler.lookup) == 4093           # CONFIG_IP_VS_MH_TAB_INDEX 12
    slots = Counter(d.index for d in st.scheduler.lookup)
    assert max(slots.values()) - min(slots.values()) <= 1
    clients = Counter(st.schedule(client(i)) for i in range(20000))
    for n in clients.values():
        assert abs(n - 4000) / 4000 < 0.05            # within 5 %
    small = state([1, 1, 1], "mh", table_size=251)
    assert len(small.scheduler.lookup) == 251 and len(MH_PRIMES) == 10
    w = state([1, 2, 3], "mh")
    slots = Counter(d.index for d in w.scheduler.lookup)
    assert abs(slots[1] / slots[0] - 2) < 0.05 and abs(slots[2] / slots[0] - 3) < 0.05


def test_mh_minimal_disruption_when_a_server_leaves():
    st = state([1] * 8, "mh")
    before = [d.index for d in st.scheduler.lookup]
    st.remove_dest(3)
    after = [d.index for d in st.scheduler.lookup]
    assert 3 not in after
    kept = [i for i, o in enumerate(before) if o != 3]
    moved_others = sum(1 for i in kept if after[i] != before[i])
    assert moved_others / len(kept) < 0.05           # Maglev: near-minimal disruption (2.2 % here)
    # the departed server's slots are spread over the others
    gained = Counter(after[i] for i, o in enumerate(before) if o == 3)
    assert len(gained) == 7


def test_mh_quiesce_with_fallback_moves_only_that_servers_clients():
    st = state([1] * 5, "mh", flags=("mh-fallback",))
    before = {i: st.schedule(client(i)) for i in range(3000)}
    table = [d.index for d in st.scheduler.lookup]
    st.set_weight(2, 0)                               # last_weight keeps its slots
    assert [d.index for d in st.scheduler.lookup] == table
    for i, old in before.items():
        now = st.schedule(client(i))
        assert now == old if old != 2 else now != 2
    plain = state([1] * 5, "mh")
    plain.set_weight(2, 0)
    assert all(plain.schedule(client(i)) is None for i, o in before.items() if o == 2)


def test_mh_port_flag():
    st = state([1, 1, 1, 1], "mh", flags=("mh-port",))
    assert len(Counter(st.schedule(client(0), p) for p in range(1000, 1200))) == 4
    st = state([1, 1, 1, 1], "mh")
    assert len(Counter(st.schedule(client(0), p) for p in range(1000, 1200))) == 1


def test_conhash_is_weighted_and_consistent():
    st = state([1, 2, 1], "conhash")
    spread = Counter(st.schedule(client(i)) for i in range(8000))
    assert abs(spread[1] / 4000 - 1) < 0.15 and abs(spread[0] / 2000 - 1) < 0.2
    before = {i: st.schedule(client(i)) for i in range(3000)}
    st.remove_dest(0)
    for i, old in before.items():
        if old != 0:
            assert st.schedule(client(i)) == old


# ------------------------------------------------------------------------------ locality / random

def test_lblc_sticks_per_destination_until_overloaded():
    st = state([1, 1], "lblc")
    dst = int(IP("198.51.100.7"))
    first = st.schedule(client(0), 1, dst, 80, now=0.0)
    assert all(st.schedule(client(i), 1, dst, 80, now=1.0) == first for i in range(20))
    other = 1 - first
    st.dests[first].activeconns = 2                   # > weight 1 ...
    assert st.schedule(client(0), 1, dst, 80, now=2.0) == other   # ... and the other is idle
    assert st.schedule(client(0), 1, dst, 80, now=3.0) == other   # the cache now says other


def test_lblc_entries_expire_after_a_day_of_disuse():
    st = state([1, 1], "lblc")
    dst = int(IP("198.51.100.7"))
    st.schedule(client(0), 1, dst, 80, now=0.0)
    assert dst in st.scheduler.table
    st.schedule(client(0), 1, int(IP("198.51.100.8")), 80, now=86000.0)
    assert dst in st.scheduler.table                  # not yet 24 h
    st.schedule(client(0), 1, int(IP("198.51.100.8")), 80, now=86400.0 + 1800.0)
    assert dst not in st.scheduler.table              # collected by the 30-minute full check
    assert int(IP("198.51.100.8")) in st.scheduler.table


def test_lblcr_grows_and_shrinks_its_set():
    st = state([2, 2, 2], "lblcr")
    dst = int(IP("198.51.100.9"))
    a = st.schedule(client(0), 1, dst, 80, now=0.0)
    st.dests[a].activeconns = 3                       # overloaded while others are idle
    b = st.schedule(client(0), 1, dst, 80, now=10.0)
    assert b != a
    members = st.scheduler.table[dst][1]
    assert {d.index for d in members} == {a, b}
    st.dests[a].activeconns = 0
    st.dests[b].activeconns = 1
    assert st.schedule(client(0), 1, dst, 80, now=20.0) == a    # least loaded in the set
    # unchanged for more than lblcr_expiration: the most loaded member leaves the set
    st.schedule(client(0), 1, dst, 80, now=10.0 + 86400.0 + 1.0)
    assert {d.index for d in st.scheduler.table[dst][1]} == {a}


def test_twos_is_seeded_weighted_and_prefers_the_less_loaded():
    def run(seed):
        st = state([1, 2, 0, 3], "twos", seed=seed)
        return [st.schedule(client(0)) for _ in range(50)]
    assert run(7) == run(7) and run(7) != run(8)
    # idle servers: the first draw wins; it is uniform over 0..total inclusive, so the first
    # server of the list gets one extra value (kernel quirk): A 2/7, B 2/7, D 3/7
    st = state([1, 2, 0, 3], "twos", seed=1)
    picks = Counter(st.schedule(client(0)) for _ in range(7000))
    assert picks[2] == 0
    for i, share in ((0, 2 / 7), (1, 2 / 7), (3, 3 / 7)):
        assert abs(picks[i] / 7000 - share) < 0.03
    st = state([1, 1], "twos", seed=3)
    st.dests[0].activeconns = 5
    picks = Counter(st.schedule(client(0)) for _ in range(900))
    # each draw hits A with 2/3 (values 0 and 1 of 0..2); loaded A only wins when both do
    assert abs(picks[0] / 900 - 4 / 9) < 0.05


@pytest.mark.parametrize("sched", sorted(SCHEDULER_CLASSES))
def test_weight_zero_is_never_chosen(sched):
    st = state([0, 3, 0, 2], sched, flags={"sh": ("sh-fallback",), "mh": ("mh-fallback",)}.get(sched, ()))
    picks = set()
    for i in range(400):
        dst = int(IP("198.51.100.0")) + (i % 50)
        p = st.schedule(client(i), 1000 + i, dst if sched in ("dh", "lblc", "lblcr") else VIP, 80,
                        now=float(i))
        picks.add(p)
        if p is not None:
            st.dests[p].activeconns += 1
    assert 0 not in picks and 2 not in picks
    assert picks & {1, 3}


def test_service_table_lookup():
    svcs = (service([1], "rr"),
            Service(VIP, 0, real_servers=(RealServer(IP("192.0.2.20"), 0, mode=Mode.DR),),
                    scheduler="rr", persistence=60),
            Service(IP("2001:db8::10"), 443, Protocol.UDP,
                    (RealServer(IP("2001:db8::20"), 443, mode=Mode.NAT),), scheduler="sh"))
    topo = Topology(PROFILES["linux"], services=svcs, origin="ipvsadm-save")
    table = ServiceTable(topo)
    assert table.lookup(4, 6, VIP, 80).service is svcs[0]
    assert table.lookup(4, 6, int(VIP), 8080).service is svcs[1]       # port-0 service
    assert table.lookup(6, 17, IP("2001:db8::10"), 443).af == 6
    assert table.lookup(6, 6, IP("2001:db8::10"), 443) is None
    assert table.states[0].list_order == [0]
    assert ServiceState.for_topology(topo.replace(origin="toml"), svcs[0]).list_order == [0]
