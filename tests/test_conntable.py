"""Connection table of the reference forwarder: states, timeouts per profile, persistence,
port reuse, counters."""
from __future__ import annotations

import time
from ipaddress import ip_address as IP

import pytest

from lvs_inspect.forwarder import (
    ACK, DIR_INPUT, DIR_INPUT_ONLY, DIR_OUTPUT, FIN, IPPROTO_TCP, IPPROTO_UDP, RST, SYN,
    ConnTable, ServiceState, ServiceTable, TcpState, Verdict, state_timeout, tcp_next_state,
)
from lvs_inspect.topology.model import (
    FULLNAT_LB_TIMEOUTS, KERNEL_TIMEOUTS, PROFILES, Mode, Protocol, RealServer,
    Service, Topology,
)

VIP = int(IP("203.0.113.10"))
CIP = int(IP("198.51.100.1"))
TCP, UDP = IPPROTO_TCP, IPPROTO_UDP
S = TcpState


def make(weights=(1, 1), sched="rr", mode=Mode.NAT, proto=Protocol.TCP, port=80, **kw) -> ServiceState:
    rss = tuple(RealServer(IP(f"192.0.2.{10 + i}"), port, weight=w, mode=mode)
                for i, w in enumerate(weights))
    svc = Service(IP("203.0.113.10"), port, proto, rss, scheduler=sched, **kw)
    return ServiceState(svc, listed_as="kernel")


def syn(tab, t, st, cport=40000, caddr=CIP, **kw):
    return tab.packet_in(t, st, 4, TCP, caddr, cport, VIP, 80, SYN, **kw)


# ------------------------------------------------------------------------------ state tables

def test_tcp_state_table_spot_checks():
    assert tcp_next_state(S.NONE, DIR_INPUT, SYN) == S.SYN_RECV
    assert tcp_next_state(S.SYN_RECV, DIR_OUTPUT, SYN | ACK) == S.SYN_RECV
    assert tcp_next_state(S.SYN_RECV, DIR_INPUT, ACK) == S.ESTABLISHED
    assert tcp_next_state(S.ESTABLISHED, DIR_INPUT, FIN | ACK) == S.CLOSE_WAIT
    assert tcp_next_state(S.ESTABLISHED, DIR_OUTPUT, FIN | ACK) == S.FIN_WAIT
    assert tcp_next_state(S.ESTABLISHED, DIR_INPUT_ONLY, FIN | ACK) == S.FIN_WAIT
    assert tcp_next_state(S.CLOSE_WAIT, DIR_OUTPUT, FIN | ACK) == S.TIME_WAIT
    assert tcp_next_state(S.ESTABLISHED, DIR_INPUT, RST | ACK) == S.CLOSE   # RST wins
    assert tcp_next_state(S.SYN_RECV, DIR_INPUT, RST) == S.SYN_RECV
    assert tcp_next_state(S.ESTABLISHED, DIR_OUTPUT, 0) == S.CLOSE          # no flag: CLOSE
    assert tcp_next_state(S.TIME_WAIT, DIR_INPUT, SYN) == S.SYN_RECV
    assert tcp_next_state(S.NONE, DIR_INPUT, ACK) == S.ESTABLISHED
    assert state_timeout(KERNEL_TIMEOUTS, TCP, S.ESTABLISHED) == 900
    assert state_timeout(FULLNAT_LB_TIMEOUTS, TCP, S.FIN_WAIT) == 7
    assert state_timeout(KERNEL_TIMEOUTS, UDP, 11) == 300


def test_nat_connection_lifecycle_states_counters_timeouts():
    st = make()
    tab = ConnTable(KERNEL_TIMEOUTS)
    v, c = syn(tab, 0.0, st)
    assert v is Verdict.NEW and c.state == S.SYN_RECV and c.expires == 60.0
    d = st.dests[c.dest]
    assert (d.activeconns, d.inactconns) == (0, 1)                   # new entries start inactive
    assert tab.packet_out(0.01, 4, TCP, c.daddr, 80, CIP, 40000, SYN | ACK) is c
    assert c.state == S.SYN_RECV
    v, c2 = tab.packet_in(0.02, st, 4, TCP, CIP, 40000, VIP, 80, ACK)
    assert v is Verdict.FORWARD and c2 is c and c.state == S.ESTABLISHED
    assert (d.activeconns, d.inactconns) == (1, 0) and c.expires == pytest.approx(900.02)
    tab.packet_in(5.0, st, 4, TCP, CIP, 40000, VIP, 80, FIN | ACK)     # client closes first
    assert c.state == S.CLOSE_WAIT and c.expires == 65.0
    assert (d.activeconns, d.inactconns) == (0, 1)
    tab.packet_out(5.1, 4, TCP, c.daddr, 80, CIP, 40000, FIN | ACK)
    assert c.state == S.TIME_WAIT and c.expires == pytest.approx(125.1)
    tab.packet_in(5.2, st, 4, TCP, CIP, 40000, VIP, 80, ACK)
    assert c.state == S.TIME_WAIT and (c.in_pkts, c.out_pkts) == (4, 2)
    assert "TIME_WAIT" in tab.listing(5.2) and "192.0.2.1" in tab.listing(5.2)
    tab.advance(125.19)
    assert len(tab) == 1
    tab.advance(125.2)                                                # gone at now >= expires
    assert len(tab) == 0 and d.inactconns == 0
    assert tab.lookup_out(4, TCP, c.daddr, 80, CIP, 40000) is None


def test_dr_entries_follow_the_input_only_table():
    st = make(mode=Mode.DR)
    tab = ConnTable(KERNEL_TIMEOUTS)
    _, c = syn(tab, 0.0, st)
    assert c.state == S.SYN_RECV
    tab.packet_in(0.1, st, 4, TCP, CIP, 40000, VIP, 80, ACK)
    assert c.state == S.ESTABLISHED
    tab.packet_in(9.0, st, 4, TCP, CIP, 40000, VIP, 80, FIN | ACK)
    assert c.state == S.FIN_WAIT and c.expires == 129.0             # INPUT would say CLOSE_WAIT
    tab.packet_in(9.1, st, 4, TCP, CIP, 40000, VIP, 80, ACK)
    assert c.state == S.FIN_WAIT
    assert tab.lookup_out(4, TCP, c.daddr, 80, CIP, 40000) is None   # no reply lookup in DR


@pytest.mark.parametrize("profile, est, fin, udp", [
    ("linux", 900, 120, 300), ("linux-legacy", 900, 120, 300),
    ("alibaba", 90, 7, 300), ("dpvs", 90, 7, 300)])
def test_timeouts_per_profile(profile, est, fin, udp):
    topo = Topology(PROFILES[profile])
    tab = ConnTable.for_topology(topo)
    st = make(mode=Mode.DR)
    _, c = syn(tab, 100.0, st)
    tab.packet_in(100.0, st, 4, TCP, CIP, 40000, VIP, 80, ACK)
    assert c.expires == 100.0 + est
    t = 100.0 + est / 2
    tab.packet_in(t, st, 4, TCP, CIP, 40000, VIP, 80, ACK)            # every packet re-arms
    assert c.expires == t + est
    tab.advance(t + est - 0.001)
    assert tab.lookup(4, TCP, CIP, 40000, VIP, 80) is c
    tab.advance(t + est)
    assert tab.lookup(4, TCP, CIP, 40000, VIP, 80) is None
    _, c = syn(tab, 5000.0, st, cport=40001)
    tab.packet_in(5000.0, st, 4, TCP, CIP, 40001, VIP, 80, ACK)
    tab.packet_in(5001.0, st, 4, TCP, CIP, 40001, VIP, 80, FIN | ACK)
    assert c.state == S.FIN_WAIT and c.expires == 5001.0 + fin
    us = make(proto=Protocol.UDP, port=53)
    v, u = tab.packet_in(6000.0, us, 4, UDP, CIP, 5353, VIP, 53)
    assert v is Verdict.NEW and u.state_name == "UDP" and u.expires == 6000.0 + udp
    assert us.dests[u.dest].inactconns == 1 and us.dests[u.dest].activeconns == 0


def test_topology_timeouts_override_the_profile():
    t = KERNEL_TIMEOUTS.__class__(**{**KERNEL_TIMEOUTS.__dict__, "tcp": 42})
    tab = ConnTable.for_topology(Topology(PROFILES["linux"], timeouts=t))
    st = make(mode=Mode.DR)
    _, c = syn(tab, 0.0, st)
    tab.packet_in(0.0, st, 4, TCP, CIP, 40000, VIP, 80, ACK)
    assert c.expires == 42.0


def test_verdicts_without_an_entry():
    st = make()
    tab = ConnTable()
    assert tab.packet_in(0, st, 4, TCP, CIP, 1, VIP, 80, ACK) == (Verdict.NOT_SCHEDULED, None)
    assert tab.packet_in(0, st, 4, TCP, CIP, 1, VIP, 80, SYN | RST) == (Verdict.NOT_SCHEDULED, None)
    assert tab.packet_in(0, None, 4, TCP, CIP, 1, VIP, 80, SYN) == (Verdict.NO_SERVICE, None)
    dead = make(weights=(0, 0))
    assert tab.packet_in(0, dead, 4, TCP, CIP, 1, VIP, 80, SYN) == (Verdict.NO_DEST, None)
    sloppy = ConnTable(sloppy_tcp=True)
    assert sloppy.packet_in(0, st, 4, TCP, CIP, 1, VIP, 80, ACK)[0] is Verdict.NEW
    with pytest.raises(ValueError, match="TCP \\(6\\) and UDP \\(17\\)"):
        tab.packet_in(0, st, 4, 1, CIP, 0, VIP, 0)


def test_service_table_is_consulted_only_for_new_entries():
    topo = Topology(PROFILES["linux"], services=(make().service,))
    services = ServiceTable(topo)
    tab = ConnTable.for_topology(topo)
    v, c = tab.packet_in(0.0, services, 4, TCP, CIP, 40000, VIP, 80, SYN)
    assert v is Verdict.NEW and c.svc is services.states[0]
    assert tab.packet_in(0.0, services, 4, TCP, CIP, 40000, VIP, 443, SYN)[0] is Verdict.NO_SERVICE


def test_ops_udp_entries_live_for_one_packet():
    st = make(proto=Protocol.UDP, port=53, ops=True)
    expired = []
    tab = ConnTable(on_expire=lambda c, t: expired.append((c.dest, t)))
    picks = [tab.packet_in(float(i), st, 4, UDP, CIP, 5353, VIP, 53)[1].dest for i in range(4)]
    assert picks == [0, 1, 0, 1]                                   # every datagram scheduled
    assert len(tab) == 0 and expired == [(0, 0.0), (1, 1.0), (0, 2.0), (1, 3.0)]
    assert all(d.inactconns == 0 for d in st.dests)


def test_counters_feed_the_scheduler_and_thresholds():
    rss = (RealServer(IP("192.0.2.10"), 80, weight=1, mode=Mode.NAT, u_threshold=2),
           RealServer(IP("192.0.2.11"), 80, weight=1, mode=Mode.NAT, u_threshold=2))
    st = ServiceState(Service(IP("203.0.113.10"), 80, real_servers=rss, scheduler="wlc"),
                      listed_as="kernel")
    tab = ConnTable()
    got = [syn(tab, 0.0, st, cport=p)[1].dest for p in (1, 2, 3, 4)]
    assert got == [0, 1, 0, 1]                                    # wlc balances inactive counts
    assert all(d.overloaded for d in st.dests)
    assert syn(tab, 0.0, st, cport=5) == (Verdict.NO_DEST, None)
    tab.advance(60.0)                                             # SYN_RECV entries time out
    assert not any(d.overloaded for d in st.dests) and all(d.totalconns == 0 for d in st.dests)
    assert syn(tab, 60.0, st, cport=6)[0] is Verdict.NEW


# ------------------------------------------------------------------------------ port reuse

def _close(tab, st, c, t):
    """Client-first close of a NAT entry, ending in TIME_WAIT."""
    tab.packet_in(t, st, 4, TCP, c.caddr, c.cport, VIP, 80, ACK)
    tab.packet_in(t, st, 4, TCP, c.caddr, c.cport, VIP, 80, FIN | ACK)
    tab.packet_out(t, 4, TCP, c.daddr, 80, c.caddr, c.cport, FIN | ACK)
    tab.packet_in(t, st, 4, TCP, c.caddr, c.cport, VIP, 80, ACK)
    assert c.state == S.TIME_WAIT


def test_conn_reuse_mode_1_reschedules_a_syn_on_time_wait():
    st = make()
    tab = ConnTable(conn_reuse_mode=1)
    _, old = syn(tab, 0.0, st)
    _close(tab, st, old, 1.0)
    v, new = syn(tab, 2.0, st)
    assert v is Verdict.NEW and new is not old and new.dest != old.dest     # rr moved on
    assert old.dead and tab.stats["rescheduled"] == 1
    assert st.dests[old.dest].inactconns == 0


def test_conn_reuse_mode_0_keeps_the_old_server():
    st = make()
    tab = ConnTable(conn_reuse_mode=0)
    _, old = syn(tab, 0.0, st)
    _close(tab, st, old, 1.0)
    v, again = syn(tab, 2.0, st)
    assert v is Verdict.FORWARD and again is old and old.state == S.SYN_RECV


def test_conn_reuse_mode_2_covers_dr_fin_wait():
    for mode, expect_new in ((1, False), (2, True), (3, True)):
        st = make(mode=Mode.DR)
        tab = ConnTable(conn_reuse_mode=mode)
        _, old = syn(tab, 0.0, st)
        tab.packet_in(0.1, st, 4, TCP, CIP, 40000, VIP, 80, ACK)
        tab.packet_in(0.2, st, 4, TCP, CIP, 40000, VIP, 80, FIN | ACK)
        assert old.state == S.FIN_WAIT
        v, c = syn(tab, 1.0, st)
        assert (v is Verdict.NEW) == expect_new and (c is not old) == expect_new


def test_drop_on_reuse_drops_the_first_syn():
    st = make()
    tab = ConnTable(drop_on_reuse=True)
    _, old = syn(tab, 0.0, st)
    _close(tab, st, old, 1.0)
    assert syn(tab, 2.0, st) == (Verdict.DROP, None)
    v, new = syn(tab, 3.0, st)                                   # the retransmission
    assert v is Verdict.NEW and new.dest != old.dest


def test_expire_nodest_conn_reschedules_a_syn_to_a_quiesced_server():
    st = make()
    for flag, expect_new in ((False, False), (True, True)):
        tab = ConnTable(expire_nodest_conn=flag)
        _, old = syn(tab, 0.0, st, cport=50000 + flag)
        tab.packet_in(0.1, st, 4, TCP, CIP, old.cport, VIP, 80, ACK)
        st.set_weight(old.dest, 0)
        v, c = syn(tab, 1.0, st, cport=old.cport)
        assert (v is Verdict.NEW) == expect_new
        st.set_weight(old.dest, 1)


def test_removed_server_drops_packets_of_its_entries():
    st = make()
    tab = ConnTable(expire_nodest_conn=True)
    _, c = syn(tab, 0.0, st)
    st.remove_dest(c.dest)
    assert tab.packet_in(1.0, st, 4, TCP, CIP, 40000, VIP, 80, ACK) == (Verdict.DROP, None)
    assert c.dead and len(tab) == 0


# ------------------------------------------------------------------------------ persistence

def test_persistence_same_client_same_server_until_expiry():
    st = make(weights=(1, 1, 1), persistence=300)
    tab = ConnTable()
    _, a = syn(tab, 0.0, st, cport=1)
    tab.packet_in(0.0, st, 4, TCP, CIP, 1, VIP, 80, RST)           # CLOSE: gone after 10 s
    other = int(IP("198.51.100.2"))
    _, b = syn(tab, 50.0, st, cport=7, caddr=other)
    assert b.dest != a.dest                                        # rr moved on for others
    for t, port in ((100.0, 2), (200.0, 3), (350.0, 4)):
        v, c = syn(tab, t, st, cport=port)
        assert v is Verdict.NEW and c.dest == a.dest and c.control is not None
        tab.packet_in(t, st, 4, TCP, CIP, port, VIP, 80, RST)
    ct = tab.template_for(st, CIP)
    assert ct.expires == 650.0 and ct.state_name == "NONE" and st.dests[a.dest].persistconns == 1
    tab.advance(649.9)
    assert tab.template_for(st, CIP) is ct
    tab.advance(650.0)                                             # 300 s after the last use
    assert tab.template_for(st, CIP) is None and st.dests[a.dest].persistconns == 0
    _, free = syn(tab, 651.0, st, cport=5)
    assert free.control is not None and free.dest == st.dests[(b.dest + 1) % 3].index


def test_persistence_netmask_groups_clients():
    st = make(weights=(1, 1), persistence=60, persistence_prefix=24)
    tab = ConnTable()
    _, a = syn(tab, 0.0, st, caddr=int(IP("198.51.100.1")))
    _, b = syn(tab, 1.0, st, caddr=int(IP("198.51.100.200")))
    _, c = syn(tab, 2.0, st, caddr=int(IP("198.51.101.1")))
    assert a.dest == b.dest != c.dest
    assert a.control is b.control is not c.control


def test_template_outlives_its_connections_in_60s_steps():
    st = make(weights=(1, 1), persistence=300)
    tab = ConnTable(KERNEL_TIMEOUTS)
    _, c = syn(tab, 0.0, st)
    tab.packet_in(0.0, st, 4, TCP, CIP, 40000, VIP, 80, ACK)
    ct = c.control
    for t in range(100, 1001, 100):                                # an active session
        tab.packet_in(float(t), st, 4, TCP, CIP, 40000, VIP, 80, ACK)
    tab.packet_in(1000.0, st, 4, TCP, CIP, 40000, VIP, 80, FIN | ACK)
    tab.packet_out(1000.0, 4, TCP, c.daddr, 80, CIP, 40000, FIN | ACK)
    assert c.state == S.TIME_WAIT and c.expires == 1120.0
    tab.advance(1119.0)
    assert tab.template_for(st, CIP) is ct and ct.timeout == 60.0   # kept past 300 s in 60 s steps
    tab.advance(1120.0)
    assert c.dead and ct.n_control == 0 and not ct.dead
    tab.advance(1139.9)
    assert not ct.dead                                             # timer runs at 300 + 14*60
    tab.advance(1140.0)
    assert ct.dead and tab.template_for(st, CIP) is None


def test_port_zero_service_shares_one_template_across_ports():
    rss = (RealServer(IP("192.0.2.10"), 0, mode=Mode.DR), RealServer(IP("192.0.2.11"), 0, mode=Mode.DR))
    st = ServiceState(Service(IP("203.0.113.10"), 0, real_servers=rss, scheduler="rr", persistence=120),
                      listed_as="kernel")
    tab = ConnTable()
    _, a = tab.packet_in(0.0, st, 4, TCP, CIP, 1000, VIP, 80, SYN)
    _, b = tab.packet_in(1.0, st, 4, TCP, CIP, 1001, VIP, 443, SYN)
    assert a.dest == b.dest and a.control is b.control
    assert (a.dport, b.dport) == (80, 443)                        # port 0: the client's port
    assert a.control.vport == 0


def test_quiesced_server_keeps_its_templates_unless_expire_quiescent_template():
    for flag in (False, True):
        st = make(weights=(1, 1), persistence=300)
        tab = ConnTable(expire_quiescent_template=flag)
        _, a = syn(tab, 0.0, st, cport=1)
        st.set_weight(a.dest, 0)
        _, b = syn(tab, 1.0, st, cport=2)
        assert (b.dest == a.dest) != flag


def test_persistent_entries_are_not_rescheduled_on_port_reuse():
    st = make(weights=(1, 1), persistence=300)
    tab = ConnTable(conn_reuse_mode=1)
    _, old = syn(tab, 0.0, st)
    _close(tab, st, old, 1.0)
    v, c = syn(tab, 2.0, st)
    assert v is Verdict.FORWARD and c is old


def test_force_dest_follows_the_trace_and_reports_the_scheduler_choice():
    st = make(weights=(1, 1, 1))
    tab = ConnTable()
    v, c = syn(tab, 0.0, st, force_dest=2)
    assert c.dest == 2 and tab.last_expected == 0
    v, c = syn(tab, 0.0, st, cport=2)
    assert c.dest == 1 and tab.last_expected == 1                 # rr state advanced as the kernel's


# ------------------------------------------------------------------------------ FullNAT, clock, speed

def test_fullnat_reply_found_by_local_address():
    st = make(mode=Mode.FULLNAT)
    tab = ConnTable(FULLNAT_LB_TIMEOUTS)
    _, c = syn(tab, 0.0, st)
    assert tab.lookup_out(4, TCP, c.daddr, 80, CIP, 40000) is None
    lip = int(IP("192.0.2.250"))
    tab.bind_local(c, lip, 5001)
    assert tab.packet_out(0.1, 4, TCP, c.daddr, 80, lip, 5001, SYN | ACK) is c
    tab.packet_in(0.2, st, 4, TCP, CIP, 40000, VIP, 80, ACK)
    assert c.state == S.ESTABLISHED and c.expires == pytest.approx(90.2)


def test_ipv6_entries_and_late_timestamps():
    rss = (RealServer(IP("2001:db8::20"), 80, mode=Mode.NAT),)
    st = ServiceState(Service(IP("2001:db8::10"), 80, real_servers=rss, scheduler="wlc"))
    tab = ConnTable()
    c6 = int(IP("2001:db8:1::5"))
    v, c = tab.packet_in(10.0, st, 6, TCP, c6, 1234, IP("2001:db8::10"), 80, SYN)
    assert v is Verdict.NEW and c.af == 6 and "[2001:db8::20]:80" in c.describe(10.0)
    tab.packet_in(9.0, st, 6, TCP, c6, 1234, int(IP("2001:db8::10")), 80, ACK)  # earlier stamp
    assert c.expires == 910.0 and tab.clock == 10.0
    assert tab.lookup(4, TCP, c6 & 0xFFFFFFFF, 1234, VIP, 80) is None


def test_flush_and_expiry_callback():
    st = make(weights=(1, 1), persistence=30)
    seen = []
    tab = ConnTable(on_expire=lambda c, t: seen.append(c.template))
    syn(tab, 0.0, st, cport=1)
    syn(tab, 0.0, st, cport=2)
    tab.flush()
    assert len(tab) == 0 and sorted(seen) == [False, False, True]
    assert all(d.totalconns == 0 and d.persistconns == 0 for d in st.dests)


def test_replay_speed_over_100k_packets_per_second():
    st = make(weights=(1, 1, 1, 1), sched="wlc")
    tab = ConnTable()
    n = 0
    t0 = time.perf_counter()
    ts = 0.0
    for i in range(6000):
        ca, cp = CIP + (i % 200), 1024 + i
        ts += 0.001
        tab.packet_in(ts, st, 4, TCP, ca, cp, VIP, 80, SYN)
        c = tab.lookup(4, TCP, ca, cp, VIP, 80)
        tab.packet_out(ts, 4, TCP, c.daddr, 80, ca, cp, SYN | ACK)
        for _ in range(3):
            tab.packet_in(ts, st, 4, TCP, ca, cp, VIP, 80, ACK)
            tab.packet_out(ts, 4, TCP, c.daddr, 80, ca, cp, ACK)
        tab.packet_in(ts, st, 4, TCP, ca, cp, VIP, 80, FIN | ACK)
        n += 9
    rate = n / (time.perf_counter() - t0)
    assert rate >= 100_000, f"{rate:.0f} packets/s"
    tab.advance(ts + 1000.0)
    assert len(tab) == 0 and all(d.totalconns == 0 for d in st.dests)
