"""Results computed while disconnected are kept for the same console, bounded by count and bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nodes import agent as a
from protocol.messages import Result


class _NoWork:
    def attach(self, emit) -> None:
        self.emit = emit


def _result(chunk: int, values: int) -> Result:
    return Result("t1", chunk, 1, np.ones(values, bool), None, np.zeros(values), 0.1)


def _agent() -> a.NodeAgent:
    settings = a.NodeSettings(upstreams=(("127.0.0.1", 1),), key_path=Path("unused"), name="n", slots=1)
    agent = a.NodeAgent(settings, _NoWork())
    agent._instance = "console-run-1"  # it was connected to this run of a console, and now is not
    return agent


def test_the_outbox_drops_the_oldest_results_past_its_byte_bound(monkeypatch) -> None:
    monkeypatch.setattr(a, "OUTBOX_BYTES", 3 * 9 * 1000)  # three results of 1,000 items (bool + float64)
    agent = _agent()
    for chunk in range(5):
        agent.work.emit(_result(chunk, 1000))
    assert [result.chunk for _, result in agent._outbox] == [2, 3, 4]


def test_the_outbox_drops_the_oldest_results_past_its_count_bound() -> None:
    agent = _agent()
    for chunk in range(a.OUTBOX_LIMIT + 3):
        agent.work.emit(_result(chunk, 1))
    assert [result.chunk for _, result in agent._outbox] == list(range(3, a.OUTBOX_LIMIT + 3))
