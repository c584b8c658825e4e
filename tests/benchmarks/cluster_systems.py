"""The systems the cluster benchmark compares, each started once and kept warm between runs.

- ``PoolSystem``: the physical baseline — a spawn ``multiprocessing`` pool, one BLAS thread
  per worker, no network; chunks go out with ``imap_unordered`` and results come back
  pickled to the parent, which stores them.
- ``WarmChainconsole``: a running front-end with connected nodes, in a child process
  (``cluster_frontend.py``) so that its memory and CPU time are measured alone.
- ``run_cold``: the whole ``chainconsole run`` command, start-up and ``-o OUT.npz`` included.
- ``DaskSystem``: a dask.distributed LocalCluster of worker processes, over TCP or TLS.

Every ``run`` stores results under ``folder`` and returns the seconds from handing the
work over until the results are durable on disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

import cluster_workloads
from cluster_workloads import ResultSink, Workload, one_blas_thread
from nodes.pool import ChunkDone, ChunkJob, compute_chunk

HERE = Path(__file__).resolve().parent
RUN_TIMEOUT_S = 1800


def compute_indexed(indexed: tuple[int, ChunkJob]) -> tuple[int, ChunkDone]:
    """A pool task: one chunk, tagged with its index so unordered results find their place."""
    index, job = indexed
    return index, compute_chunk(job)


class PoolSystem:
    """A spawn pool of ``workers`` processes, one BLAS thread each."""

    def __init__(self, workers: int) -> None:
        began = time.perf_counter()
        self.pool = get_context("spawn").Pool(workers, initializer=one_blas_thread)
        # One sleep per worker: every process is up and initialized before the first timing.
        self.pool.map(time.sleep, [0.2] * workers, chunksize=1)
        self.start_s = time.perf_counter() - began

    def run(self, workload: Workload, folder: Path) -> float:
        jobs = workload.jobs()
        sink = ResultSink(folder, workload)
        began = time.perf_counter()
        for index, done in self.pool.imap_unordered(compute_indexed, enumerate(jobs), chunksize=1):
            sink.store(jobs[index], done)
        sink.finish()
        return time.perf_counter() - began

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


class MemoryWatch:
    """Peaks of another process's memory while a block runs, read from outside it.

    VmHWM (the true peak RSS) is reset on entry by writing 5 to the process's clear_refs.
    A sampler thread here records the peaks of anonymous RSS (heap, buffers, arrays) and
    file-backed RSS (mostly pages of the result memmaps, which the kernel may drop at will),
    so the process measured does no extra work.
    """

    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        self._status = Path(f"/proc/{pid}/status")
        self._clear_refs = Path(f"/proc/{pid}/clear_refs")
        self._interval_s = interval_s
        self._running = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._peaks = {"hwm": 0.0, "anon": 0.0, "file": 0.0}

    def __enter__(self) -> MemoryWatch:
        self._clear_refs.write_text("5")
        self._running.set()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running.clear()
        self._thread.join()
        self._peaks["hwm"] = self._read()["VmHWM"]

    def peaks(self) -> dict[str, float]:
        """MiB: ``hwm`` the peak RSS, ``anon`` and ``file`` the highest samples of each part."""
        return dict(self._peaks)

    def _read(self) -> dict[str, float]:
        values = {}
        for line in self._status.read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmHWM", "RssAnon", "RssFile"):
                values[name] = int(rest.split()[0]) / 1024
        return values

    def _sample(self) -> None:
        while self._running.is_set():
            now = self._read()
            self._peaks["anon"] = max(self._peaks["anon"], now["RssAnon"])
            self._peaks["file"] = max(self._peaks["file"], now["RssFile"])
            time.sleep(self._interval_s)


class WarmChainconsole:
    """A warm front-end with ``nodes`` nodes of one slot, in a child process."""

    def __init__(self, nodes: int, root: Path, replicate: float | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        share = [] if replicate is None else ["--replicate", str(replicate)]
        self.log = root / "frontend.log"
        began = time.perf_counter()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "cluster_frontend.py"), "--nodes", str(nodes),
                 "--state-dir", str(root / "state"), *share],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            )
        ready = self._reply()
        self.start_s = time.perf_counter() - began
        self.pid: int = ready["pid"]
        self.node_pids: list[int] = ready["nodes"]

    def run(self, workload: Workload, kill: bool = False) -> dict:
        """Run one task; the reply holds ``seconds``, ``summary``, ``folder``, ``cpu_s`` and ``memory_mib``."""
        assert self.proc.stdin is not None
        request = {"document": workload.document(), "kill_at": workload.kill_at if kill else None}
        watch = MemoryWatch(self.pid)
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        with watch:
            reply = self._reply()
        reply["memory_mib"] = watch.peaks()
        self.node_pids = reply["nodes"]
        if reply["summary"]["state"] != "done":
            raise RuntimeError(f"chainconsole ended {workload.name} {reply['summary']['state']}: {reply['summary']}")
        return reply

    def _reply(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the warm front-end exited ({self.proc.wait()}); its log ends:\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_cold(workload: Workload, nodes: int, folder: Path) -> float:
    """Time ``chainconsole run TASK.json --local-nodes N -o OUT.npz --json`` end to end."""
    folder.mkdir(parents=True, exist_ok=True)
    task_file = folder / "task.json"
    task_file.write_text(json.dumps(workload.document()))
    command = [sys.executable, "-c", "from console.cli.main import main; main()", "run", str(task_file),
               "--local-nodes", str(nodes), "-o", str(folder / "out.npz"), "--json"]
    # As an installed package runs: with its modules' bytecode cached (some sandboxes turn that off).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"chainconsole run exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return seconds


class DaskSystem:
    """A dask.distributed LocalCluster of ``workers`` processes with one thread each."""

    def __init__(self, workers: int, tls: bool) -> None:
        import cloudpickle
        from distributed import Client, LocalCluster
        from distributed.security import Security

        # Workers cannot import this folder's modules: ship the initializer by value.
        cloudpickle.register_pickle_by_value(cluster_workloads)
        # The scheduler runs in this process; its INFO lines would bury the benchmark's output,
        # and so would the warning that the second cluster's HTTP port is taken by the first.
        logging.getLogger("distributed").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        began = time.perf_counter()
        security = Security.temporary() if tls else None
        self.cluster = LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True,
            protocol="tls://" if tls else "tcp://", security=security,
            dashboard_address=None, silence_logs=logging.ERROR,
        )
        self.client = Client(self.cluster, security=security)
        self.client.run(one_blas_thread)
        self.start_s = time.perf_counter() - began

    def run(self, workload: Workload, folder: Path) -> float:
        from distributed import as_completed

        jobs = workload.jobs()
        sink = ResultSink(folder, workload)
        began = time.perf_counter()
        futures = self.client.map(compute_chunk, jobs, pure=False)
        job_of = {future.key: job for future, job in zip(futures, jobs)}
        # Whatever has finished, gathered in one call. (as_completed(with_results=True) can
        # hang for good: dask/distributed#7331.)
        for batch in as_completed(futures, timeout=RUN_TIMEOUT_S).batches():
            for future, done in zip(batch, self.client.gather(batch)):
                sink.store(job_of[future.key], done)
        sink.finish()
        return time.perf_counter() - began

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


@contextmanager
def profiled(targets: dict[str, tuple[int, bool]], folder: Path, rate: int = 250) -> Iterator[list[Path]]:
    """Sample each named process ``(pid, with its children?)`` with py-spy while the block runs.

    Only threads holding the GIL are sampled (``--gil``): the profile is where Python spends
    CPU, without the idle waits py-spy cannot tell apart here; native code that releases the
    GIL (LAPACK on large matrices, socket writes) does not show. Writes collapsed stacks
    (``NAME.txt``, one line per stack with its sample count), the format speedscope and
    flamegraph.pl read; yields the paths, filled in once the block ends.
    """
    folder.mkdir(parents=True, exist_ok=True)
    outputs = [folder / f"{name}.txt" for name in targets]
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    spies = []
    for (pid, children), out in zip(targets.values(), outputs):
        command = [py_spy, "record", "--pid", str(pid), "--gil", "--rate", str(rate),
                   "--format", "raw", "--output", str(out), *(["--subprocesses"] if children else [])]
        spies.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)  # py-spy needs a moment to attach before the work starts
    try:
        yield outputs
    finally:
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(60)
