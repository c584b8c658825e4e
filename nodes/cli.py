"""``chainconsole node``: the command line of a compute node."""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from typing import TYPE_CHECKING

from nodes.startup import loaded, loading, quick_exit
from protocol.addresses import AddressError, parse_address
from protocol.errors import ExitStatus
from protocol.replication import DEFAULT_PROBATION, DEFAULT_REPLICA_RATE

if TYPE_CHECKING:
    from nodes.agent import NodeSettings
    from nodes.work import LocalWork

# The SSH stack, the agent and the chain link are imported when a node runs, after its
# worker processes have started importing numpy: start-up overlaps instead of adding up,
# and ``console.cli.main`` reads these arguments without loading any of it.

APP_NAME = "chainconsole"
ORPHAN_GRACE_S = 10.0
"""How long a node whose parent died may take to stop cleanly before it exits anyway."""


def address_argument(*, listening: bool = False) -> Callable[[str], tuple[str, int]]:
    """An argparse ``type`` for ``HOST:PORT`` options, with the one rule of ``parse_address``."""

    def parse(text: str) -> tuple[str, int]:
        try:
            return parse_address(text, listening=listening)
        except AddressError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def replica_share(text: str) -> float:
    """``--replicate``: the share of a proven node's replicated results computed again, 0 to 1."""
    try:
        share = float(text)
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1 (0.1: one result in ten)")
    return share


WALLTIME_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def walltime(text: str) -> float:
    """Seconds of a walltime: ``3600``, ``90s``, ``30m``, ``2h``, ``1d``, or Slurm's ``[D-]HH:MM:SS`` / ``MM:SS``."""
    spec = text.strip()
    try:
        if ":" in spec or "-" in spec:
            days, _, clock = spec.rpartition("-")
            if "-" in spec and not days.isdigit():
                raise ValueError
            parts = [float(p) for p in clock.split(":")]
            if len(parts) > 3 or any(p < 0 for p in parts):
                raise ValueError
            seconds = 0.0
            for part in parts if len(parts) == 3 else [0.0] * (3 - len(parts)) + parts:
                seconds = seconds * 60 + part
            seconds += float(days or 0) * 86400
        elif spec[-1:].lower() in WALLTIME_UNITS:
            seconds = float(spec[:-1]) * WALLTIME_UNITS[spec[-1:].lower()]
        else:
            seconds = float(spec)
    except (ValueError, IndexError):
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a walltime such as 3600, 45m, 2h or 1-12:00:00")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", type=address_argument(), action="append", required=True, metavar="HOST:PORT",
                        help="front-end (or chain link) to connect to; repeat to list upstreams to fail over to, in order")
    parser.add_argument("--slots", type=int, metavar="N",
                        help="chunks computed at once, one worker process each (default: one per core; "
                             "with --executor dask: the cluster's threads, followed as it scales)")
    parser.add_argument("--name", default=socket.gethostname(), help="name shown on the console (default: host name)")
    parser.add_argument("--state-dir", type=Path, metavar="D",
                        help="where the node keeps its key (default: the platform's user data folder)")
    parser.add_argument("--key", type=Path, metavar="FILE", help="private key to log in with (default: D/node_key)")
    parser.add_argument("--host-key", type=Path, metavar="FILE",
                        help="the front-end's public host key to pin (default: the one recorded on first connection)")
    parser.add_argument("--blas-threads", type=int, default=1, metavar="N", help="BLAS threads per worker (default 1)")
    parser.add_argument("--prefetch", type=int, default=1, metavar="N", help="chunks held beyond the slots (default 1); more while chunks are short")
    parser.add_argument("--listen", type=address_argument(listening=True), metavar="HOST:PORT",
                        help="make this node a chain link that accepts nodes behind it on HOST:PORT")
    replicate_argument(parser, "with --listen: ")
    from nodes.executors import EXECUTORS

    parser.add_argument("--executor", choices=EXECUTORS, default=EXECUTORS[0],
                        help="what computes the chunks: this machine's worker processes (default), or an "
                             "existing Dask cluster (needs --scheduler; pip install 'chainconsole[dask]')")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="with --executor dask: the Dask scheduler (tcp://HOST:8786) or its scheduler file")
    parser.add_argument("--deadline", type=walltime, metavar="WALLTIME",
                        help="this node's walltime ends this long from now (3600, 45m, 2h, 1-12:00:00): it is "
                             "given no chunk expected to outlast it and stops then; SIGUSR1 drains it earlier")
    parser.add_argument("--resource", type=_resource, action="append", default=[], metavar="KEY=VALUE",
                        help="something this node has that a task may require (gpu=1, memory_gb=64); repeatable")
    parser.add_argument("--exit-with", type=int, metavar="PID",
                        help="stop when the parent process PID exits (front-ends start their local nodes so)")


def replicate_argument(parser: argparse.ArgumentParser, prefix: str = "", default: float = DEFAULT_REPLICA_RATE,
                       why: str = "") -> None:
    """``--replicate SHARE``, for a front-end and for a chain link."""
    parser.add_argument("--replicate", type=replica_share, default=default, metavar="SHARE",
                        help=f"{prefix}the share of results with no cheap check (det, norms) that a second node "
                             f"computes again once their node has {DEFAULT_PROBATION} confirmed, all of them "
                             f"before; 0 turns replication off (default {default}{why})")


def _resource(text: str) -> tuple[str, str | float]:
    """KEY=VALUE: a number when VALUE reads as one, else a name."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        number = float(value)
    except ValueError:
        return key, value
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{key}: {value!r} is not a finite number")
    return key, int(number) if number.is_integer() else number


def run(args: argparse.Namespace) -> int:
    """Run a node until SIGINT/SIGTERM; return the exit status."""
    loading()
    try:
        return _start(args)
    finally:
        loaded()


def _start(args: argparse.Namespace) -> int:
    if (args.slots is not None and args.slots < 1) or args.blas_threads < 1 or args.prefetch < 0:
        print("chainconsole node: --slots and --blas-threads must be ≥ 1, --prefetch ≥ 0", file=sys.stderr)
        return ExitStatus.USAGE
    from nodes.startup import start_blas_with
    from nodes.executor import ExecutorUnavailable
    from nodes.executors import make_executor

    start_blas_with(1)  # the agent's own numpy work is small; workers set their own (--blas-threads)

    try:
        executor = make_executor(args.executor, slots=args.slots, blas_threads=args.blas_threads,
                                 scheduler=args.scheduler, say=lambda text: print(f"[{args.name}] {text}",
                                                                                  file=sys.stderr, flush=True))
    except ExecutorUnavailable as exc:
        print(f"chainconsole node: {exc}", file=sys.stderr)
        return exc.status
    import platformdirs

    state = args.state_dir or Path(platformdirs.user_data_dir(APP_NAME))
    key_path = args.key or state / "node_key"
    if args.host_key is not None and not args.host_key.exists():
        print(f"chainconsole node: no host key file {args.host_key}", file=sys.stderr)
        return ExitStatus.USAGE
    start_workers = getattr(executor, "start_workers", None)
    try:
        if start_workers is not None:
            start_workers()  # worker processes import numpy while this process loads the rest
        from nodes.work import LocalWork

        local = LocalWork(executor, prefetch=args.prefetch)
        _stop_if_asked()
        return _run(args, state, key_path, local)
    finally:
        shutdown = getattr(executor, "shutdown", None)
        if shutdown is not None:
            shutdown()  # workers of a node that never ran (a bad key) go too


def _run(args: argparse.Namespace, state: Path, key_path: Path, local: LocalWork) -> int:
    import asyncssh

    from nodes.agent import NodeSettings

    if not key_path.exists():
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"chainconsole-node-{args.name}")
        key.write_private_key(key_path)
        key.write_public_key(key_path.with_name(key_path.name + ".pub"))
        os.chmod(key_path, 0o600)
        print(f"created node key {key_path} ({key.get_fingerprint('sha256')})", file=sys.stderr)
    try:
        fingerprint = asyncssh.read_private_key(key_path).get_fingerprint("sha256")
    except (OSError, asyncssh.KeyImportError) as exc:
        print(f"chainconsole node: cannot read key {key_path}: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    print(f"node {args.name}: key {fingerprint}", file=sys.stderr, flush=True)
    settings = NodeSettings(
        upstreams=tuple(args.connect), key_path=key_path, name=args.name, slots=local.slots,
        prefetch=args.prefetch, host_key=args.host_key, recorded_host_key=state / "frontend_host_key.pub",
        blas_threads=args.blas_threads, resources=dict(args.resource),
        deadline=None if args.deadline is None else time.time() + args.deadline,
    )
    import asyncio

    _stop_if_asked()
    return asyncio.run(_main(settings, local, args.listen, state, args.exit_with, args.replicate))


async def _main(settings: NodeSettings, local: LocalWork, listen: tuple[str, int] | None, state: Path,
                exit_with: int | None = None, replica_rate: float = DEFAULT_REPLICA_RATE) -> int:
    from nodes.agent import NodeAgent, install_signal_handlers
    from nodes.lifeline import watch_parent

    if listen is None:
        agent = NodeAgent(settings, local)
    else:
        from nodes.relay import Relay, RelaySettings

        relay = Relay(RelaySettings(settings.name, listen, state / "link_host_key", replica_rate=replica_rate), local)
        agent = NodeAgent(settings, relay, host_key_line=relay.host_key_line)
    install_signal_handlers(agent)
    if _stop_signal is not None:  # it came before the agent's handlers
        return ExitStatus.INTERRUPTED
    if exit_with is not None:
        import asyncio

        loop = asyncio.get_running_loop()

        def parent_died() -> None:
            loop.call_soon_threadsafe(agent.say, f"parent process {exit_with} is gone: stopping")
            loop.call_soon_threadsafe(agent.stop)
            time.sleep(ORPHAN_GRACE_S)
            os._exit(1)  # the clean stop took too long: leave no orphan behind

        watch_parent(exit_with, parent_died)
    loaded()
    return await agent.run()


_stop_signal: int | None = None
"""SIGTERM or SIGHUP received while the node was starting, before the agent handles them."""


def _note_stop(signum: int, frame: object) -> None:
    # Noted, not raised here: an exception from a signal handler lands wherever the main
    # thread is, even in a lock's or a fork's bookkeeping, where it can be lost or leave a
    # lock taken. The start-up stops at its next step instead (``_stop_if_asked``).
    global _stop_signal
    _stop_signal = signum


def _stop_if_asked() -> None:
    """Stop a starting node as Ctrl-C does, if it was told to: its workers are stopped on the way out."""
    if _stop_signal is not None:
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    os.umask(0o077)  # the node's key and recorded host key are for this user only
    # Until the agent handles them, SIGTERM and SIGHUP stop a starting node as Ctrl-C does, at
    # its next step: by an exception, so the workers it has started are stopped too, not left to notice.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _note_stop)
    parser = argparse.ArgumentParser(prog="chainconsole node", description="Run a compute node.")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:  # stopped while starting up: run() has stopped its workers
        return ExitStatus.INTERRUPTED
    finally:
        quick_exit()
