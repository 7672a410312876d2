"""The reference forwarder as a live director (``lvs-inspect director``) between real kernel
TCP stacks in network namespaces: NAT, DR, FullNAT end to end with HTTP, TUN on the wire.

Each test builds its namespaces with a per-run prefix ``lvsld-<pid>-`` (deleted in
``finally``, child processes killed first), runs HTTP servers on two real servers, starts
the director with ``python -m lvs_inspect director`` in the director namespace and waits for
``ready``, makes several requests from the client (rr spreads them over both servers),
captures every leg with tcpdump and checks the rewrites with ``lvs_inspect.capture``.
Documentation addresses only: clients 203.0.113.0/24, real servers 198.51.100.0/24,
locally administered MACs 02:...
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

CIP, VIP, DIP_C = "203.0.113.10", "203.0.113.100", "203.0.113.1"
DIP_R, LIP = "198.51.100.1", "198.51.100.200"
RIPS = ("198.51.100.11", "198.51.100.12")
MAC = {"c": "02:00:00:00:01:0a", "d-c": "02:00:00:00:02:01", "d-r": "02:00:00:00:02:02",
       "r1": "02:00:00:00:03:0b", "r2": "02:00:00:00:03:0c", "sw": "02:00:00:00:04:"}

SERVER = textwrap.dedent("""
    import http.server, socket, sys
    name, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        def do_GET(self):
            body = (name + " " + self.client_address[0] + "\\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    class S(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = S((addr, port), H)
    print("listening", flush=True)
    s.serve_forever()
""")

CLIENT = textwrap.dedent("""
    import http.client, json, sys
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    out = []
    for i in range(n):
        try:
            c = http.client.HTTPConnection(host, port, timeout=4)
            c.request("GET", "/" + "x" * int(sys.argv[4]) if len(sys.argv) > 4 else "/")
            out.append(c.getresponse().read().decode().strip())
            c.close()
        except Exception as e:
            out.append("error: " + repr(e))
    print(json.dumps(out))
""")


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"'{tool}' is not installed: the lab tests need it")


def _root_and_tools():
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network namespaces, AF_PACKET, nftables)")
    for t in ("ip", "nft", "tcpdump"):
        _need(t)


class Lab:
    """Namespaces, links and processes of one test; :meth:`cleanup` removes everything."""

    def __init__(self, tmp: Path):
        self.prefix = f"lvsld-{os.getpid()}-"
        self.tmp = tmp
        self.ns: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.captures: list[subprocess.Popen] = []

    def n(self, short: str) -> str:
        return self.prefix + short

    def add_ns(self, *shorts: str) -> None:
        for s in shorts:
            name = self.n(s)
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
            subprocess.run(["ip", "netns", "add", name], check=True)
            self.ns.append(name)
            self.ip(s, "link set lo up")

    def ip(self, short: str, args: str) -> None:
        r = subprocess.run(["ip", "-n", self.n(short), *args.split()], check=False, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"ip -n {self.n(short)} {args}: {r.stderr.strip()}")

    def sh(self, short: str, *cmd: str, check=True, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(["ip", "netns", "exec", self.n(short), *cmd], check=False, capture_output=True,
                           text=True, **kw)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} in {short}: {r.stderr.strip() or r.stdout.strip()}")
        return r

    def sysctl(self, short: str, *settings: str) -> None:
        self.sh(short, "sysctl", "-q", "-w", *settings)

    def veth(self, a: str, a_if: str, a_mac: str, b: str, b_if: str, b_mac: str) -> None:
        r = subprocess.run(["ip", "link", "add", a_if, "netns", self.n(a), "address", a_mac,
                            "type", "veth", "peer", "name", b_if, "netns", self.n(b),
                            "address", b_mac], check=False, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"veth {a_if}/{b_if}: {r.stderr.strip()}")
        self.ip(a, f"link set {a_if} up")
        self.ip(b, f"link set {b_if} up")

    def popen(self, short: str, cmd: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.n(short), *cmd], **kw)
        self.procs.append(p)
        return p

    def server(self, short: str, name: str, addr: str, port: int) -> None:
        p = self.popen(short, [PY, "-c", SERVER, name, addr, str(port)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"http server in {short} did not start: {p.stderr.read()}")

    def capture(self, short: str, iface: str, name: str) -> Path:
        path = self.tmp / f"{name}.pcap"
        p = self.popen(short, ["tcpdump", "-i", iface, "-n", "-s", "0", "-U", "--immediate-mode", "-w", str(path)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.captures.append(p)
        line = p.stderr.readline()
        if "listening" not in line:
            raise RuntimeError(f"tcpdump on {iface} in {short}: {line}{p.stderr.read()}")
        return path

    def director(self, topo_text: str, ifaces: list[str], extra: tuple = ()) -> subprocess.Popen:
        topo = self.tmp / "topology.toml"
        topo.write_text(topo_text)
        cmd = [PY, "-m", "lvs_inspect", "director", "-t", str(topo), *extra]
        for i in ifaces:
            cmd += ["-i", i]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = self.popen("d", cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=env, cwd=str(ROOT))
        line = p.stdout.readline()
        if line.strip() != "ready":
            p.wait(5)
            raise RuntimeError(f"director did not start (exit {p.returncode}): {p.stderr.read()}")
        self.director_proc = p
        return p

    def stop_director(self) -> dict:
        p = self.director_proc
        p.send_signal(signal.SIGTERM)
        _out, err = p.communicate(timeout=10)
        assert p.returncode == 0, err
        lines = [ln for ln in err.splitlines() if ln.startswith("{")]
        assert lines, f"no statistics line on stderr: {err}"
        return json.loads(lines[-1])

    def client(self, host: str, port: int, n: int, pad: int = 0) -> list[str]:
        args = [PY, "-c", CLIENT, host, str(port), str(n)] + ([str(pad)] if pad else [])
        r = self.sh("c", *args, timeout=40)
        return json.loads(r.stdout)

    def stop_captures(self) -> None:
        for p in self.captures:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.captures:
            p.wait(5)

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(3)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()
        for name in self.ns:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def lab(tmp_path):
    _root_and_tools()
    lb = Lab(tmp_path)
    try:
        yield lb
    finally:
        lb.cleanup()


def wire_two_legged(lab: Lab) -> None:
    """The links of client -- director -- switch -- rs1, rs2 (a bridge in its own ns), no addresses."""
    lab.add_ns("c", "d", "sw", "r1", "r2")
    lab.veth("c", "c0", MAC["c"], "d", "d-c", MAC["d-c"])
    lab.ip("sw", "link add br0 type bridge")
    lab.ip("sw", "link set br0 up")
    lab.veth("d", "d-r", MAC["d-r"], "sw", "s-d", MAC["sw"] + "01")
    lab.ip("sw", "link set s-d master br0")
    for i, short in enumerate(("r1", "r2")):
        lab.veth(short, "r0", MAC[short], "sw", f"s-{short}", MAC["sw"] + f"1{i}")
        lab.ip("sw", f"link set s-{short} master br0")


def two_legged(lab: Lab, *, rs_default_via_director: bool) -> None:
    """client -- director -- switch -- rs1, rs2 (the RS side is a bridge in its own ns)."""
    wire_two_legged(lab)
    for i, short in enumerate(("r1", "r2")):
        lab.ip(short, f"addr add {RIPS[i]}/24 dev r0")
        if rs_default_via_director:
            lab.ip(short, f"route add default via {DIP_R}")
    lab.ip("c", f"addr add {CIP}/24 dev c0")
    lab.ip("d", f"addr add {DIP_C}/24 dev d-c")
    lab.ip("d", f"addr add {VIP}/32 dev d-c")
    lab.ip("d", f"addr add {DIP_R}/24 dev d-r")
    lab.sysctl("d", "net.ipv4.ip_forward=0")


def topo(mode: str, profile: str = "linux", port: int = 8080, rss: tuple = RIPS,
         rs_extra: tuple = ("", "")) -> str:
    rs = "".join(f"""
  [[service.real_server]]
  ip = "{ip}"
  port = {port}
{extra}""" for ip, extra in zip(rss, rs_extra))
    return f"""
profile = "{profile}"

[director]
macs = ["{MAC['d-c']}", "{MAC['d-r']}"]
ips = ["{DIP_C}", "{DIP_R}"]
lips = ["{LIP}"]

[[service]]
vip = "{VIP}"
port = 80
protocol = "tcp"
scheduler = "rr"
mode = "{mode}"
{rs}
"""


def read(paths):
    from lvs_inspect.capture import read_table
    t = read_table([str(p) for p in paths])
    df = t.to_pandas()
    names = {i: v.name for i, v in enumerate(t.vantages)}
    df["vp"] = df["iface"].map(names)
    return t, df


def key(t, a):
    return t.addr_key(a)


def served_by(answers):
    return sorted({a.split()[0] for a in answers})


@pytest.mark.lab
def test_nat_end_to_end(lab):
    two_legged(lab, rs_default_via_director=True)
    for i, short in enumerate(("r1", "r2")):
        lab.server(short, short, "0.0.0.0", 8080)
    caps = [lab.capture("c", "c0", "client"), lab.capture("d", "d-c", "d_client_side"),
            lab.capture("d", "d-r", "d_rs_side"), lab.capture("r1", "r0", "rs1")]
    lab.director(topo("nat"), ["d-c", "d-r"])
    answers = lab.client(VIP, 80, 6)
    stats = lab.stop_director()
    lab.stop_captures()
    assert all(not a.startswith("error") for a in answers), answers
    assert served_by(answers) == ["r1", "r2"] and sum(a.startswith("r1") for a in answers) == 3
    assert all(a.split()[1] == CIP for a in answers), "NAT keeps the client address"
    assert stats["connections"]["created"] == 6 and stats["out_by_mode"]["nat"] > 0
    t, df = read(caps)
    tcp = df[df.ip_proto == 6]
    # hop 2 at rs1: CIP -> RIP1:8080, TTL 64-1, director MAC -> rs1 MAC, checksums right
    h2 = tcp[(tcp.vp == "rs1.pcap") & (tcp.ip_src == key(t, CIP))]
    assert len(h2) >= 15
    assert (h2.ip_dst == key(t, RIPS[0])).all() and (h2.dport == 8080).all()
    assert (h2.ip_ttl == 63).all()
    assert (h2.eth_src == int(MAC["d-r"].replace(":", ""), 16)).all()
    assert (h2.eth_dst == int(MAC["r1"].replace(":", ""), 16)).all()
    assert (h2.l4_csum == 1).all() and (h2.ip_csum == 1).all()
    # hop 4 at the client: VIP:80 -> CIP, TTL 64-1
    h4 = tcp[(tcp.vp == "client.pcap") & (tcp.ip_dst == key(t, CIP))]
    assert len(h4) >= 6 * 4
    assert (h4.ip_src == key(t, VIP)).all() and (h4.sport == 80).all()
    assert (h4.ip_ttl == 63).all() and (h4.l4_csum == 1).all()
    # nothing from the RIP reaches the client, the director's kernel sent no RST
    assert not (tcp[tcp.vp == "client.pcap"].ip_src == key(t, RIPS[0])).any()
    assert not ((tcp.vp == "d_client_side.pcap") & (tcp.tcp_flags & 4 != 0)).any()


@pytest.mark.lab
def test_nat_ipv6_end_to_end(lab):
    """The same NAT path over IPv6: neighbour discovery by the kernel, ip6 nft rules, the
    hop limit, IPv6 pseudo-header checksums."""
    cip, vip, dc, dr = "2001:db8:c::10", "2001:db8:c::100", "2001:db8:c::1", "2001:db8:f::1"
    rips = ("2001:db8:f::11", "2001:db8:f::12")
    wire_two_legged(lab)
    for i, short in enumerate(("r1", "r2")):
        lab.ip(short, f"addr add {rips[i]}/64 dev r0 nodad")
        lab.ip(short, f"-6 route add default via {dr}")
        lab.server(short, short, "::", 8080)
    lab.ip("c", f"addr add {cip}/64 dev c0 nodad")
    lab.ip("d", f"addr add {dc}/64 dev d-c nodad")
    lab.ip("d", f"addr add {vip}/128 dev d-c nodad")
    lab.ip("d", f"addr add {dr}/64 dev d-r nodad")
    caps = [lab.capture("c", "c0", "client"), lab.capture("r2", "r0", "rs2")]
    text = topo("nat", rss=rips).replace(VIP, vip).replace(f'lips = ["{LIP}"]', "")
    text = text.replace(f'ips = ["{DIP_C}", "{DIP_R}"]', f'ips = ["{dc}", "{dr}"]')
    lab.director(text, ["d-c", "d-r"])
    answers = lab.client(vip, 80, 4)
    stats = lab.stop_director()
    lab.stop_captures()
    assert all(not a.startswith("error") for a in answers), answers
    assert served_by(answers) == ["r1", "r2"] and all(a.split()[1] == cip for a in answers)
    assert stats["connections"]["created"] == 4
    t, df = read(caps)
    tcp = df[df.ip_proto == 6]
    h2 = tcp[(tcp.vp == "rs2.pcap") & (tcp.ip_src == key(t, cip))]
    assert len(h2) >= 10 and (h2.ip_ver == 6).all() and (h2.ip_dst == key(t, rips[1])).all()
    assert (h2.dport == 8080).all() and (h2.ip_ttl == 63).all() and (h2.l4_csum == 1).all()
    h4 = tcp[(tcp.vp == "client.pcap") & (tcp.ip_dst == key(t, cip))]
    assert len(h4) >= 16 and (h4.ip_src == key(t, vip)).all() and (h4.sport == 80).all()
    assert (h4.ip_ttl == 63).all() and (h4.l4_csum == 1).all()


@pytest.mark.lab
def test_dr_end_to_end(lab):
    lab.add_ns("c", "d", "sw", "r1", "r2")
    lab.ip("sw", "link add br0 type bridge")
    lab.ip("sw", "link set br0 up")
    for short, mac, i in (("c", MAC["c"], 1), ("d", MAC["d-c"], 2), ("r1", MAC["r1"], 3),
                          ("r2", MAC["r2"], 4)):
        lab.veth(short, "e0", mac, "sw", f"s-{short}", MAC["sw"] + f"2{i}")
        lab.ip("sw", f"link set s-{short} master br0")
    lab.ip("c", f"addr add {CIP}/24 dev e0")
    lab.ip("d", f"addr add {DIP_C}/24 dev e0")
    lab.ip("d", f"addr add {VIP}/32 dev e0")
    rips = ("203.0.113.11", "203.0.113.12")
    for i, short in enumerate(("r1", "r2")):
        lab.ip(short, f"addr add {rips[i]}/24 dev e0")
        lab.ip(short, f"addr add {VIP}/32 dev lo")
        lab.sysctl(short, "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2")
        lab.server(short, short, "0.0.0.0", 80)
    caps = [lab.capture("c", "e0", "client"), lab.capture("r1", "e0", "rs1"),
            lab.capture("r2", "e0", "rs2")]
    text = topo("dr", port=80, rss=rips).replace(
        f'ips = ["{DIP_C}", "{DIP_R}"]', f'ips = ["{DIP_C}"]')
    lab.director(text, ["e0"])
    answers = lab.client(VIP, 80, 6)
    stats = lab.stop_director()
    lab.stop_captures()
    assert all(not a.startswith("error") for a in answers), answers
    assert served_by(answers) == ["r1", "r2"]
    assert stats["out_by_mode"]["dr"] > 0 and stats["reply_packets"] == 0
    t, df = read(caps)
    tcp = df[df.ip_proto == 6]
    dmac = int(MAC["d-c"].replace(":", ""), 16)
    for short, cap in (("r1", "rs1.pcap"), ("r2", "rs2.pcap")):
        rmac = int(MAC[short].replace(":", ""), 16)
        h2 = tcp[(tcp.vp == cap) & (tcp.ip_src == key(t, CIP)) & (tcp.eth_dst == rmac)]
        assert len(h2) >= 15
        assert (h2.ip_dst == key(t, VIP)).all() and (h2.dport == 80).all()
        assert (h2.eth_src == dmac).all() and (h2.ip_ttl == 63).all()
        assert (h2.l4_csum == 1).all(), "DR completes checksums left to offload"
        # hop 3 straight from the real server to the client: src VIP, TTL 64, RS MAC
        h3 = tcp[(tcp.vp == "client.pcap") & (tcp.eth_src == rmac)]
        assert len(h3) >= 9 and (h3.ip_src == key(t, VIP)).all() and (h3.ip_ttl == 64).all()


@pytest.mark.lab
@pytest.mark.parametrize("profile", ["dpvs", "alibaba"])
def test_fullnat_end_to_end(lab, profile):
    two_legged(lab, rs_default_via_director=False)
    lab.ip("d", f"addr add {LIP}/32 dev d-r")
    for short in ("r1", "r2"):
        lab.server(short, short, "0.0.0.0", 8080)
    caps = [lab.capture("c", "c0", "client"), lab.capture("r1", "r0", "rs1")]
    lab.director(topo("fullnat", profile), ["d-c", "d-r"])
    answers = lab.client(VIP, 80, 6, pad=3000)      # a request of three segments
    stats = lab.stop_director()
    lab.stop_captures()
    assert all(not a.startswith("error") for a in answers), answers
    assert served_by(answers) == ["r1", "r2"]
    assert all(a.split()[1] == LIP for a in answers), "the RS sees the LIP (no TOA module)"
    assert stats["out_by_mode"]["fullnat"] > 0
    t, df = read(caps)
    tcp = df[df.ip_proto == 6]
    c = tcp[tcp.vp == "client.pcap"]
    r = tcp[tcp.vp == "rs1.pcap"]
    to_r = r[r.ip_src == key(t, LIP)]
    assert (to_r.ip_dst == key(t, RIPS[0])).all() and (to_r.dport == 8080).all()
    assert (to_r.ip_ttl == 64).all(), "FullNAT does not decrement TTL"
    lo = 1025 if profile == "dpvs" else 5000
    assert (to_r.sport >= lo).all()
    assert (to_r.l4_csum == 1).all() and (to_r.ip_csum == 1).all()
    syn_r = to_r[to_r.tcp_flags == 0x02]
    syn_c = c[(c.tcp_flags == 0x02) & (c.ip_src == key(t, CIP))]
    assert len(syn_r) == 3
    assert not (syn_r.tcp_opts & (1 << 8)).any(), "timestamp option removed from the SYN"
    assert (syn_c.tcp_opts & (1 << 8)).all()
    # sequence delta: the RS's SYN seqs are none of the client's
    assert not set(syn_r.tcp_seq) & set(syn_c.tcp_seq)
    # TOA: handshake ACK and data before the RS's first byte carry kind 254 = CIP:cport
    toa = to_r[to_r.toa_kind == 254]
    assert len(toa) >= 3 * 3
    assert (toa.toa_addr == key(t, CIP)).all()
    assert set(toa.toa_port) <= set(syn_c.sport)
    if profile == "alibaba":
        assert (syn_r.toa_kind == 254).all(), "Alibaba puts TOA in the SYN"
    else:
        assert (syn_r.toa_kind == 0).all(), "DPVS >= 1.9.6 does not put TOA in the SYN"
    # MSS lowered by 8 in the SYN-ACK toward the client
    sa_r = r[(r.tcp_flags == 0x12) & (r.ip_src == key(t, RIPS[0]))]
    sa_c = c[(c.tcp_flags == 0x12) & (c.ip_src == key(t, VIP))]
    assert len(sa_c) == 6 and set(sa_c.tcp_mss) == {int(sa_r.tcp_mss.iloc[0]) - 8}
    assert (sa_c.sport == 80).all() and (sa_c.l4_csum == 1).all()


@pytest.mark.lab
def test_toa_port_byteorder_host_swaps_the_port_on_the_wire(lab):
    """The lab's fault: ``--toa-port-byteorder host`` writes the TOA port little-endian."""
    two_legged(lab, rs_default_via_director=False)
    lab.ip("d", f"addr add {LIP}/32 dev d-r")
    for short in ("r1", "r2"):
        lab.server(short, short, "0.0.0.0", 8080)
    caps = [lab.capture("c", "c0", "client"), lab.capture("r1", "r0", "rs1"),
            lab.capture("r2", "r0", "rs2")]
    lab.director(topo("fullnat", "alibaba"), ["d-c", "d-r"], ("--toa-port-byteorder", "host"))
    answers = lab.client(VIP, 80, 4)
    lab.stop_director()
    lab.stop_captures()
    assert all(not a.startswith("error") for a in answers), answers
    t, df = read(caps)
    tcp = df[df.ip_proto == 6]
    cports = set(tcp[(tcp.vp == "client.pcap") & (tcp.tcp_flags == 0x02)].sport)
    toa = tcp[(tcp.vp != "client.pcap") & (tcp.toa_kind == 254)]
    assert len(toa) >= 4 * 2 and (toa.toa_addr == key(t, CIP)).all()
    swapped = {((p & 0xFF) << 8) | (p >> 8) for p in cports}
    assert set(toa.toa_port) <= swapped and not set(toa.toa_port) & cports


@pytest.mark.lab
def test_tun_on_the_wire(lab):
    two_legged(lab, rs_default_via_director=False)
    caps = [lab.capture("r1", "r0", "rs1"), lab.capture("r2", "r0", "rs2")]
    text = topo("tun", port=80, rs_extra=('  tun = "ipip"\n',
                                          '  tun = "gue"\n  tun_port = 6080\n'))
    lab.director(text, ["d-c", "d-r"])
    # no decapsulation on the real servers: the client's connects go unanswered
    script = ("import socket\nfor i in range(2):\n s=socket.socket(); s.settimeout(0.6)\n"
              f" try: s.connect(('{VIP}', 80))\n except OSError: pass\n s.close()\n")
    lab.sh("c", PY, "-c", script, timeout=20)
    stats = lab.stop_director()
    lab.stop_captures()
    assert stats["out_by_mode"]["tun"] >= 2
    t, df = read(caps)
    enc = df[(df.tun != 0)]
    assert set(enc.vp) == {"rs1.pcap", "rs2.pcap"}
    for cap, kind, rip in (("rs1.pcap", 1, RIPS[0]), ("rs2.pcap", 3, RIPS[1])):
        e = enc[enc.vp == cap]
        assert (e.tun == kind).all()
        assert (e.out_src == key(t, DIP_R)).all() and (e.out_dst == key(t, rip)).all()
        assert (e.ip_src == key(t, CIP)).all() and (e.ip_dst == key(t, VIP)).all()
        assert (e.ip_ttl == 63).all() and (e.out_ttl == 63).all()
        assert (e.out_frag == 0x4000).all(), "outer DF copied from the inner packet"
        assert (e.tcp_flags == 0x02).all() and (e.l4_csum == 1).all()
        if kind == 3:
            assert (e.out_dport == 6080).all()
            assert ((e.out_sport >= 32768) & (e.out_sport < 61000)).all()


@pytest.mark.lab
def test_director_refuses_a_second_director_and_cleans_up(lab):
    two_legged(lab, rs_default_via_director=True)
    lab.director(topo("nat"), ["d-c", "d-r"])
    assert "lvs_inspect_director" in lab.sh("d", "nft", "list", "tables").stdout
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = lab.sh("d", PY, "-m", "lvs_inspect", "director", "-t", str(lab.tmp / "topology.toml"),
               "-i", "d-c", check=False, env=env, cwd=str(ROOT), timeout=30)
    assert r.returncode == 2 and r.stdout == "" and "already exists" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    lab.director_proc.send_signal(signal.SIGINT)
    lab.director_proc.communicate(timeout=10)
    assert lab.director_proc.returncode == 0
    assert "lvs_inspect_director" not in lab.sh("d", "nft", "list", "tables").stdout
    assert "managed" not in lab.sh("d", "ip", "neigh", "show").stdout


@pytest.mark.lab
def test_director_cli_errors(tmp_path):
    _root_and_tools()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    good = tmp_path / "t.toml"
    good.write_text(topo("nat"))
    r = subprocess.run([PY, "-m", "lvs_inspect", "director", "-t", str(good), "-i", "nope0"], check=False,
                       capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    assert "no such interface 'nope0'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text(topo("nat").replace('scheduler = "rr"', 'scheduler = "rrr"'))
    r = subprocess.run([PY, "-m", "lvs_inspect", "director", "-t", str(bad), "-i", "lo"], check=False,
                       capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=30)
    assert r.returncode == 2 and "bad.toml" in r.stderr and "rrr" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.lab
def test_tun_end_to_end_with_userspace_decap(lab):
    """TUN with a router for the direct return path; the real servers decapsulate with
    lvs_inspect.lab.decap on a TUN device. Requests of 3000 bytes make the client's
    full-size segments too big for the tunnel: the director answers frag-needed (MTU 1500 -
    overhead) and the client's TCP, after path MTU discovery, gets through."""
    lab.add_ns("c", "d", "sw", "r1", "r2")
    for br, addr, m in (("brc", "203.0.113.254/24", "f1"), ("brr", "198.51.100.254/24", "f2")):
        lab.ip("sw", f"link add {br} address {MAC['sw'] + m} type bridge")
        lab.ip("sw", f"link set {br} up")
        lab.ip("sw", f"addr add {addr} dev {br}")
    lab.sysctl("sw", "net.ipv4.ip_forward=1")
    links = (("c", "c0", MAC["c"], "s-c", "brc", "31"), ("d", "d-c", MAC["d-c"], "s-dc", "brc", "32"),
             ("d", "d-r", MAC["d-r"], "s-dr", "brr", "33"), ("r1", "r0", MAC["r1"], "s-r1", "brr", "34"),
             ("r2", "r0", MAC["r2"], "s-r2", "brr", "35"))
    for short, ifn, mac, sw_if, br, m in links:
        lab.veth(short, ifn, mac, "sw", sw_if, MAC["sw"] + m)
        lab.ip("sw", f"link set {sw_if} master {br}")
    lab.ip("c", f"addr add {CIP}/24 dev c0")
    lab.ip("d", f"addr add {DIP_C}/24 dev d-c")
    lab.ip("d", f"addr add {VIP}/32 dev d-c")
    lab.ip("d", f"addr add {DIP_R}/24 dev d-r")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    decaps = []
    for i, short in enumerate(("r1", "r2")):
        lab.ip(short, f"addr add {RIPS[i]}/24 dev r0")
        lab.ip(short, "route add default via 198.51.100.254")
        lab.ip(short, f"addr add {VIP}/32 dev lo")
        lab.sysctl(short, "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
                   "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
        p = lab.popen(short, [PY, "-m", "lvs_inspect.lab.decap", "-i", "r0"], env=env,
                      cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        decaps.append(p)
        lab.server(short, short, "0.0.0.0", 80)
    caps = [lab.capture("c", "c0", "client"), lab.capture("r2", "r0", "rs2")]
    lab.director(topo("tun", port=80, rs_extra=('  tun = "ipip"\n',
                                                '  tun = "gue"\n  tun_port = 6080\n')),
                 ["d-c", "d-r"])
    answers = lab.client(VIP, 80, 4, pad=3000)
    stats = lab.stop_director()
    dstats = []
    for p in decaps:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=10)
        assert p.returncode == 0, err
        dstats.append(json.loads([ln for ln in err.splitlines() if ln.startswith("{")][-1]))
    lab.stop_captures()
    assert all(not a.startswith("error") for a in answers), answers
    assert served_by(answers) == ["r1", "r2"]
    assert all(a.split()[1] == CIP for a in answers), "TUN keeps the client address"
    assert dstats[0]["ipip"] > 0 and dstats[1]["gue"] > 0 and dstats[0]["write_errors"] == 0
    assert stats["icmp_sent"] >= 1 and stats["dropped"].get("too-big-icmp", 0) >= 1
    t, df = read(caps)
    icmp = df[(df.vp == "client.pcap") & (df.ip_proto == 1) & (df.icmp_type == 3)]
    assert len(icmp) >= 1 and (icmp.icmp_code == 4).all()
    assert set(icmp.icmp_mtu) <= {1480, 1468} and (icmp.ip_src == key(t, VIP)).all()
    # after PMTU discovery the GUE packets to rs2 fit the link: inner + 32 <= 1500
    enc = df[(df.vp == "rs2.pcap") & (df.tun == 3)]
    assert len(enc) > 0 and (enc.ip_len <= 1468).all()
    assert (enc.out_src == key(t, DIP_R)).all() and (enc.l4_csum == 1).all()
    # the replies go straight from the real server (via the router) with source VIP
    back = df[(df.vp == "client.pcap") & (df.ip_proto == 6) & (df.ip_src == key(t, VIP))]
    assert len(back) > 0 and (back.eth_src == int((MAC["sw"] + "f1").replace(":", ""), 16)).all()
    assert (back.ip_ttl == 63).all(), "64 from the real server, -1 at the router"


# --------------------------------------------------------------------------- without root

def _tcp_frame(payload=b"", flags=0x18, seq=1000, ack=5000, ident=7, df=True, ver=4,
               src=CIP, dst=VIP, sport=40000, dport=80, opts=b"", partial=False):
    import ipaddress
    import struct

    from lvs_inspect.forwarder.live import fill_l4_checksum
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(opts) // 4) << 4, flags,
                      1000, 0, 0) + opts + payload
    if ver == 4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ident,
                                   0x4000 if df else 0, 64, 6, 0, s, d))
        c = 0
        from lvs_inspect.forwarder.xmit import inet_checksum
        c = inet_checksum(bytes(ip))
        ip[10], ip[11] = c >> 8, c & 0xFF
        et = b"\x08\x00"
    else:
        ip = bytearray(struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, s, d))
        et = b"\x86\xdd"
    buf = bytearray(bytes.fromhex(MAC["d-c"].replace(":", "")) +
                    bytes.fromhex(MAC["c"].replace(":", "")) + et + bytes(ip) + tcp)
    l4 = 14 + (20 if ver == 4 else 40)
    if not partial:
        fill_l4_checksum(buf, 14, ver, 6, l4, len(buf))
    return bytes(buf)


def _ok(frame, ver=4):
    from lvs_inspect.forwarder.live import _l4_valid
    l4 = 14 + (20 if ver == 4 else 40)
    return _l4_valid(frame, ver, frame[23] if ver == 4 else frame[20], l4, len(frame))


@pytest.mark.parametrize("ver", [4, 6])
def test_segment_tcp_cuts_like_a_nic(ver):
    from lvs_inspect.forwarder.live import segment_tcp
    payload = bytes(range(256)) * 12                       # 3072 bytes
    src, dst = (CIP, VIP) if ver == 4 else ("2001:db8::10", "2001:db8::100")
    f = _tcp_frame(payload, flags=0x18 | 0x01 | 0x80, ver=ver, src=src, dst=dst, partial=True)
    hl = 20 if ver == 4 else 40
    segs = segment_tcp(f, 14, ver, hl, len(f), 1448)
    assert [len(s) - 14 - hl - 20 for s in segs] == [1448, 1448, 176]
    assert b"".join(s[14 + hl + 20:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert int.from_bytes(s[14 + hl + 4:14 + hl + 8], "big") == 1000 + 1448 * i
        flags = s[14 + hl + 13]
        assert bool(flags & 0x01) == (i == 2) and bool(flags & 0x08) == (i == 2)
        assert bool(flags & 0x80) == (i == 0) and flags & 0x10
        assert _ok(s, ver)
        if ver == 4:
            assert int.from_bytes(s[18:20], "big") == 7 + i
            assert int.from_bytes(s[16:18], "big") == len(s) - 14
        else:
            assert int.from_bytes(s[18:20], "big") == len(s) - 54


def test_director_answers_like_its_stack():
    from lvs_inspect.forwarder.live import icmp_unreachable_for, tcp_reset_for
    from lvs_inspect.forwarder.xmit import inet_checksum
    syn = _tcp_frame(flags=0x02, seq=1000)
    rst = tcp_reset_for(syn, 14, 4, 20, len(syn))
    assert rst[0:6] == syn[6:12] and rst[6:12] == syn[0:6]
    assert rst[26:30] == syn[30:34] and rst[30:34] == syn[26:34][:4]
    assert rst[47] == 0x14 and int.from_bytes(rst[42:46], "big") == 1001 and _ok(rst)
    data = _tcp_frame(b"hello", flags=0x18, ack=777)
    rst = tcp_reset_for(data, 14, 4, 20, len(data))
    assert rst[47] == 0x04 and int.from_bytes(rst[38:42], "big") == 777 and _ok(rst)
    assert tcp_reset_for(_tcp_frame(flags=0x04), 14, 4, 20, 54) is None
    un = icmp_unreachable_for(data, 14, 4, len(data))
    assert un[23] == 1 and un[34] == 3 and un[35] == 3
    assert un[26:30] == data[30:34] and un[42:] == data[14:]
    assert inet_checksum(un[34:]) in (0, 0xFFFF)


def test_fragment_ipv4_reassembles():
    from lvs_inspect.forwarder.live import fragment_ipv4
    payload = bytes(range(256)) * 10
    f = _tcp_frame(payload, df=False)
    frags = fragment_ipv4(f, 14, 1000)
    assert all(len(x) - 14 <= 1000 for x in frags) and len(frags) == 3
    body = bytearray()
    for x in frags:
        fo = int.from_bytes(x[20:22], "big")
        assert (fo & 0x1FFF) * 8 == len(body)
        assert bool(fo & 0x2000) == (x is not frags[-1])
        body += x[34:]
    assert bytes(body) == f[34:]


@pytest.mark.parametrize("kind", ["ipip", "gue", "gre"])
def test_decapsulate_undoes_xmit_tun(kind):
    import ipaddress

    from lvs_inspect.lab.decap import decapsulate
    from lvs_inspect.forwarder.xmit import tun
    f = _tcp_frame(b"data", flags=0x02)
    out = tun(f, kind=kind, outer_src=DIP_R, rs_ip=RIPS[0], gue_port=6080)
    local = {(4, int(ipaddress.ip_address(RIPS[0])))}
    got, inner = decapsulate(out, local, (6080,))
    assert got == kind
    assert inner[0:8] == f[14:22] and inner[8] == 63 and inner[12:] == f[26:]
    assert decapsulate(out, set(), (6080,)) == ("not-local", None)
    assert decapsulate(f, local, (6080,))[0] == "other"


def _offline_director(text, **kw):
    import threading

    from lvs_inspect.forwarder import live
    from lvs_inspect.topology import loads_topology
    topology = loads_topology(text, "t.toml")
    d = live.LiveDirector(topology, ["d-c", "d-r"], stop=threading.Event(), install_nft=False,
                          **kw)
    sent = {"d-c": [], "d-r": []}
    for name, ip in (("d-c", DIP_C), ("d-r", DIP_R)):
        import ipaddress
        ifc = live.Interface(name, 1, bytes.fromhex(MAC[name].replace(":", "")), 1500,
                             [(4, int(ipaddress.ip_address(ip)), 24)], True)
        ifc.send = sent[name].append
        d.ifaces[name] = ifc
    d.local_addrs = {(4, int(ipaddress.ip_address(a))) for a in (DIP_C, DIP_R, VIP, LIP)}
    d.routes = live._Routes(d.ifaces, [])
    d.neigh.table[("d-c", int(ipaddress.ip_address(CIP)))] = bytes.fromhex(MAC["c"].replace(":", ""))
    for i, ip in enumerate(RIPS):
        d.neigh.table[("d-r", int(ipaddress.ip_address(ip)))] = bytes.fromhex(
            MAC[f"r{i + 1}"].replace(":", ""))
    return d, sent


def _feed(d, frame, ifname, partial=False):
    buf = bytearray(bytes([1 if partial else 0]) + bytes(9) + frame)
    d._frame(memoryview(buf), len(buf), d.ifaces[ifname], 1.0)


def test_offline_nat_round_trip_and_kernel_answers():
    """The director's plumbing without sockets: classification, NAT both ways, the RST of
    its stack for a segment without connection, statistics."""
    d, sent = _offline_director(topo("nat"))
    syn = _tcp_frame(flags=0x02, partial=True)
    _feed(d, syn, "d-c", partial=True)
    (out,) = sent["d-r"]
    rip = ".".join(map(str, out[30:34]))
    i = RIPS.index(rip)            # rr: the kernel starts with the server added last
    assert i == 1 and out[36:38] == (8080).to_bytes(2, "big") and out[26:30] == syn[26:30]
    assert out[22] == 63 and out[0:6] == bytes.fromhex(MAC[f"r{i + 1}"].replace(":", ""))
    assert out[6:12] == bytes.fromhex(MAC["d-r"].replace(":", "")) and _ok(out)
    # the server's SYN-ACK back through the director: source VIP:80 toward the client
    sa = _tcp_frame(flags=0x12, src=rip, dst=CIP, sport=8080, dport=40000)
    _feed(d, sa, "d-r")
    (back,) = sent["d-c"]
    assert back[26:30] == bytes(map(int, VIP.split("."))) and back[34:36] == (80).to_bytes(2, "big")
    assert back[22] == 63 and _ok(back)
    # a data segment of an unknown connection: RST from VIP, no forwarding
    _feed(d, _tcp_frame(b"x", flags=0x18, sport=40001, ack=99), "d-c")
    assert len(sent["d-r"]) == 1 and sent["d-c"][-1][47] == 0x04
    # the director's own traffic is left alone
    _feed(d, _tcp_frame(flags=0x02, dst=DIP_C, dport=22), "d-c")
    st = d.stats()
    assert st["handled"] == 3 and st["rst_sent"] == 1 and st["out_by_mode"] == {"nat": 2}
    assert st["dropped"] == {"no-connection": 1} and st["connections"]["created"] == 1


def test_nft_rules_cover_services_and_replies():
    d, _ = _offline_director(topo("nat"))
    d.ifaces = {k: d.ifaces[k] for k in ("d-c", "d-r")}
    text = d._nft_text()
    assert text.count("type filter hook ingress device") == 2
    assert f"ip daddr {VIP} meta l4proto tcp th dport {{ 80 }}" in text
    assert f"ip saddr {RIPS[0]} meta l4proto tcp th sport 8080 ip daddr != {{" in text
    d, _ = _offline_director(topo("fullnat", "dpvs"))
    assert f"ip daddr {{ {LIP} }}" in d._nft_text()


@pytest.mark.parametrize("order", ["network", "host"])
def test_offline_toa_port_byteorder(order):
    """``toa_port_byteorder``: the TOA option of the SYN (Alibaba puts it there) carries the
    client port as is, or byte-swapped (the lab's fault)."""
    d, sent = _offline_director(topo("fullnat", "alibaba"), toa_port_byteorder=order)
    syn = _tcp_frame(flags=0x02, sport=0x9C41, opts=bytes.fromhex("020405b4"))
    _feed(d, syn, "d-c")
    (out,) = sent["d-r"]
    assert out[26:30] == bytes(map(int, LIP.split("."))) and _ok(out)
    assert out[54:56] == b"\xfe\x08" and out[58:62] == syn[26:30]
    assert out[56:58] == (b"\x9c\x41" if order == "network" else b"\x41\x9c")
    # the local port from the shared allocator: Alibaba's range starts at 5000
    assert int.from_bytes(out[34:36], "big") == 5000


def test_director_refuses_a_bad_toa_port_byteorder():
    from lvs_inspect.forwarder.live import DirectorError
    with pytest.raises(DirectorError, match="TOA port byte order"):
        _offline_director(topo("fullnat", "alibaba"), toa_port_byteorder="little")
