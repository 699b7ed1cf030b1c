"""Small file operations shared by the filesystem adapters: atomic writes, link files."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterable

from domain.digest import Digest
from domain.errors import DigestInvalid, StorageFailure


def storage_failure(err: OSError, what: str) -> StorageFailure:
    hint = " (the disk is full: free space under STORAGE_ROOT)" if err.errno == errno.ENOSPC else ""
    return StorageFailure(f"storage failed while {what}: {err.strerror}{hint}")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str, durable: bool) -> None:
    """os.makedirs; when durable, each directory it creates is also recorded on disk in its parent."""
    if not durable:
        os.makedirs(path, exist_ok=True)
        return
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(directory))


def write_atomic(path: str, data: bytes, durable: bool = False) -> None:
    """Write a whole file so that readers see either nothing or all of it. When durable, the file and
    its name are on disk (fsync) before this returns."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        make_dirs(os.path.dirname(path), durable)
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fdatasync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(os.path.dirname(path))
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise storage_failure(e, f"writing {os.path.basename(path)}") from e


def listdir(path: str) -> list[str]:
    """The names in a directory; none when there is no such directory."""
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_link(path: str, digest: Digest, durable: bool = False) -> None:
    write_atomic(path, str(digest).encode(), durable)


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_LINK_MAX = 300  # a link file holds "<alg>:<hex>" (a newline after it, when another tool wrote it)


def _parse_link(data: bytes) -> Digest | None:
    try:
        return Digest.parse(data.decode("ascii", "replace").strip())
    except DigestInvalid:
        return None


def read_link(path: str) -> Digest | None:
    # os.open/os.read: a buffered file object cost three times the system calls it makes.
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = os.read(fd, _LINK_MAX)
    finally:
        os.close(fd)
    return _parse_link(data)


def read_link_and_time(path: str) -> tuple[Digest | None, float]:
    """The digest a link file names (None when it names none) and the file's mtime, from one open
    file; (None, 0.0) when there is no such file."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return None, 0.0
    try:
        mtime = os.fstat(fd).st_mtime
        data = os.read(fd, _LINK_MAX)
    finally:
        os.close(fd)
    return _parse_link(data), mtime


def read_whole(path: str) -> bytes:
    """A whole (small) file; FileNotFoundError or NotADirectoryError when there is none."""
    fd = os.open(path, _READ_FLAGS)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size + 1)  # one byte more: a file that grew (or a short read) goes on below
        if len(data) == size:
            return data
        pieces = [data]
        while chunk := os.read(fd, 1 << 20):
            pieces.append(chunk)
        return b"".join(pieces)
    finally:
        os.close(fd)


def remove_tree(path: str) -> bool:
    """Remove a file tree; False when there was nothing. Entries that vanish meanwhile (another request
    removing the same tree) are skipped, never taken as the end of the work."""
    if not os.path.lexists(path):
        return False

    def vanished(_function, _path, exc_info) -> None:
        if not issubclass(exc_info[0], FileNotFoundError):
            raise exc_info[1]

    try:
        shutil.rmtree(path, onerror=vanished)
    except NotADirectoryError:
        os.unlink(path)
    return True


def link_time(path: str, digest: Digest) -> float | None:
    """The link file's mtime when it names `digest`; None otherwise."""
    found, mtime = read_link_and_time(path)
    return mtime if found == digest else None


def link_times(paths: Iterable[str]) -> dict[Digest, float]:
    """Every link file among `paths` that names a digest, with its mtime."""
    found: dict[Digest, float] = {}
    for path in paths:
        digest = read_link(path)
        if digest is None:
            continue
        try:
            found[digest] = os.stat(path).st_mtime
        except FileNotFoundError:
            continue
    return found


def refresh_link(path: str, digest: Digest, durable: bool = False) -> None:
    """Create the link, or bring its time to now when it already names the digest."""
    if read_link(path) == digest:
        try:
            os.utime(path)
            return
        except FileNotFoundError:
            pass
    write_link(path, digest, durable)


def remove_debris(root: str, is_debris, older_than: float, dry_run: bool, skip: str = "") -> int:
    """Remove the entries under `root` that `is_debris(directory, name, is_dir)` names and whose mtime
    is before `older_than`; directories named `skip` are not entered. Returns how many."""
    found = 0
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != skip]
        for name, is_dir in [*((d, True) for d in dirs), *((f, False) for f in files)]:
            if not is_debris(directory, name, is_dir):
                continue
            path = os.path.join(directory, name)
            try:
                if os.lstat(path).st_mtime >= older_than:
                    continue
                found += 1
                if not dry_run:
                    if is_dir:
                        remove_tree(path)
                    else:
                        os.unlink(path)
            except FileNotFoundError:
                continue
        dirs[:] = [d for d in dirs if not is_debris(directory, d, True)]
    return found
