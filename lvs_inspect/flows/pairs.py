"""One packet on two legs: what entered the director and what it sent on.

``pairs(flows, "client-director", "director-rs")`` returns, for every observation on the first
leg, the observation on the second leg that is the same packet after the director's rewrite
(or none). The fields the director must not change identify the packet:

- NAT, DR, TUN: sequence and acknowledgment numbers, flags, payload (digest and length) and
  the IP ID are kept;
- FullNAT: the sequence number toward the real server and the acknowledgment number toward
  the client are shifted by a per-connection delta, so the request side is matched without
  the sequence number and the reply side without the acknowledgment number.

``pair_rows`` does the matching over row indices only (:class:`Pairing`); ``Pairing.column``
reads one column of the result from the table when it is needed, and ``pairs`` assembles
them all into a DataFrame.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .keys import first_positions, group_ids
from .legs import LEG_CODES, MODE_CODES, ROLE_CODES

#: columns carried for both sides of a pair (prefixed "in_" and "out_")
PAIR_COLUMNS = ("ts_ns", "eth_src", "eth_dst", "ip_src", "ip_dst", "ip_ttl", "ip_id", "ip_frag", "ip_tos",
                "ip_len", "ip_proto", "sport", "dport", "tcp_flags", "tcp_seq", "tcp_ack", "tcp_win", "tcp_mss",
                "tcp_hlen", "tcp_opts", "toa_kind", "toa_len", "toa_port", "toa_addr", "payload_len", "payload_digest",
                "tun", "out_src", "out_dst", "out_ttl", "out_frag", "out_tos", "out_dport", "l4_csum", "ip_csum")
#: the fields the director keeps, besides the connection
COMMON_KEYS = ("tcp_flags", "payload_digest", "payload_len", "ip_id")


def representatives(flows) -> np.ndarray:
    """Row index of one row per observation (in observation order): the director's own capture
    where there is one, else the observation's first row; the first in table order among equals."""
    rep = flows.cache.get("representatives") if hasattr(flows, "cache") else None
    if rep is not None:
        return rep
    obs = flows.obs
    n = len(obs)
    nobs = int(obs.max()) + 1 if n else 0
    if nobs <= 0:
        return np.zeros(0, dtype=np.int64)
    first = getattr(flows, "obs_first", None)
    if first is None:
        rows = np.flatnonzero(obs >= 0)
        first = np.full(nobs, n, dtype=np.int64)
        np.minimum.at(first, obs[rows], rows)
    own = np.flatnonzero((obs >= 0) & (flows.role == ROLE_CODES["director"]))
    best = np.full(nobs, n, dtype=np.int64)
    np.minimum.at(best, obs[own], own)
    rep = np.where(best < n, best, first)
    if hasattr(flows, "cache"):
        flows.cache["representatives"] = rep
    return rep


@dataclass
class Pairing:
    """Observations on the first leg (``in_row``, ascending) and the copy on the second leg
    (``out_row``, -1 when none), matched on the connection and ``keys[fullnat]``."""

    in_row: np.ndarray       # int64
    out_row: np.ndarray      # int64, -1: not seen after the director
    conn: np.ndarray         # int64
    fullnat: np.ndarray      # bool: matched on the FullNAT keys
    keys: dict               # {False: exact keys, True: FullNAT keys} (without the connection)
    first_part: bool         # the part whose columns come first in pairs() (exact, unless it is empty)

    @property
    def matched(self) -> np.ndarray:
        return self.out_row >= 0

    def __len__(self) -> int:
        return len(self.in_row)

    def column(self, table, name: str) -> np.ndarray:
        """Column ``name`` of :func:`pairs` (``in_row``, ``out_row``, ``in_<col>``, ``out_<col>``),
        with its values and dtype: where the packet was not seen after the director, an
        ``out_`` field the match was made on holds the incoming value, the others are NaN and
        make the column float."""
        if name == "in_row":
            return self.in_row
        side, col = name.split("_", 1)
        if col == "row":
            missing = ~self.matched
            return _with_nan(self.out_row, missing) if missing.any() else self.out_row
        if side == "in":
            return table.take(col, self.in_row)
        matched = self.matched
        keyed = np.zeros(len(self.in_row), dtype=bool)
        for part, keys in self.keys.items():
            if col in keys:
                keyed |= self.fullnat == part
        nan = ~matched & ~keyed
        src = np.where(matched, self.out_row, self.in_row)
        got = table.take(col, src)
        return _with_nan(got, nan) if nan.any() else got

    def frame(self, table) -> pd.DataFrame:
        """The pairs as pandas has always laid them out (see :func:`pairs`)."""
        first = self.keys[self.first_part]
        names = (["in_row", "conn"] + [f"in_{c}" for c in PAIR_COLUMNS if c not in first] + ["out_row"]
                 + [f"out_{c}" for c in PAIR_COLUMNS if c not in first]
                 + [f"{side}_{k}" for k in first for side in ("in", "out")])
        data = {}
        for name in names:
            data[name] = self.conn if name == "conn" else self.column(table, name)
        return pd.DataFrame(data)


def _with_nan(values: np.ndarray, nan: np.ndarray) -> np.ndarray:
    out = values.astype(np.float64)
    out[nan] = np.nan
    return out


def pair_rows(flows, leg_in: str, leg_out: str) -> Pairing | None:
    """Match every observation on ``leg_in`` with its copy on ``leg_out``; None when there is no
    observation on ``leg_in``.

    Among several copies (a retransmission), the closest in time wins, the first in observation
    order on a tie. The time gap is computed as pandas computed it: in floating point when some
    packet of the same kind (exact or FullNAT keys) found no copy at all.
    """
    t = flows.table
    rep = representatives(flows)
    rep_leg = flows.leg[rep]
    a = rep[rep_leg == LEG_CODES[leg_in]]
    b = rep[rep_leg == LEG_CODES[leg_out]]
    if len(a) == 0:
        return None
    request = leg_in == "client-director"
    keys = {False: COMMON_KEYS + ("tcp_seq", "tcp_ack"),
            True: COMMON_KEYS + (("tcp_ack",) if request else ("tcp_seq",))}
    fullnat_conn = flows.connections["mode"].to_numpy() == MODE_CODES["fullnat"]
    conn_a = flows.conn[a]
    part_of = fullnat_conn[conn_a] if len(fullnat_conn) else np.zeros(len(a), bool)
    in_rows, out_rows, parts = [], [], []
    ts = t["ts_ns"]
    for part in (False, True):
        sel = np.flatnonzero(part_of == part)
        if len(sel) == 0:
            continue
        left = a[sel]
        out = _match(t, flows.conn, keys[part], left, b, ts)
        in_rows.append(left)
        out_rows.append(out)
        parts.append(np.full(len(left), part))
    in_row = np.concatenate(in_rows)
    out_row = np.concatenate(out_rows)
    part = np.concatenate(parts)
    order = np.argsort(in_row, kind="stable")
    in_row, out_row, part = in_row[order], out_row[order], part[order]
    return Pairing(in_row=in_row, out_row=out_row, conn=flows.conn[in_row].astype(np.int64), fullnat=part,
                   keys=keys, first_part=bool(part_of.all()))


def _match(t, conn, keys, left: np.ndarray, right: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """For each left row, the right row with the same connection and keys closest in time, or -1."""
    nl, nr = len(left), len(right)
    both = np.concatenate([right, left])
    codes, _ = group_ids([conn[both]] + [t.take(k, both) for k in keys])
    del both
    cr, cl = codes[:nr], codes[nr:]
    ngr = int(cr.max()) + 1 if nr else 0          # codes 0..ngr-1 are the ones the right side has
    count = np.bincount(cr, minlength=ngr) if nr else np.zeros(0, np.int64)
    first = np.full(ngr + 1, -1, dtype=np.int64)
    first[:ngr] = first_positions(cr)             # the right side's codes first appear in order
    has = cl < ngr
    code = np.where(has, cl, ngr)                 # ngr: no copy
    pos = first[code]
    n_cand = np.where(has, np.append(count, 0)[code], 0)
    out = np.where(pos >= 0, right[np.maximum(pos, 0)], -1) if nr else np.full(nl, -1, dtype=np.int64)
    several = np.flatnonzero(n_cand > 1)
    if len(several):
        floating = bool((n_cand == 0).any())
        # every copy of those packets, in right order within a code
        multi_codes = np.flatnonzero(count > 1)
        rpos = np.flatnonzero(np.isin(cr, multi_codes))
        rpos = rpos[np.argsort(cr[rpos], kind="stable")]
        starts = np.searchsorted(cr[rpos], cl[several])
        k = n_cand[several]
        li = np.repeat(several, k)
        offs = np.arange(len(li)) - np.repeat(np.cumsum(k) - k, k)
        cand = rpos[np.repeat(starts, k) + offs]      # right positions
        t_in, t_out = ts[left[li]], ts[right[cand]]
        gap = np.abs(t_out.astype(np.float64) - t_in.astype(np.float64)) if floating else np.abs(t_out - t_in)
        order = np.lexsort((cand, gap, li))
        li_s = li[order]
        firsts = np.r_[True, li_s[1:] != li_s[:-1]]
        out[li_s[firsts]] = right[cand[order][firsts]]
    return out.astype(np.int64)


def pairs(flows, leg_in: str, leg_out: str) -> pd.DataFrame:
    p = pair_rows(flows, leg_in, leg_out)
    if p is None:
        return pd.DataFrame()
    res = p.frame(flows.table)
    res["matched"] = p.matched
    res["conn"] = res["conn"].astype(np.int64)
    conns = flows.connections
    res["rs"] = conns["rs"].to_numpy()[p.conn]
    res["svc"] = conns["svc"].to_numpy()[p.conn]
    res["mode"] = conns["mode"].to_numpy()[p.conn]
    return res
