"""Errors meant for people.

A `UserError` is bad input: the CLI prints its message (no traceback) and exits with status 2.
Anything else is a bug or a crash and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: wrong id, bad option, unreadable file, unusable directory."""


def close_matches(name: str, candidates: Iterable[str], limit: int = 5) -> list[str]:
    """Candidates that look like `name`, best first (case-insensitive, substring hits included)."""
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    hits = [
        lowered[m] for m in difflib.get_close_matches(name.lower(), lowered, n=limit, cutoff=0.5)
    ]
    needle = name.lower().split(":")[-1]
    for c in candidates:
        if len(hits) >= limit:
            break
        if needle and needle in c.lower() and c not in hits:
            hits.append(c)
    return hits[:limit]


def unknown(kind: str, name: str, candidates: Iterable[str], hint: str = "") -> UserError:
    """A `UserError` for an unknown name that lists close matches."""
    candidates = sorted(candidates)
    matches = close_matches(name, candidates)
    message = f"unknown {kind} {name!r}."
    if matches:
        message += " Did you mean: " + ", ".join(matches) + "?"
    elif len(candidates) <= 12:
        message += " Known: " + ", ".join(candidates) + "."
    if hint:
        message += " " + hint
    return UserError(message)
