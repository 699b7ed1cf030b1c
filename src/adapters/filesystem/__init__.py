"""Filesystem adapters storing exactly as CNCF Distribution's filesystem driver does (see layout.py)."""

from .blob_store import FilesystemBlobStore
from .layout import Layout
from .locks import FilesystemLocks
from .repository_store import FilesystemRepositoryStore

__all__ = ["FilesystemBlobStore", "FilesystemLocks", "FilesystemRepositoryStore", "Layout"]
