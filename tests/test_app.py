"""Pilot tests of the console against a real in-process front-end: every key, on
127.0.0.1 port 0 with a temporary state directory, and real local nodes where a key
needs one."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest
from textual.command import CommandList, CommandPalette
from textual.pilot import Pilot
from textual.widgets import Input

from console.tui.app import KEY_ACTIONS, ConsoleApp
from console.engine.host import Host
from console.engine.keys import Role
from console.ssh.server import ServerSettings
from console.engine.statedir import StateDir
from console.tui.detail import ChunkMap, TaskDetailScreen
from console.tui.keys import PendingKeysModal
from console.tui.main import MainScreen
from console.tui.modals import ConfirmModal, HelpModal, ProblemsModal
from console.tui.status import StatusHeader
from console.tui.tables import NodesTable, TasksTable
from protocol.taskfile import parse_task
from tests.conftest import wait_until
from tests.reference import check_npz
from tests.test_app_snapshots import still_app

pytestmark = pytest.mark.timeout(60)

SIZE = (130, 40)
TASK = {"name": "inv-small", "operation": "invert", "chunk_size": 5,
        "inputs": {"a": {"generate": {"count": 40, "shape": [8, 8], "seed": 3, "distribution": "normal"}}}}


def make_app(tmp_path: Path, local_nodes: int = 0, port: int = 0) -> ConsoleApp:
    host = Host(StateDir(tmp_path / "state"), ServerSettings(port=port), local_nodes)
    return ConsoleApp(host, refresh_s=0.1)


async def submit(app: ConsoleApp, document: dict = TASK) -> str:
    assert app.host.frontend is not None
    task_id = await app.host.frontend.submit(parse_task(document), "operator")
    app.refresh_views()
    return task_id


def task_state(app: ConsoleApp, task_id: str) -> str:
    assert app.host.frontend is not None
    return next(r.state for r in app.host.frontend.task_rows() if r.task_id == task_id)


def node_state(app: ConsoleApp, node_id: str) -> str | None:
    assert app.host.frontend is not None
    return next((r.state for r in app.host.frontend.node_rows() if r.node_id == node_id), None)


async def connected(pilot: Pilot, app: ConsoleApp, count: int = 1) -> None:
    """Wait until ``count`` local nodes are in and shown."""
    await wait_until(lambda: sum(n.state == "idle" for n in app.snapshot.nodes) >= count, 20, "nodes to join")
    await pilot.pause()


async def shown(pilot: Pilot, predicate: Callable[[], bool], what: str) -> None:
    await wait_until(predicate, 10, what)
    await pilot.pause()


def enabled(app: ConsoleApp) -> dict[str, bool]:
    """Each console key: shown enabled (True) or dimmed (False) in the footer now."""
    active = app.screen.active_bindings
    return {a.action: active[a.key].enabled for a in KEY_ACTIONS if a.key in active}


# -- the screen --------------------------------------------------------------------------------


async def test_header_shows_the_bound_address_host_key_and_totals(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await submit(app)
        await pilot.pause()
        assert app.host.server is not None
        port = app.host.server.address[1]
        key = asyncssh.read_private_key(app.host.state.host_key)
        text = str(app.main.query_one(StatusHeader).render())
        assert f"127.0.0.1:{port}" in text
        assert key.get_fingerprint("sha256") in text
        assert "tasks 0 running, 1 queued" in text


async def test_a_running_console_makes_its_full_collections_itself_and_gives_them_back(tmp_path: Path) -> None:
    import gc

    from console.tui.collector import NEVER

    before = gc.get_threshold()
    app = make_app(tmp_path)
    app.collector.every_s = 0.0  # one after every refresh tick
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: app.collector.collections >= 2, 10, "full collections after refreshes")
        assert gc.get_threshold()[2] == NEVER and gc.get_freeze_count() > 0
        await pilot.pause()
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


async def test_a_port_in_use_ends_the_console_with_one_line_and_status_3(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = make_app(tmp_path, port=taken.getsockname()[1])
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
        assert app.return_code == 3
        assert not (tmp_path / "state" / "endpoint.json").exists()


# -- submit ------------------------------------------------------------------------------------


async def pick(pilot: Pilot, app: ConsoleApp, path: Path) -> None:
    """Type ``path`` into the open file picker and press enter, as an operator would."""
    await shown(pilot, lambda: app.screen.query(Input).first() is not None and not isinstance(app.screen, MainScreen),
                "the file picker")
    box = app.screen.query_one(Input)
    box.focus()
    box.value = str(path)
    await pilot.press("enter")


async def test_submit_from_the_picker_puts_a_valid_task_in_the_table_at_once(tmp_path: Path) -> None:
    task_file = tmp_path / "good.json"
    task_file.write_text(json.dumps(TASK))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        await pick(pilot, app, task_file)
        await shown(pilot, lambda: app.main.query_one(TasksTable).row_count == 1, "the task row")
        table = app.main.query_one(TasksTable)
        (task_id,) = app.host.frontend.tasks
        assert table.get_cell(task_id, "name").plain == "inv-small"
        assert table.get_cell(task_id, "state").plain == "queued"
        assert table.selected_key == task_id


async def test_one_enter_on_a_file_in_the_picker_submits_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from textual_fspicker.parts import DirectoryNavigation

    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "good.json").write_text(json.dumps(TASK))
    monkeypatch.chdir(folder)
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        await shown(pilot, lambda: bool(app.screen.query(DirectoryNavigation)), "the file picker")
        navigation = app.screen.query_one(DirectoryNavigation)
        navigation.focus()
        await pilot.pause()
        # The list holds the parent folder, then good.json: move onto the file, one enter.
        await shown(pilot, lambda: navigation.option_count == 2, "the folder's entries")
        await pilot.press("home", "down", "enter")
        await shown(pilot, lambda: app.main.query_one(TasksTable).row_count == 1, "the task row")
        assert isinstance(app.screen, MainScreen)


async def test_the_task_screen_offers_submit_in_its_palette(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await submit(app)
        app.main.query_one(TasksTable).focus()
        await pilot.press("enter")
        await shown(pilot, lambda: isinstance(app.screen, TaskDetailScreen), "the task screen")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Submit a task file" in titles
        assert enabled(app)["submit"] is True


async def test_an_invalid_task_file_opens_a_modal_listing_each_problem(tmp_path: Path) -> None:
    bad = {**TASK, "max_attempts": 0, "chunk_size": "big"}
    task_file = tmp_path / "bad.json"
    task_file.write_text(json.dumps(bad))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s")
        await pick(pilot, app, task_file)
        await shown(pilot, lambda: isinstance(app.screen, ProblemsModal), "the problems modal")
        problems = app.screen.problems
        assert any(p.startswith("max_attempts:") for p in problems)
        assert any(p.startswith("chunk_size:") for p in problems)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        assert app.host.frontend is not None and app.host.frontend.task_rows() == []


# -- tasks -------------------------------------------------------------------------------------


async def test_cancel_asks_naming_the_task_and_only_yes_cancels(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        task_id = await submit(app)
        app.main.query_one(TasksTable).focus()
        await pilot.press("c")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        assert f"Cancel task {task_id} (inv-small" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert task_state(app, task_id) == "queued"
        await pilot.press("c")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        await pilot.press("y")
        await wait_until(lambda: task_state(app, task_id) == "cancelled", 5, "the task to be cancelled")
        await shown(pilot, lambda: app.main.query_one(TasksTable).get_cell(task_id, "state").plain == "cancelled",
                    "the cancelled state")
        assert enabled(app)["cancel_task"] is False


async def test_delete_asks_naming_the_task_and_removes_a_finished_one(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        task_id = await submit(app)
        table = app.main.query_one(TasksTable)
        table.focus()
        await pilot.pause()
        assert enabled(app)["delete_task"] is False  # a queued task cannot be deleted
        assert app.host.frontend is not None
        app.host.frontend.cancel(task_id)
        await shown(pilot, lambda: table.get_cell(task_id, "state").plain == "cancelled", "the cancelled state")
        assert enabled(app)["delete_task"] is True
        await pilot.press("x")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        assert f"Delete task {task_id} (inv-small" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert task_id in app.host.frontend.tasks
        await pilot.press("x")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        await pilot.press("y")
        # The task leaves the list first; its files go on a thread, then its journal rows.
        await wait_until(lambda: any(e.kind == "deleted" and e.task_id == task_id for e in app.host.frontend.events),
                         5, "the task to be deleted")
        assert task_id not in app.host.frontend.tasks
        assert not app.host.state.task_dir(task_id).exists()
        await shown(pilot, lambda: table.row_count == 0, "the row to go")


async def test_enter_opens_the_task_detail_with_its_chunk_map(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        task_id = await submit(app)
        app.main.query_one(TasksTable).focus()
        await pilot.press("enter")
        await shown(pilot, lambda: isinstance(app.screen, TaskDetailScreen), "the detail screen")
        await shown(pilot, lambda: app.screen.query_one(ChunkMap).chunks, "the chunk map drawn")
        chunk_map = app.screen.query_one(ChunkMap)
        assert app.screen.task_id == task_id
        assert chunk_map.items == 40 and chunk_map.chunks
        assert "queued 0" in chunk_map.legend_text.plain and "40 items not yet chunked" in chunk_map.legend_text.plain
        assert enabled(app)["cancel_task"] is True  # c applies to the task shown
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_save_results_writes_the_npz_chosen_in_the_save_dialog(tmp_path: Path) -> None:
    app = make_app(tmp_path, local_nodes=1)
    async with app.run_test(size=SIZE) as pilot:
        task_id = await submit(app)
        await wait_until(lambda: task_state(app, task_id) == "done", 30, "the task to finish")
        await shown(pilot, lambda: app.snapshot.tasks_by_id[task_id].state == "done", "the done state")
        app.main.query_one(TasksTable).focus()
        await pilot.press("r")
        out = tmp_path / "out" / "results.npz"
        out.parent.mkdir()
        await pick(pilot, app, out)
        await wait_until(out.exists, 10, "the results file")
        assert check_npz(out, TASK) == 40


# -- nodes -------------------------------------------------------------------------------------


async def test_drain_tells_the_selected_node_to_finish_and_leave(tmp_path: Path) -> None:
    app = make_app(tmp_path, local_nodes=1)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        assert app.main.query_one(NodesTable).selected_key == "local1"
        assert enabled(app)["drain"] is True
        await pilot.press("d")
        await wait_until(lambda: node_state(app, "local1") in ("draining", "drained"), 5, "the drain")
        assert app.host.frontend is not None
        kinds = [(e.kind, e.node_id) for e in app.host.frontend.events]
        assert ("drain", "local1") in kinds
        # A drained node finishes what it holds, says goodbye and its process ends.
        await asyncio.to_thread(app.host.nodes[0].wait, 10)
        await shown(pilot, lambda: app.main.query_one(NodesTable).get_cell("local1", "state").plain == "drained",
                    "the node to be gone")
        assert enabled(app)["drain"] is False
    # The console keeps the same events in its log file, the operator's action among them.
    log = (tmp_path / "state" / "logs" / "frontend.log").read_text()
    assert " join " in log and "drain local1 by the console" in log


async def test_kick_asks_naming_the_node_declined_keeps_it_confirmed_drops_it(tmp_path: Path) -> None:
    app = make_app(tmp_path, local_nodes=1)
    async with app.run_test(size=SIZE) as pilot:
        await connected(pilot, app)
        await pilot.press("k")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        assert "Kick node local1" in app.screen.question
        await pilot.press("n")
        await pilot.pause(0.3)
        assert node_state(app, "local1") == "idle"
        await pilot.press("k")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        await pilot.press("y")
        await wait_until(lambda: node_state(app, "local1") == "kicked", 5, "the node to be kicked")
        assert app.host.frontend is not None
        assert ("kick", "local1") in [(e.kind, e.node_id) for e in app.host.frontend.events]


async def test_approve_lists_pending_keys_and_authorizes_the_chosen_one(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        assert enabled(app)["approve"] is False
        assert app.host.server is not None
        registry = app.host.server.registry
        stranger = asyncssh.generate_private_key("ssh-ed25519")
        fingerprint = stranger.get_fingerprint("sha256")
        registry.note_refused(stranger, "10.1.2.3:4444")  # what the server does for an unknown node key
        await shown(pilot, lambda: app.snapshot.pending_keys == 1, "the pending key")
        assert enabled(app)["approve"] is True
        await pilot.press("a")
        await shown(pilot, lambda: isinstance(app.screen, PendingKeysModal), "the pending keys")
        assert [k.fingerprint for k in app.screen.pending] == [fingerprint]
        await pilot.press("enter")
        await wait_until(lambda: registry.find(fingerprint) is not None, 5, "the key to be authorized")
        entry = registry.find(fingerprint)
        assert entry is not None and entry.role is Role.NODE
        assert registry.pending() == []
        await shown(pilot, lambda: app.snapshot.pending_keys == 0, "no pending keys")
        assert enabled(app)["approve"] is False


async def test_release_applies_only_to_a_quarantined_node(tmp_path: Path) -> None:
    # No real node gets itself quarantined in a second; the scripted front-end has one.
    app = still_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        nodes = app.main.query_one(NodesTable)
        assert nodes.selected_key == "gpu-01" and enabled(app)["release"] is False
        await pilot.press("u")
        nodes.select_key("old-box")
        await pilot.pause()
        assert enabled(app)["release"] is True
        await pilot.press("u")
        assert app.host.frontend.released == ["old-box"]


# -- the rest of the keys ----------------------------------------------------------------------


async def test_actions_that_cannot_apply_are_dimmed_and_come_back_with_a_selection(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        state = enabled(app)
        assert {a for a, on in state.items() if not on} == {"drain", "kick", "release", "cancel_task",
                                                            "save_results", "delete_task", "approve",
                                                            "mark", "remove_node", "restart_node"}
        await submit(app)
        await pilot.pause()
        state = enabled(app)
        assert state["cancel_task"] is True and state["save_results"] is False
        # A dimmed key does nothing.
        await pilot.press("k")
        await pilot.pause()
        assert isinstance(app.screen, MainScreen)


async def test_slash_filters_both_tables_and_escape_clears_it(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await submit(app, {**TASK, "name": "alpha"})
        await submit(app, {**TASK, "name": "beta"})
        await pilot.pause()
        tasks = app.main.query_one(TasksTable)
        assert tasks.row_count == 2
        await pilot.press("slash", "a", "l", "p")
        await pilot.pause()
        alpha = next(t for t, r in app.host.frontend.tasks.items() if r.name == "alpha")
        assert [k.value for k in tasks.rows] == [alpha]
        assert "filter: alp" in str(tasks.border_title)
        await pilot.press("escape")
        await pilot.pause()
        assert tasks.row_count == 2
        assert not app.main.query_one("#filter", Input).has_class("-open")


async def test_help_lists_every_key(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await shown(pilot, lambda: isinstance(app.screen, HelpModal), "the help")
        listed = dict(app.screen.keys)
        for action in KEY_ACTIONS:
            assert (action.key_display or action.key) in listed
        assert "enter" in listed and "ctrl+p" in listed
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_the_palette_offers_what_applies_and_runs_it(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        task_id = await submit(app)
        app.main.query_one(TasksTable).focus()
        await pilot.pause()
        titles = [c.title for c in app.get_system_commands(app.main)]
        assert f"Cancel task {task_id} (inv-small)" in titles
        assert not any(t.startswith(("Drain", "Kick", "Save results", "Approve")) for t in titles)
        await pilot.press("ctrl+p")
        await shown(pilot, lambda: isinstance(app.screen, CommandPalette), "the palette")
        app.screen.query_one(Input).value = "cancel task"
        await shown(pilot, lambda: app.screen.query_one(CommandList).option_count > 0, "the matching command")
        await pilot.press("enter")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        assert task_id in app.screen.question


# -- quit --------------------------------------------------------------------------------------


async def test_quit_asks_while_tasks_run_and_stops_the_front_end(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await submit(app)
        endpoint = app.host.state.endpoint
        assert endpoint.exists()
        await pilot.press("q")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        (task_id,) = app.host.frontend.tasks
        assert f"1 task is still running or queued ({task_id})" in app.screen.question
        await pilot.press("n")
        await pilot.pause()
        assert app.is_running and endpoint.exists()
        await pilot.press("q")
        await shown(pilot, lambda: isinstance(app.screen, ConfirmModal), "the confirm modal")
        await pilot.press("y")
        await wait_until(lambda: not endpoint.exists(), 10, "the server to close")
    assert app.return_code == 0
    # The unfinished task is journaled: the next start resumes it.
    assert app.host.frontend is not None and app.host.frontend.tasks[task_id].state == "queued"


async def test_quit_with_nothing_running_does_not_ask(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        endpoint = app.host.state.endpoint
        await pilot.press("q")
        await wait_until(lambda: not endpoint.exists(), 10, "the server to close")
        assert not isinstance(app.screen, ConfirmModal)
    assert app.return_code == 0
