"""Fuzz and property tests for the packet engine (issue 2).

Random tails behind valid headers, lying length fields and truncated records must each become
a counted undecodable frame, never an exception out of the reader; damaged containers give the
frames before the damage plus a Damage note (or an InputError for a bad file header), never
another exception.

Frames are built by tests/fuzz_frames.py (valid header prefixes with drawn field values and
explicit "lie sites"), containers by tests/fuzz_captures.py (the capture writers, then cut, a
record/block header byte flipped, or gzipped and the gzip stream cut or corrupted).  The last
section holds the minimal inputs the properties found, written out as plain tests.

Reproducible: every test is derandomized and uses no example database.  Set LVS_FUZZ_SCALE
(e.g. 10) to multiply the example counts for a deeper local run; the default keeps the whole
file well under a minute on a loaded 2-core machine.
"""
from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from fuzz_captures import captures, damage, read_records
from fuzz_frames import (DECODED_LINKTYPES, LIE_SITES, STAMPS_RANDOM, SUPPORTED_LINKTYPES, Frame,
                         any_frame, branch, csum16, frames_for, hexbytes, pcap_bytes, pcapng_bytes,
                         random_bytes_frame, read_bytes, row_diff, stamp_from, table_rows)
from lvs_inspect.capture.schema import NONE16, Csum, Status, Tun
from lvs_inspect.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
SCALE = float(os.environ.get("LVS_FUZZ_SCALE", "1"))


def fuzz(examples: int, **kw):
    """Reproducible settings: fixed seed, no database, no deadline (the machine is shared), and
    no 'explain' phase (it re-runs a failing test under a tracer: slow, and the shrunk example
    says more)."""
    kw.setdefault("phases", (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink))
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True, database=None,
                    deadline=None, print_blob=False, **kw)


STATUS_CODES = {int(s) for s in Status}
CSUM_CODES = {int(c) for c in Csum}
TUN_CODES = {int(t) for t in Tun if t}
NON_COMPARED = ("frame", "offset", "ts_ns", "iface")   # where a frame sits, not what it holds


# ---- capture assembly --------------------------------------------------------------------------

def batch_strategy(min_size=1, max_size=8, max_lies=2):
    """('pcap' | 'pcapng', frames): a classic pcap holds one link type, a pcapng mixes them."""
    def one_type(lt):
        return st.lists(frames_for(lt, max_lies), min_size=min_size,
                        max_size=max_size).map(lambda frs: ("pcap", frs))
    pcap = st.sampled_from(SUPPORTED_LINKTYPES).flatmap(one_type)
    mixed = st.lists(any_frame(max_lies=max_lies), min_size=min_size, max_size=max_size)
    return branch(pcap, mixed.map(lambda frs: ("pcapng", frs)))


def capture_bytes(fmt: str, frames: list[Frame], stamps=None) -> bytes:
    return pcap_bytes(frames, stamps=stamps) if fmt == "pcap" else pcapng_bytes(frames)


def recorded_wirelen(fmt: str, fr: Frame) -> int:
    return fr.wirelen if fmt == "pcap" else max(fr.wirelen, len(fr.data))


def describe(t, i: int, frames: list[Frame] | None = None) -> str:
    row = {k: v for k, v in table_rows(t)[i].items() if v not in (0, "", "00")}
    row["status"] = Status(int(t["status"][i])).name
    fr = f"\n  frame: {frames[i]!r}" if frames is not None else ""
    return f"row {i}: {row}{fr}"


def check(t, mask, what: str, frames=None) -> None:
    bad = np.flatnonzero(~np.asarray(mask, dtype=bool))
    assert len(bad) == 0, f"{what} fails for {len(bad)} row(s); first: {describe(t, int(bad[0]), frames)}"


# ---- the invariants of a decoded table ----------------------------------------------------------

def check_table(t, frames: list[Frame], fmt: str) -> None:
    """Everything that must hold for any input, however malformed its frames."""
    n = len(frames)
    assert len(t) == n, f"{len(t)} rows for {n} frames"
    assert t["frame"].tolist() == list(range(1, n + 1))
    assert t["caplen"].tolist() == [len(f.data) for f in frames]
    assert t["wirelen"].tolist() == [recorded_wirelen(fmt, f) for f in frames]

    status = t["status"].astype(np.int64)
    check(t, np.isin(status, list(STATUS_CODES)), "status is a Status value", frames)
    check(t, np.isin(t["ip_csum"], list(CSUM_CODES)) & np.isin(t["l4_csum"], list(CSUM_CODES)),
          "checksum verdicts are Csum values", frames)

    (acct,) = t.accounting()
    assert acct["frames"] == n
    assert acct["decoded"] + acct["ignored"] + acct["undecodable"] == n, acct
    assert acct["truncated"] == int((status == Status.SNAPLEN).sum()), acct
    assert sum(acct["reasons"].values()) == int((status != 0).sum()), acct
    assert acct["damage"] == [], acct

    lt = np.array([f.linktype for f in frames])
    check(t, (status == Status.IGNORED_LINKTYPE) == ~np.isin(lt, DECODED_LINKTYPES),
          "IGNORED_LINKTYPE exactly for unsupported link types", frames)

    cap = t["caplen"].astype(np.int64)
    wire = t["wirelen"].astype(np.int64)
    check(t, (status != Status.DECODED) | (cap >= wire), "DECODED frames are whole", frames)
    check(t, (status != Status.SNAPLEN) | (cap < wire), "SNAPLEN frames are cut", frames)

    vlan, vlan2 = t["vlan"].astype(np.int64), t["vlan2"].astype(np.int64)
    check(t, ((vlan == NONE16) | (vlan < 4096)) & ((vlan2 == NONE16) | (vlan2 < 4096))
          & ((vlan2 == NONE16) | (vlan != NONE16)), "VLAN ids are 12-bit, inner only under outer", frames)

    plen = t["payload_len"].astype(np.int64)
    digest = t["payload_digest"].astype(np.int64)
    check(t, (plen > 0) | (digest == 0), "no payload, no digest", frames)
    decoded = status < 10
    check(t, decoded | ((plen == 0) & (t["l4_csum"] == Csum.NA)),
          "ignored/undecodable frames have no payload and no L4 checksum verdict", frames)

    # decoded frames are IP or Ethernet/IPv4 ARP
    ver = t["ip_ver"].astype(np.int64)
    arp = np.zeros(n, dtype=bool)
    arp[t.rows_of("arp")] = True
    check(t, ~decoded | np.isin(ver, (4, 6)) | arp, "a decoded frame is IP or ARP", frames)
    check(t, ~arp | (decoded & (ver == 0)), "ARP rows are decoded and not IP", frames)

    # IP header lengths
    hlen = t["ip_hlen"].astype(np.int64)
    ilen = t["ip_len"].astype(np.int64)
    ip = decoded & (ver != 0)
    check(t, ~ip | ((ver == 4) & (hlen >= 20) & (hlen <= 60)) | ((ver == 6) & (hlen >= 40)),
          "ip_hlen in 20..60 (IPv4) or >= 40 (IPv6)", frames)
    check(t, ~ip | (hlen % 4 == 0), "ip_hlen is a multiple of 4", frames)
    check(t, ~ip | (hlen <= ilen), "ip_hlen <= ip_len", frames)
    check(t, ~ip | (ilen <= wire), "ip_len <= wirelen", frames)

    # transport
    proto = t["ip_proto"].astype(np.int64)
    first = (t["ip_frag"].astype(np.int64) & 0x1FFF) == 0
    more = (t["ip_frag"].astype(np.int64) & 0x2000) != 0
    seg = ilen - hlen
    thl = t["tcp_hlen"].astype(np.int64)
    tcp = ip & first & (proto == 6)
    udp = ip & first & (proto == 17)
    icmp = ip & first & np.isin(proto, (1, 58))
    other = ip & ~tcp & ~udp & ~icmp
    check(t, ~tcp | ((thl >= 20) & (thl <= 60) & (thl % 4 == 0)), "tcp_hlen in 20..60, a multiple of 4",
          frames)
    check(t, ~tcp | (plen == seg - thl), "TCP payload_len == ip_len - ip_hlen - tcp_hlen", frames)
    check(t, ~udp | more | (plen + 8 <= seg), "UDP payload_len + 8 <= ip_len - ip_hlen", frames)
    check(t, ~icmp | (plen == np.maximum(seg - 8, 0)), "ICMP payload_len == ip_len - ip_hlen - 8", frames)
    check(t, ~other | (plen == seg), "payload_len == ip_len - ip_hlen for other protocols and fragments",
          frames)
    assert len(t.opt_bytes) == int(np.maximum(thl - 20, 0).sum()), "TCP option bytes do not match tcp_hlen"
    not_tcp = decoded & ~tcp
    check(t, ~not_tcp | ((thl == 0) & (t["tcp_flags"] == 0) & (t["tcp_seq"] == 0) & (t["tcp_ack"] == 0)
                         & (t["tcp_win"] == 0) & (t["tcp_opts"] == 0) & (t["tcp_ws"] == 255)
                         & (t["toa_kind"] == 0)), "TCP fields are empty unless TCP was decoded", frames)
    check(t, ~(decoded & ~tcp & ~udp) | ((t["sport"] == 0) & (t["dport"] == 0)),
          "sport/dport are zero unless TCP/UDP was decoded", frames)

    # sparse groups
    for g in ("arp", "tun", "icmp"):
        rows = t.rows_of(g)
        assert np.all(np.diff(rows) > 0) and (len(rows) == 0 or (rows[0] >= 0 and rows[-1] < n)), g
    tg = t.group("tun")
    assert set(tg["tun"].tolist()) <= TUN_CODES and set(tg["out_ver"].tolist()) <= {4, 6}, tg
    icmp_rows = t.rows_of("icmp")
    check(t, np.isin(proto[icmp_rows], (1, 58)) | (len(icmp_rows) == 0), "ICMP rows carry ICMP")


def decode_capture(fmt: str, frames: list[Frame], stamps=None, **kw):
    return read_bytes(capture_bytes(fmt, frames, stamps), **kw)


# ---- frames --------------------------------------------------------------------------------------

@fuzz(200)
@given(batch_strategy())
def test_malformed_frames_never_raise_and_rows_stay_sane(batch):
    fmt, frames = batch
    check_table(decode_capture(fmt, frames), frames, fmt)


@fuzz(120)
@given(st.sampled_from(SUPPORTED_LINKTYPES).flatmap(lambda lt: st.lists(
    frames_for(lt, lies=frozenset()) | frames_for(lt, lies=frozenset({"snaplen"})), min_size=1, max_size=4)))
def test_honest_frames_decode(frames):
    """Without lies every frame decodes: whole ones as DECODED with a good IPv4 header checksum,
    snaplen-cut ones as SNAPLEN or, cut inside a header, UNDECODABLE_SNAPLEN."""
    t = decode_capture("pcap", frames)
    check_table(t, frames, "pcap")
    whole = np.array([len(f.data) == f.wirelen for f in frames])
    status = t["status"]
    check(t, ~whole | (status == Status.DECODED), "an honest whole frame is DECODED", frames)
    empty = t["caplen"] == 0          # see test_found_empty_snaplen_cut_raw_frame_is_snaplen
    check(t, whole | empty | np.isin(status, (Status.SNAPLEN, Status.UNDECODABLE_SNAPLEN)),
          "an honest snaplen-cut frame is SNAPLEN or UNDECODABLE_SNAPLEN", frames)
    check(t, (status != Status.DECODED) | (t["ip_ver"] != 4) | (t["ip_csum"] == Csum.OK),
          "an honest IPv4 header has a good checksum", frames)


@fuzz(150)
@given(st.sampled_from(LIE_SITES), st.sampled_from(SUPPORTED_LINKTYPES), st.data())
def test_one_lie_at_a_time_is_counted_not_raised(site, linktype, data):
    """A single lie site per frame, drawn from all of them: every kind of lie gets its turn."""
    frames = [data.draw(frames_for(linktype, lies=frozenset({site})), label="frame")]
    check_table(decode_capture("pcap", frames), frames, "pcap")


@fuzz(120)
@given(st.lists(random_bytes_frame(), min_size=1, max_size=8))
def test_random_bytes_at_every_link_type(frames):
    check_table(decode_capture("pcapng", frames), frames, "pcapng")
    for lt in {f.linktype for f in frames}:       # and each link type alone in a classic pcap
        same = [f for f in frames if f.linktype == lt]
        check_table(decode_capture("pcap", same), same, "pcap")


@fuzz(100)
@given(batch_strategy(min_size=2, max_size=6), st.data())
def test_a_frame_decodes_the_same_alone_and_among_others(batch, data):
    """Decoding must not depend on the neighbours: a window reading past caplen would see
    the next record's bytes in a batch, and zeros when the frame is decoded alone.

    In a classic pcap the 8 bytes right behind a frame are the next record's timestamp: they
    are set to what the cut removed from the frame (the bytes a decoder reading past caplen
    would most likely be fooled by), or drawn at random."""
    fmt, frames = batch[0], list(batch[1])
    i = data.draw(st.integers(0, len(frames) - 2), label="target")   # not the last: it has a neighbour
    if data.draw(st.booleans(), label="snaplen cut the target"):
        lies = data.draw(st.frozensets(st.sampled_from(LIE_SITES), max_size=1), label="lies") | {"snaplen"}
        frames[i] = data.draw(frames_for(frames[i].linktype, lies=lies), label="target frame")
    stamps = data.draw(st.lists(STAMPS_RANDOM, min_size=len(frames), max_size=len(frames)), label="stamps")
    if data.draw(st.booleans(), label="continuation behind the cut"):
        stamps[i + 1] = stamp_from(frames[i].rest)
    among = table_rows(decode_capture(fmt, frames, stamps), skip=NON_COMPARED)[i]
    alone = table_rows(decode_capture(fmt, [frames[i]]), skip=NON_COMPARED)[0]
    assert among == alone, (f"frame {i} decodes differently among neighbours (among, alone): "
                            f"{row_diff(among, alone)}\n  frame: {frames[i]!r}\n  next: {frames[i + 1]!r}")


def cuts_of(fr: Frame) -> list[Frame]:
    """``fr`` cut at every header boundary and a few bytes into each header, both as a
    snaplen cut (the wire length stays) and as a lying record (claims to be whole)."""
    full = fr.data + fr.rest
    points = sorted({k for m in fr.marks for k in (m, m + 1, m + 2, m + 4) if k <= len(full)})
    out = []
    for k in points:
        out.append(Frame(fr.linktype, full[:k], max(fr.wirelen, len(full)), full[k:]))
        out.append(Frame(fr.linktype, full[:k], k, full[k:]))
    return out


@fuzz(100)
@given(st.sampled_from(SUPPORTED_LINKTYPES).flatmap(
    lambda lt: st.lists(frames_for(lt, max_lies=1), min_size=1, max_size=3)))
def test_bytes_past_caplen_are_never_read(frames):
    """Every frame cut at every header boundary, decoded twice: once with the bytes right
    behind each record (the next record's timestamp in a classic pcap) holding what the cut
    removed, once holding zeros.  Nothing may change but the timestamps."""
    recs = [c for fr in frames for c in cuts_of(fr)]
    recs.append(Frame(frames[0].linktype, b"", 0))      # every cut record has a successor
    behind = [(0, 0)] + [stamp_from(r.rest) for r in recs[:-1]]
    zeros = [(0, 0)] * len(recs)
    a = table_rows(decode_capture("pcap", recs, behind), skip=("ts_ns",))
    b = table_rows(decode_capture("pcap", recs, zeros), skip=("ts_ns",))
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, (f"record {i} decodes differently when the 8 bytes behind it are what its cut removed "
                        f"(first) or zeros (second): {row_diff(x, y)}\n  frame: {recs[i]!r}\n"
                        f"  behind it: {recs[i].rest[:8].hex()}")


@fuzz(60)
@given(batch_strategy(min_size=1, max_size=6), st.integers(1, 400))
def test_decoding_does_not_depend_on_chunk_bytes(batch, chunk):
    fmt, frames = batch
    whole = decode_capture(fmt, frames)
    small = decode_capture(fmt, frames, chunk_bytes=chunk)
    a, b = table_rows(whole), table_rows(small)
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x == y, f"row {i} differs with chunk_bytes={chunk} (default, small): {row_diff(x, y)}"
    assert whole.accounting() == small.accounting()


# ---- containers --------------------------------------------------------------------------------

def _prefix(cap, upto: int, original) -> list[tuple]:
    """The original records whose record/block ends at or before byte ``upto``."""
    ends = {b.start: b.end for b in cap.blocks}
    return [r for r in original.rows if ends[r[1]] <= upto]


@fuzz(150)
@given(captures().flatmap(lambda c: st.tuples(st.just(c), damage(c))))
def test_damaged_containers_keep_the_frames_before_the_damage(case):
    """Cut or corrupt a capture: the records before the damage come out as they were (bytes,
    lengths, timestamps, frame numbers), with a Damage note where the damage is certain to be
    seen; InputError only when the damage hits the file header.  Both record walkers and any
    chunk size agree, and the decoder on top counts every record."""
    cap, dmg = case
    original = read_records(cap.data)
    assert original.damage == [] and len(original.rows) == sum(b.kind in ("record", "epb") for b in cap.blocks)
    header_hit = dmg.at < cap.header_len
    try:
        got = read_records(dmg.data)
    except InputError as err:
        assert header_hit, f"InputError for damage at byte {dmg.at}, past the file header: {err}"
        assert str(err).startswith("-: "), str(err)
        with pytest.raises(InputError):
            read_records(dmg.data, walk="serial")
        with pytest.raises(InputError):
            read_bytes(dmg.data)
        return

    # the reference walker and a small chunk size see exactly the same records and damage
    assert read_records(dmg.data, walk="serial") == got
    assert read_records(dmg.data, chunk_bytes=97) == got

    if dmg.how in ("cut", "gzip-cut"):
        keep = _prefix(cap, dmg.at, original)
        assert got.rows == keep, f"{len(got.rows)} records read, {len(keep)} expected before byte {dmg.at}"
        clean_cut = dmg.how == "cut" and dmg.at in cap.boundaries()
        if clean_cut:
            assert got.damage == [], got.damage
        else:
            assert got.damage, f"no Damage note for a {dmg.how} at byte {dmg.at}"
        if dmg.how == "cut" and not clean_cut:
            assert got.damage == [(cap.block_at(dmg.at).start, got.damage[0][1])], got.damage
    elif dmg.how == "flip":
        # a flipped byte may leave a record that still looks valid (a timestamp, a length that
        # still chains): no note is required, but nothing before it may change
        start = cap.block_at(dmg.at).start
        keep = _prefix(cap, start, original)
        assert got.rows[:len(keep)] == keep, "a record before the flipped byte changed or went missing"
        assert all(off >= start for off, _ in got.damage), (start, got.damage)
    else:   # gzip-flip: the records the damaged stream still yields intact are all read
        keep = _prefix(cap, dmg.at, original)
        assert got.rows[:len(keep)] == keep, (
            f"{len(got.rows)} records read of the {len(keep)} the corrupt gzip stream still holds intact "
            f"(before byte {dmg.at}); damage: {got.damage}")
    for off, msg in got.damage:
        assert msg and "\n" not in msg

    # the decoder on top: one row per record, accounting adds up, the same damage
    t = read_bytes(dmg.data)
    assert len(t) == len(got.rows)
    (acct,) = t.accounting()
    assert acct["frames"] == len(got.rows)
    assert acct["decoded"] + acct["ignored"] + acct["undecodable"] == acct["frames"]
    assert [(d["offset"], d["message"]) for d in acct["damage"]] == got.damage
    assert set(t["status"].tolist()) <= STATUS_CODES


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-cli")


def _cli(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lvs_inspect", "frames", str(path), "--summary"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_on_a_cut_file_header_and_a_cut_record(cli_dir):
    """The two outcomes the fuzzed CLI test below may or may not meet, made sure of."""
    whole = pcap_bytes([Frame(1, ETH4 + _ip4(59, 20), 34)] * 3)
    head = cli_dir / "head.pcap"
    head.write_bytes(whole[:10])
    p = _cli(head)
    assert (p.returncode, p.stdout) == (2, ""), p
    assert p.stderr == f"lvs-inspect: {head}: byte 0: pcap file header cut short (10 of 24 bytes)\n"
    rec = cli_dir / "record.pcap"
    rec.write_bytes(whole[:-5])
    p = _cli(rec)
    assert (p.returncode, p.stderr) == (0, ""), p
    first, damaged = p.stdout.splitlines()[:2]
    assert first.startswith(f"{rec}: pcap, 2 frames: 2 decoded, 0 ignored, 0 undecodable"), p.stdout
    assert damaged.startswith(f"{rec}: byte {24 + 2 * (16 + 34)}: damaged: "), p.stdout


@fuzz(10, phases=(Phase.explicit, Phase.generate))
@given(captures().flatmap(lambda c: st.tuples(st.just(c), damage(c))), st.booleans())
def test_cli_summary_exits_0_or_2_never_a_traceback(cli_dir, case, gz_name):
    """No shrinking here: every call is a fresh interpreter (~0.4 s), so shrinking a failure
    would take minutes; the container test above shrinks the same inputs in-process."""
    cap, dmg = case
    path = cli_dir / ("damaged.pcap.gz" if gz_name else "damaged.pcap")
    path.write_bytes(dmg.data)
    p = _cli(path)
    assert p.returncode in (0, 2), f"exit {p.returncode}\n{p.stderr}"
    assert "Traceback" not in p.stderr, p.stderr
    if p.returncode == 2:
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"lvs-inspect: {path}: "), p.stderr
    else:
        kind = cap.fmt + (" (gzip)" if dmg.how.startswith("gzip") else "")
        assert p.stdout.startswith(f"{path}: {kind}, "), p.stdout
        assert p.stderr == "", p.stderr


# ---- minimal failing inputs the properties above found -----------------------------------------
# Shrunk by hypothesis and written out, one test case per distinct cause.  Each failed when it was
# found; those fixed since stay as regression tests.

def _ip4(proto: int, total: int) -> bytes:
    h = bytearray(struct.pack("!BBHHHBBH", 0x45, 0, total, 0, 0x4000, 64, proto, 0) + bytes(8))
    struct.pack_into("!H", h, 10, 0xFFFF - csum16(bytes(h)))
    return bytes(h)


ETH4 = bytes(12) + b"\x08\x00"       # Ethernet header, zero MACs, IPv4


def _behind(lt: int, data: bytes, wirelen: int, junk: bytes) -> tuple[dict, dict]:
    """A frame's row decoded with ``junk`` as the 8 bytes right behind it, and with zeros."""
    recs = [Frame(lt, data, wirelen), Frame(lt, b"", 0)]
    rows = [table_rows(decode_capture("pcap", recs, [(0, 0), st_]), skip=("ts_ns",))[0]
            for st_ in (stamp_from(junk), (0, 0))]
    return rows[0], rows[1]


PAST_CAPLEN = {
    # link-layer fields are read whatever the caplen
    "eth-empty": (1, b"", 60, "0200000000010806"),
    "eth-vlan-tag-cut": (1, bytes(12) + b"\x81\x00", 60, "002a0800"),
    "sll-cut": (113, bytes(10), 60, "0000000008000000"),
    "sll2-cut": (276, bytes(10), 60, "0406020000000001"),
    "null-cut": (0, b"\x02\x00", 60, "01000000"),
    "raw-empty": (101, b"", 60, "6000000000000000"),
    # the IP version nibble is read before the header is known to be there
    "ip-version-past-caplen": (1, ETH4, 54, "4500002800004000"),
    "ipip-inner-version-past-caplen": (1, ETH4 + _ip4(4, 40), 54, "4500001400004000"),
    # GRE flags/protocol read before the GRE header is known to be there
    "gre-header-past-caplen": (101, _ip4(47, 64), 64, "0000080045000028"),
    # the UDP destination port is matched against the GUE ports before the UDP header is there
    "gue-port-past-caplen": (1, ETH4 + _ip4(17, 28), 42, "005017c000080000"),
    # the MTU of an ICMP frag-needed is read from bytes 6-7 with only 4 captured
    "icmp-mtu-past-caplen": (1, ETH4 + _ip4(1, 28) + b"\x03\x04\x00\x00", 42, "000005dc"),
}


@pytest.mark.parametrize("case", list(PAST_CAPLEN))
def test_found_bytes_past_caplen_change_the_row(case):
    lt, data, wire, junk = PAST_CAPLEN[case]
    with_junk, with_zeros = _behind(lt, data, wire, bytes.fromhex(junk))
    assert with_junk == with_zeros, (f"linktype {lt}, frame {data.hex() or '(empty)'}, wirelen {wire}: "
                                     f"the bytes behind it ({junk}) change {row_diff(with_junk, with_zeros)}")


IPV6_TOO_LONG = {
    # hop-by-hop header of 216 bytes: header length 256 does not fit ip_hlen (u1), stored as 0
    "ext-headers-256-bytes": (struct.pack("!IHBB", 0x60000000, 216, 0, 64) + bytes(32) + bytes([59, 26])
                              + bytes(214), None, 256, 256),
    # payload length 65535: total length 65575 does not fit ip_len (u2), stored as 39
    "payload-length-65535": (struct.pack("!IHBB", 0x60000000, 0xFFFF, 59, 64) + bytes(32), 65575, 40, 65575),
    # payload length 0 (taken as a jumbogram: the rest of the frame) on a 70000-byte frame
    "jumbogram-70000": (struct.pack("!IHBB", 0x60000000, 0, 59, 64) + bytes(32), 70000, 40, 70000),
}


@pytest.mark.parametrize("case", list(IPV6_TOO_LONG))
def test_found_ipv6_lengths_overflow_their_columns(case):
    data, wire, hlen, total = IPV6_TOO_LONG[case]
    frames = [Frame(229, data, wire if wire is not None else len(data))]
    t = decode_capture("pcap", frames)
    row = table_rows(t)[0]
    assert row["status"] >= 50 or (row["ip_hlen"], row["ip_len"]) == (hlen, total), (
        f"linktype 229, frame {hexbytes(data)}, wirelen {frames[0].wirelen}: decoded "
        f"({Status(row['status']).name}) with ip_hlen {row['ip_hlen']} (true {hlen}) and ip_len "
        f"{row['ip_len']} (true {total})")


@pytest.mark.parametrize("linktype", [1, 101, 113, 0])
def test_found_empty_snaplen_cut_raw_frame_is_snaplen(linktype):
    """Nothing captured of a 60-byte frame: Ethernet, SLL and NULL say UNDECODABLE_SNAPLEN (the
    snaplen cut the link header); raw IP says UNDECODABLE_SHORT_L2.  One rule for all."""
    t = decode_capture("pcap", [Frame(linktype, b"", 60)])
    assert Status(int(t["status"][0])) == Status.UNDECODABLE_SNAPLEN, (
        f"linktype {linktype}, empty frame, wirelen 60: {Status(int(t['status'][0])).name}")


@pytest.mark.parametrize("count, size", [(3, 60), (100, 1400)])
def test_found_gzip_bad_crc_keeps_the_frames(count, size):
    """Only the gzip trailer's CRC32 is wrong: every frame decompresses intact.  The reader
    loses what zlib produced in the call that noticed the damage: a small file is refused
    (InputError at byte 0), a larger one keeps only the frames of the first 64 KiB and notes
    a bogus "capture cut short" at the point the output stopped."""
    frames = [Frame(1, bytes([i % 256]) * size, size) for i in range(count)]
    gz = bytearray(gzip.compress(pcap_bytes(frames), mtime=0))
    gz[-8] ^= 0xFF
    try:
        got = read_records(bytes(gz))
    except InputError as err:
        pytest.fail(f"{count} frames of {size} bytes, gzip CRC32 flipped: InputError {err}")
    assert len(got.rows) == count and got.damage, (
        f"{count} frames of {size} bytes, gzip CRC32 flipped: {len(got.rows)} read, damage {got.damage}")
