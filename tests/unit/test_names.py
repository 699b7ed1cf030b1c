import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.digest import Digest
from domain.errors import DigestInvalid, NameInvalid, TagInvalid
from domain.names import RepositoryName, Tag, parse_reference

SPEC_NAME = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")

component = st.from_regex(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*", fullmatch=True)


@given(st.lists(component, min_size=1, max_size=5))
def test_spec_names_are_accepted(parts):
    text = "/".join(parts)
    if len(text) <= 255:
        assert str(RepositoryName.parse(text)) == text


@given(st.text(max_size=300))
def test_name_grammar_matches_the_spec(text):
    expected = bool(SPEC_NAME.fullmatch(text)) and len(text) <= 255
    try:
        RepositoryName.parse(text)
        accepted = True
    except NameInvalid:
        accepted = False
    assert accepted == expected


@given(st.text(max_size=200))
def test_tag_grammar_matches_the_spec(text):
    try:
        Tag.parse(text)
        accepted = True
    except TagInvalid:
        accepted = False
    assert accepted == bool(SPEC_TAG.fullmatch(text))


@pytest.mark.parametrize("text", ["..", "a/../b", "/a", "a/", "a//b", "A", "a\x00b", "_a", "a" * 256,
                                  "a/_layers", "%2e%2e"])
def test_path_tricks_are_invalid_names(text):
    with pytest.raises(NameInvalid):
        RepositoryName.parse(text)


def test_references_are_digests_when_they_have_a_colon():
    assert isinstance(parse_reference("latest"), Tag)
    assert isinstance(parse_reference("sha256:" + "a" * 64), Digest)
    with pytest.raises(DigestInvalid):
        parse_reference("sha256:short")
    with pytest.raises(TagInvalid):
        parse_reference(".hidden")
