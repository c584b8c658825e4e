"""Hosting a front-end in this process: the FrontEnd, its SSH server and local nodes.

``serve``, ``run`` and the Textual console all start the same way and stop the same way;
this is that one way. A host holds its state folder's lock from start to stop: one
front-end per folder. Local nodes watch the front-end's process and stop when it is
gone, so even a SIGKILLed front-end leaves none of them behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from console.engine.statedir import StateDir, StateLock, fix_permissions, make_private_dir
from nodes.startup import start_blas_with
from protocol.errors import ChainconsoleError

if TYPE_CHECKING:
    from console.engine.frontend import FrontEnd
    from console.engine.metrics import MetricsServer
    from console.ssh.server import FrontEndServer
    from nodes.ssh.server import ServerSettings

# The front-end's own modules (numpy, the journal, the Dispatcher, the task schema) are
# imported in ``Host.start``, after the local nodes have been started: their start-up
# and the front-end's overlap instead of adding up.


class LaunchRefused(ChainconsoleError):
    """A launcher that cannot be started now."""


NODE_STOP_GRACE_S = 10.0
LOCAL_PREFIX = "local"
"""Local nodes are called local1, local2, …"""
LAUNCHER_STOP_S = 120.0
"""How long stopping waits for launchers to drain their nodes and end their jobs."""
FRONTEND_BLAS_THREADS = 1
LISTEN_BACKLOG = 100
"""Connections the listening socket queues while the front-end is still starting."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""What stops a front-end cleanly: the signals that stop a node (``nodes.agent.STOP_SIGNALS``)."""


def _refused(message: str) -> Exception:
    """A local node that cannot be started or restarted as asked: a ``FrontEndError``, as the faces expect."""
    from console.engine.frontend import FrontEndError

    return FrontEndError(message)


def _default_settings() -> ServerSettings:
    from nodes.ssh.server import ServerSettings

    return ServerSettings()


def listening_socket(host: str, port: int) -> socket.socket | None:
    """A socket listening on ``host:port`` now, or None when ``host`` is a name.

    A host given as an address is bound at once, so local nodes can be told where to
    connect before the SSH server is loaded; their connections wait in the backlog. A
    name may stand for several addresses, which asyncssh binds itself.
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds its servers
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Host:
    """A running front-end: start it with ``await host.start()``, end it with ``await host.stop()``."""

    state: StateDir
    settings: ServerSettings = field(default_factory=_default_settings)
    local_nodes: int = 0
    frontend_options: dict = field(default_factory=dict)
    metrics: tuple[str, int] | None = None
    """Where to serve Prometheus metrics (``--metrics``); None: not at all."""
    launch: tuple[str, ...] = ()
    """Launchers to run in this process (``--launch slurm:N``, ``--launch ssh:HOSTS``)."""

    def __post_init__(self) -> None:
        self.frontend: FrontEnd | None = None
        self.server: FrontEndServer | None = None
        self.metrics_server: MetricsServer | None = None
        self.nodes: list[subprocess.Popen] = []
        """Every node process this host started, to stop at the end."""
        self.local: dict[str, subprocess.Popen] = {}
        """The latest process of each local node, by name."""
        self.launchers: list = []
        self._launcher_runs: list[asyncio.Task] = []
        self.warnings: list[str] = []
        """What start-up found wrong in the state folder and fixed (permissions)."""
        self.address: tuple[str, int] | None = None
        """Where the front-end listens, once it does."""
        self._listener: socket.socket | None = None
        """The socket bound before the SSH server started, until the server owns it."""
        self._lock = StateLock(self.state)

    async def start(self) -> tuple[str, int]:
        """Lock the state folder, listen, start local nodes, resume the front-end.

        Local nodes start as soon as there is an address to give them, before the
        front-end's own modules load; they connect once it serves. A failure part-way
        stops what had started (and releases the lock) before it is raised.
        """
        start_blas_with(FRONTEND_BLAS_THREADS)
        self._lock.acquire()
        try:
            from console.engine.keys import initialize

            self.warnings = fix_permissions(self.state)
            initialize(self.state)
            self._listener = listening_socket(self.settings.host, self.settings.port)
            if self._listener is not None:
                self.address = self._listener.getsockname()[:2]
                self._start_local_nodes()
            from threadpoolctl import threadpool_limits

            from console.engine.frontend import FrontEnd
            from console.ssh.server import FrontEndServer

            # The front-end's own numpy work (checking results) must not crowd out the nodes'
            # worker processes on the same cores: one BLAS thread (numpy is loaded by now).
            threadpool_limits(FRONTEND_BLAS_THREADS)
            self.frontend = FrontEnd(self.state, **self.frontend_options)
            for warning in self.warnings:
                self.frontend.log("warning", warning)
            await self.frontend.start()
            self.server = FrontEndServer(self.frontend, self.settings)
            self.address = address = await self.server.start(self._listener)
            bound_early, self._listener = self._listener is not None, None  # the server owns it now
            if not bound_early:
                self._start_local_nodes()
            if self.metrics is not None:
                from console.engine.metrics import FrontEndMetrics, MetricsServer  # only when asked for

                self.metrics_server = MetricsServer(FrontEndMetrics(self.frontend), *self.metrics)
                await self.metrics_server.start()
            self._start_launchers(address)
        except BaseException:
            await self.stop()
            raise
        return address

    def _start_local_nodes(self) -> None:
        for number in range(1, self.local_nodes + 1):
            self._start(f"{LOCAL_PREFIX}{number}", 1)

    # -- local nodes: capacity the operator adds and removes ---------------------------------------

    def add_local_node(self, slots: int = 1) -> str:
        """Start one more node process on this machine; return its name (``local1``, ``local2``, …)."""
        if self.server is None:
            raise _refused("the front-end is not running")
        numbers = [int(name[len(LOCAL_PREFIX):]) for name in self.local if name[len(LOCAL_PREFIX):].isdigit()]
        name = f"{LOCAL_PREFIX}{max(numbers, default=0) + 1}"
        self._start(name, slots)
        return name

    def is_local(self, name: str) -> bool:
        """Whether ``name`` is a node this host started."""
        return name in self.local

    def local_running(self, name: str) -> bool:
        """Whether the process of local node ``name`` is still running."""
        proc = self.local.get(name)
        return proc is not None and proc.poll() is None

    def restart_local_node(self, name: str, slots: int = 1) -> None:
        """Start local node ``name`` again after it was drained, kicked or lost and its process ended."""
        if name not in self.local:
            raise _refused(f"{name} is not a node this console started")
        if self.local_running(name):
            raise _refused(f"{name} is still running")
        if self.server is None:
            raise _refused("the front-end is not running")
        self._start(name, slots)

    def _start(self, name: str, slots: int) -> None:
        assert self.address is not None
        # Ended processes are reaped here, so adding and removing nodes all day leaves no zombies.
        self.nodes = [proc for proc in self.nodes if proc.poll() is None]
        proc = start_local_node(self.state, self.address, name, slots)
        self.nodes.append(proc)
        self.local[name] = proc

    def _start_launchers(self, address: tuple[str, int]) -> None:
        if not self.launch:
            return
        from console.launch.spec import LaunchSpec

        specs = [LaunchSpec.parse(text) for text in self.launch]  # all checked before any starts
        for spec in specs:
            self._start_launcher(spec, address)

    def _start_launcher(self, spec, address: tuple[str, int]) -> None:
        from console.launch.spec import make_launcher

        assert self.frontend is not None
        frontend = self.frontend
        if spec.name in self.running_launchers():
            raise LaunchRefused(f"a launcher named {spec.name} runs already")
        launcher = make_launcher(spec, frontend, address,
                                 lambda line, name=spec.name: frontend.log("launch", f"{name}: {line}"))
        self.launchers.append(launcher)
        self._launcher_runs.append(asyncio.get_running_loop().create_task(self._run_launcher(launcher)))

    def add_launcher(self, text: str) -> None:
        """Start one more launcher (``slurm:N``, ``ssh:HOSTS``) while the front-end runs."""
        from console.launch.spec import LaunchSpec

        if self.server is None:
            raise LaunchRefused("the front-end is not running")
        self._start_launcher(LaunchSpec.parse(text), self.server.address)

    def running_launchers(self) -> list[str]:
        """The names of the launchers that run (not stopping)."""
        return [launcher.name for launcher in self.launchers if not launcher.stopping.is_set()]

    def stop_launcher(self, name: str) -> None:
        """Stop a launcher: its nodes drain, its jobs end, its key is withdrawn."""
        for launcher in self.launchers:
            if launcher.name == name:
                launcher.stop()

    async def _run_launcher(self, launcher) -> None:
        try:
            await launcher.run()
        except Exception as exc:  # a launcher that fails must not take the front-end with it
            assert self.frontend is not None
            self.frontend.log("error", f"launcher {launcher.name} stopped: {exc}")
        finally:
            launcher.stop()
            if launcher in self.launchers:
                self.launchers.remove(launcher)

    async def stop(self) -> None:
        """Stop launchers (their nodes drain, their jobs end), local nodes, then the server and the front-end."""
        try:
            for launcher in self.launchers:
                launcher.stop()
            if self._launcher_runs:
                await asyncio.wait(self._launcher_runs, timeout=LAUNCHER_STOP_S)
            for run in self._launcher_runs:
                run.cancel()
            for proc in self.nodes:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            await asyncio.to_thread(_reap, self.nodes)
            if self._listener is not None:  # the server never took it over
                self._listener.close()
                self._listener = None
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


def start_local_node(state: StateDir, address: tuple[str, int], name: str, slots: int = 1,
                     extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """Start a full node process on this machine that connects over SSH like any other.

    It stops when this process exits, however that happens (``--exit-with``); ``extra``
    are more ``chainconsole node`` options.
    """
    host, port = address
    logs = make_private_dir(state.root / "logs")
    log = open(os.open(logs / f"{name}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
    cmd = [sys.executable, "-m", "nodes", "--connect", f"{host}:{port}", "--name", name,
           "--slots", str(slots), "--key", str(state.node_key),
           "--host-key", str(state.host_key_pub), "--state-dir", str(state.root), "--exit-with", str(os.getpid()), *extra]
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
