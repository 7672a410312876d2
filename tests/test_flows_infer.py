"""Stitching and inference on multi-vantage traces made by bench/make_trace.py (NAT and DR)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lvs_inspect.capture import read_table
from lvs_inspect.flows import LEGS, stitch
from lvs_inspect.flows.pairs import pairs
from lvs_inspect.topology import dump_toml, loads_topology
from lvs_inspect.topology.infer import infer_topology

ROOT = Path(__file__).resolve().parents[1]
RIPS = ["192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14"]


@pytest.fixture(scope="module", params=["nat", "dr"])
def trace(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "trace.pcapng"
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_trace.py"), "--frames", "6000", "--mode",
                    request.param, "--out", str(out)], check=True, capture_output=True)
    return request.param, read_table([str(out)])


def test_inference_finds_the_service_servers_modes_and_roles(trace):
    mode, t = trace
    topo = infer_topology(t)
    assert [str(s.vip) for s in topo.services] == ["203.0.113.100"]
    svc = topo.services[0]
    assert sorted(str(rs.ip) for rs in svc.real_servers) == RIPS
    assert {rs.mode.value for rs in svc.real_servers} == {mode}
    assert topo.profile.name == "linux"
    assert {str(m) for m in topo.director.macs} == {"02:00:00:00:00:02", "02:00:00:00:00:03"}
    roles = {n: str(r) for n, r in topo.vantages}
    assert roles == {"p-client": "client", "p-dir-c": "director:client-side", "p-dir-r": "director:rs-side",
                     "p-rs1": "rs:192.0.2.11"}
    if mode == "dr":
        assert {str(rs.mac) for rs in svc.real_servers} == {f"02:00:00:00:00:{x}" for x in (11, 12, 13, 14)}
    # what it writes reads back to the same model
    again = loads_topology(dump_toml(topo), "inferred.toml")
    assert again.services == topo.services and again.director == topo.director


def test_stitching_puts_every_packet_on_its_leg(trace):
    mode, t = trace
    topo = infer_topology(t)
    f = stitch(t, topo)
    legs = {LEGS[k] for k in np.unique(f.leg)}
    expected = {"client-director", "director-rs", "rs-director", "director-client"} if mode == "nat" else \
        {"client-director", "director-rs", "rs-client"}
    assert expected <= legs
    assert legs - expected <= {"other"}
    c = f.connections
    # round robin over four servers: every server gets a quarter of the connections
    counts = c["rs"].value_counts()
    assert len(counts) == 4 and counts.max() - counts.min() <= 1
    assert (c["state"].isin(["complete", "open", "reset-by-client"])).all()
    # only ARP, DNS (no DNS service in the inferred topology) and ICMP are left out
    other = f.leg == 0
    assert set(np.unique(t["ip_proto"][other])) <= {0, 1, 17}


def test_request_pairs_show_the_rewrite(trace):
    mode, t = trace
    f = stitch(t, infer_topology(t))
    p = pairs(f, "client-director", "director-rs")
    m = p[p["matched"]]
    assert len(m) > 0.99 * len(p)
    assert ((m["in_ip_ttl"] - m["out_ip_ttl"]) == 1).all()
    if mode == "nat":
        assert (m["out_ip_dst"] != m["in_ip_dst"]).all()
    else:
        assert (m["out_ip_dst"] == m["in_ip_dst"]).all()
        assert (m["out_eth_dst"] != m["in_eth_dst"]).all()


def test_fullnat_sequence_delta_is_learned_per_connection():
    """SEMANTICS §1.4: toward the real server every client sequence number is shifted by one
    per-connection delta D1; the stitcher learns it from the two SYNs."""
    folder = ROOT / "fixtures" / "synth" / "fullnat"
    t = read_table([str(folder / "trace.pcapng")])
    from lvs_inspect.topology import load_topology
    f = stitch(t, load_topology(str(folder / "topology.toml")))
    c = f.connections
    assert (c["seq_delta"] >= 0).all() and c["seq_delta"].nunique() > len(c) // 2
    p = pairs(f, "client-director", "director-rs")
    m = p[p["matched"]]
    delta = c["seq_delta"].to_numpy()[m["conn"].to_numpy()]
    assert len(m) > 100
    assert ((m["in_tcp_seq"].to_numpy().astype(np.int64) + delta) % (1 << 32)
            == m["out_tcp_seq"].to_numpy().astype(np.int64)).all()
    nat = stitch(*(lambda d: (read_table([str(d / "trace.pcapng")]), load_topology(str(d / "topology.toml"))))(
        ROOT / "fixtures" / "synth" / "nat"))
    assert (nat.connections["seq_delta"] == -1).all()
