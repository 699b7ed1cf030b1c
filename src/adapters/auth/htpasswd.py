"""Users in Apache's htpasswd format, bcrypt hashes only (`htpasswd -B`, or `myregistry users add`)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import tempfile

import bcrypt

from domain.ports import Passwords

from .watched import WatchedFile

_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_BCRYPT = re.compile(rb"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
# Checked against when the user does not exist, so an unknown user takes as long as a wrong password.
_DUMMY = bcrypt.hashpw(b"not a password", bcrypt.gensalt(10))
_CACHE_LIMIT = 10_000


def valid_user_name(name: str) -> bool:
    return bool(_USER.fullmatch(name))


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

    def _cache_key(self, user: str, password: str, hashed: bytes) -> bytes:
        return hmac.new(self._key, b"\0".join((user.encode(), password.encode(), hashed)), hashlib.sha256).digest()

    async def check(self, user: str, password: str) -> bool:
        hashed = self.file.get().get(user)
        secret = password.encode("utf-8", "surrogateescape")
        if hashed is None:
            await asyncio.to_thread(bcrypt.checkpw, secret, _DUMMY)
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
