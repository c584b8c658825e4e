"""Seeded simulations of a changing fleet around the Hub and its Dispatcher; see dispatcher_sim.py."""

from __future__ import annotations

from collections import Counter

import pytest

from dispatcher_sim import SimulationError, run_scenario
from protocol.dispatcher import Dispatcher
from protocol.hub import Hub, ResultAccepted

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
        "NodeQuarantined", "node lost", "node left", "node kicked", "node quarantined",
        "failed", "invalid result", "overdue, re-issued", "late result", "restart", "big fleet",
        "CloseSession", "ResultAccepted", "SendMessage", "second session", "other key", "suffixed id",
        "refused", "released after leaving", "drain refused",
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


def _wrapped(name: str, after: object) -> object:
    """Hub.<name>, with ``after(hub, args, outputs)`` changing what it did."""
    original = getattr(Hub, name)

    def broken(self: Hub, *args: object, **kwargs: object) -> object:
        return after(self, args, original(self, *args, **kwargs))  # type: ignore[operator]
    return broken


_admit = Hub.admit


def _admit_quarantined(self: Hub, name: str, fingerprint: str, **kwargs: object) -> str:
    """Admit whatever the key, keeping the quarantine list as it was."""
    held = self.quarantined.pop(fingerprint, None)
    try:
        return _admit(self, name, fingerprint, **kwargs)  # type: ignore[arg-type]
    finally:
        if held is not None:
            self.quarantined[fingerprint] = held


def _forget_items_done(self: Hub, args: tuple, outputs: object) -> object:
    if args[0] in self.departed:
        self.departed[args[0]].items_done = 0  # type: ignore[index]
    return outputs


@pytest.mark.parametrize("name, broken", [
    ("_id_for", lambda self, name, fingerprint: name),
    ("admit", _admit_quarantined),
    ("result", _wrapped("result", lambda self, args, outputs: [o for o in outputs if not isinstance(o, ResultAccepted)])),
    ("depart", _wrapped("depart", _forget_items_done)),
])
def test_the_checks_catch_a_broken_hub(monkeypatch: pytest.MonkeyPatch, name: str, broken: object) -> None:
    monkeypatch.setattr(Hub, name, broken)
    with pytest.raises(SimulationError, match="seed"):
        for seed in range(100):
            run_scenario(seed)
