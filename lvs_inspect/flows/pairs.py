"""One packet on two legs: what entered the director and what it sent on.

``pairs(flows, "client-director", "director-rs")`` returns, for every observation on the first
leg, the observation on the second leg that is the same packet after the director's rewrite
(or none). The fields the director must not change identify the packet:

- NAT, DR, TUN: sequence and acknowledgment numbers, flags, payload (digest and length) and
  the IP ID are kept;
- FullNAT: the sequence number toward the real server and the acknowledgment number toward
  the client are shifted by a per-connection delta, so the request side is matched without
  the sequence number and the reply side without the acknowledgment number.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .legs import LEG_CODES, MODE_CODES, ROLE_CODES

#: columns carried for both sides of a pair (prefixed "in_" and "out_")
PAIR_COLUMNS = ("ts_ns", "eth_src", "eth_dst", "ip_src", "ip_dst", "ip_ttl", "ip_id", "ip_frag", "ip_tos",
                "ip_len", "ip_proto", "sport", "dport", "tcp_flags", "tcp_seq", "tcp_ack", "tcp_win", "tcp_mss",
                "tcp_opts", "toa_kind", "toa_len", "toa_port", "toa_addr", "payload_len", "payload_digest",
                "tun", "out_src", "out_dst", "out_ttl", "out_frag", "out_tos", "out_dport", "l4_csum", "ip_csum")


def representatives(flows) -> np.ndarray:
    """Row index of one row per observation: the director's own capture where there is one."""
    obs = flows.obs
    rows = np.flatnonzero(obs >= 0)
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int64)
    pref = (flows.role[rows] != ROLE_CODES["director"]).astype(np.int64)
    order = np.lexsort((rows, pref, obs[rows]))
    o = obs[rows][order]
    first = np.r_[True, o[1:] != o[:-1]]
    return rows[order][first]


def pairs(flows, leg_in: str, leg_out: str) -> pd.DataFrame:
    t = flows.table
    rep = representatives(flows)
    a = rep[flows.leg[rep] == LEG_CODES[leg_in]]
    b = rep[flows.leg[rep] == LEG_CODES[leg_out]]
    if len(a) == 0:
        return pd.DataFrame()
    request = leg_in == "client-director"

    def side(rows, prefix):
        d = {f"{prefix}row": rows, "conn": flows.conn[rows]}
        for col in PAIR_COLUMNS:
            d[f"{prefix}{col}"] = t[col][rows]
        return pd.DataFrame(d)

    left = side(a, "in_")
    right = side(b, "out_")
    fullnat = (flows.connections["mode"].to_numpy() == MODE_CODES["fullnat"])
    conn_fn = fullnat[left["conn"].to_numpy()] if len(fullnat) else np.zeros(len(left), bool)
    common = ["conn", "tcp_flags", "payload_digest", "payload_len", "ip_id"]
    keys_exact = common + ["tcp_seq", "tcp_ack"]
    keys_fn = common + (["tcp_ack"] if request else ["tcp_seq"])
    out = []
    for keys, sel in ((keys_exact, ~conn_fn), (keys_fn, conn_fn)):
        if not sel.any():
            continue
        lk = left[sel].rename(columns={f"in_{k}": k for k in keys if k != "conn"})
        rk = right.rename(columns={f"out_{k}": k for k in keys if k != "conn"})
        m = lk.merge(rk, on=keys, how="left")
        for k in keys:
            if k != "conn":
                m[f"in_{k}"] = m[k]
                m[f"out_{k}"] = m[k]
        m = m.drop(columns=[k for k in keys if k != "conn"])
        # a retransmitted packet pairs with each copy: keep the closest in time
        m["_gap"] = (m["out_ts_ns"] - m["in_ts_ns"]).abs()
        m = m.sort_values(["in_row", "_gap"], na_position="last").drop_duplicates("in_row")
        out.append(m.drop(columns="_gap"))
    res = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    res["matched"] = res["out_row"].notna()
    for col in ("conn",):
        res[col] = res[col].astype(np.int64)
    res["rs"] = flows.connections["rs"].to_numpy()[res["conn"].to_numpy()]
    res["svc"] = flows.connections["svc"].to_numpy()[res["conn"].to_numpy()]
    res["mode"] = flows.connections["mode"].to_numpy()[res["conn"].to_numpy()]
    return res.sort_values("in_row", ignore_index=True)
