"""The composition root: one container wiring use-cases to adapters, used by the server, the CLI, scripts
and the tests alike. Building it does no I/O."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from dependency_injector import containers, providers

from adapters.auth.htpasswd import HtpasswdPasswords
from adapters.auth.rules_file import parse_rules
from adapters.auth.throttle import MemoryLoginThrottle
from adapters.auth.tokens import JwtTokens, KeyRing, load_public_keys
from adapters.auth.watched import WatchedFile
from adapters.filesystem import FilesystemBlobStore, FilesystemLocks, FilesystemRepositoryStore, Layout
from adapters.filesystem.jobs import FilesystemGcJobs
from adapters.memory import MemoryBlobStore, MemoryLocks, MemoryRepositoryStore
from adapters.memory_jobs import MemoryGcJobs
from domain.access import AccessRules
from domain.usecases._common import HasherCache, Limits
from domain.usecases.append_upload import AppendUpload
from domain.usecases.cancel_upload import CancelUpload
from domain.usecases.check_readiness import CheckReadiness
from domain.usecases.collect_garbage import CollectGarbage
from domain.usecases.complete_upload import CompleteUpload
from domain.usecases.delete_blob import DeleteBlob
from domain.usecases.delete_manifest import DeleteManifest
from domain.usecases.delete_repository import DeleteRepository
from domain.usecases.get_manifest import GetManifest
from domain.usecases.get_upload_status import GetUploadStatus
from domain.usecases.import_image import ImportImage
from domain.usecases.issue_token import IssueToken
from domain.usecases.list_referrers import ListReferrers
from domain.usecases.list_repositories import ListRepositories
from domain.usecases.list_tags import ListTags
from domain.usecases.login import Login
from domain.usecases.mount_blob import MountBlob
from domain.usecases.purge_uploads import PurgeUploads
from domain.usecases.put_manifest import PutManifest
from domain.usecases.read_blob import ReadBlob
from domain.usecases.refresh_catalog import RefreshCatalog
from domain.usecases.start_upload import StartUpload
from domain.usecases.stat_blob import StatBlob
from domain.usecases.upload_blob import UploadBlob

from .settings import Settings


class MemoryAdapters(containers.DeclarativeContainer):
    config = providers.Configuration()
    clock = providers.Object(time.time)
    blobs = providers.Singleton(MemoryBlobStore, clock)
    repos = providers.Singleton(MemoryRepositoryStore, clock)
    locks = providers.Singleton(MemoryLocks)
    jobs = providers.Singleton(MemoryGcJobs)


class FilesystemAdapters(containers.DeclarativeContainer):
    config = providers.Configuration()
    clock = providers.Object(time.time)  # file times are wall-clock times
    layout = providers.Singleton(Layout, config.storage_root)
    blobs = providers.Singleton(FilesystemBlobStore, layout, config.fsync)
    repos = providers.Singleton(FilesystemRepositoryStore, layout, config.fsync)
    locks = providers.Singleton(FilesystemLocks, layout)
    jobs = providers.Singleton(FilesystemGcJobs, layout)


ADAPTERS: dict[str, type[containers.DeclarativeContainer]] = {
    "memory": MemoryAdapters,
    "filesystem": FilesystemAdapters,
}


def _new_upload_id() -> str:
    return str(uuid.uuid4())


# Access control. Each factory answers None where the configured mode has no use for it.

def _rules(auth: str, path: str | None) -> Callable[[], AccessRules]:
    if path:
        return WatchedFile(path, parse_rules, "access rules file").get
    rules = AccessRules.open() if auth == "none" else AccessRules.logged_in()
    return lambda: rules


def _passwords(path: str | None) -> HtpasswdPasswords | None:
    return HtpasswdPasswords(path) if path else None


def _key_ring(auth: str, public_keys: str | None, storage: str, root: str, signing_key: str | None,
              ttl: float) -> KeyRing | None:
    if auth != "token" or public_keys:
        return None
    directory = Layout(root).token_keys_dir() if storage == "filesystem" and not signing_key else None
    return KeyRing(directory, ttl, signing_key_file=signing_key)


def _tokens(auth: str, public_keys: str | None, ring: KeyRing | None, issuer: str, service: str, ttl: float,
            refresh_ttl: float) -> JwtTokens | None:
    if auth != "token":
        return None
    external = load_public_keys(public_keys) if public_keys else None
    return JwtTokens(issuer, service, ttl, refresh_ttl, ring=ring, external_keys=external)


class Container(containers.DeclarativeContainer):
    config = providers.Configuration()
    adapters = providers.DependenciesContainer()

    limits = providers.Singleton(
        Limits,
        max_manifest_bytes=config.max_manifest_bytes,
        max_blob_bytes=config.max_blob_bytes,
        max_manifest_references=config.max_manifest_references,
        max_uploads_per_repository=config.max_uploads_per_repository,
    )
    clock = adapters.clock
    new_upload_id = providers.Object(_new_upload_id)
    hashers = providers.Singleton(HasherCache)

    start_upload = providers.Singleton(StartUpload, adapters.blobs, clock, new_upload_id, adapters.locks, limits)
    append_upload = providers.Singleton(AppendUpload, adapters.blobs, hashers, limits, adapters.locks)
    complete_upload = providers.Singleton(CompleteUpload, adapters.blobs, adapters.repos, hashers, append_upload,
                                          adapters.locks)
    upload_blob = providers.Singleton(UploadBlob, adapters.blobs, start_upload, complete_upload)
    cancel_upload = providers.Singleton(CancelUpload, adapters.blobs, hashers, adapters.locks)
    get_upload_status = providers.Singleton(GetUploadStatus, adapters.blobs)
    mount_blob = providers.Singleton(MountBlob, adapters.blobs, adapters.repos, adapters.locks)
    stat_blob = providers.Singleton(StatBlob, adapters.blobs, adapters.repos, adapters.locks, clock,
                                    config.gc_grace_seconds)
    read_blob = providers.Singleton(ReadBlob, adapters.blobs, stat_blob)
    delete_blob = providers.Singleton(DeleteBlob, adapters.repos, adapters.locks)
    put_manifest = providers.Singleton(PutManifest, adapters.blobs, adapters.repos, limits, adapters.locks)
    get_manifest = providers.Singleton(GetManifest, adapters.blobs, adapters.repos)
    delete_manifest = providers.Singleton(DeleteManifest, adapters.blobs, adapters.repos, adapters.locks)
    list_tags = providers.Singleton(ListTags, adapters.repos)
    list_repositories = providers.Singleton(ListRepositories, adapters.repos)
    list_referrers = providers.Singleton(ListReferrers, adapters.blobs, adapters.repos)
    delete_repository = providers.Singleton(DeleteRepository, adapters.blobs, adapters.repos, adapters.locks)
    purge_uploads = providers.Singleton(PurgeUploads, adapters.blobs, adapters.repos, adapters.locks, clock,
                                        config.upload_max_idle_seconds)
    collect_garbage = providers.Singleton(CollectGarbage, adapters.blobs, adapters.repos, adapters.locks, clock,
                                          config.gc_grace_seconds, purge_uploads)
    import_image = providers.Singleton(ImportImage, adapters.blobs, adapters.repos, upload_blob, put_manifest)
    check_readiness = providers.Singleton(CheckReadiness, adapters.blobs)
    refresh_catalog = providers.Singleton(RefreshCatalog, adapters.repos)

    access_rules = providers.Singleton(_rules, config.auth, config.auth_rules)
    passwords = providers.Singleton(_passwords, config.auth_htpasswd)
    login_throttle = providers.Singleton(MemoryLoginThrottle, config.auth_login_refill_seconds)
    login = providers.Singleton(Login, passwords, login_throttle, access_rules, config.auth_login_burst)
    key_ring = providers.Singleton(_key_ring, config.auth, config.auth_token_public_keys, config.storage,
                                   config.storage_root, config.auth_token_signing_key, config.auth_token_ttl)
    tokens = providers.Singleton(_tokens, config.auth, config.auth_token_public_keys, key_ring,
                                 config.auth_token_issuer, config.auth_token_service, config.auth_token_ttl,
                                 config.auth_refresh_token_ttl)
    issue_token = providers.Singleton(IssueToken, login, passwords, tokens, access_rules)


def build_container(settings: Settings | None = None, clock: Callable[[], float] | None = None) -> Container:
    """The registry's object graph for these settings. `clock` replaces wall-clock time (tests and
    simulations; the filesystem's file times stay real)."""
    settings = settings or Settings()
    adapters_cls = ADAPTERS.get(settings.storage)
    if adapters_cls is None:
        raise ValueError(f"unknown storage backend {settings.storage!r}; choose one of {sorted(ADAPTERS)}")
    adapters = adapters_cls()
    if clock is not None:
        adapters.clock.override(providers.Object(clock))
    adapters.config.from_dict(settings.model_dump())
    container = Container(adapters=adapters)
    container.config.from_dict(settings.model_dump())
    return container
