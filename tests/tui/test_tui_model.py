"""The screens' model without Textual: leg glyphs, shares, ARP claims, filters; frame read-back and
exports; the keys file; the command line."""
from __future__ import annotations

import gzip
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lvs_inspect.capture import read_table
from lvs_inspect.errors import InputError
from lvs_inspect.flows.legs import C_R
from lvs_inspect.tui.export import export_connection, frame_bytes, write_frames
from lvs_inspect.tui.keys import load_keymap
from lvs_inspect.tui.model import GLYPHS, RIGHT, SEEN, WRONG, Filter, build_model, set_filter_modes

from tui_helpers import ROOT  # noqa: E402  (tests/tui is on sys.path)


@pytest.fixture(scope="module")
def model(leak_analysis):
    return build_model(leak_analysis, expected=None)


def test_legs_of_the_arp_leak(model):
    c = model.connections
    assert c.n == 108
    # DR: C→D, D→R, R→C. 105 connections had client packets handed straight to RS1 (DR104's count)
    assert int(c.wrong.sum()) == 105
    assert all(GLYPHS[int(g)] == "✗" for g in c.glyph[c.wrong, 0])
    clean = np.flatnonzero(~c.wrong)
    assert [c.legs_text(int(i)) for i in clean] == ["●✓● "] * 3
    assert (c.glyph[clean, :3] == [SEEN, RIGHT, SEEN]).all()
    # every wrong C→D is a connection with packets on the client-rs leg
    pk = model.analysis.flows.connections["pk_client_rs"].to_numpy()
    assert set(np.flatnonzero(pk > 0)) <= set(np.flatnonzero(c.glyph[:, 0] == WRONG))
    ladder = model.ladder(int(np.flatnonzero(pk > 0)[0]))
    assert C_R in ladder.leg.tolist()


def test_overview_shares_follow_the_engine(model, leak_analysis):
    o = model.overview
    (svc,) = o.services
    assert svc.label == "203.0.113.100:80/tcp" and svc.scheduler == "rr" and svc.modes == ("dr",)
    assert [s.connections for s in svc.servers] == [49, 20, 20, 19]
    assert [round(s.expected, 2) for s in svc.servers] == [0.25] * 4
    assert svc.director_bytes == o.director_bytes == leak_analysis.result.summary.director_bytes
    assert o.worst.code == "DR101" and o.worst_who == "real server 192.0.2.11, MAC 02:00:00:00:00:11"


def test_arp_claims(model):
    leaks = [c for c in model.arp if c.leak]
    assert [(c.ip, c.mac, c.ip_kind) for c in leaks] == [("203.0.113.100", "02:00:00:00:00:11", "vip")]
    vip = [c for c in model.arp if c.ip == "203.0.113.100"]
    assert all(c.conflict for c in vip) and {c.owner for c in vip} == {"director", "real server 192.0.2.11"}
    assert sum(c.count for c in model.arp) == len(model.analysis.table.rows_of("arp"))


def test_filter_parsing():
    f = Filter.parse("code:dr1,SVC sev:warnings mode:dr,tun rs:192.0.2.11 state:refused problems leak x:y")
    assert f.codes == ("DR1", "SVC") and str(f.severity) == "warning" and f.modes == ("dr", "tun")
    assert f.servers == ("192.0.2.11",) and f.states == ("refused",) and f.problems and f.words == ("leak",)
    assert f.errors == ("x:y",)
    assert Filter.parse(f.text()).text() == f.text()
    assert set_filter_modes("code:DR mode:nat words", ("dr",)) == "code:DR words mode:dr"
    assert set_filter_modes("mode:nat", ()) == ""


def test_frames_read_back_plain_gzip_and_pcapng_export(model, tmp_path):
    t = model.analysis.table
    rows = model.connections.rows_of(2)
    plain = frame_bytes(t, rows)
    assert [len(b) for b in plain] == t["caplen"][rows].tolist()
    # the same frames from a gzip-compressed copy (streamed again, no seeking)
    gz = tmp_path / "trace.pcapng.gz"
    with open(ROOT / "fixtures/synth/dr-arp-leak/trace.pcapng", "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    tz = read_table([str(gz)])
    assert frame_bytes(tz, rows) == plain
    out = tmp_path / "conn.pcapng"
    assert write_frames(t, rows, out) == len(rows)
    back = read_table([str(out)])
    order = np.argsort(t["ts_ns"][rows], kind="stable")
    assert back["ts_ns"].tolist() == t["ts_ns"][rows][order].tolist()
    assert back["tcp_seq"].tolist() == t["tcp_seq"][rows][order].tolist()
    path, n = export_connection(t, rows, model.connections.client(2), tmp_path)
    assert n == len(rows) and path.name == "lvs-inspect-conn-198.18.75.228_38204.pcapng"


def test_stdin_frames_cannot_be_read_back(tmp_path):
    data = (ROOT / "fixtures/synth/dr-arp-leak/trace.pcapng").read_bytes()
    import io
    t = read_table(["-"], stdin=io.BytesIO(data))
    with pytest.raises(InputError, match="standard input"):
        frame_bytes(t, [0])
    # a live source's ring finds them
    ring = tmp_path / "ring.pcapng"
    ring.write_bytes(data)
    got = frame_bytes(t, [0, 5], locate=lambda fr: (str(ring), fr))
    assert got == frame_bytes(read_table([str(ring)]), [0, 5])


def test_keys_file(tmp_path, monkeypatch):
    known = ["show-findings", "dissect", "quit"]
    f = tmp_path / "keys.toml"
    f.write_text('[keys]\nshow-findings = "f2"\ndissect = "ctrl+w, w"\n')
    assert load_keymap(f, known) == {"show-findings": "f2", "dissect": "ctrl+w,w"}
    f.write_text('[keys]\nshow-findings = "f2"\nshow-findngs = "f3"\n')
    with pytest.raises(InputError) as e:
        load_keymap(f, known)
    assert str(e.value).startswith(f"{f}: line 3: unknown binding id 'show-findngs'")
    f.write_text('[keys]\nquit = 3\n')
    with pytest.raises(InputError, match="line 2: the key of 'quit' must be a string"):
        load_keymap(f, known)
    f.write_text('[keys\n')
    with pytest.raises(InputError, match="line 1"):
        load_keymap(f, known)
    with pytest.raises(InputError, match="no such keys file"):
        load_keymap(tmp_path / "none.toml", known)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert load_keymap(None, known) == {}                 # no file of the user's: the defaults
    (tmp_path / "config" / "lvs-inspect").mkdir(parents=True)
    (tmp_path / "config" / "lvs-inspect" / "keys.toml").write_text('[keys]\nquit = "ctrl+q"\n')
    assert load_keymap(None, known) == {"quit": "ctrl+q"}


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lvs_inspect", "tui", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, **kw)


def test_cli_errors_are_one_line(tmp_path):
    r = _cli("missing.pcapng")
    assert r.returncode == 2 and r.stderr == "lvs-inspect: missing.pcapng: no such file\n"
    r = _cli("fixtures/synth/dr-arp-leak/trace.pcapng", "-i", "eth0")
    assert r.returncode == 2 and r.stderr == "lvs-inspect: -i: give trace files or live interfaces (-i), not both\n"
    bad = tmp_path / "keys.toml"
    bad.write_text('[keys]\nnope = "x"\n')
    r = _cli("--keys", str(bad))
    assert r.returncode == 2 and r.stderr.startswith(f"lvs-inspect: {bad}: line 2: unknown binding id 'nope'")
    assert r.stderr.count("\n") == 1
    r = _cli("--list-keys")
    assert r.returncode == 0 and "show-findings      2" in r.stdout and "export-pcap" in r.stdout


def test_demo_is_found():
    from lvs_inspect.cli.tui import demo_dir
    d = demo_dir()
    assert (d / "trace.pcapng").is_file() and (d / "topology.toml").is_file()


def test_forwarder_replay_in_a_child_process(monkeypatch):
    """A large trace is replayed in a child process: the same expected fields come back."""
    import threading

    import lvs_inspect.tui.expected as E
    from lvs_inspect.capture import read_table
    from lvs_inspect.checks.engine import analyse
    from lvs_inspect.flows.legs import D_R

    factory = E.find_expected()
    assert factory is not None, "lvs_inspect.forwarder.replay.replay is missing"
    d = "fixtures/synth/nat-wrong-port"
    a = analyse(read_table([f"{d}/trace.pcapng"]), topology_path=f"{d}/topology.toml")
    rows = np.flatnonzero(a.flows.leg == D_R)
    here = factory(a)
    here.prepare()
    monkeypatch.setattr(E, "IN_PROCESS_FRAMES", 0)
    child = factory(a)
    child.prepare(threading.Event())
    assert here.state == child.state == "ready", (here.message, child.message)
    got_here, got_child = here.fields(rows), child.fields(rows)
    assert got_here == got_child and len(got_child) > 0.9 * len(rows)
    rs3 = a.table.addr_key("192.0.2.13")
    wrong = [r for r in got_child if a.table["ip_dst"][r] == rs3]
    assert wrong and all(got_child[r]["dport"] == "80" and a.table["dport"][r] == 8080 for r in wrong)
