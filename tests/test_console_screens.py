"""The console keeps its screens and shows a key's effect with the key, not a refresh later.

The task, node and help screens are made once and reused; each is filled with the data
of the moment before it shows. These run with ``live=False`` — no refresh timer — so
whatever a screen shows after a key came from that key alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from textual.widgets import Static

from console.engine.host import Host
from console.engine.statedir import StateDir
from console.ssh.server import ServerSettings
from console.tui.app import ConsoleApp
from console.tui.detail import ChunkMap, TaskDetailScreen
from console.tui.main import MainScreen
from console.tui.modals import HelpModal
from console.tui.node_detail import NodeDetailScreen
from console.tui.tables import NodesTable, TasksTable
from tests.conftest import wait_until
from tests.test_app_snapshots import TASKS, still_app, utc  # noqa: F401  (utc: the zone, autouse)

pytestmark = pytest.mark.timeout(60)
SIZE = (130, 40)


def summary(app: ConsoleApp) -> str:
    return str(app.screen.query_one("#summary", Static).content)


async def test_the_task_screen_is_kept_and_shows_each_task_opened_with_its_data_of_now(tmp_path: Path) -> None:
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("tab", "down", "enter")  # t2, the one with a chunk map
        await wait_until(lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.ready, 5, "the task screen")
        await pilot.pause()
        screen = app.screen
        assert screen.task_id == "t2" and "eigvalsh-sym" in summary(app) and "6,240/20,000" in summary(app)
        assert screen.query_one(ChunkMap).items == 20_000
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        # Meanwhile t2 gets on; with no refresh timer only opening the screen can show it.
        frontend = app.host.frontend
        moved_on = [dataclasses.replace(t, items_done=7_000) if t.task_id == "t2" else t for t in TASKS]
        frontend.task_rows = lambda: list(moved_on)
        await pilot.press("up", "enter")  # t1: finished before this start, no chunk map kept
        await pilot.pause()
        assert app.screen is screen and screen.task_id == "t1"
        assert "invert-256" in summary(app) and screen.query_one(ChunkMap).chunks is None
        await pilot.press("escape", "down", "enter")
        await pilot.pause()
        assert app.screen is screen and screen.task_id == "t2"
        assert "7,000/20,000" in summary(app) and screen.query_one(ChunkMap).chunks


async def test_back_shows_the_main_screen_with_what_changed_while_it_was_covered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("tab", "down", "enter")
        await wait_until(lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.ready, 5, "the task screen")
        cancelled = [dataclasses.replace(t, state="cancelled") if t.task_id == "t3" else t for t in TASKS]
        app.host.frontend.task_rows = lambda: list(cancelled)
        seen: list[str] = []
        tasks = app.main.query_one(TasksTable)
        resumed = MainScreen.on_screen_resume

        def resume(screen: MainScreen) -> None:
            # What the main screen holds the moment it is current again, before any refresh.
            seen.append(tasks.get_cell("t3", "state").plain)
            resumed(screen)

        monkeypatch.setattr(MainScreen, "on_screen_resume", resume)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        assert seen == ["cancelled"]


async def test_the_node_screen_is_kept_and_shows_each_node_opened(tmp_path: Path) -> None:
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        nodes = app.main.query_one(NodesTable)
        nodes.select_key("old-box")
        await pilot.press("enter")
        await wait_until(lambda: isinstance(app.screen, NodeDetailScreen) and app.screen.ready, 5, "the node screen")
        await pilot.pause()
        screen = app.screen
        assert "old-box" in str(screen.query_one("#node-summary", Static).content)
        await pilot.press("escape")
        nodes.select_key("edge-07")
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen and screen.node_id == "edge-07"
        text = str(screen.query_one("#node-summary", Static).content)
        assert "edge-07" in text and "old-box" not in text and "relay-a" in text


async def test_help_is_the_same_screen_each_time(tmp_path: Path) -> None:
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        first = app.screen
        assert isinstance(first, HelpModal)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        await pilot.press("question_mark")
        assert app.screen is first
        await pilot.press("question_mark")  # ? closes it too
        assert isinstance(app.screen, MainScreen)


async def test_drain_shows_the_node_draining_with_the_key(tmp_path: Path) -> None:
    host = Host(StateDir(tmp_path / "state"), ServerSettings(port=0), 1)
    app = ConsoleApp(host, live=False)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: host.frontend is not None
                         and any(r.state == "idle" for r in host.frontend.node_rows()), 20, "the local node")
        app.refresh_views()  # no timer: show the node that joined
        await pilot.pause()
        table = app.main.query_one(NodesTable)
        assert table.get_cell("local1", "state").plain == "idle"
        await pilot.press("d")
        # No refresh timer runs: the row changed because the key brought it up to date.
        await wait_until(lambda: table.get_cell("local1", "state").plain in ("draining", "drained"), 5,
                         "the row to say draining")


async def test_switching_screens_back_and_forth_rebuilds_no_footer(tmp_path: Path) -> None:
    from console.tui.footer import FittedFooter

    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("tab", "down", "enter")
        await wait_until(lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.ready, 5, "the task screen")
        await pilot.press("escape", "question_mark", "escape")
        await pilot.pause()
        footers = (app.main.query_one(FittedFooter), app.task_screen.query_one(FittedFooter))
        built = [footer.rebuilds for footer in footers]
        main_keys = [k.key for k in footers[0].children]
        for _ in range(2):
            await pilot.press("enter")
            assert app.screen is app.task_screen
            await pilot.press("escape", "question_mark", "escape")
            await pilot.pause()
        # The same keys each time: dimmed or not is set in place, nothing is built again.
        assert [footer.rebuilds for footer in footers] == built
        assert [k.key for k in footers[0].children] == main_keys
        # The footer still follows what applies: delete is dimmed (or left out for keys that
        # apply) with the running t2 selected, and shown ready with the finished t1.
        assert {k.action: k.has_class("-disabled") for k in footers[0].children}.get("delete_task", True) is True
        await pilot.press("up")  # t1, done
        await pilot.pause()
        keys = {k.action: k.has_class("-disabled") for k in footers[0].children}
        assert keys.get("delete_task") is False


async def test_a_key_that_stops_applying_is_dimmed_in_place(tmp_path: Path) -> None:
    from console.tui.footer import FittedFooter

    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("tab", "down", "enter")  # t2: gpu-01 (busy) has the biggest share
        await wait_until(lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.ready, 5, "the task screen")
        await pilot.pause()
        footer = app.task_screen.query_one(FittedFooter)
        keys = list(footer.children)
        drain = next(k for k in keys if k.action == "drain")
        built = footer.rebuilds
        assert not drain.has_class("-disabled")
        await pilot.press("down", "down", "down")  # edge-08, already draining
        await pilot.pause()
        assert app.task_screen.selected_node_id == "edge-08"
        assert drain.has_class("-disabled") and drain._disabled
        assert list(footer.children) == keys and footer.rebuilds == built


def _drawn(app: ConsoleApp) -> str:
    """The screen as drawn, without the ids Textual gives each export."""
    import re

    return re.sub(r"terminal-\d+", "terminal", app.export_screenshot())


async def test_a_kept_screen_shown_again_draws_as_it_did_and_follows_a_new_theme(tmp_path: Path) -> None:
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("tab", "down", "enter")
        await wait_until(lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.ready, 5, "the task screen")
        await pilot.press("down")  # the shares table, focused, with its cursor on the second row
        await pilot.pause()
        first = _drawn(app)
        table = app.task_screen.query_one("#shares")
        dark = table.styles.background
        await pilot.press("escape", "enter")
        await pilot.pause()
        assert app.screen is app.task_screen and _drawn(app) == first
        await pilot.press("escape")
        await pilot.pause()
        app.theme = "textual-light" if app.current_theme.dark else "textual-dark"  # while it is hidden
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is app.task_screen and table.styles.background != dark
        assert _drawn(app) != first
