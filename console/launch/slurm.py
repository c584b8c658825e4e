"""``chainconsole launch slurm``: Slurm jobs that run nodes, as many as the backlog wants.

The launcher keeps up to ``max_jobs`` jobs, each one ``chainconsole node`` (``sbatch``),
and looks every ``poll_s`` at the front-end's backlog and at ``squeue``:

- **More** while items wait for a node and no job of ours is still on its way (pending,
  or running with its node not connected yet): up to ``burst`` jobs at a time, never
  more than ``max_jobs`` in all.
- **Fewer** when nothing waits: pending jobs are cancelled, and a job whose node has had
  nothing to do for ``idle_s`` is drained — its node finishes what it holds, says bye and
  exits, which ends the job. A job that lingers ``end_grace_s`` after its node left is
  cancelled.
- **None left** on stop: every node is drained, then every job still there is cancelled,
  and the launcher waits until ``squeue`` shows none of them.

Each job gets ``--signal=B:USR1@N`` when it has a time limit, so its node drains N seconds
before the walltime, and the node is told its walltime (``--deadline``) so the front-end
sends it no chunk expected to outlast it. Its node goes by ``NAME-JOBID``. Jobs are
found again by their job name (``cc-NAME``), so the launcher only ever touches its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from console.engine.records import JobRow
from console.launch.control import LIVE_NODE_STATES, FrontEndControl, LaunchError, LaunchKey, NodeInfo
from console.launch.settings import SlurmSettings
from protocol.errors import ChainconsoleError

STOP_GRACE_S = 60.0
"""How long stopping waits for drained nodes before it cancels their jobs."""
COMMAND_TIMEOUT_S = 60.0
ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE")


class SlurmError(LaunchError):
    """An sbatch, squeue or scancel that failed."""


@dataclass
class Job:
    """One job of ours: its Slurm state, and what the launcher did with it."""

    job_id: str
    node: str
    slurm_state: str = "PENDING"
    phase: str = "pending"
    """``pending``, ``starting`` (running, node not connected), ``running``, ``draining``, ``ending``."""
    idle_since: float | None = None
    left_at: float | None = None
    seen_node: bool = False
    submitted_at: float = field(default_factory=time.monotonic)


class Slurm:
    """The three Slurm commands, run as the launcher's user; errors become ``SlurmError``."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env

    async def _run(self, *args: str) -> str:
        try:
            proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, env=self.env)
        except OSError as exc:
            raise SlurmError(f"cannot run {args[0]}: {exc.strerror or exc} (is Slurm installed here?)") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), COMMAND_TIMEOUT_S)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise SlurmError(f"{args[0]} did not answer in {COMMAND_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            lines = [line.strip() for line in err.decode(errors="replace").splitlines() if line.strip()]
            raise SlurmError(f"{args[0]} failed (exit {proc.returncode}): {lines[-1] if lines else 'no message'}")
        return out.decode(errors="replace")

    async def sbatch(self, script: Path, args: Sequence[str]) -> str:
        out = await self._run("sbatch", "--parsable", *args, str(script))
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch said {out.strip()!r}, not a job id")
        return job_id

    async def squeue(self, job_name: str) -> dict[str, str]:
        """Our jobs that Slurm still lists: job id → state (``PENDING``, ``RUNNING`` …)."""
        out = await self._run("squeue", "--noheader", "--name", job_name, "--user", str(os.getuid()),
                              "--states", "all", "--format", "%i|%T")
        jobs = {}
        for line in out.splitlines():
            job_id, _, state = line.strip().partition("|")
            if job_id:
                jobs[job_id] = state
        return jobs

    async def scancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            await self._run("scancel", *job_ids)


def job_script(settings: SlurmSettings, *, name: str, key: Path, folder: Path, deadline_s: float | None) -> str:
    """The batch script of one job: it becomes the node (``exec``), so the node gets Slurm's signals."""
    command = shlex.split(settings.node_command) if settings.node_command else [sys.executable, "-m", "nodes"]
    args = [*command, "--connect", settings.connect, "--key", str(key), "--host-key", str(settings.host_key),
            "--slots", str(settings.slots)]
    if deadline_s is not None:
        args += ["--deadline", f"{deadline_s:.0f}"]
    quoted = " ".join(shlex.quote(a) for a in args)
    state = shlex.quote(str(folder)) + '/job-"$SLURM_JOB_ID"'
    return ("#!/bin/sh\n"
            "# A chainconsole node, started by 'chainconsole launch slurm'.\n"
            f"exec {quoted} --name {shlex.quote(name)}-\"$SLURM_JOB_ID\" --state-dir {state}\n")


def slurm_seconds(text: str) -> float:
    """Seconds of a Slurm time limit: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``."""
    spec = text.strip()
    days, dash, clock = spec.partition("-")
    if not dash:
        days, clock = "0", spec
    try:
        parts = [int(p) for p in clock.split(":")]
        day_count = int(days)
    except ValueError:
        raise LaunchError(f"--time {text!r} is not a Slurm time limit such as 30, 2:00:00 or 1-00:00:00") from None
    if dash:  # D-HH[:MM[:SS]]
        parts = (parts + [0, 0])[:3]
    elif len(parts) == 1:  # MM
        parts = [0, parts[0], 0]
    elif len(parts) == 2:  # MM:SS
        parts = [0, *parts]
    if len(parts) != 3 or day_count < 0 or any(p < 0 for p in parts):
        raise LaunchError(f"--time {text!r} is not a Slurm time limit such as 30, 2:00:00 or 1-00:00:00")
    seconds = day_count * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
    if seconds <= 0:
        raise LaunchError(f"--time {text!r} must be longer than nothing")
    return float(seconds)


class SlurmLauncher:
    """Keeps the Slurm jobs the backlog wants, until ``stop``."""

    def __init__(self, name: str, settings: SlurmSettings, control: FrontEndControl, folder: Path, *,
                 slurm: Slurm | None = None, say: Callable[[str], None] = lambda line: None) -> None:
        self.name = name
        self.settings = settings
        self.control = control
        self.folder = folder
        self.slurm = slurm or Slurm()
        self.say = say
        self.job_name = f"cc-{name}"
        self.jobs: dict[str, Job] = {}
        self.stopping = asyncio.Event()
        self.deadline_s = None if settings.time_limit is None else slurm_seconds(settings.time_limit)
        self._script: Path | None = None
        self._submitted = 0

    def rows(self) -> list[JobRow]:
        return [JobRow(self.name, job.job_id, job.phase, job.node) for job in self.jobs.values()]

    def stop(self) -> None:
        self.stopping.set()

    def _sbatch_args(self) -> list[str]:
        s = self.settings
        args = ["--job-name", self.job_name, "--output", str(self.folder / "job-%j.log"),
                "--cpus-per-task", str(s.slots), "--ntasks", "1"]
        if s.partition:
            args += ["--partition", s.partition]
        if s.time_limit:
            args += ["--time", s.time_limit]
            if self.deadline_s is not None and s.signal_s > 0:
                args += [f"--signal=B:USR1@{min(s.signal_s, max(1, int(self.deadline_s) // 2))}"]
        return args + list(s.sbatch_args)

    async def run(self) -> None:
        """Enrol the key, scale with the backlog until ``stop``, then leave no job behind."""
        key = LaunchKey.create(self.folder)
        self._script = self.folder / "job.sh"
        self._script.write_text(job_script(self.settings, name=self.name, key=key.path, folder=self.folder,
                                           deadline_s=self.deadline_s))
        await self.control.enrol(key.public_line, self.name)
        try:
            # Jobs of an earlier run under this name cannot use its key any more: end them.
            stale = await self.slurm.squeue(self.job_name)
            if stale:
                self.say(f"cancelling {len(stale)} jobs an earlier run left: {', '.join(sorted(stale))}")
                await self.slurm.scancel(sorted(stale))
            while not self.stopping.is_set():
                try:
                    await self.step(time.monotonic())
                except (ChainconsoleError, OSError, asyncssh.Error) as exc:
                    self.say(f"this round skipped: {exc}")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), self.settings.poll_s)
        finally:
            await self._end_all()
            await self.control.close()

    async def step(self, now: float) -> None:
        """One look at the backlog and the queue, and what follows from it."""
        listed = await self.slurm.squeue(self.job_name)
        backlog = await self.control.backlog()
        nodes = await self.control.nodes()
        self._update(listed, nodes, now)
        waiting = backlog.items_waiting > 0
        if waiting:
            on_the_way = [j for j in self.jobs.values() if j.phase in ("pending", "starting")]
            room = self.settings.max_jobs - len(self.jobs)
            if not on_the_way and room > 0:
                for _ in range(min(room, self.settings.burst)):
                    await self._submit(now)
        else:
            pending = [j.job_id for j in self.jobs.values() if j.phase == "pending"]
            if pending:
                self.say(f"nothing waits: cancelling pending jobs {', '.join(pending)}")
                await self.slurm.scancel(pending)
                for job_id in pending:
                    self._phase(self.jobs[job_id], "ending")
            for job in list(self.jobs.values()):
                if job.phase == "running" and job.idle_since is not None and now - job.idle_since >= self.settings.idle_s:
                    self._phase(job, "draining")
                    await self.control.drain(job.node)
        lingering = [j.job_id for j in self.jobs.values()
                     if j.left_at is not None and now - j.left_at >= self.settings.end_grace_s]
        if lingering:
            await self.slurm.scancel(lingering)
            for job_id in lingering:
                self.jobs[job_id].left_at = now  # once per grace, not every round
        await self.control.report(self.rows())

    def _update(self, listed: dict[str, str], nodes: dict[str, NodeInfo], now: float) -> None:
        for job_id in list(self.jobs):
            job = self.jobs[job_id]
            state = listed.get(job_id)
            if state is None or state in ENDED:
                self.say(f"job {job_id} ended" + (f" ({state.lower()})" if state else ""))
                del self.jobs[job_id]
                continue
            job.slurm_state = state
            node = nodes.get(job.node)
            connected = node is not None and node.state in LIVE_NODE_STATES
            if connected:
                job.seen_node = True
                job.idle_since = (job.idle_since or now) if node.in_flight == 0 and node.state == "idle" else None
            elif job.seen_node and job.left_at is None:
                job.left_at = now  # its node left (drained, walltime, lost): the job should end
            if job.phase in ("draining", "ending"):
                continue
            if state == "PENDING":
                self._phase(job, "pending")
            elif connected:
                self._phase(job, "running")
            elif job.seen_node:
                self._phase(job, "ending")
            else:
                self._phase(job, "starting")

    def _phase(self, job: Job, phase: str) -> None:
        if job.phase != phase:
            job.phase = phase
            self.say(f"job {job.job_id}: {phase}" + (f" (node {job.node})" if phase == "running" else ""))

    async def _submit(self, now: float) -> None:
        assert self._script is not None
        job_id = await self.slurm.sbatch(self._script, self._sbatch_args())
        self.jobs[job_id] = Job(job_id, f"{self.name}-{job_id}", submitted_at=now)
        self._submitted += 1
        self.say(f"job {job_id}: submitted ({len(self.jobs)} of at most {self.settings.max_jobs})")

    async def _end_all(self) -> None:
        """Drain every node, give them ``STOP_GRACE_S``, cancel what is left and wait until it is gone."""
        try:
            listed = await self.slurm.squeue(self.job_name)
            nodes = await self.control.nodes()
            self._update(listed, nodes, time.monotonic())
            for job in self.jobs.values():
                if job.phase == "running":
                    self._phase(job, "draining")
                    await self.control.drain(job.node)
            deadline = time.monotonic() + STOP_GRACE_S
            while time.monotonic() < deadline:
                nodes = await self.control.nodes()
                if not any(j.node in nodes and nodes[j.node].state in LIVE_NODE_STATES for j in self.jobs.values()):
                    break
                await asyncio.sleep(0.5)
        except (ChainconsoleError, OSError, asyncssh.Error) as exc:
            self.say(f"cannot drain the nodes first: {exc}")
        for attempt in range(3 if self._submitted else 1):
            try:
                listed = await self.slurm.squeue(self.job_name)
                live = sorted(j for j, state in listed.items() if state not in ENDED)
                if not live:
                    break
                await self.slurm.scancel(live)
                self.say(f"cancelled jobs {', '.join(live)}")
                end = time.monotonic() + 30
                while time.monotonic() < end:
                    listed = await self.slurm.squeue(self.job_name)
                    if not [j for j, state in listed.items() if state not in ENDED]:
                        break
                    await asyncio.sleep(0.5)
            except SlurmError as exc:
                self.say(f"cannot cancel the jobs (try {attempt + 1} of 3): {exc}")
        self.jobs.clear()
