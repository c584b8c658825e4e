"""Approving node keys: the refused keys waiting for an operator, one to pick."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Label, Static

from console.tui import formatting as fmt
from console.engine.keys import PendingKey
from console.tui.modals import MODAL_CSS


class PendingKeysModal(ModalScreen[str | None]):
    """The pending node keys with their fingerprints; returns the one to approve, or None."""

    DEFAULT_CSS = MODAL_CSS.replace("MODAL", "PendingKeysModal") + """
    PendingKeysModal > Vertical { width: 110; }
    PendingKeysModal DataTable { height: auto; max-height: 16; }
    """
    BINDINGS = [
        Binding("a", "approve", "Approve"),
        Binding("escape,q", "dismiss", "Close"),
    ]

    def __init__(self, pending: Sequence[PendingKey], now: float) -> None:
        super().__init__()
        self.pending = list(pending)
        self.now = now

    def compose(self) -> ComposeResult:
        table: DataTable = DataTable(cursor_type="row", id="pending")
        table.add_column("Fingerprint", key="fingerprint")
        table.add_column("From", key="address")
        table.add_column(Text("Tries", justify="right"), key="attempts")
        table.add_column(Text("Last try", justify="right"), key="last_seen")
        for key in self.pending:
            table.add_row(
                key.fingerprint,
                key.address,
                Text(str(key.attempts), justify="right"),
                Text(f"{fmt.duration(self.now - key.last_seen)} ago", justify="right"),
                key=key.fingerprint,
            )
        with Vertical():
            yield Label("Node keys waiting for approval", classes="title")
            yield Static("Compare the fingerprint with the one the node printed before you approve it.",
                         markup=False)
            yield table
            with Horizontal():
                yield Button("Approve (a)", variant="success", id="approve")
                yield Button("Close (esc)", variant="primary", id="close")

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "approve":
            self.action_approve()
        else:
            self.dismiss(None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dismiss(event.row_key.value)

    def action_approve(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
            self.dismiss(row_key.value)
