"""Who may do what: identities, actions, the rules that grant them, and token scopes.

The rules are pure data with one question to answer, `actions(identity, repository)`. The HTTP layer
asks it for every request (htpasswd and client-certificate logins); the token endpoint asks it once, when
it decides what a token grants, and the registry then trusts the token's `access` claim alone.

Rule principals:
    "anonymous"       anyone, logged in or not (a logged-in user may always do what anonymous may)
    "authenticated"   any logged-in user
    "@team"           the members of group `team`
    "alice"           the user alice
Repository globs: `*` matches within one path component, `**` across components, `?` one character;
a glob matches the whole name. Grants from every matching rule add up; nothing is ever taken away.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import RegistryError


class Action(StrEnum):
    PULL = "pull"
    PUSH = "push"
    DELETE = "delete"


ALL_ACTIONS = frozenset(Action)
PRINCIPAL_ANONYMOUS = "anonymous"
PRINCIPAL_AUTHENTICATED = "authenticated"
_USER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


def valid_user_name(name: str) -> bool:
    """A user (or group) name: letters, digits and . _ @ + -, not a principal's keyword (a user called
    "anonymous" would make the rules and the audit log ambiguous)."""
    return bool(_USER.fullmatch(name)) and name not in (PRINCIPAL_ANONYMOUS, PRINCIPAL_AUTHENTICATED)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: `name` None is an anonymous caller."""

    name: str | None
    groups: frozenset[str] = frozenset()

    @property
    def anonymous(self) -> bool:
        return self.name is None

    def __str__(self) -> str:
        return self.name or "anonymous"


ANONYMOUS = Identity(None)


class RulesInvalid(RegistryError):
    code = "CONFIG_INVALID"
    default_message = "the access rules are invalid"


_GLOB_PART = re.compile(r"\*\*|\*|\?|[^*?]+")


def compile_glob(glob: str) -> re.Pattern[str]:
    """A repository glob as a regular expression over whole names."""
    if not glob or glob.startswith("/") or glob.endswith("/") or "//" in glob:
        raise RulesInvalid(f"repository glob {glob!r}: components are separated by single slashes")
    parts = []
    for token in _GLOB_PART.findall(glob):
        parts.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token) or re.escape(token))
    return re.compile("".join(parts))


@dataclass(frozen=True)
class Rule:
    globs: tuple[str, ...]
    grants: Mapping[str, frozenset[Action]]  # principal -> actions
    patterns: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(compile_glob(g) for g in self.globs))

    def matches(self, repository: str) -> bool:
        return any(p.fullmatch(repository) for p in self.patterns)


class AccessRules:
    """The rules file, compiled. `admins` are principals too (users, "@group", "authenticated").
    `open()` lets anyone do anything (auth none); `logged_in()` lets every logged-in user do anything
    and anonymous callers nothing (a login without a rules file)."""

    def __init__(self, rules: Iterable[Rule] = (), admins: Iterable[str] = (),
                 groups: Mapping[str, Iterable[str]] | None = None) -> None:
        self.rules = tuple(rules)
        self.admins = frozenset(admins)
        self.members = {g: frozenset(users) for g, users in (groups or {}).items()}
        self._groups_of: dict[str, set[str]] = {}
        for group, users in self.members.items():
            for user in users:
                self._groups_of.setdefault(user, set()).add(group)
        named = [(f"rule for {', '.join(r.globs)}", p) for r in self.rules for p in r.grants]
        named += [("admins", p) for p in self.admins]
        for where, principal in named:
            if principal.startswith("@") and principal[1:] not in self.members:
                raise RulesInvalid(f"{where} names group {principal[1:]!r}, which [groups] does not define")

    @classmethod
    def open(cls) -> AccessRules:
        return cls([Rule(("**",), {PRINCIPAL_ANONYMOUS: ALL_ACTIONS})], admins=[PRINCIPAL_ANONYMOUS])

    @classmethod
    def logged_in(cls) -> AccessRules:
        return cls([Rule(("**",), {PRINCIPAL_AUTHENTICATED: ALL_ACTIONS})], admins=[PRINCIPAL_AUTHENTICATED])

    def identity(self, user: str | None) -> Identity:
        if user is None:
            return ANONYMOUS
        return Identity(user, frozenset(self._groups_of.get(user, ())))

    def is_admin(self, who: Identity) -> bool:
        return any(_applies(p, who) for p in self.admins)

    def actions(self, who: Identity, repository: str) -> frozenset[Action]:
        if self.is_admin(who):
            return ALL_ACTIONS
        granted: set[Action] = set()
        for rule in self.rules:
            if not rule.matches(repository):
                continue
            for principal, actions in rule.grants.items():
                if _applies(principal, who):
                    granted |= actions
        return frozenset(granted)

    def may(self, who: Identity, repository: str, action: Action) -> bool:
        return action in self.actions(who, repository)


def _applies(principal: str, who: Identity) -> bool:
    if principal == PRINCIPAL_ANONYMOUS:
        return True
    if who.anonymous:
        return False
    if principal == PRINCIPAL_AUTHENTICATED:
        return True
    if principal.startswith("@"):
        return principal[1:] in who.groups
    return principal == who.name


# Token scopes, as the Docker token spec writes them: "repository:team/app:pull,push",
# "registry:catalog:*". Ours: "registry:admin:*" for collection, jobs and repository deletion.
CATALOG_SCOPE = ("registry", "catalog")
ADMIN_SCOPE = ("registry", "admin")


@dataclass(frozen=True, slots=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """One scope; None when malformed. The name may hold a colon (a registry host with a port), so
        the actions are after the last colon and the type before the first."""
        kind, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not kind or not name:
            return None
        return cls(kind, name, frozenset(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"

    def claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Scopes from `scope` parameters; a parameter may hold several, separated by spaces (OAuth2)."""
    found = []
    for value in values:
        for text in value.split():
            scope = Scope.parse(text)
            if scope is not None:
                found.append(scope)
    return found


def grant(rules: AccessRules, who: Identity, requested: Iterable[Scope], valid_repository) -> list[Scope]:
    """What a token for `who` may carry of what was asked: for each repository, the asked actions the
    rules allow; the catalog to anyone (it lists only what its caller may pull); admin to admins.
    `valid_repository(name)` says whether a name is one (nothing is granted on an invalid one)."""
    granted: dict[tuple[str, str], set[str]] = {}
    for scope in requested:
        key = (scope.type, scope.name)
        if scope.type == "repository":
            if not valid_repository(scope.name):
                continue
            allowed = {a.value for a in rules.actions(who, scope.name)}
            asked = allowed if "*" in scope.actions else set(scope.actions)
            actions = asked & allowed
        elif key == CATALOG_SCOPE:
            actions = {"*"} if "*" in scope.actions else set()
        elif key == ADMIN_SCOPE:
            actions = {"*"} if "*" in scope.actions and rules.is_admin(who) else set()
        else:
            continue
        if actions:
            granted.setdefault(key, set()).update(actions)
    return [Scope(k[0], k[1], frozenset(v)) for k, v in granted.items()]
