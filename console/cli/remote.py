"""CLI commands that talk to a running front-end over SSH, as any user would."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import asyncssh

from console.cli.client import connect, resolve_endpoint
from console.cli.report import Progress, report
from console.engine.statedir import StateDir
from protocol.errors import ChainconsoleError, ExitStatus
from protocol.taskfile import Task, TaskLimits, load_task_file
from protocol.upload import encode_upload



async def run_remote(state: StateDir, args: argparse.Namespace, limits: TaskLimits) -> int:
    """Run one client command (``submit``, ``tasks`` …) against the front-end; return the exit status."""
    endpoint = resolve_endpoint(state, args.connect, args.key, args.host_key)
    if args.command == "submit":
        task = load_task_file(args.task, limits=limits)  # refuse a bad file before connecting
    async with await connect(endpoint) as conn:
        match args.command:
            case "submit":
                return await _submit(conn, task, args)
            case "tasks" | "nodes":
                result = await _call(conn, args.command)
                rows = json.loads(result.stdout)
                print(json.dumps(rows, indent=2) if args.json else _table(args.command, rows))
                return ExitStatus.OK
            case "operations":
                known = json.loads((await _call(conn, "operations")).stdout)
                print(json.dumps(known, indent=2) if args.json else _operations_table(known))
                return ExitStatus.OK
            case "result":
                return await _download(conn, args.task_id, Path(args.output))
            case "cancel" | "delete" | "drain" | "kick" | "release":
                result = await _call(conn, f"{args.command} {shlex.quote(args.target)}")
                print(result.stdout.decode().strip())
                return ExitStatus.OK
    raise AssertionError(args.command)


async def _call(conn: asyncssh.SSHClientConnection, command: str, stdin: bytes | None = None):
    result = await conn.run(command, input=stdin, encoding=None, check=False)
    if result.exit_status != 0:
        message = (result.stderr or b"").decode(errors="replace").strip() or f"{command} failed"
        raise _Remote(message.removeprefix("chainconsole: "), result.exit_status or ExitStatus.USAGE)
    return result


class _Remote(ChainconsoleError):
    """The front-end refused a command; ``status`` is the exit status it gave."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


async def _submit(conn: asyncssh.SSHClientConnection, task: Task, args: argparse.Namespace) -> int:
    wait = args.wait or bool(args.output)
    pieces = encode_upload(task)
    process = await conn.create_process("submit" if wait else "submit --detach", encoding=None)
    await _send(process, pieces)
    process.stdin.write_eof()
    summary = None
    progress = None
    if wait and sys.stderr.isatty():
        progress = Progress(task.name, task.count)
    task_id = None
    while line := await process.stdout.readline():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # not ours to interpret: the summary below says what happened
        if not wait:
            task_id = event.get("task_id")
        elif event.get("event") == "accepted":
            task_id = event["task_id"]
            if not progress and not args.json:
                print(f"submitted {task_id}", file=sys.stderr)
        elif event.get("event") == "progress" and progress:
            progress.show(event["items_done"])
        elif event.get("event") == "done":
            summary = {k: v for k, v in event.items() if k != "event"}
    await process.wait_closed()
    if progress:
        progress.end()
    status = process.exit_status
    if status == ExitStatus.USAGE:
        for line in (await process.stderr.read()).decode().splitlines():
            print(line, file=sys.stderr)
        return ExitStatus.USAGE
    if not wait:
        print(json.dumps({"task_id": task_id}) if args.json else task_id)
        return ExitStatus.OK
    if summary is None:
        print("chainconsole: the front-end closed the session before the task ended", file=sys.stderr)
        return ExitStatus.CONNECT
    if args.output:
        await _download(conn, summary["task_id"], Path(args.output))
    return report(summary, args.json)


SEND_SLICE = 1024 * 1024
"""The upload goes out a slice at a time: the channel copies what it is given, so a whole
array handed to it at once would be a second copy of the upload in memory."""


async def _send(process: asyncssh.SSHClientProcess, pieces: list) -> None:
    """Write the upload's pieces, waiting for each slice to be taken."""
    for piece in pieces:
        view = memoryview(piece).cast("B")
        for pos in range(0, view.nbytes, SEND_SLICE):
            process.stdin.write(view[pos : pos + SEND_SLICE])
            await process.stdin.drain()


async def _download(conn: asyncssh.SSHClientConnection, task_id: str, output: Path) -> int:
    process = await conn.create_process(f"result {shlex.quote(task_id)}", encoding=None)
    tmp = output.with_name(output.name + ".part")
    with open(tmp, "wb") as sink:
        while data := await process.stdout.read(1 << 20):
            sink.write(data)
    await process.wait_closed()
    if process.exit_status != 0:
        tmp.unlink(missing_ok=True)
        message = (await process.stderr.read()).decode().strip().removeprefix("chainconsole: ")
        print(f"chainconsole: {message}", file=sys.stderr)
        return process.exit_status or ExitStatus.USAGE
    os.replace(tmp, output)
    return ExitStatus.OK


def _operations_table(known: dict) -> str:
    columns = ("name", "version", "source", "check", "nodes")
    data = [[op["name"], op["version"], op["source"], op["check"], ", ".join(op["nodes"]) or "none connected"]
            for op in known["operations"]]
    data += [[u["name"], "?", "not installed on the front-end", "-", ", ".join(u["nodes"])]
             for u in known["unknown_here"]]
    widths = [max([len(c)] + [len(d[i]) for d in data]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(d, widths)).rstrip() for d in data]
    lines += [f"problem: {problem}" for problem in known["problems"]]
    return "\n".join(lines)


def _table(kind: str, rows: list[dict]) -> str:
    if kind == "tasks":
        columns = ("task_id", "name", "owner", "state", "items", "items_done", "items_failed")
    else:
        columns = ("name", "state", "slots", "in_flight", "items_done", "errors", "address")
    data = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(d[i]) for d in data]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(d, widths)).rstrip() for d in data]
    return "\n".join(lines) if data else f"no {kind}"
