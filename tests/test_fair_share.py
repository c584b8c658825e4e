"""Sharing the nodes between tasks, on a simulated steady fleet with a fake clock
(``dispatcher_sim.share_fleet``): a small task is not stuck behind a huge one, and a
task's priority decides who goes first."""

from __future__ import annotations

from dispatcher_sim import QueuedTask, share_fleet
from protocol.dispatcher import DEFAULT_TARGET_CHUNK_S


def test_a_small_task_behind_a_huge_one_finishes_about_as_fast_as_alone() -> None:
    small = QueuedTask("small", 400, at=30.0)
    alone = share_fleet([small])["small"] - small.at
    behind = share_fleet([QueuedTask("huge", 200_000, at=0.0), small])
    # What it cannot avoid: the huge task's chunk that each node runs before it.
    assert behind["small"] - small.at < alone + 2 * DEFAULT_TARGET_CHUNK_S
    # First come, first served would have kept it waiting for the whole huge task (250 s).
    assert behind["small"] - small.at < (behind["huge"] - small.at) / 10


def test_the_huge_task_loses_only_the_small_tasks_share() -> None:
    alone = share_fleet([QueuedTask("huge", 200_000, at=0.0)])["huge"]
    shared = share_fleet([QueuedTask("huge", 200_000, at=0.0), QueuedTask("small", 4_000, at=30.0)])
    # 4,000 small items are 40 s of one slot: 5 s of an eight-slot fleet, and a little more.
    assert shared["huge"] <= alone + 5.0 + 2 * DEFAULT_TARGET_CHUNK_S


def test_a_higher_priority_goes_first_and_a_lower_one_waits() -> None:
    late_but_urgent = share_fleet([QueuedTask("a", 20_000, at=0.0), QueuedTask("b", 20_000, at=5.0, priority=1)])
    assert late_but_urgent["b"] < late_but_urgent["a"]
    # A small task of lower priority waits until the higher one is done.
    waits = share_fleet([QueuedTask("a", 20_000, at=0.0, priority=1), QueuedTask("b", 100, at=5.0)])
    assert waits["b"] > waits["a"]
    # Without priorities the small one would be long done first.
    shares = share_fleet([QueuedTask("a", 20_000, at=0.0), QueuedTask("b", 100, at=5.0)])
    assert shares["b"] < shares["a"] / 2


def test_two_long_tasks_even_out_instead_of_one_starving() -> None:
    # b arrives when a is half done: it catches up on the share a had, then both progress.
    finished = share_fleet([QueuedTask("a", 100_000, at=0.0), QueuedTask("b", 100_000, at=60.0)])
    alone = share_fleet([QueuedTask("a", 100_000, at=0.0)])["a"]
    assert alone < finished["a"] < finished["b"]
    # Neither waits for the other to end: a is slowed by b, not stopped by it.
    assert finished["a"] < 2 * alone
