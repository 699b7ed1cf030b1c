import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import PaginationInvalid
from domain.pagination import paginate, parse_page_size


@given(st.lists(st.text(min_size=1, max_size=8), max_size=60, unique=True), st.integers(1, 20))
def test_pages_concatenate_to_the_full_sorted_list(items, n):
    items = sorted(items)
    seen, last, pages = [], None, 0
    while True:
        page = paginate(items, n, last)
        assert len(page.items) <= n
        seen += page.items
        pages += 1
        if page.next_last is None:
            break
        last = page.next_last
        assert pages <= len(items) + 1
    assert seen == items


@given(st.lists(st.text(max_size=5), unique=True), st.text(max_size=5))
def test_last_excludes_everything_up_to_it(items, last):
    items = sorted(items)
    assert paginate(items, None, last or None).items == [i for i in items if not last or i > last]


def test_page_size_parsing():
    assert parse_page_size(None) is None
    assert parse_page_size("0") == 0
    assert parse_page_size("5") == 5
    assert parse_page_size("999999999") == 10_000
    for bad in ("-1", "x", "1.5"):
        with pytest.raises(PaginationInvalid):
            parse_page_size(bad)


def test_zero_page_is_empty():
    assert paginate(["a", "b"], 0, None).items == []
