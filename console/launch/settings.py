"""What a launcher is told: one settings object per kind, built at the command line (or the console).

Nothing here imports more than the standard library, so ``chainconsole --help`` stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_REMOTE_DIR = ".chainconsole-launch"
DEFAULT_NODE_COMMAND = "chainconsole node"
DEFAULT_POLL_S = 5.0
DEFAULT_IDLE_S = 60.0
DEFAULT_BURST = 4
DEFAULT_SIGNAL_S = 120
"""Seconds before the walltime that a job's node is sent SIGUSR1 to drain."""
DEFAULT_END_GRACE_S = 30.0


@dataclass(frozen=True)
class SshSettings:
    """How ``launch ssh`` reaches its hosts and what it runs there."""

    connect: str
    """The front-end's HOST:PORT as the hosts reach it."""
    host_key: Path
    """The front-end's public host key, for the nodes to pin."""
    slots: int | None = None
    node_command: str = DEFAULT_NODE_COMMAND
    remote_dir: str = DEFAULT_REMOTE_DIR
    """Where on each host the launcher's keys go (relative: to the login's home)."""
    ssh_key: Path | None = None
    """Log in to the hosts with this key (default: the user's SSH set-up)."""
    known_hosts: Path | None = None
    """Check the hosts' keys against this file (default: ~/.ssh/known_hosts)."""
    ssh_config: bool = True
    """Read ~/.ssh/config (off in tests, so the user's set-up stays out)."""
    extra_node_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class SlurmSettings:
    """What ``launch slurm`` asks of Slurm and runs in each job."""

    connect: str
    """The front-end's HOST:PORT as the compute nodes reach it."""
    host_key: Path
    max_jobs: int = 1
    slots: int = 1
    """Slots of each job's node, and the CPUs each job asks for (``--cpus-per-task``)."""
    partition: str | None = None
    time_limit: str | None = None
    """``--time`` of each job, in Slurm's format (``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``)."""
    signal_s: int = DEFAULT_SIGNAL_S
    sbatch_args: tuple[str, ...] = ()
    node_command: str = ""
    """How a job starts a node; default: this Python, ``-m nodes``."""
    poll_s: float = DEFAULT_POLL_S
    idle_s: float = DEFAULT_IDLE_S
    burst: int = DEFAULT_BURST
    end_grace_s: float = DEFAULT_END_GRACE_S
