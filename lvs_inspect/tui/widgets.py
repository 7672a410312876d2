"""Widgets of the terminal UI: a virtual table (the Line API: only the rows on screen are drawn)
and the text helpers the screens share."""
from __future__ import annotations

from collections import OrderedDict
from time import monotonic
from dataclasses import dataclass
from typing import Protocol, Sequence

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static


@dataclass(frozen=True)
class Column:
    title: str
    width: int = 0              # 0: takes what the fixed columns leave
    justify: str = "left"       # left | right


class Rows(Protocol):
    """What a :class:`VirtualTable` draws: a length and a way to format one row."""

    def __len__(self) -> int: ...

    def cells(self, i: int) -> Sequence[str | Text]: ...
    # a cell may also be a callable taking the column's width and returning the text

    def row_style(self, i: int) -> str: ...


class NoRows:
    def __init__(self, message: str = ""):
        self.message = message

    def __len__(self) -> int:
        return 0

    def cells(self, i: int):
        return ()

    def row_style(self, i: int) -> str:
        return ""


#: row styles by name (the names the models hand out)
ROW_STYLES = {
    "": Style(),
    "error": Style(color="red"),
    "warning": Style(color="yellow"),
    "info": Style(color="cyan"),
    "leak": Style(color="red", bold=True),
    "conflict": Style(color="yellow"),
    "dim": Style(dim=True),
    "wrong": Style(color="red"),
}


class TableMessage(Message):
    """A message of a :class:`VirtualTable` about one of its rows."""

    def __init__(self, table: "VirtualTable", index: int | None):
        super().__init__()
        self.table = table
        self.index = index

    @property
    def control(self) -> "VirtualTable":
        return self.table


class VirtualTable(ScrollView, can_focus=True):
    """A table of any number of rows that formats only the rows on screen.

    The header stays on the first line; the cursor row is highlighted. ``Highlighted`` is posted
    when the cursor moves, ``Selected`` on enter or a click on the cursor row. A row is formatted
    when it becomes visible and kept in a small cache, so a million rows cost what a screenful does.
    """

    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Open", show=False),
    ]

    COMPONENT_CLASSES = {"virtual-table--header", "virtual-table--cursor", "virtual-table--empty"}

    DEFAULT_CSS = """
    VirtualTable { height: 1fr; }
    VirtualTable > .virtual-table--header { text-style: bold; background: $panel; }
    VirtualTable > .virtual-table--cursor { background: $surface-lighten-2; }
    VirtualTable:focus > .virtual-table--cursor { background: $accent 40%; }
    VirtualTable > .virtual-table--empty { color: $text-muted; }
    """

    cursor: reactive[int] = reactive(0, always_update=True, init=False)

    class Highlighted(TableMessage):
        """The cursor moved to row ``index`` (None: the table has no rows)."""

    class Selected(TableMessage):
        """Enter, or a click on the cursor row ``index``."""

    def __init__(self, columns: Sequence[Column], rows: Rows | None = None, *, empty: str = "nothing to show",
                 name: str | None = None, id: str | None = None, classes: str | None = None):
        super().__init__(name=name, id=id, classes=classes)
        self.columns = list(columns)
        self.rows: Rows = rows if rows is not None else NoRows()
        self.empty = empty
        self._cache: OrderedDict = OrderedDict()

    # ---- data
    def set_rows(self, rows: Rows, *, columns: Sequence[Column] | None = None, keep_cursor: bool = True,
                 empty: str | None = None) -> None:
        """Show other rows (a new filter, sort or analysis). The cursor keeps its position."""
        self.rows = rows
        if columns is not None:
            self.columns = list(columns)
        if empty is not None:
            self.empty = empty
        self._cache.clear()
        n = len(rows)
        cursor = min(self.cursor, n - 1) if keep_cursor else 0
        self._update_size()
        self.cursor = max(cursor, 0)
        self._scroll_to_cursor()
        self.refresh()

    def invalidate(self) -> None:
        self._cache.clear()
        self.refresh()

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def _update_size(self) -> None:
        fixed = sum(c.width + 1 for c in self.columns if c.width)
        flex = sum(1 for c in self.columns if not c.width)
        width = fixed + flex * 4
        size = Size(max(width, 1), len(self.rows) + 1)
        if size != self.virtual_size:
            self.virtual_size = size

    # ---- geometry
    def _widths(self) -> list[int]:
        avail = max(self.scrollable_content_region.width, self.virtual_size.width)
        fixed = sum(c.width + 1 for c in self.columns if c.width)
        flex = [c for c in self.columns if not c.width]
        rest = max(avail - fixed, 4 * len(flex))
        each = rest // len(flex) if flex else 0
        return [c.width if c.width else each for c in self.columns]

    def _fit(self, value: str | Text, width: int, justify: str) -> Text:
        text = value.copy() if isinstance(value, Text) else Text(str(value))
        text.no_wrap = True
        if text.cell_len > width:
            text.truncate(max(width - 1, 0))
            text.append("…")
        text.truncate(width, pad=True)
        if justify == "right" and text.cell_len == width:
            plain = text.plain.rstrip()
            if len(plain) < width:
                pad = width - len(plain)
                text = Text(" " * pad) + text[:len(plain)]
        return text

    def _line_text(self, cells: Sequence[str | Text], widths: list[int]) -> Text:
        out = Text(no_wrap=True)
        for k, (col, w) in enumerate(zip(self.columns, widths)):
            value = cells[k] if k < len(cells) else ""
            if callable(value):          # drawn to the column's width (a timeline)
                value = value(w)
            out.append_text(self._fit(value, w, col.justify))
            if k < len(self.columns) - 1:
                out.append(" ")
        return out

    # ---- drawing
    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        widths = self._widths()
        base = self.rich_style
        if y == 0:
            header = self._line_text([c.title for c in self.columns], widths)
            style = self.get_component_rich_style("virtual-table--header")
            return self._strip(header, base + style, scroll_x, width)
        n = len(self.rows)
        index = scroll_y + y - 1
        if n == 0:
            if y == 1:
                style = self.get_component_rich_style("virtual-table--empty")
                return self._strip(Text(self.empty), base + style, scroll_x, width)
            return Strip.blank(width, base)
        if index >= n:
            return Strip.blank(width, base)
        is_cursor = index == self.cursor
        key = (index, tuple(widths), is_cursor, self.has_focus, scroll_x, width)
        strip = self._cache.get(key)
        if strip is None:
            text = self._line_text(self.rows.cells(index), widths)
            row_style = ROW_STYLES.get(self.rows.row_style(index), Style())
            style = base + row_style
            if is_cursor:
                style = style + self.get_component_rich_style("virtual-table--cursor")
            strip = self._strip(text, style, scroll_x, width)
            self._cache[key] = strip
            if len(self._cache) > 2000:
                self._cache.popitem(last=False)
        return strip

    def _strip(self, text: Text, style: Style, scroll_x: int, width: int) -> Strip:
        total = max(text.cell_len, width + scroll_x)
        text = text.copy()
        text.truncate(total, pad=True)
        segments = [Segment(s.text, style + s.style if s.style else style)
                    for s in text.render(self.app.console) if s.text != "\n"]
        strip = Strip(segments, text.cell_len)
        return strip.crop_extend(scroll_x, scroll_x + width, style)

    # ---- cursor
    def watch_cursor(self, old: int, new: int) -> None:
        n = len(self.rows)
        if n and not 0 <= new < n:
            self.cursor = max(0, min(new, n - 1))
            return
        if not self._scroll_to_cursor():
            # only the two rows whose highlight changed are drawn again
            for index in {old, new}:
                self.refresh_line(index + 1)
        self.post_message(self.Highlighted(self, new if n else None))

    def _scroll_to_cursor(self) -> bool:
        """Scroll so the cursor row is visible; True when that scrolled (the whole view is redrawn)."""
        visible = max(self.scrollable_content_region.height - 1, 1)
        top = int(self.scroll_offset.y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
            return True
        if self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False, immediate=True)
            return True
        return False

    def on_resize(self, event: events.Resize) -> None:
        self._cache.clear()
        self._update_size()

    def on_focus(self) -> None:
        self._cache.clear()

    def on_blur(self) -> None:
        self._cache.clear()

    def action_cursor(self, delta: int) -> None:
        if len(self.rows):
            self.cursor = max(0, min(self.cursor + delta, len(self.rows) - 1))

    def action_page(self, direction: int) -> None:
        page = max(self.scrollable_content_region.height - 2, 1)
        self.action_cursor(direction * page)

    def action_jump(self, where: int) -> None:
        n = len(self.rows)
        if n:
            self.cursor = n - 1 if where < 0 else min(where, n - 1)

    def action_select(self) -> None:
        if len(self.rows):
            self.post_message(self.Selected(self, self.cursor))

    def on_click(self, event: events.Click) -> None:
        if event.y <= 0:
            return
        index = int(self.scroll_offset.y) + event.y - 1
        if 0 <= index < len(self.rows):
            if index == self.cursor:
                self.post_message(self.Selected(self, index))
            self.cursor = index


# ---------------------------------------------------------------------------------- key bar

class KeyBar(Static):
    """The footer: the keys that do something where the focus is, in one line of text.

    Textual's Footer builds a widget per key again on every focus change, which costs a tab switch
    most of its time; this draws the same keys (the user's rebindings included) as one Text and
    only when they changed."""

    DEFAULT_CSS = """
    KeyBar { height: 1; background: $panel; color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self._shown = None

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._changed)
        self.call_after_refresh(self._changed, self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _changed(self, screen) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        app = self.app
        items: list[tuple[str, str, bool]] = []
        groups: dict = {}
        for active in screen.active_bindings.values():
            b = active.binding
            if not b.show:
                continue
            key = app.get_key_display(b)
            if b.group is not None:
                if b.group in groups:
                    k = groups[b.group]
                    items[k] = (items[k][0] + " " + key, items[k][1], items[k][2])
                    continue
                groups[b.group] = len(items)
                items.append((key, b.group.description, active.enabled))
            else:
                items.append((key, b.description, active.enabled))
        shown = tuple(items)
        if shown == self._shown:
            return
        self._shown = shown
        text = Text(no_wrap=True, overflow="ellipsis")
        for key, desc, enabled in items:
            text.append(f" {key} ", "bold #ffa62b" if enabled else "dim")
            text.append(f"{desc} ", "" if enabled else "dim")
        if app.ENABLE_COMMAND_PALETTE:
            text.append(" ^p", "bold #ffa62b")
            text.append(" palette")
        self.update(text, layout=False)


# ---------------------------------------------------------------------------------- debounce

class Follow:
    """Runs a detail update at once when the cursor moves after a pause, and only once the keys stop
    when they repeat (a held arrow key): the cursor answers every key, the detail follows."""

    def __init__(self, owner, delay: float = 0.08):
        self.owner = owner
        self.delay = delay
        self.last = float("-inf")
        self.timer = None
        self._call = None

    @property
    def pending(self) -> bool:
        return self.timer is not None

    def __call__(self, fn, *args) -> None:
        now = monotonic()
        quiet = now - self.last >= self.delay
        self.last = now
        if quiet and self.timer is None:
            fn(*args)
            return
        self._call = (fn, args)
        if self.timer is not None:
            self.timer.stop()
        self.timer = self.owner.set_timer(self.delay, self._fire)

    def _fire(self) -> None:
        self.timer = None
        if self._call is not None:
            fn, args = self._call
            self._call = None
            fn(*args)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.stop()
        self.timer = None
        self._call = None


# ---------------------------------------------------------------------------------- text helpers

SEVERITY_STYLE = {"error": "bold red", "warning": "bold yellow", "info": "bold cyan"}


def bar(fraction: float, width: int, *, mark: float | None = None, style: str = "green",
        empty_style: str = "grey37", mark_style: str = "bold white") -> Text:
    """``█████░░░░`` with an optional tick ``┃`` where ``mark`` (0..1) falls."""
    fraction = max(0.0, min(1.0, float(fraction)))
    filled = int(round(fraction * width))
    at = None
    if mark is not None and width:
        m = max(0.0, min(1.0, float(mark)))
        at = min(width - 1, max(0, int(round(m * width)) - 1))
    text = Text(no_wrap=True)
    for k in range(width):
        if k == at:
            text.append("┃", mark_style)
        elif k < filled:
            text.append("█", style)
        else:
            text.append("░", empty_style)
    return text
