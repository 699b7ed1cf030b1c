import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.digest import Digest, Hasher, digest_of_chunks
from domain.errors import DigestInvalid

hex_of = {"sha256": 64, "sha512": 128}


@given(st.sampled_from(["sha256", "sha512"]), st.data())
def test_parse_format_round_trip(algorithm, data):
    hex_ = data.draw(st.text("0123456789abcdef", min_size=hex_of[algorithm], max_size=hex_of[algorithm]))
    d = Digest.parse(f"{algorithm}:{hex_}")
    assert str(d) == f"{algorithm}:{hex_}"
    assert Digest.parse(str(d)) == d


@given(st.binary(max_size=5000), st.lists(st.integers(0, 5000), max_size=10), st.sampled_from(["sha256", "sha512"]))
def test_any_chunking_gives_the_same_digest(data, cuts, algorithm):
    points = sorted({0, len(data), *[c % (len(data) + 1) for c in cuts]})
    chunks = [data[a:b] for a, b in zip(points, points[1:])]
    assert digest_of_chunks(chunks, algorithm) == Digest.of(data, algorithm)
    assert Digest.of(data, algorithm).hex == hashlib.new(algorithm, data).hexdigest()


def test_hasher_counts_bytes_and_copies_independently():
    h = Hasher()
    h.update(b"abc")
    other = h.copy()
    other.update(b"def")
    assert h.size == 3 and other.size == 6
    assert h.digest() == Digest.of(b"abc") and other.digest() == Digest.of(b"abcdef")


@pytest.mark.parametrize("text", [
    "", "sha256", "sha256:", ":abc", "sha256:abc", "sha256:" + "A" * 64, "sha256:" + "g" * 64,
    "md5:d41d8cd98f00b204e9800998ecf8427e", "sha512:" + "a" * 64, "sha256:" + "a" * 65,
    "sha256:" + "a" * 63 + "/", "../../etc/passwd", "sha256:" + "a" * 64 + "\x00",
])
def test_invalid_digests_are_rejected(text):
    with pytest.raises(DigestInvalid):
        Digest.parse(text)


@given(st.text(max_size=300))
def test_parse_never_crashes_and_accepts_only_canonical_forms(text):
    try:
        d = Digest.parse(text)
    except DigestInvalid:
        return
    assert str(d) == text


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3 << 20), max_size=8), st.integers(0, 255))
def test_hashed_stream_passes_bytes_through_and_hashes_them_in_order(sizes, seed):
    """`hashed` regroups the stream and hashes pieces in a thread: the bytes that come out, and the
    digest, must be those of the stream, whatever the chunk sizes around the batch size."""
    import asyncio

    from domain.usecases._common import hashed

    chunks = [bytes([(seed + i) % 256]) * n + bytes([i]) for i, n in enumerate(sizes)]

    async def source():
        for c in chunks:
            yield c

    async def drain():
        h = Hasher()
        out = [piece async for piece in hashed(source(), h, 0, 0)]
        return b"".join(out), h

    out, h = asyncio.run(drain())
    assert out == b"".join(chunks)
    assert h.digest() == Digest.of(out) and h.size == len(out)
