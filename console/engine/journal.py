"""The front-end's journal: tasks and finished chunk ranges in SQLite.

A restarted front-end reads it back to resume unfinished tasks without recomputing
the chunks it had already stored. SQLite runs in WAL mode: a commit survives the
process being killed, and readers (``chainconsole tasks``) never block the writer.
The front-end writes it from its writer thread (``console.engine.writer``) and reads it
on the loop at start-up; a lock keeps the two from using the connection at once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from console.engine.statedir import fsync_dir, make_private_dir
from protocol.errors import ChainconsoleError, ExitStatus, TaskFileError
from protocol.inputs import GeneratedInput
from protocol.taskfile import NO_LIMITS, Task, parse_task

SUBMITTING = "submitting"
"""A task's state while its inputs are written: it is a task only once they are on disk."""


class JournalDamaged(ChainconsoleError):
    """The journal file is not a readable database; the front-end refuses to start on it."""

    status = ExitStatus.USAGE


class DamagedTask(ChainconsoleError):
    """A journaled task cannot be rebuilt: its document or input files are missing or damaged."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id      TEXT UNIQUE NOT NULL,
    name         TEXT NOT NULL,
    owner        TEXT NOT NULL,
    document     TEXT NOT NULL,
    items        INTEGER NOT NULL,
    state        TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    finished_at  REAL,
    summary      TEXT
);
CREATE TABLE IF NOT EXISTS chunks (
    task_id  TEXT NOT NULL,
    start    INTEGER NOT NULL,
    stop     INTEGER NOT NULL,
    node     TEXT NOT NULL,
    items_ok INTEGER NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (task_id, start)
);
"""
ADDED_COLUMNS = {"chunks": {"confirmed": "INTEGER NOT NULL DEFAULT 1"}}
"""Columns added since the first schema, for journals made before them."""


TASK_ID_CHARS = 12
"""Random base32 characters after the ``t`` of a task id: 60 bits, not guessable or countable."""


def new_task_id() -> str:
    """A fresh task id: ``t`` and 12 random lower-case base32 characters (``tq3x7…``)."""
    return "t" + base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()[:TASK_ID_CHARS]


@dataclass(frozen=True)
class JournaledTask:
    """One task as the journal keeps it."""

    task_id: str
    name: str
    owner: str
    document: dict | None
    """None when the journal's copy is not a JSON object (a damaged row)."""
    items: int
    state: str
    submitted_at: float
    finished_at: float | None
    summary: dict | None


@dataclass(frozen=True)
class StoredChunk:
    """One stored chunk range: ``node`` is empty for items marked failed."""

    start: int
    stop: int
    node: str
    items_ok: int


class Journal:
    """Durable record of tasks and of every chunk range whose results are on disk."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the journal; ``JournalDamaged`` if the file is not one."""
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        try:
            os.chmod(path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._add_columns()
            self._db.execute("SELECT task_id, document, summary FROM tasks LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise JournalDamaged(f"the journal {path} is damaged ({exc}); move it aside to start "
                                 "with an empty one (its tasks are then forgotten)") from None

    def _add_columns(self) -> None:
        for table, columns in ADDED_COLUMNS.items():
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction (the connection autocommits every statement otherwise)."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def new_task(self, name: str, owner: str, document: dict, items: int, state: str = "queued") -> str:
        """Record a new task (queued, or ``SUBMITTING`` until its inputs are on disk); return its id."""
        while True:
            task_id = new_task_id()
            try:
                with self._lock, self._transaction():
                    self._db.execute(
                        "INSERT INTO tasks (task_id, name, owner, document, items, state, submitted_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (task_id, name, owner, json.dumps(document), items, state, time.time()),
                    )
            except sqlite3.IntegrityError:
                continue  # one chance in 2**60: draw again
            return task_id

    def set_state(self, task_id: str, state: str, summary: dict | None = None) -> None:
        finished = time.time() if summary is not None else None
        with self._lock:
            self._db.execute(
                "UPDATE tasks SET state = ?, summary = COALESCE(?, summary),"
                " finished_at = COALESCE(?, finished_at) WHERE task_id = ?",
                (state, json.dumps(summary) if summary is not None else None, finished, task_id),
            )

    def chunks_stored(self, rows: list[tuple[str, int, int, str, int, bool]]) -> None:
        """Record stored ranges ``(task_id, start, stop, node, items_ok, confirmed)`` in one transaction.

        Call it only once their values are durable on disk: a row is the journal's word
        that a resumed task need not compute the range again.
        """
        with self._lock, self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO chunks (task_id, start, stop, node, items_ok, confirmed)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )

    def chunk_reopened(self, task_id: str, start: int) -> None:
        """Forget a stored range whose result is no longer trusted: a resumed task computes it again."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM chunks WHERE task_id = ? AND start = ?", (task_id, start))

    def distrust(self, node: str) -> list[JournaledTask]:
        """Forget the unconfirmed ranges ``node`` stored in done or failed tasks, and mark those
        tasks running again (their rows are returned): a resumed task computes the ranges again."""
        with self._lock, self._transaction():
            ids = [row[0] for row in self._db.execute(
                "SELECT DISTINCT chunks.task_id FROM chunks JOIN tasks ON tasks.task_id = chunks.task_id"
                " WHERE chunks.node = ? AND chunks.confirmed = 0 AND tasks.state IN ('done', 'failed')", (node,))]
            for task_id in ids:
                self._db.execute("DELETE FROM chunks WHERE task_id = ? AND node = ? AND confirmed = 0", (task_id, node))
                self._db.execute("UPDATE tasks SET state = 'running', finished_at = NULL, summary = NULL"
                                 " WHERE task_id = ?", (task_id,))
            rows = [self._db.execute(f"SELECT {TASK_COLUMNS} FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
                    for task_id in ids]
        return [_journaled(row) for row in rows]

    def delete_task(self, task_id: str) -> None:
        """Forget a task: its row and its stored chunk ranges, in one transaction."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM chunks WHERE task_id = ?", (task_id,))
            self._db.execute("DELETE FROM tasks WHERE task_id = ?", (task_id,))

    def tasks(self) -> list[JournaledTask]:
        with self._lock:
            rows = self._db.execute(f"SELECT {TASK_COLUMNS} FROM tasks ORDER BY seq").fetchall()
        return [_journaled(r) for r in rows]

    def chunks(self, task_id: str) -> list[StoredChunk]:
        with self._lock:
            rows = self._db.execute(
                "SELECT start, stop, node, items_ok FROM chunks WHERE task_id = ? ORDER BY start",
                (task_id,),
            ).fetchall()
        return [StoredChunk(*r) for r in rows]


INPUTS_FOLDER = "inputs"


def _input_files(task: Task) -> dict[str, str]:
    """Where in its task folder each array input of a task is kept."""
    return {name: f"{INPUTS_FOLDER}/{name}.npy" for name, source in task.inputs.items()
            if not isinstance(source, GeneratedInput)}


def task_document(task: Task) -> dict:
    """The journal's copy of a task: the task file itself, its arrays in the task folder."""
    return task.document(_input_files(task))


TASK_COLUMNS = "task_id, name, owner, document, items, state, submitted_at, finished_at, summary"


def _journaled(r: tuple) -> JournaledTask:
    return JournaledTask(r[0], r[1], r[2], _json_object(r[3]), r[4], r[5], r[6], r[7], _json_object(r[8]))


def _json_object(text: object) -> dict | None:
    """A JSON object from the journal, or None for anything else (NULL, damage)."""
    try:
        value = json.loads(text) if isinstance(text, (str, bytes)) else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def task_from_document(document: dict | None, folder: Path) -> Task:
    """Rebuild a journaled task, its array inputs mapped from the task folder.

    Raises ``DamagedTask`` naming what is wrong when the document or a file is missing,
    truncated or not what the document describes.
    """
    if document is None:
        raise DamagedTask("the journal's copy of the task document is damaged")
    inputs = document.get("inputs")
    if isinstance(inputs, dict):  # journals written before the copy was a task file
        document = {**document, "inputs": {
            name: {"file": f"{INPUTS_FOLDER}/{name}.npy"} if isinstance(given, dict) and "array" in given else given
            for name, given in inputs.items()}}
    try:
        return parse_task(document, base_dir=folder, limits=NO_LIMITS, map_files=True)
    except TaskFileError as exc:
        raise DamagedTask(f"the task no longer validates: {'; '.join(exc.problems)}") from None


def array_inputs_nbytes(task: Task) -> int:
    """Bytes the task's array inputs take in its folder (generated inputs take none)."""
    return sum(source.nbytes for source in task.inputs.values() if not isinstance(source, GeneratedInput))


def save_array_inputs(folder: Path, task: Task) -> None:
    """Write the task's array inputs durably: each to a temporary file, fsynced, renamed, folder fsynced.

    A crash leaves either a whole file or none (and perhaps a ``.tmp`` file nothing reads).
    """
    arrays = [(name, source) for name, source in task.inputs.items() if not isinstance(source, GeneratedInput)]
    if not arrays:
        return
    inputs = make_private_dir(folder / INPUTS_FOLDER)
    files = _input_files(task)
    for name, source in arrays:
        path = folder / files[name]
        tmp = inputs / f".{name}.npy.tmp"
        _write_array(tmp, source)
        os.replace(tmp, path)
    fsync_dir(inputs)
    fsync_dir(folder)
    fsync_dir(folder.parent)


def _write_array(path: Path, array: np.ndarray) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as out:
        np.save(out, array, allow_pickle=False)
        out.flush()
        os.fsync(out.fileno())
