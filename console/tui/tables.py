"""The nodes and tasks tables: DataTables reconciled by row key from front-end snapshots.

A refresh never clears a table (one exception: when most of its rows go at once, as when
a filter is typed, the few that stay are added to an emptied table). Rows are keyed by node or task id: a new id gets
``add_row``, a gone one ``remove_row``, and a kept one ``update_cell`` for just the cells
whose text changed — so the cursor, the scroll position and the cost of a refresh stay
put however many rows there are (Memray's ``AllocationTable``, Dolphie's process list).
Columns have fixed widths for the same reason: a width that follows the content would
make every refresh re-measure every row. A table too narrow for every column drops the
least useful ones first (each column's ``drop`` rank) and brings them back when it grows;
that happens on a resize, never on a refresh. Cells are compared as plain ``(text, style)``
pairs and become Rich ``Text`` only when they change: with 200 nodes, building and
comparing styled text for every cell on every refresh cost more than drawing the table.

Drawing, too, follows the cells that changed. DataTable forgets every drawn cell whenever
any cell changes, so each refresh with one new heartbeat age drew every visible cell again
through Rich — four fifths of a redraw's time with 200 nodes. ``KeyedTable`` keeps each
cell's drawing for as long as the cell holds the same text object at the same place, style
and width.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.message import Message
from textual.widgets import DataTable

from console.tui import formatting as fmt
from console.engine.records import NodeRow, TaskRow

Cell = tuple[str, str]
"""What a cell shows: its text and its Rich style."""
Cells = tuple[Cell, ...]

NODE_STATE_STYLE = {
    "connecting": "dim",
    "idle": "cyan",
    "busy": "green",
    "draining": "yellow",
    "quarantined": "bold red",
    "left": "dim",
    "drained": "dim yellow",
    "kicked": "red",
    "lost": "red",
}
TASK_STATE_STYLE = {
    "queued": "dim",
    "running": "bold cyan",
    "done": "green",
    "failed": "bold red",
    "cancelled": "yellow",
}
FINISHED_TASK_STATES = frozenset({"done", "failed", "cancelled"})
LIVE_TASK_STATES = frozenset({"queued", "running"})
CONNECTED_NODE_STATES = frozenset({"idle", "busy", "draining", "quarantined"})
PROGRESS_BAR_WIDTH = 12


SCROLLBAR_WIDTH = 2
"""Kept free at the right of a table for its vertical scrollbar."""
REBUILD_ABOVE = 20
"""A table losing more rows than this, and more than it keeps, is cleared and refilled."""


@dataclass(frozen=True)
class Column:
    """One table column: its key (for ``update_cell``), label and fixed width."""

    key: str
    label: str
    width: int
    right: bool = False
    drop: int = 0
    """When the table is too narrow, columns with the highest rank go first; 0: never dropped."""

    @property
    def cost(self) -> int:
        """Cells the column takes on screen: its width and a padding cell on each side."""
        return self.width + 2


def fitting_columns(columns: Sequence[Column], width: int) -> tuple[Column, ...]:
    """The columns that fit in ``width`` cells, dropping the highest ``drop`` ranks first."""
    shown = list(columns)
    for column in sorted((c for c in columns if c.drop), key=lambda c: -c.drop):
        if sum(c.cost for c in shown) <= width:
            break
        shown.remove(column)
    return tuple(shown)


class KeyedTable(DataTable):
    """A row-cursor DataTable whose rows follow a mapping of row key to cells.

    Rows show in the order given, or sorted by one column (``sort_by``): the order is
    applied only when it changed, so a steady table costs nothing to keep sorted.
    """

    COLUMNS: ClassVar[tuple[Column, ...]] = ()

    def __init__(self, *, id: str | None = None) -> None:
        self._drawn: dict[tuple[object, object], tuple[object, tuple, list[list[Segment]]]] = {}
        """Each cell's last drawing: (the cell's value, what else it was drawn with, its lines)."""
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown: dict[str, Cells] = {}
        self._visible: tuple[Column, ...] = self.COLUMNS
        self.sort_column: str | None = None
        """The key of the column rows are sorted by; None: in the order they are given."""
        self.sort_reverse = False
        """Sorted the other way round from the column's first direction."""
        for column in self.COLUMNS:
            self.add_column(self._label(column), width=column.width, key=column.key)

    def _label(self, column: Column) -> Text:
        return Text(column.label, justify="right" if column.right else "left")

    @property
    def visible_columns(self) -> tuple[str, ...]:
        """The keys of the columns shown, in order."""
        return tuple(c.key for c in self._visible)

    def on_resize(self) -> None:
        self.fit_columns(self.size.width - SCROLLBAR_WIDTH)

    def fit_columns(self, width: int) -> None:
        """Show the columns that fit in ``width`` cells; the rows keep their cells and cursor."""
        visible = fitting_columns(self.COLUMNS, width)
        if visible == self._visible:
            return
        selected = self.selected_key
        for column in self._visible:
            self.remove_column(column.key)
        self._visible = visible
        for column in visible:
            self.add_column(self._label(column), width=column.width, key=column.key)
        for key, cells in self._shown.items():
            for column, cell in self._cells_shown(cells):
                self.update_cell(key, column.key, self._text(column, cell))
        self.relabel()
        if selected is not None:
            self.select_key(selected)

    # -- drawing ------------------------------------------------------------------------------

    def _render_cell(self, row_index: int, column_index: int, base_style: Style, width: int,
                     cursor: bool = False, hover: bool = False) -> list[list[Segment]]:
        if row_index < 0 or column_index < 0:  # the header and row labels: as DataTable draws them
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        value = self._data[row_key].get(column_key)
        how = (row_index, column_index, base_style, width, cursor, hover, self.show_cursor, self._show_hover_cursor,
               self._pseudo_class_state)
        drawn = self._drawn.get((row_key, column_key))
        if drawn is not None and drawn[0] is value and drawn[1] == how:
            return drawn[2]
        lines = super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        if len(self._drawn) > 4 * max(1, self.row_count) * max(1, len(self.columns)):
            self._drawn.clear()  # rows come and go: forget the drawings of gone ones now and then
        self._drawn[(row_key, column_key)] = (value, how, lines)
        return lines

    def _clear_caches(self) -> None:
        super()._clear_caches()
        self._drawn.clear()

    def notify_style_update(self) -> None:
        self._drawn.clear()  # a theme or CSS change: every cell is drawn anew
        super().notify_style_update()

    def _cells_shown(self, cells: Cells) -> list[tuple[Column, Cell]]:
        shown = set(self._visible)
        return [(column, cell) for column, cell in zip(self.COLUMNS, cells) if column in shown]

    def relabel(self) -> None:
        """Redraw the column labels (a subclass marks the sort column in its label)."""

    def reconcile(self, rows: Mapping[str, Cells], query: str = "", order: Sequence[str] | None = None) -> bool:
        """Make the table show ``rows`` (those matching ``query``) in ``order`` (default: as given);
        True if anything changed."""
        if query:
            needle = query.casefold()
            rows = {key: cells for key, cells in rows.items() if _matches(cells, needle)}
        selected = self.selected_key
        changed = False
        gone = [key for key in self._shown if key not in rows]
        if len(gone) > REBUILD_ABOVE and len(gone) > len(self._shown) - len(gone):
            # ``remove_row`` renumbers every row after it: removing most of 200 rows one at a
            # time (a filter typed) cost more than the whole redraw. Start again from the few
            # rows that stay; they keep their cursor (below).
            self.clear()
            self._shown.clear()
            changed = True
        else:
            for key in gone:
                self.remove_row(key)
                del self._shown[key]
                changed = True
        for key, cells in rows.items():
            before = self._shown.get(key)
            if before is None:
                self.add_row(*(self._text(column, cell) for column, cell in self._cells_shown(cells)), key=key)
                changed = True
            elif before != cells:
                shown = set(self._visible)
                for column, old, new in zip(self.COLUMNS, before, cells):
                    if old != new and column in shown:
                        self.update_cell(key, column.key, self._text(column, new))
                changed = True
            self._shown[key] = cells
        wanted = [key for key in (order if order is not None else rows) if key in self._shown]
        if wanted != [row.key.value for row in self.ordered_rows]:
            self._put_in_order(wanted)
            changed = True
        # Removing a row above the cursor would leave the cursor on the next row's index:
        # keep it on the row the operator selected.
        if selected in self._shown and self.selected_key != selected:
            self.select_key(selected)
        return changed

    def _put_in_order(self, keys: list[str]) -> None:
        # DataTable sorts by cell values; each row's first cell is its own object, so its
        # identity says which row it is.
        first = self.ordered_columns[0].key if self.ordered_columns else None
        if first is None:
            return
        rank = {id(self.get_cell(key, first)): i for i, key in enumerate(keys)}
        self.sort(first, key=lambda cell: rank.get(id(cell), len(rank)))

    def sort_by(self, column: str | None, reverse: bool = False) -> None:
        """Sort rows by ``column`` from the next refresh on (None: in the order given)."""
        self.sort_column, self.sort_reverse = column, reverse

    def next_sort(self) -> None:
        """Sort by the next shown column, then by none: what the sort key steps through."""
        keys = [None, *self.visible_columns]
        position = keys.index(self.sort_column) if self.sort_column in keys else 0
        self.sort_by(keys[(position + 1) % len(keys)])

    @property
    def sort_label(self) -> str:
        """``by Items done ▼`` for the table's title; "" when rows are in their own order."""
        column = next((c for c in self.COLUMNS if c.key == self.sort_column), None)
        if column is None:
            return ""
        descending = column.right != self.sort_reverse  # numbers go biggest first
        return f"by {column.label} {'▼' if descending else '▲'}"

    def sorted_keys(self, records: Mapping[str, Any], values: Mapping[str, Callable[[Any], Any]]) -> list[str] | None:
        """The row keys of ``records`` sorted by the sort column's value, or None when unsorted."""
        column = next((c for c in self.COLUMNS if c.key == self.sort_column), None)
        value = values.get(self.sort_column or "")
        if column is None or value is None:
            return None
        descending = column.right != self.sort_reverse
        # Ties keep the order given (sorted() is stable, also when reversed).
        return sorted(records, key=lambda key: value(records[key]), reverse=descending)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        """A click on a column's header sorts by it; a second click turns the order round."""
        event.stop()
        key = event.column_key.value
        self.sort_by(key, reverse=not self.sort_reverse if key == self.sort_column else False)
        self.post_message(self.SortChanged(self))

    class SortChanged(Message):
        """The operator chose how the table is sorted: redraw it now."""

        def __init__(self, table: KeyedTable) -> None:
            super().__init__()
            self.table = table

    @staticmethod
    def _text(column: Column, cell: Cell) -> Text:
        text, style = cell
        return Text(text, style=style, justify="right" if column.right else "left", no_wrap=True,
                    overflow="ellipsis")

    @property
    def selected_key(self) -> str | None:
        """The key of the row under the cursor, or None when the table is empty."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return row_key.value

    def select_key(self, key: str) -> None:
        """Put the cursor on the row ``key`` if it is shown."""
        if key in self._shown:
            self.move_cursor(row=self.get_row_index(key))


def _matches(cells: Cells, needle: str) -> bool:
    return any(needle in text.casefold() for text, _ in cells)


class NodesTable(KeyedTable):
    """Every node the front-end knows: connected ones, then recently lost ones."""

    COLUMNS = (
        Column("name", "Node", 16),
        Column("via", "Chain", 18, drop=3),
        Column("state", "State", 11),
        Column("slots", "Slots", 5, right=True, drop=2),
        Column("in_flight", "In flight", 9, right=True),
        Column("items_done", "Items done", 11, right=True),
        Column("rate", "Items/s", 8, right=True),
        Column("heartbeat", "Heartbeat", 9, right=True, drop=1),
        Column("errors", "Errors", 6, right=True),
    )

    def show(self, rows: list[NodeRow], query: str = "", marked: frozenset[str] = frozenset()) -> bool:
        records = {row.node_id: row for row in rows}
        cells = {key: node_cells(row, key in marked) for key, row in records.items()}
        return self.reconcile(cells, query, self.sorted_keys(records, NODE_SORT))


NODE_STATE_ORDER = {state: i for i, state in enumerate(
    ("busy", "idle", "draining", "connecting", "quarantined", "lost", "kicked", "drained", "left"))}
NODE_SORT: dict[str, Callable[[NodeRow], Any]] = {
    "name": lambda n: n.node_id.casefold(),
    "via": lambda n: fmt.chain(n.via).casefold(),
    "state": lambda n: NODE_STATE_ORDER.get(n.state, len(NODE_STATE_ORDER)),
    "slots": lambda n: n.slots,
    "in_flight": lambda n: n.in_flight,
    "items_done": lambda n: n.items_done,
    "rate": lambda n: n.items_per_s,
    "heartbeat": lambda n: math.inf if n.heartbeat_age_s is None else n.heartbeat_age_s,
    "errors": lambda n: n.errors,
}
"""What each column sorts by: the value, not its text (``12,480`` after ``9,000``)."""


MARK = "● "
"""Before the name of a node marked for an action on several nodes (space marks it)."""


def node_cells(row: NodeRow, marked: bool = False) -> Cells:
    """One node's cells, in ``NodesTable.COLUMNS`` order."""
    connected = row.state in CONNECTED_NODE_STATES
    name = row.name if row.name == row.node_id else f"{row.node_id} ({row.name})"
    return (
        (MARK + name if marked else name, "bold magenta" if marked else ""),
        (fmt.chain(row.via), "" if row.via else "dim"),
        (row.state, NODE_STATE_STYLE.get(row.state, "")),
        (str(row.slots), ""),
        (str(row.in_flight) if connected else fmt.DASH, ""),
        (fmt.count(row.items_done), ""),
        (fmt.rate(row.items_per_s) if connected else fmt.DASH, ""),
        (fmt.age(row.heartbeat_age_s), _age_style(row.heartbeat_age_s)),
        (str(row.errors), "red" if row.errors else ""),
    )


def _age_style(age: float | None) -> str:
    # A node silent for a few heartbeats is about to be declared lost: say so early.
    if age is None:
        return "dim"
    return "yellow" if age >= 3.0 else ""


class TasksTable(KeyedTable):
    """Every task the front-end holds, live or finished, in the order they came."""

    COLUMNS = (
        Column("task_id", "ID", 5),
        Column("name", "Task", 16),
        Column("owner", "Owner", 9, drop=3),
        Column("state", "State", 9),
        Column("progress", "Progress", PROGRESS_BAR_WIDTH + 5),
        Column("done", "Done/Total", 15, right=True, drop=2),
        Column("failed", "Failed", 6, right=True),
        Column("rate", "Items/s", 8, right=True, drop=1),
        Column("eta", "ETA", 7, right=True),
    )

    def show(self, rows: list[TaskRow], query: str = "") -> bool:
        records = {row.task_id: row for row in rows}
        cells = {key: task_cells(row) for key, row in records.items()}
        return self.reconcile(cells, query, self.sorted_keys(records, TASK_SORT))


TASK_STATE_ORDER = {state: i for i, state in enumerate(("running", "queued", "failed", "cancelled", "done"))}
TASK_SORT: dict[str, Callable[[TaskRow], Any]] = {
    "task_id": lambda t: t.submitted_at,
    "name": lambda t: t.name.casefold(),
    "owner": lambda t: t.owner.casefold(),
    "state": lambda t: TASK_STATE_ORDER.get(t.state, len(TASK_STATE_ORDER)),
    "progress": lambda t: t.items_done / t.items if t.items else 1.0,
    "done": lambda t: t.items_done,
    "failed": lambda t: t.items_failed,
    "rate": lambda t: task_rate(t),
    "eta": lambda t: (t.items - t.items_done) / t.items_per_s if t.items_per_s > 0 else math.inf,
}


def task_rate(row: TaskRow) -> float:
    """Items per second: the live rate while running, the average once finished."""
    if row.state in FINISHED_TASK_STATES:
        return row.items_done / row.wall_s if row.wall_s else 0.0
    return row.items_per_s


def task_cells(row: TaskRow) -> Cells:
    """One task's cells, in ``TasksTable.COLUMNS`` order."""
    style = TASK_STATE_STYLE.get(row.state, "")
    progress = (f"{fmt.progress_bar(row.items_done, row.items, PROGRESS_BAR_WIDTH)} "
                f"{fmt.percent(row.items_done, row.items):>4}")
    live = row.state in LIVE_TASK_STATES
    return (
        (row.task_id, ""),
        (row.name, ""),
        (row.owner, ""),
        ("waiting", "yellow") if row.waiting else (row.state, style),
        (progress, style or "cyan"),
        (f"{fmt.count(row.items_done)}/{fmt.count(row.items)}", ""),
        (fmt.count(row.items_failed), "red" if row.items_failed else "dim"),
        (fmt.rate(task_rate(row)), ""),
        (fmt.eta(row.items - row.items_done, row.items_per_s) if live else fmt.DASH, ""),
    )
