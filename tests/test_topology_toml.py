"""topology.toml: loading, positions, round trips and every error message."""
from __future__ import annotations

import ipaddress
import pathlib
import textwrap

import pytest

from lvs_inspect.errors import InputError
from lvs_inspect.net import vrrp_mac
from lvs_inspect.topology import (
    Mode, Protocol, ToaVariant, TunType, VantageRole, dump_toml, load_topology, loads_topology,
)
from lvs_inspect.topology.toml_loader import scan_positions

DATA = pathlib.Path(__file__).parent / "data" / "topology"
IP = ipaddress.ip_address


def test_interfaces_example():
    t = load_topology(str(DATA / "dr.toml"))
    assert t.origin == "toml" and t.profile.name == "linux"
    assert [str(m) for m in t.director.macs] == ["02:00:00:00:00:02"]
    (s,) = t.services
    assert s.key == "203.0.113.100:80/tcp" and s.scheduler == "rr" and s.mode is Mode.DR
    assert [(str(r.ip), r.port, r.weight, r.mode) for r in s.real_servers] == [
        ("203.0.113.11", 80, 1, Mode.DR), ("203.0.113.12", 80, 0, Mode.DR)]
    assert str(s.real_servers[0].mac) == "02:00:00:00:00:11" and s.real_servers[1].mac is None
    assert t.vantage_role("p-r1") == VantageRole("rs", rs=IP("203.0.113.11"))
    assert s.toa is None                # linux: no TOA


def test_every_key():
    t = load_topology(str(DATA / "mixed.toml"))
    assert t.profile.name == "dpvs" and t.timeouts.tcp == 91 and t.timeouts.udp == 300
    d = t.director
    assert d.vrrp_mac == vrrp_mac(51) and d.interfaces == ("dpdk0", "dpdk1")
    assert IP("192.0.2.201") in d.lips and len(d.macs) == 2
    web, tun, dns, mark, v6 = t.services
    assert web.name == "web" and web.synproxy and web.toa == ToaVariant(254, 8, frozenset({"ack", "data", "fin"}))
    assert web.real_servers[1].u_threshold == 5000 and web.real_servers[1].l_threshold == 4000
    assert web.real_servers[0].port == 8080 and web.mss_reduction(t.profile) == 8
    assert tun.sched_flags == ("sh-fallback", "sh-port") and tun.persistence_prefix == 24
    gue, ipip6, gre = tun.real_servers
    assert (gue.tun, gue.tun_port, gue.tun_flags, gue.port) == (TunType.GUE, 6080, "csum", 443)
    assert ipip6.family == 6 and ipip6.tun is TunType.IPIP and gre.tun is TunType.GRE
    assert dns.protocol is Protocol.UDP and dns.ops and dns.real_servers[0].port == 5353
    assert mark.fwmark == 7 and mark.protocol is None and mark.vips == (IP("203.0.113.103"), IP("203.0.113.104"))
    assert mark.ports == (80, 443) and mark.real_servers[0].port == 0
    assert t.service_for("203.0.113.104", 443, "tcp") is mark
    assert v6.port == 0 and v6.persistence_prefix == 64 and v6.real_servers[0].port == 0
    assert t.vantage_role("dpdk0") == VantageRole("director", side="rs-side")
    assert t.vantage_role("uplink").kind == "router"


@pytest.mark.parametrize("name", ["dr.toml", "mixed.toml"])
def test_round_trip(name):
    t = load_topology(str(DATA / name))
    text = dump_toml(t)
    t2 = loads_topology(text, "dumped.toml")
    assert t2 == t
    assert dump_toml(t2).split("\n", 3)[3] == text.split("\n", 3)[3]   # stable apart from the header


def test_profile_defaults_and_overrides():
    base = """
        profile = "alibaba"
        [[service]]
        vip = "2001:db8::100"
        port = 80
        mode = "fullnat"
        lips = ["2001:db8::200"]
          [[service.real_server]]
          ip = "2001:db8::11"
    """
    t = loads_topology(textwrap.dedent(base), "a.toml")
    assert t.services[0].toa == ToaVariant(253, 20, frozenset({"syn", "ack", "data"}))
    t2 = loads_topology(textwrap.dedent(base), "a.toml", profile="dpvs")
    assert t2.profile.name == "dpvs" and t2.services[0].toa.kind == 254
    no_toa = textwrap.dedent(base).replace('mode = "fullnat"', 'mode = "fullnat"\ntoa = false')
    t3 = loads_topology(no_toa, "a.toml")
    assert t3.services[0].toa is None
    assert "toa = false" in dump_toml(t3) and loads_topology(dump_toml(t3), "b") == t3
    learn = 'profile = "dpvs"\n[director]\nlips = "learn"\n' + textwrap.dedent(base).split("\n", 2)[2] \
        .replace('lips = ["2001:db8::200"]\n', "")
    t4 = loads_topology(learn, "c.toml")
    assert t4.director.learn_lips and loads_topology(dump_toml(t4), "d") == t4


def test_positions():
    text = textwrap.dedent("""\
        profile = "linux"   # comment with "quotes" and = signs
        s = '''multi
        line''' # literal
        [director]
        macs = [
          "02:00:00:00:00:02",
          "02:00:00:00:00:03",
        ]
        [[service]]
        vip = "203.0.113.100"
        toa = { kind = 254, length = 8 }
          [[service.real_server]]
          ip = "203.0.113.11"
          [[service.real_server]]
          "ip" = "203.0.113.12"
        [[service]]
        a.b = 1
          [[service.real_server]]
          port = 2
        [vantage]
        "p-c" = "client"
        """)
    pos = scan_positions(text)
    assert pos[("profile",)] == 1 and pos[("s",)] == 2 and pos[("director",)] == 4
    assert pos[("director", "macs", 1)] == 7
    assert pos[("service", 0)] == 9 and pos[("service", 0, "toa", "length")] == 11
    assert pos[("service", 0, "real_server", 1, "ip")] == 15
    assert pos[("service", 1, "a", "b")] == 17
    assert pos[("service", 1, "real_server", 0, "port")] == 19
    assert pos[("vantage", "p-c")] == 21
    assert scan_positions("[[[") is not None          # never raises


# ------------------------------------------------------------------------------ errors

SVC = '[[service]]\nvip = "203.0.113.100"\nport = 80\nmode = "dr"\n'   # lines 1-4
RS = '  [[service.real_server]]\n  ip = "203.0.113.11"\n'             # 2 lines

CASES = [
    # (text, line, key, message)
    ('profile = "linux"\nvip = 1 2\n', 2, None, "invalid TOML: "),
    ('profile = "linux"\n[director\n', 2, None, "invalid TOML"),
    ('profile = "linux"\nservices = []\n', 2, "services", "unknown key 'services' (did you mean 'service'?)"),
    ('profle = "linux"\n', 1, "profle", "did you mean 'profile'?"),
    ('profile = "dvps"\n', 1, "profile", "unknown profile 'dvps' (did you mean 'dpvs'?)"),
    ('profile = 4\n', 1, "profile", "expected a string, got int 4"),
    ('[director]\nmac = ["02:00:00:00:00:02"]\n', 2, "director.mac", "did you mean 'macs'?"),
    ('[director]\nmacs = "02:00:00:00:00:02"\n', 2, "director.macs", "expected an array, got string"),
    ('[director]\nmacs = ["02:00:00:00:00"]\n', 2, "director.macs", "is not a MAC address"),
    ('[director]\nmacs = [\n "02:00:00:00:00:02",\n "02:00:00:00:00:02"]\n', 4, "director.macs",
     "02:00:00:00:00:02 is listed twice"),
    ('[director]\nips = ["203.0.113.2", "203.0.113.2"]\n', 2, "director.ips", "is listed twice"),
    ('[director]\nips = ["203.0.113.256"]\n', 2, "director.ips", "'203.0.113.256' is not an IPv4 or IPv6 address"),
    ('[director]\nips = [2]\n', 2, "director.ips", "expected a string, got int 2"),
    ('[director]\nlips = "later"\n', 2, "director.lips", 'expected a list of addresses or "learn"'),
    ('[director]\nvrrp_mac = 5\n', 2, "director.vrrp_mac", "expected a string"),
    ('[director]\ninterfaces = [1]\n', 2, "director.interfaces", "expected a string"),
    ('director = 3\n', 1, "director", "expected a table, got int 3"),
    ('[director]\nips = ["203.0.113.100"]\n' + SVC, 2, "director.ips", "203.0.113.100 is a VIP"),
    ('[timeouts]\ntcp = -1\n', 2, "timeouts.tcp", "-1 is out of range 0..2678400"),
    ('[timeouts]\ntcp_fin = 1\n', 2, "timeouts.tcp_fin", "did you mean 'tcpfin'?"),
    ('[service]\nvip = "203.0.113.100"\n', 1, "service", "write each service as [[service]]"),
    ('service = 3\n', 1, "service", "expected an array"),
    ('[[service]]\nport = 80\n', 1, "service", "missing key 'vip' (or 'fwmark')"),
    ('[[service]]\nvip = "203.0.113.100"\n', 1, "service.port", "missing key 'port'"),
    ('[[service]]\nvip = "203.0.113.100"\nport = "80"\n', 3, "service.port", 'expected an integer, got string "80"'),
    ('[[service]]\nvip = "203.0.113.100"\nport = true\n', 3, "service.port", "expected an integer, got boolean true"),
    ('[[service]]\nvip = "203.0.113.100"\nport = 65536\n', 3, "service.port", "65536 is out of range 0..65535"),
    ('[[service]]\nvip = "www"\nport = 80\n', 2, "service.vip", "'www' is not an IPv4 or IPv6 address"),
    (SVC + 'protocol = "tpc"\n', 5, "service.protocol", "unknown protocol 'tpc' (did you mean 'tcp'?)"),
    (SVC + 'shceduler = "rr"\n', 5, "service.shceduler", "did you mean 'scheduler'?"),
    (SVC + 'scheduler = "wrrr"\n' + RS, 5, "service.scheduler", "unknown scheduler 'wrrr' (did you mean 'wrr'?)"),
    (SVC + 'sched_flags = ["sh-prot"]\n' + RS, 5, "service.sched_flags", "unknown scheduler flag 'sh-prot' (did you mean 'sh-port'?)"),
    (SVC + 'scheduler = "rr"\nsched_flags = ["sh-port"]\n' + RS, 6, "service.sched_flags",
     "scheduler flag 'sh-port' belongs to the sh scheduler, not rr"),
    (SVC + 'persistence_netmask = true\n', 5, "service.persistence_netmask", "expected a netmask string or a prefix length"),
    (SVC + 'persistence_netmask = "255.0.255.0"\n', 5, "service.persistence_netmask", "not a contiguous netmask"),
    (SVC + 'mode = "direct"\n', 5, None, "invalid TOML: Cannot overwrite a value"),   # duplicate key
    ('[[service]]\nvip = "203.0.113.100"\nport = 80\nmode = "direct"\n', 4, "service.mode",
     "unknown mode 'direct'"),
    ('[[service]]\nfwmark = 1\nvip = "203.0.113.100"\n', 3, "service.vip", "a fwmark service takes 'vips'"),
    ('[[service]]\nfwmark = 1\nport = 80\n', 3, "service.port", "a fwmark service takes 'ports'"),
    ('[[service]]\nfwmark = 0\n', 2, "service.fwmark", "0 is out of range 1..4294967295"),
    ('[[service]]\nfwmark = 1\nports = [0]\n', 3, "service.ports", "0 is out of range 1..65535"),
    ('[[service]]\nfwmark = 1\nports = 80\n', 3, "service.ports", "expected an array"),
    (SVC + 'vips = ["203.0.113.1"]\n', 5, "service.vips", "'vips' only describes a fwmark service; use vip"),
    ('[[service]]\nfwmark = 1\nvips = ["203.0.113.1", "2001:db8::1"]\nmode = "dr"\n' + RS, 3,
     "service.vips", "mixes IPv4 and IPv6 addresses"),
    ('[[service]]\nvip = "203.0.113.100"\nport = 0\nmode = "dr"\n', 3, "service.port",
     "port 0 (all ports) needs persistence"),
    (SVC + 'ops = true\n' + RS, 5, "service.ops", "one-packet scheduling is only for UDP"),
    (SVC.replace("port = 80", 'port = 53\nprotocol = "udp"') + 'synproxy = true\n' + RS, 6,
     "service.synproxy", "SYN proxy is TCP only"),
    (SVC + 'synproxy = "yes"\n', 5, "service.synproxy", "expected true or false"),
    (SVC + 'name = 1\n', 5, "service.name", "expected a string"),
    (SVC + 'lips = ["203.0.113.100"]\n' + RS, 5, "service.lips", "local address 203.0.113.100 is also a VIP"),
    (SVC + 'toa = 254\n', 5, "service.toa", "expected a table { kind = 254, length = 8 } or false"),
    (SVC + 'toa = { kind = 254, len = 8 }\n', 5, "service.toa.len", "did you mean 'length'?"),
    (SVC + 'toa = { kind = 254, packets = ["synack"] }\n', 5, "service.toa.packets",
     "unknown TOA packet 'synack'"),
    (SVC + 'toa = { kind = 254 }\n' + RS, 5, "service.toa", "a TOA option is only inserted by FullNAT"),
    ('[[service]]\nvip = "203.0.113.100"\nport = 53\nprotocol = "udp"\nmode = "fullnat"\n'
     'lips = ["192.0.2.200"]\ntoa = { kind = 254 }\n' + RS, 7, "service.toa", "TOA is a TCP option, the service is UDP"),
    ('[[service]]\nvip = "203.0.113.100"\nport = 80\nmode = "fullnat"\nlips = ["192.0.2.200"]\n'
     'toa = { kind = 1 }\n' + RS, 6, "service.toa", "TOA kind 1 is not a usable TCP option kind"),
    ('[[service]]\nvip = "203.0.113.100"\nport = 80\nmode = "fullnat"\nlips = ["192.0.2.200"]\n'
     'toa = { kind = 254, length = 12 }\n' + RS, 6, "service.toa", "TOA length 12: known variants are 8"),
    (SVC + 'real_server = { ip = "203.0.113.11" }\n', 5, "service.real_server",
     "write each real server as [[service.real_server]]"),
    (SVC + '  [[service.real_server]]\n  port = 80\n', 5, "service.real_server", "missing key 'ip'"),
    (SVC + RS + '  wieght = 1\n', 7, "service.real_server.wieght", "did you mean 'weight'?"),
    (SVC + RS + '  weight = 65536\n', 7, "service.real_server.weight", "65536 is out of range 0..65535"),
    ('[[service]]\nvip = "203.0.113.100"\nport = 80\n' + RS, 4, "service.real_server.mode",
     "real server 203.0.113.11 has no mode and its service sets none"),
    (SVC + RS + '  port = 8080\n', 7, "service.real_server.port",
     "port 8080 differs from the service port 80: dr cannot map ports (only nat and fullnat can)"),
    ('[[service]]\nfwmark = 2\nmode = "tun"\n' + RS + '  port = 80\n', 6, "service.real_server.port",
     "a tun real server of a fwmark service takes the client's port"),
    (SVC + RS + '  ip = "2001:db8::11"\n', 7, None, "invalid TOML"),
    (SVC + '  [[service.real_server]]\n  ip = "2001:db8::11"\n', 6, "service.real_server.ip",
     "real server 2001:db8::11 is IPv6 but service 203.0.113.100:80/tcp is IPv4: mixed address families only work with tun"),
    (SVC + RS + RS, 8, "service.real_server.ip", "real server 203.0.113.11:80 is listed twice in service "
     "203.0.113.100:80/tcp (first at line 5)"),
    (SVC + RS + '  tun = "gue"\n', 7, "service.real_server.tun", "tun is a tunnel option but the mode is dr"),
    (SVC + RS + '  mode = "tun"\n  tun = "geu"\n', 8, "service.real_server.tun",
     "unknown tunnel type 'geu' (did you mean 'gue'?)"),
    (SVC + RS + '  mode = "tun"\n  tun = "gue"\n', 8, "service.real_server.tun", "a gue tunnel needs tun_port"),
    (SVC + RS + '  mode = "tun"\n  tun = "gue"\n  tun_port = 0\n', 9, "service.real_server.tun_port",
     "tun_port 0 is out of range 1..65535"),
    (SVC + RS + '  mode = "tun"\n  tun_port = 6080\n', 8, "service.real_server.tun_port",
     "tun_port is only for gue tunnels, this one is ipip"),
    (SVC + RS + '  mode = "tun"\n  tun = "gre"\n  tun_flags = "remcsum"\n', 9, "service.real_server.tun_flags",
     "tun_flags 'remcsum' not allowed for gre (allowed: nocsum, csum)"),
    (SVC + RS + '  mode = "tun"\n  tun_flags = "nocsum"\n', 8, "service.real_server.tun_flags",
     "tun_flags 'nocsum' is for gue and gre tunnels, this one is ipip"),
    (SVC + RS + '  mode = "tun"\n  tun_flags = "csm"\n', 8, "service.real_server.tun_flags",
     "unknown tunnel flag 'csm' (did you mean 'csum'?)"),
    (SVC + RS + '  mac = "0200000000zz"\n', 7, "service.real_server.mac", "is not a MAC address"),
    (SVC + RS + '  u_threshold = -1\n', 7, "service.real_server.u_threshold", "out of range"),
    ('[[service]]\nvip = "203.0.113.100"\nport = 80\nmode = "fullnat"\n' + RS, 4, "service.mode",
     "real server 203.0.113.11 is fullnat but there are no local addresses"),
    ('[[service]]\nvip = "203.0.113.100"\nport = 80\nmode = "fullnat"\nlips = ["2001:db8::200"]\n' + RS,
     4, "service.mode", "fullnat over IPv4 but no local address is IPv4"),
    (SVC + RS + SVC, 7, "service", "service 203.0.113.100:80/tcp is defined twice (first at line 1)"),
    (SVC + RS + '[vantage]\n"p-c" = "clinet"\n', 8, "vantage.p-c", "unknown vantage role 'clinet' (did you mean 'client'?)"),
    (SVC + RS + '[vantage]\n"p-c" = 1\n', 8, "vantage.p-c", "expected a string"),
    (SVC + RS + '[vantage]\n"p-r" = "rs:203.0.113.12"\n', 8, None,
     "vantage 'p-r' is mapped to rs:203.0.113.12, which is not a real server of any service (did you mean 'rs:203.0.113.11'?)"),
    ('vantage = 1\n', 1, "vantage", "expected a table"),
]


@pytest.mark.parametrize("text, line, key, message", CASES)
def test_errors(tmp_path, text, line, key, message):
    p = tmp_path / "topology.toml"
    p.write_text(text)
    with pytest.raises(InputError) as ei:
        load_topology(str(p))
    e = ei.value
    s = str(e)
    assert s.startswith(f"{p}: line {line}: "), s
    if key is not None:
        assert e.key == key and f"key '{key}'" in s, s
    if message is not None:
        assert message in s, s
    assert "\n" not in s


def test_mac_with_one_digit_bytes():
    # one-digit bytes are accepted, as some tools print them
    t = loads_topology(SVC + RS + '  mac = "2:0:0:0:0:11"\n', "x.toml")
    assert t.services[0].real_servers[0].mac == 0x020000000011


def test_type_names_in_errors(tmp_path):
    p = tmp_path / "t.toml"
    p.write_text(SVC + 'persistence = 1.5\n')
    with pytest.raises(InputError, match="expected an integer, got float 1.5"):
        load_topology(str(p))
    p.write_text(SVC + 'persistence = [1]\n')
    with pytest.raises(InputError, match="expected an integer, got an array"):
        load_topology(str(p))
    p.write_text(SVC + 'persistence = {a = 1}\n')
    with pytest.raises(InputError, match="expected an integer, got a table"):
        load_topology(str(p))


def test_notes_become_comments():
    """Inference puts its evidence in ``note``: it is written as comments and ignored on load."""
    import dataclasses
    t = load_topology(str(DATA / "dr.toml"))
    s = t.services[0]
    rs = dataclasses.replace(s.real_servers[0], note="MAC seen in 40 frames\nconfidence 0.9")
    t2 = t.replace(note="inferred from lab.pcapng",
                   director=dataclasses.replace(t.director, note="hands VIP frames to RSs"),
                   services=(dataclasses.replace(s, note="DR: only MACs rewritten", real_servers=(rs,) + s.real_servers[1:]),))
    text = dump_toml(t2)
    for c in ("# inferred from lab.pcapng", "# hands VIP frames to RSs", "# DR: only MACs rewritten",
              "  # MAC seen in 40 frames", "  # confidence 0.9"):
        assert c in text.splitlines()
    assert loads_topology(text, "n.toml") == t2 == t
