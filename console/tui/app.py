"""The operator console: a Textual app around one front-end, hosted here or attached.

The App starts its ``ConsoleSource`` when it mounts — the Host (front-end, SSH server,
local nodes) in its own event loop, or an SSH attachment to a running one — and stops
it when it quits. It reads one snapshot of the front-end per refresh tick and pushes it
into the screens; keys call the source's actions and refresh at once, so an operator sees
the effect of a key without waiting for the next tick. Every key is declared once in
``KEY_ACTIONS``: the bindings, the footer, the help screen and the command palette are
all made from it, and ``check_action`` dims what cannot apply to the current selection.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable
from textual_fspicker import FileSave, Filters

from console.tui import formatting as fmt
from console.tui.collector import QuietCollector
from console.engine.eventlog import format_event
from console.engine.frontend import FrontEndError
from console.engine.records import Event, NodeRow, TaskRow
from console.engine.host import Host, on_stop_signals
from console.engine.keys import KeyError_
from console.ssh.server import ServerSettings
from console.engine.statedir import StateDir
from console.tui.detail import TaskDetailScreen
from console.tui.node_detail import NodeDetailScreen
from console.tui.picker import TaskFileOpen
from console.tui.keys import PendingKeysModal
from console.tui.main import MainScreen
from console.tui.modals import ConfirmModal, HelpModal, ProblemsModal
from console.tui.snapshot import EMPTY
from console.tui.source import OWNER, ConsoleSource, HostedFrontEnd, Identity
from console.tui.status import HostIdentity, ThroughputMeter
from console.tui.tables import CONNECTED_NODE_STATES, FINISHED_TASK_STATES, LIVE_TASK_STATES
from protocol.errors import ChainconsoleError, ExitStatus, TaskFileError
from protocol.replication import DEFAULT_REPLICA_RATE
from protocol.taskfile import DEFAULT_LIMITS, TaskLimits, load_task_file

DEFAULT_LISTEN = ("127.0.0.1", 8022)
DEFAULT_REFRESH_S = 0.4
"""How often the screens re-read the front-end: every 250-500 ms is live enough and cheap."""
__all__ = ["OWNER", "ConsoleApp", "KEY_ACTIONS", "run_console"]
MASK = "•••"
DRAINABLE_NODE_STATES = frozenset({"idle", "busy"})
WORKING_NODE_STATES = DRAINABLE_NODE_STATES
"""Nodes that take new work: when none is left, live tasks stall."""
DEPARTED_NODE_STATES = frozenset({"left", "drained", "kicked", "lost"})
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
    show: bool = True
    """In the footer (when it fits); every key is in the help and the palette either way."""


KEY_ACTIONS = (
    KeyAction("s", "submit", "Submit", "submit a task file picked from disk"),
    KeyAction("d", "drain", "Drain", "drain the selected node: it finishes what it holds, then leaves"),
    KeyAction("k", "kick", "Kick", "kick the selected node now; its chunks go back to the queue (asks first)"),
    KeyAction("u", "release", "Release", "release the selected quarantined node: it gets work again"),
    KeyAction("plus", "add_node", "Add node", "start one more local node on this machine", "+"),
    KeyAction("minus", "remove_node", "Remove node",
              "remove a local node (the selected one, else the newest): it finishes what it holds, then leaves", "-"),
    KeyAction("t", "restart_node", "Restart", "start the selected local node again after it was drained, kicked or lost"),
    KeyAction("c", "cancel_task", "Cancel", "cancel the selected task (asks first)"),
    KeyAction("x", "delete_task", "Delete", "delete the selected finished task: its files and journal rows (asks first)"),
    KeyAction("r", "save_results", "Results", "save the selected finished task's results as an .npz file"),
    KeyAction("a", "approve", "Approve", "approve a node key that was refused and waits for approval"),
    KeyAction("space", "mark", "Mark", "mark or unmark the selected node: drain and kick then apply to every marked node",
              "space"),
    KeyAction("o", "sort", "Sort", "sort the focused table by its next column (a click on a header sorts by it)"),
    KeyAction("O", "reverse_sort", "Reverse", "turn the focused table's sort order round", "O", show=False),
    KeyAction("slash", "filter", "Filter", "filter the nodes, tasks and events by any text they show", "/"),
    KeyAction("e", "export_events", "Export", "save the events shown (the filter applies) to a text file",
              show=False),
    KeyAction("question_mark", "help", "Help", "show this list of keys", "?"),
    KeyAction("q", "quit", "Quit", "quit; asks first while tasks run; the front-end stops cleanly"),
)
OTHER_KEYS = (
    ("enter", "open the selected task (its chunk map and each node's share) or node (its chain, errors, events)"),
    ("escape", "back from a task's or node's screen; clear the filter; then clear the marks"),
    ("tab, shift+tab", "move between the nodes and the tasks table"),
    ("↑ ↓ pgup pgdn", "move the selection"),
    ("home end", "the first or the last row"),
    ("ctrl+p", "command palette: every action by name"),
)
CONSOLE_ACTIONS = frozenset(a.action for a in KEY_ACTIONS) | {"open_task", "open_node"}
CHANGING_ACTIONS = frozenset({"submit", "drain", "kick", "release", "cancel_task", "delete_task", "approve",
                              "add_node", "remove_node", "restart_node"})
"""What an observer may not do: its console shows these keys dimmed."""


class ConsoleApp(App[None]):
    """The operator console around one front-end: a Host run here, or any ``ConsoleSource``."""

    TITLE = "chainconsole"
    BINDINGS = [Binding(a.key, a.action, a.label, key_display=a.key_display, show=a.show) for a in KEY_ACTIONS]

    def __init__(self, host: Host | None = None, *, source: ConsoleSource | None = None, live: bool = True,
                 refresh_s: float = DEFAULT_REFRESH_S, handle_signals: bool = False) -> None:
        """``live=False`` is for snapshots: no refresh timer, and the address, host key and
        uptime are masked, so the same state always draws the same picture.
        ``handle_signals`` makes SIGINT, SIGTERM and SIGHUP quit cleanly (the console
        command; tests leave the process's signals alone). Give a ``host`` to run it here,
        or a ``source`` (an attached front-end)."""
        super().__init__()
        self.host = host
        self.source: ConsoleSource = source if source is not None else HostedFrontEnd(host, live=live)
        self.live = live
        self.handle_signals = handle_signals
        self.refresh_s = refresh_s
        self.snapshot = EMPTY
        self.identity = HostIdentity("starting…", MASK)
        self.meter = ThroughputMeter()
        self.main = MainScreen()
        # The other screens are made once and kept (installed): a screen composed, styled and
        # laid out anew on each key cost 200-400 ms with 200 nodes; a kept one is filled with
        # fresh data before it shows, and showing it is one redraw.
        keys = [(a.key_display or a.key, a.help) for a in KEY_ACTIONS] + list(OTHER_KEYS)
        self.help_screen = HelpModal(keys)
        self.task_screen = TaskDetailScreen()
        self.node_screen = NodeDetailScreen()
        for name, screen in (("help", self.help_screen), ("task", self.task_screen), ("node", self.node_screen)):
            self.install_screen(screen, name)
        self._new_events: collections.deque[Event] = collections.deque(maxlen=1000)
        self._host_running = False
        self._stopped = False
        self._ending: tuple[int, str] | None = None
        """An exit asked for before the main screen was up: taken when it is."""
        self._binding_state: tuple = ()
        self.collector = QuietCollector()

    def get_default_screen(self) -> Screen:
        return self.main

    # -- the host's life ----------------------------------------------------------------------

    async def on_mount(self) -> None:
        if self.handle_signals:
            on_stop_signals(self._on_stop_signal)
        try:
            identity = await self.source.start()
        except ChainconsoleError as exc:  # the state folder is in use, the address taken, no way in
            await self._stop_host()
            self._end(getattr(exc, "status", ExitStatus.CONNECT), f"chainconsole: {exc}")
            return
        self._host_running = True
        self.identity = self._identify(identity)
        self._new_events.extend(self.source.events())
        # Events are only buffered here; the log is written on the next refresh, so a
        # burst of events costs one redraw, not one per event.
        self.source.on_event(self._new_events.append)
        self.refresh_views()
        if self.live:
            self.set_interval(self.refresh_s, self._tick, name="refresh")
            self.collector.start()  # full collections between refreshes from now on

    def _identify(self, identity: Identity) -> HostIdentity:
        host, port = identity.address
        if not self.live:
            return HostIdentity(f"{host}:{MASK}", f"SHA256:{MASK}")
        note = f" ({identity.note})" if identity.note else ""
        return HostIdentity(f"{host}:{port}{note}", identity.host_key)

    async def _stop_host(self) -> None:
        """Stop the front-end once, whichever way the console ends."""
        if self._stopped:
            return
        self._stopped = True
        self._host_running = False
        await self.source.stop()

    async def on_unmount(self) -> None:
        self.collector.stop()
        await self._stop_host()

    def _end(self, status: int, message: str) -> None:
        """Exit with one line; once the main screen is up (a start that fails at once comes first)."""
        if self.main.ready:
            self.exit(return_code=status, message=message)
        else:
            self._ending = (status, message)

    def _on_stop_signal(self, sig) -> None:
        self.exit(return_code=128 + sig, message=f"chainconsole: stopped by {sig.name}")

    # -- reading the front-end ----------------------------------------------------------------

    def on_main_screen_ready(self, message: MainScreen.Ready) -> None:
        if self._ending is not None:
            status, text = self._ending
            self._ending = None  # the screen says it is ready more than once
            self.exit(return_code=status, message=text)
            return
        self.refresh_views()

    def _tick(self) -> None:
        self.refresh_views()
        # Once the tick's refresh is drawn, the loop waits for the next: a full collection
        # due then delays no key (one made on a key's refresh would delay that key).
        self.call_after_refresh(self.collector.after_refresh)

    def refresh_views(self) -> None:
        """Read the front-end once and bring every visible screen up to date."""
        # Textual clears ``_running`` first thing when it shuts down, before it removes the
        # screens' widgets; a refresh timer firing in between would find them gone.
        if not (self._running and self._host_running and self.main.ready):
            return
        if self.source.ended:  # an attached front-end went away
            self._host_running = False
            self._end(ExitStatus.CONNECT, f"chainconsole: {self.source.ended}")
            return
        self.snapshot = self.source.snapshot()
        now = time.monotonic()
        self.meter.observe(now, sum(t.items_done for t in self.snapshot.tasks))
        # Under a task's screen the main screen is hidden (dialogs only dim it): skip redrawing
        # it — 200 node rows cost more than the rest of a refresh — until it shows again.
        if all(screen.is_modal for screen in self.screen_stack[1:]):
            self._show_main(now)
        screen = self.screen
        if isinstance(screen, TaskDetailScreen):
            self._show_detail(screen)
        elif isinstance(screen, NodeDetailScreen):
            self._show_node(screen)
        self._refresh_bindings_if_changed()

    def _show_main(self, now: float) -> None:
        events = list(self._new_events)
        self._new_events.clear()
        self.main.add_events(events)
        self.main.show(self.snapshot, self.identity, self._uptime(), self.meter.current(now), self.meter.series(now))

    def on_node_detail_screen_ready(self, message: NodeDetailScreen.Ready) -> None:
        stack = self.screen_stack
        if stack and isinstance(stack[-1], NodeDetailScreen):
            self._show_node(stack[-1])

    def _show_node(self, screen: NodeDetailScreen) -> None:
        if not (self._host_running and screen.ready):
            return
        screen.show(self.snapshot.nodes_by_id.get(screen.node_id), self.source.events())

    def on_task_detail_screen_ready(self, message: TaskDetailScreen.Ready) -> None:
        # The screen may already be gone (popped, or the console quitting) when this arrives.
        stack = self.screen_stack
        if stack and isinstance(stack[-1], TaskDetailScreen):
            self._show_detail(stack[-1])

    def _show_detail(self, screen: TaskDetailScreen) -> None:
        if not (self._host_running and screen.ready):
            return
        detail = self.source.detail(screen.task_id)
        screen.show(self.snapshot.tasks_by_id.get(screen.task_id), detail.chunks, detail.shares)

    def _uptime(self) -> str:
        if not self.live:
            return MASK
        return fmt.clock(time.time() - self.source.started_at)

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
        if isinstance(screen, (MainScreen, TaskDetailScreen, NodeDetailScreen)):
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
        if action in CHANGING_ACTIONS and not self.source.can_act:
            return False
        node, task = self.selected_node(screen), self.selected_task(screen)
        match action:
            case "submit":
                return isinstance(screen, (MainScreen, TaskDetailScreen))
            case "filter":
                return isinstance(screen, MainScreen)
            case "open_task":
                return isinstance(screen, MainScreen) and task is not None
            case "open_node" | "mark":
                return isinstance(screen, MainScreen) and node is not None
            case "sort" | "reverse_sort" | "export_events":
                return isinstance(screen, MainScreen)
            case "drain":
                return any(n.state in DRAINABLE_NODE_STATES for n in self.nodes_to_act_on(screen))
            case "kick":
                return any(n.state in CONNECTED_NODE_STATES for n in self.nodes_to_act_on(screen))
            case "release":
                return node is not None and node.state == "quarantined"
            case "cancel_task":
                return task is not None and task.state in LIVE_TASK_STATES
            case "save_results" | "delete_task":
                return task is not None and task.state in FINISHED_TASK_STATES
            case "approve":
                return self.snapshot.pending_keys > 0
            case "add_node":
                return self.source.stops_on_quit  # hosted here: this machine runs the front-end
            case "remove_node":
                return self._local_node_to_remove(node) is not None
            case "restart_node":
                return (node is not None and node.state in DEPARTED_NODE_STATES and self.source.is_local(node.node_id)
                        and not self.source.local_running(node.node_id))
        return True

    def nodes_to_act_on(self, screen: Screen | None = None) -> list[NodeRow]:
        """The marked nodes on the main screen if any are marked, else the selected node."""
        screen = screen or self.screen
        if isinstance(screen, MainScreen) and screen.marked:
            return [n for n in self.snapshot.nodes if n.node_id in screen.marked]
        node = self.selected_node(screen)
        return [node] if node is not None else []

    def _local_node_to_remove(self, node: NodeRow | None) -> NodeRow | None:
        """The selected node if it is a working local one, else the newest working local node."""
        local = [n for n in self.snapshot.nodes if n.state in DRAINABLE_NODE_STATES and self.source.is_local(n.node_id)]
        if node is not None and node in local:
            return node
        return local[-1] if local else None

    def stall_warning(self, leaving: Iterable[str]) -> str:
        """What the operator is told before the last nodes that take work leave: which tasks stall."""
        gone = set(leaving)
        staying = [n for n in self.snapshot.nodes if n.state in WORKING_NODE_STATES and n.node_id not in gone]
        live = [t for t in self.snapshot.tasks if t.state in LIVE_TASK_STATES]
        if staying or not live:
            return ""
        ids = ", ".join(t.task_id for t in live[:5]) + (", …" if len(live) > 5 else "")
        return (f"No other node takes work: {len(live)} task{'s' if len(live) != 1 else ''} ({ids}) "
                "will stall until a node joins.")

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
        targets = self.nodes_to_act_on(screen)
        several = f"{len(targets)} marked nodes" if len(targets) > 1 else f"node {node_name}"
        titles = {
            "submit": "Submit a task file",
            "drain": f"Drain {several}",
            "kick": f"Kick {several}",
            "mark": f"Mark or unmark node {node_name}",
            "open_node": f"Open node {node_name}",
            "sort": "Sort the focused table by its next column",
            "reverse_sort": "Reverse the focused table's sort order",
            "export_events": "Export the events shown to a file",
            "release": f"Release node {node_name} from quarantine",
            "cancel_task": f"Cancel task {task_name}",
            "save_results": f"Save results of task {task_name}",
            "delete_task": f"Delete task {task_name}",
            "approve": "Approve a pending node key",
            "add_node": "Add a local node",
            "remove_node": f"Remove local node {getattr(self._local_node_to_remove(node), 'node_id', '')}",
            "restart_node": f"Restart local node {node_name}",
            "filter": "Filter rows",
            "help": "Help: console keys",
            "open_task": f"Open task {task_name}",
        }
        helps = {a.action: a.help for a in KEY_ACTIONS} | {"open_task": OTHER_KEYS[0][1], "open_node": OTHER_KEYS[0][1]}
        for action, title in titles.items():
            if self.applies(action, screen):
                yield SystemCommand(title, helps[action].capitalize(), partial(self.run_action, action))
        if self._host_running:
            yield from self._launcher_commands()

    def _launcher_commands(self) -> Iterable[SystemCommand]:
        """Start a Slurm launcher, or stop a running one (``--launch`` from the palette)."""
        running = self.source.running_launchers()
        if running is None:
            return
        if "slurm" not in running:
            for jobs in PALETTE_SLURM_JOBS:
                yield SystemCommand(f"Launch Slurm jobs: up to {jobs}",
                                    f"keep up to {jobs} Slurm jobs running nodes while work waits (sbatch)",
                                    partial(self._launch, f"slurm:{jobs}"))
        for name in running:
            yield SystemCommand(f"Stop launcher {name}", "drain its nodes, end its jobs, withdraw its key",
                                partial(self.source.stop_launcher, name))

    def _launch(self, spec: str) -> None:
        try:
            self.source.add_launcher(spec)
        except ChainconsoleError as exc:
            self.notify(str(exc), title="Cannot launch", severity="error")

    # -- actions ------------------------------------------------------------------------------

    async def _call(self, what: str, call: Awaitable[object]) -> bool:
        """Call the front-end; a request it refuses becomes a notification, not a crash."""
        try:
            await call
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
        path = await self.push_screen_wait(TaskFileOpen(Path.cwd(), "Submit a task file", filters=TASK_FILES))
        if path is None or not self._host_running:
            return
        try:
            # The same size limits as tasks submitted over SSH to this front-end.
            task = await asyncio.to_thread(load_task_file, path, limits=self.source.limits)
        except TaskFileError as exc:
            await self.push_screen_wait(ProblemsModal(path.name, exc.problems))
            return
        except (OSError, ChainconsoleError) as exc:
            self.notify(str(exc), title=f"Cannot read {path.name}", severity="error")
            return
        try:
            task_id = await self.source.submit(task)
        except FrontEndError as exc:
            self.notify(str(exc), title=f"Cannot submit {path.name}", severity="error")
            return
        self.refresh_views()
        self.main.select_task(task_id)
        self.notify(f"{task.name}: {task.operation} × {task.count:,} submitted as {task_id}")

    def action_drain(self) -> None:
        nodes = [n for n in self.nodes_to_act_on() if n.state in DRAINABLE_NODE_STATES]
        if nodes:
            self._drain(nodes, "Drain")

    @work(group="dialogs")
    async def _drain(self, nodes: list[NodeRow], verb: str) -> None:
        names = _names(nodes)
        stall = self.stall_warning(n.node_id for n in nodes)
        if stall or len(nodes) > 1:
            question = f"{verb} {names}?\n\nEach finishes what it holds, then leaves."
            question += f"\n\n{stall}" if stall else ""
            if not await self.push_screen_wait(ConfirmModal(f"{verb} {_count_nodes(nodes)}", question, verb)):
                return
        done = [n for n in nodes if await self._call("drain", self.source.drain(n.node_id))]
        self.main.clear_marks()
        if done:
            if len(done) == 1:
                self.notify(f"{done[0].node_id} is draining: it finishes what it holds, then leaves")
            else:
                self.notify(f"{_names(done)} are draining: each finishes what it holds, then leaves")

    async def action_add_node(self) -> None:
        names: list[str] = []

        async def add() -> None:
            names.append(await self.source.add_local_node())

        if await self._call("add a node", add()):
            self.notify(f"{names[0]} started on this machine: it joins in a moment")

    def action_remove_node(self) -> None:
        node = self._local_node_to_remove(self.selected_node())
        if node is not None:
            self._drain([node], "Remove")

    async def action_restart_node(self) -> None:
        node = self.selected_node()
        if node is not None and await self._call("restart", self.source.restart_local_node(node.node_id)):
            self.notify(f"{node.node_id} started again: it joins in a moment")

    async def action_release(self) -> None:
        node = self.selected_node()
        if node is None:
            return
        if await self._call("release", self.source.release(node.node_id)):
            self.notify(f"{node.node_id} released from quarantine: it gets work again")

    def action_kick(self) -> None:
        nodes = [n for n in self.nodes_to_act_on() if n.state in CONNECTED_NODE_STATES]
        if nodes:
            self._kick(nodes)

    @work(group="dialogs")
    async def _kick(self, nodes: list[NodeRow]) -> None:
        if len(nodes) == 1:
            node = nodes[0]
            via = f" via {fmt.chain(node.via)}" if node.via else ""
            question = (f"Kick node {node.node_id} at {node.address}{via}?\n\n"
                        f"Its session closes now and its {node.in_flight} chunks in flight go back to the queue.")
        else:
            question = (f"Kick {_names(nodes)}?\n\nTheir sessions close now and their "
                        f"{sum(n.in_flight for n in nodes)} chunks in flight go back to the queue.")
        stall = self.stall_warning(n.node_id for n in nodes)
        if stall:
            question += f"\n\n{stall}"
        if not await self.push_screen_wait(ConfirmModal(f"Kick {_count_nodes(nodes)}", question, "Kick")):
            return
        done = [n for n in nodes if await self._call("kick", self.source.kick(n.node_id))]
        self.main.clear_marks()
        if done:
            self.notify(f"{_names(done)} kicked")

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
        if await self._call("cancel", self.source.cancel(task.task_id)):
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
        try:
            await self.source.delete(task.task_id)
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
        if target is None:
            return
        try:
            await self.source.save_results(task.task_id, target)
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
        chosen = await self.push_screen_wait(PendingKeysModal(self.source.pending_keys(), time.time()))
        if chosen is None:
            return
        if await self._call("approve", self.source.approve(chosen)):
            self.notify(f"Node key {chosen} approved: the node gets in on its next try")

    def action_filter(self) -> None:
        self.main.open_filter()

    def action_mark(self) -> None:
        self.main.toggle_mark()
        self._refresh_bindings_if_changed()

    def action_sort(self) -> None:
        self.main.sort_next()

    def action_reverse_sort(self) -> None:
        self.main.sort_next(reverse=True)

    def action_open_node(self) -> None:
        node = self.selected_node()
        if node is not None:
            self.node_screen.open(node.node_id)
            self._show_node(self.node_screen)  # filled while hidden: showing it is one redraw
            self.push_screen(self.node_screen)

    def action_export_events(self) -> None:
        self._export_events()

    @work(group="dialogs")
    async def _export_events(self) -> None:
        events = self.main.shown_events
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dialog = FileSave(Path.cwd(), f"Save {len(events)} events", default_file=f"events-{stamp}.log")
        target = await self.push_screen_wait(dialog)
        if target is None:
            return
        text = "".join(format_event(event) + "\n" for event in events)
        try:
            await asyncio.to_thread(target.write_text, text, encoding="utf-8")
        except OSError as exc:
            self.notify(f"{target}: {exc.strerror or exc}", title="Cannot save", severity="error")
            return
        self.notify(f"{len(events)} events saved to {target}")

    def action_help(self) -> None:
        if self.screen is not self.help_screen:
            self.push_screen(self.help_screen)

    def action_open_task(self) -> None:
        task = self.selected_task()
        if task is None:
            return
        self.task_screen.open(task.task_id)
        self._show_detail(self.task_screen)  # filled while hidden: showing it is one redraw
        self.push_screen(self.task_screen)

    def action_back(self) -> None:
        """Back from a task's or node's screen to the main screen, brought up to date first."""
        if len(self.screen_stack) < 2 or self.screen.is_modal:
            return
        if self._host_running and self.main.ready and len(self.screen_stack) == 2:
            # The main screen was not redrawn while hidden: bring it up to date before it
            # shows, so that showing it is one redraw rather than one now and one for the data.
            self.snapshot = self.source.snapshot()
            self._show_main(time.monotonic())
        self.pop_screen()

    async def action_quit(self) -> None:
        self._quit()

    @work(group="dialogs")
    async def _quit(self) -> None:
        live = [t for t in self.snapshot.tasks if t.state in LIVE_TASK_STATES]
        if not self.source.stops_on_quit:  # attached: the front-end keeps running
            await self._stop_host()
            self.exit(return_code=ExitStatus.OK)
            return
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


def _names(nodes: list[NodeRow]) -> str:
    """``node gpu-01`` or ``nodes gpu-01, gpu-02 and edge-07`` (the first few, then how many more)."""
    ids = [n.node_id for n in nodes]
    if len(ids) == 1:
        return f"node {ids[0]}"
    shown = ids[:6] if len(ids) <= 6 else [*ids[:5], f"{len(ids) - 5} more"]
    return f"nodes {', '.join(shown[:-1])} and {shown[-1]}"


def _count_nodes(nodes: list[NodeRow]) -> str:
    return nodes[0].node_id if len(nodes) == 1 else f"{len(nodes)} nodes"


def run_console(state: StateDir, listen: tuple[str, int] | None, local_nodes: int, *,
                limits: TaskLimits = DEFAULT_LIMITS, metrics: tuple[str, int] | None = None,
                launch: tuple[str, ...] = (), replica_rate: float = DEFAULT_REPLICA_RATE) -> int:
    """Run the console until the operator quits; return the process exit status."""
    host, port = listen or DEFAULT_LISTEN
    options = {"limits": limits, "replica_rate": replica_rate}
    app = ConsoleApp(Host(state, ServerSettings(host=host, port=port), local_nodes, options,
                          metrics=metrics, launch=launch), handle_signals=True)
    app.run()
    return app.return_code or ExitStatus.OK
