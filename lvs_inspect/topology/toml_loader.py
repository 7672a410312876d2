"""topology.toml -> :class:`Topology`, every key checked.

Keys (all optional unless marked; unknown keys are errors with a did-you-mean)::

    profile = "linux"              # linux | linux-legacy | alibaba | dpvs (default linux)

    [director]
    macs = ["02:..."]              # the director's MACs on every segment
    ips = ["203.0.113.2"]          # its own addresses (not the VIPs)
    lips = ["192.0.2.200"]         # FullNAT local addresses for every service, or "learn":
                                   # unknown, to be learned from the trace
    vrrp_mac = "00:00:5e:00:01:33" # VRRP virtual MAC, or a list of them
    interfaces = ["eth0", "eth1"]  # its interface names, as pcapng captures name them

    [timeouts]                     # override the profile's (seconds)
    tcp, tcpfin, udp, syn_sent, syn_recv, time_wait, close, close_wait, last_ack,
    listen, synack, none

    [[service]]
    vip = "203.0.113.100"          # required unless fwmark
    port = 80                      # required unless fwmark; 0 = all ports (needs persistence)
    protocol = "tcp"               # tcp | udp (default tcp; a fwmark service: any)
    fwmark = 1                     # a firewall-mark service instead of vip/port
    vips = ["203.0.113.100"]       # fwmark: the addresses the mark selects
    ports = [80, 443]              # fwmark: the ports the mark selects
    scheduler = "wlc"              # rr wrr lc wlc sh dh mh sed nq fo ovf lblc lblcr twos conhash
    sched_flags = ["sh-port"]      # flag-1..3, sh-fallback, sh-port, mh-fallback, mh-port
    persistence = 0                # seconds, 0 = off
    persistence_netmask = "255.255.255.0"   # or a prefix length (IPv6: prefix length only)
    mode = "dr"                    # nat | dr | tun | fullnat: default of its real servers
    toa = { kind = 254, length = 8, packets = ["ack", "data"] }   # or false: no TOA
    lips = ["192.0.2.200"]         # FullNAT local addresses of this service
    synproxy = false               # DPVS / Alibaba SYN proxy
    ops = false                    # one-packet scheduling (UDP)
    persistence_engine = "sip"
    name = "web"                   # a label

      [[service.real_server]]
      ip = "203.0.113.11"          # required
      port = 80                    # default: the service port (0 for fwmark DR/TUN)
      weight = 1                   # 0..65535, 0 = quiesced (default 1)
      mode = "tun"                 # default: the service's mode
      tun = "ipip"                 # ipip | gue | gre | unknown (tun only; default ipip;
                                   # unknown: learned from the trace)
      tun_port = 6080              # gue only, required there
      tun_flags = "nocsum"         # nocsum | csum | remcsum (gue), nocsum | csum (gre)
      mac = "02:00:00:00:00:11"
      u_threshold = 0              # ipvsadm -x
      l_threshold = 0              # ipvsadm -y

    [vantage]                      # capture-point name -> role
    "p-c" = "client"               # client | director | director:client-side |
                                   # director:rs-side | rs:<ip> | router | unknown

tomllib gives no positions, so :func:`scan_positions` finds the line of every table and key
itself; errors name the file, that line and the key.
"""
from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import Any

from ..errors import InputError
from ..net import MAC, parse_ip, parse_mac, prefix_from_netmask
from .model import (
    DEFAULT_PROFILE, DEFAULT_SCHEDULER, TOA_PACKETS, Director, Mode, Profile, Protocol,
    RealServer, Service, SourcePos, Timeouts, ToaVariant, Topology, TunType, VantageRole,
    apply_defaults, get_profile, suggest, validate_topology,
)

TOP_KEYS = ("profile", "director", "timeouts", "service", "vantage")
DIRECTOR_KEYS = ("macs", "ips", "lips", "vrrp_mac", "interfaces")
SERVICE_KEYS = ("vip", "port", "protocol", "fwmark", "vips", "ports", "scheduler", "sched_flags",
                "persistence", "persistence_netmask", "mode", "toa", "lips", "synproxy", "ops",
                "persistence_engine", "name", "real_server")
RS_KEYS = ("ip", "port", "weight", "mode", "tun", "tun_port", "tun_flags", "mac",
           "u_threshold", "l_threshold")
TOA_KEYS = ("kind", "length", "packets")
TIMEOUT_KEYS = tuple(f.name for f in Timeouts.__dataclass_fields__.values())


# =========================================================================== positions

def scan_positions(text: str) -> dict[tuple, int]:
    """Line numbers of the tables and keys of a TOML document.

    Paths are tuples of keys and array indexes, as tomllib's result is indexed:
    ``("service", 1, "real_server", 0, "port")``. Best effort: an oddity stops the scan
    and what was found so far is returned (tomllib reports real syntax errors).
    """
    pos: dict[tuple, int] = {}
    try:
        _Scanner(text, pos).run()
    except Exception:       # the scan only adds line numbers; tomllib is the parser
        pass
    return pos


class _Scanner:
    def __init__(self, text: str, pos: dict[tuple, int]):
        self.s = text
        self.i = 0
        self.line = 1
        self.pos = pos
        self.aot: dict[tuple, int] = {}     # resolved array-of-tables path -> count

    # -- low level
    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < len(self.s) else ""

    def adv(self, k: int = 1) -> None:
        for _ in range(k):
            if self.i < len(self.s):
                if self.s[self.i] == "\n":
                    self.line += 1
                self.i += 1

    def skip_ws(self, newlines: bool = False) -> None:
        while True:
            c = self.peek()
            if c in (" ", "\t", "\r") or (newlines and c == "\n"):
                self.adv()
            elif newlines and c == "#":
                self.skip_comment()
            else:
                return

    def skip_comment(self) -> None:
        while self.peek() not in ("", "\n"):
            self.adv()

    def read_string(self) -> str:
        q = self.peek()
        if self.s.startswith(q * 3, self.i):
            self.adv(3)
            start = self.i
            while self.i < len(self.s):
                if q == '"' and self.peek() == "\\":
                    self.adv(2)
                    continue
                if self.s.startswith(q * 3, self.i):
                    end = self.i
                    self.adv(3)
                    while self.peek() == q:      # up to two quotes may close the content
                        self.adv()
                    return self.s[start:end]
                self.adv()
            return self.s[start:]
        self.adv()
        out = []
        while self.i < len(self.s) and self.peek() not in (q, "\n"):
            if q == '"' and self.peek() == "\\":
                out.append(self.s[self.i:self.i + 2])
                self.adv(2)
                continue
            out.append(self.peek())
            self.adv()
        self.adv()
        raw = "".join(out)
        if q == '"' and "\\" in raw:
            try:
                raw = tomllib.loads(f'x = "{raw}"')["x"]
            except tomllib.TOMLDecodeError:
                pass
        return raw

    def read_key(self) -> list[str]:
        parts = []
        while True:
            self.skip_ws()
            c = self.peek()
            if c in ('"', "'"):
                parts.append(self.read_string())
            else:
                start = self.i
                while self.peek() and (self.peek().isalnum() or self.peek() in "-_"):
                    self.adv()
                if self.i == start:
                    raise ValueError("bad key")
                parts.append(self.s[start:self.i])
            self.skip_ws()
            if self.peek() == ".":
                self.adv()
                continue
            return parts

    # -- structure
    def run(self) -> None:
        cur: tuple = ()
        while self.i < len(self.s):
            self.skip_ws(newlines=True)
            c = self.peek()
            if c == "":
                return
            line = self.line
            if c == "[":
                array = self.peek(1) == "["
                self.adv(2 if array else 1)
                parts = self.read_key()
                self.adv(2 if array else 1)
                if array:
                    parent = self.resolve(parts[:-1])
                    apath = parent + (parts[-1],)
                    n = self.aot.get(apath, 0)
                    self.aot[apath] = n + 1
                    cur = apath + (n,)
                else:
                    cur = self.resolve(parts)
                self.pos.setdefault(cur, line)
            else:
                parts = self.read_key()
                full = cur + tuple(parts)
                self.pos.setdefault(full, line)
                self.skip_ws()
                if self.peek() != "=":
                    raise ValueError("expected =")
                self.adv()
                self.skip_ws()
                self.value(full)
            self.skip_ws()
            if self.peek() == "#":
                self.skip_comment()

    def resolve(self, parts: list[str]) -> tuple:
        res: tuple = ()
        for p in parts:
            res = res + (p,)
            if res in self.aot:
                res = res + (self.aot[res] - 1,)
        return res

    def value(self, path: tuple) -> None:
        c = self.peek()
        if c in ('"', "'"):
            self.read_string()
        elif c == "{":
            self.adv()
            while True:
                self.skip_ws()
                if self.peek() == "}":
                    self.adv()
                    return
                line = self.line
                parts = self.read_key()
                self.pos.setdefault(path + tuple(parts), line)
                self.skip_ws()
                if self.peek() != "=":
                    raise ValueError("expected =")
                self.adv()
                self.skip_ws()
                self.value(path + tuple(parts))
                self.skip_ws()
                if self.peek() == ",":
                    self.adv()
        elif c == "[":
            self.adv()
            idx = 0
            while True:
                self.skip_ws(newlines=True)
                if self.peek() == "]":
                    self.adv()
                    return
                if self.peek() == "":
                    return
                self.pos.setdefault(path + (idx,), self.line)
                self.value(path + (idx,))
                idx += 1
                self.skip_ws(newlines=True)
                if self.peek() == ",":
                    self.adv()
        else:
            while self.peek() not in ("", ",", "]", "}", "\n", "#"):
                self.adv()


# =========================================================================== loading

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "an array",
               dict: "a table", float: "a number"}


def _tname(v: Any) -> str:
    if isinstance(v, bool):
        return f"boolean {str(v).lower()}"
    if isinstance(v, str):
        return f'string "{v}"'
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return f"{type(v).__name__} {v!r}"


class _Ctx:
    def __init__(self, path: str, positions: dict[tuple, int]):
        self.path = path
        self.positions = positions

    def line(self, loc: tuple) -> int | None:
        loc = tuple(loc)
        while loc:
            if loc in self.positions:
                return self.positions[loc]
            loc = loc[:-1]
        return None

    def fail(self, loc: tuple, key: str | None, message: str) -> InputError:
        return InputError(self.path, message, line=self.line(loc), key=key)

    def check_keys(self, table: dict, allowed: tuple, loc: tuple, prefix: str) -> None:
        for k in table:
            if k not in allowed:
                name = f"{prefix}.{k}" if prefix else k
                raise self.fail(loc + (k,), name, f"unknown key '{k}'{suggest(k, allowed)}; "
                                f"allowed here: {', '.join(allowed)}")

    def pos_for(self, loc: tuple, prefix: str, keys: tuple, line_of: tuple | None = None,
                extra: dict[str, str] | None = None) -> SourcePos:
        fields = []
        for k in keys:
            fields.append((k, self.positions.get(loc + (k,)), f"{prefix}.{k}" if prefix else k))
        for fname, k in (extra or {}).items():
            fields.append((fname, self.positions.get(loc + (k,)), f"{prefix}.{k}" if prefix else k))
        return SourcePos(self.path, self.line(line_of or loc), prefix or None, tuple(fields))

    # -- typed getters (key = the dotted name shown to the user)
    def typed(self, v: Any, want: type, loc: tuple, key: str) -> Any:
        ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
        if not ok:
            raise self.fail(loc, key, f"expected {_TYPE_NAMES.get(want, want.__name__)}, got {_tname(v)}")
        return v

    def int_in(self, v: Any, lo: int, hi: int, loc: tuple, key: str) -> int:
        n = self.typed(v, int, loc, key)
        if not lo <= n <= hi:
            raise self.fail(loc, key, f"{n} is out of range {lo}..{hi}")
        return n

    def str_list(self, v: Any, loc: tuple, key: str) -> list[str]:
        self.typed(v, list, loc, key)
        for i, x in enumerate(v):
            self.typed(x, str, loc + (i,), key)
        return v

    def ip(self, v: Any, loc: tuple, key: str):
        self.typed(v, str, loc, key)
        try:
            return parse_ip(v)
        except ValueError as e:
            raise self.fail(loc, key, str(e)) from None

    def ips(self, v: Any, loc: tuple, key: str) -> tuple:
        self.typed(v, list, loc, key)
        out = []
        for i, x in enumerate(v):
            a = self.ip(x, loc + (i,), key)
            if a in out:
                raise self.fail(loc + (i,), key, f"{a} is listed twice")
            out.append(a)
        return tuple(out)

    def mac(self, v: Any, loc: tuple, key: str) -> MAC:
        self.typed(v, str, loc, key)
        try:
            return parse_mac(v)
        except ValueError as e:
            raise self.fail(loc, key, str(e)) from None

    def macs(self, v: Any, loc: tuple, key: str) -> tuple:
        self.typed(v, list, loc, key)
        out = []
        for i, x in enumerate(v):
            m = self.mac(x, loc + (i,), key)
            if m in out:
                raise self.fail(loc + (i,), key, f"{m} is listed twice")
            out.append(m)
        return tuple(out)

    def choice(self, v: Any, choices, loc: tuple, key: str, what: str) -> str:
        self.typed(v, str, loc, key)
        s = v.strip().lower()
        if s not in choices:
            raise self.fail(loc, key, f"unknown {what} '{v}'{suggest(s, choices)}; "
                            f"one of {', '.join(choices)}")
        return s


def load_toml(path: str, *, profile: str | None = None) -> Topology:
    """Read a topology.toml file."""
    from . import read_text
    return loads_toml(read_text(path), path, profile=profile)


def loads_toml(text: str, path: str = "<toml>", *, profile: str | None = None) -> Topology:
    """Parse topology TOML text; ``path`` names the source in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", msg)
        line = None
        if m:
            line = int(m.group(1))
            msg = msg[:m.start()] + f" (column {m.group(2)})"
        elif "end of document" in msg:
            line = text.count("\n") + 1
        raise InputError(path, f"invalid TOML: {msg}", line=line) from None
    ctx = _Ctx(path, scan_positions(text))
    ctx.check_keys(data, TOP_KEYS, (), "")

    # ---- profile
    prof_name = profile if profile is not None else data.get("profile", DEFAULT_PROFILE)
    ctx.typed(prof_name, str, ("profile",), "profile")
    try:
        prof: Profile = get_profile(prof_name)
    except ValueError as e:
        raise ctx.fail(("profile",), "profile", str(e)) from None

    director = _director(ctx, data.get("director", {}))
    timeouts = _timeouts(ctx, data.get("timeouts", {}), prof)

    services_raw = data.get("service", [])
    if isinstance(services_raw, dict):
        raise ctx.fail(("service",), "service", "write each service as [[service]] (an array of "
                       "tables), not [service]")
    ctx.typed(services_raw, list, ("service",), "service")
    services = []
    no_toa: set[int] = set()
    for i, raw in enumerate(services_raw):
        loc = ("service", i)
        ctx.typed(raw, dict, loc, "service")
        svc, explicit_none = _service(ctx, raw, loc, prof)
        if explicit_none:
            no_toa.add(i)
        services.append(svc)

    vantages = []
    vfields = []
    vraw = data.get("vantage", {})
    ctx.typed(vraw, dict, ("vantage",), "vantage")
    for name, role in vraw.items():
        loc = ("vantage", name)
        key = f"vantage.{name}"
        ctx.typed(role, str, loc, key)
        try:
            vantages.append((name, VantageRole.parse(role)))
        except ValueError as e:
            raise ctx.fail(loc, key, str(e)) from None
        vfields.append((f"vantage:{name}", ctx.positions.get(loc), key))
    top_pos = SourcePos(path, ctx.line(("profile",)) or 1, None,
                        tuple(vfields) + (("profile", ctx.positions.get(("profile",)), "profile"),))

    topo = Topology(profile=prof, director=director, services=tuple(services),
                    vantages=tuple(vantages), timeouts=timeouts, source=path, origin="toml",
                    pos=top_pos)
    topo = apply_defaults(topo, explicit_no_toa=frozenset(no_toa))
    validate_topology(topo)
    return topo


def _director(ctx: _Ctx, raw: Any) -> Director:
    loc = ("director",)
    ctx.typed(raw, dict, loc, "director")
    ctx.check_keys(raw, DIRECTOR_KEYS, loc, "director")
    kw: dict[str, Any] = {}
    if "macs" in raw:
        kw["macs"] = ctx.macs(raw["macs"], loc + ("macs",), "director.macs")
    if "ips" in raw:
        kw["ips"] = ctx.ips(raw["ips"], loc + ("ips",), "director.ips")
    if "lips" in raw:
        if isinstance(raw["lips"], str):
            if raw["lips"].strip().lower() != "learn":
                raise ctx.fail(loc + ("lips",), "director.lips", f"expected a list of addresses "
                               f'or "learn", got {_tname(raw["lips"])}')
            kw["learn_lips"] = True
        else:
            kw["lips"] = ctx.ips(raw["lips"], loc + ("lips",), "director.lips")
    if "vrrp_mac" in raw:
        v = raw["vrrp_mac"]
        if isinstance(v, list):
            kw["vrrp_macs"] = ctx.macs(v, loc + ("vrrp_mac",), "director.vrrp_mac")
        else:
            kw["vrrp_macs"] = (ctx.mac(v, loc + ("vrrp_mac",), "director.vrrp_mac"),)
    if "interfaces" in raw:
        names = ctx.str_list(raw["interfaces"], loc + ("interfaces",), "director.interfaces")
        kw["interfaces"] = tuple(names)
    pos = ctx.pos_for(loc, "director", DIRECTOR_KEYS, extra={"vrrp_macs": "vrrp_mac"})
    return Director(pos=pos, **kw)


def _timeouts(ctx: _Ctx, raw: Any, prof: Profile) -> Timeouts:
    loc = ("timeouts",)
    ctx.typed(raw, dict, loc, "timeouts")
    ctx.check_keys(raw, TIMEOUT_KEYS, loc, "timeouts")
    values = {k: ctx.int_in(v, 0, 86400 * 31, loc + (k,), f"timeouts.{k}") for k, v in raw.items()}
    if not values:
        return prof.timeouts
    return dataclasses.replace(prof.timeouts, **values)


def _service(ctx: _Ctx, raw: dict, loc: tuple, prof: Profile) -> tuple[Service, bool]:
    p = "service"
    ctx.check_keys(raw, SERVICE_KEYS, loc, p)

    def k(name):
        return loc + (name,), f"{p}.{name}"

    fwmark = None
    if "fwmark" in raw:
        fwmark = ctx.int_in(raw["fwmark"], 1, 0xFFFFFFFF, *k("fwmark"))
    vip = None
    vips: tuple = ()
    ports: tuple = ()
    if fwmark is not None:
        if "vip" in raw:
            raise ctx.fail(*k("vip"), "a fwmark service takes 'vips' (the addresses the mark "
                           "selects), not 'vip'")
        if "port" in raw:
            raise ctx.fail(*k("port"), "a fwmark service takes 'ports' (the ports the mark "
                           "selects), not 'port'")
        if "vips" in raw:
            vips = ctx.ips(raw["vips"], *k("vips"))
        if "ports" in raw:
            lst = ctx.typed(raw["ports"], list, *k("ports"))
            ports = tuple(ctx.int_in(x, 1, 65535, loc + ("ports", i), f"{p}.ports")
                          for i, x in enumerate(lst))
        port = 0
    else:
        for name in ("vips", "ports"):
            if name in raw:
                raise ctx.fail(*k(name), f"'{name}' only describes a fwmark service; "
                               f"use {'vip' if name == 'vips' else 'port'}")
        if "vip" not in raw:
            raise ctx.fail(loc, p, "missing key 'vip' (or 'fwmark')")
        vip = ctx.ip(raw["vip"], *k("vip"))
        if "port" not in raw:
            raise ctx.fail(loc, f"{p}.port", "missing key 'port' (0 = all ports, with persistence)")
        port = ctx.int_in(raw["port"], 0, 65535, *k("port"))

    if "protocol" in raw:
        protocol = Protocol(ctx.choice(raw["protocol"], ("tcp", "udp"), *k("protocol"), "protocol"))
    else:
        protocol = None if fwmark is not None else Protocol.TCP

    scheduler = DEFAULT_SCHEDULER
    if "scheduler" in raw:
        scheduler = ctx.typed(raw["scheduler"], str, *k("scheduler")).strip().lower()
    flags: tuple = ()
    if "sched_flags" in raw:
        flags = tuple(sorted(set(ctx.str_list(raw["sched_flags"], *k("sched_flags")))))
    persistence = 0
    if "persistence" in raw:
        persistence = ctx.int_in(raw["persistence"], 0, 86400 * 31, *k("persistence"))
    mode = None
    if "mode" in raw:
        mode = Mode(ctx.choice(raw["mode"], tuple(m.value for m in Mode), *k("mode"), "mode"))
    toa = None
    explicit_none = False
    if "toa" in raw:
        v = raw["toa"]
        if v is False:
            explicit_none = True
        else:
            if not isinstance(v, dict):
                raise ctx.fail(*k("toa"), f"expected a table {{ kind = 254, length = 8 }} or "
                               f"false, got {_tname(v)}")
            tl = loc + ("toa",)
            ctx.check_keys(v, TOA_KEYS, tl, f"{p}.toa")
            kind = ctx.int_in(v.get("kind", 254), 0, 255, tl + ("kind",), f"{p}.toa.kind")
            length = ctx.int_in(v.get("length", 8), 0, 40, tl + ("length",), f"{p}.toa.length")
            if "packets" in v:
                pk = ctx.str_list(v["packets"], tl + ("packets",), f"{p}.toa.packets")
                for i, x in enumerate(pk):
                    if x not in TOA_PACKETS:
                        raise ctx.fail(tl + ("packets", i), f"{p}.toa.packets",
                                       f"unknown TOA packet '{x}'{suggest(x, TOA_PACKETS)}; "
                                       f"one of {', '.join(TOA_PACKETS)}")
                packets = frozenset(pk)
            else:
                packets = prof.toa_packets
            toa = ToaVariant(kind, length, packets)
    lips: tuple = ()
    if "lips" in raw:
        lips = ctx.ips(raw["lips"], *k("lips"))
    synproxy = ctx.typed(raw["synproxy"], bool, *k("synproxy")) if "synproxy" in raw else False
    ops = ctx.typed(raw["ops"], bool, *k("ops")) if "ops" in raw else False
    pe = ctx.typed(raw["persistence_engine"], str, *k("persistence_engine")) \
        if "persistence_engine" in raw else None
    name = ctx.typed(raw["name"], str, *k("name")) if "name" in raw else ""

    rss_raw = raw.get("real_server", [])
    if isinstance(rss_raw, dict):
        raise ctx.fail(*k("real_server"), "write each real server as [[service.real_server]]")
    ctx.typed(rss_raw, list, *k("real_server"))
    rss = []
    for j, r in enumerate(rss_raw):
        rloc = loc + ("real_server", j)
        ctx.typed(r, dict, rloc, f"{p}.real_server")
        rss.append(_real_server(ctx, r, rloc, mode, port, fwmark))

    prefix = None
    if "persistence_netmask" in raw:
        v = raw["persistence_netmask"]
        fam = Service(vip=vip, port=port, vips=vips, fwmark=fwmark, real_servers=tuple(rss)).family or 4
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ctx.fail(*k("persistence_netmask"), f"expected a netmask string or a prefix "
                           f"length, got {_tname(v)}")
        try:
            prefix = prefix_from_netmask(v, fam)
        except ValueError as e:
            raise ctx.fail(*k("persistence_netmask"), str(e)) from None
        if prefix == (32 if fam == 4 else 128):
            prefix = None

    spos = ctx.pos_for(loc, p, SERVICE_KEYS, extra={"persistence_prefix": "persistence_netmask"})
    svc = Service(vip=vip, port=port, protocol=protocol, real_servers=tuple(rss),
                  scheduler=scheduler, sched_flags=flags, persistence=persistence,
                  persistence_prefix=prefix, mode=mode, toa=toa, lips=lips, fwmark=fwmark,
                  vips=vips, ports=ports, synproxy=synproxy, ops=ops, persistence_engine=pe,
                  name=name, pos=spos)
    return svc, explicit_none


def _real_server(ctx: _Ctx, raw: dict, loc: tuple, svc_mode: Mode | None, svc_port: int,
                 fwmark: int | None) -> RealServer:
    p = "service.real_server"
    ctx.check_keys(raw, RS_KEYS, loc, p)

    def k(name):
        return loc + (name,), f"{p}.{name}"

    if "ip" not in raw:
        raise ctx.fail(loc, p, "missing key 'ip'")
    ip = ctx.ip(raw["ip"], *k("ip"))
    if "mode" in raw:
        mode = Mode(ctx.choice(raw["mode"], tuple(m.value for m in Mode), *k("mode"), "mode"))
    elif svc_mode is not None:
        mode = svc_mode
    else:
        raise ctx.fail(loc, f"{p}.mode", f"real server {ip} has no mode and its service sets "
                       "none: set mode on the service or on the real server")
    if "port" in raw:
        port = ctx.int_in(raw["port"], 0, 65535, *k("port"))
    else:
        port = 0 if (fwmark is not None and mode in (Mode.DR, Mode.TUN)) else svc_port
    weight = ctx.int_in(raw["weight"], 0, 65535, *k("weight")) if "weight" in raw else 1
    tun = None
    if "tun" in raw:
        t = ctx.choice(raw["tun"], tuple(t.value for t in TunType) + ("unknown",), *k("tun"),
                       "tunnel type")
        tun = None if t == "unknown" else TunType(t)
    elif mode is Mode.TUN:
        tun = TunType.IPIP
    tun_port = ctx.int_in(raw["tun_port"], 0, 65535, *k("tun_port")) if "tun_port" in raw else None
    tun_flags = None
    if "tun_flags" in raw:
        tun_flags = ctx.choice(raw["tun_flags"], ("nocsum", "csum", "remcsum"), *k("tun_flags"),
                               "tunnel flag")
    if tun_flags == "nocsum":
        # the kernel's "no checksum" is flag value 0, i.e. no flag: the model keeps None
        if tun not in (TunType.GUE, TunType.GRE) and raw.get("tun") != "unknown":
            raise ctx.fail(*k("tun_flags"), f"tun_flags 'nocsum' is for gue and gre tunnels, "
                           f"this one is {tun or 'not a tunnel'}")
        tun_flags = None
    mac = ctx.mac(raw["mac"], *k("mac")) if "mac" in raw else None
    ut = ctx.int_in(raw["u_threshold"], 0, 2**31 - 1, *k("u_threshold")) if "u_threshold" in raw else 0
    lt = ctx.int_in(raw["l_threshold"], 0, 2**31 - 1, *k("l_threshold")) if "l_threshold" in raw else 0
    pos = ctx.pos_for(loc, p, RS_KEYS)
    if "mode" not in raw:       # a mode error is about the service's mode line
        pos = SourcePos(pos.path, pos.line, pos.key,
                        tuple(f for f in pos.fields if f[0] != "mode")
                        + (("mode", ctx.positions.get(loc[:-2] + ("mode",)) or pos.line, "service.mode"),))
    return RealServer(ip=ip, port=port, weight=weight, mode=mode, tun=tun, tun_port=tun_port,
                      tun_flags=tun_flags, mac=mac, u_threshold=ut, l_threshold=lt, pos=pos)
