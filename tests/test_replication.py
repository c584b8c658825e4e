"""The Dispatcher's replication and standing rules, event by event (no clock, no I/O).

A task whose results have no cheap check (``replicate``) has each result held until a
second node confirms it, or the shell computes it itself when no other node can; a node
caught lying has its unconfirmed results reopened; errors follow the node across sessions.
"""

from __future__ import annotations

import pytest

from protocol.dispatch_events import (
    ChunkCompleted,
    ChunkReopened,
    ConfirmHeld,
    HeldChecked,
    NodeJoined,
    NodeLeft,
    NodeQuarantined,
    ResultHeld,
    ResultReceived,
    TaskFinished,
    TaskState,
    Tick,
)
from protocol.dispatcher import Dispatcher
from protocol import replication
from protocol.replication import OsDraws, ReplicationPolicy
from tests.test_dispatcher import assigned, of_type, result, task


def replicated(items: int = 4, **extra: object):
    return task(items=items, chunk_size=2, replicate=True, **extra)


def confirm(node: str, assignment, *, held_valid: bool = True, confirmed: bool = True) -> ResultReceived:
    """A second node's result, compared with the held one by the shell."""
    _, task_id, chunk, start, stop, attempt = assignment
    return ResultReceived(node, task_id, chunk, attempt, stop - start, 0.1, True, held_valid=held_valid,
                          confirmed=confirmed)


def two_nodes(**kwargs: object) -> tuple[Dispatcher, list]:
    d = Dispatcher(prefetch=0, **kwargs)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(NodeJoined("b", 1, 1), 0)
    return d, assigned(d.handle(replicated(), 0))


def test_a_result_is_held_until_a_second_node_confirms_it() -> None:
    d, work = two_nodes()
    first = next(w for w in work if w[0] == "a")
    out = d.handle(result("a", first), 1)
    assert of_type(out, ResultHeld) == [ResultHeld("a", "t", first[2], 1)]
    assert not of_type(out, ChunkCompleted)
    assert d.held_attempt("t", first[2]) == 1
    # b finishes its own chunk (held too), then gets a's chunk: never a itself
    second = next(w for w in work if w[0] == "b")
    out = d.handle(result("b", second), 2)
    replica = next(w for w in assigned(out) if w[2] == first[2])
    assert replica[0] == "b" and replica[5] == 2
    out = d.handle(confirm("b", replica), 3)
    assert of_type(out, ChunkCompleted) == [ChunkCompleted("t", first[2], first[3], first[4], 2, "b", 2)]
    assert d.held_attempt("t", first[2]) is None


def test_a_node_never_confirms_its_own_result() -> None:
    d, work = two_nodes()
    first = next(w for w in work if w[0] == "a")
    d.handle(result("a", first), 1)
    # a has room again, but the only waiting chunk is its own held one (b still busy)
    assert all(w[2] != first[2] for w in assigned(d.handle(Tick(), 2)) if w[0] == "a")


def test_a_wrong_held_result_is_blamed_and_the_confirmer_wins() -> None:
    d, work = two_nodes(max_node_errors=3)
    first = next(w for w in work if w[0] == "a")
    second = next(w for w in work if w[0] == "b")
    d.handle(result("a", first), 1)
    replica = next(w for w in assigned(d.handle(result("b", second), 2)) if w[2] == first[2])
    out = d.handle(confirm("b", replica, held_valid=False), 3)
    assert of_type(out, ChunkCompleted)[0].node_id == "b"
    assert {v.node_id: v.errors for v in d.snapshot(3).nodes}["a"] == 1


def test_a_lone_node_has_its_held_result_confirmed_by_the_shell() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(NodeJoined("a", 1, 1), 0)
    first = assigned(d.handle(replicated(items=2), 0))[0]
    out = d.handle(result("a", first), 1)
    assert of_type(out, ConfirmHeld) == [ConfirmHeld("a", "t", 0, 1)]
    assert of_type(d.handle(Tick(), 2), ConfirmHeld) == []  # asked once
    out = d.handle(HeldChecked("t", 0, 1, True), 3)
    assert of_type(out, ChunkCompleted) == [ChunkCompleted("t", 0, 0, 2, 1, "a", 2, held=True)]
    assert of_type(out, TaskFinished)[0].state is TaskState.DONE


def test_a_held_result_whose_confirmer_left_is_confirmed_by_the_shell() -> None:
    d, work = two_nodes()
    first = next(w for w in work if w[0] == "a")
    d.handle(result("a", first), 1)
    d.handle(NodeLeft("b"), 2)
    assert of_type(d.handle(Tick(), 3), ConfirmHeld) == [ConfirmHeld("a", "t", first[2], 1)]


def test_a_wrong_result_found_by_the_shell_is_computed_again() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(NodeJoined("a", 1, 1), 0)
    first = assigned(d.handle(replicated(items=2), 0))[0]
    d.handle(result("a", first), 1)
    out = d.handle(HeldChecked("t", 0, 1, False), 2)
    assert not of_type(out, ChunkCompleted)
    assert {v.node_id: v.errors for v in d.snapshot(2).nodes}["a"] == 1


def run_replicated(policy: ReplicationPolicy, items: int = 40) -> tuple[list[bool], int, TaskFinished]:
    """Two nodes run a replicated task to its end, confirming held results as they come back:
    whether each result was held, the chunks completed, and how the task finished."""
    d = Dispatcher(prefetch=0, replication=policy)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(NodeJoined("b", 1, 1), 0)
    work = assigned(d.handle(replicated(items=items), 0))
    holds: list[bool] = []
    completed = 0
    finished: list[TaskFinished] = []
    now = 1.0
    while work:
        node, *_ = assignment = work.pop(0)
        now += 1
        if d.held_attempt("t", assignment[2]) not in (None, assignment[5]):
            out = d.handle(confirm(node, assignment), now)
        else:
            out = d.handle(result(node, assignment), now)
        holds.append(bool(of_type(out, ResultHeld)))
        completed += len(of_type(out, ChunkCompleted))
        finished += of_type(out, TaskFinished)
        work += assigned(out)
    (end,) = finished
    return holds, completed, end


def test_after_probation_only_a_sample_is_replicated() -> None:
    rolls = iter([0.5] * 100)
    holds, completed, end = run_replicated(ReplicationPolicy(2, 0.1, lambda: next(rolls)))
    # results are held until each node has two confirmed; then a roll of 0.5 ≥ 0.1 holds none
    assert holds[:2] == [True, True]
    assert 2 <= sum(holds) <= 4 and not any(holds[8:])
    assert completed == 20
    assert end.replicated_chunks == sum(holds)  # what replication cost, in chunks computed again


def test_the_operator_chooses_the_rate_from_none_to_every_result() -> None:
    holds, completed, end = run_replicated(ReplicationPolicy(2, 1.0))
    assert completed == 20 and sum(holds) == 20 == end.replicated_chunks  # every chunk computed twice
    holds, completed, end = run_replicated(ReplicationPolicy(2, 0.0))
    assert completed == 20 and 2 <= end.replicated_chunks == sum(holds) <= 4  # probation only
    for rate in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            ReplicationPolicy(rate=rate)


def test_a_caught_node_has_its_unconfirmed_results_computed_again() -> None:
    rolls = iter([0.5] * 100)
    d = Dispatcher(prefetch=0, replication=ReplicationPolicy(0, 0.1, lambda: next(rolls)), max_node_errors=5)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(NodeJoined("b", 1, 1), 0)
    work = assigned(d.handle(replicated(items=8), 0))
    a_first = next(w for w in work if w[0] == "a")
    out = d.handle(result("a", a_first), 1)  # a proven node (probation 0), not sampled: stored unconfirmed
    assert of_type(out, ChunkCompleted) and d.task_view("t", 1).items_done == 2
    a_next = next(w for w in assigned(out) if w[0] == "a")
    # a's next result is judged wrong: what it completed unconfirmed is reopened
    out = d.handle(result("a", a_next, valid=False), 2)
    assert of_type(out, ChunkReopened) == [ChunkReopened("t", a_first[2], a_first[3], a_first[4], "a",
                                                         "its node was caught with a wrong result")]
    assert d.task_view("t", 2).items_done == 0
    assert d.task_view("t", 2).items_by_node == {}


def test_errors_follow_the_node_across_sessions() -> None:
    d = Dispatcher(prefetch=0, max_node_errors=2)
    d.handle(NodeJoined("a", 1, 1), 0)
    d.handle(NodeJoined("b", 1, 1), 0)
    work = assigned(d.handle(task(items=8, chunk_size=2), 0))
    mine = next(w for w in work if w[0] == "a")
    d.handle(result("a", mine, valid=False), 1)
    d.handle(NodeLeft("a"), 2)
    out = d.handle(NodeJoined("a", 1, 1), 3)  # a new session of the same node (the hub binds ids to keys)
    assert {v.node_id: v.errors for v in d.snapshot(3).nodes}["a"] == 1
    again = next(w for w in assigned(out) if w[0] == "a")
    assert of_type(d.handle(result("a", again, valid=False), 4), NodeQuarantined)


def test_a_forgotten_node_starts_clean() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(NodeJoined("a", 1, 1), 0)
    work = assigned(d.handle(task(items=2, chunk_size=2), 0))
    d.handle(result("a", work[0], valid=False), 1)
    d.handle(NodeLeft("a"), 2)
    d.forget_node("a")
    d.handle(NodeJoined("a", 1, 1), 3)
    assert {v.node_id: v.errors for v in d.snapshot(3).nodes}["a"] == 0


def test_chunks_needing_an_installed_operation_go_only_to_nodes_that_have_it() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(NodeJoined("plain", 2, 2), 0)
    out = d.handle(task(items=4, operation="cholesky"), 0)
    assert assigned(out) == []
    assert d.task_view("t", 0).waiting == "no connected node has operation cholesky"
    out = d.handle(NodeJoined("gpu", 1, 1, frozenset({"cholesky"}), {"gpu": 1}), 1)
    assert [w[0] for w in assigned(out)] == ["gpu"]
    assert d.task_view("t", 1).waiting == ""


def test_a_task_requiring_a_resource_waits_for_a_node_that_has_enough() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(NodeJoined("small", 1, 1, resources={"memory_gb": 8}), 0)
    assert assigned(d.handle(task(items=2, requires={"memory_gb": 64}), 0)) == []
    assert d.task_view("t", 0).waiting == "no connected node has memory_gb ≥ 64"
    out = d.handle(NodeJoined("big", 1, 1, resources={"memory_gb": 128}), 1)
    assert [w[0] for w in assigned(out)] == ["big"]


def test_a_replica_of_an_installed_operation_needs_a_node_that_has_it() -> None:
    d = Dispatcher(prefetch=0)
    d.handle(NodeJoined("a", 1, 1, frozenset({"logdet"})), 0)
    d.handle(NodeJoined("plain", 1, 1), 0)
    first = assigned(d.handle(task(items=2, operation="logdet", replicate=True), 0))[0]
    out = d.handle(result("a", first), 1)
    # "plain" cannot confirm it: the shell is asked to
    assert of_type(out, ConfirmHeld) == [ConfirmHeld("a", "t", 0, 1)]


def test_draws_come_from_the_operating_system_a_block_at_a_time(monkeypatch) -> None:
    reads = []
    real = replication.os.urandom

    def counted(size: int) -> bytes:
        reads.append(size)
        return real(size)

    monkeypatch.setattr(replication.os, "urandom", counted)
    draws = OsDraws(block=64)
    values = [draws() for _ in range(64)]
    assert reads == [8 * 64]  # one read for the block
    assert all(0.0 <= value < 1.0 for value in values) and len(set(values)) == 64
    assert all(value * 2**53 == int(value * 2**53) for value in values)  # 53 random bits each
    draws()
    assert reads == [8 * 64, 8 * 64]  # the next block when the first is used up
    draws._forget()  # what a forked child does first: it never draws its parent's bytes
    draws()
    assert len(reads) == 3
    assert 0.3 < sum(OsDraws()() for _ in range(4000)) / 4000 < 0.7
