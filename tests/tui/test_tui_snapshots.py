"""How the screens look: SVG snapshots at 120x36 on the DR ARP-leak fixture (frozen clock, no
cursor blink, workers awaited). LVS_UPDATE_SNAPSHOTS=1 rewrites tests/tui/__snapshots__/*.svg."""
from __future__ import annotations

import threading

from lvs_inspect.sources import Snapshot

from tui_helpers import FROZEN, fixture_source  # noqa: E402  (tests/tui is on sys.path)


def test_overview(make_app, snapshot):
    snapshot(make_app(fixture_source()), "overview")


def test_overview_while_loading(make_app, snapshot):
    class Reading:
        title = "fixtures/synth/dr-arp-leak/trace.pcapng"

        def run(self, emit, stop: threading.Event):
            emit(Snapshot(stage="reading", clock=FROZEN, fraction=0.42, frames=672))
            stop.wait()

    snapshot(make_app(Reading()), "overview_loading", settle=False)


async def _findings(ui):
    await ui.press("2")


def test_findings(make_app, snapshot):
    snapshot(make_app(fixture_source()), "findings", _findings)


async def _ladder(ui):
    await ui.press("3", "down", "down", "enter", "down", "down")


def test_connections_and_ladder(make_app, snapshot):
    snapshot(make_app(fixture_source()), "connections_ladder", _ladder)


async def _arp(ui):
    await ui.press("4", "down")


def test_arp(make_app, snapshot):
    snapshot(make_app(fixture_source()), "arp", _arp)
