"""The terminal UI driven by Pilot: fixture traces through a TraceSource (frozen clock) and a fake
live source; what the screens show, what the keys and the palette do, what the exports write."""
from __future__ import annotations

import json
import shutil
import threading

import pytest
from textual.command import CommandPalette

from lvs_inspect.capture import read_table
from lvs_inspect.sources import Snapshot, TraceSource
from lvs_inspect.tui.screens import (ArpPane, ArpRows, ConnectionsPane, FindingsPane, HelpScreen, LadderRows,
                                     PacketPane)
from lvs_inspect.tui.widgets import VirtualTable

from tui_helpers import FROZEN, ROOT, fixture_source  # noqa: E402  (tests/tui is on sys.path)


def codes(app) -> list[str]:
    m = app.model
    return [m.findings.all[i].code for i in m.findings.view]


# ---------------------------------------------------------------------------------- loading

class GatedSource:
    """Says it is reading (42 %), then waits for the test before the real read."""

    def __init__(self):
        self.inner = fixture_source()
        self.title = self.inner.title
        self.gate = threading.Event()

    def run(self, emit, stop):
        emit(Snapshot(stage="reading", clock=FROZEN, fraction=0.42, frames=672))
        while not self.gate.wait(0.01):
            if stop.is_set():
                return
        self.inner.run(emit, stop)


def test_first_screen_shows_the_progress_then_fills_in(run_ui):
    src = GatedSource()

    async def steps(ui, app):
        await ui.until(lambda: app.snapshot is not None)
        await ui.pilot.pause()
        text = ui.text()
        assert "reading" in text and "42%" in text and "672 frames" in text
        await ui.pilot.press("2")          # keys answer while the source works
        await ui.pilot.pause()
        assert app.tabs.active == "findings"
        assert "waiting for the analysis" in ui.text()
        src.gate.set()
        await ui.settle()
        assert app.model is not None and codes(app)[0] == "DR101"
        await ui.press("1")
        text = ui.text()
        assert "Worst" in text and "DR101" in text and "real server 192.0.2.11" in text
        assert "MAC 02:00:00:00:00:11" in text

    run_ui(steps, src, settle=False)


def test_a_bad_trace_is_one_line_on_screen(run_ui, tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"this is not a capture")

    async def steps(ui, app):
        assert app.snapshot.stage == "error"
        text = ui.text()
        assert f"✗ {bad}:" in text and "error" in text

    run_ui(steps, TraceSource([str(bad)], clock=lambda: FROZEN))


# ---------------------------------------------------------------------------------- overview

def test_overview_shares_bytes_and_counts(run_ui):
    async def steps(ui, app):
        text = ui.text()
        assert "2 errors" in text and "2 warnings" in text and "0 info" in text
        assert "108 (49 complete, 56 failed)" in text
        assert "Director carried  7.2 kB" in text
        assert "203.0.113.100:80/tcp" in text
        assert " 45% (by weight 25%)" in text     # 192.0.2.11 got 49 of 108 against rr's 25 %
        srv = {s.label: s for s in app.model.overview.services[0].servers}
        assert srv["192.0.2.11"].flagged and not srv["192.0.2.12"].flagged

    run_ui(steps)


# ---------------------------------------------------------------------------------- findings

def test_findings_sort_and_filter(run_ui):
    async def steps(ui, app):
        await ui.press("2")
        pane = app.query_one(FindingsPane)
        assert codes(app) == ["DR101", "DR104", "DR102", "SVC102"]           # severity, then code
        await ui.press("s")                                                   # by code
        assert pane.sort == "code" and codes(app) == ["DR101", "DR102", "DR104", "SVC102"]
        await ui.press("r")
        assert codes(app) == ["SVC102", "DR104", "DR102", "DR101"]
        await ui.press("r", "s", "s")                                         # real server, count
        assert pane.sort == "count" and codes(app)[0] == "DR104"              # 105 occurrences
        await ui.press("slash")
        await ui.pilot.press(*"sev:error")
        await ui.press("enter")
        assert sorted(codes(app)) == ["DR101", "DR104"]
        assert isinstance(app.focused, VirtualTable)                          # enter goes back to the list
        assert "2 of 4 findings" in ui.text()
        await ui.filter(pane, "code:SVC")
        assert codes(app) == ["SVC102"]
        await ui.filter(pane, "rs:02:00:00:00:00:11 announces")
        assert codes(app) == ["DR102"]
        await ui.filter(pane, "mode:nat")
        assert codes(app) == [] and "no finding matches the filter" in ui.text()
        await ui.filter(pane, "color:blue")
        assert "not understood: color:blue" in ui.text()

    run_ui(steps)


def test_finding_detail_explains_and_fixes(run_ui):
    async def steps(ui, app):
        await ui.press("2")
        text = ui.text()
        assert "Why it matters" in text and "arp_ignore" in text
        assert "Fix" in text and "sysctl -w net.ipv4.conf.all.arp_announce=2" in text
        assert "fixtures/synth/dr-arp-leak/trace.pcapng#465" in text
        assert "expected 02:00:00:00:00:02, 02:00:00:00:00:03" in text and "observed 02:00:00:00:00:11" in text

    run_ui(steps)


# ---------------------------------------------------------------------------------- connections

def test_selecting_a_connection_shows_its_ladder(run_ui):
    async def steps(ui, app):
        await ui.press("3")
        pane = app.query_one(ConnectionsPane)
        assert pane.table.row_count == 108
        await ui.press("down", "down", "enter")
        assert app.focused is pane.ladder_table
        assert pane.ladder is not None and pane.ladder.cid == 2
        rows = pane.ladder_table.rows
        assert isinstance(rows, LadderRows) and len(rows) == 11
        text = ui.text()
        assert "#2 198.18.75.228:38204 → 203.0.113.100:80/tcp via 192.0.2.13" in text
        assert "client" in text and "director" in text and "server" in text
        assert "│─────S────▶│" in text                      # the client's SYN to the director
        assert "p-client#13 p-dir-c#23" in text            # one observation, two capture points
        assert "no forwarder replay" in text
        await ui.press("down", "down")                      # the server's SYN-ACK, straight to the client (DR)
        text = ui.text()
        assert "seen at p-client #18" in text and "SYN,ACK" in text and "203.0.113.100" in text
        # the bypass: client packets that reached the real server without the director
        wrong = [i for i in range(len(rows)) if rows.wrong(i)]
        assert [pane.ladder.leg[i] for i in wrong] == [6]  # client-rs

    run_ui(steps)


def test_a_finding_leads_to_its_connection(run_ui):
    async def steps(ui, app):
        await ui.press("2", "down")                        # DR104: traffic that bypassed the director
        await ui.press("enter")
        pane = app.query_one(ConnectionsPane)
        assert app.tabs.active == "connections" and pane.ladder is not None
        c = app.model.connections
        assert c.client(pane.ladder.cid) == "198.19.133.186:53738"
        assert "DR104" in c.codes[pane.ladder.cid]
        assert c.legs_text(pane.ladder.cid)[0] == "✗"       # C→D went to the real server instead
        assert "✗ DR104" in ui.text()

    run_ui(steps)


def test_connection_filters(run_ui):
    async def steps(ui, app):
        await ui.press("3")
        pane = app.query_one(ConnectionsPane)
        await ui.filter(pane, "rs:192.0.2.12 state:complete")
        c = app.model.connections
        assert len(c.view) > 0
        assert all(c.server(i) == "192.0.2.12" and c.state[i] == "complete" for i in c.view)
        await ui.filter(pane, "code:DR104")
        assert 0 < len(c.view) <= 20 and all("DR104" in c.codes[i] for i in c.view)
        await ui.filter(pane, "problems")
        assert len(c.view) == 105                              # DR104's 105 connections
        pane.set_filter("")
        await ui.press("s")                                    # problems first
        assert pane.sort == "problems" and bool(c.wrong[c.view[0]])

    run_ui(steps)


# ---------------------------------------------------------------------------------- ARP

def test_arp_leak_is_highlighted(run_ui):
    async def steps(ui, app):
        await ui.press("4")
        rows = app.query_one(ArpPane).table.rows
        assert isinstance(rows, ArpRows)
        leaks = [i for i in range(len(rows)) if rows.row_style(i) == "leak"]
        assert [(rows.claim(i).ip, rows.claim(i).mac) for i in leaks] == [("203.0.113.100", "02:00:00:00:00:11")]
        claim = rows.claim(leaks[0])
        assert claim.owner == "real server 192.0.2.11" and claim.replies == 2 and claim.requests == 3
        ok = [rows.claim(i) for i in range(len(rows)) if rows.claim(i).ip == "203.0.113.100" and not
              rows.claim(i).leak]
        assert ok and ok[0].owner == "director"
        text = ui.text()
        assert "1 leak: 203.0.113.100 by 02:00:00:00:00:11 (real server 192.0.2.11)" in text
        assert "LEAK" in text
        await ui.press("down")                               # the leaking claim: its detail
        assert "✗ DR101" in ui.text()

    run_ui(steps)


# ---------------------------------------------------------------------------------- exports

def test_export_findings_as_junit_and_sarif(run_ui, tmp_path):
    lxml = pytest.importorskip("lxml.etree", reason="lxml is a test dependency (pip install -e .[test])")

    async def steps(ui, app):
        await ui.palette("findings as JUnit")
        path = app.last_export
        assert path is not None and path.parent == tmp_path and path.name == "lvs-inspect-findings.junit.xml"
        schema = lxml.XMLSchema(lxml.parse(str(ROOT / "tests" / "data" / "schemas" / "junit-10.xsd")))
        doc = lxml.parse(str(path))
        schema.assertValid(doc)
        assert doc.getroot().get("failures") == "4"
        await ui.press("2")
        app.query_one(FindingsPane).set_filter("sev:error")
        app.action_export_findings("sarif")                   # the findings shown
        await ui.settle()
        sarif = json.loads(app.last_export.read_text())
        assert sorted(r["ruleId"] for r in sarif["runs"][0]["results"]) == ["DR101", "DR104"]

    run_ui(steps)


def test_export_this_connection_as_pcap(run_ui):
    async def steps(ui, app):
        await ui.press("3", "down", "down", "x")
        path = app.last_export
        assert path is not None and path.suffix == ".pcapng" and "198.18.75.228_38204" in path.name
        back = read_table([str(path)])
        rows = app.model.connections.rows_of(2)
        t = app.model.analysis.table
        assert len(back) == len(rows) == 15
        assert sorted(back["ts_ns"].tolist()) == sorted(t["ts_ns"][rows].tolist())
        assert sorted(v.name for v in back.vantages) == ["p-client", "p-dir-c", "p-dir-r", "p-rs1"]
        await ui.press("x")                                   # again: a new file, nothing overwritten
        assert app.last_export != path and app.last_export.exists()

    run_ui(steps)


# ---------------------------------------------------------------------------------- help, palette, keys

def test_help_screen_lists_the_keys(run_ui):
    async def steps(ui, app):
        await ui.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = ui.text()
        assert "show-findings" in text and "keys.toml" in text and "ctrl+p" in text and "rewritten right" in text
        await ui.press("escape")
        assert not isinstance(app.screen, HelpScreen)

    run_ui(steps)


def test_palette_filter_dr_only(run_ui):
    async def steps(ui, app):
        await ui.palette("DR only")
        assert not isinstance(app.screen, CommandPalette)
        assert app.query_one(FindingsPane).filter_text == "mode:dr"
        assert app.query_one(ConnectionsPane).filter_text == "mode:dr"
        assert len(app.model.findings.view) == 4 and len(app.model.connections.view) == 108
        app.set_mode_filter(("nat",))
        await ui.settle()
        assert app.query_one(FindingsPane).filter_text == "mode:nat"
        assert app.model.findings.view == [] and len(app.model.connections.view) == 0
        await ui.palette("this connection as pcap")        # nothing selected: said, not done
        assert app.last_export is None
        await ui.palette("filter: clear")
        assert len(app.model.findings.view) == 4

    run_ui(steps)


def test_user_keymap_rebinds(run_ui):
    async def steps(ui, app):
        await ui.press("2")
        assert app.tabs.active == "overview"            # 2 is no longer bound
        await ui.press("f2")
        assert app.tabs.active == "findings"
        await ui.press("question_mark")
        assert "f2" in ui.text()

    run_ui(steps, keymap={"show-findings": "f2", "dissect": "ctrl+w"})


# ---------------------------------------------------------------------------------- live

def test_live_rates_drops_and_pause(run_ui, fake_live):
    src = fake_live()

    async def steps(ui, app):
        text = ui.text()
        assert "LIVE" in text and "48,250 pkt/s" in text and "drops 3" in text
        assert "48,250 packets/s" in text and "capture drops 3" in text and "analyzer drops 0" in text
        assert "kernel drops ?" in text                   # a count the capture engine did not give
        assert "ring: 2 files, newest /var/tmp/lvs-ring_00002.pcapng" in text
        assert "Pause" in text                            # the key shows in the footer when live
        await ui.press("space")
        assert src.calls == ["pause"]
        await ui.until(lambda: app.snapshot.live.paused, 100)
        await ui.settle()
        assert "PAUSED" in ui.text()
        await ui.press("space")
        assert src.calls == ["pause", "resume"]
        assert app.models_built == 1                     # the same analysis is not rebuilt

    run_ui(steps, src)


def test_a_new_live_window_keeps_the_selection(run_ui, fake_live):
    src = fake_live()

    async def steps(ui, app):
        await ui.press("3", "down", "down", "down", "enter", "down", "down")
        pane = app.query_one(ConnectionsPane)
        client, line = app.model.connections.client(pane.ladder.cid), pane.ladder_table.cursor
        await ui.press("4", "down", "down", "3")
        first = app.model
        src.next_window()
        await ui.until(lambda: app.model is not first)
        await ui.settle()
        assert app.models_built == 2
        assert app.model.connections.client(pane.current_cid()) == client and line == 2
        assert pane.ladder is not None and pane.ladder_table.cursor == line
        assert app.query_one(ArpPane).table.cursor == 2

    run_ui(steps, src)


def test_trace_sources_have_no_pause(run_ui):
    async def steps(ui, app):
        assert "Pause" not in ui.text()
        await ui.press("space")
        assert app.tabs.active == "overview"

    run_ui(steps)


# ---------------------------------------------------------------------------------- packet

def test_packet_without_tshark_says_so(run_ui):
    async def steps(ui, app):
        await ui.press("3", "enter", "w")
        assert app.tabs.active == "packet"
        assert "tshark not installed" in ui.text()
        assert app.query_one(PacketPane) is not None

    run_ui(steps, tshark="/nonexistent/tshark")


@pytest.mark.tshark
def test_packet_dissection_with_tshark(run_ui):
    assert shutil.which("tshark"), "tshark is needed for this test: apt-get install tshark (make system-deps)"

    async def steps(ui, app):
        await ui.press("4", "down", "w")             # the leaking ARP reply
        text = app.last_dissection
        assert "Address Resolution Protocol (reply)" in text
        assert "Sender MAC address: 02:00:00:00:00:11" in text and "Sender IP address: 203.0.113.100" in text
        assert "fixtures/synth/dr-arp-leak/trace.pcapng#465" in text   # the packet comment names the frame
        assert "fixtures/synth/dr-arp-leak/trace.pcapng#465" in ui.text()

    run_ui(steps, tshark="tshark")


# ---------------------------------------------------------------------------------- expected column

class FakeExpected:
    state, message = "ready", ""

    def __init__(self, analysis):
        self.analysis = analysis

    def prepare(self, stop=None):
        pass

    def fields(self, rows):
        return {int(r): {"dport": "9999", "ip.ttl": "49"} for r in rows}


def test_expected_column_from_the_forwarder_hook(run_ui):
    async def steps(ui, app):
        await ui.press("3", "enter")
        text = ui.text()
        assert "expected" in text and "9999" in text
        assert "no forwarder replay" not in text and "expected: the reference forwarder's" in text

    run_ui(steps, expected=FakeExpected)


def test_nat_wrong_port_expected_from_the_replay(run_ui):
    from lvs_inspect.tui.expected import find_expected
    factory = find_expected()
    assert factory is not None, "lvs_inspect.forwarder.replay.replay is missing"

    async def steps(ui, app):
        await ui.press("3")
        pane = app.query_one(ConnectionsPane)
        pane.set_filter("rs:192.0.2.13")              # the server the director maps to port 8080
        await ui.press("enter")
        assert app.model.expected.state == "ready", app.model.expected.message
        d_r = [i for i in range(len(pane.ladder)) if pane.ladder.leg[i] == 2]
        assert d_r
        await ui.press(*["down"] * d_r[0])
        detail = pane.ladder.detail(d_r[0])
        exp = next(e for _w, _f, e in detail if e)
        obs = detail[0][1]
        assert exp["dport"] == "80" and obs["dport"] == "8080"     # the fault: NAT to the wrong port
        assert "8080" in ui.text() and "expected" in ui.text()

    run_ui(steps, fixture_source("nat-wrong-port"), expected=factory)
