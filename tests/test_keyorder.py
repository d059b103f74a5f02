"""The "after a position" condition shared by the source's keyset pages and an append's clearing DELETE."""

from __future__ import annotations

from src.common.keyorder import after_position


def mysql(i: int) -> str:
    return "%s"


def numbered(i: int) -> str:
    return f"${i + 1}"


def test_nested_condition_and_value_order() -> None:
    text, order = after_position(["a", "b", "c"], (1, 2, 3), numbered)
    assert text == "(a > $1 OR (a = $1 AND (b > $2 OR (b = $2 AND c > $3))))"
    assert order == [0, 0, 1, 1, 2]
    text, order = after_position(["a", "b", "c"], (1, 2, 3), mysql, range_first=True)
    assert text == "a >= %s AND (a > %s OR (a = %s AND (b > %s OR (b = %s AND c > %s))))"
    assert order == [0, 0, 0, 1, 1, 2]


def test_trailing_nones_are_trimmed_and_the_first_value_kept() -> None:
    assert after_position(["a", "b", "c"], (1, 2, None), numbered) == (
        "(a > $1 OR (a = $1 AND b > $2))",
        [0, 0, 1],
    )
    assert after_position(["a", "b"], (1, None), mysql, range_first=True) == ("a > %s", [0])
    assert after_position(["a"], (None,), numbered) == ("a > $1", [0])
    # only trailing Nones go: an inner None stays bound (it matches nothing, as NULL comparisons do)
    assert after_position(["a", "b", "c"], (1, None, 3), numbered)[1] == [0, 0, 1, 1, 2]
