"""The cluster at a glance: the header with address, host key, uptime and totals, and
the throughput the sparkline plots.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static

from console.tui import formatting as fmt
from console.engine.records import NodeRow, TaskRow
from console.tui.tables import CONNECTED_NODE_STATES

THROUGHPUT_WINDOW_S = 60
"""How many one-second buckets the sparkline shows."""
CURRENT_RATE_WINDOW_S = 10.0
"""The header's items/s averages this long, so one big chunk does not make it jump and the
gap between two chunks does not read as idle."""


@dataclass(frozen=True)
class HostIdentity:
    """Who the console is: where it listens and the host key nodes pin."""

    address: str
    fingerprint: str


@dataclass(frozen=True)
class ClusterTotals:
    """The header's numbers, summed from one snapshot of the nodes and tasks."""

    nodes: int
    lost: int
    slots: int
    busy: int
    """Connected nodes holding chunks."""
    running: int
    queued: int
    items_done: int
    pending_keys: int

    @classmethod
    def of(cls, nodes: list[NodeRow], tasks: list[TaskRow], pending_keys: int) -> ClusterTotals:
        connected = [n for n in nodes if n.state in CONNECTED_NODE_STATES]
        return cls(
            nodes=len(connected),
            lost=sum(1 for n in nodes if n.state == "lost"),
            slots=sum(n.slots for n in connected),
            busy=sum(1 for n in connected if n.in_flight),
            running=sum(1 for t in tasks if t.state == "running"),
            queued=sum(1 for t in tasks if t.state == "queued"),
            items_done=sum(t.items_done for t in tasks),
            pending_keys=pending_keys,
        )


class ThroughputMeter:
    """Items per second across the cluster, from successive totals of items done.

    Each observation adds the items done since the previous one to the bucket of the
    second it was seen in. The first observation is only a baseline, so tasks resumed
    from the journal do not show up as a burst; a total that falls (a task forgotten)
    starts a new baseline.
    """

    def __init__(self, window_s: int = THROUGHPUT_WINDOW_S) -> None:
        self.window_s = window_s
        self._buckets: dict[int, float] = {}
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._last_total: int | None = None

    def observe(self, now: float, total: int) -> None:
        delta = 0 if self._last_total is None else max(total - self._last_total, 0)
        self._last_total = total
        second = math.floor(now)
        self._buckets[second] = self._buckets.get(second, 0.0) + delta
        for old in [s for s in self._buckets if s <= second - self.window_s]:
            del self._buckets[old]
        self._recent.append((now, delta))
        while self._recent and self._recent[0][0] < now - CURRENT_RATE_WINDOW_S:
            self._recent.popleft()

    def series(self, now: float) -> list[float]:
        """Items done in each of the last ``window_s`` whole seconds, oldest first."""
        current = math.floor(now)
        return [self._buckets.get(s, 0.0) for s in range(current - self.window_s, current)]

    def current(self, now: float) -> float:
        """Items per second over the last few seconds."""
        recent = [(t, d) for t, d in self._recent if t >= now - CURRENT_RATE_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        # The oldest sample only marks where the span starts; its items came before it.
        span = now - recent[0][0]
        return sum(d for _, d in recent[1:]) / span if span > 0 else 0.0


class StatusHeader(Static):
    """Two lines at the top: who and where the console is, then the cluster totals."""

    DEFAULT_CSS = """
    StatusHeader {
        height: 2;
        background: $panel;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: tuple | None = None
        self._shown_text: str | None = None

    def show(self, identity: HostIdentity, uptime: str, totals: ClusterTotals, per_s: float) -> None:
        self._shown = (identity, uptime, totals, per_s)
        text = header_text(identity, uptime, totals, per_s, self.size.width or None)
        if text.plain == self._shown_text:
            return
        self._shown_text = text.plain
        # Its height is fixed: a repaint, not a layout of the whole screen (which, with 200
        # nodes in the tables, cost more than the rest of a refresh together).
        self.update(text, layout=False)

    def on_resize(self) -> None:
        if self._shown is not None:
            self._shown_text = None
            self.show(*self._shown)


Piece = tuple[str, str]
"""A run of header text and its style."""


def _fit(variants: list[list[Piece]], width: int | None) -> list[Piece]:
    """The first variant that fits in ``width`` cells (the last one if none does)."""
    for pieces in variants:
        if width is None or sum(len(text) for text, _ in pieces) <= width:
            return pieces
    return variants[-1]


def header_text(identity: HostIdentity, uptime: str, totals: ClusterTotals, per_s: float,
                width: int | None = None) -> Text:
    """The header's two lines, each fitted to ``width`` cells by leaving out what matters least.

    The first line gives up the host key's fingerprint first (``keys show`` prints it), the
    second shortens its words; neither wraps, so the totals always keep their line.
    """
    name = ("chainconsole", "bold")
    address = [("  listening on ", ""), (identity.address, "bold cyan")]
    host_key = [("  host key ", ""), (identity.fingerprint, "cyan")]
    up = [("  up ", ""), (uptime, "bold")]
    first = _fit([[name, *address, *host_key, *up], [name, *address, *up],
                  [name, ("  ", ""), (identity.address, "bold cyan"), *up]], width)

    nodes = [(f"nodes {totals.nodes}", "bold")] + ([(f" ({totals.lost} lost)", "red")] if totals.lost else [])
    if per_s > 0:
        speed = (fmt.rate(per_s).replace("/s", " items/s"), "bold green")
    else:  # nothing came back lately: say whether anything is being computed
        speed = ("computing" if totals.busy else "idle", "bold green")
    plural = "s" if totals.pending_keys > 1 else ""
    pending_long = [(f" · {totals.pending_keys} node key{plural} pending (a to approve)", "bold yellow")]
    pending_short = [(f" · {totals.pending_keys} key{plural} pending (a)", "bold yellow")]
    if not totals.pending_keys:
        pending_long = pending_short = []
    tasks_long = (f" · tasks {totals.running} running, {totals.queued} queued", "")
    tasks_short = (f" · {totals.running} running, {totals.queued} queued", "")
    slots = (f" · slots {totals.slots}", "")
    sep = (" · ", "")
    second = _fit([
        [*nodes, slots, tasks_long, sep, speed, *pending_long],
        [*nodes, slots, tasks_long, sep, speed, *pending_short],
        [*nodes, slots, tasks_short, sep, speed, *pending_short],
        [*nodes, tasks_short, sep, speed, *pending_short],
    ], width)

    text = Text(no_wrap=True, overflow="ellipsis")
    for piece, style in first:
        text.append(piece, style=style)
    text.append("\n")
    for piece, style in second:
        text.append(piece, style=style)
    return text
