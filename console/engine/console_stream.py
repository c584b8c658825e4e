"""The console stream: what ``ssh … watch`` sends, one JSON object per line, and back.

An attached console (``chainconsole attach``) and any other program read the same
lines (docs/protocol.md, "The console stream"):

- ``hello`` first: the stream's version, who is watching and their role, when the
  front-end started and its task limits;
- ``event``: one line of the front-end's event log — the recent backlog first, then each
  as it happens;
- ``state``: every node, every task and the pending node keys, whenever they change
  (at most every ``STREAM_EVERY_S``).

The rows are the records the front-end hands every face (``NodeRow``, ``TaskRow``,
``PendingKey``, ``ChunkView``), written with their field names; this module turns them
into JSON-ready objects and back, checking what it reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from console.engine.keys import PendingKey
from console.engine.records import Event, NodeRow, TaskRow
from protocol.dispatch_events import ChunkState, ChunkView
from protocol.errors import RemoteProtocolError
from protocol.taskfile import TaskLimits

STREAM_VERSION = 1
STREAM_EVERY_S = 0.4
"""How often the front-end looks for changes to send: as often as a console redraws."""
BACKLOG_EVENTS = 500
"""Recent events sent when a watcher connects."""


def event_line(event: Event) -> dict[str, Any]:
    return {"type": "event", **dataclasses.asdict(event)}


def state_line(now: float, nodes: list[NodeRow], tasks: list[TaskRow], pending: list[PendingKey]) -> dict[str, Any]:
    return {"type": "state", "time": now,
            "nodes": [dataclasses.asdict(n) for n in nodes],
            "tasks": [dataclasses.asdict(t) for t in tasks],
            "pending_keys": [dataclasses.asdict(p) for p in pending]}


def hello_line(role: str, name: str, started_at: float, limits: TaskLimits) -> dict[str, Any]:
    return {"type": "hello", "stream": STREAM_VERSION, "role": role, "name": name,
            "started_at": started_at, "limits": dataclasses.asdict(limits)}


def chunks_object(task_id: str, chunks: list[ChunkView] | None, shares: Mapping[str, int]) -> dict[str, Any]:
    """A task's chunk map (``[chunk, start, stop, state, attempts]`` each) and its items per node."""
    return {"task_id": task_id,
            "chunks": None if chunks is None else [[c.chunk, c.start, c.stop, str(c.state), c.attempts]
                                                   for c in chunks],
            "items_by_node": dict(shares)}


# -- reading ---------------------------------------------------------------------------------


def _record(cls: type, data: object, **convert) -> Any:
    """``cls`` from the fields of ``data`` it has (unknown ones ignored); a stream error if one it needs is missing."""
    fields = dataclasses.fields(cls)
    required = {f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    if not isinstance(data, dict) or not required <= set(data):
        raise RemoteProtocolError(f"a {cls.__name__} in the console stream lacks fields: {data!r:.200}")
    values = {f.name: data[f.name] for f in fields if f.name in data}
    for name, fix in convert.items():
        if name in values:
            values[name] = fix(values[name])
    return cls(**values)


def read_nodes(items: object) -> list[NodeRow]:
    return [_record(NodeRow, item, via=tuple) for item in _list(items)]


def read_tasks(items: object) -> list[TaskRow]:
    return [_record(TaskRow, item) for item in _list(items)]


def read_pending(items: object) -> list[PendingKey]:
    return [_record(PendingKey, item) for item in _list(items)]


def read_event(data: object) -> Event:
    return _record(Event, data)


def read_limits(data: object) -> TaskLimits:
    return _record(TaskLimits, data)


def read_chunks(data: object) -> tuple[list[ChunkView] | None, dict[str, int]]:
    if not isinstance(data, dict):
        raise RemoteProtocolError("a chunk map must be an object")
    try:
        chunks = None if data.get("chunks") is None else [
            ChunkView(int(c), int(start), int(stop), ChunkState(state), int(attempts))
            for c, start, stop, state, attempts in _list(data["chunks"])]
        shares = {str(k): int(v) for k, v in dict(data.get("items_by_node") or {}).items()}
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"a chunk map that cannot be read: {exc}") from None
    return chunks, shares


def _list(items: object) -> list:
    if not isinstance(items, list):
        raise RemoteProtocolError(f"expected a list in the console stream, got {type(items).__name__}")
    return items
