"""The node detail screen: one node's place in the chain, its standing and its recent events."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import RichLog

from console.engine.records import Event, NodeRow
from console.tui import formatting as fmt
from console.tui.detail import Summary
from console.tui.footer import FittedFooter
from console.tui.tables import CONNECTED_NODE_STATES, NODE_STATE_STYLE
from console.tui.kept import Kept

NODE_EVENT_LINES = 500
REJECTED_KINDS = frozenset({"invalid", "blame"})
"""Events that stand for a result this node computed that was checked and thrown away
(``blame``: one it computed behind a chain link)."""


def node_events(events: Sequence[Event], node_id: str) -> list[Event]:
    """The events about ``node_id``, oldest first, at most ``NODE_EVENT_LINES`` of them."""
    return [e for e in events if e.node_id == node_id][-NODE_EVENT_LINES:]


def node_summary(node_id: str, row: NodeRow | None, events: Sequence[Event]) -> Text:
    """The screen's top lines: who the node is, where it sits in the chain, how it stands."""
    if row is None:
        return Text(f"Node {node_id} is no longer known to the front-end.", style="dim")
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(row.node_id, style="bold")
    if row.name != row.node_id:
        text.append(f" ({row.name})")
    text.append("  ")
    text.append(row.state, style=NODE_STATE_STYLE.get(row.state, ""))
    text.append(f"  from {row.address}\n")
    text.append("chain  ")
    text.append(" → ".join(("console", *row.via, row.node_id)), style="cyan")
    text.append("\n")
    connected = row.state in CONNECTED_NODE_STATES
    text.append(f"slots {row.slots} · in flight {row.in_flight if connected else fmt.DASH}"
                f" · items done {fmt.count(row.items_done)}"
                f" · {fmt.rate(row.items_per_s) if connected else fmt.DASH}"
                f" · heard from {fmt.age(row.heartbeat_age_s)} ago\n")
    rejected = sum(1 for e in events if e.kind in REJECTED_KINDS)
    text.append(f"errors {row.errors}", style="red" if row.errors else "")
    text.append(" · ")
    text.append(f"rejected results {rejected}", style="red" if rejected else "")
    if row.state == "quarantined":
        text.append(" · quarantined: u releases it", style="bold red")
    text.append("\n")
    text.append(f"runs {node_capabilities(row)}", style="dim")
    return text


def node_capabilities(row: NodeRow) -> str:
    """What the node runs beyond the built-ins, and its resources, in one line."""
    operations = ", ".join(f"{name} {version}" for name, version in sorted(row.operations.items()))
    resources = ", ".join(f"{key}={value}" for key, value in sorted(row.resources.items()))
    text = "the built-in operations" + (f", {operations}" if operations else "")
    return text + (f" · has {resources}" if resources else "")


def event_text(event: Event) -> Text:
    text = Text(no_wrap=True)
    text.append(time.strftime("%H:%M:%S ", time.localtime(event.time)), style="dim")
    text.append(f"{event.kind:<10} ", style="bold")
    text.append(event.message)
    return text


class NodeDetailScreen(Kept, Screen[None]):
    """One node: the keys for nodes (drain, kick, release, restart) apply to it."""

    DEFAULT_CSS = """
    NodeDetailScreen #node-summary {
        height: 5;
        padding: 0 1;
        background: $panel;
    }
    NodeDetailScreen RichLog {
        height: 1fr;
        border: round $primary 60%;
        border-title-style: bold;
    }
    """
    BINDINGS = [Binding("escape", "app.back", "Back")]

    class Ready(Message):
        """The screen's widgets exist: it can be shown its node."""

    def __init__(self, node_id: str = "") -> None:
        """Like the task screen, the console keeps one and shows each node opened in it (``open``)."""
        super().__init__()
        self.node_id = node_id
        self.ready = False
        self._events: list[Event] = []

    def open(self, node_id: str) -> None:
        """Show ``node_id`` from now on; the App fills the screen before it is shown again."""
        self.node_id = node_id

    @property
    def selected_node_id(self) -> str:
        return self.node_id

    def compose(self) -> ComposeResult:
        yield Summary(id="node-summary")
        log = RichLog(id="node-events", max_lines=NODE_EVENT_LINES, wrap=False, markup=False, auto_scroll=True)
        log.border_title = "Events of this node"
        yield log
        yield FittedFooter()

    def on_mount(self) -> None:
        self.ready = True
        self.post_message(self.Ready())

    def show(self, row: NodeRow | None, events: Sequence[Event]) -> None:
        mine = node_events(events, self.node_id)
        self.query_one("#node-summary", Summary).show(node_summary(self.node_id, row, mine))
        if mine == self._events:
            return
        log = self.query_one(RichLog)
        if mine[:len(self._events)] == self._events:
            new = mine[len(self._events):]  # only what came since: the scroll position stays
        else:
            log.clear()
            new = mine
        for event in new:
            log.write(event_text(event))
        self._events = mine
