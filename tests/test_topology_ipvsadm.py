"""ipvsadm -Sn / -Ln (kernel, DPVS, Alibaba) -> topology, round trips and every error."""
from __future__ import annotations

import ipaddress
import pathlib

import pytest

from lvs_inspect.errors import InputError
from lvs_inspect.topology import Mode, Protocol, TunType, dump_toml, load_topology, loads_topology

DATA = pathlib.Path(__file__).parent / "data" / "topology"
IP = ipaddress.ip_address


def load(name, **kw):
    return load_topology(str(DATA / name), **kw)


def test_save_format():
    t = load("ipvsadm-save.rules")
    assert t.origin == "ipvsadm-save" and t.profile.name == "linux"
    web, tun, dns, m7, m8, v6 = t.services
    assert web.scheduler == "rr" and web.mode is Mode.DR
    assert [(str(r.ip), r.port, r.weight) for r in web.real_servers] == [
        ("203.0.113.11", 80, 1), ("203.0.113.12", 80, 0)]
    assert tun.persistence == 1800 and tun.persistence_prefix == 24
    assert tun.sched_flags == ("sh-fallback", "sh-port")
    gue, ipip, gre, ipip6 = tun.real_servers
    assert (gue.tun, gue.tun_port, gue.tun_flags) == (TunType.GUE, 6080, "csum")
    assert ipip.tun is TunType.IPIP and (gre.tun, gre.tun_flags, gre.weight) == (TunType.GRE, None, 2)
    assert ipip6.ip == IP("2001:db8::21")          # mixed families: TUN only
    assert dns.protocol is Protocol.UDP and dns.ops and dns.real_servers[0].port == 5353
    assert dns.real_servers[0].mode is Mode.NAT
    assert (m7.fwmark, m7.persistence, m7.protocol) == (7, 300, None)
    assert m8.fwmark == 8 and m8.family == 6 and m8.persistence_prefix == 64
    assert v6.key == "[2001:db8::100]:0/tcp" and v6.persistence == 600


def test_listing_equals_rules():
    rules = load("ipvsadm-save.rules")
    listing = load("ipvsadm-list.txt")
    assert listing.origin == "ipvsadm-list"
    # plain -Ln does not show tunnel types: unknown there, the rest is the same
    assert [r.tun for r in listing.services[1].real_servers] == [None] * 4
    assert listing.with_services(listing.services[:1] + rules.services[1:2] + listing.services[2:]) == rules
    tuninfo = load("ipvsadm-list-tuninfo.txt")
    assert tuninfo.services[0] == rules.services[1]


def test_dpvs_listing_with_local_addresses():
    t = load("dpvs-list.txt")
    assert t.profile.name == "dpvs"
    tcp, udp = t.services
    assert tcp.synproxy and tcp.modes == {Mode.FULLNAT} and tcp.real_servers[0].weight == 100
    assert tcp.lips == (IP("192.0.2.200"), IP("192.0.2.201")) and udp.lips == (IP("192.0.2.200"),)
    assert tcp.toa.kind == 254 and not tcp.toa.in_syn and udp.toa is None
    assert not t.director.learn_lips


def test_dpvs_save_prints_null_for_fullnat():
    t = load("dpvs-save.rules")
    assert t.profile.name == "dpvs" and t.services[0].modes == {Mode.FULLNAT}
    assert t.director.learn_lips            # -S does not show the LIPs
    assert t.services[1].modes == {Mode.DR}
    assert load("dpvs-save.rules", profile="alibaba").profile.name == "alibaba"


def test_dpvs_tutorial_script():
    t = load("dpvs-setup.sh")
    fnat, dr = t.services
    assert fnat.lips == (IP("192.0.2.200"), IP("192.0.2.201")) and fnat.synproxy
    assert [(str(r.ip), r.port) for r in fnat.real_servers] == [("192.0.2.2", 80), ("192.0.2.3", 80)]
    assert dr.scheduler == "wlc" and dr.real_servers[0].weight == 3


@pytest.mark.parametrize("name", ["ipvsadm-save.rules", "ipvsadm-list.txt", "ipvsadm-list-tuninfo.txt",
                                  "dpvs-list.txt", "dpvs-save.rules", "dpvs-setup.sh"])
def test_round_trip(name):
    t = load(name)
    assert loads_topology(dump_toml(t), "dumped.toml") == t


def test_commands_replayed():
    text = """
-A -t 203.0.113.100:80 -s rr
-a -t 203.0.113.100:80 -r 203.0.113.11 -g
-a -t 203.0.113.100:80 -r 203.0.113.12:80 -g -w 2
-e -t 203.0.113.100:80 -r 203.0.113.12:80 -g -w 5
-d -t 203.0.113.100:80 -r 203.0.113.11
-E -t 203.0.113.100:80 -s wlc -p
-A -u 203.0.113.100:53
-D -u 203.0.113.100:53
--set 0 60 30
--add-service --tcp-service=203.0.113.101:443 --scheduler=sh --sched-flags sh-port
--add-server -t 203.0.113.101:443 --real-server 192.0.2.11:8443 --masquerading --weight=2 -x 100 -y 50
-P -z 192.0.2.200 -t 203.0.113.101:443
-Q -z 192.0.2.200 -t 203.0.113.101:443
-A -t 203.0.113.102:http -s rr
-a -t 203.0.113.102:http -r 203.0.113.21:80 -g
-A -f 9 -s rr --pe sip -p 60
-a -f 9 -r 203.0.113.31:8080 -g
-Ln
"""
    t = loads_topology(text, "rules.txt")
    web, tls, named, mark = t.services
    assert web.scheduler == "wlc" and web.persistence == 360        # -p alone: 6*60 (libipvs.h)
    assert [(str(r.ip), r.weight) for r in web.real_servers] == [("203.0.113.12", 5)]
    assert t.timeouts.tcp == 900 and (t.timeouts.tcpfin, t.timeouts.udp) == (60, 30)
    r = tls.real_servers[0]
    assert (r.port, r.mode, r.weight, r.u_threshold, r.l_threshold) == (8443, Mode.NAT, 2, 100, 50)
    assert tls.sched_flags == ("sh-port",) and tls.lips == ()
    assert named.port == 80                                            # service name -> port
    assert mark.persistence_engine == "sip" and mark.real_servers[0].port == 0   # DR on fwmark
    t = loads_topology("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -g\n-C\n", "r")
    assert t.services == ()


def test_listing_variants():
    text = (
        "IP Virtual Server version 1.2.1 (size=4096)   \n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
        "TCP  203.0.113.100:80 rr synproxy conn_timeout 90\n"
        "  -> 192.0.2.2:80                 FullNat 100    0          0          \n"
        "TCP  203.0.113.100:443 conhash sip\n"
        "  -> 192.0.2.2:443                FullNat 1      0          0\n"
        "TCP  203.0.113.100:8080 wrr persistent 60 pe sip\n"
        "  -> 192.0.2.9:8080               Local   1      0          0\n"
        "IPVS connection entries\n"
        "pro expire state       source             virtual            destination\n"
        "TCP 14:58  ESTABLISHED 198.51.100.7:50432 203.0.113.100:80   192.0.2.2:80\n"
        "VIP:VPORT            TOTAL    LADDR                CONFLICTS  CONNS\n"
        "203.0.113.100:80     1\n"
        "                              192.0.2.200          0          0\n"
        "203.0.113.200:80     1\n"
        "                              192.0.2.250          0          0\n"
    )
    t = loads_topology(text, "ln.txt")
    assert t.profile.name == "alibaba"             # LADDR header: Alibaba's ipvsadm
    a, b, c = t.services
    assert a.synproxy and a.lips == (IP("192.0.2.200"),)
    assert b.scheduler == "conhash" and c.persistence_engine == "sip"
    assert c.real_servers[0].mode is Mode.DR       # Local is gatewaying to itself
    assert t.director.lips == (IP("192.0.2.250"),)  # a -G entry without a listed service


ERRORS = [
    # (text, line, key, message)
    ('-A -t 203.0.113.1:80 -s "rr\n', 1, None, "cannot split the line"),
    ("ip addr add 203.0.113.1/32 dev lo\n-A -t 203.0.113.1:80\n", 1, None, "not an ipvsadm rule"),
    ("-A -t 203.0.113.1:80 --schedular rr\n", 1, "--schedular", "unknown option '--schedular' (did you mean 'scheduler'?)"),
    ("-A -t 203.0.113.1:80 --ops=1\n", 1, "--ops=1", "option '--ops' takes no value"),
    ("-A -t 203.0.113.1:80 --scheduler\n", 1, "--scheduler", "option '--scheduler' needs a value"),
    ("-A -a -t 203.0.113.1:80\n", 1, "-a", "two commands on one line (add-service and add-server)"),
    ("-A --add-server -t 203.0.113.1:80\n", 1, "--add-server", "two commands on one line"),
    ("-A -t 203.0.113.1:80 -K\n", 1, "-K", "unknown option '-K'"),
    ("-A -t 203.0.113.1:80 -s\n", 1, "-s", "option '-s' needs a value"),
    ("-A -t 203.0.113.1:80\n-t 203.0.113.1:80\n", 2, None, "no command"),
    ("--set 900 120\n", 1, "--set", "--set needs three timeouts"),
    ("--set 900 x 300\n", 1, "--set", "timeout 'x' is not a number of seconds"),
    ("-A -t 203.0.113.1:80 extra\n", 1, None, "unexpected argument 'extra'"),
    ("-A -s rr\n", 1, None, "add-service needs a service: -t, -u or -f"),
    ("-A -t 203.0.113.1:80 -u 203.0.113.1:53\n", 1, "-u", "more than one service on one line"),
    ("-A --sctp-service 203.0.113.1:80\n", 1, "--sctp-service", "SCTP services are not supported"),
    ("-A -t 203.0.113.1:80\n-A -t 203.0.113.1:80\n", 2, "-t", "is added twice (first at line 1)"),
    ("-A -t 203.0.113.1:80\n-P -t 203.0.113.1:80\n", 2, None, "--add-laddr needs -z LIP"),
    ("-A -t 203.0.113.1:80\n-P -z 192.0.2.300 -t 203.0.113.1:80\n", 2, "-z", "not an IPv4 or IPv6 address"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -g\n", 2, None, "-a needs -r server-address"),
    ("-A -t 203.0.113.1:80\n-d -t 203.0.113.1:80 -r 192.0.2.1\n", 2, "-r", "real server 192.0.2.1 is not in service"),
    ("-A -t 203.0.113.1:80\n-e -t 203.0.113.1:80 -r 192.0.2.1 -w 2\n", 2, "-r", "is not in service"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 203.0.113.9\n-a -t 203.0.113.1:80 -r 203.0.113.9\n",
     3, "-r", "is added twice to service 203.0.113.1:80/tcp (first at line 2)"),
    ("-A -f 0 -s rr\n", 1, "-f", "invalid fwmark value '0'"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.2:80 -r 192.0.2.1\n", 2, "-t",
     "service 203.0.113.2:80/tcp was not added with -A before this line (did you mean '203.0.113.1:80/tcp'?)"),
    ("-A -t 203.0.113.1:80 -w 3\n", 1, "-w", "option -w does not apply to -A"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -s rr\n", 2, "-s", "option -s does not apply to -a"),
    ("-A -t 203.0.113.1:80 -p forever\n", 1, "-p", "invalid timeout value 'forever' specified"),
    ("-A -t 203.0.113.1:80 -p 60 -M 255.0.255.0\n", 1, "-M", "not a contiguous netmask"),
    ("-A -t 203.0.113.1:80 -j maybe\n", 1, "-j", "synproxy switch must be enable or disable"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -m -w heavy\n", 2, "-w", "illegal weight 'heavy'"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -m -x many\n", 2, "-x", "illegal u-threshold 'many'"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -i --tun-type gree\n", 2, "--tun-type",
     "illegal tunnel type 'gree' (did you mean 'gre'?)"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -i --tun-type gue --tun-port 70000\n", 2,
     "--tun-port", "tunnel port 70000 is out of range"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -i --tun-type gue --tun-port 6080 --tun-csum --tun-remcsum\n",
     2, "--tun-remcsum", "--tun-remcsum conflicts with --tun-csum"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -i --tun-nocsum\n", 2, "--tun-nocsum",
     "--tun-nocsum is not allowed with the ipip tunnel type"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -g --tun-type gre\n", 2, "--tun-type",
     "tunnel options conflict with the forwarding method (dr): --tun-type need -i"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -i --tun-type gue\n", 2, "--tun-type",
     "a gue tunnel needs tun_port (ipvsadm --tun-port)"),
    ("-A -t 203.0.113.1:80 -s rr pe\n", 1, "pe", "'pe' needs a persistence engine name"),
    ("-A -t web.example:80\n", 1, "-t", "'web.example:80' is not an address[:port] (names need resolving"),
    ("-A -t 203.0.113.1:no-such-service\n", 1, "-t", "'no-such-service' is not a port number"),
    ("-A -t 203.0.113.1:80 -s wrrr\n", 1, "-s", "unknown scheduler 'wrrr' (did you mean 'wrr'?)"),
    ("-A -t 203.0.113.1:80 -s rr -b sh-port\n", 1, "-b", "belongs to the sh scheduler, not rr"),
    ("-A -t 203.0.113.1:0 -s rr\n", 1, "-t", "port 0 (all ports) needs persistence"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r [2001:db8::1]:80 -g\n", 2, "-r",
     "mixed address families only work with tun"),
    ("-A -t 203.0.113.1:80\n-a -t 203.0.113.1:80 -r 192.0.2.1 -m -w 70000\n", 2, "-w", "illegal weight '70000'"),
]


@pytest.mark.parametrize("text, line, key, message", ERRORS)
def test_rules_errors(tmp_path, text, line, key, message):
    _check_error(tmp_path, text, line, key, message)


HEAD = ("IP Virtual Server version 1.2.1 (size=4096)\n"
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n")   # 3 lines
SVC = "TCP  203.0.113.100:80 rr\n"

LIST_ERRORS = [
    ("IP Virtual Server version 1.2.1 (size=4096)\n"
     "Prot LocalAddress:Port                 Conns   InPkts  OutPkts  InBytes OutBytes\n", 2, None,
     "no Forward column (ipvsadm --stats, --rate, --thresholds or --persistent-conn)"),
    ("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n"
     "  -> RemoteAddress:Port\n", 3, None, "this listing has no Forward column"),
    (HEAD + "SCTP 203.0.113.100:80 rr\n", 4, "SCTP", "SCTP services are not supported"),
    (HEAD + "TCP  203.0.113.100:80 rr quickly\n", 4, "quickly", "unrecognised service flag 'quickly'"),
    (HEAD + "TCP  203.0.113.100:80 rr persistent 60 mask 255.0.255.0\n", 4, "mask", "not a contiguous netmask"),
    (HEAD + "  -> 192.0.2.11:80                Route   1      0          0\n", 4, None,
     "a real server line before any service line"),
    (HEAD + SVC + "  -> 192.0.2.11:80                Route   1\n", 5, None, "expected Forward, Weight, ActiveConn"),
    (HEAD + SVC + "  -> 192.0.2.11:80                Rout    1      0          0\n", 5, "Forward",
     "unknown forwarding method 'Rout' (did you mean 'Route'?)"),
    (HEAD + SVC + "  -> 192.0.2.11:80                Route   x      0          0\n", 5, "Weight", "weight 'x' is not a number"),
    (HEAD + SVC + "  -> 203.0.113.11:80              Route   1      0          0\n"
     "  -> 203.0.113.11:80              Route   1      0          0\n", 6, "RemoteAddress:Port", "listed twice in the service"),
    (HEAD + SVC + SVC, 5, "TCP", "service listed twice (first at line 4)"),
    (HEAD + SVC + "  -> www.example:http             Route   1      0          0\n", 5, "RemoteAddress:Port",
     "names need resolving"),
    ("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n"
     "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n" + SVC +
     "  -> 203.0.113.11:80              Tunnel  vxlan         1      0          0\n", 5, "TunnelInfo",
     "unknown tunnel info 'vxlan'"),
    ("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n"
     "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n" + SVC +
     "  -> 203.0.113.11:80              Tunnel  gre:?c        1      0          0\n", 5, "TunnelInfo",
     "unknown tunnel checksum flag '?c'"),
    ("IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\n"
     "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n" + SVC +
     "  -> 203.0.113.11:80              Tunnel  gue:99999:-c  1      0          0\n", 5, "TunnelInfo",
     "tunnel port 99999 is out of range"),
    ("VIP:VPORT            TOTAL    SNAT_IP              CONFLICTS  CONNS\n"
     "                              192.0.2.200          0          0\n", 2, None,
     "a local address line before its VIP:VPORT line"),
    ("VIP:VPORT            TOTAL    SNAT_IP              CONFLICTS  CONNS\n203.0.113.1:80       1\n"
     "                              192.0.2.2000         0          0\n", 3, "SNAT_IP", "not an IPv4 or IPv6 address"),
    (HEAD + SVC + "what is this\n", 5, None, "unrecognised ipvsadm listing line: 'what is this'"),
]


@pytest.mark.parametrize("text, line, key, message", LIST_ERRORS)
def test_listing_errors(tmp_path, text, line, key, message):
    _check_error(tmp_path, text, line, key, message)


def _check_error(tmp_path, text, line, key, message):
    p = tmp_path / "ipvsadm.out"
    p.write_text(text)
    with pytest.raises(InputError) as ei:
        load_topology(str(p))
    s = str(ei.value)
    assert s.startswith(f"{p}: line {line}: "), s
    if key is not None:
        assert ei.value.key == key and f"key '{key}'" in s, s
    assert message in s, s
