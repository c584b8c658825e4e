"""How quickly the console answers a key while the front-end is busy.

A real Host (SSH server on 127.0.0.1, port 0) inside a real ConsoleApp, 200 lightweight
nodes connected over SSH, and one task of 10,000 chunks running. The nodes all live in
one second process (the "fleet"), so the console's process carries only what it would
carry in production: the front-end, its SSH server side, and the screens. Each fake node
speaks the node protocol like ``nodes/agent.py`` — hello, welcome, assignments,
heartbeats, results — but "computes" by sleeping for a chunk's worth of time and then
running the tiny numpy kernel inline, so 200 of them fit in one process.

For each key the benchmark times key press → the widget showing the effect (the cursor
on the next row, the filtered rows, the detail screen with its chunk map, a drained
node's new state) → the next screen refresh drawn, and reports median, 95th percentile
and worst, and the CPU time the event loop's thread spent over the same span ("loop CPU":
the console's work for the key and whatever the front-end, which shares the loop, did
meanwhile; unlike the latency it hardly moves with the machine's load). It also reports
how long one refresh of the screens takes and how late the event loop runs timers. Keys
are timed as the terminal driver delivers them, not with ``pilot.press``, which waits
until the process has been idle for a while — under load that is a second or more of
waiting that has nothing to do with the console.

    python tests/benchmarks/bench_console.py [--nodes 200] [--chunks 10000] [--rounds 12]
                                             [--keys down,filter,detail,back,help,drain]
                                             [--screenshots docs/images]

``--keys`` times only the keys named (to profile one with ``py-spy record -- python …``).
With 12 rounds or more the 95th percentile is a sample of its own rather than the worst;
the task must still run at the last round (it stops early, saying so, when it ended).
The numbers depend on the machine and on what else runs on it: compare runs made on the
same machine, and read the load average printed with them (before and after the run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
from textual import events
from textual.app import App
from textual.pilot import Pilot

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from console.tui.app import ConsoleApp  # noqa: E402
from console.engine.host import Host  # noqa: E402
from console.ssh.server import ServerSettings  # noqa: E402
from console.engine.statedir import StateDir  # noqa: E402
from console.tui.detail import ChunkMap, TaskDetailScreen  # noqa: E402
from console.tui.main import MainScreen  # noqa: E402
from console.tui.modals import ConfirmModal, HelpModal  # noqa: E402
from console.tui.tables import NodesTable, TasksTable  # noqa: E402
from nodes.kernels import compute  # noqa: E402
from protocol.inputs import GeneratedInput  # noqa: E402
from protocol.messages import (  # noqa: E402
    Assign, Bye, Cancel, Drain, Heartbeat, Hello, MessageReader, Result, Welcome,
    encode_message,
)
from protocol.taskfile import parse_task  # noqa: E402

SUBSYSTEM = "chainconsole-node"
ITEMS_PER_CHUNK = 5
SIZE = (140, 45)
CONNECT_AT_ONCE = 20
KEYS = ("down", "filter", "detail", "back", "help", "drain")
"""What ``--keys`` can choose; ``back`` and ``detail`` are timed together (one opens, one closes)."""


# -- fake nodes ---------------------------------------------------------------------------------


@dataclass
class FakeNode:
    """One node session in this process; work takes ``chunk_s`` of sleep, not of CPU."""

    name: str
    chunk_s: float
    slots: int = 2
    held: dict[tuple[str, int, int], asyncio.Task] = field(default_factory=dict)
    chunks_done: int = 0

    async def run(self, host: str, port: int, key: Path, host_key: Path, joined: asyncio.Event) -> None:
        async with asyncssh.connect(
            host, port, username="node", client_keys=[str(key)], known_hosts=([str(host_key)], [], []),
            config=None, agent_path=None, gss_host=None, compression_algs=None,
        ) as conn:
            process = await conn.create_process(subsystem=SUBSYSTEM, encoding=None)
            self._write = process.stdin.write
            self.send(Hello(3, self.name, self.slots, self.slots + 1, "bench-fake-node"))  # version 3: single assignments
            reader = MessageReader()
            welcome = await self._next(process, reader)
            assert isinstance(welcome, Welcome), welcome
            joined.set()
            beat = asyncio.create_task(self._heartbeat(welcome.heartbeat_interval_s))
            try:
                while (message := await self._next(process, reader)) is not None:
                    match message:
                        case Assign():
                            key3 = (message.task_id, message.chunk, message.attempt)
                            self.held[key3] = asyncio.create_task(self._work(key3, message))
                        case Cancel(task_id=t, chunk=c, attempt=a):
                            job = self.held.pop((t, c, a), None)
                            if job is not None:
                                job.cancel()
                        case Drain() | Bye():
                            if isinstance(message, Bye):
                                return
            finally:
                beat.cancel()
                for job in self.held.values():
                    job.cancel()

    def send(self, message: object) -> None:
        with contextlib.suppress(Exception):
            for piece in encode_message(message):
                self._write(piece)

    async def _next(self, process: asyncssh.SSHClientProcess, reader: MessageReader) -> object | None:
        while (message := reader.next_message()) is None:
            data = await process.stdout.read(1 << 20)
            if not data:
                return None
            reader.feed(data)
        return message

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.send(Heartbeat(time.time(), len(self.held)))

    async def _work(self, key: tuple[str, int, int], assign: Assign) -> None:
        await asyncio.sleep(self.chunk_s * random.uniform(0.7, 1.3))
        inputs = dict(assign.arrays)
        for name, spec in assign.generated.items():
            inputs[name] = GeneratedInput.from_spec(spec).items(assign.start, assign.stop)
        out = compute(assign.operation, inputs, assign.return_mode)
        if self.held.pop(key, None) is not None:
            self.chunks_done += 1
            self.send(Result(assign.task_id, assign.chunk, assign.attempt, out.ok, out.result, out.norms,
                             self.chunk_s))


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class Timings:
    """Latencies of one kind of key press, in milliseconds."""

    name: str
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    """CPU time of the event loop's thread over each sample: what the key costs whatever the load."""

    def line(self) -> str:
        s = sorted(self.samples)
        cpu = f"   loop CPU median {statistics.median(self.cpu):6.1f} ms" if self.cpu else ""
        return (f"{self.name:<38} n={len(s):<3} median {statistics.median(s):7.1f} ms   "
                f"p95 {percentile(s, 0.95):7.1f} ms   worst {s[-1]:7.1f} ms{cpu}")


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > deadline:
            raise TimeoutError("the screen never showed the effect of the key")
        await asyncio.sleep(0.001)


CHARACTERS = {"slash": "/", "question_mark": "?"}


def press(app: App, key: str) -> None:
    """Deliver one key the way the terminal driver does, and return at once."""
    char = key if len(key) == 1 else CHARACTERS.get(key)
    assert app._driver is not None
    app._driver.send_message(events.Key(key, char))


SETTLE_S = 0.3
"""Pause before each timed key, as between an operator's keys: the previous key's screen
change is drawn and out of the way, so each sample times one key, not the tail of the last."""


async def timed(app: App, timings: Timings, key: str, shown: Callable[[], bool]) -> None:
    """Time one key: delivered → its effect in the widgets → the next refresh drawn."""
    await asyncio.sleep(SETTLE_S)
    began, began_cpu = time.perf_counter(), time.thread_time()
    press(app, key)
    await until(shown)
    drawn = asyncio.Event()
    app.call_after_refresh(drawn.set)
    await drawn.wait()
    timings.samples.append((time.perf_counter() - began) * 1000)
    timings.cpu.append((time.thread_time() - began_cpu) * 1000)


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """How late a 20 ms sleep wakes up: the delay every timer and key waits through."""
    while not stop.is_set():
        began = time.perf_counter()
        await asyncio.sleep(0.02)
        samples.append((time.perf_counter() - began - 0.02) * 1000)


# -- the run ------------------------------------------------------------------------------------


async def bench(nodes: int, chunks: int, chunk_s: float, rounds: int, screenshots: Path | None,
                keys: frozenset[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-console-"))
    app = ConsoleApp(Host(StateDir(root / "state"), ServerSettings(port=0), 0))
    refresh_ms: list[float] = []
    real_refresh = app.refresh_views

    def refresh_timed() -> None:
        began = time.perf_counter()
        real_refresh()
        refresh_ms.append((time.perf_counter() - began) * 1000)

    app.refresh_views = refresh_timed  # type: ignore[method-assign]
    print("load average before (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    async with app.run_test(size=SIZE) as pilot:
        await until(lambda: app.host.server is not None and app.host.server.address[1] != 0)
        host, port = app.host.server.address
        state = app.host.state
        began = time.perf_counter()
        fleet = subprocess.Popen([sys.executable, __file__, "fleet", f"{host}:{port}", str(state.node_key),
                                  str(state.host_key.with_name("host_key.pub")), str(nodes), str(chunk_s)])
        try:
            await until(lambda: len(app.snapshot.nodes) >= nodes, 120)
            print(f"{nodes} nodes connected over SSH in {time.perf_counter() - began:.1f} s")
            await measure(app, pilot, nodes, chunks, rounds, screenshots, refresh_ms, keys)
        finally:
            fleet.terminate()
            fleet.wait()


async def measure(app: ConsoleApp, pilot: Pilot, nodes: int, chunks: int, rounds: int,
                  screenshots: Path | None, refresh_ms: list[float], keys: frozenset[str]) -> None:
    document = {"name": "bench-det", "operation": "det", "chunk_size": ITEMS_PER_CHUNK, "return": "full",
                "inputs": {"a": {"generate": {"count": chunks * ITEMS_PER_CHUNK, "shape": [4, 4],
                                              "seed": 1, "distribution": "normal"}}}}
    frontend = app.host.frontend
    task_id = await frontend.submit(parse_task(document), "operator")
    await until(lambda: app.snapshot.tasks_by_id.get(task_id) is not None
                and app.snapshot.tasks_by_id[task_id].items_done > 0, 30)
    done_before = app.snapshot.tasks_by_id[task_id].items_done
    lag: list[float] = []
    stop_lag = asyncio.Event()
    lag_task = asyncio.create_task(loop_lag(lag, stop_lag))
    refresh_ms.clear()
    main = app.main
    nodes_table, tasks_table = main.query_one(NodesTable), main.query_one(TasksTable)
    down, filtered, detail, back, help_, drained = (
        Timings("↓ in the nodes table → cursor moved"),
        Timings("/ + text → nodes table filtered"),
        Timings("enter on the task → chunk map shown"),
        Timings("escape → main screen back"),
        Timings("? → help shown"),
        Timings("d → node shown draining"),
    )
    for i in range(rounds):
        if app.snapshot.tasks_by_id[task_id].state != "running":
            print(f"the task ended after {i} rounds (its chunk map with it): fewer rounds, or more --chunk-seconds")
            break
        if "down" in keys:
            nodes_table.focus()
            before = nodes_table.cursor_row
            await timed(app, down, "down", lambda: nodes_table.cursor_row == before + 1)
        if "filter" in keys:
            # "node-01" then "node-02" …: each query matches a tenth of the fleet at most.
            digit = str(1 + i % max(1, min(9, nodes // 10)))
            expected = sum(1 for n in range(1, nodes + 1) if f"node-0{digit}" in f"node-{n:03d}")
            await pilot.press("slash", *"node-0")
            await timed(app, filtered, digit, lambda: nodes_table.row_count == expected)
            await pilot.press("escape")
            await until(lambda: nodes_table.row_count >= nodes)
        if "detail" in keys or "back" in keys:
            tasks_table.focus()
            await timed(app, detail, "enter",
                        lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.ready
                        and bool(app.screen.query_one(ChunkMap).chunks))
            if screenshots is not None and i == rounds // 2:
                await asyncio.sleep(1.0)  # the footer and a refresh or two
                app.save_screenshot("console-task.svg", str(screenshots))
            await timed(app, back, "escape", lambda: isinstance(app.screen, MainScreen))
        if "help" in keys:
            await timed(app, help_, "question_mark", lambda: isinstance(app.screen, HelpModal))
            if screenshots is not None and i == rounds // 2:
                app.save_screenshot("console-help.svg", str(screenshots))
            await pilot.press("escape")
            await until(lambda: isinstance(app.screen, MainScreen))
        if screenshots is not None and i == rounds // 2:
            await save_main_screenshots(app, pilot, screenshots)
    for i in range(min(rounds, nodes // 10) if "drain" in keys else 0):  # a tenth of the fleet at most
        nodes_table.focus()
        # A node that takes work, from the 21st row on (a drained one leaves for the end).
        target = next(row.key.value for row in nodes_table.ordered_rows[20 + i:]
                      if nodes_table.get_cell(row.key, "state").plain in ("idle", "busy"))
        nodes_table.select_key(target)
        await pilot.pause()
        # An idle node (the task's end is near) has nothing to finish: it is drained at once.
        await timed(app, drained, "d",
                    lambda: nodes_table.get_cell(target, "state").plain in ("draining", "drained", "lost"))
    row = app.snapshot.tasks_by_id[task_id]
    stop_lag.set()
    await lag_task
    print(f"task of {chunks:,} chunks ({len(frontend.hub.dispatcher.chunk_map(task_id)):,} in its chunk map): "
          f"{done_before:,} → {row.items_done:,} of {row.items:,} items done while measuring ({row.state})")
    print()
    for timings in (down, filtered, detail, back, help_, drained):
        if timings.samples:
            print(timings.line())
    print(Timings("one refresh of the screens", refresh_ms).line())
    print(Timings("event-loop lag (20 ms timer)", lag).line())
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f} on {} cores".format(*os.getloadavg(), os.cpu_count()))


async def save_main_screenshots(app: ConsoleApp, pilot: Pilot, folder: Path) -> None:
    """The main screen, and the question a kick asks, for docs/console.md."""
    app.main.query_one(NodesTable).focus()
    await asyncio.sleep(1.0)  # a few refreshes: the sparkline and the rates settle
    app.save_screenshot("console-main.svg", str(folder))
    await pilot.press("k")
    await until(lambda: isinstance(app.screen, ConfirmModal))
    await pilot.pause()
    app.save_screenshot("console-kick.svg", str(folder))
    await pilot.press("n")
    await until(lambda: isinstance(app.screen, MainScreen))


async def run_fleet(address: str, key: Path, host_key: Path, nodes: int, chunk_s: float) -> None:
    """The fleet process: ``nodes`` fake nodes, connecting a few at a time, until terminated."""
    host, port = address.rsplit(":", 1)
    gate = asyncio.Semaphore(CONNECT_AT_ONCE)

    async def join(node: FakeNode) -> None:
        joined = asyncio.Event()
        async with gate:
            session = asyncio.create_task(node.run(host, int(port), key, host_key, joined))
            await asyncio.wait([session, asyncio.create_task(joined.wait())], return_when=asyncio.FIRST_COMPLETED)
        await session

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sessions = [asyncio.create_task(join(FakeNode(f"node-{i:03d}", chunk_s))) for i in range(1, nodes + 1)]
    await stop.wait()
    for session in sessions:
        session.cancel()
    await asyncio.gather(*sessions, return_exceptions=True)


def main() -> None:
    if sys.argv[1:2] == ["fleet"]:
        address, key, host_key, nodes, chunk_s = sys.argv[2:7]
        asyncio.run(run_fleet(address, Path(key), Path(host_key), int(nodes), float(chunk_s)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--chunk-seconds", type=float, default=8.0, help="how long a fake node works on a chunk")
    parser.add_argument("--rounds", type=int, default=10, help="how many times each key is measured")
    parser.add_argument("--screenshots", type=Path, help="also save SVG screenshots of the loaded console here")
    parser.add_argument("--keys", default=",".join(KEYS),
                        help=f"which keys to time, comma-separated (default: all of {','.join(KEYS)}); "
                             "one at a time is for profiling")
    args = parser.parse_args()
    keys = frozenset(k.strip() for k in args.keys.split(",") if k.strip())
    if keys - set(KEYS):
        parser.error(f"--keys: unknown {', '.join(sorted(keys - set(KEYS)))}; choose from {', '.join(KEYS)}")
    asyncio.run(bench(args.nodes, args.chunks, args.chunk_seconds, args.rounds, args.screenshots, keys))


if __name__ == "__main__":
    main()
