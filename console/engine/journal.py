"""The front-end's journal: tasks and finished chunk ranges in SQLite.

A restarted front-end reads it back to resume unfinished tasks without recomputing
the chunks it had already stored. SQLite runs in WAL mode: a commit survives the
process being killed, and readers (``chainconsole tasks``) never block the writer.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from console.engine.statedir import make_private_dir
from protocol.inputs import GeneratedInput
from protocol.taskfile import NO_LIMITS, Task, task_from_parts

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
    PRIMARY KEY (task_id, start)
);
"""


@dataclass(frozen=True)
class JournaledTask:
    """One task as the journal keeps it."""

    task_id: str
    name: str
    owner: str
    document: dict
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
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        os.chmod(path, 0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def new_task(self, name: str, owner: str, document: dict, items: int) -> str:
        """Record a new queued task and return its id."""
        with self._db:
            cur = self._db.execute(
                "INSERT INTO tasks (task_id, name, owner, document, items, state, submitted_at)"
                " VALUES ('', ?, ?, ?, ?, 'queued', ?)",
                (name, owner, json.dumps(document), items, time.time()),
            )
            task_id = f"t{cur.lastrowid}"
            self._db.execute("UPDATE tasks SET task_id = ? WHERE seq = ?", (task_id, cur.lastrowid))
        return task_id

    def set_state(self, task_id: str, state: str, summary: dict | None = None) -> None:
        finished = time.time() if summary is not None else None
        self._db.execute(
            "UPDATE tasks SET state = ?, summary = COALESCE(?, summary),"
            " finished_at = COALESCE(?, finished_at) WHERE task_id = ?",
            (state, json.dumps(summary) if summary is not None else None, finished, task_id),
        )

    def chunk_stored(self, task_id: str, start: int, stop: int, node: str, items_ok: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO chunks (task_id, start, stop, node, items_ok) VALUES (?, ?, ?, ?, ?)",
            (task_id, start, stop, node, items_ok),
        )

    def tasks(self) -> list[JournaledTask]:
        rows = self._db.execute(
            "SELECT task_id, name, owner, document, items, state, submitted_at, finished_at, summary"
            " FROM tasks ORDER BY seq"
        ).fetchall()
        return [
            JournaledTask(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7],
                    json.loads(r[8]) if r[8] else None)
            for r in rows
        ]

    def chunks(self, task_id: str) -> list[StoredChunk]:
        rows = self._db.execute(
            "SELECT start, stop, node, items_ok FROM chunks WHERE task_id = ? ORDER BY start",
            (task_id,),
        ).fetchall()
        return [StoredChunk(*r) for r in rows]


def task_document(task: Task) -> dict:
    """The journal's description of a task: enough to rebuild it after a restart."""
    return {
        "name": task.name,
        "operation": task.operation,
        "inputs": task.describe_inputs(),
        "chunk_size": task.chunk_size if task.chunk_size is not None else "auto",
        "return": task.return_mode,
        "max_attempts": task.max_attempts,
    }


def task_from_document(document: dict, folder: Path) -> Task:
    """Rebuild a journaled task, reading its array inputs back from the task folder."""
    generated, arrays = {}, {}
    for name, described in document["inputs"].items():
        if "generate" in described:
            generated[name] = described["generate"]
        else:
            arrays[name] = np.load(folder / "inputs" / f"{name}.npy", mmap_mode="r")
    chunk_size = document["chunk_size"]
    return task_from_parts(document["name"], document["operation"], generated, arrays,
                           None if chunk_size == "auto" else chunk_size,
                           document["return"], document["max_attempts"], limits=NO_LIMITS)


def save_array_inputs(folder: Path, task: Task) -> None:
    for name, source in task.inputs.items():
        if not isinstance(source, GeneratedInput):
            make_private_dir(folder / "inputs")
            np.save(folder / "inputs" / f"{name}.npy", source)

