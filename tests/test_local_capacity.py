"""Local capacity from the console: add and remove local nodes, restart one that left, and a
warning before the last node that takes work goes (real front-end, real node processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from console.tui.modals import ConfirmModal
from console.tui.tables import NodesTable
from tests.conftest import wait_until
from tests.test_app import SIZE, enabled, make_app, node_state, shown, submit

pytestmark = pytest.mark.timeout(90)

SLOW = {"name": "inv-slow", "operation": "invert", "chunk_size": 1,
        "inputs": {"a": {"generate": {"count": 100_000, "shape": [64, 64], "seed": 1, "distribution": "normal"}}}}


async def test_plus_adds_local_nodes_minus_removes_one_and_t_restarts_it(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, lambda: app.host.server is not None, "the front-end")
        assert enabled(app)["remove_node"] is False  # no local node yet
        await pilot.press("plus")
        await pilot.press("plus")
        await wait_until(lambda: node_state(app, "local1") == "idle" and node_state(app, "local2") == "idle",
                         20, "two local nodes")
        await shown(pilot, lambda: app.main.query_one(NodesTable).row_count == 2, "two node rows")
        # (the two may join in either order)
        app.main.query_one(NodesTable).select_key("local1")
        await pilot.pause()
        # Remove takes the selected local node: it drains, leaves and its process ends.
        await pilot.press("minus")
        await wait_until(lambda: node_state(app, "local1") == "drained", 10, "local1 drained")
        await asyncio.to_thread(app.host.local["local1"].wait, 10)
        await shown(pilot, lambda: app.main.query_one(NodesTable).get_cell("local1", "state").plain == "drained",
                    "the drained row")
        assert enabled(app)["restart_node"] is True
        await pilot.press("t")
        await wait_until(lambda: node_state(app, "local1") == "idle", 20, "local1 back")
        await shown(pilot, lambda: enabled(app)["restart_node"] is False, "restart dimmed again")
        assert node_state(app, "local2") == "idle"


async def test_kicking_the_last_node_says_which_tasks_stall_and_asks(tmp_path: Path) -> None:
    app = make_app(tmp_path, local_nodes=1)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: node_state(app, "local1") == "idle", 20, "the node")
        task_id = await submit(app, SLOW)
        await pilot.pause()
        await pilot.press("k")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        assert isinstance(app.screen, ConfirmModal)
        assert f"1 task ({task_id}) will stall" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        # Draining it would stall the task as well: drain asks too, and no keeps it working.
        await pilot.press("d")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the drain question")
        assert "will stall" in app.screen.question
        await pilot.press("n")
        await pilot.pause(0.3)
        assert node_state(app, "local1") in ("idle", "busy")
        # With a second node there is no warning: drain just drains.
        await pilot.press("plus")
        await wait_until(lambda: node_state(app, "local2") in ("idle", "busy"), 20, "a second node")
        await pilot.pause(0.3)
        await pilot.press("d")
        await wait_until(lambda: node_state(app, "local1") in ("draining", "drained"), 10, "the drain")
        assert not isinstance(app.screen, ConfirmModal)
        assert app.host.frontend is not None
        app.host.frontend.cancel(task_id)


async def test_marked_nodes_are_drained_together_after_one_question(tmp_path: Path) -> None:
    app = make_app(tmp_path, local_nodes=3)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: all(node_state(app, f"local{i}") == "idle" for i in (1, 2, 3)), 30, "three nodes")
        await shown(pilot, lambda: app.main.query_one(NodesTable).row_count == 3, "three rows")
        table = app.main.query_one(NodesTable)
        for name in ("local1", "local2"):
            table.select_key(name)
            await pilot.press("space")
        await pilot.press("d")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the drain question")
        question = app.screen.question
        assert "local1" in question and "local2" in question and "local3" not in question
        await pilot.press("y")
        await wait_until(lambda: all(node_state(app, f"local{i}") in ("draining", "drained") for i in (1, 2)),
                         10, "both to drain")
        assert node_state(app, "local3") == "idle"
        assert app.main.marked == set()
