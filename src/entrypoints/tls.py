"""TLS for `myregistry serve`: the server's SSLContext built from the settings, its certificate and key
re-read on SIGHUP without dropping a connection, and the user a verified client certificate names.

- Modern defaults: TLS 1.2 and 1.3 only, forward-secret AEAD ciphers for 1.2, no compression, no
  renegotiation, ALPN http/1.1. Client certificates are asked for only with REGISTRY_TLS_CLIENT_CA, and
  only that file's CAs are trusted for them (never the system's: any public CA's customer could log in).
  They are optional (CERT_OPTIONAL): a client without one still connects and uses a password or token.
  One a CA of that file did not sign fails the handshake: OpenSSL verifies every certificate a client
  sends, and Python gives no way to ignore a failed one.
- Every file problem (missing, unreadable, not PEM, an encrypted key, a key for another certificate,
  a key OpenSSL refuses) is a `TlsError` whose message names the setting, the file and what to do.
- Reload: `load_cert_chain` on the live context changes what new handshakes present; connections already
  open keep their session. A failed `load_cert_chain` leaves a context half-changed (the new certificate
  without a key: every handshake fails), so the files are read once, checked, loaded into a scratch
  context, and only then loaded into the live one from the very bytes that were checked (memfd), never
  from the paths again (a renewal tool may be halfway through writing them).
- SIGHUP under Sanic: its worker manager handles SIGINT and SIGTERM only, so SIGHUP would kill the main
  process (the default action) and orphan the workers. `reload_on_sighup` installs a handler before the
  workers fork, so each inherits it. In the main process it reloads the main's copy of the context
  (workers Sanic restarts later are forked from it), logs the outcome once, and on success forwards
  SIGHUP to each server worker; a worker reloads its own copy on its event loop. A worker never exits
  or restarts for it."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

log = logging.getLogger("myregistry")

# TLS 1.2: ECDHE key exchange and AEAD ciphers only (Mozilla's "intermediate" list without DHE).
# TLS 1.3 suites are OpenSSL's defaults, all of them AEAD.
CIPHERS_TLS12 = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
_USER_ATTR = "myregistry_tls_user"  # the cache on a connection's conn_info.ctx


class TlsError(Exception):
    """A TLS file the registry cannot use; the message says which, what is wrong and what to do."""


@dataclass(frozen=True)
class Certificate:
    """A checked certificate and key, as the bytes that were checked."""
    cert_path: str
    key_path: str
    cert_pem: bytes
    key_pem: bytes
    subject: str
    serial: int
    not_before: datetime
    not_after: datetime
    names: tuple[str, ...]

    def describe(self) -> str:
        names = ", ".join(self.names) if self.names else "no DNS or IP names"
        return (f"{self.subject} (serial {self.serial:x}, for {names}, valid until "
                f"{self.not_after:%Y-%m-%d %H:%M} UTC)")


def _read(path: str, setting: str, what: str) -> bytes:
    if not path:
        raise TlsError(f"{setting} is empty: give the path of the {what} (PEM)")
    where = f"{setting}={path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TlsError(f"{where}: no such file (the {what}, PEM)") from None
    except IsADirectoryError:
        raise TlsError(f"{where}: is a directory; give the {what} file itself (PEM)") from None
    except PermissionError:
        raise TlsError(f"{where}: permission denied: the registry runs as uid {os.getuid()} and cannot "
                       f"read the {what}") from None
    except OSError as err:
        raise TlsError(f"{where}: cannot be read: {err.strerror or err}") from None
    if not data.strip():
        raise TlsError(f"{where}: the file is empty; it should hold the {what} (PEM)")
    return data


def read_certificate(cert_path: str, key_path: str) -> Certificate:
    """Read and check a certificate (chain) and its private key; `TlsError` says what is wrong."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    cert_pem = _read(cert_path, "REGISTRY_TLS_CERT", "certificate")
    key_pem = _read(key_path, "REGISTRY_TLS_KEY", "private key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        hint = "; it holds a private key: are the two paths swapped?" if b"PRIVATE KEY-----" in cert_pem else ""
        raise TlsError(f"REGISTRY_TLS_CERT={cert_path}: no PEM certificate in it (a block starting "
                       f"-----BEGIN CERTIFICATE-----){hint}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsError(f"REGISTRY_TLS_KEY={key_path}: the private key is encrypted with a passphrase; give "
                       f"an unencrypted one (`openssl pkey -in {key_path} -out NEW.key`, readable only by "
                       f"the registry's user)") from None
    except (ValueError, UnsupportedAlgorithm):
        hint = "; it holds a certificate: are the two paths swapped?" if b"BEGIN CERTIFICATE" in key_pem else ""
        raise TlsError(f"REGISTRY_TLS_KEY={key_path}: no PEM private key in it (a block starting "
                       f"-----BEGIN PRIVATE KEY----- or -----BEGIN RSA/EC PRIVATE KEY-----){hint}") from None

    def spki(public_key) -> bytes:
        return public_key.public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)

    leaf = chain[0]
    if spki(leaf.public_key()) != spki(key.public_key()):
        others = [i for i, c in enumerate(chain[1:], 2) if spki(c.public_key()) == spki(key.public_key())]
        if others:
            raise TlsError(f"REGISTRY_TLS_CERT={cert_path}: the key in {key_path} belongs to certificate "
                           f"#{others[0]} of this file; the server's own certificate must come first, "
                           f"then its intermediates")
        raise TlsError(f"REGISTRY_TLS_KEY={key_path}: this key does not match the certificate in "
                       f"{cert_path} ({leaf.subject.rfc4514_string() or 'no subject'}, serial "
                       f"{leaf.serial_number:x}); give the key that certificate was issued for")
    names: list[str] = []
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName),
                 *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
    except x509.ExtensionNotFound:
        pass
    certificate = Certificate(cert_path, key_path, cert_pem, key_pem,
                              leaf.subject.rfc4514_string() or "(no subject)", leaf.serial_number,
                              leaf.not_valid_before_utc, leaf.not_valid_after_utc, tuple(names))
    try:
        _load(new_server_context(), certificate)  # what OpenSSL itself refuses (a key too small, ...)
    except ssl.SSLError as err:
        raise TlsError(f"REGISTRY_TLS_CERT={cert_path} with REGISTRY_TLS_KEY={key_path}: OpenSSL refuses "
                       f"them: {_openssl_reason(err)}") from None
    return certificate


_WEAK = {"EE_KEY_TOO_SMALL": "the key is too small for OpenSSL's security level (RSA needs 2048 bits or more)",
         "CA_MD_TOO_WEAK": "the certificate is signed with a digest OpenSSL no longer accepts (MD5 or SHA-1)"}


def _openssl_reason(err: ssl.SSLError) -> str:
    """What OpenSSL said, without the source-file suffix, and in words where it is terse."""
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(err.strerror or err))
    return _WEAK.get(err.reason or "", text)


def _warn_validity(certificate: Certificate) -> None:
    now = datetime.now(UTC)
    if certificate.not_after < now:
        log.warning("TLS certificate %s expired on %s UTC: clients will refuse it; renew it and send "
                    "SIGHUP", certificate.cert_path, f"{certificate.not_after:%Y-%m-%d %H:%M}")
    elif certificate.not_before > now:
        log.warning("TLS certificate %s is valid only from %s UTC (is this machine's clock right?): "
                    "clients will refuse it until then", certificate.cert_path,
                    f"{certificate.not_before:%Y-%m-%d %H:%M}")


def _no_password() -> bytes:
    raise TlsError("the private key is encrypted; give an unencrypted one")


def _load(context: ssl.SSLContext, certificate: Certificate) -> None:
    """load_cert_chain from the checked bytes: through memfd files on Linux (nothing on disk, and
    nothing a renewal tool is rewriting), from the paths elsewhere."""
    if not hasattr(os, "memfd_create"):
        context.load_cert_chain(certificate.cert_path, certificate.key_path, password=_no_password)
        return
    fds: list[int] = []
    try:
        paths = []
        for name, data in (("cert", certificate.cert_pem), ("key", certificate.key_pem)):
            fd = os.memfd_create(f"myregistry-tls-{name}", os.MFD_CLOEXEC)
            fds.append(fd)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            paths.append(f"/proc/self/fd/{fd}")
        try:
            context.load_cert_chain(paths[0], paths[1], password=_no_password)
        except (FileNotFoundError, PermissionError):  # no /proc: the paths, as checked a moment ago
            context.load_cert_chain(certificate.cert_path, certificate.key_path, password=_no_password)
    finally:
        for fd in fds:
            os.close(fd)


def new_server_context() -> ssl.SSLContext:
    """A server context with the registry's protocol settings and no certificate yet."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                        | getattr(ssl, "OP_NO_RENEGOTIATION", 0))
    context.set_ciphers(CIPHERS_TLS12)
    context.set_alpn_protocols(["http/1.1"])
    return context


def _load_client_ca(context: ssl.SSLContext, path: str) -> int:
    from cryptography import x509

    pem = _read(path, "REGISTRY_TLS_CLIENT_CA", "CA certificate(s) that sign client certificates")
    try:
        cas = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsError(f"REGISTRY_TLS_CLIENT_CA={path}: no PEM certificate in it (a block starting "
                       f"-----BEGIN CERTIFICATE-----)") from None
    try:
        context.load_verify_locations(cadata=pem.decode("ascii", "replace"))
    except ssl.SSLError as err:
        raise TlsError(f"REGISTRY_TLS_CLIENT_CA={path}: OpenSSL refuses it: {_openssl_reason(err)}") from None

    def is_ca(cert) -> bool:
        try:
            return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            return False

    if not any(is_ca(c) for c in cas):
        log.warning("REGISTRY_TLS_CLIENT_CA=%s holds no CA certificate (none has CA:TRUE), so client "
                    "certificates will not verify; give the CA that signs them", path)
    context.verify_mode = ssl.CERT_OPTIONAL
    return len(cas)


class TlsServer:
    """The live context of this process and its reload."""

    def __init__(self, context: ssl.SSLContext, certificate: Certificate) -> None:
        self.context, self.certificate = context, certificate

    def reload(self, quiet: bool = False) -> bool:
        """Re-read the certificate and key into the live context: new handshakes use them, open
        connections keep theirs. A bad file keeps the current certificate and logs an ERROR. `quiet`:
        success logs at DEBUG (a worker, when the main process already said it)."""
        old = self.certificate
        try:
            new = read_certificate(old.cert_path, old.key_path)
        except TlsError as err:
            log.error("TLS certificate not reloaded: %s. Still serving the previous one, %s; fix the file "
                      "and send SIGHUP again", err, old.describe())
            return False
        try:
            _load(self.context, new)
        except (ssl.SSLError, OSError) as err:  # checked a moment ago: not expected
            _load(self.context, old)
            log.error("TLS certificate not reloaded: loading %s failed after it was checked: %s. Still "
                      "serving the previous one, %s", new.cert_path, err, old.describe())
            return False
        self.certificate = new
        (log.debug if quiet else log.info)(
            "TLS certificate reloaded from %s: %s; new connections get it, open ones keep theirs",
            new.cert_path, new.describe())
        _warn_validity(new)
        return True


def server_context(cert_path: str, key_path: str, client_ca: str | None = None) -> TlsServer:
    """The server's TLS context from the settings' paths; `TlsError` when a file is unusable."""
    certificate = read_certificate(cert_path, key_path)
    context = new_server_context()
    _load(context, certificate)
    clients = ""
    if client_ca:
        count = _load_client_ca(context, client_ca)
        clients = f"; client certificates signed by the {count} CA certificate(s) of {client_ca} log in as their CN"
    log.info("TLS on: certificate %s from %s%s", certificate.describe(), cert_path, clients)
    _warn_validity(certificate)
    return TlsServer(context, certificate)


def sanic_server_pids(app) -> Callable[[], list[int]]:
    """The pids of the Sanic server workers `app`'s worker manager runs now (none before it started).
    Only those: the manager also runs a multiprocessing state server that SIGHUP would kill."""
    def pids() -> list[int]:
        try:
            processes = list(app.manager.processes)
        except Exception:  # no manager yet: the workers it forks later copy the reloaded context
            return []
        return [p.pid for p in processes if p.pid and "-Server-" in p.name]
    return pids


def reload_on_sighup(server: TlsServer, worker_pids: Callable[[], Iterable[int]] | None = None) -> None:
    """Reload on SIGHUP. Call in the process that serves (one process) or, with `worker_pids`, in the
    main process before the workers fork: there the handler reloads the main's copy, says so once and
    forwards SIGHUP to the workers, which inherited the handler and reload their own copies."""
    main_pid = os.getpid()

    def on_sighup(signum, frame) -> None:
        if worker_pids is not None and os.getpid() == main_pid:
            if server.reload():
                for pid in worker_pids():
                    try:
                        os.kill(pid, signal.SIGHUP)
                    except ProcessLookupError:  # stopped meanwhile
                        pass
            return
        quiet = worker_pids is not None  # a worker: the main process logged the reload
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet (or not any more): nothing else runs here
            server.reload(quiet)
            return
        loop.call_soon_threadsafe(server.reload, quiet)  # out of the handler, between two callbacks

    signal.signal(signal.SIGHUP, on_sighup)


def client_certificate_user(request) -> str | None:
    """The subject CN of the client certificate the handshake verified against REGISTRY_TLS_CLIENT_CA,
    or None (plain HTTP, no client CA, no certificate, or a subject without exactly one CN). Read once
    per connection, then cached on it."""
    conn = getattr(request, "conn_info", None)
    if conn is None:
        return None
    cached = getattr(conn.ctx, _USER_ATTR, False)
    if cached is not False:
        return cached
    user = None
    transport = request.transport
    # asyncio keeps what getpeercert() returned at the handshake: empty unless a certificate was sent
    # and verified (the context asks for one only with a client CA).
    cert = transport.get_extra_info("peercert") if conn.ssl and transport is not None else None
    if cert:
        names = {value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"}
        if len(names) == 1:
            user = names.pop() or None
    setattr(conn.ctx, _USER_ATTR, user)
    return user
