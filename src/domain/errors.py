"""Domain errors. Each carries the OCI distribution-spec error code; the HTTP layer picks the status.

The messages are written for the person running the registry and for the client's user: they say what
was wrong and, where it helps, what to do.
"""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    code = "UNKNOWN"
    default_message = "unknown error"

    def __init__(self, message: str | None = None, detail: Any = None) -> None:
        self.message = message or self.default_message
        self.detail = detail
        super().__init__(self.message)


class BlobUnknown(RegistryError):
    code = "BLOB_UNKNOWN"
    default_message = "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code = "BLOB_UPLOAD_INVALID"
    default_message = "blob upload invalid"


class RangeNotSatisfiable(BlobUploadInvalid):
    """A chunk that does not start where the upload ends (or a Range outside a blob)."""

    default_message = "requested range not satisfiable"


class UploadBusy(RangeNotSatisfiable):
    """Another request is using the upload session. Answered like an out-of-order chunk (416), so a
    client does what the spec says it does then: ask for the session's status and resume."""

    default_message = "upload is in use by another request"


class BlobUploadUnknown(RegistryError):
    code = "BLOB_UPLOAD_UNKNOWN"
    default_message = "blob upload unknown to registry"


class DigestInvalid(RegistryError):
    code = "DIGEST_INVALID"
    default_message = "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    code = "MANIFEST_BLOB_UNKNOWN"
    default_message = "manifest references a blob or manifest unknown to this repository"


class ManifestInvalid(RegistryError):
    code = "MANIFEST_INVALID"
    default_message = "manifest invalid"


class ManifestUnknown(RegistryError):
    code = "MANIFEST_UNKNOWN"
    default_message = "manifest unknown"


class NameInvalid(RegistryError):
    code = "NAME_INVALID"
    default_message = "invalid repository name"


class NameUnknown(RegistryError):
    code = "NAME_UNKNOWN"
    default_message = "repository name not known to registry"


class SizeInvalid(RegistryError):
    code = "SIZE_INVALID"
    default_message = "provided length did not match content length"


class TooLarge(SizeInvalid):
    """A body over a configured limit (manifest size, blob size)."""

    default_message = "content exceeds the configured size limit"


class Unsupported(RegistryError):
    code = "UNSUPPORTED"
    default_message = "the operation is unsupported"


class TagInvalid(RegistryError):
    # Docker's registry API code for a tag outside the grammar, on a PUT. Reads and deletes by such a
    # reference answer MANIFEST_UNKNOWN instead (entrypoints/http/params.py), as the conformance tests
    # and Distribution expect.
    code = "TAG_INVALID"
    default_message = "invalid tag"


class PaginationInvalid(RegistryError):
    code = "PAGINATION_NUMBER_INVALID"
    default_message = "invalid number of results requested"


class CollectionRunning(RegistryError):
    code = "TOOMANYREQUESTS"
    default_message = "a garbage collection is already running; try again when it has finished"


class TooManyUploads(RegistryError):
    code = "TOOMANYREQUESTS"
    default_message = "too many upload sessions are open in this repository"


class StorageFailure(RegistryError):
    """The backing store failed (disk full, I/O error). Not the client's fault."""

    code = "UNKNOWN"
    default_message = "the registry's storage failed"


class Unauthorized(RegistryError):
    """No credentials where the rules want some, or credentials that are wrong: log in."""

    code = "UNAUTHORIZED"
    default_message = "authentication required"


class Denied(RegistryError):
    """A logged-in caller whom the rules do not allow this."""

    code = "DENIED"
    default_message = "requested access to the resource is denied"


class TooManyAttempts(RegistryError):
    """Too many failed logins for this user from this address: wait `retry_after` seconds."""

    code = "TOOMANYREQUESTS"
    default_message = "too many failed logins; wait before trying again"

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
