"""Content digests (`algorithm:hex`), as the OCI image spec defines them."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import DigestInvalid

# Registered algorithms and the exact length of their lowercase hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
# The spec's general grammar; we then accept only registered algorithms.
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_LOWER_HEX = re.compile(r"[0-9a-f]+")
# Texts parsed before, and their values: every request names a digest or two (path, link files), and
# the same few come back again and again. Values are immutable, so sharing one is safe; only valid
# texts are kept, and the cache is emptied when full, so it stays small whatever clients send.
PARSE_CACHE_SIZE = 4096
_parsed: dict[str, Digest] = {}


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        if type(text) is str:
            found = _parsed.get(text)
            if found is not None:
                return found
        digest = cls._parse(text)
        if type(text) is str and cls is Digest:
            if len(_parsed) >= PARSE_CACHE_SIZE:
                _parsed.clear()
            _parsed[text] = digest
        return digest

    @classmethod
    def _parse(cls, text: str) -> Digest:
        if not isinstance(text, str) or len(text) > 256 or not _GRAMMAR.fullmatch(text):
            raise DigestInvalid(f"invalid digest {text!r}: expected algorithm:hex, e.g. sha256:<64 hex>",
                                detail={"digest": str(text)[:300]})
        algorithm, _, encoded = text.partition(":")
        length = ALGORITHMS.get(algorithm)
        if length is None:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm!r}: use sha256 or sha512",
                                detail={"digest": text})
        if len(encoded) != length or not _LOWER_HEX.fullmatch(encoded):
            raise DigestInvalid(f"invalid {algorithm} digest: expected {length} lowercase hex characters",
                                detail={"digest": text})
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def looks_like_digest(text: str) -> bool:
    """True when a manifest reference is meant as a digest (it has a colon; tags never do)."""
    return ":" in text


class Hasher:
    """Incremental digest of a byte stream; any chunking of the same bytes gives the same digest."""

    __slots__ = ("algorithm", "_h", "size")

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in ALGORITHMS:
            raise DigestInvalid(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._h = hashlib.new(algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)
        self.size += len(chunk)

    def copy(self) -> Hasher:
        other = Hasher.__new__(Hasher)
        other.algorithm, other._h, other.size = self.algorithm, self._h.copy(), self.size
        return other

    def digest(self) -> Digest:
        return Digest(self.algorithm, self._h.hexdigest())


def digest_of_chunks(chunks: Iterable[bytes], algorithm: str = "sha256") -> Digest:
    h = Hasher(algorithm)
    for c in chunks:
        h.update(c)
    return h.digest()
