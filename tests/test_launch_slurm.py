"""``launch slurm`` against a real one-node Slurm (munged, slurmctld, slurmd), nodes dialling a real front-end.

The launcher runs in the test's process as the console runs it (``--launch slurm:N``),
driving the FrontEnd directly; the jobs are real Slurm jobs whose nodes connect over SSH.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from console.engine.host import Host
from console.launch.control import LaunchError, LocalControl
from console.launch.settings import SlurmSettings
from console.launch.slurm import Slurm, SlurmLauncher, job_script, slurm_seconds
from protocol.taskfile import parse_task
from tests.conftest import wait_until
from tests.real_services import start_slurm
from tests.reference import expected_item

pytestmark = pytest.mark.timeout(120)


def task(count: int, seed: int) -> dict:
    return {"name": f"slurm-{seed}", "operation": "invert", "chunk_size": 10, "return": "norms",
            "inputs": {"a": {"generate": {"count": count, "shape": [96, 96], "seed": seed}}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = start_slurm(tmp_path_factory.mktemp("slurm"))
    yield cluster
    cluster.stop()


def our_jobs(cluster, name: str) -> list[str]:
    return cluster.run("squeue", "--noheader", "--name", f"cc-{name}", "--format", "%i").split()


@contextlib.asynccontextmanager
async def running_launcher(host: Host, cluster, tmp_path: Path, name: str, **options):
    assert host.server is not None
    settings = SlurmSettings("{}:{}".format(*host.server.address), host.state.host_key_pub,
                             poll_s=0.3, idle_s=1.5, end_grace_s=5.0, **options)
    lines: list[str] = []
    launcher = SlurmLauncher(name, settings, LocalControl(host.frontend), tmp_path / name,
                             slurm=Slurm(cluster.env), say=lines.append)
    runner = asyncio.create_task(launcher.run())
    try:
        yield launcher, lines
    finally:
        launcher.stop()
        await asyncio.wait_for(runner, 90)
        assert our_jobs(cluster, name) == []  # none left when it stops


def check_norms(host: Host, task_id: str, document: dict) -> None:
    with np.load(host.frontend.result_file(task_id)) as data:
        assert data["ok"].all()
        for i in range(0, len(data["ok"]), 53):
            np.testing.assert_allclose(data["norms"][i], np.linalg.norm(expected_item(document, i)), rtol=1e-7)


async def test_jobs_follow_the_backlog_up_to_max_jobs_and_end_when_idle(host: Host, cluster, tmp_path) -> None:
    frontend = host.frontend
    async with running_launcher(host, cluster, tmp_path, "scale", max_jobs=2) as (launcher, lines):
        await asyncio.sleep(1.0)
        assert launcher.jobs == {}  # nothing waits: no job
        document = task(6000, 31)
        submitted = time.monotonic()
        task_id = await frontend.submit(parse_task(document), "operator")
        most = 0

        def both_running() -> bool:
            nonlocal most
            most = max(most, len(launcher.jobs))
            return sum(job.phase == "running" for job in launcher.jobs.values()) == 2

        await wait_until(both_running, timeout=60, what="two jobs with their nodes connected")
        scaled_up = time.monotonic()
        assert {j.job_id for j in frontend.job_rows()} == set(launcher.jobs)  # the console sees them
        summary = await asyncio.wait_for(frontend.wait(task_id), 90)
        assert summary["state"] == "done" and summary["ok_items"] == 6000
        check_norms(host, task_id, document)
        assert most <= 2
        assert len(summary["items_per_node"]) == 2 and all(n.startswith("scale-") for n in summary["items_per_node"])
        # Idle now: the nodes are drained, their jobs end, and no new one comes.
        finished = time.monotonic()
        await wait_until(lambda: not launcher.jobs and our_jobs(cluster, "scale") == [], timeout=60,
                         what="the idle jobs to end")
        print(f"\nslurm: two nodes working {scaled_up - submitted:.1f} s after the submission; "
              f"task done after {finished - submitted:.1f} s; jobs ended {time.monotonic() - finished:.1f} s later "
              f"(idle 1.5 s, poll 0.3 s)")
        assert {r.state for r in frontend.node_rows() if r.name.startswith("scale-")} == {"drained"}
        assert sum("drain" in line for line in lines) >= 2


def settled(frontend, name: str):
    """A predicate: the node's count of finished items has not moved for a second."""
    last = {"done": -1, "since": 0.0}

    def check() -> bool:
        (row,) = [r for r in frontend.node_rows() if r.name == name]
        now = time.monotonic()
        if row.items_done != last["done"]:
            last.update(done=row.items_done, since=now)
            return False
        return now - last["since"] >= 1.0

    return check


async def test_a_job_killed_mid_task_has_its_chunks_rerun_and_nothing_is_lost(host: Host, cluster, tmp_path) -> None:
    frontend = host.frontend
    async with running_launcher(host, cluster, tmp_path, "killed", max_jobs=1) as (launcher, lines):
        document = task(5000, 32)
        task_id = await frontend.submit(parse_task(document), "operator")
        await wait_until(lambda: any(r.name.startswith("killed-") and r.items_done > 0 and r.in_flight > 0
                                     for r in frontend.node_rows()), timeout=60, what="the first node at work")
        (victim,) = launcher.jobs
        # Frozen first, so chunks assigned to it stay unfinished: a node killed at once may have
        # finished all it held, its results already in the socket, and then there is nothing to rerun.
        await asyncio.to_thread(cluster.run, "scancel", "--signal=STOP", "--full", victim)
        await wait_until(settled(frontend, f"killed-{victim}"), timeout=30, what="the frozen node's last results")
        (row,) = [r for r in frontend.node_rows() if r.name == f"killed-{victim}"]
        assert row.in_flight > 0  # assigned, never to be computed there
        await asyncio.to_thread(cluster.run, "scancel", "--signal=KILL", "--full", victim)
        await asyncio.to_thread(cluster.run, "scancel", victim)
        summary = await asyncio.wait_for(frontend.wait(task_id), 90)
        assert summary["state"] == "done" and summary["ok_items"] == 5000 and summary["failed_items"] == 0
        check_norms(host, task_id, document)
        assert f"killed-{victim}" in summary["items_per_node"] and len(summary["items_per_node"]) == 2
        assert any(e.kind == "requeue" and e.node_id == f"killed-{victim}" for e in frontend.events)
        assert victim not in launcher.jobs


def test_a_job_asks_for_what_it_was_told_and_its_node_knows_its_walltime(tmp_path) -> None:
    settings = SlurmSettings("fe:8022", tmp_path / "host_key.pub", slots=4, partition="short", time_limit="1:00:00",
                             signal_s=300, sbatch_args=("--account=proj",), node_command="chainconsole node")
    launcher = SlurmLauncher("hpc", settings, None, tmp_path)  # type: ignore[arg-type]
    args = launcher._sbatch_args()
    for expected in (["--job-name", "cc-hpc"], ["--cpus-per-task", "4"], ["--partition", "short"],
                     ["--time", "1:00:00"]):
        assert " ".join(expected) in " ".join(args)
    assert "--signal=B:USR1@300" in args and args[-1] == "--account=proj"
    script = job_script(settings, name="hpc", key=tmp_path / "node_key", folder=tmp_path, deadline_s=3600.0)
    assert "exec chainconsole node --connect fe:8022" in script and "--deadline 3600" in script
    assert '--name hpc-"$SLURM_JOB_ID"' in script


@pytest.mark.parametrize("text, seconds", [("30", 1800), ("10:30", 630), ("2:00:00", 7200), ("1-0", 86400),
                                           ("1-12:30", 131400), ("2-00:00:10", 172810)])
def test_slurm_time_limits_read_as_sbatch_reads_them(text: str, seconds: float) -> None:
    assert slurm_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "soon", "1:2:3:4", "-5", "1-x"])
def test_a_time_limit_that_is_not_one_is_refused(text: str) -> None:
    with pytest.raises(LaunchError):
        slurm_seconds(text)


async def test_the_console_runs_a_slurm_launcher_and_shows_its_jobs_beside_the_nodes(
        cluster, tmp_path, monkeypatch) -> None:
    from console.engine.statedir import StateDir
    from console.ssh.server import ServerSettings
    from console.tui.app import ConsoleApp
    from console.tui.jobs import JobsTable

    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])  # the console's launcher uses the plain commands
    host = Host(StateDir(tmp_path / "state"), ServerSettings(port=0), launch=("slurm:1",))
    app = ConsoleApp(host, refresh_s=0.1)
    async with app.run_test(size=(130, 40)) as pilot:
        (launcher,) = host.launchers
        launcher.settings = dataclasses.replace(launcher.settings, poll_s=0.3, idle_s=60.0)
        jobs = app.main.query_one(JobsTable)
        await pilot.pause()
        assert not jobs.display  # no job: no table
        document = task(3000, 33)
        task_id = await host.frontend.submit(parse_task(document), "operator")
        await wait_until(lambda: jobs.display and jobs.row_count == 1
                         and "running" in str(jobs.get_row_at(0)), timeout=60, what="the job shown, running")
        (job_id,) = launcher.jobs
        assert str(jobs.get_row_at(0)).count(f"slurm-{job_id}") == 1  # its node's name beside it
        summary = await asyncio.wait_for(host.frontend.wait(task_id), 90)
        assert summary["state"] == "done" and set(summary["items_per_node"]) == {f"slurm-{job_id}"}
        check_norms(host, task_id, document)
        # From the palette: stop the launcher; its node drains and its job ends.
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        assert "Launch Slurm jobs: up to 4" not in commands  # one Slurm launcher at a time
        commands["Stop launcher slurm"].callback()
        await wait_until(lambda: not host.launchers and our_jobs(cluster, "slurm") == [], timeout=60,
                         what="the launcher to end its job")
        await wait_until(lambda: not jobs.display, what="the jobs table to go")
        assert "Launch Slurm jobs: up to 4" in {c.title for c in app.get_system_commands(app.screen)}


async def test_chainconsole_launch_slurm_as_a_process_of_its_own(host: Host, cluster, tmp_path) -> None:
    """The CLI launcher drives the front-end over the operator's SSH session and reports its jobs there."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    frontend = host.frontend
    assert host.server is not None
    log = open(tmp_path / "launcher.log", "w+")
    launcher = subprocess.Popen(
        [sys.executable, "-c", "from console.cli.main import main; main()", "launch", "slurm",
         "--state-dir", str(host.state.root), "--connect", "{}:{}".format(*host.server.address), "--name", "cli",
         "--max-jobs", "1", "--poll", "0.3", "--idle", "30", "--launch-dir", str(tmp_path / "jobs")],
        cwd=REPO, env=cluster.env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        document = task(2000, 34)
        task_id = await frontend.submit(parse_task(document), "operator")
        await wait_until(lambda: [j.state for j in frontend.job_rows()] == ["running"], timeout=60,
                         what="the launcher's job, reported over its session")
        summary = await asyncio.wait_for(frontend.wait(task_id), 90)
        assert summary["state"] == "done" and summary["ok_items"] == 2000
        check_norms(host, task_id, document)
        (job,) = frontend.job_rows()
        assert set(summary["items_per_node"]) == {f"cli-{job.job_id}"} and job.node == f"cli-{job.job_id}"
        launcher.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(asyncio.to_thread(launcher.wait), 90) == 0
        assert our_jobs(cluster, "cli") == []
        assert frontend.job_rows() == [] and frontend.registry.launched() == []
        log.seek(0)
        output = log.read()
        assert f"job {job.job_id}: running" in output and "[cli] stopped" in output
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        log.close()
