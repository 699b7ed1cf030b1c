"""Every adapter of a port runs the same contract tests. A new backend adds one line to each fixture."""

from __future__ import annotations

import os

import pytest

from adapters.filesystem import FilesystemBlobStore, FilesystemLocks, FilesystemRepositoryStore, Layout
from adapters.memory import MemoryBlobStore, MemoryLocks, MemoryRepositoryStore


def _no_temp_files(root: str) -> None:
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files if ".tmp-" in f]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


@pytest.fixture(params=["memory", "filesystem", "filesystem-fsync"])
def blob_store(request, tmp_path):
    if request.param == "memory":
        yield MemoryBlobStore()
        return
    yield FilesystemBlobStore(Layout(str(tmp_path)), durable=request.param.endswith("fsync"))
    _no_temp_files(str(tmp_path))


@pytest.fixture(params=["memory", "filesystem", "filesystem-fsync"])
def repo_store(request, tmp_path):
    if request.param == "memory":
        yield MemoryRepositoryStore()
        return
    yield FilesystemRepositoryStore(Layout(str(tmp_path)), durable=request.param.endswith("fsync"))
    _no_temp_files(str(tmp_path))


@pytest.fixture(params=["memory", "filesystem"])
def locks(request, tmp_path):
    return MemoryLocks() if request.param == "memory" else FilesystemLocks(Layout(str(tmp_path)))


@pytest.fixture(params=["memory", "filesystem"])
def two_views(request, tmp_path):
    """Two handles on one repository store, as two workers or processes have (memory: one process)."""
    if request.param == "memory":
        store = MemoryRepositoryStore()
        return store, store
    return FilesystemRepositoryStore(Layout(str(tmp_path))), FilesystemRepositoryStore(Layout(str(tmp_path)))
