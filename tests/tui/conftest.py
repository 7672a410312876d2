"""Fixtures of the terminal UI tests (the helpers they use are in tui_helpers.py)."""
from __future__ import annotations

import asyncio
import os

import pytest

from lvs_inspect.capture import read_table
from lvs_inspect.checks.engine import analyse
from lvs_inspect.tui.app import LvsInspectApp

from tui_helpers import ROOT, SIZE, SNAPSHOTS, UI, FakeLiveSource, fixture_source  # noqa: E402


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    """Inputs are given relative to the checkout, so what the screens show does not depend on it."""
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="session")
def leak_analysis():
    d = ROOT / "fixtures" / "synth" / "dr-arp-leak"
    old = os.getcwd()
    os.chdir(ROOT)
    try:
        path = "fixtures/synth/dr-arp-leak/trace.pcapng"
        return analyse(read_table([path]), topology_path=str(d / "topology.toml"), label=path)
    finally:
        os.chdir(old)


@pytest.fixture
def fake_live(leak_analysis):
    return lambda **kw: FakeLiveSource(leak_analysis, **kw)


@pytest.fixture
def make_app(tmp_path):
    def make(source, **kw) -> LvsInspectApp:
        opts = dict(export_dir=tmp_path, blink=False, tshark=None, expected=None,
                    keys_path="~/.config/lvs-inspect/keys.toml")
        opts.update(kw)
        return LvsInspectApp(source, **opts)
    return make


@pytest.fixture
def drive():
    """``drive(app, steps)``: run the app at a fixed size, wait until it is loaded, then
    ``await steps(ui)``."""
    def run(app, steps=None, size=SIZE, settle=True):
        async def main():
            async with app.run_test(size=size) as pilot:
                ui = UI(pilot)
                if settle:
                    await ui.settle()
                if steps is not None:
                    await steps(ui)
        asyncio.run(main())
    return run


@pytest.fixture
def run_ui(make_app, drive):
    """``run_ui(steps, source=None, settle=True, **app_options)``: an app on ``source`` (None: the
    DR ARP-leak fixture), driven as ``drive`` does, then ``await steps(ui, app)``."""
    def run(steps, source=None, *, settle: bool = True, **app_options) -> None:
        app = make_app(source if source is not None else fixture_source(), **app_options)

        async def with_app(ui):
            await steps(ui, app)
        drive(app, with_app, settle=settle)
    return run


@pytest.fixture
def snapshot(drive, tmp_path):
    """``snapshot(app, "name", steps)``: the SVG screenshot after ``steps`` against
    __snapshots__/name.svg (LVS_UPDATE_SNAPSHOTS=1 writes it)."""
    def check(app, name: str, steps=None, size=SIZE, settle=True):
        shot = {}

        async def take(ui):
            if steps is not None:
                await steps(ui)
            if settle:
                await ui.settle()
            else:                       # a source that never finishes: its first snapshot on screen
                await ui.until(lambda: ui.app.snapshot is not None, 250)
                await ui.pilot.pause()
            shot["svg"] = ui.app.export_screenshot(title=name)
        drive(app, take, size=size, settle=settle)
        path = SNAPSHOTS / f"{name}.svg"
        svg = shot["svg"]
        if os.environ.get("LVS_UPDATE_SNAPSHOTS") == "1":
            SNAPSHOTS.mkdir(exist_ok=True)
            path.write_text(svg, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(f"no snapshot {path}: run with LVS_UPDATE_SNAPSHOTS=1 to write it, then look at it")
        if path.read_text(encoding="utf-8") != svg:
            got = tmp_path / f"{name}.svg"
            got.write_text(svg, encoding="utf-8")
            pytest.fail(f"screen differs from {path}; this run's is {got} (LVS_UPDATE_SNAPSHOTS=1 accepts it)")
    return check
