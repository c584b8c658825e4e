"""Rates over a sliding window: right between bursts, and after a node's long pauses."""

from __future__ import annotations

import pytest

from protocol import dispatcher as d
from protocol.hub import Hub
from protocol.rates import RecentRate


def test_a_rate_counts_the_window_only() -> None:
    rate = RecentRate(started_at=0.0, window_s=10.0)
    assert rate.per_s(0.0) == 0.0
    rate.add(1.0, 20)
    assert rate.per_s(2.0) == pytest.approx(10.0)  # 20 items in the 2 s since the start
    rate.add(9.0, 20)
    assert rate.per_s(10.0) == pytest.approx(4.0)  # 40 items in the last 10 s
    assert rate.per_s(11.5) == pytest.approx(2.0)  # the first burst has left the window
    assert rate.per_s(30.0) == 0.0


def test_a_node_row_shows_its_recent_rate_not_its_average_since_joining() -> None:
    hub = Hub(d.Dispatcher(prefetch=0))
    node = hub.admit("n", "SHA256:n", address="x", slots=1, now=0.0)
    hub.join(node, 1, 1, 0.0)
    hub.handle(d.TaskSubmitted("t", 1000, 100, 1, "u"), 0.0)
    for chunk in range(3):  # a node that joined long ago and only now computes, 100 items a second
        hub.result(node, "t", chunk, 1, items_ok=100, elapsed_s=1.0, valid=True, now=1000.0 + chunk)
    (row,) = hub.rows(1003.0)
    assert row.items_done == 300 and row.items_per_s == pytest.approx(30.0)  # 300 items in the last 10 s
