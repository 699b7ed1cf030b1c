import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest

from adapters.filesystem import FilesystemBlobStore, FilesystemLocks
from domain.errors import CollectionRunning, UploadBusy
from domain.names import RepositoryName
from tests.support import REPO_ROOT


def run(coro):
    return asyncio.run(coro)


def test_one_collector_at_a_time(locks):
    async def go():
        async with locks.collector():
            with pytest.raises(CollectionRunning):
                async with locks.collector():
                    pass
        async with locks.collector():  # free again
            pass
    run(go())


def test_exclusive_waits_for_shared_and_blocks_new_shared(locks):
    events = []

    async def reader(name, hold):
        async with locks.shared():
            events.append(f"{name} in")
            await asyncio.sleep(hold)
            events.append(f"{name} out")

    async def writer():
        await asyncio.sleep(0.02)
        async with locks.exclusive():
            events.append("x in")
            await asyncio.sleep(0.05)
            events.append("x out")

    async def late_reader():
        await asyncio.sleep(0.04)  # arrives while the writer waits or holds
        await reader("late", 0)

    async def go():
        await asyncio.gather(reader("r", 0.1), writer(), late_reader())
    run(go())
    assert events.index("r out") < events.index("x in"), events
    assert events.index("x out") < events.index("late in"), events


def test_filesystem_collector_lock_spans_processes(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", f"""
import asyncio, sys, time
sys.path.insert(0, {os.path.join(REPO_ROOT, 'src')!r})
from adapters.filesystem import FilesystemLocks, Layout
async def main():
    async with FilesystemLocks(Layout({str(tmp_path)!r})).collector():
        print("held", flush=True)
        time.sleep(3)
asyncio.run(main())
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from adapters.filesystem import Layout
        locks = FilesystemLocks(Layout(str(tmp_path)))

        async def go():
            async with locks.collector():
                pass
        with pytest.raises(CollectionRunning):
            run(go())
    finally:
        holder.wait(10)
    started = time.monotonic()
    run(go())
    assert time.monotonic() - started < 1


def _open_session(locks, repo, upload_id):
    """The filesystem locks a session through its files: make it exist, as StartUpload does."""
    layout = getattr(locks, "layout", None)
    if layout is not None:
        run(FilesystemBlobStore(layout).create_upload(repo, upload_id, 0.0))


def test_one_request_per_upload_session(locks):
    repo, one, other = RepositoryName("lib/x"), str(uuid.uuid4()), str(uuid.uuid4())
    for upload_id in (one, other):
        _open_session(locks, repo, upload_id)

    async def go():
        async with locks.session(repo, one):
            with pytest.raises(UploadBusy):  # never waits
                async with locks.session(repo, one):
                    pass
            async with locks.session(repo, other):  # other sessions are free
                pass
        async with locks.session(repo, one):  # free again
            pass
        async with locks.session(repo, str(uuid.uuid4())):  # no such session: nothing to hold
            pass
    run(go())
