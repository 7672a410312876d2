"""Stitching beyond TCP over IPv4: UDP services (connections end by the profile's timeout) and
IPv6 services, on hand-built two-hop NAT traces."""
from __future__ import annotations


from lvs_inspect.capture import read_table
from lvs_inspect.capture.writer import PcapngWriter
from lvs_inspect.flows import LEGS, stitch
from lvs_inspect.topology import loads_topology
from packets import CIP, CIP6, RIP, RIP6, VIP, VIP6, eth, ip4, ip6, udp

D_MAC_C, D_MAC_R = bytes.fromhex("020000000002"), bytes.fromhex("020000000003")
R_MAC = bytes.fromhex("020000000011")
C_MAC = bytes.fromhex("020000000001")
S = 1_000_000_000


def topo_text(vip, rip, proto, port, udp_timeout=300):
    return f'''
profile = "linux"
[director]
macs = ["02:00:00:00:00:02", "02:00:00:00:00:03"]
[timeouts]
udp = {udp_timeout}
[[service]]
vip = "{vip}"
port = {port}
protocol = "{proto}"
scheduler = "rr"
mode = "nat"
  [[service.real_server]]
  ip = "{rip}"
  port = {port}
[vantage]
"c" = "director:client-side"
"r" = "director:rs-side"
'''


def write(path, packets):
    with PcapngWriter(str(path), [("c", 1, 65535, 9), ("r", 1, 65535, 9)]) as w:
        for iface, ts, frame in packets:
            w.write(iface, ts, frame)


def nat_exchange(t0, sport, *, v6=False):
    """One UDP query and its answer, before and after the director."""
    if v6:
        q_c = eth(ip6(udp(sport=sport, dport=53), src=CIP6, dst=VIP6), 0x86DD, src=C_MAC, dst=D_MAC_C)
        q_r = eth(ip6(udp(sport=sport, dport=53), src=CIP6, dst=RIP6, hlim=63), 0x86DD, src=D_MAC_R, dst=R_MAC)
        a_r = eth(ip6(udp(sport=53, dport=sport, data=b"a" * 20), src=RIP6, dst=CIP6), 0x86DD, src=R_MAC,
                  dst=D_MAC_R)
        a_c = eth(ip6(udp(sport=53, dport=sport, data=b"a" * 20), src=VIP6, dst=CIP6, hlim=63), 0x86DD,
                  src=D_MAC_C, dst=C_MAC)
    else:
        q_c = eth(ip4(udp(sport=sport, dport=53), src=CIP, dst=VIP), src=C_MAC, dst=D_MAC_C)
        q_r = eth(ip4(udp(sport=sport, dport=53), src=CIP, dst=RIP, ttl=63), src=D_MAC_R, dst=R_MAC)
        a_r = eth(ip4(udp(sport=53, dport=sport, data=b"a" * 20), src=RIP, dst=CIP), src=R_MAC, dst=D_MAC_R)
        a_c = eth(ip4(udp(sport=53, dport=sport, data=b"a" * 20), src=VIP, dst=CIP, ttl=63), src=D_MAC_C,
                  dst=C_MAC)
    return [(0, t0, q_c), (1, t0 + 1000, q_r), (1, t0 + 50_000, a_r), (0, t0 + 51_000, a_c)]


def test_udp_connections_end_by_the_timeout(tmp_path):
    p = tmp_path / "udp.pcapng"
    # the same client port three times: 2 s apart, then 20 s later
    write(p, nat_exchange(0, 40000) + nat_exchange(2 * S, 40000) + nat_exchange(22 * S, 40000))
    t = read_table([str(p)])
    f = stitch(t, loads_topology(topo_text(VIP, RIP, "udp", 53, udp_timeout=10), "t.toml"))
    assert {LEGS[x] for x in f.leg} == {"client-director", "director-rs", "rs-director", "director-client"}
    c = f.connections
    assert len(c) == 2                                  # 0 s and 2 s are one flow; 22 s is a new one
    assert list(c["state"]) == ["answered", "answered"]
    assert (f.conn[:8] == f.conn[0]).all() and (f.conn[8:] == f.conn[8]).all()


def test_ipv6_nat_service(tmp_path):
    p = tmp_path / "v6.pcapng"
    write(p, nat_exchange(0, 40001, v6=True))
    t = read_table([str(p)])
    f = stitch(t, loads_topology(topo_text(VIP6, RIP6, "udp", 53), "t.toml"))
    assert [LEGS[x] for x in f.leg] == ["client-director", "director-rs", "rs-director", "director-client"]
    c = f.connections
    assert len(c) == 1 and t.addr_str(int(c["cip"][0])) == CIP6 and t.addr_str(int(c["vip"][0])) == VIP6
    assert t.addr_str(int(f.endpoints.rs_ip[c["rs"][0]])) == RIP6
