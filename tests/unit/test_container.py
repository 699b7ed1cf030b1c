import pytest

from adapters.filesystem import FilesystemBlobStore
from adapters.memory import MemoryBlobStore
from entrypoints.container import build_container
from entrypoints.settings import Settings


def test_backend_is_chosen_by_settings(tmp_path):
    assert isinstance(build_container(Settings(storage="memory")).adapters.blobs(), MemoryBlobStore)
    fs = build_container(Settings(storage="filesystem", storage_root=str(tmp_path / "x"), port=5001))
    assert isinstance(fs.adapters.blobs(), FilesystemBlobStore)
    assert fs.adapters.layout().root == str(tmp_path / "x") and fs.config.port() == 5001
    assert not (tmp_path / "x").exists()  # building the container does no I/O


def test_unknown_backend_fails_loudly():
    with pytest.raises(ValueError, match="unknown storage backend 'floppy'"):
        build_container(Settings.model_construct(**{**Settings().model_dump(), "storage": "floppy"}))


def test_use_cases_are_shared_singletons():
    container = build_container(Settings(storage="memory"))
    assert container.put_manifest() is container.put_manifest()
    assert container.put_manifest().blobs is container.adapters.blobs()
