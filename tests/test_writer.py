"""The capture writers, checked by reading their output back with tshark and dpkt."""
from __future__ import annotations

import gzip
import io
import shutil
import struct
import subprocess
from decimal import Decimal

import dpkt
import pytest

from lvs_inspect.capture.writer import Interface, PcapngWriter, PcapWriter

T0 = 1_700_000_000_123_456_789  # ns; the last three digits are lost at microsecond resolution


def _eth_frame(i: int, size: int = 60) -> bytes:
    """A minimal Ethernet/IPv4/UDP frame with an ID that tells frames apart."""
    udp = dpkt.udp.UDP(sport=40000 + i, dport=53, data=b"x" * 8)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=bytes([192, 0, 2, 1]), dst=bytes([198, 51, 100, 7]), p=17, id=i, ttl=64, data=udp)
    eth = dpkt.ethernet.Ethernet(src=bytes.fromhex("020000000001"), dst=bytes.fromhex("020000000002"),
                                 type=0x0800, data=ip)
    b = bytes(eth)
    return b + b"\0" * max(0, size - len(b))


def tshark_fields(path, *fields: str) -> list[list[str]]:
    exe = shutil.which("tshark")
    if exe is None:
        pytest.fail("tshark is not installed: run `make test` (scripts/ensure-system-deps installs it)")
    cmd = [exe, "-n", "-r", str(path), "-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]
    for f in fields:
        cmd += ["-e", f]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"tshark failed on {path}: {p.stderr.strip()}"
    return [line.split("\t") for line in p.stdout.splitlines()]


def _blocks(data: bytes):
    """Walk pcapng blocks (little or big endian), checking the framing."""
    e = "<" if data[8:12] == struct.pack("<I", 0x1A2B3C4D) else ">"
    off, out = 0, []
    while off < len(data):
        btype, blen = struct.unpack_from(e + "II", data, off)
        assert blen % 4 == 0 and blen >= 12, f"block at {off}: bad length {blen}"
        assert struct.unpack_from(e + "I", data, off + blen - 4)[0] == blen, f"block at {off}: trailer"
        out.append((btype, data[off + 8: off + blen - 4]))
        off += blen
    assert off == len(data)
    return e, out


# --- pcapng ---------------------------------------------------------------------------

def _write_multi(path, **kw):
    ifaces = [("p-client", 1), ("p-dir-c", 1, 262144, 9), Interface("p-rs1", 1, 96, 9, "real server 1"),
              ("raw4", 228, 0, 6)]
    with PcapngWriter(path, ifaces, comment="writer test", **kw) as w:
        w.write(0, T0, _eth_frame(1))
        w.write(1, T0 + 1, _eth_frame(2), comment="second frame")
        w.write(2, T0 + 2, _eth_frame(3, 200))                # cut to the snaplen 96
        w.write(3, T0 + 3, _eth_frame(4)[14:])                 # raw IPv4, microsecond interface
        w.write(0, T0 + 4, _eth_frame(5), wirelen=1514)        # says 1514 on the wire
        w.write_stats(0, T0 + 5, ifrecv=3, ifdrop=1)
    return ifaces


def test_pcapng_structure(tmp_path):
    p = tmp_path / "multi.pcapng"
    _write_multi(p)
    e, blocks = _blocks(p.read_bytes())
    assert e == "<"
    assert [b[0] for b in blocks] == [0x0A0D0D0A, 1, 1, 1, 1, 6, 6, 6, 6, 6, 5]
    # EPB of frame 3: caplen 96, original length 200
    body = blocks[7][1]
    iface, hi, lo, caplen, orig = struct.unpack_from("<IIIII", body)
    assert (iface, caplen, orig) == (2, 96, 200)
    assert (hi << 32 | lo) == T0 + 2
    # microsecond interface: truncated
    iface, hi, lo, caplen, orig = struct.unpack_from("<IIIII", blocks[8][1])
    assert (iface, hi << 32 | lo) == (3, (T0 + 3) // 1000)


def test_pcapng_big_endian_structure(tmp_path):
    p = tmp_path / "be.pcapng"
    _write_multi(p, big_endian=True)
    e, blocks = _blocks(p.read_bytes())
    assert e == ">" and len(blocks) == 11


@pytest.mark.tshark
@pytest.mark.parametrize("variant", ["le", "be", "gzip"])
def test_pcapng_tshark(tmp_path, variant):
    p = tmp_path / ("multi.pcapng.gz" if variant == "gzip" else "multi.pcapng")
    _write_multi(p, big_endian=(variant == "be"))
    if variant == "gzip":
        assert p.read_bytes()[:2] == b"\x1f\x8b"
    rows = tshark_fields(p, "frame.number", "frame.interface_name", "frame.time_epoch", "frame.len",
                         "frame.cap_len", "frame.comment", "ip.id", "frame.interface_description")
    assert len(rows) == 5
    assert [r[1] for r in rows] == ["p-client", "p-dir-c", "p-rs1", "raw4", "p-client"]
    epoch = [r[2] for r in rows]
    assert epoch[:3] == ["1700000000.123456789", "1700000000.123456790", "1700000000.123456791"]
    assert epoch[3] == "1700000000.123456000"           # if_tsresol 6
    assert epoch[4] == "1700000000.123456793"
    assert [(int(r[3]), int(r[4])) for r in rows] == [(60, 60), (60, 60), (200, 96), (46, 46), (1514, 60)]
    assert rows[1][5] == "second frame"
    assert [int(r[6], 16) for r in rows] == [1, 2, 3, 4, 5]    # each frame decoded as IPv4
    assert rows[2][7] == "real server 1"


@pytest.mark.tshark
def test_pcapng_capinfos_counts(tmp_path):
    exe = shutil.which("capinfos")
    if exe is None:
        pytest.fail("capinfos (wireshark-common) is not installed: run `make test`")
    p = tmp_path / "multi.pcapng"
    _write_multi(p)
    out = subprocess.run([exe, "-c", "-I", str(p)], capture_output=True, text=True, timeout=60).stdout
    assert "Number of packets:   5" in out or "Number of packets = 5" in out, out
    assert "Capture comment:     writer test" in subprocess.run(
        [exe, str(p)], capture_output=True, text=True, timeout=60).stdout


def test_pcapng_dpkt_reader(tmp_path):
    p = tmp_path / "one.pcapng"
    with PcapngWriter(p, [("eth0", 1, 262144, 9)]) as w:
        for i in range(4):
            w.write(0, T0 + i * 1_000_000, _eth_frame(i))
    with open(p, "rb") as f:
        pkts = list(dpkt.pcapng.Reader(f))
    assert len(pkts) == 4
    for i, (ts, buf) in enumerate(pkts):
        assert buf == _eth_frame(i)
        assert abs(ts - (T0 + i * 1_000_000) / 1e9) < 1e-6      # dpkt gives a float
        assert dpkt.ethernet.Ethernet(buf).data.id == i


def test_pcapng_to_file_object_and_deterministic_gzip(tmp_path):
    buf = io.BytesIO()
    with PcapngWriter(buf, ["eth0"], gzip=True) as w:
        w.write(0, T0, _eth_frame(1))
    assert not buf.closed                                    # a caller's file stays open
    first = buf.getvalue()
    buf2 = io.BytesIO()
    with PcapngWriter(buf2, ["eth0"], gzip=True) as w:
        w.write(0, T0, _eth_frame(1))
    assert first == buf2.getvalue()                          # no mtime/name in the gzip header
    raw = gzip.decompress(first)
    _, blocks = _blocks(raw)
    assert [b[0] for b in blocks] == [0x0A0D0D0A, 1, 6]


def test_pcapng_errors(tmp_path):
    with PcapngWriter(tmp_path / "e.pcapng", [("eth0", 1, 64, 9)]) as w:
        with pytest.raises(ValueError, match="interface index"):
            w.write(1, T0, b"x" * 20)
        with pytest.raises(TypeError, match="integer nanoseconds"):
            w.write(0, 1.5, b"x" * 20)
        with pytest.raises(ValueError, match="before the epoch"):
            w.write(0, -1, b"x" * 20)
        with pytest.raises(ValueError, match="wire length"):
            w.write(0, T0, b"x" * 20, wirelen=10)
        with pytest.raises(ValueError, match="if_tsresol"):
            w.add_interface(("bad", 1, 0, 40))
        w.write(0, T0, b"x" * 100)                           # cut to 64, wire length 100
    with pytest.raises(ValueError, match="closed"):
        w.write(0, T0, b"x")
    _, blocks = _blocks((tmp_path / "e.pcapng").read_bytes())
    assert struct.unpack_from("<II", blocks[-1][1], 12) == (64, 100)


def test_pcapng_power_of_two_resolution(tmp_path):
    p = tmp_path / "p2.pcapng"
    with PcapngWriter(p, [("eth0", 1, 0, 0x80 | 20)]) as w:   # 2**-20 s units
        w.write(0, 3_000_000_000, b"x" * 20)
    _, blocks = _blocks(p.read_bytes())
    _, hi, lo = struct.unpack_from("<III", blocks[2][1])
    assert (hi << 32 | lo) == 3 << 20


# --- classic pcap ---------------------------------------------------------------------

@pytest.mark.parametrize("nanos,big", [(False, False), (True, True), (True, False), (False, True)])
def test_pcap_header_and_dpkt(tmp_path, nanos, big):
    p = tmp_path / "c.pcap"
    with PcapWriter(p, 1, nanos=nanos, big_endian=big, snaplen=128) as w:
        w.write(T0, _eth_frame(1))
        w.write(T0 + 1000, _eth_frame(2, 300))
    data = p.read_bytes()
    e = ">" if big else "<"
    magic, vmaj, vmin, _, _, snap, lt = struct.unpack_from(e + "IHHiIII", data)
    assert magic == (0xA1B23C4D if nanos else 0xA1B2C3D4) and (vmaj, vmin, snap, lt) == (2, 4, 128, 1)
    sec, sub, caplen, orig = struct.unpack_from(e + "IIII", data, 24)
    assert (sec, sub) == (1_700_000_000, 123_456_789 if nanos else 123_456)
    with open(p, "rb") as f:
        r = dpkt.pcap.Reader(f)
        pkts = list(r)
    assert len(pkts) == 2 and r.datalink() == 1 and r.snaplen == 128
    assert pkts[0][1] == _eth_frame(1) and len(pkts[1][1]) == 128
    if nanos:
        assert Decimal(pkts[0][0]) == Decimal("1700000000.123456789")
    else:
        assert abs(pkts[0][0] - 1700000000.123456) < 1e-6


@pytest.mark.tshark
@pytest.mark.parametrize("nanos,big,gz", [(False, False, False), (True, True, False), (True, False, True)])
def test_pcap_tshark(tmp_path, nanos, big, gz):
    p = tmp_path / ("c.pcap.gz" if gz else "c.pcap")
    with PcapWriter(p, 1, nanos=nanos, big_endian=big, snaplen=100) as w:
        w.write(T0, _eth_frame(1))
        w.write(T0 + 7, _eth_frame(2, 300))
        w.write(T0 + 2_000_000_000, _eth_frame(3), wirelen=1000)
    rows = tshark_fields(p, "frame.number", "frame.time_epoch", "frame.len", "frame.cap_len",
                         "frame.interface_name", "ip.id")
    assert [r[0] for r in rows] == ["1", "2", "3"]
    if nanos:
        assert [r[1] for r in rows] == ["1700000000.123456789", "1700000000.123456796",
                                        "1700000002.123456789"]
    else:
        assert [r[1] for r in rows] == ["1700000000.123456000", "1700000000.123456000",
                                        "1700000002.123456000"]
    assert [(int(r[2]), int(r[3])) for r in rows] == [(60, 60), (300, 100), (1000, 60)]
    assert [int(r[5], 16) for r in rows] == [1, 2, 3]


@pytest.mark.tshark
@pytest.mark.parametrize("linktype,strip", [(101, 14), (228, 14)])
def test_pcap_raw_ip_linktypes(tmp_path, linktype, strip):
    p = tmp_path / "raw.pcap"
    with PcapWriter(p, linktype) as w:
        w.write(T0, _eth_frame(9)[strip:])
    rows = tshark_fields(p, "ip.src", "ip.dst", "udp.dstport")
    assert rows == [["192.0.2.1", "198.51.100.7", "53"]]


def test_pcap_errors(tmp_path):
    with pytest.raises(ValueError, match="snaplen"):
        PcapWriter(tmp_path / "x.pcap", 1, snaplen=0)
    with PcapWriter(tmp_path / "x.pcap", 1) as w:
        with pytest.raises(ValueError, match="32-bit"):
            w.write((1 << 32) * 1_000_000_000, b"x")
        with pytest.raises(TypeError):
            w.write(float(T0), b"x")
    assert w.closed
