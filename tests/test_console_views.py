"""What operators expect from k9s and htop, on the scripted cluster of the snapshot tests:
sort by column, a node's detail screen, the events filter and export, marking nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Input, RichLog

from console.tui.main import MainScreen
from console.tui.node_detail import NodeDetailScreen
from console.tui.tables import NodesTable, TasksTable
from tests.conftest import wait_until
from tests.test_app_snapshots import EVENTS, NODES, still_app, utc  # noqa: F401  (utc: the zone, autouse)

pytestmark = pytest.mark.timeout(60)
SIZE = (140, 40)


def order(table: NodesTable | TasksTable) -> list[str]:
    return [row.key.value for row in table.ordered_rows]


async def test_o_steps_through_the_columns_and_capital_o_turns_the_order_round(tmp_path: Path) -> None:
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        nodes = app.main.query_one(NodesTable)
        given = [n.node_id for n in NODES]
        assert order(nodes) == given
        await pilot.press("o")  # by name, A to Z
        assert order(nodes) == sorted(given)
        assert "by Node ▲" in str(nodes.border_title)
        await pilot.press("O")
        assert order(nodes) == sorted(given, reverse=True)
        nodes.sort_by("items_done")  # numbers: biggest first, by value, not by text
        app.main.show(app.snapshot, app.identity, "", 0.0, [])
        assert order(nodes) == [n.node_id for n in sorted(NODES, key=lambda n: -n.items_done)]
        nodes.sort_by(None)
        app.main.show(app.snapshot, app.identity, "", 0.0, [])
        assert order(nodes) == given
        # The cursor stays on its node whatever the order.
        nodes.select_key("laptop")
        await pilot.press("o")
        assert nodes.selected_key == "laptop"
        # The tasks table sorts on its own, when it has the focus.
        await pilot.press("tab", "o", "o", "o", "o")  # ID, Task, Owner, State
        tasks = app.main.query_one(TasksTable)
        assert tasks.sort_column == "state" and order(tasks)[:2] == ["t2", "t3"]  # running first


async def test_enter_on_a_node_opens_its_chain_standing_and_events(tmp_path: Path) -> None:
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        app.main.query_one(NodesTable).select_key("old-box")
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, NodeDetailScreen) and app.screen.ready, 5, "the node screen")
        await pilot.pause()
        screen = app.screen
        summary = str(screen.query_one("#node-summary").render())
        assert "console → old-box" in summary and "errors 3" in summary and "rejected results 1" in summary
        assert len(screen.query_one(RichLog).lines) == sum(1 for e in EVENTS if e.node_id == "old-box")
        # The node keys apply to it: u releases it here.
        await pilot.press("u")
        assert app.host.frontend.released == ["old-box"]
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        # A node behind a link shows the whole path.
        app.main.query_one(NodesTable).select_key("edge-07")
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, NodeDetailScreen) and app.screen.ready, 5, "the node screen")
        await pilot.pause()
        assert "console → relay-a → edge-07" in str(app.screen.query_one("#node-summary").render())


async def test_the_filter_narrows_the_events_too_and_export_writes_what_is_shown(tmp_path: Path,
                                                                                monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        log = app.main.query_one(RichLog)
        assert len(log.lines) == len(EVENTS)
        await pilot.press("slash", *"laptop", "enter")
        matching = [e for e in EVENTS if "laptop" in e.message]
        assert [e.message for e in app.main.shown_events] == [e.message for e in matching]
        assert len(log.lines) == len(matching)
        await pilot.press("e")
        await wait_until(lambda: bool(app.screen.query(Input)) and not isinstance(app.screen, MainScreen), 5,
                         "the save dialog")
        box = app.screen.query_one(Input)
        box.value = str(tmp_path / "laptop.log")
        box.focus()
        await pilot.press("enter")
        await wait_until((tmp_path / "laptop.log").exists, 5, "the exported file")
        lines = (tmp_path / "laptop.log").read_text().splitlines()
        assert len(lines) == len(matching)
        assert lines[0].startswith("2023-11-14T22:13:29.000Z lost ") and "laptop" in lines[0]
        await pilot.press("escape")  # the filter goes, every event is back
        assert len(log.lines) == len(EVENTS)


async def test_space_marks_nodes_and_escape_clears_the_marks(tmp_path: Path) -> None:
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        await pilot.press("space", "down", "space", "down", "space", "up", "space")  # gpu-01 and relay-a
        assert app.main.marked == {"gpu-01", "relay-a"}
        assert [n.node_id for n in app.nodes_to_act_on()] == ["gpu-01", "relay-a"]
        nodes = app.main.query_one(NodesTable)
        assert nodes.get_cell("gpu-01", "name").plain == "● gpu-01"
        assert "2 marked" in str(nodes.border_title)
        titles = [c.title for c in app.get_system_commands(app.main)]
        assert "Drain 2 marked nodes" in titles and "Kick 2 marked nodes" in titles
        await pilot.press("escape")
        assert app.main.marked == set() and nodes.get_cell("gpu-01", "name").plain == "gpu-01"
