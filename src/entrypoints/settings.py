"""Settings from the environment or a `.env` file in the working directory (the environment wins):
PORT and STORAGE_ROOT as the quick start names them, REGISTRY_* for the rest. A bad value stops the
registry at start with a message naming the variable, and the file when it came from there."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_FILE = ".env"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REGISTRY_", extra="ignore", populate_by_name=True,
                                      env_file=ENV_FILE, env_file_encoding="utf-8")

    port: int = Field(5000, ge=1, le=65535, validation_alias=AliasChoices("PORT", "REGISTRY_PORT"))
    storage_root: str = Field("./data", min_length=1,
                              validation_alias=AliasChoices("STORAGE_ROOT", "REGISTRY_STORAGE_ROOT"))
    host: str = "0.0.0.0"
    # filesystem: Distribution's layout under storage_root; memory: nothing kept (tests, scripts).
    storage: Literal["filesystem", "memory"] = "filesystem"
    # "auto": one worker per CPU this process may use, at most max_workers.
    workers: int | Literal["auto"] = "auto"
    max_workers: int = Field(8, ge=1, le=64)
    # Durability: with fsync, a blob, manifest, link or tag is on disk before the client hears it was
    # stored, so it survives a power cut. Without, it survives a crash of the registry but not of the
    # machine (like Distribution's filesystem driver, which never syncs).
    fsync: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    max_manifest_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_blob_bytes: int = Field(0, ge=0, description="0 means no limit")
    max_manifest_references: int = Field(10_000, ge=1)
    max_uploads_per_repository: int = Field(1000, ge=0, description="open upload sessions; 0 means no limit")
    # Request line plus headers. Sanic cannot take more than 16 KiB.
    max_header_bytes: int = Field(16384, ge=1024, le=16384)
    # Garbage collection (seconds). Anything used within the grace is never collected.
    gc_grace_seconds: float = Field(3600, ge=0)
    gc_interval: float = Field(0, ge=0, description="run a collection every N seconds; 0: never")
    upload_max_idle_seconds: float = Field(24 * 3600, gt=0)
    upload_purge_interval: float = Field(3600, ge=0, description="purge idle uploads every N seconds; 0: never")
    # Seconds. A slow client may take as long as it keeps sending; these bound silence.
    request_timeout: float = Field(300, gt=0)
    response_timeout: float = Field(600, gt=0)
    keep_alive_timeout: float = Field(120, gt=0)
    # A request's line and headers must arrive within this many seconds of its first byte (slowloris).
    header_timeout: float = Field(20, gt=0)

    # Access control (README "Access control"). none: anyone who reaches the port may do anything.
    auth: Literal["none", "htpasswd", "token"] = "none"
    # Users and bcrypt hashes, Apache's htpasswd format (`myregistry users add`); re-read when it changes.
    auth_htpasswd: str | None = None
    # Who may do what on which repositories (TOML; `myregistry config` prints a skeleton). Without one,
    # every logged-in user may do everything and anonymous callers nothing (Distribution's behaviour).
    auth_rules: str | None = None
    # Token mode. Without auth_token_public_keys the registry is its own token server at /auth/token,
    # signing with a key generated under the storage root (or auth_token_signing_key).
    auth_token_realm: str | None = None  # default: <this server>/auth/token
    auth_token_service: str = "myregistry"
    auth_token_issuer: str = "myregistry"
    auth_token_signing_key: str | None = None  # a PEM RSA or EC private key
    auth_token_public_keys: str | None = None  # an external token server's keys: PEM bundle or JWKS JSON
    auth_token_ttl: float = Field(300, ge=10, le=86400)
    auth_refresh_token_ttl: float = Field(7 * 86400, ge=60)
    # Failed logins per user and address: this many at once, then one more every refill seconds (429).
    auth_login_burst: int = Field(5, ge=1)
    auth_login_refill_seconds: float = Field(12, gt=0)

    # TLS: both paths, or neither (plain HTTP). Re-read on SIGHUP; open connections are kept.
    tls_cert: str | None = None
    tls_key: str | None = None
    # With a CA file, clients may log in with a certificate it signed: its subject's CN is the user.
    tls_client_ca: str | None = None

    @field_validator("workers")
    @classmethod
    def _workers_in_range(cls, value: int | str) -> int | str:
        if value != "auto" and not 1 <= int(value) <= 64:
            raise ValueError("workers must be 'auto' or a number from 1 to 64")
        return value

    @model_validator(mode="after")
    def _resolve_workers(self) -> Settings:
        if self.workers == "auto":
            self.workers = max(1, min(len(os.sched_getaffinity(0)), self.max_workers))
        return self

    @model_validator(mode="after")
    def _auth_complete(self) -> Settings:
        if bool(self.tls_cert) != bool(self.tls_key):  # an empty value is no value
            raise ValueError("REGISTRY_TLS_CERT and REGISTRY_TLS_KEY go together: set both, or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("REGISTRY_TLS_CLIENT_CA needs TLS: set REGISTRY_TLS_CERT and REGISTRY_TLS_KEY")
        if self.auth == "htpasswd" and not self.auth_htpasswd:
            raise ValueError("REGISTRY_AUTH=htpasswd needs REGISTRY_AUTH_HTPASSWD, the file of users "
                             "(create it with `myregistry users add NAME`)")
        if self.auth == "token" and not self.auth_token_public_keys and not self.auth_htpasswd:
            raise ValueError("REGISTRY_AUTH=token needs either REGISTRY_AUTH_HTPASSWD (this registry issues "
                             "tokens to those users) or REGISTRY_AUTH_TOKEN_PUBLIC_KEYS (an external token "
                             "server's keys)")
        if self.auth == "token" and self.auth_token_public_keys and not self.auth_token_realm:
            raise ValueError("REGISTRY_AUTH_TOKEN_PUBLIC_KEYS (an external token server) needs "
                             "REGISTRY_AUTH_TOKEN_REALM, the URL where clients get tokens")
        return self


def describe_error(err: Exception) -> str:
    """A pydantic ValidationError as lines naming the environment variable to fix."""
    from pydantic import ValidationError

    if not isinstance(err, ValidationError):
        return str(err)
    aliases = {"port": "PORT", "storage_root": "STORAGE_ROOT"}
    lines = ["invalid settings:"]
    named = set()
    for e in err.errors():
        if not e["loc"]:  # a check across settings: its message names them
            lines.append("  " + e["msg"].removeprefix("Value error, "))
            continue
        field = str(e["loc"][0])
        var = aliases.get(field.lower(), field if field.isupper() else "REGISTRY_" + field.upper())
        if var in named:  # a value for a union field fails each branch: one line is enough
            continue
        named.add(var)
        where = f" (in {os.path.abspath(ENV_FILE)})" if var not in os.environ and _in_env_file(var) else ""
        lines.append(f"  {var}={e.get('input')!r}{where}: {e['msg']}")
    return "\n".join(lines)


def _in_env_file(var: str) -> bool:
    try:
        with open(ENV_FILE, encoding="utf-8") as f:
            return any(line.strip().removeprefix("export ").split("=", 1)[0].strip() == var for line in f)
    except OSError:
        return False
