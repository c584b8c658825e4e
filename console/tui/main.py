"""The console's main screen: header, nodes, tasks, events and throughput."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Input, RichLog, Sparkline

from console.engine.records import Event
from console.tui.footer import FittedFooter
from console.tui.snapshot import ConsoleSnapshot
from console.tui.status import ClusterTotals, HostIdentity, StatusHeader
from console.tui.jobs import JobsTable
from console.tui.tables import NodesTable, TasksTable

EVENT_LINES = 1000
SHORT_BELOW = 32
"""Under this many lines the events panel shrinks so the tables keep several rows each."""
NARROW_BELOW = 100
"""Under this many columns the sparkline gives its room to the events (the header has the rate)."""
EVENT_STYLE = {
    "join": "green",
    "leave": "yellow",
    "lost": "bold red",
    "close": "red",
    "kick": "red",
    "drain": "yellow",
    "submitted": "cyan",
    "finished": "bold green",
    "cancel": "yellow",
    "requeue": "magenta",
    "abandon": "bold red",
    "invalid": "bold red",
    "quarantine": "bold red",
    "error": "bold red",
    "damaged": "bold red",
    "warning": "yellow",
}


def event_matches(event: Event, needle: str) -> bool:
    """Whether the events filter ``needle`` (casefolded) is in the event's kind, message or ids."""
    return not needle or any(needle in text.casefold()
                             for text in (event.kind, event.message, event.node_id, event.task_id))


def event_line(event: Event) -> Text:
    """One events-log line: local time, kind, message."""
    text = Text(no_wrap=True)
    text.append(time.strftime("%H:%M:%S ", time.localtime(event.time)), style="dim")
    text.append(f"{event.kind:<10} ", style=EVENT_STYLE.get(event.kind, "bold"))
    text.append(event.message)
    return text


class MainScreen(Screen[None]):
    """Everything at once; the App pushes a fresh snapshot into it on every refresh."""

    DEFAULT_CSS = """
    MainScreen NodesTable, MainScreen TasksTable {
        height: 1fr;
        border: round $primary 60%;
        border-title-style: bold;
    }
    MainScreen NodesTable:focus, MainScreen TasksTable:focus {
        border: round $accent;
    }
    MainScreen #bottom {
        height: 9;
    }
    MainScreen.-short #bottom {
        height: 6;
    }
    MainScreen.-narrow #throughput-box {
        display: none;
    }
    MainScreen RichLog {
        width: 2fr;
        border: round $primary 60%;
        border-title-style: bold;
    }
    MainScreen #throughput-box {
        width: 1fr;
        border: round $primary 60%;
        border-title-style: bold;
    }
    MainScreen Sparkline {
        height: 1fr;
    }
    MainScreen #filter {
        display: none;
        dock: bottom;
        margin-bottom: 1;
    }
    MainScreen #filter.-open {
        display: block;
    }
    """
    BINDINGS = [Binding("escape", "close_filter", "Clear filter", show=False)]
    # (escape clears the filter; with no filter it clears the marks)

    class Ready(Message):
        """The screen can be shown a snapshot: its widgets exist, or it is visible again."""

    def __init__(self) -> None:
        super().__init__()
        self.query_text = ""
        self.ready = False
        self._snapshot = ConsoleSnapshot()
        self._events: deque[Event] = deque(maxlen=EVENT_LINES)
        self.marked: set[str] = set()
        """Nodes marked (space) for drain or kick together."""

    def compose(self) -> ComposeResult:
        yield StatusHeader(id="header")
        nodes = NodesTable(id="nodes")
        nodes.border_title = "Nodes"
        yield nodes
        yield JobsTable(id="jobs")
        tasks = TasksTable(id="tasks")
        tasks.border_title = "Tasks"
        yield tasks
        with Horizontal(id="bottom"):
            log = RichLog(id="events", max_lines=EVENT_LINES, wrap=False, markup=False, auto_scroll=True)
            log.border_title = "Events"
            yield log
            with Vertical(id="throughput-box") as box:
                box.border_title = "Items/s, last minute"
                yield Sparkline([], id="throughput")
        yield Input(placeholder="filter rows (esc clears)", id="filter")
        yield FittedFooter()

    def on_mount(self) -> None:
        self.query_one(NodesTable).focus()
        # The App may have started the front-end before or after this: whichever comes
        # second brings the first snapshot.
        self.ready = True
        self.post_message(self.Ready())

    def on_resize(self) -> None:
        self.set_class(self.size.height < SHORT_BELOW, "-short")
        self.set_class(self.size.width < NARROW_BELOW, "-narrow")

    def on_screen_resume(self) -> None:
        # Back from a task's screen: the App skipped this screen meanwhile; ask for a snapshot now.
        if self.ready:
            self.post_message(self.Ready())

    # -- what the App pushes in ---------------------------------------------------------------

    def show(self, snapshot: ConsoleSnapshot, identity: HostIdentity, uptime: str, per_s: float,
             series: list[float]) -> None:
        self._snapshot = snapshot
        totals = ClusterTotals.of(list(snapshot.nodes), list(snapshot.tasks), snapshot.pending_keys)
        self.query_one(StatusHeader).show(identity, uptime, totals, per_s)
        self.query_one(Sparkline).data = series
        self.query_one(JobsTable).show(snapshot.jobs)
        self._show_rows()

    def add_events(self, events: Iterable[Event]) -> None:
        log = self.query_one(RichLog)
        needle = self.query_text.casefold()
        for event in events:
            self._events.append(event)
            if event_matches(event, needle):
                log.write(event_line(event))

    @property
    def shown_events(self) -> list[Event]:
        """The events the log shows now: those that match the filter, oldest first."""
        needle = self.query_text.casefold()
        return [e for e in self._events if event_matches(e, needle)]

    def _show_events(self) -> None:
        log = self.query_one(RichLog)
        log.clear()
        for event in self.shown_events:
            log.write(event_line(event))
        log.border_title = f"Events  filter: {self.query_text}" if self.query_text else "Events"

    def _show_rows(self) -> None:
        nodes, tasks = self.query_one(NodesTable), self.query_one(TasksTable)
        self.marked &= {n.node_id for n in self._snapshot.nodes}
        nodes.show(list(self._snapshot.nodes), self.query_text, frozenset(self.marked))
        tasks.show(list(self._snapshot.tasks), self.query_text)
        suffix = f"  filter: {self.query_text}" if self.query_text else ""
        marked = f" · {len(self.marked)} marked" if self.marked else ""
        titles = ((nodes, " ".join(filter(None, (f"Nodes ({nodes.row_count}){marked}", nodes.sort_label))) + suffix),
                  (tasks, " ".join(filter(None, (f"Tasks ({tasks.row_count})", tasks.sort_label))) + suffix))
        for table, title in titles:
            if table.border_title != title:  # setting it, even unchanged, redraws the table
                table.border_title = title

    # -- sorting and marking ------------------------------------------------------------------

    @property
    def focused_table(self) -> NodesTable | TasksTable:
        """The table the sort keys apply to: the focused one, else the nodes."""
        focused = self.focused
        return focused if isinstance(focused, (NodesTable, TasksTable)) else self.query_one(NodesTable)

    def sort_next(self, reverse: bool = False) -> None:
        table = self.focused_table
        if reverse:
            table.sort_by(table.sort_column, not table.sort_reverse)
        else:
            table.next_sort()
        self._show_rows()

    def on_keyed_table_sort_changed(self, message: NodesTable.SortChanged) -> None:
        self._show_rows()

    def toggle_mark(self) -> str | None:
        """Mark the selected node, or unmark it; the node's id."""
        node_id = self.selected_node_id
        if node_id is not None:
            self.marked ^= {node_id}
            self._show_rows()
        return node_id

    def clear_marks(self) -> None:
        if self.marked:
            self.marked.clear()
            self._show_rows()

    # -- selection ----------------------------------------------------------------------------

    @property
    def selected_node_id(self) -> str | None:
        return self.query_one(NodesTable).selected_key if self.ready else None

    @property
    def selected_task_id(self) -> str | None:
        return self.query_one(TasksTable).selected_key if self.ready else None

    def select_task(self, task_id: str) -> None:
        tasks = self.query_one(TasksTable)
        tasks.select_key(task_id)
        tasks.focus()

    async def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if isinstance(event.data_table, TasksTable):
            event.stop()
            await self.app.run_action("open_task")
        elif isinstance(event.data_table, NodesTable):
            event.stop()
            await self.app.run_action("open_node")

    # -- the filter ---------------------------------------------------------------------------

    def open_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("-open")
        box.focus()

    def action_close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        if box.has_class("-open") or box.value:
            box.value = ""
            box.remove_class("-open")
            self.query_one(NodesTable).focus()
        else:
            self.clear_marks()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value.strip()
        self._show_rows()
        self._show_events()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        # Enter keeps the filter and hands the keys back to the tables.
        if not event.value.strip():
            event.input.remove_class("-open")
        self.query_one(NodesTable).focus()
