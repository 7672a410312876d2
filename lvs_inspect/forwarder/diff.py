"""Compare what the director should have sent (``lvs-inspect replay``) with what the trace shows.

    result = diff(["expected.pcapng"], ["trace.pcapng"], topology)   # or topology=None: inferred
    result.different            # connections that diverge
    print(result.render_text()); result.to_json()

Sides. Each side is either an expected file written by :func:`.replay.replay` (every pcapng
interface is named after a leg; every frame's comment names its connection) or a capture,
whose packets are put on legs and connections by :func:`lvs_inspect.flows.stitch` with the
topology (given, else inferred from the observed side). ICMP errors are put on the connection
whose packet they quote. A packet seen at several capture points counts once, at the point
nearest the director (a director vantage, then a real server's, then the others); a copy taken
beyond a router (client or router vantage) is compared without its Ethernet addresses and TTL.

Alignment, per connection (client tuple; a reused tuple is matched by time) and leg, in
three passes: (1) the same packet — direction (leg), TCP sequence and acknowledgment numbers,
flags, payload digest and length, IP ID (ICMP: type, code and the quoted sequence number) —
the k-th occurrence on one side with the k-th on the other, so retransmissions pair up in
order; (2) what is left, by flags, payload and length alone (a packet whose sequence numbers or
IP ID were rewritten wrongly); (3) what is still left, the same packet on another leg (a NAT
reply that bypassed the director: expected on director-client, seen on rs-client).
Expected packets with no partner are *missing*. Observed packets on the director's output legs
(director-rs, director-client), and on legs the connection's mode does not have (rs-client for
NAT and FullNAT, client-rs always), with no partner are *unexpected*. A missing packet due after
the end of the capture of its leg, or an unexpected one whose input came before the capture of
the input leg began (within the director's latency, learned from the pairs), is *outside the
capture* and not a divergence.

Fields compared on every pair (offload-aware: a checksum the capturing host left to its NIC
counts as right, one that could not be verified is skipped; the outer IPv4 ID is compared only
when DF is set):

    eth.src eth.dst vlan ip.version ip.src ip.dst ip.ttl ip.id ip.df ip.tos ip.len ip.proto
    ip.checksum sport dport tcp.flags tcp.seq tcp.ack tcp.window tcp.hlen tcp.mss tcp.wscale
    tcp.sack_perm tcp.timestamps toa tcp.options payload.len payload l4.checksum icmp.type
    tunnel outer.src outer.dst outer.ttl outer.tos outer.df outer.id outer.sport outer.dport
    tunnel.flags

The first divergence of each connection is the earliest event (by the expected packet's
time, or the observed one's for an unexpected packet): a pair with differing fields, a
missing packet, an unexpected one, or a packet on the wrong leg.

JSON (``DiffResult.to_json()``, ``lvs-inspect diff --format json``)::

    {
      "version": 1,
      "expected": ["expected.pcapng"], "observed": ["trace.pcapng"],
      "topology": "topology.toml" | "inferred",
      "same": false,                     # no connection diverges
      "summary": {
        "connections": 52,               # connections on either side
        "same": 49, "different": 3,
        "expected_packets": 478, "observed_packets": 520,   # compared (deduplicated)
        "matched": 470, "differing": 2, "missing": 5, "unexpected": 7, "wrong_leg": 1,
        "outside_capture": 2,            # excused at the capture's edges
        "grace_ns": 1000000              # the edge allowance used
      },
      "connections": [                   # the divergent ones, in order of first divergence
        {
          "connection": "198.18.0.5:40000 > 203.0.113.100:80/tcp",
          "mode": "nat", "real_server": "192.0.2.11:80",     # from the observed side ("" unknown)
          "matched": 9, "differing": 1, "missing": 1, "unexpected": 1, "wrong_leg": 0,
          "first": {
            "kind": "fields" | "missing" | "unexpected" | "wrong-leg",
            "leg": "director-rs",        # the expected packet's leg (the observed one's if unexpected)
            "ts_ns": 1700000000000000000,
            "expected": {"file": "expected.pcapng", "frame": 12, "leg": "director-rs",
                         "vantage": "director-rs", "packet": "SYN seq=1000 len=0"} | null,
            "observed": {"file": "trace.pcapng", "frame": 40, "leg": "director-rs",
                         "vantage": "p-dir-r", "packet": "..."} | null,
            "fields": [{"field": "ip.ttl", "expected": 63, "observed": 64}]   # "fields"/"wrong-leg"
          },
          "missing_packets": [ {packet ref as above}, ... ],      # at most 20 each
          "unexpected_packets": [ ... ]
        }
      ]
    }

Values in ``fields`` are numbers where the field is a number, else text (addresses, MACs,
flags like ``"SA"``, option bytes in hex, checksum states ``ok``/``bad``).
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ..capture import read_table
from ..capture.records import open_input
from ..capture.schema import Csum, Tun
from ..capture.table import PacketTable, mac_str
from ..errors import InputError
from ..flows import stitch
from ..flows.legs import C_D, C_R, D_C, D_R, LEGS, MODES, R_C, R_D, ROLE_CODES
from ..topology.model import Topology
from .replay import COMMENT_PREFIX, connection_text

__all__ = ["diff", "DiffResult", "FIELDS"]

SKEW_NS = 500_000_000
_ROLE_DIRECTOR, _ROLE_RS = ROLE_CODES["director"], ROLE_CODES["rs"]
_ROLE_CLIENT, _ROLE_ROUTER = ROLE_CODES["client"], ROLE_CODES["router"]
#: representative copy per leg: role preference (unknown, client, director, rs, router)
_PRIO = np.array([2, 3, 0, 1, 3], dtype=np.int64)
_OUTPUT_LEGS = (D_R, D_C)
#: legs a connection of each mode does not have (observed there: unexpected)
_FOREIGN = {"nat": (R_C, C_R), "fullnat": (R_C, C_R), "dr": (C_R,), "tun": (C_R,), "": (C_R,)}
_KIND_ORDER = {"fields": 0, "wrong-leg": 1, "missing": 2, "unexpected": 3}
_MAX_LIST = 20
_TUN_NAMES = {int(t): t.name.lower() for t in Tun}
_CSUM_NAMES = {int(c): c.name.lower() for c in Csum}

#: (name, kind, columns): kind says how to read and print the value
FIELDS = (
    ("eth.src", "mac", ("eth_src",)), ("eth.dst", "mac", ("eth_dst",)),
    ("vlan", "int", ("vlan",)), ("ip.version", "int", ("ip_ver",)),
    ("ip.src", "addr", ("ip_src",)), ("ip.dst", "addr", ("ip_dst",)),
    ("ip.ttl", "int", ("ip_ttl",)), ("ip.id", "int", ("ip_id",)), ("ip.df", "df", ("ip_frag",)),
    ("ip.tos", "int", ("ip_tos",)), ("ip.len", "int", ("ip_len",)), ("ip.proto", "int", ("ip_proto",)),
    ("ip.checksum", "csum", ("ip_csum",)),
    ("sport", "int", ("sport",)), ("dport", "int", ("dport",)),
    ("tcp.flags", "flags", ("tcp_flags",)), ("tcp.seq", "int", ("tcp_seq",)),
    ("tcp.ack", "int", ("tcp_ack",)), ("tcp.window", "int", ("tcp_win",)),
    ("tcp.hlen", "int", ("tcp_hlen",)), ("tcp.mss", "int", ("tcp_mss",)),
    ("tcp.wscale", "int", ("tcp_ws",)), ("tcp.sack_perm", "int", ("tcp_sackok",)),
    ("tcp.timestamps", "ts", ("tcp_opts", "tcp_tsval", "tcp_tsecr")),
    ("toa", "toa", ("toa_kind", "toa_len", "toa_port", "toa_addr")),
    ("tcp.options", "opts", ()),
    ("payload.len", "int", ("payload_len",)), ("payload", "hex", ("payload_digest",)),
    ("l4.checksum", "csum", ("l4_csum",)),
    ("icmp.type", "icmp", ("icmp_type", "icmp_code")),
    ("tunnel", "tun", ("tun",)), ("outer.src", "addr", ("out_src",)), ("outer.dst", "addr", ("out_dst",)),
    ("outer.ttl", "int", ("out_ttl",)), ("outer.tos", "int", ("out_tos",)), ("outer.df", "df", ("out_frag",)),
    ("outer.id", "outer_id", ("out_id", "out_frag")), ("outer.sport", "int", ("out_sport",)),
    ("outer.dport", "int", ("out_dport",)), ("tunnel.flags", "hex", ("tun_flags",)),
)
_BEYOND_SKIP = {"eth.src", "eth.dst", "ip.ttl", "outer.ttl", "vlan"}
_ADDR_COLS = ("ip_src", "ip_dst", "out_src", "out_dst", "toa_addr", "icmp_in_src", "icmp_in_dst")


# =========================================================================== result

@dataclass
class DiffResult:
    expected_paths: list[str]
    observed_paths: list[str]
    topology: str
    summary: dict
    connections: list[dict]                  # divergent connections, in order of first divergence

    @property
    def same(self) -> bool:
        return not self.connections

    @property
    def different(self) -> list[dict]:
        return self.connections

    def exit_code(self) -> int:
        return 0 if self.same else 1

    def to_dict(self) -> dict:
        return {"version": 1, "expected": self.expected_paths, "observed": self.observed_paths,
                "topology": self.topology, "same": self.same, "summary": self.summary,
                "connections": self.connections}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def render_text(self, *, limit: int = 50) -> str:
        s = self.summary
        out = [f"diff: {s['connections']} connections, {s['same']} same, {s['different']} different "
               f"(expected {s['expected_packets']} packets, observed {s['observed_packets']} on the "
               f"compared legs; topology {self.topology})"]
        if s.get("outside_capture"):
            out.append(f"  {s['outside_capture']} packets at the edges of the capture not counted "
                       f"(within {s['grace_ns'] / 1e6:.1f} ms of where a capture point starts or ends)")
        if self.same:
            out.append("no divergence: the director did what the model expects on every compared packet")
            return "\n".join(out) + "\n"
        for c in self.connections[:limit]:
            out.append("")
            rs = f", real server {c['real_server']}" if c.get("real_server") else ""
            out.append(f"{c['connection']} ({c['mode'] or 'mode unknown'}{rs})")
            f = c["first"]
            e, o = f["expected"], f["observed"]
            if f["kind"] == "fields":
                out.append(f"  first divergence on {f['leg']}: {_ref(e)} <> {_ref(o)}")
            elif f["kind"] == "wrong-leg":
                out.append(f"  first divergence: expected on {e['leg']} ({_ref(e)}), seen on "
                           f"{o['leg']} instead ({_ref(o)})")
            elif f["kind"] == "missing":
                out.append(f"  first divergence: missing on {f['leg']}: {_ref(e)}")
            else:
                out.append(f"  first divergence: unexpected on {f['leg']}: {_ref(o)}")
            if f.get("fields"):
                w = max(len(x["field"]) for x in f["fields"])
                out.append(f"    {'field':<{w}}  expected -> observed")
                for x in f["fields"]:
                    out.append(f"    {x['field']:<{w}}  {x['expected']} -> {x['observed']}")
            more = []
            if c["differing"] > (1 if f["kind"] == "fields" else 0):
                more.append(f"{c['differing']} packets with differing fields")
            if c["missing"]:
                more.append(f"{c['missing']} missing")
            if c["unexpected"]:
                more.append(f"{c['unexpected']} unexpected")
            if c["wrong_leg"]:
                more.append(f"{c['wrong_leg']} on another leg")
            more.append(f"{c['matched']} matched")
            out.append("  in all: " + ", ".join(more))
            for what, key in (("missing", "missing_packets"), ("unexpected", "unexpected_packets")):
                refs = [r for r in c[key] if r != e and r != o][:3]
                for r in refs:
                    out.append(f"    {what} on {r['leg']}: {_ref(r)}")
        if len(self.connections) > limit:
            out.append("")
            out.append(f"... {len(self.connections) - limit} more divergent connections (--format json lists all)")
        return "\n".join(out) + "\n"


def _ref(r: dict | None) -> str:
    if r is None:
        return "-"
    return f"{r['file']} frame {r['frame']} at {r['vantage']} [{r['packet']}]"


# =========================================================================== reading a side

@dataclass
class _Side:
    table: PacketTable
    paths: list[str]
    rows: np.ndarray            # table rows compared (representatives)
    leg: np.ndarray             # LEGS code per compared row
    tuple_text: list[str]       # per tuple id: connection text
    tup: np.ndarray             # tuple id per compared row (-1 none)
    gen_start: np.ndarray | None   # capture side: per compared row its connection's first ts
    beyond: np.ndarray          # compared without Ethernet/TTL (copy beyond a router)
    mode: dict = field(default_factory=dict)        # tuple text -> mode name
    rs: dict = field(default_factory=dict)          # tuple text -> real server
    coverage: dict = field(default_factory=dict)    # leg -> (first ts, last ts) of its capture points
    is_replay: bool = False


def _is_replay_output(table: PacketTable) -> bool:
    return bool(table.vantages) and all(v.name in LEGS[1:] for v in table.vantages)


def _comments(paths: Sequence[str], n_rows: int, table: PacketTable) -> list:
    """The pcapng comment (opt_comment of the Enhanced Packet Block) of every row, None where
    there is none; read from the records' own bytes (a second pass over the files)."""
    out: list = [None] * n_rows
    inp = table["input"]
    starts = np.searchsorted(inp, np.arange(len(paths) + 1))
    for i, path in enumerate(paths):
        pos = int(starts[i])
        for batch in open_input(path, i, []):
            buf = batch.buf
            offs = batch.data_off.tolist()
            caps = batch.caplen.tolist()
            for j, (off, cap) in enumerate(zip(offs, caps)):
                out[pos + j] = _epb_comment(buf, off, cap)
            pos += len(batch)
    return out


def _epb_comment(buf: np.ndarray, off: int, cap: int) -> str | None:
    start = off - 28
    if start < 0:
        return None
    head = buf[start:start + 8].tobytes()
    if head[:4] == b"\x06\x00\x00\x00":
        order = "little"
    elif head[:4] == b"\x00\x00\x00\x06":
        order = "big"
    else:
        return None
    total = int.from_bytes(head[4:8], order)
    end = start + total - 4
    p = off + cap + (-cap % 4)
    while p + 4 <= end:
        code = int.from_bytes(buf[p:p + 2].tobytes(), order)
        ln = int.from_bytes(buf[p + 2:p + 4].tobytes(), order)
        if code == 0:
            break
        if code == 1 and p + 4 + ln <= end:
            return buf[p + 4:p + 4 + ln].tobytes().decode("utf-8", "replace")
        p += 4 + ln + (-ln % 4)
    return None


def _replay_side(table: PacketTable, paths: list[str]) -> _Side:
    n = len(table)
    names = np.array([LEGS.index(v.name) for v in table.vantages], dtype=np.uint8)
    leg = names[table["iface"]] if n else np.zeros(0, np.uint8)
    comments = _comments(paths, n, table)
    texts: dict[str, int] = {}
    tup = np.full(n, -1, dtype=np.int64)
    unresolved = []
    for i, c in enumerate(comments):
        if c and c.startswith(COMMENT_PREFIX):
            _, sep, t = c.rpartition("; conn ")
            if sep:
                tup[i] = texts.setdefault(t, len(texts))
                continue
        unresolved.append(i)
    if unresolved:
        _tuples_from_headers(table, np.array(unresolved, dtype=np.int64), leg, tup, texts)
    ok = (table["status"] < 10)
    rows = np.flatnonzero(ok)
    ts = table["ts_ns"]
    cov = {}
    for lg in np.unique(leg[rows]).tolist():
        t = ts[rows[leg[rows] == lg]]
        cov[int(lg)] = (int(t.min()), int(t.max()))
    return _Side(table=table, paths=paths, rows=rows, leg=leg[rows].astype(np.uint8),
                 tuple_text=list(texts), tup=tup[rows], gen_start=None,
                 beyond=np.zeros(len(rows), dtype=bool), coverage=cov, is_replay=True)


def _tuples_from_headers(table, rows, leg, tup, texts) -> None:
    """Expected frames without a replay comment: the client tuple from the headers where the
    leg makes it plain (director-client: the destination is the client; director-rs toward
    the VIP: DR/TUN, the source is the client)."""
    proto = table["ip_proto"][rows]
    src, dst = table["ip_src"][rows], table["ip_dst"][rows]
    sp, dp = table["sport"][rows], table["dport"][rows]
    for i, r in enumerate(rows.tolist()):
        if proto[i] not in (6, 17):
            continue
        if leg[r] == D_C:
            c, cp, v, vp = dst[i], dp[i], src[i], sp[i]
        elif leg[r] == D_R:
            c, cp, v, vp = src[i], sp[i], dst[i], dp[i]
        else:
            continue
        t = connection_text(ipaddress.ip_address(table.addr_str(int(c))), cp,
                            ipaddress.ip_address(table.addr_str(int(v))), vp, proto[i])
        tup[r] = texts.setdefault(t, len(texts))


def _capture_side(table: PacketTable, paths: list[str], topo: Topology) -> _Side:
    flows = stitch(table, topo)
    n = len(table)
    leg = flows.leg.copy()
    conn = flows.conn.astype(np.int64)
    obs = flows.obs.astype(np.int64)
    role = flows.role
    cons = flows.connections
    ts = table["ts_ns"]
    # connection texts
    nconn = len(cons)
    ctext = _texts(table, cons) if nconn else []
    cmode = [MODES[int(m)] for m in cons["mode"].to_numpy()] if nconn else []
    crs = []
    if nconn:
        rs_idx = cons["rs"].to_numpy()
        for r in rs_idx.tolist():
            crs.append(flows.endpoints.real_servers[r][1].endpoint if r >= 0 else "")
    first_ns = cons["first_ns"].to_numpy() if nconn else np.zeros(0, np.int64)
    # a packet from the VIP toward the client that the director's own MAC sent is on
    # director-client, whatever the service's mode (flows puts a DR service's on rs-client)
    dmacs = flows.endpoints.director_macs
    if len(dmacs):
        rc = np.flatnonzero((leg == R_C) & (conn >= 0))
        sent = rc[np.isin(table["eth_src"][rc], dmacs) & ~np.isin(role[rc], (_ROLE_CLIENT, _ROLE_ROUTER))]
        leg[sent] = D_C
    # ICMP errors: on the connection whose packet they quote
    icmp_conn, icmp_leg, icmp_rows = _icmp_rows(table, flows, ctext, first_ns)
    conn[icmp_rows] = icmp_conn
    leg[icmp_rows] = icmp_leg
    # representatives: one copy per observation (ICMP: per their own grouping)
    cand = np.flatnonzero(conn >= 0)
    ob = obs.copy()
    if len(icmp_rows):
        base = int(obs.max()) + 1 if len(obs) else 0
        ids = pd.factorize(pd.MultiIndex.from_arrays([
            conn[icmp_rows], leg[icmp_rows], table.take("icmp_type", icmp_rows),
            table.take("icmp_code", icmp_rows), table["ip_id"][icmp_rows],
            table.take("icmp_in_seq", icmp_rows), table["payload_len"][icmp_rows]]))[0]
        ob[icmp_rows] = base + ids
    prio = _PRIO[role[cand]]
    order = np.lexsort((cand, prio, ob[cand]))
    srt = cand[order]
    keep = np.ones(len(srt), dtype=bool)
    keep[1:] = ob[srt][1:] != ob[srt][:-1]
    rows = np.sort(srt[keep])
    beyond = np.isin(role[rows], (_ROLE_CLIENT, _ROLE_ROUTER))
    # coverage of each leg: the capture points that saw it
    cov = {}
    vid = table["iface"]
    vfirst, vlast = {}, {}
    if n:
        for v in np.unique(vid).tolist():
            t = ts[vid == v]
            vfirst[v], vlast[v] = int(t.min()), int(t.max())
    for lg in np.unique(leg[conn >= 0]).tolist():
        vs = np.unique(vid[(leg == lg) & (conn >= 0)]).tolist()
        cov[int(lg)] = (min(vfirst[v] for v in vs), max(vlast[v] for v in vs))
    side = _Side(table=table, paths=paths, rows=rows, leg=leg[rows].astype(np.uint8),
                 tuple_text=ctext, tup=conn[rows], gen_start=first_ns[conn[rows]] if nconn else None,
                 beyond=beyond, coverage=cov)
    side.mode = {t: m for t, m in zip(ctext, cmode)}
    side.rs = {t: r for t, r in zip(ctext, crs)}
    return side


def _texts(table, cons) -> list[str]:
    keys = np.unique(np.concatenate([cons["cip"].to_numpy(), cons["vip"].to_numpy()]).astype(np.uint64))
    ip = {int(k): ipaddress.ip_address(table.addr_str(int(k))) for k in keys.tolist() if k}
    out = []
    for a, p, b, q, r in zip(cons["cip"].tolist(), cons["cport"].tolist(), cons["vip"].tolist(),
                             cons["vport"].tolist(), cons["proto"].tolist()):
        out.append(connection_text(ip[int(a)], p, ip[int(b)], q, r) if a and b else f"? > ?/{r}")
    return out


def _icmp_rows(table: PacketTable, flows, ctext: list[str], first_ns: np.ndarray):
    """ICMP errors the director sent or should have seen, on the connection whose packet they
    quote: (connection, leg, row). Toward the client (the quoted packet went client -> VIP or
    VIP -> client): director-client when the director sent it (its MAC, or from a VIP), else
    rs-client. Toward the server side, only what the director sent (director-rs): the quoted
    packet is a real server's reply as the server saw its connection (NAT: to CIP:cport,
    FullNAT: to LIP:lport, as on the connection's director-rs packets), or VIP -> client (DR,
    TUN: forwarded as it came)."""
    empty = np.zeros(0, dtype=np.int64)
    rows = table.rows_of("icmp")
    if len(rows) == 0 or not ctext:
        return empty, empty.astype(np.uint8), empty
    rows = rows[(table.take("icmp_in_ver", rows) != 0) & (table["status"][rows] < 10)]
    if len(rows) == 0:
        return empty, empty.astype(np.uint8), empty
    by_text: dict[str, list[int]] = {}
    for i, t in enumerate(ctext):
        by_text.setdefault(t, []).append(i)
    isrc, idst = table.take("icmp_in_src", rows), table.take("icmp_in_dst", rows)
    isp, idp = table.take("icmp_in_sport", rows), table.take("icmp_in_dport", rows)
    ipr = table.take("icmp_in_proto", rows)
    dst, src, esrc = table["ip_dst"][rows], table["ip_src"][rows], table["eth_src"][rows]
    ts = table["ts_ns"][rows]
    dmacs = set(int(m) for m in flows.endpoints.director_macs.tolist())
    vips = set(int(k) for k in flows.endpoints.svc_vip.tolist())
    # the server side's view of each connection: (src, sport, dst, dport, proto) of its
    # director-rs packets, for the tuples ICMP errors quote
    quoted = set(zip(idst.tolist(), idp.tolist(), isrc.tolist(), isp.tolist()))
    dr_key: dict = {}
    drows = np.flatnonzero((flows.leg == D_R) & (flows.conn >= 0))
    drows = drows[np.isin(table["ip_dst"][drows], isrc)]
    for r, a, p_, b, q, pr, c in zip(drows.tolist(), table["ip_src"][drows].tolist(),
                                     table["sport"][drows].tolist(), table["ip_dst"][drows].tolist(),
                                     table["dport"][drows].tolist(), table["ip_proto"][drows].tolist(),
                                     flows.conn[drows].tolist()):
        if (a, p_, b, q) in quoted:
            dr_key.setdefault((a, p_, b, q, pr), c)
    out_c, out_l, out_r = [], [], []
    addr = {}

    def ip(k):
        a = addr.get(k)
        if a is None:
            a = addr[k] = ipaddress.ip_address(table.addr_str(int(k)))
        return a

    def conn_of(c, cp, v, vp, pr, t):
        ids = by_text.get(connection_text(ip(c), cp, ip(v), vp, pr))
        if not ids:
            return None
        cid = ids[0]
        for j in ids:
            if first_ns[j] <= t + SKEW_NS:
                cid = j
        return cid

    for i, r in enumerate(rows.tolist()):
        if ipr[i] not in (6, 17) or not isrc[i] or not idst[i]:
            continue
        from_dir = int(esrc[i]) in dmacs or int(src[i]) in vips
        cid = lg = None
        for c, cp, v, vp in ((isrc[i], isp[i], idst[i], idp[i]), (idst[i], idp[i], isrc[i], isp[i])):
            if dst[i] == c and int(v) in vips:
                cid = conn_of(c, cp, v, vp, ipr[i], ts[i])
                lg = D_C if from_dir else R_C
                break
        if cid is None and from_dir:
            cid = dr_key.get((int(idst[i]), int(idp[i]), int(isrc[i]), int(isp[i]), int(ipr[i])))
            if cid is None and int(isrc[i]) in vips and dst[i] == isrc[i]:
                cid = conn_of(idst[i], idp[i], isrc[i], isp[i], ipr[i], ts[i])
            lg = D_R
        if cid is None:
            continue
        out_c.append(cid)
        out_l.append(lg)
        out_r.append(r)
    return (np.array(out_c, dtype=np.int64), np.array(out_l, dtype=np.uint8),
            np.array(out_r, dtype=np.int64))


# =========================================================================== alignment

def _frame(side: _Side) -> pd.DataFrame:
    t, r = side.table, side.rows
    proto = t["ip_proto"][r]
    icmp = (proto == 1) | (proto == 58)
    ka = np.where(icmp, t.take("icmp_type", r).astype(np.int64) * 256 + t.take("icmp_code", r),
                  t["tcp_seq"][r].astype(np.int64))
    kb = np.where(icmp, t.take("icmp_in_seq", r).astype(np.int64), t["tcp_ack"][r].astype(np.int64))
    df = pd.DataFrame({
        "row": r, "leg": side.leg.astype(np.int64), "ts": t["ts_ns"][r],
        "ka": ka, "kb": kb, "fl": t["tcp_flags"][r].astype(np.int64),
        "dig": t["payload_digest"][r].astype(np.int64), "plen": t["payload_len"][r].astype(np.int64),
        "ipid": t["ip_id"][r].astype(np.int64), "beyond": side.beyond,
    })
    df["ttext"] = [side.tuple_text[i] if i >= 0 else "" for i in side.tup.tolist()] if len(r) else []
    if side.gen_start is not None:
        df["gstart"] = side.gen_start
    return df


def _assign_connections(exp: pd.DataFrame, obs: pd.DataFrame) -> None:
    """A connection id ``cid`` on both frames: the observed side's connections (tuple and
    generation); an expected row takes the latest observed generation of its tuple that began
    before it (within the clock skew), else a connection of its own."""
    gens = obs[["ttext", "gstart"]].drop_duplicates().sort_values(["gstart", "ttext"]).reset_index(drop=True) \
        if "gstart" in obs else pd.DataFrame({"ttext": obs["ttext"].unique(), "gstart": 0})
    gens["cid"] = np.arange(len(gens))
    o = obs.merge(gens, on=["ttext", "gstart"], how="left") if "gstart" in obs else \
        obs.merge(gens[["ttext", "cid"]], on="ttext", how="left")
    obs["cid"] = o["cid"].to_numpy()
    if len(exp) == 0:
        exp["cid"] = np.zeros(0, dtype=np.int64)
        return
    left = pd.DataFrame({"i": np.arange(len(exp)), "ttext": exp["ttext"].to_numpy(),
                         "t": exp["ts"].to_numpy() + SKEW_NS}).sort_values("t")
    right = gens.rename(columns={"gstart": "t"})[["ttext", "t", "cid"]].sort_values("t")
    right["t"] = right["t"].astype(np.int64)
    m = pd.merge_asof(left, right, on="t", by="ttext", direction="backward")
    cid = np.full(len(exp), -1, dtype=np.int64)
    cid[m["i"].to_numpy()] = m["cid"].fillna(-1).to_numpy().astype(np.int64)
    # a tuple the observed side never had before: expected-only connections, one per tuple
    lone = cid < 0
    if lone.any():
        extra = pd.factorize(exp["ttext"].to_numpy()[lone])[0] + len(gens)
        cid[lone] = extra
    exp["cid"] = cid


def _pair(exp: pd.DataFrame, obs: pd.DataFrame, e_idx: np.ndarray, o_idx: np.ndarray,
          keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Pair rows (positions ``e_idx``/``o_idx``) with equal keys, k-th with k-th in time order."""
    if len(e_idx) == 0 or len(o_idx) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a = exp.iloc[e_idx][keys + ["ts"]].copy()
    a["pos"] = e_idx
    b = obs.iloc[o_idx][keys + ["ts"]].copy()
    b["pos"] = o_idx
    a = a.sort_values(["ts", "pos"])
    b = b.sort_values(["ts", "pos"])
    a["k"] = a.groupby(keys, sort=False).cumcount()
    b["k"] = b.groupby(keys, sort=False).cumcount()
    m = a.merge(b, on=keys + ["k"], suffixes=("_e", "_o"))
    return m["pos_e"].to_numpy().astype(np.int64), m["pos_o"].to_numpy().astype(np.int64)


# =========================================================================== fields

class _Cols:
    """Column values of one side's compared rows, with IPv6 address keys made comparable
    across the two tables (``remap``)."""

    def __init__(self, table: PacketTable, rows: np.ndarray, remap=None):
        self.t, self.rows, self.remap = table, rows, remap
        self._cache: dict = {}

    def __getitem__(self, name: str) -> np.ndarray:
        v = self._cache.get(name)
        if v is None:
            v = self.t.take(name, self.rows)
            if name in _ADDR_COLS and self.remap is not None:
                v = self.remap(v)
            self._cache[name] = v
        return v


def _opt_hash(table: PacketTable, rows: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each row's raw TCP option bytes (0 for none)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.uint64)
    hl = np.maximum(table["tcp_hlen"].astype(np.int64) - 20, 0)
    ends = np.cumsum(hl)
    starts = ends - hl
    ln = hl[rows]
    total = int(ln.sum())
    if total == 0:
        return np.zeros(len(rows), dtype=np.uint64)
    pos = np.arange(total) - np.repeat(np.cumsum(ln) - ln, ln)
    idx = np.repeat(starts[rows], ln) + pos
    b = table.opt_bytes[idx].astype(np.uint64) + np.uint64(1)
    mult = np.uint64(0x100000001B3) ** (pos.astype(np.uint64) + np.uint64(1))
    seg = np.repeat(np.arange(len(rows)), ln)
    out = np.zeros(len(rows), dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.add.at(out, seg, b * mult)
    return out


def _flags_text(v: int) -> str:
    names = "FSRPAUECN"
    s = "".join(names[i] for i in range(9) if v >> i & 1)
    return s or "none"


def _fmt(kind: str, t: PacketTable, vals: tuple, row: int):
    v = vals[0]
    if kind == "mac":
        return mac_str(int(v)) if v else "none"
    if kind == "addr":
        return t.addr_str(int(v)) or "none"
    if kind == "df":
        return "DF" if int(v) & 0x4000 else "no DF"
    if kind == "csum":
        return _CSUM_NAMES.get(int(v), str(v))
    if kind == "flags":
        return _flags_text(int(v))
    if kind == "hex":
        return f"0x{int(v):x}"
    if kind == "tun":
        return _TUN_NAMES.get(int(v), str(v))
    if kind == "ts":
        return f"{int(vals[1])}/{int(vals[2])}" if int(v) >> 8 & 1 else "none"
    if kind == "toa":
        if not int(vals[0]):
            return "none"
        return f"kind {int(vals[0])} len {int(vals[1])} {t.addr_str(int(vals[3]))}:{int(vals[2])}"
    if kind == "opts":
        return t.tcp_option_bytes(row).hex() or "none"
    if kind == "icmp":
        return f"{int(vals[0])}/{int(vals[1])}"
    if kind == "outer_id":
        return int(v)
    return int(v)


def _compare(E: _Cols, O: _Cols, beyond: np.ndarray, e_rows: np.ndarray, o_rows: np.ndarray):
    """Per field, the pairs where it differs (boolean array per field name) and the values."""
    n = len(e_rows)
    out = {}
    e_tcp = E["ip_proto"] == 6
    e_icmp = np.isin(E["ip_proto"], (1, 58))
    tun_any = (E["tun"] > 0) | (O["tun"] > 0)
    for name, kind, cols in FIELDS:
        if kind == "opts":
            a, b = _opt_hash(E.t, e_rows), _opt_hash(O.t, o_rows)
            d = (a != b) & (e_tcp | (O["ip_proto"] == 6))
        elif kind == "csum":
            a, b = E[cols[0]].astype(np.int64), O[cols[0]].astype(np.int64)
            a = np.where(a == Csum.PARTIAL, Csum.OK, a)
            b = np.where(b == Csum.PARTIAL, Csum.OK, b)
            skip = np.isin(a, (Csum.UNVERIFIED, Csum.NA)) | np.isin(b, (Csum.UNVERIFIED, Csum.NA))
            d = (a != b) & ~skip
        elif kind == "df":
            d = (E[cols[0]] & 0x4000) != (O[cols[0]] & 0x4000)
        elif kind == "outer_id":
            both_df = ((E["out_frag"] & 0x4000) != 0) & ((O["out_frag"] & 0x4000) != 0)
            d = (E["out_id"] != O["out_id"]) & both_df
        elif kind == "ts":
            pa, pb = (E["tcp_opts"] >> 8) & 1, (O["tcp_opts"] >> 8) & 1
            d = (pa != pb) | ((pa == 1) & ((E["tcp_tsval"] != O["tcp_tsval"]) | (E["tcp_tsecr"] != O["tcp_tsecr"])))
        elif kind == "icmp":
            d = ((E["icmp_type"] != O["icmp_type"]) | (E["icmp_code"] != O["icmp_code"])) & \
                (e_icmp | np.isin(O["ip_proto"], (1, 58)))
        elif kind == "mac":
            a, b = E[cols[0]], O[cols[0]]
            d = (a != b) & (a != 0) & (b != 0)      # a link type without this address (SLL)
        else:
            d = np.zeros(n, dtype=bool)
            for c in cols:
                d |= E[c] != O[c]
        if name in _BEYOND_SKIP:
            d &= ~beyond
        if name.startswith("outer.") or name == "tunnel.flags":
            d &= tun_any
        out[name] = d
    return out


# =========================================================================== diff

def diff(expected_paths: Sequence[str], observed_paths: Sequence[str], topology=None,
         **reader_kwargs) -> DiffResult:
    """Compare the expected frames with the observed trace (see the module docstring).
    ``topology``: a :class:`Topology`, a path ``-t`` accepts, or None (inferred from the
    observed trace)."""
    exp_paths = [str(p) for p in expected_paths]
    obs_paths = [str(p) for p in observed_paths]
    for p in exp_paths + obs_paths:
        if p == "-":
            raise InputError("-", "diff reads its files twice: give a file, not standard input")
    e_tab = read_table(exp_paths, **reader_kwargs)
    o_tab = read_table(obs_paths, **reader_kwargs)
    topo, topo_name = _topology(topology, o_tab, obs_paths)
    e_side = _replay_side(e_tab, exp_paths) if _is_replay_output(e_tab) else _capture_side(e_tab, exp_paths, topo)
    o_side = _replay_side(o_tab, obs_paths) if _is_replay_output(o_tab) else _capture_side(o_tab, obs_paths, topo)
    E = _frame(e_side)
    O = _frame(o_side)
    if "gstart" not in O:
        # a replay output on the observed side: connections are tuples (times from the rows)
        O["gstart"] = O.groupby("ttext")["ts"].transform("min").to_numpy() if len(O) else []
    E = E[E["ttext"] != ""].reset_index(drop=True)
    O = O[O["ttext"] != ""].reset_index(drop=True)
    _assign_connections(E, O)
    mode_of = dict(o_side.mode)
    for t, m in e_side.mode.items():
        mode_of.setdefault(t, m)
    # which observed rows take part: the expected side's legs and the director's output legs,
    # plus legs foreign to the connection's mode (unexpected wherever they are seen)
    e_legs = set(E["leg"].unique().tolist()) | set(_OUTPUT_LEGS)
    o_mode = O["ttext"].map(lambda t: mode_of.get(t, "")).to_numpy() if len(O) else np.zeros(0, object)
    foreign = np.zeros(len(O), dtype=bool)
    for m in set(o_mode.tolist()):
        sel = o_mode == m
        foreign[sel] = np.isin(O["leg"].to_numpy()[sel], _FOREIGN.get(m, (C_R,)))
    compared_o = np.isin(O["leg"].to_numpy(), list(e_legs)) | foreign
    O = O[compared_o].reset_index(drop=True)
    foreign = foreign[compared_o]

    # ---- pass 1, 2: the same leg
    e_all, o_all = np.arange(len(E)), np.arange(len(O))
    strong = ["cid", "leg", "ka", "kb", "fl", "dig", "plen", "ipid"]
    pe1, po1 = _pair(E, O, e_all, o_all, strong)
    e_left = np.setdiff1d(e_all, pe1)
    o_left = np.setdiff1d(o_all, po1)
    pe2, po2 = _pair(E, O, e_left, o_left, ["cid", "leg", "fl", "dig", "plen"])
    e_left = np.setdiff1d(e_left, pe2)
    o_left = np.setdiff1d(o_left, po2)
    # ---- pass 3: the same packet on another leg
    pe3, po3 = _pair(E, O, e_left, o_left, ["cid", "ka", "kb", "fl", "dig", "plen"])
    e_left = np.setdiff1d(e_left, pe3)
    o_left = np.setdiff1d(o_left, po3)
    # observed leftovers count as unexpected on the output legs and foreign legs only
    o_unexp = o_left[np.isin(O["leg"].to_numpy()[o_left], list(_OUTPUT_LEGS)) | foreign[o_left]]

    # ---- fields of the pairs
    pe = np.concatenate([pe1, pe2, pe3])
    po = np.concatenate([po1, po2, po3])
    e_rows = E["row"].to_numpy()[pe]
    o_rows = O["row"].to_numpy()[po]
    remap = _v6_remap(e_tab, o_tab)
    EC, OC = _Cols(e_tab, e_rows, remap), _Cols(o_tab, o_rows)
    beyond = O["beyond"].to_numpy()[po] | E["beyond"].to_numpy()[pe]
    dif = _compare(EC, OC, beyond, e_rows, o_rows)
    any_dif = np.zeros(len(pe), dtype=bool)
    for d in dif.values():
        any_dif |= d
    wrong = np.zeros(len(pe), dtype=bool)
    wrong[len(pe1) + len(pe2):] = True

    # ---- the capture's edges
    lat = np.abs(O["ts"].to_numpy()[po[~wrong]] - E["ts"].to_numpy()[pe[~wrong]]) if len(pe) else np.zeros(0)
    lat = lat[lat < 1_000_000_000]
    grace = int(max(1_000_000, 4 * (np.percentile(lat, 99) if len(lat) else 0)))
    cov = o_side.coverage
    input_legs = {D_R: (C_D,), D_C: (R_D, R_C)}
    e_leg_arr = E["leg"].to_numpy()
    e_ts = E["ts"].to_numpy()
    miss_edge = np.zeros(len(e_left), dtype=bool)
    for lg in np.unique(e_leg_arr[e_left]).tolist():
        end = cov.get(lg, (None, None))[1]
        sel = e_leg_arr[e_left] == lg
        if end is None:
            continue
        miss_edge[sel] = e_ts[e_left[sel]] + grace > end
    o_leg_arr = O["leg"].to_numpy()
    o_ts = O["ts"].to_numpy()
    unexp_edge = np.zeros(len(o_unexp), dtype=bool)
    for lg in np.unique(o_leg_arr[o_unexp]).tolist():
        spans = [cov[x] for x in input_legs.get(lg, ()) if x in cov]
        if not spans:
            continue
        sel = o_leg_arr[o_unexp] == lg
        t = o_ts[o_unexp[sel]]
        # its input came within the latency before it: outside the input legs' capture?
        unexp_edge[sel] = (t - grace < min(a for a, _ in spans)) | (t > max(b for _, b in spans))
    outside = int(miss_edge.sum() + unexp_edge.sum())
    missing = e_left[~miss_edge]
    unexpected = o_unexp[~unexp_edge]

    # ---- events per connection
    e_cid = E["cid"].to_numpy()
    o_cid = O["cid"].to_numpy()
    ev = []
    dpos = np.flatnonzero(any_dif | wrong)
    ev.append(pd.DataFrame({"cid": e_cid[pe[dpos]], "ts": e_ts[pe[dpos]],
                            "kind": np.where(wrong[dpos], "wrong-leg", "fields"), "i": dpos}))
    ev.append(pd.DataFrame({"cid": e_cid[missing], "ts": e_ts[missing], "kind": "missing", "i": missing}))
    ev.append(pd.DataFrame({"cid": o_cid[unexpected], "ts": o_ts[unexpected], "kind": "unexpected",
                            "i": unexpected}))
    events = pd.concat(ev, ignore_index=True)
    events["ko"] = events["kind"].map(_KIND_ORDER)
    events = events.sort_values(["cid", "ts", "ko", "i"], kind="stable")

    # per-connection counts
    ncid = int(max(e_cid.max() if len(e_cid) else -1, o_cid.max() if len(o_cid) else -1)) + 1
    cnt = {k: np.zeros(ncid, dtype=np.int64) for k in ("matched", "differing", "missing", "unexpected", "wrong_leg")}
    np.add.at(cnt["matched"], e_cid[pe[~wrong]], 1)
    np.add.at(cnt["differing"], e_cid[pe[any_dif & ~wrong]], 1)
    np.add.at(cnt["missing"], e_cid[missing], 1)
    np.add.at(cnt["unexpected"], o_cid[unexpected], 1)
    np.add.at(cnt["wrong_leg"], e_cid[pe[wrong]], 1)
    cid_text = {}
    for t, c in zip(E["ttext"].tolist() + O["ttext"].tolist(), e_cid.tolist() + o_cid.tolist()):
        cid_text.setdefault(c, t)

    ctx = _Ctx(e_side, o_side, E, O, EC, OC, dif, pe, po)
    conns = []
    for c, sub in events.groupby("cid", sort=False):
        c = int(c)
        text = cid_text.get(c, "?")
        first = ctx.event(str(sub["kind"].iat[0]), int(sub["i"].iat[0]))
        conns.append({
            "connection": text, "mode": mode_of.get(text, ""),
            "real_server": o_side.rs.get(text, e_side.rs.get(text, "")),
            "matched": int(cnt["matched"][c]), "differing": int(cnt["differing"][c]),
            "missing": int(cnt["missing"][c]), "unexpected": int(cnt["unexpected"][c]),
            "wrong_leg": int(cnt["wrong_leg"][c]),
            "first": first,
            "missing_packets": [ctx.e_ref(int(i))
                                for i in sub.loc[sub["kind"] == "missing", "i"].head(_MAX_LIST)],
            "unexpected_packets": [ctx.o_ref(int(i))
                                   for i in sub.loc[sub["kind"] == "unexpected", "i"].head(_MAX_LIST)],
        })
    conns.sort(key=lambda x: (x["first"]["ts_ns"], x["connection"]))
    all_cids = set(e_cid.tolist()) | set(o_cid.tolist())
    summary = {
        "connections": len(all_cids), "same": len(all_cids) - len(conns), "different": len(conns),
        "expected_packets": int(len(E)), "observed_packets": int(len(O)),
        "matched": int((~wrong).sum()), "differing": int((any_dif & ~wrong).sum()),
        "missing": int(len(missing)), "unexpected": int(len(unexpected)), "wrong_leg": int(wrong.sum()),
        "outside_capture": outside, "grace_ns": grace,
    }
    return DiffResult(exp_paths, obs_paths, topo_name, summary, conns)


def _topology(topology, o_tab: PacketTable, obs_paths: list[str]) -> tuple[Topology, str]:
    if isinstance(topology, Topology):
        return topology, topology.source or "given"
    if topology is not None:
        from ..topology import load_topology
        topo = load_topology(str(topology))
        return topo, str(topology)
    from ..topology.infer import infer_topology
    try:
        return infer_topology(o_tab, source=" ".join(obs_paths)), "inferred"
    except ValueError as e:
        raise InputError(", ".join(obs_paths), f"cannot infer a topology: {e} (give one with -t)") from None


def _v6_remap(e_tab: PacketTable, o_tab: PacketTable):
    """A function mapping the expected table's IPv6 keys to the observed table's (addresses
    the observed table never saw get keys of their own)."""
    if len(e_tab.addrs6) <= 1:
        return None
    o_index = {b: i for i, b in enumerate(o_tab.addrs6)}
    nxt = len(o_tab.addrs6)
    lut = np.zeros(len(e_tab.addrs6), dtype=np.uint64)
    extra = {}
    for i, b in enumerate(e_tab.addrs6):
        if i == 0:
            continue
        j = o_index.get(b)
        if j is None:
            j = extra.setdefault(b, nxt + len(extra))
        lut[i] = np.uint64(j)
    flag = np.uint64(1 << 63)

    def remap(v: np.ndarray) -> np.ndarray:
        v6 = (v & flag) != 0
        if not v6.any():
            return v
        out = v.copy()
        out[v6] = lut[(v[v6] & ~flag).astype(np.int64)] | flag
        return out
    return remap


class _Ctx:
    """Turns event indexes into the JSON records (only for the connections reported)."""

    def __init__(self, e_side, o_side, E, O, EC, OC, dif, pe, po):
        self.es, self.os, self.E, self.O = e_side, o_side, E, O
        self.EC, self.OC, self.dif, self.pe, self.po = EC, OC, dif, pe, po

    def _ref(self, side: _Side, df: pd.DataFrame, i: int) -> dict:
        t = side.table
        row = int(df["row"].iat[i])
        inp = int(t["input"][row])
        v = t.vantages[int(t["iface"][row])]
        return {"file": side.paths[inp], "frame": int(t["frame"][row]), "leg": LEGS[int(df["leg"].iat[i])],
                "vantage": v.name, "packet": _describe(t, row)}

    def e_ref(self, i: int) -> dict:
        return self._ref(self.es, self.E, i)

    def o_ref(self, i: int) -> dict:
        return self._ref(self.os, self.O, i)

    def event(self, kind: str, i: int) -> dict:
        if kind in ("fields", "wrong-leg"):
            e, o = int(self.pe[i]), int(self.po[i])
            fields = []
            er, orow = int(self.E["row"].iat[e]), int(self.O["row"].iat[o])
            for name, fkind, cols in FIELDS:
                if not self.dif[name][i]:
                    continue
                ev = tuple(self.EC[c][i] for c in cols) or (0,)
                ov = tuple(self.OC[c][i] for c in cols) or (0,)
                fields.append({"field": name, "expected": _fmt(fkind, self.es.table, ev, er),
                               "observed": _fmt(fkind, self.os.table, ov, orow)})
            return {"kind": kind, "leg": LEGS[int(self.E["leg"].iat[e])], "ts_ns": int(self.E["ts"].iat[e]),
                    "expected": self.e_ref(e), "observed": self.o_ref(o), "fields": fields}
        if kind == "missing":
            return {"kind": kind, "leg": LEGS[int(self.E["leg"].iat[i])], "ts_ns": int(self.E["ts"].iat[i]),
                    "expected": self.e_ref(i), "observed": None, "fields": []}
        return {"kind": kind, "leg": LEGS[int(self.O["leg"].iat[i])], "ts_ns": int(self.O["ts"].iat[i]),
                "expected": None, "observed": self.o_ref(i), "fields": []}


def _describe(t: PacketTable, row: int) -> str:
    """One line about a packet: addresses, ports, flags, seq/ack, length."""
    proto = int(t["ip_proto"][row])
    src, dst = t.addr_str(int(t["ip_src"][row])), t.addr_str(int(t["ip_dst"][row]))
    if proto == 6:
        return (f"TCP {src}:{int(t['sport'][row])} > {dst}:{int(t['dport'][row])} "
                f"{_flags_text(int(t['tcp_flags'][row]))} seq={int(t['tcp_seq'][row])} "
                f"ack={int(t['tcp_ack'][row])} len={int(t['payload_len'][row])}")
    if proto == 17:
        return f"UDP {src}:{int(t['sport'][row])} > {dst}:{int(t['dport'][row])} len={int(t['payload_len'][row])}"
    if proto in (1, 58):
        ty = int(t.take("icmp_type", np.array([row]))[0])
        co = int(t.take("icmp_code", np.array([row]))[0])
        return f"ICMP {src} > {dst} type {ty} code {co}"
    return f"IP proto {proto} {src} > {dst}"
