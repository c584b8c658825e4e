"""The file picker for task files: one ``enter`` on a file submits it."""

from __future__ import annotations

from textual import on
from textual_fspicker import FileOpen
from textual_fspicker.parts import DirectoryNavigation


class TaskFileOpen(FileOpen):
    """textual-fspicker's FileOpen, where choosing a file in the list opens it at once.

    The stock dialog copies the chosen file's name into its input box and waits for a
    second ``enter`` (or Select); typing a name and pressing ``enter`` still works as before.
    """

    @on(DirectoryNavigation.Selected)
    def _open_chosen_file(self, event: DirectoryNavigation.Selected) -> None:
        if event.path.is_file():
            event.prevent_default()  # not into the input box: this is the choice
            event.stop()
            self.dismiss(event.path)
