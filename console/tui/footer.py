"""The footer: the keys that apply now, fitted to the terminal's width.

Textual's footer shows every binding in order and cuts what does not fit, so on an
80-column terminal quit, help and the command palette were the first to go. This one
keeps the keys named in ``ALWAYS`` and the command palette, then adds those in ``FIRST``
that apply, then the others in the order they are bound, the ones that apply now before
the dimmed ones, while they fit.

Textual's footer also rebuilds all its keys — a widget each, styled and laid out — every
time the bindings may have changed: on each screen switch, focus change and selection
that changes what applies, several times per key, 30-90 ms each with a 140-column footer
under load. This one works out which keys it would show and rebuilds only when that list
changes; when only which keys are dimmed changes, it sets their class in place.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer
from textual.widgets._footer import FooterKey

ALWAYS = ("quit", "help")
"""Actions whose keys the footer never leaves out."""
FIRST = ("filter", "app.back")
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


def key_identity(key: FooterKey) -> tuple[str, str, str, str, str]:
    """What a footer key shows and does, apart from whether it is dimmed."""
    return key.key, key.key_display, key.description, key.action, str(key.tooltip or "")


class FittedFooter(Footer):
    """A footer that always shows quit, help and the palette, and as many other keys as fit."""

    def __init__(self) -> None:
        super().__init__()
        self._laid_out_for = 0
        self.rebuilds = 0
        """How many times the keys were built anew (each costs a layout of the footer)."""

    def compose(self) -> ComposeResult:
        self.rebuilds += 1
        yield from self._fitted_keys()

    def _fitted_keys(self) -> list:
        width = self.size.width or self.app.size.width
        self.compact = width < COMPACT_BELOW
        self._laid_out_for = width
        keys = list(super().compose())
        if any(not isinstance(k, FooterKey) for k in keys):  # grouped keys: not used here
            return keys
        return keys_that_fit(keys, width, self.compact)

    def bindings_changed(self, screen: Screen) -> None:
        self._bindings_ready = True
        if screen.app.app_focus and self.is_attached and screen is self.screen:
            self.call_after_refresh(self._update_keys)

    async def _update_keys(self) -> None:
        """Show the keys that apply now: in place when the same keys are shown, else anew."""
        # A screen being covered or uncovered says its bindings changed while another screen
        # is current — and the keys' checks answer for the current screen. Its keys are
        # brought up to date when it is current again (that says so too).
        if not self.is_attached or self.app.screen is not self.screen:
            return
        wanted = self._fitted_keys()
        shown = list(self.children)
        if len(wanted) != len(shown) or any(
                not isinstance(new, FooterKey) or not isinstance(old, FooterKey)
                or key_identity(new) != key_identity(old) for new, old in zip(wanted, shown)):
            await self.recompose()
            return
        for new, old in zip(wanted, shown):
            dimmed = new.has_class("-disabled")
            if old.has_class("-disabled") != dimmed:
                old._disabled = dimmed  # what a click on the key checks
                old.set_class(dimmed, "-disabled")

    def on_resize(self) -> None:
        if self.size.width != self._laid_out_for and self._bindings_ready:
            self.call_after_refresh(self.recompose)
