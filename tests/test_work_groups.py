"""A node's work in groups: short chunks share a pool job, large results come back through
shared memory, the window follows chunk length, and every chunk keeps its own identity."""

from __future__ import annotations

import asyncio
import os
import types

import numpy as np
import pytest

from nodes import pool as pool_module
from nodes.pool import SHM_PREFIX, ChunkDone, ChunkError, ChunkJob, WorkerPool, sweep_shared
from nodes.ssh.channel import MessageChannel
from nodes.work import MAX_WINDOW_PER_SLOT, LocalWork
from protocol.frames import FrameDecoder
from protocol.messages import Assign, Credit, Failed, Heartbeat, MessageReader, Result, decode_message
from tests.reference import expected_item

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True, scope="module")
def _resource_tracker_stopped():
    """Worker pools run in this process here, so the tracker multiprocessing starts is ours to stop."""
    yield
    import gc
    import threading
    from concurrent.futures.process import _ExecutorManagerThread
    from multiprocessing import resource_tracker

    # A pool shut down without waiting keeps its queues (and their semaphores) until its
    # manager thread ends; a semaphore freed after the tracker stopped would start a new one.
    for thread in threading.enumerate():
        if isinstance(thread, _ExecutorManagerThread):
            thread.join(60)
    gc.collect()  # the pools' queues and their semaphores go first, then the tracker
    resource_tracker._resource_tracker._stop()


async def closed(pool: WorkerPool) -> None:
    """Close a pool and wait until its workers have exited."""
    pool.shutdown()
    await asyncio.to_thread(pool._executor.shutdown, True)


def document(count: int, n: int, operation: str = "det", seed: int = 5) -> dict:
    return {"name": "t", "operation": operation,
            "inputs": {"a": {"generate": {"count": count, "shape": [n, n], "seed": seed}}}}


def spec(doc: dict) -> dict:
    return {**doc["inputs"]["a"]["generate"], "distribution": "normal", "dtype": "float64"}


def leftovers(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"{SHM_PREFIX}{pid}-")]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
async def test_a_group_computes_each_chunk_and_large_results_come_back_through_shared_memory() -> None:
    small, large = document(40, 8), document(30, 256, "invert")
    jobs = [ChunkJob("det", start, start + 10, "full", {"a": spec(small)}, {}) for start in range(0, 40, 10)]
    # 25 inverses of 256×256: 12.5 MiB, well over the shared-memory threshold.
    jobs.append(ChunkJob("invert", 5, 30, "full", {"a": spec(large)}, {}))
    jobs.append(ChunkJob("no-such-operation", 0, 1, "full", {"a": spec(small)}, {}))
    workers = WorkerPool(1)
    try:
        outcomes = await workers.result(workers.submit(jobs))
    finally:
        await closed(workers)
    assert len(outcomes) == len(jobs)
    for job, done in zip(jobs[:4], outcomes[:4]):
        assert isinstance(done, ChunkDone) and done.ok.all()
        np.testing.assert_allclose(done.result, [expected_item(small, i) for i in range(job.start, job.stop)],
                                   rtol=1e-10)
    shared = outcomes[4]
    assert isinstance(shared, ChunkDone) and shared.result.shape == (25, 256, 256)
    assert not shared.result.flags.writeable  # a read-only mapping of what the worker wrote
    for i in (5, 17, 29):
        np.testing.assert_allclose(shared.result[i - 5], expected_item(large, i), rtol=1e-8)
    assert isinstance(outcomes[5], ChunkError) and "no-such-operation" in outcomes[5].reason
    assert leftovers(os.getpid()) == []  # unlinked as soon as it was mapped


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_shared_results_of_dead_nodes_and_dead_workers_are_swept(tmp_path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    names = [f"{SHM_PREFIX}{dead_pid}-{dead_pid}-0",  # a node that is gone
             f"{SHM_PREFIX}{os.getpid()}-{dead_pid}-1",  # ours, from a worker that is gone
             f"{SHM_PREFIX}{os.getpid()}-{os.getpid()}-2"]  # ours, from a live "worker": kept
    for name in names:
        (pool_module.SHM_DIR / name).write_bytes(b"x")
    try:
        assert sweep_shared(os.getpid()) == 2
        assert [n for n in names if (pool_module.SHM_DIR / n).exists()] == names[2:]
        assert sweep_shared(os.getpid(), everything=True) == 1
    finally:
        for name in names:
            (pool_module.SHM_DIR / name).unlink(missing_ok=True)


async def until(condition, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_window_holds_through_jitter_and_follows_a_real_change() -> None:
    work = LocalWork(types.SimpleNamespace(slots=1), prefetch=1)
    sent: list[object] = []
    work.attach(sent.append)

    def window_after(chunk_s: float) -> int:
        work._chunk_s["t"] = chunk_s  # the task's chunk time, as if measured so all along
        work._resize_window()
        return work.window

    assert window_after(0.0003) == MAX_WINDOW_PER_SLOT  # 20 ms of work would be 66 chunks
    assert window_after(0.0006) == MAX_WINDOW_PER_SLOT  # 33 would do: not worth a credit
    assert window_after(0.0015) == 13  # less than half: down
    assert window_after(0.0014) == 13  # 14 is within an eighth
    assert window_after(0.0003) == MAX_WINDOW_PER_SLOT
    assert [m.window for m in sent if isinstance(m, Credit)] == [MAX_WINDOW_PER_SLOT, 13, MAX_WINDOW_PER_SLOT]


async def test_short_chunks_widen_the_window_and_a_new_task_narrows_it_again() -> None:
    doc = document(2000, 8)
    work = LocalWork(WorkerPool(1), prefetch=1)
    sent: list[object] = []
    work.attach(sent.append)
    await work.start()
    try:
        assert work.window == 2
        for chunk in range(100):
            work.assign(Assign("taskshort", chunk, 1, "det", chunk * 10, chunk * 10 + 10, "full", {"a": spec(doc)}, {}))
        work.assign(Assign("taskshort", 0, 1, "det", 0, 10, "full", {"a": spec(doc)}, {}))  # a repeat: ignored
        await until(lambda: sum(isinstance(m, Result) for m in sent) == 100)
        results = [m for m in sent if isinstance(m, Result)]
        # Every chunk answered once, under its own chunk and attempt, with its own items.
        assert sorted(r.chunk for r in results) == list(range(100)) and {r.attempt for r in results} == {1}
        for r in results[::9]:
            np.testing.assert_allclose(r.result, [expected_item(doc, i) for i in range(r.chunk * 10, r.chunk * 10 + 10)],
                                       rtol=1e-10)
        credits = [m.window for m in sent if isinstance(m, Credit)]
        assert credits and credits[-1] == work.window and 2 < work.window <= MAX_WINDOW_PER_SLOT
        assert work.held == 0
        # A chunk of a task not measured yet: the window drops back before more of it comes.
        slow = document(4, 400, "invert")
        work.assign(Assign("tasklong", 0, 1, "invert", 0, 4, "full", {"a": spec(slow)}, {}))
        assert work.window == 2 and isinstance(sent[-1], Credit) and sent[-1].window == 2
        await until(lambda: any(isinstance(m, Result) and m.task_id == "tasklong" for m in sent))
        assert work.window == 2  # 4 inversions of 400×400 are not short
    finally:
        await work.close()
        await closed(work.executor)


async def test_a_cancelled_queued_chunk_is_never_answered_and_a_lost_upstream_drops_the_queue() -> None:
    doc = document(4000, 8)
    work = LocalWork(WorkerPool(1), prefetch=1)
    sent: list[object] = []
    work.attach(sent.append)
    await work.start()
    try:
        for chunk in range(60):
            work.assign(Assign("taskq", chunk, 2, "det", chunk, chunk + 1, "full", {"a": spec(doc)}, {}))
        work.cancel(("taskq", 59, 2))  # still queued here: only two pool jobs are in flight
        await until(lambda: work.held == 0)
        answered = {m.chunk for m in sent if isinstance(m, Result)}
        assert 59 not in answered and answered == set(range(59))
        for chunk in range(60, 120):
            work.assign(Assign("taskq", chunk, 2, "det", chunk, chunk + 1, "full", {"a": spec(doc)}, {}))
        work.upstream_lost()
        await until(lambda: work.held == 0)
        later = {m.chunk for m in sent if isinstance(m, Result)} - answered
        assert len(later) < 60  # what had not started was dropped; what had, finished
    finally:
        await work.close()
        await closed(work.executor)


async def test_a_kernel_error_fails_its_chunk_alone() -> None:
    doc = document(20, 8)
    work = LocalWork(WorkerPool(1))
    sent: list[object] = []
    work.attach(sent.append)
    await work.start()
    try:
        work.assign(Assign("taske", 0, 1, "det", 0, 10, "full", {"a": spec(doc)}, {}))
        work.assign(Assign("taske", 1, 1, "bogus", 10, 20, "full", {"a": spec(doc)}, {}))
        await until(lambda: work.held == 0)
        by_chunk = {m.chunk: m for m in sent if isinstance(m, (Result, Failed))}
        assert isinstance(by_chunk[0], Result) and by_chunk[0].ok.all()
        assert isinstance(by_chunk[1], Failed) and "bogus" in by_chunk[1].reason and by_chunk[1].retryable
    finally:
        await work.close()
        await closed(work.executor)


class RecordingWriter:
    """The writing end of a channel, keeping each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data) -> None:
        self.writes.append(bytes(data))


async def test_messages_sent_in_one_loop_turn_go_out_in_one_write_in_order() -> None:
    writer = RecordingWriter()
    ended: list[str] = []
    channel = MessageChannel(None, writer, ended.append)  # type: ignore[arg-type]
    for n in range(50):
        channel.send(Heartbeat(float(n), n))
    assert writer.writes == []  # nothing yet: written when this turn of the loop ends
    await asyncio.sleep(0)
    assert len(writer.writes) == 1
    reader = MessageReader()
    reader.feed(writer.writes[0])
    assert [reader.next_message().in_flight for _ in range(50)] == list(range(50))
    channel.send(Heartbeat(1.0, 99))
    channel.close("done")  # close writes what is queued first
    assert len(writer.writes) == 2 and ended == ["done"]
    assert decode_message(_only_frame(writer.writes[1])).in_flight == 99
    assert channel.send(Heartbeat(2.0, 1)) is False


def _only_frame(data: bytes):
    decoder = FrameDecoder()
    decoder.feed(data)
    return decoder.next_frame()
