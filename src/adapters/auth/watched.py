from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("myregistry")


class WatchedFile(Generic[T]):
    """A configuration file parsed once, and again when it changes (checked at most every `interval`
    seconds, by its inode, size and modification and change times: an edit in place, a replace by rename,
    or a copy that put an older modification time back, which the change time still shows).
    A change that does not parse is logged and the last good contents stay in force; at start an error
    is raised, so a broken file stops the registry with the reason."""

    def __init__(self, path: str, parse: Callable[[bytes, str], T], what: str, interval: float = 1.0) -> None:
        self.path, self.parse, self.what, self.interval = path, parse, what, interval
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        self._stamp = self._stat()
        self.value = self._load()

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _load(self) -> T:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise ValueError(f"cannot read the {self.what} {self.path}: {err.strerror}") from None
        return self.parse(data, self.path)

    def get(self) -> T:
        now = time.monotonic()
        if now - self._checked < self.interval:
            return self.value
        with self._lock:
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self.value = self._load()
                    log.info("re-read the %s %s", self.what, self.path)
                except ValueError as err:
                    log.error("kept the previous %s: %s (fix the file; it is re-read when it changes)",
                              self.what, err)
        return self.value
