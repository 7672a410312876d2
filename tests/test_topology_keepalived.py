"""keepalived.conf (with the Alibaba / DPVS FullNAT extensions) -> topology."""
from __future__ import annotations

import ipaddress
import pathlib
import textwrap

import pytest

from lvs_inspect.errors import InputError
from lvs_inspect.net import vrrp_mac
from lvs_inspect.topology import (
    Mode, Protocol, ToaVariant, TunType, dump_toml, load_topology, loads_topology,
)

DATA = pathlib.Path(__file__).parent / "data" / "topology"
IP = ipaddress.ip_address


def test_lvs_dr_director_pair_with_includes():
    t = load_topology(str(DATA / "keepalived-dr.conf"))
    assert t.origin == "keepalived" and t.profile.name == "linux"
    d = t.director
    assert d.ips == (IP("203.0.113.2"),) and d.interfaces == ("eth0",)
    assert d.vrrp_macs == (vrrp_mac(51),)                  # use_vmac + virtual_router_id 51
    assert (t.timeouts.tcp, t.timeouts.tcpfin, t.timeouts.udp) == (900, 120, 60)
    web, dns1, dns2, mark, nat, tun = t.services
    assert (web.scheduler, web.persistence, web.persistence_prefix) == ("wrr", 300, 24)
    assert [(str(r.ip), r.weight) for r in web.real_servers] == [("203.0.113.11", 3), ("203.0.113.12", 1)]
    assert [s.vip for s in (dns1, dns2)] == [IP("203.0.113.120"), IP("203.0.113.121")]
    assert dns1.name == "DNS" and dns1.protocol is Protocol.UDP and dns1.ops
    assert mark.fwmark == 7 and mark.persistence == 360 and mark.sched_flags == ("sh-fallback", "sh-port")
    assert mark.real_servers[0].port == 0
    # from keepalived-conf.d/nat-tun.conf
    assert [(r.port, r.weight) for r in nat.real_servers] == [(443, 1), (8443, 2)]
    assert nat.modes == {Mode.NAT}
    gue, gre = tun.real_servers
    assert (gue.tun, gue.tun_port, gue.tun_flags) == (TunType.GUE, 6080, "csum")
    assert gre.tun is TunType.GRE and gre.tun_port is None
    assert tun.sched_flags == ("mh-port",)
    # positions point into the included file
    assert tun.pos.path.endswith("keepalived-conf.d/nat-tun.conf") and tun.pos.line == 14


def test_dpvs_fullnat():
    t = load_topology(str(DATA / "keepalived-dpvs.conf"))
    assert t.profile.name == "dpvs"             # "IP ifname" local addresses, dpdk_interface
    (s,) = t.services                          # the SNAT "match" service is skipped
    assert s.key == "192.0.2.254:80/tcp" and s.name == "192.0.2.254-80"
    assert s.modes == {Mode.FULLNAT} and s.synproxy and s.scheduler == "rr"
    assert s.lips == (IP("192.0.2.200"), IP("192.0.2.201"))
    assert s.toa == ToaVariant(254, 8, frozenset({"ack", "data", "fin"}))
    assert t.director.interfaces == ("dpdk0.kni", "dpdk0")


def test_alibaba_fullnat():
    t = load_topology(str(DATA / "keepalived-alibaba.conf"))
    assert t.profile.name == "alibaba"
    (s,) = t.services
    assert s.lips == tuple(IP(f"198.51.100.{i}") for i in range(200, 204))
    assert s.toa.in_syn and [r.port for r in s.real_servers] == [8080, 8080]
    assert t.timeouts.tcp == 90
    assert load_topology(str(DATA / "keepalived-alibaba.conf"), profile="dpvs").profile.name == "dpvs"


@pytest.mark.parametrize("name", ["keepalived-dr.conf", "keepalived-dpvs.conf", "keepalived-alibaba.conf"])
def test_round_trip(name):
    t = load_topology(str(DATA / name))
    assert loads_topology(dump_toml(t), "dumped.toml") == t


def ka(tmp_path, text, name="keepalived.conf"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return load_topology(str(p))


def test_keepalived_defaults(tmp_path):
    t = ka(tmp_path, """
        virtual_server 203.0.113.100 80 {
            real_server 203.0.113.11 8080 {
            }
        }
        virtual_server 203.0.113.101 80 {
            lb_kind DR
            real_server 203.0.113.12 8080 {   # DR: keepalived resets the port
            }
        }
        virtual_server 203.0.113.102 {          # no port: persistent
            lb_kind DR
            protocol TCP
            real_server 203.0.113.13
        }
        virtual_server 203.0.113.103 80 {       # no real servers: ignored by keepalived
            lb_kind DR
        }
        """)
    a, b, c = t.services
    assert (a.scheduler, a.protocol, a.modes) == ("wlc", Protocol.UDP, {Mode.NAT})
    assert a.real_servers[0].port == 8080
    assert b.real_servers[0].port == 80
    assert c.port == 0 and c.persistence == 360 and c.real_servers[0].port == 0


def test_lexing_details(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.conf").write_text("include more/*.conf   # relative to sub/\n")
    (tmp_path / "sub" / "more").mkdir()
    (tmp_path / "sub" / "more" / "b.conf").write_text(
        "virtual_server 203.0.113.200 443 { lb_kind DR\n protocol TCP\n"
        "  real_server 203.0.113.21 443 { weight 2 } }\n")
    t = ka(tmp_path, """
        $VIP=203.0.113.100
        ! a comment
        virtual_server ${VIP} 80 {
            lvs_sched "rr"             # quoted value
            lvs_method DR
            protocol TCP
            real_server 203.0.113.11 80 { weight 5 }
            real_server 203.0.113.12 80
            {
                weight 1 ! trailing comment
            }
        }
        include sub/{a,missing}.conf
        include nothing-here-*.conf
        """)
    web, other = t.services
    assert web.vip == IP("203.0.113.100") and web.scheduler == "rr"
    assert [r.weight for r in web.real_servers] == [5, 1]
    assert other.key == "203.0.113.200:443/tcp"
    assert other.pos.path.endswith("sub/more/b.conf")


def test_ipv6_and_ranges(tmp_path):
    t = ka(tmp_path, """
        virtual_server_group V6 {
            2001:db8::10-12 443
            203.0.113.8/30 443
            fwmark 9 inet6
        }
        virtual_server group V6 {
            lvs_method TUN
            protocol TCP
            persistence_timeout 100
            real_server 2001:db8::21 443
        }
        virtual_server 2001:db8::100 80 {
            lvs_method DR
            protocol TCP
            persistence_timeout 100
            persistence_granularity 64
            real_server 2001:db8::22 80
        }
        """)
    keys = [s.key for s in t.services]
    assert keys[:3] == ["[2001:db8::10]:443/tcp", "[2001:db8::11]:443/tcp", "[2001:db8::12]:443/tcp"]
    assert keys[3:7] == [f"203.0.113.{i}:443/tcp" for i in range(8, 12)] and keys[7] == "fwmark:9"
    assert t.services[8].persistence_prefix == 64 and t.services[0].persistence == 100
    assert t.services[3].real_servers[0].tun is TunType.IPIP      # IPv6 RS of an IPv4 VIP: TUN


def test_group_with_a_zero_port_entry_is_persistent(tmp_path):
    t = ka(tmp_path, """
        virtual_server_group G {
            203.0.113.50 80
            203.0.113.51
        }
        virtual_server group G {
            lb_kind DR
            protocol TCP
            real_server 203.0.113.61
        }
        """)
    assert [(s.port, s.persistence) for s in t.services] == [(80, 360), (0, 360)]
    assert [s.real_servers[0].port for s in t.services] == [80, 0]


HEAD = "virtual_server 203.0.113.100 80 {\n    lb_kind DR\n    protocol TCP\n"   # 3 lines
RS = "    real_server 203.0.113.11 80 {\n        weight 1\n    }\n"                  # 3 lines

ERRORS = [
    # (text, line, key, message)
    ("@lb1 virtual_server 203.0.113.1 80 {\n}\n", 1, "@lb1", "conditional configuration"),
    ('virtual_server 203.0.113.1 80 {\n  lvs_sched "rr\n}\n', 2, None, 'unterminated " quote'),
    ("include\n", 1, "include", "include needs a file name"),
    ("include missing.conf\n", 1, "include", "included file 'missing.conf' not found"),
    ("include keepalived.conf\n", 1, "include", "include loop"),
    ("{\n}\n", 1, None, "'{' without a keyword before it"),
    ("}\n", 1, None, "'}' without a matching '{'"),
    (HEAD + RS, 1, "virtual_server", "the block of 'virtual_server' opened here is not closed"),
    ("virtual_servr 203.0.113.1 80 {\n}\n", 1, "virtual_servr", "unknown keyword 'virtual_servr' (did you mean 'virtual_server'?)"),
    (HEAD + "    lb_algoo rr\n" + RS + "}\n", 4, "lb_algoo", "unknown keyword 'lb_algoo' in virtual_server (did you mean 'lb_algo'?)"),
    (HEAD + "    real_server 203.0.113.11 80 {\n        wieght 1\n    }\n}\n", 5, "wieght",
     "in real_server (did you mean 'weight'?)"),
    ("virtual_server_group {\n}\n", 1, "virtual_server_group", "'virtual_server_group' needs a name"),
    ("virtual_server_group G\n", 1, "virtual_server_group", "needs a { ... } block"),
    ("virtual_server_group G {\n}\nvirtual_server group G {\n" + RS + "}\n", 1, "virtual_server_group",
     "virtual_server_group 'G' is empty"),
    ("virtual_server_group G {\n  203.0.113.0/16 80\n}\n", 2, "203.0.113.0/16", "range 203.0.113.0/16 has 65536 addresses"),
    ("virtual_server_group G {\n  203.0.113.1-300 80\n}\nvirtual_server group G {\n" + RS + "}\n", 2,
     "203.0.113.1-300", "range end '300' is not 0..255"),
    ("virtual_server_group G {\n  203.0.113.9-203.0.113.1 80\n}\nvirtual_server group G {\n" + RS + "}\n", 2,
     None, "the range ends before it starts"),
    ("virtual_server_group G {\n  203.0.113.1 http\n}\n", 2, "203.0.113.1", "port 'http' is not a number"),
    ("virtual_server_group G {\n  fwmark 1 inet4\n}\n", 2, "fwmark", "fwmark family 'inet4': inet or inet6"),
    ("virtual_server_group G {\n  fwmark x\n}\n", 2, "fwmark", "'fwmark x': expected a number 1..4294967295"),
    ("global_defs {\n  lvs_timeouts tcp\n}\n", 2, "lvs_timeouts", "lvs_timeouts takes pairs"),
    ("global_defs {\n  lvs_timeouts tpc 1\n}\n", 2, "lvs_timeouts", "unknown lvs_timeouts kind 'tpc' (did you mean 'tcp'?)"),
    ("global_defs {\n  lvs_timeouts tcp soon\n}\n", 2, "lvs_timeouts", "lvs_timeouts tcp 'soon' is not a number"),
    ("vrrp_instance V {\n  virtual_router_id 300\n}\n", 2, "virtual_router_id", "expected a number 1..255"),
    ("vrrp_instance V {\n  unicast_src_ip 203.0.113.300\n}\n", 2, "unicast_src_ip", "not an IPv4 or IPv6 address"),
    ("static_ipaddress {\n  203.0.113.300/24 dev eth0\n}\n", 2, "203.0.113.300/24", "not an IPv4 or IPv6"),
    ("virtual_server 203.0.113.1 80\n", 1, "virtual_server", "'virtual_server' needs a { ... } block"),
    ("virtual_server {\n}\n", 1, "virtual_server", "virtual_server needs IP [PORT], fwmark N or group NAME"),
    ("virtual_server www 80 {\n}\n", 1, "virtual_server", "'www' is not an IPv4 or IPv6 address"),
    ("virtual_server 203.0.113.1 99999 {\n}\n", 1, "virtual_server", "port 99999 is out of range"),
    ("virtual_server group {\n}\n", 1, "virtual_server", "virtual_server group needs the group's name"),
    ("virtual_server_group WEB {\n  203.0.113.1 80\n}\nvirtual_server group WBE {\n" + RS + "}\n", 4, "group",
     "no virtual_server_group 'WBE' (did you mean 'WEB'?)"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_sched\n" + RS + "}\n", 2, "lvs_sched", "'lvs_sched' needs a scheduler name"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_sched rrr\n  lvs_method DR\n" + RS.replace(".11", ".12") + "}\n",
     2, "lvs_sched", "unknown scheduler 'rrr' (did you mean 'rr'?)"),
    ("virtual_server 203.0.113.1 80 {\n  persistence_granularity\n" + RS + "}\n", 2,
     "persistence_granularity", "persistence_granularity needs a netmask"),
    ("virtual_server 203.0.113.1 80 {\n  persistence_granularity 255.0.255.0\n" + RS + "}\n", 2,
     "persistence_granularity", "not a contiguous netmask"),
    ("virtual_server 203.0.113.1 80 {\n  persistence_timeout never\n" + RS + "}\n", 2,
     "persistence_timeout", "expected a number 0..2678400"),
    ("virtual_server 203.0.113.1 80 {\n  protocol SCTP\n" + RS + "}\n", 2, "protocol", "SCTP services are not supported"),
    ("virtual_server 203.0.113.1 80 {\n  protocol TPC\n" + RS + "}\n", 2, "protocol", "protocol 'TPC' (did you mean 'TCP'?)"),
    ("virtual_server 203.0.113.1 80 {\n  laddr_group_name\n" + RS + "}\n", 2, "laddr_group_name",
     "laddr_group_name needs a group name"),
    ("local_address_group LG {\n  192.0.2.200\n}\nvirtual_server 203.0.113.1 80 {\n  laddr_group_name GL\n"
     + RS + "}\n", 5, "laddr_group_name", "no local_address_group 'GL'"),
    ("virtual_server fwmark 1 {\n  ip_family ipv6\n" + RS + "}\n", 2, "ip_family", "ip_family is inet or inet6"),
    ("virtual_server 203.0.113.1 80 {\n  lb_kind\n" + RS + "}\n", 2, "lb_kind", "'lb_kind' needs NAT, DR, TUN or FNAT"),
    ("virtual_server 203.0.113.1 80 {\n  lb_kind DRR\n" + RS + "}\n", 2, "lb_kind",
     "unknown forwarding method 'DRR' (did you mean 'DR'?)"),
    ("virtual_server 203.0.113.1 80 {\n  lb_kind DR type ipip\n" + RS + "}\n", 2, "lb_kind",
     "unexpected 'type' after DR (tunnel options need TUN)"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_method TUN type\n" + RS + "}\n", 2, "lvs_method", "'type' needs ipip, gue or gre"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_method TUN type geu\n" + RS + "}\n", 2, "lvs_method",
     "unknown tunnel type 'geu' (did you mean 'gue'?)"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_method TUN type gue\n" + RS + "}\n", 2, "lvs_method",
     "a gue tunnel needs 'port NUM'"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_method TUN type gue port 0x10\n" + RS + "}\n", 2, "lvs_method",
     "tunnel port '0x10' is not a number"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_method TUN type gue port 6080 crc\n" + RS + "}\n", 2, "lvs_method",
     "unexpected 'crc' in the tunnel options"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_method TUN type gre remcsum\n" + RS + "}\n", 2, "lvs_method",
     "'remcsum' is not allowed with a gre tunnel"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_method TUN csum\n" + RS + "}\n", 2, "lvs_method",
     "'csum' is not allowed with a ipip tunnel"),
    ("virtual_server 203.0.113.1 80 {\n  lvs_method TUN type gre csum extra\n" + RS + "}\n", 2, "lvs_method",
     "unexpected 'extra' in the tunnel options"),
    ("virtual_server 203.0.113.1 80 {\n  real_server {\n  }\n}\n", 2, "real_server", "real_server needs IP [PORT]"),
    ("virtual_server 203.0.113.1 80 {\n  real_server 192.0.2.1 80 {\n    weight 70000\n  }\n}\n", 3, "weight",
     "'weight 70000': expected a number 0..65535"),
    ("virtual_server 203.0.113.1 80 {\n  real_server 192.0.2.300 80\n}\n", 2, "real_server", "not an IPv4 or IPv6"),
    ("virtual_server 203.0.113.1 80 {\n  lb_kind FNAT\n  protocol TCP\n" + RS + "}\n", 4, "real_server",
     "real server 203.0.113.11 is fullnat but there are no local addresses"),
    (HEAD + RS + RS + "}\n", 7, "real_server", "real server 203.0.113.11:80 is listed twice"),
    (HEAD.replace(" 80 {", " 80 {\n    sh-port") + RS + "}\n", 2, "sh-port", "belongs to the sh scheduler, not wlc"),
]


@pytest.mark.parametrize("text, line, key, message", ERRORS)
def test_errors(tmp_path, text, line, key, message):
    p = tmp_path / "keepalived.conf"
    p.write_text(text)
    with pytest.raises(InputError) as ei:
        load_topology(str(p))
    s = str(ei.value)
    assert s.startswith(f"{p}: line {line}: "), s
    if key is not None:
        assert ei.value.key == key and f"key '{key}'" in s, s
    assert message in s, s


def test_error_in_included_file_names_it(tmp_path):
    (tmp_path / "vs.conf").write_text("virtual_server 203.0.113.1 80 {\n  lb_kind DRR\n}\n")
    p = tmp_path / "keepalived.conf"
    p.write_text("global_defs {\n}\ninclude vs.conf\n")
    with pytest.raises(InputError) as ei:
        load_topology(str(p))
    assert str(ei.value).startswith(f"{tmp_path / 'vs.conf'}: line 2: key 'lb_kind': unknown forwarding method")


def test_include_depth(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i}.conf").write_text(f"include f{i + 1}.conf\n")
    (tmp_path / "f40.conf").write_text("")
    p = tmp_path / "keepalived.conf"
    p.write_text("global_defs {\n}\ninclude f0.conf\n")
    with pytest.raises(InputError, match="includes nested deeper than 32"):
        load_topology(str(p))
