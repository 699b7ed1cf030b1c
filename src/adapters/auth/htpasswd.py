"""Users in Apache's htpasswd format, bcrypt hashes only (`htpasswd -B`, or `myregistry users add`)."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import re
import secrets
import tempfile

import bcrypt

from domain.access import valid_user_name
from domain.ports import Passwords

from .watched import WatchedFile

_BCRYPT = re.compile(rb"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
# Checked against when the user does not exist and the file has no user (see _stand_in).
_DUMMY = bcrypt.hashpw(b"not a password", bcrypt.gensalt(10))
_CACHE_LIMIT = 10_000
# bcrypt reads the first 72 bytes of a password (htpasswd -B, bcrypt before 5.0); bcrypt 5 raises past them.
_BCRYPT_MAX_BYTES = 72


def parse_htpasswd(data: bytes, path: str) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, hashed = line.partition(b":")
        name = user.decode("utf-8", "replace")
        if not sep or not valid_user_name(name):
            raise ValueError(f"{path} line {number}: expected NAME:BCRYPT-HASH with a user name of letters, "
                             "digits and . _ @ + -")
        if not _BCRYPT.fullmatch(hashed):
            raise ValueError(f"{path} line {number}: user {name!r} has a hash that is not bcrypt; "
                             f"set the password again with `myregistry users add {name}` (or htpasswd -B)")
        users[name] = hashed
    return users


class HtpasswdPasswords(Passwords):
    """Checks run bcrypt on a thread (it releases the GIL), so logins do not stall the event loop.
    A successful check is remembered, keyed by a keyed hash of user, password and stored hash, so a
    client that sends Basic credentials with every request pays bcrypt once; changing the password in
    the file changes the key."""

    def __init__(self, path: str, interval: float = 1.0) -> None:
        self.file = WatchedFile(path, parse_htpasswd, "htpasswd file", interval)
        self._key = secrets.token_bytes(32)
        self._known: set[bytes] = set()
        self._stand_in_for: dict[str, bytes] | None = None
        self._stand_in_hash = _DUMMY

    def _cache_key(self, user: str, password: str, hashed: bytes) -> bytes:
        data = b"\0".join((user.encode("utf-8", "surrogateescape"), password.encode("utf-8", "surrogateescape"),
                            hashed))
        return hashlib.blake2b(data, key=self._key, digest_size=32).digest()  # keyed: one C call

    def _stand_in(self, users: dict[str, bytes]) -> bytes:
        """What an unknown user's password is checked against: a hash of the file, of the cost most of
        its hashes have, so an unknown name takes as long as a wrong password (a fixed dummy of another
        cost told the names apart). The answer is False whatever the check says."""
        if self._stand_in_for is not users:
            costs = collections.Counter(h[4:6] for h in users.values())
            if costs:
                cost = costs.most_common(1)[0][0]
                self._stand_in_hash = next(h for h in users.values() if h[4:6] == cost)
            else:
                self._stand_in_hash = _DUMMY
            self._stand_in_for = users
        return self._stand_in_hash

    def remembered(self, user: str, password: str) -> bool:
        hashed = self.file.get().get(user)
        return hashed is not None and self._cache_key(user, password, hashed) in self._known

    async def check(self, user: str, password: str) -> bool:
        users = self.file.get()
        hashed = users.get(user)
        secret = password.encode("utf-8", "surrogateescape")[:_BCRYPT_MAX_BYTES]
        if hashed is None:
            await asyncio.to_thread(bcrypt.checkpw, secret, self._stand_in(users))
            return False
        key = self._cache_key(user, password, hashed)
        if key in self._known:
            return True
        if not await asyncio.to_thread(bcrypt.checkpw, secret, hashed):
            return False
        if len(self._known) >= _CACHE_LIMIT:
            self._known.clear()
        self._known.add(key)
        return True

    async def exists(self, user: str) -> bool:
        return user in self.file.get()

    async def version(self, user: str) -> str | None:
        hashed = self.file.get().get(user)
        # A digest of the stored hash: it changes with the password and tells nothing about it.
        return None if hashed is None else hashlib.sha256(hashed).hexdigest()[:32]


# The file's upkeep, for `myregistry users`.

def hash_password(password: str, rounds: int = 12) -> bytes:
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds))


def read_users(path: str) -> dict[str, bytes]:
    try:
        with open(path, "rb") as f:
            return parse_htpasswd(f.read(), path)
    except FileNotFoundError:
        return {}


def write_users(path: str, users: dict[str, bytes]) -> None:
    """Replace the file whole (a temporary file renamed over it), readable by its owner only."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".htpasswd.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            for name in sorted(users):
                f.write(name.encode() + b":" + users[name] + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
