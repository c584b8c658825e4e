"""``chainconsole launch ssh|slurm``: a launcher as a process of its own, driving a front-end over SSH.

It logs in as the operator (the operator key of ``--state-dir``, or ``--key``), enrols its
fresh node key for as long as it runs, and prints one line for each change of a host's or
job's state. SIGINT, SIGTERM or SIGHUP stops it: its nodes drain, its jobs end, its key is
withdrawn.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from console.engine.statedir import StateDir
from console.launch.settings import (
    DEFAULT_BURST, DEFAULT_IDLE_S, DEFAULT_NODE_COMMAND, DEFAULT_POLL_S, DEFAULT_REMOTE_DIR, DEFAULT_SIGNAL_S,
    SlurmSettings, SshSettings,
)
from protocol.addresses import AddressError, parse_address
from protocol.errors import ChainconsoleError, ExitStatus


class LaunchUsageError(ChainconsoleError):
    """A launch option that cannot work."""

    status = ExitStatus.USAGE


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def add_arguments(launch: argparse.ArgumentParser, command: callable) -> None:
    """``launch ssh`` and ``launch slurm`` under ``launch``; ``command`` makes a subcommand (with its help)."""
    sub = launch.add_subparsers(dest="launch_command", metavar="WHERE")
    sub.required = True

    p = command(sub, "ssh", help="keep a node running on each host of a list, over SSH")
    p.add_argument("hosts", metavar="HOSTS", help="hosts separated by commas ([USER@]HOST[:PORT]), or @FILE, one a line")
    _common(p, "ssh")
    p.add_argument("--slots", type=_positive, metavar="N", help="slots of each node (default: one per core of its host)")
    p.add_argument("--node-command", default=DEFAULT_NODE_COMMAND, metavar="CMD",
                   help=f"how a host starts a node (default: {DEFAULT_NODE_COMMAND!r})")
    p.add_argument("--remote-dir", default=DEFAULT_REMOTE_DIR, metavar="DIR",
                   help=f"where on each host the launcher's keys go (default: ~/{DEFAULT_REMOTE_DIR})")
    p.add_argument("--ssh-key", type=Path, metavar="FILE", help="log in to the hosts with this key (default: your SSH set-up)")
    p.add_argument("--known-hosts", type=Path, metavar="FILE", help="the hosts' keys (default: ~/.ssh/known_hosts)")
    p.add_argument("--no-ssh-config", action="store_true", help="ignore ~/.ssh/config and the SSH agent")

    p = command(sub, "slurm", help="keep Slurm jobs running nodes, as many as the work waiting wants")
    _common(p, "slurm")
    p.add_argument("--max-jobs", type=_positive, default=1, metavar="N", help="jobs at most at once (default 1)")
    p.add_argument("--slots", type=_positive, default=1, metavar="N",
                   help="slots of each job's node and the CPUs it asks for (default 1)")
    p.add_argument("--partition", metavar="P", help="the partition to submit to (default: the cluster's)")
    p.add_argument("--time", metavar="T", help="time limit of each job, as sbatch takes it (30, 2:00:00, 1-00:00:00)")
    p.add_argument("--signal-before", type=_positive, default=DEFAULT_SIGNAL_S, metavar="S",
                   help=f"with --time: drain a job's node S seconds before its walltime (default {DEFAULT_SIGNAL_S})")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="one more sbatch argument (repeat: --sbatch-arg=--account=proj --sbatch-arg=--qos=low)")
    p.add_argument("--node-command", default="", metavar="CMD",
                   help="how a job starts a node (default: this Python, -m nodes)")
    p.add_argument("--idle", type=_seconds, default=DEFAULT_IDLE_S, metavar="S",
                   help=f"drain a job whose node had nothing to do for S seconds (default {DEFAULT_IDLE_S:.0f})")
    p.add_argument("--poll", type=_seconds, default=DEFAULT_POLL_S, metavar="S",
                   help=f"look at the backlog and the queue every S seconds (default {DEFAULT_POLL_S:.0f})")
    p.add_argument("--burst", type=_positive, default=DEFAULT_BURST, metavar="N",
                   help=f"jobs submitted at once at most (default {DEFAULT_BURST})")
    p.add_argument("--launch-dir", type=Path, metavar="DIR",
                   help="where the job script, the launcher's key and the job logs go; the compute nodes "
                        "must see it (default: D/launch/NAME)")


def _common(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--connect", metavar="HOST:PORT", help="the front-end (default: the one running on the state dir)")
    p.add_argument("--node-connect", metavar="HOST:PORT",
                   help="the front-end's address as the nodes reach it (default: --connect's)")
    p.add_argument("--state-dir", type=Path, metavar="D", default=argparse.SUPPRESS,
                   help="state folder whose operator key, host key and address to use (default: the usual one)")
    p.add_argument("--key", metavar="FILE", help="the operator key to log in with (default: the state dir's)")
    p.add_argument("--host-key", metavar="FILE", help="the front-end's public host key (default: D/host_key.pub)")
    p.add_argument("--name", default=kind, help=f"this launcher's name; its nodes are NAME-HOST or NAME-JOBID (default {kind!r})")


def _node_connect(args: argparse.Namespace, endpoint) -> str:
    text = args.node_connect or endpoint.address
    try:
        host, port = parse_address(text)
    except AddressError as exc:
        raise LaunchUsageError(f"--node-connect: {exc}") from None
    return f"{host}:{port}"


def run_launch(state: StateDir, args: argparse.Namespace) -> int:
    """Run ``launch ssh`` or ``launch slurm`` until a stop signal; return the exit status."""
    from console.cli.client import resolve_endpoint
    from console.engine.host import on_stop_signals
    from console.launch.control import RemoteControl
    from console.launch.slurm import SlurmLauncher, slurm_seconds
    from console.launch.ssh_hosts import SshLauncher, parse_hosts

    endpoint = resolve_endpoint(state, args.connect, args.key, args.host_key)
    if not endpoint.host_key.exists():
        raise LaunchUsageError(f"no front-end host key at {endpoint.host_key} (pass --host-key)")
    node_connect = _node_connect(args, endpoint)
    control = RemoteControl(endpoint)
    say = _printer(args.name)
    if args.launch_command == "ssh":
        hosts = parse_hosts(args.hosts)
        settings = SshSettings(node_connect, endpoint.host_key, slots=args.slots, node_command=args.node_command,
                               remote_dir=args.remote_dir, ssh_key=args.ssh_key, known_hosts=args.known_hosts,
                               ssh_config=not args.no_ssh_config)
        launcher = SshLauncher(args.name, hosts, settings, control, state.root / "launch" / args.name, say=say)
    else:
        if args.time is not None:
            slurm_seconds(args.time)  # refuse a bad one before anything starts
        settings = SlurmSettings(node_connect, endpoint.host_key, max_jobs=args.max_jobs, slots=args.slots,
                                 partition=args.partition, time_limit=args.time, signal_s=args.signal_before,
                                 sbatch_args=tuple(args.sbatch_arg), node_command=args.node_command,
                                 poll_s=args.poll, idle_s=args.idle, burst=args.burst)
        folder = args.launch_dir or state.root / "launch" / args.name
        launcher = SlurmLauncher(args.name, settings, control, folder.resolve(), say=say)

    async def main() -> None:
        on_stop_signals(lambda sig: (say(f"{sig.name}: stopping"), launcher.stop()))
        await launcher.run()

    asyncio.run(main())
    say("stopped")
    return ExitStatus.OK


def _printer(name: str):
    def say(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} [{name}] {line}", file=sys.stderr, flush=True)

    return say
