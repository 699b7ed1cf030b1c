from __future__ import annotations

import os

from domain.digest import Digest
from domain.names import RepositoryName, Tag
from domain.ports import RepositoryStore

from .files import link_times, read_link, refresh_link, remove_tree, write_link
from .layout import Layout


class FilesystemRepositoryStore(RepositoryStore):
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    async def exists(self, repo: RepositoryName) -> bool:
        return self.layout.is_repository(self.layout.repository(repo))

    async def repositories(self) -> list[str]:
        root = self.layout.repositories_root
        found: list[str] = []
        for path, dirs, _files in os.walk(root):
            if self.layout.is_repository(path):
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
            # Directories starting with `_` are a repository's own data; never names.
            dirs[:] = [d for d in dirs if not d.startswith("_")]
        return sorted(found)

    async def has_manifests(self, repo: RepositoryName) -> bool:
        base = self.layout.revisions_dir(repo)
        try:
            return any(os.listdir(os.path.join(base, a)) for a in os.listdir(base))
        except (FileNotFoundError, NotADirectoryError):
            return False

    async def delete_repository(self, repo: RepositoryName) -> bool:
        existed = await self.exists(repo)
        for part in self.layout.repository_parts(repo):
            remove_tree(part)
        # Drop now-empty directories up to the repositories root; nested repositories keep theirs.
        path = self.layout.repository(repo)
        while path != self.layout.repositories_root:
            try:
                os.rmdir(path)
            except OSError:
                break
            path = os.path.dirname(path)
        return existed

    async def link_blob(self, repo: RepositoryName, digest: Digest) -> None:
        refresh_link(self.layout.layer_link(repo, digest), digest)

    async def blob_links(self, repo: RepositoryName) -> dict[Digest, float]:
        return link_times(self.layout.layers_dir(repo))

    async def blob_linked(self, repo: RepositoryName, digest: Digest) -> bool:
        return read_link(self.layout.layer_link(repo, digest)) == digest

    async def unlink_blob(self, repo: RepositoryName, digest: Digest) -> bool:
        return remove_tree(os.path.dirname(self.layout.layer_link(repo, digest)))

    async def link_manifest(self, repo: RepositoryName, digest: Digest) -> None:
        refresh_link(self.layout.revision_link(repo, digest), digest)

    async def manifest_links(self, repo: RepositoryName) -> dict[Digest, float]:
        return link_times(self.layout.revisions_dir(repo))

    async def manifest_linked(self, repo: RepositoryName, digest: Digest) -> bool:
        return read_link(self.layout.revision_link(repo, digest)) == digest

    async def unlink_manifest(self, repo: RepositoryName, digest: Digest) -> bool:
        return remove_tree(self.layout.revision_dir(repo, digest))

    async def set_tag(self, repo: RepositoryName, tag: Tag, digest: Digest) -> None:
        write_link(self.layout.tag_index_link(repo, tag, digest), digest)
        write_link(self.layout.tag_current_link(repo, tag), digest)

    async def resolve_tag(self, repo: RepositoryName, tag: Tag) -> Digest | None:
        return read_link(self.layout.tag_current_link(repo, tag))

    async def delete_tag(self, repo: RepositoryName, tag: Tag) -> bool:
        return remove_tree(self.layout.tag_dir(repo, tag))

    async def tags(self, repo: RepositoryName) -> list[str]:
        tags_dir = self.layout.tags_dir(repo)
        try:
            names = os.listdir(tags_dir)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(n for n in names if os.path.exists(os.path.join(tags_dir, n, "current", "link")))

    async def add_referrer(self, repo: RepositoryName, subject: Digest, referrer: Digest) -> None:
        write_link(self.layout.referrer_link(repo, subject, referrer), referrer)

    async def referrers(self, repo: RepositoryName, subject: Digest) -> list[Digest]:
        base = self.layout.referrers_dir(repo, subject)
        found: list[Digest] = []
        try:
            algorithms = os.listdir(base)
        except (FileNotFoundError, NotADirectoryError):
            return []
        for algorithm in algorithms:
            for hex_ in os.listdir(os.path.join(base, algorithm)):
                digest = read_link(os.path.join(base, algorithm, hex_, "link"))
                if digest is not None:
                    found.append(digest)
        return sorted(found)

    async def remove_referrer(self, repo: RepositoryName, subject: Digest, referrer: Digest) -> None:
        remove_tree(os.path.dirname(self.layout.referrer_link(repo, subject, referrer)))
