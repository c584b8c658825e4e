"""Snapshot tests of the console's screens: a still picture of a fixed cluster.

The app runs with ``live=False`` (no refresh timer, address, host key and uptime masked)
against a scripted front-end, in a fixed terminal size and time zone, so the same code
always draws the same SVG. Update with ``pytest tests/test_app_snapshots.py --snapshot-update``
after checking the new pictures in the report.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from console.tui.app import ConsoleApp
from console.engine.frontend import FrontEndError
from console.engine.records import Event, NodeRow, TaskRow
from console.ssh.server import ServerSettings
from console.engine.statedir import StateDir
from protocol.dispatch_events import ChunkState, ChunkView

SIZE = (120, 36)
SMALL = (80, 24)
LARGE = (200, 60)
T0 = 1_700_000_000.0

NODES = [
    NodeRow("gpu-01", "gpu-01", "busy", 8, 9, 12_480, 0, (), "10.0.0.11:50212", 0.3, 410.2),
    NodeRow("gpu-02", "gpu-02", "busy", 8, 9, 11_902, 0, (), "10.0.0.12:50877", 0.6, 398.7),
    NodeRow("relay-a", "relay-a", "idle", 4, 0, 3_310, 0, (), "10.0.0.20:41002", 0.2, 88.0),
    NodeRow("edge-07", "edge-07", "busy", 2, 3, 1_200, 0, ("relay-a",), "10.8.0.7:39110", 1.1, 40.5),
    NodeRow("edge-08", "edge-08", "draining", 2, 1, 890, 0, ("relay-a",), "10.8.0.8:39920", 0.9, 35.1),
    NodeRow("old-box", "old-box", "quarantined", 4, 0, 52, 3, (), "10.0.0.40:60001", 4.2, 0.4),
    NodeRow("laptop", "laptop", "lost", 2, 0, 0, 0, (), "10.0.0.99:51515", None, 0.0),
]
TASKS = [
    TaskRow("t1", "invert-256", "alice", "done", 5_000, 5_000, 0, T0, 41.2, 0.0),
    TaskRow("t2", "eigvalsh-sym", "bob", "running", 20_000, 6_240, 0, T0, None, 812.0),
    TaskRow("t3", "solve-spd", "operator", "running", 10_000, 310, 2, T0, None, 95.5),
    TaskRow("t4", "det-big", "operator", "queued", 50_000, 0, 0, T0, None, 0.0),
    TaskRow("t5", "svd-check", "bob", "failed", 800, 800, 120, T0, 12.0, 0.0),
    TaskRow("t6", "matmul-demo", "alice", "cancelled", 4_000, 1_250, 0, T0, 7.5, 0.0),
]
EVENTS = [
    Event(T0 + 1, "join", "gpu-01 joined from 10.0.0.11:50212 with 8 slots", node_id="gpu-01"),
    Event(T0 + 2, "join", "edge-07 joined via relay-a with 2 slots", node_id="edge-07"),
    Event(T0 + 5, "submitted", "eigvalsh-sym: eigvalsh × 20000 by bob", task_id="t2"),
    Event(T0 + 9, "lost", "laptop: connection lost: no heartbeat for 5.0s", node_id="laptop"),
    Event(T0 + 9, "requeue", "chunk t2/17 from laptop: node lost", task_id="t2", node_id="laptop"),
    Event(T0 + 11, "invalid", "old-box chunk t3/4: item 31 is off by 2.1e-03", node_id="old-box", task_id="t3"),
    Event(T0 + 12, "quarantine", "old-box quarantined: 3 invalid results", node_id="old-box"),
    Event(T0 + 14, "drain", "edge-08 draining", node_id="edge-08"),
    Event(T0 + 20, "finished", "invert-256 done: 5000/5000 ok in 41.20s", task_id="t1"),
]


def chunk_map() -> list[ChunkView]:
    """Task t2: done chunks, a few retried and running, one failed, the rest not carved yet."""
    views = []
    for i in range(240):
        state = ChunkState.DONE
        if i in (17, 60, 131):
            state = ChunkState.RETRIED
        elif i == 88:
            state = ChunkState.FAILED
        elif i >= 228:
            state = ChunkState.RUNNING
        views.append(ChunkView(i, i * 26, i * 26 + 26, state, 2 if state is ChunkState.RETRIED else 1))
    views.append(ChunkView(-1, 240 * 26, 20_000, ChunkState.QUEUED, 0))
    return views


class ScriptedFrontEnd:
    """The part of the FrontEnd API the console reads, answering with fixed rows."""

    def __init__(self) -> None:
        self.started_at = T0
        self.events = collections.deque(EVENTS)
        self.released: list[str] = []

    def node_rows(self) -> list[NodeRow]:
        return list(NODES)

    def task_rows(self) -> list[TaskRow]:
        return list(TASKS)

    def on_event(self, listener: object) -> None:
        pass

    def release(self, node_id: str, *, by: str = "") -> None:
        self.released.append(node_id)

    def items_by_node(self, task_id: str) -> dict[str, int]:
        if task_id != "t2":
            raise FrontEndError(task_id)
        return {"gpu-01": 2_530, "gpu-02": 2_410, "edge-07": 770, "edge-08": 530}

    def chunk_map(self, task_id: str) -> list[ChunkView] | None:
        return chunk_map() if task_id == "t2" else None

    def pending_keys(self) -> list[str]:
        return ["one key"]

    def job_rows(self) -> list:
        return []  # no launcher: the jobs table stays hidden


class ScriptedHost:
    """A Host whose front-end is scripted: started and stopped, nothing listens."""

    def __init__(self, root: Path) -> None:
        self.state = StateDir(root)
        self.settings = ServerSettings(port=0)
        self.frontend: ScriptedFrontEnd | None = None
        self.server: SimpleNamespace | None = None

    async def start(self) -> tuple[str, int]:
        self.frontend = ScriptedFrontEnd()
        self.server = SimpleNamespace(address=("127.0.0.1", 8022))
        return ("127.0.0.1", 8022)

    async def stop(self) -> None:
        pass

    def is_local(self, name: str) -> bool:
        return name.startswith("gpu-")

    def local_running(self, name: str) -> bool:
        return True

    def running_launchers(self) -> list[str]:
        return []


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Event times print in local time: pin the zone so the picture is the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def still_app(tmp_path: Path) -> ConsoleApp:
    return ConsoleApp(ScriptedHost(tmp_path), live=False)  # type: ignore[arg-type]


def test_main_screen(snap_compare, tmp_path: Path) -> None:
    assert snap_compare(still_app(tmp_path), terminal_size=SIZE)


def test_task_detail_screen(snap_compare, tmp_path: Path) -> None:
    # Focus the tasks table, move to t2, open it.
    assert snap_compare(still_app(tmp_path), press=["tab", "down", "enter"], terminal_size=SIZE)


def test_kick_confirmation_names_the_node(snap_compare, tmp_path: Path) -> None:
    assert snap_compare(still_app(tmp_path), press=["k"], terminal_size=SIZE)


def test_help_lists_every_key(snap_compare, tmp_path: Path) -> None:
    assert snap_compare(still_app(tmp_path), press=["question_mark"], terminal_size=SIZE)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
def test_main_screen_at_the_smallest_and_a_large_size(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    # At 80x24 the footer keeps quit, help, filter and the palette, the header's totals keep
    # their line, and the tables drop their least useful columns.
    assert snap_compare(still_app(tmp_path), terminal_size=size)


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["80x24", "200x60"])
def test_task_detail_screen_at_the_smallest_and_a_large_size(snap_compare, tmp_path: Path,
                                                              size: tuple[int, int]) -> None:
    assert snap_compare(still_app(tmp_path), press=["tab", "down", "enter"], terminal_size=size)


def test_a_task_without_its_map_says_so_in_full_at_80x24(snap_compare, tmp_path: Path) -> None:
    assert snap_compare(still_app(tmp_path), press=["tab", "enter"], terminal_size=SMALL)


def test_node_detail_screen_shows_its_chain_standing_and_events(snap_compare, tmp_path: Path) -> None:
    # edge-07 sits behind relay-a; enter opens it.
    assert snap_compare(still_app(tmp_path), press=["down", "down", "down", "enter"], terminal_size=SMALL)


def test_marked_nodes_and_a_sorted_table(snap_compare, tmp_path: Path) -> None:
    # Two nodes marked (space), the nodes sorted by their second column, then the first (o o o).
    assert snap_compare(still_app(tmp_path), press=["space", "down", "space", "o", "o", "o"], terminal_size=SIZE)
