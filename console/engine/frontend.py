"""The front-end: tasks, results and nodes around one hub — the API every face calls.

The SSH user commands, the CLI's one-shot ``run`` and the Textual console all call this
API. The front-end is the root of the chain: the same hub and shell as a chain link
(``nodes.hub_shell``), with tasks, a journal and result files as its face. It owns no
sockets and imports no Textual.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from pathlib import Path
from types import MappingProxyType

import asyncssh
import numpy as np

from console.engine.journal import (
    SUBMITTING, DamagedTask, Journal, JournaledTask, array_inputs_nbytes, save_array_inputs, task_document,
    task_from_document,
)
from console.engine.keys import KeyEntry, KeyRegistry, Role
from console.engine.records import Event, JobRow, NodeRow, TaskRecord, TaskRow
from console.engine.results import (
    NPZ_FILE, ResultStore, discard_results, export_npz, result_nbytes, unwritten_bytes, verify_result_files,
    write_summary,
)
from console.engine.statedir import StateDir, make_private_dir
from console.engine.writer import StoreJob, Writer
from nodes.hub_shell import ChunkId, HubShell
from protocol import dispatcher as d
from protocol import hub as h
from protocol.errors import ChainconsoleError, RemoteProtocolError
from protocol.hub import HubError
from protocol.inputs import format_bytes
from protocol.messages import MAX_NODE_KEYS, Assign, Hello, HostCertificate, NodeKeys, Result
from protocol.operations import OPERATIONS, describe
from protocol.replication import DEFAULT_REPLICA_RATE
from protocol.taskfile import DEFAULT_LIMITS, MAX_CHUNK_BYTES, Task, TaskLimits
from protocol.verify import DEFAULT_SAMPLE, replicated

CERTIFICATE_DAYS = 365
MAX_CERTIFICATES_PER_LINK = 64
"""Host certificates issued for the links behind one chain link (by its key), in one run of the console."""
CERTIFICATE_BURST = 8
CERTIFICATES_PER_S = 1.0
"""How fast one chain link's reports may get certificates: a burst, then this rate."""
DEFAULT_MAX_UNFINISHED_PER_OWNER = 100
EVENT_LOG_SIZE = 2000
DEFAULT_DISK_MARGIN = 64 * 1024 * 1024
"""Free space a submission must leave in the state folder beyond what its task will take
(plus ``DISK_MARGIN_FRACTION`` of that): the journal, summaries and ``.npz`` exports need room."""
DISK_MARGIN_FRACTION = 0.05
DEFAULT_PRUNE_EVERY_S = 60.0
MAX_JOBS_SHOWN = 1000
"""Jobs of one launcher the front-end keeps to show."""


@dataclass(frozen=True)
class Backlog:
    """The signal a launcher scales by (``FrontEnd.backlog``, ``ssh … backlog``)."""

    items_waiting: int
    """Items of unfinished tasks that no node has room for."""
    tasks_unfinished: int
    nodes: int
    """Nodes connected and not draining."""
    slots: int


class FrontEndError(ChainconsoleError):
    """A request the front-end cannot honour (unknown task or node, result not ready)."""


class NoSpaceError(FrontEndError):
    """A task whose inputs and results would not fit the free space of the state folder."""


class FrontEnd(HubShell):
    """Tasks, nodes and results around one hub; the API all faces call."""

    def __init__(
        self,
        state: StateDir,
        *,
        heartbeat_interval_s: float = 1.0,
        heartbeat_timeout_s: float = 5.0,
        limits: TaskLimits = DEFAULT_LIMITS,
        max_unfinished_per_owner: int = DEFAULT_MAX_UNFINISHED_PER_OWNER,
        tick_s: float = 0.5,
        verify_sample: int = DEFAULT_SAMPLE,
        disk_margin: int = DEFAULT_DISK_MARGIN,
        keep_results_s: float | None = None,
        prune_every_s: float = DEFAULT_PRUNE_EVERY_S,
        replica_rate: float = DEFAULT_REPLICA_RATE,
    ) -> None:
        super().__init__(heartbeat_interval_s=heartbeat_interval_s, heartbeat_timeout_s=heartbeat_timeout_s,
                         tick_s=tick_s, verify_sample=verify_sample, replica_rate=replica_rate)
        self.state = state
        self.limits = limits
        """Size limits for tasks submitted over SSH."""
        self.max_unfinished_per_owner = max_unfinished_per_owner
        self.disk_margin = disk_margin
        """Bytes a submission must leave free beyond its task's (see ``DEFAULT_DISK_MARGIN``)."""
        self.keep_results_s = keep_results_s
        """Finished tasks older than this are deleted, checked every ``prune_every_s``; None keeps them."""
        self.prune_every_s = prune_every_s
        self._pruner: asyncio.Task | None = None
        self.journal = Journal(state.journal)
        self.writer = Writer(self.journal, lambda task_id, message: self.log("error", message, task_id=task_id))
        """Every journal and result write, in order, off the event loop."""
        self.registry = KeyRegistry(state, report=lambda problem: self.log("warning", problem))
        self.tasks: dict[str, TaskRecord] = {}
        self.events: collections.deque[Event] = collections.deque(maxlen=EVENT_LOG_SIZE)
        self.started_at = time.time()
        self.instance = uuid.uuid4().hex[:16]
        """This run of the front-end: nodes offer results kept across a reconnect only to it."""
        self._node_keys_sent: tuple[str, ...] = ()
        self._certified: set[str] = set()
        self._link_certificates: dict[str, _CertificateBudget] = {}  # link key → what its reports got
        self._broken: dict[str, str] = {}  # task id → why its results cannot be stored
        self._finishing: set[asyncio.Task] = set()
        self._submitting: collections.Counter[str] = collections.Counter()  # owner → submits under way
        self._listeners: list[Callable[[Event], None]] = []
        self._assign_listeners: list[Callable[[ChunkId], None]] = []
        self._accept_listeners: list[Callable[[ChunkId], None]] = []
        self._jobs: dict[str, tuple[JobRow, ...]] = {}  # launcher → its jobs as it last reported them

    # -- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer, resume journaled tasks and start the tick loop."""
        self.writer.start()
        self._resume()
        self.start_ticking()
        if self.keep_results_s is not None:
            self._pruner = asyncio.get_running_loop().create_task(self._prune_periodically())

    async def stop(self) -> None:
        """Stop ticking and close every node session; results stay on disk."""
        await self.stop_ticking()
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        self.close_sessions("front-end shutting down")
        for task in list(self._finishing):
            with contextlib.suppress(Exception):
                await task
        for record in self.tasks.values():
            if record.store is not None:
                with contextlib.suppress(OSError):
                    await self.writer.call(record.store.close)
                record.store = None
        await self.writer.close()
        self.journal.close()

    # -- tasks -----------------------------------------------------------------------

    async def submit(self, task: Task, owner: str) -> str:
        """Queue ``task`` for ``owner`` and return its id; its inputs are written off the loop."""
        unfinished = sum(1 for r in self.tasks.values() if r.owner == owner and not r.finished.is_set())
        unfinished += self._submitting[owner]
        if unfinished >= self.max_unfinished_per_owner:
            raise FrontEndError(f"{owner} already has {unfinished} unfinished tasks, the most allowed; "
                                "wait for some to finish or cancel them")
        self.check_space(task)
        self._submitting[owner] += 1
        try:
            document = task_document(task)
            # The row is a task only once its inputs are durably on disk (resume fails a
            # row left SUBMITTING by a crash).
            task_id = await self.writer.call(self.journal.new_task, task.name, owner, document, task.count,
                                             SUBMITTING)
            folder = self.state.task_dir(task_id)
            await asyncio.to_thread(_save_inputs, folder, task)
            await self.writer.call(self.journal.set_state, task_id, "queued")
            # From here on the task reads its inputs from its folder, as a resumed one does:
            # the uploaded arrays need not stay in memory while it waits.
            task = await asyncio.to_thread(task_from_document, document, folder)
            record = await asyncio.to_thread(self._make_record, task_id, task, owner, time.time())
        finally:
            self._submitting[owner] -= 1
        self.tasks[task_id] = record
        self.log("submitted", f"{task.name}: {task.operation} × {task.count} by {owner}", task_id=task_id)
        self.run(_submitted(task_id, task, owner))
        return task_id

    def check_space(self, task: Task) -> None:
        """Refuse (``NoSpaceError``) a task whose inputs and results won't fit the state folder's free space.

        Result files are sparse until written, so what unfinished tasks will still write
        counts as taken; the margin leaves room for the journal, summaries and exports.
        """
        inputs = array_inputs_nbytes(task)
        results = result_nbytes(count=task.count, item_shape=task.result_item_shape, dtype=task.result_dtype,
                                return_mode=task.return_mode)
        margin = self.disk_margin + int(DISK_MARGIN_FRACTION * (inputs + results))
        promised = sum(unwritten_bytes(self.state.task_dir(r.task_id))
                       for r in self.tasks.values() if not r.finished.is_set())
        free = shutil.disk_usage(self.state.root).free
        if inputs + results + margin + promised > free:
            promise = f", {format_bytes(promised)} of it promised to unfinished tasks" if promised else ""
            raise NoSpaceError(
                f"not enough disk space for {task.name}: it needs {format_bytes(inputs + results + margin)} "
                f"({format_bytes(results)} of results, {format_bytes(inputs)} of inputs, a margin of "
                f"{format_bytes(margin)}) and {format_bytes(free)} is free in {self.state.root}{promise}")

    def _make_record(self, task_id: str, task: Task, owner: str, submitted_at: float) -> TaskRecord:
        store = ResultStore(
            self.state.task_dir(task_id),
            count=task.count,
            item_shape=task.result_item_shape,
            dtype=task.result_dtype,
            return_mode=task.return_mode,
        )
        return TaskRecord(task_id, task.name, owner, task.count, task.operation, task.return_mode,
                          submitted_at, task=task, store=store, priority=task.priority)

    def _resume(self) -> None:
        """Load finished tasks' records and resubmit unfinished ones from the journal.

        A task whose document or files are missing or damaged is failed with its reason;
        every other task resumes.
        """
        for row in self.journal.tasks():
            if row.state in ("done", "failed", "cancelled"):
                document = row.document or {}
                record = TaskRecord(row.task_id, row.name, row.owner, row.items,
                                    str(document.get("operation", "")), str(document.get("return", "full")),
                                    row.submitted_at, state=row.state, finished_at=row.finished_at,
                                    summary=row.summary or _failed_summary(row, "the journal's summary is damaged"),
                                    priority=_priority(document))
                record.finished.set()
                self.tasks[row.task_id] = record
                continue
            self._resume_task(row)

    def _resume_task(self, row: JournaledTask) -> None:
        """Resubmit a journaled task with the ranges it has stored, or fail it if it cannot be rebuilt."""
        folder = self.state.task_dir(row.task_id)
        chunks = self.journal.chunks(row.task_id)
        try:
            if row.state == SUBMITTING:
                raise DamagedTask("the front-end stopped while the task was being submitted (interrupted)")
            task = task_from_document(row.document, folder)
            if task.count != row.items:
                raise DamagedTask(f"its inputs hold {task.count} items, not the {row.items} submitted")
            if chunks:
                problem = verify_result_files(folder, count=task.count, item_shape=task.result_item_shape,
                                              dtype=task.result_dtype, return_mode=task.return_mode)
                if problem:
                    raise DamagedTask(problem)
            else:
                discard_results(folder)  # nothing in them is trusted: start them afresh
            record = self._make_record(row.task_id, task, row.owner, row.submitted_at)
        except (DamagedTask, OSError, ValueError) as exc:
            reason = f"cannot resume: {exc}"
            summary = _failed_summary(row, reason)
            self.writer.post(self.journal.set_state, row.task_id, "failed", summary, task_id=row.task_id)
            record = TaskRecord(row.task_id, row.name, row.owner, row.items,
                                str((row.document or {}).get("operation", "")),
                                str((row.document or {}).get("return", "full")), row.submitted_at,
                                state="failed", finished_at=time.time(), summary=summary,
                                priority=_priority(row.document or {}))
            record.finished.set()
            self.tasks[row.task_id] = record
            self.log("damaged", f"{row.name}: {reason}", task_id=row.task_id)
            return
        self.tasks[row.task_id] = record
        completed = tuple((c.start, c.stop) for c in chunks)
        failed = sum(c.stop - c.start - c.items_ok for c in chunks)
        for c in chunks:
            if c.node:
                record.items_by_node[c.node] = record.items_by_node.get(c.node, 0) + c.stop - c.start
        self.log("resumed", f"{row.name}: {len(chunks)} stored chunks kept", task_id=row.task_id)
        self.run(_submitted(row.task_id, task, row.owner, completed, failed))

    def cancel(self, task_id: str, *, by: str = "") -> None:
        """Stop a task; what is stored stays, the rest of its items fail."""
        record = self.task(task_id)
        if record.finished.is_set():
            return
        self.log("cancel", f"{record.name} cancelled{_by(by)}", task_id=task_id)
        self.run(d.TaskCancelled(task_id))

    async def delete(self, task_id: str) -> None:
        """Remove a finished task: its files, then its journal rows. A running task is refused."""
        record = self.task(task_id)
        if not record.finished.is_set():
            raise FrontEndError(f"task {task_id} is {record.state}; cancel it first, then delete it")
        del self.tasks[task_id]  # no face hands it out while its files go
        try:
            await asyncio.to_thread(shutil.rmtree, self.state.task_dir(task_id), ignore_errors=False)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.tasks[task_id] = record
            raise FrontEndError(f"cannot delete the files of task {task_id}: {exc}") from None
        await self.writer.call(self.journal.delete_task, task_id)
        self.log("deleted", f"{record.name}: its files and journal rows removed", task_id=task_id)

    async def prune(self, older_than_s: float) -> list[str]:
        """Delete every task that finished more than ``older_than_s`` ago; return their ids."""
        cutoff = time.time() - older_than_s
        old = [r.task_id for r in self.tasks.values()
               if r.finished.is_set() and (r.finished_at or r.submitted_at) < cutoff]
        deleted = []
        for task_id in old:
            try:
                await self.delete(task_id)
            except (FrontEndError, sqlite3.Error) as exc:
                self.log("error", f"cannot prune {task_id}: {exc}", task_id=task_id)
            else:
                deleted.append(task_id)
        return deleted

    async def _prune_periodically(self) -> None:
        assert self.keep_results_s is not None
        while True:
            await self.prune(self.keep_results_s)
            await asyncio.sleep(self.prune_every_s)

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

    # -- nodes, as operators act on them ------------------------------------------------

    def drain(self, node_id: str, *, by: str = "") -> None:
        """No new chunks for the node; it finishes what it holds, then leaves."""
        self._act("drain", self.hub.drain, node_id, by)

    def kick(self, node_id: str, *, by: str = "") -> None:
        """Disconnect the node now; its chunks go to other nodes at once."""
        self._act("kick", self.hub.kick, node_id, by)

    def release(self, node_id: str, *, by: str = "") -> None:
        """Let a quarantined node have work again (or back in, if it is disconnected)."""
        self._act("release", self.hub.release, node_id, by)

    def _act(self, verb: str, action: Callable[[str, float], list], node_id: str, by: str) -> None:
        try:
            outputs = action(node_id, self.now())
        except HubError as exc:
            raise FrontEndError(str(exc)) from None
        if by:
            self.log("operator", f"{verb} {node_id}{_by(by)}", node_id=node_id)
        self.carry_out(outputs)

    # -- chains ----------------------------------------------------------------------

    def certify_host(self, host_key: str, name: str) -> str:
        """A chain link's host key signed with the console's host key (an OpenSSH host certificate)."""
        ca = asyncssh.read_private_key(self.state.host_key)
        certificate = ca.generate_host_certificate(asyncssh.import_public_key(host_key), name,
                                                   valid_before=f"+{CERTIFICATE_DAYS}d")
        self._certified.add(host_key)
        self.log("certify", f"certified the host key of link {name}", node_id=name)
        return certificate.export_certificate().decode().strip()

    def node_key_lines(self) -> tuple[str, ...]:
        """The enrolled node keys, as chain links are told them."""
        return tuple(sorted(e.public_key for e in self.registry.entries() if e.role is Role.NODE))

    def refresh_node_keys(self) -> None:
        """Tell every chain link the enrolled node keys when they changed."""
        lines = self.node_key_lines()
        if lines == self._node_keys_sent:
            return
        self._node_keys_sent = lines
        for node_id, record in self.hub.nodes.items():
            if record.is_link and node_id in self.sessions:
                self.sessions[node_id].send(NodeKeys(lines[:MAX_NODE_KEYS]))

    # -- the shell's questions, answered by the front-end -----------------------------------

    def face_welcome(self, node_id: str, hello: Hello) -> tuple[str, str]:
        if not hello.host_key:
            return self.instance, ""
        try:
            return self.instance, self.certify_host(hello.host_key, node_id)
        except (ValueError, asyncssh.KeyImportError) as exc:
            raise RemoteProtocolError(f"hello.host_key is not a public key: {exc}") from None

    def face_node_keys(self) -> tuple[str, ...]:
        return self.node_key_lines()

    def face_subtree(self, link_id: str, nodes: tuple[dict, ...]) -> None:
        """Certify the new links among the nodes behind a link: bounded, and only for what it carries.

        Only a chain link's report counts. Each entry asking to be certified gets at most one
        certificate from the reporting link's key, under the entry's own name, and only
        when the entry is where the report says it is: a name that no other node of this hub
        holds, given once in the report, behind links the same report lists. A link gets at
        most ``MAX_CERTIFICATES_PER_LINK`` in this run, ``CERTIFICATE_BURST`` at once and then
        ``CERTIFICATES_PER_S``.
        """
        record = self.hub.nodes.get(link_id)
        if record is None or not record.is_link or link_id not in self.sessions:
            return
        # By key, not by session: reconnecting does not refill it.
        budget = self._link_certificates.setdefault(record.fingerprint, _CertificateBudget(self.now()))
        names = [entry["name"] for entry in nodes]
        reported = set(names)
        for entry in nodes:
            name, host_key = entry["name"], entry["host_key"]
            if not host_key or name in budget.issued or host_key in self._certified:
                continue
            if name in self.hub.nodes or names.count(name) != 1 or not set(entry["via"]) <= reported - {name}:
                continue  # not a link this one carries: no certificate under that name
            if not budget.take(self.now()):
                return
            budget.issued.add(name)
            try:
                certificate = self.certify_host(host_key, name)
            except (ValueError, asyncssh.KeyImportError) as exc:  # a bad key harms no one else
                self.log("error", f"cannot certify {name}: {exc}")
                continue
            self.sessions[link_id].send(HostCertificate(name, certificate))

    def face_check_target(self, chunk: ChunkId) -> tuple[object, int, int]:
        task_id, number, _ = chunk
        start, stop = self.hub.dispatcher.chunk_range(task_id, number)
        return self.tasks[task_id].task, start, stop

    def face_assign(self, action: d.AssignChunk) -> Assign:
        record = self.tasks[action.task_id]
        task = record.task
        assert task is not None
        generated = task.generated_specs
        arrays = {name: source[action.start:action.stop] for name, source in task.inputs.items()
                  if name not in generated}
        if record.state == "queued":
            record.state = "running"
            self.writer.post(self.journal.set_state, action.task_id, "running", task_id=action.task_id)
        for listener in self._assign_listeners:
            listener((action.task_id, action.chunk, action.attempt))
        # Every field comes from the validated task and the Dispatcher's ranges: not checked again.
        return Assign.construct(task_id=action.task_id, chunk=action.chunk, attempt=action.attempt,
                                operation=task.operation, start=action.start, stop=action.stop,
                                return_mode=task.return_mode, generated=generated, arrays=arrays)

    def face_store(self, accepted: h.ResultAccepted, result: Result) -> None:
        """Only the copy that completed its chunk is written: a copy that lost the race leaves no trace.

        The writer stores it and journals it once durable; the task is sealed after that.
        """
        record = self.tasks[accepted.task_id]
        assert record.store is not None
        values = result.result if result.result is not None else result.norms
        self.writer.store(StoreJob(accepted.task_id, record.store, accepted.start, accepted.stop,
                                   accepted.node_id, accepted.items_ok, result.ok, values,
                                   on_error=lambda exc: self.face_store_failed(accepted, exc),
                                   confirmed=accepted.confirmed))
        for listener in self._accept_listeners:
            listener((accepted.task_id, accepted.chunk, accepted.attempt))

    async def face_drained(self) -> None:
        """Wait while the writer's backlog of results is full (the node's session waits too)."""
        await self.writer.drained()

    def face_store_failed(self, accepted: h.ResultAccepted, error: Exception) -> None:
        """A result that cannot be stored fails its task at once; other tasks go on."""
        reason = f"cannot store results: {error}"
        self.log("error", f"task {accepted.task_id}: {reason}", task_id=accepted.task_id)
        self._broken.setdefault(accepted.task_id, reason)
        self.run(d.TaskCancelled(accepted.task_id))  # ignored when the task already finished: _seal fails it

    def face_output(self, output: object) -> None:
        match output:
            case h.Note(kind=kind, text=text, node_id=node_id, task_id=task_id):
                self.log(kind, text, node_id=node_id, task_id=task_id)
            case d.ChunkRequeued(task_id=task_id, chunk=chunk, node_id=node_id, reason=reason):
                self.log("requeue", f"chunk {task_id}/{chunk} from {node_id}: {reason}",
                         task_id=task_id, node_id=node_id)
            case d.ChunkAbandoned(task_id=task_id, chunk=chunk, start=start, stop=stop, reason=reason):
                self.log("abandon", f"chunk {task_id}/{chunk} failed for good: {reason}", task_id=task_id)
                record = self.tasks[task_id]
                if record.store is not None:
                    self.writer.store(StoreJob(task_id, record.store, start, stop, "", 0))
            case d.ChunkReopened(task_id=task_id, chunk=chunk, start=start, node_id=node_id, reason=reason):
                self.log("reopen", f"chunk {task_id}/{chunk} of {node_id} computed again: {reason}",
                         task_id=task_id, node_id=node_id)
                self.writer.post(self.journal.chunk_reopened, task_id, start, task_id=task_id)
            case d.NodeDistrusted(node_id=node_id):
                self._in_background(self._reopen_finished(node_id))
            case d.NodeQuarantined(node_id=node_id, reason=reason):
                self.log("quarantine", f"{node_id} quarantined: {reason}", node_id=node_id)
            case d.TaskFinished():
                self._task_finished(output)

    def _task_finished(self, action: d.TaskFinished) -> None:
        self._in_background(self._seal(self.tasks[action.task_id], action))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        job = asyncio.get_running_loop().create_task(work)
        self._finishing.add(job)
        job.add_done_callback(self._finishing.discard)

    async def _reopen_finished(self, node_id: str) -> None:
        """A node was caught lying: its unconfirmed chunks in finished tasks are computed again."""
        try:
            rows = await self.writer.call(self.journal.distrust, node_id)
        except (OSError, sqlite3.Error) as exc:
            self.log("error", f"cannot reopen the finished tasks of {node_id}: {exc}", node_id=node_id)
            return
        for row in rows:
            task_id = row.task_id
            record = self.tasks.get(task_id)
            if record is None or not record.finished.is_set():
                continue  # deleted meanwhile, or still sealing
            (self.state.task_dir(task_id) / NPZ_FILE).unlink(missing_ok=True)
            self.log("reopen", f"{row.name} running again: {node_id}, caught with a wrong result, "
                               "computed part of it unconfirmed", task_id=task_id, node_id=node_id)
            self._resume_task(row)

    async def _seal(self, record: TaskRecord, action: d.TaskFinished) -> None:
        """Make the results durable, then — only then — report the task finished."""
        state = action.state.value
        error = ""
        try:
            if record.store is not None:
                # After every range queued before it is durable and journaled, or failed.
                await self.writer.call(record.store.close)
        except OSError as exc:
            error = f"cannot store results: {exc}"
        # Store errors queued before the close were reported (on the loop) before it returned.
        error = self._broken.pop(record.task_id, "") or error
        if error:
            state = "failed"
        self.hub.dispatcher.forget(record.task_id)
        record.finished_at = time.time()
        wall = record.finished_at - record.submitted_at
        by_node = dict(record.items_by_node)
        for node, items in action.items_by_node.items():
            by_node[node] = by_node.get(node, 0) + items
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
            "replicated_chunks": action.replicated_chunks,
            "return": record.return_mode,
        }
        if error:
            record.summary["error"] = error
        try:
            await self.writer.call(self._record_finished, record.task_id, state, record.summary)
        except (OSError, sqlite3.Error) as exc:
            self.log("error", f"task {record.task_id}: cannot record that it finished: {exc}",
                     task_id=record.task_id)
        finally:
            record.state = state
            record.task = None
            record.store = None
            record.finished.set()
        self.log("finished", f"{record.name} {state}: {action.items_ok}/{record.items} ok in {wall:.2f}s",
                 task_id=record.task_id)

    def _record_finished(self, task_id: str, state: str, summary: dict) -> None:
        """On the writer: the summary file, then the journal's final state."""
        write_summary(self.state.task_dir(task_id), summary)
        self.journal.set_state(task_id, state, summary)

    # -- views -----------------------------------------------------------------------

    def node_rows(self) -> list[NodeRow]:
        """Connected nodes, the nodes behind chain links, then recently departed ones."""
        return self.hub.rows(self.now())

    def task_rows(self) -> list[TaskRow]:
        views = {v.task_id: v for v in self.hub.dispatcher.snapshot(self.now()).tasks}
        rows = (self._row(record, views.get(record.task_id)) for record in self.tasks.values())
        return [row for row in rows if row is not None]

    def task_row(self, task_id: str) -> TaskRow | None:
        """One task's row, at the cost of one task (``task_rows`` costs all of them); FrontEndError if unknown."""
        record = self.task(task_id)
        return self._row(record, self.hub.dispatcher.task_view(task_id, self.now()))

    @staticmethod
    def _row(record: TaskRecord, view: d.TaskView | None) -> TaskRow | None:
        if record.summary is not None:
            s = record.summary
            done = s.get("ok_items", 0) + s.get("failed_items", 0)
            wall = s.get("wall_s") or 0
            return TaskRow(record.task_id, record.name, record.owner, record.state, record.items,
                           done, s.get("failed_items", 0), record.submitted_at, s.get("wall_s"),
                           done / wall if wall > 0 else 0.0, priority=record.priority)
        if view is not None:
            state = "running" if record.state == "running" else view.state.value
            return TaskRow(record.task_id, record.name, record.owner, state, record.items,
                           view.items_done, view.items_failed, record.submitted_at, None, view.items_per_s,
                           view.waiting, record.priority)
        return None

    def on_event(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` with every event from now on."""
        self._listeners.append(listener)

    def off_event(self, listener: Callable[[Event], None]) -> None:
        """Stop calling ``listener`` (one that ``on_event`` added)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def on_assign(self, listener: Callable[[ChunkId], None]) -> None:
        """Call ``listener`` with (task, chunk, attempt) of every assignment sent."""
        self._assign_listeners.append(listener)

    def on_accept(self, listener: Callable[[ChunkId], None]) -> None:
        """Call ``listener`` with (task, chunk, attempt) of every result stored."""
        self._accept_listeners.append(listener)

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
            return self.hub.dispatcher.chunk_map(task_id)
        except KeyError:
            return None

    def items_by_node(self, task_id: str) -> dict[str, int]:
        """Items of a task computed per node: its summary's once it ended, else the live count."""
        record = self.task(task_id)
        if record.summary is not None:
            return dict(record.summary.get("items_per_node", {}))
        view = self.hub.dispatcher.task_view(task_id, self.now())
        return dict(view.items_by_node) if view is not None else {}

    def operations(self) -> dict:
        """What this front-end knows to run, and which connected nodes run each (built-ins: all)."""
        rows = [row for row in self.node_rows() if row.state in ("idle", "busy", "draining")]
        listed = []
        for op in OPERATIONS.values():
            runs = [row.node_id for row in rows if op.builtin or op.name in row.operations]
            listed.append({**describe(op), "nodes": runs})
        unknown = sorted({name for row in rows for name in row.operations} - set(OPERATIONS))
        return {"operations": listed, "problems": list(OPERATIONS.problems),
                "unknown_here": [{"name": name, "nodes": [r.node_id for r in rows if name in r.operations]}
                                 for name in unknown]}

    def pending_keys(self) -> list:
        """The node keys refused so far and waiting for an operator (``PendingKey`` records)."""
        return self.registry.pending()

    def enrol_launcher_key(self, public_key: str, launcher: str, *, by: str = "") -> KeyEntry:
        """Trust a launcher's fresh node key until ``withdraw_launcher_key`` (in memory only).

        The nodes the launcher starts log in with it; nothing else is trusted by it, and a
        restart of the front-end forgets it.
        """
        entry = self.registry.enrol_launched(public_key, launcher)
        self.log("keys", f"launcher {entry.launcher} enrolled node key {entry.fingerprint}{_by(by)}")
        self.refresh_node_keys()
        return entry

    def withdraw_launcher_key(self, fingerprint: str) -> None:
        """Stop trusting a launcher's node key; the sessions of its nodes are closed."""
        entry = next((e for e in self.registry.launched() if e.fingerprint == fingerprint), None)
        if entry is None or not self.registry.withdraw_launched(fingerprint):
            return
        self.log("keys", f"launcher {entry.launcher} withdrew node key {fingerprint}")
        self.refresh_node_keys()
        for node_id, record in list(self.hub.nodes.items()):
            if record.fingerprint == fingerprint and node_id in self.sessions:
                self.sessions[node_id].close("its launcher stopped", farewell=True)

    def report_jobs(self, launcher: str, jobs: tuple[JobRow, ...] | None) -> None:
        """A launcher's jobs now (None: the launcher is gone), for the faces to show."""
        if jobs is None:
            self._jobs.pop(launcher, None)
        else:
            self._jobs[launcher] = tuple(jobs)[:MAX_JOBS_SHOWN]

    def job_rows(self) -> list[JobRow]:
        """Every launcher's jobs (or hosts), launcher by launcher."""
        return [job for jobs in self._jobs.values() for job in jobs]

    def backlog(self) -> Backlog:
        """What a launcher scales by: the work waiting for a node, and the nodes there are."""
        rows = self.node_rows()
        live = [r for r in rows if r.state in ("connecting", "idle", "busy")]
        unfinished = [r for r in self.tasks.values() if not r.finished.is_set()]
        return Backlog(items_waiting=self.hub.dispatcher.items_waiting(),
                       tasks_unfinished=len(unfinished),
                       nodes=len(live), slots=sum(r.slots for r in live))

    def approve_key(self, fingerprint: str, name: str = ""):
        """Authorize a pending node key as a node (its ``KeyEntry``); it gets in on its next try."""
        entry = self.registry.approve(fingerprint, name)
        self.log("keys", f"approved node key {entry.fingerprint} as {entry.name}", node_id=entry.name)
        return entry


def _by(who: str) -> str:
    return f" by {who}" if who else ""


class _CertificateBudget:
    """What one chain link's subtree reports may still get certified: a token bucket and a cap."""

    def __init__(self, now: float) -> None:
        self.issued: set[str] = set()
        self.tokens = float(CERTIFICATE_BURST)
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(CERTIFICATE_BURST, self.tokens + (now - self.at) * CERTIFICATES_PER_S)
        self.at = now
        if len(self.issued) >= MAX_CERTIFICATES_PER_LINK or self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _priority(document: dict) -> int:
    """A journaled task file's ``priority`` (validated when it was submitted; 0 if it had none)."""
    value = document.get("priority", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _failed_summary(row: JournaledTask, reason: str) -> dict:
    """The summary of a task that could not be resumed: every item failed, and why."""
    return {"task_id": row.task_id, "name": row.name, "owner": row.owner,
            "operation": str((row.document or {}).get("operation", "")), "state": "failed",
            "items": row.items, "ok_items": 0, "failed_items": row.items, "wall_s": 0.0,
            "items_per_node": {}, "return": str((row.document or {}).get("return", "full")), "error": reason}


def _save_inputs(folder: Path, task: Task) -> None:
    make_private_dir(folder)
    save_array_inputs(folder, task)


def _submitted(task_id: str, task: Task, owner: str, completed: tuple[tuple[int, int], ...] = (),
               failed: int = 0) -> d.TaskSubmitted:
    """The Dispatcher's view of a task: automatic chunks stay within one frame's size."""
    return d.TaskSubmitted(task_id, task.count, task.chunk_size, task.max_attempts, owner,
                           completed=completed, completed_failed=failed, priority=task.priority,
                           max_chunk_size=max(1, MAX_CHUNK_BYTES // max(task.item_nbytes, 1)),
                           replicate=replicated(task.operation, task.return_mode),
                           operation="" if OPERATIONS[task.operation].builtin else task.operation,
                           requires=MappingProxyType(dict(task.requires)))
