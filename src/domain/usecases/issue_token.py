from __future__ import annotations

from collections.abc import Callable

from ..access import AccessRules, Identity, Scope, grant
from ..errors import NameInvalid, Unauthorized
from ..names import RepositoryName
from ..ports import IssuedToken, Passwords, TokenIssuer
from .login import Login


def _valid_repository(name: str) -> bool:
    try:
        RepositoryName.parse(name)
    except NameInvalid:
        return False
    return True


class IssueToken:
    """The token endpoint's decision: who is asking (a password, a refresh token, or nobody), and what
    of the asked scopes the rules give them. What is not allowed is left out of the token, never an
    error (the registry then answers the request the token does not cover)."""

    def __init__(self, login: Login, passwords: Passwords, issuer: TokenIssuer,
                 rules: Callable[[], AccessRules]) -> None:
        self.login, self.passwords, self.issuer, self.rules = login, passwords, issuer, rules

    async def with_password(self, user: str, password: str, address: str, scopes: list[Scope],
                            offline: bool = False) -> IssuedToken:
        who = await self.login(user, password, address)
        version = await self.passwords.version(user) if offline else None
        return self._issue(who, scopes, offline, version)

    async def with_refresh_token(self, refresh_token: str, scopes: list[Scope]) -> IssuedToken:
        found = self.issuer.refresh_subject(refresh_token)
        if found is None or await self.passwords.version(found[0]) != found[1]:
            raise Unauthorized("the refresh token is invalid or expired, or its user was removed or has a new "
                               "password; log in again")
        return self._issue(self.rules().identity(found[0]), scopes, offline=False, version=None)

    def anonymous(self, scopes: list[Scope]) -> IssuedToken:
        return self._issue(self.rules().identity(None), scopes, offline=False, version=None)

    def _issue(self, who: Identity, scopes: list[Scope], offline: bool, version: str | None) -> IssuedToken:
        access = grant(self.rules(), who, scopes, _valid_repository)
        token = self.issuer.issue(who.name, access)
        if offline and who.name is not None and version is not None:
            refresh = self.issuer.issue_refresh(who.name, version)
            token = IssuedToken(token.token, token.issued_at, token.expires_in, refresh, token.subject)
        return token
