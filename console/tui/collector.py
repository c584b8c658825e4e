"""Full garbage collections at quiet moments of the console, not in the middle of a key.

The console's process holds objects that live as long as it does — modules, styles, the
screens, the front-end — and Textual keeps adding drawn lines to its caches. A full
collection searches every one of them: 100–230 ms with 200 nodes connected. And it is the
allocations of a key (a screen drawn anew) that tip the collector over its threshold, so
a full collection landed inside about one key in ten, and those were the slowest keys.

So, once the console has started: what start-up made is frozen (no collection searches
it again), the collector makes no full collection on its own, and the console makes one
itself every ``FULL_EVERY_S``, straight after a refresh — when the loop has just drawn
and waits for its next tick. What survives a collection is frozen too, so the next one
searches only what came since: a few to a few tens of milliseconds instead of a pause that
grew with the caches. Every ``SWEEP_EVERY_S`` a collection searches everything, frozen
objects included, so a frozen object that ended up in a garbage cycle is freed within
that time. Younger generations are collected as usual, so short-lived cycles go as
quickly as before.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

FULL_EVERY_S = 10.0
"""Seconds between the console's own full collections."""
SWEEP_EVERY_S = 600.0
"""Seconds between collections that search the frozen objects as well."""
NEVER = 2**31 - 1
"""A threshold the oldest generation never reaches: no full collection but the console's."""


class QuietCollector:
    """Moves full garbage collections to after a refresh; ``stop`` gives the collector back."""

    def __init__(self, every_s: float = FULL_EVERY_S, clock: Callable[[], float] = time.monotonic,
                 sweep_every_s: float = SWEEP_EVERY_S) -> None:
        self.every_s = every_s
        self.sweep_every_s = sweep_every_s
        self.clock = clock
        self.collections = 0
        """Full collections made here."""
        self.sweeps = 0
        """Of those, the ones that searched the frozen objects too."""
        self._saved: tuple[int, int, int] | None = None
        self._last = self._last_sweep = 0.0

    @property
    def active(self) -> bool:
        return self._saved is not None

    def start(self) -> None:
        """Start-up is over: collect once, freeze what is left, and take over full collections."""
        if self._saved is not None:
            return
        gc.collect()  # start-up's garbage is not frozen with the rest
        gc.freeze()
        self._saved = gc.get_threshold()
        young, middle, _ = self._saved
        gc.set_threshold(young, middle, NEVER)
        self._last = self._last_sweep = self.clock()

    def after_refresh(self) -> None:
        """A refresh was drawn: make the full collection now if one is due, and freeze what survives it."""
        now = self.clock()
        if self._saved is None or now - self._last < self.every_s:
            return
        if now - self._last_sweep >= self.sweep_every_s:
            gc.unfreeze()  # this one searches everything
            self.sweeps += 1
            self._last_sweep = now
        gc.collect()
        gc.freeze()
        self.collections += 1
        self._last = self.clock()

    def stop(self) -> None:
        """Give full collections back to the collector, over everything (frozen objects too)."""
        if self._saved is None:
            return
        gc.set_threshold(*self._saved)
        self._saved = None
        gc.unfreeze()
