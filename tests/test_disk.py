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
        await frontend.submit(task, "operator")
    message = str(refused.value)
    assert "needs 1" in message and "125.0 MiB of results" in message and "100.0 MiB is free" in message
    assert frontend.tasks == {} and not list(host.state.tasks.glob("*"))
    small = parse_task(invert_task(10, 16))
    assert await frontend.submit(small, "operator")  # a task that fits still goes in


async def test_space_promised_to_unfinished_tasks_counts_as_taken(host: Host, monkeypatch) -> None:
    frontend = host.frontend
    assert frontend is not None
    await frontend.submit(parse_task(invert_task(500, 128)), "operator")  # 62.5 MiB, sparse until computed
    usage = shutil.disk_usage(host.state.root)
    monkeypatch.setattr(frontend_module.shutil, "disk_usage", lambda path: usage._replace(free=120 * MiB))
    with pytest.raises(NoSpaceError, match="promised to unfinished tasks"):
        await frontend.submit(parse_task(invert_task(400, 128)), "operator")


async def test_delete_refuses_a_running_task_and_removes_a_finished_one(host: Host) -> None:
    frontend = host.frontend
    assert frontend is not None
    task_id = await frontend.submit(parse_task(invert_task(20, 8)), "operator")
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
    task_id = await frontend.submit(parse_task(invert_task(20, 8)), "operator")
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
        old, recent, queued = [await frontend.submit(parse_task(invert_task(10, 8, seed)), "operator")
                               for seed in (1, 2, 3)]
        for task_id in (old, recent):
            frontend.cancel(task_id)
            await frontend.wait(task_id)
        frontend.tasks[old].finished_at = time.time() - 7200
        # Pruning takes the task out of the list first, then removes its files, then its
        # journal rows (on the writer's thread): wait for the last of them.
        await wait_until(lambda: old not in frontend.tasks and journal_rows(state, old) == (0, 0), 5,
                         "the old task to be pruned")
        assert not state.task_dir(old).exists()
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


# -- a real full disk: a small tmpfs, a real front-end, real node processes ----------------

TMPFS_SIZE = 48 * MiB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of ``TMPFS_SIZE`` mounted for the test, unmounted at teardown; skipped where mounting is refused."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here to make a small tmpfs")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or 'mount failed'}); it needs root")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Write a file that leaves ``leave`` bytes free on ``disk``."""
    filler = disk / "filler"
    size = shutil.disk_usage(disk).free - leave
    with open(filler, "wb") as out:
        block = bytes(MiB)
        while size > 0:
            size -= out.write(block[: min(size, MiB)])
    return filler


async def test_a_full_disk_fails_only_the_task_it_stops_and_the_front_end_serves_on(small_disk: Path,
                                                                                  tmp_path: Path) -> None:
    state = StateDir(small_disk / "state")
    initialize(state)
    hosting = Host(state, ServerSettings(port=0), 0, {"disk_margin": 1 * MiB})
    await hosting.start()
    try:
        frontend = hosting.frontend
        assert frontend is not None and hosting.server is not None
        big = invert_task(120, 256)  # 60 MiB of results: more than the whole disk once it is filled
        too_big = tmp_path / "too-big.json"
        too_big.write_text(json.dumps(big))
        refused = await asyncio.to_thread(cli, "submit", str(too_big), "--state-dir", str(state.root))
        assert refused.returncode == 2 and "not enough disk space" in refused.stderr
        assert "is free in" in refused.stderr and "of results" in refused.stderr

        # A task that fits when it is submitted, then the disk fills before its results are written.
        fits = invert_task(60, 256)  # 30 MiB of results
        (tmp_path / "fits.json").write_text(json.dumps(fits))
        waiting = asyncio.ensure_future(asyncio.to_thread(
            cli, "submit", str(tmp_path / "fits.json"), "--wait", "--json", "--state-dir", str(state.root)))
        await wait_until(lambda: len(frontend.tasks) == 1, 20, "the task to be submitted")
        [task_id] = frontend.tasks
        filler = fill(small_disk, leave=4 * MiB)
        for i in range(2):
            hosting.nodes.append(start_local_node(state, hosting.server.address, f"local{i + 1}"))
        failed = await asyncio.wait_for(waiting, 60)
        assert failed.returncode == 1, failed.stderr
        summary = json.loads(failed.stdout)
        assert summary["state"] == "failed" and "No space left on device" in summary["error"]
        assert frontend.tasks[task_id].state == "failed"

        # The operator makes room: the front-end and its nodes serve the next task as ever.
        filler.unlink()
        await frontend.delete(task_id)
        assert sorted(n.name for n in frontend.node_rows() if n.state in ("idle", "busy")) == ["local1", "local2"]
        small = invert_task(30, 32, seed=5)
        (tmp_path / "small.json").write_text(json.dumps(small))
        out = tmp_path / "small.npz"
        done = await asyncio.to_thread(cli, "submit", str(tmp_path / "small.json"), "-o", str(out), "--json",
                                       "--state-dir", str(state.root))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "done"
        with np.load(out) as results:
            assert results["ok"].all()
            for i in (0, 17, 29):
                rng = np.random.default_rng([5, i])
                m = rng.standard_normal((32, 32))
                a = m @ m.T + 32 * np.eye(32)
                assert np.allclose(results["result"][i], np.linalg.inv(a))
    finally:
        await hosting.stop()


async def test_run_refuses_a_task_its_state_folder_cannot_hold(small_disk: Path, tmp_path: Path) -> None:
    task = tmp_path / "big.json"
    task.write_text(json.dumps(invert_task(120, 256)))  # 60 MiB of results on a 48 MiB disk
    refused = await asyncio.to_thread(cli, "run", str(task), "--local-nodes", "1", env={"TMPDIR": str(small_disk)})
    assert refused.returncode == 2 and "not enough disk space for invert-120x256" in refused.stderr
    assert "Traceback" not in refused.stderr and not list(small_disk.iterdir())


async def test_validate_warns_about_a_task_its_state_folder_cannot_hold(small_disk: Path, tmp_path: Path) -> None:
    task = tmp_path / "big.json"
    task.write_text(json.dumps(invert_task(120, 256)))
    warned = await asyncio.to_thread(cli, "validate", str(task), "--state-dir", str(small_disk / "state"))
    assert warned.returncode == 0 and warned.stdout.startswith("ok: invert-120x256")
    assert "warning: the task needs 60.0 MiB on disk" in warned.stderr and "is free in" in warned.stderr
    fine = await asyncio.to_thread(cli, "validate", str(task), "--state-dir", str(tmp_path / "state"))
    assert fine.returncode == 0 and fine.stderr == ""
