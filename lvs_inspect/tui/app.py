"""The Textual app: one main screen with five panes, fed by a source running in a plain thread.

    app = LvsInspectApp(TraceSource(["trace.pcapng"], topology_path="topo.toml"))
    app.run()

The source (:mod:`lvs_inspect.sources`) runs in a plain thread and hands out snapshots; each one
reaches the app as a :class:`SnapshotReady` message that a newer one replaces while it waits, so
the app looks at the latest state a few times a second at most, never once per packet. A new
analysis is turned into the screens' model in a thread worker; Wireshark dissections and exports
run in thread workers too, so keys answer while they work.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input, Static, TabbedContent
from textual.worker import get_current_worker

from ..checks.engine import Analysis
from ..errors import InputError
from ..sources import Snapshot, Source
from .commands import LvsCommands
from .model import Model, build_model, load_rule_index, set_filter_modes, set_filter_severity
from .screens import (ArpPane, ConnectionsPane, FindingsPane, HelpScreen, OverviewPane, PacketPane)
from .widgets import KeyBar, bar

PANES = ("overview", "findings", "connections", "arp", "packet")


class SnapshotReady(Message):
    """A snapshot from the source thread. A newer one supersedes it while it waits in the queue."""

    def __init__(self, snapshot: Snapshot):
        super().__init__()
        self.snapshot = snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SnapshotReady)


class StatusBar(Static):
    """One line: the source, what it is doing, and for a live capture its rate and drops."""

    def show(self, title: str, snap: Snapshot | None) -> None:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(" lvs-inspect ", "bold reverse")
        t.append(f" {title} ", "bold")
        if snap is None:
            t.append(" starting…", "dim")
        elif snap.stage == "error":
            t.append(" error ", "bold white on red")
        elif snap.live is not None:
            live = snap.live
            t.append(" PAUSED " if live.paused else " LIVE ", "bold black on yellow" if live.paused
                     else "bold white on green")
            t.append(f" {live.packets_per_second:,.0f} pkt/s ")
            drops = live.dropped_analyzer + sum((i.dropped_kernel or 0) + (i.dropped_capture or 0)
                                                for i in live.interfaces)
            t.append(f" drops {drops:,} ", "bold red" if drops else "green")
        elif snap.stage == "done":
            t.append(f" {snap.frames:,} frames ", "")
        else:
            t.append(f" {snap.stage} ", "bold cyan")
            if snap.fraction is not None:
                t.append_text(bar(snap.fraction, 16, style="cyan"))
                t.append(f" {snap.fraction * 100:3.0f}%")
            t.append(f"  {snap.frames:,} frames")
        self.update(t, layout=False)


class LvsInspectApp(App[None]):
    """The terminal UI, built from a :class:`~lvs_inspect.sources.Source`.

    ``keymap``: binding id -> keys (user rebindings). ``export_dir``: where exports are written.
    ``tshark``: the tshark to run (None: none; tests). ``expected``: the forwarder hook (see
    :mod:`.expected`; "auto" looks it up). ``blink``: cursor blink in the filter lines (off in tests).
    """

    TITLE = "lvs-inspect"
    CSS_PATH = "lvs.tcss"
    COMMANDS = App.COMMANDS | {LvsCommands}

    SCREENS_GROUP = Binding.Group("Screens")
    BINDINGS = [
        Binding("1", "show('overview')", "Overview", id="show-overview", group=SCREENS_GROUP),
        Binding("2", "show('findings')", "Findings", id="show-findings", group=SCREENS_GROUP),
        Binding("3", "show('connections')", "Connections", id="show-connections", group=SCREENS_GROUP),
        Binding("4", "show('arp')", "ARP", id="show-arp", group=SCREENS_GROUP),
        Binding("5", "show('packet')", "Packet", id="show-packet", group=SCREENS_GROUP),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("space", "pause", "Pause/resume", id="pause"),
        Binding("q", "quit", "Quit", id="quit"),
    ]

    def __init__(self, source: Source, *, keymap: dict[str, str] | None = None,
                 export_dir: str | os.PathLike | None = None, tshark: str | None = "tshark",
                 expected: Callable | None | str = "auto", rule_dirs=(), blink: bool = True,
                 keys_path: str | None = None):
        super().__init__()
        self.source = source
        self.source_title = getattr(source, "title", "") or "source"
        self.keymap_overrides = dict(keymap or {})
        self.export_dir = Path(export_dir) if export_dir is not None else Path.cwd()
        self.tshark = tshark
        self._expected_arg = expected
        self.rule_dirs = tuple(rule_dirs)
        self.blink = blink
        self.keys_path = keys_path
        self.snapshot: Snapshot | None = None
        self.model: Model | None = None
        self.models_built = 0
        self.last_export: Path | None = None
        self.last_dissection: str | None = None
        self._analysis: Analysis | None = None
        self._rules: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.source_finished = threading.Event()
        if "TEXTUAL_ANIMATIONS" not in os.environ:
            # no sliding tab underline or smooth scrolling: every frame spent on them is a frame a
            # key waits for while a large trace loads (TEXTUAL_ANIMATIONS=full brings them back)
            self.animation_level = "none"

    # ---- layout
    def compose(self) -> ComposeResult:
        yield StatusBar(id="status")
        with TabbedContent(initial="overview", id="tabs"):
            yield OverviewPane()
            yield FindingsPane()
            yield ConnectionsPane()
            yield ArpPane()
            yield PacketPane()
        yield KeyBar(id="keys")

    def on_mount(self) -> None:
        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        if not self.blink:
            for inp in self.query(Input):
                inp.cursor_blink = False
        self._refresh_status()
        self.query_one(OverviewPane).focus_main()
        self._thread = threading.Thread(target=self._run_source, name="lvs-inspect source", daemon=True)
        self._thread.start()

    def on_unmount(self) -> None:
        self._stop.set()

    # ---- the source thread (plain thread, stop event: the same code serves CLI, TUI and tests)
    def _run_source(self) -> None:
        try:
            self.source.run(self._emit, self._stop)
        except InputError as e:
            self._emit(Snapshot(stage="error", clock=time.monotonic(), error=str(e)))
        except Exception as e:         # a bad capture must not take the app down
            self._emit(Snapshot(stage="error", clock=time.monotonic(), error=f"{type(e).__name__}: {e}"))
        finally:
            self.source_finished.set()

    def _emit(self, snapshot: Snapshot) -> None:
        if not self._stop.is_set():
            self.post_message(SnapshotReady(snapshot))

    def on_snapshot_ready(self, message: SnapshotReady) -> None:
        snap = message.snapshot
        self.snapshot = snap
        if snap.analysis is not None and snap.analysis is not self._analysis:
            self._analysis = snap.analysis
            self._build_model(snap.analysis)
        self._refresh_status()

    @work(thread=True, exclusive=True, group="model", name="build the model", exit_on_error=False)
    def _build_model(self, analysis: Analysis) -> None:
        if self._rules is None:
            self._rules = load_rule_index(self.rule_dirs)
        model = build_model(analysis, rules=self._rules, expected=self._expected())
        if not get_current_worker().is_cancelled:
            self.call_from_thread(self._install_model, model)

    def _expected(self):
        if self._expected_arg == "auto":
            from .expected import find_expected
            self._expected_arg = find_expected()
        return self._expected_arg

    def prepare_expected(self, model: Model) -> None:
        """Replay the trace through the forwarder once, for the ladder's expected column."""
        src = model.expected
        if src is None or src.state != "idle":
            return
        src.state = "running"
        self._prepare_expected(model)

    @work(thread=True, group="expected", name="forwarder replay", exit_on_error=False)
    def _prepare_expected(self, model: Model) -> None:
        model.expected.prepare(self._stop)
        if self._stop.is_set():
            return
        self.call_from_thread(self.query_one(ConnectionsPane).expected_ready, model)

    def _install_model(self, model: Model) -> None:
        self.model = model
        self.models_built += 1
        self.query_one(FindingsPane).set_model(model)
        self.query_one(ConnectionsPane).set_model(model)
        self.query_one(ArpPane).set_model(model)
        self._refresh_status()

    def _refresh_status(self) -> None:
        self.query_one(StatusBar).show(self.source_title, self.snapshot)
        self.query_one(OverviewPane).show(self.snapshot, self.model, self.source_title)

    @property
    def loaded(self) -> bool:
        """The source is done (or live) and its latest analysis is on screen (tests wait for this)."""
        snap = self.snapshot
        if snap is None or not (snap.done or snap.stage == "live"):
            return False
        if snap.analysis is None:
            return snap.done
        return self.model is not None and self.model.analysis is snap.analysis

    @property
    def pending(self) -> bool:
        """A pane's detail is waiting for the keys to stop (tests wait for this too)."""
        return any(p.pending for p in (self.query_one(FindingsPane), self.query_one(ConnectionsPane),
                                       self.query_one(ArpPane)))

    # ---- panes
    @property
    def tabs(self) -> TabbedContent:
        return self.query_one("#tabs", TabbedContent)

    def action_show(self, pane: str) -> None:
        self.tabs.active = pane
        self._focus_pane(pane)

    def _focus_pane(self, pane: str) -> None:
        widget = self.query_one(f"#{pane}")
        widget.focus_main()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane is not None and event.pane.id in PANES:
            self.call_after_refresh(self._focus_pane, event.pane.id)

    def show_connection(self, cid: int) -> None:
        self.tabs.active = "connections"
        self.query_one(ConnectionsPane).show(cid)

    def set_mode_filter(self, modes: tuple[str, ...]) -> None:
        for pane in (self.query_one(FindingsPane), self.query_one(ConnectionsPane)):
            pane.set_filter(set_filter_modes(pane.filter_text, modes))

    def set_severity_filter(self, severity: str | None) -> None:
        pane = self.query_one(FindingsPane)
        pane.set_filter(set_filter_severity(pane.filter_text, severity))
        self.action_show("findings")

    def clear_filters(self) -> None:
        self.query_one(FindingsPane).set_filter("")
        self.query_one(ConnectionsPane).set_filter("")

    # ---- help
    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        self.push_screen(HelpScreen(self.key_help(), self.keys_path or "~/.config/lvs-inspect/keys.toml"))

    def key_help(self) -> list[tuple[str, str, str]]:
        return key_rows(self.keymap_overrides)

    # ---- live
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pause":
            return hasattr(self.source, "pause") and hasattr(self.source, "resume")
        return True

    def action_pause(self) -> None:
        src = self.source
        if not (hasattr(src, "pause") and hasattr(src, "resume")):
            return
        live = self.snapshot.live if self.snapshot is not None else None
        paused = getattr(src, "paused", None)
        if paused is None:
            paused = bool(live and live.paused)
        if paused:
            src.resume()
            self.notify("Capture resumed.")
        else:
            src.pause()
            self.notify("Capture paused: the capture goes on into the ring; the screens stay as they are.")

    # ---- Wireshark dissection
    def dissect_row(self, row: int) -> None:
        pane = self.query_one(PacketPane)
        if self.model is None:
            return
        label = self.model.frame_label(row)
        pane.show(Text(f"Dissecting {label}…", "bold"), Text(""))
        self.tabs.active = "packet"
        self._dissect(self.model, row, label)

    @work(thread=True, exclusive=True, group="dissect", name="tshark", exit_on_error=False)
    def _dissect(self, model: Model, row: int, label: str) -> None:
        from .dissect import ToolMissing, dissect
        t = model.analysis.table
        where = model.vantage_names[int(t["iface"][row])]
        title = Text()
        title.append(f"{label}", "bold")
        title.append(f"  capture point {where}  ·  Wireshark's dissection (tshark -V)", "dim")
        try:
            text = dissect(t, row, tshark=self.tshark, locate=getattr(self.source, "ring_locate", None))
            body = Text(text)
        except ToolMissing as e:
            text, body = str(e), Text(str(e), "bold yellow")
        except (InputError, RuntimeError, OSError) as e:
            text, body = str(e), Text(str(e), "bold red")
        self.call_from_thread(self._show_dissection, title, body, text)

    def _show_dissection(self, title: Text, body: Text, text: str) -> None:
        self.last_dissection = text
        self.query_one(PacketPane).show(title, body)

    # ---- exports
    def action_export_findings(self, fmt: str) -> None:
        if self.model is None:
            self.notify("Nothing to export yet.", severity="warning")
            return
        pane = self.query_one(FindingsPane)
        shown = [self.model.findings.all[i] for i in self.model.findings.view] if pane.model else []
        self._export_findings(self.model, shown, fmt)

    @work(thread=True, group="export", name="export findings", exit_on_error=False)
    def _export_findings(self, model: Model, shown, fmt: str) -> None:
        from .export import export_findings
        try:
            path = export_findings(model.analysis.result, shown, fmt, self.export_dir)
        except OSError as e:
            self.call_from_thread(self.notify, f"Export failed: {e}", severity="error")
            return
        self.call_from_thread(self._exported, path, f"{len(shown)} findings as {fmt}")

    def action_export_connection(self) -> None:
        pane = self.query_one(ConnectionsPane)
        cid = pane.current_cid()
        if self.model is None or cid is None:
            self.notify("Select a connection first (Connections).", severity="warning")
            return
        self._export_connection(self.model, cid)

    @work(thread=True, group="export", name="export connection", exit_on_error=False)
    def _export_connection(self, model: Model, cid: int) -> None:
        from .export import export_connection
        c = model.connections
        try:
            path, n = export_connection(model.analysis.table, c.rows_of(cid), c.client(cid), self.export_dir,
                                        locate=getattr(self.source, "ring_locate", None))
        except (InputError, OSError) as e:
            self.call_from_thread(self.notify, f"Export failed: {e}", severity="error")
            return
        self.call_from_thread(self._exported, path, f"connection {c.client(cid)}: {n} frames")

    def _exported(self, path: Path, what: str) -> None:
        self.last_export = path
        self.notify(f"Wrote {what} to {path}")

    # ---- palette
    def palette_commands(self) -> list[tuple[str, str, Callable[[], None]]]:
        """(name, help, callback) of the command palette's commands."""
        cmds: list[tuple[str, str, Callable[[], None]]] = []
        for mode, label in (("nat", "NAT"), ("dr", "DR"), ("tun", "TUN"), ("fullnat", "FullNAT")):
            cmds.append((f"filter: {label} only", f"Findings and connections of {label} real servers only",
                         lambda m=mode: self.set_mode_filter((m,))))
        cmds.append(("filter: all modes", "Drop the mode filter", lambda: self.set_mode_filter(())))
        cmds.append(("filter: errors only", "Findings of severity error",
                     lambda: self.set_severity_filter("error")))
        cmds.append(("filter: warnings and errors", "Findings of severity warning or error",
                     lambda: self.set_severity_filter("warning")))
        cmds.append(("filter: problem connections", "Connections with a wrong leg",
                     lambda: (self.query_one(ConnectionsPane).set_filter("problems"),
                              self.action_show("connections"))))
        cmds.append(("filter: clear", "Show every finding and connection", self.clear_filters))
        for fmt, label in (("junit", "JUnit"), ("sarif", "SARIF"), ("json", "JSON"), ("markdown", "Markdown"),
                           ("text", "text")):
            cmds.append((f"export: findings as {label}", f"The findings shown, to {self.export_dir}",
                         lambda f=fmt: self.action_export_findings(f)))
        cmds.append(("export: this connection as pcap", "Its frames at every capture point, as pcapng",
                     self.action_export_connection))
        cmds.append(("forwarder: expected packets", "Replay the trace through the reference forwarder for the "
                     "ladder's expected column", lambda: self.query_one(ConnectionsPane).action_expected()))
        for pane, label in (("overview", "Overview"), ("findings", "Findings"), ("connections", "Connections"),
                            ("arp", "ARP"), ("packet", "Packet")):
            cmds.append((f"show: {label}", f"Go to the {label} screen", lambda p=pane: self.action_show(p)))
        cmds.append(("help: keys", "The keys and how to rebind them", self.action_help))
        if hasattr(self.source, "pause"):
            cmds.append(("live: pause or resume", "Pause or resume the live analysis", self.action_pause))
        return cmds


def binding_ids() -> list[str]:
    """Every binding id a keys file may rebind."""
    ids = []
    for owner in (LvsInspectApp, FindingsPane, ConnectionsPane, ArpPane):
        for b in owner.BINDINGS:
            if b.id and b.id not in ids:
                ids.append(b.id)
    return ids


def key_rows(keymap: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(keys, what they do, binding id) of every rebindable binding, with the user's keys."""
    keymap = keymap or {}
    panes = {FindingsPane: "Findings", ConnectionsPane: "Connections", ArpPane: "ARP"}
    order: list[str] = []
    what: dict[str, tuple[str, str, list[str]]] = {}
    for owner in (LvsInspectApp, *panes):
        for b in owner.BINDINGS:
            if b.id is None:
                continue
            if b.id not in what:
                order.append(b.id)
                what[b.id] = (b.key, b.description, [])
            if owner in panes:
                what[b.id][2].append(panes[owner])
    rows = []
    for bid in order:
        key, desc, where = what[bid]
        rows.append((keymap.get(bid, key), desc + (f" ({', '.join(where)})" if where else ""), bid))
    rows.append(("ctrl+p", "Command palette", "(Textual)"))
    rows.append(("tab / shift+tab", "Next / previous area", "(Textual)"))
    rows.append(("up down pgup pgdn home end, enter", "Move in a list, open", "(list)"))
    return rows
