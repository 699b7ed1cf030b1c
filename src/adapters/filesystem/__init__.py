"""Filesystem adapters storing exactly as CNCF Distribution's filesystem driver does (see layout.py)."""

from .blob_store import FilesystemBlobStore
from .layout import Layout
from .repository_store import FilesystemRepositoryStore

__all__ = ["FilesystemBlobStore", "FilesystemRepositoryStore", "Layout"]
