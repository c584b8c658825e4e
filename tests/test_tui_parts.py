"""The console's parts on their own: cell formatting, throughput, the chunk map's cells,
and the keyed reconciliation of tables (no front-end, no SSH)."""

from __future__ import annotations

import pytest
from textual.app import App, ComposeResult
from textual.coordinate import Coordinate
from textual.widgets import DataTable

from console.tui import formatting as fmt
from console.engine.records import NodeRow, TaskRow
from console.tui.detail import SharesTable, chunk_cells, legend
from console.tui.status import ClusterTotals, ThroughputMeter
from console.tui.tables import NodesTable, TasksTable, task_cells
from protocol.dispatch_events import ChunkState, ChunkView

Q, R, D, T, F = ChunkState.QUEUED, ChunkState.RUNNING, ChunkState.DONE, ChunkState.RETRIED, ChunkState.FAILED


# -- formatting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("done", "total", "bar"), [
    (0, 100, "░░░░░░░░"),
    (50, 100, "████░░░░"),
    (100, 100, "████████"),
    (1, 64, "▏░░░░░░░"),   # one eighth of one cell
    (7, 64, "▉░░░░░░░"),
    (200, 100, "████████"),  # never overflows
    (0, 0, "░░░░░░░░"),
])
def test_progress_bar_fills_in_eighths_and_keeps_its_width(done: int, total: int, bar: str) -> None:
    assert fmt.progress_bar(done, total, 8) == bar
    assert len(fmt.progress_bar(done, total, 8)) == 8


def test_percent_reaches_100_only_when_everything_is_done() -> None:
    assert fmt.percent(9_999, 10_000) == "99%"
    assert fmt.percent(10_000, 10_000) == "100%"


@pytest.mark.parametrize(("per_s", "text"), [
    (0.0, "—"), (float("nan"), "—"), (3.21, "3.2/s"), (850.4, "850/s"), (1234.0, "1,234/s"),
    (12_400.0, "12.4k/s"), (25_000_000.0, "25.0M/s"),
])
def test_rate(per_s: float, text: str) -> None:
    assert fmt.rate(per_s) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "—"), (-1.0, "—"), (42.9, "42s"), (187.0, "3m07s"), (7500.0, "2h05m"), (273_600.0, "3d04h"),
])
def test_duration(seconds: float | None, text: str) -> None:
    assert fmt.duration(seconds) == text


def test_eta_is_the_remaining_items_at_the_current_rate() -> None:
    assert fmt.eta(1000, 10.0) == "1m40s"
    assert fmt.eta(0, 10.0) == "—"
    assert fmt.eta(1000, 0.0) == "—"


def test_clock_age_and_chain() -> None:
    assert fmt.clock(3_725.9) == "1:02:05"
    assert fmt.age(0.43) == "0s" and fmt.age(2.9) == "2s" and fmt.age(75.0) == "1m15s" and fmt.age(None) == "—"
    assert fmt.chain(()) == "direct"
    assert fmt.chain(("relay-a", "relay-b")) == "relay-a → relay-b"


def test_a_task_row_shows_eta_only_while_live_and_average_rate_once_finished() -> None:
    running = TaskRow("t1", "inv", "op", "running", 1000, 250, 3, 0.0, None, 50.0)
    cells = [text for text, _ in task_cells(running)]
    assert cells[5] == "250/1,000" and cells[6] == "3" and cells[7] == "50/s" and cells[8] == "15s"
    done = TaskRow("t2", "inv", "op", "done", 1000, 1000, 0, 0.0, 4.0, 0.0)
    cells = [text for text, _ in task_cells(done)]
    assert cells[7] == "250/s" and cells[8] == "—"
    assert cells[4].endswith("100%")


# -- throughput and totals ----------------------------------------------------------------------


def test_throughput_meter_buckets_items_per_second_and_ignores_the_first_total() -> None:
    meter = ThroughputMeter(window_s=5)
    meter.observe(100.2, 5_000)   # resumed work already done: a baseline, not a burst
    meter.observe(100.7, 5_040)
    meter.observe(101.3, 5_100)
    meter.observe(102.1, 5_100)
    meter.observe(103.5, 5_190)
    assert meter.series(104.0) == [0.0, 40.0, 60.0, 0.0, 90.0]
    # The rate's window (10 s) still holds every sample: 190 items since the oldest, at 100.2,
    # which only marks where the span starts (its total was the baseline).
    assert meter.current(104.0) == pytest.approx(190 / 3.8)
    # Long after the last burst the rate has gone back to zero.
    assert meter.current(114.0) == 0.0


def test_throughput_meter_forgets_seconds_older_than_its_window_and_survives_a_falling_total() -> None:
    meter = ThroughputMeter(window_s=3)
    meter.observe(10.0, 0)
    meter.observe(10.5, 30)
    meter.observe(20.0, 10)      # a task was forgotten: a new baseline, no negative rate
    meter.observe(20.5, 25)
    assert meter.series(21.0) == [0.0, 0.0, 15.0]
    assert min(meter.series(21.0)) >= 0


def test_cluster_totals_count_connected_nodes_only() -> None:
    nodes = [
        NodeRow("a", "a", "busy", 4, 2, 10, 0, (), "x", 0.1, 1.0),
        NodeRow("b", "b", "draining", 2, 1, 10, 0, (), "x", 0.1, 1.0),
        NodeRow("c", "c", "lost", 8, 0, 0, 0, (), "x", None, 0.0),
    ]
    tasks = [
        TaskRow("t1", "x", "op", "running", 10, 4, 0, 0.0, None, 1.0),
        TaskRow("t2", "x", "op", "queued", 10, 0, 0, 0.0, None, 0.0),
        TaskRow("t3", "x", "op", "done", 10, 10, 0, 0.0, 1.0, 0.0),
    ]
    totals = ClusterTotals.of(nodes, tasks, pending_keys=2)
    assert (totals.nodes, totals.lost, totals.slots) == (2, 1, 6)
    assert (totals.running, totals.queued, totals.items_done, totals.pending_keys) == (1, 1, 14, 2)


# -- the chunk map ------------------------------------------------------------------------------


def view(chunk: int, start: int, stop: int, state: ChunkState) -> ChunkView:
    return ChunkView(chunk, start, stop, state, 1)


def test_chunk_map_gives_one_cell_per_chunk_when_they_fit() -> None:
    chunks = [view(1, 10, 20, R), view(0, 0, 10, D), view(2, 20, 30, F)]
    cells, what = chunk_cells(chunks, 30, capacity=10)
    assert cells == [D, R, F]  # in item order, whatever order they came in
    assert what == "1 cell = 1 chunk"


def test_chunk_map_merges_chunks_into_cells_and_keeps_the_most_urgent_state_visible() -> None:
    chunks = [view(i, i * 10, i * 10 + 10, D) for i in range(100)]
    chunks[57] = view(57, 570, 580, F)
    chunks[3] = view(3, 30, 40, T)
    cells, what = chunk_cells(chunks, 1000, capacity=10)
    assert len(cells) == 10
    assert cells[5] == F and cells[0] == T
    assert cells.count(D) == 8
    assert what == "1 cell ≈ 100 items"


def test_chunk_map_spreads_items_not_yet_chunked_over_their_share_of_cells() -> None:
    # Two carved chunks, then the rest of the task not carved yet (chunk -1).
    chunks = [view(0, 0, 100, D), view(1, 100, 200, R), view(-1, 200, 1000, Q)]
    cells, _ = chunk_cells(chunks, 1000, capacity=10)
    assert cells == [D, R] + [Q] * 8
    text = legend(chunks, "x").plain
    assert "done 1" in text and "running 1" in text and "800 items not yet chunked" in text


def test_chunk_map_of_10000_chunks_fits_the_screen() -> None:
    chunks = [view(i, i * 5, i * 5 + 5, D if i < 6000 else Q) for i in range(10_000)]
    cells, _ = chunk_cells(chunks, 50_000, capacity=2_000)
    assert len(cells) == 2_000
    assert cells[:1200] == [D] * 1200 and cells[1200:] == [Q] * 800


# -- keyed reconciliation -----------------------------------------------------------------------


class OneTable(App[None]):
    def compose(self) -> ComposeResult:
        yield NodesTable(id="nodes")
        yield TasksTable(id="tasks")


def node(node_id: str, state: str = "idle", items: int = 0) -> NodeRow:
    return NodeRow(node_id, node_id, state, 2, 0, items, 0, (), "127.0.0.1:1", 0.2, 0.0)


async def test_tables_reconcile_by_row_key_without_ever_clearing(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refresh must not clear the table")

    monkeypatch.setattr(DataTable, "clear", forbidden)
    app = OneTable()
    async with app.run_test() as pilot:
        table = app.query_one(NodesTable)
        table.show([node("a"), node("b"), node("c")])
        table.select_key("b")
        updates: list[tuple[str, str]] = []
        real_update = DataTable.update_cell

        def spy(self: DataTable, row_key: str, column_key: str, value: object, **kw: object) -> None:
            updates.append((str(row_key), str(column_key)))
            real_update(self, row_key, column_key, value, **kw)

        monkeypatch.setattr(DataTable, "update_cell", spy)
        changed = table.show([node("b", "busy", 40), node("c"), node("d")])
        await pilot.pause()
        assert changed
        assert [k.value for k in table.rows] == ["b", "c", "d"]
        assert table.selected_key == "b"  # the cursor follows the row, not the index
        # Only the cells whose text changed were touched.
        assert sorted(updates) == [("b", "items_done"), ("b", "state")]
        assert table.get_cell("b", "state").plain == "busy"
        updates.clear()
        assert not table.show([node("b", "busy", 40), node("c"), node("d")])
        assert updates == []


async def test_a_refresh_draws_again_only_the_cells_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    app = OneTable()
    async with app.run_test(size=(140, 40)) as pilot:
        table = app.query_one(NodesTable)
        rows = [node(f"n{i:02d}") for i in range(20)]
        table.show(rows)
        await pilot.pause()
        drawn: list[tuple[int, int]] = []
        real = DataTable._render_cell

        def spy(self: DataTable, row: int, column: int, *args: object, **kwargs: object) -> object:
            drawn.append((row, column))
            return real(self, row, column, *args, **kwargs)

        monkeypatch.setattr(DataTable, "_render_cell", spy)
        table.show([node("n03", "busy", 5), *rows[:3], *rows[4:]])  # n03 changes and moves to the top
        await pilot.pause()
        state, items = (table.get_column_index(key) for key in ("state", "items_done"))
        body = {cell for cell in drawn if cell[0] >= 0}
        # n03's changed cells, and every cell of the rows that moved (n00-n02 went down one
        # place, n03 came up): nothing of the 16 rows below was drawn again.
        assert {(0, state), (0, items)} <= body
        assert {row for row, _ in body} == {0, 1, 2, 3}
        assert "busy" in table.render_line(1).text and "n03" in table.render_line(1).text
        assert "n00" in table.render_line(2).text and "idle" in table.render_line(2).text
        drawn.clear()
        table.show([node("n03", "busy", 7), *rows[:3], *rows[4:]])
        await pilot.pause()
        assert {cell for cell in drawn if cell[0] >= 0} == {(0, items)}
        assert "7" in table.render_line(1).text


async def test_a_filter_shows_only_rows_whose_text_matches() -> None:
    app = OneTable()
    async with app.run_test():
        table = app.query_one(NodesTable)
        rows = [node("gpu-01", "busy"), node("gpu-02", "idle"), node("cpu-01", "busy")]
        table.show(rows, "GPU")
        assert [k.value for k in table.rows] == ["gpu-01", "gpu-02"]
        table.show(rows, "busy")
        assert sorted(k.value for k in table.rows) == ["cpu-01", "gpu-01"]
        table.show(rows, "")
        assert table.row_count == 3


async def test_a_filter_dropping_most_rows_keeps_the_order_and_the_selected_row() -> None:
    app = OneTable()
    async with app.run_test() as pilot:
        table = app.query_one(NodesTable)
        rows = [node(f"node-{i:03d}") for i in range(1, 201)]
        table.show(rows)
        table.select_key("node-015")
        # 190 of 200 rows go at once (the table is emptied and the 10 that stay added back).
        table.show(rows, "node-01")
        await pilot.pause()
        assert [k.value for k in table.rows] == [f"node-01{d}" for d in range(10)]
        assert table.selected_key == "node-015"
        assert [table.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value for i in range(3)] == \
            ["node-010", "node-011", "node-012"]
        table.show(rows)
        await pilot.pause()
        assert table.row_count == 200 and table.selected_key == "node-015"
        assert table.coordinate_to_cell_key(Coordinate(199, 0)).row_key.value == "node-200"


async def test_shares_are_listed_biggest_first_and_the_cursor_stays_on_its_node() -> None:
    class Shares(App[None]):
        def compose(self) -> ComposeResult:
            yield SharesTable()

    app = Shares()
    async with app.run_test() as pilot:
        table = app.query_one(SharesTable)
        def order() -> list[str]:
            return [table.coordinate_to_cell_key(Coordinate(i, 0)).row_key.value for i in range(table.row_count)]

        table.show({"a": 10, "b": 30, "c": 20})
        assert order() == ["b", "c", "a"]
        table.select_key("c")
        table.show({"a": 50, "b": 30, "c": 20})
        await pilot.pause()
        assert order() == ["a", "b", "c"]
        assert table.selected_key == "c"
        assert table.get_cell("a", "share").plain.endswith("50.0%")


# -- small terminals ----------------------------------------------------------------------------


def test_a_narrow_table_drops_its_least_useful_columns_first() -> None:
    from console.tui.tables import Column, fitting_columns

    columns = (Column("a", "A", 10), Column("b", "B", 10, drop=2), Column("c", "C", 10, drop=1),
               Column("d", "D", 10))
    assert [c.key for c in fitting_columns(columns, 48)] == ["a", "b", "c", "d"]
    assert [c.key for c in fitting_columns(columns, 47)] == ["a", "c", "d"]  # b goes first
    assert [c.key for c in fitting_columns(columns, 35)] == ["a", "d"]
    assert [c.key for c in fitting_columns(columns, 5)] == ["a", "d"]  # never below the keepers


async def test_at_80_columns_the_node_table_keeps_state_progress_and_errors() -> None:
    app = OneTable()
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.query_one(NodesTable)
        table.show([node("a", "busy", 12)])
        await pilot.pause()
        assert "via" not in table.visible_columns and "state" in table.visible_columns
        assert {"items_done", "errors", "rate"} <= set(table.visible_columns)
        assert table.get_cell("a", "items_done").plain == "12"
        await pilot.resize_terminal(160, 24)
        await pilot.pause()
        # Wider again: the dropped columns are back, with the rows' values.
        assert table.visible_columns == tuple(c.key for c in NodesTable.COLUMNS)
        assert table.get_cell("a", "via").plain == "direct"


def test_the_header_gives_up_the_fingerprint_before_the_totals() -> None:
    from console.tui.status import HostIdentity, header_text

    identity = HostIdentity("127.0.0.1:8022", "SHA256:" + "x" * 43)
    totals = ClusterTotals(nodes=6, lost=1, slots=28, busy=3, running=2, queued=1, items_done=0, pending_keys=1)
    wide = header_text(identity, "0:01:02", totals, 0.0, 160).plain.splitlines()
    assert identity.fingerprint in wide[0] and "1 node key pending (a to approve)" in wide[1]
    narrow = header_text(identity, "0:01:02", totals, 0.0, 78).plain.splitlines()
    assert identity.fingerprint not in narrow[0] and "up 0:01:02" in narrow[0]
    assert all(len(line) <= 78 for line in narrow)
    assert "nodes 6 (1 lost)" in narrow[1] and "1 key pending (a)" in narrow[1]


def test_the_footer_keeps_quit_help_and_the_palette_and_fills_up_with_keys_that_apply() -> None:
    from console.tui.footer import Key, key_width, keys_that_fit

    def key(k: str, action: str, label: str, disabled: bool = False) -> Key:
        return Key(k, k, label, action, "", disabled)

    keys = [key("s", "submit", "Submit"), key("d", "drain", "Drain", disabled=True),
            key("k", "kick", "Kick"), key("?", "help", "Help"), key("q", "quit", "Quit"),
            key("^p", "app.command_palette", "palette")]
    everything = sum(key_width(k, True) for k in keys) + 1
    assert keys_that_fit(keys, everything, True) == keys
    tight = keys_that_fit(keys, key_width(keys[0], True) * 2 + 30, True)
    assert [k.action for k in tight] == ["submit", "kick", "help", "quit", "app.command_palette"]
    tiny = keys_that_fit(keys, 10, True)
    assert [k.action for k in tiny] == ["help", "quit", "app.command_palette"]
    # The filter key, when it applies, goes before the other keys.
    with_filter = [*keys[:3], key("/", "filter", "Filter"), *keys[3:]]
    room = sum(key_width(k, True) for k in with_filter if k.action in ("help", "quit", "filter")) + 12 + 9
    assert [k.action for k in keys_that_fit(with_filter, room, True)] == [
        "submit", "filter", "help", "quit", "app.command_palette"]


def test_a_task_no_node_can_run_shows_waiting_and_says_why() -> None:
    from console.tui.detail import summary_text
    from console.tui.node_detail import node_capabilities

    row = TaskRow("t1", "chol", "op", "queued", 10, 0, 0, 0.0, None, 0.0,
                  waiting="no connected node has operation cholesky")
    assert task_cells(row)[3] == ("waiting", "yellow")
    assert "waiting: no connected node has operation cholesky" in summary_text("t1", row).plain
    node = NodeRow("gpu1", "gpu1", "idle", 1, 0, 0, 0, (), "127.0.0.1", 0.1, 0.0,
                   {"cholesky": "1.0"}, {"gpu": 1})
    assert node_capabilities(node) == "the built-in operations, cholesky 1.0 · has gpu=1"
