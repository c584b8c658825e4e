"""What a node claims is not what it gets: slots are granted by the hub."""

from __future__ import annotations

from protocol import dispatcher as d
from protocol.hub import DEFAULT_MAX_LINK_SLOTS, DEFAULT_MAX_NODE_SLOTS, Hub


def _slots(hub: Hub, node_id: str) -> int:
    return next(v.slots for v in hub.dispatcher.snapshot(0).nodes if v.node_id == node_id)


def test_a_node_claiming_a_million_slots_is_granted_the_cap_and_leaves_work_for_others() -> None:
    hub = Hub(d.Dispatcher(prefetch=0))
    greedy = hub.admit("greedy", "SHA256:g", address="x", slots=2**20, now=0)
    hub.join(greedy, 2**20, 2**20, 0)
    honest = hub.admit("honest", "SHA256:h", address="y", slots=1, now=0)
    hub.join(honest, 1, 1, 0)
    assert _slots(hub, greedy) == DEFAULT_MAX_NODE_SLOTS
    outputs = hub.handle(d.TaskSubmitted("t", 1000, 1, 1, "u"), 0)
    holders = [o.node_id for o in outputs if isinstance(o, d.AssignChunk)]
    assert holders.count(greedy) == DEFAULT_MAX_NODE_SLOTS and holders.count(honest) == 1
    hub.credit(greedy, 2**20, 2**20, 1)  # asking again changes nothing
    assert _slots(hub, greedy) == DEFAULT_MAX_NODE_SLOTS


def test_a_chain_link_speaks_for_more_slots_but_is_bounded_too() -> None:
    hub = Hub(d.Dispatcher())
    link = hub.admit("link", "SHA256:l", address="x", slots=1, now=0, host_key="ssh-ed25519 AAAA")
    hub.join(link, 1, 1, 0)
    hub.credit(link, 10, DEFAULT_MAX_NODE_SLOTS * 2, 1)
    assert _slots(hub, link) == DEFAULT_MAX_NODE_SLOTS * 2
    hub.credit(link, 10, 2**30, 2)
    assert _slots(hub, link) == DEFAULT_MAX_LINK_SLOTS
