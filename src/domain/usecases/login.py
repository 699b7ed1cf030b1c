from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

from ..access import AccessRules, Identity
from ..errors import TooManyAttempts, Unauthorized
from ..ports import LoginThrottle, Passwords

log = logging.getLogger("myregistry")


class Login:
    """A user name and password, checked against the user directory. Failed attempts are counted per
    user and address; past `burst` that pair must wait (TooManyAttempts), even with the right password,
    so guessing costs the attacker time, and the user can still log in from elsewhere. An address
    also has a budget of ADDRESS_FACTOR times that across all names, so spraying many names (each a
    bcrypt check) is bounded too.

    An attempt counts as a failure from the moment its check starts, and is given back when it
    succeeds: guesses sent in parallel are held back like guesses sent one after the other (counting
    after the check let every guess in flight through). Identical attempts in flight share one check,
    so a client sending the same credentials on several parallel requests spends one attempt."""

    ADDRESS_FACTOR = 20

    def __init__(self, passwords: Passwords, throttle: LoginThrottle, rules: Callable[[], AccessRules],
                 burst: int) -> None:
        self.passwords, self.throttle, self.rules, self.burst = passwords, throttle, rules, burst
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}

    async def __call__(self, user: str, password: str, address: str) -> Identity:
        if not user:
            raise Unauthorized("incorrect user name or password")
        if self.passwords.remembered(user, password):
            # Checked before and still standing: not a guess, so nothing to count or hold back (a user
            # whose address an attacker locked out keeps working with the credentials they logged in with).
            return self.rules().identity(user)
        keys = {f"user:{user}\0{address}": self.burst, f"address:{address}": self.burst * self.ADDRESS_FACTOR}
        wait = self.throttle.retry_after(keys)
        if wait > 0:
            raise TooManyAttempts(wait, f"too many failed logins for {user!r} from {address}; "
                                        f"try again in {int(wait) + 1} s")
        attempt = hashlib.sha256("\0".join((user, password, address)).encode("utf-8", "surrogateescape")).digest()
        check = self._in_flight.get(attempt)
        if check is None:
            self.throttle.failed(keys)
            # Others sending the same attempt meanwhile wait on this future (a plain future: a task per
            # request would cost more than the remembered check it usually wraps).
            shared = self._in_flight[attempt] = asyncio.get_running_loop().create_future()
            try:
                ok = await self.passwords.check(user, password)
            except BaseException as err:
                shared.set_exception(err)
                shared.exception()  # retrieved: nobody may be waiting
                raise
            else:
                shared.set_result(ok)
            finally:
                del self._in_flight[attempt]
            if ok:
                self.throttle.refund(keys)
            elif self.throttle.retry_after(keys) > 0:
                log.warning("failed logins for user %r from %s reached the limit (REGISTRY_AUTH_LOGIN_BURST=%d "
                            "per user and address, %d per address): further attempts get 429 for a while",
                            user[:100], address, self.burst, self.burst * self.ADDRESS_FACTOR)
        else:
            ok = await asyncio.shield(check)
        if not ok:
            raise Unauthorized("incorrect user name or password")
        return self.rules().identity(user)
