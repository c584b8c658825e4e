"""A chain link: a node that accepts nodes behind it and passes part of its work on.

While its chunks are short, the link's own worker pool takes the chunks its upstream assigns
as long as it has room, as a plain node's pool does. The rest, and every chunk while they
are long, go through the same hub and shell as the console's (``nodes.hub_shell``): each is
one task of one chunk there, handed to a node behind the link or to the own pool, which
also computes the replicas that check the nodes behind. Assignments travel on unchanged —
the same task id, chunk and attempt — so results go up without translation. When a link
dies its upstream requeues everything the link held; the nodes behind it fail over to
their next upstream and start afresh there.

Trust flows from the console. The console certifies the link's host key, and nodes
behind the link check that certificate against the one key they pin, the console's.
The console also sends the list of enrolled node keys; the link lets in exactly those,
and closes the sessions of keys that leave the list.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from nodes.hub_shell import ChunkId, HubShell
from nodes.node_session import NodeSession
from nodes.ssh import NODE_SUBSYSTEM
from nodes.ssh.server import GatedServer, ServerSettings, peer_address, refuse
from nodes.work import ChunkKey, Emit, LocalWork, key_of
from protocol import dispatcher as d
from protocol import hub as h
from protocol.messages import (
    Assign, Cancel, Control, Credit, Failed, HostCertificate, NodeKeys, Rejected, Result, Subtree, Welcome,
)
from protocol.operations import installed_operations
from protocol.replication import DEFAULT_REPLICA_RATE
from protocol.verify import AssignedChunk, replicated

RELAY_ATTEMPTS = 2
"""Tries of one upstream chunk inside this link before it is handed back as failed."""
TICK_S = 0.5
REPORT_EVERY_S = 1.0
OWN_POOL = "(this link)"
SENT_UP_KEPT = 4096
"""Results passed upstream whose computing node is remembered, for a ``rejected`` to find it."""
GENERATED_KEPT = 64
"""Upstream tasks whose generated inputs are kept for checks."""
OWN_HUB_WINDOW_PER_SLOT = 2
"""While the own pool takes chunks straight: the chunks the hub may hand it besides, per slot —
replicas of results from nodes behind, and chunks no node behind has room for."""


@dataclass
class RelaySettings:
    name: str
    listen: tuple[str, int]
    host_key: Path
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0
    server: ServerSettings | None = None
    """The gate for nodes behind the link (its host and port come from ``listen``)."""
    replica_rate: float = DEFAULT_REPLICA_RATE
    """Share of its proven nodes' replicated results computed again (``--replicate``)."""


class _OwnPool:
    """The link's own worker pool, as a session of its hub.

    What the hub sends it goes before the chunks the pool took straight from upstream: a
    replica there has a held result, and its chunk's upstream result, waiting for it.
    """

    def __init__(self, local: LocalWork) -> None:
        self.local = local

    def send(self, message: object) -> None:
        if isinstance(message, Assign):
            self.local.assign(message, first=True)
        elif isinstance(message, Cancel):
            self.local.cancel(key_of(message))

    def close(self, reason: str, *, farewell: bool = True) -> None:
        pass


class Relay(HubShell):
    """A Work that spreads its upstream's chunks over its own pool and the nodes behind it."""

    def __init__(self, settings: RelaySettings, local: LocalWork) -> None:
        super().__init__(heartbeat_interval_s=settings.heartbeat_interval_s,
                         heartbeat_timeout_s=settings.heartbeat_timeout_s, tick_s=TICK_S,
                         replica_rate=settings.replica_rate)
        self.settings = settings
        self.name = settings.name
        self.local = local
        self.local.attach(self._from_own_pool)
        self.host_key = _link_host_key(settings.host_key, self.name)
        self.host_key_line = self.host_key.export_public_key("openssh").decode().strip()
        self.server: GatedServer | None = None
        self.instance = ""
        """The upstream console's run, passed on in welcomes so kept results find their way back."""
        self.allowed: set[str] = set()
        self.allowed_lines: tuple[str, ...] = ()
        self._emit: Emit = lambda message: None
        self._straight: dict[ChunkKey, Assign] = {}  # upstream chunks the own pool took straight
        self._by_task: dict[str, Assign] = {}  # this link's task id → the upstream's assignment
        self._by_key: dict[ChunkKey, str] = {}
        self._holders: dict[ChunkKey, dict[str, int]] = {}  # upstream chunk → node → attempt here
        self._targets: dict[str, AssignedChunk] = {}  # this link's task id → what its results are checked against
        self._generated: OrderedDict[str, AssignedChunk] = OrderedDict()  # upstream task → its generated inputs
        self._certified: set[str] = set()
        self._own_results: set[asyncio.Task] = set()
        self._sent_up: OrderedDict[ChunkKey, str] = OrderedDict()  # upstream chunk → node that computed it
        self._seq = 0
        self._last_capacity = (-1, -1)
        self._capacity_seen = (-1, -1)  # (the hub's capacity_changes, the own pool's window) last reported
        self._last_report: tuple = ()
        self._last_report_at = 0.0

    @property
    def address(self) -> tuple[str, int] | None:
        return self.server.address if self.server is not None else None

    # -- Work, as seen by the upstream session ------------------------------------------

    @property
    def slots(self) -> int:
        return sum(record.slots for record in self.hub.nodes.values())

    @property
    def window(self) -> int:
        """What the own pool takes straight, and what the hub hands out (the own pool's part included)."""
        return self._straight_window() + sum(record.window for record in self.hub.nodes.values())

    def _straight_window(self) -> int:
        """Upstream chunks the own pool takes straight: its window while its chunks are short (for
        them the hub's bookkeeping costs about as much as the computing), none while they are long
        (the hub then balances the own pool with the nodes behind, at no cost that matters)."""
        return self.local.window if self.local.window > self.local.base_window else 0

    def _own_hub_window(self) -> int:
        """The own pool's window at the hub."""
        if self._straight_window():
            return self.local.slots * OWN_HUB_WINDOW_PER_SLOT
        return self.local.window

    @property
    def held(self) -> int:
        return len(self._straight) + len(self._by_task)

    def attach(self, emit: Emit) -> None:
        self._emit = emit

    async def start(self) -> None:
        await self.local.start()
        self.hub.admit(self.name, "", address=OWN_POOL, slots=self.local.slots, now=self.now())
        self.sessions[self.name] = _OwnPool(self.local)
        self.carry_out(self.hub.join(self.name, self.local.slots, self._own_hub_window(), self.now(),
                                     operations=installed_operations()))
        self.start_ticking()

    async def close(self) -> None:
        for job in list(self._own_results):
            job.cancel()
        await self.stop_ticking()
        self.close_sessions("link shutting down")
        if self.server is not None:
            await self.server.close()
        await self.local.close()

    def assign(self, assign: Assign) -> None:
        key = key_of(assign)
        if key in self._by_key or key in self._straight:
            return
        if len(self._straight) < self._straight_window():
            # Room in the own pool: straight there, as on a plain node; its result needs no check here.
            self._straight[key] = assign
            self.local.assign(assign)
        else:
            self._through_hub(assign)

    def _through_hub(self, assign: Assign) -> None:
        """Make an upstream chunk a task of this link's hub, for a node behind the link or the own pool."""
        self._seq += 1
        task_id = f"u{self._seq}"
        self._by_task[task_id] = assign
        self._by_key[key_of(assign)] = task_id
        n = assign.stop - assign.start
        self.run(d.TaskSubmitted(task_id, n, n, RELAY_ATTEMPTS,
                                 replicate=replicated(assign.operation, assign.return_mode)))

    def cancel(self, key: ChunkKey) -> None:
        if self._straight.pop(key, None) is not None:
            self.local.cancel(key)
            return
        task_id = self._by_key.get(key)
        if task_id is not None:
            self.run(d.TaskCancelled(task_id))

    def upstream_lost(self) -> None:
        """Everything assigned from above was requeued there: stop working on it here."""
        for key in list(self._straight):
            self.cancel(key)
        for task_id in list(self._by_task):
            self.run(d.TaskCancelled(task_id))

    def handle(self, message: object) -> bool:
        match message:
            case Welcome(instance=instance, host_certificate=certificate):
                self.instance = instance
                if certificate:
                    self._set_certificate(certificate)
            case HostCertificate(node=node, certificate=certificate):
                if node == self.name:
                    self._set_certificate(certificate)
                else:
                    self._pass_down(node, message)
            case Control(action="blame", node=node):
                try:
                    self.carry_out(self.hub.blame(node, "an invalid result caught upstream", self.now()))
                except h.HubError:
                    pass  # gone since the upstream's last report
            case Control(action=action, node=node):
                act = {"drain": self.hub.drain, "kick": self.hub.kick, "release": self.hub.release}[action]
                try:
                    self.carry_out(act(node, self.now()))
                except h.HubError:
                    pass  # gone since the upstream's last report
            case Rejected():
                # The upstream refused a result this link passed up: tell the node that computed it.
                node_id = self._sent_up.pop(key_of(message), None)
                if node_id is not None and node_id != self.name:
                    self.tell(node_id, message)
            case NodeKeys(keys=keys):
                self._set_allowed(keys)
                for node_id, record in self.hub.nodes.items():
                    if record.is_link and node_id in self.sessions:
                        self.sessions[node_id].send(message)
            case _:
                return False
        return True

    def _from_own_pool(self, message: object) -> None:
        """The link's own pool answered: trusted, no check (but it settles a held result of its chunk)."""
        if isinstance(message, Credit):  # its window changed, or its executor grew or shrank (a Dask cluster)
            record = self.hub.nodes.get(self.name)
            if record is None:
                return  # not joined yet: it joins with what the pool has then
            if message.slots is None and record.window == self._own_hub_window():
                self._report_window()  # what it takes straight changed, or nothing at all
            else:
                self.carry_out(self.hub.credit(self.name, self._own_hub_window(), message.slots, self.now()))
        elif isinstance(message, (Result, Failed)) and key_of(message) in self._straight:
            self._answered_straight(message)
        elif isinstance(message, Result):
            if self.settle_trusted(self.name, message):
                return
            # A held result of its chunk to compare it with: that may take a thread.
            job = asyncio.get_running_loop().create_task(self.result(self.name, message, trusted=True))
            self._own_results.add(job)
            job.add_done_callback(self._own_results.discard)
        elif isinstance(message, Failed) and (chunk := self.face_chunk(self.name, message)) is not None:
            self.run(d.ChunkFailed(self.name, *chunk, message.reason, message.retryable))

    def _answered_straight(self, message: Result | Failed) -> None:
        """A chunk the own pool took straight: its result goes up as a plain node's does; a failure
        gets this link's tries through the hub, on a node behind if one has room."""
        assign = self._straight.pop(key_of(message))
        if isinstance(message, Failed) and message.retryable:
            self._through_hub(assign)
        else:
            self._emit(message)

    # -- the face: what only a link does -----------------------------------------------------

    def carry_out(self, outputs: list[h.Output], result: Result | None = None) -> None:
        super().carry_out(outputs, result)
        self._report_window()

    def face_welcome(self, node_id: str, hello: object) -> tuple[str, str]:
        return self.instance, ""

    def face_node_keys(self) -> tuple[str, ...]:
        return self.allowed_lines

    def face_chunk(self, node_id: str, message: Result | Failed) -> ChunkId | None:
        key = key_of(message)
        task_id = self._by_key.get(key)
        attempt = self._holders.get(key, {}).get(node_id)
        if task_id is None or attempt is None:
            return None  # cancelled, or never ours: nobody above is waiting for it here
        return (task_id, 0, attempt)

    def face_check_kind(self, task_id: str) -> str:
        """Each upstream chunk is a task here: its checks cost like the upstream task's other chunks'."""
        assign = self._by_task.get(task_id)
        return assign.task_id if assign is not None else task_id

    def face_check_target(self, chunk: ChunkId) -> tuple[object, int, int]:
        assign = self._by_task[chunk[0]]
        if not assign.arrays:
            return self._generated_target(assign), assign.start, assign.stop
        target = self._targets.get(chunk[0])
        if target is None:
            target = self._targets[chunk[0]] = AssignedChunk(assign)
        return target, assign.start, assign.stop

    def _generated_target(self, assign: Assign) -> AssignedChunk:
        """Chunks of an upstream task with generated inputs only are checked against one target:
        the generators are read once per task, not once per chunk."""
        target = self._generated.get(assign.task_id)
        if target is None or not _same_kind(target.assign, assign):
            target = self._generated[assign.task_id] = AssignedChunk(assign)
            while len(self._generated) > GENERATED_KEPT:
                self._generated.popitem(last=False)
        else:
            self._generated.move_to_end(assign.task_id)
        return target

    def face_assign(self, action: d.AssignChunk) -> Assign:
        assign = self._by_task[action.task_id]
        self._holders.setdefault(key_of(assign), {})[action.node_id] = action.attempt
        return assign

    def face_cancel(self, action: d.CancelChunk) -> Cancel | None:
        assign = self._by_task.get(action.task_id)
        return Cancel(*key_of(assign)) if assign is not None else None

    def face_store(self, accepted: h.ResultAccepted, result: Result) -> None:
        """Pass the result up, saying which node computed it, so blame for a wrong value finds it."""
        self._sent_up[key_of(result)] = accepted.node_id
        while len(self._sent_up) > SENT_UP_KEPT:
            self._sent_up.popitem(last=False)
        if accepted.node_id == self.name:
            computed_by = ""
        else:
            # A link behind this one names its own culprit; a plain node's claim means nothing.
            computed_by = self.hub.culprit(accepted.node_id, result.computed_by)
        if computed_by != result.computed_by:  # a checked result with a name the hub knows: not checked again
            result = Result.construct(**{**vars(result), "computed_by": computed_by})
        self._emit(result)

    def face_output(self, output: h.Output) -> None:
        match output:
            case h.Note(kind=kind, text=text):
                print(f"[{self.name}] {kind}: {text}", file=sys.stderr, flush=True)
            case d.ChunkAbandoned(task_id=task_id, reason=reason):
                assign = self._by_task.get(task_id)
                if assign is not None:
                    # The chunk used up its tries here; one that cannot succeed anywhere says so.
                    retryable = "not retryable" not in reason
                    self._emit(Failed(*key_of(assign), reason[:1000], retryable))
            case d.TaskFinished(task_id=task_id):
                self.hub.dispatcher.forget(task_id)
                assign = self._by_task.pop(task_id, None)
                if assign is not None:
                    key = key_of(assign)
                    self._by_key.pop(key, None)
                    self._holders.pop(key, None)
                self._targets.pop(task_id, None)

    def face_tick(self) -> None:
        self.run(d.HeartbeatReceived(self.name))  # this link's own pool is alive as long as we are
        now = self.now()
        if now - self._last_report_at >= REPORT_EVERY_S:
            self._report_subtree(now)
            self._last_report_at = now

    # -- reports upstream -------------------------------------------------------------------

    def _report_window(self) -> None:
        """Tell the upstream when the own pool or the nodes behind this link change how much it can take."""
        seen = (self.hub.capacity_changes, self.local.window)
        if seen == self._capacity_seen:
            return  # nothing joined, left or sent a credit since: not worth adding up again
        self._capacity_seen = seen
        capacity = (self.window, self.slots)
        if capacity != self._last_capacity:
            self._last_capacity = capacity
            self._emit(Credit(*capacity))

    def _report_subtree(self, now: float) -> None:
        entries = tuple(
            {"name": row.node_id, "state": row.state, "slots": row.slots, "in_flight": row.in_flight,
             "items_done": row.items_done, "errors": row.errors, "via": list(row.via),
             "host_key": "" if row.node_id in self._certified else host_key}
            for row, host_key in self.hub.tree(now) if row.node_id != self.name
        )
        if entries != self._last_report:
            self._last_report = entries
            self._emit(Subtree(entries))

    # -- nodes behind this link -----------------------------------------------------------

    def _pass_down(self, node: str, message: HostCertificate) -> None:
        """Pass a certificate on to ``node`` itself, or to the link behind which it is."""
        target = node if node in self.hub.nodes else self.hub.link_of(node)
        if target is None or target not in self.sessions:
            return
        if target == node:
            self._certified.add(node)
        self.sessions[target].send(message)

    def _set_allowed(self, keys: tuple[str, ...]) -> None:
        allowed, lines = set(), []
        for line in keys:
            try:
                allowed.add(asyncssh.import_public_key(line).get_fingerprint("sha256"))
                lines.append(line)
            except (asyncssh.KeyImportError, ValueError):
                continue
        self.allowed, self.allowed_lines = allowed, tuple(sorted(lines))
        for node_id, record in list(self.hub.nodes.items()):
            if node_id != self.name and record.fingerprint not in allowed and node_id in self.sessions:
                self.sessions[node_id].close("key no longer enrolled", farewell=False)

    def _set_certificate(self, text: str) -> None:
        try:
            certificate = asyncssh.import_certificate(text)
        except (asyncssh.KeyImportError, ValueError):
            return
        host_keys = [(self.host_key, certificate)]
        if self.server is not None:
            self.server.set_host_keys(host_keys)
            return
        host, port = self.settings.listen
        settings = dataclasses.replace(self.settings.server or ServerSettings(), host=host, port=port)
        self.server = GatedServer(settings, host_keys, self._authenticate, self._serve,
                                  log=lambda line: print(f"[{self.name}] {line}", file=sys.stderr, flush=True))
        asyncio.get_running_loop().create_task(self._listen(self.server))

    async def _listen(self, server: GatedServer) -> None:
        host, port = await server.start()
        print(f"[{self.name}] accepting nodes on {host}:{port}", file=sys.stderr, flush=True)

    def _authenticate(self, username: str, key: asyncssh.SSHKey, peer: str) -> str | None:
        fingerprint = key.get_fingerprint("sha256")
        return fingerprint if fingerprint in self.allowed else None

    async def _serve(self, process: asyncssh.SSHServerProcess, fingerprint: str) -> None:
        if process.subsystem != NODE_SUBSYSTEM:
            refuse(process, "only the node subsystem is available here")
            return
        address = peer_address(process.get_extra_info("connection"))
        await NodeSession.of_process(self, process, name="node", fingerprint=fingerprint, address=address).run()


def _same_kind(first: Assign, other: Assign) -> bool:
    return (first.operation == other.operation and first.return_mode == other.return_mode
            and (first.generated is other.generated or first.generated == other.generated))


def _link_host_key(path: Path, name: str) -> asyncssh.SSHKey:
    """The link's own host key, created on first start."""
    if path.exists():
        return asyncssh.read_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"chainconsole-link-{name}")
    key.write_private_key(path)
    path.chmod(0o600)
    return key
