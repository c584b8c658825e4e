"""The footer: the keys that apply now, fitted to the terminal's width.

Textual's footer shows every binding in order and cuts what does not fit, so on an
80-column terminal quit, help and the command palette were the first to go. This one
keeps the keys named in ``ALWAYS`` and the command palette, then adds those in ``FIRST``
that apply, then the others in the order they are bound, the ones that apply now before
the dimmed ones, while they fit.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

ALWAYS = ("quit", "help")
"""Actions whose keys the footer never leaves out."""
FIRST = ("filter", "app.pop_screen")
"""Actions whose keys come next, when they apply: the way to find rows and the way back."""
COMPACT_BELOW = 120
"""Under this many columns the footer drops the spaces around each key."""
PALETTE = "command_palette"


def key_width(key: FooterKey, compact: bool) -> int:
    """Cells a key takes in the footer: the key, its label and the space around them."""
    return len(key.key_display) + len(key.description) + (2 if compact else 3)


def keys_that_fit(keys: list[FooterKey], width: int, compact: bool) -> list[FooterKey]:
    """The keys to show in ``width`` cells, in their original order."""
    palette = [k for k in keys if PALETTE in k.action]
    others = [k for k in keys if k not in palette]
    room = width - sum(key_width(k, compact) + 1 for k in palette)
    chosen: set[int] = set()
    always = [k for k in others if k.action in ALWAYS]
    applying = [k for k in others if k not in always and not k.has_class("-disabled")]
    first = [k for k in applying if k.action in FIRST]
    applying = [k for k in applying if k not in first]
    dimmed = [k for k in others if k not in always and k.has_class("-disabled")]
    for key in always + first + applying + dimmed:
        cost = key_width(key, compact)
        if cost <= room or key in always:
            chosen.add(id(key))
            room -= cost
    return [k for k in others if id(k) in chosen] + palette


class FittedFooter(Footer):
    """A footer that always shows quit, help and the palette, and as many other keys as fit."""

    def __init__(self) -> None:
        super().__init__()
        self._laid_out_for = 0

    def compose(self) -> ComposeResult:
        width = self.size.width or self.app.size.width
        self.compact = width < COMPACT_BELOW
        self._laid_out_for = width
        keys = list(super().compose())
        if any(not isinstance(k, FooterKey) for k in keys):  # grouped keys: not used here
            yield from keys
            return
        yield from keys_that_fit(keys, width, self.compact)

    def on_resize(self) -> None:
        if self.size.width != self._laid_out_for and self._bindings_ready:
            self.call_after_refresh(self.recompose)
