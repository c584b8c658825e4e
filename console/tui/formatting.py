"""How the console writes numbers, durations and progress in a table cell.

Pure functions of their arguments (no clock, no Textual), so every screen formats the
same value the same way and tests can pin the text exactly.
"""

from __future__ import annotations

import math

DASH = "—"
BAR_FULL = "█"
BAR_EMPTY = "░"
# Eighths of a cell, so a 20-cell bar moves visibly every 0.6 % of progress.
BAR_PARTIAL = " ▏▎▍▌▋▊▉"


def progress_bar(done: int, total: int, width: int = 16) -> str:
    """A text bar ``width`` cells wide, filled in eighths of a cell."""
    fraction = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
    eighths = int(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = BAR_FULL * full
    if full < width:
        bar += (BAR_PARTIAL[part] if part else BAR_EMPTY) + BAR_EMPTY * (width - full - 1)
    return bar


def percent(done: int, total: int) -> str:
    """Progress as a whole percentage; 100 % only when everything is done."""
    if total <= 0:
        return "100%"
    value = math.floor(100 * done / total)
    return f"{min(value, 100)}%"


def count(value: int) -> str:
    """A whole number with thousands separators."""
    return f"{value:,}"


def rate(per_s: float) -> str:
    """Items per second, short: ``850/s``, ``12.4k/s``; a dash when nothing moves."""
    if per_s <= 0 or not math.isfinite(per_s):
        return DASH
    if per_s < 10:
        return f"{per_s:.1f}/s"
    if per_s < 10_000:
        return f"{per_s:,.0f}/s"
    if per_s < 10_000_000:
        return f"{per_s / 1000:.1f}k/s"
    return f"{per_s / 1_000_000:.1f}M/s"


def duration(seconds: float | None) -> str:
    """A span of time as ``42s``, ``3m07s``, ``2h05m`` or ``3d04h``."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return DASH
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def clock(seconds: float) -> str:
    """Uptime as ``H:MM:SS`` (hours grow past 24 rather than wrapping)."""
    whole = max(int(seconds), 0)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def eta(remaining: int, per_s: float) -> str:
    """Time left at the current rate; a dash when nothing is left or nothing moves."""
    if remaining <= 0 or per_s <= 0:
        return DASH
    return duration(remaining / per_s)


def age(seconds: float | None) -> str:
    """How long ago a node was last heard from, in whole seconds; a dash if never.

    Whole seconds because tenths would change on every refresh for every node — a
    flickering column and hundreds of cell updates that tell the operator nothing.
    """
    if seconds is None or not math.isfinite(seconds):
        return DASH
    return duration(max(seconds, 0.0))


def chain(via: tuple[str, ...]) -> str:
    """The chain links between a node and the console, nearest the console first."""
    return " → ".join(via) if via else "direct"
