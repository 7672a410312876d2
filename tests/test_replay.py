"""``lvs-inspect replay``: the reference forwarder fed with a trace.

Expected frames are checked byte for byte against frames built here by hand from SEMANTICS.md
(§1.1 NAT, §1.3 TUN, §1.4/§4 FullNAT with TOA) — struct and a plain RFC 1071 sum, not the
forwarder's code — and the replay's bookkeeping (inputs, links to the input frames, drops,
scheduler disagreements, what was followed from the trace) is checked on the synthetic
fixtures. Round trips through ``diff`` are in test_diff.py."""
from __future__ import annotations

import struct
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from packets import a4, a6, csum16, l4_with_v6_checksum, tcp  # noqa: E402

from lvs_inspect.capture import read_table  # noqa: E402
from lvs_inspect.capture.records import open_input  # noqa: E402
from lvs_inspect.capture.writer import PcapngWriter  # noqa: E402
from lvs_inspect.errors import InputError  # noqa: E402
from lvs_inspect.flows import LEGS, stitch  # noqa: E402
from lvs_inspect.forwarder.diff import _comments, diff  # noqa: E402
from lvs_inspect.forwarder.replay import COMMENT_PREFIX, LocalPorts, replay  # noqa: E402
from lvs_inspect.topology import load_topology, loads_topology  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SYNTH = ROOT / "fixtures" / "synth"
D_R, D_C, C_D, R_D = (LEGS.index(x) for x in ("director-rs", "director-client", "client-director",
                                                 "rs-director"))
MAC_DC = bytes.fromhex("020000000002")       # the director, client side (topology.toml)
MAC_DR = bytes.fromhex("020000000003")       # the director, real-server side
ROUTER = bytes.fromhex("020000000102")       # the site router on p-dir-c


@lru_cache(maxsize=None)
def run(name: str, follow: bool = True):
    trace = str(SYNTH / name / "trace.pcapng")
    topo = load_topology(str(SYNTH / name / "topology.toml"))
    return replay([trace], topo, follow_trace=follow)


@lru_cache(maxsize=None)
def raw_frames(path: str) -> dict[int, bytes]:
    """frame number -> captured bytes."""
    out = {}
    for b in open_input(path, 0, []):
        for i in range(len(b)):
            out[int(b.frame[i])] = b.frame_bytes(i)
    return out


@lru_cache(maxsize=None)
def table(path: str):
    return read_table([path])


def input_bytes(res, i: int) -> bytes:
    return raw_frames(res.traces[int(res.src_input[i])])[int(res.src_frame[i])]


def fix_ip4(b: bytearray, l3: int = 14) -> None:
    """IPv4 header checksum (RFC 1071), by hand."""
    hl = (b[l3] & 15) * 4
    b[l3 + 10:l3 + 12] = b"\0\0"
    b[l3 + 10:l3 + 12] = struct.pack("!H", 0xFFFF - csum16(bytes(b[l3:l3 + hl])))


def fix_tcp4(b: bytearray, l3: int = 14) -> None:
    """TCP checksum over the IPv4 pseudo header, by hand."""
    hl = (b[l3] & 15) * 4
    tot = struct.unpack("!H", b[l3 + 2:l3 + 4])[0]
    seg = l3 + hl
    b[seg + 16:seg + 18] = b"\0\0"
    pseudo = bytes(b[l3 + 12:l3 + 20]) + struct.pack("!BBH", 0, 6, tot - hl)
    b[seg + 16:seg + 18] = struct.pack("!H", 0xFFFF - csum16(pseudo + bytes(b[seg:l3 + tot])))


def pick(res, leg: int, pred) -> int:
    """Index of the first expected frame on ``leg`` whose input frame satisfies pred(bytes)."""
    for i in np.flatnonzero(res.leg == leg).tolist():
        if pred(input_bytes(res, i)):
            return i
    raise AssertionError("no such expected frame")


def tcp_flags(frame: bytes, l3: int = 14) -> int:
    return frame[l3 + (frame[l3] & 15) * 4 + 13]


def observed_copy(name: str, res, i: int, leg: int) -> bytes:
    """The trace's own copy of expected frame i's packet on ``leg`` at the director vantage
    (same connection, same IP ID): what a director really sent there."""
    path = str(SYNTH / name / "trace.pcapng")
    t = table(path)
    f = stitch(t, load_topology(str(SYNTH / name / "topology.toml")))
    src = int(res.src_frame[i])
    row = int(np.flatnonzero(t["frame"] == src)[0])
    m = np.flatnonzero((f.obs >= 0) & (f.conn == f.conn[row]) & (f.leg == leg) & (t["ip_id"] == t["ip_id"][row])
                       & (t["tcp_flags"] == t["tcp_flags"][row]))
    m = m[[t.vantages[v].name in ("p-dir-r", "p-dir-c") for v in t["iface"][m]]]
    return raw_frames(path)[int(t["frame"][m[0]])]


# --------------------------------------------------------------------------- bookkeeping

def test_nat_inputs_once_each_in_time_order_with_links():
    res = run("nat")
    t = table(res.traces[0])
    # every packet that reached the director once: 303 client packets, 175 server replies
    assert res.inputs == 478 and res.inputs_by_leg == {"client-director": 303, "rs-director": 175}
    assert len(res) == 478 and res.by_leg() == {"director-rs": 303, "director-client": 175}
    assert not res.drops and res.new_connections == 52
    # links: a director-rs frame comes from a client packet captured by the director
    names = [res.vantages[v].name for v in res.src_vantage.tolist()]
    assert {n for n, lg in zip(names, res.leg.tolist()) if lg == D_R} == {"p-dir-c"}
    assert {n for n, lg in zip(names, res.leg.tolist()) if lg == D_C} <= {"p-dir-r", "p-rs1"}
    assert (np.diff(res.ts_ns) >= 0).all()
    rows = np.searchsorted(t["frame"], res.src_frame)          # one input: frames ascend
    assert (t["frame"][rows] == res.src_frame).all()
    assert (t["ts_ns"][rows] == res.ts_ns).all()
    assert res.timings.keys() >= {"prepare", "gather", "model"}


def test_comment_names_input_frame_and_connection(tmp_path):
    res = run("nat")
    out = tmp_path / "exp.pcapng"
    assert res.write(out) == len(res)
    t = read_table([str(out)])
    assert [v.name for v in t.vantages] == ["director-rs", "director-client"]
    com = _comments([str(out)], len(t), t)
    assert com[0] == res.comment(0)
    assert com[0].startswith(f"{COMMENT_PREFIX} of {res.traces[0]} frame {int(res.src_frame[0])} (p-dir-c); conn ")
    assert com[0].endswith("> 203.0.113.100:80/tcp")
    # the frames themselves, in the same order
    got = raw_frames(str(out))
    assert got[1] == res.frames[0] and got[len(res)] == res.frames[-1]


# --------------------------------------------------------------------------- by hand (SEMANTICS)

def test_nat_syn_to_the_real_server_byte_for_byte():
    """§1.1 hop 2: dst VIP:vport -> RIP:rport, TTL -1 (>= 4.10), IP and TCP checksums, MACs
    D(rs side) -> R; IP ID, DF, TOS, seq, options untouched."""
    res = run("nat")
    i = pick(res, D_R, lambda f: tcp_flags(f) == 0x02)
    inp = input_bytes(res, i)
    rip = res.frames[i][30:34]                    # the server the trace shows (checked below)
    assert rip in {a4(f"192.0.2.{n}") for n in (11, 12, 13, 14)}
    b = bytearray(inp)
    b[0:6], b[6:12] = bytes.fromhex("0200000000" + str(rip[3])), MAC_DR   # RS .11 has 02:..:11
    b[14 + 8] -= 1
    b[30:34] = rip
    fix_ip4(b)
    fix_tcp4(b)
    assert res.frames[i] == bytes(b)
    assert res.frames[i] == observed_copy("nat", res, i, D_R)      # and the director agreed


def test_nat_reply_to_the_client_byte_for_byte():
    """§1.1 hop 4: src RIP:rport -> VIP:vport, TTL -1, MACs D(client side) -> the router."""
    res = run("nat")
    i = pick(res, D_C, lambda f: tcp_flags(f) == 0x12)
    b = bytearray(input_bytes(res, i))
    b[0:6], b[6:12] = ROUTER, MAC_DC
    b[14 + 8] -= 1
    b[26:30] = a4("203.0.113.100")
    fix_ip4(b)
    fix_tcp4(b)
    assert res.frames[i] == bytes(b)


def test_dr_changes_only_macs_ttl_and_ip_checksum():
    res = run("dr")
    i = pick(res, D_R, lambda f: len(f) > 100)
    inp = input_bytes(res, i)
    out = res.frames[i]
    b = bytearray(inp)
    b[0:6], b[6:12] = out[0:6], MAC_DR
    assert out[0:5] == bytes.fromhex("0200000000") and out[5] in (0x11, 0x12, 0x13, 0x14)
    b[14 + 8] -= 1
    fix_ip4(b)
    assert out == bytes(b)


@pytest.mark.parametrize("name,proto,extra", [("tun", 4, b""), ("tun-gre", 47, b"\x00\x00\x08\x00"),
                                              ("tun-gue", 17, None)])
def test_tun_outer_header_byte_for_byte(name, proto, extra):
    """§1.3: inner = the client's packet with TTL -1; outer src = the director's address toward
    the server (192.0.2.1), dst = RIP, TTL = inner TTL after the decrement, DF and TOS copied,
    ID 0 with DF; GRE 4 bytes 0x0800; GUE UDP to 6080 (checksum 0) + 4-byte header proto 4."""
    res = run(name)
    i = pick(res, D_R, lambda f: tcp_flags(f) == 0x02)
    inner = bytearray(input_bytes(res, i)[14:])
    inner[8] -= 1
    fix_ip4(inner, 0)
    out = res.frames[i]
    rip = out[30:34]
    if proto == 17:
        sport = struct.unpack("!H", out[34:36])[0]
        assert 32768 <= sport < 61000
        extra = struct.pack("!HHHH", sport, 6080, 8 + 4 + len(inner), 0) + bytes([0, 4, 0, 0])
    payload = extra + bytes(inner)
    outer = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, inner[1], 20 + len(payload), 0,
                                  0x4000 if inner[6] & 0x40 else 0, inner[8], proto, 0,
                                  a4("192.0.2.1"), rip))
    fix_ip4(outer, 0)
    want = out[0:6] + MAC_DR + b"\x08\x00" + bytes(outer) + payload
    assert out == want
    assert out == observed_copy(name, res, i, D_R)


def test_fullnat_dpvs_syn_ack_and_synack_byte_for_byte():
    """§1.4/§3/§4, DPVS >= 1.9.6: toward R: LIP:lport -> RIP:8080, seq + D1, TTL kept, the SYN's
    timestamp option overwritten with 10 NOPs and no TOA in it; the handshake ACK carries TOA
    254/8 (client port, client address) right after the base header (doff +2, IP length +8).
    Toward C: VIP:80 -> CIP:cport, ack - D1, MSS - 8 in the SYN-ACK, TTL kept, the client's
    MACs reflected."""
    res = run("fullnat")
    assert res.followed["FullNAT sequence deltas"] == 52 and res.followed["FullNAT local ports"] == 52
    i = pick(res, D_R, lambda f: tcp_flags(f) == 0x02)
    inp, out = input_bytes(res, i), res.frames[i]
    lip, rip, lport = out[26:30], out[30:34], struct.unpack("!H", out[34:36])[0]
    assert lip in (a4("192.0.2.200"), a4("192.0.2.201"))
    d1 = (struct.unpack("!I", out[38:42])[0] - struct.unpack("!I", inp[38:42])[0]) % (1 << 32)
    b = bytearray(inp)
    b[0:6], b[6:12] = out[0:6], MAC_DR
    b[26:30], b[30:34] = lip, rip
    b[34:38] = struct.pack("!HH", lport, 8080)
    b[38:42] = struct.pack("!I", (struct.unpack("!I", inp[38:42])[0] + d1) % (1 << 32))
    opts = bytes(b[54:14 + 20 + (b[46] >> 4) * 4])
    ts = opts.index(b"\x08\x0a")
    b[54 + ts:54 + ts + 10] = b"\x01" * 10
    fix_ip4(b)
    fix_tcp4(b)
    assert out == bytes(b)
    assert out == observed_copy("fullnat", res, i, D_R)
    # the same connection's handshake ACK: TOA inserted
    cip, cport = inp[26:30], inp[34:36]
    j = pick(res, D_R, lambda f: f[26:30] == cip and f[34:36] == cport and tcp_flags(f) == 0x10)
    inp2, out2 = input_bytes(res, j), res.frames[j]
    b = bytearray(inp2[:54]) + b"\xfe\x08" + cport + cip + inp2[54:]
    b[0:6], b[6:12] = out2[0:6], MAC_DR
    b[16:18] = struct.pack("!H", struct.unpack("!H", inp2[16:18])[0] + 8)
    b[26:30], b[30:34] = lip, rip
    b[34:38] = struct.pack("!HH", lport, 8080)
    b[38:42] = struct.pack("!I", (struct.unpack("!I", inp2[38:42])[0] + d1) % (1 << 32))
    b[46] = b[46] + (2 << 4)
    fix_ip4(b)
    fix_tcp4(b)
    assert out2 == bytes(b)
    # the real server's SYN-ACK toward the client
    k = pick(res, D_C, lambda f: f[30:34] == lip and f[36:38] == struct.pack("!H", lport)
             and tcp_flags(f) == 0x12)
    inp3, out3 = input_bytes(res, k), res.frames[k]
    b = bytearray(inp3)
    b[0:6], b[6:12] = ROUTER, MAC_DC
    b[26:30], b[30:34] = a4("203.0.113.100"), cip
    b[34:38] = struct.pack("!H", 80) + cport
    b[42:46] = struct.pack("!I", (struct.unpack("!I", inp3[42:46])[0] - d1) % (1 << 32))
    m = bytes(b).index(b"\x02\x04", 54)
    b[m + 2:m + 4] = struct.pack("!H", struct.unpack("!H", inp3[m + 2:m + 4])[0] - 8)
    fix_ip4(b)
    fix_tcp4(b)
    assert out3 == bytes(b)


def test_fullnat_alibaba_puts_toa_in_the_syn_too():
    """§4.2: Alibaba LVS inserts TOA in the SYN as well (DPVS >= 1.9.6 does not)."""
    for name, in_syn in (("fullnat-alibaba", True), ("fullnat", False)):
        res = run(name)
        i = pick(res, D_R, lambda f: tcp_flags(f) == 0x02)
        out = res.frames[i]
        assert (out[54:56] == b"\xfe\x08") is in_syn, name
        assert (out[34 + 20 + 2:34 + 20 + 8] == input_bytes(res, i)[34:36] + input_bytes(res, i)[26:30]) is in_syn


# --------------------------------------------------------------------------- decisions

def test_scheduler_disagreements_name_quiesced_server():
    res = run("nat-weight-zero")
    quiesced = [d for d in res.disagreements if d.why]
    assert quiesced and all(d.observed_rs == "192.0.2.14:80" and d.why == "quiesced (weight 0)"
                            for d in quiesced)
    assert all(d.model_rs != "192.0.2.14:80" for d in res.disagreements)
    assert "quiesced" in res.summary()
    # the frames still follow the trace: every connection's server as seen
    assert not res.drops


def test_persistence_template_disagreements_only_when_persistence_is_broken():
    ok, broken = run("nat-persistent"), run("nat-persistence-broken")
    assert [d for d in ok.disagreements if d.template] == []
    tpl = [d for d in broken.disagreements if d.template]
    assert len(tpl) >= 5
    assert all("persistence template" in str(d) for d in tpl)


def test_round_robin_order_hint():
    """The synthetic fixtures rotate in topology order, the kernel newest first: the summary
    says what that pattern suggests."""
    res = run("nat")
    assert any("added in another order" in n for n in res.notes)


def test_follow_trace_off_lets_the_model_allocate():
    res = run("fullnat", follow=False)
    assert not res.followed and not res.disagreements
    lports = sorted({struct.unpack("!H", f[34:36])[0] for f, lg in zip(res.frames, res.leg.tolist()) if lg == D_R})
    assert lports[0] == 1025                      # DPVS ports from 1025 (§1.4)
    lips = {f[26:30] for f, lg in zip(res.frames, res.leg.tolist()) if lg == D_R}
    assert lips == {a4("192.0.2.200"), a4("192.0.2.201")}


def test_wrong_lip_is_not_followed():
    res = run("fullnat-wrong-lip")
    lips = {f[26:30] for f, lg in zip(res.frames, res.leg.tolist()) if lg == D_R}
    assert lips <= {a4("192.0.2.200"), a4("192.0.2.201")}
    assert any("192.0.2.1 as a FullNAT local address" in n for n in res.notes)
    assert res.by_leg()["director-client"] > 0       # replies to 192.0.2.1 still find their entry


def test_local_ports_styles():
    a, b, r = a4("192.0.2.200"), a4("192.0.2.201"), a4("192.0.2.11")
    ali = LocalPorts("alibaba")
    assert [ali.pick_lip(1, [a, b]) for _ in range(3)] == [a, b, a]
    assert [ali.take_port(a, r, 80, 40000) for _ in range(2)] == [5000, 5001]
    dp = LocalPorts("dpvs")
    assert dp.take_port(a, r, 80, 40000) == 1025
    dp.hold(a, 1026, r, 80)
    assert dp.take_port(a, r, 80, 40000) == 1027
    lx = LocalPorts("linux")
    assert lx.take_port(a, r, 80, 40000) == 40000
    assert lx.take_port(a, r, 80, 40000) != 40000       # in use: the next free one
    lx.release(a, 40000, r, 80)
    assert lx.take_port(a, r, 80, 40000) == 40000


def test_midstream_connections_are_adopted(tmp_path):
    """A trace that starts in the middle of connections: their packets are still forwarded."""
    src = str(SYNTH / "nat" / "trace.pcapng")
    t = table(src)
    cut = tmp_path / "cut.pcapng"
    frames = raw_frames(src)
    keep = [int(f) for f in t["frame"][t["ts_ns"] > np.percentile(t["ts_ns"], 30)]]
    with PcapngWriter(str(cut), [v.name for v in t.vantages]) as w:
        for f in keep:
            row = int(np.flatnonzero(t["frame"] == f)[0])
            w.write(int(t["iface"][row]), int(t["ts_ns"][row]), frames[f])
    res = replay([str(cut)], load_topology(str(SYNTH / "nat" / "topology.toml")))
    assert res.followed["connections adopted mid-stream"] > 0
    d = diff([_write(res, tmp_path)], [str(cut)], str(SYNTH / "nat" / "topology.toml"))
    assert d.same, d.render_text()


def _write(res, tmp_path) -> str:
    p = tmp_path / "exp.pcapng"
    res.write(p)
    return str(p)


# --------------------------------------------------------------------------- IPv6, by hand

TOPO6 = """
profile = "linux"
[director]
macs = ["02:00:00:00:00:02", "02:00:00:00:00:03"]
ips = ["2001:db8:2::1"]
[[service]]
vip = "2001:db8:1::100"
port = 80
protocol = "tcp"
scheduler = "rr"
mode = "nat"
  [[service.real_server]]
  ip = "2001:db8:2::11"
  port = 8080
  mac = "02:00:00:00:00:11"
[vantage]
"p-dir-c" = "director:client-side"
"p-dir-r" = "director:rs-side"
"""
CIP6, VIP6, RIP6 = "2001:db8::10", "2001:db8:1::100", "2001:db8:2::11"
MAC_R = bytes.fromhex("020000000011")


def _v6(src, dst, l4, hlim, smac, dmac) -> bytes:
    payload = l4_with_v6_checksum(l4, src, dst, 6)
    hdr = struct.pack("!IHBB", 0x60000000, len(payload), 6, hlim) + a6(src) + a6(dst)
    return dmac + smac + b"\x86\xdd" + hdr + payload


def test_ipv6_nat_by_hand(tmp_path):
    """IPv6 NAT (§1.1): hop limit -1 both ways, the destination and port rewritten toward R,
    the source back to VIP:80 toward C; the observed copies are built here by hand too, and
    the round trip through diff finds nothing."""
    ack = 0x10
    c1 = _v6(CIP6, VIP6, tcp(40000, 80, seq=100), 60, ROUTER, MAC_DC)
    r1 = _v6(CIP6, RIP6, tcp(40000, 8080, seq=100), 59, MAC_DR, MAC_R)
    s1 = _v6(RIP6, CIP6, tcp(8080, 40000, flags=0x12, seq=500, ack=101), 64, MAC_R, MAC_DR)
    o1 = _v6(VIP6, CIP6, tcp(80, 40000, flags=0x12, seq=500, ack=101), 63, MAC_DC, ROUTER)
    c2 = _v6(CIP6, VIP6, tcp(40000, 80, flags=ack, seq=101, ack=501, data=b"GET /"), 60, ROUTER, MAC_DC)
    r2 = _v6(CIP6, RIP6, tcp(40000, 8080, flags=ack, seq=101, ack=501, data=b"GET /"), 59, MAC_DR, MAC_R)
    trace = tmp_path / "v6.pcapng"
    t0 = 1_700_000_000_000_000_000
    with PcapngWriter(str(trace), ["p-dir-c", "p-dir-r"]) as w:
        for k, (iface, fr) in enumerate([(0, c1), (1, r1), (1, s1), (0, o1), (0, c2), (1, r2)]):
            w.write(iface, t0 + k * 10_000, fr)
    topo_path = tmp_path / "topology.toml"
    topo_path.write_text(TOPO6)
    res = replay([str(trace)], load_topology(str(topo_path)))
    assert res.frames == [r1, o1, r2]
    assert res.connections == [f"[{CIP6}]:40000 > [{VIP6}]:80/tcp"]
    d = diff([_write(res, tmp_path)], [str(trace)], str(topo_path))
    assert d.same and d.summary["matched"] == 3, d.render_text()


# --------------------------------------------------------------------------- command line

def test_cli_replay_writes_and_summarises(tmp_path):
    out = tmp_path / "e.pcapng"
    p = subprocess.run([sys.executable, "-m", "lvs_inspect", "replay", str(SYNTH / "nat-weight-zero" / "trace.pcapng"),
                        "-t", str(SYNTH / "nat-weight-zero" / "topology.toml"), "-o", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    err = p.stderr
    assert "478 packets reached the director" in err and "director-rs 303" in err
    assert "scheduler disagreements: 52 of 52" in err and "quiesced (weight 0)" in err
    assert f"wrote {out}: 478 frames on 2 interfaces (director-rs, director-client)" in err
    assert len(read_table([str(out)])) == 478


def test_cli_replay_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"not a capture at all")
    cases = [
        [str(bad), "-t", str(SYNTH / "nat" / "topology.toml")],
        [str(SYNTH / "nat" / "trace.pcapng"), "-t", str(SYNTH / "nat" / "README.md")],
        ["-", "-t", str(SYNTH / "nat" / "topology.toml")],
    ]
    for args in cases:
        p = subprocess.run([sys.executable, "-m", "lvs_inspect", "replay", *args, "-o", str(tmp_path / "o.pcapng")],
                           capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
        assert p.returncode == 2, (args, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lvs-inspect: ") and "Traceback" not in p.stderr


def test_replay_api_rejects_stdin():
    with pytest.raises(InputError):
        replay(["-"], loads_topology(TOPO6, "t.toml"))


# --------------------------------------------------------------------------- ICMP errors, by hand

TOPO4 = """
profile = "linux"
[director]
macs = ["02:00:00:00:00:02", "02:00:00:00:00:03"]
ips = ["192.0.2.1"]
[[service]]
vip = "203.0.113.100"
port = 80
protocol = "tcp"
scheduler = "rr"
mode = "nat"
  [[service.real_server]]
  ip = "192.0.2.11"
  port = 8080
  mac = "02:00:00:00:00:11"
[vantage]
"p-dir-c" = "director:client-side"
"p-dir-r" = "director:rs-side"
"""
CIP4, VIP4, RIP4, GW4 = "198.51.100.10", "203.0.113.100", "192.0.2.11", "198.51.100.1"


def _ip4(src, dst, proto, body, ttl, ident=1, df=True) -> bytearray:
    b = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, 0x4000 if df else 0,
                              ttl, proto, 0, a4(src), a4(dst)) + body)
    fix_ip4(b, 0)
    return b


def _tcp4(src, dst, sport, dport, ttl, flags, seq, ack=0) -> bytes:
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    b = bytearray(14) + _ip4(src, dst, 6, seg, ttl)
    fix_tcp4(b)
    return bytes(b[14:])


def _icmp4(src, dst, typ, code, rest: int, quoted: bytes, ttl, ident=9) -> bytes:
    body = bytearray(struct.pack("!BBHI", typ, code, 0, rest) + quoted)
    body[2:4] = struct.pack("!H", 0xFFFF - csum16(bytes(body)))
    return bytes(_ip4(src, dst, 1, bytes(body), ttl, ident=ident, df=False))


def _quote(pkt: bytes, **rewrite) -> bytes:
    """An ICMP error's quote of an IPv4/TCP packet (header + 8 bytes), with addresses and
    ports rewritten as the director does: the quoted IP header checksum is redone, the
    quoted TCP checksum is left as it was (SEMANTICS §6)."""
    q = bytearray(pkt[:28])
    if "src" in rewrite:
        q[12:16] = a4(rewrite["src"])
    if "dst" in rewrite:
        q[16:20] = a4(rewrite["dst"])
    if "sport" in rewrite:
        q[20:22] = struct.pack("!H", rewrite["sport"])
    if "dport" in rewrite:
        q[22:24] = struct.pack("!H", rewrite["dport"])
    fix_ip4(q, 0)
    return bytes(q)


def test_icmp_errors_translated_both_ways_by_hand(tmp_path):
    """NAT, §6: a router on the client side says frag-needed about the director's SYN-ACK
    toward the client: the director sends it on to the server with outer dst RIP, the quoted
    source RIP:8080, TTL -1; the server says port unreachable about the director's SYN toward
    it: the director sends it to the client from the VIP, the quoted destination VIP:80."""
    c1 = _tcp4(CIP4, VIP4, 40000, 80, 60, 0x02, 100)
    r1 = _tcp4(CIP4, RIP4, 40000, 8080, 59, 0x02, 100)
    s1 = _tcp4(RIP4, CIP4, 8080, 40000, 64, 0x12, 500, 101)
    o1 = _tcp4(VIP4, CIP4, 80, 40000, 63, 0x12, 500, 101)
    e1 = _icmp4(GW4, VIP4, 3, 4, 1400, _quote(o1), 60)
    e1x = _icmp4(GW4, RIP4, 3, 4, 1400, _quote(o1, src=RIP4, sport=8080), 59)
    e2 = _icmp4(RIP4, CIP4, 3, 3, 0, _quote(r1), 64)
    e2x = _icmp4(VIP4, CIP4, 3, 3, 0, _quote(r1, dst=VIP4, dport=80), 63)

    def on(iface, pkt):
        """(interface, the frame arriving at the director, the frame it sends): dst MAC first."""
        return (iface, (MAC_DC + ROUTER if iface == 0 else MAC_DR + MAC_R) + b"\x08\x00" + pkt,
                (ROUTER + MAC_DC if iface == 0 else MAC_R + MAC_DR) + b"\x08\x00" + pkt)

    seq = [("in", 0, c1), ("out", 1, r1), ("in", 1, s1), ("out", 0, o1), ("in", 0, e1), ("out", 1, e1x),
           ("in", 1, e2), ("out", 0, e2x)]
    arp = b"\xff" * 6 + MAC_DC + b"\x08\x06" + bytes.fromhex("0001080006040001") + MAC_DC + a4(VIP4) \
        + b"\0" * 6 + a4(GW4)

    def write(path, swap=None):
        """Each packet 10 us after the one it answers, exchanges 100 ms apart, and both
        capture points still running a second later (an ARP)."""
        out = []
        t0 = 1_700_000_000_000_000_000
        with PcapngWriter(str(path), ["p-dir-c", "p-dir-r"]) as w:
            for k, (way, iface, pkt) in enumerate(seq):
                iface_, incoming, outgoing = on(iface, swap.get(id(pkt), pkt) if swap else pkt)
                fr = incoming if way == "in" else outgoing
                w.write(iface_, t0 + (k // 2) * 100_000_000 + (k % 2) * 10_000, fr)
                if way == "out":
                    out.append(fr)
            w.write(0, t0 + 2_000_000_000, arp)
            w.write(1, t0 + 2_000_000_000, arp)
        return out

    trace = tmp_path / "icmp.pcapng"
    want = write(trace)
    topo = tmp_path / "topology.toml"
    topo.write_text(TOPO4)
    res = replay([str(trace)], load_topology(str(topo)))
    assert res.inputs_by_leg == {"client-director": 1, "rs-director": 1, "icmp-error": 2}
    assert res.frames == want
    assert res.leg.tolist() == [D_R, D_C, D_R, D_C]
    assert res.connections[res.conn[2]] == f"{CIP4}:40000 > {VIP4}:80/tcp"
    d = diff([_write(res, tmp_path)], [str(trace)], str(topo))
    assert d.same and d.summary["matched"] == 4, d.render_text()
    # a director that forgets to rewrite the quoted port toward the server
    bad = tmp_path / "bad.pcapng"
    write(bad, {id(e1x): _icmp4(GW4, RIP4, 3, 4, 1400, _quote(o1, src=RIP4), 59)})
    d = diff([_write(res, tmp_path)], [str(bad)], str(topo))
    assert not d.same, d.summary
    f = d.connections[0]["first"]
    assert (f["kind"], f["leg"]) == ("missing", "director-rs") and "ICMP" in f["expected"]["packet"]


def test_tunnel_type_learned_when_the_topology_does_not_say(tmp_path):
    """ipvsadm -Ln does not show the tunnel type: the replay takes it (and the GUE port) from
    the trace's own tunnel packets, and the round trip stays clean."""
    import dataclasses
    t = load_topology(str(SYNTH / "tun-gue" / "topology.toml"))
    t = t.with_services(dataclasses.replace(s, real_servers=tuple(
        dataclasses.replace(rs, tun=None, tun_port=None) for rs in s.real_servers)) for s in t.services)
    trace = str(SYNTH / "tun-gue" / "trace.pcapng")
    res = replay([trace], t)
    assert res.followed["tunnel types"] == 4
    d = diff([_write(res, tmp_path)], [trace], t)
    assert d.same, d.render_text(limit=2)


ALL_FIXTURES = sorted(str(p.parent.relative_to(ROOT / "fixtures"))
                      for p in (ROOT / "fixtures").glob("*/*/topology.toml"))


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_batch_transmit_gives_the_per_packet_bytes(name):
    """replay's batch path (xmit_batch) against the per-packet functions, on every fixture:
    the same expected frames, byte for byte, and the same legs."""
    d = ROOT / "fixtures" / name
    trace = sorted(d.glob("trace.pcap*"))[0]
    topo = load_topology(str(d / "topology.toml"))
    fast = replay([str(trace)], topo)
    slow = replay([str(trace)], topo, batch=False)
    assert len(fast.frames) == len(slow.frames)
    assert fast.leg.tolist() == slow.leg.tolist()
    diffs = [i for i, (a, b) in enumerate(zip(fast.frames, slow.frames)) if a != b]
    assert not diffs, f"{name}: {len(diffs)} frames differ, first {diffs[0]}"
    assert all(type(f) is bytes or isinstance(f, bytes) for f in fast.frames)


# --------------------------------------------------------------------------- the second read

def _same_frames(a, b) -> None:
    assert a.inputs == b.inputs and len(a) == len(b)
    assert list(a.frames) == list(b.frames)
    assert np.array_equal(a.leg, b.leg) and np.array_equal(a.src_frame, b.src_frame)


def _copy_trace(src: Path, dst: Path, big_endian: bool, pcap: bool = False) -> Path:
    """The same frames, capture points and timestamps, written in the other byte order (pcap:
    one capture point)."""
    from lvs_inspect.capture.writer import PcapWriter

    vts: list = []
    batches = list(open_input(str(src), 0, vts))
    if pcap:
        w = PcapWriter(str(dst), big_endian=big_endian)
    else:
        w = PcapngWriter(str(dst), [(v.name, v.linktype) for v in vts], big_endian=big_endian)
    with w:
        for b in batches:
            for i in range(len(b)):
                if pcap:
                    w.write(int(b.ts_ns[i]), b.frame_bytes(i))
                else:
                    w.write(int(b.iface[i]), int(b.ts_ns[i]), b.frame_bytes(i))
    return dst


@pytest.mark.tshark
def test_inputs_read_at_their_offsets_or_parsed_again_give_the_same_frames(tmp_path):
    """An uncompressed pcapng or pcap (either byte order) is read again at the record offsets
    the table keeps; a gzip file is parsed a second time. The expected frames are the same."""
    import gzip
    import shutil

    name = "fullnat"          # frames that grow (TOA): the buffer's room before each frame
    src = SYNTH / name / "trace.pcapng"
    topo = load_topology(str(SYNTH / name / "topology.toml"))
    pcap = tmp_path / "trace.pcap"      # (one capture point: pcap has no interface names)
    subprocess.run(["editcap", "-F", "pcap", str(src), str(pcap)], check=True)
    be = _copy_trace(src, tmp_path / "be.pcapng", big_endian=True)
    be_pcap = _copy_trace(src, tmp_path / "be.pcap", big_endian=True, pcap=True)
    assert be.read_bytes()[8:12] == bytes.fromhex("1a2b3c4d")
    for plain in (src, pcap):
        gz = tmp_path / (plain.name + ".gz")
        with open(plain, "rb") as f, gzip.open(gz, "wb") as g:
            shutil.copyfileobj(f, g)
        mapped, streamed = replay([str(plain)], topo), replay([str(gz)], topo)
        assert len(mapped) > 100 and sum(mapped.by_leg().values()) == len(mapped)
        _same_frames(mapped, streamed)
        _same_frames(replay([str(be if plain == src else be_pcap)], topo), mapped)


def test_a_file_changed_between_the_two_reads_is_an_input_error(tmp_path):
    src = SYNTH / "nat" / "trace.pcapng"
    topo = load_topology(str(SYNTH / "nat" / "topology.toml"))
    copy = tmp_path / "trace.pcapng"
    copy.write_bytes(src.read_bytes())
    t = read_table([str(copy)])
    flows = stitch(t, topo)
    data = bytearray(copy.read_bytes())
    # every record: its captured length no longer what the first read found
    for at, cap in zip(t["offset"].tolist(), t["caplen"].tolist()):
        assert data[at:at + 4] == b"\x06\x00\x00\x00"
        data[at + 20:at + 24] = (cap + 4).to_bytes(4, "little")
    copy.write_bytes(bytes(data))
    with pytest.raises(InputError, match="changed"):
        replay([str(copy)], topo, table=t, flows=flows)
    at = int(t["offset"][len(t) // 2])
    copy.write_bytes(src.read_bytes()[:at])          # cut short
    with pytest.raises(InputError, match="changed"):
        replay([str(copy)], topo, table=t, flows=flows)


def test_expected_frames_read_as_bytes_and_write_without_copies(tmp_path):
    """The batch-made frames stay in the replay's buffer: indexing, slicing, iteration and
    equality give bytes; writing takes buffer views, and the file is the same as from bytes."""
    from lvs_inspect.forwarder.replay import ExpectedFrames

    res = run("fullnat")
    frames = res.frames
    assert isinstance(frames, ExpectedFrames)
    as_list = list(frames)
    assert all(type(f) is bytes for f in as_list) and len(as_list) == len(res)
    assert frames[-1] == as_list[-1] and frames[1:4] == as_list[1:4] and frames == as_list
    assert frames != as_list[:-1] and frames != as_list[:-1] + [b"x"]
    with pytest.raises(IndexError):
        frames[len(frames)]
    views = list(frames.views())
    assert sum(type(v) is memoryview for v in views) > len(views) // 2
    assert [bytes(v) for v in views] == as_list
    a, b = tmp_path / "a.pcapng", tmp_path / "b.pcapng"
    res.write(a)
    copy = type(res)(**{**res.__dict__, "frames": as_list})
    copy.write(b)
    assert a.read_bytes() == b.read_bytes()
