"""keepalived.conf -> :class:`Topology` (keepalived.conf(5), plus the Alibaba LVS and DPVS
keepalived extensions).

Read:

* ``virtual_server IP [PORT]``, ``virtual_server fwmark N``, ``virtual_server group NAME``
  with ``virtual_server_group NAME { IP [PORT] | IP-RANGE [PORT] | fwmark N [inet|inet6] }``
  (ranges ``192.0.2.1-10``, ``192.0.2.250-192.0.3.10``, ``192.0.2.8/29``);
* in a virtual server: ``lvs_sched``/``lb_algo``, ``lvs_method``/``lb_kind``
  ``NAT|DR|TUN [type ipip|gue port N|gre] [nocsum|csum|remcsum]|FNAT``, ``protocol TCP|UDP``,
  ``persistence_timeout [N]``, ``persistence_granularity MASK``, ``persistence_engine``,
  ``ops``, ``flag-1..3``, ``sh-port``, ``sh-fallback``, ``mh-port``, ``mh-fallback``,
  ``laddr_group_name NAME`` and ``syn_proxy`` (Alibaba/DPVS);
* ``real_server IP [PORT] { weight N; lvs_method ...; uthreshold; lthreshold }``
  (``inhibit_on_failure``, notify scripts and health checkers are ignored);
* ``local_address_group NAME { IP|RANGE [ifname] }`` (Alibaba; DPVS adds the interface);
* director facts: ``vrrp_instance`` ``interface``/``dpdk_interface``, ``use_vmac`` with
  ``virtual_router_id`` (the VRRP virtual MAC), ``unicast_src_ip``/``mcast_src_ip``,
  ``static_ipaddress``; ``global_defs { lvs_timeouts tcp N tcpfin N udp N }``;
* ``include``/``includer``/``includem``/``includew``/``includeb``/``includea`` FILE, with
  wildcards and csh braces, relative to the including file; ``$NAME=value`` definitions.

Comments start with ``#`` or ``!`` anywhere on a line. Defaults follow keepalived
(check_data.c validate_check_config): scheduler wlc, method NAT, protocol UDP when none is
given, a DR/TUN real server takes the virtual server's port (fwmark: none), port 0 without
persistence gets the default persistence (360 s). ``virtual_server match`` (DPVS SNAT) blocks
and ``sorry_server`` are not load-balanced services and are skipped. Conditional lines
(``@host ...``) cannot be resolved here and are an error.

Keywords keepalived has but a topology does not need are ignored; an unknown keyword in a
virtual or real server block that is close to a known one is an error with a suggestion.
"""
from __future__ import annotations

import dataclasses
import glob
import ipaddress
import os
import re
from dataclasses import dataclass

from ..errors import InputError
from ..net import MAC, parse_ip, parse_port, prefix_from_netmask, vrrp_mac
from .model import (
    DEFAULT_PERSISTENCE, DEFAULT_SCHEDULER, SCHED_FLAGS, Director, Mode, Protocol, RealServer,
    Service, SourcePos, Topology, TunType, apply_defaults, get_profile, suggest,
    validate_topology,
)

INCLUDES = ("include", "includer", "includem", "includew", "includeb", "includea")
MAX_INCLUDE_DEPTH = 32
MAX_RANGE = 4096

TOP_KNOWN = (
    "global_defs", "static_ipaddress", "static_routes", "static_rules", "vrrp_sync_group",
    "vrrp_instance", "vrrp_script", "vrrp_track_file", "track_file", "vrrp_track_process",
    "track_process", "garp_group", "linkbeat_interfaces", "interface_up_down_delays",
    "bfd_instance", "SSL", "virtual_server_group", "virtual_server", "local_address_group",
    "net_namespace", "net_namespace_ipvs", "namespace_with_ipsets", "instance", "use_pid_dir",
    "linkbeat_use_polling", "child_wait_time", "static_track_group", "deny_address_group",
    "whitelist_address_group", "blacklist_address_group", "tunnel_group",
)
TOP_LVS = ("virtual_server", "virtual_server_group", "local_address_group", "global_defs",
           "vrrp_instance", "static_ipaddress")
VS_KNOWN = (
    "lvs_sched", "lb_algo", "flag-1", "flag-2", "flag-3", "sh-port", "sh-fallback", "mh-port",
    "mh-fallback", "ops", "lvs_method", "lb_kind", "persistence_engine", "persistence_timeout",
    "persistence_granularity", "protocol", "ha_suspend", "smtp_alert", "virtualhost",
    "snmp_name", "alpha", "omega", "quorum", "hysteresis", "quorum_up", "quorum_down",
    "ip_family", "sorry_server", "sorry_server_inhibit", "sorry_server_lvs_method",
    "connect_timeout", "retry", "delay_before_retry", "warmup", "delay_loop",
    "inhibit_on_failure", "real_server", "nat_mask", "weight",
    # Alibaba LVS / DPVS keepalived
    "laddr_group_name", "syn_proxy", "daddr_group_name", "blklst_group_name",
    "whtlst_group_name", "tunnel_group_name", "est_timeout", "establish_timeout",
    "proxy_protocol", "hash_target", "quic", "expire_quiescent_conn", "bps",
    "limit_proportion", "src-range", "dst-range", "oif", "iif", "abs_priority",
)
RS_KNOWN = (
    "weight", "lvs_method", "notify_up", "notify_down", "uthreshold", "lthreshold",
    "smtp_alert", "virtualhost", "snmp_name", "alpha", "connect_timeout", "retry",
    "delay_before_retry", "warmup", "delay_loop", "inhibit_on_failure", "HTTP_GET", "SSL_GET",
    "TCP_CHECK", "SMTP_CHECK", "DNS_CHECK", "MISC_CHECK", "BFD_CHECK", "UDP_CHECK",
    "PING_CHECK", "FILE_CHECK", "track_file",
)
METHODS = {"NAT": Mode.NAT, "DR": Mode.DR, "TUN": Mode.TUN, "FNAT": Mode.FULLNAT,
           "FULLNAT": Mode.FULLNAT}


# =========================================================================== lexing

@dataclass
class _Line:
    tokens: list[str]
    path: str
    line: int


@dataclass
class Stmt:
    word: str
    args: list[str]
    path: str
    line: int
    block: list["Stmt"] | None = None


def _split(s: str, braces: bool = True) -> list[str]:
    toks: list[str] = []
    cur: list[str] = []
    have = False
    i = 0
    while i < len(s):
        c = s[i]
        if c in "#!":
            break
        if c in " \t\r":
            if have:
                toks.append("".join(cur))
                cur, have = [], False
            i += 1
            continue
        if braces and c in "{}":
            if have:
                toks.append("".join(cur))
                cur, have = [], False
            toks.append(c)
            i += 1
            continue
        if c in "\"'":
            j = i + 1
            while j < len(s) and s[j] != c:
                if c == '"' and s[j] == "\\" and j + 1 < len(s):
                    cur.append(s[j + 1])
                    j += 2
                    continue
                cur.append(s[j])
                j += 1
            if j >= len(s):
                raise ValueError(f"unterminated {c} quote")
            have = True
            i = j + 1
            continue
        cur.append(c)
        have = True
        i += 1
    if have:
        toks.append("".join(cur))
    return toks


def _brace_expand(p: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", p)
    if not m:
        return [p]
    out = []
    for alt in m.group(1).split(","):
        out.extend(_brace_expand(p[:m.start()] + alt + p[m.end():]))
    return out


def _substitute(s: str, defs: dict[str, str]) -> str:
    if "$" not in s or not defs:
        return s

    def rep(m):
        name = m.group(1) or m.group(2)
        return defs.get(name, m.group(0))
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", rep, s)


def _lex(path: str, text: str, defs: dict[str, str], stack: tuple[str, ...]) -> list[_Line]:
    out: list[_Line] = []
    base = os.path.dirname(os.path.abspath(path))
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s[0] in "#!":
            continue
        if s.startswith("@"):
            raise InputError(path, "conditional configuration (@name ...) depends on the host "
                             "keepalived runs on: resolve it before loading", line=n, key=s.split()[0])
        if s.startswith("$"):
            m = re.match(r"^\$(\w+)\s*=\s*(.*)$", s)
            if m:
                try:
                    val = " ".join(_split(m.group(2)))
                except ValueError:
                    val = m.group(2).strip()
                defs[m.group(1)] = val
                continue
        try:
            line = _substitute(s, defs)
            # an include's file name may hold csh braces: do not split them off
            toks = _split(line, braces=line.split(None, 1)[0] not in INCLUDES)
        except ValueError as e:
            raise InputError(path, str(e), line=n) from None
        if not toks:
            continue
        if toks[0] in INCLUDES:
            out.extend(_include(path, base, n, toks, defs, stack))
            continue
        out.append(_Line(toks, path, n))
    return out


def _include(path, base, n, toks, defs, stack) -> list[_Line]:
    if len(toks) < 2:
        raise InputError(path, f"{toks[0]} needs a file name", line=n, key=toks[0])
    if len(stack) >= MAX_INCLUDE_DEPTH:
        raise InputError(path, f"includes nested deeper than {MAX_INCLUDE_DEPTH}", line=n, key=toks[0])
    pattern = " ".join(toks[1:])
    files: list[str] = []
    magic = False
    for p in _brace_expand(pattern):
        full = p if os.path.isabs(p) else os.path.join(base, p)
        if glob.has_magic(full) or p != pattern:
            magic = True
            files.extend(sorted(glob.glob(full)))
        else:
            files.append(full)
    out: list[_Line] = []
    for f in files:
        if not os.path.isfile(f):
            if magic:
                continue
            raise InputError(path, f"included file '{pattern}' not found (looked for {f})",
                             line=n, key=toks[0])
        real = os.path.realpath(f)
        if real in stack:
            raise InputError(path, f"include loop: '{pattern}' includes itself", line=n, key=toks[0])
        from . import read_text
        out.extend(_lex(f, read_text(f), defs, stack + (real,)))
    return out


def parse_tree(lines: list[_Line]) -> list[Stmt]:
    """Lines of tokens -> statements with nested blocks."""
    root: list[Stmt] = []
    stack: list[tuple[list[Stmt], Stmt | None]] = [(root, None)]
    for ln in lines:
        words: list[str] = []

        def flush(block=None):
            nonlocal words
            st = Stmt(words[0], words[1:], ln.path, ln.line, block)
            stack[-1][0].append(st)
            words = []
            return st
        for tok in ln.tokens:
            if tok == "{":
                if words:
                    st = flush([])
                else:
                    cur = stack[-1][0]
                    if not cur or cur[-1].block is not None:
                        raise InputError(ln.path, "'{' without a keyword before it", line=ln.line)
                    st = cur[-1]
                    st.block = []
                stack.append((st.block, st))
            elif tok == "}":
                if words:
                    flush()
                if len(stack) == 1:
                    raise InputError(ln.path, "'}' without a matching '{'", line=ln.line)
                stack.pop()
            else:
                words.append(tok)
        if words:
            flush()
    if len(stack) > 1:
        st = stack[-1][1]
        raise InputError(st.path, f"the block of '{st.word}' opened here is not closed",
                         line=st.line, key=st.word)
    return root


# =========================================================================== interpretation

def loads_keepalived(text: str, path: str = "<keepalived.conf>", *,
                     profile: str | None = None) -> Topology:
    real = os.path.realpath(path) if os.path.exists(path) else path
    tree = parse_tree(_lex(path, text, {}, (real,)))
    return _Interp(path, profile).run(tree)


def _fail(st: Stmt, message: str, key: str | None = None) -> InputError:
    return InputError(st.path, message, line=st.line, key=key or st.word)


def _range(st: Stmt, text: str) -> list:
    """keepalived address ranges -> list of addresses."""
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            if net.num_addresses > MAX_RANGE:
                raise _fail(st, f"range {text} has {net.num_addresses} addresses (at most {MAX_RANGE})")
            return list(net)
        if "-" in text:
            left, right = text.split("-", 1)
            a = parse_ip(left)
            try:
                b = parse_ip(right)
            except ValueError:
                if a.version == 4:
                    if not right.isdigit() or int(right) > 255:
                        raise ValueError(f"'{text}': range end '{right}' is not 0..255")
                    b = ipaddress.IPv4Address((int(a) & ~0xFF) | int(right))
                else:
                    b = ipaddress.IPv6Address((int(a) & ~0xFFFF) | int(right, 16))
            if b.version != a.version or int(b) < int(a):
                raise ValueError(f"'{text}': the range ends before it starts")
            count = int(b) - int(a) + 1
            if count > MAX_RANGE:
                raise _fail(st, f"range {text} has {count} addresses (at most {MAX_RANGE})")
            return [ipaddress.ip_address(int(a) + i) if a.version == 4
                    else ipaddress.IPv6Address(int(a) + i) for i in range(count)]
        return [parse_ip(text)]
    except ValueError as e:
        raise _fail(st, str(e)) from None


def _check_keyword(st: Stmt, known: tuple, where: str) -> bool:
    """True if known; an error for a probable typo; False (ignored) otherwise."""
    if st.word in known:
        return True
    s = suggest(st.word, known, cutoff=0.8)
    if s:
        raise _fail(st, f"unknown keyword '{st.word}' in {where}{s}")
    return False


class _Interp:
    def __init__(self, path: str, profile: str | None):
        self.path = path
        self.profile = profile
        self.vsg: dict[str, tuple[list[tuple], Stmt]] = {}
        self.laddr: dict[str, tuple[list, Stmt]] = {}
        self.dpvs = False
        self.fnat = False
        self.ips: list = []
        self.interfaces: list[str] = []
        self.vmacs: list[MAC] = []
        self.timeouts: dict[str, int] = {}
        self.services: list[Service] = []

    def run(self, tree: list[Stmt]) -> Topology:
        for st in tree:
            if st.word == "virtual_server_group":
                self.need_block(st, 1)
                self.vsg[st.args[0]] = (self.group_entries(st), st)
            elif st.word == "local_address_group":
                self.need_block(st, 1)
                self.laddr[st.args[0]] = (self.laddr_entries(st), st)
            elif st.word == "global_defs":
                self.global_defs(st)
            elif st.word == "vrrp_instance":
                self.vrrp(st)
            elif st.word == "static_ipaddress":
                for e in st.block or []:
                    try:
                        a = parse_ip(e.word.split("/")[0])
                    except ValueError as ex:
                        raise _fail(e, str(ex)) from None
                    if a not in self.ips:
                        self.ips.append(a)
            elif st.word == "virtual_server":
                pass
            elif st.word not in TOP_KNOWN:
                s = suggest(st.word, TOP_LVS, cutoff=0.8)
                if s:
                    raise _fail(st, f"unknown keyword '{st.word}'{s}")
        for st in tree:
            if st.word == "virtual_server":
                self.virtual_server(st)
        detected = "dpvs" if self.dpvs else ("alibaba" if self.fnat else "linux")
        try:
            prof = get_profile(self.profile if self.profile is not None else detected)
        except ValueError as e:
            raise InputError(self.path, str(e)) from None
        t = prof.timeouts
        if self.timeouts:
            t = dataclasses.replace(t, **self.timeouts)
        vips = {a for s in self.services for a in s.addresses}
        director = Director(ips=tuple(a for a in self.ips if a not in vips),
                            vrrp_macs=tuple(self.vmacs), interfaces=tuple(self.interfaces))
        topo = Topology(profile=prof, director=director, services=tuple(self.services),
                        timeouts=t, source=self.path, origin="keepalived")
        topo = apply_defaults(topo)
        validate_topology(topo)
        return topo

    # ---- helpers
    def need_block(self, st: Stmt, nargs: int) -> None:
        if len(st.args) < nargs:
            raise _fail(st, f"'{st.word}' needs a name")
        if st.block is None:
            raise _fail(st, f"'{st.word}' needs a {{ ... }} block")

    def int_arg(self, st: Stmt, lo: int, hi: int, idx: int = 0) -> int:
        if len(st.args) <= idx:
            raise _fail(st, f"'{st.word}' needs a number")
        v = st.args[idx]
        if not v.isdigit() or not lo <= int(v) <= hi:
            raise _fail(st, f"'{st.word} {v}': expected a number {lo}..{hi}")
        return int(v)

    # ---- top-level blocks
    def global_defs(self, st: Stmt) -> None:
        for e in st.block or []:
            if e.word == "lvs_timeouts":
                a = e.args
                if len(a) % 2 or not a:
                    raise _fail(e, "lvs_timeouts takes pairs: tcp N tcpfin N udp N")
                for k, v in zip(a[::2], a[1::2]):
                    if k not in ("tcp", "tcpfin", "udp"):
                        raise _fail(e, f"unknown lvs_timeouts kind '{k}'"
                                    f"{suggest(k, ('tcp', 'tcpfin', 'udp'))}")
                    if not v.isdigit():
                        raise _fail(e, f"lvs_timeouts {k} '{v}' is not a number of seconds")
                    if int(v):
                        self.timeouts[k] = int(v)

    def vrrp(self, st: Stmt) -> None:
        vrid = None
        vmac = False
        v6 = False
        vips = []
        for e in st.block or []:
            if e.word in ("interface", "dpdk_interface") and e.args:
                if e.word == "dpdk_interface":
                    self.dpvs = True
                if e.args[0] not in self.interfaces:
                    self.interfaces.append(e.args[0])
            elif e.word == "virtual_router_id":
                vrid = self.int_arg(e, 1, 255)
            elif e.word == "use_vmac":
                vmac = True
            elif e.word == "native_ipv6":
                v6 = True
            elif e.word in ("unicast_src_ip", "mcast_src_ip") and e.args:
                try:
                    a = parse_ip(e.args[0])
                except ValueError as ex:
                    raise _fail(e, str(ex)) from None
                if a not in self.ips:
                    self.ips.append(a)
            elif e.word == "virtual_ipaddress":
                for x in e.block or []:
                    try:
                        vips.append(parse_ip(x.word.split("/")[0]))
                    except ValueError:
                        pass
        if vmac and vrid is not None:
            fam = 6 if v6 or (vips and all(a.version == 6 for a in vips)) else 4
            m = vrrp_mac(vrid, fam)
            if m not in self.vmacs:
                self.vmacs.append(m)

    def laddr_entries(self, st: Stmt) -> list:
        out = []
        for e in st.block or []:
            if e.args:
                self.dpvs = True          # DPVS writes "IP ifname"
            for a in _range(e, e.word):
                if a not in out:
                    out.append(a)
        return out

    # ---- virtual servers
    def virtual_server(self, st: Stmt) -> None:
        a = st.args
        if st.block is None:
            raise _fail(st, "'virtual_server' needs a { ... } block")
        if not a:
            raise _fail(st, "virtual_server needs IP [PORT], fwmark N or group NAME")
        if a[0] == "match":
            return                      # DPVS SNAT service: not load balancing
        entries: list[tuple] = []       # (vip, port, fwmark, family)
        kind = "addr"
        if a[0] == "fwmark":
            mark = self.int_arg(st, 1, 0xFFFFFFFF, 1)
            entries.append((None, 0, mark, None))
            kind = "fwmark"
        elif a[0] == "group":
            if len(a) < 2:
                raise _fail(st, "virtual_server group needs the group's name")
            g = self.vsg.get(a[1])
            if g is None:
                raise _fail(st, f"no virtual_server_group '{a[1]}'{suggest(a[1], self.vsg)}", "group")
            entries = g[0]
            kind = "group"
        else:
            try:
                vip = parse_ip(a[0])
            except ValueError as e:
                raise _fail(st, str(e)) from None
            port = 0
            if len(a) > 1:
                try:
                    port = parse_port(a[1])
                except ValueError as e:
                    raise _fail(st, str(e)) from None
            entries.append((vip, port, None, None))

        cfg = self.vs_config(st)
        if not cfg["rs"]:
            return          # keepalived: "has no real servers - ignoring"
        if kind == "group" and not cfg["persistence"] and any(
                e[2] is None and e[1] == 0 for e in entries):
            cfg["persistence"] = DEFAULT_PERSISTENCE   # keepalived: zero port -> persistent
        for vip, port, mark, fam in entries:
            self.services.append(self.make_service(st, cfg, vip, port, mark, kind))

    def group_entries(self, g: Stmt) -> list[tuple]:
        out = []
        for e in g.block or []:
            if e.word == "fwmark":
                mark = self.int_arg(e, 1, 0xFFFFFFFF)
                fam = None
                if len(e.args) > 1:
                    if e.args[1] not in ("inet", "inet6"):
                        raise _fail(e, f"fwmark family '{e.args[1]}': inet or inet6")
                    fam = 6 if e.args[1] == "inet6" else 4
                out.append((None, 0, mark, fam))
                continue
            port = 0
            if e.args:
                try:
                    port = parse_port(e.args[0])
                except ValueError as ex:
                    raise _fail(e, str(ex)) from None
            for addr in _range(e, e.word):
                out.append((addr, port, None, None))
        if not out:
            raise _fail(g, f"virtual_server_group '{g.args[0]}' is empty")
        return out

    def vs_config(self, st: Stmt) -> dict:
        cfg = {"sched": DEFAULT_SCHEDULER, "flags": set(), "method": None, "tun": None,
               "persistence": None, "granularity": None, "protocol": None, "pe": None,
               "ops": False, "laddr": None, "synproxy": False, "rs": [], "ip_family": None,
               "fields": {}}
        f = cfg["fields"]
        for e in st.block:
            if not _check_keyword(e, VS_KNOWN, "virtual_server"):
                continue
            w = e.word
            if w in ("lvs_sched", "lb_algo"):
                if not e.args:
                    raise _fail(e, f"'{w}' needs a scheduler name")
                cfg["sched"] = e.args[0].lower()
                f["scheduler"] = (e.line, w)
            elif w in SCHED_FLAGS:
                cfg["flags"].add(w)
                f["sched_flags"] = (e.line, w)
            elif w == "ops":
                cfg["ops"] = True
                f["ops"] = (e.line, w)
            elif w in ("lvs_method", "lb_kind"):
                cfg["method"], cfg["tun"] = self.method(e)
                f["mode"] = (e.line, w)
            elif w == "persistence_timeout":
                cfg["persistence"] = DEFAULT_PERSISTENCE if not e.args else self.int_arg(e, 0, 86400 * 31)
                f["persistence"] = (e.line, w)
            elif w == "persistence_granularity":
                if not e.args:
                    raise _fail(e, "persistence_granularity needs a netmask")
                cfg["granularity"] = (e.args[0], e)
                f["persistence_prefix"] = (e.line, w)
            elif w == "persistence_engine":
                cfg["pe"] = e.args[0] if e.args else None
            elif w == "protocol":
                p = (e.args[0] if e.args else "").upper()
                if p not in ("TCP", "UDP"):
                    if p == "SCTP":
                        raise _fail(e, "SCTP services are not supported (tcp and udp only)")
                    raise _fail(e, f"protocol '{p}'{suggest(p, ('TCP', 'UDP'))}: TCP or UDP")
                cfg["protocol"] = Protocol(p.lower())
                f["protocol"] = (e.line, w)
            elif w == "laddr_group_name":
                if not e.args:
                    raise _fail(e, "laddr_group_name needs a group name")
                if e.args[0] not in self.laddr:
                    raise _fail(e, f"no local_address_group '{e.args[0]}'"
                                f"{suggest(e.args[0], self.laddr)}")
                cfg["laddr"] = e.args[0]
                f["lips"] = (e.line, w)
            elif w == "syn_proxy":
                cfg["synproxy"] = not e.args or e.args[0].lower() not in ("off", "false", "no", "disable")
                f["synproxy"] = (e.line, w)
            elif w == "ip_family":
                if not e.args or e.args[0] not in ("inet", "inet6"):
                    raise _fail(e, "ip_family is inet or inet6")
                cfg["ip_family"] = 6 if e.args[0] == "inet6" else 4
            elif w == "real_server":
                cfg["rs"].append(self.real_server_cfg(e))
        return cfg

    def method(self, e: Stmt) -> tuple[Mode, tuple | None]:
        if not e.args:
            raise _fail(e, f"'{e.word}' needs NAT, DR, TUN or FNAT")
        m = e.args[0].upper()
        if m not in METHODS:
            raise _fail(e, f"unknown forwarding method '{e.args[0]}'{suggest(m, METHODS)}; "
                        "one of NAT, DR, TUN, FNAT")
        mode = METHODS[m]
        if mode is Mode.FULLNAT:
            self.fnat = True
        rest = e.args[1:]
        if mode is not Mode.TUN:
            if rest:
                raise _fail(e, f"unexpected '{rest[0]}' after {m} (tunnel options need TUN)")
            return mode, None
        tun, port, flags = TunType.IPIP, None, None
        i = 0
        if rest[i:i + 1] == ["type"]:
            if len(rest) < 2:
                raise _fail(e, "'type' needs ipip, gue or gre")
            try:
                tun = TunType(rest[1].lower())
            except ValueError:
                raise _fail(e, f"unknown tunnel type '{rest[1]}'"
                            f"{suggest(rest[1], [t.value for t in TunType])}") from None
            i = 2
            if tun is TunType.GUE:
                if rest[i:i + 1] != ["port"] or len(rest) < i + 2:
                    raise _fail(e, "a gue tunnel needs 'port NUM'")
                try:
                    port = parse_port(rest[i + 1], what="tunnel port")
                except ValueError as ex:
                    raise _fail(e, str(ex)) from None
                i += 2
        if i < len(rest):
            fl = rest[i].lower()
            if fl not in ("nocsum", "csum", "remcsum"):
                raise _fail(e, f"unexpected '{rest[i]}' in the tunnel options")
            if tun is TunType.IPIP or (tun is TunType.GRE and fl == "remcsum"):
                raise _fail(e, f"'{fl}' is not allowed with a {tun} tunnel")
            flags = None if fl == "nocsum" else fl
            i += 1
        if i < len(rest):
            raise _fail(e, f"unexpected '{rest[i]}' in the tunnel options")
        return mode, (tun, port, flags)

    def real_server_cfg(self, e: Stmt) -> dict:
        if not e.args:
            raise _fail(e, "real_server needs IP [PORT]")
        try:
            ip = parse_ip(e.args[0])
            port = parse_port(e.args[1]) if len(e.args) > 1 else None
        except ValueError as ex:
            raise _fail(e, str(ex)) from None
        r = {"ip": ip, "port": port, "weight": 1, "method": None, "tun": None, "u": 0, "l": 0,
             "st": e, "fields": {"ip": (e.line, "real_server"), "port": (e.line, "real_server")}}
        for x in e.block or []:
            if not _check_keyword(x, RS_KNOWN, "real_server"):
                continue
            if x.word == "weight":
                r["weight"] = self.int_arg(x, 0, 65535)
                r["fields"]["weight"] = (x.line, "weight")
            elif x.word == "lvs_method":
                r["method"], r["tun"] = self.method(x)
                r["fields"]["mode"] = (x.line, "lvs_method")
            elif x.word == "uthreshold":
                r["u"] = self.int_arg(x, 0, 2**31 - 1)
            elif x.word == "lthreshold":
                r["l"] = self.int_arg(x, 0, 2**31 - 1)
        return r

    def make_service(self, st: Stmt, cfg: dict, vip, port: int, mark, kind: str) -> Service:
        fields = dict(cfg["fields"])
        protocol = cfg["protocol"]
        if mark is None and protocol is None:
            protocol = Protocol.UDP           # keepalived: "no protocol set - defaulting to UDP"
        if mark is not None:
            protocol = None                   # keepalived: protocol ignored for fwmark
        persistence = cfg["persistence"] or 0
        if mark is None and port == 0 and not persistence:
            persistence = DEFAULT_PERSISTENCE  # keepalived: zero port -> persistent
        vs_method = cfg["method"] or Mode.NAT  # keepalived default: NAT
        rss = []
        for r in cfg["rs"]:
            mode = r["method"] or vs_method
            tun = r["tun"] if r["method"] else cfg["tun"]
            rport = r["port"]
            if mark is not None:
                rport = rport or 0
                if mode in (Mode.DR, Mode.TUN):
                    rport = 0                 # keepalived clears it: ignored for fwmark
            elif mode in (Mode.DR, Mode.TUN):
                rport = port                  # keepalived resets a DR/TUN port to the VS port
            elif rport is None:
                rport = port if kind != "group" else 0
            tt = tport = tflags = None
            if mode is Mode.TUN:
                tt, tport, tflags = tun if tun else (TunType.IPIP, None, None)
            rf = tuple((k, ln, key) for k, (ln, key) in r["fields"].items())
            rss.append(RealServer(ip=r["ip"], port=rport, weight=r["weight"], mode=mode,
                                  tun=tt, tun_port=tport, tun_flags=tflags,
                                  u_threshold=r["u"], l_threshold=r["l"],
                                  pos=SourcePos(r["st"].path, r["st"].line, "real_server", rf)))
        prefix = None
        if cfg["granularity"] is not None:
            text, e = cfg["granularity"]
            fam = vip.version if vip is not None else (cfg["ip_family"] or 4)
            try:
                prefix = prefix_from_netmask(text, fam)
            except ValueError as ex:
                raise _fail(e, str(ex)) from None
            if prefix == (32 if fam == 4 else 128):
                prefix = None
        lips = tuple(self.laddr[cfg["laddr"]][0]) if cfg["laddr"] else ()
        modes = {r.mode for r in rss}
        fields.setdefault("mode", (st.line, "lvs_method"))
        sf = tuple((k, ln, key) for k, (ln, key) in fields.items())
        name = st.args[1] if kind == "group" else ""
        return Service(vip=vip, port=port if mark is None else 0, protocol=protocol,
                       real_servers=tuple(rss), scheduler=cfg["sched"],
                       sched_flags=tuple(sorted(cfg["flags"])), persistence=persistence,
                       persistence_prefix=prefix,
                       mode=modes.pop() if len(modes) == 1 else (None if modes else vs_method),
                       lips=lips, fwmark=mark, synproxy=cfg["synproxy"], ops=cfg["ops"],
                       persistence_engine=cfg["pe"], name=name,
                       pos=SourcePos(st.path, st.line, "virtual_server", sf))
