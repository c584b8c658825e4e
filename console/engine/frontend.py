"""The front-end: tasks, results and nodes around one Dispatcher.

Every face — the SSH user commands, the CLI's one-shot ``run``, the Textual console —
calls this API. It owns no sockets: node sessions (``console.ssh.node_session``) feed it
messages, and it answers by carrying out the Dispatcher's actions. Nothing here imports
Textual.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import asyncssh
import numpy as np

from console.engine.journal import Journal, save_array_inputs, task_document, task_from_document
from console.engine.keys import KeyRegistry, Role
from console.engine.records import Event, NodeInfo, NodeRow, TaskRecord, TaskRow
from console.engine.results import ResultStore, export_npz, write_summary
from console.engine.statedir import StateDir, make_private_dir
from protocol import dispatcher as d
from protocol.errors import ChainconsoleError
from protocol.inputs import GeneratedInput
from protocol.messages import MAX_NODE_KEYS, Assign, Cancel, Control, Drain, Hello, HostCertificate, NodeKeys, Result
from protocol.taskfile import DEFAULT_LIMITS, MAX_CHUNK_BYTES, Task, TaskLimits
from protocol.verify import DEFAULT_SAMPLE, check_result

DEFAULT_TICK_S = 0.5
CERTIFICATE_DAYS = 365
DEFAULT_MAX_UNFINISHED_PER_OWNER = 100
EVENT_LOG_SIZE = 2000
LOST_NODES_KEPT = 200


class FrontEndError(ChainconsoleError):
    """A request the front-end cannot honour (unknown task or node, result not ready)."""


class NodeLink(Protocol):
    """What the front-end needs from a connected node's session."""

    def send(self, message: object) -> None: ...

    def close(self, reason: str, *, farewell: bool = True) -> None:
        """End the session; with ``farewell`` the node is told to leave rather than come back."""


class FrontEnd:
    """Tasks, nodes and results around one Dispatcher; the API all faces call."""

    def __init__(
        self,
        state: StateDir,
        *,
        heartbeat_interval_s: float = 1.0,
        heartbeat_timeout_s: float = 5.0,
        limits: TaskLimits = DEFAULT_LIMITS,
        max_unfinished_per_owner: int = DEFAULT_MAX_UNFINISHED_PER_OWNER,
        tick_s: float = DEFAULT_TICK_S,
        verify_sample: int = DEFAULT_SAMPLE,
    ) -> None:
        self.state = state
        self.dispatcher = d.Dispatcher(heartbeat_timeout_s=heartbeat_timeout_s)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.limits = limits
        """Size limits for tasks submitted over SSH."""
        self.max_unfinished_per_owner = max_unfinished_per_owner
        self.tick_s = tick_s
        self.verify_sample = verify_sample
        self.journal = Journal(state.journal)
        self.registry = KeyRegistry(state)
        self.subtrees: dict[str, tuple[dict, ...]] = {}
        """Per chain link: the nodes behind it, as it last reported them."""
        self._node_keys_sent: tuple[str, ...] = ()
        self._certified: set[str] = set()
        self.quarantined: dict[str, str] = {}
        """Keys of quarantined nodes (fingerprint → node name): they stay out, reconnect or not."""
        self.tasks: dict[str, TaskRecord] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self.links: dict[str, NodeLink] = {}
        self.events: collections.deque[Event] = collections.deque(maxlen=EVENT_LOG_SIZE)
        self.started_at = time.time()
        self.instance = uuid.uuid4().hex[:16]
        """This run of the front-end: nodes offer results kept across a reconnect only to it."""
        self._node_seq = 0
        self._kicked: set[str] = set()
        self._ticker: asyncio.Task | None = None
        self._finishing: set[asyncio.Task] = set()
        self._listeners: list[Callable[[Event], None]] = []

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Resume journaled tasks and start the tick loop."""
        self._resume()
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def stop(self) -> None:
        """Stop ticking and close every node link; results stay on disk."""
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for link in list(self.links.values()):
            link.close("front-end shutting down")
        for task in list(self._finishing):
            with contextlib.suppress(Exception):
                await task
        for record in self.tasks.values():
            if record.store is not None:
                record.store.close()
                record.store = None
        self.journal.close()

    def now(self) -> float:
        return time.monotonic()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            self._run(d.Tick())

    # -- tasks -----------------------------------------------------------------------

    def submit(self, task: Task, owner: str) -> str:
        """Queue ``task`` for ``owner`` and return its id."""
        unfinished = sum(1 for r in self.tasks.values() if r.owner == owner and not r.finished.is_set())
        if unfinished >= self.max_unfinished_per_owner:
            raise FrontEndError(f"{owner} already has {unfinished} unfinished tasks, the most allowed; "
                                "wait for some to finish or cancel them")
        document = task_document(task)
        task_id = self.journal.new_task(task.name, owner, document, task.count)
        folder = self.state.task_dir(task_id)
        make_private_dir(folder)
        save_array_inputs(folder, task)
        record = self._make_record(task_id, task, owner, time.time())
        self.tasks[task_id] = record
        self.log("submitted", f"{task.name}: {task.operation} × {task.count} by {owner}", task_id=task_id)
        self._run(_submitted(task_id, task, owner))
        return task_id

    def _make_record(self, task_id: str, task: Task, owner: str, submitted_at: float) -> TaskRecord:
        store = ResultStore(
            self.state.task_dir(task_id),
            count=task.count,
            item_shape=task.result_item_shape,
            dtype=task.result_dtype,
            return_mode=task.return_mode,
        )
        return TaskRecord(task_id, task.name, owner, task.count, task.operation, task.return_mode,
                          submitted_at, task=task, store=store)

    def _resume(self) -> None:
        """Load finished tasks' records and resubmit unfinished ones from the journal."""
        for row in self.journal.tasks():
            if row.state in ("done", "failed", "cancelled"):
                record = TaskRecord(row.task_id, row.name, row.owner, row.items,
                                    row.document.get("operation", ""), row.document.get("return", "full"),
                                    row.submitted_at, state=row.state, finished_at=row.finished_at,
                                    summary=row.summary)
                record.finished.set()
                self.tasks[row.task_id] = record
                continue
            try:
                task = task_from_document(row.document, self.state.task_dir(row.task_id))
            except ChainconsoleError as exc:
                self.journal.set_state(row.task_id, "failed", {"error": f"cannot resume: {exc}"})
                continue
            record = self._make_record(row.task_id, task, row.owner, row.submitted_at)
            self.tasks[row.task_id] = record
            chunks = self.journal.chunks(row.task_id)
            completed = tuple((c.start, c.stop) for c in chunks)
            failed = sum(c.stop - c.start - c.items_ok for c in chunks)
            self.log("resumed", f"{row.name}: {len(chunks)} stored chunks kept", task_id=row.task_id)
            self._run(_submitted(row.task_id, task, row.owner, completed, failed))

    def cancel(self, task_id: str) -> None:
        record = self.task(task_id)
        if record.finished.is_set():
            return
        self.log("cancel", f"{record.name} cancelled", task_id=task_id)
        self._run(d.TaskCancelled(task_id))

    def task(self, task_id: str) -> TaskRecord:
        try:
            return self.tasks[task_id]
        except KeyError:
            raise FrontEndError(f"no task {task_id!r}") from None

    async def wait(self, task_id: str) -> dict:
        """Wait until the task ends and return its summary."""
        record = self.task(task_id)
        await record.finished.wait()
        assert record.summary is not None
        return record.summary

    def result_file(self, task_id: str) -> Path:
        """The ``.npz`` of a finished task (built on first request)."""
        record = self.task(task_id)
        if not record.finished.is_set():
            raise FrontEndError(f"task {task_id} is {record.state}, not finished yet")
        folder = self.state.task_dir(task_id)
        if not (folder / "ok.npy").exists():
            raise FrontEndError(f"task {task_id} has no results on disk")
        return export_npz(folder)

    # -- nodes -----------------------------------------------------------------------

    def attach_node(self, link: NodeLink, hello: Hello, key_name: str, address: str, fingerprint: str = "") -> str:
        """Register a node that said hello; return its id. A quarantined key stays out."""
        if fingerprint in self.quarantined:
            raise FrontEndError(f"this node's key is quarantined (as {self.quarantined[fingerprint]}) "
                                "until an operator releases it")
        node_id = self._unique_node_id(hello.name or key_name)
        self.links[node_id] = link
        self.nodes[node_id] = NodeInfo(node_id, hello.name or key_name, address, hello.slots, tuple(hello.via),
                                       is_link=bool(hello.host_key), fingerprint=fingerprint)
        self.log("join", f"{node_id} joined from {address} with {hello.slots} slots", node_id=node_id)
        return node_id

    def start_node(self, node_id: str, hello: Hello) -> None:
        """Let the Dispatcher hand work to a node once it has been welcomed."""
        self._run(d.NodeJoined(node_id, hello.slots, hello.window))

    def detach_node(self, node_id: str, *, clean: bool, reason: str) -> None:
        """A node's session ended: its chunks go back to the queue."""
        if self.links.pop(node_id, None) is None:
            return
        self.subtrees.pop(node_id, None)
        info = self.nodes.get(node_id)
        if info is not None:
            info.lost_at = time.time()
        self.log("leave" if clean else "lost", f"{node_id}: {reason}", node_id=node_id)
        self._run(d.NodeLeft(node_id) if clean else d.NodeLost(node_id, reason))
        self._forget_old_nodes()

    def drain(self, node_id: str) -> None:
        """No new chunks for the node; it finishes what it holds, then leaves."""
        if self._route_control("drain", node_id):
            return
        self.log("drain", f"{node_id} draining", node_id=node_id)
        self.links[node_id].send(Drain("operator"))
        self._run(d.DrainRequested(node_id))

    def kick(self, node_id: str) -> None:
        """Disconnect the node now; its chunks go to other nodes at once."""
        if self._route_control("kick", node_id):
            return
        self.log("kick", f"{node_id} kicked", node_id=node_id)
        self._kicked.add(node_id)
        self._run(d.KickRequested(node_id))

    def release(self, node_id: str) -> None:
        """Let a quarantined node have work again (or back in, if it is disconnected)."""
        for fingerprint, name in list(self.quarantined.items()):
            if name == node_id:
                del self.quarantined[fingerprint]
                if node_id not in self.links:
                    self.log("release", f"{node_id} may connect again", node_id=node_id)
                    return
        if self._route_control("release", node_id):
            return
        self.log("release", f"{node_id} released from quarantine", node_id=node_id)
        self._run(d.QuarantineReleased(node_id))

    def _route_control(self, action: str, node_id: str) -> bool:
        """Pass an action for a node behind a chain link to that link; False if the node is ours."""
        if node_id in self.links:
            return False
        for link, nodes in self.subtrees.items():
            if any(entry["name"] == node_id for entry in nodes):
                self.log(action, f"{node_id} ({action} sent through {link})", node_id=node_id)
                self.links[link].send(Control(action, node_id))
                return True
        raise FrontEndError(f"no connected node {node_id!r}")

    # -- chains ----------------------------------------------------------------------

    def certify_host(self, host_key: str, name: str) -> str:
        """A chain link's host key signed with the console's host key (an OpenSSH host certificate)."""
        ca = asyncssh.read_private_key(self.state.host_key)
        certificate = ca.generate_host_certificate(asyncssh.import_public_key(host_key), name,
                                                   valid_before=f"+{CERTIFICATE_DAYS}d")
        self._certified.add(host_key)
        self.log("certify", f"certified the host key of link {name}", node_id=name)
        return certificate.export_certificate().decode().strip()

    def node_subtree(self, link: str, nodes: tuple[dict, ...]) -> None:
        """A chain link reported the nodes behind it; certify new links among them."""
        self.subtrees[link] = nodes
        for entry in nodes:
            if entry["host_key"] and entry["host_key"] not in self._certified:
                try:
                    certificate = self.certify_host(entry["host_key"], entry["name"])
                except (ValueError, asyncssh.KeyImportError) as exc:  # a bad key harms no one else
                    self.log("error", f"cannot certify {entry['name']}: {exc}")
                    self._certified.add(entry["host_key"])
                    continue
                self.links[link].send(HostCertificate(entry["name"], certificate))
        self._run(d.HeartbeatReceived(link))

    def node_key_lines(self) -> tuple[str, ...]:
        """The enrolled node keys, as chain links are told them."""
        return tuple(sorted(e.public_key for e in self.registry.entries() if e.role is Role.NODE))

    def refresh_node_keys(self) -> None:
        """Tell every chain link the enrolled node keys when they changed."""
        lines = self.node_key_lines()
        if lines == self._node_keys_sent:
            return
        self._node_keys_sent = lines
        for node_id, link in self.links.items():
            if self.nodes[node_id].is_link:
                link.send(NodeKeys(lines[:MAX_NODE_KEYS]))

    def node_alive(self, node_id: str) -> None:
        self._run(d.HeartbeatReceived(node_id))

    def node_credit(self, node_id: str, window: int, slots: int | None = None) -> None:
        if slots is not None and node_id in self.nodes:
            self.nodes[node_id].slots = slots
        self._run(d.CreditChanged(node_id, window, slots))

    def node_failed(self, node_id: str, task_id: str, chunk: int, attempt: int, reason: str) -> None:
        self._run(d.ChunkFailed(node_id, task_id, chunk, attempt, reason))

    async def node_result(self, node_id: str, result: Result) -> None:
        """Check a result off the event loop; store it only once the Dispatcher accepts it."""
        if not self.dispatcher.wants_result(result.task_id, result.chunk, result.attempt):
            self._run(d.HeartbeatReceived(node_id))
            return
        record = self.tasks[result.task_id]
        start, stop = self.dispatcher.chunk_range(result.task_id, result.chunk)
        assert record.task is not None
        problem = await asyncio.to_thread(check_result, record.task, start, stop, result, sample=self.verify_sample)
        if problem:
            self.log("invalid", f"{node_id} chunk {result.task_id}/{result.chunk}: {problem}",
                     task_id=result.task_id, node_id=node_id)
        items_ok = int(np.count_nonzero(result.ok)) if not problem else 0
        event = d.ResultReceived(node_id, result.task_id, result.chunk, result.attempt,
                                 items_ok, result.elapsed_s, valid=not problem)
        for action in self.dispatcher.handle(event, self.now()):
            if isinstance(action, d.ChunkCompleted) and action.task_id == result.task_id \
                    and action.chunk == result.chunk and record.store is not None:
                # Only the copy the Dispatcher accepted is written: a copy that lost the
                # race (another node first, a cancelled task, a node never given it) leaves
                # no trace on disk.
                values = result.result if result.result is not None else result.norms
                record.store.write(start, stop, result.ok, values)
            self._carry_out(action)

    def _unique_node_id(self, name: str) -> str:
        if name not in self.links:
            return name
        self._node_seq += 1
        while f"{name}-{self._node_seq}" in self.links:
            self._node_seq += 1
        return f"{name}-{self._node_seq}"

    def _forget_old_nodes(self) -> None:
        lost = [n for n in self.nodes.values() if n.lost_at is not None]
        for info in sorted(lost, key=lambda n: n.lost_at or 0)[:-LOST_NODES_KEPT]:
            del self.nodes[info.node_id]

    # -- carrying out the Dispatcher's actions ----------------------------------------

    def _run(self, event: object) -> None:
        for action in self.dispatcher.handle(event, self.now()):
            self._carry_out(action)

    def _carry_out(self, action: object) -> None:
        match action:
            case d.AssignChunk():
                self._send_assign(action)
            case d.CancelChunk(node_id=node_id, task_id=task_id, chunk=chunk, attempt=attempt):
                if node_id in self.links:
                    self.links[node_id].send(Cancel(task_id, chunk, attempt))
            case d.CloseNode(node_id=node_id, reason=reason):
                self.log("close", f"{node_id}: {reason}", node_id=node_id)
                link = self.links.get(node_id)
                if link is not None:
                    # A kicked node is told to leave; a silent one may come back when it wakes.
                    link.close(reason, farewell=node_id in self._kicked)
                    self._kicked.discard(node_id)
                    self.detach_node(node_id, clean=False, reason=reason)
            case d.NodeDrained(node_id=node_id):
                link = self.links.get(node_id)
                if link is not None:
                    link.close("drained")
                    self.detach_node(node_id, clean=True, reason="drained")
            case d.ChunkCompleted():
                self._chunk_completed(action)
            case d.ChunkRequeued(task_id=task_id, chunk=chunk, node_id=node_id, reason=reason):
                self.log("requeue", f"chunk {task_id}/{chunk} from {node_id}: {reason}",
                          task_id=task_id, node_id=node_id)
            case d.ChunkAbandoned(task_id=task_id, chunk=chunk, start=start, stop=stop, reason=reason):
                record = self.tasks[task_id]
                if record.store is not None:
                    record.store.fail(start, stop)
                self.journal.chunk_stored(task_id, start, stop, "", 0)
                self.log("abandon", f"chunk {task_id}/{chunk} failed for good: {reason}", task_id=task_id)
            case d.NodeQuarantined(node_id=node_id, reason=reason):
                self.log("quarantine", f"{node_id} quarantined: {reason}", node_id=node_id)
                info = self.nodes.get(node_id)
                if info is not None and info.fingerprint:
                    self.quarantined[info.fingerprint] = node_id
            case d.TaskFinished():
                self._task_finished(action)

    def _send_assign(self, action: d.AssignChunk) -> None:
        record = self.tasks[action.task_id]
        task = record.task
        assert task is not None
        generated: dict[str, dict] = {}
        arrays: dict[str, np.ndarray] = {}
        for name, source in task.inputs.items():
            if isinstance(source, GeneratedInput):
                generated[name] = source.to_spec()
            else:
                arrays[name] = source[action.start:action.stop]
        if record.state == "queued":
            record.state = "running"
            self.journal.set_state(action.task_id, "running")
        self.links[action.node_id].send(Assign(
            action.task_id, action.chunk, action.attempt, task.operation,
            action.start, action.stop, task.return_mode, generated, arrays,
        ))

    def _chunk_completed(self, action: d.ChunkCompleted) -> None:
        record = self.tasks[action.task_id]
        assert record.store is not None
        items_ok = int(np.count_nonzero(record.store.ok[action.start:action.stop]))
        self.journal.chunk_stored(action.task_id, action.start, action.stop, action.node_id, items_ok)

    def _task_finished(self, action: d.TaskFinished) -> None:
        record = self.tasks[action.task_id]
        state = action.state.value
        job = asyncio.get_running_loop().create_task(self._seal(record, state, action))
        self._finishing.add(job)
        job.add_done_callback(self._finishing.discard)

    async def _seal(self, record: TaskRecord, state: str, action: d.TaskFinished) -> None:
        """Make the results durable, then — only then — report the task finished."""
        if record.store is not None:
            await asyncio.to_thread(record.store.close)
        record.finished_at = time.time()
        wall = record.finished_at - record.submitted_at
        by_node = {}
        for chunk in self.journal.chunks(record.task_id):
            if chunk.node:
                by_node[chunk.node] = by_node.get(chunk.node, 0) + (chunk.stop - chunk.start)
        record.summary = {
            "task_id": record.task_id,
            "name": record.name,
            "owner": record.owner,
            "operation": record.operation,
            "state": state,
            "items": record.items,
            "ok_items": action.items_ok,
            "failed_items": action.items_failed,
            "wall_s": round(wall, 4),
            "items_per_node": by_node,
            "return": record.return_mode,
        }
        write_summary(self.state.task_dir(record.task_id), record.summary)
        self.journal.set_state(record.task_id, state, record.summary)
        record.state = state
        record.task = None
        record.store = None
        record.finished.set()
        self.log("finished", f"{record.name} {state}: {action.items_ok}/{record.items} ok in {wall:.2f}s",
                  task_id=record.task_id)

    # -- views -----------------------------------------------------------------------

    def node_rows(self) -> list[NodeRow]:
        """Connected nodes, then recently lost ones."""
        now = self.now()
        snapshot = self.dispatcher.snapshot(now)
        rows = []
        seen = set()
        for view in snapshot.nodes:
            info = self.nodes.get(view.node_id)
            if info is None:
                continue
            seen.add(view.node_id)
            elapsed = max(time.time() - info.connected_at, 1e-9)
            rows.append(NodeRow(view.node_id, info.name, view.state.value, view.slots, view.in_flight,
                                view.items_done, view.errors, info.via, info.address,
                                round(now - view.last_seen, 3), view.items_done / elapsed))
        for link, nodes in self.subtrees.items():
            for entry in nodes:
                seen.add(entry["name"])
                rows.append(NodeRow(entry["name"], entry["name"], entry["state"], entry["slots"],
                                    entry["in_flight"], entry["items_done"], entry["errors"],
                                    (link, *entry["via"]), f"via {link}", None, 0.0))
        for info in self.nodes.values():
            if info.node_id in seen:
                continue
            state = "lost" if info.lost_at is not None else "connecting"
            rows.append(NodeRow(info.node_id, info.name, state, info.slots, 0, 0, 0, info.via,
                                info.address, None, 0.0))
        return rows

    def task_rows(self) -> list[TaskRow]:
        views = {v.task_id: v for v in self.dispatcher.snapshot(self.now()).tasks}
        rows = []
        for record in self.tasks.values():
            view = views.get(record.task_id)
            if record.summary is not None:
                s = record.summary
                done = s.get("ok_items", 0) + s.get("failed_items", 0)
                rows.append(TaskRow(record.task_id, record.name, record.owner, record.state, record.items,
                                    done, s.get("failed_items", 0), record.submitted_at, s.get("wall_s"),
                                    0.0))
            elif view is not None:
                state = "running" if record.state == "running" else view.state.value
                rows.append(TaskRow(record.task_id, record.name, record.owner, state, record.items,
                                    view.items_done, view.items_failed, record.submitted_at, None,
                                    view.items_per_s))
        return rows

    def on_event(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def log(self, kind: str, message: str, *, task_id: str = "", node_id: str = "") -> None:
        event = Event(time.time(), kind, message, task_id, node_id)
        self.events.append(event)
        for listener in self._listeners:
            listener(event)

    # -- for the faces ---
    # What the TUI and the CLI need beyond the rows and actions above. They call these and
    # never reach the Dispatcher or the key registry behind them.

    def chunk_map(self, task_id: str) -> list[d.ChunkView] | None:
        """Every item range of a task in item order, with its state; None once it is not held."""
        try:
            return self.dispatcher.chunk_map(task_id)
        except KeyError:
            return None

    def items_by_node(self, task_id: str) -> dict[str, int]:
        """Items of a task computed per node: its summary's once it ended, else the live count."""
        record = self.task(task_id)
        if record.summary is not None:
            return dict(record.summary.get("items_per_node", {}))
        view = next((v for v in self.dispatcher.snapshot(self.now()).tasks if v.task_id == task_id), None)
        return dict(view.items_by_node) if view is not None else {}

    def pending_keys(self) -> list:
        """The node keys refused so far and waiting for an operator (``PendingKey`` records)."""
        return self.registry.pending()

    def approve_key(self, fingerprint: str, name: str = ""):
        """Authorize a pending node key as a node (its ``KeyEntry``); it gets in on its next try."""
        return self.registry.approve(fingerprint, name)


def _submitted(task_id: str, task: Task, owner: str, completed: tuple[tuple[int, int], ...] = (),
               failed: int = 0) -> d.TaskSubmitted:
    """The Dispatcher's view of a task: automatic chunks stay within one frame's size."""
    return d.TaskSubmitted(task_id, task.count, task.chunk_size, task.max_attempts, owner,
                           completed=completed, completed_failed=failed,
                           max_chunk_size=max(1, MAX_CHUNK_BYTES // max(task.item_nbytes, 1)))
