"""``lvs-inspect diff``: replay -> diff round trips on every fixture with a topology.toml.

A fixture whose director behaves as its topology says gives no divergence (exit 0); for a
fixture with a fault on the director's path, the first divergence of every divergent
connection is the one that explains the fault (the leg, the kind, the field). Faults that are
not in what the director sends (ARP, a real server's own behaviour, scheduling) give no
divergence here: the replay's scheduler report or the audit rules see them."""
from __future__ import annotations

import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from lvs_inspect.capture import read_table
from lvs_inspect.errors import InputError
from lvs_inspect.forwarder.diff import FIELDS, diff
from lvs_inspect.forwarder.replay import replay
from lvs_inspect.topology import load_topology
from lvs_inspect.topology.infer import infer_topology

ROOT = Path(__file__).resolve().parent.parent
SYNTH = ROOT / "fixtures" / "synth"
ENGINE = ROOT / "fixtures" / "engine"
LAB = ROOT / "fixtures" / "lab"
FIXTURES = sorted(p.parent.name for p in SYNTH.glob("*/topology.toml")) + \
    sorted(f"engine/{p.parent.name}" for p in ENGINE.glob("*/topology.toml")) + \
    sorted(f"lab/{p.parent.name}" for p in LAB.glob("*/topology.toml"))

#: fixture -> (kind, leg, fields that must be among the first divergence's) for the first
#: divergence of every divergent connection; "observed_leg" for a packet seen on another leg
BROKEN = {
    "nat-wrong-port": ("fields", "director-rs", {"dport"}),
    "nat-ttl-not-decremented": ("fields", "director-rs", {"ip.ttl"}),
    "nat-bad-checksum": ("fields", "director-rs", {"l4.checksum"}),
    "nat-reply-not-rewritten": ("fields", "director-client", {"ip.src"}),
    "nat-bypass": ("wrong-leg", "director-client", {"ip.src"}),
    "nat-syn-retries": ("missing", "director-rs", set()),
    "dr-rewrites-ip": ("fields", "director-rs", {"ip.dst"}),
    "dr-arp-leak": ("wrong-leg", "director-rs", {"eth.src", "ip.ttl"}),
    "tun-not-encapsulated": ("fields", "director-rs", {"tunnel", "outer.src", "outer.dst"}),
    "tun-mtu": ("missing", "director-rs", set()),
    "tun-no-decap": ("unexpected", "director-client", set()),
    "fullnat-toa-missing": ("fields", "director-rs", {"toa", "ip.len", "tcp.hlen"}),
    "fullnat-toa-wrong": ("fields", "director-rs", {"toa"}),
    "fullnat-toa-variant": ("fields", "director-rs", {"toa"}),
    "fullnat-wrong-lip": ("fields", "director-rs", {"ip.src"}),
    "fullnat-mss": ("fields", "director-client", {"tcp.mss"}),
}
#: the lab's real traces (the reference forwarder or the kernel as director, fixtures/lab): the
#: fault in the name -> what the first divergence must be
LAB_FAULTS = {
    "arp-announce": ("wrong-leg", "director-rs", {"eth.src"}),    # the client's packets reach the RS
    "arp-leak": ("wrong-leg", "director-rs", {"eth.src"}),        # directly, not through the director
    "-ttl-": ("fields", "director-rs", {"ip.ttl"}),
    "no-toa": ("fields", "director-client", {"tcp.mss"}),          # the SYN-ACK comes first
    "wrong-port": ("fields", "director-rs", {"dport"}),
    "rs-wrong-gateway": ("wrong-leg", "director-client", {"ip.src"}),
    "mtu": ("missing", "director-rs", set()),
    "toa-wrong": ("fields", "director-rs", {"toa"}),                # the TOA port byte-swapped
}
for _f in FIXTURES:
    if _f.startswith("lab/"):
        for _pat, _exp in LAB_FAULTS.items():
            if _pat in _f:
                BROKEN[_f] = _exp
#: faults that are not in what the director sends: the diff is clean, on purpose
NOT_THE_DIRECTOR = {
    "dr-arp-announce": "ARP from a real server only",
    "dr-rs-down": "a real server's RST, straight to the client as DR replies go",
    "dr-rs-no-vip": "a real server drops what the director forwards correctly",
    "dr-routed-onward": "a real server routes the director's frames on",
    "fullnat-toa-forged": "the client forges TOA; DPVS NOPs it behind its own, as modelled",
    "fullnat-alibaba-toa-forged": "the client forges TOA; Alibaba passes it behind its own, as modelled",
    "nat-weight-zero": "scheduling: the replay lists the quiesced server's connections",
    "nat-persistence-broken": "scheduling: the replay lists the persistence-template disagreements",
    "nat-sh-moved": "scheduling (the trace of nat-persistence-broken)",
}
HEALTHY = [f for f in FIXTURES if f not in BROKEN]


def fixture_dir(name: str) -> Path:
    if name.startswith(("engine/", "lab/")):
        return ROOT / "fixtures" / name
    return SYNTH / name


@lru_cache(maxsize=None)
def expected_file(name: str, tmp: str) -> str:
    d = fixture_dir(name)
    res = replay([str(d / "trace.pcapng")], load_topology(str(d / "topology.toml")))
    out = Path(tmp) / f"{name.replace('/', '_')}.pcapng"
    res.write(out)
    return str(out)


@pytest.fixture(scope="module")
def tmpdir_module(tmp_path_factory):
    return str(tmp_path_factory.mktemp("expected"))


def run_diff(name: str, tmp: str):
    d = fixture_dir(name)
    return diff([expected_file(name, tmp)], [str(d / "trace.pcapng")], str(d / "topology.toml"))


def test_every_fixture_is_classified():
    assert len([f for f in FIXTURES if "/" not in f]) >= 30
    assert set(BROKEN) <= set(FIXTURES), set(BROKEN) - set(FIXTURES)
    assert set(NOT_THE_DIRECTOR) <= set(HEALTHY)


@pytest.mark.parametrize("name", HEALTHY)
def test_round_trip_healthy_fixture_has_no_divergence(name, tmpdir_module):
    r = run_diff(name, tmpdir_module)
    assert r.same, r.render_text(limit=3)
    s = r.summary
    assert s["matched"] >= 0.98 * s["expected_packets"] > 0
    assert s["missing"] == s["unexpected"] == s["differing"] == s["wrong_leg"] == 0
    assert r.exit_code() == 0


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_fixture_first_divergence_explains_the_fault(name, tmpdir_module):
    kind, leg, fields = BROKEN[name]
    r = run_diff(name, tmpdir_module)
    assert not r.same and r.exit_code() == 1
    assert r.connections
    for c in r.connections:
        f = c["first"]
        got = {x["field"] for x in f["fields"]}
        assert (f["kind"], f["leg"]) == (kind, leg), (c["connection"], f)
        assert fields <= got, (c["connection"], got)
        if kind == "missing":
            assert f["expected"] and f["observed"] is None
        if kind == "unexpected":
            assert f["observed"] and f["expected"] is None


def test_nat_bypass_reply_expected_at_the_director_seen_from_the_rip(tmpdir_module):
    """The issue's example: a NAT reply that bypasses the director is missing on
    director-client and shows up on rs-client, from RIP instead of VIP."""
    r = run_diff("nat-bypass", tmpdir_module)
    f = r.connections[0]["first"]
    assert f["expected"]["leg"] == "director-client" and f["observed"]["leg"] == "rs-client"
    assert f["observed"]["vantage"] == "p-rs1"
    src = {x["field"]: x for x in f["fields"]}["ip.src"]
    assert (src["expected"], src["observed"]) == ("203.0.113.100", "192.0.2.11")
    assert "SA seq=" in f["expected"]["packet"]


def test_toa_missing_names_the_handshake_ack(tmpdir_module):
    r = run_diff("fullnat-toa-missing", tmpdir_module)
    for c in r.connections:
        f = c["first"]
        toa = {x["field"]: x for x in f["fields"]}["toa"]
        assert toa["observed"] == "none" and toa["expected"].startswith("kind 254 len 8 ")
        assert toa["expected"].endswith(c["connection"].split(" > ")[0])      # client addr:port
        assert " A seq=" in f["expected"]["packet"]                            # the handshake ACK


def test_tun_mtu_shows_the_directors_frag_needed(tmpdir_module):
    r = run_diff("tun-mtu", tmpdir_module)
    for c in r.connections:
        assert any("ICMP" in u["packet"] and "type 3 code 4" in u["packet"]
                   for u in c["unexpected_packets"]), c
        assert "len=1448" in c["first"]["expected"]["packet"]


def test_dr_rewrites_ip_also_reports_the_rewritten_replies(tmpdir_module):
    r = run_diff("dr-rewrites-ip", tmpdir_module)
    assert r.summary["unexpected"] > 0
    assert all(u["leg"] == "director-client" for c in r.connections for u in c["unexpected_packets"])


@pytest.mark.parametrize("name", ["nat", "fullnat", "tun-gue", "nat-bypass"])
def test_expected_against_itself_is_the_same(name, tmpdir_module):
    exp = expected_file(name, tmpdir_module)
    d = fixture_dir(name)
    r = diff([exp], [exp], str(d / "topology.toml"))
    assert r.same and r.summary["matched"] == len(read_table([exp]))


@pytest.mark.parametrize("name", ["lab-nat-http", "lab-fullnat-http", "lab-dr-http", "lab-any-sll",
                                  "hb-nat-4vantage"])
def test_real_kernel_captures_round_trip_with_an_inferred_topology(name, tmp_path):
    """The engine's lab captures (a real kernel in network namespaces, nftables as director)
    have no topology.toml: replay and diff with the one inferred from the trace."""
    trace = str(next((ENGINE / name).glob("trace.pcap*")))
    t = read_table([trace])
    topo = infer_topology(t, source=trace)
    res = replay([trace], topo, table=t)
    assert len(res) > 0 and not res.drops
    out = tmp_path / "e.pcapng"
    res.write(out)
    r = diff([str(out)], [trace], topo)
    assert r.same, r.render_text(limit=2)
    assert r.summary["matched"] == len(res)


def test_json_report_structure(tmpdir_module):
    r = run_diff("nat-wrong-port", tmpdir_module)
    doc = json.loads(r.to_json())
    assert doc["version"] == 1 and doc["same"] is False
    assert set(doc["summary"]) >= {"connections", "same", "different", "expected_packets", "observed_packets",
                                   "matched", "differing", "missing", "unexpected", "wrong_leg",
                                   "outside_capture", "grace_ns"}
    c = doc["connections"][0]
    assert set(c) >= {"connection", "mode", "real_server", "matched", "differing", "missing", "unexpected",
                      "wrong_leg", "first", "missing_packets", "unexpected_packets"}
    f = c["first"]
    assert f["expected"]["file"].endswith(".pcapng") and f["observed"]["vantage"] == "p-dir-r"
    assert f["fields"] == [{"field": "dport", "expected": 80, "observed": 8080}]
    assert c["real_server"] == "192.0.2.13:80" and c["mode"] == "nat"
    names = [x[0] for x in FIELDS]
    assert len(names) == len(set(names))


def test_cli_diff_exit_codes_and_formats(tmpdir_module, tmp_path):
    d = SYNTH / "nat-ttl-not-decremented"
    exp = expected_file("nat-ttl-not-decremented", tmpdir_module)

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "lvs_inspect", "diff", *args],
                              capture_output=True, text=True, cwd=ROOT)

    p = cli(exp, str(d / "trace.pcapng"), "-t", str(d / "topology.toml"), "--limit", "1")
    assert p.returncode == 1, p.stderr
    assert "52 different" in p.stdout and "first divergence on director-rs" in p.stdout
    assert "ip.ttl" in p.stdout and "... 51 more divergent connections" in p.stdout
    p = cli(exp, str(d / "trace.pcapng"), "-t", str(d / "topology.toml"), "--format", "json",
            "-o", str(tmp_path / "r.json"))
    assert p.returncode == 1 and p.stdout == ""
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["summary"]["different"] == 52
    # the healthy one, topology inferred from the observed trace
    ok = SYNTH / "nat"
    p = cli(expected_file("nat", tmpdir_module), str(ok / "trace.pcapng"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "no divergence" in p.stdout and "topology inferred" in p.stdout
    # bad input: exit 2, one line
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"\x00" * 40)
    for args in ([str(bad), str(ok / "trace.pcapng")], [exp, str(tmp_path / "none.pcapng")],
                 [exp, str(ok / "trace.pcapng"), "-t", str(ok / "README.md")]):
        p = cli(*args)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_api_rejects_stdin():
    with pytest.raises(InputError):
        diff(["-"], [str(SYNTH / "nat" / "trace.pcapng")])


def test_two_captures_compare_too():
    """Either side may be a capture: a healthy trace against itself is the same, against the
    same traffic with the TTL fault it differs on every director-rs packet's TTL."""
    topo = str(SYNTH / "nat" / "topology.toml")
    ok = str(SYNTH / "nat" / "trace.pcapng")
    r = diff([ok], [ok], topo)
    assert r.same and r.summary["matched"] == r.summary["expected_packets"] > 900
    r = diff([ok], [str(SYNTH / "nat-ttl-not-decremented" / "trace.pcapng")], topo)
    assert r.summary["different"] == 52
    assert all({x["field"] for x in c["first"]["fields"]} == {"ip.ttl"} for c in r.connections)
