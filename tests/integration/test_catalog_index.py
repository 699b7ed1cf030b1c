"""The filesystem catalog index (ours, beside Distribution's layout) is rebuilt from the storage when it
is missing or dropped, so data another registry wrote is listed correctly; tag lists skip what a crash
left half written."""

from __future__ import annotations

import asyncio
import os
import shutil

from adapters.filesystem import FilesystemRepositoryStore, Layout
from domain.digest import Digest
from domain.names import RepositoryName, Tag


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


def test_tags_appear_and_go_whole_and_crash_leftovers_are_not_listed(tmp_path):
    """A kill between creating a tag's directory and writing its link once left a listed tag that gave
    404 (found by the SIGKILL test). New tags are now assembled under a dot-name and renamed into place,
    deleted ones renamed away first; what a kill leaves under a dot-name is never listed."""
    layout = Layout(str(tmp_path))
    store = FilesystemRepositoryStore(layout)
    repo, digest, other = RepositoryName("crash/app"), Digest.of(b"m"), Digest.of(b"n")
    run(store.link_manifest(repo, digest))
    run(store.set_tag(repo, Tag("whole"), digest))
    run(store.set_tag(repo, Tag("whole"), other))  # an existing tag moves in place
    assert run(store.resolve_tag(repo, Tag("whole"))) == other
    for leftover in ("abc", "def"):  # a creation and a deletion cut short
        os.makedirs(os.path.dirname(layout.index_link_in(layout.tag_scratch_dir(repo, leftover), digest)))
    assert run(store.tags(repo)) == ["whole"]
    assert os.path.exists(layout.tag_current_link(repo, Tag("whole")))
    assert run(store.delete_tag(repo, Tag("whole"))) and not run(store.delete_tag(repo, Tag("whole")))
    assert run(store.tags(repo)) == []
    assert sorted(os.listdir(layout.tags_dir(repo))) == [".abc", ".def"]  # ours are gone, not left


def test_leftovers_of_interrupted_writes_are_purged_once_old(tmp_path):
    from adapters.filesystem import FilesystemBlobStore

    layout = Layout(str(tmp_path))
    repos, blobs = FilesystemRepositoryStore(layout), FilesystemBlobStore(layout)
    repo, digest = RepositoryName("crash/app"), Digest.of(b"m")
    run(repos.link_manifest(repo, digest))
    run(repos.set_tag(repo, Tag("kept"), digest))
    run(blobs.put(digest, b"m"))
    old = [layout.blob_data(digest) + ".tmp-1", layout.revision_link(repo, digest) + ".tmp-2"]
    fresh = layout.blob_data(digest) + ".tmp-3"
    for path in [*old, fresh]:
        with open(path, "wb") as f:
            f.write(b"partial")
    scratch = layout.tag_scratch_dir(repo, "cut-short")
    os.makedirs(os.path.join(scratch, "current"))
    for path in [*old, scratch]:
        os.utime(path, (1_000_000, 1_000_000))
    horizon = 2_000_000
    assert run(blobs.purge_debris(horizon, dry_run=True)) == 1 and os.path.exists(old[0])
    assert run(blobs.purge_debris(horizon)) == 1 and run(repos.purge_debris(horizon)) == 2
    assert not any(os.path.exists(p) for p in [*old, scratch]) and os.path.exists(fresh)
    assert run(repos.tags(repo)) == ["kept"] and run(blobs.get(digest)) == b"m"
    assert run(repos.resolve_tag(repo, Tag("kept"))) == digest
