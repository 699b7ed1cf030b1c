"""The access rules file (TOML), validated into domain.access.AccessRules. `myregistry config` prints
an example; `load_rules` raises ValueError with a message naming the file, the entry and the fix."""

from __future__ import annotations

import tomllib

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from domain.access import (
    PRINCIPAL_ANONYMOUS,
    PRINCIPAL_AUTHENTICATED,
    AccessRules,
    Action,
    Rule,
    RulesInvalid,
    valid_user_name,
)

EXAMPLE = """\
# Access rules for My Registry (REGISTRY_AUTH_RULES). Re-read when the file changes.
#
# A principal is one of: "anonymous" (anyone, logged in or not), "authenticated" (any logged-in user),
# "@group" (a group below), or a user name (from the htpasswd file, or a client certificate's CN).
# Repository globs: * matches within one path component, ** across components, ? one character.
# Every rule that matches a repository adds its grants; nothing is taken away.

# Admins may do everything: every repository, the whole catalog, garbage collection
# (POST /v2/_gc) and repository deletion (DELETE /v2/<name>/_repository).
admins = ["admin"]

[groups]
team-a = ["alice", "bob"]

# Public images: anyone may pull; only team-a may push.
[[repositories]]
match = ["library/*"]
pull = ["anonymous"]
push = ["@team-a"]

# team-a's own repositories.
[[repositories]]
match = ["team-a/**"]
pull = ["@team-a"]
push = ["@team-a"]
delete = ["alice"]
"""


def _check_principal(value: str) -> str:
    if value in (PRINCIPAL_ANONYMOUS, PRINCIPAL_AUTHENTICATED):
        return value
    name = value[1:] if value.startswith("@") else value
    if not valid_user_name(name):
        raise ValueError(f"{value!r} is not a principal: use \"anonymous\", \"authenticated\", \"@group\" "
                         "or a user name")
    return value


class _RepositoryRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    match: list[str] = Field(min_length=1)
    pull: list[str] = []
    push: list[str] = []
    delete: list[str] = []

    @field_validator("pull", "push", "delete")
    @classmethod
    def _principals(cls, values: list[str]) -> list[str]:
        return [_check_principal(v) for v in values]


class _RulesDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")
    admins: list[str] = []
    groups: dict[str, list[str]] = {}
    repositories: list[_RepositoryRule] = []

    @field_validator("admins")
    @classmethod
    def _admins(cls, values: list[str]) -> list[str]:
        return [_check_principal(v) for v in values]

    @field_validator("groups")
    @classmethod
    def _groups(cls, groups: dict[str, list[str]]) -> dict[str, list[str]]:
        for group, users in groups.items():
            if not valid_user_name(group):
                raise ValueError(f"group name {group!r}: letters, digits and . _ @ + -")
            for user in users:
                if not valid_user_name(user):
                    raise ValueError(f"group {group!r} lists {user!r}, which is not a user name")
        return groups


def parse_rules(data: bytes, path: str) -> AccessRules:
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from None
    try:
        doc = _RulesDocument.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{path}: {problems} (`myregistry config` prints an example)") from None
    rules = []
    for number, entry in enumerate(doc.repositories, 1):
        grants: dict[str, set[Action]] = {}
        for action in Action:
            for principal in getattr(entry, action.value):
                grants.setdefault(principal, set()).add(action)
        try:
            rules.append(Rule(tuple(entry.match), {p: frozenset(a) for p, a in grants.items()}))
        except RulesInvalid as err:
            raise ValueError(f"{path}: repositories entry {number}: {err.message}") from None
    try:
        return AccessRules(rules, doc.admins, doc.groups)
    except RulesInvalid as err:
        raise ValueError(f"{path}: {err.message}") from None
