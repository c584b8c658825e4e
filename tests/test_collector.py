"""The console's full garbage collections: after refreshes, never in the middle of a key."""

from __future__ import annotations

import gc
import weakref

from console.tui.collector import NEVER, QuietCollector


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Node:
    pass


def cycle() -> list[Node]:
    """Two objects that refer to each other, held by the list returned: a cycle once it is dropped."""
    first, second = Node(), Node()
    first.other, second.other = second, first  # type: ignore[attr-defined]
    return [first]


def test_full_collections_wait_for_a_refresh_and_the_collector_gets_them_back_at_stop() -> None:
    before = gc.get_threshold()
    clock = Clock()
    collector = QuietCollector(every_s=10.0, clock=clock)
    collector.start()
    try:
        assert collector.active and gc.get_freeze_count() > 0
        assert gc.get_threshold() == (before[0], before[1], NEVER)  # younger generations as before
        clock.now += 9.9
        collector.after_refresh()
        assert collector.collections == 0  # not due yet
        clock.now += 0.2
        collector.after_refresh()
        collector.after_refresh()  # due once, made once
        assert collector.collections == 1
        clock.now += 10.0
        collector.after_refresh()
        assert collector.collections == 2
    finally:
        collector.stop()
    assert not collector.active
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    collector.stop()  # twice is harmless
    assert gc.get_threshold() == before


def test_a_cycle_that_reached_the_oldest_generation_is_collected_after_a_refresh() -> None:
    clock = Clock()
    collector = QuietCollector(every_s=1.0, clock=clock)
    collector.start()
    try:
        held = cycle()
        gc.collect(1)  # still referenced: it survives into the oldest generation
        gone = weakref.ref(held[0])
        del held
        gc.collect(1)
        assert gone() is not None  # garbage now, which only a full collection finds
        clock.now += 1.0
        collector.after_refresh()
        assert gone() is None
    finally:
        collector.stop()


def test_what_survives_a_collection_is_frozen_until_the_next_sweep_searches_it() -> None:
    clock = Clock()
    collector = QuietCollector(every_s=1.0, clock=clock, sweep_every_s=5.0)
    collector.start()
    try:
        held = cycle()
        clock.now += 1.0
        frozen = gc.get_freeze_count()
        collector.after_refresh()  # the cycle is still referenced: it survives, and is frozen
        assert gc.get_freeze_count() > frozen
        gone = weakref.ref(held[0])
        del held
        for _ in range(3):  # collections that search only what came since
            clock.now += 1.0
            collector.after_refresh()
            assert gone() is not None
        assert (collector.collections, collector.sweeps) == (4, 0)
        clock.now += 1.0
        collector.after_refresh()  # five seconds since start: the sweep searches the frozen objects
        assert gone() is None
        assert (collector.collections, collector.sweeps) == (5, 1)
        assert gc.get_freeze_count() > 0  # and what survived the sweep is frozen again
    finally:
        collector.stop()
    assert gc.get_freeze_count() == 0
