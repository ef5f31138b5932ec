"""Small text helpers for messages (pure)."""

from __future__ import annotations


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``"1 window"``, ``"3 windows"``: the count with the noun in the right number."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"
