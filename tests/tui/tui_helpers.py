"""Helpers for driving the terminal UI in tests: fixture traces through a TraceSource (or a fake
live source) with a frozen clock, a fixed terminal size, no cursor blink, and workers awaited
before looking. The fixtures that use them are in conftest.py.

SVG snapshots live in tests/tui/__snapshots__/NAME.svg; LVS_UPDATE_SNAPSHOTS=1 rewrites them
(then look at them before committing: rsvg-convert NAME.svg -o /tmp/NAME.png).
"""
from __future__ import annotations

import dataclasses
import io
import threading
import time
from pathlib import Path

from rich.console import Console

from lvs_inspect.sources import InterfaceStats, LiveStats, Snapshot, TraceSource

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = Path(__file__).resolve().parent / "__snapshots__"
SIZE = (120, 36)
FROZEN = 1_700_000_000.0


def frozen_clock() -> float:
    return FROZEN


def fixture_source(name: str = "dr-arp-leak", *, topology: bool = True) -> TraceSource:
    """A TraceSource on fixtures/synth/NAME (paths relative to the checkout: the tests run there)."""
    d = Path("fixtures") / "synth" / name
    return TraceSource([str(d / "trace.pcapng")], topology_path=str(d / "topology.toml") if topology else None,
                       clock=frozen_clock)


class FakeLiveSource:
    """A live source without a network: one window's analysis (a fixture's), the live counters, and
    pause()/resume() that show up in the next snapshot, as LiveSource's do."""

    title = "live: p-dir-c, p-dir-r"

    def __init__(self, analysis, *, drops: int = 3):
        self.analysis = analysis
        self.drops = drops
        self.paused = False
        self.calls: list[str] = []
        self._changed = threading.Event()

    def ring_paths(self) -> list[str]:
        return ["/var/tmp/lvs-ring_00001.pcapng", "/var/tmp/lvs-ring_00002.pcapng"]

    def _snapshot(self) -> Snapshot:
        live = LiveStats(
            interfaces=(InterfaceStats("p-dir-c", received=120_345, dropped_kernel=0, dropped_capture=self.drops),
                        InterfaceStats("p-dir-r", received=98_765, dropped_kernel=None, dropped_capture=0)),
            packets_per_second=48_250.0, bytes_per_second=21_500_000.0, dropped_analyzer=0, window_seconds=10.0,
            ring_files=tuple(self.ring_paths()), paused=self.paused)
        return Snapshot(stage="live", clock=FROZEN, frames=len(self.analysis.table), analysis=self.analysis,
                        live=live)

    def run(self, emit, stop: threading.Event) -> None:
        emit(self._snapshot())
        while not stop.wait(0.01):
            if self._changed.is_set():
                self._changed.clear()
                emit(self._snapshot())

    def next_window(self) -> None:
        """The next window's analysis: a new object, the same traffic."""
        self.analysis = dataclasses.replace(self.analysis)
        self._changed.set()

    def pause(self) -> None:
        self.calls.append("pause")
        self.paused = True
        self._changed.set()

    def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False
        self._changed.set()


def screen_text(app) -> str:
    """What the terminal shows, as plain text."""
    w, h = app.size
    console = Console(width=w, height=h, file=io.StringIO(), record=True, force_terminal=True,
                      color_system="truecolor", legacy_windows=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


class UI:
    def __init__(self, pilot):
        self.pilot = pilot
        self.app = pilot.app

    async def settle(self, timeout: float = 30.0) -> None:
        """Until the source is done, its analysis is on screen, and no worker is running."""
        app = self.app
        deadline = time.monotonic() + timeout
        while not app.loaded:
            if time.monotonic() > deadline:
                raise AssertionError(f"the source did not finish in {timeout} s (snapshot {app.snapshot})")
            await self.pilot.pause(0.02)
        while True:
            await app.workers.wait_for_complete()
            await self.pilot.pause()
            if app.pending:                       # a detail waits for the keys to stop
                await self.pilot.pause(0.05)
                continue
            if not any(w.is_running for w in app.workers):
                break

    async def press(self, *keys: str) -> None:
        await self.pilot.press(*keys)
        await self.settle()

    async def until(self, done, tries: int = 200) -> None:
        """Pause 20 ms at a time until ``done()``, at most ``tries`` times (the caller asserts what it needs)."""
        for _ in range(tries):
            if done():
                return
            await self.pilot.pause(0.02)

    async def filter(self, pane, text: str) -> None:
        """Give a list pane this filter (as the palette does) and wait for the screen."""
        pane.set_filter(text)
        await self.settle()

    async def palette(self, text: str) -> None:
        """Run a command palette command by typing (part of) its name."""
        from textual.command import CommandPalette
        await self.pilot.press("ctrl+p")
        await self.until(lambda: isinstance(self.app.screen, CommandPalette), 50)
        assert isinstance(self.app.screen, CommandPalette)
        from textual.command import CommandInput, CommandList
        await self.pilot.press(text[0])                      # typed, then the rest at once (faster)
        self.app.screen.query_one(CommandInput).value = text

        def best_hit() -> bool:                              # the command asked for is the first offered
            found = self.app.screen.query_one(CommandList)
            if not found.option_count:
                return False
            first = found.get_option_at_index(0).prompt
            return text.lower() in getattr(first, "plain", str(first)).lower()

        await self.pilot.pause(0.02)
        await self.until(best_hit, 100)
        await self.pilot.press("enter")
        await self.until(lambda: not isinstance(self.app.screen, CommandPalette), 50)
        await self.settle()

    def text(self) -> str:
        return screen_text(self.app)
