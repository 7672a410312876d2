"""load_topology: recognising the format by content, file errors, and a property round trip."""
from __future__ import annotations

import os

import ipaddress
import pathlib
import shutil

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lvs_inspect.errors import InputError
from lvs_inspect.net import MAC
from lvs_inspect.topology import (
    PROFILES, Director, Mode, Protocol, RealServer, Service, ToaVariant, Topology, TunType,
    VantageRole, detect_format, dump_toml, load_topology, loads_topology, validate_topology,
)

DATA = pathlib.Path(__file__).parent / "data" / "topology"
IP = ipaddress.ip_address

SAMPLES = {
    "dr.toml": "toml", "mixed.toml": "toml",
    "ipvsadm-save.rules": "ipvsadm", "ipvsadm-list.txt": "ipvsadm",
    "ipvsadm-list-tuninfo.txt": "ipvsadm", "dpvs-list.txt": "ipvsadm", "dpvs-save.rules": "ipvsadm",
    "dpvs-setup.sh": "ipvsadm", "keepalived-dr.conf": "keepalived",
    "keepalived-dpvs.conf": "keepalived", "keepalived-alibaba.conf": "keepalived",
}


@pytest.mark.parametrize("name, fmt", sorted(SAMPLES.items()))
def test_recognised_by_content_not_name(tmp_path, name, fmt):
    text = (DATA / name).read_text()
    assert detect_format(text) == fmt
    if fmt == "keepalived":
        shutil.copytree(DATA / "keepalived-conf.d", tmp_path / "keepalived-conf.d")
    misleading = tmp_path / "topology.toml"        # the name says TOML whatever the content
    misleading.write_text(text)
    t = load_topology(str(misleading))
    assert t == load_topology(str(DATA / name))
    assert t.source == str(misleading)


def test_file_errors(tmp_path):
    cases = []
    missing = tmp_path / "nope.toml"
    cases.append((missing, f"{missing}: no such file"))
    cases.append((tmp_path, f"{tmp_path}: is a directory"))
    b = tmp_path / "bin"
    b.write_bytes(b"profile = 1\x00\x01")
    cases.append((b, f"{b}: byte 11: binary data, not a topology file"))
    u = tmp_path / "latin1"
    u.write_bytes(b'profile = "caf\xe9"\n')
    cases.append((u, f"{u}: byte 14: not UTF-8 text"))
    e = tmp_path / "empty"
    e.write_text("  \n\n")
    cases.append((e, f"{e}: empty file: expected a topology"))
    o = tmp_path / "other"
    o.write_text("\n\nhello world\n")
    cases.append((o, f"{o}: line 3: not a topology: expected TOML, ipvsadm -Sn / -Ln output or keepalived.conf"))
    for path, msg in cases:
        with pytest.raises(InputError) as ei:
            load_topology(str(path))
        assert str(ei.value).startswith(msg), str(ei.value)


def test_bom_forced_format_and_profile_override(tmp_path):
    p = tmp_path / "t"
    p.write_bytes("\ufeffprofile = 'linux'\n".encode())
    assert load_topology(str(p)).profile.name == "linux"
    with pytest.raises(InputError, match="unknown topology format 'yaml'"):
        load_topology(str(p), fmt="yaml")
    for name in ("ipvsadm-save.rules", "keepalived-alibaba.conf"):
        with pytest.raises(InputError, match="unknown profile 'kernel'"):
            load_topology(str(DATA / name), profile="kernel")
    t = loads_topology("-A -t 203.0.113.1:80 -s rr\n", "x", fmt="ipvsadm", profile="linux-legacy")
    assert t.profile.name == "linux-legacy"


def test_unknown_tunnel_type_round_trip():
    text = ('[[service]]\nvip = "203.0.113.1"\nport = 80\nmode = "tun"\n'
            '  [[service.real_server]]\n  ip = "198.51.100.1"\n  tun = "unknown"\n')
    t = loads_topology(text, "t.toml")
    assert t.services[0].real_servers[0].tun is None
    assert 'tun = "unknown"' in dump_toml(t) and loads_topology(dump_toml(t), "u") == t
    with pytest.raises(InputError, match="line 8: key 'service.real_server.tun_port': real server "
                       "198.51.100.1: tun_port needs a known tunnel type"):
        loads_topology(text + "  tun_port = 6080\n", "t.toml")


# ------------------------------------------------------------------------------ property

v4 = st.integers(0xC0000201, 0xC00002FE).map(ipaddress.IPv4Address)        # 192.0.2.0/24
v6 = st.integers(1, 0xFFFF).map(lambda n: ipaddress.IPv6Address((0x20010DB8 << 96) | n))
macs = st.integers(0, (1 << 40) - 1).map(lambda n: MAC((0x02 << 40) | n))


@st.composite
def topologies(draw):
    prof = PROFILES[draw(st.sampled_from(sorted(PROFILES)))]
    lips = tuple(draw(st.lists(v4, max_size=2, unique=True)))
    services = []
    seen = set()
    vip_pool = [ipaddress.IPv4Address(0xCB007100 + i) for i in range(1, 40)]    # 203.0.113.x
    for i in range(draw(st.integers(0, 4))):
        fwmark = draw(st.none() | st.integers(1, 2**32 - 1))
        vip = None if fwmark else draw(st.sampled_from(vip_pool))
        proto = draw(st.sampled_from([Protocol.TCP, Protocol.UDP])) if not fwmark else \
            draw(st.sampled_from([None, Protocol.TCP]))
        persistence = draw(st.sampled_from([0, 60, 360]))
        port = 0 if fwmark else (draw(st.integers(1, 65535)) if not persistence
                                 else draw(st.sampled_from([0, 80])))
        ident = ("f", fwmark) if fwmark else (vip, port, proto)
        if ident in seen:
            continue
        seen.add(ident)
        mode = draw(st.sampled_from(list(Mode)))
        if mode is Mode.FULLNAT and not lips:
            mode = Mode.NAT
        rss = []
        for ip in draw(st.lists(v4, max_size=3, unique=True)):
            m = mode
            kw = {}
            if m is Mode.TUN:
                tun = draw(st.sampled_from([None, TunType.IPIP, TunType.GUE, TunType.GRE]))
                kw = dict(tun=tun, tun_port=6080 if tun is TunType.GUE else None,
                          tun_flags=draw(st.sampled_from([None, "csum"])) if tun in (TunType.GUE, TunType.GRE) else None)
            rport = (0 if fwmark else port) if m in (Mode.DR, Mode.TUN) else draw(st.integers(0, 65535))
            rss.append(RealServer(ip=ip, port=rport, weight=draw(st.integers(0, 65535)), mode=m,
                                  mac=draw(st.none() | macs),
                                  u_threshold=draw(st.sampled_from([0, 10])), **kw))
        flags = ()
        sched = draw(st.sampled_from(["rr", "wlc", "sh", "mh", "conhash"]))
        if sched in ("sh", "mh"):
            flags = tuple(sorted(draw(st.sets(st.sampled_from([f"{sched}-port", f"{sched}-fallback"])))))
        toa = None
        if mode is Mode.FULLNAT and proto is not Protocol.UDP and rss:
            toa = draw(st.none() | st.just(ToaVariant(200, 8, frozenset({"ack", "syn"}))))
        services.append(Service(
            vip=vip, port=port, protocol=proto, real_servers=tuple(rss), scheduler=sched,
            sched_flags=flags, persistence=persistence,
            persistence_prefix=draw(st.sampled_from([None, 24])) if persistence else None,
            mode=mode if rss else draw(st.none() | st.just(mode)), toa=toa, fwmark=fwmark,
            vips=tuple(draw(st.lists(st.sampled_from(vip_pool), max_size=2, unique=True))) if fwmark else (),
            ports=tuple(sorted(draw(st.sets(st.integers(1, 65535), max_size=2)))) if fwmark else (),
            synproxy=draw(st.booleans()) if proto is Protocol.TCP else False,
            ops=draw(st.booleans()) if proto is Protocol.UDP else False,
            name=draw(st.sampled_from(["", "web", 'we"ird \\ name'])),
        ))
    director = Director(macs=tuple(draw(st.lists(macs, max_size=2, unique=True))),
                        ips=tuple(draw(st.lists(v6, max_size=2, unique=True))), lips=lips,
                        vrrp_macs=tuple(draw(st.lists(macs, max_size=2, unique=True))),
                        interfaces=tuple(draw(st.lists(st.sampled_from(["eth0", "dpdk0", "bond0.12"]),
                                                       max_size=2, unique=True))))
    rips = sorted({rs.ip for s in services for rs in s.real_servers})
    roles = [VantageRole("client"), VantageRole("director", side="rs-side"), VantageRole("router")]
    roles += [VantageRole("rs", rs=ip) for ip in rips]
    vantages = tuple((f"if-{i} \"x\"", draw(st.sampled_from(roles))) for i in range(draw(st.integers(0, 3))))
    return Topology(profile=prof, director=director, services=tuple(services), vantages=vantages)


@settings(max_examples=int(os.environ.get("LVS_TOPO_EXAMPLES", "200")), deadline=None, derandomize=os.environ.get("LVS_TOPO_RANDOM") is None,
          suppress_health_check=[HealthCheck.too_slow])
@given(topologies())
def test_dump_load_round_trip(topo):
    validate_topology(topo)
    text = dump_toml(topo)
    back = loads_topology(text, "generated.toml")
    assert back == topo
    body = text.split("\n\n", 1)[1]              # all but the provenance header
    assert dump_toml(back).split("\n\n", 1)[1] == body
