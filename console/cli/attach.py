"""``chainconsole attach``: the console, attached over SSH to a running front-end.

``AttachedFrontEnd`` is a ``ConsoleSource`` (``console.tui.source``): it reads the
front-end's console stream (``ssh … watch``, JSON lines) on one SSH channel and keeps the
latest nodes, tasks, pending keys and events; each action the operator takes is one SSH
command (``drain NODE``, ``submit --detach`` …), so the front-end checks the key's role
for every one — an observer's console dims those keys, and the server refuses them too.
Quitting closes the connection; the front-end keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
from collections.abc import Callable
from pathlib import Path

import asyncssh

from console.cli.client import ConnectError, Endpoint, connect
from console.engine import console_stream as stream
from console.engine.frontend import FrontEndError
from console.engine.keys import PendingKey
from console.engine.records import Event
from console.tui.snapshot import EMPTY, ConsoleSnapshot, TaskDetail
from console.tui.source import Identity
from protocol.errors import ChainconsoleError, ExitStatus, RemoteProtocolError
from protocol.taskfile import DEFAULT_LIMITS, Task
from protocol.upload import encode_upload

HELLO_TIMEOUT_S = 15.0
SEND_CHUNK = 1024 * 1024


class AttachedFrontEnd:
    """A running front-end, seen and steered over SSH."""

    stops_on_quit = False

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.can_act = False
        self.role = ""
        self.limits = DEFAULT_LIMITS
        self.started_at = 0.0
        self.ended = ""
        self._conn: asyncssh.SSHClientConnection | None = None
        self._watch: asyncssh.SSHClientProcess | None = None
        self._reader: asyncio.Task | None = None
        self._snapshot = EMPTY
        self._pending: list[PendingKey] = []
        self._events: list[Event] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._details: dict[str, TaskDetail] = {}
        self._fetching: set[str] = set()
        self._closing = False

    # -- joining and leaving ---------------------------------------------------------------

    async def start(self) -> Identity:
        self._conn = await connect(self.endpoint)
        try:
            self._watch = await self._conn.create_process("watch", encoding=None)
            hello = await asyncio.wait_for(self._read_line(), HELLO_TIMEOUT_S)
            if hello is None or hello.get("type") != "hello":
                raise ConnectError(await self._refusal())
            self.role = str(hello.get("role", ""))
            self.can_act = self.role == "operator"
            self.started_at = float(hello.get("started_at", 0.0))
            self.limits = stream.read_limits(hello.get("limits"))
        except ConnectError:
            await self.stop()
            raise
        except (asyncio.TimeoutError, RemoteProtocolError, OSError, asyncssh.Error) as exc:
            await self.stop()
            raise ConnectError(f"{self.endpoint.address} sent no console stream: {exc!r}") from None
        self._reader = asyncio.get_running_loop().create_task(self._read_stream())
        host_key = asyncssh.read_public_key(str(self.endpoint.host_key)).get_fingerprint("sha256")
        note = "attached" if self.can_act else f"attached as {self.role or 'observer'}"
        return Identity((self.endpoint.host, self.endpoint.port), host_key, note)

    async def _refusal(self) -> str:
        """What the front-end said when it would not stream (a user key, an old front-end)."""
        assert self._watch is not None
        with contextlib.suppress(OSError, asyncssh.Error, asyncio.TimeoutError):
            text = (await asyncio.wait_for(self._watch.stderr.read(), 5)).decode(errors="replace").strip()
            if text:
                return f"{self.endpoint.address} refused: {text.removeprefix('chainconsole: ')}"
        return f"{self.endpoint.address} sent no console stream"

    async def stop(self) -> None:
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
        if self._conn is not None:
            self._conn.close()
            with contextlib.suppress(OSError, asyncssh.Error):
                await self._conn.wait_closed()
            self._conn = None

    # -- the stream --------------------------------------------------------------------------

    async def _read_line(self) -> dict | None:
        assert self._watch is not None
        line = await self._watch.stdout.readline()
        if not line:
            return None
        try:
            data = json.loads(line)
        except ValueError:
            raise RemoteProtocolError(f"a console stream line that is not JSON: {line[:100]!r}") from None
        if not isinstance(data, dict):
            raise RemoteProtocolError("a console stream line that is not an object")
        return data

    async def _read_stream(self) -> None:
        try:
            while (data := await self._read_line()) is not None:
                self._take(data)
            reason = "the front-end closed the console stream"
        except asyncio.CancelledError:
            raise
        except RemoteProtocolError as exc:
            reason = f"the front-end broke the console stream: {exc}"
        except (OSError, asyncssh.Error, asyncio.IncompleteReadError) as exc:
            reason = f"lost the connection: {exc}"
        if not self._closing:
            self.ended = f"{self.endpoint.address}: {reason}"

    def _take(self, data: dict) -> None:
        match data.get("type"):
            case "state":
                nodes, tasks = stream.read_nodes(data.get("nodes")), stream.read_tasks(data.get("tasks"))
                self._pending = stream.read_pending(data.get("pending_keys"))
                self._snapshot = ConsoleSnapshot.of(nodes, tasks, len(self._pending))
            case "event":
                event = stream.read_event(data)
                self._events = [*self._events[-999:], event]
                for listener in self._listeners:
                    listener(event)
            case _:
                pass  # a later version's line: not ours to read

    # -- reading -------------------------------------------------------------------------------

    def events(self) -> list[Event]:
        return list(self._events)

    def on_event(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def snapshot(self) -> ConsoleSnapshot:
        return self._snapshot

    def pending_keys(self) -> list[PendingKey]:
        return list(self._pending)

    def detail(self, task_id: str) -> TaskDetail:
        """The last chunk map fetched for ``task_id``; a fresh one is fetched meanwhile."""
        if task_id not in self._fetching and self._conn is not None:
            self._fetching.add(task_id)
            asyncio.get_running_loop().create_task(self._fetch_detail(task_id))
        return self._details.get(task_id, TaskDetail(None, {}))

    async def _fetch_detail(self, task_id: str) -> None:
        try:
            answer = json.loads(await self._command(f"chunks {shlex.quote(task_id)}"))
            chunks, shares = stream.read_chunks(answer)
            self._details = {task_id: TaskDetail(None if chunks is None else tuple(chunks), shares)}
        except (ChainconsoleError, ValueError):
            pass  # the task went away, or the connection: the screen keeps what it had
        finally:
            self._fetching.discard(task_id)

    # -- acting: one SSH command each, checked by the front-end ---------------------------------

    async def _command(self, command: str, stdin: bytes | None = None) -> bytes:
        if self._conn is None:
            raise FrontEndError("not attached")
        try:
            result = await self._conn.run(command, input=stdin, encoding=None, check=False)
        except (OSError, asyncssh.Error) as exc:
            raise FrontEndError(f"lost the connection: {exc}") from None
        if result.exit_status != 0:
            message = (result.stderr or b"").decode(errors="replace").strip() or f"{command} failed"
            raise FrontEndError(message.removeprefix("chainconsole: "))
        return result.stdout or b""

    async def drain(self, node_id: str) -> None:
        await self._command(f"drain {shlex.quote(node_id)}")

    async def kick(self, node_id: str) -> None:
        await self._command(f"kick {shlex.quote(node_id)}")

    async def release(self, node_id: str) -> None:
        await self._command(f"release {shlex.quote(node_id)}")

    async def cancel(self, task_id: str) -> None:
        await self._command(f"cancel {shlex.quote(task_id)}")

    async def delete(self, task_id: str) -> None:
        await self._command(f"delete {shlex.quote(task_id)}")

    async def approve(self, fingerprint: str) -> None:
        await self._command(f"approve {shlex.quote(fingerprint)}")

    async def submit(self, task: Task) -> str:
        if self._conn is None:
            raise FrontEndError("not attached")
        try:
            process = await self._conn.create_process("submit --detach", encoding=None)
            for piece in encode_upload(task):
                process.stdin.write(piece)
                await process.stdin.drain()
            process.stdin.write_eof()
            out, err = await process.stdout.read(), await process.stderr.read()
            await process.wait_closed()
        except (OSError, asyncssh.Error) as exc:
            raise FrontEndError(f"lost the connection: {exc}") from None
        if process.exit_status != 0:
            raise FrontEndError(err.decode(errors="replace").strip().removeprefix("chainconsole: ")
                                or "the front-end refused the task")
        try:
            return str(json.loads(out)["task_id"])
        except (ValueError, KeyError, TypeError):
            raise FrontEndError("the front-end's answer to submit has no task id") from None

    # An attached console runs on another machine than the front-end: it starts no nodes there.

    def is_local(self, node_id: str) -> bool:
        return False

    def local_running(self, node_id: str) -> bool:
        return False

    async def add_local_node(self) -> str:
        raise FrontEndError("an attached console cannot start nodes on the front-end's machine")

    async def restart_local_node(self, node_id: str) -> None:
        raise FrontEndError("an attached console cannot start nodes on the front-end's machine")

    def running_launchers(self) -> list[str] | None:
        return None  # launchers run beside the front-end (chainconsole launch), not in an attached console

    def add_launcher(self, spec: str) -> None:
        raise FrontEndError("an attached console cannot run launchers; run chainconsole launch beside it")

    def stop_launcher(self, name: str) -> None:
        raise FrontEndError("an attached console cannot stop launchers")

    async def save_results(self, task_id: str, target: Path) -> None:
        """Stream the task's ``.npz`` into ``target`` (removed again if the download fails)."""
        if self._conn is None:
            raise FrontEndError("not attached")
        try:
            process = await self._conn.create_process(f"result {shlex.quote(task_id)}", encoding=None)
            with open(target, "wb") as out:
                while data := await process.stdout.read(SEND_CHUNK):
                    await asyncio.to_thread(out.write, data)
            err = await process.stderr.read()
            await process.wait_closed()
        except (OSError, asyncssh.Error) as exc:
            target.unlink(missing_ok=True)
            raise FrontEndError(f"cannot download the results: {exc}") from None
        if process.exit_status != 0:
            target.unlink(missing_ok=True)
            raise FrontEndError(err.decode(errors="replace").strip().removeprefix("chainconsole: ")
                                or "the front-end sent no results")


def run_attach(endpoint: Endpoint) -> int:
    """Run the console attached to ``endpoint`` until the operator quits; the exit status."""
    from console.tui.app import ConsoleApp

    app = ConsoleApp(source=AttachedFrontEnd(endpoint), handle_signals=True)
    app.run()
    return app.return_code or ExitStatus.OK
