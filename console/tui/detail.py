"""The task detail screen: a task's progress, its chunk map and each node's share."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import groupby

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import Screen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Static

from console.tui import formatting as fmt
from console.tui.footer import FittedFooter
from console.engine.records import TaskRow
from console.tui.tables import TASK_STATE_STYLE, Cells, Column, KeyedTable, task_rate
from console.tui.kept import Kept
from protocol.dispatch_events import ChunkState, ChunkView

CHUNK_STYLE = {
    ChunkState.QUEUED: "grey35",
    ChunkState.RUNNING: "bold yellow",
    ChunkState.DONE: "green",
    ChunkState.RETRIED: "#a970ff",  # purple, not magenta: themes draw magenta close to red
    ChunkState.FAILED: "bold red",
}
# When one cell stands for several chunks it shows the one that most needs attention,
# so a single failed chunk among a thousand done ones stays visible.
CHUNK_PRIORITY = {
    ChunkState.DONE: 0,
    ChunkState.QUEUED: 1,
    ChunkState.RUNNING: 2,
    ChunkState.RETRIED: 3,
    ChunkState.FAILED: 4,
}
CHUNK_GLYPH = {
    ChunkState.QUEUED: "░",
    ChunkState.RUNNING: "▒",
    ChunkState.DONE: "█",
    ChunkState.RETRIED: "▞",
    ChunkState.FAILED: "╳",
}
"""Each state has its own shape as well as its colour: the map reads without colours too."""
CELL_STYLE = {state: Style.parse(style) for state, style in CHUNK_STYLE.items()}


def chunk_cells(chunks: Sequence[ChunkView], items: int, capacity: int) -> tuple[list[ChunkState], str]:
    """The state of each cell of a map ``capacity`` cells big, and what one cell stands for.

    One cell per chunk when every chunk fits; otherwise each cell covers an equal share
    of the task's items and shows the most urgent state among the chunks in it.
    """
    if capacity <= 0 or not chunks:
        return [], ""
    ordered = sorted(chunks, key=lambda c: c.start)
    if len(ordered) <= capacity and all(c.chunk >= 0 for c in ordered):
        return [c.state for c in ordered], "1 cell = 1 chunk"
    items = max(items, ordered[-1].stop, 1)
    cells = min(capacity, items)
    states: list[ChunkState | None] = [None] * cells
    for c in ordered:
        if c.stop <= c.start:
            continue
        for i in range(c.start * cells // items, (c.stop - 1) * cells // items + 1):
            current = states[i]
            if current is None or CHUNK_PRIORITY[c.state] > CHUNK_PRIORITY[current]:
                states[i] = c.state
    per_cell = items / cells
    what = "1 cell = 1 item" if per_cell == 1 else f"1 cell ≈ {per_cell:,.0f} items"
    return [s if s is not None else ChunkState.QUEUED for s in states], what


class ChunkMap(Widget):
    """Each chunk of a task as a coloured cell, filling the widget row by row; the legend below.

    Drawn line by line with one segment per run of same-state cells, so a map of 10,000
    chunks costs a few hundred segments per redraw rather than thousands of styled spans.
    """

    DEFAULT_CSS = """
    ChunkMap {
        height: 1fr;
        min-height: 3;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.chunks: tuple[ChunkView, ...] | None = ()
        self.items = 0
        self._cells: list[ChunkState] = []
        self._legend: list[Text] = []
        self._laid_out_for: tuple[int, int] | None = None

    def show(self, chunks: tuple[ChunkView, ...] | None, items: int) -> None:
        if chunks != self.chunks or items != self.items:
            self.chunks, self.items = chunks, items
            self._laid_out_for = None
            self.refresh()

    @property
    def legend_text(self) -> Text:
        """The lines under the map: each state's mark and count, and what one cell stands for."""
        if self.chunks is None:
            return NOT_KEPT
        width, _ = self.size
        self._lay_out(width, self.size.height)
        return Text("\n").join(self._legend)

    def _lay_out(self, width: int, height: int) -> None:
        if self._laid_out_for != (width, height):
            chunks = self.chunks or ()
            # The legend wraps to as many lines as it needs; the map fills the rest but a blank line.
            rows = max(height - 2, 1)
            self._cells, what = chunk_cells(chunks, self.items, width * rows)
            lines = self._wrap(legend(chunks, what), width)
            if len(lines) > 1 and height - len(lines) - 1 != rows:
                rows = max(height - len(lines) - 1, 1)
                self._cells, what = chunk_cells(chunks, self.items, width * rows)
                lines = self._wrap(legend(chunks, what), width)
            self._legend = lines
            self._laid_out_for = (width, height)

    def _wrap(self, text: Text, width: int) -> list[Text]:
        return list(text.wrap(self.app.console, max(width, 1)))

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        base = self.rich_style
        if self.chunks is None:
            lines = self._wrap(NOT_KEPT, width)
            return self._text_line(lines[y] if y < len(lines) else Text(), width, base)
        self._lay_out(width, height)
        rows = max(height - len(self._legend) - 1, 1)
        first_legend_line = height - len(self._legend)
        if y >= first_legend_line:
            return self._text_line(self._legend[y - first_legend_line], width, base)
        cells = self._cells[y * width:(y + 1) * width] if y < rows else []
        segments = [Segment(CHUNK_GLYPH[state] * sum(1 for _ in run), base + CELL_STYLE[state])
                    for state, run in groupby(cells)]
        return Strip(segments, len(cells)).extend_cell_length(width, base)

    def _text_line(self, text: Text, width: int, base: Style) -> Strip:
        segments = list(text.render(self.app.console))
        return Strip(segments).apply_style(base).crop(0, width).extend_cell_length(width, base)


NOT_KEPT = Text("The chunk map of a task finished before this start of the front-end is not kept.", style="dim")


def legend(chunks: Sequence[ChunkView], what: str) -> Text:
    """What each mark means and how many chunks are in that state."""
    counts = Counter(c.state for c in chunks if c.chunk >= 0)
    uncarved = sum(c.stop - c.start for c in chunks if c.chunk < 0 and c.state is ChunkState.QUEUED)
    text = Text()
    for state in ChunkState:
        text.append(CHUNK_GLYPH[state], style=CHUNK_STYLE[state])
        text.append(f" {state.value} {counts.get(state, 0):,}   ")
    if uncarved:
        text.append(f"+ {uncarved:,} items not yet chunked   ", style="dim")
    text.append(what, style="dim")
    return text


class Summary(Static):
    """A detail screen's top lines: a fixed height, so a change is a repaint, never a layout.

    ``Static.update`` lays out the whole screen by default; on a screen with a 200-row
    table, doing that on every refresh was the largest part of the refresh.
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: tuple[str, list] | None = None

    def show(self, text: Text) -> None:
        if (text.plain, text.spans) != self._shown:
            self._shown = (text.plain, text.spans)
            self.update(text, layout=False)


class SharesTable(KeyedTable):
    """How many of the task's items each node computed."""

    COLUMNS = (
        Column("node", "Node", 20),
        Column("items", "Items", 11, right=True),
        Column("share", "Share", 28),
    )

    def show(self, shares: Mapping[str, int]) -> bool:
        total = sum(shares.values())
        changed = self.reconcile({node: share_cells(node, items, total) for node, items in shares.items()})
        if changed:
            # Biggest share first; the cursor stays on the node it was on.
            selected = self.selected_key
            self.sort("node", key=lambda node: shares[node.plain], reverse=True)
            if selected is not None:
                self.select_key(selected)
        return changed


def share_cells(node: str, items: int, total: int) -> Cells:
    # Tenths of a percent: with hundreds of nodes each share is well under 1 %.
    share = f"{fmt.progress_bar(items, total, 20)} {100 * items / total if total else 0:5.1f}%"
    return ((node, ""), (fmt.count(items), ""), (share, "cyan"))


class TaskDetailScreen(Kept, Screen[None]):
    """One task: where it stands, which chunks are where, and who computed them."""

    DEFAULT_CSS = """
    TaskDetailScreen #summary {
        height: 3;
        padding: 0 1;
        background: $panel;
    }
    TaskDetailScreen #chunks-box {
        height: 2fr;
        border: round $primary 60%;
        border-title-style: bold;
    }
    TaskDetailScreen SharesTable {
        height: 1fr;
        border: round $primary 60%;
        border-title-style: bold;
    }
    """
    BINDINGS = [Binding("escape", "app.back", "Back")]

    class Ready(Message):
        """The screen's widgets exist: it can be shown its task."""

    def __init__(self, task_id: str = "") -> None:
        """The console keeps one of these and shows each task opened in it (``open``): composing
        and styling a new screen on every enter cost more than the 100 ms a key may take."""
        super().__init__()
        self.task_id = task_id
        self.ready = False

    def open(self, task_id: str) -> None:
        """Show ``task_id`` from now on; the App fills the screen before it is shown again."""
        if task_id == self.task_id:
            return
        self.task_id = task_id
        if self.ready:
            self.query_one(ChunkMap).show((), 0)
            self.query_one(SharesTable).move_cursor(row=0, scroll=False)

    def compose(self) -> ComposeResult:
        yield Summary(id="summary")
        with Vertical(id="chunks-box") as box:
            box.border_title = "Chunk map"
            yield ChunkMap(id="chunk-map")
        shares = SharesTable(id="shares")
        shares.border_title = "Items per node"
        yield shares
        yield FittedFooter()

    def on_mount(self) -> None:
        self.ready = True
        self.post_message(self.Ready())

    @property
    def selected_node_id(self) -> str | None:
        return self.query_one(SharesTable).selected_key if self.ready else None

    def show(self, row: TaskRow | None, chunks: tuple[ChunkView, ...] | None, shares: Mapping[str, int]) -> None:
        self.query_one("#summary", Summary).show(summary_text(self.task_id, row))
        self.query_one(ChunkMap).show(chunks, row.items if row else 0)
        self.query_one(SharesTable).show(shares)


def summary_text(task_id: str, row: TaskRow | None) -> Text:
    """The detail screen's top lines: who and what the task is, and how far along."""
    if row is None:
        return Text(f"Task {task_id} is no longer held by the front-end.", style="dim")
    style = TASK_STATE_STYLE.get(row.state, "")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"{row.task_id}  ", style="dim")
    text.append(row.name, style="bold")
    text.append("  ")
    text.append(row.state, style=style)
    text.append(f"  owner {row.owner}\n")
    text.append(fmt.progress_bar(row.items_done, row.items, 40), style=style or "cyan")
    text.append(f" {fmt.percent(row.items_done, row.items)}\n")
    text.append(f"{fmt.count(row.items_done)}/{fmt.count(row.items)} items")
    if row.items_failed:
        text.append(f" · {fmt.count(row.items_failed)} failed", style="red")
    text.append(f" · {fmt.rate(task_rate(row))}")
    if row.state in ("queued", "running"):
        text.append(f" · ETA {fmt.eta(row.items - row.items_done, row.items_per_s)}")
    elif row.wall_s is not None:
        text.append(f" · took {fmt.duration(row.wall_s)}")
    if row.waiting:
        text.append(f" · waiting: {row.waiting}", style="yellow")
    return text
