"""``chainconsole``: the command line. Errors are one line on stderr, never a traceback.

Exit status (``protocol.errors.ExitStatus``): 0 success; 1 a task ended with failed items
or was cancelled; 2 bad usage or an invalid task file; 3 cannot connect, or authentication
refused.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import tempfile
from pathlib import Path

from console.engine.eventlog import LOG_FORMATS, EventLog
from console.engine.statedir import StateDir, default_state_dir
from nodes.cli import add_arguments as node_arguments, address_argument, replicate_argument
from nodes.startup import loaded, loading, quick_exit
from protocol.errors import ChainconsoleError, ExitStatus, TaskFileError



class CliError(ChainconsoleError):
    """A mistake a user made on the command line; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = ExitStatus.USAGE) -> None:
        super().__init__(message)
        self.status = status


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("chainconsole")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: looked up only when asked for (importlib.metadata takes a while to load)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0,
                         help="show program's version number and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"chainconsole {_version()}")
        parser.exit()


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> float:
    """``30m``, ``12h``, ``7d`` (or ``s``, ``w``) as seconds."""
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in DURATION_UNITS or not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30m, 12h or 7d")
    return value * DURATION_UNITS[unit]


def _command(commands: argparse._SubParsersAction, name: str, *, help: str, **options) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` opens with what it does (its one-line help, as a sentence)."""
    options.setdefault("description", help[:1].upper() + help[1:] + ".")
    return commands.add_parser(name, help=help, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainconsole",
        description="Operator console and front-end for chains of SSH-connected compute nodes.",
    )
    parser.add_argument("--version", action=_VersionAction)
    _hosting_options(parser)
    _limit_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(sub, "serve", help="the front-end without the console; stops on SIGINT/SIGTERM",
                       description="Run the front-end without the console, logging one line per event to "
                                   "stderr, until SIGINT, SIGTERM or SIGHUP.")
    _hosting_options(p)
    _limit_options(p)
    p.add_argument("--log-format", choices=LOG_FORMATS, default="plain",
                   help="one line per event on stderr: plain text (default) or JSON objects")
    p.add_argument("--keep-results", type=duration, metavar="DURATION", default=None,
                   help="delete finished tasks older than this (30m, 12h, 7d); default: keep them")

    p = _command(sub, "run", help="one shot: a private front-end and local nodes run one task")
    p.add_argument("task", metavar="TASK.json")
    p.add_argument("--local-nodes", type=_count, default=os.cpu_count() or 1, metavar="N",
                   help="node processes to start (default: one per core)")
    replicate_argument(p, default=0.0, why=": the nodes are this command's own processes")
    _output_options(p)
    _limit_options(p)

    p = _command(sub, "node", help="run a compute node")
    node_arguments(p)

    p = _command(sub, "submit", help="submit a task to a running front-end")
    p.add_argument("task", metavar="TASK.json")
    p.add_argument("--wait", action="store_true", help="follow the task until it ends (implied by -o)")
    _client_options(p)
    _output_options(p)
    _limit_options(p)

    for name, help_text in (("tasks", "list tasks"), ("nodes", "list nodes"),
                            ("operations", "list the operations the front-end runs, and which nodes run each")):
        p = _command(sub, name, help=help_text)
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        _client_options(p)

    p = _command(sub, "result", help="download a finished task's results")
    p.add_argument("task_id", metavar="ID")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="write the results here (.npz: ok, and result or norms)")
    _client_options(p)

    for name, what, help_text in (("cancel", "ID", "cancel a task"),
                                  ("delete", "ID", "remove a finished task's files and journal rows"),
                                  ("drain", "NODE", "drain a node"),
                                  ("kick", "NODE", "disconnect a node now"),
                                  ("release", "NODE", "release a quarantined node")):
        p = _command(sub, name, help=help_text)
        p.add_argument("target", metavar=what)
        _client_options(p)

    p = _command(sub, "attach", help="the console, attached over SSH to a running serve or console",
                 description="Open the console on a front-end that runs elsewhere (serve, or another "
                             "console), over SSH with the operator key (or an observer's). Quitting "
                             "leaves the front-end running.")
    p.add_argument("address", nargs="?", metavar="HOST:PORT",
                   help="the front-end (default: the one running on the state folder)")
    p.add_argument("--state-dir", type=Path, metavar="D", default=argparse.SUPPRESS,
                   help="state folder whose keys and recorded address to use (default: the usual one)")
    p.add_argument("--key", metavar="FILE", help="private key to log in with (default: D/operator_key)")
    p.add_argument("--host-key", metavar="FILE", help="the front-end's public host key (default: D/host_key.pub)")

    p = _command(sub, "validate", help="check a task file, run nothing")
    p.add_argument("task", metavar="TASK.json")
    p.add_argument("--state-dir", type=Path, metavar="D", default=argparse.SUPPRESS,
                   help="warn when the task would not fit this state folder's free space (default: the usual one)")
    _limit_options(p)

    from console.launch.cli import add_arguments as launch_arguments

    launch_arguments(_command(sub, "launch", help="start and keep nodes: on SSH hosts, or as Slurm jobs"), _command)

    keys = _command(sub, "keys", help="keys and who may log in").add_subparsers(dest="keys_command", metavar="ACTION")
    keys.required = True
    p = _command(keys, "show", help="paths and fingerprints")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    for name, help_text in (("add-node", "authorize a node key"), ("add-user", "authorize a user key"),
                            ("add-observer", "authorize a key that sees everything and may change nothing")):
        p = _command(keys, name, help=help_text)
        p.add_argument("pubkey", metavar="PUBKEY", help="a public key line, or a .pub file")
        p.add_argument("--name", default="", help="the name it goes by (default: key- and its fingerprint's start)")
        if name == "add-user":
            p.add_argument("--operator", action="store_true", help="authorize as an operator")
    p = _command(keys, "pending", help="node keys that were refused and wait for approval")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p = _command(keys, "approve", help="authorize a pending node key")
    p.add_argument("fingerprint", metavar="FINGERPRINT", help="SHA256:… as keys pending lists it")
    p.add_argument("--name", default="", help="the name the node goes by (default: key- and its fingerprint's start)")
    p = _command(keys, "remove", help="remove a key from every authorized list")
    p.add_argument("fingerprint", metavar="FINGERPRINT", help="SHA256:… as keys show lists it")
    for p in (*keys.choices.values(),):
        p.add_argument("--state-dir", type=Path, metavar="D", default=argparse.SUPPRESS,
                       help="state folder (default: the platform's user data folder)")
    return parser


def _hosting_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, metavar="D", default=argparse.SUPPRESS,
                   help="state folder (default: the platform's user data folder)")
    p.add_argument("--listen", type=address_argument(listening=True), metavar="HOST:PORT", default=argparse.SUPPRESS,
                   help="address to listen on (default 127.0.0.1:8022)")
    p.add_argument("--local-nodes", type=_count, metavar="N", default=argparse.SUPPRESS,
                   help="node processes to start on this machine (default 0)")
    p.add_argument("--metrics", type=address_argument(listening=True), metavar="HOST:PORT", default=argparse.SUPPRESS,
                   help="serve Prometheus metrics at http://HOST:PORT/metrics")
    p.add_argument("--launch", type=_launch_spec, action="append", metavar="slurm:N|ssh:HOSTS", default=argparse.SUPPRESS,
                   help="run a launcher too: up to N Slurm jobs, or a node on each of HOSTS (repeatable)")
    replicate_argument(p)


def _launch_spec(text: str) -> str:
    from console.launch.spec import LaunchSpec

    try:
        LaunchSpec.parse(text)
    except ChainconsoleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", metavar="HOST:PORT", help="front-end address (default: the one running on the state dir)")
    p.add_argument("--state-dir", type=Path, metavar="D", default=argparse.SUPPRESS,
                   help="state folder whose operator key, host key and address to use (default: the usual one)")
    p.add_argument("--key", metavar="FILE", help="private key to log in with (default: the operator key)")
    p.add_argument("--host-key", metavar="FILE", help="the front-end's public host key (default: D/host_key.pub)")


def _limit_options(p: argparse.ArgumentParser) -> None:
    """Task size limits a user raises on purpose (defaults in protocol.taskfile)."""
    p.add_argument("--max-items", type=_count, metavar="N", help="items per task")
    p.add_argument("--max-item-elements", type=_count, metavar="N", help="elements in one item")
    p.add_argument("--max-task-bytes", type=_count, metavar="N", help="bytes of all inputs and results of a task")


def limits_from(args: argparse.Namespace):
    from protocol.taskfile import DEFAULT_LIMITS

    chosen = {name: getattr(args, name, None) for name in ("max_items", "max_item_elements", "max_task_bytes")}
    return dataclasses.replace(DEFAULT_LIMITS, **{k: v for k, v in chosen.items() if v is not None})


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the results here")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def state_dir(args: argparse.Namespace) -> StateDir:
    return StateDir(Path(getattr(args, "state_dir", None) or default_state_dir()).expanduser())


# -- commands ---------------------------------------------------------------------------


def cmd_console(args: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        # Without a terminal the console would only write escape sequences nobody sees.
        raise CliError("the console needs a terminal; `chainconsole serve` runs the front-end without one")
    from console.tui.app import run_console

    return run_console(state_dir(args), getattr(args, "listen", None), getattr(args, "local_nodes", 0),
                       limits=limits_from(args), metrics=getattr(args, "metrics", None),
                       launch=tuple(getattr(args, "launch", ())), replica_rate=args.replicate)


def cmd_serve(args: argparse.Namespace) -> int:
    from console.engine.host import Host, on_stop_signals
    from nodes.ssh.server import ServerSettings

    host, port = getattr(args, "listen", ("127.0.0.1", 8022))
    hosting = Host(state_dir(args), ServerSettings(host=host, port=port), getattr(args, "local_nodes", 0),
                   {"limits": limits_from(args), "keep_results_s": args.keep_results, "replica_rate": args.replicate},
                   metrics=getattr(args, "metrics", None), launch=tuple(getattr(args, "launch", ())))

    async def serve() -> None:
        stop = asyncio.Event()
        on_stop_signals(lambda sig: stop.set())
        loading()  # until the front-end has started (nodes.startup)
        try:
            address = await hosting.start()
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", ExitStatus.CONNECT) from None
        finally:
            loaded()
        from console.engine.keys import fingerprint
        import asyncssh

        fp = fingerprint(asyncssh.read_private_key(hosting.state.host_key))
        print(f"chainconsole front-end listening on {address[0]}:{address[1]}", file=sys.stderr)
        print(f"host key {fp}; state in {hosting.state.root}", file=sys.stderr, flush=True)
        if hosting.metrics_server is not None:
            metrics_host, metrics_port = hosting.metrics_server.address
            print(f"metrics at http://{metrics_host}:{metrics_port}/metrics", file=sys.stderr, flush=True)
        for warning in hosting.warnings:
            print(f"chainconsole: warning: {warning}", file=sys.stderr, flush=True)
        assert hosting.frontend is not None
        log = EventLog(sys.stderr, args.log_format)
        for event in list(hosting.frontend.events):  # what happened while starting (resumed tasks …)
            log(event)
        hosting.frontend.on_event(log)
        try:
            await stop.wait()
        finally:
            print("shutting down", file=sys.stderr, flush=True)
            await hosting.stop()

    asyncio.run(serve())
    return ExitStatus.OK


def cmd_run(args: argparse.Namespace) -> int:
    loading()  # until the front-end has started (nodes.startup)
    try:
        return _run(args)
    finally:
        loaded()


def _run(args: argparse.Namespace) -> int:
    from console.engine.host import FRONTEND_BLAS_THREADS, Host, on_stop_signals
    from nodes.startup import start_blas_with
    from nodes.ssh.server import ServerSettings

    start_blas_with(FRONTEND_BLAS_THREADS)  # before the task file loads numpy
    from console.engine.results import export_npz
    from protocol.taskfile import load_task_file

    task = load_task_file(args.task, limits=limits_from(args))
    if args.local_nodes < 1:
        raise CliError("run needs at least one local node (--local-nodes N)")

    stopped_by: list[signal.Signals] = []

    async def one_shot() -> dict:
        main_task = asyncio.current_task()
        assert main_task is not None
        on_stop_signals(lambda sig: (stopped_by.append(sig), main_task.cancel()))
        with tempfile.TemporaryDirectory(prefix="chainconsole-run-") as tmp:
            hosting = Host(StateDir(Path(tmp) / "state"), ServerSettings(port=0), args.local_nodes,
                           {"limits": limits_from(args), "replica_rate": args.replicate})
            await hosting.start()
            loaded()
            from console.cli.report import TaskProgress  # rich: loaded while the local nodes start

            try:
                assert hosting.frontend is not None
                task_id = await hosting.frontend.submit(task, "operator")
                waiter = asyncio.ensure_future(hosting.frontend.wait(task_id))
                with TaskProgress(task.name, task.count) as progress:
                    while not waiter.done():
                        await asyncio.wait([waiter], timeout=0.25)
                        row = hosting.frontend.task_row(task_id)
                        if row is not None:
                            progress.show(row.items_done)
                summary = waiter.result()
                if args.output:
                    folder = hosting.state.task_dir(task_id)
                    await asyncio.to_thread(export_npz, folder, Path(args.output))
                return summary
            finally:
                await hosting.stop()

    try:
        summary = asyncio.run(one_shot())
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        raise CliError(f"stopped by {stopped_by[0].name} before the task finished", 128 + stopped_by[0]) from None
    from console.cli.report import report

    return report(summary, args.json)


def cmd_validate(args: argparse.Namespace) -> int:
    from console.cli.validate import run_validate

    return run_validate(args.task, limits=limits_from(args), state_root=state_dir(args).root)


def cmd_node(args: argparse.Namespace) -> int:
    from nodes.cli import run

    return run(args)


def cmd_keys(args: argparse.Namespace) -> int:
    from console.cli.keys import run_keys

    return run_keys(state_dir(args), args)


def cmd_launch(args: argparse.Namespace) -> int:
    from console.launch.cli import run_launch

    return run_launch(state_dir(args), args)


def cmd_attach(args: argparse.Namespace) -> int:
    from console.cli.attach import run_attach
    from console.cli.client import resolve_endpoint

    return run_attach(resolve_endpoint(state_dir(args), args.address, args.key, args.host_key))


def cmd_client(args: argparse.Namespace) -> int:
    from console.cli.remote import Interrupted, run_remote
    from console.engine.host import on_stop_signals

    stopped_by: list[signal.Signals] = []
    follow: dict[str, str] = {}  # what the command is waiting for: the task id, once known

    async def client() -> int:
        main_task = asyncio.current_task()
        assert main_task is not None
        on_stop_signals(lambda sig: (stopped_by.append(sig), main_task.cancel()))
        return await run_remote(state_dir(args), args, limits_from(args), follow)

    try:
        return asyncio.run(client())
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        raise Interrupted(stopped_by[0], follow.get("task_id")) from None


COMMANDS = {
    None: cmd_console, "serve": cmd_serve, "attach": cmd_attach, "run": cmd_run, "validate": cmd_validate,
    "node": cmd_node, "keys": cmd_keys, "submit": cmd_client, "tasks": cmd_client, "nodes": cmd_client,
    "operations": cmd_client,
    "result": cmd_client, "cancel": cmd_client, "delete": cmd_client, "drain": cmd_client, "kick": cmd_client,
    "release": cmd_client, "launch": cmd_launch,
}


PRIVATE_UMASK = 0o077


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(PRIVATE_UMASK)  # keys, journal, results, logs: nothing chainconsole writes is for others
    try:
        status = COMMANDS[args.command](args)
    except TaskFileError as exc:
        task = getattr(args, "task", None)  # submit and run: say which file the problems are in
        for problem in exc.problems:
            print(f"chainconsole: {task}: {problem}" if task else f"chainconsole: {problem}", file=sys.stderr)
        status = ExitStatus.USAGE
    except ChainconsoleError as exc:
        print(f"chainconsole: {exc}", file=sys.stderr)
        status = getattr(exc, "status", ExitStatus.USAGE)
    except KeyboardInterrupt:
        print("chainconsole: interrupted", file=sys.stderr)
        status = ExitStatus.INTERRUPTED
    except BrokenPipeError:
        status = ExitStatus.OK
    quick_exit()
    sys.exit(status)
