"""Stitch packets into connections keyed by the client-side tuple (CIP, cport, VIP, vport, proto)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..capture.table import PacketTable
from ..topology.model import Topology
from .legs import (C_D, C_R, CLIENT_TO_SERVER, D_C, D_R, LEGS, MODE_CODES, MODES, OTHER, R_C, R_D,
                   Endpoints, classify_legs)

SYN, ACK, FIN, RST = 0x02, 0x10, 0x01, 0x04
#: a new connection on a reused client tuple must start this long after the previous one's SYN
#: minus clock skew between capture points
SKEW_NS = 500_000_000


@dataclass
class Flows:
    table: PacketTable
    topology: Topology
    endpoints: Endpoints
    leg: np.ndarray          # LEGS code per row
    mode: np.ndarray         # MODES code per row (0 unknown)
    svc: np.ndarray          # service index per row, -1
    rs: np.ndarray           # real-server index per row, -1
    role: np.ndarray         # vantage role per row
    cip: np.ndarray          # client tuple per row (0 when the row belongs to no connection)
    cport: np.ndarray
    vip: np.ndarray
    vport: np.ndarray
    conn: np.ndarray         # connection id per row, -1
    obs: np.ndarray          # observation id: the same packet at several vantage points, -1
    connections: pd.DataFrame

    def leg_name(self, i: int) -> str:
        return LEGS[int(self.leg[i])]


def stitch(table: PacketTable, topo: Topology) -> Flows:
    leg, mode, svc, rs, role, ep = classify_legs(table, topo)
    n = len(table)
    ip_src, ip_dst = table["ip_src"], table["ip_dst"]
    sport, dport = table["sport"], table["dport"]

    cip = np.zeros(n, dtype=np.uint64)
    cport = np.zeros(n, dtype=np.uint16)
    vip = np.zeros(n, dtype=np.uint64)
    vport = np.zeros(n, dtype=np.uint16)
    svc_vip = np.concatenate([ep.svc_vip, [0]]).astype(np.uint64)
    svc_port = np.concatenate([ep.svc_port, [0]]).astype(np.int64)

    # hops that carry a real server's address (NAT, and misconfigured hops of other modes)
    rs_addr_fwd = (leg == D_R) & (rs >= 0) & (ip_dst == np.concatenate([ep.rs_ip, [0]])[rs]) & (
        mode != MODE_CODES["fullnat"])
    rs_addr_back = np.isin(leg, (R_D, R_C, D_C)) & (rs >= 0) & (ip_src == np.concatenate([ep.rs_ip, [0]])[rs]) & (
        mode != MODE_CODES["fullnat"])
    fwd = (np.isin(leg, (C_D, C_R)) | (leg == D_R)) & ~rs_addr_fwd & ~((leg == D_R) & (mode == MODE_CODES["fullnat"]))
    cip[fwd], cport[fwd], vip[fwd], vport[fwd] = ip_src[fwd], sport[fwd], ip_dst[fwd], dport[fwd]
    back = np.isin(leg, (D_C, R_C)) & ~rs_addr_back
    cip[back], cport[back], vip[back], vport[back] = ip_dst[back], dport[back], ip_src[back], sport[back]

    # the real server's side carries RIP:rport; the client side is unchanged
    nat_fwd = rs_addr_fwd
    nat_back = rs_addr_back
    _svc_port = svc_port[svc]
    cip[nat_fwd], cport[nat_fwd] = ip_src[nat_fwd], sport[nat_fwd]
    vip[nat_fwd] = svc_vip[svc[nat_fwd]]
    vport[nat_fwd] = np.where(_svc_port[nat_fwd] == 0, dport[nat_fwd], _svc_port[nat_fwd])
    cip[nat_back], cport[nat_back] = ip_dst[nat_back], dport[nat_back]
    vip[nat_back] = svc_vip[svc[nat_back]]
    vport[nat_back] = np.where(_svc_port[nat_back] == 0, sport[nat_back], _svc_port[nat_back])

    _map_fullnat(table, leg, mode, svc, cip, cport, vip, vport, svc_vip, svc_port)

    proto = table["ip_proto"]
    keyed = (cip != 0) & (leg != OTHER)
    conn = np.full(n, -1, dtype=np.int64)
    if keyed.any():
        conn = _connection_ids(table, leg, mode, keyed, cip, cport, vip, vport, proto)
    obs = _observations(table, conn, leg)
    connections = _connection_table(table, conn, obs, leg, mode, svc, rs, cip, cport, vip, vport, proto, ep)
    return Flows(table, topo, ep, leg, mode, svc, rs, role, cip, cport, vip, vport, conn.astype(np.int32),
                 obs, connections)


def _map_fullnat(table, leg, mode, svc, cip, cport, vip, vport, svc_vip, svc_port) -> None:
    """FullNAT: (LIP, lport, RIP, rport) back to the client tuple.

    The director keeps the IP ID, so a SYN toward the real server is paired with the client's
    SYN of the same service that has the same IP ID and comes closest in time; the TOA option
    is used where no client SYN was captured.
    """
    fn = mode == MODE_CODES["fullnat"]
    if not fn.any():
        return
    flags = table["tcp_flags"]
    ts = table["ts_ns"]
    ip_src, ip_dst, sport, dport = table["ip_src"], table["ip_dst"], table["sport"], table["dport"]
    ident = table["ip_id"]
    is_syn = (flags & (SYN | ACK)) == SYN
    inner = np.flatnonzero(fn & (leg == D_R) & is_syn)
    outer = np.flatnonzero((leg == C_D) & is_syn)
    pairs = pd.DataFrame({"lip": ip_src[inner], "lport": sport[inner], "rip": ip_dst[inner],
                          "rport": dport[inner], "svc": svc[inner], "ip_id": ident[inner], "ts": ts[inner],
                          "toa_addr": table["toa_addr"][inner], "toa_port": table["toa_port"][inner]})
    client = pd.DataFrame({"svc": svc[outer], "ip_id": ident[outer], "cts": ts[outer],
                           "cip": ip_src[outer], "cport": sport[outer], "vip": ip_dst[outer],
                           "vport": dport[outer]})
    m = pairs.reset_index().merge(client, on=["svc", "ip_id"], how="left")
    m["gap"] = (m["ts"] - m["cts"]).abs()
    m = m.sort_values(["index", "gap"]).drop_duplicates("index")
    toa = m["cip"].isna() & (m["toa_addr"] != 0)
    m.loc[toa, "cip"] = m.loc[toa, "toa_addr"]
    m.loc[toa, "cport"] = m.loc[toa, "toa_port"]
    m.loc[toa, "vip"] = svc_vip[m.loc[toa, "svc"].to_numpy()]
    m.loc[toa, "vport"] = svc_port[m.loc[toa, "svc"].to_numpy()]
    m = m.dropna(subset=["cip"]).drop_duplicates(["lip", "lport", "rip", "rport"], keep="last")
    if m.empty:
        return
    key = m.set_index(["lip", "lport", "rip", "rport"])
    rows = np.flatnonzero(fn)
    is_fwd = leg[rows] == D_R
    a = np.where(is_fwd, ip_src[rows], ip_dst[rows])
    ap = np.where(is_fwd, sport[rows], dport[rows])
    b = np.where(is_fwd, ip_dst[rows], ip_src[rows])
    bp = np.where(is_fwd, dport[rows], sport[rows])
    q = pd.DataFrame({"lip": a, "lport": ap, "rip": b, "rport": bp})
    got = q.merge(key[["cip", "cport", "vip", "vport"]].reset_index(), on=["lip", "lport", "rip", "rport"],
                  how="left")
    ok = got["cip"].notna().to_numpy()
    r = rows[ok]
    cip[r] = got["cip"].to_numpy()[ok].astype(np.uint64)
    cport[r] = got["cport"].to_numpy()[ok].astype(np.uint16)
    vip[r] = got["vip"].to_numpy()[ok].astype(np.uint64)
    vport[r] = got["vport"].to_numpy()[ok].astype(np.uint16)


def _connection_ids(table, leg, mode, keyed, cip, cport, vip, vport, proto) -> np.ndarray:
    """One id per client tuple and generation (a reused tuple starts a new connection)."""
    n = len(leg)
    rows = np.flatnonzero(keyed)
    df = pd.DataFrame({"cip": cip[rows], "cport": cport[rows], "vip": vip[rows], "vport": vport[rows],
                       "proto": proto[rows]})
    tup = df.groupby(["cip", "cport", "vip", "vport", "proto"], sort=False).ngroup().to_numpy()
    ts = table["ts_ns"][rows]
    flags = table["tcp_flags"][rows]
    seq = table["tcp_seq"][rows]
    # generation starts: client SYNs with a new ISN (FullNAT's inner SYN has a remapped one)
    start = (((flags & (SYN | ACK)) == SYN) & (proto[rows] == 6) & np.isin(leg[rows], CLIENT_TO_SERVER)
             & ~((leg[rows] == D_R) & (mode[rows] == MODE_CODES["fullnat"])))
    gens = pd.DataFrame({"tup": tup[start], "seq": seq[start], "ts": ts[start]})
    gens = gens.groupby(["tup", "seq"], sort=False)["ts"].min().reset_index().sort_values(["tup", "ts"])
    gens["gen"] = gens.groupby("tup").cumcount()
    # the first generation of a tuple also takes what came before its SYN (skew, mid-stream start)
    gens.loc[gens["gen"] == 0, "ts"] = np.iinfo(np.int64).min
    left = pd.DataFrame({"i": np.arange(len(rows)), "tup": tup, "ts": ts + SKEW_NS}).sort_values("ts")
    merged = pd.merge_asof(left, gens[["tup", "ts", "gen"]].sort_values("ts"), on="ts", by="tup",
                           direction="backward")
    gen = np.zeros(len(rows), dtype=np.int64)
    gen[merged["i"].to_numpy()] = merged["gen"].fillna(0).to_numpy().astype(np.int64)
    ids = pd.DataFrame({"tup": tup, "gen": gen}).groupby(["tup", "gen"], sort=False).ngroup().to_numpy()
    # number connections in order of their first packet
    first = pd.Series(table["ts_ns"][rows]).groupby(ids).min().sort_values()
    renum = np.empty(len(first), dtype=np.int64)
    renum[first.index.to_numpy()] = np.arange(len(first))
    conn = np.full(n, -1, dtype=np.int64)
    conn[rows] = renum[ids]
    return conn


def _observations(table, conn, leg) -> np.ndarray:
    """The same packet seen at several vantage points is one observation."""
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


def _connection_table(table, conn, obs, leg, mode, svc, rs, cip, cport, vip, vport, proto, ep) -> pd.DataFrame:
    rows = np.flatnonzero(conn >= 0)
    nconn = int(conn.max()) + 1 if len(rows) else 0
    cols = {}
    if nconn == 0:
        return pd.DataFrame(columns=["cip", "cport", "vip", "vport", "proto", "svc", "rs", "mode", "first_ns",
                                     "last_ns", "state", "history"])
    c = conn[rows]
    first_row = np.full(nconn, -1, dtype=np.int64)
    order = np.lexsort((table["ts_ns"][rows], c))
    cs = c[order]
    starts = np.flatnonzero(np.r_[True, cs[1:] != cs[:-1]])
    first_row[cs[starts]] = rows[order[starts]]
    cols["cip"] = cip[first_row]
    cols["cport"] = cport[first_row]
    cols["vip"] = vip[first_row]
    cols["vport"] = vport[first_row]
    cols["proto"] = table["ip_proto"][first_row]
    ts = table["ts_ns"][rows]
    cols["first_ns"] = pd.Series(ts).groupby(c).min().reindex(range(nconn)).to_numpy()
    cols["last_ns"] = pd.Series(ts).groupby(c).max().reindex(range(nconn)).to_numpy()
    # the service, the real server and the mode: the most specific value seen on any row
    for name, arr, none in (("svc", svc, -1), ("rs", rs, -1), ("mode", mode, 0)):
        v = arr[rows].astype(np.int64)
        s = pd.Series(np.where(v == none, np.nan, v)).groupby(c).max().reindex(range(nconn))
        cols[name] = s.fillna(none).to_numpy().astype(np.int64)
    # a real server's mode where the rows did not say
    rs_mode = np.concatenate([ep.rs_mode.astype(np.int64), [0]])
    cols["mode"] = np.where(cols["mode"] == 0, rs_mode[cols["rs"]], cols["mode"])
    flags = table["tcp_flags"][rows]
    plen = table["payload_len"][rows].astype(np.float64)
    lg = leg[rows]
    first_obs = _first_of_obs(obs[rows])
    for code in range(1, len(LEGS)):
        m = (lg == code) & first_obs
        name = LEGS[code].replace("-", "_")
        cols[f"pk_{name}"] = np.bincount(c[m], minlength=nconn)
        cols[f"by_{name}"] = np.bincount(c[m], weights=plen[m], minlength=nconn).astype(np.int64)
    c2s = np.isin(lg, CLIENT_TO_SERVER)
    s2c = np.isin(lg, (R_D, D_C, R_C))
    tcp = table["ip_proto"][rows] == 6
    for name, cond in (("c_syn", c2s & ((flags & (SYN | ACK)) == SYN)),
                       ("s_synack", s2c & ((flags & (SYN | ACK)) == (SYN | ACK))),
                       ("c_ack", c2s & ((flags & (SYN | ACK | RST)) == ACK)),
                       ("c_fin", c2s & ((flags & FIN) != 0)), ("s_fin", s2c & ((flags & FIN) != 0)),
                       ("c_rst", c2s & ((flags & RST) != 0)), ("s_rst", s2c & ((flags & RST) != 0)),
                       ("c_data", c2s & (plen > 0)), ("s_data", s2c & (plen > 0))):
        cols[name] = np.bincount(c[cond & tcp & first_obs], minlength=nconn)
    df = pd.DataFrame(cols)
    df["state"], df["history"] = _states(df)
    return df


def _first_of_obs(obs: np.ndarray) -> np.ndarray:
    """True on one row of each observation (the first in table order)."""
    out = np.zeros(len(obs), dtype=bool)
    if len(obs):
        _, idx = np.unique(obs, return_index=True)
        out[idx] = True
    return out


def _states(df: pd.DataFrame):
    """Per connection: a state word and a compact Zeek-like history (upper case: client side).

    S client SYN, H server SYN-ACK, A client handshake ACK, D/d data, F/f FIN, R/r RST.
    """
    udp = df["proto"].to_numpy() == 17
    syn, synack = df["c_syn"].to_numpy() > 0, df["s_synack"].to_numpy() > 0
    c_rst, s_rst = df["c_rst"].to_numpy() > 0, df["s_rst"].to_numpy() > 0
    c_fin, s_fin = df["c_fin"].to_numpy() > 0, df["s_fin"].to_numpy() > 0
    s_data = df["s_data"].to_numpy() > 0
    c_data = df["c_data"].to_numpy() > 0
    state = np.where(udp, np.where(s_data, "answered", "unanswered"),
            np.where(syn & ~synack & s_rst, "refused",
            np.where(syn & ~synack, "no-answer",
            np.where(s_rst, "reset-by-server",
            np.where(c_rst, "reset-by-client",
            np.where(c_fin & s_fin, "complete",
            np.where(synack, "open", "partial")))))))
    parts = [("S", syn), ("H", synack), ("A", df["c_ack"].to_numpy() > 0), ("D", c_data), ("d", s_data),
             ("F", c_fin), ("f", s_fin), ("R", c_rst), ("r", s_rst)]
    hist = np.full(len(df), "", dtype=object)
    for letter, m in parts:
        hist = np.where(m, hist + letter, hist)
    return state, hist
