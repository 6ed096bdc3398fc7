"""Defensive field access: dumps are messy, and a record whose field has the
wrong type must become a counted drop, never a crash."""

from __future__ import annotations

import html
from typing import Any


def text(obj: dict, key: str) -> str:
    """`obj[key]` as a string ("" when missing or not a string/number)."""
    v = obj.get(key)
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return ""


def number(obj: dict, key: str, default: int = 0) -> int:
    """`obj[key]` as an int (Pushshift and SE scores are ints or numeric strings)."""
    v: Any = obj.get(key)
    if isinstance(v, bool):
        return default
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v == v and abs(v) < 2**63:
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            return default
    return default


def unescape(s: str) -> str:
    """Reddit and S2 text carries HTML entities (&amp; &gt;) but no tags."""
    return html.unescape(s) if "&" in s else s


def id_order(i: str) -> tuple[int, str]:
    """Sort key for base-36 / decimal ids as strings: shorter is older."""
    return (len(i), i)
