"""The panes of the main screen (Overview, Findings, Connections, ARP, Packet) and the help screen.

Each pane draws from the current :class:`~lvs_inspect.tui.model.Model` (``set_model``) and keeps its
own filter, sort and cursor across new analyses (a live capture sends one per window).
"""
from __future__ import annotations

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static, TabPane

from ..checks.finding import Finding
from ..flows.legs import C_D, C_R, D_C, D_R, MODES, R_C, R_D
from ..sources import Snapshot
from .model import (CONN_SORTS, FIELDS, FINDING_SORTS, GLYPH_NAMES, GLYPHS, LEG_ARROWS, MISSING, NOT_CAPTURED,
                    RIGHT, SEEN, WRONG, Claim, Filter, Ladder, Model, human_bytes, timeline)
from .widgets import SEVERITY_STYLE, Column, Follow, NoRows, VirtualTable, bar

GLYPH_STYLE = {WRONG: "bold red", MISSING: "yellow", SEEN: "", RIGHT: "green", NOT_CAPTURED: "dim"}
#: traces up to this size get the forwarder's expected column by themselves (a replay of a few seconds at
#: most); a larger one waits for the user to ask (key e), the replay then runs in a child process
AUTO_REPLAY_FRAMES = 200_000


def _sev(f: Finding) -> Text:
    s = str(f.severity)
    return Text(s.upper(), SEVERITY_STYLE.get(s, ""))


# ---------------------------------------------------------------------------------- overview

class OverviewPane(TabPane):
    def __init__(self):
        super().__init__("Overview", id="overview")

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="overview-scroll", can_focus=True):
            yield Static(id="ov-status")
            yield Static(id="ov-worst")
            yield Static(id="ov-counts")
            yield Static(id="ov-services")
            yield Static(id="ov-live")
            yield Static(id="ov-capture")

    def focus_main(self) -> None:
        self.query_one("#overview-scroll").focus()

    def show(self, snap: Snapshot | None, model: Model | None, title: str) -> None:
        status = self._status(snap, model, title)
        w = self.query_one("#ov-status", Static)
        w.display = bool(status.plain)
        w.update(status)
        self.query_one("#ov-worst", Static).display = model is not None
        if model is None:
            self.query_one("#ov-worst", Static).update("")
            self.query_one("#ov-counts", Static).update("")
            self.query_one("#ov-services", Static).update("")
            self.query_one("#ov-capture", Static).update("")
        else:
            worst = self.query_one("#ov-worst", Static)
            worst.set_class(model.overview.worst is None, "clean")
            worst.update(self._worst(model))
            self.query_one("#ov-counts", Static).update(self._counts(model))
            self.query_one("#ov-services", Static).update(self._services(model))
            self.query_one("#ov-capture", Static).update(self._capture(model, snap))
        live = snap.live if snap is not None else None
        w = self.query_one("#ov-live", Static)
        w.display = live is not None
        if live is not None:
            w.update(self._live(snap))

    @staticmethod
    def _status(snap: Snapshot | None, model: Model | None, title: str) -> Text:
        t = Text(no_wrap=False)
        if snap is None:
            t.append(f"Opening {title}…", "bold")
            return t
        if snap.stage == "error":
            t.append("✗ ", "bold red")
            t.append(snap.error or "the source failed", "red")
            return t
        if snap.stage == "done" or snap.stage == "live":
            if snap.notes:
                t.append("  ".join(snap.notes), "italic yellow")
            return t
        t.append(f"{snap.stage:<26}", "bold")
        if snap.fraction is not None:
            t.append_text(bar(snap.fraction, 30, style="cyan"))
            t.append(f" {snap.fraction * 100:3.0f}%")
        t.append(f"   {snap.frames:,} frames")
        if model is not None:
            t.append("   (showing the previous analysis)", "dim")
        else:
            t.append("\n\nThe screens fill in when the analysis is done; the keys work meanwhile.", "dim")
        return t

    @staticmethod
    def _worst(model: Model) -> Text:
        f = model.overview.worst
        t = Text()
        if f is None and model.overview.connections == 0:
            t.append("✓ No findings", "bold green")
            t.append(": but no connection to a service was found in the trace, so there was little to check.")
            return t
        if f is None:
            t.append("✓ No findings", "bold green")
            t.append(": every hop of every connection looks as its mode says.")
            return t
        t.append("Worst  ", "bold")
        t.append_text(_sev(f))
        t.append(f" {f.code} {f.name}", "bold")
        if model.overview.worst_who:
            t.append(f" — {model.overview.worst_who}", "bold")
        t.append("\n")
        t.append(f.message.strip())
        if f.count > 1:
            t.append(f"  ({f.count:,} occurrences)", "dim")
        return t

    @staticmethod
    def _counts(model: Model) -> Text:
        o = model.overview
        t = Text()
        t.append("Findings  ", "bold")
        for name, style in (("error", "red"), ("warning", "yellow"), ("info", "cyan")):
            n = o.counts.get(name, 0)
            t.append("■ ", style if n else "dim")
            t.append(f"{n} {name}{'s' if n != 1 and name != 'info' else ''}   ", "bold" if n else "dim")
        t.append("\nConnections  ", "bold")
        t.append(f"{o.connections:,} ({o.complete:,} complete, {o.failed:,} failed)")
        t.append("   Director carried  ", "bold")
        t.append(human_bytes(o.director_bytes))
        return t

    @staticmethod
    def _services(model: Model) -> Table | Text:
        o = model.overview
        if not o.services:
            return Text("No service in the topology.", "dim")
        table = Table(box=None, padding=(0, 1), show_edge=False, expand=False)
        table.add_column("service / real server", no_wrap=True, min_width=20)
        table.add_column("mode", no_wrap=True, min_width=4)
        table.add_column("weight", justify="right", no_wrap=True, min_width=6)
        table.add_column("new", justify="right", no_wrap=True, min_width=5)
        table.add_column("share of new conns (┃ by weight)", no_wrap=True, min_width=34)
        table.add_column("via director", justify="right", no_wrap=True, min_width=8)
        for s in o.services:
            table.add_row(Text(s.label, "bold"), ",".join(s.modes) or "?", "",
                          f"{s.new_connections:,}", Text(f"scheduler {s.scheduler}, {s.connections:,} connections",
                                                         "dim"),
                          human_bytes(s.director_bytes))
            for r in s.servers:
                style = "red" if r.flagged else "green"
                share = bar(r.share, 20, mark=r.expected, style=style)
                share.append(f" {r.share * 100:3.0f}%", style if r.flagged else "")
                share.append(f" (by weight {r.expected * 100:.0f}%)", "dim")
                table.add_row(Text("  " + r.label), r.mode, str(r.weight), f"{r.connections:,}", share,
                              human_bytes(r.director_bytes))
        return Group(Text("Services", "bold"), table)

    @staticmethod
    def _capture(model: Model, snap: Snapshot | None) -> Text:
        o = model.overview
        t = Text()
        t.append("Capture  ", "bold")
        t.append(f"{o.inputs} input{'s' if o.inputs != 1 else ''}, {o.frames:,} frames "
                 f"({o.decoded:,} decoded, {o.ignored:,} ignored, {o.undecodable:,} undecodable), "
                 f"{o.capture_points} capture point{'s' if o.capture_points != 1 else ''}")
        t.append("\nTopology  ", "bold")
        t.append(o.topology or "?")
        if o.topology == "inferred":
            t.append("  (inferred from the trace: give one with -t to check against the intended set-up)",
                     "italic yellow")
        return t

    @staticmethod
    def _live(snap: Snapshot) -> Text:
        live = snap.live
        t = Text()
        t.append("Live  ", "bold")
        if live.paused:
            t.append("PAUSED  ", "bold yellow reverse")
        t.append(f"{live.packets_per_second:,.0f} packets/s  {human_bytes(live.bytes_per_second)}/s  "
                 f"window {live.window_seconds:,.1f} s  ")
        t.append(f"analyzer drops {live.dropped_analyzer:,}", "bold red" if live.dropped_analyzer else "green")
        for i in live.interfaces:
            t.append(f"\n  {i.name:<16} received {i.received:>12,}  ")
            for label, v in (("kernel drops", i.dropped_kernel), ("capture drops", i.dropped_capture)):
                if v is None:
                    t.append(f"{label} ?  ", "dim")
                else:
                    t.append(f"{label} {v:,}  ", "bold red" if v else "green")
        if live.ring_files:
            t.append(f"\n  ring: {len(live.ring_files)} file{'s' if len(live.ring_files) != 1 else ''}, "
                     f"newest {live.ring_files[-1]}", "dim")
        return t


# ---------------------------------------------------------------------------------- list panes

class FilterInput(Input):
    """The filter line of a list: typing filters as you go, enter or escape go back to the list."""

    BINDINGS = [Binding("escape", "done", "Back to the list", show=False)]

    def action_done(self) -> None:
        self.post_message(self.Submitted(self, self.value))


class ListPane(TabPane):
    """A pane around one list of the current model: the :class:`VirtualTable` ``#PREFIX-table``,
    whose cursor a detail follows (``self.follow``)."""

    PREFIX = ""

    def __init__(self, title: str, id: str):
        super().__init__(title, id=id)
        self.model: Model | None = None
        self.follow = Follow(self)

    @property
    def table(self) -> VirtualTable:
        return self.query_one(f"#{self.PREFIX}-table", VirtualTable)

    def focus_main(self) -> None:
        self.table.focus()

    @property
    def pending(self) -> bool:
        return self.follow.pending


#: the keys of a filtered list (first in its pane's bindings, so the help lists them first)
FILTER_BINDINGS = [
    Binding("slash", "filter", "Filter", id="filter"),
    Binding("s", "sort", "Sort", id="sort"),
    Binding("r", "reverse", "Reverse", id="reverse", show=False),
]


class FilteredListPane(ListPane):
    """A list the user filters (the line ``#PREFIX-filter``, :class:`~lvs_inspect.tui.model.Filter`'s
    words) and sorts (``SORTS``, s cycles, r reverses), with a status line ``#PREFIX-status`` that says
    how many of how many are shown, the sort and the filter.

    A subclass names the list: ``_items()`` (the model's part with ``apply(filter, sort, reverse)``
    -> view), ``ROWS(model, view)`` (what the table draws), ``NOUN``/``NOUNS``, ``_count_text()``, and
    ``_detail(index)``, the detail of the row under the cursor (None: none).
    """

    SORTS: tuple[str, ...]          # the sort orders s cycles through
    COLUMNS: tuple[Column, ...]
    ROWS: type                      # ROWS(model, view): the table's rows
    NOUN: str                       # "finding": "no finding matches the filter"
    NOUNS: str                      # "findings": "no findings"
    FILTER_HINT: str                # the filter line's placeholder

    def __init__(self, title: str, id: str, sort: str):
        super().__init__(title, id)
        self.sort = sort
        self.reverse = False
        self.filter_text = ""

    def compose_list(self) -> ComposeResult:
        yield FilterInput(placeholder=self.FILTER_HINT, id=f"{self.PREFIX}-filter")
        yield Static(id=f"{self.PREFIX}-status")
        yield VirtualTable(self.COLUMNS, empty="waiting for the analysis…", id=f"{self.PREFIX}-table")

    def _items(self):
        raise NotImplementedError

    def _count_text(self) -> str:
        raise NotImplementedError

    def _detail(self, index: int | None) -> None:
        raise NotImplementedError

    def _cleared(self) -> None:
        """No analysis (yet): what else the pane empties."""

    def set_filter(self, text: str) -> None:
        self.filter_text = text
        inp = self.query_one(f"#{self.PREFIX}-filter", Input)
        if inp.value != text:
            with inp.prevent(Input.Changed):
                inp.value = text
        self.refilter()

    def refilter(self) -> None:
        if self.model is None:
            self.table.set_rows(NoRows(), empty="waiting for the analysis…")
            self._cleared()
            self._status(None)
            return
        flt = Filter.parse(self.filter_text)
        view = self._items().apply(flt, self.sort, self.reverse)
        self.table.set_rows(self.ROWS(self.model, view), empty=f"no {self.NOUNS}" if not self.filter_text
                            else f"no {self.NOUN} matches the filter")
        self._status(flt)
        self._detail(self.table.cursor if len(view) else None)

    def _status(self, flt: Filter | None) -> None:
        t = self._status_text(flt) if self.model is not None else Text()
        self.query_one(f"#{self.PREFIX}-status", Static).update(t, layout=False)

    def _status_text(self, flt: Filter | None) -> Text:
        t = Text()
        t.append(self._count_text(), "bold")
        t.append(f" · sort: {self.sort} {'↑' if self.reverse else '↓'}")
        if flt is not None and flt.text():
            t.append(f" · filter: {flt.text()}")
        if flt is not None and flt.errors:
            t.append(f" · not understood: {' '.join(flt.errors)}", "bold red")
        return t

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == f"{self.PREFIX}-filter":
            self.filter_text = event.value
            self.refilter()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == f"{self.PREFIX}-filter":
            self.filter_text = event.value
            self.refilter()
            self.table.focus()

    def action_filter(self) -> None:
        self.query_one(f"#{self.PREFIX}-filter", Input).focus()

    def action_sort(self) -> None:
        self.sort = self.SORTS[(self.SORTS.index(self.sort) + 1) % len(self.SORTS)]
        self.refilter()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.refilter()


# ---------------------------------------------------------------------------------- findings

class FindingRows:
    def __init__(self, model: Model, view: list[int]):
        self.model, self.view = model, view

    def __len__(self) -> int:
        return len(self.view)

    def finding(self, i: int) -> Finding:
        return self.model.findings.all[self.view[i]]

    def cells(self, i: int):
        f = self.finding(i)
        modes = self.model.findings.modes[self.view[i]]
        who = f.real_server or f.mac or f.connection or f.service or ""
        return (_sev(f), f.code, f.name, who, ",".join(modes), f"{f.count:,}", f.message.strip().replace("\n", " "))

    def row_style(self, i: int) -> str:
        return ""


FINDING_COLUMNS = (Column("severity", 8), Column("code", 7), Column("name", 28), Column("who", 18),
                   Column("mode", 7), Column("count", 7, "right"), Column("message"))


class FindingsPane(FilteredListPane):
    BINDINGS = [
        *FILTER_BINDINGS,
        Binding("g", "goto_connection", "Connection", id="goto-connection"),
        Binding("w", "dissect", "Wireshark", id="dissect"),
    ]
    PREFIX, NOUN, NOUNS = "findings", "finding", "findings"
    SORTS, COLUMNS, ROWS = FINDING_SORTS, FINDING_COLUMNS, FindingRows
    FILTER_HINT = "filter: code:DR1 sev:warning mode:dr rs:192.0.2.11 words…  (/)"

    def __init__(self):
        super().__init__("Findings", "findings", sort="severity")

    def compose(self) -> ComposeResult:
        yield from self.compose_list()
        with VerticalScroll(id="finding-detail-scroll"):
            yield Static(id="finding-detail")

    def _items(self):
        return self.model.findings

    def _count_text(self) -> str:
        return f"{len(self.model.findings.view)} of {len(self.model.findings.all)} findings"

    def set_model(self, model: Model | None) -> None:
        """A new analysis (a live window): the same finding stays selected when it is still there."""
        was = self.current()
        key = (was.code, was.real_server, was.mac, was.service) if was is not None else None
        self.model = model
        self.refilter()
        if key is not None and model is not None:
            for pos, i in enumerate(model.findings.view):
                f = model.findings.all[i]
                if (f.code, f.real_server, f.mac, f.service) == key:
                    self.table.cursor = pos
                    self._detail(pos)
                    break

    def current(self) -> Finding | None:
        rows = self.table.rows
        if isinstance(rows, FindingRows) and len(rows):
            return rows.finding(min(self.table.cursor, len(rows) - 1))
        return None

    def on_virtual_table_highlighted(self, event: VirtualTable.Highlighted) -> None:
        if event.table.id == "findings-table":
            self.follow(self._detail, event.index)

    def on_virtual_table_selected(self, event: VirtualTable.Selected) -> None:
        if event.table.id == "findings-table":
            self.action_goto_connection()

    def action_goto_connection(self) -> None:
        f = self.current()
        if f is not None and self.model is not None:
            cid = self.model.findings.connection_of(f)
            if cid is None and f.connection:
                cid = self.model.connections.find(f.connection)
            if cid is None:
                self.app.notify("This finding is not about one connection.", severity="warning")
                return
            self.app.show_connection(cid)

    def action_dissect(self) -> None:
        f = self.current()
        if f is None or self.model is None:
            return
        rows = self.model.findings.frame_rows(f)
        if not len(rows):
            self.app.notify("This finding cites no frame.", severity="warning")
            return
        self.app.dissect_row(int(rows[0]))

    def _detail(self, index: int | None) -> None:
        w = self.query_one("#finding-detail", Static)
        f = self.current() if index is not None else None
        if f is None or self.model is None:
            w.update("")
            return
        w.update(finding_detail(self.model, f))


def finding_detail(model: Model, f: Finding) -> Group:
    rule = model.rules.get(f.code)
    head = Text()
    head.append_text(_sev(f))
    head.append(f" {f.code} {f.name}", "bold")
    if f.title:
        head.append(f" · {f.title}")
    parts: list = [head, Text(f.message.strip())]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for label, value in (("service", f.service), ("real server", f.real_server), ("mac", f.mac),
                         ("connection", f.connection)):
        if value:
            grid.add_row(label, str(value))
    grid.add_row("mode", ",".join(model.findings.modes[model.findings.all.index(f)]) or "?")
    if f.count > 1:
        grid.add_row("occurrences", f"{f.count:,}")
    keys = list(dict.fromkeys([*f.expected, *f.observed]))
    for k in keys:
        exp, obs = f.expected.get(k, ""), f.observed.get(k, "")
        line = Text()
        line.append("expected ", "dim")
        line.append(exp, "green")
        line.append("   observed ", "dim")
        line.append(obs, "bold red" if obs != exp else "")
        grid.add_row(k, line)
    if f.frames:
        labels = [model.frame_label(int(r)) for r in model.findings.frame_rows(f)[:10]]
        more = f" (+{len(f.frames) - 10} more)" if len(f.frames) > 10 else ""
        grid.add_row("frames", ", ".join(labels) + more + "   [w: Wireshark dissection of the first]")
    parts.append(grid)
    why = rule.why.strip() if rule is not None and rule.why else ""
    if why:
        parts.append(Text("Why it matters", "bold"))
        parts.append(Text(why))
    if f.fix and f.fix.strip():
        parts.append(Text("Fix", "bold"))
        parts.append(Text(f.fix.rstrip(), "green"))
    if rule is not None and rule.references:
        parts.append(Text("References: " + ", ".join(rule.references), "dim"))
    return Group(*parts)


# ---------------------------------------------------------------------------------- connections

class ConnRows:
    def __init__(self, model: Model, view):
        self.model, self.view = model, view
        self.c = model.connections

    def __len__(self) -> int:
        return len(self.view)

    def cid(self, i: int) -> int:
        return int(self.view[i])

    def cells(self, i: int):
        c, cid = self.c, self.cid(i)
        legs = Text(no_wrap=True)
        for g in c.glyph[cid].tolist():
            if g:
                legs.append(GLYPHS[g], GLYPH_STYLE.get(g, ""))
                legs.append(" ")
        dur = (int(c.last_ns[cid]) - int(c.first_ns[cid])) / 1e6
        codes = c.codes.get(cid, ())
        pk = int(c.packets[cid])
        return (str(cid), c.client(cid), c.service(cid), c.server(cid), c.mode_name(cid), str(c.state[cid]),
                legs, f"{pk}" if pk < 100_000 else f"{pk // 1000}k",
                f"{dur:.1f}" if dur < 100_000 else f"{dur / 1000:.0f}s", Text(" ".join(codes), "red"))

    def row_style(self, i: int) -> str:
        return ""


CONN_COLUMNS = (Column("#", 6, "right"), Column("client", 20), Column("service", 20), Column("real server", 13),
                Column("mode", 7), Column("state", 15), Column("legs", 8), Column("pkts", 5, "right"),
                Column("ms", 7, "right"), Column("findings"))

# the ladder: three lanes, the arrow of each leg between two of them
LANES = {"C": 1, "D": 13, "R": 25}
ART_WIDTH = 28
LEG_ENDS = {C_D: ("C", "D"), D_R: ("D", "R"), R_D: ("R", "D"), D_C: ("D", "C"), R_C: ("R", "C"),
            C_R: ("C", "R")}


def ladder_art(leg: int, label: str, style: str) -> Text:
    chars = [" "] * ART_WIDTH
    for x in LANES.values():
        chars[x] = "│"
    styles = [None] * ART_WIDTH
    ends = LEG_ENDS.get(leg)
    if ends is None:
        text = Text("".join(chars), "dim")
        return text
    a, b = LANES[ends[0]], LANES[ends[1]]
    lo, hi = min(a, b), max(a, b)
    for x in range(lo + 1, hi):
        chars[x] = "┼" if x == LANES["D"] else "─"
        styles[x] = style
    if b > a:
        chars[hi - 1], styles[hi - 1] = "▶", style
    else:
        chars[lo + 1], styles[lo + 1] = "◀", style
    room = hi - lo - 3
    lab = label[:room]
    if lab:
        start = lo + 2 + (room - len(lab)) // 2
        if lo < LANES["D"] < hi and start <= LANES["D"] < start + len(lab):
            start = LANES["D"] + 1 if b > a else max(lo + 2, LANES["D"] - len(lab))
        for k, ch in enumerate(lab):
            if 0 <= start + k < ART_WIDTH and chars[start + k] in "─┼":
                chars[start + k] = ch
                styles[start + k] = style + " bold"
    text = Text(no_wrap=True)
    for ch, st in zip(chars, styles):
        text.append(ch, st or "dim")
    return text


def ladder_header() -> str:
    chars = [" "] * (ART_WIDTH + 2)
    for name, x in (("client", LANES["C"]), ("director", LANES["D"]), ("server", LANES["R"])):
        start = max(0, x - len(name) // 2)
        for k, ch in enumerate(name):
            if start + k < len(chars):
                chars[start + k] = ch
    return "".join(chars).rstrip()


class LadderRows:
    def __init__(self, ladder: Ladder):
        self.ladder = ladder
        self._wrong: dict[int, bool] = {}

    def __len__(self) -> int:
        return len(self.ladder)

    def wrong(self, i: int) -> bool:
        if i not in self._wrong:
            lad = self.ladder
            leg = int(lad.leg[i])
            mode = MODES[int(lad.model.connections.mode[lad.cid])] if lad.model.connections.n else ""
            bypass = leg == C_R or (leg == R_C and mode in ("nat", "fullnat", ""))
            self._wrong[i] = bool(lad.findings_at(i)) or bypass
        return self._wrong[i]

    def cells(self, i: int):
        lad = self.ladder
        leg = int(lad.leg[i])
        ms = (int(lad.ts[i]) - lad.t0) / 1e6
        if self.wrong(i):
            style = "red"
        elif leg in (C_D, D_R, C_R):
            style = "cyan"
        else:
            style = "green"
        codes = [lad.model.findings.all[k].code for k in lad.findings_at(i)]
        tail = Text(no_wrap=True)
        if codes:
            tail.append("✗ " + " ".join(codes) + "  ", "bold red")
        tail.append(lad.frames_text(i), "dim")
        return (f"{ms:,.3f}", ladder_art(leg, lad.label(i), style), LEG_ARROWS.get(leg, "?"), tail)

    def row_style(self, i: int) -> str:
        return ""


def ladder_columns() -> tuple[Column, ...]:
    return (Column("ms", 10, "right"), Column(ladder_header(), ART_WIDTH), Column("leg", 4),
            Column("capture points #frame"))


class ConnectionsPane(FilteredListPane):
    BINDINGS = [
        *FILTER_BINDINGS,
        Binding("w", "dissect", "Wireshark", id="dissect"),
        Binding("x", "export_pcap", "Export pcap", id="export-pcap"),
        Binding("e", "expected", "Expected", id="expected"),
    ]
    PREFIX, NOUN, NOUNS = "conn", "connection", "connections"
    SORTS, COLUMNS, ROWS = CONN_SORTS, CONN_COLUMNS, ConnRows
    FILTER_HINT = "filter: mode:dr rs:192.0.2.11 state:refused code:DR104 problems client…  (/)"

    def __init__(self):
        super().__init__("Connections", "connections", sort="time")
        self.ladder: Ladder | None = None
        self.follow_detail = Follow(self)

    def compose(self) -> ComposeResult:
        yield from self.compose_list()
        with Horizontal(id="ladder-box"):
            with Vertical(id="ladder-left"):
                yield Static(id="ladder-title")
                yield VirtualTable(ladder_columns(), empty="select a connection", id="ladder")
            with VerticalScroll(id="ladder-detail-scroll"):
                yield Static(id="ladder-detail")

    @property
    def ladder_table(self) -> VirtualTable:
        return self.query_one("#ladder", VirtualTable)

    def set_model(self, model: Model | None) -> None:
        """A new analysis (a live window): the same connection (client and service) stays selected,
        with the ladder's cursor where it was."""
        key, line = None, 0
        cid = self.current_cid()
        if cid is not None and self.model is not None:
            c = self.model.connections
            key = (c.client(cid), c.service(cid), int(c.first_ns[cid]))
            line = self.ladder_table.cursor if self.ladder is not None and self.ladder.cid == cid else 0
        self.model = model
        self.ladder = None
        self.follow.cancel()
        self.follow_detail.cancel()
        self.refilter()
        if key is None or model is None:
            return
        c = model.connections
        found = c.find(key[0])
        if found is not None:
            hits = np.flatnonzero((c.cip == c.cip[found]) & (c.cport == c.cport[found])
                                  & (c.first_ns == key[2]))
            found = int(hits[0]) if len(hits) else found
        pos = np.flatnonzero(c.view == found) if found is not None else []
        if len(pos):
            self.table.cursor = int(pos[0])
            self._show_ladder(int(pos[0]))
            if self.ladder is not None and len(self.ladder):
                self.ladder_table.cursor = min(line, len(self.ladder) - 1)
                self._ladder_detail(self.ladder_table.cursor)

    def _items(self):
        return self.model.connections

    def _count_text(self) -> str:
        c = self.model.connections
        return f"{len(c.view):,} of {c.n:,} connections"

    def _cleared(self) -> None:
        self.ladder_table.set_rows(NoRows(), empty="")

    def _detail(self, index: int | None) -> None:
        """A connection's detail is its ladder."""
        self._show_ladder(index)

    def _status_text(self, flt: Filter | None) -> Text:
        t = super()._status_text(flt)
        t.append("\nlegs ")
        for g in (SEEN, RIGHT, WRONG, MISSING, NOT_CAPTURED):
            t.append(GLYPHS[g], GLYPH_STYLE[g])
            t.append(f" {GLYPH_NAMES[g]}  ")
        t.append("· NAT/FullNAT C→D D→R R→D D→C · DR/TUN C→D D→R R→C", "dim")
        return t

    def show(self, cid: int) -> None:
        """Put the cursor on connection ``cid`` (clearing a filter that hides it) and show its ladder."""
        if self.model is None:
            return
        view = self.model.connections.view
        hit = (view == cid).nonzero()[0]
        if not len(hit):
            self.set_filter("")
            hit = (self.model.connections.view == cid).nonzero()[0]
        if len(hit):
            self.table.cursor = int(hit[0])
            self._show_ladder(int(hit[0]))
        self.ladder_table.focus()

    def current_cid(self) -> int | None:
        rows = self.table.rows
        if isinstance(rows, ConnRows) and len(rows):
            return rows.cid(min(self.table.cursor, len(rows) - 1))
        return None

    def _show_ladder(self, index: int | None) -> None:
        title = self.query_one("#ladder-title", Static)
        if index is None or self.model is None or not len(self.table.rows):
            self.ladder = None
            self.ladder_table.set_rows(NoRows(), empty="no connection selected")
            title.update("", layout=False)
            self.query_one("#ladder-detail", Static).update("")
            return
        cid = self.current_cid()
        if self.ladder is not None and self.ladder.cid == cid:
            return
        self.ladder = self.model.ladder(cid)
        c = self.model.connections
        t = Text()
        t.append(f"#{cid} {c.client(cid)} → {c.service(cid)} via {c.server(cid)}\n", "bold")
        t.append(f"{c.mode_name(cid)} {c.state[cid]} {c.history[cid]}, {len(self.ladder)} packets · ")
        src = self.model.expected
        if src is None:
            t.append("no forwarder replay", "dim")
        elif src.state == "idle" and len(self.model.analysis.table) <= AUTO_REPLAY_FRAMES:
            self.app.prepare_expected(self.model)
            t.append("replaying the trace through the forwarder…", "dim")
        elif src.state == "idle":
            t.append("e: the forwarder's expected packets (replays the trace in the background)", "dim")
        elif src.state == "running":
            t.append("replaying the trace through the forwarder…", "dim")
        elif src.state == "unavailable":
            t.append(src.message, "dim")
        else:
            t.append("expected: the reference forwarder's", "dim")
        title.update(t, layout=False)
        self.ladder_table.set_rows(LadderRows(self.ladder), keep_cursor=False, empty="no packets")
        self._ladder_detail(0)

    def expected_ready(self, model: Model) -> None:
        """The forwarder's replay finished: draw the ladder again with the expected column."""
        if model is not self.model or self.ladder is None:
            return
        keep = self.ladder_table.cursor
        cid = self.ladder.cid
        self.ladder = None
        self._show_ladder(self.table.cursor)
        if self.ladder is not None and self.ladder.cid == cid:
            self.ladder_table.cursor = min(keep, max(len(self.ladder) - 1, 0))
            self._ladder_detail(self.ladder_table.cursor)

    def _ladder_detail(self, index: int | None) -> None:
        w = self.query_one("#ladder-detail", Static)
        if self.ladder is None or index is None or index >= len(self.ladder):
            w.update("")
            return
        w.update(ladder_detail(self.ladder, index))

    def current_row(self) -> int | None:
        """The table row the ladder's cursor is on (its first capture point)."""
        if self.ladder is None or not len(self.ladder):
            return None
        return int(self.ladder.first[min(self.ladder_table.cursor, len(self.ladder) - 1)])

    def on_virtual_table_highlighted(self, event: VirtualTable.Highlighted) -> None:
        if event.table.id == "conn-table":
            self.follow(self._show_ladder, event.index)
        elif event.table.id == "ladder":
            self.follow_detail(self._ladder_detail, event.index)

    def on_virtual_table_selected(self, event: VirtualTable.Selected) -> None:
        if event.table.id == "conn-table":
            self.follow.cancel()
            self._show_ladder(event.index)
            self.ladder_table.focus()
        elif event.table.id == "ladder":
            self.action_dissect()

    @property
    def pending(self) -> bool:
        return self.follow.pending or self.follow_detail.pending

    def action_dissect(self) -> None:
        self.follow.cancel()
        if self.ladder is None or self.ladder.cid != self.current_cid():
            self._show_ladder(self.table.cursor)
        row = self.current_row()
        if row is None:
            self.app.notify("Select a connection and a packet first.", severity="warning")
            return
        self.app.dissect_row(row)

    def action_export_pcap(self) -> None:
        self.app.action_export_connection()

    def action_expected(self) -> None:
        """Replay the trace through the reference forwarder for the ladder's expected column."""
        src = self.model.expected if self.model is not None else None
        if src is None:
            self.app.notify("The forwarder's replay is not available.", severity="warning")
            return
        if src.state == "idle":
            self.app.prepare_expected(self.model)
            self.app.notify("Replaying the trace through the reference forwarder in the background…")
            self.expected_ready(self.model)


def ladder_detail(ladder: Ladder, i: int) -> Group:
    per = ladder.detail(i)
    expected = next((exp for _w, _f, exp in per if exp), None)
    # aligned text, not a Rich table: this is redrawn on every move of the ladder's cursor
    rows = []
    for name in FIELDS:
        values = list(dict.fromkeys(fd.get(name, "") for _w, fd, _e in per))
        exp = expected.get(name) if expected else None
        if any(values) or exp:
            rows.append((name, values, exp))
    table = Text()
    table.append("field    observed", "bold")
    if expected:
        table.append("   (✓ as the forwarder expects)", "dim")
    for name, values, exp in rows:
        table.append("\n")
        table.append(f"{name:<9}", "bold")
        for k, v in enumerate(values):
            if k:
                table.append(" → ", "dim")
            shown = v or "-"
            if exp is not None and v != exp:
                table.append(shown, "bold red")
            elif len(values) > 1:
                table.append(shown, "yellow")
            else:
                table.append(shown)
        if exp is not None:
            if all(v == exp for v in values):
                table.append(" ✓", "green")
            else:
                table.append("  expected ", "dim")
                table.append(exp or "-", "bold green")
    head = Text("seen at " + ", ".join(w for w, _f, _e in per), "dim")
    parts: list = [head, table]
    err = getattr(ladder, "expected_error", None)
    if err:
        parts.append(Text(f"forwarder replay failed for this connection: {err}", "red"))
    model = ladder.model
    for k in ladder.findings_at(i):
        f = model.findings.all[k]
        t = Text()
        t.append(f"✗ {f.code} ", "bold red")
        t.append(f.message.strip())
        for key in dict.fromkeys([*f.expected, *f.observed]):
            t.append(f"\n  {key}: expected ", "dim")
            t.append(f.expected.get(key, ""), "green")
            t.append(" observed ", "dim")
            t.append(f.observed.get(key, ""), "bold red")
        parts.append(t)
    if len(per) > 1:
        parts.append(Text("a → b: the value changed between those capture points", "dim"))
    return Group(*parts)


# ---------------------------------------------------------------------------------- ARP

class ArpRows:
    def __init__(self, model: Model):
        self.model = model
        self.claims = model.arp

    def __len__(self) -> int:
        return len(self.claims)

    def claim(self, i: int) -> Claim:
        return self.claims[i]

    def cells(self, i: int):
        c = self.claims[i]
        flag = Text("LEAK", "bold red reverse") if c.leak else (Text("shared", "yellow") if c.conflict
                                                                else Text("ok", "green"))
        kinds = f"{c.replies}/{c.requests}/{c.gratuitous}"
        return (c.ip, c.ip_kind, c.mac, c.owner, flag, f"{c.count:,}", kinds,
                lambda width, c=c: self.timeline(c, width))

    def timeline(self, c: Claim, width: int) -> Text:
        marks = timeline(c.times, self.model.t0, self.model.t1, width)
        style = "bold red" if c.leak else ("yellow" if c.conflict else "cyan")
        line = Text(no_wrap=True)
        for on in marks:
            line.append("█" if on else "─", style if on else "dim")
        return line

    def row_style(self, i: int) -> str:
        c = self.claims[i]
        return "leak" if c.leak else ""


ARP_COLUMNS = (Column("address", 15), Column("is", 11), Column("claimed by MAC", 17), Column("which is", 22),
               Column("", 6), Column("frames", 6, "right"), Column("rep/req/gra", 11),
               Column("when, over the whole trace"))


class ArpPane(ListPane):
    BINDINGS = [Binding("w", "dissect", "Wireshark", id="dissect")]
    PREFIX = "arp"

    def __init__(self):
        super().__init__("ARP", "arp")

    def compose(self) -> ComposeResult:
        yield Static(id="arp-status")
        yield VirtualTable(ARP_COLUMNS, empty="waiting for the analysis…", id="arp-table")
        with VerticalScroll(id="arp-detail-scroll"):
            yield Static(id="arp-detail")

    def set_model(self, model: Model | None) -> None:
        was = self.current()
        self.model = model
        status = self.query_one("#arp-status", Static)
        if model is None:
            self.table.set_rows(NoRows(), empty="waiting for the analysis…")
            status.update("", layout=False)
            return
        self.table.set_rows(ArpRows(model), empty="no ARP in the trace")
        if was is not None:
            same = [k for k, c in enumerate(model.arp) if (c.ip, c.mac) == (was.ip, was.mac)]
            if same:
                self.table.cursor = same[0]
        leaks = [c for c in model.arp if c.leak]
        t = Text()
        t.append(f"{len(model.arp)} claims", "bold")
        if leaks:
            t.append(f" · {len(leaks)} leak{'s' if len(leaks) != 1 else ''}: ", "bold red")
            t.append(", ".join(f"{c.ip} by {c.mac} ({c.owner})" for c in leaks), "red")
        else:
            t.append(" · no leak", "green")
        t.append("\na claim: an ARP frame whose sender says this address is at this MAC (a reply, a request, "
                 "a gratuitous announcement)", "dim")
        status.update(t, layout=False)
        self._detail(self.table.cursor if len(model.arp) else None)

    def on_virtual_table_highlighted(self, event: VirtualTable.Highlighted) -> None:
        if event.table.id == "arp-table":
            self.follow(self._detail, event.index)

    def current(self) -> Claim | None:
        if self.model is None or not self.model.arp:
            return None
        return self.model.arp[min(self.table.cursor, len(self.model.arp) - 1)]

    def _detail(self, index: int | None) -> None:
        w = self.query_one("#arp-detail", Static)
        c = self.current() if index is not None else None
        if c is None or self.model is None:
            w.update("")
            return
        t = Text()
        t.append(f"{c.ip} ({c.ip_kind}) is at {c.mac}, says {c.owner}", "bold red" if c.leak else "bold")
        if c.note:
            t.append(f": {c.note}", "red")
        t.append(f"\n{c.count} frames: {c.replies} replies, {c.requests} requests with it as sender, "
                 f"{c.gratuitous} gratuitous, from {(c.first_ns - self.model.t0) / 1e9:,.3f} s to "
                 f"{(c.last_ns - self.model.t0) / 1e9:,.3f} s; seen at {', '.join(c.capture_points)}")
        labels = [self.model.frame_label(int(r)) for r in c.rows[:8]]
        t.append("\nframes " + ", ".join(labels) + (f" (+{len(c.rows) - 8} more)" if len(c.rows) > 8 else ""),
                 "dim")
        related = [f for f in self.model.findings.all if f.mac == c.mac and f.code.startswith("DR1")]
        for f in related:
            t.append(f"\n✗ {f.code} ", "bold red")
            t.append(f.message.strip())
        w.update(t)

    def action_dissect(self) -> None:
        c = self.current()
        if c is not None:
            self.app.dissect_row(int(c.rows[0]))


# ---------------------------------------------------------------------------------- packet

class PacketPane(TabPane):
    def __init__(self):
        super().__init__("Packet", id="packet")

    def compose(self) -> ComposeResult:
        yield Static(Text("Select a packet (a ladder line, a finding, an ARP claim) and press w for "
                          "Wireshark's dissection of it.", "dim"), id="packet-title")
        with VerticalScroll(id="packet-scroll", can_focus=True):
            yield Static(id="packet-text")

    def focus_main(self) -> None:
        self.query_one("#packet-scroll").focus()

    def show(self, title: Text | str, body: Text | str) -> None:
        self.query_one("#packet-title", Static).update(title)
        self.query_one("#packet-text", Static).update(body)
        self.query_one("#packet-scroll", VerticalScroll).scroll_home(animate=False)


# ---------------------------------------------------------------------------------- help

HELP_FILTER = """\
Filters (Findings and Connections, press / to edit, words combine):
  code:DR1        findings whose code starts with DR1 (connections: cited by such a finding)
  sev:warning     at least this severity: error, warning, info
  mode:dr         nat, dr, tun, fullnat (several: mode:dr,tun)
  rs:192.0.2.11   about this real server (or MAC, for findings)
  state:refused   connections in this state (complete, no-answer, reset-by-server, …)
  problems        connections with a wrong leg
  other words     must appear in the finding's text / the client address"""

HELP_LEGS = """\
Legs of a connection (Connections): ● seen  ✓ rewritten right  ✗ wrong  ○ missing  · not captured
  NAT/FullNAT: C→D D→R R→D D→C     DR/TUN: C→D D→R R→C
  A packet that bypassed the director marks the leg it should have taken as wrong."""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", show=True)]

    def action_close(self) -> None:
        self.dismiss()

    def __init__(self, bindings: list[tuple[str, str, str]], keys_path: str):
        super().__init__()
        self.key_rows = bindings
        self.keys_path = keys_path

    def compose(self) -> ComposeResult:
        table = Table(box=None, padding=(0, 2), show_edge=False)
        table.add_column("key", style="bold cyan", no_wrap=True, max_width=22)
        table.add_column("does")
        table.add_column("binding id (keys file)", style="dim", no_wrap=True)
        for key, desc, bid in self.key_rows:
            table.add_row(key, desc, bid)
        keys = Text(f"Rebind keys in {self.keys_path} (or --keys FILE; lvs-inspect tui --list-keys):  "
                    "[keys]  show-findings = \"f2\"  dissect = \"ctrl+w,w\"", "dim")
        with VerticalScroll(id="help-box"):
            yield Static(Text("lvs-inspect — keys   (escape closes)", "bold"))
            yield Static(keys)
            yield Static(table)
            yield Static(Text("ctrl+p opens the command palette: filters (\"filter: DR only\"), exports "
                              "(\"export: findings as JUnit\", \"export: this connection as pcap\"), screens."))
            yield Static(Text(HELP_LEGS))
            yield Static(Text(HELP_FILTER))
