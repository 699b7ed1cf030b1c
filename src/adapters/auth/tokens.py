"""JWT bearer tokens as the Docker token authentication spec has them: RS256 (or any RSA or EC key's
algorithm), a `kid` header in libtrust's fingerprint form, `iss`, `aud` (the service), `exp`, `nbf`,
`iat`, `jti` and the `access` claim. PyJWT does the cryptography; this module picks keys and checks the
claims the spec adds.

Signing keys of the built-in token endpoint live in a key ring: a directory of PEM files named
`<created, epoch seconds>-<kid>.pem`. The newest signs. An older key still verifies for one token
lifetime after its successor was made, so rotating the key (`myregistry token-key rotate`) cuts off no
token in use; after that it is refused and `rotate` deletes it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import load_pem_x509_certificates

from domain.access import Scope
from domain.errors import Unauthorized
from domain.ports import IssuedToken, TokenIssuer, TokenVerifier, VerifiedToken

LEEWAY = 30  # seconds of clock difference allowed between the token server and the registry
_CACHE_LIMIT = 10_000
_CACHED_LENGTH = 4096
_REFRESH_CLAIM = "myregistry_refresh"


def key_id(public_key: Any) -> str:
    """libtrust's key id, as Distribution and Docker's token servers write `kid`: the SHA-256 of the
    DER public key, its first 240 bits in base32, in groups of four joined by colons."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i:i + 4] for i in range(0, len(text), 4))


def algorithm_for(public_key: Any) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[public_key.curve.name]
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError(f"unsupported key type {type(public_key).__name__}: use an RSA or EC key")


# The algorithms a key of each kind may verify: never `none`, never an HMAC (a public key used as an
# HMAC secret is the classic confusion attack).
def _allowed_algorithms(public_key: Any) -> list[str]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
    return [algorithm_for(public_key)]


@dataclass(frozen=True)
class VerificationKey:
    kid: str
    key: Any
    algorithms: list[str]


def load_public_keys(path: str) -> list[VerificationKey]:
    """An external token server's keys: a PEM bundle of public keys and/or certificates, or a JWKS
    JSON document."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"cannot read the token server's public keys {path}: {err.strerror}") from None
    keys: list[VerificationKey] = []
    if data.lstrip().startswith(b"{"):
        try:
            jwks = jwt.PyJWKSet.from_json(data.decode())
        except (jwt.PyJWTError, ValueError) as err:
            raise ValueError(f"{path} is not a usable JWKS document: {err}") from None
        for jwk in jwks.keys:
            public = jwk.key.public_key() if hasattr(jwk.key, "public_key") else jwk.key
            kid = jwk.key_id or key_id(public)
            keys.append(VerificationKey(kid, public, _allowed_algorithms(public)))
        return keys
    for block in _pem_blocks(data):
        if b"CERTIFICATE" in block.split(b"\n", 1)[0]:
            for cert in load_pem_x509_certificates(block):
                public = cert.public_key()
                keys.append(VerificationKey(key_id(public), public, _allowed_algorithms(public)))
        elif b"PUBLIC KEY" in block.split(b"\n", 1)[0]:
            public = serialization.load_pem_public_key(block)
            keys.append(VerificationKey(key_id(public), public, _allowed_algorithms(public)))
    if not keys:
        raise ValueError(f"{path} holds no PEM public key or certificate and is not a JWKS document")
    return keys


def _pem_blocks(data: bytes) -> list[bytes]:
    blocks, current = [], None
    for line in data.splitlines(keepends=True):
        if line.startswith(b"-----BEGIN "):
            current = [line]
        elif current is not None:
            current.append(line)
            if line.startswith(b"-----END "):
                blocks.append(b"".join(current))
                current = None
    return blocks


class KeyRing:
    """The built-in token endpoint's signing keys (see the module docstring). `directory` None keeps
    one key in memory (memory storage, tests)."""

    def __init__(self, directory: str | None, token_ttl: float, clock: Callable[[], float] = time.time,
                 signing_key_file: str | None = None, reload_every: float = 10.0) -> None:
        self.directory, self.token_ttl, self.clock = directory, token_ttl, clock
        self.signing_key_file, self.reload_every = signing_key_file, reload_every
        self._lock = threading.Lock()
        self._loaded_at = -1e18
        self._signing: tuple[str, Any] | None = None
        self._verifying: list[VerificationKey] = []
        if directory is None and signing_key_file is None:
            self._memory_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    # upkeep (start-up and the CLI)
    def ensure(self) -> None:
        """Make the first key if the ring is empty; safe when several processes start at once."""
        if self.directory is None or self.signing_key_file is not None:
            return
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if not self._files():
            self._add_key(exclusive=True)

    def rotate(self) -> str:
        """A new signing key; keys retired more than one token lifetime ago are deleted."""
        if self.directory is None:
            raise ValueError("the signing key is given by path (REGISTRY_AUTH_TOKEN_SIGNING_KEY): replace "
                             "that file to rotate it")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        kid = self._add_key(exclusive=False)
        files = self._files()
        now = self.clock()
        for (_, _, path), (successor, _, _) in zip(files, files[1:], strict=False):
            if successor + self.token_ttl + LEEWAY < now:
                os.unlink(path)
        self._loaded_at = -1e18
        return kid

    def _files(self) -> list[tuple[float, str, str]]:
        found = []
        for entry in os.listdir(self.directory):
            stem, dot, ext = entry.partition(".")
            created, dash, kid = stem.partition("-")
            if ext == "pem" and dash and created.isdigit():
                found.append((float(created), kid, os.path.join(self.directory, entry)))
        return sorted(found)

    def _add_key(self, exclusive: bool) -> str:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        kid = key_id(key.public_key())
        existing = self._files()
        created = max(int(self.clock()), int(existing[-1][0]) + 1 if existing else 0)
        fd, tmp = tempfile.mkstemp(prefix=".key.", dir=self.directory)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        final = os.path.join(self.directory, f"{created}-{kid.replace(':', '')}.pem")
        try:
            if exclusive and self._files():  # another process made the first key meanwhile
                return ""
            os.link(tmp, final)
        finally:
            os.unlink(tmp)
        return kid

    # use
    def _load(self) -> None:
        now = time.monotonic()
        if now - self._loaded_at < self.reload_every and self._signing is not None:
            return
        with self._lock:
            if self.signing_key_file is not None:
                entries = [(0.0, self._read_private(self.signing_key_file))]
            elif self.directory is None:
                entries = [(0.0, self._memory_key)]
            else:
                entries = [(created, self._read_private(path)) for created, _, path in self._files()]
                if not entries:
                    raise ValueError(f"no token signing key in {self.directory}")
            wall = self.clock()
            verifying = []
            for i, (_, private) in enumerate(entries):
                retired_at = entries[i + 1][0] if i + 1 < len(entries) else None
                if retired_at is None or retired_at + self.token_ttl + LEEWAY >= wall:
                    public = private.public_key()
                    verifying.append(VerificationKey(key_id(public), public, _allowed_algorithms(public)))
            private = entries[-1][1]
            self._signing = (key_id(private.public_key()), private)
            self._verifying = verifying
            self._loaded_at = now

    @staticmethod
    def _read_private(path: str) -> Any:
        try:
            with open(path, "rb") as f:
                return serialization.load_pem_private_key(f.read(), password=None)
        except OSError as err:
            raise ValueError(f"cannot read the token signing key {path}: {err.strerror}") from None
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path} is not an unencrypted PEM private key: {err}") from None

    def signing(self) -> tuple[str, Any]:
        self._load()
        assert self._signing is not None
        return self._signing

    def verification_keys(self) -> list[VerificationKey]:
        self._load()
        return self._verifying


class JwtTokens(TokenIssuer, TokenVerifier):
    """Issues (with a KeyRing) and verifies tokens for one issuer and service. With `external_keys`
    it only verifies, tokens of an outside token server."""

    def __init__(self, issuer: str, service: str, ttl: float, refresh_ttl: float, ring: KeyRing | None = None,
                 external_keys: list[VerificationKey] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.issuer, self.service, self.ttl, self.refresh_ttl = issuer, service, int(ttl), int(refresh_ttl)
        self.ring, self.external_keys, self.clock = ring, external_keys, clock
        # Verified tokens by their text, up to _CACHED_LENGTH characters (ours are about 700): at most
        # 10,000 of them, so a few tens of MB at worst. Longer ones are verified every time.
        self._cache: dict[str, VerifiedToken] = {}

    # issuing
    def _sign(self, claims: dict[str, Any]) -> str:
        assert self.ring is not None, "an external token server issues the tokens"
        kid, private = self.ring.signing()
        return jwt.encode(claims, private, algorithm=algorithm_for(private.public_key()), headers={"kid": kid})

    def _claims(self, subject: str | None, lifetime: int) -> dict[str, Any]:
        now = int(self.clock())
        return {"iss": self.issuer, "sub": subject or "", "aud": self.service, "iat": now, "nbf": now,
                "exp": now + lifetime, "jti": secrets.token_urlsafe(16)}

    def issue(self, subject: str | None, access: list[Scope]) -> IssuedToken:
        claims = self._claims(subject, self.ttl)
        claims["access"] = [s.claim() for s in access]
        return IssuedToken(self._sign(claims), claims["iat"], self.ttl, subject=subject)

    def issue_refresh(self, subject: str, version: str) -> str:
        claims = self._claims(subject, self.refresh_ttl)
        claims[_REFRESH_CLAIM] = version
        return self._sign(claims)

    def refresh_subject(self, token: str) -> tuple[str, str] | None:
        try:
            claims = self._decode(token)
        except Unauthorized:
            return None
        version, subject = claims.get(_REFRESH_CLAIM), claims.get("sub")
        if not isinstance(version, str) or not version or not isinstance(subject, str) or not subject:
            return None
        return subject, version

    # verifying
    def _keys(self) -> list[VerificationKey]:
        return self.external_keys if self.external_keys is not None else self.ring.verification_keys()

    def _decode(self, token: str) -> dict[str, Any]:
        if not token.isascii():  # a header byte over 0x7f arrives as a lone surrogate: PyJWT raises on it
            raise Unauthorized("the bearer token is not a JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("the bearer token is not a JWT") from None
        kid = header.get("kid")
        keys = self._keys()
        candidates = [k for k in keys if k.kid == kid] if kid is not None else keys
        if not candidates:
            raise Unauthorized("the bearer token is signed by a key this registry does not trust "
                               "(unknown kid); get a new token")
        error: Exception | None = None
        for key in candidates:
            if header.get("alg") not in key.algorithms:
                error = Unauthorized(f"the bearer token's algorithm {str(header.get('alg'))[:20]!r} is not "
                                     "accepted for its key")
                continue
            try:
                return jwt.decode(token, key.key, algorithms=key.algorithms, audience=self.service,
                                  issuer=self.issuer, leeway=LEEWAY,
                                  options={"require": ["exp", "iss", "aud"], "verify_iat": True})
            except jwt.ExpiredSignatureError:
                raise Unauthorized("the bearer token has expired; get a new one") from None
            except jwt.ImmatureSignatureError:
                raise Unauthorized("the bearer token is not valid yet (nbf or iat in the future)") from None
            except jwt.InvalidAudienceError:
                raise Unauthorized(f"the bearer token is for another service (expected {self.service!r})") from None
            except jwt.InvalidIssuerError:
                raise Unauthorized(f"the bearer token is from another issuer (expected {self.issuer!r})") from None
            except jwt.MissingRequiredClaimError as err:
                raise Unauthorized(f"the bearer token lacks the {err.claim!r} claim") from None
            except jwt.PyJWTError:
                error = Unauthorized("the bearer token's signature does not verify")
        raise error or Unauthorized("the bearer token does not verify")

    def verify(self, token: str) -> VerifiedToken:
        key = token
        found = self._cache.get(key)
        now = self.clock()
        if found is not None:
            if now < found.expires_at + LEEWAY:
                return found
            del self._cache[key]
        claims = self._decode(token)
        if claims.get(_REFRESH_CLAIM):
            raise Unauthorized("a refresh token is not an access token; exchange it at the token endpoint")
        access = _access(claims.get("access", []))
        subject = claims.get("sub") if isinstance(claims.get("sub"), str) and claims.get("sub") else None
        verified = VerifiedToken(subject, access, float(claims["exp"]), ours=self.external_keys is None)
        if len(token) <= _CACHED_LENGTH:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = verified
        return verified


def _access(claim: Any) -> dict[tuple[str, str], frozenset[str]]:
    if not isinstance(claim, list):
        raise Unauthorized("the bearer token's access claim is not a list")
    access: dict[tuple[str, str], set[str]] = {}
    for entry in claim:
        if not (isinstance(entry, dict) and isinstance(entry.get("type"), str) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("actions"), list) and all(isinstance(a, str) for a in entry["actions"])):
            raise Unauthorized("the bearer token's access claim has a malformed entry")
        access.setdefault((entry["type"], entry["name"]), set()).update(entry["actions"])
    return {k: frozenset(v) for k, v in access.items()}


def jwks_document(keys: list[VerificationKey]) -> bytes:
    """The public keys as JWKS (for an operator who wants another registry to trust this one's tokens)."""
    out = []
    for k in keys:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.key)) if isinstance(k.key, rsa.RSAPublicKey) \
            else json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.key))
        jwk["kid"] = k.kid
        out.append(jwk)
    return json.dumps({"keys": out}, indent=2).encode()
