"""The jobs table: rows reconciled by launcher and job id, hidden while no launcher reports any."""

from __future__ import annotations

from textual.app import App, ComposeResult

from console.engine.records import JobRow
from console.tui.jobs import JobsTable


class OneTable(App[None]):
    def compose(self) -> ComposeResult:
        yield JobsTable()


async def test_rows_come_change_in_place_and_go() -> None:
    app = OneTable()
    async with app.run_test(size=(100, 20)) as pilot:
        table = app.query_one(JobsTable)
        table.show(())
        await pilot.pause()
        assert not table.display and table.row_count == 0
        table.show((JobRow("slurm", "101", "pending"), JobRow("slurm", "102", "running", "slurm-102")))
        await pilot.pause()
        assert table.display and table.row_count == 2
        table.move_cursor(row=1)
        table.show((JobRow("slurm", "101", "running", "slurm-101"), JobRow("slurm", "102", "draining", "slurm-102")))
        assert [str(c) for c in table.get_row("slurm/101")] == ["slurm", "101", "running", "slurm-101"]
        assert table.cursor_row == 1  # updated in place, not rebuilt
        table.show((JobRow("slurm", "101", "running", "slurm-101"), JobRow("ssh", "node7", "restarting")))
        assert table.row_count == 2 and "Jobs (2 of 2 launchers)" == table.border_title
        table.show(())
        await pilot.pause()
        assert not table.display
