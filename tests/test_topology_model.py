"""The topology model, its profiles and the net helpers."""
from __future__ import annotations

import ast
import dataclasses
import ipaddress
import pathlib

import pytest

from lvs_inspect import net
from lvs_inspect.errors import InputError
from lvs_inspect.topology import (
    PROFILES, Director, Mode, Protocol, RealServer, Service, Topology, ToaVariant,
    VantageRole, get_profile, validate_topology,
)

IP = ipaddress.ip_address
ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ net

def test_parse_ip_and_ports():
    assert net.parse_ip("203.0.113.1") == IP("203.0.113.1")
    assert net.parse_ip("[2001:db8::1]") == IP("2001:db8::1")
    assert net.parse_ip_port("203.0.113.1:80") == (IP("203.0.113.1"), 80)
    assert net.parse_ip_port("[2001:db8::1]:443") == (IP("2001:db8::1"), 443)
    assert net.parse_ip_port("2001:db8::1") == (IP("2001:db8::1"), None)
    assert net.parse_ip_port("203.0.113.1", default_port=7) == (IP("203.0.113.1"), 7)
    assert net.format_ip_port(IP("2001:db8::1"), 80) == "[2001:db8::1]:80"
    assert net.format_ip_port(IP("203.0.113.1"), 80) == "203.0.113.1:80"
    for bad, msg in [("203.0.113.300", "not an IPv4 or IPv6"), ("fe80::1%eth0", "zone index")]:
        with pytest.raises(ValueError, match=msg):
            net.parse_ip(bad)
    with pytest.raises(ValueError, match="out of range"):
        net.parse_ip_port("203.0.113.1:70000")
    with pytest.raises(ValueError, match="missing '\\]'"):
        net.parse_ip_port("[2001:db8::1:80")
    with pytest.raises(ValueError, match="expected ':port'"):
        net.parse_ip_port("[2001:db8::1]80")
    with pytest.raises(ValueError, match="not a number"):
        net.parse_port("http")
    with pytest.raises(ValueError, match="not a boolean"):
        net.parse_port(True)


def test_addr_keys():
    assert net.addr_key("203.0.113.1") == 0xCB007101
    table = [IP("2001:db8::1")]
    key = net.addr_key(IP("2001:db8::1"), intern=lambda a: table.index(a))
    assert key == net.V6_FLAG | 0
    with pytest.raises(ValueError, match="interned per table"):
        net.addr_key("2001:db8::1")
    assert net.v4_from_key(0xCB007101) == IP("203.0.113.1")
    with pytest.raises(ValueError, match="table that interned it"):
        net.v4_from_key(net.V6_FLAG | 3)


def test_netmasks():
    assert net.prefix_from_netmask("255.255.255.0", 4) == 24
    assert net.prefix_from_netmask(24, 4) == 24
    assert net.prefix_from_netmask("/64", 6) == 64
    assert net.netmask_from_prefix(20) == "255.255.240.0"
    with pytest.raises(ValueError, match="not a contiguous netmask"):
        net.prefix_from_netmask("255.0.255.0", 4)
    with pytest.raises(ValueError, match="neither a prefix length nor a dotted netmask"):
        net.prefix_from_netmask("mask", 4)
    with pytest.raises(ValueError, match="IPv6 netmask is a prefix length"):
        net.prefix_from_netmask("ffff::", 6)
    with pytest.raises(ValueError, match="out of range 1..32"):
        net.prefix_from_netmask(33, 4)
    with pytest.raises(ValueError, match="not a boolean"):
        net.prefix_from_netmask(True, 4)


def test_macs():
    m = net.parse_mac("02:00:00:00:00:11")
    assert int(m) == 0x020000000011 and str(m) == "02:00:00:00:00:11"
    assert net.parse_mac("02-00-00-00-00-11") == m == net.parse_mac("0200.0000.0011")
    assert net.parse_mac("020000000011") == m == net.MAC(0x020000000011) == net.MAC("2:0:0:0:0:11")
    assert repr(m) == "MAC('02:00:00:00:00:11')" and m.locally_administered and not m.multicast
    assert net.mac_str(0x0000_5E00_0133) == "00:00:5e:00:01:33"
    assert net.vrrp_mac(51) == net.parse_mac("00:00:5e:00:01:33")
    assert net.vrrp_mac(1, 6) == net.parse_mac("00:00:5e:00:02:01")
    for bad in ("02:00:00:00:00", "zz:00:00:00:00:11", "0200.0000", "02:00:00:00:00:111"):
        with pytest.raises(ValueError, match="not a MAC address"):
            net.parse_mac(bad)
    with pytest.raises(ValueError, match="does not fit in 48 bits"):
        net.MAC(1 << 48)
    with pytest.raises(ValueError, match="out of range 1..255"):
        net.vrrp_mac(0)


# ------------------------------------------------------------------------------ profiles

def test_profiles_carry_what_checks_expect():
    linux, legacy, ali, dpvs = (PROFILES[n] for n in ("linux", "linux-legacy", "alibaba", "dpvs"))
    # SEMANTICS §0: TTL -1 on D->R in all kernel modes since 4.10, none before; none for FullNAT LBs
    assert [linux.ttl_decrement(m) for m in ("nat", "dr", "tun")] == [1, 1, 1]
    assert [legacy.ttl_decrement(m) for m in ("nat", "dr", "tun")] == [0, 0, 0]
    assert ali.ttl_decrement(Mode.FULLNAT) == dpvs.ttl_decrement(Mode.FULLNAT) == 0
    assert linux.ttl_decrement("nat", "reply") == legacy.ttl_decrement("nat", "reply") == 1
    assert dpvs.ttl_decrement(Mode.DR) == 0 and dpvs.ttl_decrement(Mode.TUN) == 0
    # TOA in SYN: Alibaba yes, DPVS >= 1.9.6 no (§4.2)
    assert ali.toa_in_syn and not dpvs.toa_in_syn and "fin" in dpvs.toa_packets
    assert ali.toa_v6 == ToaVariant(253, 20, frozenset({"syn", "ack", "data"}))
    assert dpvs.toa_v6.kind == 254 and dpvs.toa_v6.length == 20 and dpvs.toa_v6.family == 6
    assert linux.toa_v4 is None and linux.default_toa(4) is None
    assert ali.seq_delta and ali.mss_adjust and ali.timestamp_removal and ali.rst_on_expiry
    assert not (linux.seq_delta or linux.mss_adjust or linux.timestamp_removal)
    # §7.3 timeouts
    assert (linux.timeouts.tcp, linux.timeouts.tcpfin, linux.timeouts.udp) == (900, 120, 300)
    assert (dpvs.timeouts.tcp, dpvs.timeouts.tcpfin, dpvs.timeouts.udp) == (90, 7, 300)
    assert ali.timeouts == dpvs.timeouts and legacy.timeouts == linux.timeouts
    assert hash(linux)          # frozen all the way down
    assert get_profile(" DPVS ") is dpvs
    with pytest.raises(ValueError, match="unknown profile 'dvps' \\(did you mean 'dpvs'\\?\\)"):
        get_profile("dvps")


def test_toa_variant():
    t = ToaVariant(200, 8, frozenset({"syn", "ack"}))
    assert t.in_syn and t.family == 4 and str(t) == "kind 200 length 8"


# ------------------------------------------------------------------------------ model

def _topo(**kw):
    svc = Service(vip=IP("203.0.113.100"), port=80, protocol=Protocol.TCP, mode=Mode.DR,
                  real_servers=(RealServer(IP("203.0.113.11"), 80, mode=Mode.DR),
                                RealServer(IP("203.0.113.12"), 80, weight=0, mode=Mode.DR)))
    wild = Service(vip=IP("203.0.113.100"), port=0, protocol=Protocol.TCP, persistence=300,
                   mode=Mode.NAT, real_servers=(RealServer(IP("192.0.2.21"), 0, mode=Mode.NAT),))
    mark = Service(vip=None, port=0, protocol=None, fwmark=3, vips=(IP("203.0.113.101"),),
                   ports=(443,), mode=Mode.DR,
                   real_servers=(RealServer(IP("203.0.113.31"), 0, mode=Mode.DR),))
    base = dict(profile=PROFILES["linux"], services=(svc, wild, mark),
                vantages=(("p-c", VantageRole("client")),))
    base.update(kw)
    return Topology(**base)


def test_lookups():
    t = _topo()
    validate_topology(t)
    assert t.timeouts is PROFILES["linux"].timeouts
    assert t.vips == {IP("203.0.113.100"), IP("203.0.113.101")}
    assert IP("192.0.2.21") in t.rips and t.modes == {Mode.DR, Mode.NAT}
    assert t.service_for("203.0.113.100", 80, "tcp").key == "203.0.113.100:80/tcp"
    assert t.service_for("203.0.113.100", 8080, "tcp").key == "203.0.113.100:0/tcp"
    assert t.service_for("203.0.113.100", 80, "udp") is None
    assert t.service_for("203.0.113.101", 443, "udp").key == "fwmark:3"
    assert t.service_for("203.0.113.101", 80, "tcp") is None
    assert [s.key for s in t.services_of("192.0.2.21")] == ["203.0.113.100:0/tcp"]
    s = t.services[0]
    assert s.real_server("203.0.113.12").quiesced and s.real_server("203.0.113.99") is None
    assert str(s.real_servers[0]) == "203.0.113.11:80 (dr)"
    assert s.family == 4 and t.services[2].family == 4 and s.mss_reduction(t.profile) == 0
    assert t.vantage_role("p-c") == VantageRole("client")
    t5 = t.with_vantages({"captures/rs1.pcap.gz": "rs:203.0.113.11"})
    assert t5.vantage_role("rs1.pcap").kind == "rs" and t5.vantage_role("rs1.pcap.gz").kind == "rs"
    assert t.vantage_role("nowhere").kind == "unknown"


def test_building_new_versions():
    t = _topo()
    t2 = t.with_real_server_mac("203.0.113.11", "02:00:00:00:00:11")
    assert t2.services[0].real_servers[0].mac == 0x020000000011
    assert t2 != t and t2.services[0].real_servers[1].mac is None
    t3 = t.with_vantages({"p-c": "rs:203.0.113.11", "p-d": "director:rs-side"})
    assert [(n, str(r)) for n, r in t3.vantages] == [("p-c", "rs:203.0.113.11"),
                                                     ("p-d", "director:rs-side")]
    t4 = t.with_director(macs=(net.MAC(2),), vrrp_macs=(net.vrrp_mac(7),))
    assert t4.director.vrrp_mac == net.vrrp_mac(7) and net.MAC(2) in t4.director.all_macs
    assert Director(lips=(IP("192.0.2.200"),), learn_lips=True).learn_lips is False
    # equality ignores where things came from
    assert dataclasses.replace(t, source="x.toml", origin="toml") == t


def test_vantage_roles():
    assert str(VantageRole.parse("rs:2001:db8::5")) == "rs:2001:db8::5"
    assert VantageRole.parse("Director:RS-side") == VantageRole("director", side="rs-side")
    assert VantageRole.parse("router").kind == "router"
    cases = [("rs", "needs the real server's address"), ("rs:nope", "not an IPv4 or IPv6"),
             ("director:left", "unknown director side 'left'"),
             ("clinet", "unknown vantage role 'clinet' (did you mean 'client'?)"),
             ("client:x", "unknown vantage role")]
    for text, msg in cases:
        with pytest.raises(ValueError, match=msg.replace("(", "\\(").replace(")", "\\)").replace("?", "\\?")):
            VantageRole.parse(text)
    with pytest.raises(ValueError, match="is a string"):
        VantageRole.parse(3)


def test_mss_reduction():
    toa = ToaVariant(254, 8, frozenset({"ack"}))
    s = Service(vip=IP("203.0.113.100"), port=80, toa=toa, lips=(IP("192.0.2.200"),),
                real_servers=(RealServer(IP("192.0.2.11"), 80, mode=Mode.FULLNAT),))
    assert s.mss_reduction(PROFILES["dpvs"]) == 8 and s.mss_reduction(PROFILES["linux"]) == 0


# ------------------------------------------------------------------------------ validation of
# what only a programmatic (or inferred) topology can get wrong: loaders check the rest first

def _svc(**kw):
    base = dict(vip=IP("203.0.113.100"), port=80, protocol=Protocol.TCP, mode=Mode.DR,
                real_servers=(RealServer(IP("203.0.113.11"), 80, mode=Mode.DR),))
    base.update(kw)
    return Service(**base)


@pytest.mark.parametrize("service, message", [
    (_svc(vip=None), "service needs a vip (or a fwmark)"),
    (_svc(vips=(IP("203.0.113.1"),)), "vips/ports only describe fwmark services"),
    (_svc(protocol=None), "protocol must be tcp or udp"),
    (_svc(vip=None, fwmark=0), "fwmark 0 is out of range"),
    (_svc(persistence=-1), "persistence -1 is negative"),
    (_svc(persistence_prefix=40), "persistence netmask /40 is out of range 1..32"),
    (_svc(toa=ToaVariant(254, 8, frozenset({"sin"})), mode=Mode.FULLNAT, lips=(IP("192.0.2.9"),),
          real_servers=(RealServer(IP("203.0.113.11"), 80, mode=Mode.FULLNAT),)),
     "unknown TOA packet 'sin' (did you mean 'syn'?)"),
    (_svc(real_servers=(RealServer(IP("203.0.113.11"), 80, weight=70000, mode=Mode.DR),)),
     "weight 70000 is out of range 0..65535"),
    (_svc(real_servers=(RealServer(IP("203.0.113.11"), 70000, mode=Mode.NAT),)),
     "port 70000 is out of range"),
    (_svc(real_servers=(RealServer(IP("203.0.113.11"), 80, mode=Mode.DR, u_threshold=-1),)),
     "u_threshold -1 is negative"),
])
def test_programmatic_errors(service, message):
    t = Topology(profile=PROFILES["linux"], services=(service,))
    with pytest.raises(InputError) as ei:
        validate_topology(t)
    assert str(ei.value).startswith("<topology>: ")
    assert message in str(ei.value)


def test_topology_imports_only_stdlib_net_errors():
    """The model and the loaders import only the stdlib and lvs_inspect.net / .errors
    (infer.py, which reads a PacketTable, is the one exception, and nothing here imports it)."""
    import sys
    allowed_local = {"lvs_inspect.net", "lvs_inspect.errors"}
    for path in (ROOT / "lvs_inspect" / "topology").glob("*.py"):
        if path.name == "infer.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:          # relative
                    mod = node.module or ""
                    if node.level == 1:
                        assert mod != "infer", f"{path.name} imports .infer"
                        continue        # inside the package
                    names = ["lvs_inspect." + mod]
                else:
                    names = [node.module]
            else:
                continue
            for n in names:
                top = n.split(".")[0]
                if top == "lvs_inspect":
                    assert n in allowed_local, f"{path.name} imports {n}"
                else:
                    assert top in sys.stdlib_module_names or top == "__future__", \
                        f"{path.name} imports {n}"
    tree = ast.parse((ROOT / "lvs_inspect" / "net.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for m in mods:
                assert m.split(".")[0] in sys.stdlib_module_names or m == "__future__"
