"""Which hop each packet is on, by addresses, ports, MACs and the capture point."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..capture.table import PacketTable
from ..topology.model import Mode, Topology
from .keys import member

LEGS = ("other", "client-director", "director-rs", "rs-director", "director-client", "rs-client", "client-rs")
LEG_CODES = {name: i for i, name in enumerate(LEGS)}
OTHER, C_D, D_R, R_D, D_C, R_C, C_R = range(len(LEGS))
#: legs whose packets travel from the client toward the server
CLIENT_TO_SERVER = (C_D, D_R, C_R)

MODES = ("", "nat", "dr", "tun", "fullnat")
MODE_CODES = {name: i for i, name in enumerate(MODES)}

ROLES = ("unknown", "client", "director", "rs", "router")
ROLE_CODES = {name: i for i, name in enumerate(ROLES)}

PKTTYPE_OUTGOING = 4


@dataclass
class Endpoints:
    """The topology resolved against one table's address keys (and what the trace taught)."""

    services: list                       # Service objects, index = svc code
    svc_vip: np.ndarray                  # address key of each service's VIP (0 when absent from the table)
    svc_port: np.ndarray
    svc_proto: np.ndarray                # 6, 17, or 0 for any
    real_servers: list                   # (svc index, RealServer), index = rs code
    rs_ip: np.ndarray
    rs_port: np.ndarray
    rs_mode: np.ndarray                  # MODE_CODES
    rs_mac: np.ndarray                   # 0 when unknown
    lips: np.ndarray                     # address keys
    director_macs: np.ndarray
    learned: dict = field(default_factory=dict)   # what was learned from the trace, for reports

    def rs_label(self, i: int) -> str:
        return str(self.real_servers[i][1].ip) if i >= 0 else ""


def _key(table: PacketTable, addr) -> int:
    k = table.addr_key(str(addr))
    return 0 if k is None else int(k)


def _proto_code(service) -> int:
    p = service.protocol.value if service.protocol is not None else None
    return {"tcp": 6, "udp": 17}.get(p, 0)


def resolve(table: PacketTable, topo: Topology) -> Endpoints:
    services = [s for s in topo.services if s.fwmark is None and s.vip is not None]
    rss = [(si, rs) for si, s in enumerate(services) for rs in s.real_servers]
    lips = {_key(table, a) for a in topo.lips} - {0}
    return Endpoints(
        services=services,
        svc_vip=np.array([_key(table, s.vip) for s in services], dtype=np.uint64),
        svc_port=np.array([s.port for s in services], dtype=np.int64),
        svc_proto=np.array([_proto_code(s) for s in services], dtype=np.int64),
        real_servers=rss,
        rs_ip=np.array([_key(table, rs.ip) for _, rs in rss], dtype=np.uint64),
        rs_port=np.array([rs.port for _, rs in rss], dtype=np.int64),
        rs_mode=np.array([MODE_CODES[Mode(rs.mode).value] for _, rs in rss], dtype=np.uint8),
        rs_mac=np.array([int(rs.mac) if rs.mac is not None else 0 for _, rs in rss], dtype=np.uint64),
        lips=np.array(sorted(lips), dtype=np.uint64),
        director_macs=np.array(sorted(int(m) for m in topo.director.all_macs), dtype=np.uint64),
    )


def _match(addr, port, proto, keys, ports, protos) -> np.ndarray:
    """Index of the first (exact port before port 0) endpoint matching each row, -1 if none."""
    out = np.full(len(addr), -1, dtype=np.int16)
    order = sorted(range(len(keys)), key=lambda i: ports[i] == 0)
    for i in order:
        if keys[i] == 0:
            continue
        idx = np.flatnonzero(addr == keys[i])
        if ports[i]:
            idx = idx[port[idx] == ports[i]]
        if protos[i]:
            idx = idx[proto[idx] == protos[i]]
        out[idx[out[idx] < 0]] = i
    return out


def _values(v, idx):
    """A put() value at rows idx: a scalar, a full column, or (lookup, index column)."""
    if isinstance(v, tuple):
        lookup, index = v
        return lookup[index[idx]]
    return v if np.isscalar(v) else v[idx]


def classify_legs(table: PacketTable, topo: Topology):
    """Return (leg, mode, svc, rs, role, endpoints) arrays, one entry per row."""
    ep = resolve(table, topo)
    n = len(table)
    ip_src, ip_dst = table["ip_src"], table["ip_dst"]
    sport, dport = table["sport"], table["dport"]
    proto = table["ip_proto"]
    eth_src, eth_dst = table["eth_src"], table["eth_dst"]
    status = table["status"]
    l4ok = (status < 10) & member(proto, (6, 17)) & ((table["ip_frag"] & 0x1FFF) == 0)
    not_l4 = np.flatnonzero(~l4ok)
    del l4ok

    roles = np.array([ROLE_CODES.get(topo.vantage_role(v.name).kind, 0) for v in table.vantages] or [0],
                     dtype=np.uint8)
    role = roles[table["iface"]] if n else np.zeros(0, dtype=np.uint8)
    rs_vantage = np.array([_rs_of_vantage(topo, v.name, ep) for v in table.vantages] or [-1], dtype=np.int16)
    rs_at = rs_vantage[table["iface"]] if n else np.zeros(0, dtype=np.int16)

    svc_to = _match(ip_dst, dport, proto, ep.svc_vip, ep.svc_port, ep.svc_proto)
    svc_from = _match(ip_src, sport, proto, ep.svc_vip, ep.svc_port, ep.svc_proto)
    rs_proto = ep.svc_proto[[si for si, _ in ep.real_servers]] if ep.real_servers else np.zeros(0, np.int64)
    rs_to = _match(ip_dst, dport, proto, ep.rs_ip, ep.rs_port, rs_proto)
    rs_from = _match(ip_src, sport, proto, ep.rs_ip, ep.rs_port, rs_proto)
    svc_to[not_l4] = -1
    svc_from[not_l4] = -1
    rs_to[not_l4] = -1
    rs_from[not_l4] = -1

    # ---- what the trace teaches: real-server MACs and, when not given, the director's
    rs_mac = ep.rs_mac.copy()
    arp = table.group("arp")
    for i in range(len(ep.rs_ip)):
        if rs_mac[i] or ep.rs_ip[i] == 0 or ep.rs_ip[i] >> np.uint64(63):
            continue
        m = arp["arp_spa"] == ep.rs_ip[i]
        cand = arp["arp_sha"][m]
        if len(cand) == 0:
            cand = eth_src[(ip_src == ep.rs_ip[i]) & (eth_src != 0)]
        if len(cand):
            vals, counts = np.unique(cand, return_counts=True)
            rs_mac[i] = vals[np.argmax(counts)]
            ep.learned.setdefault("rs_mac", {})[ep.rs_label(i)] = int(rs_mac[i])
    ep.rs_mac = rs_mac
    known_rs_macs = rs_mac[rs_mac != 0]

    mode_of_rs = np.concatenate([ep.rs_mode, [0]]) if len(ep.rs_mode) else np.zeros(1, np.uint8)

    to_vip = svc_to >= 0
    from_vip = svc_from >= 0
    lip_set = ep.lips
    src_lip = member(ip_src, lip_set)
    dst_lip = member(ip_dst, lip_set)
    to_rs_mode = mode_of_rs[rs_to]      # rs_to == -1 picks the trailing 0
    from_rs_mode = mode_of_rs[rs_from]

    # FullNAT local addresses: learn them when the topology has none
    if len(lip_set) == 0 and (ep.rs_mode == MODE_CODES["fullnat"]).any():
        syn = (table["tcp_flags"] & 0x12) == 0x02
        m = (to_rs_mode == MODE_CODES["fullnat"]) & syn & ~to_vip & ~member(ip_src, ep.svc_vip)
        learned = np.unique(ip_src[m])
        if len(learned):
            ep.lips = learned
            ep.learned["lips"] = [table.addr_str(k) for k in learned]
            src_lip = member(ip_src, learned)
            dst_lip = member(ip_dst, learned)

    dmacs = ep.director_macs
    if len(dmacs) == 0:
        nat_dr = (rs_to >= 0) & member(to_rs_mode, (MODE_CODES["nat"], MODE_CODES["fullnat"])) & ~from_vip
        vip_src = set(np.unique(eth_src[to_vip]).tolist())
        vip_dst = set(np.unique(eth_dst[to_vip]).tolist())
        both = (vip_src & vip_dst) - set(known_rs_macs.tolist())
        cand = set(np.unique(eth_src[nat_dr]).tolist()) | both
        cand.discard(0)
        dmacs = np.array(sorted(cand), dtype=np.uint64)
        ep.director_macs = dmacs
        if len(dmacs):
            ep.learned["director_macs"] = [int(m) for m in dmacs]
    l2 = eth_dst != 0
    from_d = member(eth_src, dmacs)
    to_d = member(eth_dst, dmacs)
    to_rsmac = member(eth_dst, known_rs_macs)
    from_rsmac = member(eth_src, known_rs_macs)
    outgoing = table["pkttype"] == PKTTYPE_OUTGOING

    leg = np.zeros(n, dtype=np.uint8)
    mode = np.zeros(n, dtype=np.uint8)
    svc = np.full(n, -1, dtype=np.int16)
    rs = np.full(n, -1, dtype=np.int16)

    def put(mask, leg_code, mode_code, svc_code, rs_code):
        """Rows of mask still on no leg go to leg_code; each value is a scalar, a column, or
        (lookup, index column) read only at those rows."""
        idx = np.flatnonzero(mask & (leg == OTHER))
        if len(idx) == 0:
            return
        leg[idx] = leg_code
        mode[idx] = _values(mode_code, idx)
        svc[idx] = _values(svc_code, idx)
        rs[idx] = _values(rs_code, idx)

    rs_svc = np.array([si for si, _ in ep.real_servers] + [-1], dtype=np.int16)

    # TUN: the outer header goes to a real server, the inner one to the VIP
    # (the tunnel group's own rows, as table["tun"] and table["out_dst"] would place them)
    tun_group = table.group("tun")
    if (tun_group["tun"] > 0).any():
        tun = np.zeros(n, dtype=bool)
        tun[tun_group["rows"]] = tun_group["tun"] > 0
        zeros = np.zeros(len(ep.rs_ip), np.int64)
        rs_out = np.full(n, -1, dtype=np.int16)
        rs_out[tun_group["rows"]] = _match(tun_group["out_dst"], None, None, ep.rs_ip, zeros, zeros)
        put(tun & to_vip & (rs_out >= 0), D_R, MODE_CODES["tun"], svc_to, rs_out)
        del tun, rs_out

    fn = MODE_CODES["fullnat"]
    put(src_lip & (rs_to >= 0), D_R, fn, (rs_svc, rs_to), rs_to)
    put(dst_lip & (rs_from >= 0), R_D, fn, (rs_svc, rs_from), rs_from)

    nat = MODE_CODES["nat"]
    put((rs_to >= 0) & (to_rs_mode == nat) & ~to_vip, D_R, nat, (rs_svc, rs_to), rs_to)

    # the director sends a client's packet to a real server's address with another port than
    # configured, or rewrites it for a DR/TUN server, or sends FullNAT from another address
    # than a LIP: misconfigurations the checks must see, so the hop keeps the server's mode
    no_port = np.zeros(len(ep.rs_ip), np.int64)
    rs_to_ip = _match(ip_dst, None, proto, ep.rs_ip, no_port, rs_proto)
    rs_to_ip[not_l4] = -1
    own = member(ip_src, np.array([_key(table, a) for a in topo.director.ips], dtype=np.uint64))
    fn_server = mode_of_rs[rs_to_ip] == MODE_CODES["fullnat"]
    # from the director's own address only toward a FullNAT server (a request sent without a
    # LIP); stitching drops those that map to no client (health checks)
    odd_hop = (rs_to_ip >= 0) & ~to_vip & l2 & from_d & (~own | fn_server) & ~member(ip_src, ep.svc_vip) \
        & ~member(ip_src, ep.rs_ip)
    del fn_server
    put(odd_hop, D_R, (mode_of_rs, rs_to_ip), (rs_svc, rs_to_ip), rs_to_ip)
    del odd_hop
    # ... and the real server's replies from the port the director used
    on_dr = np.flatnonzero(leg == D_R)
    r_dr = rs_to_ip[on_dr]
    known = r_dr >= 0
    used = np.unique(r_dr[known].astype(np.int64) * 65536 + dport[on_dr][known])
    del on_dr, r_dr, known
    rs_from_ip = _match(ip_src, None, proto, ep.rs_ip, no_port, rs_proto)
    rs_from_ip[not_l4] = -1
    if len(used):
        cand = np.flatnonzero((rs_from < 0) & (rs_from_ip >= 0) & ~from_vip)
        code = rs_from_ip[cand].astype(np.int64) * 65536 + sport[cand]
        hit = cand[member(code, used)]
        rs_from = rs_from.copy()
        rs_from[hit] = rs_from_ip[hit]
        from_rs_mode = mode_of_rs[rs_from]
    # FullNAT replies to the director's own address (requests sent without a LIP)
    to_own = member(ip_dst, np.array([_key(table, a) for a in topo.director.ips], dtype=np.uint64))
    put(to_own & (rs_from >= 0) & (from_rs_mode == MODE_CODES["fullnat"]), R_D, fn, (rs_svc, rs_from), rs_from)
    del to_own, own
    # a reply from a real server's address (NAT, or a DR/TUN server the director rewrites for)
    nat_reply = (rs_from >= 0) & ~from_vip & ~dst_lip & ((from_rs_mode == nat) | (rs_from_ip >= 0) & ~member(
        from_rs_mode, (MODE_CODES["fullnat"],)))
    nat_reply &= (from_rs_mode == nat) | member(rs_from, np.unique(rs_to_ip[(leg == D_R) & (rs_to_ip >= 0)]))
    del rs_from_ip, rs_to_ip
    via_d = to_d | ~l2 | (len(dmacs) == 0)
    by_rs = ((mode_of_rs, rs_from), (rs_svc, rs_from), rs_from)
    # the director forwarded the reply without rewriting it (no connection entry)
    put(nat_reply & l2 & from_d & ~to_d, D_C, *by_rs)
    put(nat_reply & via_d & (role != ROLE_CODES["client"]), R_D, *by_rs)
    put(nat_reply, R_C, *by_rs)   # the reply bypasses the director
    del nat_reply, via_d

    # traffic to the VIP: from the client, from the director to a real server (DR), or a bypass
    rs_by_mac = _index_by_mac(eth_dst, ep.rs_mac)
    at_rs = role == ROLE_CODES["rs"]
    dr_hop = to_vip & l2 & to_rsmac & (from_d | (len(dmacs) == 0))
    put(dr_hop, D_R, (mode_of_rs, rs_by_mac), svc_to, rs_by_mac)
    put(to_vip & l2 & to_rsmac & ~from_d, C_R, 0, svc_to, rs_by_mac)
    del dr_hop, rs_by_mac
    no_l2 = to_vip & ~l2 & (at_rs | ((role == ROLE_CODES["director"]) & outgoing))
    put(no_l2, D_R, np.where(at_rs, mode_of_rs[rs_at], 0).astype(np.uint8), svc_to, rs_at)
    # a real server that sends the VIP's traffic on (it does not own the VIP and routes it) is
    # not a client: those frames stay off the connection (rule DR105 looks at them)
    put(to_vip & ~(l2 & from_rsmac), C_D, 0, svc_to, -1)

    # traffic from the VIP: the director's NAT reply, or the real server's direct reply
    rs_by_src_mac = _index_by_mac(eth_src, ep.rs_mac)
    direct = from_vip & ((l2 & from_rsmac) | (~l2 & at_rs))
    put(direct & l2, R_C, (mode_of_rs, rs_by_src_mac), svc_from, rs_by_src_mac)
    put(direct, R_C, (mode_of_rs, rs_at), svc_from, rs_at)
    svc_modes = _service_modes(ep)
    nat_like = np.isin(svc_modes, (1, 3))       # bit set: has NAT or FullNAT servers
    put(from_vip & (from_d | ~l2) & nat_like[svc_from], D_C, 0, svc_from, -1)
    put(from_vip & ~nat_like[svc_from] & (svc_modes[svc_from] > 0), R_C, 0, svc_from, -1)
    put(from_vip, D_C, 0, svc_from, -1)
    return leg, mode, svc, rs, role, ep


def _index_by_mac(macs: np.ndarray, rs_mac: np.ndarray) -> np.ndarray:
    out = np.full(len(macs), -1, dtype=np.int16)
    for i, m in enumerate(rs_mac.tolist()):
        if m:
            out[(macs == m) & (out < 0)] = i
    return out


def _service_modes(ep: Endpoints) -> np.ndarray:
    """Per service (plus a trailing entry for 'none'): bit 1 NAT/FullNAT servers, bit 2 DR/TUN servers."""
    out = np.zeros(len(ep.services) + 1, dtype=np.uint8)
    for (si, rs), m in zip(ep.real_servers, ep.rs_mode.tolist()):
        out[si] |= 1 if MODES[m] in ("nat", "fullnat") else 2
    return out


def _rs_of_vantage(topo: Topology, name: str, ep: Endpoints) -> int:
    role = topo.vantage_role(name)
    if role.kind != "rs" or role.rs is None:
        return -1
    for i, (_, rs) in enumerate(ep.real_servers):
        if rs.ip == role.rs:
            return i
    return -1
