"""A chain link: a node that accepts nodes behind it and passes part of its work on.

The link runs the same Dispatcher as the console, over the chunks its upstream assigns
it: each upstream chunk is one task of one chunk, handed whole to the link's own worker
pool or to a node behind it. Assignments travel on unchanged — the same task id, chunk
and attempt — so results go up without translation. When a link dies its upstream
requeues everything the link held; the nodes behind it fail over to their next
upstream and start afresh there.

Trust flows from the console. The console certifies the link's host key, and nodes
behind the link check that certificate against the one key they pin, the console's.
The console also sends the list of enrolled node keys; the link lets in exactly those,
and closes the sessions of keys that leave the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from nodes.work import ChunkKey, Emit, LocalWork, key_of
from protocol import dispatcher as d
from protocol.errors import RemoteProtocolError
from protocol.frames import coalesce
from protocol.messages import (
    PROTOCOL_VERSION, Assign, Bye, Cancel, Control, Credit, Error, Failed, Heartbeat, Hello,
    HostCertificate, MessageReader, NodeKeys, Result, Subtree, Welcome, encode_message,
)
from protocol.verify import AssignedChunk, check_result

NODE_SUBSYSTEM = "chainconsole-node"
RELAY_ATTEMPTS = 2
"""Tries of one upstream chunk inside this link before it is handed back as failed."""
TICK_S = 0.5
REPORT_EVERY_S = 1.0
READ_SIZE = 1 << 20


@dataclass
class _Upstream:
    """One chunk the upstream assigned to this link, as a task of the link's Dispatcher."""

    assign: Assign
    task_id: str


@dataclass
class _Downstream:
    """A node connected behind this link."""

    session: DownstreamSession
    hello: Hello
    fingerprint: str
    subtree: tuple[dict, ...] = ()
    certified: bool = False


@dataclass
class RelaySettings:
    name: str
    listen: tuple[str, int]
    host_key: Path
    heartbeat_interval_s: float = 1.0
    heartbeat_timeout_s: float = 5.0
    keepalive_interval_s: float = 1.0
    keepalive_count: int = 3


class Relay:
    """A Work that spreads its upstream's chunks over its own pool and the nodes behind it."""

    def __init__(self, settings: RelaySettings, local: LocalWork) -> None:
        self.settings = settings
        self.name = settings.name
        self.local = local
        self.local.attach(self._local_emit)
        self.dispatcher = d.Dispatcher(heartbeat_timeout_s=settings.heartbeat_timeout_s)
        self.host_key = asyncssh.read_private_key(settings.host_key) if settings.host_key.exists() else None
        if self.host_key is None:
            settings.host_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.host_key = asyncssh.generate_private_key("ssh-ed25519", comment=f"chainconsole-link-{self.name}")
            self.host_key.write_private_key(settings.host_key)
            settings.host_key.chmod(0o600)
        self.host_key_line = self.host_key.export_public_key("openssh").decode().strip()
        self.address: tuple[str, int] | None = None
        self.instance = ""
        self.allowed: set[str] = set()
        self.allowed_lines: set[str] = set()
        self._kicked: set[str] = set()
        self.downstream: dict[str, _Downstream] = {}
        self._emit: Emit = lambda message: None
        self._by_task: dict[str, _Upstream] = {}
        self._by_key: dict[ChunkKey, str] = {}
        self._holders: dict[tuple[str, ChunkKey], int] = {}
        self._seq = 0
        self._certificate: asyncssh.SSHCertificate | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._ticker: asyncio.Task | None = None
        self._last_capacity = (-1, -1)
        self._last_report: tuple = ()
        self._last_report_at = 0.0

    # -- Work, as seen by the upstream session ------------------------------------------

    @property
    def slots(self) -> int:
        return self.local.slots + sum(n.hello.slots for n in self.downstream.values())

    @property
    def window(self) -> int:
        return self.local.window + sum(n.hello.window for n in self.downstream.values())

    @property
    def held(self) -> int:
        return len(self._by_task)

    def attach(self, emit: Emit) -> None:
        self._emit = emit

    async def start(self) -> None:
        await self.local.start()
        self._run(d.NodeJoined(self.name, self.local.slots, self.local.window))
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for node in list(self.downstream.values()):
            node.session.close("link shutting down", farewell=False)
        if self._acceptor is not None:
            self._acceptor.close()
            for conn in list(self._connections):
                conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._acceptor.wait_closed(), 5)
        await self.local.close()

    def assign(self, assign: Assign) -> None:
        key = key_of(assign)
        if key in self._by_key:
            return
        self._seq += 1
        task_id = f"u{self._seq}"
        self._by_task[task_id] = _Upstream(assign, task_id)
        self._by_key[key] = task_id
        n = assign.stop - assign.start
        self._run(d.TaskSubmitted(task_id, n, n, RELAY_ATTEMPTS))

    def cancel(self, key: ChunkKey) -> None:
        task_id = self._by_key.get(key)
        if task_id is not None:
            self._run(d.TaskCancelled(task_id))

    def upstream_lost(self) -> None:
        """Everything assigned from above was requeued there: stop working on it here."""
        for task_id in list(self._by_task):
            self._run(d.TaskCancelled(task_id))

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
                    self._route(node, message)
            case Control(action=action, node=node):
                self._control(action, node, message)
            case NodeKeys(keys=keys):
                self._set_allowed(keys)
                for link in self.downstream.values():
                    if link.hello.host_key:
                        link.session.send(message)
            case _:
                return False
        return True

    # -- the Dispatcher's actions ---------------------------------------------------------

    def _run(self, event: object) -> None:
        for action in self.dispatcher.handle(event, time.monotonic()):
            self._carry_out(action)
        self._report_window()

    def _carry_out(self, action: object) -> None:
        match action:
            case d.AssignChunk(node_id=node_id, task_id=task_id, attempt=attempt):
                upstream = self._by_task[task_id]
                key = key_of(upstream.assign)
                self._holders[(node_id, key)] = attempt
                if node_id == self.name:
                    self.local.assign(upstream.assign)
                elif node_id in self.downstream:
                    self.downstream[node_id].session.send(upstream.assign)
            case d.CancelChunk(node_id=node_id, task_id=task_id):
                upstream = self._by_task.get(task_id)
                if upstream is None:
                    return
                key = key_of(upstream.assign)
                if node_id == self.name:
                    self.local.cancel(key)
                elif node_id in self.downstream:
                    self.downstream[node_id].session.send(Cancel(*key))
            case d.CloseNode(node_id=node_id, reason=reason):
                if node_id in self.downstream:
                    self.downstream[node_id].session.close(reason, farewell=node_id in self._kicked)
            case d.NodeDrained(node_id=node_id):
                if node_id in self.downstream:
                    self.downstream[node_id].session.close("drained")
            case d.ChunkAbandoned(task_id=task_id, reason=reason):
                upstream = self._by_task.get(task_id)
                if upstream is not None:
                    self._emit(Failed(*key_of(upstream.assign), reason[:1000], True))
            case d.TaskFinished(task_id=task_id):
                self.dispatcher.forget(task_id)
                upstream = self._by_task.pop(task_id, None)
                if upstream is not None:
                    key = key_of(upstream.assign)
                    self._by_key.pop(key, None)
                    for holder in [h for h in self._holders if h[1] == key]:
                        del self._holders[holder]

    def _answer(self, node_id: str, message: Result | Failed) -> None:
        """A result or failure from this link's pool or a node behind it."""
        key = key_of(message)
        task_id = self._by_key.get(key)
        attempt = self._holders.get((node_id, key))
        if task_id is None or attempt is None:
            return  # cancelled, or never ours: nobody above is waiting for it here
        if isinstance(message, Failed):
            self._run(d.ChunkFailed(node_id, task_id, 0, attempt, message.reason))
        elif self.dispatcher.wants_result(task_id, 0, attempt):
            self._emit(message)
            self._run(d.ResultReceived(node_id, task_id, 0, attempt, int(message.ok.sum()), message.elapsed_s))

    def _local_emit(self, message: object) -> None:
        if isinstance(message, (Result, Failed)):
            self._answer(self.name, message)

    # -- nodes behind this link -----------------------------------------------------------

    def joined(self, session: DownstreamSession, hello: Hello, fingerprint: str) -> str:
        node_id = hello.name if hello.name not in self.downstream and hello.name != self.name else \
            f"{hello.name}-{fingerprint[7:13]}"
        self.downstream[node_id] = _Downstream(session, hello, fingerprint)
        self._run(d.NodeJoined(node_id, hello.slots, hello.window))
        return node_id

    def left(self, node_id: str, *, clean: bool, reason: str) -> None:
        if self.downstream.pop(node_id, None) is None:
            return
        self._kicked.discard(node_id)
        self._run(d.NodeLeft(node_id) if clean else d.NodeLost(node_id, reason))

    async def result_from(self, node_id: str, result: Result) -> None:
        """Check a result from behind this link before it goes up: a liar is caught here."""
        key = key_of(result)
        task_id = self._by_key.get(key)
        attempt = self._holders.get((node_id, key))
        if task_id is None or attempt is None or not self.dispatcher.wants_result(task_id, 0, attempt):
            return
        assign = self._by_task[task_id].assign
        problem = await asyncio.to_thread(check_result, AssignedChunk(assign), assign.start, assign.stop, result)
        if problem:
            print(f"[{self.name}] invalid result from {node_id}: {problem}", file=sys.stderr, flush=True)
            self._run(d.ResultReceived(node_id, task_id, 0, attempt, 0, result.elapsed_s, valid=False))
            return
        self._answer(node_id, result)

    def message_from(self, node_id: str, message: object) -> None:
        match message:
            case Failed():
                self._answer(node_id, message)
            case Heartbeat():
                self._run(d.HeartbeatReceived(node_id))
            case Credit(window=window, slots=slots):
                node = self.downstream[node_id]
                node.hello = _with_capacity(node.hello, window, slots)
                self._run(d.CreditChanged(node_id, window, slots))
            case Subtree(nodes=nodes):
                self.downstream[node_id].subtree = nodes
                self._run(d.HeartbeatReceived(node_id))
            case _:
                raise RemoteProtocolError(f"a node may not send {type(message).__name__}")

    def _control(self, action: str, node: str, message: Control) -> None:
        if node in self.downstream:
            event = {"drain": d.DrainRequested, "kick": d.KickRequested, "release": d.QuarantineReleased}[action]
            if action == "kick":
                self._kicked.add(node)
            self._run(event(node))
        else:
            self._route(node, message)

    def _route(self, node: str, message: object) -> None:
        """Pass a message on to ``node`` itself, or to the link behind which it is."""
        if node in self.downstream:
            if isinstance(message, HostCertificate):
                self.downstream[node].certified = True
            self.downstream[node].session.send(message)
            return
        for link in self.downstream.values():
            if any(entry["name"] == node for entry in link.subtree):
                link.session.send(message)
                return

    def _set_allowed(self, keys: tuple[str, ...]) -> None:
        allowed, lines = set(), set()
        for line in keys:
            try:
                allowed.add(asyncssh.import_public_key(line).get_fingerprint("sha256"))
                lines.add(line)
            except (asyncssh.KeyImportError, ValueError):
                continue
        self.allowed, self.allowed_lines = allowed, lines
        for node in list(self.downstream.values()):
            if node.fingerprint not in allowed:
                node.session.close("key no longer enrolled", farewell=False)

    # -- the SSH server for nodes behind this link ------------------------------------------

    def _set_certificate(self, text: str) -> None:
        try:
            certificate = asyncssh.import_certificate(text)
        except (asyncssh.KeyImportError, ValueError):
            return
        self._certificate = certificate
        if self._acceptor is not None:
            self._acceptor.update(server_host_keys=[(self.host_key, certificate)])
        else:
            asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        s = self.settings
        self._acceptor = await asyncssh.create_server(
            lambda: _LinkGate(self), s.listen[0], s.listen[1],
            server_host_keys=[(self.host_key, self._certificate)], process_factory=self._on_process,
            encoding=None, allow_pty=False, agent_forwarding=False, x11_forwarding=False, line_editor=False,
            keepalive_interval=s.keepalive_interval_s, keepalive_count_max=s.keepalive_count,
            compression_algs=None, max_pktsize=256 * 1024, window=16 * 1024 * 1024,
        )
        self.address = self._acceptor.sockets[0].getsockname()[:2]
        print(f"[{self.name}] accepting nodes on {self.address[0]}:{self.address[1]}", file=sys.stderr, flush=True)

    def _on_process(self, process: asyncssh.SSHServerProcess) -> None:
        asyncio.get_running_loop().create_task(DownstreamSession(self, process).run())

    # -- reports upstream -------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._run(d.HeartbeatReceived(self.name))  # this link's own pool is alive as long as we are
            self._run(d.Tick())
            now = time.monotonic()
            if now - self._last_report_at >= REPORT_EVERY_S:
                self._report_subtree()
                self._last_report_at = now

    def _report_window(self) -> None:
        """Tell the upstream when nodes behind this link change how much it can take."""
        capacity = (self.window, self.slots)
        if capacity != self._last_capacity:
            self._last_capacity = capacity
            self._emit(Credit(*capacity))

    def _report_subtree(self) -> None:
        views = {v.node_id: v for v in self.dispatcher.snapshot(time.monotonic()).nodes}
        entries: list[dict] = []
        for node_id, node in self.downstream.items():
            view = views.get(node_id)
            entries.append({
                "name": node_id, "state": view.state.value if view else "connecting", "slots": node.hello.slots,
                "in_flight": view.in_flight if view else 0, "items_done": view.items_done if view else 0,
                "errors": view.errors if view else 0, "via": [],
                "host_key": node.hello.host_key if not node.certified else "",
            })
            for entry in node.subtree:
                entries.append({**entry, "via": [node_id, *entry["via"]]})
        report = tuple(entries)
        if report != self._last_report:
            self._last_report = report
            self._emit(Subtree(report))


def _with_capacity(hello: Hello, window: int, slots: int | None) -> Hello:
    return Hello(hello.protocol_version, hello.name, hello.slots if slots is None else slots, window,
                 hello.software, hello.via, hello.host_key)


class _LinkGate(asyncssh.SSHServer):
    """Lets in exactly the node keys the console enrolled."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._conn: asyncssh.SSHServerConnection | None = None
        self._candidate = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._relay._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        fingerprint = key.get_fingerprint("sha256")
        if fingerprint not in self._relay.allowed:
            return False
        self._candidate = fingerprint
        return True

    def auth_completed(self) -> None:
        assert self._conn is not None
        self._conn.set_extra_info(chainconsole_fingerprint=self._candidate)


class DownstreamSession:
    """The node subsystem channel of one node connected behind a link."""

    def __init__(self, relay: Relay, process: asyncssh.SSHServerProcess) -> None:
        self.relay = relay
        self.process = process
        self.node_id: str | None = None
        self._closed = False

    def send(self, message: object) -> None:
        if self._closed:
            return
        try:
            for piece in coalesce(encode_message(message)):
                self.process.stdout.write(piece)
        except (BrokenPipeError, asyncssh.Error, ConnectionError):
            self.close("connection broken", farewell=False)

    def close(self, reason: str, *, farewell: bool = True) -> None:
        if self._closed:
            return
        if farewell:
            self.send(Bye(reason))
        self._closed = True
        with contextlib.suppress(Exception):
            self.process.get_extra_info("connection").disconnect(asyncssh.DISC_BY_APPLICATION, reason[:200])

    async def run(self) -> None:
        conn = self.process.get_extra_info("connection")
        fingerprint = conn.get_extra_info("chainconsole_fingerprint") or ""
        reader = MessageReader()
        clean, reason = False, "connection lost"
        try:
            if self.process.subsystem != NODE_SUBSYSTEM or not fingerprint:
                self.process.stderr.write(b"chainconsole: only the node subsystem is available here\n")
                self.process.exit(2)
                return
            hello = await asyncio.wait_for(self._next(reader), 10)
            if not isinstance(hello, Hello) or hello.protocol_version != PROTOCOL_VERSION:
                raise RemoteProtocolError("expected hello with protocol version 1")
            self.node_id = self.relay.joined(self, hello, fingerprint)
            s = self.relay.settings
            self.send(Welcome(PROTOCOL_VERSION, self.node_id, s.heartbeat_interval_s, s.heartbeat_timeout_s,
                              instance=self.relay.instance))
            if hello.host_key:  # a link behind this one: it must know whom to let in
                self.send(NodeKeys(tuple(sorted(self.relay.allowed_lines))))
            while not self._closed:
                message = await self._next(reader)
                if message is None:
                    break
                if isinstance(message, Bye):
                    clean, reason = True, "left"
                    break
                if isinstance(message, Result):
                    await self.relay.result_from(self.node_id, message)
                else:
                    self.relay.message_from(self.node_id, message)
        except RemoteProtocolError as exc:
            reason = f"protocol error: {exc}"
            self.send(Error("protocol", str(exc)[:1000]))
        except (asyncio.TimeoutError, asyncssh.Error, ConnectionError, BrokenPipeError) as exc:
            reason = f"connection lost: {exc}"
        finally:
            if self.node_id is not None:
                self.relay.left(self.node_id, clean=clean, reason=reason)
            self.close(reason, farewell=False)

    async def _next(self, reader: MessageReader):
        while (message := reader.next_message()) is None:
            data = await self.process.stdin.read(READ_SIZE)
            if not data:
                reader.close()
                return None
            reader.feed(data)
        return message
