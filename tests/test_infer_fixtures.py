"""`lvs-inspect infer` on every fixture trace that shows a director at work."""
from __future__ import annotations

from pathlib import Path

import pytest

from lvs_inspect.capture import read_table
from lvs_inspect.topology import dump_toml, loads_topology
from lvs_inspect.topology.infer import infer_topology

FIX = Path(__file__).resolve().parents[1] / "fixtures"

# fixture -> (vip:port, {rip: (rport, mode)}, profile, director MACs, LIPs, vantage roles)
EXPECTED = {
    "engine/lab-nat-http": (
        "192.0.2.100:80", {"198.51.100.11": (8080, "nat"), "198.51.100.12": (8080, "nat")}, "linux",
        {"02:0d:00:00:00:01", "02:0d:00:00:00:02"}, set(),
        {"p-client": "client", "p-dir-c": "director:client-side", "p-dir-r": "director:rs-side",
         "p-rs1": "rs:198.51.100.11", "p-rs2": "rs:198.51.100.12"}),
    "engine/lab-dr-http": (
        "192.0.2.100:80", {"198.51.100.11": (80, "dr"), "198.51.100.12": (80, "dr")}, "linux",
        {"02:0d:00:00:00:01"}, set(),
        {"p-client": "client", "p-dir": "director", "p-rs1": "rs:198.51.100.11", "p-rs2": "rs:198.51.100.12"}),
    "engine/lab-fullnat-http": (
        "192.0.2.100:80", {"198.51.100.11": (8080, "fullnat"), "198.51.100.12": (8080, "fullnat")}, "linux",
        {"02:0d:00:00:00:01", "02:0d:00:00:00:02"}, {"198.51.100.200"},
        {"p-client": "client", "p-dir-c": "director:client-side", "p-dir-r": "director:rs-side",
         "p-rs1": "rs:198.51.100.11", "p-rs2": "rs:198.51.100.12"}),
    "engine/hb-nat-4vantage": (
        "192.0.2.100:80", {"198.51.100.11": (8080, "nat")}, "linux",
        {"02:0d:00:00:00:01", "02:0d:00:00:00:02"}, set(),
        {"p-client": "client", "p-dir-c": "director:client-side", "p-dir-r": "director:rs-side",
         "p-rs1": "rs:198.51.100.11"}),
}


def _trace(folder: Path) -> Path:
    return next(p for p in folder.iterdir() if p.name.startswith("trace."))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inference_on_fixture(name):
    vip, servers, profile, dmacs, lips, roles = EXPECTED[name]
    t = read_table([str(_trace(FIX / name))])
    topo = infer_topology(t)
    assert [f"{s.vip}:{s.port}" for s in topo.services] == [vip]
    got = {str(rs.ip): (rs.port, rs.mode.value) for rs in topo.services[0].real_servers}
    assert got == servers
    assert topo.profile.name == profile
    assert {str(m) for m in topo.director.macs} == dmacs
    assert {str(a) for a in topo.director.lips} == lips
    assert {n: str(r) for n, r in topo.vantages} == roles
    assert topo.services[0].note and all(rs.note for rs in topo.services[0].real_servers)
    text = dump_toml(topo)
    for name, role in roles.items():      # every role comes with its evidence, as a comment
        assert f"#   {name} = {role}: " in text
    again = loads_topology(text, "inferred.toml")
    assert again.services == topo.services


def test_every_forwarding_fixture_is_covered():
    lab = {str(p.parent.relative_to(FIX)) for p in FIX.glob("engine/lab-*-http/trace.*")}
    assert lab <= set(EXPECTED)


#: where the wire shows another set-up than the one intended, inference reports the wire: a real
#: server reached on port 8080, one masqueraded or not tunnelled, a director that keeps the TTL,
#: another TOA kind than the modules expect, requests sent from the director's own address
WIRE_DIFFERS = {"nat-wrong-port", "dr-rewrites-ip", "tun-not-encapsulated", "nat-ttl-not-decremented",
                "fullnat-toa-variant", "fullnat-wrong-lip"}
SYNTH_HEALTHY = sorted(p.name for p in (FIX / "synth").iterdir() if p.is_dir() and p.name not in WIRE_DIFFERS)


@pytest.mark.parametrize("name", SYNTH_HEALTHY)
def test_inference_matches_the_modelled_set_up(name):
    """Every mode and fault: the inferred topology is the one the generator modelled (its topology.toml)."""
    from lvs_inspect.topology import load_topology
    folder = FIX / "synth" / name
    truth = load_topology(str(folder / "topology.toml"))
    topo = infer_topology(read_table([str(_trace(folder))]))
    assert topo.profile.name == truth.profile.name
    assert [(s.vip, s.port, s.mode) for s in topo.services] == [(s.vip, s.port, s.mode) for s in truth.services]
    key = lambda rs: (str(rs.ip), rs.port, rs.mode.value, rs.tun, rs.tun_port)  # noqa: E731
    assert sorted(map(key, topo.services[0].real_servers)) == sorted(map(key, truth.services[0].real_servers))
    assert set(topo.director.macs) == set(truth.director.macs)
    assert set(topo.director.lips) == set(truth.director.lips) | set(truth.services[0].lips)
    if truth.services[0].toa:
        assert (topo.services[0].toa.kind, topo.services[0].toa.length) == (truth.services[0].toa.kind,
                                                                            truth.services[0].toa.length)
    assert dict(topo.vantages) == dict(truth.vantages)
