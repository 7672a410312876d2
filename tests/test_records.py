"""Record layer (lvs_inspect.capture.records): pcap / pcapng containers -> RecordBatch.

Files are built byte by byte (tests/test_records_build.py) together with the expected
frames; both walkers (vectorised and serial reference) must report exactly those, with
identical batches, for every chunk size.  tshark cross-checks are marked ``tshark``; the
real multi-interface capture in a network namespace is marked ``lab``.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from lvs_inspect.capture.records import (RecordBatch, Vantage, _Chain, _Scratch,
                                         open_input)
from lvs_inspect.errors import InputError
from test_records_build import Pcapng, eth_frame, pcap, write

WALKS = ("vector", "serial")
CHUNKS = (64, 100, 1000, 4096, 65536, 8 << 20)
T0 = 1_700_000_000


# --------------------------------------------------------------------------- helpers

def read(path, *, walk="vector", chunk=8 << 20, stdin=None, vantages=None):
    vs = [] if vantages is None else vantages
    r = open_input(path, 0, vs, chunk_bytes=chunk, walk=walk, stdin=stdin)
    batches = list(r)
    return r, vs, batches


def rows(batches):
    out = []
    for b in batches:
        assert isinstance(b, RecordBatch)
        assert b.buf.dtype == np.uint8 and b.data_off.dtype == np.int64
        assert b.caplen.dtype == np.uint32 and b.wirelen.dtype == np.uint32
        assert b.ts_ns.dtype == np.int64 and b.iface.dtype == np.uint16
        assert b.rec_off.dtype == np.int64 and b.frame.dtype == np.uint32
        for i in range(len(b)):
            out.append((int(b.rec_off[i]), b.frame_bytes(i), int(b.caplen[i]),
                        int(b.wirelen[i]), int(b.ts_ns[i]), int(b.iface[i]),
                        int(b.frame[i])))
    return out


def expected(frames, vid_of=lambda ordinal: ordinal):
    return [(f.offset, f.data, len(f.data), f.wirelen, f.ts_ns, vid_of(f.iface), f.frame)
            for f in frames]


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in ("data_off", "caplen", "wirelen", "ts_ns", "iface", "rec_off", "frame"):
            np.testing.assert_array_equal(getattr(x, k), getattr(y, k), err_msg=k)
        assert x.buf.tobytes() == y.buf.tobytes()


def check_all_ways(path_or_bytes, exp_rows, *, chunks=CHUNKS, damage=None):
    """Both walkers, every chunk size: same rows as expected, identical batches."""
    results = {}
    for chunk in chunks:
        per_walk = {}
        for walk in WALKS:
            if isinstance(path_or_bytes, (bytes, bytearray)):
                r, vs, bs = read("-", walk=walk, chunk=chunk,
                                 stdin=io.BytesIO(path_or_bytes))
            else:
                r, vs, bs = read(path_or_bytes, walk=walk, chunk=chunk)
            assert rows(bs) == exp_rows, (walk, chunk)
            got_damage = [(d.offset, d.message) for d in r.damage]
            if damage is not None:
                assert got_damage == damage, (walk, chunk)
            assert r.frames == len(exp_rows)
            per_walk[walk] = (r, vs, bs, got_damage)
        same_batches(per_walk["vector"][2], per_walk["serial"][2])
        assert per_walk["vector"][3] == per_walk["serial"][3]
        results[chunk] = per_walk
    return results


def tool(name):
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: run `make system-deps` "
                    f"(./scripts/ensure-system-deps) to install it")
    return path


# --------------------------------------------------------------------------- classic pcap

@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_variants(tmp_path, order, nano):
    frac_max = 999_999_999 if nano else 999_999
    recs = [(T0 + i, (i * 123_457) % frac_max, eth_frame(60 + i * 13, i), 60 + i * 13 + i % 3)
            for i in range(40)]
    recs.append((T0 + 99, frac_max, eth_frame(1514, 7)))
    data, frames = pcap(recs, order=order, nano=nano, snaplen=65535,
                        network=0x10000000 | 1)        # FCS bits set: linktype stays 1
    path = write(tmp_path, "trace.pcap", data)
    res = check_all_ways(path, expected(frames), damage=[])
    r, vs, _, _ = res[8 << 20]["vector"]
    assert r.format == "pcap" and not r.compressed and r.numbered == len(frames)
    assert len(vs) == 1
    v = vs[0]
    assert (v.id, v.input, v.path, v.index, v.name, v.linktype, v.snaplen) == \
        (0, 0, path, 0, "trace.pcap", 1, 65535)
    assert v.tsresol_ns == (1 if nano else 1000)


def test_pcap_header_only_and_big_records(tmp_path):
    data, _ = pcap([])
    r, vs, bs = read(write(tmp_path, "empty.pcap", data))
    assert bs == [] and r.frames == 0 and r.damage == [] and len(vs) == 1
    # incl_len above the snaplen but within 262144 is accepted (Wireshark does too)
    data, frames = pcap([(T0, 0, eth_frame(5000)), (T0, 1, eth_frame(70000))], snaplen=1500)
    check_all_ways(write(tmp_path, "big.pcap", data), expected(frames), damage=[],
                   chunks=(64, 4096, 8 << 20))


def test_pcap_odd_records_take_the_serial_path(tmp_path):
    """Records the vector heuristic rejects (fraction >= 1 s, top byte of ts_sec jumping,
    orig_len >= 2^24, incl_len > orig_len) are still read, identically."""
    recs = [(T0, 5, eth_frame(60)), (T0 + 1, 2_000_000, eth_frame(61)),
            (0x01000000, 1, eth_frame(62)), (T0 + (1 << 24), 1, eth_frame(63)),
            (T0, 1, eth_frame(64), 1 << 25), (T0, 1, eth_frame(100), 50), (0, 0, b""),
            (T0, 3, eth_frame(65))]
    data, frames = pcap(recs)
    check_all_ways(write(tmp_path, "odd.pcap", data), expected(frames), damage=[])


def test_pcap_fake_records_inside_payloads(tmp_path):
    """Payloads that are themselves pcap records (a pcap of a pcap transfer)."""
    inner, _ = pcap([(T0, i, eth_frame(40 + i)) for i in range(6)], header=False)
    recs = []
    for i in range(30):
        cut = (i * 7) % len(inner)
        recs.append((T0, i, inner[cut:] + inner[:cut]))
        recs.append((T0, i + 1, eth_frame(60 + i)))
    data, frames = pcap(recs)
    check_all_ways(write(tmp_path, "nested.pcap", data), expected(frames), damage=[])


# --------------------------------------------------------------------------- pcapng

def basic_pcapng(order="<", n=30, tsresol=None, tsoffset=None):
    b = Pcapng(order=order)
    b.shb()
    b.idb(1, 262144, name="p-c", description="client side", tsresol=tsresol,
          tsoffset=tsoffset)
    b.idb(1, 128, name="p-d", tsresol=9)
    b.idb(113, 0)
    for i in range(n):
        ifid = i % 3
        units = (T0 * 10 ** 6 + i * 1001) if ifid != 1 else (T0 * 10 ** 9 + i * 17)
        if ifid == 0 and tsresol is not None:
            units = T0 * 2 ** 20 + i * 999 if tsresol & 0x80 else T0 * 10 ** 9 + i
        b.epb(ifid, units, eth_frame(60 + 7 * i, i))
    return b


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_multi_interface(tmp_path, order):
    b = basic_pcapng(order)
    path = write(tmp_path, "multi.pcapng", b.bytes())
    res = check_all_ways(path, expected(b.frames), damage=[])
    r, vs, _, _ = res[8 << 20]["vector"]
    assert r.format == "pcapng" and r.numbered == 30
    assert [(v.id, v.index, v.name, v.linktype, v.snaplen, v.section) for v in vs] == [
        (0, 0, "p-c", 1, 262144, 0), (1, 1, "p-d", 1, 128, 0),
        (2, 2, "multi.pcapng#2", 113, 0, 0)]
    assert vs[0].description == "client side"
    assert vs[1].tsresol_ns == 1 and vs[0].tsresol_ns == 1000


@pytest.mark.parametrize("tsresol,tsoffset", [(9, None), (3, 0), (0x80 | 20, None),
                                               (0x80 | 32, 0), (12, None), (9, 3600),
                                               (6, -86400), (0x80 | 0, None)])
def test_pcapng_tsresol_tsoffset(tmp_path, tsresol, tsoffset):
    b = Pcapng()
    b.shb()
    b.idb(1, 0, name="x", tsresol=tsresol, tsoffset=tsoffset)
    res = b.sec_ifaces[0][1]                      # ns per unit (Fraction)
    sec = int(10 ** 9 / res)                      # units per second (0 below 1 ns/unit)
    for i, units in enumerate([T0 * sec, T0 * sec + sec // 2 + 1, 1, 0, sec - 1,
                               int(2 ** 62 / res), T0 * sec + 7]):
        b.epb(0, min(units, 2 ** 64 - 1), eth_frame(60, i))     # 64-bit field
    path = write(tmp_path, "res.pcapng", b.bytes())
    check_all_ways(path, expected(b.frames), damage=[], chunks=(64, 8 << 20))


def test_pcapng_timestamps_exact_values(tmp_path):
    b = Pcapng()
    b.shb()
    b.idb(1, 0, name="ns", tsresol=9)
    b.idb(1, 0, name="bin", tsresol=0x80 | 30)
    b.idb(1, 0, name="us-off", tsoffset=-10)
    b.epb(0, 1_700_000_000_123_456_789, eth_frame(60))
    b.epb(1, (1_700_000_000 << 30) + (1 << 29), eth_frame(60))
    b.epb(2, 1_700_000_000_000_001, eth_frame(60))
    _, _, bs = read(write(tmp_path, "ts.pcapng", b.bytes()))
    assert bs[0].ts_ns.tolist() == [1_700_000_000_123_456_789, 1_700_000_000_500_000_000,
                                    1_699_999_990_000_001_000]


def test_pcapng_multi_section_byte_orders(tmp_path):
    b = Pcapng()
    b.shb("<")
    b.idb(1, 0, name="a")
    b.epb(0, T0 * 10 ** 6, eth_frame(60, 1))
    b.shb(">")
    b.idb(1, 0, name="b")
    b.idb(1, 0, name="c", tsresol=9)
    b.epb(1, T0 * 10 ** 9 + 5, eth_frame(61, 2))
    b.epb(0, T0 * 10 ** 6 + 5, eth_frame(62, 3))
    b.shb("<")
    b.idb(1, 0)            # unnamed, third section, section-relative index 0
    b.epb(0, T0 * 10 ** 6 + 9, eth_frame(63, 4))
    path = write(tmp_path, "sections.pcapng", b.bytes())
    res = check_all_ways(path, expected(b.frames), damage=[])
    _, vs, bs, _ = res[8 << 20]["vector"]
    assert [(v.name, v.index, v.section) for v in vs] == [
        ("a", 0, 0), ("b", 0, 1), ("c", 1, 1), ("sections.pcapng#3", 0, 2)]
    assert bs[0].iface.tolist() == [0, 2, 1, 3]


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_spb_pb_and_other_blocks(tmp_path, order):
    b = Pcapng(order=order)
    b.shb(options=b"")
    b.idb(1, 64, name="eth0")
    b.idb(1, 0, name="eth1")
    b.nrb()
    b.spb(eth_frame(60, 1))
    b.spb(eth_frame(64, 2), wirelen=100)             # cut by snaplen 64
    b.spb(eth_frame(62, 3), wirelen=62)
    b.dsb()
    b.custom(True)
    b.pb(1, T0 * 10 ** 6 + 1, eth_frame(70, 4))
    b.custom(False)
    b.journal()
    b.unknown()
    b.unknown(0x80000001, 16)
    b.epb(1, T0 * 10 ** 6 + 2, eth_frame(71, 5), options=b"".join([
        struct.pack(order + "HH", 1, 5), b"hello\0\0\0", struct.pack(order + "HH", 0, 0)]))
    b.pb(0, T0 * 10 ** 6 + 3, eth_frame(50, 6))
    b.isb(0, T0 * 10 ** 6 + 4, ifrecv=1000, ifdrop=3, osdrop=7)
    b.isb(1, T0 * 10 ** 6 + 4, ifdrop=0)
    b.isb(9, 0, ifdrop=5)                               # unknown interface: ignored
    path = write(tmp_path, "blocks.pcapng", b.bytes())
    res = check_all_ways(path, expected(b.frames), damage=[])
    r, _, bs, _ = res[8 << 20]["vector"]
    assert [f.frame for f in b.frames] == [1, 2, 3, 5, 8, 9]
    assert r.numbered == 9
    assert r.stats == {0: {"ifrecv": 1000, "ifdrop": 3, "osdrop": 7}, 1: {"ifdrop": 0}}
    assert bs[0].ts_ns[:3].tolist() == [0, 0, 0]        # SPB: no timestamp
    assert bs[0].caplen[:3].tolist() == [60, 64, 62]


def test_pcapng_many_spbs_widen_the_vector_candidates(tmp_path):
    b = Pcapng()
    b.shb()
    b.idb(1, 0, name="spb")
    for i in range(300):
        b.spb(eth_frame(60 + i % 9, i))
        if i % 50 == 0:
            b.epb(0, T0 * 10 ** 6 + i, eth_frame(60, i))
    path = write(tmp_path, "spb.pcapng", b.bytes())
    check_all_ways(path, expected(b.frames), damage=[], chunks=(4096, 8 << 20))


def test_pcapng_block_bigger_than_chunk(tmp_path):
    b = Pcapng()
    b.shb()
    b.idb(1, 0, name="jumbo")
    b.epb(0, 1, eth_frame(60))
    b.epb(0, 2, eth_frame(70000))
    b.epb(0, 3, eth_frame(61))
    check_all_ways(write(tmp_path, "jumbo.pcapng", b.bytes()), expected(b.frames),
                   damage=[], chunks=(64, 1000, 65536))


def test_pcapng_zero_packets_and_unnamed(tmp_path):
    b = Pcapng()
    b.shb()
    r, vs, bs = read(write(tmp_path, "only-shb.pcapng.gz", gzip.compress(b.bytes())))
    assert bs == [] and r.damage == [] and vs == [] and r.compressed
    b.idb(1, 0)
    r, vs, bs = read(write(tmp_path, "idb.pcapng.gz", gzip.compress(b.bytes())))
    assert bs == [] and r.damage == [] and [v.name for v in vs] == ["idb.pcapng"]


def test_pcapng_fake_blocks_inside_payloads(tmp_path):
    """EPB payloads holding whole pcapng files: false candidates that point at each other,
    which the chain selection must jump over (prune, then pointer doubling)."""
    inner = Pcapng()
    inner.shb()
    inner.idb(1, 0)
    for i in range(5):
        inner.epb(0, i, eth_frame(44 + i, i))
    body = inner.bytes()[inner.block_offsets[2]:]
    b = Pcapng()
    b.shb()
    b.idb(1, 0, name="outer")
    for i in range(40):
        b.epb(0, T0 * 10 ** 6 + i, body[(i % 3) * 4:])
        b.epb(0, T0 * 10 ** 6 + i, eth_frame(60 + i, i))
    check_all_ways(write(tmp_path, "nested.pcapng", b.bytes()), expected(b.frames),
                   damage=[])


def test_vantages_accumulate_across_inputs(tmp_path):
    b = basic_pcapng(n=3)
    p1 = write(tmp_path, "one.pcapng", b.bytes())
    data, _ = pcap([(T0, 0, eth_frame(60))])
    p2 = write(tmp_path, "two.pcap.gz", gzip.compress(data))
    vs: list[Vantage] = []
    list(open_input(p1, 0, vs))
    r2 = open_input(p2, 1, vs)
    bs = list(r2)
    assert [(v.id, v.input, v.name) for v in vs][-1] == (3, 1, "two.pcap")
    assert bs[0].iface.tolist() == [3] and r2.compressed


# --------------------------------------------------------------------------- compression, stdin

def test_gzip_detected_by_magic_and_multi_member(tmp_path):
    b = basic_pcapng(n=20)
    raw = b.bytes()
    half = b.block_offsets[8]
    gz = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    path = write(tmp_path, "no-suffix.cap", gz)
    res = check_all_ways(path, expected(b.frames), damage=[], chunks=(64, 4096, 8 << 20))
    assert res[64]["vector"][0].compressed


def test_gzip_cut_short_and_trailing_garbage(tmp_path):
    data, frames = pcap([(T0, i, eth_frame(60 + i)) for i in range(50)])
    gz = gzip.compress(data)
    r, _, bs = read(write(tmp_path, "cut.pcap.gz", gz[:len(gz) // 2]))
    n = len(rows(bs))
    assert 0 < n < 50 and rows(bs) == expected(frames)[:n]
    assert r.damage[-1].message == "gzip stream cut short"
    r, _, bs = read(write(tmp_path, "junk.pcap.gz", gz + b"JUNK"))
    assert rows(bs) == expected(frames)
    assert [d.message for d in r.damage] == ["bytes after the end of the gzip stream ignored"]
    r, _, bs = read(write(tmp_path, "pad.pcap.gz", gz + b"\0" * 100))
    assert rows(bs) == expected(frames) and r.damage == []


def test_stdin_bytesio_and_pipe(tmp_path):
    b = basic_pcapng(n=25)
    raw = b.bytes()
    exp = expected(b.frames)
    for payload in (raw, gzip.compress(raw)):
        r, vs, bs = read("-", stdin=io.BytesIO(payload), chunk=256)
        assert rows(bs) == exp and r.path == "-" and vs[0].path == "-"
        # a real pipe, written in small pieces: short reads everywhere
        rfd, wfd = os.pipe()

        def writer(data=payload, fd=wfd):
            with open(fd, "wb", buffering=0) as f:
                for i in range(0, len(data), 7):
                    f.write(data[i:i + 7])

        t = threading.Thread(target=writer)
        t.start()
        with open(rfd, "rb", buffering=0) as f:
            r, vs, bs = read("-", stdin=f, chunk=100)
        t.join()
        assert rows(bs) == exp


@pytest.mark.parametrize("compress", [False, True])
def test_stream_yields_before_the_writer_finishes(compress):
    """A live pipe (dumpcap -w -): batches come as data arrives, not per full chunk."""
    b = basic_pcapng(n=20)
    raw = b.bytes()
    cut = b.frames[10].offset
    if compress:
        parts = [gzip.compress(raw[:cut]), gzip.compress(raw[cut:])]
    else:
        parts = [raw[:cut], raw[cut:]]
    released = threading.Event()
    waited = []
    rfd, wfd = os.pipe()

    def writer():
        with open(wfd, "wb", buffering=0) as f:
            f.write(parts[0])
            waited.append(released.wait(20))
            f.write(parts[1])

    t = threading.Thread(target=writer)
    t.start()
    with open(rfd, "rb") as f:                      # buffered, like sys.stdin.buffer
        it = iter(open_input("-", 0, [], stdin=f))
        first = next(it)
        released.set()
        rest = list(it)
    t.join()
    assert waited == [True], "the reader waited for the end of the stream"
    assert rows([first]) == expected(b.frames)[:10]
    assert rows([first] + rest) == expected(b.frames)


def test_stdin_subprocess_default_sys_stdin(tmp_path):
    data, frames = pcap([(T0, i, eth_frame(60 + i)) for i in range(10)], order=">", nano=True)
    code = ("import json; from lvs_inspect.capture.records import open_input\n"
            "vs=[]; r=open_input('-', 0, vs, chunk_bytes=64)\n"
            "ts=[int(t) for b in r for t in b.ts_ns]\n"
            "print(json.dumps([r.format, r.frames, ts, vs[0].name]))")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                         check=True, env=env, timeout=60)
    fmt, n, ts, name = json.loads(out.stdout)
    assert (fmt, n, name) == ("pcap", 10, "-")
    assert ts == [f.ts_ns for f in frames]


# --------------------------------------------------------------------------- damage

def _cut_everywhere(data: bytes, frames, last_off: int, chunks=(64, 8 << 20)):
    exp_all = expected(frames)
    for cut in range(last_off, len(data)):
        for chunk in chunks:
            for walk in WALKS:
                r, _, bs = read("-", stdin=io.BytesIO(data[:cut]), walk=walk, chunk=chunk)
                assert rows(bs) == exp_all[:-1], (cut, chunk, walk)
                if cut == last_off:
                    assert r.damage == [], cut
                else:
                    assert len(r.damage) == 1 and r.damage[0].offset == last_off, (cut, walk)
                    assert r.damage[0].path == "-"
                    assert "cut short" in r.damage[0].message


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcap_cut_short_at_every_byte_of_last_record(order):
    data, frames = pcap([(T0, i, eth_frame(60 + i)) for i in range(5)], order=order)
    _cut_everywhere(data, frames, frames[-1].offset)


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_cut_short_at_every_byte_of_last_block(order):
    b = basic_pcapng(order, n=5)
    _cut_everywhere(b.bytes(), b.frames, b.frames[-1].offset)


def test_cut_short_messages():
    data, _ = pcap([(T0, 0, eth_frame(60)), (T0, 1, eth_frame(60))])
    r, _, _ = read("-", stdin=io.BytesIO(data[:-10]))
    assert str(r.damage[0]) == "-: byte 100: capture cut short: record of 76 bytes has only 66"
    r, _, _ = read("-", stdin=io.BytesIO(data[:105]))
    assert r.damage[0].message == "capture cut short inside a record header (5 of 16 bytes)"


def _patched(data: bytes, off: int, fmt: str, value) -> bytes:
    d = bytearray(data)
    struct.pack_into(fmt, d, off, value)
    return bytes(d)


def pcapng_three(order="<"):
    b = Pcapng(order=order)
    b.shb()
    b.idb(1, 0, name="x")
    for i in range(3):
        b.epb(0, T0 * 10 ** 6 + i, eth_frame(60 + i))
    b.epb(0, T0 * 10 ** 6 + 9, eth_frame(60))
    return b


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("what,message", [
    ("len13", "block length 13 is not a multiple of 4; reading stopped"),
    ("len8", "block length 8 is less than 12; reading stopped"),
    ("trailer", "block trailer length 80 differs from the header length 96; reading stopped"),
    ("absurd", "block length 4294967292 is absurd (over 16777216); reading stopped"),
    ("caplen", "EPB captured length 200 exceeds the 64 bytes the block holds; "
               "reading stopped"),
    ("ifid", "EPB uses interface 4 but the section has 1 interface description(s); "
             "reading stopped"),
    ("short", "EPB length 28 is less than its minimum 32; reading stopped"),
])
def test_pcapng_corrupt_block_in_the_middle(order, what, message):
    b = pcapng_three(order)
    data = b.bytes()
    off = b.frames[1].offset
    o = order
    if what == "len13":
        data = _patched(data, off + 4, o + "I", 13)
    elif what == "len8":
        data = _patched(data, off + 4, o + "I", 8)
    elif what == "trailer":
        data = _patched(data, off + 92, o + "I", 80)
    elif what == "absurd":
        data = _patched(data, off + 4, o + "I", 0xFFFFFFFC)
    elif what == "caplen":
        data = _patched(data, off + 20, o + "I", 200)
    elif what == "ifid":
        data = _patched(data, off + 8, o + "I", 4)
    elif what == "short":
        blk = struct.pack(o + "IIIIII", 6, 28, 0, 0, 0, 0) + struct.pack(o + "I", 28)
        data = data[:off] + blk + data[off:]
    check_all_ways(data, expected(b.frames[:1]), damage=[(off, message)],
                   chunks=(64, 1000, 8 << 20))


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcap_corrupt_record_length_in_the_middle(order):
    data, frames = pcap([(T0, i, eth_frame(60 + i)) for i in range(4)], order=order,
                        snaplen=1500)
    off = frames[2].offset
    bad = _patched(data, off + 8, order + "I", 300000)
    check_all_ways(bad, expected(frames[:2]), chunks=(64, 8 << 20), damage=[
        (off, "record length 300000 exceeds the maximum 262144 (snaplen 1500); "
              "reading stopped")])


def test_bad_section_header_in_the_middle():
    b = pcapng_three()
    data = b.bytes()
    off = b.frames[2].offset
    p = Pcapng()
    p.shb()
    shb = bytearray(p.bytes())
    shb[8:12] = b"\1\2\3\4"
    check_all_ways(data[:off] + bytes(shb) + data[off:], expected(b.frames[:2]),
                   damage=[(off, "section header byte-order magic 01020304 is invalid; "
                                 "reading stopped")], chunks=(64, 8 << 20))


# --------------------------------------------------------------------------- not a capture

def test_input_errors(tmp_path):
    cases = {
        "missing.pcap": (None, "no such file"),
        "empty.pcap": (b"", "empty file"),
        "notes.txt": (b"Hello world, this is text\n" * 3,
                      "not a pcap or pcapng capture: starts with b'Hello wo'"),
        "short.pcap": (b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00\x00\x00",
                       "pcap file header cut short (10 of 24 bytes)"),
        "bom.pcapng": (b"\n\r\r\n" + struct.pack("<I", 28) + b"\0\0\0\0" + bytes(16),
                       "pcapng byte-order magic 00000000 is invalid"),
        "v2.pcapng": (b"\n\r\r\n" + struct.pack("<IIHHq", 28, 0x1A2B3C4D, 2, 0, -1)
                      + struct.pack("<I", 28), "pcapng version 2 is not supported"),
        "text.gz": (gzip.compress(b"just text, compressed\n"),
                    "not a pcap or pcapng capture (gzip-compressed): starts with b'just tex'"),
        "empty.gz": (gzip.compress(b""), "empty file (gzip-compressed)"),
        "broken.gz": (b"\x1f\x8b" + b"garbage" * 5, "gzip data corrupt"),
    }
    for name, (content, message) in cases.items():
        path = os.path.join(str(tmp_path), name)
        if content is not None:
            write(tmp_path, name, content)
        with pytest.raises(InputError) as ei:
            open_input(path, 0, [])
        text = str(ei.value)
        assert text.startswith(path + ": ") and message in text, text
        assert "\n" not in text and "Traceback" not in text
    with pytest.raises(InputError, match="is a directory"):
        open_input(str(tmp_path), 0, [])
    with pytest.raises(InputError, match="^-: empty file$"):
        open_input("-", 0, [], stdin=io.BytesIO(b""))


# --------------------------------------------------------------------------- chain selection

def test_chain_orbit_matches_naive_walk():
    rng = random.Random(5)
    for trial in range(300):
        size = rng.randint(1, 60)
        c = sorted(rng.sample(range(0, 400), size))
        nx = [x + rng.choice([1, 2, 3, 5, 8, 13, rng.randint(1, 60)]) for x in c]
        ca, na = np.array(c, np.int64), np.array(nx, np.int64)
        start = rng.choice(c)
        succ = dict(zip(c, nx))
        want, p = [], start
        while p in succ:
            want.append(c.index(p))
            p = succ[p]
        ch = _Chain(ca, na, 500, _Scratch())
        got = ch.orbit(start)
        assert got is not None and [int(ch.c[i]) for i in got] == [c[i] for i in want]
        # later calls: either None (start pruned: the serial walker takes it) or exact
        other = rng.choice(c)
        got2 = ch.orbit(other)
        if got2 is not None:
            p, want2 = other, []
            while p in succ:
                want2.append(p)
                p = succ[p]
            assert [int(ch.c[i]) for i in got2] == want2
    assert _Chain(np.array([4], np.int64), np.array([9], np.int64), 10,
                  _Scratch()).orbit(5) is None


def _units(rng: random.Random, b: Pcapng, ifid: int) -> int:
    """A timestamp in units whose value in ns fits in int64."""
    res = b.sec_ifaces[ifid][1]
    return rng.choice([rng.randrange(0, int(2 ** 62 / res)),
                       int(T0 * 10 ** 9 / res) + rng.getrandbits(16)])


def _random_pcapng(rng: random.Random):
    b = Pcapng(order=rng.choice("<>"))
    b.shb()
    nested = None
    for _ in range(rng.randint(1, 60)):
        k = rng.random()
        if not b.sec_ifaces or k < 0.05:
            b.idb(rng.choice([1, 113]), rng.choice([0, 64, 262144]),
                  name=rng.choice([None, "if%d" % b.n_ifaces]),
                  tsresol=rng.choice([None, 9, 0x80 | 24, 3]))
        elif k < 0.55:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
            if nested and rng.random() < 0.5:
                data = nested[rng.randrange(len(nested)) & ~3:] + data
            ifid = rng.randrange(len(b.sec_ifaces))
            b.epb(ifid, _units(rng, b, ifid), data,
                  rng.choice([None, len(data) + rng.randint(0, 100)]))
        elif k < 0.65:
            b.spb(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 100))),
                  rng.choice([None, rng.randint(0, 300)]))
        elif k < 0.7:
            ifid = rng.randrange(len(b.sec_ifaces))
            b.pb(ifid, _units(rng, b, ifid),
                 bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 80))))
        elif k < 0.75:
            b.isb(rng.randrange(len(b.sec_ifaces)), 0, ifdrop=rng.randint(0, 9))
        elif k < 0.8:
            b.custom(rng.random() < 0.5)
        elif k < 0.85:
            b.unknown(rng.choice([7, 8, 0x12345, 0x80000001]), rng.randrange(0, 40, 4))
        elif k < 0.88:
            b.nrb()
        elif k < 0.9:
            b.shb(rng.choice("<>"))
        else:
            b.journal()
        if nested is None and len(b.data) > 300:
            nested = b.bytes()
    return b


def test_random_pcapng_files_every_walk_and_chunk():
    for seed in range(40):
        rng = random.Random(seed)
        b = _random_pcapng(rng)
        data = b.bytes()
        chunks = (64, rng.randint(65, 700), rng.randint(700, 5000), 8 << 20)
        check_all_ways(data, expected(b.frames), chunks=chunks, damage=[])
        # and cut short at a random point
        cut = rng.randrange(1, len(data))
        if cut > 40:
            res = {w: read("-", stdin=io.BytesIO(data[:cut]), walk=w, chunk=rng.choice(chunks))
                   for w in WALKS}
            assert rows(res["vector"][2]) == rows(res["serial"][2])
            assert res["vector"][0].damage == res["serial"][0].damage


def test_random_pcap_files_every_walk_and_chunk():
    for seed in range(40):
        rng = random.Random(1000 + seed)
        recs = []
        nested = b""
        for i in range(rng.randint(0, 80)):
            data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 150)))
            if nested and rng.random() < 0.3:
                data = nested[rng.randrange(len(nested)):] + data
            ts = T0 + rng.choice([0, 1, 1 << 24, -(1 << 24), rng.getrandbits(20)])
            recs.append((ts, rng.choice([0, 999_999, rng.getrandbits(20)]), data,
                         rng.choice([len(data), len(data) + 40, rng.getrandbits(26)])))
            if len(recs) == 5:
                nested = pcap(recs, header=False)[0]
        raw, frames = pcap(recs, order=rng.choice("<>"), nano=rng.random() < 0.5)
        chunks = (64, rng.randint(65, 700), 8 << 20)
        check_all_ways(raw, expected(frames), chunks=chunks, damage=[])


# --------------------------------------------------------------------------- tshark

def tshark_rows(path):
    out = subprocess.run(
        [tool("tshark"), "-r", path, "-T", "fields", "-e", "frame.number",
         "-e", "frame.time_epoch", "-e", "frame.interface_id", "-e", "frame.len",
         "-e", "frame.cap_len"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    res = []
    for line in out.stdout.splitlines():
        num, t, ifid, flen, clen = line.split("\t")
        if not ifid:
            if path.endswith(".pcapng"):
                continue          # custom / journal records: numbered, not packets
            ifid = "0"            # classic pcap: no interface id
        if t:
            sec, _, frac = t.partition(".")
            ns = int(sec) * 10 ** 9 + int((frac + "000000000")[:9])
        else:
            ns = 0                # SPB: no timestamp
        res.append((int(num), ns, int(ifid), int(flen), int(clen)))
    return res


def ours(path, vs=None):
    vs = [] if vs is None else vs
    r, vs, bs = read(path, vantages=vs)
    res = []
    for b in bs:
        for i in range(len(b)):
            res.append((int(b.frame[i]), int(b.ts_ns[i]), vs[int(b.iface[i])].index,
                        int(b.wirelen[i]), int(b.caplen[i])))
    return res, r, vs


@pytest.mark.tshark
def test_tshark_cross_check(tmp_path):
    files = []
    for order in "<>":
        for nano in (False, True):
            data, _ = pcap([(T0 + i, i * 1234 + 5, eth_frame(60 + i), 60 + i + (i % 2) * 9)
                            for i in range(20)], order=order, nano=nano, snaplen=65535)
            files.append(write(tmp_path, f"x{order == '<'}{nano}.pcap", data))
        b = basic_pcapng(order, n=25)
        files.append(write(tmp_path, f"multi{order == '<'}.pcapng", b.bytes()))
        b = Pcapng(order=order)
        b.shb()
        b.idb(1, 64, name="a", tsresol=0x80 | 20)
        b.idb(1, 0, name="b", tsresol=9)
        b.nrb()
        b.spb(eth_frame(64, 1), wirelen=90)
        b.epb(1, T0 * 10 ** 9 + 123, eth_frame(70, 2))
        b.custom()
        b.pb(0, T0 * 2 ** 20 + 3, eth_frame(62, 3))
        b.journal()
        b.epb(0, T0 * 2 ** 20 + 2 ** 19, eth_frame(66, 4))
        b.dsb()
        b.isb(0, 0, ifdrop=1)
        b.epb(1, T0 * 10 ** 9 + 999_999_999, eth_frame(61, 5))
        files.append(write(tmp_path, f"blocks{order == '<'}.pcapng", b.bytes()))
    b = Pcapng()
    b.shb("<")
    b.idb(1, 0, name="s0")
    b.epb(0, T0 * 10 ** 6, eth_frame(60, 1))
    b.shb(">")
    b.idb(1, 0, name="s1a")
    b.idb(1, 0, name="s1b", tsresol=9)
    b.epb(1, T0 * 10 ** 9 + 7, eth_frame(60, 2))
    b.epb(0, T0 * 10 ** 6 + 7, eth_frame(60, 3))
    files.append(write(tmp_path, "sections.pcapng", b.bytes()))
    b = Pcapng()
    b.shb()
    b.idb(1, 0, name="off", tsoffset=3600)
    b.idb(1, 0, name="neg", tsoffset=-10, tsresol=0x80 | 30)
    b.idb(1, 0, name="ps", tsresol=12)
    b.epb(0, T0 * 10 ** 6 + 5, eth_frame(60))
    b.epb(1, (T0 << 30) + 12345, eth_frame(60))
    b.epb(2, 10 ** 18 + 123_456_789, eth_frame(60))
    files.append(write(tmp_path, "offsets.pcapng", b.bytes()))
    for path in files:
        mine, r, _ = ours(path)
        theirs = tshark_rows(path)
        assert mine == theirs, path
        assert len(mine) > 0 and r.damage == []


# --------------------------------------------------------------------------- lab: real capture

def _sh(*args, check=True):
    return subprocess.run(list(args), capture_output=True, text=True, check=check,
                          timeout=60)


@pytest.mark.lab
def test_lab_dumpcap_two_interfaces(tmp_path):
    """A real multi-interface pcapng written by dumpcap on two veths in a namespace."""
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (network namespaces)")
    ip = tool("ip")
    dumpcap = tool("dumpcap")
    ns = f"lvsrec-{os.getpid()}"
    peer = ns + "-p"
    out = os.path.join(str(tmp_path), "lab.pcapng")
    try:
        _sh(ip, "netns", "add", ns)
        _sh(ip, "netns", "add", peer)
        for dev, pdev, mac, pmac, addr, paddr in (
                ("vA", "vAp", "02:00:00:00:0a:01", "02:00:00:00:0a:02",
                 "192.0.2.1/24", "192.0.2.2/24"),
                ("vB", "vBp", "02:00:00:00:0b:01", "02:00:00:00:0b:02",
                 "198.51.100.1/24", "198.51.100.2/24")):
            _sh(ip, "-n", ns, "link", "add", dev, "address", mac, "type", "veth",
                "peer", "name", pdev, "address", pmac, "netns", peer)
            _sh(ip, "netns", "exec", ns, "sysctl", "-q", f"net.ipv6.conf.{dev}.disable_ipv6=1")
            _sh(ip, "netns", "exec", peer, "sysctl", "-q",
                f"net.ipv6.conf.{pdev}.disable_ipv6=1")
            _sh(ip, "-n", ns, "addr", "add", addr, "dev", dev)
            _sh(ip, "-n", peer, "addr", "add", paddr, "dev", pdev)
            _sh(ip, "-n", ns, "link", "set", dev, "up")
            _sh(ip, "-n", peer, "link", "set", pdev, "up")
        cap = subprocess.Popen([ip, "netns", "exec", ns, dumpcap, "-q", "-i", "vA", "-i", "vB",
                                "-c", "20", "-a", "duration:30", "-w", out],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            time.sleep(1.5)
            # UDP datagrams to both addresses, alternating: ARP, UDP and ICMP replies
            sender = ("import socket, time\n"
                      "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      "for i in range(40):\n"
                      "    s.sendto(b'lvsrec %d' % i, (('192.0.2.1', '198.51.100.1')[i % 2], 9))\n"
                      "    time.sleep(0.05)\n")
            _sh(ip, "netns", "exec", peer, sys.executable, "-c", sender)
            _, err = cap.communicate(timeout=40)
        finally:
            if cap.poll() is None:
                cap.kill()
                cap.wait()
        assert cap.returncode == 0, err
    finally:
        _sh(ip, "netns", "del", ns, check=False)
        _sh(ip, "netns", "del", peer, check=False)
    mine, r, vs = ours(out)
    assert sorted(v.name for v in vs) == ["vA", "vB"]
    assert len(mine) == 20 and r.damage == []
    assert {m[2] for m in mine} == {0, 1}
    assert mine == tshark_rows(out)
    assert set(r.stats) == {v.id for v in vs}
    whole = rows(read(out)[2])
    for walk in WALKS:
        for chunk in (64, 1000):
            assert rows(read(out, walk=walk, chunk=chunk)[2]) == whole
