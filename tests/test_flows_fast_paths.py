"""The whole-column fast paths of flows/ and the audit give what the pandas versions gave.

Issue 4 replaced pandas groupby/merge in stitching, pairing and the scope environments with
hashing, factorisation and ufunc reductions over whole columns. The pandas versions they
replaced are kept here, verbatim in substance, as oracles: on small traces (and on versions of
them with tied timestamps, reused client tuples, zeroed IP IDs and a shuffled row order) every
connection id, observation id, connection-table column, pair column and dtype must be equal.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lvs_inspect.capture import read_table
from lvs_inspect.capture.table import PacketTable, release_freed_memory
from lvs_inspect.checks import engine
from lvs_inspect.flows import keys, stitch
from lvs_inspect.flows.legs import (C_D, CLIENT_TO_SERVER, D_C, D_R, LEG_CODES, LEGS, MODE_CODES, OTHER, R_C,
                                    R_D, ROLE_CODES)
from lvs_inspect.flows.pairs import PAIR_COLUMNS, pair_rows, pairs
from lvs_inspect.flows.stitch import ACK, FIN, RST, SKEW_NS, SYN, _states
from lvs_inspect.topology import load_topology
from lvs_inspect.topology.infer import infer_topology

FIX = Path(__file__).resolve().parents[1] / "fixtures"
TRACES = ["synth/nat", "synth/dr", "synth/tun-gre", "synth/fullnat", "synth/fullnat-alibaba",
          "engine/hb-tcp-toa", "engine/lab-fullnat-http"]
VARIANTS = ["plain", "tied", "reused", "id0", "shuffled"]


# ------------------------------------------------------------------------------- the oracles

def old_connection_ids(table, leg, mode, keyed, cip, cport, vip, vport, proto):
    n = len(leg)
    rows = np.flatnonzero(keyed)
    df = pd.DataFrame({"cip": cip[rows], "cport": cport[rows], "vip": vip[rows], "vport": vport[rows],
                       "proto": proto[rows]})
    tup = df.groupby(["cip", "cport", "vip", "vport", "proto"], sort=False).ngroup().to_numpy()
    ts = table["ts_ns"][rows]
    flags = table["tcp_flags"][rows]
    seq = table["tcp_seq"][rows]
    start = (((flags & (SYN | ACK)) == SYN) & (proto[rows] == 6) & np.isin(leg[rows], CLIENT_TO_SERVER)
             & ~((leg[rows] == D_R) & (mode[rows] == MODE_CODES["fullnat"])))
    gens = pd.DataFrame({"tup": tup[start], "seq": seq[start], "ts": ts[start]})
    gens = gens.groupby(["tup", "seq"], sort=False)["ts"].min().reset_index().sort_values(["tup", "ts"])
    gens["gen"] = gens.groupby("tup").cumcount()
    gens.loc[gens["gen"] == 0, "ts"] = np.iinfo(np.int64).min
    left = pd.DataFrame({"i": np.arange(len(rows)), "tup": tup, "ts": ts + SKEW_NS}).sort_values("ts")
    merged = pd.merge_asof(left, gens[["tup", "ts", "gen"]].sort_values("ts"), on="ts", by="tup",
                           direction="backward")
    gen = np.zeros(len(rows), dtype=np.int64)
    gen[merged["i"].to_numpy()] = merged["gen"].fillna(0).to_numpy().astype(np.int64)
    ids = pd.DataFrame({"tup": tup, "gen": gen}).groupby(["tup", "gen"], sort=False).ngroup().to_numpy()
    first = pd.Series(table["ts_ns"][rows]).groupby(ids).min().sort_values()
    renum = np.empty(len(first), dtype=np.int64)
    renum[first.index.to_numpy()] = np.arange(len(first))
    conn = np.full(n, -1, dtype=np.int64)
    conn[rows] = renum[ids]
    return conn


def old_observations(table, conn, leg):
    rows = np.flatnonzero(conn >= 0)
    obs = np.full(len(conn), -1, dtype=np.int32)
    if len(rows) == 0:
        return obs
    df = pd.DataFrame({"conn": conn[rows], "leg": leg[rows], "seq": table["tcp_seq"][rows],
                       "ack": table["tcp_ack"][rows], "flags": table["tcp_flags"][rows],
                       "dig": table["payload_digest"][rows], "len": table["payload_len"][rows],
                       "id": table["ip_id"][rows]})
    obs[rows] = df.groupby(list(df.columns), sort=False).ngroup().to_numpy()
    return obs


def old_connection_table(table, conn, obs, leg, mode, svc, rs, cip, cport, vip, vport, ep):
    rows = np.flatnonzero(conn >= 0)
    nconn = int(conn.max()) + 1 if len(rows) else 0
    c = conn[rows]
    first_row = np.full(nconn, -1, dtype=np.int64)
    order = np.lexsort((table["ts_ns"][rows], c))
    cs = c[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    first_row[cs[starts]] = rows[order[starts]]
    cols = {"cip": cip[first_row], "cport": cport[first_row], "vip": vip[first_row], "vport": vport[first_row],
            "proto": table["ip_proto"][first_row]}
    ts = table["ts_ns"][rows]
    cols["first_ns"] = pd.Series(ts).groupby(c).min().reindex(range(nconn)).to_numpy()
    cols["last_ns"] = pd.Series(ts).groupby(c).max().reindex(range(nconn)).to_numpy()
    for name, arr, none in (("svc", svc, -1), ("rs", rs, -1), ("mode", mode, 0)):
        v = arr[rows].astype(np.int64)
        s = pd.Series(np.where(v == none, np.nan, v)).groupby(c).max().reindex(range(nconn))
        cols[name] = s.fillna(none).to_numpy().astype(np.int64)
    rs_mode = np.concatenate([ep.rs_mode.astype(np.int64), [0]])
    cols["mode"] = np.where(cols["mode"] == 0, rs_mode[cols["rs"]], cols["mode"])
    flags = table["tcp_flags"][rows]
    plen = table["payload_len"][rows].astype(np.float64)
    lg = leg[rows]
    first_obs = np.zeros(len(rows), dtype=bool)
    first_obs[np.unique(obs[rows], return_index=True)[1]] = True
    for code in range(1, len(LEGS)):
        m = (lg == code) & first_obs
        name = LEGS[code].replace("-", "_")
        cols[f"pk_{name}"] = np.bincount(c[m], minlength=nconn)
        cols[f"by_{name}"] = np.bincount(c[m], weights=plen[m], minlength=nconn).astype(np.int64)
    c2s, s2c = np.isin(lg, CLIENT_TO_SERVER), np.isin(lg, (R_D, D_C, R_C))
    tcp = table["ip_proto"][rows] == 6
    for name, cond in (("c_syn", c2s & ((flags & (SYN | ACK)) == SYN)),
                       ("s_synack", s2c & ((flags & (SYN | ACK)) == (SYN | ACK))),
                       ("c_ack", c2s & ((flags & (SYN | ACK | RST)) == ACK)),
                       ("c_fin", c2s & ((flags & FIN) != 0)), ("s_fin", s2c & ((flags & FIN) != 0)),
                       ("c_rst", c2s & ((flags & RST) != 0)), ("s_rst", s2c & ((flags & RST) != 0)),
                       ("c_data", c2s & (plen > 0)), ("s_data", s2c & (plen > 0))):
        cols[name] = np.bincount(c[cond & tcp & first_obs], minlength=nconn)
    # data counts every transport (a UDP answer is the server's data)
    cols["c_data"] = np.bincount(c[c2s & (plen > 0) & first_obs], minlength=nconn)
    cols["s_data"] = np.bincount(c[s2c & (plen > 0) & first_obs], minlength=nconn)
    # client SYN transmissions: distinct IP IDs among the connection's client SYNs
    syn = c2s & ((flags & (SYN | ACK)) == SYN) & tcp & first_obs
    sent = pd.DataFrame({"c": c[syn], "i": table["ip_id"][rows][syn]}).drop_duplicates()
    cols["c_syn"] = np.bincount(sent["c"].to_numpy(), minlength=nconn)
    df = pd.DataFrame(cols)
    df["state"], df["history"] = _states(df)
    return df, first_row


def old_pairs(flows, leg_in, leg_out):
    t = flows.table
    obs = flows.obs
    rows = np.flatnonzero(obs >= 0)
    pref = (flows.role[rows] != ROLE_CODES["director"]).astype(np.int64)
    order = np.lexsort((rows, pref, obs[rows]))
    o = obs[rows][order]
    rep = rows[order][np.r_[True, o[1:] != o[:-1]]]
    a = rep[flows.leg[rep] == LEG_CODES[leg_in]]
    b = rep[flows.leg[rep] == LEG_CODES[leg_out]]
    if len(a) == 0:
        return pd.DataFrame()
    request = leg_in == "client-director"

    def side(r, prefix):
        d = {f"{prefix}row": r, "conn": flows.conn[r]}
        for col in PAIR_COLUMNS:
            d[f"{prefix}{col}"] = t[col][r]
        return pd.DataFrame(d)

    left, right = side(a, "in_"), side(b, "out_")
    fullnat = flows.connections["mode"].to_numpy() == MODE_CODES["fullnat"]
    conn_fn = fullnat[left["conn"].to_numpy()]
    common = ["conn", "tcp_flags", "payload_digest", "payload_len", "ip_id"]
    out = []
    for ks, sel in ((common + ["tcp_seq", "tcp_ack"], ~conn_fn),
                    (common + (["tcp_ack"] if request else ["tcp_seq"]), conn_fn)):
        if not sel.any():
            continue
        lk = left[sel].rename(columns={f"in_{k}": k for k in ks if k != "conn"})
        rk = right.rename(columns={f"out_{k}": k for k in ks if k != "conn"})
        m = lk.merge(rk, on=ks, how="left")
        for k in ks:
            if k != "conn":
                m[f"in_{k}"] = m[k]
                m[f"out_{k}"] = m[k]
        m = m.drop(columns=[k for k in ks if k != "conn"])
        m["_gap"] = (m["out_ts_ns"] - m["in_ts_ns"]).abs()
        m = m.sort_values(["in_row", "_gap"], na_position="last").drop_duplicates("in_row")
        out.append(m.drop(columns="_gap"))
    res = pd.concat(out, ignore_index=True)
    res["matched"] = res["out_row"].notna()
    res["conn"] = res["conn"].astype(np.int64)
    for col in ("rs", "svc", "mode"):
        res[col] = flows.connections[col].to_numpy()[res["conn"].to_numpy()]
    return res.sort_values("in_row", ignore_index=True)


def old_handshake_ack(f):
    t = f.table
    m = (f.conn >= 0) & ((t["tcp_flags"] & 0x17) == 0x10) & np.isin(f.leg, (C_D, D_R)) & (t["ip_proto"] == 6)
    rows = np.flatnonzero(m)
    out = np.zeros(len(t), dtype=bool)
    if len(rows):
        df = pd.DataFrame({"r": rows, "c": f.conn[rows], "l": f.leg[rows], "ts": t["ts_ns"][rows]})
        first = df.sort_values("ts", kind="stable").drop_duplicates(["c", "l"])
        ack = pd.Series(t["tcp_ack"][first["r"].to_numpy()], index=first.index)
        keep = df.merge(first.assign(a=ack)[["c", "l", "a"]], on=["c", "l"])
        same = t["tcp_ack"][keep["r"].to_numpy()] == keep["a"].to_numpy()
        no_data = t["payload_len"][keep["r"].to_numpy()] == 0
        out[keep["r"].to_numpy()[same & no_data]] = True
    return out


def old_before_server_data(f):
    t = f.table
    out = np.zeros(len(t), dtype=bool)
    rows = np.flatnonzero((f.conn >= 0) & np.isin(f.leg, (C_D, D_R)))
    if len(rows) == 0:
        return out
    s_rows = np.flatnonzero((f.conn >= 0) & np.isin(f.leg, (R_D, D_C, 5)) & (t["payload_len"] > 0))
    fd = pd.Series(t["ts_ns"][s_rows]).groupby(f.conn[s_rows]).min().reindex(f.conn[rows]).to_numpy()
    out[rows] = np.isnan(fd) | (t["ts_ns"][rows] < np.nan_to_num(fd, nan=0))
    return out


# ------------------------------------------------------------------------------- the traces

def _variant(t: PacketTable, kind: str) -> PacketTable:
    """Harder cases than the fixtures hold: tied timestamps, a reused client tuple (a second
    generation 2 s later with new sequence numbers, and a late copy of the first), every IP ID
    and payload digest zero (copies only the sequence numbers tell apart), a shuffled row order."""
    if kind == "plain":
        return t
    n = len(t)
    core = {k: v.copy() for k, v in t.core.items()}
    sparse = {g: {k: v.copy() for k, v in cols.items()} for g, cols in t.sparse.items()}
    if kind == "tied":
        core["ts_ns"] = core["ts_ns"] // 5_000_000 * 5_000_000
    elif kind == "id0":
        core["ip_id"][:] = 0
        core["payload_digest"][:] = 0
        core["ts_ns"] = core["ts_ns"] // 2_000_000 * 2_000_000
    elif kind == "reused":
        later = {k: v.copy() for k, v in core.items()}
        later["ts_ns"] += 2_000_000_000
        later["tcp_seq"] += np.uint32(12345)
        later["tcp_ack"] += np.uint32(12345)
        late = {k: v.copy() for k, v in core.items()}
        late["ts_ns"] += 100_000_000
        core = {k: np.concatenate([core[k], later[k], late[k]]) for k in core}
        sparse = {g: {k: (np.concatenate([v, v + n, v + 2 * n]) if k == "rows" else np.concatenate([v, v, v]))
                      for k, v in cols.items()} for g, cols in sparse.items()}
        n *= 3
    elif kind == "shuffled":
        perm = np.random.default_rng(7).permutation(n)
        core = {k: v[perm] for k, v in core.items()}
        inv = np.empty(n, np.int64)
        inv[perm] = np.arange(n)
        for g, cols in sparse.items():
            rows = inv[cols["rows"]]
            o = np.argsort(rows, kind="stable")
            sparse[g] = {k: (rows[o] if k == "rows" else v[o]) for k, v in cols.items()}
    return PacketTable(n, core, sparse, t.opt_bytes, t.vantages, t.book, t.inputs)


def _trace(name: str) -> Path:
    folder = FIX / name
    traces = sorted(folder.glob("trace.*")) if folder.is_dir() else []
    if not traces:
        pytest.fail(f"fixture {name} has no trace")
    return traces[0]


@pytest.fixture(scope="module", params=TRACES)
def base(request):
    return request.param, read_table([str(_trace(request.param))])


@pytest.fixture(params=VARIANTS)
def flows(request, base):
    name, t0 = base
    t = _variant(t0, request.param)
    topo_file = FIX / name / "topology.toml"
    topo = load_topology(str(topo_file)) if topo_file.exists() else infer_topology(t)
    return stitch(t, topo)


def _same(a: np.ndarray, b: np.ndarray):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------- the tests

def test_connections_and_observations(flows):
    f, t = flows, flows.table
    keyed = (f.cip != 0) & (f.leg != OTHER)
    if keyed.any():
        conn = old_connection_ids(t, f.leg, f.mode, keyed, f.cip, f.cport, f.vip, f.vport, t["ip_proto"])
    else:
        conn = np.full(len(t), -1, dtype=np.int64)
    _same(f.conn, conn.astype(np.int32))
    _same(f.obs, old_observations(t, conn, f.leg))
    if len(f.connections):
        df, first_row = old_connection_table(t, conn, f.obs, f.leg, f.mode, f.svc, f.rs, f.cip, f.cport, f.vip,
                                             f.vport, f.endpoints)
        # seq_delta came after the reference implementation (it has its own test)
        pd.testing.assert_frame_equal(f.connections.drop(columns="seq_delta"), df, check_exact=True)
        _same(f.first_row, first_row)


def test_pairs(flows):
    for leg_in, leg_out in (("client-director", "director-rs"), ("rs-director", "director-client"),
                            ("client-director", "director-client")):
        got, want = pairs(flows, leg_in, leg_out), old_pairs(flows, leg_in, leg_out)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        p = pair_rows(flows, leg_in, leg_out)
        assert (p is None) == want.empty


def test_scope_columns(flows):
    _same(engine._handshake_ack(flows), old_handshake_ack(flows))
    _same(engine._before_server_data(flows), old_before_server_data(flows))


def test_group_ids_is_ngroup_and_survives_hash_collisions(monkeypatch):
    rng = np.random.default_rng(3)
    n = 5000
    cols = [rng.integers(0, 3, n).astype(np.uint64) | np.uint64(1 << 63), rng.integers(-1, 3, n).astype(np.int16),
            rng.integers(0, 4, n).astype(np.uint8), rng.integers(0, 2, n).astype(np.uint32)]
    rows = np.flatnonzero(rng.random(n) < 0.8)
    df = pd.DataFrame({f"c{i}": c[rows] for i, c in enumerate(cols)})
    want = df.groupby(list(df.columns), sort=False).ngroup().to_numpy()
    want_first = np.unique(want, return_index=True)[1]
    for hashed in (keys.hash_rows, lambda cols, rows=None: np.zeros(len(rows), np.uint64)):
        monkeypatch.setattr(keys, "hash_rows", hashed)       # the second one collides on every row
        ids, first = keys.group_ids(cols, rows)
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_array_equal(first, want_first)


@pytest.mark.parametrize("a,k", [
    (np.array([1, 2, 3, 2 ** 63 + 5], np.uint64), np.array([3, 2 ** 63 + 5], np.uint64)),
    (np.array([1, 2, 3, 2 ** 63 + 5], np.uint64), np.array([3, 7], np.int64)),     # isin compares as float
    (np.array([0, 1, 2, 6], np.uint8), (1, 6)),
    (np.array([-1, 0, 5], np.int16), np.zeros(0, np.int16)),
    (np.arange(100, dtype=np.int64), np.arange(0, 100, 3)),                        # many keys: np.isin
])
def test_member_is_isin(a, k):
    np.testing.assert_array_equal(keys.member(a, k), np.isin(a, k))


def test_release_freed_memory_is_harmless():
    release_freed_memory()
    release_freed_memory()


@pytest.mark.parametrize("name", ["synth/tun-gre", "engine/hb-tunnels", "engine/hb-l2-arp", "engine/hb-icmp"])
def test_take_is_a_gather_of_the_dense_column(name):
    from lvs_inspect.capture.schema import COLUMNS

    t = read_table([str(_trace(name))])
    rng = np.random.default_rng(5)
    rows = rng.integers(0, len(t), 3 * len(t) + 7)         # any order, repeats
    for col in [c.name for c in COLUMNS] + ["input"]:
        want = t[col][rows]
        got = t.take(col, rows)
        assert got.dtype == want.dtype, col
        np.testing.assert_array_equal(got, want, err_msg=col)
        np.testing.assert_array_equal(t.take(col, rows[:0]), want[:0])


@pytest.mark.parametrize("name", ["nat", "fullnat", "tun-gue", "dr-arp-leak"])
def test_stitch_without_counters_keeps_who_is_who(name):
    """replay stitches with counters=False: every per-row result and the connections' identity
    columns are those of the full stitch; the counters, state and history are left out."""
    d = FIX / "synth" / name
    table = read_table([str(d / "trace.pcapng")])
    topo = load_topology(str(d / "topology.toml"))
    full = stitch(table, topo)
    lite = stitch(table, topo, counters=False)
    for attr in ("leg", "mode", "svc", "rs", "role", "cip", "cport", "vip", "vport", "conn", "obs",
                 "first_row", "obs_first"):
        assert np.array_equal(getattr(full, attr), getattr(lite, attr)), attr
    assert len(lite.connections) == len(full.connections) > 0
    pd.testing.assert_frame_equal(lite.connections, full.connections[list(lite.connections.columns)])
    assert {"state", "history", "c_syn", "pk_client_director"} <= set(full.connections.columns)
    assert not {"state", "history", "c_syn", "pk_client_director"} & set(lite.connections.columns)
    assert "seq_delta" in lite.connections.columns
