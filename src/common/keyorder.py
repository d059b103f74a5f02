"""The condition "after this position in a key order", for any engine (pure). The caller quotes the names
and chooses the placeholders; values are always bound, never formatted into SQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Placeholder = Callable[[int], str]  # the placeholder text of the position's i-th value (0-based)


def after_position(
    names: Sequence[str], position: Sequence[object], placeholder: Placeholder, *, range_first: bool = False
) -> tuple[str, list[int]]:
    """Rows after ``position`` in the lexicographic order of the quoted columns ``names``; for ``(a, b, c)``:
    ``(a > ? OR (a = ? AND (b > ? OR (b = ? AND c > ?))))``, led by ``a >= ? AND`` when ``range_first`` (an
    index range on the first column for MySQL's optimizer; a single column is the plain ``a > ?``).

    A position's trailing Nones stand for "after every value of those columns" and are trimmed (``(ts,
    None)``: after all of ts); its first value is always kept, so a caller for whom an all-None position
    means "from the beginning" checks for it first.

    Returns the text and, for each placeholder in text order, the index of its value in ``position``.
    Positional placeholders (``%s``) bind ``[position[i] for i in order]``; numbered ones (``$n``, from
    ``lambda i: f"${i + 1}"``) bind each used value once: ``position[: max(order) + 1]``."""
    last = len(position) - 1
    while last > 0 and position[last] is None:
        last -= 1
    text, order = f"{names[last]} > {placeholder(last)}", [last]
    for i in range(last - 1, -1, -1):
        text = f"({names[i]} > {placeholder(i)} OR ({names[i]} = {placeholder(i)} AND {text}))"
        order = [i, i, *order]
    if range_first and last > 0:
        text, order = f"{names[0]} >= {placeholder(0)} AND {text}", [0, *order]
    return text, order
