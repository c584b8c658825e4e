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

from typing import NamedTuple

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


class Key(NamedTuple):
    """A key the footer may show, worked out from the bindings without building its widget."""

    key: str
    key_display: str
    description: str
    action: str
    tooltip: str
    disabled: bool
    """Bound but not applying now: shown dimmed."""

    @property
    def identity(self) -> tuple[str, str, str, str, str]:
        """What the key shows and does, apart from whether it is dimmed."""
        return self.key, self.key_display, self.description, self.action, self.tooltip or ""


def key_width(key: Key, compact: bool) -> int:
    """Cells a key takes in the footer: the key, its label and the space around them."""
    return len(key.key_display) + len(key.description) + (2 if compact else 3)


def keys_that_fit(keys: list[Key], width: int, compact: bool) -> list[Key]:
    """The keys to show in ``width`` cells, in their original order."""
    palette = [k for k in keys if PALETTE in k.action]
    others = [k for k in keys if k not in palette]
    room = width - sum(key_width(k, compact) + 1 for k in palette)
    chosen: set[int] = set()
    always = [k for k in others if k.action in ALWAYS]
    applying = [k for k in others if k not in always and not k.disabled]
    first = [k for k in applying if k.action in FIRST]
    applying = [k for k in applying if k not in first]
    dimmed = [k for k in others if k not in always and k.disabled]
    for key in always + first + applying + dimmed:
        cost = key_width(key, compact)
        if cost <= room or key in always:
            chosen.add(id(key))
            room -= cost
    return [k for k in others if id(k) in chosen] + palette


def shown_identity(key: FooterKey) -> tuple[str, str, str, str, str]:
    """``Key.identity`` of a footer key on the screen."""
    return key.key, key.key_display, key.description, key.action, str(key.tooltip or "")


class FittedFooter(Footer):
    """A footer that always shows quit, help and the palette, and as many other keys as fit."""

    def __init__(self) -> None:
        super().__init__()
        self._laid_out_for = 0
        self.rebuilds = 0
        """How many times the keys were built anew (each costs a layout of the footer)."""

    def compose(self) -> ComposeResult:
        if not self._bindings_ready:
            return
        keys = self._bound_keys()
        if keys is None:  # grouped keys (not used here): as Textual's footer shows them
            yield from super().compose()
            return
        self.rebuilds += 1
        self.styles.grid_size_columns = sum(1 for k in keys if PALETTE not in k.action)
        for key in self._fitted(keys):
            if PALETTE in key.action:
                yield FooterKey(key.key, key.key_display, key.description, key.action, disabled=key.disabled,
                                tooltip=key.tooltip, classes="-command-palette")
            else:
                yield FooterKey(key.key, key.key_display, key.description, key.action, disabled=key.disabled,
                                tooltip=key.tooltip).data_bind(compact=Footer.compact)

    def _bound_keys(self) -> list[Key] | None:
        """The keys Textual's footer would show, in its order (the first binding of each
        action, then the palette's); None when some are grouped. Building a footer key is
        building a widget: deciding whether the shown ones still hold needs none."""
        active = self.screen.active_bindings
        keys: dict[str, Key] = {}
        for _, binding, enabled, tooltip in active.values():
            if not binding.show:
                continue
            if binding.group is not None:
                return None
            if binding.action not in keys:
                keys[binding.action] = Key(binding.key, self.app.get_key_display(binding), binding.description,
                                           binding.action, tooltip, not enabled)
        found = list(keys.values())
        palette = active.get(self.app.COMMAND_PALETTE_BINDING) \
            if self.show_command_palette and self.app.ENABLE_COMMAND_PALETTE else None
        if palette is not None:
            _, binding, enabled, _ = palette
            found.append(Key(binding.key, self.app.get_key_display(binding), binding.description, binding.action,
                             binding.tooltip or binding.description, not enabled))
        return found

    def _fitted(self, keys: list[Key]) -> list[Key]:
        width = self.size.width or self.app.size.width
        self.compact = width < COMPACT_BELOW
        self._laid_out_for = width
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
        keys = self._bound_keys()
        wanted = self._fitted(keys) if keys is not None else None
        shown = list(self.children)
        if wanted is None or len(wanted) != len(shown) or any(
                not isinstance(old, FooterKey) or new.identity != shown_identity(old)
                for new, old in zip(wanted, shown)):
            await self.recompose()
            return
        for new, old in zip(wanted, shown):
            if old.has_class("-disabled") != new.disabled:
                old._disabled = new.disabled  # what a click on the key checks
                old.set_class(new.disabled, "-disabled")

    def on_resize(self) -> None:
        if self.size.width != self._laid_out_for and self._bindings_ready:
            self.call_after_refresh(self.recompose)
