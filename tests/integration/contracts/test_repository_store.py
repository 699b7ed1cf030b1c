import asyncio
import time

from domain.digest import Digest
from domain.names import RepositoryName, Tag

R = RepositoryName("lib/x")
D1, D2, D3 = Digest.of(b"1"), Digest.of(b"2"), Digest.of(b"3")


def run(coro):
    return asyncio.run(coro)


def test_blob_links(repo_store):
    assert not run(repo_store.exists(R))
    run(repo_store.link_blob(R, D1))
    assert run(repo_store.exists(R))
    assert run(repo_store.blob_linked(R, D1)) and not run(repo_store.blob_linked(R, D2))
    assert not run(repo_store.blob_linked(RepositoryName("lib"), D1))
    assert run(repo_store.unlink_blob(R, D1)) and not run(repo_store.unlink_blob(R, D1))
    assert not run(repo_store.blob_linked(R, D1))


def test_manifest_links(repo_store):
    run(repo_store.link_manifest(R, D1))
    assert run(repo_store.manifest_linked(R, D1)) and not run(repo_store.manifest_linked(R, D2))
    assert run(repo_store.unlink_manifest(R, D1)) and not run(repo_store.unlink_manifest(R, D1))


def test_tags_move_and_delete(repo_store):
    run(repo_store.link_manifest(R, D1))
    run(repo_store.set_tag(R, Tag("v1"), D1))
    run(repo_store.set_tag(R, Tag("A_b.c-d"), D1))
    assert run(repo_store.resolve_tag(R, Tag("v1"))) == D1
    run(repo_store.set_tag(R, Tag("v1"), D2))
    assert run(repo_store.resolve_tag(R, Tag("v1"))) == D2
    assert run(repo_store.tags(R)) == ["A_b.c-d", "v1"]
    assert run(repo_store.delete_tag(R, Tag("v1"))) and not run(repo_store.delete_tag(R, Tag("v1")))
    assert run(repo_store.resolve_tag(R, Tag("v1"))) is None
    assert run(repo_store.tags(RepositoryName("none"))) == []


def test_repositories_sorted_nested(repo_store):
    for name in ["b", "a/b/c", "a", "a/b", "z-z/q"]:
        run(repo_store.link_blob(RepositoryName(name), D1))
    assert run(repo_store.repositories()) == ["a", "a/b", "a/b/c", "b", "z-z/q"]


def test_referrers(repo_store):
    run(repo_store.add_referrer(R, D1, D2))
    run(repo_store.add_referrer(R, D1, D3))
    run(repo_store.add_referrer(R, D1, D3))
    assert run(repo_store.referrers(R, D1)) == sorted([D2, D3])
    assert run(repo_store.referrers(RepositoryName("other"), D1)) == []
    run(repo_store.remove_referrer(R, D1, D2))
    assert run(repo_store.referrers(R, D1)) == [D3]


def test_link_times_and_refresh(repo_store):
    before = time.time() - 1
    run(repo_store.link_blob(R, D1))
    run(repo_store.link_manifest(R, D2))
    blobs, manifests = run(repo_store.blob_links(R)), run(repo_store.manifest_links(R))
    assert set(blobs) == {D1} and blobs[D1] >= before
    assert set(manifests) == {D2} and manifests[D2] >= before
    assert run(repo_store.blob_link_time(R, D1)) == blobs[D1]
    assert run(repo_store.blob_link_time(R, D2)) is None
    assert run(repo_store.blob_link_time(RepositoryName("none"), D1)) is None
    run(repo_store.link_blob(R, D1))  # linking again refreshes, never duplicates
    assert set(run(repo_store.blob_links(R))) == {D1}
    assert run(repo_store.blob_links(RepositoryName("none"))) == {}


def test_has_manifests_and_delete_repository(repo_store):
    parent, child = RepositoryName("lib"), RepositoryName("lib/x")
    run(repo_store.link_blob(parent, D1))
    assert not run(repo_store.has_manifests(parent))
    run(repo_store.link_manifest(parent, D2))
    run(repo_store.set_tag(parent, Tag("v1"), D2))
    run(repo_store.add_referrer(parent, D2, D3))
    run(repo_store.link_manifest(child, D3))
    assert run(repo_store.has_manifests(parent))
    run(repo_store.unlink_manifest(parent, D2))
    assert not run(repo_store.has_manifests(parent))
    run(repo_store.link_manifest(parent, D2))
    assert run(repo_store.delete_repository(parent)) is True
    assert not run(repo_store.exists(parent)) and run(repo_store.tags(parent)) == []
    assert run(repo_store.referrers(parent, D2)) == []
    assert run(repo_store.manifest_linked(child, D3)), "a nested repository survives its parent's deletion"
    assert run(repo_store.repositories()) == ["lib/x"]
    assert run(repo_store.delete_repository(parent)) is False


def test_listings_see_other_writers_at_once(two_views):
    """Catalog and tag lists may be cached, but never miss a change made through another handle."""
    writer, reader = two_views
    a, b = RepositoryName("cat/a"), RepositoryName("cat/b")
    assert run(reader.catalog()) == []
    run(writer.link_blob(a, D1))
    assert run(reader.catalog()) == []  # no manifest yet: not in the catalog
    run(writer.link_manifest(a, D1))
    assert run(reader.catalog()) == ["cat/a"]
    run(writer.link_manifest(b, D2))
    assert run(reader.catalog()) == ["cat/a", "cat/b"]
    run(writer.unlink_manifest(a, D1))
    assert run(reader.catalog()) == ["cat/b"]
    run(writer.delete_repository(b))
    assert run(reader.catalog()) == []
    for i in range(3):
        run(writer.set_tag(a, Tag(f"t{i}"), D1))
        assert run(reader.tags(a)) == [f"t{j}" for j in range(i + 1)]
    run(writer.delete_tag(a, Tag("t0")))
    assert run(reader.tags(a)) == ["t1", "t2"]



def test_manifest_link_time(repo_store):
    assert run(repo_store.manifest_link_time(R, D1)) is None
    before = time.time() - 1
    run(repo_store.link_manifest(R, D1))
    assert run(repo_store.manifest_link_time(R, D1)) >= before
    assert run(repo_store.manifest_link_time(R, D2)) is None
    run(repo_store.unlink_manifest(R, D1))
    assert run(repo_store.manifest_link_time(R, D1)) is None


def test_tag_list_sees_every_change_at_once(repo_store):
    """No listing cache: a change is visible to the next call whatever the clock's resolution."""
    for i in range(20):
        run(repo_store.link_manifest(R, D1))
        run(repo_store.set_tag(R, Tag(f"t{i}"), D1))
        assert run(repo_store.tags(R)) == sorted(f"t{j}" for j in range(i + 1))
    for i in range(20):
        run(repo_store.delete_tag(R, Tag(f"t{i}")))
        assert run(repo_store.tags(R)) == sorted(f"t{j}" for j in range(i + 1, 20))
