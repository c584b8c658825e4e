"""Rates over a sliding window: right between bursts, unlike an average since the start."""

from __future__ import annotations

from collections import deque

DEFAULT_RATE_WINDOW_S = 10.0
"""Long enough to span the gap between two chunks of one node, short enough to follow a change."""


class RecentRate:
    """Items per second over the last ``window_s`` seconds (or since ``started_at``, if later)."""

    def __init__(self, started_at: float, window_s: float = DEFAULT_RATE_WINDOW_S) -> None:
        self.started_at = started_at
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._total = 0

    def add(self, now: float, items: int) -> None:
        self._events.append((now, items))
        self._total += items
        self._expire(now)

    def per_s(self, now: float) -> float:
        self._expire(now)
        span = min(self.window_s, now - self.started_at)
        return self._total / span if span > 0 else 0.0

    def _expire(self, now: float) -> None:
        while self._events and self._events[0][0] <= now - self.window_s:
            self._total -= self._events.popleft()[1]
