import asyncio
import os
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain.digest import Digest
from domain.errors import BlobUnknown, BlobUploadInvalid, BlobUploadUnknown
from domain.names import RepositoryName

R = RepositoryName("lib/x")
UID = "0b7f4a1e-3f0c-4a8e-9a55-0123456789ab"


def run(coro):
    return asyncio.run(coro)


async def gen(*chunks):
    for c in chunks:
        yield c


async def collect(it):
    return b"".join([c async for c in it])


def test_put_get_stat_delete(blob_store):
    data = bytes(range(256)) * 10  # not UTF-8
    d = Digest.of(data)
    assert run(blob_store.stat(d)) is None
    run(blob_store.put(d, data))
    run(blob_store.put(d, data))  # idempotent
    assert run(blob_store.stat(d)) == len(data)
    assert run(blob_store.get(d)) == data
    assert run(collect(blob_store.read(d))) == data
    assert run(blob_store.delete(d)) is True
    assert run(blob_store.delete(d)) is False
    with pytest.raises(BlobUnknown):
        run(blob_store.get(d))
    with pytest.raises(BlobUnknown):
        run(collect(blob_store.read(d)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=3 << 20), st.data())
def test_read_at_offsets(blob_store, data, draw):
    d = Digest.of(data)
    run(blob_store.put(d, data))
    start = draw.draw(st.integers(0, len(data) - 1))
    length = draw.draw(st.one_of(st.none(), st.integers(0, len(data) - start)))
    expected = data[start:] if length is None else data[start:start + length]
    assert run(collect(blob_store.read(d, start, length))) == expected


def test_upload_append_across_sessions_and_commit(blob_store):
    run(blob_store.create_upload(R, UID, 1_700_000_000.0))
    assert run(blob_store.upload_size(R, UID)) == 0
    assert run(blob_store.append_upload(R, UID, gen(b"ab", b"cd"))) == 4
    assert run(blob_store.append_upload(R, UID, gen(b"\xff\x00"))) == 6
    assert run(collect(blob_store.read_upload(R, UID))) == b"abcd\xff\x00"
    d = Digest.of(b"abcd\xff\x00")
    run(blob_store.commit_upload(R, UID, d, 6))
    assert run(blob_store.get(d)) == b"abcd\xff\x00"
    assert run(blob_store.upload_size(R, UID)) is None
    with pytest.raises(BlobUploadUnknown):
        run(blob_store.append_upload(R, UID, gen(b"x")))


def test_commit_of_existing_blob_keeps_it(blob_store):
    d = Digest.of(b"same")
    run(blob_store.put(d, b"same"))
    run(blob_store.create_upload(R, UID, 0.0))
    run(blob_store.append_upload(R, UID, gen(b"same")))
    run(blob_store.commit_upload(R, UID, d, 4))
    assert run(blob_store.get(d)) == b"same"
    assert run(blob_store.upload_size(R, UID)) is None


def test_cancel(blob_store):
    run(blob_store.create_upload(R, UID, 0.0))
    run(blob_store.append_upload(R, UID, gen(b"abc")))
    assert run(blob_store.cancel_upload(R, UID)) is True
    assert run(blob_store.cancel_upload(R, UID)) is False
    assert run(blob_store.upload_size(R, UID)) is None


def test_sessions_are_per_repository(blob_store):
    run(blob_store.create_upload(R, UID, 0.0))
    assert run(blob_store.upload_size(RepositoryName("other"), UID)) is None


def test_concurrent_sessions_do_not_mix(blob_store):
    ids = [f"0b7f4a1e-3f0c-4a8e-9a55-0123456789{i:02x}" for i in range(8)]

    async def one(i, uid):
        await blob_store.create_upload(R, uid, 0.0)
        for _ in range(5):
            await blob_store.append_upload(R, uid, gen(bytes([i]) * 1000))
            await asyncio.sleep(0)
        return await collect(blob_store.read_upload(R, uid))

    async def all_():
        return await asyncio.gather(*(one(i, uid) for i, uid in enumerate(ids)))
    for i, data in enumerate(run(all_())):
        assert data == bytes([i]) * 5000
    for uid in ids:
        run(blob_store.cancel_upload(R, uid))


def test_writable(blob_store):
    run(blob_store.check_writable())


def test_touch_info_and_listing(blob_store):
    before = time.time() - 1
    d = Digest.of(b"used")
    assert run(blob_store.touch(d)) is False
    assert run(blob_store.info(d)) is None
    run(blob_store.put(d, b"used"))
    info = run(blob_store.info(d))
    assert info.size == 4 and info.last_used >= before
    assert run(blob_store.touch(d)) is True
    other = Digest.of(b"other")
    run(blob_store.put(other, b"other"))

    async def listing():
        return {b.digest: b.size async for b in blob_store.all_blobs()}
    assert run(listing()) == {d: 4, other: 5}


def test_upload_listing(blob_store):
    before = time.time() - 1
    run(blob_store.create_upload(R, UID, time.time()))
    run(blob_store.append_upload(R, UID, gen(b"abc")))
    assert run(blob_store.count_uploads(R)) == 1 and run(blob_store.count_uploads(RepositoryName("none"))) == 0

    async def listing():
        return [u async for u in blob_store.all_uploads()]
    (upload,) = run(listing())
    assert upload.repo == R and upload.upload_id == UID and upload.last_modified >= before
    run(blob_store.cancel_upload(R, UID))
    assert run(listing()) == [] and run(blob_store.count_uploads(R)) == 0


def test_large_chunks_are_stored_whole_and_in_order(blob_store):
    """Large chunks take the threaded write path (and, when durable, background flushes): the stored
    bytes must still be exactly the stream, in order."""
    pieces = [bytes([i]) * (700_000 + i * 4099) for i in range(60)]  # about 42 MB, past SYNC_EVERY
    data = b"".join(pieces)
    run(blob_store.create_upload(R, UID, 1_700_000_000.0))
    assert run(blob_store.append_upload(R, UID, gen(*pieces))) == len(data)
    assert run(collect(blob_store.read_upload(R, UID))) == data
    d = Digest.of(data)
    run(blob_store.commit_upload(R, UID, d, len(data)))
    assert run(blob_store.get(d)) == data


def test_a_stream_that_breaks_keeps_what_was_written(blob_store):
    """A client that goes away mid-stream: the error comes through, the session holds a prefix of what
    was sent, and the store stays usable."""
    async def broken():
        yield b"a" * (1 << 20)
        yield b"b" * 10
        raise ConnectionError("client went away")

    run(blob_store.create_upload(R, UID, 1_700_000_000.0))
    with pytest.raises(ConnectionError):
        run(blob_store.append_upload(R, UID, broken()))
    size = run(blob_store.upload_size(R, UID))
    stored = run(collect(blob_store.read_upload(R, UID)))
    assert len(stored) == size and (b"a" * (1 << 20) + b"b" * 10).startswith(stored)
    assert run(blob_store.append_upload(R, UID, gen(b"z"))) == size + 1


async def _failing(*chunks):
    for c in chunks:
        yield c
    raise ConnectionResetError("the client hung up mid-body")


def test_append_is_all_or_nothing(blob_store):
    """A body that fails midway (large pieces too, which take the threaded write path) leaves the
    session exactly as it was: a client resumes from the size the registry reports."""
    run(blob_store.create_upload(R, UID, 0.0))
    run(blob_store.append_upload(R, UID, gen(b"kept")))
    for pieces in [(b"lost",), (b"x" * (1 << 20), b"y" * (300 << 10))]:
        with pytest.raises(ConnectionResetError):
            run(blob_store.append_upload(R, UID, _failing(*pieces)))
        assert run(blob_store.upload_size(R, UID)) == 4
        assert run(collect(blob_store.read_upload(R, UID))) == b"kept"
    assert run(blob_store.append_upload(R, UID, gen(b"more"))) == 8


def test_upload_info_and_listing(blob_store):
    assert run(blob_store.uploads(R)) == [] and run(blob_store.upload_info(R, UID)) is None
    before = time.time() - 1
    run(blob_store.create_upload(R, UID, before))
    run(blob_store.append_upload(R, UID, gen(b"abc")))
    info = run(blob_store.upload_info(R, UID))
    assert (info.repo, info.upload_id, info.size) == (R, UID, 3) and info.last_modified >= before
    assert run(blob_store.uploads(R)) == [UID] and run(blob_store.count_uploads(R)) == 1
    assert run(blob_store.uploads(RepositoryName("lib"))) == []


def test_commit_refuses_bytes_other_than_those_hashed(blob_store):
    """The caller hashed `size` bytes; a session holding anything else (another request appended
    meanwhile) must not become the blob."""
    run(blob_store.create_upload(R, UID, 0.0))
    run(blob_store.append_upload(R, UID, gen(b"hashed+extra")))
    d = Digest.of(b"hashed")
    with pytest.raises(BlobUploadInvalid):
        run(blob_store.commit_upload(R, UID, d, 6))
    assert run(blob_store.stat(d)) is None


def test_commit_marks_the_blob_used_now(blob_store):
    """A session written long ago becomes a blob that counts as used at its commit, so a collection
    running alongside (whose horizon is before the commit) keeps it; also when the blob existed."""
    for existing in (False, True):
        data = b"old session bytes"
        d = Digest.of(data)
        if existing:
            run(blob_store.put(d, data))
        run(blob_store.create_upload(R, UID, 0.0))
        run(blob_store.append_upload(R, UID, gen(data)))
        layout = getattr(blob_store, "layout", None)
        if layout is not None:  # the session's bytes were last written a day ago
            os.utime(layout.upload_data(R, UID), (time.time() - 86400,) * 2)
            if existing:
                os.utime(layout.blob_data(d), (time.time() - 86400,) * 2)
        before = time.time() - 1
        run(blob_store.commit_upload(R, UID, d, len(data)))
        assert run(blob_store.info(d)).last_used >= before
        assert run(blob_store.delete(d))


def test_commit_replaces_a_stored_blob_of_another_size(blob_store):
    """Bytes of another size cannot hash to the digest: an honest upload repairs such a copy."""
    good = b"the right bytes"
    d = Digest.of(good)
    run(blob_store.put(d, good + b"+poison"))
    run(blob_store.create_upload(R, UID, 0.0))
    run(blob_store.append_upload(R, UID, gen(good)))
    run(blob_store.commit_upload(R, UID, d, len(good)))
    assert run(blob_store.get(d)) == good
