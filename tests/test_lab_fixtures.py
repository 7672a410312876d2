"""Every lab fixture (fixtures/lab/*/, real traces from network namespaces) is audited with its
topology.toml and the verdict compared with its expected.json; no root needed.

Also the parts of the lab that need no root: the plan of every case, the expected.json format
and its comparison, the topology files it writes, the stand-ins' packet surgery, and the
command's refusals (not root, impossible combinations).
"""
from __future__ import annotations

import json
import socket
import struct
from functools import cache
from pathlib import Path

import pytest

from lvs_inspect.checks.engine import audit
from lvs_inspect.lab import plan as P
from lvs_inspect.lab.expected import compare, expected_dict, load_expected, rs_ip
from lvs_inspect.lab.topo import topology_toml

LAB = Path(__file__).resolve().parents[1] / "fixtures" / "lab"
FOLDERS = sorted(p for p in LAB.iterdir() if p.is_dir() and (p / "expected.json").exists()) if LAB.is_dir() else []

# Fixtures on which a rule is known to disagree with the lab, with the evidence; strict xfail:
# when the rule is fixed the test turns red and the entry must go.
KNOWN_RULE_ISSUES: dict[str, str] = {}


@cache
def report_of(folder: str) -> dict:
    f = LAB / folder
    return audit([str(f / "trace.pcapng")], topology_path=str(f / "topology.toml")).to_json_dict()


def test_there_are_lab_fixtures():
    assert len(FOLDERS) >= 30, f"fixtures/lab holds {len(FOLDERS)} cases; fixtures/lab/make_fixtures.py makes them"


@pytest.mark.parametrize("folder", [f.name for f in FOLDERS])
def test_fixture_folder_is_complete_and_small(folder):
    f = LAB / folder
    for name in ("trace.pcapng", "topology.toml", "expected.json", "README.md"):
        assert (f / name).is_file(), f"{folder}: {name} missing"
    assert (f / "director.nft").is_file() or (f / "director.toml").is_file()
    size = (f / "trace.pcapng").stat().st_size
    assert size <= 400_000, f"{folder}: trace is {size} bytes"
    readme = (f / "README.md").read_text()
    assert f"--out fixtures/lab/{folder}" in readme, "the README gives the command that made the folder"
    exp = load_expected(f / "expected.json")
    assert exp["case"] == folder


@pytest.mark.parametrize("folder", [
    pytest.param(f.name, marks=pytest.mark.xfail(reason=KNOWN_RULE_ISSUES[f.name], strict=True))
    if f.name in KNOWN_RULE_ISSUES else f.name for f in FOLDERS])
def test_audit_agrees_with_expected(folder):
    exp = load_expected(LAB / folder / "expected.json")
    rep = report_of(folder)
    problems = compare(exp, rep["findings"])
    assert not problems, f"{folder}: " + "; ".join(problems)


@pytest.mark.parametrize("folder", [f.name for f in FOLDERS])
def test_every_vantage_is_in_the_trace(folder):
    rep = report_of(folder)
    exp = load_expected(LAB / folder / "expected.json")
    ifaces = rep["inputs"][0]["interfaces"]
    nat_like = exp["mode"] in ("nat", "fullnat")
    want = ["client"] + (["director-c", "director-r"] if nat_like else ["director"]) + ["rs1", "rs2"]
    assert sorted(ifaces) == sorted(want)
    assert rep["summary"]["undecodable"] == 0
    assert rep["summary"]["connections"] >= 1


def test_the_healthy_cases_cover_every_mode_and_both_directors():
    healthy = {(load_expected(f / "expected.json")["mode"], load_expected(f / "expected.json")["director"])
               for f in FOLDERS if load_expected(f / "expected.json")["fault"] is None}
    assert {("nat", "kernel"), ("dr", "kernel"), ("fullnat", "kernel"), ("nat", "forwarder"),
            ("dr", "forwarder"), ("tun", "forwarder"), ("fullnat", "forwarder")} <= healthy


def test_every_fault_has_a_fixture_where_the_tree_can_make_it():
    faults = {load_expected(f / "expected.json")["fault"] for f in FOLDERS}
    for name in P.FAULTS:
        makeable = any(P.supported(m, name, d) is None for m in P.MODES for d in P.DIRECTORS)
        if makeable:
            assert name in faults, f"no fixture for fault {name}"


# ------------------------------------------------------------------ plans and expected.json

ALL = P.all_cases()


def test_every_fault_runs_somewhere_and_kernel_tun_is_refused():
    assert P.supported("tun", None, "kernel").startswith("the kernel cannot play a TUN director")
    assert "did you mean 'arp-leak'" in P.supported("dr", "arp-leek", "kernel")
    assert "applies to" in P.supported("fullnat", "arp-leak", "forwarder")
    assert "needs --director forwarder" in P.supported("fullnat", "no-toa", "kernel")
    assert len(ALL) >= 40


@pytest.mark.parametrize("mode,fault,director", ALL)
def test_plan_topologies_load_and_name_the_vantages(mode, fault, director, tmp_path):
    from lvs_inspect.topology import load_topology
    plan = P.make_plan(mode, fault, director)
    for which in ("declared", "director"):
        path = tmp_path / f"{which}.toml"
        path.write_text(topology_toml(plan, which=which))
        topo = load_topology(str(path))
        assert [str(v) for v, _ in topo.vantages] == [v for v, _ in plan.vantages]
        assert topo.services[0].vip is not None
    exp = expected_dict(plan, ["CONN101", "DR101", "TOA104", "ZZZ999"])
    assert exp["case"] == plan.case
    listed = {e["code"] for e in exp["findings"] + exp["may"]}
    assert not listed & set(exp["quiet"])
    if fault is not None:
        assert exp["findings"], f"{plan.case}: a fault must require a finding"


def test_plan_differences_are_the_fault():
    p = P.make_plan("nat", "weight-zero-traffic", "kernel")
    assert (p.server("rs2").declared_weight, p.server("rs2").director_weight) == (0, 1)
    p = P.make_plan("nat", "wrong-port", "forwarder")
    assert (p.server("rs2").declared_port, p.server("rs2").director_port) == (8080, 80)
    p = P.make_plan("dr", "ttl", "forwarder")
    assert (p.profile, p.director_profile) == ("linux", "linux-legacy")
    p = P.make_plan("fullnat", "no-toa", "forwarder")
    assert (p.toa_declared, p.toa_director) == ((254, 8), None)
    assert "toa = false" in topology_toml(p, which="director")
    p = P.make_plan("tun", "mtu", "forwarder", tun="gue")
    assert all(s.advmss is None for s in p.servers)
    assert [s.advmss for s in P.make_plan("tun", None, "forwarder", tun="gue").servers] == [1428, 1428]
    with pytest.raises(ValueError, match="behaves as Linux"):
        P.make_plan("nat", None, "kernel", profile="dpvs")
    with pytest.raises(ValueError, match="--tun applies"):
        P.make_plan("nat", None, "kernel", tun="gre")
    for prof in ("dpvs", "alibaba"):
        p = P.make_plan("fullnat", "toa-wrong", "forwarder", profile=prof)
        assert p.director_args == ["--toa-port-byteorder", "host"] and p.toa_director == (254, 8)
        assert [(e.code, e.real_server) for e in p.findings] == [("TOA102", "198.51.100.11"),
                                                                  ("TOA102", "198.51.100.12")]
    with pytest.raises(ValueError, match="profile linux has none"):
        P.make_plan("fullnat", "toa-wrong", "forwarder", profile="linux")


def test_compare_reports_missing_unexpected_and_quiet():
    exp = {"version": 1, "findings": [{"code": "DR101", "real_server": "192.0.2.11"}],
           "may": [{"code": "DR104", "real_server": None}], "quiet": ["CONN101"]}
    ok = [{"code": "DR101", "real_server": "192.0.2.11"}, {"code": "DR104", "real_server": "192.0.2.12"}]
    assert compare(exp, ok) == []
    assert compare(exp, ok[1:]) == ["missing DR101 for 192.0.2.11"]
    wrong_rs = compare(exp, [{"code": "DR101", "real_server": "192.0.2.12"}])
    assert wrong_rs[0] == "missing DR101 for 192.0.2.11 (reported: DR101@192.0.2.12)"
    assert wrong_rs[1].startswith("unexpected DR101 for 192.0.2.12")
    assert compare(exp, ok + [{"code": "CONN101", "real_server": None, "message": "m"}])[0].startswith(
        "CONN101 fired (must stay quiet)")
    assert rs_ip("198.51.100.12:8080") == "198.51.100.12" and rs_ip("[2001:db8::1]:80") == "2001:db8::1"
    assert rs_ip("2001:db8::1") == "2001:db8::1"


def test_load_expected_names_the_file(tmp_path):
    from lvs_inspect.errors import InputError
    bad = tmp_path / "expected.json"
    bad.write_text("{\n  nope")
    with pytest.raises(InputError, match=r"expected.json: line 2: not JSON"):
        load_expected(bad)
    bad.write_text(json.dumps({"version": 9}))
    with pytest.raises(InputError, match="version 1"):
        load_expected(bad)


# ------------------------------------------------------------------ stand-ins

def _ip4(proto: int, payload: bytes, src="192.0.2.2", dst="192.0.2.11") -> bytes:
    from lvs_inspect.lab.tundev import csum
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                                socket.inet_aton(src), socket.inet_aton(dst)))
    hdr[10:12] = struct.pack("!H", csum(bytes(hdr)))
    return bytes(hdr) + payload


def _tcp_syn() -> bytes:
    from lvs_inspect.lab.tundev import tcp4_checksum
    opts = bytes.fromhex("020405b40402080a0000000100000000" "01030307")
    seg = bytearray(struct.pack("!HHIIBBHHH", 40000, 80, 1000, 0, (20 + len(opts)) // 4 << 4, 0x02, 64240, 0, 0) + opts)
    tcp4_checksum(socket.inet_aton("203.0.113.10"), socket.inet_aton("192.0.2.100"), seg)
    return _ip4(6, bytes(seg), "203.0.113.10", "192.0.2.100")


def _ip6(nh: int, payload: bytes, tclass: int = 0) -> bytes:
    return struct.pack("!IHBB16s16s", (6 << 28) | (tclass << 20), len(payload), nh, 64,
                       socket.inet_pton(socket.AF_INET6, "2001:db8::2"),
                       socket.inet_pton(socket.AF_INET6, "2001:db8::11")) + payload


def _gre(proto: int, inner: bytes, *, c=False, k=False, s=False) -> bytes:
    from lvs_inspect.lab.tundev import csum
    flags = (0x8000 if c else 0) | (0x2000 if k else 0) | (0x1000 if s else 0)
    words = (b"\0\0\0\0" if c else b"") + (b"\0\0\0\x2a" if k else b"") + (b"\0\0\0\x07" if s else b"")
    g = bytearray(struct.pack("!HH", flags, proto) + words + inner)
    if c:
        g[4:6] = struct.pack("!H", csum(bytes(g)))
    return bytes(g)


def test_decap_strips_ipip_gre_and_gue_as_the_drivers_do():
    from lvs_inspect.lab.decap import strip_gue, strip_tunnel
    inner = _tcp_syn()
    inner6 = _ip6(59, b"")                                           # an IPv6 packet (no next header)
    assert strip_tunnel(4, inner) == ("ipip", inner)
    assert strip_tunnel(41, inner6) == ("ipip", inner6)
    assert strip_tunnel(4, inner6) == ("inner-mismatch", None)       # protocol 4 announces IPv4
    assert strip_tunnel(47, _gre(0x0800, inner)) == ("gre", inner)
    assert strip_tunnel(47, _gre(0x86DD, inner6, k=True, s=True)) == ("gre", inner6)
    assert strip_tunnel(47, _gre(0x0800, inner, c=True, k=True, s=True)) == ("gre", inner)
    bad = bytearray(_gre(0x0800, inner, c=True))
    bad[-1] ^= 1
    assert strip_tunnel(47, bytes(bad)) == ("gre-checksum", None)
    assert strip_tunnel(47, b"\x00\x01\x08\x00" + inner) == ("gre-version", None)      # version 1 (PPTP)
    assert strip_tunnel(47, b"\x40\x00\x08\x00" + inner) == ("gre-version", None)      # routing present
    assert strip_tunnel(47, _gre(0x6558, inner)) == ("other", None)                     # Ethernet in GRE
    assert strip_tunnel(47, b"\x80\x00") == ("short", None)
    assert strip_gue(b"\x00\x04\x00\x00" + inner) == ("gue", inner)
    assert strip_gue(b"\x01\x04\x00\x00" + b"\0" * 4 + inner) == ("gue", inner)      # hlen 1
    assert strip_gue(b"\x00\x29\x00\x00" + inner6) == ("gue", inner6)                  # proto_ctype 41
    assert strip_gue(inner) == ("gue", inner)                                          # version 1: bare IPv4
    assert strip_gue(inner6) == ("gue", inner6)                                        # version 1: bare IPv6
    assert strip_gue(b"\x20\x00\x00\x00") == ("gue-control", None)
    assert strip_gue(b"\x80\x04\x00\x00" + inner) == ("gue-version", None)
    assert strip_gue(b"\x1f\x04\x00\x00" + inner) == ("short", None)                  # hlen past the end
    assert strip_gue(b"\x00\x04\x00\x00" + inner6) == ("inner-mismatch", None)


def test_decap_ecn_follows_ip_tunnel_rcv():
    from lvs_inspect.lab.decap import ecn_decapsulate
    from lvs_inspect.lab.tundev import csum
    syn = bytearray(_tcp_syn())
    assert ecn_decapsulate(0x02, bytes(syn)) == bytes(syn)          # outer ECT: inner unchanged
    assert ecn_decapsulate(0x03, bytes(syn)) is None                # outer CE, inner Not-ECT: dropped
    syn[1] = 0x02
    syn[10:12] = b"\0\0"
    syn[10:12] = struct.pack("!H", csum(bytes(syn[:20])))
    ce = ecn_decapsulate(0x03, bytes(syn))                          # outer CE, inner ECT(0): CE
    assert ce[1] == 0x03 and csum(ce[:20]) == 0 and ce[20:] == bytes(syn[20:])
    six = _ip6(59, b"", tclass=0x01)
    assert (ecn_decapsulate(0xB3, six)[1] >> 4) & 3 == 3


def test_decapsulate_frames_and_the_socket_path_agree():
    """decapsulate() on an Ethernet frame and Decapsulator.handle() on what the raw sockets
    return give the same inner packet; handle() writes it into the TUN device (a pipe here)."""
    import os

    from lvs_inspect.lab.decap import Decapsulator, decapsulate
    inner = _tcp_syn()
    local = {(4, int.from_bytes(socket.inet_aton("192.0.2.11"), "big"))}
    eth = b"\x02\x0a\0\0\0\x11\x02\x0d\0\0\0\x01\x08\x00"
    outer = _ip4(47, _gre(0x0800, inner, k=True))
    assert decapsulate(eth + outer, local, (6080,)) == ("gre", inner)
    assert decapsulate(eth + outer, set(), (6080,)) == ("not-local", None)
    assert decapsulate(eth + inner, local, (6080,)) == ("other", None)
    frag = bytearray(outer)
    frag[6:8] = b"\x20\x00"                                         # MF: the kernel reassembles first
    assert decapsulate(eth + bytes(frag), local, (6080,)) == ("fragment", None)
    udp = struct.pack("!HHHH", 40000, 6080, 8 + 4 + len(inner), 0) + b"\x00\x04\x00\x00" + inner
    assert decapsulate(eth + _ip4(17, udp), local, (6080,)) == ("gue", inner)
    assert decapsulate(eth + _ip4(17, udp), local, (4789,)) == ("other", None)
    r, w = os.pipe()
    d = Decapsulator(dev="t0")
    d.tun = w
    try:
        d.handle(outer + b"\0" * 6, 47, socket.AF_INET, 0)           # trailing bytes past total length
        d.handle(b"\x00\x04\x00\x00" + inner, socket.IPPROTO_UDP, socket.AF_INET, 0)
        d.handle(_ip4(4, inner), 4, socket.AF_INET, 0)
        d.handle(inner, 4, socket.AF_INET6, 0)                        # raw IPv6: payload only
        d.handle(inner, 4, socket.AF_INET6, 0x03)                     # outer CE, inner Not-ECT
        d.handle(b"\x20\x00\x00\x00", socket.IPPROTO_UDP, socket.AF_INET, 0)
        got = os.read(r, 65535)
    finally:
        os.close(r)
        os.close(w)
    assert got == inner * 4
    st = d.stats()
    assert (st["received"], st["gre"], st["gue"], st["ipip"], st["written"]) == (6, 1, 1, 2, 4)
    assert st["skipped"] == {"ecn-ce-not-ect": 1, "gue-control": 1}


def test_toa_injector_inserts_a_valid_option():
    import dpkt

    from lvs_inspect.lab.toainject import insert_toa
    syn = _tcp_syn()
    opt = struct.pack("!BBH", 254, 8, 4242) + socket.inet_aton("203.0.113.66")
    out = insert_toa(syn, opt)
    ip = dpkt.ip.IP(out)
    assert ip.len == len(syn) + 8 and ip.tcp.off * 4 == 48
    assert ip.tcp.opts[:8] == opt and ip.tcp.opts[8:] == dpkt.ip.IP(syn).tcp.opts
    from lvs_inspect.lab.tundev import csum
    assert csum(out[:20]) == 0
    pseudo = out[12:20] + struct.pack("!BBH", 0, 6, len(out) - 20)
    assert csum(pseudo + out[20:]) == 0
    full = _ip4(6, bytes(bytearray(struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 15 << 4, 0x10, 5, 0, 0)) + b"\x01" * 40))
    assert insert_toa(full, opt) is None        # no room: 40 bytes of options already


def test_httpd_answers_get_and_post():
    import http.client
    import threading

    from lvs_inspect.lab.httpd import make_server
    srv = make_server("127.0.0.1", 0, "rs9", 3000)
    port = srv.server_address[1]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/hello.txt")
        body = c.getresponse().read()
        assert len(body) == 3000 and body.startswith(b"hello from rs9\n")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("POST", "/upload", body=b"x" * 5000)
        assert c.getresponse().read() == b"hello from rs9: got 5000 bytes\n"
    finally:
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------ the command without root

def test_lab_run_needs_root(monkeypatch, capsys):
    from lvs_inspect.cli import main
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    rc = main(["lab", "run", "--mode", "nat", "--director", "kernel", "--out", "/nonexistent/x"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs root" in err and err.count("\n") == 1


def test_lab_run_refuses_impossible_cases(capsys):
    from lvs_inspect.cli import main
    assert main(["lab", "run", "--mode", "tun", "--director", "kernel", "--out", "/nonexistent/x"]) == 2
    assert "no IPIP/GRE/FOU driver" in capsys.readouterr().err
    assert main(["lab", "run", "--mode", "nat", "--fault", "arp-leak", "--out", "/nonexistent/x"]) == 2
    assert "applies to dr, tun" in capsys.readouterr().err


def test_lab_list_prints_the_matrix(capsys):
    from lvs_inspect.cli import main
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    for name in P.FAULTS:
        assert name in out
    assert "tun, kernel: the kernel cannot encapsulate" in out
