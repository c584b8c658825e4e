"""Bounded memory: finished tasks leave the Dispatcher, and views cost what live tasks cost."""

from __future__ import annotations


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
    # The rows of every task take one snapshot of the one live task; one task's row takes none.
    snapshots = []
    real_snapshot = dispatcher.snapshot
    dispatcher.snapshot = lambda now: snapshots.append(now) or real_snapshot(now)
    try:
        rows = frontend.task_rows()
        assert len(rows) == 10_061 and len(snapshots) == 1
        row = frontend.task_row(live)
        assert row is not None and row.state == "queued" and row.items == 4
        assert frontend.task_row(ids[0]).state == "cancelled" and frontend.task_row("old9").state == "done"
        assert len(snapshots) == 1
    finally:
        dispatcher.snapshot = real_snapshot
