"""Hosting a front-end in this process: the FrontEnd, its SSH server and local nodes.

``serve``, ``run`` and the Textual console all start the same way and stop the same way;
this is that one way. A host holds its state folder's lock from start to stop: one
front-end per folder. Local nodes watch the front-end's process and stop when it is
gone, so even a SIGKILLed front-end leaves none of them behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from threadpoolctl import threadpool_limits

from console.engine.frontend import FrontEnd
from console.engine.keys import initialize
from console.ssh.server import FrontEndServer, ServerSettings
from nodes.agent import STOP_SIGNALS
from console.engine.statedir import StateDir, StateLock, fix_permissions, make_private_dir

if TYPE_CHECKING:
    from console.engine.metrics import MetricsServer

NODE_STOP_GRACE_S = 10.0
FRONTEND_BLAS_THREADS = 1


@dataclass
class Host:
    """A running front-end: start it with ``await host.start()``, end it with ``await host.stop()``."""

    state: StateDir
    settings: ServerSettings = field(default_factory=ServerSettings)
    local_nodes: int = 0
    frontend_options: dict = field(default_factory=dict)
    metrics: tuple[str, int] | None = None
    """Where to serve Prometheus metrics (``--metrics``); None: not at all."""

    def __post_init__(self) -> None:
        self.frontend: FrontEnd | None = None
        self.server: FrontEndServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.nodes: list[subprocess.Popen] = []
        self.warnings: list[str] = []
        """What start-up found wrong in the state folder and fixed (permissions)."""
        self._lock = StateLock(self.state)

    async def start(self) -> tuple[str, int]:
        """Lock the state folder, resume the front-end, listen, start local nodes.

        A failure part-way stops what had started (and releases the lock) before it is raised.
        """
        # The front-end's own numpy work (checking results) must not crowd out the nodes'
        # worker processes on the same cores: one BLAS thread.
        threadpool_limits(FRONTEND_BLAS_THREADS)
        self._lock.acquire()
        try:
            self.warnings = fix_permissions(self.state)
            initialize(self.state)
            self.frontend = FrontEnd(self.state, **self.frontend_options)
            for warning in self.warnings:
                self.frontend.log("warning", warning)
            await self.frontend.start()
            self.server = FrontEndServer(self.frontend, self.settings)
            address = await self.server.start()
            if self.metrics is not None:
                from console.engine.metrics import FrontEndMetrics, MetricsServer  # only when asked for

                self.metrics_server = MetricsServer(FrontEndMetrics(self.frontend), *self.metrics)
                await self.metrics_server.start()
            for i in range(self.local_nodes):
                self.nodes.append(start_local_node(self.state, address, f"local{i + 1}"))
        except BaseException:
            await self.stop()
            raise
        return address

    async def stop(self) -> None:
        """Stop local nodes (they finish and say bye), then the server, then the front-end."""
        try:
            for proc in self.nodes:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            await asyncio.to_thread(_reap, self.nodes)
            if self.metrics_server is not None:
                await self.metrics_server.close()
            if self.server is not None:
                await self.server.close()
            if self.frontend is not None:
                await self.frontend.stop()
        finally:
            self._lock.release()

    async def __aenter__(self) -> Host:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def start_local_node(state: StateDir, address: tuple[str, int], name: str, slots: int = 1) -> subprocess.Popen:
    """Start a full node process on this machine that connects over SSH like any other.

    It stops when this process exits, however that happens (``--exit-with``).
    """
    host, port = address
    logs = make_private_dir(state.root / "logs")
    log = open(os.open(logs / f"{name}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
    cmd = [sys.executable, "-m", "nodes", "--connect", f"{host}:{port}", "--name", name,
           "--slots", str(slots), "--key", str(state.node_key),
           "--host-key", str(state.host_key_pub), "--state-dir", str(state.root), "--exit-with", str(os.getpid())]
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    finally:
        log.close()


def _reap(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            proc.wait(NODE_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def on_stop_signals(callback: Callable[[signal.Signals], None]) -> None:
    """Call ``callback(signal)`` on the running loop at the first SIGINT, SIGTERM or SIGHUP.

    Later ones are ignored: the stop that the first one began finishes, bounded in time
    (``NODE_STOP_GRACE_S`` for the nodes, a few seconds for connections).
    """
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        if not received:
            received.append(sig)
            callback(sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
