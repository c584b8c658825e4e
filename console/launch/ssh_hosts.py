"""``chainconsole launch ssh HOSTS``: one node kept running on each host of a list, over SSH.

Like Dask's ``SSHCluster``: for each host the launcher opens an SSH connection (asyncssh,
with the user's own SSH set-up unless told otherwise), copies the launcher's node key and
the front-end's host key into a private folder there, and runs ``chainconsole node`` in the
foreground of that connection. A node that exits or a connection that drops is started
again after a back-off that grows while it keeps failing; on stop every node is sent
SIGTERM (it drains: finishes what it holds, says bye) and then the connection closes. A
node started so also watches its SSH session (``--exit-with``): a launcher that dies
takes its nodes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from console.engine.records import JobRow
from console.launch.control import FrontEndControl, LaunchKey
from console.launch.settings import SshSettings
from protocol.errors import ChainconsoleError

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
"""A node that ran this long before it ended is restarted at once, its back-off reset."""
STOP_GRACE_S = 30.0
"""How long a stopping node may drain before its connection is closed."""
REPORT_EVERY_S = 1.0


class HostSpecError(ChainconsoleError):
    """A host of the list is not ``[USER@]HOST[:PORT]``."""


@dataclass(frozen=True)
class HostSpec:
    """One host of ``launch ssh``: where to connect, and who as."""

    host: str
    port: int | None = None
    user: str | None = None

    @property
    def label(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> HostSpec:
        spec = text.strip()
        user, _, rest = spec.rpartition("@")
        host, port = rest, None
        if rest.count(":") == 1:
            host, _, port_text = rest.partition(":")
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise HostSpecError(f"{text!r}: the port must be a number from 1 to 65535")
            port = int(port_text)
        if not host or any(c.isspace() for c in spec) or (user == "" and "@" in spec):
            raise HostSpecError(f"{text!r} is not a host such as node7, alice@node7 or node7:2222")
        return cls(host, port, user or None)


def parse_hosts(text: str) -> list[HostSpec]:
    """Hosts separated by commas or spaces; ``@FILE`` reads them from a file, one a line (# comments)."""
    if text.startswith("@"):
        try:
            lines = Path(text[1:]).read_text().splitlines()
        except OSError as exc:
            raise HostSpecError(f"cannot read the host list {text[1:]}: {exc.strerror or exc}") from None
        words = [word for line in lines for word in line.split("#", 1)[0].split()]
    else:
        words = text.replace(",", " ").split()
    hosts = [HostSpec.parse(word) for word in words]
    if not hosts:
        raise HostSpecError("no hosts given")
    labels = [h.label for h in hosts]
    if len(set(labels)) != len(labels):
        raise HostSpecError("a host is listed twice; one node per host")
    return hosts


@dataclass
class HostState:
    """One host as the launcher sees it."""

    spec: HostSpec
    state: str = "starting"
    detail: str = ""
    restarts: int = 0
    node: str = ""
    last_output: str = ""
    """The node's last line of output, to say why it ended."""
    changed: float = field(default_factory=time.monotonic)


class SshLauncher:
    """Keeps one ``chainconsole node`` on each host until ``stop``."""

    def __init__(self, name: str, hosts: list[HostSpec], settings: SshSettings, control: FrontEndControl,
                 key_dir: Path, *, say: Callable[[str], None] = lambda line: None,
                 backoff_initial_s: float = BACKOFF_INITIAL_S) -> None:
        self.name = name
        self.settings = settings
        self.control = control
        self.key_dir = key_dir
        self.say = say
        self.backoff_initial_s = backoff_initial_s
        self.hosts = {spec.label: HostState(spec) for spec in hosts}
        names = [spec.host for spec in hosts]
        for state in self.hosts.values():  # NAME-HOST, and its port when two share a host
            spec = state.spec
            state.node = f"{name}-{spec.host}" + (f"-{spec.port}" if names.count(spec.host) > 1 else "")
        self.stopping = asyncio.Event()
        self._key: LaunchKey | None = None
        self._tasks: list[asyncio.Task] = []

    def rows(self) -> list[JobRow]:
        return [JobRow(self.name, label, h.state, h.node) for label, h in self.hosts.items()]

    def _set(self, host: HostState, state: str, detail: str = "") -> None:
        if (state, detail) != (host.state, host.detail):
            host.state, host.detail, host.changed = state, detail, time.monotonic()
            self.say(f"{host.spec.label}: {state}" + (f" ({detail})" if detail else ""))

    async def run(self) -> None:
        """Enrol the key, keep every host's node until ``stop``, then stop them all and withdraw the key."""
        self._key = LaunchKey.create(self.key_dir)
        await self.control.enrol(self._key.public_line, self.name)
        try:
            self._tasks = [asyncio.create_task(self._keep(h)) for h in self.hosts.values()]
            reporter = asyncio.create_task(self._report())
            await self.stopping.wait()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError, ChainconsoleError, OSError, asyncssh.Error):
                await reporter
        finally:
            for task in self._tasks:
                task.cancel()
            await self.control.close()

    def stop(self) -> None:
        self.stopping.set()

    async def _report(self) -> None:
        while True:
            with contextlib.suppress(ChainconsoleError, OSError, asyncssh.Error):
                await self.control.report(self.rows())
            await asyncio.sleep(REPORT_EVERY_S)

    # -- one host ------------------------------------------------------------------------

    async def _keep(self, host: HostState) -> None:
        backoff = self.backoff_initial_s
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                outcome = await self._run_once(host)
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                outcome = f"unreachable: {str(exc) or type(exc).__name__}"
            if self.stopping.is_set():
                break
            if time.monotonic() - started > HEALTHY_AFTER_S:
                backoff = self.backoff_initial_s
            host.restarts += 1
            self._set(host, "restarting", f"{outcome}; again in {backoff:.0f} s, restart {host.restarts}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        self._set(host, "stopped")

    def _connect_options(self, spec: HostSpec) -> dict:
        s = self.settings
        options: dict = {}
        if spec.port is not None:
            options["port"] = spec.port
        if spec.user is not None:
            options["username"] = spec.user
        if s.ssh_key is not None:
            options["client_keys"] = [str(s.ssh_key)]
        if s.known_hosts is not None:
            options["known_hosts"] = str(s.known_hosts)
        if not s.ssh_config:
            options.update(config=None, agent_path=None, gss_host=None)
        return options

    async def _run_once(self, host: HostState) -> str:
        """Connect, install the keys, run the node until it exits or we stop; what ended it."""
        assert self._key is not None
        s = self.settings
        self._set(host, "connecting")
        async with asyncssh.connect(host.spec.host, connect_timeout=15, **self._connect_options(host.spec)) as conn:
            folder = f"{s.remote_dir}/{self.name}"
            install = (f"umask 077 && mkdir -p {shlex.quote(folder)} && "
                       f"cat > {shlex.quote(folder + '/node_key')}")
            await conn.run(install, input=self._key.path.read_text(), check=True, timeout=30)
            await conn.run(f"umask 077 && cat > {shlex.quote(folder + '/frontend_host_key.pub')}",
                           input=s.host_key.read_text(), check=True, timeout=30)
            args = [*shlex.split(s.node_command), "--connect", s.connect, "--name", host.node,
                    "--key", f"{folder}/node_key", "--host-key", f"{folder}/frontend_host_key.pub",
                    "--state-dir", folder, *(["--slots", str(s.slots)] if s.slots else []), *s.extra_node_args]
            # exec: the node's parent is this session's sshd, which --exit-with watches.
            command = "exec " + " ".join(shlex.quote(a) for a in args) + ' --exit-with "$PPID"'
            process = await conn.create_process(command, stdin=asyncssh.DEVNULL)
            self._set(host, "running", host.node)
            host.last_output = ""
            reader = asyncio.create_task(self._last_lines(process, host))
            stop = asyncio.create_task(self.stopping.wait())
            done = asyncio.create_task(process.wait(check=False))
            await asyncio.wait({stop, done}, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():
                # Drained by the front-end, the node finishes what it holds, is told bye and
                # exits; SIGTERM does the same where the host's sshd passes signals on.
                self._set(host, "draining", host.node)
                with contextlib.suppress(OSError, asyncssh.Error, ChainconsoleError):
                    await self.control.drain(host.node)
                with contextlib.suppress(OSError, asyncssh.Error):
                    process.send_signal("TERM")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(done), STOP_GRACE_S)
            stop.cancel()
            reader.cancel()
            last_line = host.last_output
            if not done.done():
                done.cancel()
                return "stopped"
            result = done.result()
            if result.exit_signal:
                ended = f"node killed by SIG{result.exit_signal[0]}"
            elif result.exit_status is None or result.exit_status < 0:
                ended = "node or its SSH session ended without an exit status"
            else:
                ended = f"node exited with status {result.exit_status}"
            return ended + (f": {last_line}" if last_line else "")

    @staticmethod
    async def _last_lines(process: asyncssh.SSHClientProcess, host: HostState) -> None:
        """Keep the node's last line of output, to say why it ended."""
        async for line in process.stderr:
            host.last_output = line.strip()[-200:]
