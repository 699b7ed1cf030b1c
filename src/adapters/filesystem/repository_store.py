from __future__ import annotations

import asyncio
import os
import uuid

from domain.digest import Digest
from domain.names import RepositoryName, Tag
from domain.ports import RepositoryStore

from .files import fsync_dir, link_time, link_times, read_link, refresh_link, remove_debris, remove_tree, write_link
from .layout import Layout


class FilesystemRepositoryStore(RepositoryStore):
    """Listing a large registry would mean walking a large tree, so the catalog has an index on disk:
    one marker file per repository holding a manifest, added whenever a manifest is linked and removed
    when a repository loses its last one. A storage root without a complete index (written by
    Distribution, or dropped by a garbage collection) is walked once to build it. Listings are read
    from storage on every call: no cache keyed on directory times, whose resolution (a kernel tick, or
    a second on some file systems) would let a change go unseen."""

    def __init__(self, layout: Layout, durable: bool = False) -> None:
        self.layout, self.durable = layout, durable

    async def exists(self, repo: RepositoryName) -> bool:
        return self.layout.is_repository(self.layout.repository(repo))

    async def repositories(self) -> list[str]:
        return sorted(self.layout.repository_names())

    async def catalog(self) -> list[str]:
        if not os.path.exists(self.layout.catalog_complete()):
            await self.refresh_catalog()
        return sorted(self.layout.catalog_names())

    async def refresh_catalog(self) -> None:
        """Walk the storage and reconcile the catalog index with it, in a thread: on a large storage the
        walk takes seconds and must not stall the event loop."""
        await asyncio.to_thread(self._rebuild_catalog)

    def _rebuild_catalog(self) -> None:
        layout = self.layout
        os.makedirs(layout.catalog_dir(), exist_ok=True)
        present = set(layout.catalog_keys())
        wanted = {layout.catalog_key(name) for name in layout.repository_names()
                  if self._has_manifests(RepositoryName(name))}
        for key in wanted - present:
            _touch(layout.catalog_marker_at(key))
        for key in present - wanted:
            # re-checked: the repository may have gained a manifest since the walk
            if not self._has_manifests(RepositoryName(layout.catalog_name(key))):
                _unlink(layout.catalog_marker_at(key))
        _touch(layout.catalog_complete())

    async def has_manifests(self, repo: RepositoryName) -> bool:
        return self._has_manifests(repo)

    def _has_manifests(self, repo: RepositoryName) -> bool:
        """A revision counts only with its link file: a crash can leave an empty revision directory."""
        return self.layout.holds_a_link(self.layout.revisions_dir(repo))

    async def delete_repository(self, repo: RepositoryName) -> bool:
        existed = await self.exists(repo)
        # What a reader follows goes first: tags and revisions, then the links and records behind them.
        for part in self.layout.repository_parts(repo):
            remove_tree(part)
        try:
            os.rmdir(self.layout.uploads_dir(repo))  # only when the blob store left it empty
        except OSError:
            pass
        # Drop now-empty directories up to the repositories root; nested repositories keep theirs.
        path = self.layout.repository(repo)
        while path != self.layout.repositories_root:
            try:
                os.rmdir(path)
            except OSError:
                break
            path = os.path.dirname(path)
        _unlink(self.layout.catalog_marker(repo))
        return existed

    async def link_blob(self, repo: RepositoryName, digest: Digest) -> None:
        refresh_link(self.layout.layer_link(repo, digest), digest, self.durable)

    async def blob_links(self, repo: RepositoryName) -> dict[Digest, float]:
        return link_times(self.layout.link_files(self.layout.layers_dir(repo)))

    async def blob_linked(self, repo: RepositoryName, digest: Digest) -> bool:
        return read_link(self.layout.layer_link(repo, digest)) == digest

    async def purge_debris(self, older_than: float, dry_run: bool = False) -> int:
        # Upload sessions have their own purge.
        found = remove_debris(self.layout.repositories_root, self.layout.is_debris, older_than, dry_run,
                              skip=self.layout.UPLOADS_NAME)
        return found + await asyncio.to_thread(self._purge_unlinked, older_than, dry_run)

    def _purge_unlinked(self, older_than: float, dry_run: bool) -> int:
        """Link directories without their link file (a crash between making the directory and writing
        the link, or between removing the link and the directory): they name nothing, so they go."""
        found = 0
        layout = self.layout
        for name in layout.repository_names():
            for base in layout.link_dirs(name):
                for path in layout.digest_dirs(base):
                    try:
                        if os.path.exists(layout.link_in(path)) or os.stat(path).st_mtime >= older_than:
                            continue
                        if not dry_run:
                            os.rmdir(path)
                        found += 1
                    except OSError:
                        continue  # gone, or written to meanwhile
        return found

    async def blob_link_time(self, repo: RepositoryName, digest: Digest) -> float | None:
        return link_time(self.layout.layer_link(repo, digest), digest)

    async def unlink_blob(self, repo: RepositoryName, digest: Digest) -> bool:
        return remove_tree(os.path.dirname(self.layout.layer_link(repo, digest)))

    async def link_manifest(self, repo: RepositoryName, digest: Digest) -> None:
        refresh_link(self.layout.revision_link(repo, digest), digest, self.durable)
        # Checked after every link, not guessed before it: a removal of the repository's last manifest
        # running alongside may have just dropped the marker.
        marker = self.layout.catalog_marker(repo)
        if not os.path.exists(marker):
            _touch(marker)

    async def manifest_links(self, repo: RepositoryName) -> dict[Digest, float]:
        return link_times(self.layout.link_files(self.layout.revisions_dir(repo)))

    async def manifest_linked(self, repo: RepositoryName, digest: Digest) -> bool:
        return read_link(self.layout.revision_link(repo, digest)) == digest

    async def manifest_link_time(self, repo: RepositoryName, digest: Digest) -> float | None:
        return link_time(self.layout.revision_link(repo, digest), digest)

    async def unlink_manifest(self, repo: RepositoryName, digest: Digest) -> bool:
        removed = remove_tree(self.layout.revision_dir(repo, digest))
        if removed and not self._may_have_manifests(repo):
            _unlink(self.layout.catalog_marker(repo))
        return removed

    def _may_have_manifests(self, repo: RepositoryName) -> bool:
        """After each removal, in constant time where the file system counts a directory's
        subdirectories in its link count (ext4, xfs, tmpfs): no revision directory left means no
        manifest. A revision directory a crash left without its link keeps the marker until the next
        catalog refresh (at start, after each collection), which checks the links themselves. (Scanning
        here made a collection quadratic: removals in directory order leave ever more deleted entries
        before the first live one.)"""
        for algorithm_dir in self.layout.algorithm_dirs(self.layout.revisions_dir(repo)):
            try:
                links = os.stat(algorithm_dir).st_nlink
            except OSError:
                continue
            if links > 2:
                return True
            if links < 2 and self._has_manifests(repo):  # a file system that does not count them (btrfs)
                return True
        return False

    async def set_tag(self, repo: RepositoryName, tag: Tag, digest: Digest) -> None:
        """A new tag is assembled under a dot-name and renamed into place, so that a crash never leaves
        a listed tag without its link; an existing tag's link is replaced atomically."""
        tag_dir = self.layout.tag_dir(repo, tag)
        if not os.path.isdir(tag_dir):
            scratch = self.layout.tag_scratch_dir(repo, uuid.uuid4().hex)
            write_link(self.layout.index_link_in(scratch, digest), digest, self.durable)
            write_link(self.layout.current_link_in(scratch), digest, self.durable)
            try:
                os.rename(scratch, tag_dir)
            except OSError:  # created meanwhile by another request: update it like any existing tag
                remove_tree(scratch)
            else:
                if self.durable:
                    fsync_dir(os.path.dirname(tag_dir))
                return
        write_link(self.layout.tag_index_link(repo, tag, digest), digest, self.durable)
        write_link(self.layout.tag_current_link(repo, tag), digest, self.durable)

    async def resolve_tag(self, repo: RepositoryName, tag: Tag) -> Digest | None:
        return read_link(self.layout.tag_current_link(repo, tag))

    async def delete_tag(self, repo: RepositoryName, tag: Tag) -> bool:
        """Renamed out of the listing first (atomic), then removed."""
        scratch = self.layout.tag_scratch_dir(repo, uuid.uuid4().hex)
        try:
            os.rename(self.layout.tag_dir(repo, tag), scratch)
        except (FileNotFoundError, NotADirectoryError):
            return False
        remove_tree(scratch)
        return True

    async def tags(self, repo: RepositoryName) -> list[str]:
        return sorted(self.layout.tag_names(repo))

    async def add_referrer(self, repo: RepositoryName, subject: Digest, referrer: Digest) -> None:
        write_link(self.layout.referrer_link(repo, subject, referrer), referrer, self.durable)

    async def referrers(self, repo: RepositoryName, subject: Digest) -> list[Digest]:
        found: list[Digest] = []
        for path in self.layout.link_files(self.layout.referrers_dir(repo, subject)):
            digest = read_link(path)
            if digest is not None:
                found.append(digest)
        return sorted(found)

    async def remove_referrer(self, repo: RepositoryName, subject: Digest, referrer: Digest) -> None:
        remove_tree(os.path.dirname(self.layout.referrer_link(repo, subject, referrer)))


def _touch(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "ab"):
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
