"""Secrets: a type whose repr is redacted, and a scrubber for any text that may leak one."""

from __future__ import annotations

import re
import threading
from typing import Final

REDACTED: Final = "***"
WHOLE_WORD_BELOW: Final = 8  # a secret shorter than this is scrubbed only where it stands as a word
_known: set[str] = set()
_lock = threading.Lock()


class Secret:
    """A secret string. ``str()``/``repr()`` never show it; call ``reveal()`` at the point of use."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= 4:
            with _lock:
                _known.add(value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        """Unpickled (by a worker process) through ``__init__``, so the copy is known to ``scrub`` too."""
        return (Secret, (self._value,))

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def scrub(text: str) -> str:
    """Replace every known secret value in ``text`` (longest first) with ``***``. A short one (a local
    ``test`` key, say) only where no letter or digit touches it, or every word holding it would be
    garbled ("the la*** state"); in ``user:pw@host`` or ``/pw`` it is still replaced."""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value not in text:
            continue
        if len(value) >= WHOLE_WORD_BELOW:
            text = text.replace(value, REDACTED)
        else:
            text = re.sub(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])", REDACTED, text)
    return text
