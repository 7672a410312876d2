"""Propose a topology from a bare trace (``lvs-inspect infer``).

The one module of ``topology/`` that reads a PacketTable (numpy): the model and the loaders
stay stdlib-only and do not import it.

Method. A load balancer forwards the client's SYN: the same SYN is seen again after the
director, rewritten as its mode requires. SYN copies are grouped by what every mode keeps
(IP ID, window, MSS, window scale, SACK-permitted) within a short time window, and each group
is read in time order:

- the first copy is the client's (destination VIP:vport);
- a copy inside an IPIP/GRE/GUE tunnel → TUN (RIP = outer destination, director address =
  outer source);
- a copy with another source address → FullNAT (LIP = that source, RIP:rport = destination);
- a copy with another destination → NAT (RIP:rport = destination);
- a copy with the same addresses but another destination MAC → DR (that MAC is the real
  server's; its address comes from ARP or from frames it sent).

Every choice carries its evidence and a confidence in ``note`` (written as TOML comments).
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pandas as pd

from ..capture.table import PacketTable
from ..net import MAC, parse_ip
from .model import (Director, Mode, Protocol, RealServer, Service, ToaVariant, Topology, TunType,
                    VantageRole, get_profile)

#: SYN copies of one client SYN are at most this far apart (director latency plus skew)
COPY_WINDOW_NS = 2_000_000_000
_TUN_TYPES = {1: TunType.IPIP, 2: TunType.GRE, 3: TunType.GUE}


def _conf(n: int, total: int) -> str:
    share = n / total if total else 0.0
    level = "high" if n >= 5 and share >= 0.9 else "medium" if n >= 2 and share >= 0.6 else "low"
    return f"{level} confidence ({n} of {total})"


def infer_topology(table: PacketTable, *, source: str = "inferred") -> Topology:
    t = table
    flags = t["tcp_flags"]
    syn_rows = np.flatnonzero(((flags & 0x12) == 0x02) & (t["ip_proto"] == 6) & (t["status"] < 10))
    if len(syn_rows) == 0:
        raise ValueError("no TCP SYN in the trace: nothing to infer services from")
    df = pd.DataFrame({
        "row": syn_rows, "ts": t["ts_ns"][syn_rows], "iface": t["iface"][syn_rows],
        "src": t["ip_src"][syn_rows], "dst": t["ip_dst"][syn_rows], "sport": t["sport"][syn_rows],
        "dport": t["dport"][syn_rows], "seq": t["tcp_seq"][syn_rows], "ip_id": t["ip_id"][syn_rows],
        "win": t["tcp_win"][syn_rows], "mss": t["tcp_mss"][syn_rows], "ws": t["tcp_ws"][syn_rows],
        "ttl": t["ip_ttl"][syn_rows], "eth_src": t["eth_src"][syn_rows], "eth_dst": t["eth_dst"][syn_rows],
        "tun": t.take("tun", syn_rows), "out_src": t.take("out_src", syn_rows),
        "out_dst": t.take("out_dst", syn_rows), "out_dport": t.take("out_dport", syn_rows),
        "toa_kind": t["toa_kind"][syn_rows],
    })
    groups, evidence, dmacs, dips, lips, rs_macs, ttl_drop, vantage_seen, toa_seen = _read_copies(df)
    if not evidence:
        raise ValueError("no SYN was seen both before and after the director: capture the client side "
                         "and the real-server side (or the director's two sides) in the same trace")

    # DR real servers are known by MAC: find their addresses (ARP, or frames they sent)
    arp = t.group("arp")
    mac_ip = {}
    vips = np.array([v for v, _ in evidence], dtype=np.uint64)
    for mac in rs_macs:
        m = arp["arp_sha"] == mac
        ips = arp["arp_spa"][m].astype(np.uint64)
        ips = ips[~np.isin(ips, vips)]          # a real server that claims the VIP (ARP leak) is not the VIP
        if len(ips) == 0:
            ips = t["ip_src"][(t["eth_src"] == mac) & (t["ip_ver"] == 4)]
            ips = ips[~np.isin(ips, [v for v, _ in evidence])]
        if len(ips):
            vals, counts = np.unique(ips, return_counts=True)
            mac_ip[mac] = int(vals[np.argmax(counts)])

    services = []
    total_groups = sum(sum(c.values()) for c in evidence.values())  # one forwarded copy per group
    for (vip, vport), kinds in sorted(evidence.items()):
        n_svc = sum(kinds.values())
        rss, notes = [], []
        for (mode, rip, rport, tun, tun_port), n in sorted(kinds.items(), key=lambda kv: -kv[1]):
            mac = None
            if mode is Mode.DR:
                mac = -rip
                if mac not in mac_ip:
                    notes.append(f"DR real server with MAC {MAC(mac)} has no address in the trace (no ARP)")
                    continue
                rip = mac_ip[mac]
            level = "high" if n >= 5 else "medium" if n >= 2 else "low"
            note = (f"inferred: {n} of {n_svc} client SYNs of the service forwarded here as {mode.value}"
                    + (f" ({tun.value})" if tun else "") + f"; {level} confidence")
            rss.append(RealServer(ip=parse_ip(t.addr_str(rip)), port=rport, weight=1, mode=mode,
                                  tun=tun, tun_port=tun_port if tun is TunType.GUE else None,
                                  mac=MAC(mac) if mac else None, note=note))
        if not rss:
            continue
        modes = Counter(rs.mode for rs in rss)
        mode = modes.most_common(1)[0][0]
        toa = None
        if mode is Mode.FULLNAT:
            toa = _toa_variant(t, lips, toa_seen)
        sched, sched_note = _scheduler(t, rss)
        services.append(Service(
            vip=parse_ip(t.addr_str(vip)), port=vport, protocol=Protocol.TCP, real_servers=tuple(rss),
            scheduler=sched, mode=mode, toa=toa,
            note=(f"inferred: clients reached {t.addr_str(vip)}:{vport} in {n_svc} SYNs that the director "
                  f"forwarded; {sched_note}")))

    dmac_list = tuple(MAC(m) for m, _ in dmacs.most_common() if m and m not in rs_macs)
    drop = ttl_drop.most_common(1)[0][0] if ttl_drop else 1
    modes = {rs.mode for s in services for rs in s.real_servers}
    profile = "linux" if drop == 1 else "linux-legacy"
    if Mode.FULLNAT in modes and drop == 0:
        profile = "alibaba" if toa_seen else "dpvs"
    director = Director(
        macs=dmac_list,
        ips=tuple(parse_ip(t.addr_str(a)) for a, _ in dips.most_common()),
        lips=tuple(parse_ip(t.addr_str(a)) for a, _ in lips.most_common()),
        note=(f"inferred: the MACs that received client SYNs and sent them on ({len(dmac_list)}); "
              f"the director decremented TTL by {drop} on the way to the real servers "
              f"({_conf(ttl_drop[drop], sum(ttl_drop.values()))}), hence profile '{profile}'"))
    roles = _vantage_roles(t, vantage_seen, mac_ip)
    evidence_lines = [f"  {v.name} = {roles[v.name]}: {_role_evidence(vantage_seen.get(v.id, Counter()))}"
                      for v in t.vantages]
    topo = Topology(profile=get_profile(profile), director=director, services=tuple(services),
                    vantages=tuple(roles.items()), source=source, origin="inferred",
                    note=(f"inferred by lvs-inspect from {total_groups} forwarded SYNs in "
                          f"{groups} groups of copies; check every choice marked low confidence\n"
                          "capture points (what each saw of the client SYNs):\n" + "\n".join(evidence_lines)))
    return topo


def _group_copies(df: pd.DataFrame) -> pd.DataFrame:
    """Number the groups of copies of one client SYN (column ``grp``), in time order within each.

    NAT, DR and TUN keep the sequence number and the IP ID: copies share both. FullNAT remaps
    the sequence number and the source, so groups are joined again when they share what FullNAT
    keeps (IP ID, window, MSS, window scale), come within a short time window and differ in the
    source address.
    """
    df = df.sort_values(["seq", "ip_id", "ts"], kind="stable")
    same = (df["seq"].diff() == 0) & (df["ip_id"].diff() == 0) & (df["ts"].diff() < COPY_WINDOW_NS)
    df["grp"] = (~same).cumsum()
    # FullNAT: a SYN left alone joins the group (or the other lone SYN) with the same IP ID,
    # window, MSS and window scale that comes closest before it
    g = df.groupby("grp", sort=False)
    heads = g.agg(ip_id=("ip_id", "first"), win=("win", "first"), mss=("mss", "first"), ws=("ws", "first"),
                  ts=("ts", "min"), src=("src", "first"), dst=("dst", "first"))
    # groups whose copies all keep the addresses (no NAT rewrite inside them)
    heads["plain"] = (g["src"].nunique() == 1) & (g["dst"].nunique() == 1)
    heads = heads.reset_index().sort_values(["ip_id", "win", "mss", "ws", "ts"], kind="stable")
    key_same = (heads[["ip_id", "win", "mss", "ws"]].diff().abs().sum(axis=1) == 0)
    close = heads["ts"].diff() < COPY_WINDOW_NS
    # FullNAT replaced both addresses; both groups are plain (else the rewrite is already inside one)
    rewritten = (heads["src"] != heads["src"].shift(1)) & (heads["dst"] != heads["dst"].shift(1))
    both_plain = heads["plain"] & heads["plain"].shift(1, fill_value=False)
    join = (key_same & close & rewritten & both_plain).to_numpy()
    new_id = np.cumsum(~join)
    remap = dict(zip(heads["grp"].to_numpy(), new_id))
    df["grp"] = df["grp"].map(remap)
    return df.sort_values(["grp", "ts"], kind="stable")


def _read_copies(df: pd.DataFrame):
    """Classify every copy against the one before it and the client's, over whole columns."""
    df = _group_copies(df)
    everyone = df                                      # every capture of every copy, for the vantage roles
    df = df.drop_duplicates(["grp", "src", "dst", "sport", "dport", "eth_src", "eth_dst", "tun"])
    g = df.groupby("grp", sort=False)
    df["n"] = g["grp"].transform("size")
    df = df[df["n"] >= 2].copy()
    g = df.groupby("grp", sort=False)
    # only the columns read below: the group's first copy and the copy before each one
    first = g[["tun", "src", "dst", "dport", "eth_dst"]].transform("first")
    prev = g[["eth_dst", "ttl"]].shift(1)
    df["pos"] = g.cumcount()
    tun = (df["tun"] > 0) & (first["tun"] == 0)
    fullnat = ~tun & (df["src"] != first["src"])
    nat = ~tun & ~fullnat & ((df["dst"] != first["dst"]) | (df["dport"] != first["dport"]))
    rewrite = tun | fullnat | nat
    df["mode"] = np.select([tun, fullnat, nat], ["tun", "fullnat", "nat"], "")
    # DR: no rewritten copy in the group; the last copy goes to the real server's MAC
    has_rewrite = rewrite.groupby(df["grp"]).transform("any")
    last = df["pos"] == df["n"] - 1
    dr = ~has_rewrite & last & (df["pos"] > 0) & (df["eth_dst"] != 0) & (df["eth_dst"] != first["eth_dst"])
    # the DR hop is the director's: among same-address copies, the director is the MAC that hands
    # them to several next hops (one per real server). When there is such a MAC, the DR hop of a
    # group is its last copy from it, so that a real server routing the packet on (no VIP,
    # ip_forward=1) adds no hop of its own
    plain = ~has_rewrite & (df["pos"] > 0) & (df["eth_dst"] != 0)
    fanout = df[plain].groupby("eth_src")["eth_dst"].nunique()
    senders = set(fanout[fanout >= 2].index)
    if senders:
        by_sender = plain & df["eth_src"].isin(senders) & (df["eth_dst"] != first["eth_dst"])
        last_by_sender = by_sender & ~by_sender.iloc[::-1].groupby(df["grp"].iloc[::-1]).cumsum().iloc[::-1].gt(1)
        dr = last_by_sender
    # a MAC the director receives client SYNs on (the hop before a forwarded copy) is not a
    # real server's: a SYN whose last copy went there was dropped by the director, not forwarded
    fwd_first = df[(df["mode"] != "") | dr]
    fwd_first = fwd_first[~fwd_first["grp"].duplicated()]
    into_director = prev.loc[fwd_first.index, "eth_dst"].value_counts()
    receiving = set(into_director[into_director >= 0.25 * into_director.max()].index) if len(into_director) else set()
    dr &= ~df["eth_dst"].isin(receiving)
    df.loc[dr, "mode"] = "dr"
    # the director: the copy it received (the one before the first rewritten copy) and what it sent
    fwd = df[df["mode"] != ""]
    fwd = fwd[~fwd["grp"].duplicated()]          # first forwarded copy per group
    before = prev.loc[fwd.index]
    orig = first.loc[fwd.index]
    evidence = defaultdict(Counter)
    for mode_name, sub in fwd.groupby("mode"):
        o = orig.loc[sub.index]
        if mode_name == "tun":
            rip, rport = sub["out_dst"], o["dport"]
        elif mode_name == "dr":
            rip, rport = -sub["eth_dst"].astype(np.int64), o["dport"]
        else:
            rip, rport = sub["dst"], sub["dport"]
        keys = pd.DataFrame({"vip": o["dst"].to_numpy(), "vport": o["dport"].to_numpy(),
                             "rip": rip.to_numpy().astype(np.int64), "rport": rport.to_numpy(),
                             "tun": sub["tun"].to_numpy(), "tport": sub["out_dport"].to_numpy()})
        for (vip, vport, r, rp, tn, tp), n in keys.value_counts().items():
            kind = (Mode(mode_name), int(r), int(rp), _TUN_TYPES.get(int(tn)) if mode_name == "tun" else None,
                    int(tp))
            evidence[(int(vip), int(vport))][kind] += int(n)
    # the director's MACs: those that received and sent most forwarded SYNs (a router that hands
    # a few of them to a real server directly, as in an ARP leak, stays below the cut)
    seen_macs = pd.concat([fwd["eth_src"], before["eth_dst"]]).value_counts()
    top = int(seen_macs.max()) if len(seen_macs) else 0
    dmacs = Counter({int(k): int(v) for k, v in seen_macs.items() if k and v >= 0.5 * top})
    dips = Counter({int(k): int(v) for k, v in fwd.loc[fwd["mode"] == "tun", "out_src"].value_counts().items()})
    lips = Counter({int(k): int(v) for k, v in fwd.loc[fwd["mode"] == "fullnat", "src"].value_counts().items()})
    rs_macs = {int(m): None for m in fwd.loc[fwd["mode"] == "dr", "eth_dst"].unique()}
    ttl_drop = Counter({int(k): int(v) for k, v in (before["ttl"] - fwd["ttl"]).value_counts().items()})
    toa = fwd.loc[(fwd["mode"] == "fullnat") & (fwd["toa_kind"] > 0), "toa_kind"]
    toa_seen = Counter({int(k): int(v) for k, v in toa.value_counts().items()})
    vantage_seen = _vantage_evidence(everyone, df, set(dmacs))
    return (df["grp"].nunique(), evidence, dmacs, dips, lips, rs_macs, ttl_drop, vantage_seen, toa_seen)


def _vantage_evidence(everyone: pd.DataFrame, copies: pd.DataFrame, dmacs: set) -> dict:
    """Per capture point: how many client copies (before the director), copies the director
    sent to each real server, and copies on their way into the director it saw.

    Keys: "orig", "pre", "into-director", "copy:<RIP key>" (DR: "copy:<-MAC>"), "sent-copy"; what
    each capture is is worked out as a small integer (and the copy's RIP) and named at the end."""
    pre, orig, into, copy = 0, 1, 2, 3
    e = everyone[everyone["grp"].isin(copies["grp"].unique())]
    first = e.groupby("grp", sort=False)[["tun", "src", "dst", "eth_src", "eth_dst"]].transform("first")
    rewritten = ((e["tun"] > first["tun"]) | (e["src"] != first["src"]) | (e["dst"] != first["dst"])).to_numpy()
    grp, ts, iface = e["grp"].to_numpy(), e["ts"].to_numpy(), e["iface"].to_numpy()
    what = np.full(len(e), pre, dtype=np.int8)
    what[((e["eth_src"] == first["eth_src"]) & (e["eth_dst"] == first["eth_dst"])).to_numpy() & ~rewritten] = orig
    copy_of = np.where(e["tun"] > 0, e["out_dst"], e["dst"]).astype(np.int64)
    what[rewritten] = copy
    what[(what == pre) & e["eth_dst"].isin(list(dmacs)).to_numpy()] = into
    # the client's frame seen twice on its segment: the later capture is the receiving director's
    at = np.flatnonzero(what == orig)
    o = pd.DataFrame({"grp": grp[at], "ts": ts[at], "at": at}).sort_values("ts", kind="stable")
    what[o["at"].to_numpy()[o.groupby("grp").cumcount().to_numpy() > 0]] = into
    # DR: the copy to the real server's MAC (every capture of it in its group)
    dr_last = copies.loc[copies["mode"] == "dr", ["grp", "eth_dst"]]
    if len(dr_last):
        m = pd.MultiIndex.from_frame(e[["grp", "eth_dst"]]).isin(pd.MultiIndex.from_frame(dr_last))
        what[m] = copy
        copy_of[m] = -e["eth_dst"].to_numpy()[m].astype(np.int64)
    copy_of[what != copy] = 0
    names = {pre: "pre", orig: "orig", into: "into-director"}
    seen = defaultdict(Counter)
    counts = pd.DataFrame({"iface": iface, "what": what, "copy": copy_of}).value_counts()
    for (i, w, c), n in counts.items():
        seen[int(i)][names[int(w)] if w != copy else f"copy:{int(c)}"] += int(n)
    # a copy seen at two capture points: the earlier one is the director's sending side
    at = np.flatnonzero(what == copy)
    cp = pd.DataFrame({"grp": grp[at], "copy": copy_of[at], "iface": iface[at], "ts": ts[at]}).sort_values(
        "ts", kind="stable")
    g = cp.groupby(["grp", "copy"])
    sent = cp[(g["iface"].transform("size") > 1) & (g.cumcount() == 0)]
    for i, n in sent["iface"].value_counts().items():
        seen[int(i)]["sent-copy"] += int(n)
    return seen


def _toa_variant(t: PacketTable, lips: Counter, in_syn: Counter) -> ToaVariant | None:
    """The TOA the director puts on packets from its local addresses: kind, length, and
    whether SYNs carry it. None when no packet from a LIP carries one."""
    rows = np.isin(t["ip_src"], np.array(list(lips), dtype=np.uint64)) & (t["toa_kind"] > 0)
    if not rows.any():
        return None
    pairs = Counter(zip(t["toa_kind"][rows].tolist(), t["toa_len"][rows].tolist()))
    (kind, length), _ = pairs.most_common(1)[0]
    packets = {"ack", "data"} | ({"syn"} if in_syn else set())
    return ToaVariant(kind=int(kind), length=int(length), packets=frozenset(packets))


def _scheduler(t: PacketTable, rss) -> tuple[str, str]:
    if len(rss) < 2:
        return "rr", "one real server: the scheduler cannot be told from the trace (rr assumed)"
    return "wlc", ("the scheduler cannot be read off a trace; wlc (the ipvsadm default) assumed — "
                   "compare the share of connections per real server in the audit")


def _role_evidence(c: Counter) -> str:
    """What a capture point saw of the client SYNs, in words (its role's evidence)."""
    before = c.get("orig", 0)
    into = c.get("into-director", 0)
    copies = {k: n for k, n in c.items() if k.startswith("copy:")}
    parts = []
    if before:
        parts.append(f"{before} as the client sent them")
    if into:
        parts.append(f"{into} on their way into the director")
    if copies:
        parts.append(f"{sum(copies.values())} forwarded to {len(copies)} real server(s)")
    if c.get("sent-copy", 0):
        parts.append(f"{c['sent-copy']} of those before the real server's own capture")
    return ", ".join(parts) if parts else "no client SYN"


def _vantage_roles(t: PacketTable, seen, mac_ip) -> dict[str, VantageRole]:
    roles = {}
    for v in t.vantages:
        c = seen.get(v.id, Counter())
        before = c.get("orig", 0) + c.get("into-director", 0)
        copies = {k: n for k, n in c.items() if k.startswith("copy:")}
        # a handful of copies among many originals (or the reverse) are coincidences, not a role
        total = before + sum(copies.values())
        if sum(copies.values()) < 0.02 * total:
            copies = {}
        if before < 0.02 * total:
            before = 0
        if before and copies:
            roles[v.name] = VantageRole("director")
        elif copies and c.get("sent-copy", 0) * 2 > sum(copies.values()):
            roles[v.name] = VantageRole("director", side="rs-side")
        elif copies and len(copies) == 1:
            rip = int(next(iter(copies)).split(":")[1])
            if rip < 0:
                rip = mac_ip.get(-rip)
            roles[v.name] = VantageRole("rs", rs=parse_ip(t.addr_str(rip))) if rip else VantageRole("unknown")
        elif copies:
            roles[v.name] = VantageRole("director", side="rs-side")
        elif c.get("into-director", 0):
            roles[v.name] = VantageRole("director", side="client-side")
        elif before:
            roles[v.name] = VantageRole("client")
        else:
            roles[v.name] = VantageRole("unknown")
    return roles
