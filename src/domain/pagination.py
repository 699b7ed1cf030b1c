"""Lexically sorted lists served in pages (`n`, `last`), as tag lists and the catalog are."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import PaginationInvalid

MAX_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    # The `last` value to ask for the next page with, when one may follow.
    next_last: str | None


def parse_page_size(text: str | None, default: int | None = None) -> int | None:
    if text is None or text == "":
        return default
    try:
        n = int(text)
    except ValueError:
        raise PaginationInvalid(f"n must be a whole number, got {text[:50]!r}") from None
    if n < 0:
        raise PaginationInvalid("n must not be negative")
    return min(n, MAX_PAGE)


def paginate(sorted_items: Sequence[str], n: int | None, last: str | None) -> Page:
    """Items strictly after `last`, at most `n` of them. `sorted_items` must be sorted and unique."""
    start = bisect.bisect_right(sorted_items, last) if last else 0
    if n is None:
        return Page(list(sorted_items[start:]), None)
    items = list(sorted_items[start:start + n])
    more = start + n < len(sorted_items)
    return Page(items, items[-1] if more and items else None)
