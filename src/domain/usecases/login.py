from __future__ import annotations

from collections.abc import Callable

from ..access import AccessRules, Identity
from ..errors import TooManyAttempts, Unauthorized
from ..ports import LoginThrottle, Passwords


class Login:
    """A user name and password, checked against the user directory. Failed attempts are counted per
    user and address; past `burst` that pair must wait (TooManyAttempts), even with the right password,
    so guessing costs the attacker time, and the user can still log in from elsewhere. An address
    also has a budget of ADDRESS_FACTOR times that across all names, so spraying many names (each a
    bcrypt check) is bounded too."""

    ADDRESS_FACTOR = 20

    def __init__(self, passwords: Passwords, throttle: LoginThrottle, rules: Callable[[], AccessRules],
                 burst: int) -> None:
        self.passwords, self.throttle, self.rules, self.burst = passwords, throttle, rules, burst

    async def __call__(self, user: str, password: str, address: str) -> Identity:
        keys = {f"user:{user}\0{address}": self.burst, f"address:{address}": self.burst * self.ADDRESS_FACTOR}
        wait = self.throttle.retry_after(keys)
        if wait > 0:
            raise TooManyAttempts(wait, f"too many failed logins for {user!r} from {address}; "
                                        f"try again in {int(wait) + 1} s")
        if not user or not await self.passwords.check(user, password):
            self.throttle.failed(keys)
            raise Unauthorized("incorrect user name or password")
        return self.rules().identity(user)
