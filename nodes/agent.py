"""The compute node's agent: dial in over SSH, pull chunks, compute, send results back.

One SSH connection per upstream; the node protocol runs on the ``chainconsole-node``
subsystem. The agent says hello with its slots, computes what it is assigned in its
worker pool, heartbeats, and reconnects with capped exponential backoff and jitter
when the session drops. On SIGINT/SIGTERM it asks for no more work, finishes what it
holds (for a bounded time), says bye and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from nodes.ssh import NODE_SUBSYSTEM, NODE_USERNAME
from nodes.ssh.channel import BROKEN, MessageChannel
from nodes.ssh.client import FIRST_USE, FirstUseTrust, open_connection
from nodes.executor import ExecutorUnavailable
from nodes.pool import WorkerPool
from nodes.work import LocalWork, Work
from protocol.errors import ChainconsoleError, RemoteProtocolError
from protocol.operations import installed_operations
from protocol.messages import (
    BATCHES_SINCE, PROTOCOL_VERSION, Assign, Bye, Cancel, Credit, Drain, Error, Heartbeat, Hello, Reject, Rejected,
    Result, Welcome,
)



class NodeExit(ChainconsoleError):
    """The node must stop for good (host key mismatch, told to leave)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class NodeSettings:
    """Everything a node is told on its command line."""

    upstreams: tuple[tuple[str, int], ...]
    """Front-ends or chain links to connect to, tried in order."""
    key_path: Path
    """This node's private key."""
    name: str
    slots: int
    prefetch: int = 1
    """Chunks asked for beyond the slots, so a worker never waits for the network."""
    host_key: Path | None = None
    """The pinned public host key of the front-end; None records the first one seen."""
    recorded_host_key: Path | None = None
    """Where the host key seen first is recorded (when ``host_key`` is None)."""
    blas_threads: int = 1
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    keepalive_interval_s: float = 2.0
    keepalive_count: int = 2
    drain_grace_s: float = 60.0
    """How long a stopping node keeps computing what it holds before handing it back."""
    deadline: float | None = None
    """When this node's walltime ends (``time.time()``), told to the front-end in hello so
    it sends no chunk expected to outlast it; the node stops on its own then. None: no end."""
    resources: dict[str, str | float] = field(default_factory=dict)
    """What this node has that a task may require (``--resource gpu=1``)."""


OLDEST_SPOKEN = 3
"""The oldest version this node falls back to when an upstream rejects its own (its hello
carries version 3's fields)."""
DEADLINE_SLACK_S = 2.0
"""The deadline told in hello is this much before the walltime: time to send the last result and bye."""
OUTBOX_LIMIT = 64
OUTBOX_BYTES = 256 * 1024 * 1024
"""Results kept while disconnected, at most this many and this large; the oldest go first."""


class NodeAgent:
    """A compute node: connects, works, reconnects, until told to stop."""

    def __init__(self, settings: NodeSettings, work: Work | None = None, *, host_key_line: str = "",
                 out=sys.stderr) -> None:
        self.settings = settings
        self.work: Work = work or LocalWork(WorkerPool(settings.slots, blas_threads=settings.blas_threads),
                                            prefetch=settings.prefetch)
        self.work.attach(self._emit)
        self.host_key_line = host_key_line
        """A chain link's public host key, offered to the console for certification."""
        self.stopping = asyncio.Event()
        self._out = out
        self._channel: MessageChannel | None = None
        self._instance = ""
        self._outbox: list[tuple[str, Result]] = []
        self._left = False
        self._sent = 0
        self._version = PROTOCOL_VERSION
        """The version said in hello: this code's, or an older upstream's newest."""

    def say(self, message: str) -> None:
        print(f"[{self.settings.name}] {message}", file=self._out, flush=True)

    # -- the outer loop: connect, work, back off, again ---------------------------------

    async def run(self) -> int:
        """Work until stopped; return the process exit status."""
        backoff = self.settings.backoff_initial_s
        try:
            try:
                await self.work.start()
            except ExecutorUnavailable as exc:
                self.say(str(exc))
                return exc.status
            if self.settings.deadline is not None:
                delay = max(0.0, self.settings.deadline - time.time())
                asyncio.get_running_loop().call_later(delay, self._walltime_reached)
            while not self.stopping.is_set() and not self._left:
                for host, port in self.settings.upstreams:
                    if self.stopping.is_set() or self._left:
                        break
                    try:
                        worked = await self._connect_and_work(host, port)
                    except NodeExit as exc:
                        self.say(str(exc))
                        return exc.status
                    if worked:
                        backoff = self.settings.backoff_initial_s
                        break
                if self.stopping.is_set() or self._left:
                    break
                delay = backoff * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, self.settings.backoff_max_s)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
            return 0
        finally:
            await self.work.close()

    def stop(self) -> None:
        """Finish what is held, hand the rest back, say bye (called on SIGINT/SIGTERM/SIGUSR1)."""
        self.stopping.set()

    def _walltime_reached(self) -> None:
        if not self.stopping.is_set():
            self.say("walltime reached: stopping")
            self.stop()

    async def _connect_and_work(self, host: str, port: int) -> bool:
        """One session with one upstream; True if it got as far as working."""
        s = self.settings
        known_hosts = self._known_hosts()
        first_use = known_hosts is None
        try:
            conn = await open_connection(host, port, username=NODE_USERNAME, key=s.key_path,
                                         known_hosts=FIRST_USE if first_use else known_hosts,
                                         keepalive_interval_s=s.keepalive_interval_s,
                                         keepalive_count=s.keepalive_count,
                                         client_factory=FirstUseTrust if first_use else None)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise NodeExit(f"{host}:{port} is not the front-end this node trusts "
                           f"(host key does not match the pinned key): {exc}", 3) from None
        except asyncssh.PermissionDenied:
            self.say(f"{host}:{port} refused this node's key; it is listed as pending there: "
                     f"approve it with 'chainconsole keys approve {self.fingerprint()}'")
            return False
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            self.say(f"cannot connect to {host}:{port}: {exc}")
            return False
        async with conn:
            if first_use:
                self._record_host_key(conn)
            try:
                return await self._work(conn, f"{host}:{port}")
            except (*BROKEN, asyncio.IncompleteReadError) as exc:
                self.say(f"session with {host}:{port} lost: {exc}")
                return True
            except RemoteProtocolError as exc:
                self.say(f"{host}:{port} broke the protocol: {exc}")
                return True
            finally:
                self._channel = None
                self.work.upstream_lost()

    def fingerprint(self) -> str:
        return asyncssh.read_private_key(self.settings.key_path).get_fingerprint("sha256")

    def _known_hosts(self):
        """Trust the pinned console key, and chain links whose host key it certified."""
        s = self.settings
        pinned = s.host_key if s.host_key else s.recorded_host_key
        if pinned is None or not pinned.exists():
            return None
        return ([str(pinned)], [str(pinned)], [])

    def _record_host_key(self, conn: asyncssh.SSHClientConnection) -> None:
        """Pin the key that vouched for this server: the console's own, or, at a chain link, its signer's."""
        path = self.settings.recorded_host_key
        trust = conn.get_owner()
        key = trust.trusted if isinstance(trust, FirstUseTrust) else None
        if path is None or key is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.export_public_key("openssh"))
        self.say(f"recorded front-end host key {key.get_fingerprint('sha256')} in {path}")

    # -- one session ----------------------------------------------------------------------

    async def _work(self, conn: asyncssh.SSHClientConnection, where: str) -> bool:
        process = await conn.create_process(subsystem=NODE_SUBSYSTEM, encoding=None)
        channel = self._channel = MessageChannel.of_client_process(process)
        s = self.settings
        left = None if s.deadline is None else max(0.0, s.deadline - time.time() - DEADLINE_SLACK_S)
        self._send(Hello(self._version, s.name, self.work.slots, self.work.window,
                         f"chainconsole-node/{PROTOCOL_VERSION}", host_key=self.host_key_line,
                         operations=installed_operations(), resources=s.resources, deadline_s=left))
        first = await channel.receive()
        if isinstance(first, Reject):
            if OLDEST_SPOKEN <= first.protocol_version < self._version:
                self.say(f"{where} speaks protocol version {first.protocol_version}: saying hello in it")
                self._version = first.protocol_version
                return True
            raise NodeExit(f"{where} rejected this node: {first.reason}", 2)
        if not isinstance(first, Welcome):
            raise RemoteProtocolError(f"expected welcome, got {type(first).__name__}")
        channel.batching = first.protocol_version >= BATCHES_SINCE
        self.say(f"connected to {where} as {first.node_id} with {self.work.slots} slots")
        self.work.handle(first)
        self._deliver_outbox(first.instance)
        sent_before = self._sent
        beat = asyncio.get_running_loop().create_task(self._heartbeat(first.heartbeat_interval_s))
        stop = asyncio.get_running_loop().create_task(self._on_stop())
        try:
            while True:
                message = await channel.receive()
                if message is None:
                    self.say(f"{where} closed the session")
                    return True
                if isinstance(message, Bye):
                    self.say(f"{where} said bye: {message.reason}")
                    self._left = True
                    return True
                self._handle(message)
        finally:
            beat.cancel()
            stop.cancel()
            self.say(f"session with {where} ended after {self._sent - sent_before} results")

    def _handle(self, message: object) -> None:
        match message:
            case Assign():
                self.work.assign(message)
            case Cancel(task_id=task_id, chunk=chunk, attempt=attempt):
                self.work.cancel((task_id, chunk, attempt))
            case Drain(reason=reason):
                self.say(f"draining ({reason}): finishing held chunks, then leaving")
            case Rejected(task_id=task_id, chunk=chunk, attempt=attempt, reason=reason, tolerance=tolerance):
                self.say(f"result {task_id}/{chunk}/{attempt} rejected: {reason}"
                         + (f" (tolerance {tolerance:g} per unit of n)" if tolerance else ""))
                self.work.handle(message)  # a chain link passes it on to the node that computed it
            case Error(code=code, message=text):
                raise RemoteProtocolError(f"front-end error {code}: {text}")
            case _ if self.work.handle(message):
                pass
            case _:
                raise RemoteProtocolError(f"a front-end may not send {type(message).__name__}")

    async def _heartbeat(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._send(Heartbeat(time.time(), self.work.held))

    async def _on_stop(self) -> None:
        """On SIGINT/SIGTERM: no more work, finish what is held, then bye."""
        await self.stopping.wait()
        self.say("stopping: finishing held chunks")
        self._send(Credit(0))
        grace = self.settings.drain_grace_s
        if self.settings.deadline is not None:  # past the walltime the batch system kills us anyway
            grace = min(grace, max(0.0, self.settings.deadline - time.time()))
        deadline = time.monotonic() + grace
        while self.work.held and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._send(Bye("node stopping"))
        if self._channel is not None:
            self._channel.close("node stopping")

    # -- sending upstream -----------------------------------------------------------------

    def _emit(self, message: object) -> None:
        """From the work: send now, or keep a result for the next session with the same console."""
        if self._channel is None:
            if isinstance(message, Result) and self._instance:
                self._keep(message)
            return
        if isinstance(message, Result):
            self._sent += 1
        self._send(message)

    def _keep(self, result: Result) -> None:
        self._outbox.append((self._instance, result))
        total = sum(_size(kept) for _, kept in self._outbox)
        while len(self._outbox) > OUTBOX_LIMIT or total > OUTBOX_BYTES:
            total -= _size(self._outbox.pop(0)[1])

    def _deliver_outbox(self, instance: str) -> None:
        """Offer results computed while disconnected; the console takes those still pending."""
        kept, self._outbox = self._outbox, []
        offered = [result for origin, result in kept if instance and origin == instance]
        for result in offered:
            self._emit(result)
        if offered:
            self.say(f"offered {len(offered)} results computed while disconnected")
        self._instance = instance

    def _send(self, message: object) -> None:
        if self._channel is not None:
            self._channel.send(message)


def _size(result: Result) -> int:
    values = result.result if result.result is not None else result.norms
    return result.ok.nbytes + (values.nbytes if values is not None else 0)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DRAIN_SIGNAL = signal.SIGUSR1
"""The walltime is near (Slurm's ``--signal=B:USR1@N``): drain, as on SIGTERM, but never stop at once."""


def install_signal_handlers(agent: NodeAgent) -> None:
    """SIGINT, SIGTERM or SIGHUP: stop cleanly; a second one: stop at once (workers follow).

    SIGUSR1 drains the same way; repeated, it changes nothing.
    """
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if agent.stopping.is_set():
            agent.say(f"{sig.name} again: stopping now")
            os._exit(128 + sig)
        agent.stop()

    def on_drain_signal() -> None:
        if not agent.stopping.is_set():
            agent.say(f"{DRAIN_SIGNAL.name}: the walltime is near, draining")
            agent.stop()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(DRAIN_SIGNAL, on_drain_signal)
