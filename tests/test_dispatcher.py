"""Unit tests of the Dispatcher, one rule at a time: feed events, compare the actions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.dispatch_events import (
    Action,
    AssignChunk,
    CancelChunk,
    ChunkAbandoned,
    ChunkCompleted,
    ChunkFailed,
    ChunkRequeued,
    ChunkState,
    ChunkView,
    CloseNode,
    CreditChanged,
    DrainRequested,
    ErrorCounted,
    HeartbeatReceived,
    KickRequested,
    NodeDistrusted,
    NodeDrained,
    NodeJoined,
    NodeLeft,
    NodeLost,
    NodeQuarantined,
    NodeState,
    QuarantineReleased,
    ResultReceived,
    TaskCancelled,
    TaskFinished,
    TaskState,
    TaskSubmitted,
    Tick,
)
from protocol.dispatcher import Dispatcher


def assigned(actions: list[Action]) -> list[tuple[str, str, int, int, int, int]]:
    """The assignments among the actions, as (node, task, chunk, start, stop, attempt)."""
    return [(a.node_id, a.task_id, a.chunk, a.start, a.stop, a.attempt) for a in actions if isinstance(a, AssignChunk)]


def of_type(actions: list[Action], kind: type) -> list[Action]:
    return [action for action in actions if isinstance(action, kind)]


def result(node: str, assignment: tuple[str, str, int, int, int, int], *, elapsed_s: float = 0.1,
           items_ok: int | None = None, valid: bool = True) -> ResultReceived:
    """The result a node would send for one of its assignments."""
    _, task, chunk, start, stop, attempt = assignment
    ok = stop - start if items_ok is None else items_ok
    return ResultReceived(node, task, chunk, attempt, ok, elapsed_s, valid)


def task(task_id: str = "t", items: int = 10, chunk_size: int | None = 2, max_attempts: int = 3,
         **extra: object) -> TaskSubmitted:
    return TaskSubmitted(task_id, items, chunk_size, max_attempts, **extra)  # type: ignore[arg-type]


# --- credit ---------------------------------------------------------------------------------


def test_a_node_holds_at_most_its_window_capped_at_prefetch_per_slot() -> None:
    d = Dispatcher(prefetch=1)
    d.handle(task(items=100), 0)
    assert len(assigned(d.handle(NodeJoined("a", 2, 10), 0))) == 4  # 2 slots × (1 + 1 prefetch)
    assert len(assigned(d.handle(NodeJoined("b", 4, 2), 0))) == 2  # its own window is less


@pytest.mark.parametrize("slots, window", [(0, 5), (3, 0), (3, -2)])
def test_a_node_without_slots_or_window_gets_nothing(slots: int, window: int) -> None:
    d = Dispatcher()
    d.handle(task(), 0)
    assert d.handle(NodeJoined("a", slots, window), 0) == []
    assert d.snapshot(0).nodes[0].window == 0


def test_credit_opens_and_closes_the_window() -> None:
    d = Dispatcher(prefetch=1)
    d.handle(task(items=100), 0)
    d.handle(NodeJoined("a", 4, 0), 0)
    held = assigned(d.handle(CreditChanged("a", 2), 1))
    assert len(held) == 2
    assert d.handle(CreditChanged("a", 1), 2) == []  # nothing new, nothing taken back
    assert d.handle(result("a", held[0]), 3) == [ChunkCompleted("t", 0, 0, 2, 1, "a", 2)]  # 1 held = window
    assert len(assigned(d.handle(CreditChanged("a", 3), 4))) == 2


def test_a_result_refills_the_node_at_once() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=6), 0)
    (first,) = assigned(d.handle(NodeJoined("a", 1, 1), 0))
    actions = d.handle(result("a", first), 1)
    assert [type(a) for a in actions] == [ChunkCompleted, AssignChunk]
    assert assigned(actions) == [("a", "t", 1, 2, 4, 1)]


def test_nodes_with_an_idle_slot_come_before_nodes_with_only_prefetch_room() -> None:
    d = Dispatcher(prefetch=1)
    d.handle(task("t1", items=2, chunk_size=2), 0)
    d.handle(NodeJoined("a", 1, 2), 0)  # gets t1's only chunk: its slot is busy, prefetch room left
    d.handle(NodeJoined("b", 1, 2), 0)  # idle
    assert assigned(d.handle(task("t2", items=2, chunk_size=2), 1)) == [("b", "t2", 0, 0, 2, 1)]


def test_nodes_take_turns() -> None:
    d = Dispatcher(prefetch=0)
    for name in "abc":
        d.handle(NodeJoined(name, 2, 2), 0)
    nodes = [a[0] for a in assigned(d.handle(task(items=12), 0))]
    assert nodes == ["a", "b", "c", "a", "b", "c"]


def test_tasks_wait_without_nodes_and_flow_when_one_joins() -> None:
    d = Dispatcher()
    assert d.handle(task(), 0) == []
    assert d.snapshot(0).tasks[0].state is TaskState.QUEUED
    assert len(assigned(d.handle(NodeJoined("a", 1, 2), 5))) == 2
    assert d.snapshot(5).tasks[0].state is TaskState.RUNNING


# --- chunks ---------------------------------------------------------------------------------


def test_fixed_chunks_are_consecutive_ranges_of_that_size() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=10, chunk_size=4), 0)
    assert assigned(d.handle(NodeJoined("a", 5, 5), 0)) == [
        ("a", "t", 0, 0, 4, 1), ("a", "t", 1, 4, 8, 1), ("a", "t", 2, 8, 10, 1),
    ]
    assert d.chunk_range("t", 2) == (8, 10)


@pytest.mark.parametrize("items, slots, first", [(6400, 1, 16), (6400, 10, 10), (100, 1, 2), (5, 4, 1)])
def test_auto_chunks_start_small(items: int, slots: int, first: int) -> None:
    d = Dispatcher(prefetch=0)
    d.handle(NodeJoined("a", slots, slots), 0)
    (assignment, *_) = assigned(d.handle(task(items=items, chunk_size=None), 0))
    assert assignment[4] - assignment[3] == first


def test_auto_chunks_grow_at_most_fourfold_towards_the_target_time() -> None:
    d = Dispatcher(prefetch=0, target_chunk_s=1.0)
    d.handle(NodeJoined("a", 1, 1), 0)
    (current,) = assigned(d.handle(task(items=100_000, chunk_size=None), 0))
    sizes = [current[4] - current[3]]
    for _ in range(4):  # every item takes 1 ms: the target is 1,000 items
        size = current[4] - current[3]
        (current,) = assigned(d.handle(result("a", current, elapsed_s=size * 0.001), 1))
        sizes.append(current[4] - current[3])
    assert sizes == [16, 64, 256, 1000, 1000]


def test_auto_chunks_shrink_at_the_tail() -> None:
    d = Dispatcher(prefetch=0, target_chunk_s=1.0)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(NodeJoined("b", 1, 1), 0)
    first = assigned(d.handle(task(items=60, chunk_size=None), 0))
    # 1 ms per item asks for 1,000-item chunks: growth allows 1 -> 4, then 4 -> 16, but the
    # tail allows only ceil(54 remaining / (2 x 2 slots)) = 14
    (second,) = assigned(d.handle(result("a", first[0], elapsed_s=0.001), 1))
    (third,) = assigned(d.handle(result("b", first[1], elapsed_s=0.001), 1))
    assert (second[4] - second[3], third[4] - third[3]) == (4, 14)


def test_the_end_of_a_task_is_spread_into_ever_smaller_chunks() -> None:
    d = Dispatcher(prefetch=0, target_chunk_s=100.0)
    d.handle(NodeJoined("a", 1, 1), 0)
    sizes = []
    pending = assigned(d.handle(task(items=200, chunk_size=None), 0))
    while pending:
        sizes.append(pending[0][4] - pending[0][3])
        pending = assigned(d.handle(result("a", pending[0], elapsed_s=0.0001), 1))
    # x4 growth from 4, capped by ceil(remaining / 2) once the end is near
    assert sizes == [4, 16, 64, 58, 29, 15, 7, 4, 2, 1]


def test_max_chunk_size_bounds_auto_chunks() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(NodeJoined("a", 1, 1), 0)
    (current,) = assigned(d.handle(task(items=10_000, chunk_size=None, max_chunk_size=20), 0))
    for _ in range(3):
        (current,) = assigned(d.handle(result("a", current, elapsed_s=0.0), 1))
    assert current[4] - current[3] == 20


def test_completed_ranges_are_never_assigned_and_count_as_done() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=10, chunk_size=3, completed=((0, 3), (5, 6), (4, 5)), completed_failed=1), 0)
    assert d.snapshot(0).tasks[0].items_done == 5
    actions = assigned(d.handle(NodeJoined("a", 9, 9), 0))
    assert [(a[3], a[4]) for a in actions] == [(3, 4), (6, 9), (9, 10)]
    for assignment in actions[:-1]:
        d.handle(result("a", assignment), 1)
    assert of_type(d.handle(result("a", actions[-1]), 1), TaskFinished) == [
        TaskFinished("t", TaskState.FAILED, 9, 1, {"a": 5})
    ]


@settings(max_examples=150, deadline=None)
@given(
    items=st.integers(0, 150),
    chunk_size=st.none() | st.integers(1, 40),
    completed=st.lists(st.tuples(st.integers(-5, 160), st.integers(-5, 160)), max_size=5),
)
def test_any_journal_leaves_exactly_the_other_items_to_compute(
    items: int, chunk_size: int | None, completed: list[tuple[int, int]],
) -> None:
    d = Dispatcher(prefetch=0)
    actions = d.handle(task(items=items, chunk_size=chunk_size, completed=tuple(completed)), 0)
    actions += d.handle(NodeJoined("a", 4, 4), 0)
    computed: list[int] = []
    while pending := assigned(actions):
        actions = []
        for assignment in pending:
            computed.extend(range(assignment[3], assignment[4]))
            actions += d.handle(result("a", assignment), 1)
    journaled = {item for start, stop in completed for item in range(max(start, 0), min(stop, items))}
    assert sorted(computed) == sorted(set(range(items)) - journaled)  # each once, none journaled
    assert d.snapshot(1).tasks[0].state is TaskState.DONE
    views = d.chunk_map("t")  # covers every item once, in order, all done
    edges = [0] + [v.stop for v in views]
    assert [v.start for v in views] == edges[:-1] and edges[-1] == items
    assert all(v.state is ChunkState.DONE for v in views)


def test_a_task_already_complete_finishes_at_once() -> None:
    d = Dispatcher()
    assert d.handle(task(items=4, completed=((0, 4),)), 0) == [TaskFinished("t", TaskState.DONE, 4, 0)]
    assert d.handle(task("empty", items=0), 0) == [TaskFinished("empty", TaskState.DONE, 0, 0)]


def test_per_item_failures_make_the_task_failed() -> None:
    d = Dispatcher()
    d.handle(NodeJoined("a", 2, 2), 0)
    first, second = assigned(d.handle(task(items=4, chunk_size=2), 0))
    d.handle(result("a", first, items_ok=1), 1)
    finished = of_type(d.handle(result("a", second, items_ok=99), 1), TaskFinished)  # clamped to 2
    assert finished == [TaskFinished("t", TaskState.FAILED, 3, 1, {"a": 4})]


# --- leases ---------------------------------------------------------------------------------


def test_a_lost_nodes_chunks_go_first_keeping_number_and_range() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=20), 0)
    held = assigned(d.handle(NodeJoined("a", 2, 2), 0))
    actions = d.handle(NodeLost("a", "reset"), 1)
    assert actions == [
        ChunkRequeued("t", 0, 0, 2, "a", "node lost"), ChunkRequeued("t", 1, 2, 4, "a", "node lost"),
    ]
    assert assigned(d.handle(NodeJoined("b", 3, 3), 2)) == [
        ("b", "t", 0, 0, 2, 2), ("b", "t", 1, 2, 4, 2), ("b", "t", 2, 4, 6, 1),
    ]
    assert len(held) == 2


@pytest.mark.parametrize("event, abandoned", [
    (NodeLost("a", "reset"), True), (NodeLeft("a"), False), (KickRequested("a"), False),
])
def test_only_a_lost_node_counts_against_the_chunk(event: object, abandoned: bool) -> None:
    d = Dispatcher()
    d.handle(task(items=2, max_attempts=1), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    actions = d.handle(event, 1)  # type: ignore[arg-type]
    assert bool(of_type(actions, ChunkAbandoned)) is abandoned
    assert bool(of_type(actions, ChunkRequeued)) is not abandoned


def test_a_kick_closes_the_node_and_requeues_at_once() -> None:
    d = Dispatcher()
    d.handle(task(items=2), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    assert d.handle(KickRequested("a"), 1) == [
        CloseNode("a", "kicked by the operator"), ChunkRequeued("t", 0, 0, 2, "a", "node kicked"),
    ]
    assert d.snapshot(1).nodes == ()


def test_a_silent_node_is_closed_by_tick_and_its_chunks_requeued() -> None:
    d = Dispatcher(heartbeat_timeout_s=5.0)
    d.handle(task(items=2), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(HeartbeatReceived("a"), 3)
    assert d.handle(Tick(), 8.0) == []  # exactly the timeout: not yet
    actions = d.handle(Tick(), 8.5)
    assert actions == [CloseNode("a", "silent for 5.5 s"), ChunkRequeued("t", 0, 0, 2, "a", "node lost")]


@pytest.mark.parametrize("sign_of_life", [
    HeartbeatReceived("a"), CreditChanged("a", 1), ChunkFailed("a", "t", 0, 1, "oops"),
    ResultReceived("a", "t", 0, 1, 2, 0.1),
])
def test_every_message_from_a_node_is_a_sign_of_life(sign_of_life: object) -> None:
    d = Dispatcher(heartbeat_timeout_s=5.0)
    d.handle(task(items=100), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(sign_of_life, 4)  # type: ignore[arg-type]
    assert of_type(d.handle(Tick(), 8), CloseNode) == []
    assert d.snapshot(8).nodes[0].last_seen == 4


def _straggler(d: Dispatcher) -> tuple[tuple[str, str, int, int, int, int], ...]:
    """Node a holds the only chunk; node b joins with nothing to do."""
    d.handle(task(items=2), 0)
    (original,) = assigned(d.handle(NodeJoined("a", 1, 1), 0))
    assert d.handle(NodeJoined("b", 1, 1), 0) == []
    return (original,)


def test_an_overdue_chunk_gets_one_backup_on_another_node() -> None:
    d = Dispatcher(min_lease_s=10.0, heartbeat_timeout_s=1000.0)
    (original,) = _straggler(d)
    for now in range(1, 11):
        assert d.handle(Tick(), now) == []
    assert d.handle(Tick(), 10.5) == [
        ChunkRequeued("t", 0, 0, 2, "a", "overdue, re-issued"), AssignChunk("b", "t", 0, 0, 2, 2),
    ]
    d.handle(NodeJoined("c", 1, 1), 11)
    assert d.handle(Tick(), 30) == []  # the backup is overdue too, but one extra copy at a time
    assert d.wants_result("t", 0, 1) and d.wants_result("t", 0, 2)


@pytest.mark.parametrize("winner, loser", [("b", "a"), ("a", "b")])
def test_the_first_valid_result_wins_and_the_other_copy_is_cancelled(winner: str, loser: str) -> None:
    d = Dispatcher(min_lease_s=10.0, heartbeat_timeout_s=100.0)
    (original,) = _straggler(d)
    backup = assigned(d.handle(Tick(), 11))[0]
    copies = {"a": original, "b": backup}
    actions = d.handle(result(winner, copies[winner]), 12)
    assert actions == [
        ChunkCompleted("t", 0, 0, 2, copies[winner][5], winner, 2),
        CancelChunk(loser, "t", 0, copies[loser][5]),
        TaskFinished("t", TaskState.DONE, 2, 0, {winner: 2}),
    ]
    assert d.handle(result(loser, copies[loser]), 13) == []  # no double counting
    assert d.snapshot(13).tasks[0].items_done == 2


def test_a_backup_never_goes_to_the_node_holding_the_original() -> None:
    d = Dispatcher(min_lease_s=10.0, heartbeat_timeout_s=100.0)
    d.handle(task(items=2), 0)
    d.handle(NodeJoined("a", 3, 3), 0)
    assert assigned(d.handle(Tick(), 11)) == []
    assert assigned(d.handle(NodeJoined("b", 1, 1), 12)) == [("b", "t", 0, 0, 2, 2)]


def test_backups_wait_behind_fresh_work() -> None:
    d = Dispatcher(prefetch=0, min_lease_s=10.0, heartbeat_timeout_s=100.0)
    d.handle(task(items=4, chunk_size=2), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(Tick(), 11)  # chunk 0 is overdue and lines up for a backup
    assert assigned(d.handle(NodeJoined("b", 1, 1), 12)) == [("b", "t", 1, 2, 4, 1)]


def test_the_lease_follows_the_measured_speed() -> None:
    d = Dispatcher(prefetch=0, min_lease_s=10.0, straggler_factor=4.0, heartbeat_timeout_s=1000.0)
    d.handle(NodeJoined("a", 1, 1), 0)
    (first,) = assigned(d.handle(task(items=20, chunk_size=10), 0))
    assert assigned(d.handle(result("a", first, elapsed_s=10.0), 10)) == [("a", "t", 1, 10, 20, 1)]
    d.handle(NodeJoined("b", 1, 1), 10)
    assert d.handle(Tick(), 49) == []  # 1 s per item: expected 10 s, overdue after 4 x 10 s
    assert assigned(d.handle(Tick(), 50.5)) == [("b", "t", 1, 10, 20, 2)]


def test_a_late_result_from_a_node_that_has_gone_is_accepted() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=2), 0)
    (original,) = assigned(d.handle(NodeJoined("a", 1, 1), 0))
    d.handle(NodeLost("a", "reset"), 1)
    (retry,) = assigned(d.handle(NodeJoined("b", 1, 1), 1))
    assert retry[5] == 2 and d.wants_result("t", 0, 1)
    assert d.handle(result("a", original), 2) == [
        ChunkCompleted("t", 0, 0, 2, 1, "a", 2), CancelChunk("b", "t", 0, 2), TaskFinished("t", TaskState.DONE, 2, 0, {"a": 2}),
    ]
    assert d.snapshot(2).tasks[0].items_by_node == {"a": 2}


@pytest.mark.parametrize("bogus", [
    ResultReceived("b", "t", 0, 1, 2, 0.1),  # not the node it was issued to
    ResultReceived("a", "t", 0, 2, 2, 0.1),  # an attempt never issued
    ResultReceived("a", "t", 7, 1, 2, 0.1),  # a chunk never carved
    ResultReceived("a", "nope", 0, 1, 2, 0.1),
    ChunkFailed("b", "t", 0, 1, "x"), ChunkFailed("a", "t", 0, 3, "x"), ChunkFailed("a", "zz", 0, 1, "x"),
    CreditChanged("zz", 5), HeartbeatReceived("zz"), NodeLeft("zz"), NodeLost("zz", "x"),
    DrainRequested("zz"), KickRequested("zz"), QuarantineReleased("zz"), QuarantineReleased("a"),
    TaskCancelled("zz"),
])
def test_unknown_ids_and_stale_attempts_are_ignored(bogus: object) -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=2), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(NodeJoined("b", 1, 1), 0)
    before = (d.snapshot(0), d.chunk_map("t"))
    assert d.handle(bogus, 0) == []  # type: ignore[arg-type]
    assert (d.snapshot(0), d.chunk_map("t")) == before


def test_something_that_is_not_an_event_is_a_bug_of_the_caller() -> None:
    with pytest.raises(TypeError):
        Dispatcher().handle("NodeJoined", 0)  # type: ignore[arg-type]


def test_a_duplicate_task_id_is_ignored() -> None:
    d = Dispatcher()
    d.handle(task(items=4), 0)
    assert d.handle(task(items=99), 0) == []
    assert d.snapshot(0).tasks[0].items == 4


# --- bounded attempts and failures ----------------------------------------------------------


def test_a_chunk_failing_max_attempts_times_is_abandoned_and_the_task_still_finishes() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=4, max_attempts=2), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(NodeJoined("b", 1, 1), 0)
    assert d.handle(ChunkFailed("a", "t", 0, 1, "worker crashed"), 1) == [
        ChunkRequeued("t", 0, 0, 2, "a", "failed: worker crashed"),
    ]  # not straight back to a: b can take it once it has room
    assert d.handle(ResultReceived("b", "t", 1, 1, 2, 0.1), 2) == [
        ChunkCompleted("t", 1, 2, 4, 1, "b", 2), AssignChunk("b", "t", 0, 0, 2, 2),
    ]
    assert d.handle(ChunkFailed("b", "t", 0, 2, "worker crashed"), 3) == [
        ChunkAbandoned("t", 0, 0, 2, "failed 2 times, last: failed: worker crashed"),
        TaskFinished("t", TaskState.FAILED, 2, 2, {"b": 2}),
    ]
    assert not d.wants_result("t", 0, 2)


def test_a_failure_that_is_not_retryable_abandons_the_chunk_at_once() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=4, max_attempts=3), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(NodeJoined("b", 1, 1), 0)
    actions = d.handle(ChunkFailed("a", "t", 0, 1, "unknown operation", retryable=False), 1)
    assert actions == [ChunkAbandoned("t", 0, 0, 2, "failed 3 times, last: failed, not retryable: unknown operation")]
    assert not d.wants_result("t", 0, 1)
    assert assigned(actions) == []  # no other attempt at it, on a or on b
    assert d.handle(ResultReceived("b", "t", 1, 1, 2, 0.1), 2) == [
        ChunkCompleted("t", 1, 2, 4, 1, "b", 2), TaskFinished("t", TaskState.FAILED, 2, 2, {"b": 2}),
    ]


def test_a_retryable_failure_is_retried_and_a_later_permanent_one_ends_it() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=2, max_attempts=5), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    assert assigned(d.handle(ChunkFailed("a", "t", 0, 1, "crash", retryable=True), 1)) == [("a", "t", 0, 0, 2, 2)]
    actions = d.handle(ChunkFailed("a", "t", 0, 2, "bad input", retryable=False), 2)
    assert of_type(actions, ChunkAbandoned) == [ChunkAbandoned("t", 0, 0, 2, "failed 5 times, last: failed, not retryable: bad input")]
    assert of_type(actions, TaskFinished)[0].state is TaskState.FAILED


def test_a_permanent_failure_waits_for_a_copy_still_running() -> None:
    d = Dispatcher(prefetch=0, min_lease_s=1.0, straggler_factor=1.0)
    d.handle(task(items=2, max_attempts=3), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(NodeJoined("b", 1, 1), 0)
    backup = assigned(d.handle(Tick(), 5))
    assert backup == [("b", "t", 0, 0, 2, 2)]
    assert of_type(d.handle(ChunkFailed("a", "t", 0, 1, "x", retryable=False), 6), ChunkAbandoned) == []
    assert of_type(d.handle(ResultReceived("b", "t", 0, 2, 2, 0.1), 7), ChunkCompleted)  # the backup still counts


def test_a_failed_chunk_goes_to_another_node_when_one_can_take_it() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=6), 0)
    d.handle(NodeJoined("a", 1, 1), 0)  # chunk 0
    d.handle(NodeJoined("b", 1, 1), 0)  # chunk 1
    actions = d.handle(ChunkFailed("a", "t", 0, 1, "x"), 1)
    assert assigned(actions) == [("a", "t", 2, 4, 6, 1)]  # fresh work for a
    assert assigned(d.handle(ResultReceived("b", "t", 1, 1, 2, 0.1), 2)) == [("b", "t", 0, 0, 2, 2)]


def test_a_lone_node_gets_its_failed_chunk_back() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=2), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    assert assigned(d.handle(ChunkFailed("a", "t", 0, 1, "x"), 1)) == [("a", "t", 0, 0, 2, 2)]


def test_an_invalid_result_forwarded_by_a_link_requeues_without_blaming_the_link() -> None:
    d = Dispatcher(prefetch=0, max_node_errors=1)
    d.handle(task(items=4), 0)
    first, = assigned(d.handle(NodeJoined("link", 1, 1), 0))
    actions = d.handle(ResultReceived("link", "t", 0, first[5], 2, 0.1, valid=False, blame=False), 1)
    assert actions[0] == ChunkRequeued("t", 0, 0, 2, "link", "invalid result")
    assert of_type(actions, NodeQuarantined) == []
    assert d.snapshot(1).nodes[0].errors == 0


def test_errors_caught_upstream_count_towards_quarantine() -> None:
    d = Dispatcher(prefetch=0, max_node_errors=2)
    d.handle(task(items=4), 0)
    held, = assigned(d.handle(NodeJoined("b", 1, 1), 0))
    assert d.handle(ErrorCounted("b", "caught upstream"), 1) == [NodeDistrusted("b")]
    assert d.snapshot(1).nodes[0].errors == 1
    actions = d.handle(ErrorCounted("b", "caught upstream"), 2)
    assert actions[:3] == [NodeDistrusted("b"), NodeQuarantined("b", "2 invalid results"),
                           CancelChunk("b", "t", held[2], held[5])]
    assert d.handle(ErrorCounted("b", "again"), 3) == []  # already quarantined
    assert d.handle(ErrorCounted("nobody", "x"), 3) == []


def test_invalid_results_requeue_and_quarantine_the_node() -> None:
    d = Dispatcher(prefetch=0, max_node_errors=2)
    d.handle(task(items=20), 0)
    first, second = assigned(d.handle(NodeJoined("a", 2, 2), 0))
    actions = d.handle(result("a", first, valid=False), 1)
    assert actions[0] == ChunkRequeued("t", 0, 0, 2, "a", "invalid result")
    assert d.snapshot(1).nodes[0].errors == 1
    third = assigned(actions)[0]
    actions = d.handle(result("a", second, valid=False), 2)
    assert actions == [
        ChunkRequeued("t", 1, 2, 4, "a", "invalid result"),
        NodeDistrusted("a"),
        NodeQuarantined("a", "2 invalid results"),
        CancelChunk("a", "t", third[2], 1),
        ChunkRequeued("t", third[2], third[3], third[4], "a", "node quarantined"),
    ]
    assert d.snapshot(2).nodes[0].state is NodeState.QUARANTINED
    assert d.handle(result("a", third), 3) == []  # not trusted while quarantined
    assert d.handle(CreditChanged("a", 2), 4) == []
    # work again; the requeued chunks wait for another node, as they went back in line from a
    assert [a[2] for a in assigned(d.handle(QuarantineReleased("a"), 5))] == [3, 4]
    assert d.snapshot(5).nodes[0].errors == 0


def test_a_node_rejoining_loses_its_old_sessions_chunks_but_keeps_its_standing() -> None:
    d = Dispatcher(prefetch=0, max_node_errors=1)
    d.handle(task(items=20), 0)
    first, _ = assigned(d.handle(NodeJoined("a", 2, 2), 0))
    actions = d.handle(NodeJoined("a", 1, 1), 1)  # a new session under the same name
    assert of_type(actions, ChunkRequeued) == [
        ChunkRequeued("t", 0, 0, 2, "a", "node rejoined"), ChunkRequeued("t", 1, 2, 4, "a", "node rejoined"),
    ]
    (fresh,) = assigned(actions)
    assert fresh == ("a", "t", 2, 4, 6, 1)
    assert of_type(d.handle(result("a", first), 2), ChunkCompleted) == [ChunkCompleted("t", 0, 0, 2, 1, "a", 2)]
    d.handle(result("a", fresh, valid=False), 3)
    assert d.handle(NodeJoined("a", 2, 2), 4) == []
    assert d.snapshot(4).nodes[0].state is NodeState.QUARANTINED


# --- drain, cancel, fairness ----------------------------------------------------------------


def test_a_draining_node_finishes_what_it_holds_then_is_drained() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=20), 0)
    first, second = assigned(d.handle(NodeJoined("a", 2, 2), 0))
    assert d.handle(DrainRequested("a"), 1) == []
    assert d.snapshot(1).nodes[0].state is NodeState.DRAINING
    assert d.handle(result("a", first), 2) == [ChunkCompleted("t", 0, 0, 2, 1, "a", 2)]
    assert d.handle(result("a", second), 3) == [ChunkCompleted("t", 1, 2, 4, 1, "a", 2), NodeDrained("a")]
    assert d.handle(CreditChanged("a", 5), 4) == []
    assert d.handle(DrainRequested("a"), 5) == [NodeDrained("a")]


def test_cancel_stops_every_copy_and_frees_the_nodes_for_other_tasks() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task("t1", items=20), 0)
    first, second = assigned(d.handle(NodeJoined("a", 2, 2), 0))
    d.handle(result("a", first, items_ok=1), 1)
    d.handle(task("t2", items=2), 1)
    actions = d.handle(TaskCancelled("t1"), 2)
    assert actions[:3] == [
        CancelChunk("a", "t1", 1, 1), CancelChunk("a", "t1", 2, 1), TaskFinished("t1", TaskState.CANCELLED, 1, 1, {"a": 2}),
    ]
    assert assigned(actions) == [("a", "t2", 0, 0, 2, 1)]
    assert d.handle(result("a", second), 3) == []
    assert not d.wants_result("t1", 1, 1)
    assert d.handle(TaskCancelled("t1"), 4) == []


def test_running_tasks_take_turns_and_a_task_with_nothing_ready_is_skipped() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task("t1", items=2), 0)
    d.handle(task("t2", items=100), 0)
    d.handle(task("t3", items=100), 0)
    tasks = [a[1] for a in assigned(d.handle(NodeJoined("a", 7, 7), 0))]
    assert tasks == ["t1", "t2", "t3", "t2", "t3", "t2", "t3"]


# --- views ----------------------------------------------------------------------------------


def test_the_snapshot_shows_nodes_and_tasks() -> None:
    d = Dispatcher(prefetch=1)
    d.handle(NodeJoined("a", 1, 5), 1)
    d.handle(NodeJoined("b", 0, 0), 2)
    first, second = assigned(d.handle(task(items=4, chunk_size=2, owner="ann"), 3))
    d.handle(NodeJoined("c", 1, 5), 3)
    snap = d.snapshot(4)
    assert [(n.node_id, n.state, n.window, n.in_flight) for n in snap.nodes] == [
        ("a", NodeState.BUSY, 2, 2), ("b", NodeState.IDLE, 0, 0), ("c", NodeState.IDLE, 2, 0),
    ]
    assert (snap.tasks[0].state, snap.tasks[0].chunks_in_flight, snap.tasks[0].finished_at) == (
        TaskState.RUNNING, 2, None,
    )
    d.handle(result("a", first, items_ok=1), 5)
    d.handle(result("a", second), 7)
    (view,) = d.snapshot(10).tasks
    assert (view.owner, view.state, view.items_done, view.items_failed, view.chunks_in_flight) == (
        "ann", TaskState.FAILED, 4, 1, 0,
    )
    assert (view.submitted_at, view.finished_at, view.items_per_s) == (3, 7, 1.0)  # 4 items in 4 s
    assert dict(view.items_by_node) == {"a": 4}
    a = d.snapshot(10).nodes[0]
    assert (a.state, a.items_done, a.chunks_done, a.joined_at, a.last_seen) == (NodeState.IDLE, 4, 2, 1, 7)


def test_the_chunk_map_covers_every_item_in_order() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=14, max_attempts=1, completed=((12, 14),)), 0)
    d.handle(NodeJoined("a", 3, 3), 0)  # chunks 0, 1, 2
    d.handle(ResultReceived("a", "t", 0, 1, 2, 0.1), 1)  # done; chunk 3 assigned
    d.handle(ChunkFailed("a", "t", 1, 1, "x"), 2)  # abandoned (1 attempt); chunk 4 assigned
    d.handle(DrainRequested("a"), 3)
    assert d.chunk_map("t") == [
        ChunkView(0, 0, 2, ChunkState.DONE, 1),
        ChunkView(1, 2, 4, ChunkState.FAILED, 1),
        ChunkView(2, 4, 6, ChunkState.RUNNING, 1),
        ChunkView(3, 6, 8, ChunkState.RUNNING, 1),
        ChunkView(4, 8, 10, ChunkState.RUNNING, 1),
        ChunkView(-1, 10, 12, ChunkState.QUEUED, 0),
        ChunkView(-1, 12, 14, ChunkState.DONE, 0),
    ]


def test_a_chunk_that_failed_once_shows_as_retried() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(task(items=2), 0)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(ChunkFailed("a", "t", 0, 1, "x"), 1)
    assert d.chunk_map("t") == [ChunkView(0, 0, 2, ChunkState.RETRIED, 2)]
    d.handle(ResultReceived("a", "t", 0, 2, 2, 0.1), 2)
    assert d.chunk_map("t") == [ChunkView(0, 0, 2, ChunkState.RETRIED, 2)]


def test_queries_about_unknown_tasks_and_chunks() -> None:
    d = Dispatcher()
    d.handle(task(), 0)
    assert not d.wants_result("zz", 0, 1)
    assert not d.wants_result("t", 0, 1)  # nothing issued yet
    with pytest.raises(KeyError):
        d.chunk_range("t", 0)
    with pytest.raises(KeyError):
        d.chunk_map("zz")


def test_a_chain_link_that_grows_gets_room_for_its_whole_subtree() -> None:
    dispatcher = Dispatcher(prefetch=1)
    dispatcher.handle(TaskSubmitted("t", 100, 1, 3), 0.0)
    first = dispatcher.handle(NodeJoined("link", 1, 2), 0.0)
    assert len([a for a in first if isinstance(a, AssignChunk)]) == 2
    grown = dispatcher.handle(CreditChanged("link", 6, slots=5), 0.1)
    assert len([a for a in grown if isinstance(a, AssignChunk)]) == 4  # its window of 6 in all
    shrunk = dispatcher.handle(CreditChanged("link", 2, slots=1), 0.2)
    assert not [a for a in shrunk if isinstance(a, AssignChunk)]


def test_a_finished_task_can_be_forgotten_and_a_live_one_cannot() -> None:
    dispatcher = Dispatcher()
    dispatcher.handle(TaskSubmitted("done", 1, 1, 3), 0.0)
    dispatcher.handle(TaskSubmitted("live", 5, 1, 3), 0.0)
    assign = next(a for a in dispatcher.handle(NodeJoined("n", 1, 1), 0.0) if isinstance(a, AssignChunk))
    assert assign.task_id == "done"
    dispatcher.handle(ResultReceived("n", "done", 0, 1, 1, 0.1), 0.1)
    dispatcher.forget("done")
    dispatcher.forget("live")
    assert [t.task_id for t in dispatcher.snapshot(0.2).tasks] == ["live"]
    assert not dispatcher.wants_result("done", 0, 1)
