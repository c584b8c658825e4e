"""The hub: one Dispatcher and the nodes around it, as the front-end and every chain link run it.

The Dispatcher decides which node computes which chunk; the hub knows who the nodes are.
It hands out node ids, keeps quarantine by key, holds the table of nodes behind chain
links, routes operator actions to the node or to the link in front of it, and decides
which copy of a result is stored. Like the Dispatcher it is pure: calls in, outputs out,
the clock passed in; the shell around it (``nodes.hub_shell``) carries the outputs out.

Rules of this module:

- A node id belongs to one key. A key that reconnects gets its id back, so results it
  kept across the reconnect still match their attempts, and its standing (errors,
  quarantine) stays with it; a name held by another key, or by a live session of the
  same key, gets a suffix (``gpu``, ``gpu-2``, ``gpu-3``).
- Quarantine follows the key: a quarantined key is refused until an operator releases
  the node, however often it reconnects.
- Outputs are the Dispatcher's actions, except that the session-level ones become
  ``CloseSession`` (and the departure that follows it), plus ``SendMessage`` for what the
  hub itself tells a node, ``ResultAccepted`` just before the ``ChunkCompleted`` of the
  result being handled, and ``Note`` for the events log.
- A node is granted at most ``max_node_slots`` slots (a chain link, speaking for its
  subtree, ``max_link_slots``), whatever it claims in hello or credit.
- What a chain link reports about its subtree is bounded and shown as reported; it is
  never trusted for anything but display, routing and blame. A plain node has no subtree:
  what it reports is dropped.
- Blame lands on the node that computed a wrong value. An invalid result a link
  forwarded, naming a node of the link's reported subtree as the one that computed it
  (``Result.computed_by``), is not counted against the link: the link is sent
  ``control blame`` for that node and counts it by its own policy. A result the link
  says it computed itself, or names a node it does not report, counts against the link.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

from protocol import dispatcher as d
from protocol.errors import ChainconsoleError
from protocol.messages import PROTOCOL_VERSION, Control, Drain
from protocol.rates import RecentRate

MAX_SUBTREE_NODES = 1000
"""Entries kept of one link's subtree report."""
DEPARTED_KEPT = 200
"""Departed nodes still listed (as left, lost …) before the oldest is forgotten."""
IDS_KEPT = 10_000
"""Node ids remembered with their key after the node left."""
DEFAULT_MAX_NODE_SLOTS = 256
"""The most slots a plain node is granted, whatever it claims."""
DEFAULT_MAX_LINK_SLOTS = 4096
"""The most slots a chain link is granted for itself and everything behind it."""


@dataclass(frozen=True, slots=True)
class HeldVerdict:
    """How a result compared with the result its chunk held for confirmation."""

    node_id: str
    """Who sent the held result."""
    computed_by: str
    """Which node behind that link computed it ("" for the sender itself)."""
    valid: bool
    """False when the held result was found wrong."""
    confirmed: bool
    """True when the comparison proves the new result (agreement, or every difference settled for it)."""


class HubError(ChainconsoleError):
    """An operator action names no node this hub knows."""


class Refused(ChainconsoleError):
    """A node may not join (its key is quarantined)."""


# --- outputs beyond the Dispatcher's actions ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Send a protocol message to a connected node (drain notice, control for a link)."""

    node_id: str
    message: object


@dataclass(frozen=True, slots=True)
class CloseSession:
    """End a node's session; with ``farewell`` it is told to leave rather than come back."""

    node_id: str
    reason: str
    farewell: bool


@dataclass(frozen=True, slots=True)
class ResultAccepted:
    """Store the result being handled: it is the copy that completes its chunk."""

    node_id: str
    task_id: str
    chunk: int
    attempt: int
    start: int
    stop: int
    items_ok: int
    held: bool = False
    """The result to store is the one the shell held for confirmation, not the one being handled."""
    confirmed: bool = True
    """False for a replicated result stored without a second computation."""


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the events log."""

    kind: str
    text: str
    node_id: str = ""
    task_id: str = ""


Output: TypeAlias = d.Action | SendMessage | CloseSession | ResultAccepted | Note


# --- what the hub knows of nodes ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node of the tree as ``nodes --json``, the console and a link's report show it."""

    node_id: str
    name: str
    state: str
    slots: int
    in_flight: int
    items_done: int
    errors: int
    via: tuple[str, ...]
    address: str
    heartbeat_age_s: float | None
    items_per_s: float
    operations: Mapping[str, object] = field(default_factory=dict)
    """The installed operations it runs beyond the built-ins, with their versions."""
    resources: Mapping[str, str | float] = field(default_factory=dict)
    """What it has that a task may require."""


@dataclass
class NodeRecord:
    """A node that joined this hub: who it is, and how it ended once it has."""

    node_id: str
    name: str
    fingerprint: str
    address: str
    slots: int
    window: int = 0
    host_key: str = ""
    """A chain link's public host key; "" for a plain node."""
    joined_at: float = 0.0
    departed: str = ""
    """How the node left ("left", "drained", "kicked", "lost"); "" while connected."""
    items_done: int = 0
    """Items of the chunks it completed in this session (kept when it departs)."""
    subtree: tuple[dict, ...] = field(default=())
    """A chain link's last report of the nodes behind it."""
    rate: RecentRate = field(default_factory=lambda: RecentRate(0.0))
    """Its items per second lately."""
    protocol_version: int = PROTOCOL_VERSION
    """The version its session speaks (what may be sent to it)."""
    operations: dict[str, object] = field(default_factory=dict)
    """The installed operations it said it runs, with their versions."""
    resources: dict[str, str | float] = field(default_factory=dict)
    """What it said it has (``gpu: 1``)."""

    @property
    def is_link(self) -> bool:
        return bool(self.host_key)


class Hub:
    """Node ids, quarantine by key, the subtree table, control routing and result gating."""

    def __init__(self, dispatcher: d.Dispatcher, *, max_node_slots: int = DEFAULT_MAX_NODE_SLOTS,
                 max_link_slots: int = DEFAULT_MAX_LINK_SLOTS) -> None:
        self.dispatcher = dispatcher
        self.max_node_slots = max_node_slots
        self.max_link_slots = max_link_slots
        self.nodes: dict[str, NodeRecord] = {}
        """Connected nodes by id (and a link's own pool)."""
        self.capacity_changes = 0
        """Counts the changes to connected nodes' slots and windows (admit, join, credit, departure)."""
        self.departed: OrderedDict[str, NodeRecord] = OrderedDict()
        self.quarantined: dict[str, str] = {}
        """Quarantined keys: fingerprint → node id."""
        self._key_of: OrderedDict[str, str] = OrderedDict()  # node id → fingerprint
        self._ending: dict[str, str] = {}  # node id → how its session is being ended

    # -- nodes ---------------------------------------------------------------------------------

    def admit(self, name: str, fingerprint: str, *, address: str, slots: int, now: float,
              host_key: str = "", protocol_version: int = PROTOCOL_VERSION) -> str:
        """Register a node that said hello and return its id; ``Refused`` for a quarantined key."""
        if fingerprint in self.quarantined:
            raise Refused(f"this node's key is quarantined (as {self.quarantined[fingerprint]}) "
                          "until an operator releases it")
        node_id = self._id_for(name, fingerprint)
        self.nodes[node_id] = NodeRecord(node_id, name, fingerprint, address, slots, 0, host_key, now,
                                         rate=RecentRate(now), protocol_version=protocol_version)
        self.departed.pop(node_id, None)
        self.capacity_changes += 1
        return node_id

    def withdraw(self, node_id: str) -> None:
        """Undo ``admit`` for a node that was never welcomed."""
        self.nodes.pop(node_id, None)
        self.capacity_changes += 1

    def join(self, node_id: str, slots: int, window: int, now: float, *,
             operations: Mapping[str, object] | None = None, resources: Mapping[str, str | float] | None = None,
             deadline_in_s: float | None = None) -> list[Output]:
        """Let the Dispatcher give work to an admitted node (once it has been welcomed).

        ``operations`` are the installed operations it runs (with versions); ``resources`` what it has;
        ``deadline_in_s``: its walltime ends that many seconds from ``now``.
        """
        record = self.nodes[node_id]
        slots = record.slots = self._granted(record, slots)
        record.window = window
        self.capacity_changes += 1
        record.operations = dict(operations or {})
        record.resources = dict(resources or {})
        out: list[Output] = [Note("join", f"{node_id} joined from {self.nodes[node_id].address} "
                                          f"with {slots} slots", node_id=node_id)]
        deadline = None if deadline_in_s is None else now + deadline_in_s
        return out + self.handle(d.NodeJoined(node_id, slots, window, frozenset(record.operations),
                                              MappingProxyType(record.resources), deadline), now)

    def depart(self, node_id: str, *, clean: bool, reason: str, now: float) -> list[Output]:
        """A node's session ended: its chunks go back in line."""
        record = self.nodes.pop(node_id, None)
        if record is None:
            return []
        self.capacity_changes += 1
        ending = self._ending.pop(node_id, "")
        if ending == "drained" and not clean:
            ending = ""  # a draining node that dropped before it was done was lost, not drained
        record.departed = ending or ("left" if clean else "lost")
        record.subtree = ()
        record.joined_at = now  # from now on: when it left
        self.departed[node_id] = record
        while len(self.departed) > DEPARTED_KEPT:
            self.departed.popitem(last=False)
        event = d.NodeLeft(node_id) if clean else d.NodeLost(node_id, reason)
        return [Note("leave" if clean else "lost", f"{node_id}: {reason}", node_id=node_id), *self.handle(event, now)]

    def credit(self, node_id: str, window: int, slots: int | None, now: float) -> list[Output]:
        record = self.nodes.get(node_id)
        if record is None:
            return []
        record.window = window
        if slots is not None:
            slots = record.slots = self._granted(record, slots)
        self.capacity_changes += 1
        return self.handle(d.CreditChanged(node_id, window, slots), now)

    def _granted(self, record: NodeRecord, slots: int) -> int:
        """What a node gets of the slots it claims: a node claiming a million must not take every chunk."""
        return max(0, min(slots, self.max_link_slots if record.is_link else self.max_node_slots))

    def report_subtree(self, link_id: str, entries: tuple[dict, ...], now: float) -> list[Output]:
        """A chain link reported the nodes behind it."""
        record = self.nodes.get(link_id)
        if record is not None and record.is_link:
            record.subtree = entries[:MAX_SUBTREE_NODES]
        return self.handle(d.HeartbeatReceived(link_id), now)

    def link_of(self, node_id: str) -> str | None:
        """The link of this hub behind which ``node_id`` is, or None."""
        for record in self.nodes.values():
            if any(entry["name"] == node_id for entry in record.subtree):
                return record.node_id
        return None

    # -- operator actions, routed --------------------------------------------------------------

    def drain(self, node_id: str, now: float) -> list[Output]:
        """No new chunks for the node; it finishes what it holds, then leaves."""
        if (routed := self._route("drain", node_id)) is not None:
            return routed
        self._ending[node_id] = "drained"
        return [Note("drain", f"{node_id} draining", node_id=node_id), SendMessage(node_id, Drain("operator")),
                *self.handle(d.DrainRequested(node_id), now)]

    def kick(self, node_id: str, now: float) -> list[Output]:
        """Disconnect the node now; its chunks go to other nodes at once."""
        if (routed := self._route("kick", node_id)) is not None:
            return routed
        self._ending[node_id] = "kicked"
        return [Note("kick", f"{node_id} kicked", node_id=node_id), *self.handle(d.KickRequested(node_id), now)]

    def release(self, node_id: str, now: float) -> list[Output]:
        """Let a quarantined node have work again, or back in if it is disconnected."""
        keys = [fp for fp, held in self.quarantined.items() if held == node_id]
        for fingerprint in keys:
            del self.quarantined[fingerprint]
        if keys and node_id not in self.nodes:
            self.dispatcher.forget_node(node_id)  # it comes back with a clean record
            return [Note("release", f"{node_id} may connect again", node_id=node_id)]
        if (routed := self._route("release", node_id)) is not None:
            return routed
        return [Note("release", f"{node_id} released from quarantine", node_id=node_id),
                *self.handle(d.QuarantineReleased(node_id), now)]

    def blame(self, node_id: str, reason: str, now: float) -> list[Output]:
        """Count an invalid result caught upstream against the node that computed it (or pass it on)."""
        if (routed := self._route("blame", node_id)) is not None:
            return routed
        return [Note("blame", f"{node_id}: {reason}", node_id=node_id),
                *self.handle(d.ErrorCounted(node_id, reason), now)]

    def _route(self, action: str, node_id: str) -> list[Output] | None:
        """Pass an action for a node behind a link to that link; None if the node is this hub's."""
        if node_id in self.nodes:
            return None
        link = self.link_of(node_id)
        if link is None:
            raise HubError(f"no connected node {node_id!r}")
        return [Note(action, f"{node_id} ({action} sent through {link})", node_id=node_id),
                SendMessage(link, Control(action, node_id))]

    # -- results -------------------------------------------------------------------------------

    def wants(self, task_id: str, chunk: int, attempt: int) -> bool:
        """Worth checking: that attempt is open at a live task."""
        return self.dispatcher.wants_result(task_id, chunk, attempt)

    def result(self, node_id: str, task_id: str, chunk: int, attempt: int, *, items_ok: int,
               elapsed_s: float, valid: bool, now: float, computed_by: str = "",
               held: HeldVerdict | None = None, trusted: bool = False) -> list[Output]:
        """A checked result: ``ResultAccepted`` precedes its chunk's completion if this copy wins.

        An invalid result is blamed on ``computed_by`` when a link forwarded it from a node
        it reports; otherwise on the node that sent it. ``held`` is the verdict of comparing
        it with the chunk's held result, whose wrong values are blamed the same way. A
        ``trusted`` result needs no confirmation.
        """
        out: list[Output] = []
        culprit = self.culprit(node_id, computed_by) if not valid else node_id
        if culprit != node_id and self.dispatcher.lease_running(node_id, task_id, chunk, attempt):
            out += self._pass_blame(node_id, culprit, task_id, chunk)
        held_valid, held_blame, confirmed = None, True, trusted
        if held is not None:
            held_valid, confirmed = held.valid, held.confirmed or trusted
            if not held.valid and (held_culprit := self.culprit(held.node_id, held.computed_by)) != held.node_id:
                held_blame = False
                out += self._pass_blame(held.node_id, held_culprit, task_id, chunk)
        event = d.ResultReceived(node_id, task_id, chunk, attempt, items_ok, elapsed_s, valid=valid,
                                 blame=culprit == node_id, held_valid=held_valid, held_blame=held_blame,
                                 confirmed=confirmed)
        for output in self.handle(event, now):
            if isinstance(output, d.ChunkCompleted) and not output.held and \
                    (output.task_id, output.chunk, output.attempt) == (task_id, chunk, attempt):
                out.append(ResultAccepted(node_id, task_id, chunk, attempt, output.start, output.stop, items_ok,
                                          confirmed=output.confirmed))
            out.append(output)
        return out

    def held_checked(self, task_id: str, chunk: int, attempt: int, *, valid: bool, node_id: str,
                     computed_by: str, now: float) -> list[Output]:
        """The shell computed a held result's chunk itself; a wrong one is blamed as ``result`` would."""
        out: list[Output] = []
        culprit = self.culprit(node_id, computed_by) if not valid else node_id
        if culprit != node_id:
            out += self._pass_blame(node_id, culprit, task_id, chunk)
        return out + self.handle(d.HeldChecked(task_id, chunk, attempt, valid, blame=culprit == node_id), now)

    def _pass_blame(self, link_id: str, culprit: str, task_id: str, chunk: int) -> list[Output]:
        """A wrong value a link forwarded from a node behind it: the link counts it against that node."""
        return [Note("blame", f"{culprit} (behind {link_id}) computed an invalid result of chunk "
                              f"{task_id}/{chunk}", node_id=culprit, task_id=task_id),
                SendMessage(link_id, Control("blame", culprit))]

    def culprit(self, node_id: str, computed_by: str) -> str:
        """Who is blamed for an invalid result ``node_id`` sent: the node behind a link that computed it, if known."""
        record = self.nodes.get(node_id)
        if (not computed_by or record is None or not record.is_link or record.protocol_version < 2
                or computed_by in self.nodes):
            return node_id
        if any(entry["name"] == computed_by for entry in record.subtree):
            return computed_by
        return node_id

    # -- the Dispatcher, with session actions turned into closes --------------------------------

    def handle(self, event: d.Event, now: float) -> list[Output]:
        """Run a Dispatcher event; a node to close is closed and departs within the same outputs."""
        out: list[Output] = []
        for action in self.dispatcher.handle(event, now):
            match action:
                case d.CloseNode(node_id=node_id, reason=reason):
                    if node_id in self.nodes:
                        # A kicked node is told to leave; a silent one may come back when it wakes.
                        out.append(Note("close", f"{node_id}: {reason}", node_id=node_id))
                        out.append(CloseSession(node_id, reason, farewell=self._ending.get(node_id) == "kicked"))
                        out.extend(self.depart(node_id, clean=False, reason=reason, now=now))
                case d.NodeDrained(node_id=node_id):
                    if node_id in self.nodes:
                        out.append(CloseSession(node_id, "drained", farewell=True))
                        out.extend(self.depart(node_id, clean=True, reason="drained", now=now))
                case d.ChunkCompleted(node_id=node_id, start=start, stop=stop):
                    # Counted here: a kicked or silent node is gone from the Dispatcher
                    # before its CloseNode reaches the hub.
                    if (record := self.nodes.get(node_id)) is not None:
                        record.items_done += stop - start
                        record.rate.add(now, stop - start)
                    if action.held:
                        out.append(ResultAccepted(node_id, action.task_id, action.chunk, action.attempt,
                                                  start, stop, action.items_ok, held=True,
                                                  confirmed=action.confirmed))
                    out.append(action)
                case d.NodeQuarantined(node_id=node_id):
                    # A draining node's last, invalid result drains it before it is quarantined.
                    record = self.nodes.get(node_id) or self.departed.get(node_id)
                    if record is not None and record.fingerprint:
                        self.quarantined[record.fingerprint] = node_id
                    out.append(action)
                case _:
                    out.append(action)
        return out

    # -- views ---------------------------------------------------------------------------------

    def tree(self, now: float) -> list[tuple[NodeRow, str]]:
        """Connected nodes and the nodes behind each link (with their path), each with its host key."""
        views = {v.node_id: v for v in self.dispatcher.snapshot(now).nodes}
        tree: list[tuple[NodeRow, str]] = []
        for record in self.nodes.values():
            view = views.get(record.node_id)
            if view is None:
                row = NodeRow(record.node_id, record.name, "connecting", record.slots, 0, 0, 0, (),
                              record.address, None, 0.0)
            else:
                rate = record.rate.per_s(now)
                row = NodeRow(record.node_id, record.name, view.state.value, view.slots, view.in_flight,
                              view.items_done, view.errors, (), record.address, round(now - view.last_seen, 3), rate,
                              record.operations, record.resources)
            tree.append((row, record.host_key))
            for entry in record.subtree:
                tree.append((NodeRow(entry["name"], entry["name"], entry["state"], entry["slots"],
                                     entry["in_flight"], entry["items_done"], entry["errors"],
                                     (record.node_id, *entry["via"]), f"via {record.node_id}", None, 0.0),
                             entry["host_key"]))
        return tree

    def rows(self, now: float) -> list[NodeRow]:
        """The tree, then departed nodes, most recent first."""
        rows = [row for row, _ in self.tree(now)]
        for record in reversed(self.departed.values()):
            rows.append(NodeRow(record.node_id, record.name, record.departed, record.slots, 0, record.items_done,
                                0, (), record.address, None, 0.0))
        return rows

    # -- ids -----------------------------------------------------------------------------------

    def _id_for(self, name: str, fingerprint: str) -> str:
        """The first of ``name``, ``name-2`` … that is not live and belongs to no other key."""
        candidate, n = name, 1
        while candidate in self.nodes or self._key_of.get(candidate, fingerprint) != fingerprint:
            n += 1
            candidate = f"{name}-{n}"
        self._key_of[candidate] = fingerprint
        self._key_of.move_to_end(candidate)
        while len(self._key_of) > IDS_KEPT:
            forgotten, _ = self._key_of.popitem(last=False)
            self.dispatcher.forget_node(forgotten)  # the id may go to another key: its standing must not
        return candidate
