"""The console's small dialogs: confirm a destructive action, show a task file's
problems, list every key.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from console.tui.kept import Kept

MODAL_CSS = """
MODAL {
    align: center middle;
}
MODAL > Vertical {
    width: 72;
    max-width: 90%;
    height: auto;
    max-height: 85%;
    border: thick $primary 80%;
    background: $surface;
    padding: 1 2;
}
MODAL .title {
    text-style: bold;
    width: 1fr;
    margin-bottom: 1;
}
MODAL Horizontal {
    height: auto;
    align-horizontal: right;
    margin-top: 1;
}
MODAL Button {
    margin-left: 2;
}
"""


class ConfirmModal(ModalScreen[bool]):
    """Ask before a destructive action; the question names its target. No is the default."""

    DEFAULT_CSS = MODAL_CSS.replace("MODAL", "ConfirmModal") + """
    ConfirmModal > Vertical { border: thick $error 80%; }
    """
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, title: str, question: str, confirm_label: str) -> None:
        super().__init__()
        self.title_text = title
        self.question = question
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(escape(self.title_text), classes="title")
            yield Static(self.question, id="question", markup=False)
            with Horizontal():
                yield Button(f"{self.confirm_label} (y)", variant="error", id="yes")
                yield Button("Keep (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ProblemsModal(ModalScreen[None]):
    """Why a task file was refused: one line per problem, each naming its field."""

    DEFAULT_CSS = MODAL_CSS.replace("MODAL", "ProblemsModal") + """
    ProblemsModal > Vertical { border: thick $error 80%; width: 100; }
    ProblemsModal VerticalScroll { height: auto; max-height: 20; }
    ProblemsModal .problem { color: $text-error; }
    """
    BINDINGS = [Binding("escape,enter,q", "dismiss", "Close")]

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        super().__init__()
        self.source = source
        self.problems = list(problems)

    def compose(self) -> ComposeResult:
        count = len(self.problems)
        with Vertical():
            yield Label(f"Not submitted: {escape(self.source)} has {count} problem{'s' if count != 1 else ''}",
                        classes="title")
            with VerticalScroll():
                for problem in self.problems:
                    yield Static(Text(f"• {problem}"), classes="problem")
            with Horizontal():
                yield Button("Close (esc)", variant="primary", id="close")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)


class HelpModal(Kept, ModalScreen[None]):
    """Every key the console answers to, and what it does."""

    DEFAULT_CSS = MODAL_CSS.replace("MODAL", "HelpModal") + """
    HelpModal > Vertical { width: 96; }
    """
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, keys: Sequence[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = list(keys)

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in self.keys:
            table.add_row(key, what)
        with Vertical():
            yield Label("Keys", classes="title")
            with VerticalScroll():
                yield Static(table)
            with Horizontal():
                yield Button("Close (esc)", variant="primary", id="close")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(None)
