"""The user commands: what a user or operator may run over SSH (``ssh … submit``).

Every command answers in JSON (one object, or JSON lines while a task runs) so the
stock OpenSSH client is a complete client. Exit status follows the CLI's contract
(``protocol.errors.ExitStatus``): 0 success, 1 a task ended with failed items or was
cancelled, 2 a bad request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol

import asyncssh

from console.engine.console_stream import chunks_object
from console.engine.frontend import FrontEnd, FrontEndError
from console.engine.records import JobRow, TaskRecord
from console.engine.keys import KeyEntry, KeyError_, Role
from console.ssh.watch_stream import stream_console
from protocol.errors import ChainconsoleError, ExitStatus, TaskFileError
from protocol.fields import MAX_NAME
from protocol.upload import MAX_UPLOAD_STREAM, UploadReader

PROGRESS_EVERY_S = 0.5
SEND_CHUNK = 1024 * 1024

USAGE = """commands:
  submit [--detach]     read a task (JSON) on stdin and run it
  watch ID              follow a task until it ends (JSON lines)
  watch                 the console stream: nodes, tasks, keys, events (JSON lines;
                        operators and observers)
  chunks ID             a task's chunk map and items per node, as JSON
  tasks | nodes         list as JSON
  operations            what the front-end runs, and which nodes run each (JSON)
  status ID             one task as JSON
  result ID             the results as .npz bytes on stdout
  cancel ID
  delete ID             remove a finished task's files and journal rows
  drain NODE | kick NODE | release NODE     (operators)
  approve FINGERPRINT [--name NAME]          authorize a pending node key (operators)
  backlog               work waiting for nodes, as JSON (operators)
  launcher NAME         read a node public key on stdin; it is trusted as
                        NAME's node key until stdin ends or the session does (operators)
"""
MAX_KEY_LINE = 8192


class UsageError(ChainconsoleError):
    """A command line a user typed is not one we know."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # never print usage and exit the server
        raise UsageError(message)


class Session:
    """One user command on one SSH channel."""

    def __init__(self, frontend: FrontEnd, process: asyncssh.SSHServerProcess, key: KeyEntry) -> None:
        self.frontend = frontend
        self.process = process
        self.key = key
        self.operator = key.role is Role.OPERATOR
        self.observer = key.role is Role.OBSERVER
        self.sees_all = self.operator or self.observer
        """Operators and observers see every task; a user sees their own."""

    def out(self, obj: object) -> None:
        self.process.stdout.write((json.dumps(obj) + "\n").encode())

    def fail(self, message: str, status: int = ExitStatus.USAGE) -> int:
        self.process.stderr.write(f"chainconsole: {message}\n".encode())
        return status

    async def run(self) -> int:
        try:
            words = shlex.split(self.process.command or "")
        except ValueError as exc:
            return self.fail(f"cannot parse command: {exc}")
        if not words or words[0] in ("help", "--help", "-h"):
            self.process.stdout.write(USAGE.encode())
            return ExitStatus.OK if words else ExitStatus.USAGE
        handler = getattr(self, f"cmd_{words[0]}", None)
        if handler is None:
            return self.fail(f"unknown command {words[0]!r}; try 'help'")
        try:
            return await handler(words[1:])
        except UsageError as exc:
            return self.fail(f"{words[0]}: {exc}")
        except FrontEndError as exc:
            status = ExitStatus.FAILED if "not finished" in str(exc) else ExitStatus.USAGE
            return self.fail(str(exc), status)
        except KeyError_ as exc:
            return self.fail(str(exc))

    # -- helpers ---------------------------------------------------------------------

    def _own_task(self, task_id: str) -> TaskRecord:
        record = self.frontend.task(task_id)
        if not self.sees_all and record.owner != self.key.name:
            raise FrontEndError(f"no task {task_id!r}")  # other users' tasks do not exist for you
        return record

    def _require_operator(self) -> None:
        self._refuse_observer()
        if not self.operator:
            raise FrontEndError("only operators may do that")

    def _refuse_observer(self) -> None:
        if self.observer:
            raise FrontEndError("observers may look but not change anything")

    @staticmethod
    def _one_arg(args: list[str], what: str) -> str:
        if len(args) != 1:
            raise UsageError(f"expects exactly one {what}")
        return args[0]

    async def _read_upload(self, limit: int) -> UploadReader:
        """Stdin, fed piece by piece to an ``UploadReader``: never joined and copied again."""
        upload, size = UploadReader(), 0
        while data := await self.process.stdin.read(SEND_CHUNK):
            size += len(data)
            if size > limit:
                raise UsageError(f"input larger than {limit} bytes")
            upload.feed(data)
        return upload

    # -- commands --------------------------------------------------------------------

    async def cmd_submit(self, args: list[str]) -> int:
        parser = _Parser(prog="submit", add_help=False)
        parser.add_argument("--detach", action="store_true")
        opts = parser.parse_args(args)
        self._refuse_observer()
        try:
            upload = await self._read_upload(MAX_UPLOAD_STREAM)
            # Decoding and validating (the symmetry check of a large eigvalsh input takes
            # seconds) run off the loop, which keeps serving nodes meanwhile.
            task = await asyncio.to_thread(upload.task, self.frontend.limits)
        except TaskFileError as exc:
            for problem in exc.problems:
                self.process.stderr.write(f"chainconsole: {problem}\n".encode())
            self.out({"event": "rejected", "problems": exc.problems})
            return ExitStatus.USAGE
        del upload  # the task holds what it needs of the upload
        task_id = await self.frontend.submit(task, self.key.name)
        name, count, uploaded = task.name, task.count, [task]
        del task
        # The queued task reads its inputs from its folder now; unmapping the uploaded
        # ones (hundreds of MB) happens in a thread, with the last reference to them.
        await asyncio.to_thread(uploaded.clear)
        if opts.detach:
            self.out({"task_id": task_id})
            return ExitStatus.OK
        self.out({"event": "accepted", "task_id": task_id, "name": name, "items": count})
        return await self._follow(task_id)

    async def cmd_watch(self, args: list[str]) -> int:
        if not args:
            if not self.sees_all:
                raise FrontEndError("only operators and observers may watch the whole front-end; "
                                    "watch ID follows one of your tasks")
            return await stream_console(self.frontend, self.process, self.key)
        record = self._own_task(self._one_arg(args, "task id"))
        return await self._follow(record.task_id)

    async def _follow(self, task_id: str) -> int:
        record = self.frontend.task(task_id)
        last = None
        while not record.finished.is_set():
            row = self.frontend.task_row(task_id)
            if row is not None:
                progress = {"event": "progress", "task_id": task_id, "state": row.state, "items": row.items,
                            "items_done": row.items_done, "items_failed": row.items_failed}
                if progress != last:
                    self.out(progress)
                    last = progress
            try:
                await asyncio.wait_for(record.finished.wait(), PROGRESS_EVERY_S)
            except asyncio.TimeoutError:
                pass
        summary = record.summary or {}
        self.out({"event": "done", **summary})
        return ExitStatus.OK if summary.get("state") == "done" else ExitStatus.FAILED

    async def cmd_tasks(self, args: list[str]) -> int:
        rows = [asdict(r) for r in self.frontend.task_rows()
                if self.sees_all or r.owner == self.key.name]
        self.out(rows)
        return ExitStatus.OK

    async def cmd_status(self, args: list[str]) -> int:
        record = self._own_task(self._one_arg(args, "task id"))
        row = self.frontend.task_row(record.task_id)
        assert row is not None
        self.out({**asdict(row), "summary": record.summary})
        return ExitStatus.OK

    async def cmd_nodes(self, args: list[str]) -> int:
        self.out([asdict(r) for r in self.frontend.node_rows()])
        return ExitStatus.OK

    async def cmd_operations(self, args: list[str]) -> int:
        self.out(self.frontend.operations())
        return ExitStatus.OK

    async def cmd_result(self, args: list[str]) -> int:
        record = self._own_task(self._one_arg(args, "task id"))
        path = await asyncio.to_thread(self.frontend.result_file, record.task_id)
        with open(path, "rb") as source:
            while chunk := await asyncio.to_thread(source.read, SEND_CHUNK):
                self.process.stdout.write(chunk)
                await self.process.stdout.drain()
        return ExitStatus.OK

    async def cmd_chunks(self, args: list[str]) -> int:
        record = self._own_task(self._one_arg(args, "task id"))
        chunk_map = self.frontend.chunk_map(record.task_id)
        self.out(chunks_object(record.task_id, chunk_map, self.frontend.items_by_node(record.task_id)))
        return ExitStatus.OK

    async def cmd_cancel(self, args: list[str]) -> int:
        self._refuse_observer()
        record = self._own_task(self._one_arg(args, "task id"))
        self.frontend.cancel(record.task_id, by=self.key.name)
        await record.finished.wait()
        self.out({"task_id": record.task_id, "state": record.state})
        return ExitStatus.OK

    async def cmd_delete(self, args: list[str]) -> int:
        self._refuse_observer()
        record = self._own_task(self._one_arg(args, "task id"))
        await self.frontend.delete(record.task_id)
        self.out({"task_id": record.task_id, "state": "deleted"})
        return ExitStatus.OK

    async def cmd_drain(self, args: list[str]) -> int:
        return self._node_action(args, self.frontend.drain, "draining")

    async def cmd_kick(self, args: list[str]) -> int:
        return self._node_action(args, self.frontend.kick, "kicked")

    async def cmd_release(self, args: list[str]) -> int:
        return self._node_action(args, self.frontend.release, "released")

    async def cmd_approve(self, args: list[str]) -> int:
        parser = _Parser(prog="approve", add_help=False)
        parser.add_argument("fingerprint")
        parser.add_argument("--name", default="")
        opts = parser.parse_args(args)
        self._require_operator()
        entry = self.frontend.approve_key(opts.fingerprint, opts.name)
        self.out({"fingerprint": entry.fingerprint, "name": entry.name, "state": "approved"})
        return ExitStatus.OK

    async def cmd_backlog(self, args: list[str]) -> int:
        self._require_operator()
        self.out(asdict(self.frontend.backlog()))
        return ExitStatus.OK

    async def cmd_launcher(self, args: list[str]) -> int:
        """Hold a launcher's node key enrolled for as long as this session stays open."""
        self._require_operator()
        name = self._one_arg(args, "launcher name")
        line = b""
        while not line.endswith(b"\n") and len(line) <= MAX_KEY_LINE:
            data = await self.process.stdin.read(MAX_KEY_LINE)
            if not data:
                break
            line += data
        if len(line) > MAX_KEY_LINE:
            raise UsageError("the public key line is too long")
        try:
            entry = self.frontend.enrol_launcher_key(line.decode("utf-8", errors="replace").strip(), name,
                                                     by=self.key.name)
        except ChainconsoleError as exc:
            raise UsageError(str(exc)) from None
        try:
            self.out({"launcher": entry.launcher, "fingerprint": entry.fingerprint, "state": "enrolled"})
            # What follows are the launcher's reports of its jobs, one JSON list a line.
            while report := await self.process.stdin.readline():
                rows = _job_rows(entry.launcher, report)
                if rows is not None:
                    self.frontend.report_jobs(entry.launcher, rows)
        except (asyncssh.Error, OSError):
            pass  # the launcher's connection dropped: the key goes all the same
        finally:
            self.frontend.report_jobs(entry.launcher, None)
            self.frontend.withdraw_launcher_key(entry.fingerprint)
        return ExitStatus.OK

    def _node_action(self, args: list[str], action: Callable[..., None], state: str) -> int:
        """An operator's action on one node, by name."""
        self._require_operator()
        node = self._one_arg(args, "node name")
        action(node, by=self.key.name)
        self.out({"node": node, "state": state})
        return ExitStatus.OK


def _job_rows(launcher: str, report: bytes) -> tuple[JobRow, ...] | None:
    """A launcher's report of its jobs (``[{"job_id", "state", "node"}, …]``); None if it is not one.

    What does not parse changes nothing: a launcher's bad line must not end its enrolment.
    """
    try:
        items = json.loads(report)
        rows = tuple(JobRow(launcher, _short(item["job_id"]), _short(item["state"]), _short(item.get("node", "")))
                     for item in items)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return rows


def _short(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return "".join(c for c in value if c.isprintable())[:MAX_NAME]


class ServesAFrontEnd(Protocol):
    """What a user command needs of the SSH server that runs it: the front-end it serves."""

    @property
    def frontend(self) -> FrontEnd: ...


async def run_user_command(server: ServesAFrontEnd, process: asyncssh.SSHServerProcess, key: KeyEntry) -> None:
    """Run the command ``process`` asks for, as ``key``, and exit with its status."""
    status = await Session(server.frontend, process, key).run()
    process.exit(status)
