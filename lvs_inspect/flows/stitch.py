"""Stitch packets into connections keyed by the client-side tuple (CIP, cport, VIP, vport, proto)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..capture.table import PacketTable, release_freed_memory
from ..topology.model import Topology
from .keys import group_ids, member
from .legs import (C_D, C_R, CLIENT_TO_SERVER, D_C, D_R, LEGS, MODE_CODES, OTHER, R_C, R_D,
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
    first_row: np.ndarray | None = None   # per connection: its first row (earliest, then table order)
    obs_first: np.ndarray | None = None   # per observation: its first row in table order
    cache: dict = field(default_factory=dict, repr=False)   # derived arrays (pairs.representatives)

    def leg_name(self, i: int) -> str:
        return LEGS[int(self.leg[i])]


def stitch(table: PacketTable, topo: Topology, *, counters: bool = True) -> Flows:
    """Legs, connections and observations of every row. ``counters=False``: the connection
    table holds who is who only (tuple, first/last time, service, real server, mode, FullNAT's
    sequence delta), without the packet and flag counters, the state and the history (replay
    needs no more)."""
    leg, mode, svc, rs, role, ep = classify_legs(table, topo)
    n = len(table)
    ip_src, ip_dst = table["ip_src"], table["ip_dst"]
    sport, dport = table["sport"], table["dport"]

    cip = np.zeros(n, dtype=np.uint64)
    cport = np.zeros(n, dtype=np.uint16)
    vip = np.zeros(n, dtype=np.uint64)
    vport = np.zeros(n, dtype=np.uint16)
    svc_vip = np.concatenate([ep.svc_vip.astype(np.uint64), np.zeros(1, np.uint64)])
    svc_port = np.concatenate([ep.svc_port, [0]]).astype(np.int64)
    rs_ip = np.concatenate([ep.rs_ip.astype(np.uint64), np.zeros(1, np.uint64)])
    fullnat = MODE_CODES["fullnat"]

    # hops that carry a real server's address (NAT, and misconfigured hops of other modes)
    cand = np.flatnonzero((leg == D_R) & (rs >= 0) & (mode != fullnat))
    nat_fwd = cand[ip_dst[cand] == rs_ip[rs[cand]]]
    cand = np.flatnonzero(member(leg, (R_D, R_C, D_C)) & (rs >= 0) & (mode != fullnat))
    nat_back = cand[ip_src[cand] == rs_ip[rs[cand]]]
    del cand
    fwd = member(leg, (C_D, C_R, D_R)) & ~((leg == D_R) & (mode == fullnat))
    fwd[nat_fwd] = False
    fwd = np.flatnonzero(fwd)
    cip[fwd], cport[fwd], vip[fwd], vport[fwd] = ip_src[fwd], sport[fwd], ip_dst[fwd], dport[fwd]
    back = member(leg, (D_C, R_C))
    back[nat_back] = False
    back = np.flatnonzero(back)
    cip[back], cport[back], vip[back], vport[back] = ip_dst[back], dport[back], ip_src[back], sport[back]
    del fwd, back

    # the real server's side carries RIP:rport; the client side is unchanged
    cip[nat_fwd], cport[nat_fwd] = ip_src[nat_fwd], sport[nat_fwd]
    vip[nat_fwd] = svc_vip[svc[nat_fwd]]
    port = svc_port[svc[nat_fwd]]
    vport[nat_fwd] = np.where(port == 0, dport[nat_fwd], port)
    cip[nat_back], cport[nat_back] = ip_dst[nat_back], dport[nat_back]
    vip[nat_back] = svc_vip[svc[nat_back]]
    port = svc_port[svc[nat_back]]
    vport[nat_back] = np.where(port == 0, sport[nat_back], port)
    del nat_fwd, nat_back, port

    _map_fullnat(table, leg, mode, svc, cip, cport, vip, vport, svc_vip, svc_port)
    # a FullNAT-looking hop that maps to no client (the director's own traffic to a real
    # server, e.g. health checks from its address) is not part of any connection
    lone = (mode == MODE_CODES["fullnat"]) & member(leg, (D_R, R_D)) & (cip == 0)
    leg[lone] = OTHER
    del lone

    proto = table["ip_proto"]
    keyed = (cip != 0) & (leg != OTHER)
    release_freed_memory()
    conn = np.full(n, -1, dtype=np.int32)
    if keyed.any():
        conn = _connection_ids(table, leg, mode, keyed, cip, cport, vip, vport, proto,
                               udp_timeout_ns=int(topo.timeouts.udp) * 1_000_000_000)
    del keyed
    release_freed_memory()
    _via_director(table, conn, leg)
    obs, obs_first = _observations(table, conn, leg)
    release_freed_memory()
    connections, first_row = _connection_table(table, conn, obs_first, leg, mode, svc, rs, cip, cport, vip,
                                               vport, proto, ep, counters)
    return Flows(table, topo, ep, leg, mode, svc, rs, role, cip, cport, vip, vport, conn, obs, connections,
                 first_row=first_row, obs_first=obs_first)


def _via_director(table, conn, leg) -> None:
    """A real server's reply seen beyond a router (no MAC tells where it came from) that the
    director also forwarded is on the director-client leg, not a bypass: the same packet
    (connection, sequence and acknowledgment numbers, flags, IP ID, payload) is on that leg."""
    rc = np.flatnonzero((leg == R_C) & (conn >= 0))
    dc = np.flatnonzero((leg == D_C) & (conn >= 0))
    if len(rc) == 0 or len(dc) == 0:
        return

    def key(rows):
        df = pd.DataFrame({"c": conn[rows], "s": table["tcp_seq"][rows], "a": table["tcp_ack"][rows],
                           "f": table["tcp_flags"][rows], "i": table["ip_id"][rows],
                           "d": table["payload_digest"][rows]})
        return pd.MultiIndex.from_frame(df)

    seen = key(rc).isin(key(dc))
    leg[rc[seen]] = D_C


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


def _connection_ids(table, leg, mode, keyed, cip, cport, vip, vport, proto,
                    udp_timeout_ns: int = 300 * 1_000_000_000) -> np.ndarray:
    """One id per client tuple and generation (a reused tuple starts a new connection), int32 per
    row (-1 off any connection), numbered in order of the connections' first packets."""
    n = len(leg)
    rows = np.flatnonzero(keyed)
    # the client tuple, numbered in order of first appearance
    tup, _ = group_ids([cip, cport, vip, vport, proto], rows)
    ts = table["ts_ns"][rows]
    lg = leg[rows]
    # generation starts: client SYNs with a new ISN (FullNAT's inner SYN has a remapped one)
    start = (((table["tcp_flags"][rows] & (SYN | ACK)) == SYN) & (proto[rows] == 6) & member(lg, CLIENT_TO_SERVER)
             & ~((lg == D_R) & (mode[rows] == MODE_CODES["fullnat"])))
    del lg
    gens = pd.DataFrame({"tup": tup[start], "seq": table["tcp_seq"][rows][start].astype(np.int64),
                         "ts": ts[start]})
    del start
    # UDP has no handshake: a client packet after more than the UDP timeout of silence starts a
    # new connection (the director's entry expired; the next packet is scheduled again)
    u = np.flatnonzero((proto[rows] == 17) & member(leg[rows], CLIENT_TO_SERVER))
    if len(u):
        order = u[np.lexsort((ts[u], tup[u]))]
        gap = np.diff(ts[order]) > udp_timeout_ns
        new_tup = np.diff(tup[order]) != 0
        fresh = np.concatenate([order[:1], order[1:][gap | new_tup]])   # each flow's first packet
        gens = pd.concat([gens, pd.DataFrame({"tup": tup[fresh], "seq": -1 - np.arange(len(fresh)),
                                              "ts": ts[fresh]})], ignore_index=True)
    gens = gens.groupby(["tup", "seq"], sort=False)["ts"].min().reset_index().sort_values(["tup", "ts"])
    gens["gen"] = gens.groupby("tup").cumcount()
    # the first generation of a tuple also takes what came before its SYN (skew, mid-stream start)
    gens.loc[gens["gen"] == 0, "ts"] = np.iinfo(np.int64).min
    # a row takes the last generation of its tuple that started before it (minus the skew); only
    # tuples with two generations or more need the search: elsewhere every row is generation 0
    ids = tup
    per_tup = np.bincount(gens["tup"].to_numpy(), minlength=int(tup.max()) + 1) if len(gens) else None
    reused = np.flatnonzero(per_tup[tup] >= 2) if per_tup is not None else np.zeros(0, np.int64)
    if len(reused):
        left = pd.DataFrame({"i": reused, "tup": tup[reused], "ts": ts[reused] + SKEW_NS}).sort_values("ts")
        merged = pd.merge_asof(left, gens[["tup", "ts", "gen"]].sort_values("ts"), on="ts", by="tup",
                               direction="backward")
        gen = np.zeros(len(rows), dtype=np.int64)
        gen[merged["i"].to_numpy()] = merged["gen"].fillna(0).to_numpy().astype(np.int64)
        ids, _ = group_ids([tup * (int(gen.max()) + 1) + gen])
    # number connections in order of their first packet (ties as pandas' sort_values leaves them)
    nids = int(ids.max()) + 1
    first = np.full(nids, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, ids, ts)
    renum = np.empty(nids, dtype=np.int32)
    renum[first.argsort(kind="quicksort")] = np.arange(nids, dtype=np.int32)
    conn = np.full(n, -1, dtype=np.int32)
    conn[rows] = renum[ids]
    return conn


def _observations(table, conn, leg) -> tuple[np.ndarray, np.ndarray]:
    """The same packet seen at several vantage points is one observation: (obs per row, -1 off any
    connection; the first row of each observation)."""
    rows = np.flatnonzero(conn >= 0)
    obs = np.full(len(conn), -1, dtype=np.int32)
    if len(rows) == 0:
        return obs, np.zeros(0, dtype=np.int64)
    ids, first = group_ids([conn, leg, table["tcp_seq"], table["tcp_ack"], table["tcp_flags"],
                            table["payload_digest"], table["payload_len"], table["ip_id"]], rows)
    obs[rows] = ids
    return obs, rows[first]


def _connection_table(table, conn, obs_first, leg, mode, svc, rs, cip, cport, vip, vport, proto,
                      ep, counters: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per connection, and the table row of each connection's first packet.

    Counted over whole columns: rows off any connection go to bin 0 (``conn + 1``), dropped."""
    nconn = int(conn.max()) + 1 if len(conn) else 0
    cols = {}
    if nconn == 0:
        return pd.DataFrame(columns=["cip", "cport", "vip", "vport", "proto", "svc", "rs", "mode", "first_ns",
                                     "last_ns", "state", "history"]), np.zeros(0, dtype=np.int64)
    bins = conn + np.int32(1)
    ts = table["ts_ns"]
    first_ns = np.full(nconn + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_ns, bins, ts)
    last_ns = np.full(nconn + 1, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last_ns, bins, ts)
    # the first row: the earliest, then the first in table order
    at_first = np.flatnonzero((ts == first_ns[bins]) & (conn >= 0))
    first_row = np.full(nconn + 1, len(conn), dtype=np.int64)
    np.minimum.at(first_row, bins[at_first], at_first)
    first_row = first_row[1:]
    del at_first
    cols["cip"] = cip[first_row]
    cols["cport"] = cport[first_row]
    cols["vip"] = vip[first_row]
    cols["vport"] = vport[first_row]
    cols["proto"] = table["ip_proto"][first_row]
    cols["first_ns"] = first_ns[1:]
    cols["last_ns"] = last_ns[1:]
    # the service, the real server and the mode: the most specific value seen on any row (the
    # value meaning "none", -1 or 0, is below every other)
    for name, arr, none in (("svc", svc, -1), ("rs", rs, -1), ("mode", mode, 0)):
        best = np.full(nconn + 1, none, dtype=arr.dtype)      # the column's own dtype: ufunc.at's fast path
        np.maximum.at(best, bins, arr)
        cols[name] = best[1:].astype(np.int64)
    # a real server's mode where the rows did not say
    rs_mode = np.concatenate([ep.rs_mode.astype(np.int64), [0]])
    cols["mode"] = np.where(cols["mode"] == 0, rs_mode[cols["rs"]], cols["mode"])
    if not counters:
        cols["seq_delta"] = _seq_deltas(table, conn, leg, mode, nconn)
        return pd.DataFrame(cols), first_row
    # packets, bytes and TCP flags: one row per observation (its first, in table order)
    rows = obs_first                      # ascending
    rows_all = rows
    b = bins[rows]
    lg = leg[rows]
    plen = table["payload_len"][rows]
    per_leg = b.astype(np.int64) * 8 + lg      # (connection, leg) in one bin: leg codes are below 8
    packets = np.bincount(per_leg, minlength=(nconn + 1) * 8).reshape(nconn + 1, 8)
    volume = np.bincount(per_leg, weights=plen, minlength=(nconn + 1) * 8).reshape(nconn + 1, 8)
    del per_leg
    for code in range(1, len(LEGS)):
        name = LEGS[code].replace("-", "_")
        cols[f"pk_{name}"] = packets[1:, code].copy()
        cols[f"by_{name}"] = volume[1:, code].astype(np.int64)
    tcp = table["ip_proto"][rows] == 6
    b, lg, plen = b[tcp], lg[tcp], plen[tcp]
    flags = table["tcp_flags"][rows[tcp]]
    c2s = member(lg, CLIENT_TO_SERVER)
    s2c = member(lg, (R_D, D_C, R_C))
    for name, side, cond in (("c_syn", c2s, (flags & (SYN | ACK)) == SYN),
                             ("s_synack", s2c, (flags & (SYN | ACK)) == (SYN | ACK)),
                             ("c_ack", c2s, (flags & (SYN | ACK | RST)) == ACK),
                             ("c_fin", c2s, (flags & FIN) != 0), ("s_fin", s2c, (flags & FIN) != 0),
                             ("c_rst", c2s, (flags & RST) != 0), ("s_rst", s2c, (flags & RST) != 0),
                             ("c_data", c2s, plen > 0), ("s_data", s2c, plen > 0)):
        cols[name] = np.bincount(b[cond & side], minlength=nconn + 1)[1:]
    # data counts every transport (a UDP answer is the server's data)
    lg_all, b_all, plen_all = leg[rows_all], bins[rows_all], table["payload_len"][rows_all]
    for name, legs_ in (("c_data", CLIENT_TO_SERVER), ("s_data", (R_D, D_C, R_C))):
        cols[name] = np.bincount(b_all[member(lg_all, legs_) & (plen_all > 0)], minlength=nconn + 1)[1:]
    # SYNs the client sent: the same SYN on two legs (or at two capture points) keeps its IP ID,
    # a retransmission gets a new one
    syn = c2s & ((flags & (SYN | ACK)) == SYN)
    sent = np.unique(b[syn].astype(np.int64) * (1 << 32) + table["ip_id"][rows[tcp][syn]].astype(np.int64))
    cols["c_syn"] = np.bincount(sent >> 32, minlength=nconn + 1)[1:]
    cols["seq_delta"] = _seq_deltas(table, conn, leg, mode, nconn)
    df = pd.DataFrame(cols)
    df["state"], df["history"] = _states(df)
    return df, first_row


def _seq_deltas(table, conn, leg, mode, nconn: int) -> np.ndarray:
    """FullNAT's per-connection sequence delta D1 (SEMANTICS §1.4): the sequence number of the
    director's SYN toward the real server minus the client's ISN, modulo 2^32; -1 where it
    cannot be learned (not FullNAT, or one of the two SYNs not captured)."""
    out = np.full(nconn, -1, dtype=np.int64)
    syn = ((table["tcp_flags"] & (SYN | ACK)) == SYN) & (conn >= 0)
    inner = np.flatnonzero(syn & (leg == D_R) & (mode == MODE_CODES["fullnat"]))
    if len(inner) == 0:
        return out
    outer = np.flatnonzero(syn & (leg == C_D))
    seq = table["tcp_seq"].astype(np.int64)
    ts = table["ts_ns"]
    # the first SYN on each side of each connection (a retransmission keeps the same ISN)
    def first_seq(rows):
        order = rows[np.lexsort((ts[rows], conn[rows]))]
        c = conn[order]
        keep = np.r_[True, c[1:] != c[:-1]]
        return c[keep], seq[order[keep]]
    ci, si = first_seq(inner)
    co, so = first_seq(outer)
    client_isn = np.full(nconn, -1, dtype=np.int64)
    client_isn[co] = so
    known = client_isn[ci] >= 0
    out[ci[known]] = (si[known] - client_isn[ci[known]]) % (1 << 32)
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
