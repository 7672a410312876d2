"""``ipvsadm`` output -> :class:`Topology`.

Two formats, as printed by ipvsadm 1.31 (ipvsadm.c ``print_service_entry``) and by the
ipvsadm of Alibaba LVS and DPVS:

* rules, ``ipvsadm -Sn`` (also a file of ``ipvsadm`` commands, one per line, with or
  without a leading ``ipvsadm``)::

      -A -t 203.0.113.100:80 -s wlc -p 300 -M 255.255.255.0 -b sh-port
      -a -t 203.0.113.100:80 -r 192.0.2.11:80 -g -w 1
      -a -t 203.0.113.100:80 -r 192.0.2.13:80 -i -w 1 --tun-type gue --tun-port 6080 --tun-nocsum
      -A -f 1 -s rr -p 300            -A -u [2001:db8::100]:53 -s rr
      -a -t 10.0.0.100:80 -r 192.168.100.2:80 -b -w 1           # DPVS/Alibaba FullNAT
      --add-laddr -z 192.168.100.200 -t 10.0.0.100:80 -F dpdk0   # DPVS/Alibaba local address
      --set 900 120 300

  Commands: -A -E -D -a -e -d -C, --set, -P/--add-laddr, -Q/--del-laddr (listing commands
  such as -L, -S, -G, -Z are ignored). Options: -t -u -f -6 -s -p -M -b (scheduler flags on
  -A/-E, FullNAT on -a/-e) --pe -o -j/--synproxy, -r -g -m -i -w -x -y --tun-type
  --tun-port --tun-nocsum --tun-csum --tun-remcsum, -z/--laddr -F/--ifname; long forms and
  ``--opt=value`` work, short ones group (``-At``). DPVS/Alibaba ``-S`` print FullNAT real
  servers with ``(null)`` as the method switch (fwd_switch() has no case for it) and
  ``pe``/``ops`` without dashes: both are read. DPVS SNAT "match" services (-H, -J) are
  not load-balanced services and are skipped.

* listing, ``ipvsadm -Ln`` (also with ``--tun-info``), DPVS/Alibaba ``ipvsadm -G`` (local
  addresses) and ``ipvsadm -L --timeout``; several may be concatenated in one file::

      IP Virtual Server version 1.2.1 (size=4096)
      Prot LocalAddress:Port Scheduler Flags
        -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
      TCP  203.0.113.100:80 wlc persistent 300 mask 255.255.255.0
        -> 192.0.2.11:80                Route   1      0          0
      FWM  1 rr
      VIP:VPORT            TOTAL    SNAT_IP              CONFLICTS  CONNS
      10.0.0.100:80        1
                                    192.168.100.200      0          0
      Timeout (tcp tcpfin udp): 900 120 300

  Plain ``-Ln`` does not show the tunnel type of a Tunnel server (``--tun-info`` and
  ``-Sn`` do): it is left unknown, to be learned from the trace.
  Listings without the Forward column (--stats, --rate, --thresholds, --persistent-conn)
  and non-numeric ones (``-L`` without ``-n``) cannot give a topology: an error says so.

DPVS/Alibaba ``-S`` and ``-Ln`` do not show the FullNAT local addresses (``-G`` and
``--add-laddr`` lines do); without them the LIPs are left to be learned from the trace.

The profile is ``linux`` unless the file shows FullNAT, local addresses or SYN proxy
(``dpvs``, or ``alibaba`` when the -G header says LADDR); pass ``profile=`` to choose.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
import socket

from ..errors import InputError
from ..net import IPAddress, parse_ip, parse_ip_port, parse_port, prefix_from_netmask
from .model import (
    DEFAULT_PERSISTENCE, DEFAULT_SCHEDULER, Director, Mode, Protocol, RealServer, Service,
    SourcePos, Topology, TunType, apply_defaults, get_profile, suggest, validate_topology,
)

# ----------------------------------------------------------------------------- options
# long name -> (nargs: 0 / 1 / "?" optional, short letter or None)
OPTIONS: dict[str, tuple] = {
    "add-service": (0, "A"), "edit-service": (0, "E"), "delete-service": (0, "D"),
    "clear": (0, "C"), "list": (0, "L"), "zero": (0, "Z"), "add-server": (0, "a"),
    "edit-server": (0, "e"), "delete-server": (0, "d"), "set": (0, None), "help": (0, "h"),
    "version": (0, "v"), "restore": (0, "R"), "save": (0, "S"),
    "start-daemon": (1, None), "stop-daemon": (1, None),
    "add-laddr": (0, "P"), "del-laddr": (0, "Q"), "get-laddr": (0, "G"),
    "add-blklst": (0, "U"), "del-blklst": (0, "V"), "get-blklst": (0, "B"),
    "tcp-service": (1, "t"), "udp-service": (1, "u"), "sctp-service": (1, None),
    "icmp-service": (1, "q"), "fwmark-service": (1, "f"), "match": (1, "H"),
    "scheduler": (1, "s"), "persistent": ("?", "p"), "netmask": (1, "M"),
    "real-server": (1, "r"), "masquerading": (0, "m"), "ipip": (0, "i"), "gatewaying": (0, "g"),
    "fullnat": (0, None), "sched-flags": (1, None), "snat": (0, "J"),
    "weight": (1, "w"), "u-threshold": (1, "x"), "l-threshold": (1, "y"),
    "numeric": (0, "n"), "connection": (0, "c"), "mcast-interface": (1, None),
    "syncid": (1, None), "timeout": (0, None), "daemon": (0, None), "stats": (0, None),
    "rate": (0, None), "thresholds": (0, None), "persistent-conn": (0, None),
    "nosort": (0, None), "sort": (0, None), "exact": (0, "X"), "ipv6": (0, "6"), "ops": (0, "o"),
    "pe": (1, None), "mcast-group": (1, None), "mcast-port": (1, None), "mcast-ttl": (1, None),
    "sync-maxlen": (1, None), "tun-info": (0, None), "tun-type": (1, None), "tun-port": (1, None),
    "tun-nocsum": (0, None), "tun-csum": (0, None), "tun-remcsum": (0, None),
    "laddr": (1, "z"), "blklst": (1, "k"), "synproxy": (1, "j"), "ifname": (1, "F"),
    "hash-target": (1, "Y"), "sockpair": (1, None),
}
SHORT = {v[1]: k for k, v in OPTIONS.items() if v[1]}
SHORT["l"] = "list"
# -b: scheduler flags on -A/-E (ipvsadm 1.31), FullNAT on -a/-e (DPVS, Alibaba)
COMMANDS = {"add-service", "edit-service", "delete-service", "clear", "add-server",
            "edit-server", "delete-server", "set", "add-laddr", "del-laddr"}
IGNORED_COMMANDS = {"list", "zero", "help", "version", "restore", "save", "start-daemon",
                    "stop-daemon", "get-laddr", "add-blklst", "del-blklst", "get-blklst"}
SERVICE_OPTS = {"tcp-service", "udp-service", "sctp-service", "icmp-service", "fwmark-service", "match"}
SVC_ONLY = {"scheduler", "persistent", "netmask", "sched-flags", "pe", "ops", "synproxy", "ipv6",
            "hash-target"}
RS_ONLY = {"real-server", "masquerading", "ipip", "gatewaying", "fullnat", "weight",
           "u-threshold", "l-threshold", "tun-type", "tun-port", "tun-nocsum", "tun-csum",
           "tun-remcsum"}
FORWARD = {"masquerading": Mode.NAT, "ipip": Mode.TUN, "gatewaying": Mode.DR, "fullnat": Mode.FULLNAT}
TUNFLAG_OPTS = {"tun-nocsum": "nocsum", "tun-csum": "csum", "tun-remcsum": "remcsum"}


def _opt_display(name: str) -> str:
    spec = OPTIONS.get(name)
    if spec and spec[1]:
        return f"-{spec[1]}"
    return f"--{name}"


# ----------------------------------------------------------------------------- builders

class _Rs:
    def __init__(self, ip, port, line):
        self.ip, self.port, self.line = ip, port, line
        self.weight, self.mode = 1, Mode.DR
        self.tun = None
        self.tun_port = None
        self.tun_flags = None
        self.u = self.l = 0
        self.keys: dict[str, tuple[int, str]] = {}

    def build(self, path: str) -> RealServer:
        fields = tuple((f, ln, k) for f, (ln, k) in self.keys.items())
        return RealServer(ip=self.ip, port=self.port, weight=self.weight, mode=self.mode,
                          tun=self.tun, tun_port=self.tun_port, tun_flags=self.tun_flags,
                          u_threshold=self.u, l_threshold=self.l,
                          pos=SourcePos(path, self.line, "-r", fields))


class _Svc:
    def __init__(self, ident, line, opt):
        self.ident = ident
        self.line = line
        self.opt = opt
        self.vip = None
        self.port = 0
        self.protocol: Protocol | None = Protocol.TCP
        self.fwmark = None
        self.v6 = False
        self.scheduler = DEFAULT_SCHEDULER
        self.flags: tuple = ()
        self.persistence = 0
        self.prefix = None
        self.pe = None
        self.ops = False
        self.synproxy = False
        self.rs: list[_Rs] = []
        self.lips: list = []
        self.keys: dict[str, tuple[int, str]] = {}

    @property
    def family(self):
        if self.vip is not None:
            return self.vip.version
        return 6 if self.v6 else 4

    def build(self, path: str) -> Service:
        rss = []
        for r in self.rs:
            if self.fwmark is not None and r.mode in (Mode.DR, Mode.TUN):
                r.port = 0        # the kernel ignores a DR/TUN port on a fwmark service
            rss.append(r.build(path))
        modes = {r.mode for r in rss}
        fields = tuple((f, ln, k) for f, (ln, k) in self.keys.items())
        return Service(vip=self.vip, port=self.port, protocol=self.protocol,
                       real_servers=tuple(rss), scheduler=self.scheduler,
                       sched_flags=tuple(sorted(self.flags)), persistence=self.persistence,
                       persistence_prefix=self.prefix,
                       mode=modes.pop() if len(modes) == 1 else None,
                       lips=tuple(self.lips), fwmark=self.fwmark, synproxy=self.synproxy,
                       ops=self.ops, persistence_engine=self.pe,
                       pos=SourcePos(path, self.line, self.opt, fields))


# ----------------------------------------------------------------------------- detection

_LIST_HEAD = re.compile(r"^(IP Virtual Server version|Prot LocalAddress:Port|\s+-> |VIP:VPORT\s|"
                        r"Timeout \(tcp tcpfin udp\):|(TCP|UDP|SCTP)  \S+:\d+ \S+|FWM  \d+)")


def looks_like_listing(lines: list[str]) -> bool:
    for ln in lines:
        if not ln.strip() or ln.lstrip().startswith("#"):
            continue
        return bool(_LIST_HEAD.match(ln))
    return False


_RULE_START = re.compile(r"^-(-(add|edit|delete)-(service|server)\b|-(add|del)-laddr\b|-set\b|"
                         r"[AEDaedCPQ])")


def looks_like_rules(lines: list[str]) -> bool:
    """An ipvsadm command among the first significant lines (a stray line is then an error
    with its line number rather than an unrecognised file)."""
    seen = 0
    for ln in lines:
        toks = ln.split("#", 1)[0].split()
        if not toks:
            continue
        toks = _strip_prefix(toks)
        if toks and _RULE_START.match(toks[0]):
            return True
        seen += 1
        if seen >= 20:
            break
    return False


def _strip_prefix(toks: list[str]) -> list[str]:
    while toks and (toks[0] in ("sudo", "$", "#") or toks[0].rstrip("/").endswith("ipvsadm")):
        toks = toks[1:]
    return toks


def loads_ipvsadm(text: str, path: str = "<ipvsadm>", *, profile: str | None = None) -> Topology:
    lines = text.splitlines()
    if looks_like_listing(lines):
        return _Listing(path, profile).parse(lines)
    return _Rules(path, profile).parse(lines)


# ----------------------------------------------------------------------------- common

def _finish(path: str, origin: str, services: list[_Svc], dir_lips: list, timeouts: dict,
            profile: str | None, detected: str) -> Topology:
    try:
        prof = get_profile(profile if profile is not None else detected)
    except ValueError as e:
        raise InputError(path, str(e)) from None
    t = prof.timeouts
    if timeouts:
        t = dataclasses.replace(t, **{k: v for k, v in timeouts.items() if v})
    topo = Topology(profile=prof, director=Director(lips=tuple(dir_lips)),
                    services=tuple(s.build(path) for s in services), timeouts=t,
                    source=path, origin=origin)
    # DPVS/Alibaba `ipvsadm -S` and `-Ln` do not show local addresses (-G does): without
    # them the LIPs are to be learned from the trace
    if not dir_lips and any(not s.lips and any(r.mode is Mode.FULLNAT for r in s.rs)
                            for s in services):
        topo = topo.with_director(learn_lips=True)
    topo = apply_defaults(topo)
    validate_topology(topo)
    return topo


def _detect(services: list[_Svc], dir_lips: list, alibaba_hint: bool) -> str:
    fnat = any(r.mode is Mode.FULLNAT for s in services for r in s.rs)
    if fnat or dir_lips or any(s.lips or s.synproxy for s in services):
        return "alibaba" if alibaba_hint else "dpvs"
    return "linux"


def _port_of(text: str, proto: str, path: str, line: int, key: str) -> int:
    try:
        return parse_port(text)
    except ValueError:
        try:
            return socket.getservbyname(text, proto)
        except (OSError, TypeError):
            raise InputError(path, f"'{text}' is not a port number (use numeric output: "
                             "ipvsadm -Sn / -Ln)", line=line, key=key) from None


def _addr_port(text: str, proto: str, path: str, line: int, key: str) -> tuple[IPAddress, int | None]:
    s = text.strip()
    try:
        return parse_ip_port(s)
    except ValueError:
        pass
    # a service name as the port (ipvsadm -S without -n prints "host:http")
    host, sep, port = s.rpartition(":") if not s.startswith("[") else (s, "", "")
    if sep:
        try:
            addr = parse_ip(host)
        except ValueError:
            addr = None
        if addr is not None:
            return addr, _port_of(port, proto, path, line, key)
    raise InputError(path, f"'{text}' is not an address[:port] (names need resolving: use "
                     "numeric output, ipvsadm -Sn / -Ln)", line=line, key=key)


# ----------------------------------------------------------------------------- rules (-S)

class _Rules:
    def __init__(self, path: str, profile: str | None):
        self.path = path
        self.profile = profile
        self.services: dict[tuple, _Svc] = {}
        self.dir_lips: list = []
        self.timeouts: dict[str, int] = {}

    def fail(self, line, message, key=None) -> InputError:
        return InputError(self.path, message, line=line, key=key)

    def parse(self, lines: list[str]) -> Topology:
        for n, raw in enumerate(lines, 1):
            try:
                toks = shlex.split(raw, comments=True)
            except ValueError as e:
                raise self.fail(n, f"cannot split the line: {e}") from None
            if not toks:
                continue
            toks = _strip_prefix(toks)
            if not toks:
                continue
            if not toks[0].startswith("-"):
                raise self.fail(n, f"not an ipvsadm rule: '{raw.strip()}' (expected the output "
                                "of ipvsadm -Sn or ipvsadm commands)")
            self.command(n, toks)
        return _finish(self.path, "ipvsadm-save", list(self.services.values()), self.dir_lips,
                       self.timeouts, self.profile, _detect(list(self.services.values()),
                                                            self.dir_lips, False))

    def tokens(self, line: int, toks: list[str]) -> tuple[str | None, list[tuple[str, str | None, str]], list[str]]:
        """-> (command, [(option, argument, as written)], positional arguments)."""
        cmd = None
        opts: list[tuple[str, str | None, str]] = []
        pos: list[str] = []
        i = 0

        def takes(name: str):
            if name == "b":
                return 1 if cmd in ("add-service", "edit-service") else 0
            return OPTIONS[name][0]

        while i < len(toks):
            t = toks[i]
            i += 1
            if t == "(null)":          # DPVS/Alibaba -S: FullNAT has no switch in fwd_switch()
                opts.append(("fullnat", None, t))
                continue
            if t in ("ops", "pe") and cmd in ("add-service", "edit-service"):
                if t == "ops":
                    opts.append(("ops", None, t))
                else:
                    if i >= len(toks):
                        raise self.fail(line, "'pe' needs a persistence engine name", "pe")
                    opts.append(("pe", toks[i], t))
                    i += 1
                continue
            if t.startswith("--") and len(t) > 2:
                name, eq, val = t[2:].partition("=")
                if name not in OPTIONS:
                    raise self.fail(line, f"unknown option '--{name}'"
                                    f"{suggest(name, OPTIONS)}", t)
                nargs = OPTIONS[name][0]
                arg = None
                if eq:
                    if nargs == 0:
                        raise self.fail(line, f"option '--{name}' takes no value", t)
                    arg = val
                elif nargs == 1:
                    if i >= len(toks):
                        raise self.fail(line, f"option '--{name}' needs a value", t)
                    arg = toks[i]
                    i += 1
                elif nargs == "?" and i < len(toks) and not toks[i].startswith("-"):
                    arg = toks[i]
                    i += 1
                if name in COMMANDS or name in IGNORED_COMMANDS:
                    if cmd is not None:
                        raise self.fail(line, f"two commands on one line ({cmd} and {name})", t)
                    cmd = name
                else:
                    opts.append((name, arg, t))
                continue
            if t.startswith("-") and len(t) > 1:
                j = 1
                while j < len(t):
                    c = t[j]
                    j += 1
                    if c == "b":
                        name = "sched-flags" if cmd in ("add-service", "edit-service") else "fullnat"
                    elif c in SHORT:
                        name = SHORT[c]
                    else:
                        raise self.fail(line, f"unknown option '-{c}'"
                                        f"{suggest('-' + c, ['-' + k for k in SHORT])}", t)
                    nargs = 1 if name == "sched-flags" else OPTIONS[name][0]
                    arg = None
                    if nargs == 1 or nargs == "?":
                        if j < len(t):
                            arg = t[j:]
                            j = len(t)
                        elif nargs == 1:
                            if i >= len(toks):
                                raise self.fail(line, f"option '-{c}' needs a value", t)
                            arg = toks[i]
                            i += 1
                        elif i < len(toks) and not toks[i].startswith("-") and toks[i] not in ("ops", "pe", "(null)"):
                            arg = toks[i]
                            i += 1
                    if name in COMMANDS or name in IGNORED_COMMANDS:
                        if cmd is not None and not (cmd == "list" and name == "list"):
                            raise self.fail(line, f"two commands on one line ({cmd} and {name})", t)
                        cmd = name
                    else:
                        opts.append((name, arg, f"-{c}"))
                continue
            pos.append(t)
        return cmd, opts, pos

    def command(self, line: int, toks: list[str]) -> None:
        cmd, opts, positional = self.tokens(line, toks)
        if cmd is None:
            raise self.fail(line, "no command (-A, -a, -E, -e, -D, -d, -C, --set, --add-laddr)")
        if cmd in IGNORED_COMMANDS:
            return
        if cmd == "set":
            if len(positional) != 3:
                raise self.fail(line, "--set needs three timeouts: tcp tcpfin udp", "--set")
            vals = []
            for v in positional:
                if not v.isdigit():
                    raise self.fail(line, f"timeout '{v}' is not a number of seconds", "--set")
                vals.append(int(v))
            for k, v in zip(("tcp", "tcpfin", "udp"), vals):
                if v:
                    self.timeouts[k] = v
            return
        if positional:
            raise self.fail(line, f"unexpected argument '{positional[0]}'")
        if cmd == "clear":
            self.services.clear()
            return
        if any(o[0] == "match" for o in opts) or any(o[0] == "snat" for o in opts):
            return              # DPVS SNAT "match" service: not a load-balanced service
        svc_opts = [o for o in opts if o[0] in SERVICE_OPTS]
        if not svc_opts:
            raise self.fail(line, f"{cmd} needs a service: -t, -u or -f", None)
        if len(svc_opts) > 1:
            raise self.fail(line, "more than one service on one line", svc_opts[1][2])
        sopt, sarg, skey = svc_opts[0]
        if sopt in ("sctp-service", "icmp-service"):
            raise self.fail(line, f"{sopt.split('-')[0].upper()} services are not supported "
                            "(tcp and udp only)", skey)
        ident, proto, vip, vport, fwmark = self.service_ident(line, sopt, sarg, skey, opts)

        if cmd in ("add-service", "edit-service"):
            self.check_allowed(line, cmd, opts, SVC_ONLY | SERVICE_OPTS)
            if cmd == "add-service":
                if ident in self.services:
                    first = self.services[ident].line
                    raise self.fail(line, f"service {self.label(ident)} is added twice (first "
                                    f"at line {first})", skey)
                s = _Svc(ident, line, "-A")
                s.vip, s.port, s.fwmark = vip, vport, fwmark
                s.protocol = proto
                s.v6 = ident[0] == "fwmark" and ident[2] == 6
                s.keys["vip"] = s.keys["port"] = s.keys["fwmark"] = (line, skey)
                self.services[ident] = s
            else:
                s = self.need_service(line, ident, skey)
            self.service_options(line, s, opts)
            return
        if cmd == "delete-service":
            self.need_service(line, ident, skey)
            del self.services[ident]
            return
        if cmd in ("add-laddr", "del-laddr"):
            s = self.need_service(line, ident, skey)
            lip_opts = [o for o in opts if o[0] == "laddr"]
            if not lip_opts:
                raise self.fail(line, f"--{cmd} needs -z LIP", None)
            for _, arg, key in lip_opts:
                try:
                    lip = parse_ip(arg)
                except ValueError as e:
                    raise self.fail(line, str(e), key) from None
                if cmd == "add-laddr":
                    if lip not in s.lips:
                        s.lips.append(lip)
                        s.keys.setdefault("lips", (line, key))
                elif lip in s.lips:
                    s.lips.remove(lip)
            return
        # real servers
        s = self.need_service(line, ident, skey)
        self.check_allowed(line, cmd, opts, RS_ONLY | SERVICE_OPTS)
        r_opts = [o for o in opts if o[0] == "real-server"]
        if not r_opts:
            raise self.fail(line, f"-{OPTIONS[cmd][1]} needs -r server-address", None)
        _, rarg, rkey = r_opts[-1]
        ip, rport = _addr_port(rarg, (proto or Protocol.TCP).value, self.path, line, rkey)
        if rport is None:
            rport = vport
        existing = next((r for r in s.rs if r.ip == ip and r.port == rport), None)
        if cmd == "delete-server":
            if existing is None:
                existing = next((r for r in s.rs if r.ip == ip), None)
            if existing is None:
                raise self.fail(line, f"real server {rarg} is not in service {self.label(ident)}", rkey)
            s.rs.remove(existing)
            return
        if cmd == "edit-server":
            if existing is None:
                existing = next((r for r in s.rs if r.ip == ip), None)
            if existing is None:
                raise self.fail(line, f"real server {rarg} is not in service {self.label(ident)}", rkey)
            r = existing
        else:
            if existing is not None:
                raise self.fail(line, f"real server {rarg} is added twice to service "
                                f"{self.label(ident)} (first at line {existing.line})", rkey)
            r = _Rs(ip, rport, line)
            r.keys["ip"] = r.keys["port"] = (line, rkey)
            s.rs.append(r)
        self.server_options(line, s, r, opts, fwmark is not None, vport)

    def label(self, ident: tuple) -> str:
        if ident[0] == "fwmark":
            return f"fwmark {ident[1]}"
        return f"{ident[1]}:{ident[2]}/{ident[0]}" if ident[1].version == 4 else f"[{ident[1]}]:{ident[2]}/{ident[0]}"

    def service_ident(self, line, sopt, sarg, skey, opts):
        if sopt == "fwmark-service":
            if not sarg.isdigit() or not 1 <= int(sarg) <= 0xFFFFFFFF:
                raise self.fail(line, f"invalid fwmark value '{sarg}'", skey)
            v6 = any(o[0] == "ipv6" for o in opts)
            return ("fwmark", int(sarg), 6 if v6 else 4), None, None, 0, int(sarg)
        proto = Protocol.TCP if sopt == "tcp-service" else Protocol.UDP
        vip, vport = _addr_port(sarg, proto.value, self.path, line, skey)
        return (proto.value, vip, vport or 0), proto, vip, vport or 0, None

    def need_service(self, line, ident, key) -> _Svc:
        s = self.services.get(ident)
        if s is None:
            known = [self.label(i) for i in self.services]
            raise self.fail(line, f"service {self.label(ident)} was not added with -A before "
                            f"this line{suggest(self.label(ident), known)}", key)
        return s

    def check_allowed(self, line, cmd, opts, allowed) -> None:
        for name, _, key in opts:
            if name not in allowed and name not in ("numeric", "ifname", "ipv6"):
                raise self.fail(line, f"option {key} does not apply to {_opt_display(cmd)}", key)

    def service_options(self, line: int, s: _Svc, opts) -> None:
        for name, arg, key in opts:
            if name == "scheduler":
                s.scheduler = arg.strip().lower()
                s.keys["scheduler"] = (line, key)
            elif name == "persistent":
                if arg is None:
                    s.persistence = DEFAULT_PERSISTENCE
                elif arg.isdigit() and 1 <= int(arg) <= 86400 * 31:
                    s.persistence = int(arg)
                else:
                    raise self.fail(line, f"invalid timeout value '{arg}' specified", key)
                s.keys["persistence"] = (line, key)
            elif name == "netmask":
                try:
                    p = prefix_from_netmask(arg, s.family)
                except ValueError as e:
                    raise self.fail(line, str(e), key) from None
                s.prefix = None if p == (32 if s.family == 4 else 128) else p
                s.keys["persistence_prefix"] = (line, key)
            elif name == "sched-flags":
                s.flags = tuple(f for f in arg.split(",") if f)
                s.keys["sched_flags"] = (line, key)
            elif name == "pe":
                s.pe = arg
            elif name == "ops":
                s.ops = True
                s.keys["ops"] = (line, key)
            elif name == "synproxy":
                if arg not in ("enable", "disable"):
                    raise self.fail(line, "synproxy switch must be enable or disable", key)
                s.synproxy = arg == "enable"
                s.keys["synproxy"] = (line, key)

    def server_options(self, line: int, s: _Svc, r: _Rs, opts, fwmark: bool, vport: int) -> None:
        tun_opts = []
        for name, arg, key in opts:
            if name in FORWARD:
                r.mode = FORWARD[name]
                r.keys["mode"] = (line, key)
            elif name == "weight":
                if not arg.isdigit() or int(arg) > 65535:
                    raise self.fail(line, f"illegal weight '{arg}' (0..65535)", key)
                r.weight = int(arg)
                r.keys["weight"] = (line, key)
            elif name in ("u-threshold", "l-threshold"):
                if not arg.isdigit():
                    raise self.fail(line, f"illegal {name} '{arg}'", key)
                if name == "u-threshold":
                    r.u = int(arg)
                else:
                    r.l = int(arg)
            elif name == "tun-type":
                try:
                    r.tun = TunType(arg.lower())
                except ValueError:
                    raise self.fail(line, f"illegal tunnel type '{arg}'"
                                    f"{suggest(arg, [t.value for t in TunType])}; one of ipip, gue, gre",
                                    key) from None
                r.keys["tun"] = (line, key)
                tun_opts.append(key)
            elif name == "tun-port":
                try:
                    r.tun_port = parse_port(arg, what="tunnel port")
                except ValueError as e:
                    raise self.fail(line, str(e), key) from None
                r.keys["tun_port"] = (line, key)
                tun_opts.append(key)
            elif name in TUNFLAG_OPTS:
                if r.tun_flags is not None and r.tun_flags != TUNFLAG_OPTS[name]:
                    raise self.fail(line, f"{key} conflicts with --tun-{r.tun_flags}", key)
                r.tun_flags = TUNFLAG_OPTS[name]
                r.keys["tun_flags"] = (line, key)
                tun_opts.append(key)
        if r.mode is Mode.TUN and r.tun is None:
            r.tun = TunType.IPIP
        if r.tun_flags == "nocsum":
            # the kernel's flag value 0: ipvsadm -S prints --tun-nocsum for every gue/gre
            # server; it is what "no flag" means, so the model keeps None
            if r.tun not in (TunType.GUE, TunType.GRE):
                ln, key = r.keys["tun_flags"]
                raise self.fail(line, f"{key} is not allowed with the {r.tun or 'ipip'} tunnel "
                                "type (gue and gre only)", key)
            r.tun_flags = None
        if tun_opts and r.mode is not Mode.TUN:
            raise self.fail(line, f"tunnel options conflict with the forwarding method "
                            f"({r.mode}): {', '.join(tun_opts)} need -i", tun_opts[0])
        # ipvsadm copies the service port to DR/TUN destinations of non-fwmark services
        if not fwmark and r.mode in (Mode.DR, Mode.TUN):
            r.port = vport


# ----------------------------------------------------------------------------- listing (-L)

_SVC_RE = re.compile(r"^(TCP|UDP|SCTP|ICMP)\s+(\S+)\s+(\S+)(.*)$")
_FWM_RE = re.compile(r"^FWM\s+(\d+)(\s+IPv6)?\s+(\S+)(.*)$")
_RS_RE = re.compile(r"^\s+->\s+(\S+)\s+(.*)$")
_TIMEOUT_RE = re.compile(r"^Timeout \(tcp tcpfin udp\):\s*(\d+)\s+(\d+)\s+(\d+)\s*$")
_FWD_NAMES = {"Masq": Mode.NAT, "Route": Mode.DR, "Local": Mode.DR, "Tunnel": Mode.TUN,
              "FullNat": Mode.FULLNAT}


class _Listing:
    def __init__(self, path: str, profile: str | None):
        self.path = path
        self.profile = profile
        self.services: dict[tuple, _Svc] = {}
        self.dir_lips: list = []
        self.timeouts: dict[str, int] = {}
        self.alibaba = False

    def fail(self, line, message, key=None) -> InputError:
        return InputError(self.path, message, line=line, key=key)

    def parse(self, lines: list[str]) -> Topology:
        cur: _Svc | None = None
        tuninfo = False
        section = None          # None | "services" | "laddr" | "conns"
        laddr_targets: list[_Svc] | None = None
        for n, raw in enumerate(lines, 1):
            line = raw.rstrip()
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.startswith("IP Virtual Server version"):
                section, cur = "services", None
                continue
            if line.startswith("Prot LocalAddress:Port"):
                cols = line.split()[2:]
                if cols[:2] != ["Scheduler", "Flags"]:
                    raise self.fail(n, "this listing has no Forward column (ipvsadm --stats, "
                                    "--rate, --thresholds or --persistent-conn): list with "
                                    "ipvsadm -Ln or save with ipvsadm -Sn")
                section, cur = "services", None
                continue
            if re.match(r"^\s+-> RemoteAddress:Port", line):
                cols = line.split()[2:]
                if "Forward" not in cols:
                    raise self.fail(n, "this listing has no Forward column: list with ipvsadm -Ln")
                tuninfo = "TunnelInfo" in cols
                continue
            if line.startswith("IPVS connection entries") or line.startswith("pro expire"):
                section = "conns"
                continue
            m = _TIMEOUT_RE.match(line)
            if m:
                for k, v in zip(("tcp", "tcpfin", "udp"), m.groups()):
                    if int(v):
                        self.timeouts[k] = int(v)
                continue
            if line.startswith("VIP:VPORT"):
                section = "laddr"
                self.alibaba = self.alibaba or "LADDR" in line.split()
                laddr_targets = None
                continue
            if section == "conns":
                continue
            if section == "laddr":
                laddr_targets = self.laddr_line(n, line, laddr_targets)
                continue
            m = _FWM_RE.match(line)
            if m:
                mark, v6, sched, rest = m.groups()
                ident = ("fwmark", int(mark), 6 if v6 else 4)
                cur = self.new_service(n, ident, None, 0, int(mark), None, "FWM")
                cur.v6 = bool(v6)
                self.service_rest(n, cur, sched, rest)
                section = "services"
                continue
            m = _SVC_RE.match(line)
            if m:
                proto_s, addr, sched, rest = m.groups()
                if proto_s in ("SCTP", "ICMP"):
                    raise self.fail(n, f"{proto_s} services are not supported (tcp and udp only)",
                                    proto_s)
                proto = Protocol(proto_s.lower())
                vip, vport = _addr_port(addr, proto.value, self.path, n, proto_s)
                ident = (proto.value, vip, vport or 0)
                cur = self.new_service(n, ident, vip, vport or 0, None, proto, proto_s)
                self.service_rest(n, cur, sched, rest)
                section = "services"
                continue
            m = _RS_RE.match(line)
            if m:
                if cur is None:
                    raise self.fail(n, "a real server line before any service line")
                self.rs_line(n, cur, m.group(1), m.group(2).split(), tuninfo)
                continue
            raise self.fail(n, f"unrecognised ipvsadm listing line: '{line.strip()}'")
        services = list(self.services.values())
        return _finish(self.path, "ipvsadm-list", services, self.dir_lips, self.timeouts,
                       self.profile, _detect(services, self.dir_lips, self.alibaba))

    def new_service(self, n, ident, vip, port, fwmark, proto, key) -> _Svc:
        if ident in self.services:
            raise self.fail(n, f"service listed twice (first at line {self.services[ident].line})", key)
        s = _Svc(ident, n, key)
        s.vip, s.port, s.fwmark, s.protocol = vip, port, fwmark, proto
        s.keys["vip"] = s.keys["port"] = s.keys["fwmark"] = (n, key)
        self.services[ident] = s
        return s

    def service_rest(self, n: int, s: _Svc, sched: str, rest: str) -> None:
        s.scheduler = sched.lower()
        s.keys["scheduler"] = (n, "Scheduler")
        toks = rest.split()
        i = 0
        while i < len(toks):
            t = toks[i]
            i += 1
            if t.startswith("(") and t.endswith(")"):
                s.flags = tuple(f for f in t[1:-1].split(",") if f)
                s.keys["sched_flags"] = (n, "Flags")
            elif t == "persistent" and i < len(toks) and toks[i].isdigit():
                s.persistence = int(toks[i])
                s.keys["persistence"] = (n, "persistent")
                i += 1
            elif t == "mask" and i < len(toks):
                try:
                    p = prefix_from_netmask(toks[i], s.family)
                except ValueError as e:
                    raise self.fail(n, str(e), "mask") from None
                s.prefix = None if p == (32 if s.family == 4 else 128) else p
                s.keys["persistence_prefix"] = (n, "mask")
                i += 1
            elif t == "pe" and i < len(toks):
                s.pe = toks[i]
                i += 1
            elif t == "ops":
                s.ops = True
            elif t == "synproxy":
                s.synproxy = True
            elif t == "conn_timeout" and i < len(toks) and toks[i].isdigit():
                i += 1              # DPVS per-service connection timeout: not modelled
            elif t in ("sip", "qid"):
                pass                # DPVS conhash target
            else:
                raise self.fail(n, f"unrecognised service flag '{t}'", t)

    def rs_line(self, n: int, s: _Svc, dname: str, cols: list[str], tuninfo: bool) -> None:
        proto = (s.protocol or Protocol.TCP).value
        ip, port = _addr_port(dname, proto, self.path, n, "RemoteAddress:Port")
        need = 5 if tuninfo else 4
        if len(cols) < need:
            raise self.fail(n, f"expected Forward, {'TunnelInfo, ' if tuninfo else ''}Weight, "
                            f"ActiveConn, InActConn after {dname}")
        fwd = cols[0]
        if fwd not in _FWD_NAMES:
            if fwd == "SNAT":
                return
            raise self.fail(n, f"unknown forwarding method '{fwd}'{suggest(fwd, _FWD_NAMES)}",
                            "Forward")
        r = _Rs(ip, port if port is not None else s.port, n)
        r.mode = _FWD_NAMES[fwd]
        r.keys["ip"] = r.keys["port"] = (n, "RemoteAddress:Port")
        r.keys["mode"] = (n, "Forward")
        wi = 1
        if tuninfo:
            self.tun_info(n, r, cols[1])
            wi = 2
        w = cols[wi]
        if not w.isdigit():
            raise self.fail(n, f"weight '{w}' is not a number", "Weight")
        r.weight = int(w)
        r.keys["weight"] = (n, "Weight")
        # plain -Ln does not show the tunnel type (--tun-info does): r.tun stays None, unknown
        if any(x.ip == r.ip and x.port == r.port for x in s.rs):
            raise self.fail(n, f"real server {dname} listed twice in the service", "RemoteAddress:Port")
        s.rs.append(r)

    def tun_info(self, n: int, r: _Rs, info: str) -> None:
        if info == "n/a":
            return
        parts = info.split(":")
        try:
            r.tun = TunType(parts[0])
        except ValueError:
            raise self.fail(n, f"unknown tunnel info '{info}'", "TunnelInfo") from None
        r.keys["tun"] = (n, "TunnelInfo")
        flags = {"-c": "nocsum", "+c": "csum", "r+c": "remcsum"}
        rest = parts[1:]
        if r.tun is TunType.GUE and rest:
            try:
                r.tun_port = parse_port(rest[0], what="tunnel port")
            except ValueError as e:
                raise self.fail(n, str(e), "TunnelInfo") from None
            rest = rest[1:]
        if rest:
            if rest[0] not in flags:
                raise self.fail(n, f"unknown tunnel checksum flag '{rest[0]}'", "TunnelInfo")
            fl = flags[rest[0]]
            r.tun_flags = None if fl == "nocsum" else fl   # ipvsadm prints -c for "no flag"
            r.keys["tun_flags"] = (n, "TunnelInfo")

    def laddr_line(self, n: int, line: str, targets):
        toks = line.split()
        if not line[:1].isspace():
            # "VIP:VPORT   TOTAL"
            vip, vport = _addr_port(toks[0], "tcp", self.path, n, "VIP:VPORT")
            found = [s for s in self.services.values()
                     if s.vip == vip and s.port == (vport or 0)]
            return found or []
        if targets is None:
            raise self.fail(n, "a local address line before its VIP:VPORT line")
        try:
            lip = parse_ip(toks[0])
        except ValueError as e:
            raise self.fail(n, str(e), "SNAT_IP") from None
        if targets:
            for s in targets:
                if lip not in s.lips:
                    s.lips.append(lip)
                    s.keys.setdefault("lips", (n, "SNAT_IP"))
        elif lip not in self.dir_lips:
            self.dir_lips.append(lip)
        return targets
