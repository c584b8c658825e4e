"""The writer: results durable before the journal lists them, failures reported, order kept."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from console.engine.journal import Journal
from console.engine.results import ResultStore
from console.engine.writer import StoreJob, Writer

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def parts(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    store = ResultStore(tmp_path / "t1", count=100, item_shape=(3,), dtype=np.dtype(np.float64), return_mode="full")
    reports: list[tuple[str, str]] = []
    writer = Writer(journal, lambda task_id, message: reports.append((task_id, message)))
    writer.start()
    yield journal, store, writer, reports
    await writer.close()
    store.close()
    journal.close()


def _job(store: ResultStore, start: int, stop: int, **kw) -> StoreJob:
    values = np.arange((stop - start) * 3, dtype=np.float64).reshape(stop - start, 3) + start
    return StoreJob("t1", store, start, stop, "n1", stop - start, np.ones(stop - start, bool), values, **kw)


async def test_ranges_are_fsynced_before_the_journal_lists_them(parts, monkeypatch) -> None:
    journal, store, writer, _ = parts
    happened: list[str] = []
    flush, chunks_stored = store.flush, journal.chunks_stored
    monkeypatch.setattr(store, "flush", lambda: (happened.append("fsync"), flush())[1])
    monkeypatch.setattr(journal, "chunks_stored", lambda rows: (happened.append(f"journal {len(rows)}"),
                                                                chunks_stored(rows))[1])
    for start in range(0, 100, 10):
        writer.store(_job(store, start, start + 10))
    await writer.call(lambda: None)  # after every range queued before it
    assert [c.start for c in journal.chunks("t1")] == list(range(0, 100, 10))
    assert happened and all(happened[i] == "fsync" and happened[i + 1].startswith("journal")
                            for i in range(0, len(happened), 2)), happened
    on_disk = np.load(store.folder / "result.npy")
    assert np.array_equal(on_disk[:, 0], np.arange(100) * 3 - np.repeat(np.arange(0, 100, 10), 10) * 2)


async def test_a_range_that_cannot_be_made_durable_is_not_journaled_and_fails(parts, monkeypatch) -> None:
    journal, store, writer, _ = parts
    failures: list[Exception] = []

    def full_disk() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "flush", full_disk)
    writer.store(_job(store, 0, 10, on_error=failures.append))
    await writer.call(lambda: None)
    assert journal.chunks("t1") == []
    assert len(failures) == 1 and "No space left" in str(failures[0])


async def test_a_failing_job_is_reported_with_its_task_and_the_next_ones_still_run(parts) -> None:
    journal, store, writer, reports = parts

    def broken() -> None:
        raise RuntimeError("boom")

    writer.post(broken, task_id="t7")
    writer.store(_job(store, 0, 10))
    with pytest.raises(ZeroDivisionError):
        await writer.call(lambda: 1 / 0)
    assert await writer.call(lambda: "still here") == "still here"
    assert [c.start for c in journal.chunks("t1")] == [0]
    assert len(reports) == 1 and reports[0][0] == "t7" and "boom" in reports[0][1]


async def test_a_full_backlog_holds_the_caller_until_the_writer_catches_up(tmp_path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    store = ResultStore(tmp_path / "t1", count=100, item_shape=(3,), dtype=np.dtype(np.float64), return_mode="full")
    writer = Writer(journal, lambda *_: None, max_backlog_ranges=2)
    gate = asyncio.Event()
    writer.start()
    try:
        loop = asyncio.get_running_loop()
        writer.post(lambda: asyncio.run_coroutine_threadsafe(gate.wait(), loop).result())  # the writer is busy
        for start in range(0, 30, 10):
            writer.store(_job(store, start, start + 10))
        waiting = asyncio.ensure_future(writer.drained())
        await asyncio.sleep(0)
        assert not waiting.done()
        gate.set()
        await asyncio.wait_for(waiting, 10)
    finally:
        await writer.close()
        store.close()
        journal.close()
