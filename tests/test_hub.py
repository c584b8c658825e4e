"""Unit tests of the Hub, one rule at a time: calls in, outputs compared; the clock is a float."""

from __future__ import annotations

import pytest

from protocol import dispatcher as d
from protocol.hub import (
    DEPARTED_KEPT, MAX_SUBTREE_NODES, CloseSession, Hub, HubError, Note, Output, Refused, ResultAccepted,
    SendMessage,
)
from protocol.messages import Control, Drain

TIMEOUT_S = 2.0


def hub_with_task(items: int = 10, chunk_size: int = 2, **settings: object) -> Hub:
    hub = Hub(d.Dispatcher(heartbeat_timeout_s=TIMEOUT_S, **settings))  # type: ignore[arg-type]
    hub.handle(d.TaskSubmitted("t", items, chunk_size, 3), 0.0)
    return hub


def connect(hub: Hub, name: str, key: str, *, slots: int = 1, window: int = 1, now: float = 0.0,
            host_key: str = "") -> tuple[str, list[Output]]:
    """Admit and join a node as the shell does; its id and the join's outputs."""
    node_id = hub.admit(name, key, address="10.0.0.1", slots=slots, now=now, host_key=host_key)
    return node_id, hub.join(node_id, slots, window, now)


def assigned(outputs: list[Output]) -> list[d.AssignChunk]:
    return [output for output in outputs if isinstance(output, d.AssignChunk)]


def without_notes(outputs: list[Output]) -> list[Output]:
    return [output for output in outputs if not isinstance(output, Note)]


def answer(hub: Hub, assignment: d.AssignChunk, now: float, *, valid: bool = True) -> list[Output]:
    """The checked result of one assignment handed to the hub."""
    size = assignment.stop - assignment.start
    return hub.result(assignment.node_id, assignment.task_id, assignment.chunk, assignment.attempt,
                      items_ok=size if valid else 0, elapsed_s=0.1, valid=valid, now=now)


def row_of(hub: Hub, node_id: str, now: float = 100.0):  # noqa: ANN201 - a NodeRow
    (row,) = [row for row in hub.rows(now) if row.node_id == node_id]
    return row


# --- node ids -------------------------------------------------------------------------------

# Each step: ("admit", name, key, expected id) or ("depart", id).
ID_STORIES = {
    "three sessions of one key, then its first id back": [
        ("admit", "gpu", "K", "gpu"), ("admit", "gpu", "K", "gpu-2"), ("admit", "gpu", "K", "gpu-3"),
        ("depart", "gpu"), ("depart", "gpu-2"), ("depart", "gpu-3"),
        ("admit", "gpu", "K", "gpu"),
    ],
    "a live session keeps its id; the key gets back the one that is free": [
        ("admit", "gpu", "K", "gpu"), ("admit", "gpu", "K", "gpu-2"), ("depart", "gpu"),
        ("admit", "gpu", "K", "gpu"), ("admit", "gpu", "K", "gpu-3"),
    ],
    "another key never takes a departed node's id": [
        ("admit", "gpu", "K", "gpu"), ("depart", "gpu"),
        ("admit", "gpu", "L", "gpu-2"), ("admit", "gpu", "K", "gpu"),
    ],
    "another key skips every suffix held by the first": [
        ("admit", "gpu", "K", "gpu"), ("admit", "gpu", "K", "gpu-2"), ("depart", "gpu"), ("depart", "gpu-2"),
        ("admit", "gpu", "L", "gpu-3"), ("depart", "gpu-3"), ("admit", "gpu", "L", "gpu-3"),
    ],
    "names of different nodes do not collide": [
        ("admit", "gpu", "K", "gpu"), ("admit", "cpu", "K", "cpu"), ("admit", "gpu-2", "L", "gpu-2"),
        ("admit", "gpu", "K", "gpu-3"),
    ],
}


@pytest.mark.parametrize("story", ID_STORIES.values(), ids=ID_STORIES.keys())
def test_node_ids_belong_to_keys(story: list[tuple[str, ...]]) -> None:
    hub = hub_with_task()
    for now, (call, *args) in enumerate(story):
        if call == "admit":
            name, key, expected = args
            node_id, _ = connect(hub, name, key, now=float(now))
            assert node_id == expected, f"step {now}: {story[now]}"
        else:
            hub.depart(args[0], clean=True, reason="bye", now=float(now))
    assert len(set(hub.nodes)) == len(hub.nodes) == len(hub.dispatcher.snapshot(99.0).nodes)


def test_a_node_that_reconnects_gets_its_id_and_work_again() -> None:
    hub = hub_with_task()
    node_id, _ = connect(hub, "gpu", "K")
    hub.depart(node_id, clean=False, reason="connection reset", now=1.0)
    again, outputs = connect(hub, "gpu", "K", now=2.0)
    assert again == node_id
    assert [a.node_id for a in assigned(outputs)] == [node_id]
    assert node_id not in [row.node_id for row in hub.rows(2.0) if row.state in ("left", "lost")]


# --- quarantine -----------------------------------------------------------------------------


def quarantined_node(hub: Hub, *, leave: bool) -> str:
    """A node whose key got quarantined (one invalid result is too many); it left if ``leave``."""
    node_id, outputs = connect(hub, "liar", "K")
    quarantine = answer(hub, assigned(outputs)[0], 1.0, valid=False)
    assert d.NodeQuarantined(node_id, "1 invalid results") in quarantine
    if leave:
        hub.depart(node_id, clean=True, reason="bye", now=2.0)
    return node_id


@pytest.mark.parametrize("leave", [False, True], ids=["while connected", "after it left"])
def test_a_quarantined_key_is_refused_until_it_is_released(leave: bool) -> None:
    hub = hub_with_task(max_node_errors=1)
    node_id = quarantined_node(hub, leave=leave)
    for attempt in range(3):
        with pytest.raises(Refused):
            hub.admit("liar", "K", address="10.0.0.1", slots=1, now=3.0 + attempt)
    assert connect(hub, "liar", "L", now=4.0)[0] == "liar-2"  # another key under the same name is not
    released = hub.release(node_id, 5.0)
    assert released[0] == Note("release", f"{node_id} may connect again" if leave
                               else f"{node_id} released from quarantine", node_id=node_id)
    if not leave:  # the Dispatcher gives it work again
        assert [a.node_id for a in assigned(released)] == [node_id]
    again, outputs = connect(hub, "liar", "K", now=6.0)
    assert again == (node_id if leave else "liar-3")
    if leave:  # back in for real: it gets work
        assert [a.node_id for a in assigned(outputs)] == [again]


def test_a_draining_node_quarantined_by_its_last_result_stays_quarantined() -> None:
    """The Dispatcher says drained (it holds nothing) before quarantined: the key is refused all the same."""
    hub = hub_with_task(max_node_errors=1)
    node_id, outputs = connect(hub, "liar", "K")
    hub.drain(node_id, 0.5)
    last = answer(hub, assigned(outputs)[0], 1.0, valid=False)
    assert CloseSession(node_id, "drained", farewell=True) in last
    assert d.NodeQuarantined(node_id, "1 invalid results") in last
    with pytest.raises(Refused):
        hub.admit("liar", "K", address="10.0.0.1", slots=1, now=2.0)
    hub.release(node_id, 3.0)
    assert connect(hub, "liar", "K", now=4.0)[0] == node_id


def test_release_of_a_node_nobody_knows_is_an_error() -> None:
    hub = hub_with_task()
    with pytest.raises(HubError):
        hub.release("ghost", 0.0)


# --- how sessions end -----------------------------------------------------------------------


def test_kick_closes_the_session_with_a_farewell_and_the_node_departs_as_kicked() -> None:
    hub = hub_with_task()
    node_id, outputs = connect(hub, "gpu", "K")
    answer(hub, assigned(outputs)[0], 1.0)
    kicked = hub.kick(node_id, 2.0)
    assert without_notes(kicked) == [
        CloseSession(node_id, "kicked by the operator", farewell=True),
        d.ChunkRequeued("t", 1, 2, 4, node_id, "node kicked"),
    ]
    assert node_id not in hub.nodes and not hub.dispatcher.snapshot(2.0).nodes
    row = row_of(hub, node_id)
    assert (row.state, row.items_done) == ("kicked", 2)


def test_drain_sends_drain_then_closes_and_departs_once_the_node_holds_nothing() -> None:
    hub = hub_with_task()
    node_id, outputs = connect(hub, "gpu", "K")
    (second,) = assigned(answer(hub, assigned(outputs)[0], 1.0))
    drained = hub.drain(node_id, 2.0)
    assert without_notes(drained) == [SendMessage(node_id, Drain("operator"))]
    assert node_id in hub.nodes  # it still holds a chunk
    assert without_notes(answer(hub, second, 3.0)) == [
        ResultAccepted(node_id, "t", 1, 1, 2, 4, 2),
        d.ChunkCompleted("t", 1, 2, 4, 1, node_id, 2),
        CloseSession(node_id, "drained", farewell=True),
    ]
    assert node_id not in hub.nodes and not hub.dispatcher.snapshot(3.0).nodes
    row = row_of(hub, node_id)
    assert (row.state, row.items_done) == ("drained", 4)


def test_an_idle_node_is_closed_as_soon_as_it_is_drained() -> None:
    hub = Hub(d.Dispatcher())
    node_id, _ = connect(hub, "gpu", "K")
    assert without_notes(hub.drain(node_id, 1.0)) == [
        SendMessage(node_id, Drain("operator")), CloseSession(node_id, "drained", farewell=True)]
    assert row_of(hub, node_id).state == "drained"


@pytest.mark.parametrize("drain", [False, True], ids=["busy", "draining"])
def test_a_silent_node_is_closed_without_farewell_and_departs_as_lost(drain: bool) -> None:
    hub = hub_with_task()
    node_id, outputs = connect(hub, "gpu", "K")
    answer(hub, assigned(outputs)[0], 1.0)
    if drain:
        hub.drain(node_id, 1.0)
    assert not [o for o in hub.handle(d.Tick(), 1.0 + TIMEOUT_S / 2) if isinstance(o, CloseSession)]
    closed = without_notes(hub.handle(d.Tick(), 1.0 + TIMEOUT_S + 0.5))
    assert closed == [CloseSession(node_id, "silent for 2.5 s", farewell=False),
                      d.ChunkRequeued("t", 1, 2, 4, node_id, "node lost")]
    row = row_of(hub, node_id)
    assert (row.state, row.items_done) == ("lost", 2)  # a drain it never finished is no drain


@pytest.mark.parametrize("clean, drain, state", [
    (True, False, "left"), (False, False, "lost"), (True, True, "drained"), (False, True, "lost"),
])
def test_a_session_that_ends_on_its_own_departs_as_it_ended(clean: bool, drain: bool, state: str) -> None:
    hub = hub_with_task()
    node_id, outputs = connect(hub, "gpu", "K")
    if drain:
        hub.drain(node_id, 0.5)
    departed = hub.depart(node_id, clean=clean, reason="gone", now=1.0)
    assert not [o for o in departed if isinstance(o, CloseSession)]  # the session is already over
    assert [type(o) for o in departed if isinstance(o, d.ChunkRequeued)] == [d.ChunkRequeued]
    assert row_of(hub, node_id).state == state
    assert hub.depart(node_id, clean=clean, reason="again", now=2.0) == []


def test_session_actions_of_the_dispatcher_never_leave_the_hub() -> None:
    hub = hub_with_task(items=40)
    outputs: list[Output] = []
    for index in range(4):
        outputs += connect(hub, f"n{index}", f"K{index}")[1]
    outputs += hub.kick("n0", 1.0) + hub.drain("n1", 1.0) + hub.handle(d.Tick(), 10.0)
    assert not [o for o in outputs if isinstance(o, (d.CloseNode, d.NodeDrained))]
    closed = [o.node_id for o in outputs if isinstance(o, CloseSession)]
    assert sorted(closed) == ["n0", "n1", "n2", "n3"] and not hub.nodes


# --- control routing ------------------------------------------------------------------------


def entry(name: str, *via: str) -> dict[str, object]:
    return {"name": name, "state": "busy", "slots": 2, "in_flight": 1, "items_done": 5, "errors": 0,
            "via": list(via), "host_key": ""}


def hub_with_link() -> tuple[Hub, str]:
    hub = hub_with_task()
    link_id, _ = connect(hub, "relay", "R", slots=4, window=4, host_key="ssh-ed25519 AAAA relay")
    hub.report_subtree(link_id, (entry("b"), entry("c", "b")), 1.0)
    return hub, link_id


@pytest.mark.parametrize("action", ["drain", "kick", "release"])
@pytest.mark.parametrize("node", ["b", "c"])
def test_an_action_for_a_node_behind_a_link_goes_to_the_link(action: str, node: str) -> None:
    hub, link_id = hub_with_link()
    outputs = getattr(hub, action)(node, 2.0)
    assert without_notes(outputs) == [SendMessage(link_id, Control(action, node))]
    assert link_id in hub.nodes and hub.link_of(node) == link_id


@pytest.mark.parametrize("action", ["drain", "kick", "release"])
def test_an_action_for_an_unknown_node_is_an_error(action: str) -> None:
    hub, _ = hub_with_link()
    with pytest.raises(HubError):
        getattr(hub, action)("nowhere", 2.0)


def test_nodes_behind_a_link_that_left_are_unknown() -> None:
    hub, link_id = hub_with_link()
    hub.depart(link_id, clean=False, reason="reset", now=3.0)
    with pytest.raises(HubError):
        hub.kick("c", 3.0)


# --- result gating --------------------------------------------------------------------------


def accepted(outputs: list[Output]) -> list[ResultAccepted]:
    return [output for output in outputs if isinstance(output, ResultAccepted)]


def test_the_accepted_result_comes_once_right_before_its_completion() -> None:
    hub = hub_with_task(items=2)
    node_id, outputs = connect(hub, "gpu", "K")
    outputs = answer(hub, assigned(outputs)[0], 1.0)
    assert without_notes(outputs) == [
        ResultAccepted(node_id, "t", 0, 1, 0, 2, 2),
        d.ChunkCompleted("t", 0, 0, 2, 1, node_id, 2),
        d.TaskFinished("t", d.TaskState.DONE, 2, 0, outputs[-1].items_by_node),  # type: ignore[union-attr]
    ]


def test_a_losing_copy_is_not_accepted() -> None:
    hub = hub_with_task(items=2, min_lease_s=1.0)
    slow, outputs = connect(hub, "slow", "K")
    first = assigned(outputs)[0]
    fast, _ = connect(hub, "fast", "L", now=0.5)
    backup = assigned(hub.handle(d.Tick(), 1.5))
    assert [(a.node_id, a.attempt) for a in backup] == [(fast, 2)]
    won = answer(hub, backup[0], 1.8)
    assert accepted(won) == [ResultAccepted(fast, "t", 0, 2, 0, 2, 2)]
    assert d.CancelChunk(slow, "t", 0, 1) in won
    assert not hub.wants("t", 0, 1)
    assert answer(hub, first, 1.9) == []  # a shell that hands it in anyway stores nothing


def test_an_invalid_result_is_not_accepted() -> None:
    hub = hub_with_task(items=2)
    node_id, outputs = connect(hub, "gpu", "K")
    invalid = answer(hub, assigned(outputs)[0], 1.0, valid=False)
    assert not accepted(invalid) and not [o for o in invalid if isinstance(o, d.ChunkCompleted)]
    assert d.ChunkRequeued("t", 0, 0, 2, node_id, "invalid result") in invalid


def test_a_quarantined_nodes_results_are_not_accepted() -> None:
    hub = hub_with_task(items=4, max_node_errors=1)
    node_id, outputs = connect(hub, "liar", "K", slots=2, window=2)
    first, second = assigned(outputs)
    assert any(isinstance(o, d.NodeQuarantined) for o in answer(hub, first, 1.0, valid=False))
    assert answer(hub, second, 1.5) == []


def test_only_the_result_handed_in_is_accepted() -> None:
    """A result that completes its chunk while finishing others gets one ResultAccepted, its own."""
    hub = hub_with_task(items=4)
    a, outputs_a = connect(hub, "a", "K")
    b, outputs_b = connect(hub, "b", "L")
    outputs = answer(hub, assigned(outputs_a)[0], 1.0) + answer(hub, assigned(outputs_b)[0], 1.0)
    kinds = [type(o) for o in outputs if isinstance(o, (ResultAccepted, d.ChunkCompleted))]
    assert kinds == [ResultAccepted, d.ChunkCompleted] * 2
    assert [o.node_id for o in accepted(outputs)] == [a, b]


# --- views ----------------------------------------------------------------------------------


def test_rows_show_the_subtree_with_its_path_and_departed_nodes_last() -> None:
    hub, link_id = hub_with_link()
    gone, _ = connect(hub, "old", "O", now=1.0)
    gone_later, _ = connect(hub, "older", "P", now=1.0)
    hub.depart(gone, clean=True, reason="bye", now=2.0)
    hub.depart(gone_later, clean=False, reason="reset", now=3.0)
    here, _ = connect(hub, "here", "H", now=3.0)
    rows = [(row.node_id, row.state, row.via) for row in hub.rows(4.0)]
    assert rows == [
        (link_id, "busy", ()), ("b", "busy", (link_id,)), ("c", "busy", (link_id, "b")), (here, "busy", ()),
        (gone_later, "lost", ()), (gone, "left", ()),
    ]


def test_the_departed_list_is_bounded_and_keeps_the_newest() -> None:
    hub = Hub(d.Dispatcher())
    for index in range(DEPARTED_KEPT + 5):
        node_id, _ = connect(hub, f"n{index}", f"K{index}", now=float(index))
        hub.depart(node_id, clean=True, reason="bye", now=float(index))
    rows = hub.rows(1e4)
    assert len(rows) == DEPARTED_KEPT
    assert (rows[0].node_id, rows[-1].node_id) == (f"n{DEPARTED_KEPT + 4}", "n5")


def test_a_subtree_report_is_bounded() -> None:
    hub, link_id = hub_with_link()
    hub.report_subtree(link_id, tuple(entry(f"s{i}") for i in range(MAX_SUBTREE_NODES + 10)), 2.0)
    behind = [row for row in hub.rows(2.0) if row.via]
    assert len(behind) == MAX_SUBTREE_NODES and behind[-1].node_id == f"s{MAX_SUBTREE_NODES - 1}"
    assert hub.link_of(f"s{MAX_SUBTREE_NODES}") is None


def test_a_plain_nodes_subtree_report_is_dropped() -> None:
    hub = hub_with_task()
    plain, _ = connect(hub, "plain", "P")
    hub.report_subtree(plain, tuple(entry(f"fake{i}") for i in range(10_000)), 1.0)
    assert [row.node_id for row in hub.rows(1.0)] == [plain]
    assert hub.link_of("fake1") is None


# --- blame ----------------------------------------------------------------------------------


def link_answer(hub: Hub, assignment: d.AssignChunk, now: float, computed_by: str) -> list[Output]:
    return hub.result(assignment.node_id, assignment.task_id, assignment.chunk, assignment.attempt,
                      items_ok=0, elapsed_s=0.1, valid=False, now=now, computed_by=computed_by)


def test_an_invalid_result_computed_behind_a_link_is_blamed_on_that_node_never_the_link() -> None:
    hub = hub_with_task(items=40, chunk_size=2, max_node_errors=2, prefetch=0)
    link_id, outputs = connect(hub, "relay", "R", slots=8, window=8, host_key="ssh-ed25519 AAAA relay")
    hub.report_subtree(link_id, (entry("b"), entry("c", "b")), 1.0)
    held = assigned(outputs)
    for number, assignment in enumerate(held[:5]):
        outputs = link_answer(hub, assignment, 2.0 + number, "c")
        assert SendMessage(link_id, Control("blame", "c")) in outputs
        assert not any(isinstance(o, d.NodeQuarantined) for o in outputs)
    assert row_of(hub, link_id, 10.0).state != "quarantined" and row_of(hub, link_id, 10.0).errors == 0
    # A stale copy sends no second blame.
    assert link_answer(hub, held[0], 11.0, "c") == []


@pytest.mark.parametrize("computed_by", ["", "stranger", "direct"])
def test_an_invalid_result_the_link_cannot_pin_on_its_subtree_counts_against_the_link(computed_by: str) -> None:
    hub = hub_with_task(items=40, chunk_size=2, max_node_errors=2, prefetch=0)
    connect(hub, "direct", "D")
    link_id, outputs = connect(hub, "relay", "R", slots=8, window=8, host_key="ssh-ed25519 AAAA relay")
    hub.report_subtree(link_id, (entry("b"),), 1.0)
    first, second = assigned(outputs)[:2]
    assert not any(isinstance(o, SendMessage) for o in link_answer(hub, first, 2.0, computed_by))
    outputs = link_answer(hub, second, 3.0, computed_by)
    assert d.NodeQuarantined(link_id, "2 invalid results") in outputs


def test_a_plain_node_cannot_pass_its_blame_on() -> None:
    hub = hub_with_task(max_node_errors=1, prefetch=0)
    node_id, outputs = connect(hub, "liar", "L")
    outputs = link_answer(hub, assigned(outputs)[0], 1.0, "someone-else")
    assert d.NodeQuarantined(node_id, "1 invalid results") in outputs


def test_blame_from_upstream_counts_against_a_direct_node_or_goes_on_down() -> None:
    hub = hub_with_task(max_node_errors=2)
    liar, _ = connect(hub, "liar", "L")
    link_id, _ = connect(hub, "relay", "R", host_key="ssh-ed25519 AAAA relay")
    hub.report_subtree(link_id, (entry("deep"),), 1.0)
    assert without_notes(hub.blame("deep", "caught upstream", 2.0)) == [SendMessage(link_id, Control("blame", "deep"))]
    hub.blame(liar, "caught upstream", 2.0)
    assert any(isinstance(o, d.NodeQuarantined) for o in hub.blame(liar, "caught upstream", 3.0))
    assert "L" in hub.quarantined
    with pytest.raises(HubError):
        hub.blame("nowhere", "x", 3.0)


def test_a_version_1_link_is_never_sent_blame() -> None:
    hub = hub_with_task(max_node_errors=5, prefetch=0)
    link_id = hub.admit("relay", "R", address="x", slots=4, now=0.0, host_key="ssh-ed25519 AAAA relay",
                        protocol_version=1)
    outputs = hub.join(link_id, 4, 4, 0.0)
    hub.report_subtree(link_id, (entry("b"),), 1.0)
    outputs = link_answer(hub, assigned(outputs)[0], 2.0, "b")
    assert not any(isinstance(o, SendMessage) for o in outputs)
    assert row_of(hub, link_id, 3.0).errors == 1


def test_capacity_changes_count_what_can_change_slots_and_windows_and_nothing_else() -> None:
    hub = hub_with_task()
    seen = [hub.capacity_changes]

    def changed() -> bool:
        seen.append(hub.capacity_changes)
        return seen[-1] != seen[-2]

    node_id, outputs = connect(hub, "n", "key-n")
    assert changed()  # admitted and joined
    answer(hub, assigned(outputs)[0], 1.0)
    assert not changed()  # a result moves no capacity
    hub.credit(node_id, 4, 2, 2.0)
    assert changed()
    hub.depart(node_id, clean=True, reason="bye", now=3.0)
    assert changed()
    hub.depart(node_id, clean=True, reason="again", now=4.0)
    assert not changed()  # gone already
