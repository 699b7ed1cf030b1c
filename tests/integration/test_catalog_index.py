"""The filesystem catalog index (ours, beside Distribution's layout) is rebuilt from the storage when it
is missing or dropped, so data another registry wrote is listed correctly."""

from __future__ import annotations

import asyncio
import os
import shutil

from adapters.filesystem import FilesystemRepositoryStore, Layout
from domain.digest import Digest
from domain.names import RepositoryName


def run(coro):
    return asyncio.run(coro)


def test_missing_or_stale_index_is_rebuilt(tmp_path):
    layout = Layout(str(tmp_path))
    store = FilesystemRepositoryStore(layout)
    for name in ("a", "a/b", "z"):
        run(store.link_manifest(RepositoryName(name), Digest.of(name.encode())))
    run(store.link_blob(RepositoryName("blobs-only"), Digest.of(b"x")))
    assert run(store.catalog()) == ["a", "a/b", "z"]
    # as if Distribution wrote the data: no index at all
    shutil.rmtree(layout.catalog_dir())
    fresh = FilesystemRepositoryStore(layout)
    assert run(fresh.catalog()) == ["a", "a/b", "z"]
    # a stale marker and a missing one are put right by a refresh (at start, after a collection)
    os.unlink(layout.catalog_marker(RepositoryName("z")))
    open(layout.catalog_marker(RepositoryName("ghost")), "w").close()
    run(fresh.refresh_catalog())
    assert run(FilesystemRepositoryStore(layout).catalog()) == ["a", "a/b", "z"]


def test_a_tag_left_half_written_is_not_listed(tmp_path):
    """Killed between creating a tag's directory and writing its current link: the tag names nothing
    and must not be listed (found by the SIGKILL test)."""
    import asyncio
    import os

    from adapters.filesystem import FilesystemRepositoryStore, Layout
    from domain.digest import Digest
    from domain.names import RepositoryName, Tag

    layout = Layout(str(tmp_path))
    store = FilesystemRepositoryStore(layout)
    repo, digest = RepositoryName("crash/app"), Digest.of(b"m")
    asyncio.run(store.link_manifest(repo, digest))
    asyncio.run(store.set_tag(repo, Tag("whole"), digest))
    os.makedirs(os.path.dirname(layout.tag_index_link(repo, Tag("half"), digest)))
    assert asyncio.run(store.tags(repo)) == ["whole"]
