"""Screens made once and shown again and again: shown without restyling every widget.

Textual restyles every widget of a screen it pushes, in case the CSS changed while the
screen was hidden; for the task screen with 200 nodes connected that was a sixth of
opening it. A change of a widget's own classes or state restyles that widget as it
happens, hidden or not, so a kept screen asks for the whole restyle only when the
application's CSS did change (a new theme) since the screen was last shown.
"""

from __future__ import annotations

from textual import events


class Kept:
    """Mix into a Screen that the console installs once and pushes many times."""

    _styled_for: int | None = None
    """The application's CSS generation when this screen was last shown."""

    def on_screen_resume(self, event: events.ScreenResume) -> None:
        # Handlers of a subclass run before the Screen's own, which reads refresh_styles.
        generation = getattr(self.app, "_css_update_count", None)  # type: ignore[attr-defined]
        if generation is not None and generation == self._styled_for:
            event.refresh_styles = False
        self._styled_for = generation
