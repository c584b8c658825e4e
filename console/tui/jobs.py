"""The launchers' jobs beside the nodes: one small table, shown only while a launcher reports some.

Rows are keyed by launcher and job id and reconciled like the other tables (add, update
the changed cells, remove) — never rebuilt. A job's node is the name it goes by in the
nodes table, so an operator finds one from the other.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from console.engine.records import JobRow

JOB_STATE_STYLE = {
    "pending": "dim",
    "starting": "cyan",
    "connecting": "cyan",
    "running": "green",
    "draining": "yellow",
    "ending": "dim yellow",
    "restarting": "red",
    "stopped": "dim",
}
COLUMNS = (("launcher", "Launcher", 12), ("job", "Job / host", 22), ("state", "State", 11), ("node", "Node", 28))


class JobsTable(DataTable):
    """Each launcher's jobs (or hosts) and their states; hidden while there are none.

    It takes no focus: tab still moves between the nodes and the tasks, whose rows the keys act on.
    """

    can_focus = False

    DEFAULT_CSS = """
    JobsTable {
        height: auto;
        max-height: 8;
        display: none;
        border: round $primary 60%;
        border-title-style: bold;
    }
    JobsTable.-some {
        display: block;
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._shown: dict[str, tuple[str, ...]] = {}
        self.border_title = "Jobs"

    def on_mount(self) -> None:
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)

    def show(self, jobs: tuple[JobRow, ...]) -> None:
        wanted = {f"{job.launcher}/{job.job_id}": (job.launcher, job.job_id, job.state, job.node) for job in jobs}
        for key in [k for k in self._shown if k not in wanted]:
            self.remove_row(key)
            del self._shown[key]
        for key, values in wanted.items():
            old = self._shown.get(key)
            if old is None:
                self.add_row(*self._cells(values), key=key)
            else:
                for (column, _, _), before, now, cell in zip(COLUMNS, old, values, self._cells(values)):
                    if before != now:
                        self.update_cell(key, column, cell)
            self._shown[key] = values
        self.set_class(bool(wanted), "-some")
        launchers = len({job.launcher for job in jobs})
        self.border_title = f"Jobs ({len(wanted)} of {launchers} launcher{'s' if launchers != 1 else ''})"

    @staticmethod
    def _cells(values: tuple[str, ...]) -> list[Text]:
        launcher, job_id, state, node = values
        return [Text(launcher), Text(job_id), Text(state, style=JOB_STATE_STYLE.get(state, "")), Text(node)]
