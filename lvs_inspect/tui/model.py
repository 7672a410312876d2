"""What the screens show, derived from one :class:`~lvs_inspect.checks.engine.Analysis`.

Built once per analysis in a thread worker (never on the UI thread), whole columns at a time:
nothing here holds a Python object per packet or per connection. Rows are formatted only when a
screen draws them (:meth:`Connections.row`, :meth:`Ladder.line`...). No Textual here: the model is
tested on its own.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..capture.schema import Csum, Tun
from ..capture.table import PacketTable, mac_str
from ..checks.engine import Analysis, director_bytes
from ..checks.finding import Finding, Severity
from ..flows.legs import C_D, C_R, D_C, D_R, LEGS, MODE_CODES, MODES, OTHER, R_C, R_D
from ..report.frames import tcp_flag_text

# ---------------------------------------------------------------------------------- leg glyphs

#: what a leg of a connection looks like, from best to worst
NA, NOT_CAPTURED, MISSING, SEEN, RIGHT, WRONG = range(6)
GLYPHS = {NA: " ", NOT_CAPTURED: "·", MISSING: "○", SEEN: "●", RIGHT: "✓", WRONG: "✗"}
GLYPH_NAMES = {NOT_CAPTURED: "not captured", MISSING: "missing", SEEN: "seen", RIGHT: "rewritten right",
               WRONG: "wrong"}
#: the legs of each mode, in the order a packet and its answer travel them
MODE_LEGS = {
    "": (C_D, D_R, R_D, D_C),
    "nat": (C_D, D_R, R_D, D_C),
    "fullnat": (C_D, D_R, R_D, D_C),
    "dr": (C_D, D_R, R_C),
    "tun": (C_D, D_R, R_C),
}
#: legs the director writes (their packets are its rewrites)
DIRECTOR_OUT = (D_R, D_C)
LEG_ARROWS = {C_D: "C→D", D_R: "D→R", R_D: "R→D", D_C: "D→C", R_C: "R→C", C_R: "C→R", OTHER: "?"}


def _leg_column(leg: int) -> str:
    return "pk_" + LEGS[leg].replace("-", "_")


def _slot_of(mode: str, leg: int) -> int | None:
    """The glyph slot a leg is drawn in for a mode; a packet on a leg the mode does not have (a
    bypass) marks the leg it should have taken."""
    legs = MODE_LEGS[mode]
    if leg in legs:
        return legs.index(leg)
    if leg == C_R:
        return legs.index(C_D)
    if leg == R_C:                       # NAT/FullNAT reply that skipped the director
        return legs.index(R_D)
    return None


# ---------------------------------------------------------------------------------- labels

def addr_port(table: PacketTable, key: int, port: int) -> str:
    a = table.addr_str(int(key))
    return f"[{a}]:{port}" if ":" in a else f"{a}:{port}"


PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6"}


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000.0
    return f"{n:,.1f} TB"


# ---------------------------------------------------------------------------------- overview

@dataclass
class ServerShare:
    service: str
    label: str                  # "192.0.2.11" or "192.0.2.11:8080"
    mode: str
    weight: int
    connections: int            # new connections (with a client SYN) it got
    share: float                # of the service's new connections
    expected: float             # what the scheduler and the weights give
    director_bytes: int         # payload bytes the director carried for its connections
    flagged: bool = False       # a finding about its share (SVC1xx) names it


@dataclass
class ServiceInfo:
    label: str
    scheduler: str
    modes: tuple[str, ...]
    connections: int
    new_connections: int
    director_bytes: int
    servers: list[ServerShare] = field(default_factory=list)


@dataclass
class Overview:
    services: list[ServiceInfo]
    counts: dict[str, int]
    worst: Finding | None
    worst_who: str
    frames: int
    decoded: int
    ignored: int
    undecodable: int
    inputs: int
    capture_points: int
    connections: int
    complete: int
    failed: int
    director_bytes: int
    topology: str | None


def _rs_labels(analysis: Analysis) -> list[str]:
    """The engine's label of each real server (the port only where it differs from the service's)."""
    ep = analysis.flows.endpoints
    out = []
    for si, rs in ep.real_servers:
        port = "" if rs.port in (0, ep.services[si].port) else f":{rs.port}"
        out.append(f"{rs.ip}{port}")
    return out


def build_overview(analysis: Analysis) -> Overview:
    flows, result = analysis.flows, analysis.result
    ep, c = flows.endpoints, flows.connections
    labels = _rs_labels(analysis)
    n_rs = len(ep.real_servers)
    rs = c["rs"].to_numpy().astype(np.int64) if len(c) else np.zeros(0, np.int64)
    svc = c["svc"].to_numpy().astype(np.int64) if len(c) else np.zeros(0, np.int64)
    new = (c["c_syn"].to_numpy() > 0) if len(c) else np.zeros(0, bool)
    req, rep = director_bytes(c)
    carried = (np.asarray(req, dtype=np.int64) + np.asarray(rep, dtype=np.int64)) if len(c) \
        else np.zeros(0, np.int64)
    new_by_rs = np.bincount(rs[new & (rs >= 0)], minlength=n_rs) if n_rs else np.zeros(0, np.int64)
    bytes_by_rs = np.bincount(rs[rs >= 0], weights=carried[rs >= 0], minlength=n_rs) if n_rs else np.zeros(0)
    flagged = {f.real_server for f in analysis.findings if f.code.startswith("SVC1") and f.real_server}
    services = []
    for si, s in enumerate(ep.services):
        members = [i for i, (sj, _) in enumerate(ep.real_servers) if sj == si]
        total_new = int(sum(new_by_rs[i] for i in members))
        weights = [ep.real_servers[i][1].weight for i in members]
        live = sum(1 for w in weights if w > 0)
        wsum = sum(w for w in weights if w > 0)
        servers = []
        for i, w in zip(members, weights):
            if s.scheduler == "rr":
                expected = (1.0 / live) if (w > 0 and live) else 0.0
            else:
                expected = (w / wsum) if (w > 0 and wsum) else 0.0
            servers.append(ServerShare(
                service=s.key, label=labels[i], mode=MODES[int(ep.rs_mode[i])] or "?", weight=w,
                connections=int(new_by_rs[i]), share=(new_by_rs[i] / total_new) if total_new else 0.0,
                expected=expected, director_bytes=int(bytes_by_rs[i]), flagged=labels[i] in flagged))
        in_svc = svc == si
        services.append(ServiceInfo(
            label=s.key, scheduler=s.scheduler,
            modes=tuple(sorted({MODES[int(ep.rs_mode[i])] for i in members} - {""})),
            connections=int(in_svc.sum()), new_connections=total_new,
            director_bytes=int(carried[in_svc].sum()), servers=servers))
    worst = result.findings[0] if result.findings else None
    acct = result.inputs
    return Overview(
        services=services, counts=result.counts(), worst=worst, worst_who=finding_who(worst) if worst else "",
        frames=sum(i.frames for i in acct), decoded=sum(i.decoded for i in acct),
        ignored=sum(i.ignored for i in acct), undecodable=sum(i.undecodable for i in acct), inputs=len(acct),
        capture_points=len(analysis.table.vantages), connections=result.summary.connections,
        complete=result.summary.complete, failed=result.summary.failed,
        director_bytes=result.summary.director_bytes, topology=result.topology)


def finding_who(f: Finding) -> str:
    """Who a finding is about: the real server and/or the MAC, else the connection or service."""
    parts = []
    if f.real_server:
        parts.append(f"real server {f.real_server}")
    if f.mac:
        parts.append(f"MAC {f.mac}")
    if not parts and f.connection:
        parts.append(f"connection {f.connection}")
    if not parts and f.service:
        parts.append(f"service {f.service}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------- frame index

class FrameIndex:
    """(input, frame number) -> table row, for the frames findings cite."""

    def __init__(self, table: PacketTable):
        n = len(table)
        if n:
            key = (table["input"].astype(np.int64) << 32) | table["frame"].astype(np.int64)
            self._order = np.argsort(key, kind="stable")
            self._keys = key[self._order]
        else:
            self._order = self._keys = np.zeros(0, np.int64)

    def rows(self, refs) -> np.ndarray:
        """Rows of the FrameRefs found in the table (unknown ones left out), in the refs' order."""
        if not refs or not len(self._keys):
            return np.zeros(0, np.int64)
        want = np.array([(r.input << 32) | r.frame for r in refs], dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._keys, want), len(self._keys) - 1)
        hit = self._keys[pos] == want
        return self._order[pos[hit]]

    def lookup(self, inputs: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Rows of (input, frame) pairs given as arrays; -1 where the table has no such frame."""
        want = (np.asarray(inputs, dtype=np.int64) << 32) | np.asarray(frames, dtype=np.int64)
        out = np.full(len(want), -1, dtype=np.int64)
        if not len(want) or not len(self._keys):
            return out
        pos = np.minimum(np.searchsorted(self._keys, want), len(self._keys) - 1)
        hit = self._keys[pos] == want
        out[hit] = self._order[pos[hit]]
        return out

    def row(self, ref) -> int | None:
        r = self.rows([ref])
        return int(r[0]) if len(r) else None


# ---------------------------------------------------------------------------------- findings

FINDING_SORTS = ("severity", "code", "real server", "count", "mode")


@dataclass
class Filter:
    """``code:DR1 sev:warning mode:dr rs:192.0.2.11 state:refused problems`` plus free words.

    ``code`` is a prefix, ``sev`` a minimum severity, ``mode``/``rs``/``state`` exact, ``problems``
    keeps connections with a wrong leg, other words must all appear in the row's text."""
    codes: tuple[str, ...] = ()
    severity: Severity | None = None
    modes: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    problems: bool = False
    words: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()          # tokens that could not be read

    @classmethod
    def parse(cls, text: str) -> "Filter":
        codes, modes, servers, states, words, errors = [], [], [], [], [], []
        severity, problems = None, False
        for tok in text.split():
            key, sep, value = tok.partition(":")
            key = key.lower()
            if not sep:
                if tok.lower() in ("problems", "wrong"):
                    problems = True
                else:
                    words.append(tok.lower())
                continue
            if key == "code":
                codes.extend(v.upper() for v in value.split(",") if v)
            elif key in ("sev", "severity"):
                try:
                    severity = Severity.parse(value.lower().rstrip("s"))
                except KeyError:
                    errors.append(tok)
            elif key == "mode":
                for v in value.lower().split(","):
                    if v in MODE_CODES and v:
                        modes.append(v)
                    elif v:
                        errors.append(tok)
            elif key in ("rs", "server", "real_server"):
                servers.extend(v for v in value.split(",") if v)
            elif key == "state":
                states.extend(v for v in value.lower().split(",") if v)
            else:
                errors.append(tok)
        return cls(tuple(codes), severity, tuple(modes), tuple(servers), tuple(states), problems,
                   tuple(words), tuple(errors))

    def with_modes(self, modes: tuple[str, ...]) -> "Filter":
        return Filter(self.codes, self.severity, modes, self.servers, self.states, self.problems, self.words,
                      self.errors)

    def text(self) -> str:
        parts = []
        if self.codes:
            parts.append("code:" + ",".join(self.codes))
        if self.severity is not None:
            parts.append(f"sev:{self.severity}")
        if self.modes:
            parts.append("mode:" + ",".join(self.modes))
        if self.servers:
            parts.append("rs:" + ",".join(self.servers))
        if self.states:
            parts.append("state:" + ",".join(self.states))
        if self.problems:
            parts.append("problems")
        parts.extend(self.words)
        return " ".join(parts)


def set_filter_modes(text: str, modes: tuple[str, ...]) -> str:
    """``text`` with its mode: tokens replaced by ``modes`` (none: removed)."""
    kept = [t for t in text.split() if not t.lower().startswith("mode:")]
    if modes:
        kept.append("mode:" + ",".join(modes))
    return " ".join(kept)


def set_filter_severity(text: str, severity: str | None) -> str:
    kept = [t for t in text.split() if not re.match(r"(?i)sev(erity)?:", t)]
    if severity:
        kept.append(f"sev:{severity}")
    return " ".join(kept)


class Findings:
    """The findings with what the Findings screen filters and sorts on."""

    def __init__(self, analysis: Analysis, rules: dict, frame_index: FrameIndex):
        self.analysis = analysis
        self.all: list[Finding] = list(analysis.findings)
        self.rules = rules
        ep = analysis.flows.endpoints
        present = {MODES[int(m)] for m in ep.rs_mode} - {""}
        mode_of_rs = {label: MODES[int(ep.rs_mode[i])] for i, label in enumerate(_rs_labels(analysis))}
        self.modes: list[tuple[str, ...]] = []
        for f in self.all:
            if f.real_server and f.real_server in mode_of_rs and mode_of_rs[f.real_server]:
                self.modes.append((mode_of_rs[f.real_server],))
            else:
                rule = rules.get(f.code)
                ms = tuple(m for m in (rule.modes if rule else ()) if m in present) or tuple(sorted(present))
                self.modes.append(ms)
        self._frame_index = frame_index
        self.view: list[int] = list(range(len(self.all)))

    def apply(self, flt: Filter, sort: str = "severity", reverse: bool = False) -> list[int]:
        keep = []
        for i, f in enumerate(self.all):
            if flt.codes and not any(f.code.upper().startswith(c) for c in flt.codes):
                continue
            if flt.severity is not None and f.severity < flt.severity:
                continue
            if flt.modes and not set(flt.modes) & set(self.modes[i]):
                continue
            if flt.servers and not any(s == (f.real_server or "") or s == (f.mac or "") for s in flt.servers):
                continue
            if flt.words:
                hay = " ".join(str(x) for x in (f.code, f.name, f.title, f.message, f.real_server, f.mac,
                                                f.connection, f.service) if x).lower()
                if not all(w in hay for w in flt.words):
                    continue
            keep.append(i)
        key = {
            "severity": lambda i: (-int(self.all[i].severity), self.all[i].code, i),
            "code": lambda i: (self.all[i].code, -int(self.all[i].severity), i),
            "real server": lambda i: (self.all[i].real_server or "~", -int(self.all[i].severity), i),
            "count": lambda i: (-self.all[i].count, -int(self.all[i].severity), i),
            "mode": lambda i: (",".join(self.modes[i]), -int(self.all[i].severity), i),
        }[sort]
        keep.sort(key=key, reverse=reverse)
        self.view = keep
        return keep

    def frame_rows(self, f: Finding) -> np.ndarray:
        return self._frame_index.rows(f.frames)

    def connection_of(self, f: Finding) -> int | None:
        """The connection a finding is about: that of its first frame on a connection."""
        rows = self.frame_rows(f)
        conn = self.analysis.flows.conn[rows] if len(rows) else np.zeros(0, np.int32)
        on = conn[conn >= 0]
        return int(on[0]) if len(on) else None


# ---------------------------------------------------------------------------------- connections

CONN_SORTS = ("time", "problems", "state", "real server", "packets", "duration")


class Connections:
    """Every stitched connection, with a glyph per leg, filtered and sorted as index arrays."""

    def __init__(self, analysis: Analysis, findings: list[Finding], frame_index: FrameIndex):
        self.analysis = analysis
        t, f = analysis.table, analysis.flows
        c = f.connections
        self.n = n = len(c)
        self.table = t
        ep = f.endpoints
        self.rs_labels = _rs_labels(analysis)

        def col(name, dtype=np.int64):
            return c[name].to_numpy().astype(dtype) if n else np.zeros(0, dtype)

        self.cip, self.cport = col("cip", np.uint64), col("cport")
        self.vip, self.vport, self.proto = col("vip", np.uint64), col("vport"), col("proto")
        self.rs, self.svc, self.mode = col("rs"), col("svc"), col("mode")
        self.first_ns, self.last_ns = col("first_ns"), col("last_ns")
        self.state = c["state"].to_numpy().astype(str) if n else np.zeros(0, str)
        self.history = c["history"].to_numpy().astype(str) if n else np.zeros(0, str)
        pk = {leg: (col(_leg_column(leg)) if _leg_column(leg) in c else np.zeros(n, np.int64))
              for leg in (C_D, D_R, R_D, D_C, R_C, C_R)}
        self.packets = sum(pk.values()) if n else np.zeros(0, np.int64)
        # which legs any capture point saw at all: a leg nobody captured is "not captured", not missing
        seen_legs = np.bincount(f.leg, minlength=len(LEGS)) > 0 if len(f.leg) else np.zeros(len(LEGS), bool)
        self.captured = seen_legs
        glyph = np.full((n, 4), NA, dtype=np.uint8)
        for code, mode in enumerate(MODES):
            rows = np.flatnonzero(self.mode == code)
            if not len(rows):
                continue
            for slot, leg in enumerate(MODE_LEGS[mode]):
                has = pk[leg][rows] > 0
                base = np.uint8(RIGHT if leg in DIRECTOR_OUT else SEEN)
                absent = np.uint8(MISSING if seen_legs[leg] else NOT_CAPTURED)
                glyph[rows, slot] = np.where(has, base, absent)
            # a packet that took a leg the mode does not have went the wrong way
            bypass = pk[C_R][rows] > 0
            glyph[rows[bypass], MODE_LEGS[mode].index(C_D)] = WRONG
            if R_D in MODE_LEGS[mode]:
                back = pk[R_C][rows] > 0
                glyph[rows[back], MODE_LEGS[mode].index(R_D)] = WRONG
        # legs the findings' frames were on
        self.codes: dict[int, list[str]] = {}
        self.row_findings: dict[int, list[int]] = {}
        for fi, fnd in enumerate(findings):
            rows = frame_index.rows(fnd.frames)
            legs_of: dict[int, set[int]] = {}
            for r in rows.tolist():
                self.row_findings.setdefault(r, []).append(fi)
                cid = int(f.conn[r])
                if cid < 0:
                    continue
                codes = self.codes.setdefault(cid, [])
                if fnd.code not in codes:
                    codes.append(fnd.code)
                legs_of.setdefault(cid, set()).add(int(f.leg[r]))
            for cid, legs in legs_of.items():
                # a finding citing a packet before and after the director is about the rewrite
                out = legs & set(DIRECTOR_OUT)
                for leg in (out or legs):
                    slot = _slot_of(MODES[int(self.mode[cid])], leg)
                    if slot is not None:
                        glyph[cid, slot] = WRONG
        self.glyph = glyph
        self.wrong = (glyph == WRONG).any(axis=1) if n else np.zeros(0, bool)
        self.view = np.arange(n)
        # rows of each connection, in time order (one sort, then slices)
        on = np.flatnonzero(f.conn >= 0)
        order = on[np.lexsort((t["ts_ns"][on], f.conn[on]))] if len(on) else on
        self._rows = order
        self._starts = np.searchsorted(f.conn[order], np.arange(n + 1)) if n else np.zeros(1, np.int64)
        self._client_text: np.ndarray | None = None
        self._ep = ep

    # ---- per connection
    def rows_of(self, cid: int) -> np.ndarray:
        return self._rows[self._starts[cid]:self._starts[cid + 1]]

    def client(self, cid: int) -> str:
        return addr_port(self.table, self.cip[cid], int(self.cport[cid]))

    def service(self, cid: int) -> str:
        proto = int(self.proto[cid])
        return f"{addr_port(self.table, self.vip[cid], int(self.vport[cid]))}/{PROTO.get(proto, proto)}"

    def server(self, cid: int) -> str:
        r = int(self.rs[cid])
        return self.rs_labels[r] if r >= 0 else "-"

    def mode_name(self, cid: int) -> str:
        return MODES[int(self.mode[cid])] or "?"

    def legs_text(self, cid: int) -> str:
        return "".join(GLYPHS[int(g)] for g in self.glyph[cid])

    def find(self, label: str) -> int | None:
        """The first connection whose client side is ``label`` (``198.51.100.10:50032``)."""
        host, _, port = label.rpartition(":")
        key = self.table.addr_key(host.strip("[]")) if host else None
        if key is None or not port.isdigit():
            return None
        hit = np.flatnonzero((self.cip == np.uint64(key)) & (self.cport == int(port)))
        return int(hit[0]) if len(hit) else None

    # ---- filter and sort
    def _clients(self) -> np.ndarray:
        if self._client_text is None:
            uniq, inv = np.unique(self.cip, return_inverse=True)
            names = np.array([self.table.addr_str(int(k)) for k in uniq] or [""], dtype=object)
            self._client_text = names[inv] if len(uniq) else np.zeros(0, object)
        return self._client_text

    def apply(self, flt: Filter, sort: str = "time", reverse: bool = False) -> np.ndarray:
        keep = np.ones(self.n, dtype=bool)
        if flt.modes:
            keep &= np.isin(self.mode, [MODE_CODES[m] for m in flt.modes])
        if flt.servers:
            idx = [i for i, label in enumerate(self.rs_labels) if label in flt.servers]
            keep &= np.isin(self.rs, idx)
        if flt.states:
            keep &= np.isin(self.state, list(flt.states))
        if flt.problems:
            keep &= self.wrong
        if flt.codes:
            ids = [cid for cid, codes in self.codes.items()
                   if any(code.startswith(p) for code in codes for p in flt.codes)]
            keep &= np.isin(np.arange(self.n), ids)
        for w in flt.words:
            names = self._clients()
            hit = np.array([w in s for s in names.tolist()], dtype=bool) if self.n else np.zeros(0, bool)
            if w.isdigit():
                hit |= self.cport == int(w)
            keep &= hit
        idx = np.flatnonzero(keep)
        if sort != "time":
            primary = {
                "problems": lambda: -self.wrong[idx].astype(np.int64),
                "state": lambda: self.state[idx],
                "real server": lambda: self.rs[idx],
                "packets": lambda: -self.packets[idx],
                "duration": lambda: -(self.last_ns[idx] - self.first_ns[idx]),
            }[sort]()
            idx = idx[np.lexsort((idx, primary))]
        if reverse:
            idx = idx[::-1]
        self.view = idx
        return idx


# ---------------------------------------------------------------------------------- ladder

#: the packet fields a ladder line and its detail show, in order (observed; expected when known)
FIELDS = ("eth.src", "eth.dst", "ip.src", "ip.dst", "ip.ttl", "ip.id", "sport", "dport", "flags", "seq",
          "ack", "len", "mss", "toa", "tunnel", "checksum")


def packet_fields(table: PacketTable, rows: np.ndarray) -> list[dict[str, str]]:
    """The observed fields of a few rows (a ladder detail), as text."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return []

    def take(name):
        return table.take(name, rows).tolist()

    cols = {name: take(name) for name in (
        "eth_src", "eth_dst", "ip_src", "ip_dst", "ip_ttl", "ip_id", "ip_proto", "sport", "dport", "tcp_flags",
        "tcp_seq", "tcp_ack", "payload_len", "tcp_mss", "toa_kind", "toa_addr", "toa_port", "tun", "out_src",
        "out_dst", "l4_csum", "ip_ver")}
    out = []
    for i in range(len(rows)):
        c = {k: v[i] for k, v in cols.items()}
        d = {
            "eth.src": mac_str(c["eth_src"]) if c["eth_src"] else "",
            "eth.dst": mac_str(c["eth_dst"]) if c["eth_dst"] else "",
            "ip.src": table.addr_str(c["ip_src"]), "ip.dst": table.addr_str(c["ip_dst"]),
            "ip.ttl": str(c["ip_ttl"]) if c["ip_ver"] else "",
            "ip.id": str(c["ip_id"]) if c["ip_ver"] == 4 else "",
            "sport": str(c["sport"]) if c["ip_proto"] in (6, 17) else "",
            "dport": str(c["dport"]) if c["ip_proto"] in (6, 17) else "",
            "flags": tcp_flag_text(c["tcp_flags"]) if c["ip_proto"] == 6 else PROTO.get(c["ip_proto"], ""),
            "seq": str(c["tcp_seq"]) if c["ip_proto"] == 6 else "",
            "ack": str(c["tcp_ack"]) if c["ip_proto"] == 6 and c["tcp_flags"] & 0x10 else "",
            "len": str(c["payload_len"]),
            "mss": str(c["tcp_mss"]) if c["tcp_mss"] else "",
            "toa": (f"{table.addr_str(c['toa_addr'])}:{c['toa_port']} (kind {c['toa_kind']})"
                    if c["toa_kind"] else ""),
            "tunnel": (f"{Tun(c['tun']).name} {table.addr_str(c['out_src'])} → {table.addr_str(c['out_dst'])}"
                       if c["tun"] else ""),
            "checksum": Csum(c["l4_csum"]).name.lower() if c["l4_csum"] else "",
        }
        out.append(d)
    return out


def short_flags(flags: int) -> str:
    """``S``, ``SA``, ``A``, ``PA``, ``FA``, ``R``... (tcpdump's letters)."""
    out = ""
    for bit, letter in ((0x02, "S"), (0x01, "F"), (0x04, "R"), (0x08, "P"), (0x10, "A"), (0x20, "U")):
        if flags & bit:
            out += letter
    return out or "."


class Ladder:
    """One connection's packets as observations (the same packet at several capture points is one
    line), in time order. Lines are formatted when drawn."""

    def __init__(self, model: "Model", cid: int):
        self.model = model
        self.cid = cid
        a = model.analysis
        t, f = a.table, a.flows
        rows = model.connections.rows_of(cid)
        self.rows = rows
        obs = f.obs[rows].astype(np.int64) if len(rows) else np.zeros(0, np.int64)
        # observations in order of their first sighting (rows are in time order)
        uniq, first = np.unique(obs, return_index=True)
        order = np.argsort(first, kind="stable")
        self.first = rows[first[order]]                  # representative row of each line
        line_of = np.empty(len(uniq), dtype=np.int64)
        line_of[order] = np.arange(len(uniq))
        self.line_of_row = line_of[np.searchsorted(uniq, obs)] if len(rows) else np.zeros(0, np.int64)
        self.t0 = int(model.connections.first_ns[cid]) if model.connections.n else 0
        self.leg = f.leg[self.first].astype(np.int64) if len(self.first) else np.zeros(0, np.int64)
        self.ts = t["ts_ns"][self.first] if len(self.first) else np.zeros(0, np.int64)
        self.flags = t["tcp_flags"][self.first] if len(self.first) else np.zeros(0, np.int64)
        self.plen = t["payload_len"][self.first] if len(self.first) else np.zeros(0, np.int64)
        self.proto = t["ip_proto"][self.first] if len(self.first) else np.zeros(0, np.int64)
        src = model.expected
        self.expected: dict[int, dict[str, str]] | None = None
        if src is not None and getattr(src, "state", "") == "ready" and len(rows):
            self.expected = src.fields(rows)

    def __len__(self) -> int:
        return len(self.first)

    def line_rows(self, i: int) -> np.ndarray:
        """The table rows of line ``i`` (the observation at each capture point that saw it)."""
        return self.rows[self.line_of_row == i]

    def label(self, i: int) -> str:
        if int(self.proto[i]) == 6:
            s = short_flags(int(self.flags[i]))
        else:
            s = PROTO.get(int(self.proto[i]), str(int(self.proto[i])))
        if self.plen[i]:
            s += f" {int(self.plen[i])}"
        return s

    def findings_at(self, i: int) -> list[int]:
        """Indices (in the analysis' findings) of findings citing a frame of line ``i``."""
        out: list[int] = []
        for r in self.line_rows(i).tolist():
            for fi in self.model.connections.row_findings.get(r, ()):
                if fi not in out:
                    out.append(fi)
        return out

    def frames_text(self, i: int) -> str:
        t = self.model.analysis.table
        rows = self.line_rows(i)
        names = [v.name for v in t.vantages]
        return " ".join(f"{names[int(v)]}#{int(fr)}" for v, fr in zip(t["iface"][rows], t["frame"][rows]))

    def detail(self, i: int) -> list[tuple[str, dict[str, str], dict[str, str] | None]]:
        """Per capture point of line ``i``: (where, observed fields, expected fields or None)."""
        t = self.model.analysis.table
        rows = self.line_rows(i)
        names = [v.name for v in t.vantages]
        fields = packet_fields(t, rows)
        out = []
        for r, fd in zip(rows.tolist(), fields):
            where = f"{names[int(t['iface'][r])]} #{int(t['frame'][r])}"
            exp = self.expected.get(r) if self.expected else None
            out.append((where, fd, exp))
        return out


# ---------------------------------------------------------------------------------- ARP

@dataclass
class Claim:
    ip: str
    ip_kind: str                # vip | real server | director | lip | other
    mac: str
    owner: str                  # who the MAC is: director / real server 192.0.2.11 / unknown
    count: int
    requests: int
    replies: int
    gratuitous: int
    first_ns: int
    last_ns: int
    times: np.ndarray           # timestamps of the claims
    rows: np.ndarray            # table rows
    capture_points: tuple[str, ...]
    leak: bool                  # someone other than its owner claims the address
    conflict: bool              # several MACs claim the address
    note: str = ""


def build_arp(analysis: Analysis) -> list[Claim]:
    """Who claims each address over ARP: every ARP frame's sender (IP, MAC) is a claim (a reply, a
    gratuitous announcement, or a request whose sender address others cache)."""
    t, ep, topo = analysis.table, analysis.flows.endpoints, analysis.topology
    g = t.group("arp")
    rows = g["rows"]
    if not len(rows):
        return []
    spa = g["arp_spa"].astype(np.uint64)
    sha = g["arp_sha"].astype(np.uint64)
    op = g["arp_op"].astype(np.int64)
    gratuitous = g["arp_spa"] == g["arp_tpa"]
    ts = t["ts_ns"][rows]
    iface = t["iface"][rows]
    keep = spa != 0                      # probes (sender 0.0.0.0) claim nothing
    vips = {int(k) for k in ep.svc_vip if k}
    rips = {int(k): i for i, k in enumerate(ep.rs_ip) if k}
    labels = _rs_labels(analysis)
    dir_ips = set()
    for a in topo.director.ips:
        k = t.addr_key(str(a))
        if k:
            dir_ips.add(int(k))
    lips = {int(k) for k in ep.lips}
    dir_macs = {int(m) for m in ep.director_macs} | {int(m) for m in topo.director.all_macs}
    rs_macs = {int(m): labels[i] for i, m in enumerate(ep.rs_mac) if m}
    names = [v.name for v in t.vantages]
    out: list[Claim] = []
    sel = np.flatnonzero(keep)
    if not len(sel):
        return []
    pairs, inv = np.unique(np.stack([spa[sel], sha[sel]], axis=1), axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    macs_per_ip: dict[int, int] = {}
    for ip, _mac in pairs.tolist():
        macs_per_ip[ip] = macs_per_ip.get(ip, 0) + 1
    for k, (ip, mac) in enumerate(pairs.tolist()):
        m = sel[inv == k]
        if ip in vips:
            kind, owned = "vip", mac in dir_macs
        elif ip in rips:
            rs_mac = int(ep.rs_mac[rips[ip]])
            kind, owned = "real server", (mac == rs_mac) if rs_mac else True
        elif ip in dir_ips:
            kind, owned = "director", mac in dir_macs or not dir_macs
        elif ip in lips:
            kind, owned = "lip", mac in dir_macs or not dir_macs
        else:
            kind, owned = "other", True
        if mac in dir_macs:
            owner = "director"
        elif mac in rs_macs:
            owner = f"real server {rs_macs[mac]}"
        else:
            owner = "unknown"
        leak = not owned
        note = ""
        if leak and kind == "vip":
            note = "a real server or another host answers for the VIP" if mac in rs_macs else \
                "a host that is not the director claims the VIP"
        elif leak:
            note = f"claimed by {owner}, not its owner"
        out.append(Claim(
            ip=t.addr_str(ip), ip_kind=kind, mac=mac_str(mac), owner=owner, count=len(m),
            requests=int(((op[m] == 1) & ~gratuitous[m]).sum()), replies=int((op[m] == 2).sum()),
            gratuitous=int((gratuitous[m] & (op[m] == 1)).sum()), first_ns=int(ts[m].min()),
            last_ns=int(ts[m].max()), times=np.sort(ts[m]), rows=rows[m],
            capture_points=tuple(sorted({names[int(v)] for v in iface[m]})), leak=leak,
            conflict=macs_per_ip[ip] > 1, note=note))
    rank = {"vip": 0, "real server": 1, "director": 2, "lip": 3, "other": 4}
    out.sort(key=lambda c: (rank[c.ip_kind], _ip_sort_key(c.ip), c.first_ns, c.mac))
    return out


def _ip_sort_key(text: str):
    import ipaddress
    a = ipaddress.ip_address(text)
    return (a.version, int(a))


def timeline(times: np.ndarray, t0: int, t1: int, width: int) -> list[bool]:
    """Which of ``width`` equal bins of [t0, t1] hold at least one of ``times``."""
    if width <= 0:
        return []
    span = max(t1 - t0, 1)
    bins = np.clip(((times - t0) * width) // span, 0, width - 1).astype(np.int64)
    occupied = np.zeros(width, dtype=bool)
    occupied[bins] = True
    return occupied.tolist()


# ---------------------------------------------------------------------------------- the model

@dataclass
class Model:
    analysis: Analysis
    overview: Overview
    findings: Findings
    connections: Connections
    arp: list[Claim]
    frame_index: FrameIndex
    rules: dict
    expected: object = None            # the forwarder's expected fields (tui.expected), or None
    t0: int = 0                        # first timestamp of the trace
    t1: int = 0

    @cached_property
    def vantage_names(self) -> list[str]:
        return [v.name for v in self.analysis.table.vantages]

    def ladder(self, cid: int) -> Ladder:
        return Ladder(self, cid)

    def frame_label(self, row: int) -> str:
        t = self.analysis.table
        inp = int(t.vantage_inputs()[int(t["iface"][row])])
        path = t.inputs[inp].path
        return f"{path}#{int(t['frame'][row])}" if path != "-" else f"live frame {int(t['frame'][row])}"


def build_model(analysis: Analysis, *, rules: dict | None = None, expected=None) -> Model:
    """Everything the screens need from one analysis (run it in a worker: it sorts whole columns).
    ``expected``: a factory ``analysis -> expected-field source`` (:mod:`.expected`), or None."""
    if rules is None:
        rules = load_rule_index()
    fi = FrameIndex(analysis.table)
    ts = analysis.table["ts_ns"]
    source = expected(analysis) if expected is not None else None
    if source is not None and hasattr(source, "frame_index"):
        source.frame_index = fi
    return Model(analysis=analysis, overview=build_overview(analysis),
                 findings=Findings(analysis, rules, fi),
                 connections=Connections(analysis, analysis.findings, fi),
                 arp=build_arp(analysis), frame_index=fi, rules=rules,
                 expected=source,
                 t0=int(ts.min()) if len(ts) else 0, t1=int(ts.max()) if len(ts) else 0)


def load_rule_index(rule_dirs=()) -> dict:
    """code -> Rule of the bundled rule pack (and extra packs), for the explanations."""
    from ..checks.rules import load_rules
    from ..resources import rules_dir
    try:
        return {r.code: r for r in load_rules([rules_dir(), *rule_dirs])}
    except Exception:       # the explanations are a nicety: the findings already carry message and fix
        return {}
