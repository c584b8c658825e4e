"""The Dispatcher alone: scheduling decisions per second, with simulated nodes on a fake clock.

No sockets and no processes: ``protocol.dispatcher.Dispatcher`` is fed what a front-end
shell would feed it. N nodes of one slot join (window 2: a slot plus one prefetched chunk,
as real nodes ask), one task of C chunks of one item is submitted, and each node computes
the chunks it is assigned one after another at its own speed (0.5–2 s a chunk, ±20%),
heartbeats every second and the shell ticks every half second, all on a simulated clock.
Results go back as ``ResultReceived``; the run ends when the task is done.

Only the CPU time spent inside ``Dispatcher.handle`` is counted (``time.thread_time``, so
that waiting for a core on a shared machine does not count), by kind of event. A decision
is one ``AssignChunk``. Decisions per second divide the decisions by the handle time of
the events that make them (the submission, which fills every node, and results: each
completes a chunk and assigns the next); "all" also counts the joins, heartbeats and ticks,
the traffic that grows with the fleet — the rate one front-end core sustains. The cost must stay flat
as nodes and chunks grow (the Dispatcher keeps deques and heaps, never scans), so the table
shows µs per decision, per heartbeat and per tick for every size side by side.

    python tests/benchmarks/bench_dispatcher.py [--nodes 100,1000,10000]
        [--chunks 10000,100000,1000000] [--json OUT.json] [--quick]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import platform
import random
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from protocol.dispatch_events import (  # noqa: E402
    AssignChunk, Event, HeartbeatReceived, NodeJoined, ResultReceived, TaskFinished, TaskSubmitted, Tick,
)
from protocol.dispatcher import Dispatcher  # noqa: E402

TARGET_DECISIONS_PER_S = 50_000
HEARTBEAT_S = 1.0
TICK_S = 0.5
TASK_ID = "t1"
FULL_NODES = (100, 1_000, 10_000)
FULL_CHUNKS = (10_000, 100_000, 1_000_000)
QUICK_CHUNKS = (10_000, 100_000)

_RESULT, _HEARTBEAT, _TICK = 0, 1, 2  # kinds of simulated happenings, in the order ties resolve
KINDS = ("join", "submit", "result", "heartbeat", "tick")
SNAPSHOT_TRIES = 3


@dataclass(frozen=True)
class Measurement:
    """One size, simulated to the end of its task."""

    nodes: int
    chunks: int
    decisions: int
    events: dict[str, int]
    """Events handled, by kind: join, submit, result, heartbeat, tick."""
    handle_s: dict[str, float]
    """CPU seconds inside ``Dispatcher.handle``, by kind of event."""
    simulated_s: float
    snapshot_ms: float
    """The fastest of a few ``Dispatcher.snapshot`` calls halfway through (what the console draws)."""

    @property
    def scheduling_s(self) -> float:
        """Handle time of the events that make decisions: the submission (the first fill) and results."""
        return self.handle_s["submit"] + self.handle_s["result"]

    @property
    def decisions_per_s(self) -> float:
        return self.decisions / self.scheduling_s

    @property
    def us_per_decision(self) -> float:
        return 1e6 * self.scheduling_s / self.decisions

    @property
    def decisions_per_s_all(self) -> float:
        """Counting joins, heartbeats and ticks too: what one core sustains with the liveness traffic."""
        return self.decisions / sum(self.handle_s.values())

    def us_per(self, kind: str) -> float:
        return 1e6 * self.handle_s[kind] / max(self.events[kind], 1)


class Fleet:
    """Simulated nodes around one Dispatcher; only ``Dispatcher.handle`` is timed."""

    def __init__(self, nodes: int, seed: int) -> None:
        rng = random.Random(seed)
        self.rng = rng
        self.dispatcher = Dispatcher()
        self.names = [f"n{i}" for i in range(nodes)]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.speed = [rng.uniform(0.5, 2.0) for _ in range(nodes)]
        self.held: list[deque[AssignChunk]] = [deque() for _ in range(nodes)]
        self.busy = [False] * nodes
        self.started = [0.0] * nodes  # when each node began its current chunk
        self.queue: list[tuple[float, int, int, int]] = []  # (time, kind, seq, node)
        self.seq = itertools.count()
        self.now = 0.0
        self.decisions = 0
        self.events = dict.fromkeys(KINDS, 0)
        self.handle_s = dict.fromkeys(KINDS, 0.0)
        self.finished = False

    def handle(self, event: Event, kind: str) -> None:
        # CPU time of this thread, not wall time: the machine is shared, and time spent
        # waiting for a core is not the Dispatcher's cost.
        began = time.thread_time()
        actions = self.dispatcher.handle(event, self.now)
        self.handle_s[kind] += time.thread_time() - began
        self.events[kind] += 1
        for action in actions:
            if type(action) is AssignChunk:
                self.decisions += 1
                node = self.index[action.node_id]
                self.held[node].append(action)
                if not self.busy[node]:
                    self._start(node)
            elif type(action) is TaskFinished:
                self.finished = True

    def _start(self, node: int) -> None:
        self.busy[node] = True
        self.started[node] = self.now
        duration = self.speed[node] * self.rng.uniform(0.8, 1.2)
        self._at(self.now + duration, _RESULT, node)

    def _at(self, when: float, kind: int, node: int) -> None:
        heapq.heappush(self.queue, (when, kind, next(self.seq), node))

    def _snapshot_ms(self) -> float:
        fastest = float("inf")
        for _ in range(SNAPSHOT_TRIES):
            began = time.thread_time()
            self.dispatcher.snapshot(self.now)
            fastest = min(fastest, time.thread_time() - began)
        return 1000 * fastest

    def run(self, chunks: int) -> Measurement:
        for node, name in enumerate(self.names):
            self.handle(NodeJoined(name, slots=1, window=2), "join")
            self._at(self.rng.uniform(0, HEARTBEAT_S), _HEARTBEAT, node)
        self._at(TICK_S, _TICK, -1)
        self.handle(TaskSubmitted(TASK_ID, chunks, chunk_size=1, max_attempts=3), "submit")
        snapshot_ms = 0.0
        while not self.finished:
            self.now, kind, _, node = heapq.heappop(self.queue)
            if kind == _RESULT:
                assign = self.held[node].popleft()
                self.handle(ResultReceived(self.names[node], TASK_ID, assign.chunk, assign.attempt,
                                           items_ok=assign.stop - assign.start,
                                           elapsed_s=self.now - self.started[node]), "result")
                self.busy[node] = False
                if self.held[node]:
                    self._start(node)
            elif kind == _HEARTBEAT:
                self.handle(HeartbeatReceived(self.names[node]), "heartbeat")
                self._at(self.now + HEARTBEAT_S, _HEARTBEAT, node)
            else:
                self.handle(Tick(), "tick")
                self._at(self.now + TICK_S, _TICK, -1)
            if not snapshot_ms and self.decisions >= chunks // 2:
                snapshot_ms = self._snapshot_ms()
        return Measurement(len(self.names), chunks, self.decisions, self.events, self.handle_s, self.now,
                           snapshot_ms)


def measure(nodes: int, chunks: int, seed: int = 1) -> Measurement:
    """Simulate one size to the end; check every chunk was decided once and the task ended."""
    result = Fleet(nodes, seed).run(chunks)
    if result.decisions != chunks:
        raise AssertionError(f"{nodes} nodes, {chunks} chunks: {result.decisions} assignments, expected {chunks}")
    return result


def table(results: list[Measurement]) -> str:
    lines = [f"{'nodes':>7} {'chunks':>10} {'decisions/s':>12} {'µs/decision':>12} {'µs/heartbeat':>13} "
             f"{'µs/tick':>8} {'decisions/s, all':>17} {'snapshot ms':>12}"]
    lines += [f"{r.nodes:7,} {r.chunks:10,} {r.decisions_per_s:12,.0f} {r.us_per_decision:12.2f} "
              f"{r.us_per('heartbeat'):13.2f} {r.us_per('tick'):8.1f} {r.decisions_per_s_all:17,.0f} "
              f"{r.snapshot_ms:12.1f}" for r in results]
    return "\n".join(lines)


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=_sizes, default=FULL_NODES, help="comma-separated node counts")
    parser.add_argument("--chunks", type=_sizes, help="comma-separated chunk counts (default 10k,100k,1M)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write every measurement here")
    parser.add_argument("--quick", action="store_true", help="chunk counts up to 100,000 only")
    args = parser.parse_args(argv)
    chunk_counts = args.chunks or (QUICK_CHUNKS if args.quick else FULL_CHUNKS)
    results = []
    for chunks in chunk_counts:
        for nodes in args.nodes:
            results.append(measure(nodes, chunks))
            print(f"{nodes:,} nodes, {chunks:,} chunks: {results[-1].us_per_decision:.2f} µs per decision",
                  file=sys.stderr, flush=True)
    print(table(results))
    slowest = min(r.decisions_per_s for r in results)
    costs = [r.us_per_decision for r in results]
    print(f"slowest size: {slowest:,.0f} decisions/s (target ≥ {TARGET_DECISIONS_PER_S:,}: "
          f"{'PASS' if slowest >= TARGET_DECISIONS_PER_S else 'MISS'}); "
          f"µs per decision from {min(costs):.2f} to {max(costs):.2f} ({max(costs) / min(costs):.2f}× spread)")
    if args.json:
        args.json.write_text(json.dumps({
            "python": platform.python_version(),
            "measurements": [{**asdict(r), "decisions_per_s": r.decisions_per_s,
                              "us_per_decision": r.us_per_decision,
                              "decisions_per_s_all": r.decisions_per_s_all} for r in results],
        }, indent=2) + "\n")
    return 0 if slowest >= TARGET_DECISIONS_PER_S else 1


if __name__ == "__main__":
    sys.exit(main())
