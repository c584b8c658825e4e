"""Crash-safe submit and resume with a real state folder: damaged files fail their task, not the front-end.

Each test leaves a state folder as a crash (or a careless hand) could leave it, starts a
front-end on it and checks that it starts, that the damaged task is failed with its
reason, and that every other task resumes.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from console.engine import journal as journal_module
from console.engine.host import Host
from console.engine.keys import initialize
from console.engine.statedir import StateDir
from console.ssh.server import ServerSettings
from protocol.errors import ChainconsoleError
from protocol.taskfile import parse_task
from tests.conftest import REPO

pytestmark = pytest.mark.timeout(60)

ARRAYS = {"name": "arrays", "operation": "det", "chunk_size": 4,
          "inputs": {"a": {"inline": np.eye(3).reshape(1, 3, 3).repeat(12, axis=0).tolist()}}}
GENERATED = {"name": "generated", "operation": "invert", "chunk_size": 5,
             "inputs": {"a": {"generate": {"count": 20, "shape": [4, 4], "seed": 1}}}}


async def _queue_two(state: StateDir) -> tuple[str, str]:
    """Submit a task with array inputs and one with generated inputs; stop before any node computes."""
    async with Host(state, ServerSettings(port=0)) as host:
        arrays = await host.frontend.submit(parse_task(ARRAYS), "operator")
        generated = await host.frontend.submit(parse_task(GENERATED), "operator")
    return arrays, generated


async def _states_after_restart(state: StateDir) -> tuple[dict[str, str], dict[str, dict]]:
    async with Host(state, ServerSettings(port=0)) as host:
        rows = {r.task_id: r.state for r in host.frontend.task_rows()}
        summaries = {t: r.summary or {} for t, r in host.frontend.tasks.items()}
        assert not [e for e in host.frontend.events if e.kind == "error"]
    return rows, summaries


def _sql(state: StateDir, statement: str, *args) -> None:
    with sqlite3.connect(state.journal) as db:
        db.execute(statement, args)


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    state = StateDir(tmp_path / "state")
    initialize(state)
    return state


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("damage", ["truncated", "missing", "garbage", "other shape"])
async def test_a_damaged_input_file_fails_its_task_and_the_others_resume(state: StateDir, damage: str) -> None:
    arrays, generated = await _queue_two(state)
    path = state.task_dir(arrays) / "inputs" / "a.npy"
    if damage == "truncated":
        _truncate(path, path.stat().st_size - 50)
    elif damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x93NUMPY garbage \xff\xfe" * 10)
    else:
        np.save(path, np.eye(3).reshape(1, 3, 3).repeat(5, axis=0))
    rows, summaries = await _states_after_restart(state)
    assert rows == {arrays: "failed", generated: "queued"}
    assert "cannot resume" in summaries[arrays]["error"]
    assert "a.npy" in summaries[arrays]["error"] or "5 items, not the 12" in summaries[arrays]["error"]
    assert summaries[arrays]["failed_items"] == 12


@pytest.mark.parametrize("document", ["{not json", "[1, 2]", json.dumps({"name": "x", "inputs": 5})])
async def test_a_bad_task_document_fails_its_task_and_the_others_resume(state: StateDir, document: str) -> None:
    arrays, generated = await _queue_two(state)
    _sql(state, "UPDATE tasks SET document = ? WHERE task_id = ?", document, generated)
    rows, summaries = await _states_after_restart(state)
    assert rows == {arrays: "queued", generated: "failed"}
    assert "cannot resume" in summaries[generated]["error"]


async def test_a_truncated_ok_file_fails_a_task_with_stored_chunks(state: StateDir) -> None:
    arrays, generated = await _queue_two(state)
    _sql(state, "INSERT INTO chunks (task_id, start, stop, node, items_ok) VALUES (?, 0, 5, 'n1', 5)", generated)
    _truncate(state.task_dir(generated) / "ok.npy", 60)
    rows, summaries = await _states_after_restart(state)
    assert rows == {arrays: "queued", generated: "failed"}
    assert "ok.npy" in summaries[generated]["error"]


async def test_a_truncated_ok_file_of_a_task_with_nothing_stored_is_made_again(state: StateDir) -> None:
    arrays, generated = await _queue_two(state)
    _truncate(state.task_dir(generated) / "ok.npy", 60)
    rows, _ = await _states_after_restart(state)
    assert rows == {arrays: "queued", generated: "queued"}


async def test_a_crash_while_the_inputs_are_written_leaves_no_half_task(state: StateDir, monkeypatch) -> None:
    """The journal row is a task only once its inputs are on disk: a crash before that fails it."""

    class Crash(BaseException):
        pass

    def crash_half_way(path, array) -> None:
        Path(path).write_bytes(b"\x93NUMPY half")
        raise Crash

    async with Host(state, ServerSettings(port=0)) as host:
        generated = await host.frontend.submit(parse_task(GENERATED), "operator")
        monkeypatch.setattr(journal_module, "_write_array", crash_half_way)
        with pytest.raises(Crash):
            await host.frontend.submit(parse_task(ARRAYS), "operator")
        monkeypatch.undo()
        row = sqlite3.connect(state.journal).execute("SELECT task_id, state FROM tasks ORDER BY seq").fetchall()
        assert row[1][1] == "submitting"
    rows, summaries = await _states_after_restart(state)
    (arrays,) = set(rows) - {generated}
    assert rows == {generated: "queued", arrays: "failed"}
    assert "interrupted" in summaries[arrays]["error"]


async def test_inputs_are_on_disk_before_the_task_is_queued(state: StateDir, monkeypatch) -> None:
    seen = []
    original = journal_module.Journal.set_state

    def set_state(self, task_id, new_state, summary=None):
        if new_state == "queued":
            seen.append(np.load(state.task_dir(task_id) / "inputs" / "a.npy").shape)
        return original(self, task_id, new_state, summary)

    monkeypatch.setattr(journal_module.Journal, "set_state", set_state)
    async with Host(state, ServerSettings(port=0)) as host:
        await host.frontend.submit(parse_task(ARRAYS), "operator")
    assert seen == [(12, 3, 3)]


async def test_a_garbage_journal_is_refused_naming_the_file(state: StateDir) -> None:
    state.journal.write_bytes(b"this is not a database\n" * 100)
    with pytest.raises(ChainconsoleError, match="journal.sqlite3"):
        await Host(state, ServerSettings(port=0)).start()
    # The lock went with the failed start: a second try meets the same clear error, not a lock.
    proc = subprocess.run([sys.executable, "-c", "from console.cli.main import main; main()", "serve",
                           "--state-dir", str(state.root), "--listen", "127.0.0.1:0"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(state.journal) in lines[0] and "Traceback" not in proc.stderr


def test_task_ids_are_random_and_keep_their_t(tmp_path) -> None:
    import re

    from console.engine.journal import Journal

    journal = Journal(tmp_path / "journal.sqlite3")
    ids = [journal.new_task("x", "alice", {}, 1) for _ in range(200)]
    journal.close()
    assert all(re.fullmatch(r"t[a-z2-7]{12}", task_id) for task_id in ids)
    assert len(set(ids)) == len(ids) and ids != sorted(ids)
    assert [row.task_id for row in Journal(tmp_path / "journal.sqlite3").tasks()] == ids  # in submission order


OLD_SCHEMA = """
CREATE TABLE tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, task_id TEXT UNIQUE NOT NULL, name TEXT NOT NULL,
    owner TEXT NOT NULL, document TEXT NOT NULL, items INTEGER NOT NULL, state TEXT NOT NULL,
    submitted_at REAL NOT NULL, finished_at REAL, summary TEXT);
CREATE TABLE chunks (task_id TEXT NOT NULL, start INTEGER NOT NULL, stop INTEGER NOT NULL, node TEXT NOT NULL,
    items_ok INTEGER NOT NULL, PRIMARY KEY (task_id, start));
INSERT INTO tasks (task_id, name, owner, document, items, state, submitted_at) VALUES ('t1', 'x', 'o', '{}', 12, 'done', 0);
INSERT INTO chunks VALUES ('t1', 0, 4, 'liar', 4);
"""


def test_a_journal_from_before_confirmations_opens_and_distrusts_only_unconfirmed_ranges(tmp_path) -> None:
    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    journal = journal_module.Journal(path)
    try:
        journal.chunks_stored([("t1", 4, 8, "liar", 4, False), ("t1", 8, 12, "honest", 4, False)])
        assert [row.task_id for row in journal.distrust("liar")] == ["t1"]
        assert [(c.start, c.node) for c in journal.chunks("t1")] == [(0, "liar"), (8, "honest")]  # old rows count as confirmed
        assert journal.tasks()[0].state == "running"
        assert journal.distrust("liar") == []
    finally:
        journal.close()


async def test_a_tasks_priority_is_listed_running_resumed_and_finished(state: StateDir) -> None:
    urgent = {**GENERATED, "name": "urgent", "priority": 7}
    async with Host(state, ServerSettings(port=0)) as host:
        queued = await host.frontend.submit(parse_task(urgent), "operator")
        cancelled = await host.frontend.submit(parse_task({**urgent, "name": "dropped", "priority": -3}), "operator")
        host.frontend.cancel(cancelled, by="operator")
        await host.frontend.wait(cancelled)
        assert {r.task_id: r.priority for r in host.frontend.task_rows()} == {queued: 7, cancelled: -3}
    async with Host(state, ServerSettings(port=0)) as host:  # one resumed, one finished before
        assert {r.task_id: r.priority for r in host.frontend.task_rows()} == {queued: 7, cancelled: -3}
