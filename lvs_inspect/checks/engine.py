"""The audit: decode, stitch, evaluate every rule over whole tables, group the findings.

    result = audit(["trace.pcapng"], topology_path="topo.toml")

Each rule scope has a namespace (the names its expressions may use, with their kinds) and an
environment (the values: numpy columns, evaluated lazily). ``lvs-inspect rules --names SCOPE``
prints a namespace; :func:`namespaces` builds them all.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..capture import read_table
from ..capture.schema import COLUMNS, Csum, Tun
from ..capture.table import ADDRESS_COLUMNS, MAC_COLUMNS, PacketTable, release_freed_memory
from ..errors import InputError
from ..flows import LEGS, MODES, stitch
from ..flows.keys import group_ids, member
from ..flows.legs import C_D, D_C, D_R, R_D, ROLES
from ..flows.pairs import PAIR_COLUMNS, pair_rows
from ..flows.stitch import Flows
from ..resources import rules_dir
from ..topology import Topology, load_topology
from .expr import Env, Kind, Namespace, Var
from .finding import AuditResult, Finding, FrameRef, InputInfo, Summary
from .rules import Rule, load_rules, select_rules

TCP_FLAGS = Kind.flags({"FIN": 0x01, "SYN": 0x02, "RST": 0x04, "PSH": 0x08, "ACK": 0x10, "URG": 0x20,
                        "ECE": 0x40, "CWR": 0x80, "NS": 0x100})
CSUM = Kind.enum({c.name.lower(): int(c) for c in Csum})
TUN = Kind.enum({t.name.lower(): int(t) for t in Tun})
LEG = Kind.enum({name: i for i, name in enumerate(LEGS)})
MODE = Kind.enum({(name or "unknown"): i for i, name in enumerate(MODES)})
ROLE = Kind.enum({name: i for i, name in enumerate(ROLES)})
STATES = ("answered", "unanswered", "refused", "no-answer", "reset-by-server", "reset-by-client", "complete",
          "open", "partial")
STATE = Kind.enum({s: i for i, s in enumerate(STATES)})
ARP_OP = Kind.enum({"request": 1, "reply": 2})
MAX_FRAMES = 20          # frames listed per finding


def _column_kind(name: str) -> Kind | str | Var:
    if name in ADDRESS_COLUMNS or name in ("arp_spa", "arp_tpa"):
        return Var("addr", absent=0) if name in ("toa_addr", "out_src", "out_dst", "icmp_in_src",
                                                  "icmp_in_dst") else "addr"
    if name in MAC_COLUMNS:
        return "mac"
    if name == "tcp_flags":
        return TCP_FLAGS
    if name in ("l4_csum", "ip_csum"):
        return CSUM
    if name == "tun":
        return TUN
    return "int"


# ---------------------------------------------------------------------------------- namespaces

def _common_names() -> dict:
    return {
        "director.macs": "set_mac", "director.ips": "set_addr", "director.lips": "set_addr",
        "director.vrrp_mac": Var("mac", absent=0),
        "service.vips": "set_addr", "real_servers.ips": "set_addr", "real_servers.macs": "set_mac",
        "toa.kinds": "set_int",
        "profile.name": "str", "profile.seq_delta": "bool", "profile.mss_adjust": "bool",
        "profile.timestamp_removal": "bool", "profile.toa_in_syn": "bool",
    }


def _row_names() -> dict:
    """Names every per-connection row has: its service, real server, mode and expectations."""
    return {
        "mode": MODE,
        "rs.ip": Var("addr", absent=0), "real_server": Var("addr", absent=0), "rs.port": "int",
        "rs.mac": Var("mac", absent=0), "rs.weight": "int", "rs.mode": MODE,
        "service.vip": Var("addr", absent=0), "service.port": "int",
        "profile.ttl_decrement": "int", "profile.ttl_reply_decrement": "int",
        "toa.kind": Var("int", absent=0), "toa.length": Var("int", absent=0),
        "tun.type": "str", "tun.port": "int", "service.persistence": "int", "service.scheduler": "str",
    }


def namespaces(addr_key: Callable | None = None) -> dict[str, Namespace]:
    common = _common_names()
    packet = {c.name: _column_kind(c.name) for c in COLUMNS}
    packet.update(common)
    packet.update(_row_names())
    packet.update({"leg": LEG, "role": ROLE, "conn": Var("int", absent=-1), "cip": Var("addr", absent=0),
                   "cport": "int", "vip": Var("addr", absent=0), "vport": "int", "handshake_ack": "bool",
                   "before_server_data": "bool"})
    pair = dict(common)
    pair.update(_row_names())
    for col in PAIR_COLUMNS:
        for side in ("in", "out"):
            pair[f"{side}.{col}"] = _column_kind(col)
    pair.update({"in.role": ROLE, "out.role": ROLE})
    pair.update({"matched": "bool", "handshake_ack": "bool", "before_server_data": "bool", "cip": "addr", "cport": "int", "vip": "addr",
                 "vport": "int"})
    conn = dict(common)
    conn.update(_row_names())
    conn.update({"cip": "addr", "cport": "int", "vip": "addr", "vport": "int", "proto": "int",
                 "state": STATE, "history": "str", "first_ns": "int", "last_ns": "int", "duration_ms": "float",
                 "seq_delta": Var("int", absent=-1),
                 "persistence.switched": "bool", "persistence.previous_server": Var("addr", absent=0),
                 "persistence.gap_s": "float",
                 "hash.moved": "bool", "hash.previous_server": Var("addr", absent=0), "hash.gap_s": "float",
                 "syn_retries": "int"})
    for leg in LEGS[1:]:
        conn[f"packets.{leg.replace('-', '_')}"] = "int"
        conn[f"bytes.{leg.replace('-', '_')}"] = "int"
    for name in ("c_syn", "s_synack", "c_ack", "c_fin", "s_fin", "c_rst", "s_rst", "c_data", "s_data"):
        conn[name] = "int"
    arp = dict(common)
    arp.update({"op": ARP_OP, "sender_mac": "mac", "sender_ip": "addr", "target_mac": "mac", "target_ip": "addr",
                "eth_src": "mac", "eth_dst": "mac", "gratuitous": "bool", "role": ROLE,
                "real_server": Var("addr", absent=0), "sender_is_rs": "bool"})
    service = dict(common)
    service.update({"service.vip": "addr", "service.port": "int", "service.scheduler": "str",
                    "service.persistence": "int", "rs.ip": "addr", "real_server": "addr", "rs.port": "int",
                    "rs.weight": "int", "rs.mode": MODE, "connections": "int", "total": "int",
                    "share": "float", "expected_share": "float", "bytes.director": "int", "servers": "int",
                    "bytes.requests": "int", "bytes.replies": "int", "reply_ratio": "float"})
    return {scope: Namespace(names, addr_key=addr_key, title=scope)
            for scope, names in (("packet", packet), ("pair", pair), ("connection", conn), ("arp", arp),
                                 ("service", service))}


# ---------------------------------------------------------------------------------- environments

class _Lazy(Mapping):
    """A mapping that computes a value on first access."""

    def __init__(self, makers: dict[str, Callable[[], object]]):
        self._makers = makers
        self._cache: dict[str, object] = {}

    def __getitem__(self, key):
        if key not in self._cache:
            self._cache[key] = self._makers[key]()
        return self._cache[key]

    def __iter__(self):
        return iter(self._makers)

    def __len__(self):
        return len(self._makers)


@dataclass
class _Ctx:
    table: PacketTable
    topo: Topology
    flows: Flows
    toa_kinds: tuple[int, ...]

    def constants(self) -> dict:
        topo, ep = self.topo, self.flows.endpoints
        p = topo.profile
        return {
            "director.macs": lambda: [int(m) for m in ep.director_macs],
            "director.ips": lambda: [str(a) for a in topo.director.ips],
            "director.lips": lambda: [int(k) for k in ep.lips],
            "director.vrrp_mac": lambda: int(topo.director.vrrp_mac) if topo.director.vrrp_mac else 0,
            "service.vips": lambda: [int(k) for k in ep.svc_vip if k],
            "real_servers.ips": lambda: [int(k) for k in ep.rs_ip if k],
            "real_servers.macs": lambda: [int(m) for m in ep.rs_mac if m],
            "toa.kinds": lambda: list(self.toa_kinds),
            "profile.name": lambda: p.name,
            "profile.seq_delta": lambda: p.seq_delta,
            "profile.mss_adjust": lambda: p.mss_adjust,
            "profile.timestamp_removal": lambda: p.timestamp_removal,
            "profile.toa_in_syn": lambda: p.toa_in_syn,
        }

    def per_row(self, rs: np.ndarray, svc: np.ndarray, mode: np.ndarray) -> dict:
        """Names that follow from each row's real server, service and mode."""
        ep, p = self.flows.endpoints, self.topo.profile
        # rs and svc only index small lookup arrays: any integer dtype gives the same values, so
        # a packet scope's int16 columns are used as they are (no 8-byte copy of each)
        rs, svc = (a if a.dtype.kind in "iu" else a.astype(np.int64) for a in (np.asarray(rs), np.asarray(svc)))
        mode = np.asarray(mode, dtype=np.int64)
        rs_objs = [r for _, r in ep.real_servers]
        ext = _extended      # index -1 reads the fill value
        dec_req = np.array([p.ttl_request[m] if m else 0 for m in MODES], dtype=np.int64)
        dec_rep = np.array([p.ttl_reply[m] if m else 0 for m in MODES], dtype=np.int64)
        toa_kind = ext([s.toa.kind if s.toa else 0 for s in ep.services], 0)
        toa_len = ext([s.toa.length if s.toa else 0 for s in ep.services], 0)
        return {
            "mode": lambda: mode,
            "rs.ip": lambda: ext(ep.rs_ip, 0).astype(np.uint64)[rs],
            "real_server": lambda: ext(ep.rs_ip, 0).astype(np.uint64)[rs],
            "rs.port": lambda: ext(ep.rs_port, 0)[rs],
            "rs.mac": lambda: ext(ep.rs_mac, 0).astype(np.uint64)[rs],
            "rs.weight": lambda: ext([r.weight for r in rs_objs], 0)[rs],
            "rs.mode": lambda: ext(ep.rs_mode, 0).astype(np.int64)[rs],
            "service.vip": lambda: ext(ep.svc_vip, 0).astype(np.uint64)[svc],
            "service.port": lambda: ext(ep.svc_port, 0)[svc],
            "profile.ttl_decrement": lambda: dec_req[mode],
            "profile.ttl_reply_decrement": lambda: dec_rep[mode],
            "toa.kind": lambda: toa_kind[svc],
            "toa.length": lambda: toa_len[svc],
            "tun.type": lambda: np.array([(r.tun.value if r.tun else "ipip") for r in rs_objs] + [""],
                                         dtype=object)[rs],
            "tun.port": lambda: ext([r.tun_port or 0 for r in rs_objs], 0)[rs],
            "service.persistence": lambda: ext([sv.persistence for sv in ep.services], 0)[svc],
            "service.scheduler": lambda: np.array([sv.scheduler for sv in ep.services] + [""], dtype=object)[svc],
        }

    def env(self, makers: dict, n: int, present=None) -> Env:
        values = dict(self.constants())
        values.update(makers)
        return Env(_Lazy(values), n, present=present or {}, addr_key=self.table.addr_key,
                   addr_str=self.table.addr_str)


def _extended(arr, fill) -> np.ndarray:
    """``arr`` with ``fill`` appended, in an integer type that holds both exactly (never float:
    address keys are 64-bit)."""
    a = np.asarray(arr)
    if a.dtype.kind in "iu" or len(a) == 0:
        dtype = np.uint64 if (a.dtype == np.uint64 and fill >= 0) else np.int64
        if len(a) == 0:
            dtype = np.uint64 if fill >= 0 else np.int64
        return np.concatenate([a.astype(dtype), np.array([fill], dtype=dtype)])
    return np.concatenate([a, np.array([fill], dtype=a.dtype if a.dtype.kind != "O" else object)])


def _handshake_ack(f: Flows) -> np.ndarray:
    """The client packet that completes the handshake, on each leg (the TOA carrier)."""
    cached = f.cache.get("handshake_ack")
    if cached is not None:
        return cached
    t = f.table
    flags = t["tcp_flags"]
    m = (f.conn >= 0) & ((flags & 0x17) == 0x10) & member(f.leg, (C_D, D_R)) & (t["ip_proto"] == 6)
    rows = np.flatnonzero(m)
    del m
    out = np.zeros(len(t), dtype=bool)
    if len(rows):
        # per connection and leg, the first such packet in time (then in table order) ...
        grp, _ = group_ids([f.conn[rows].astype(np.int64) * 8 + f.leg[rows]])
        ts = t["ts_ns"][rows]
        first_ts = np.full(int(grp.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_ts, grp, ts)
        at = np.flatnonzero(ts == first_ts[grp])
        first = np.full(len(first_ts), len(rows), dtype=np.int64)
        np.minimum.at(first, grp[at], at)
        # ... is the ack that answers the SYN-ACK: same ack value on every capture of it
        ack = t["tcp_ack"][rows]
        same = ack == ack[first][grp]
        no_data = t["payload_len"][rows] == 0
        out[rows[same & no_data]] = True
    f.cache["handshake_ack"] = out
    return out


def _before_server_data(f: Flows) -> np.ndarray:
    """Client packets sent before the server's first data byte (they carry TOA in FullNAT)."""
    t = f.table
    out = np.zeros(len(t), dtype=bool)
    rows = np.flatnonzero((f.conn >= 0) & member(f.leg, (C_D, D_R)))
    if len(rows) == 0:
        return out
    s_rows = np.flatnonzero((f.conn >= 0) & member(f.leg, (R_D, D_C, 5)) & (t["payload_len"] > 0))
    ts = t["ts_ns"]
    first_data = np.full(len(f.connections) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_data, f.conn[s_rows], ts[s_rows])
    seen = np.zeros(len(first_data), dtype=bool)
    seen[f.conn[s_rows]] = True
    c = f.conn[rows]
    missing = ~seen[c]
    if missing.any():
        # pandas compared against a float column (NaN where the server sent nothing)
        out[rows] = missing | (ts[rows].astype(np.float64) < np.where(missing, 0, first_data[c]).astype(np.float64))
    else:
        out[rows] = ts[rows] < first_data[c]
    return out


def _packet_env(ctx: _Ctx) -> tuple[Env, np.ndarray]:
    t, f = ctx.table, ctx.flows
    row_mode = _row_mode(f)
    makers = {c.name: (lambda name=c.name: t[name]) for c in COLUMNS}
    makers.update(ctx.per_row(f.rs, f.svc, row_mode))
    makers.update({"leg": lambda: f.leg, "role": lambda: f.role, "conn": lambda: f.conn, "cip": lambda: f.cip,
                   "cport": lambda: f.cport, "vip": lambda: f.vip, "vport": lambda: f.vport,
                   "handshake_ack": lambda: _handshake_ack(f), "before_server_data": lambda: _before_server_data(f)})
    return ctx.env(makers, len(t)), row_mode


def _row_mode(f: Flows) -> np.ndarray:
    """A row's mode: its own, else its connection's."""
    conn_mode = np.concatenate([f.connections["mode"].to_numpy().astype(np.int64), [0]]) \
        if len(f.connections) else np.zeros(1, np.int64)
    return np.where(f.mode > 0, f.mode, conn_mode[f.conn]).astype(np.int64)


def _pair_env(ctx: _Ctx, leg_in: str, leg_out: str):
    """The pair scope's environment and the Pairing (None when the first leg has no packet).
    Columns are read from the table for the pairs only when a rule asks for them."""
    f, t = ctx.flows, ctx.table
    p = pair_rows(f, leg_in, leg_out)
    if p is None:
        return None, None
    matched = p.matched
    makers = {}
    # the packet after the director where it was seen, else the incoming one: those rows are
    # absent (present={"out": matched}), and the values keep their exact integer type
    out_src = np.where(matched, p.out_row, p.in_row).astype(np.int64)
    for col in PAIR_COLUMNS:
        makers[f"in.{col}"] = (lambda c=col: t.take(c, p.in_row))
        makers[f"out.{col}"] = (lambda c=col: t.take(c, out_src))
    makers["in.role"] = lambda: f.role[p.in_row]
    makers["out.role"] = lambda: f.role[out_src]
    conns = f.connections
    cidx = p.conn
    makers.update(ctx.per_row(conns["rs"].to_numpy()[cidx], conns["svc"].to_numpy()[cidx],
                              conns["mode"].to_numpy()[cidx]))
    makers.update({"matched": lambda: matched,
                   "handshake_ack": lambda: _handshake_ack(f)[p.in_row],
                   "before_server_data": lambda: _before_server_data(f)[p.in_row],
                   "cip": lambda: conns["cip"].to_numpy()[cidx], "cport": lambda: conns["cport"].to_numpy()[cidx],
                   "vip": lambda: conns["vip"].to_numpy()[cidx], "vport": lambda: conns["vport"].to_numpy()[cidx]})
    return ctx.env(makers, len(p), present={"out": matched}), p


def _conn_env(ctx: _Ctx) -> Env:
    c = ctx.flows.connections
    makers = {name: (lambda n=name: c[n].to_numpy()) for name in
              ("cip", "cport", "vip", "vport", "proto", "history", "first_ns", "last_ns", "seq_delta", "c_syn",
               "s_synack",
               "c_ack", "c_fin", "s_fin", "c_rst", "s_rst", "c_data", "s_data")}
    makers["state"] = lambda: np.array([STATES.index(s) for s in c["state"]], dtype=np.int64)
    makers["duration_ms"] = lambda: (c["last_ns"] - c["first_ns"]).to_numpy() / 1e6
    makers["syn_retries"] = lambda: np.maximum(c["c_syn"].to_numpy() - 1, 0)
    persist = _Lazy({"all": lambda: _persistence(ctx)})
    makers["persistence.switched"] = lambda: persist["all"][0]
    makers["persistence.previous_server"] = lambda: persist["all"][1]
    makers["persistence.gap_s"] = lambda: persist["all"][2]
    hashed = _Lazy({"all": lambda: _hash_moves(ctx)})
    makers["hash.moved"] = lambda: hashed["all"][0]
    makers["hash.previous_server"] = lambda: hashed["all"][1]
    makers["hash.gap_s"] = lambda: hashed["all"][2]
    for leg in LEGS[1:]:
        k = leg.replace("-", "_")
        makers[f"packets.{k}"] = (lambda k=k: c[f"pk_{k}"].to_numpy())
        makers[f"bytes.{k}"] = (lambda k=k: c[f"by_{k}"].to_numpy())
    makers.update(ctx.per_row(c["rs"].to_numpy(), c["svc"].to_numpy(), c["mode"].to_numpy()))
    return ctx.env(makers, len(c))


def _persistence(ctx: _Ctx):
    """Per connection of a persistent service: did it go to another real server than the same
    client's previous connection, while the persistence template was still alive? The kernel
    keeps a template for ``persistence`` seconds after the client's last new connection, so
    each connection is compared with the one before it (the client masked by the service's
    persistence netmask). Returns (switched, previous server's address, gap in seconds)."""
    services = ctx.flows.endpoints.services
    window = [float(s.persistence) for s in services]
    prefix = [s.persistence_prefix if s.persistence_prefix is not None else 128 for s in services]
    return _client_moves(ctx, window, prefix)


HASH_SCHEDULERS = {"sh": "sh-port", "mh": "mh-port"}     # scheduler: the flag that hashes the port too


def _hash_moves(ctx: _Ctx):
    """Per connection of a source-hashing service (sh, mh without their port flag): did it go to
    another real server than the same client address's previous connection? The hash of the
    address picks the server as long as the server set does not change, at any distance in time."""
    services = ctx.flows.endpoints.services
    window = [float("inf") if s.scheduler in HASH_SCHEDULERS and HASH_SCHEDULERS[s.scheduler] not in s.sched_flags
              else 0.0 for s in services]
    return _client_moves(ctx, window, [128] * len(services))


def _client_moves(ctx: _Ctx, window_s: Sequence[float], prefix_bits: Sequence[int]):
    """The connections that went to another real server than the previous connection of the same
    client (address masked to ``prefix_bits`` of its service) within ``window_s`` seconds of it
    (services with window 0 are left out). Returns (moved, previous server's address, gap in s)."""
    c, ep = ctx.flows.connections, ctx.flows.endpoints
    n = len(c)
    switched = np.zeros(n, dtype=bool)
    prev_ip = np.zeros(n, dtype=np.uint64)
    gap = np.zeros(n, dtype=np.float64)
    if n == 0:
        return switched, prev_ip, gap
    svc = c["svc"].to_numpy().astype(np.int64)
    window = np.array([*window_s, 0.0], dtype=np.float64)[svc]
    prefix = np.array([*prefix_bits, 128], dtype=np.int64)[svc]
    cip = c["cip"].to_numpy().astype(np.uint64)
    v4 = (cip >> np.uint64(63)) == 0
    keep = np.clip(np.where(v4, 32 - np.minimum(prefix, 32), 0), 0, 32).astype(np.uint64)
    ckey = np.where(v4, (cip >> keep) << keep, cip)      # IPv6: the whole address (its own key)
    rows = np.flatnonzero((window > 0) & (c["c_syn"].to_numpy() > 0) & (c["rs"].to_numpy() >= 0))
    if len(rows) < 2:
        return switched, prev_ip, gap
    first = c["first_ns"].to_numpy()
    order = rows[np.lexsort((first[rows], ckey[rows], svc[rows]))]
    same = (svc[order][1:] == svc[order][:-1]) & (ckey[order][1:] == ckey[order][:-1])
    dt = (first[order][1:] - first[order][:-1]) / 1e9
    rs = c["rs"].to_numpy()
    alive = same & (dt <= window[order][1:])
    moved = alive & (rs[order][1:] != rs[order][:-1])
    cur, prv = order[1:][moved], order[:-1][moved]
    switched[cur] = True
    prev_ip[cur] = ep.rs_ip[rs[prv]]
    gap[order[1:][same]] = dt[same]
    return switched, prev_ip, gap


def _arp_env(ctx: _Ctx):
    t, ep = ctx.table, ctx.flows.endpoints
    g = t.group("arp")
    rows = g["rows"]
    rs_of_mac = {int(m): int(ip) for m, ip in zip(ep.rs_mac, ep.rs_ip) if m}
    sender_rs = np.array([rs_of_mac.get(int(m), 0) for m in g["arp_sha"]], dtype=np.uint64)
    roles = ctx.flows.role[rows] if len(rows) else np.zeros(0, np.uint8)
    makers = {"op": lambda: g["arp_op"], "sender_mac": lambda: g["arp_sha"],
              "sender_ip": lambda: g["arp_spa"].astype(np.uint64), "target_mac": lambda: g["arp_tha"],
              "target_ip": lambda: g["arp_tpa"].astype(np.uint64), "eth_src": lambda: t["eth_src"][rows],
              "eth_dst": lambda: t["eth_dst"][rows], "gratuitous": lambda: g["arp_spa"] == g["arp_tpa"],
              "role": lambda: roles, "real_server": lambda: sender_rs, "sender_is_rs": lambda: sender_rs != 0}
    return ctx.env(makers, len(rows)), rows


def director_bytes(c: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Payload bytes the director forwarded per connection, toward the real server and back toward
    the client: each direction counted once, from whichever of its two legs was captured (the larger
    where both were)."""
    if not len(c):
        return pd.Series(dtype=np.int64), pd.Series(dtype=np.int64)
    return (np.maximum(c["by_client_director"], c["by_director_rs"]),
            np.maximum(c["by_rs_director"], c["by_director_client"]))


def _service_table(ctx: _Ctx) -> pd.DataFrame:
    ep, c = ctx.flows.endpoints, ctx.flows.connections
    new = c[(c["c_syn"] > 0) & (c["rs"] >= 0)] if len(c) else c
    counts = new.groupby("rs").size() if len(new) else pd.Series(dtype=np.int64)
    req_c, rep_c = director_bytes(c)
    req = req_c.groupby(c["rs"]).sum() if len(c) else pd.Series(dtype=np.int64)
    rep = rep_c.groupby(c["rs"]).sum() if len(c) else pd.Series(dtype=np.int64)
    rows = []
    for i, (si, rs) in enumerate(ep.real_servers):
        rows.append({"svc": si, "rs": i, "connections": int(counts.get(i, 0)), "weight": rs.weight,
                     "bytes": int(req.get(i, 0) + rep.get(i, 0)), "requests": int(req.get(i, 0)),
                     "replies": int(rep.get(i, 0))})
    df = pd.DataFrame(rows, columns=["svc", "rs", "connections", "weight", "bytes", "requests", "replies"])
    if df.empty:
        return df
    df["total"] = df.groupby("svc")["connections"].transform("sum")
    df["servers"] = df.groupby("svc")["rs"].transform("size")
    df["share"] = np.where(df["total"] > 0, df["connections"] / df["total"].clip(lower=1), 0.0)
    wsum = df.groupby("svc")["weight"].transform("sum")
    sched = np.array([ep.services[s].scheduler for s in df["svc"]], dtype=object)
    live = (df["weight"] > 0).groupby(df["svc"]).transform("sum")
    equal = np.where(df["weight"] > 0, 1.0 / live.clip(lower=1), 0.0)
    weighted = np.where(wsum > 0, df["weight"] / wsum.clip(lower=1), 0.0)
    df["expected_share"] = np.where(np.isin(sched, ("rr",)), equal, weighted)
    df["scheduler"] = sched
    return df


def _service_env(ctx: _Ctx):
    ep = ctx.flows.endpoints
    df = _service_table(ctx)
    n = len(df)
    svc = df["svc"].to_numpy() if n else np.zeros(0, np.int64)
    rsi = df["rs"].to_numpy() if n else np.zeros(0, np.int64)
    makers = {
        "service.vip": lambda: ep.svc_vip[svc], "service.port": lambda: ep.svc_port[svc],
        "service.scheduler": lambda: df["scheduler"].to_numpy(),
        "service.persistence": lambda: np.array([ep.services[s].persistence for s in svc], dtype=np.int64),
        "rs.ip": lambda: ep.rs_ip[rsi], "real_server": lambda: ep.rs_ip[rsi], "rs.port": lambda: ep.rs_port[rsi],
        "rs.weight": lambda: df["weight"].to_numpy(), "rs.mode": lambda: ep.rs_mode[rsi].astype(np.int64),
        "connections": lambda: df["connections"].to_numpy(), "total": lambda: df["total"].to_numpy(),
        "share": lambda: df["share"].to_numpy(), "expected_share": lambda: df["expected_share"].to_numpy(),
        "bytes.director": lambda: df["bytes"].to_numpy(), "servers": lambda: df["servers"].to_numpy(),
        "bytes.requests": lambda: df["requests"].to_numpy(), "bytes.replies": lambda: df["replies"].to_numpy(),
        "reply_ratio": lambda: df["replies"].to_numpy() / np.maximum(df["requests"].to_numpy(), 1),
    }
    return ctx.env(makers, n), df


# ---------------------------------------------------------------------------------- findings

def _frame_refs(t: PacketTable, rows: Sequence[int]) -> list[FrameRef]:
    if not len(rows):
        return []
    rows = np.asarray(rows, dtype=np.int64)
    inputs = t.vantage_inputs()[t["iface"][rows]]
    frames = t["frame"][rows]
    return [FrameRef(int(i), int(fr)) for i, fr in zip(inputs, frames)]


def _group(rule: Rule, env: Env, hits: np.ndarray, keys_at: Callable[[np.ndarray], pd.DataFrame], frames_of,
           conn_label, service_label, rs_label) -> list[Finding]:
    """One finding per (service, real server, MAC): the first occurrence speaks for the rest.
    ``keys_at(hits)`` gives the service, real server and connection of those rows."""
    if len(hits) == 0:
        return []
    k = keys_at(hits)
    k["hit"] = hits
    mac = rule.mac.evaluate_masked(env)[0][hits] if rule.mac is not None else np.zeros(len(hits), np.uint64)
    k["mac"] = mac
    out = []
    for _, grp in k.groupby(["svc", "rs", "mac"], sort=False, dropna=False):
        first = int(grp["hit"].iloc[0])
        f = rule.findings(env, np.array([first]))[0]
        conns = grp["conn"].to_numpy()
        f.count = int(len(np.unique(conns[conns >= 0]))) if (conns >= 0).any() else len(grp)
        f.service = service_label(int(grp["svc"].iloc[0]))
        f.real_server = rs_label(int(grp["rs"].iloc[0])) or None
        f.connection = conn_label(int(grp["conn"].iloc[0]))
        refs: list[FrameRef] = []
        for h in grp["hit"].to_numpy()[:MAX_FRAMES]:
            refs.extend(frames_of(int(h)))
        f.frames = refs[:MAX_FRAMES]
        out.append(f)
    return out


@dataclass
class Analysis:
    """Everything an audit produced, for the renderers that need more than the findings (the TUI,
    the live monitor): the table, the topology used, the stitched flows, the findings and the
    result the reports render."""
    table: PacketTable
    topology: Topology
    flows: Flows
    findings: list[Finding]
    result: AuditResult


Progress = Callable[..., None]      # progress(stage: str, fraction: float | None = None)


def audit(traces: Sequence[str], *, topology_path: str | None = None, topology: Topology | None = None,
          rule_dirs: Sequence[str | Path] = (), select: str | None = None, ignore: str | None = None,
          toa_kinds: Sequence[int] = (254, 253, 200), gue_ports: Sequence[int] = (6080,), stdin=None,
          progress: Progress | None = None) -> AuditResult:
    """Read the traces and analyse them; see :func:`analyse`."""
    say = progress or (lambda *_a: None)
    say("reading", 0.0)
    table = read_table(traces, toa_kinds=toa_kinds, gue_ports=gue_ports, stdin=stdin,
                       progress=lambda frac: say("reading", frac))
    return analyse(table, topology_path=topology_path, topology=topology, rule_dirs=rule_dirs, select=select,
                   ignore=ignore, toa_kinds=toa_kinds, progress=progress, label=", ".join(traces)).result


def analyse(table: PacketTable, *, topology_path: str | None = None, topology: Topology | None = None,
            rule_dirs: Sequence[str | Path] = (), select: str | None = None, ignore: str | None = None,
            toa_kinds: Sequence[int] = (254, 253, 200), progress: Progress | None = None,
            label: str = "the trace", rules: Sequence[Rule] | None = None) -> Analysis:
    """Stitch and check a table already read. Without a topology it is inferred (``result.topology``
    says "inferred"); a topology that leaves capture points unplaced gets their roles inferred.
    ``rules`` (already loaded and selected) skips loading the rule files, for callers that analyse
    many windows."""
    say = progress or (lambda *_a: None)
    topo_origin = None
    if topology is None and topology_path:
        topology = load_topology(topology_path)
        topo_origin = topology_path
    elif topology is not None:
        topo_origin = topology.source or "given"
    if topology is not None:
        topology = _learn_missing_roles(table, topology, say)
    else:
        from ..topology.infer import infer_topology
        say("inferring the topology")
        try:
            topology = infer_topology(table, source="inferred")
        except ValueError as e:
            raise InputError(label, f"{e}; give a topology with -t") from None
        topo_origin = "inferred"
    # each stage frees its temporaries before the next one starts: hand their pages back, so
    # that the peak is the live data of one stage, not the sum of what every stage left behind
    release_freed_memory()
    say("stitching")
    flows = stitch(table, topology)
    release_freed_memory()
    all_kinds = tuple(sorted(set(toa_kinds) | {s.toa.kind for s in topology.services if s.toa}))
    ctx = _Ctx(table, topology, flows, all_kinds)
    if rules is None:
        rules = select_rules(load_rules([rules_dir(), *rule_dirs], namespaces(table.addr_key)), select, ignore)
    say("checking")
    findings = evaluate(ctx, rules)
    return Analysis(table, topology, flows, findings, _result(table, topology, flows, findings, topo_origin))


def _learn_missing_roles(table: PacketTable, topology: Topology, say) -> Topology:
    """Capture points the topology file does not place get the role inference gives them."""
    missing = [v.name for v in table.vantages if topology.vantage_role(v.name).kind == "unknown"]
    if not missing:
        return topology
    from ..topology.infer import infer_topology
    say("learning capture-point roles")
    try:
        guessed = dict(infer_topology(table, source="inferred").vantages)
    except ValueError:
        return topology
    roles = {name: guessed[name] for name in missing if name in guessed and guessed[name].kind != "unknown"}
    return topology.with_vantages(roles) if roles else topology


def evaluate(ctx: _Ctx, rules: Sequence[Rule]) -> list[Finding]:
    t, f, ep = ctx.table, ctx.flows, ctx.flows.endpoints
    profile = ctx.topo.profile.name
    present_modes = {MODES[m] for m in np.unique(ep.rs_mode)} if len(ep.rs_mode) else set()

    def service_label(i: int) -> str | None:
        return ep.services[i].key if 0 <= i < len(ep.services) else None

    def rs_label(i: int) -> str:
        if i < 0:
            return ""
        si, rs = ep.real_servers[i]
        port = "" if rs.port in (0, ep.services[si].port) else f":{rs.port}"
        return f"{rs.ip}{port}"

    conns = f.connections

    def conn_label(c: int) -> str | None:
        if c < 0 or c >= len(conns):
            return None
        addr = t.addr_str(int(conns["cip"].iat[c]))
        return f"[{addr}]:{conns['cport'].iat[c]}" if ":" in addr else f"{addr}:{conns['cport'].iat[c]}"

    cache: dict = {}

    def scope_env(rule: Rule):
        key = (rule.scope, rule.legs if rule.scope == "pair" else ())
        if key in cache:
            return cache[key]
        if rule.scope == "packet":
            env, mode = _packet_env(ctx)

            def keys_at(h):
                c = f.conn[h].astype(np.int64)
                rs, svc = f.rs[h], f.svc[h]
                return pd.DataFrame({"svc": np.where(svc < 0, _conn_col(conns, "svc", c), svc),
                                     "rs": np.where(rs < 0, _conn_col(conns, "rs", c), rs), "conn": c})
            res = (env, mode, keys_at, lambda h: _frame_refs(t, [h]))
        elif rule.scope == "pair":
            env, p = _pair_env(ctx, *rule.legs)
            if env is None:
                res = None
            else:
                conn_rs, conn_svc = conns["rs"].to_numpy(), conns["svc"].to_numpy()

                def keys_at(h, p=p):
                    c = p.conn[h]
                    return pd.DataFrame({"svc": conn_svc[c], "rs": conn_rs[c], "conn": c})
                inr, outr = p.in_row, p.out_row
                res = (env, conns["mode"].to_numpy().astype(np.int64)[p.conn], keys_at,
                       lambda h, inr=inr, outr=outr: _frame_refs(t, [inr[h]] + ([outr[h]] if outr[h] >= 0 else [])))
        elif rule.scope == "connection":
            env = _conn_env(ctx)

            def keys_at(h):
                return pd.DataFrame({"svc": conns["svc"].to_numpy()[h], "rs": conns["rs"].to_numpy()[h],
                                     "conn": np.arange(len(conns))[h]})
            first = f.first_row if f.first_row is not None else _first_rows(f)
            res = (env, conns["mode"].to_numpy().astype(np.int64), keys_at,
                   lambda h: _frame_refs(t, [first[h]]) if first[h] >= 0 else [])
        elif rule.scope == "arp":
            env, rows = _arp_env(ctx)
            rs_by_mac = _rs_index_by_mac(ep, t, rows)

            def keys_at(h):
                return pd.DataFrame({"svc": np.full(len(rows), -1)[h], "rs": rs_by_mac[h],
                                     "conn": np.full(len(rows), -1)[h]})
            res = (env, None, keys_at, lambda h: _frame_refs(t, [rows[h]]))
        else:
            env, df = _service_env(ctx)
            keys = pd.DataFrame({"svc": df["svc"].to_numpy() if len(df) else [],
                                 "rs": df["rs"].to_numpy() if len(df) else [], "conn": np.full(len(df), -1)})
            res = (env, np.asarray(ep.rs_mode[df["rs"].to_numpy()] if len(df) else [], dtype=np.int64),
                   lambda h, keys=keys: keys.iloc[h].reset_index(drop=True), lambda h: [])
        cache[key] = res
        release_freed_memory()     # what building the scope needed and dropped
        return res

    findings: list[Finding] = []
    for rule in rules:
        if not any(rule.applies_to(m, profile) for m in present_modes):
            continue
        got = scope_env(rule)
        if got is None:
            continue
        env, mode, keys_at, frames_of = got
        if env.n == 0:
            continue
        fires = rule.violations(env)
        if mode is not None:
            ok = member(mode, [MODES.index(m) for m in rule.modes])
            if rule.scope == "packet" and not rule.legs:
                ok |= mode == 0      # traffic outside any connection (ICMP errors, checksums)
            fires &= ok
        if rule.scope == "packet" and rule.legs:
            fires &= member(f.leg, [LEGS.index(leg) for leg in rule.legs])
        hits = np.flatnonzero(fires)
        findings.extend(_group(rule, env, hits, keys_at, frames_of, conn_label, service_label, rs_label))
    findings.sort(key=lambda x: (-int(x.severity), x.code, x.real_server or "", x.connection or ""))
    return findings


def _conn_col(conns: pd.DataFrame, name: str, conn: np.ndarray) -> np.ndarray:
    col = np.concatenate([conns[name].to_numpy().astype(np.int64), [-1]]) if len(conns) else np.array([-1])
    return col[conn]


def _first_rows(f: Flows) -> np.ndarray:
    rows = np.flatnonzero(f.conn >= 0)
    out = np.full(len(f.connections), -1, dtype=np.int64)
    if len(rows):
        order = np.lexsort((f.table["ts_ns"][rows], f.conn[rows]))
        c = f.conn[rows][order]
        first = np.r_[True, c[1:] != c[:-1]]
        out[c[first]] = rows[order][first]
    return out


def _rs_index_by_mac(ep, t: PacketTable, rows: np.ndarray) -> np.ndarray:
    macs = t.group("arp")["arp_sha"]
    out = np.full(len(rows), -1, dtype=np.int64)
    for i, m in enumerate(ep.rs_mac.tolist()):
        if m:
            out[macs == m] = i
    return out


def _result(table: PacketTable, topo: Topology, flows: Flows, findings: list[Finding],
            origin: str | None) -> AuditResult:
    inputs = [InputInfo(path=a["path"], frames=a["frames"], decoded=a["decoded"], ignored=a["ignored"],
                        undecodable=a["undecodable"], interfaces=a["interfaces"], truncated=a["truncated"],
                        damage=a["damage"]) for a in table.accounting()]
    c = flows.connections
    ep = flows.endpoints
    summary = Summary()
    if len(c):
        summary.connections = len(c)
        summary.complete = int(c["state"].isin(["complete", "open", "answered"]).sum())
        summary.failed = int(c["state"].isin(["no-answer", "refused", "reset-by-server", "unanswered"]).sum())
        by = c[c["rs"] >= 0].groupby("rs").size()
        summary.by_real_server = {str(ep.real_servers[int(i)][1].ip): int(n) for i, n in by.items()}
        req, rep = director_bytes(c)
        summary.director_bytes = int(req.sum() + rep.sum())
    return AuditResult(inputs=inputs, summary=summary, findings=findings, topology=origin)
