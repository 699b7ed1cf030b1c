"""Repository names, tags and manifest references, with the OCI distribution-spec grammar."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .digest import Digest, looks_like_digest
from .errors import NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_NAME_LENGTH = 255
# Names and tags parsed before (every request parses one or two, mostly the same ones): values are
# immutable, only valid texts are kept, and a full cache is emptied, so it stays small.
PARSE_CACHE_SIZE = 4096
_names: dict[str, RepositoryName] = {}
_tags: dict[str, Tag] = {}


def _remember(cache: dict, text: str, value):
    if type(text) is str:
        if len(cache) >= PARSE_CACHE_SIZE:
            cache.clear()
        cache[text] = value
    return value


@dataclass(frozen=True, slots=True, order=True)
class RepositoryName:
    value: str

    @classmethod
    def parse(cls, text: str) -> RepositoryName:
        found = _names.get(text) if cls is RepositoryName else None
        if found is not None:
            return found
        if len(text) > MAX_NAME_LENGTH:
            raise NameInvalid(f"repository name is {len(text)} characters long; the limit is {MAX_NAME_LENGTH}",
                              detail={"name": text[:300]})
        if not _NAME.fullmatch(text):
            raise NameInvalid(
                f"invalid repository name {text!r}: use lowercase letters, digits and separators (. _ __ -), "
                "components joined by /", detail={"name": text})
        return _remember(_names, text, cls(text)) if cls is RepositoryName else cls(text)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True, order=True)
class Tag:
    value: str

    @classmethod
    def parse(cls, text: str) -> Tag:
        found = _tags.get(text) if cls is Tag else None
        if found is not None:
            return found
        if not _TAG.fullmatch(text):
            raise TagInvalid(f"invalid tag {text[:200]!r}: up to 128 of [A-Za-z0-9_.-], not starting with . or -",
                             detail={"tag": text[:300]})
        return _remember(_tags, text, cls(text)) if cls is Tag else cls(text)

    def __str__(self) -> str:
        return self.value


Reference = Tag | Digest


def parse_reference(text: str) -> Reference:
    """A manifest reference is a digest when it contains a colon, otherwise a tag."""
    return Digest.parse(text) if looks_like_digest(text) else Tag.parse(text)
