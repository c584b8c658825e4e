"""Bounded memory: finished tasks leave the Dispatcher, and views cost what live tasks cost."""

from __future__ import annotations

import time

from console.engine.host import Host
from console.engine.records import TaskRecord
from protocol.taskfile import parse_task

TINY = {"name": "tiny", "operation": "det",
        "inputs": {"a": {"generate": {"count": 4, "shape": [3, 3], "seed": 1}}}}


async def test_finished_tasks_leave_the_dispatcher_and_views_do_not_grow_with_them(host: Host) -> None:
    frontend = host.frontend
    assert frontend is not None
    dispatcher = frontend.hub.dispatcher
    ids = [await frontend.submit(parse_task(TINY), "operator") for _ in range(60)]
    live = await frontend.submit(parse_task(TINY), "someone")
    assert len(dispatcher.snapshot(frontend.now()).tasks) == 61
    for task_id in ids:
        frontend.cancel(task_id)
    for task_id in ids:
        await frontend.wait(task_id)
    # What the Dispatcher holds (and every snapshot walks) is the one live task, not the 60 finished.
    assert [v.task_id for v in dispatcher.snapshot(frontend.now()).tasks] == [live]
    assert frontend.chunk_map(ids[0]) is None and frontend.chunk_map(live) is not None
    rows = {r.task_id: r for r in frontend.task_rows()}
    assert len(rows) == 61 and rows[ids[0]].state == "cancelled" and rows[live].state == "queued"

    # 10,000 more finished tasks, as a long-running front-end resumes them from its journal: the
    # Dispatcher's snapshot is unchanged and the rows cost stays small.
    summary = {"state": "done", "ok_items": 4, "failed_items": 0, "wall_s": 0.1, "items_per_node": {}}
    for i in range(10_000):
        record = TaskRecord(f"old{i}", "old", "operator", 4, "det", "full", 0.0, state="done",
                            finished_at=1.0, summary={**summary, "task_id": f"old{i}"})
        record.finished.set()
        frontend.tasks[record.task_id] = record
    assert [v.task_id for v in dispatcher.snapshot(frontend.now()).tasks] == [live]
    start = time.perf_counter()
    snapshot = dispatcher.snapshot(frontend.now())
    snapshot_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = frontend.task_rows()
    rows_s = time.perf_counter() - start
    assert len(rows) == 10_061 and len(snapshot.tasks) == 1
    assert snapshot_s < 0.005, f"a snapshot of one live task took {snapshot_s * 1000:.1f} ms"
    assert rows_s < 0.5, f"10,061 task rows took {rows_s * 1000:.0f} ms"
    # What a `watch` or `submit` session polls twice a second costs one task, not 10,061.
    start = time.perf_counter()
    row = frontend.task_row(live)
    row_s = time.perf_counter() - start
    assert row is not None and row.state == "queued" and row.items == 4
    assert frontend.task_row(ids[0]).state == "cancelled" and frontend.task_row("old9").state == "done"
    assert row_s < 0.005, f"one task's row took {row_s * 1000:.1f} ms"
