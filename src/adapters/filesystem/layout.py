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
"""

from __future__ import annotations

import os

from domain.digest import Digest
from domain.names import RepositoryName, Tag


class Layout:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.v2 = os.path.join(self.root, "docker", "registry", "v2")
        self.repositories_root = os.path.join(self.v2, "repositories")
        self.blobs_root = os.path.join(self.v2, "blobs")

    def _inside(self, path: str) -> str:
        if not os.path.normpath(path).startswith(self.v2 + os.sep):
            raise ValueError(f"refusing a path outside the storage root: {path!r}")
        return path

    # blobs
    def blob_dir(self, digest: Digest) -> str:
        return self._inside(os.path.join(self.blobs_root, digest.algorithm, digest.hex[:2], digest.hex))

    def blob_data(self, digest: Digest) -> str:
        return os.path.join(self.blob_dir(digest), "data")

    # repositories
    def repository(self, repo: RepositoryName) -> str:
        return self._inside(os.path.join(self.repositories_root, *repo.value.split("/")))

    def layers_dir(self, repo: RepositoryName) -> str:
        return os.path.join(self.repository(repo), "_layers")

    def layer_link(self, repo: RepositoryName, digest: Digest) -> str:
        return os.path.join(self.layers_dir(repo), digest.algorithm, digest.hex, "link")

    def manifests_dir(self, repo: RepositoryName) -> str:
        return os.path.join(self.repository(repo), "_manifests")

    def revision_dir(self, repo: RepositoryName, digest: Digest) -> str:
        return os.path.join(self.manifests_dir(repo), "revisions", digest.algorithm, digest.hex)

    def revision_link(self, repo: RepositoryName, digest: Digest) -> str:
        return os.path.join(self.revision_dir(repo, digest), "link")

    def tags_dir(self, repo: RepositoryName) -> str:
        return os.path.join(self.manifests_dir(repo), "tags")

    def tag_dir(self, repo: RepositoryName, tag: Tag) -> str:
        return os.path.join(self.tags_dir(repo), tag.value)

    def tag_current_link(self, repo: RepositoryName, tag: Tag) -> str:
        return self.current_link_in(self.tag_dir(repo, tag))

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
        return os.path.join(self.repository(repo), "_uploads", upload_id)

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
        # `+` never appears in a repository name, so the mapping is reversible.
        return os.path.join(self.catalog_dir(), repo.value.replace("/", "+"))

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
        return os.path.join(self.repository(repo), "_uploads")

    def revisions_dir(self, repo: RepositoryName) -> str:
        return os.path.join(self.manifests_dir(repo), "revisions")

    def repository_parts(self, repo: RepositoryName) -> list[str]:
        """What the repository store keeps in a repository's directory (nested repositories live beside
        these; `_uploads` belongs to the blob store), in the order a removal takes them: what readers
        follow first."""
        base = self.repository(repo)
        return [os.path.join(base, part) for part in ("_manifests", "_referrers", "_layers")]

    def link_dirs(self, repository_path: str) -> list[str]:
        """The `<alg>/<hex>/link` trees of a repository directory: manifest revisions and blob links."""
        return [os.path.join(repository_path, "_manifests", "revisions"), os.path.join(repository_path, "_layers")]

    def probe_file(self) -> str:
        return os.path.join(self.v2, f".ready-probe-{os.getpid()}")

    def is_repository(self, path: str) -> bool:
        return os.path.isdir(os.path.join(path, "_layers")) or os.path.isdir(os.path.join(path, "_manifests"))
