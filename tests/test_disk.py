"""Disk: submissions that won't fit are refused, a full disk fails only its task, old tasks are deleted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from console.engine import frontend as frontend_module
from console.engine.frontend import FrontEndError, NoSpaceError
from console.engine.host import Host, start_local_node
from console.engine.journal import Journal
from console.engine.keys import initialize
from console.engine.statedir import StateDir
from console.ssh.server import ServerSettings
from protocol.taskfile import parse_task
from tests.conftest import cli, wait_until

MiB = 1024 * 1024


def invert_task(count: int, n: int, seed: int = 1, return_mode: str = "full") -> dict:
    return {"name": f"invert-{count}x{n}", "operation": "invert", "return": return_mode,
            "inputs": {"a": {"generate": {"count": count, "shape": [n, n], "seed": seed, "distribution": "spd"}}}}


def journal_rows(state: StateDir, task_id: str) -> tuple[int, int]:
    journal = Journal(state.journal)
    try:
        tasks = [t for t in journal.tasks() if t.task_id == task_id]
        return len(tasks), len(journal.chunks(task_id))
    finally:
        journal.close()


async def test_a_task_that_would_not_fit_the_free_space_is_refused_saying_how_much(host: Host, monkeypatch) -> None:
    frontend = host.frontend
    assert frontend is not None
    task = parse_task(invert_task(1000, 128))  # 125 MiB of results
    usage = shutil.disk_usage(host.state.root)
    monkeypatch.setattr(frontend_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=100 * MiB))
    with pytest.raises(NoSpaceError) as refused:
        frontend.submit(task, "operator")
    message = str(refused.value)
    assert "needs 1" in message and "125.0 MiB of results" in message and "100.0 MiB is free" in message
    assert frontend.tasks == {} and not list(host.state.tasks.glob("*"))
    small = parse_task(invert_task(10, 16))
    assert frontend.submit(small, "operator")  # a task that fits still goes in


async def test_space_promised_to_unfinished_tasks_counts_as_taken(host: Host, monkeypatch) -> None:
    frontend = host.frontend
    assert frontend is not None
    frontend.submit(parse_task(invert_task(500, 128)), "operator")  # 62.5 MiB, sparse until computed
    usage = shutil.disk_usage(host.state.root)
    monkeypatch.setattr(frontend_module.shutil, "disk_usage", lambda path: usage._replace(free=120 * MiB))
    with pytest.raises(NoSpaceError, match="promised to unfinished tasks"):
        frontend.submit(parse_task(invert_task(400, 128)), "operator")


async def test_delete_refuses_a_running_task_and_removes_a_finished_one(host: Host) -> None:
    frontend = host.frontend
    assert frontend is not None
    task_id = frontend.submit(parse_task(invert_task(20, 8)), "operator")
    with pytest.raises(FrontEndError, match="cancel it first"):
        await frontend.delete(task_id)
    assert host.state.task_dir(task_id).exists()
    frontend.cancel(task_id)
    await frontend.wait(task_id)
    await frontend.delete(task_id)
    assert not host.state.task_dir(task_id).exists()
    assert journal_rows(host.state, task_id) == (0, 0)
    assert all(r.task_id != task_id for r in frontend.task_rows())
    with pytest.raises(FrontEndError, match="no task"):
        frontend.task(task_id)


async def test_delete_over_ssh_and_from_the_command_line(host: Host, nodes) -> None:
    frontend = host.frontend
    assert frontend is not None
    task_id = frontend.submit(parse_task(invert_task(20, 8)), "operator")
    refused = await asyncio.to_thread(cli, "delete", task_id, "--state-dir", str(host.state.root))
    assert refused.returncode == 2 and "cancel it first" in refused.stderr
    nodes("n1")
    await frontend.wait(task_id)
    done = await asyncio.to_thread(cli, "delete", task_id, "--state-dir", str(host.state.root))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"task_id": task_id, "state": "deleted"}
    assert not host.state.task_dir(task_id).exists() and task_id not in frontend.tasks


async def test_keep_results_prunes_finished_tasks_older_than_the_duration(state: StateDir) -> None:
    hosting = Host(state, ServerSettings(port=0), 0, {"keep_results_s": 3600.0, "prune_every_s": 0.05})
    await hosting.start()
    try:
        frontend = hosting.frontend
        assert frontend is not None
        old, recent, queued = (frontend.submit(parse_task(invert_task(10, 8, seed)), "operator") for seed in (1, 2, 3))
        for task_id in (old, recent):
            frontend.cancel(task_id)
            await frontend.wait(task_id)
        frontend.tasks[old].finished_at = time.time() - 7200
        await wait_until(lambda: old not in frontend.tasks, 5, "the old task to be pruned")
        assert not state.task_dir(old).exists() and journal_rows(state, old) == (0, 0)
        await asyncio.sleep(0.2)
        assert recent in frontend.tasks and queued in frontend.tasks and state.task_dir(recent).exists()
    finally:
        await hosting.stop()


def test_keep_results_takes_durations_people_write() -> None:
    from console.cli.main import build_parser

    parse = build_parser().parse_args
    assert parse(["serve", "--keep-results", "7d"]).keep_results == 7 * 86400
    assert parse(["serve", "--keep-results", "12h"]).keep_results == 12 * 3600
    assert parse(["serve", "--keep-results", "30m"]).keep_results == 1800
    assert parse(["serve"]).keep_results is None
    for bad in ("7", "0d", "-1h", "xd", "7y"):
        with pytest.raises(SystemExit):
            parse(["serve", "--keep-results", bad])
