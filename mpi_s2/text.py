"""Small text helpers for messages (pure: imports nothing from the package, so any module may use it)."""

from __future__ import annotations

import time


def plural(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun`` in the right number: ``plural(1, "window")`` -> ``"1 window"``, ``plural(3,
    "window")`` -> ``"3 windows"``; ``plural`` is the plural form when it is not ``noun + "s"``."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def timestamp(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (default: now) in ISO-8601 UTC, to the second: ``2026-12-02T04:40:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
