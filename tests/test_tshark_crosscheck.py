"""Our decoder against tshark, frame by frame, on every trace under fixtures/.

New fixtures are covered automatically (the traces are globbed).  For each trace the engine's
PacketTable (lvs_inspect.capture.read_table) is compared with ``tshark -T fields``:

- record fields (frame number, lengths, ns timestamp, interface name) on every frame;
- decoded fields (L2, VLAN, ARP, every IPv4/IPv6 header in order, TCP, UDP, ICMP, GRE) on frames we
  decoded (status < 10), and only where tshark has the field.

tshark lists one occurrence per header: the first ip.src is the outermost IPv4 header, so our
IPv4 headers (tunnel outer, packet, ICMP-quoted) are compared position by position with tshark's,
and likewise IPv6, TCP and UDP.  tshark has no GUE dissector and misreads TOA; those values are
checked against the generator's expected.json instead (test_expected_values, no tshark needed).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
TRACE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".cap.gz")


def _traces() -> list[Path]:
    out = [p for p in FIXTURES.rglob("*") if p.is_file() and p.name.endswith(TRACE_SUFFIXES)]
    return sorted(out)


TRACES = _traces()
EXPECTED = sorted((FIXTURES / "engine").rglob("expected.json"))   # the decoder's; fixtures/lab's hold findings


def _id(p: Path) -> str:
    return str(p.relative_to(FIXTURES))


def test_fixtures_exist():
    assert TRACES, f"no traces found under {FIXTURES}: run fixtures/engine/make_handbuilt.py"
    assert (FIXTURES / "engine" / "lab-nat-http" / "trace.pcapng").exists(), \
        "fixtures/engine/lab-nat-http/trace.pcapng (used by `make demo`) is missing: " \
        "run fixtures/engine/make_lab_fixtures.sh as root"


# ---------------------------------------------------------------------------------------------
# tshark

# Every occurrence of each field is fetched (occurrence=a); the comparison picks by position.
FIELDS = [
    "frame.number", "frame.len", "frame.cap_len", "frame.time_epoch", "frame.interface_name",
    "eth.src", "eth.dst", "sll.src.eth", "vlan.id", "ieee8021ad.id",
    "arp.opcode", "arp.src.hw_mac", "arp.src.proto_ipv4", "arp.dst.hw_mac", "arp.dst.proto_ipv4",
    "ip.src", "ip.dst", "ip.ttl", "ip.id", "ip.len", "ip.proto", "ip.flags.rb", "ip.flags.df", "ip.flags.mf",
    "ip.frag_offset", "ip.dsfield",
    "ip.hdr_len",
    "ipv6.src", "ipv6.dst", "ipv6.hlim", "ipv6.plen", "ipv6.tclass",
    "ipv6.fraghdr.ident", "ipv6.fraghdr.offset", "ipv6.fraghdr.more",
    "tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.seq_raw", "tcp.ack_raw", "tcp.window_size_value",
    "tcp.hdr_len", "tcp.len", "tcp.options.mss_val", "tcp.options.wscale.shift",
    "tcp.options.timestamp.tsval", "tcp.options.timestamp.tsecr",
    "udp.srcport", "udp.dstport", "udp.length",
    "icmp.type", "icmp.code", "icmp.mtu", "icmpv6.type", "icmpv6.code", "icmpv6.mtu",
    "gre.flags_and_version",
]

# Preferences: no reassembly, so that every frame shows its own headers.
TSHARK_PREFS = ["ip.defragment:FALSE", "ipv6.defragment:FALSE", "tcp.desegment_tcp_streams:FALSE",
                "tcp.analyze_sequence_numbers:FALSE"]


def _tshark() -> str:
    exe = shutil.which("tshark")
    if exe is None:
        pytest.fail("tshark is not installed: run `make test` (scripts/ensure-system-deps installs it)")
    return exe


def tshark_rows(path: Path) -> list[dict[str, list[str]]]:
    cmd = [_tshark(), "-n", "-r", str(path), "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a",
           "-E", "aggregator=,"]
    for p in TSHARK_PREFS:
        cmd += ["-o", p]
    for f in FIELDS:
        cmd += ["-e", f]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"tshark failed on {path}: {p.stderr.strip()[-500:]}"
    rows = []
    for line in p.stdout.splitlines():
        cells = line.split("\t")
        cells += [""] * (len(FIELDS) - len(cells))
        rows.append({f: (c.split(",") if c else []) for f, c in zip(FIELDS, cells)})
    return rows


# ---------------------------------------------------------------------------------------------
# our side

COLS = ["frame", "iface", "ts_ns", "caplen", "wirelen", "status", "eth_src", "eth_dst", "vlan", "vlan2",
        "ip_ver", "ip_src", "ip_dst", "ip_ttl", "ip_id", "ip_frag", "ip_len", "ip_hlen", "ip_tos", "ip_proto",
        "sport", "dport", "tcp_flags", "tcp_seq", "tcp_ack", "tcp_win", "tcp_hlen", "tcp_opts", "tcp_mss",
        "tcp_ws", "tcp_tsval", "tcp_tsecr", "payload_len",
        "arp_op", "arp_sha", "arp_spa", "arp_tha", "arp_tpa",
        "tun", "out_ver", "out_src", "out_dst", "out_ttl", "out_id", "out_frag", "out_tos", "out_sport",
        "out_dport", "tun_flags",
        "icmp_type", "icmp_code", "icmp_mtu", "icmp_in_ver", "icmp_in_src", "icmp_in_dst", "icmp_in_proto",
        "icmp_in_sport", "icmp_in_dport", "icmp_in_seq"]

NONE16 = 0xFFFF
TUN_GRE, TUN_GUE = 2, 3


def read_ours(path: Path):
    try:
        from lvs_inspect.capture import read_table
    except ImportError as e:  # the engine is missing: say so instead of skipping
        pytest.fail(f"lvs_inspect.capture.read_table cannot be imported: {e}")
    t = read_table([str(path)])
    cols = {c: t[c].tolist() for c in COLS}
    rows = [{c: cols[c][i] for c in COLS} for i in range(len(t))]
    return t, rows


def ts_text(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def _norm_addr(s: str) -> str:
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        return s


def _num(s: str) -> int:
    # booleans print as 1/0 up to Wireshark 4.0 and as True/False from 4.2 on
    if s in ("True", "False"):
        return int(s == "True")
    return int(s, 0)


def _frag_fields(v: int) -> dict:
    """IPv4 flags+offset field as tshark shows it (booleans per flag; offset in 8-byte units)."""
    return {"ip.flags.rb": ("int", (v >> 15) & 1), "ip.flags.df": ("int", (v >> 14) & 1),
            "ip.flags.mf": ("int", (v >> 13) & 1), "ip.frag_offset": ("int", v & 0x1FFF)}


def expected_headers(t, r):
    """Our view of the frame as tshark lists it: per protocol, one dict per header, in order.
    Values are (kind, value) with kind 'addr', 'mac', 'int'."""
    def A(key, ver=4):
        # key 0 stands for "absent" and for 0.0.0.0 / :: alike: the header says which
        return ("addr", t.addr_str(key) or ("0.0.0.0" if ver == 4 else "::"))

    I = lambda v: ("int", int(v))  # noqa: E731
    v4, v6, tcps, udps = [], [], [], []
    tunneled = r["tun"] != 0
    fragment_tail = (r["ip_frag"] & 0x1FFF) != 0
    fragment = fragment_tail or (r["ip_frag"] & 0x2000) != 0
    if tunneled:
        ov = r["out_ver"]
        h = {"src": A(r["out_src"], ov), "dst": A(r["out_dst"], ov), "ttl": I(r["out_ttl"]), "tos": I(r["out_tos"])}
        if r["out_ver"] == 4:
            h.update(_frag_fields(r["out_frag"]))
            h["ip.id"] = I(r["out_id"])
            v4.append(h)
        else:
            v6.append(h)
        if r["tun"] == TUN_GUE:
            udps.append({"udp.srcport": I(r["out_sport"]), "udp.dstport": I(r["out_dport"])})
    if r["ip_ver"]:
        iv = r["ip_ver"]
        h = {"src": A(r["ip_src"], iv), "dst": A(r["ip_dst"], iv), "ttl": I(r["ip_ttl"]), "tos": I(r["ip_tos"])}
        if r["ip_ver"] == 4:
            h.update(_frag_fields(r["ip_frag"]))
            h.update({"ip.id": I(r["ip_id"]), "ip.len": I(r["ip_len"]),
                      "ip.proto": I(r["ip_proto"]), "ip.hdr_len": I(r["ip_hlen"])})
            v4.append(h)
        else:
            h["ipv6.plen"] = I(r["ip_len"] - 40)
            v6.append(h)
        if r["ip_proto"] == 6 and r["tcp_hlen"] >= 20 and not fragment_tail:
            h = {"tcp.srcport": I(r["sport"]), "tcp.dstport": I(r["dport"]), "tcp.flags": I(r["tcp_flags"]),
                 "tcp.seq_raw": I(r["tcp_seq"]), "tcp.ack_raw": I(r["tcp_ack"]),
                 "tcp.window_size_value": I(r["tcp_win"]), "tcp.hdr_len": I(r["tcp_hlen"]),
                 "tcp.options.mss_val": I(r["tcp_mss"]), "tcp.options.wscale.shift": I(r["tcp_ws"]),
                 "tcp.options.timestamp.tsval": I(r["tcp_tsval"]),
                 "tcp.options.timestamp.tsecr": I(r["tcp_tsecr"])}
            if not fragment:
                h["tcp.len"] = I(r["payload_len"])
            tcps.append(h)
        elif r["ip_proto"] == 17 and not fragment_tail:
            h = {"udp.srcport": I(r["sport"]), "udp.dstport": I(r["dport"])}
            if not fragment:
                h["udp.payload"] = I(r["payload_len"])
            udps.append(h)
    if r["icmp_in_ver"]:
        ev = r["icmp_in_ver"]
        h = {"src": A(r["icmp_in_src"], ev), "dst": A(r["icmp_in_dst"], ev)}
        if r["icmp_in_ver"] == 4:
            h["ip.proto"] = I(r["icmp_in_proto"])
            v4.append(h)
        else:
            v6.append(h)
        if r["icmp_in_proto"] == 6:
            tcps.append({"tcp.srcport": I(r["icmp_in_sport"]), "tcp.dstport": I(r["icmp_in_dport"]),
                         "tcp.seq_raw": I(r["icmp_in_seq"])})
        elif r["icmp_in_proto"] == 17:
            udps.append({"udp.srcport": I(r["icmp_in_sport"]), "udp.dstport": I(r["icmp_in_dport"])})
    return v4, v6, tcps, udps


V4_MAP = {"src": "ip.src", "dst": "ip.dst", "ttl": "ip.ttl", "tos": "ip.dsfield"}
V6_MAP = {"src": "ipv6.src", "dst": "ipv6.dst", "ttl": "ipv6.hlim", "tos": "ipv6.tclass"}


def compare_frame(t, r, ts, where: str, errs: list[str]) -> None:
    def cmp(field: str, kind: str, ours, theirs: str):
        if kind == "addr":
            ok = _norm_addr(theirs) == _norm_addr(ours)
        elif kind == "mac":
            ok = theirs.lower() == ours
        else:
            try:
                ok = _num(theirs) == ours
            except ValueError:
                ok = False
        if not ok:
            errs.append(f"{where}: {field}: ours {ours!r}, tshark {theirs!r}")

    def at(field: str, i: int = 0):
        v = ts[field]
        return v[i] if i < len(v) else None

    # --- L2 ---------------------------------------------------------------------------
    if at("eth.src") is not None:
        cmp("eth.src", "mac", t.mac_str(r["eth_src"]), at("eth.src"))
        cmp("eth.dst", "mac", t.mac_str(r["eth_dst"]), at("eth.dst"))
    elif at("sll.src.eth") is not None:
        cmp("sll.src.eth", "mac", t.mac_str(r["eth_src"]), at("sll.src.eth"))
    tags = ts["ieee8021ad.id"] + ts["vlan.id"]      # 802.1ad (0x88a8) tags are outer
    ours_tags = [v for v in (r["vlan"], r["vlan2"]) if v != NONE16]
    for i, theirs in enumerate(tags[:2]):
        if i >= len(ours_tags):
            errs.append(f"{where}: vlan tag {i + 1}: ours none, tshark {theirs}")
        else:
            cmp(f"vlan tag {i + 1}", "int", ours_tags[i], theirs)
    # --- ARP --------------------------------------------------------------------------
    if at("arp.opcode") is not None:
        cmp("arp.opcode", "int", r["arp_op"], at("arp.opcode"))
        if at("arp.src.hw_mac") is not None:
            cmp("arp.src.hw_mac", "mac", t.mac_str(r["arp_sha"]), at("arp.src.hw_mac"))
        if at("arp.dst.hw_mac") is not None:
            cmp("arp.dst.hw_mac", "mac", t.mac_str(r["arp_tha"]), at("arp.dst.hw_mac"))
        if at("arp.src.proto_ipv4") is not None:
            cmp("arp.src.proto_ipv4", "addr", str(ipaddress.IPv4Address(r["arp_spa"])), at("arp.src.proto_ipv4"))
        if at("arp.dst.proto_ipv4") is not None:
            cmp("arp.dst.proto_ipv4", "addr", str(ipaddress.IPv4Address(r["arp_tpa"])), at("arp.dst.proto_ipv4"))
    # --- IP headers, position by position -------------------------------------------------
    v4, v6, tcps, udps = expected_headers(t, r)
    for hdrs, fmap, label in ((v4, V4_MAP, "IPv4"), (v6, V6_MAP, "IPv6")):
        for i, h in enumerate(hdrs):
            for key, (kind, ours) in h.items():
                field = fmap.get(key, key)
                theirs = at(field, i)
                if theirs is not None:
                    cmp(f"{field}[{label} header {i + 1}]", kind, ours, theirs)
    # IPv6 fragment header of the packet's own header
    if r["ip_ver"] == 6 and not r["tun"] and at("ipv6.fraghdr.ident") is not None:
        cmp("ipv6.fraghdr.ident", "int", r["ip_id"], at("ipv6.fraghdr.ident"))
        cmp("ipv6.fraghdr.offset", "int", r["ip_frag"] & 0x1FFF, at("ipv6.fraghdr.offset"))
        cmp("ipv6.fraghdr.more", "int", (r["ip_frag"] >> 13) & 1, at("ipv6.fraghdr.more"))
    # --- TCP / UDP ------------------------------------------------------------------------
    for i, h in enumerate(tcps):
        for field, (kind, ours) in h.items():
            theirs = at(field, i)
            if theirs is not None:
                cmp(f"{field}[{i + 1}]", kind, ours, theirs)
    for i, h in enumerate(udps):
        for field, (kind, ours) in h.items():
            if field == "udp.payload":
                theirs = at("udp.length", i)
                if theirs is not None:
                    cmp("udp.length-8", "int", ours, str(_num(theirs) - 8))
                continue
            theirs = at(field, i)
            if theirs is not None:
                cmp(f"{field}[{i + 1}]", kind, ours, theirs)
    # --- ICMP / ICMPv6 (the first occurrence is the packet's own ICMP header) -----------------
    if r["ip_proto"] in (1, 58):
        p = "icmp" if r["ip_proto"] == 1 else "icmpv6"
        for field, col in (("type", "icmp_type"), ("code", "icmp_code"), ("mtu", "icmp_mtu")):
            theirs = at(f"{p}.{field}")
            if theirs is not None:
                cmp(f"{p}.{field}", "int", r[col], theirs)
    # --- GRE --------------------------------------------------------------------------------
    if r["tun"] == TUN_GRE and at("gre.flags_and_version") is not None:
        cmp("gre.flags_and_version", "int", r["tun_flags"], at("gre.flags_and_version"))


def crosscheck(path: Path, rel: str) -> tuple[list[str], int]:
    """Compare one trace with tshark; returns (mismatch messages, decoded frames)."""
    theirs = tshark_rows(path)
    t, ours = read_ours(path)
    if len(ours) != len(theirs):
        return [f"{rel}: {len(ours)} frames decoded by us, tshark shows {len(theirs)}"], 0
    errs: list[str] = []
    decoded = 0
    for r, ts in zip(ours, theirs):
        where = f"{rel} frame {r['frame']}"
        num = ts["frame.number"][0]
        if str(r["frame"]) != num:
            errs.append(f"{where}: frame number: tshark {num}")
        if str(r["wirelen"]) != ts["frame.len"][0]:
            errs.append(f"{where}: frame.len: ours {r['wirelen']}, tshark {ts['frame.len'][0]}")
        if str(r["caplen"]) != ts["frame.cap_len"][0]:
            errs.append(f"{where}: frame.cap_len: ours {r['caplen']}, tshark {ts['frame.cap_len'][0]}")
        if ts_text(r["ts_ns"]) != ts["frame.time_epoch"][0]:
            errs.append(f"{where}: frame.time_epoch: ours {ts_text(r['ts_ns'])}, tshark {ts['frame.time_epoch'][0]}")
        if ts["frame.interface_name"]:
            name = t.vantages[r["iface"]].name
            if name != ts["frame.interface_name"][0]:
                errs.append(f"{where}: interface name: ours {name!r}, tshark {ts['frame.interface_name'][0]!r}")
        if r["status"] >= 10:
            continue
        decoded += 1
        compare_frame(t, r, ts, where, errs)
    return errs, decoded


def _report(errs: list[str], rel: str, decoded: int) -> str:
    shown = "\n".join(errs[:60]) + (f"\n... and {len(errs) - 60} more" if len(errs) > 60 else "")
    return f"{len(errs)} mismatches with tshark in {rel} ({decoded} decoded frames):\n{shown}"


@pytest.mark.tshark
@pytest.mark.parametrize("path", TRACES, ids=[_id(p) for p in TRACES])
def test_crosscheck_with_tshark(path: Path):
    rel = _id(path)
    errs, decoded = crosscheck(path, rel)
    assert not errs, _report(errs, rel, decoded)


LAB_SCRIPT = FIXTURES / "engine" / "make_lab_fixtures.sh"


@pytest.mark.lab
@pytest.mark.tshark
@pytest.mark.slow
@pytest.mark.parametrize("scenario,folders", [("nat", ["lab-nat-http"]), ("dr", ["lab-dr-http"]),
                                              ("fullnat", ["lab-fullnat-http"]),
                                              ("any", ["lab-any-sll2", "lab-any-sll"])])
def test_lab_script_rebuilds_checkable_traces(tmp_path: Path, scenario: str, folders: list[str]):
    """make_lab_fixtures.sh still works (into a temporary folder), leaves no namespace behind, and
    what it captures decodes like tshark says."""
    if os.geteuid() != 0:
        pytest.fail("the lab test needs root (network namespaces, nftables, capture): run it as root")
    env = dict(os.environ, LVSFX_OUT=str(tmp_path), NREQ="2")
    p = subprocess.run(["bash", str(LAB_SCRIPT), scenario], env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"make_lab_fixtures.sh {scenario} failed:\n{p.stderr[-2000:]}"
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"lvsfx-{'fnat' if scenario == 'fullnat' else scenario}-" not in left, f"namespaces left behind:\n{left}"
    for folder in folders:
        d = tmp_path / folder
        traces = sorted(d.glob("trace.*"))
        assert traces and (d / "README.md").exists() and (d / "director.nft").exists(), f"{d}: incomplete"
        errs, decoded = crosscheck(traces[0], f"{scenario}:{folder}")
        assert decoded > 20, f"{folder}: only {decoded} frames decoded"
        assert not errs, _report(errs, folder, decoded)


# ---------------------------------------------------------------------------------------------
# expected.json: values tshark cannot check (status, TOA, tunnel kind, checksum verdicts, GUE inner)

ADDR_FIELDS = {"ip_src", "ip_dst", "out_src", "out_dst", "toa_addr", "icmp_in_src", "icmp_in_dst"}


def _expected_cases():
    cases = []
    for e in EXPECTED:
        doc = json.loads(e.read_text())
        cases.append(pytest.param(e.parent / doc["trace"], doc, id=_id(e.parent)))
    return cases


@pytest.mark.parametrize("trace,doc", _expected_cases())
def test_expected_values(trace: Path, doc: dict):
    from lvs_inspect.capture.schema import Csum, Status, Tun, status_category
    try:
        from lvs_inspect.capture import read_table
    except ImportError as e:
        pytest.fail(f"lvs_inspect.capture.read_table cannot be imported: {e}")
    t = read_table([str(trace)])
    frames = t["frame"].tolist()
    row_of = {f: i for i, f in enumerate(frames)}
    enums = {"status": Status, "tun": Tun, "ip_csum": Csum, "l4_csum": Csum}
    cols: dict[str, list] = {}
    errs = []
    rel = _id(trace)
    for fno, exp in doc["frames"].items():
        if int(fno) not in row_of:
            errs.append(f"{rel} frame {fno}: missing from our table")
            continue
        i = row_of[int(fno)]
        for field, want in exp.items():
            if field not in cols:
                cols[field] = t[field].tolist()
            got = cols[field][i]
            if field in enums:
                want_v = enums[field][want].value
                if got != want_v:
                    gname = enums[field](got).name if got in enums[field]._value2member_map_ else got
                    extra = ""
                    if field == "status":
                        extra = f" ({status_category(want_v)} expected, {status_category(got)} got)"
                    errs.append(f"{rel} frame {fno}: {field}: ours {gname}, expected {want}{extra}")
            elif field in ADDR_FIELDS:
                # key 0 is both "absent" and the all-zero address
                text = t.addr_str(got) or ("::" if ":" in want else "0.0.0.0" if want else "")
                if _norm_addr(text) != _norm_addr(want):
                    errs.append(f"{rel} frame {fno}: {field}: ours {t.addr_str(got)!r}, expected {want!r}")
            elif got != want:
                errs.append(f"{rel} frame {fno}: {field}: ours {got!r}, expected {want!r}")
    assert not errs, f"{len(errs)} mismatches with expected.json:\n" + "\n".join(errs)


def test_handbuilt_fixtures_are_reproducible():
    """The hb-* fixtures on disk are exactly what the generator makes (deterministic build)."""
    p = subprocess.run([sys.executable, str(FIXTURES / "engine" / "make_handbuilt.py"), "--check"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr.strip() or p.stdout.strip()
