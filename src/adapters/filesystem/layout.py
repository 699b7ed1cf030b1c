"""The one place that knows where things live under STORAGE_ROOT. Nobody else joins paths.

This is CNCF Distribution's layout, so a data directory moves between it and us without a copy:

    <root>/docker/registry/v2/
      blobs/<alg>/<first 2 hex>/<hex>/data               the bytes of every blob and manifest
      repositories/<name>/                               <name> may have several components
        _layers/<alg>/<hex>/link                         "alg:hex": the blob is in this repository
        _manifests/revisions/<alg>/<hex>/link            the manifest is in this repository
        _manifests/tags/<tag>/current/link               the digest the tag points to
        _manifests/tags/<tag>/index/<alg>/<hex>/link     every digest the tag has pointed to
        _manifests/tags/.<token>/                        ours: a tag being created or deleted
        _uploads/<uuid>/data                             bytes received so far
        _uploads/<uuid>/startedat                        RFC 3339 start time
        _referrers/<alg>/<hex>/<alg>/<hex>/link          ours: manifests whose subject is <alg>:<hex>
      _myregistry/locks/{collector,gate,writes}.lock     ours: flock files coordinating the collector
      _myregistry/catalog/<name with / as +>             ours: one empty file per repository holding a
                                                         manifest; `.complete` once the index is whole
      _myregistry/token-keys/<created>-<kid>.pem         ours: the token endpoint's signing keys (0600)
      _myregistry/gc-jobs/<id>.json                      ours: state of a collection started with
                                                         ?wait=false (the last 100)

A blob data file's mtime is when it was last used (written, linked, mounted, HEAD-checked); a link
file's mtime is when it was last linked. The garbage collector's grace period reads these times.

Distribution skips directories whose name starts with `_` when it walks a repository, so `_referrers`
is invisible to it. A directory is a repository when it holds `_layers` or `_manifests`.
Every component comes from a validated value (RepositoryName, Tag, Digest, upload uuid); `_inside`
checks the result anyway, so no request can name a path outside the root.

The walks that read this layout back (blobs, upload sessions, repositories, `<alg>/<hex>/link` trees,
catalog markers) live here too: no other module joins a path or spells a name of the layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from domain.digest import Digest
from domain.errors import DigestInvalid
from domain.names import RepositoryName, Tag

from .files import listdir

_SEP = os.sep
_CACHED_REPOSITORIES = 4096
_REPOSITORY_PARTS = ("_layers", "_manifests")  # a directory holding one of these is a repository


class Layout:
    """Paths are joined with plain string formatting from validated components (os.path.join cost
    more than the file operation it named, on every request)."""

    UPLOADS_NAME = "_uploads"  # a repository's upload sessions: the blob store's, not the repository store's

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.v2 = os.path.join(self.root, "docker", "registry", "v2")
        self.repositories_root = os.path.join(self.v2, "repositories")
        self.blobs_root = os.path.join(self.v2, "blobs")
        self._repositories: dict[str, str] = {}  # repository name -> its directory (a pure function)

    def _inside(self, path: str) -> str:
        # Only a `..` component can lead out of a path built by formatting under v2 (the root is absolute
        # and normalized, and an absolute component just doubles a separator): paths without `..`
        # anywhere skip the normalization.
        if ".." in path and not os.path.normpath(path).startswith(self.v2 + _SEP):
            raise ValueError(f"refusing a path outside the storage root: {path!r}")
        return path

    # blobs
    def blob_dir(self, digest: Digest) -> str:
        hex_ = digest.hex
        return self._inside(f"{self.blobs_root}{_SEP}{digest.algorithm}{_SEP}{hex_[:2]}{_SEP}{hex_}")

    def blob_data(self, digest: Digest) -> str:
        hex_ = digest.hex
        return self._inside(f"{self.blobs_root}{_SEP}{digest.algorithm}{_SEP}{hex_[:2]}{_SEP}{hex_}{_SEP}data")

    def blob_digests(self) -> Iterator[Digest]:
        """The digest of every `blobs/<alg>/<prefix>/<hex>` directory whose name makes a valid digest, in
        directory order (its data file may be missing: see blob_data)."""
        root = self.blobs_root
        for algorithm in listdir(root):
            for prefix in listdir(os.path.join(root, algorithm)):
                for hex_ in listdir(os.path.join(root, algorithm, prefix)):
                    try:
                        digest = Digest.parse(f"{algorithm}:{hex_}")
                    except DigestInvalid:
                        continue
                    yield digest

    # repositories
    def repository(self, repo: RepositoryName) -> str:
        path = self._repositories.get(repo.value)
        if path is None:
            path = self._inside(_SEP.join((self.repositories_root, *repo.value.split("/"))))
            if len(self._repositories) >= _CACHED_REPOSITORIES:
                self._repositories.clear()
            self._repositories[repo.value] = path
        return path

    def layers_dir(self, repo: RepositoryName) -> str:
        return f"{self.repository(repo)}{_SEP}_layers"

    def layer_link(self, repo: RepositoryName, digest: Digest) -> str:
        return f"{self.repository(repo)}{_SEP}_layers{_SEP}{digest.algorithm}{_SEP}{digest.hex}{_SEP}link"

    def manifests_dir(self, repo: RepositoryName) -> str:
        return f"{self.repository(repo)}{_SEP}_manifests"

    def revision_dir(self, repo: RepositoryName, digest: Digest) -> str:
        return (f"{self.repository(repo)}{_SEP}_manifests{_SEP}revisions{_SEP}{digest.algorithm}{_SEP}"
                f"{digest.hex}")

    def revision_link(self, repo: RepositoryName, digest: Digest) -> str:
        return f"{self.revision_dir(repo, digest)}{_SEP}link"

    def tags_dir(self, repo: RepositoryName) -> str:
        return f"{self.repository(repo)}{_SEP}_manifests{_SEP}tags"

    def tag_dir(self, repo: RepositoryName, tag: Tag) -> str:
        return self._inside(f"{self.repository(repo)}{_SEP}_manifests{_SEP}tags{_SEP}{tag.value}")

    def tag_current_link(self, repo: RepositoryName, tag: Tag) -> str:
        return f"{self.tag_dir(repo, tag)}{_SEP}current{_SEP}link"

    def tag_index_link(self, repo: RepositoryName, tag: Tag, digest: Digest) -> str:
        return self.index_link_in(self.tag_dir(repo, tag), digest)

    @staticmethod
    def is_debris(directory: str, name: str, is_dir: bool) -> bool:
        """A leftover of a write cut short: a temporary file (`<file>.tmp-<token>`, see files.py), or a
        tag assembled or deleted under a dot-name (tag_scratch_dir)."""
        if is_dir:
            return name.startswith(".") and os.path.basename(directory) == "tags"
        return ".tmp-" in name

    @staticmethod
    def current_link_in(tag_dir: str) -> str:
        return os.path.join(tag_dir, "current", "link")

    @staticmethod
    def index_link_in(tag_dir: str, digest: Digest) -> str:
        return os.path.join(tag_dir, "index", digest.algorithm, digest.hex, "link")

    def tag_scratch_dir(self, repo: RepositoryName, token: str) -> str:
        """Where a new tag is assembled, or an old one is moved to be deleted: a name no tag can have
        (tags never start with a dot), so listings skip it."""
        return os.path.join(self.tags_dir(repo), f".{token}")

    def upload_dir(self, repo: RepositoryName, upload_id: str) -> str:
        return os.path.join(self.repository(repo), self.UPLOADS_NAME, upload_id)

    def upload_data(self, repo: RepositoryName, upload_id: str) -> str:
        return os.path.join(self.upload_dir(repo, upload_id), "data")

    def upload_started(self, repo: RepositoryName, upload_id: str) -> str:
        return os.path.join(self.upload_dir(repo, upload_id), "startedat")

    def upload_lock(self, repo: RepositoryName, upload_id: str) -> str:
        """The file a request flocks while it uses the session: `startedat`, which lives exactly as long
        as the session and is never renamed (the data file is, when it becomes a blob)."""
        return self.upload_started(repo, upload_id)

    def referrers_dir(self, repo: RepositoryName, subject: Digest) -> str:
        return os.path.join(self.repository(repo), "_referrers", subject.algorithm, subject.hex)

    def referrer_link(self, repo: RepositoryName, subject: Digest, referrer: Digest) -> str:
        return os.path.join(self.referrers_dir(repo, subject), referrer.algorithm, referrer.hex, "link")

    def catalog_dir(self) -> str:
        return os.path.join(self.v2, "_myregistry", "catalog")

    def catalog_marker(self, repo: RepositoryName) -> str:
        return self.catalog_marker_at(self.catalog_key(repo.value))

    @staticmethod
    def catalog_key(name: str) -> str:
        """The name of a repository's marker file. `+` never appears in a repository name, so the
        mapping is reversible (catalog_name)."""
        return name.replace("/", "+")

    @staticmethod
    def catalog_name(key: str) -> str:
        """The repository a marker file names."""
        return key.replace("+", "/")

    def catalog_marker_at(self, key: str) -> str:
        return os.path.join(self.catalog_dir(), key)

    def catalog_keys(self) -> list[str]:
        """The marker files in the catalog index, in directory order (dot-names are not markers)."""
        return [n for n in listdir(self.catalog_dir()) if not n.startswith(".")]

    def catalog_names(self) -> list[str]:
        """The repositories the catalog index holds, in directory order."""
        return [self.catalog_name(key) for key in self.catalog_keys()]

    def catalog_complete(self) -> str:
        return os.path.join(self.catalog_dir(), ".complete")

    def gc_jobs_dir(self) -> str:
        return os.path.join(self.v2, "_myregistry", "gc-jobs")

    def token_keys_dir(self) -> str:
        return os.path.join(self.v2, "_myregistry", "token-keys")

    def gc_job(self, job_id: str) -> str:
        return os.path.join(self.gc_jobs_dir(), f"{job_id}.json")

    def lock_file(self, name: str) -> str:
        return os.path.join(self.v2, "_myregistry", "locks", f"{name}.lock")

    def uploads_dir(self, repo: RepositoryName) -> str:
        return os.path.join(self.repository(repo), self.UPLOADS_NAME)

    def revisions_dir(self, repo: RepositoryName) -> str:
        return os.path.join(self.manifests_dir(repo), "revisions")

    def repository_parts(self, repo: RepositoryName) -> list[str]:
        """What the repository store keeps in a repository's directory (nested repositories live beside
        these; `_uploads` belongs to the blob store), in the order a removal takes them: what readers
        follow first."""
        base = self.repository(repo)
        return [os.path.join(base, part) for part in ("_manifests", "_referrers", "_layers")]

    def link_dirs(self, name: str) -> list[str]:
        """The `<alg>/<hex>/link` trees of the repository `name` (as repository_names gives it): manifest
        revisions and blob links."""
        repository_path = os.path.join(self.repositories_root, name)
        return [os.path.join(repository_path, "_manifests", "revisions"), os.path.join(repository_path, "_layers")]

    def probe_file(self) -> str:
        return os.path.join(self.v2, f".ready-probe-{os.getpid()}")

    def is_repository(self, path: str) -> bool:
        return any(os.path.isdir(os.path.join(path, part)) for part in _REPOSITORY_PARTS)

    def repository_names(self) -> list[str]:
        """Every repository under the root (a directory holding `_layers` or `_manifests`), by name. One
        scandir per directory; names starting with `_` are a repository's own data and never descended."""
        root = self.repositories_root
        found, pending = [], [root]
        while pending:
            path = pending.pop()
            try:
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue
            if any(e.name in _REPOSITORY_PARTS for e in entries) and path != root:
                found.append(os.path.relpath(path, root).replace(os.sep, "/"))
            pending.extend(e.path for e in entries if not e.name.startswith("_") and e.is_dir(follow_symlinks=False))
        return found

    def upload_sessions(self) -> Iterator[tuple[RepositoryName, str]]:
        """(repository, upload id) of every `<repository>/_uploads/<id>` under the root (upload_data and
        upload_dir name its files); repositories' own `_` directories are not descended."""
        root = self.repositories_root
        for path, dirs, _files in os.walk(root):
            if self.UPLOADS_NAME in dirs:
                repo = RepositoryName(os.path.relpath(path, root).replace(os.sep, "/"))
                for upload_id in listdir(os.path.join(path, self.UPLOADS_NAME)):
                    yield repo, upload_id
            dirs[:] = [d for d in dirs if not d.startswith("_")]

    def tag_names(self, repo: RepositoryName) -> list[str]:
        """The repository's tags, in directory order: dot-names are tags being created or deleted (or
        left so by a crash, see tag_scratch_dir), not tags."""
        return [n for n in listdir(self.tags_dir(repo)) if not n.startswith(".")]

    # `<alg>/<hex>/link` trees: layers_dir, revisions_dir, referrers_dir, and those of link_dirs
    @staticmethod
    def link_in(digest_dir: str) -> str:
        """The link file of a `<alg>/<hex>` directory."""
        return os.path.join(digest_dir, "link")

    @staticmethod
    def algorithm_dirs(base: str) -> Iterator[str]:
        """Every `<base>/<alg>` of a link tree, in directory order."""
        for algorithm in listdir(base):
            yield os.path.join(base, algorithm)

    @staticmethod
    def digest_dirs(base: str) -> Iterator[str]:
        """Every `<base>/<alg>/<hex>` of a link tree (each `<alg>` directory is listed whole before its
        entries are yielded, so they may be removed meanwhile)."""
        for algorithm_dir in Layout.algorithm_dirs(base):
            for hex_ in listdir(algorithm_dir):
                yield os.path.join(algorithm_dir, hex_)

    @staticmethod
    def link_files(base: str) -> Iterator[str]:
        """Every `<base>/<alg>/<hex>/link` path of a link tree (the file itself may be missing)."""
        for digest_dir in Layout.digest_dirs(base):
            yield Layout.link_in(digest_dir)

    @staticmethod
    def holds_a_link(base: str) -> bool:
        """Whether some `<base>/<alg>/<hex>/link` exists. scandir reads each directory as it goes: the
        first link ends the search (listing all of them made each removal in a collection cost the
        whole directory)."""
        for algorithm_dir in Layout.algorithm_dirs(base):
            try:
                with os.scandir(algorithm_dir) as entries:
                    for entry in entries:
                        if os.path.exists(Layout.link_in(entry.path)):
                            return True
            except (FileNotFoundError, NotADirectoryError):
                continue
        return False
