"""The operator console: a Textual app hosting the front-end in its own event loop.

The App starts the Host (front-end, SSH server, local nodes) when it mounts and stops
it when it quits. It reads one snapshot of the front-end per refresh tick and pushes it
into the screens; keys call the front-end API and refresh at once, so an operator sees
the effect of a key without waiting for the next tick. Every key is declared once in
``KEY_ACTIONS``: the bindings, the footer, the help screen and the command palette are
all made from it, and ``check_action`` dims what cannot apply to the current selection.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

import asyncssh
from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable
from textual_fspicker import FileOpen, FileSave, Filters

from console.tui import formatting as fmt
from console.engine.eventlog import EventLog, open_event_log
from console.engine.frontend import FrontEndError
from console.engine.records import Event, NodeRow, TaskRow
from console.engine.host import Host, on_stop_signals
from console.engine.keys import KeyError_, fingerprint
from console.ssh.server import ServerSettings
from console.engine.statedir import StateDir
from console.tui.detail import TaskDetailScreen
from console.tui.keys import PendingKeysModal
from console.tui.main import MainScreen
from console.tui.modals import ConfirmModal, HelpModal, ProblemsModal
from console.tui.snapshot import EMPTY, take_detail, take_snapshot
from console.tui.status import HostIdentity, ThroughputMeter
from console.tui.tables import CONNECTED_NODE_STATES, FINISHED_TASK_STATES, LIVE_TASK_STATES
from protocol.errors import ChainconsoleError, ExitStatus, TaskFileError
from protocol.taskfile import DEFAULT_LIMITS, TaskLimits, load_task_file

DEFAULT_LISTEN = ("127.0.0.1", 8022)
DEFAULT_REFRESH_S = 0.4
"""How often the screens re-read the front-end: every 250-500 ms is live enough and cheap."""
OWNER = "operator"
"""Who the console's submissions belong to: the operator, like the operator key's tasks."""
MASK = "•••"
DRAINABLE_NODE_STATES = frozenset({"idle", "busy"})
PALETTE_SLURM_JOBS = (1, 4, 16)
"""The Slurm launchers the command palette offers: at most this many jobs."""

TASK_FILES = Filters(
    ("Task files (*.json)", lambda p: p.suffix.lower() == ".json"),
    ("All files", lambda p: True),
)
RESULT_FILES = Filters(
    ("NumPy archives (*.npz)", lambda p: p.suffix.lower() == ".npz"),
    ("All files", lambda p: True),
)


@dataclass(frozen=True)
class KeyAction:
    """One console key: the action it runs, its footer label and what the help says."""

    key: str
    action: str
    label: str
    help: str
    key_display: str | None = None


KEY_ACTIONS = (
    KeyAction("s", "submit", "Submit", "submit a task file picked from disk"),
    KeyAction("d", "drain", "Drain", "drain the selected node: it finishes what it holds, then leaves"),
    KeyAction("k", "kick", "Kick", "kick the selected node now; its chunks go back to the queue (asks first)"),
    KeyAction("u", "release", "Release", "release the selected quarantined node: it gets work again"),
    KeyAction("c", "cancel_task", "Cancel", "cancel the selected task (asks first)"),
    KeyAction("x", "delete_task", "Delete", "delete the selected finished task: its files and journal rows (asks first)"),
    KeyAction("r", "save_results", "Results", "save the selected finished task's results as an .npz file"),
    KeyAction("a", "approve", "Approve", "approve a node key that was refused and waits for approval"),
    KeyAction("slash", "filter", "Filter", "filter the nodes and tasks rows by any text they show", "/"),
    KeyAction("question_mark", "help", "Help", "show this list of keys", "?"),
    KeyAction("q", "quit", "Quit", "quit; asks first while tasks run; the front-end stops cleanly"),
)
OTHER_KEYS = (
    ("enter", "open the selected task: its chunk map and each node's share"),
    ("escape", "back from a task's screen; clear the filter"),
    ("tab, shift+tab", "move between the nodes and the tasks table"),
    ("↑ ↓ pgup pgdn home end", "move the selection"),
    ("ctrl+p", "command palette: every action by name"),
)
CONSOLE_ACTIONS = frozenset(a.action for a in KEY_ACTIONS) | {"open_task"}


class ConsoleApp(App[None]):
    """The operator console around one Host."""

    TITLE = "chainconsole"
    BINDINGS = [Binding(a.key, a.action, a.label, key_display=a.key_display) for a in KEY_ACTIONS]

    def __init__(self, host: Host, *, live: bool = True, refresh_s: float = DEFAULT_REFRESH_S,
                 handle_signals: bool = False) -> None:
        """``live=False`` is for snapshots: no refresh timer, and the address, host key and
        uptime are masked, so the same state always draws the same picture.
        ``handle_signals`` makes SIGINT, SIGTERM and SIGHUP quit cleanly (the console
        command; tests leave the process's signals alone)."""
        super().__init__()
        self.host = host
        self.live = live
        self.handle_signals = handle_signals
        self.refresh_s = refresh_s
        self.snapshot = EMPTY
        self.identity = HostIdentity("starting…", MASK)
        self.meter = ThroughputMeter()
        self.main = MainScreen()
        self._new_events: collections.deque[Event] = collections.deque(maxlen=1000)
        self._host_running = False
        self._stopped = False
        self._log_file: IO[str] | None = None
        self._binding_state: tuple = ()

    def get_default_screen(self) -> Screen:
        return self.main

    # -- the host's life ----------------------------------------------------------------------

    async def on_mount(self) -> None:
        settings = self.host.settings
        if self.handle_signals:
            on_stop_signals(self._on_stop_signal)
        try:
            address = await self.host.start()
        except ChainconsoleError as exc:  # the state folder is in use or damaged
            await self._stop_host()
            self.exit(return_code=getattr(exc, "status", ExitStatus.CONNECT), message=f"chainconsole: {exc}")
            return
        except OSError as exc:
            await self._stop_host()
            self.exit(return_code=ExitStatus.CONNECT,
                      message=f"chainconsole: cannot listen on {settings.host}:{settings.port}: "
                              f"{exc.strerror or exc}")
            return
        self._host_running = True
        self.identity = self._identify(address)
        frontend = self.host.frontend
        assert frontend is not None
        self._new_events.extend(frontend.events)
        # Events are only buffered here; the log is written on the next refresh, so a
        # burst of events costs one redraw, not one per event.
        frontend.on_event(self._new_events.append)
        if self.live:
            self._log_file = open_event_log(self.host.state)
            log = EventLog(self._log_file)
            for event in list(frontend.events):
                log(event)
            frontend.on_event(log)
        self.refresh_views()
        if self.live:
            self.set_interval(self.refresh_s, self.refresh_views, name="refresh")

    def _identify(self, address: tuple[str, int]) -> HostIdentity:
        if not self.live:
            return HostIdentity(f"{address[0]}:{MASK}", f"SHA256:{MASK}")
        key = asyncssh.read_private_key(self.host.state.host_key)
        return HostIdentity(f"{address[0]}:{address[1]}", fingerprint(key))

    async def _stop_host(self) -> None:
        """Stop the front-end once, whichever way the console ends."""
        if self._stopped:
            return
        self._stopped = True
        self._host_running = False
        await self.host.stop()
        if self._log_file is not None:
            self._log_file.close()

    async def on_unmount(self) -> None:
        await self._stop_host()

    def _on_stop_signal(self, sig) -> None:
        self.exit(return_code=128 + sig, message=f"chainconsole: stopped by {sig.name}")

    # -- reading the front-end ----------------------------------------------------------------

    def on_main_screen_ready(self, message: MainScreen.Ready) -> None:
        self.refresh_views()

    def refresh_views(self) -> None:
        """Read the front-end once and bring every visible screen up to date."""
        # Textual clears ``_running`` first thing when it shuts down, before it removes the
        # screens' widgets; a refresh timer firing in between would find them gone.
        if not (self._running and self._host_running and self.main.ready):
            return
        self.snapshot = take_snapshot(self.host)
        now = time.monotonic()
        self.meter.observe(now, sum(t.items_done for t in self.snapshot.tasks))
        # Under a task's screen the main screen is hidden (dialogs only dim it): skip redrawing
        # it — 200 node rows cost more than the rest of a refresh — until it shows again.
        if all(screen.is_modal for screen in self.screen_stack[1:]):
            events = list(self._new_events)
            self._new_events.clear()
            self.main.add_events(events)
            self.main.show(self.snapshot, self.identity, self._uptime(), self.meter.current(now),
                           self.meter.series(now))
        screen = self.screen
        if isinstance(screen, TaskDetailScreen):
            self._show_detail(screen)
        self._refresh_bindings_if_changed()

    def on_task_detail_screen_ready(self, message: TaskDetailScreen.Ready) -> None:
        # The screen may already be gone (popped, or the console quitting) when this arrives.
        stack = self.screen_stack
        if stack and isinstance(stack[-1], TaskDetailScreen):
            self._show_detail(stack[-1])

    def _show_detail(self, screen: TaskDetailScreen) -> None:
        if not (self._host_running and screen.ready):
            return
        detail = take_detail(self.host, screen.task_id)
        screen.show(self.snapshot.tasks_by_id.get(screen.task_id), detail.chunks, detail.shares)

    def _uptime(self) -> str:
        frontend = self.host.frontend
        if not self.live or frontend is None:
            return MASK
        return fmt.clock(time.time() - frontend.started_at)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        # The selection decides which keys apply; the footer is rebuilt only when that changes,
        # not on every cursor move (a rebuild costs more than the move itself).
        self._refresh_bindings_if_changed()

    def _refresh_bindings_if_changed(self) -> None:
        screen = self.screen
        state = (id(screen), *(self.applies(action, screen) for action in sorted(CONSOLE_ACTIONS)))
        if state != self._binding_state:
            self._binding_state = state
            self.refresh_bindings()

    # -- what the keys apply to ---------------------------------------------------------------

    def selected_node(self, screen: Screen | None = None) -> NodeRow | None:
        screen = screen or self.screen
        if isinstance(screen, (MainScreen, TaskDetailScreen)):
            node_id = screen.selected_node_id
            return self.snapshot.nodes_by_id.get(node_id) if node_id else None
        return None

    def selected_task(self, screen: Screen | None = None) -> TaskRow | None:
        screen = screen or self.screen
        if isinstance(screen, MainScreen):
            task_id = screen.selected_task_id
        elif isinstance(screen, TaskDetailScreen):
            task_id = screen.task_id
        else:
            return None
        return self.snapshot.tasks_by_id.get(task_id) if task_id else None

    def applies(self, action: str, screen: Screen) -> bool:
        """Whether ``action`` can do anything on ``screen`` with its current selection."""
        if not self._host_running:
            return action in ("help", "quit")
        node, task = self.selected_node(screen), self.selected_task(screen)
        match action:
            case "submit" | "filter":
                return isinstance(screen, MainScreen)
            case "open_task":
                return isinstance(screen, MainScreen) and task is not None
            case "drain":
                return node is not None and node.state in DRAINABLE_NODE_STATES
            case "kick":
                return node is not None and node.state in CONNECTED_NODE_STATES
            case "release":
                return node is not None and node.state == "quarantined"
            case "cancel_task":
                return task is not None and task.state in LIVE_TASK_STATES
            case "save_results" | "delete_task":
                return task is not None and task.state in FINISHED_TASK_STATES
            case "approve":
                return self.snapshot.pending_keys > 0
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action not in CONSOLE_ACTIONS:
            return True
        # None keeps the key in the footer, dimmed: the operator sees it exists.
        return True if self.applies(action, self.screen) else None

    # -- the command palette ------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        node, task = self.selected_node(screen), self.selected_task(screen)
        node_name = node.node_id if node else ""
        task_name = f"{task.task_id} ({task.name})" if task else ""
        titles = {
            "submit": "Submit a task file",
            "drain": f"Drain node {node_name}",
            "kick": f"Kick node {node_name}",
            "release": f"Release node {node_name} from quarantine",
            "cancel_task": f"Cancel task {task_name}",
            "save_results": f"Save results of task {task_name}",
            "delete_task": f"Delete task {task_name}",
            "approve": "Approve a pending node key",
            "filter": "Filter rows",
            "help": "Help: console keys",
            "open_task": f"Open task {task_name}",
        }
        helps = {a.action: a.help for a in KEY_ACTIONS} | {"open_task": OTHER_KEYS[0][1]}
        for action, title in titles.items():
            if self.applies(action, screen):
                yield SystemCommand(title, helps[action].capitalize(), partial(self.run_action, action))
        if self._host_running:
            yield from self._launcher_commands()

    def _launcher_commands(self) -> Iterable[SystemCommand]:
        """Start a Slurm launcher, or stop a running one (``--launch`` from the palette)."""
        running = self.host.running_launchers()
        if "slurm" not in running:
            for jobs in PALETTE_SLURM_JOBS:
                yield SystemCommand(f"Launch Slurm jobs: up to {jobs}",
                                    f"keep up to {jobs} Slurm jobs running nodes while work waits (sbatch)",
                                    partial(self._launch, f"slurm:{jobs}"))
        for name in running:
            yield SystemCommand(f"Stop launcher {name}", "drain its nodes, end its jobs, withdraw its key",
                                partial(self.host.stop_launcher, name))

    def _launch(self, spec: str) -> None:
        try:
            self.host.add_launcher(spec)
        except ChainconsoleError as exc:
            self.notify(str(exc), title="Cannot launch", severity="error")

    # -- actions ------------------------------------------------------------------------------

    def _call(self, what: str, call: partial) -> bool:
        """Call the front-end; a request it refuses becomes a notification, not a crash."""
        try:
            call()
        except (FrontEndError, KeyError_) as exc:
            self.notify(str(exc), title=f"Cannot {what}", severity="error")
            return False
        finally:
            self.refresh_views()
        return True

    def action_submit(self) -> None:
        self._submit()

    @work(group="dialogs")
    async def _submit(self) -> None:
        path = await self.push_screen_wait(FileOpen(Path.cwd(), "Submit a task file", filters=TASK_FILES))
        frontend = self.host.frontend
        if path is None or frontend is None or not self._host_running:
            return
        try:
            # The same size limits as tasks submitted over SSH to this front-end.
            task = await asyncio.to_thread(load_task_file, path, limits=frontend.limits)
        except TaskFileError as exc:
            await self.push_screen_wait(ProblemsModal(path.name, exc.problems))
            return
        except (OSError, ChainconsoleError) as exc:
            self.notify(str(exc), title=f"Cannot read {path.name}", severity="error")
            return
        task_id = await frontend.submit(task, OWNER)
        self.refresh_views()
        self.main.select_task(task_id)
        self.notify(f"{task.name}: {task.operation} × {task.count:,} submitted as {task_id}")

    def action_drain(self) -> None:
        node = self.selected_node()
        frontend = self.host.frontend
        if node is None or frontend is None:
            return
        if self._call("drain", partial(frontend.drain, node.node_id, by="the console")):
            self.notify(f"{node.node_id} is draining: it finishes what it holds, then leaves")

    def action_release(self) -> None:
        node = self.selected_node()
        frontend = self.host.frontend
        if node is None or frontend is None:
            return
        if self._call("release", partial(frontend.release, node.node_id, by="the console")):
            self.notify(f"{node.node_id} released from quarantine: it gets work again")

    def action_kick(self) -> None:
        node = self.selected_node()
        if node is not None:
            self._kick(node)

    @work(group="dialogs")
    async def _kick(self, node: NodeRow) -> None:
        via = f" via {fmt.chain(node.via)}" if node.via else ""
        question = (f"Kick node {node.node_id} at {node.address}{via}?\n\n"
                    f"Its session closes now and its {node.in_flight} chunks in flight go back to the queue.")
        if not await self.push_screen_wait(ConfirmModal(f"Kick {node.node_id}", question, "Kick")):
            return
        frontend = self.host.frontend
        if frontend is not None and self._call("kick", partial(frontend.kick, node.node_id, by="the console")):
            self.notify(f"{node.node_id} kicked")

    def action_cancel_task(self) -> None:
        task = self.selected_task()
        if task is not None:
            self._cancel(task)

    @work(group="dialogs")
    async def _cancel(self, task: TaskRow) -> None:
        question = (f"Cancel task {task.task_id} ({task.name}, owner {task.owner})?\n\n"
                    f"{task.items_done:,} of {task.items:,} items are done; the rest will not be computed.")
        if not await self.push_screen_wait(ConfirmModal(f"Cancel {task.task_id}", question, "Cancel task")):
            return
        frontend = self.host.frontend
        if frontend is not None and self._call("cancel", partial(frontend.cancel, task.task_id, by="the console")):
            self.notify(f"{task.task_id} ({task.name}) cancelled")

    def action_delete_task(self) -> None:
        task = self.selected_task()
        if task is not None:
            self._delete(task)

    @work(group="dialogs")
    async def _delete(self, task: TaskRow) -> None:
        question = (f"Delete task {task.task_id} ({task.name}, owner {task.owner}, {task.state})?\n\n"
                    "Its results and inputs are removed from disk and it leaves the journal; "
                    "this cannot be undone.")
        if not await self.push_screen_wait(ConfirmModal(f"Delete {task.task_id}", question, "Delete task")):
            return
        frontend = self.host.frontend
        if frontend is None:
            return
        try:
            await frontend.delete(task.task_id)
        except FrontEndError as exc:
            self.notify(str(exc), title="Cannot delete", severity="error")
        else:
            self.notify(f"{task.task_id} ({task.name}) deleted")
        finally:
            self.refresh_views()

    def action_save_results(self) -> None:
        task = self.selected_task()
        if task is not None:
            self._save_results(task)

    @work(group="dialogs")
    async def _save_results(self, task: TaskRow) -> None:
        dialog = FileSave(Path.cwd(), f"Save results of {task.task_id} ({task.name})",
                          filters=RESULT_FILES, default_file=f"{task.name}-{task.task_id}.npz")
        target = await self.push_screen_wait(dialog)
        frontend = self.host.frontend
        if target is None or frontend is None:
            return
        try:
            # Building the .npz the first time reads every result from disk: not on the loop.
            source = await asyncio.to_thread(frontend.result_file, task.task_id)
            await asyncio.to_thread(shutil.copyfile, source, target)
        except FrontEndError as exc:
            self.notify(str(exc), title="No results to save", severity="error")
            return
        except OSError as exc:
            self.notify(f"{target}: {exc.strerror or exc}", title="Cannot save", severity="error")
            return
        self.notify(f"Results of {task.task_id} saved to {target}")

    def action_approve(self) -> None:
        self._approve()

    @work(group="dialogs")
    async def _approve(self) -> None:
        frontend = self.host.frontend
        if frontend is None:
            return
        chosen = await self.push_screen_wait(PendingKeysModal(frontend.pending_keys(), time.time()))
        if chosen is None:
            return
        if self._call("approve", partial(frontend.approve_key, chosen)):
            self.notify(f"Node key {chosen} approved: the node gets in on its next try")

    def action_filter(self) -> None:
        self.main.open_filter()

    def action_help(self) -> None:
        keys = [(a.key_display or a.key, a.help) for a in KEY_ACTIONS] + list(OTHER_KEYS)
        self.push_screen(HelpModal(keys))

    def action_open_task(self) -> None:
        task = self.selected_task()
        if task is None:
            return
        self.push_screen(TaskDetailScreen(task.task_id))

    async def action_quit(self) -> None:
        self._quit()

    @work(group="dialogs")
    async def _quit(self) -> None:
        live = [t for t in self.snapshot.tasks if t.state in LIVE_TASK_STATES]
        if live:
            question = (f"{len(live)} task{'s are' if len(live) > 1 else ' is'} still running or queued "
                        f"({', '.join(t.task_id for t in live[:5])}{', …' if len(live) > 5 else ''}).\n\n"
                        "Quitting stops the front-end and its local nodes; the tasks resume from "
                        "their finished chunks when the console starts again on this state directory.")
            if not await self.push_screen_wait(ConfirmModal("Quit chainconsole", question, "Quit")):
                return
        self.notify("Stopping the front-end…", timeout=30)
        await self._stop_host()
        self.exit(return_code=ExitStatus.OK)


def run_console(state: StateDir, listen: tuple[str, int] | None, local_nodes: int, *,
                limits: TaskLimits = DEFAULT_LIMITS, metrics: tuple[str, int] | None = None,
                launch: tuple[str, ...] = ()) -> int:
    """Run the console until the operator quits; return the process exit status."""
    host, port = listen or DEFAULT_LISTEN
    app = ConsoleApp(Host(state, ServerSettings(host=host, port=port), local_nodes, {"limits": limits},
                          metrics=metrics, launch=launch), handle_signals=True)
    app.run()
    return app.return_code or ExitStatus.OK
