"""``--launch slurm:N`` and ``--launch ssh:HOSTS``: a launcher the console or ``serve`` runs itself.

Such a launcher drives the FrontEnd of its own process (``LocalControl``) and takes the
defaults of ``chainconsole launch``; its nodes dial the address the front-end listens on
(this machine's name when it listens on every address). For partitions, time limits and
the rest, run ``chainconsole launch slurm`` beside the console instead.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from console.engine.frontend import FrontEnd
from console.launch.control import LaunchError, LocalControl
from console.launch.settings import SlurmSettings, SshSettings
from console.launch.slurm import SlurmLauncher
from console.launch.ssh_hosts import SshLauncher, parse_hosts


@dataclass(frozen=True)
class LaunchSpec:
    """One ``--launch`` value: ``slurm:N`` (at most N jobs) or ``ssh:HOST,HOST…``."""

    kind: str
    value: str

    @classmethod
    def parse(cls, text: str) -> LaunchSpec:
        kind, _, value = text.partition(":")
        if kind == "slurm":
            if not value.isdigit() or int(value) < 1:
                raise LaunchError(f"--launch {text!r}: slurm:N needs a number of jobs of 1 or more")
        elif kind == "ssh":
            parse_hosts(value)  # refuse a bad list at once
        else:
            raise LaunchError(f"--launch {text!r}: expected slurm:N or ssh:HOST,HOST…")
        return cls(kind, value)

    @property
    def name(self) -> str:
        return self.kind


def node_address(listen: tuple[str, int]) -> str:
    """Where nodes reach a front-end listening on ``listen``."""
    host, port = listen
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_launcher(spec: LaunchSpec, frontend: FrontEnd, listen: tuple[str, int], say):
    """The launcher ``spec`` asks for, driving ``frontend``; run it with ``await launcher.run()``."""
    connect = node_address(listen)
    host_key = frontend.state.host_key_pub
    folder = Path(frontend.state.root) / "launch" / spec.name
    control = LocalControl(frontend)
    if spec.kind == "slurm":
        settings = SlurmSettings(connect, host_key, max_jobs=int(spec.value))
        return SlurmLauncher(spec.name, settings, control, folder, say=say)
    return SshLauncher(spec.name, parse_hosts(spec.value), SshSettings(connect, host_key), control, folder, say=say)
