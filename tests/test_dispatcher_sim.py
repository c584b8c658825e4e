"""Seeded simulations of a changing fleet around the Dispatcher; see dispatcher_sim.py."""

from __future__ import annotations

from collections import Counter

import pytest

from dispatcher_sim import SimulationError, run_scenario
from protocol.dispatcher import Dispatcher

BATCHES = 20
SEEDS_PER_BATCH = 50


@pytest.mark.parametrize("batch", range(BATCHES))
def test_nothing_is_lost_or_counted_twice_whatever_the_fleet_does(batch: int) -> None:
    for seed in range(batch * SEEDS_PER_BATCH, (batch + 1) * SEEDS_PER_BATCH):
        run_scenario(seed)  # checks every step; raises SimulationError naming the seed


def test_the_scenarios_go_through_every_kind_of_trouble() -> None:
    happened: Counter[str] = Counter()
    for seed in range(SEEDS_PER_BATCH):
        report = run_scenario(seed)
        happened.update(report.happened)
        happened["restart"] += report.restarts
        happened["big fleet"] += report.nodes >= 100
    for kind in (
        "AssignChunk", "ChunkCompleted", "CancelChunk", "ChunkAbandoned", "CloseNode", "NodeDrained",
        "NodeQuarantined", "node lost", "node left", "node kicked", "node rejoined", "node quarantined",
        "failed", "invalid result", "overdue, re-issued", "late result", "restart", "big fleet",
    ):
        assert happened[kind] > 0, f"no {kind!r} in the first {SEEDS_PER_BATCH} scenarios"


def test_a_seed_replays_exactly() -> None:
    for seed in (3, 19, 27):
        assert run_scenario(seed) == run_scenario(seed)


def _capacity_one_too_many(self: Dispatcher, node: object) -> int:
    return min(node.window + 1, node.slots + self._prefetch) if node.slots else 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("name, broken", [
    ("_capacity", _capacity_one_too_many),
    ("wants_result", lambda self, task_id, chunk, attempt: True),
    ("_settle", lambda self, task, chunk, node_id, reason, now, out: None),
])
def test_the_checks_catch_a_broken_dispatcher(monkeypatch: pytest.MonkeyPatch, name: str, broken: object) -> None:
    monkeypatch.setattr(Dispatcher, name, broken)
    with pytest.raises(SimulationError, match="seed"):
        for seed in range(100):
            run_scenario(seed)
