"""Rate limiting of failed logins per source address."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

DEFAULT_MAX_FAILURES = 30
DEFAULT_WINDOW_S = 60.0
MAX_TRACKED = 10_000


@dataclass
class AuthThrottle:
    """Refuses an address that failed authentication too often within a sliding window."""

    max_failures: int = DEFAULT_MAX_FAILURES
    window_s: float = DEFAULT_WINDOW_S
    _failures: dict[str, collections.deque[float]] = field(default_factory=dict)

    def failed(self, address: str, now: float) -> None:
        """Count one failed attempt from ``address``."""
        if address not in self._failures and len(self._failures) >= MAX_TRACKED:
            self._forget_stale(now)
        times = self._failures.setdefault(address, collections.deque())
        times.append(now)
        while len(times) > self.max_failures:
            times.popleft()

    def allowed(self, address: str, now: float) -> bool:
        """False while ``address`` has ``max_failures`` failures within the window."""
        times = self._failures.get(address)
        if not times:
            return True
        while times and now - times[0] > self.window_s:
            times.popleft()
        return len(times) < self.max_failures

    def _forget_stale(self, now: float) -> None:
        for address in [a for a, t in self._failures.items() if not t or now - t[-1] > self.window_s]:
            del self._failures[address]
