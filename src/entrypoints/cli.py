"""`myregistry`: serve the registry, or run a use-case directly against the configured storage."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from functools import partial

from pydantic import ValidationError

from .settings import Settings, describe_error


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as err:
        sys.exit(describe_error(err))


def serve(args: argparse.Namespace) -> None:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from .http.logs import configure_logging
    from .http.metrics import use_multiprocess_dir
    from .http.protocol import RegistryHttpProtocol

    settings = _settings()
    use_multiprocess_dir()  # before the app is built and workers fork: metrics summed over workers
    configure_logging(settings.log_level)
    if args.port:
        settings = settings.model_copy(update={"port": args.port})
    tls = None
    if settings.tls_cert:  # before anything starts: a file problem is one message, not a traceback
        from .tls import TlsError, reload_on_sighup, sanic_server_pids, server_context
        try:
            tls = server_context(settings.tls_cert, settings.tls_key or "", settings.tls_client_ca)
        except TlsError as err:
            sys.exit(f"myregistry serve: {err}")
    access_level, access_line = _prepare_access(settings)
    # Forked workers inherit the imported modules: the first request is answered well within a second,
    # where spawned workers would each import everything again.
    Sanic.start_method = "fork"
    RegistryHttpProtocol.header_timeout = settings.header_timeout
    loader = AppLoader(factory=partial(_app, settings))
    app = loader.load()
    app.prepare(host=settings.host, port=settings.port, workers=settings.workers,
                single_process=settings.workers == 1, access_log=False, motd=False,
                protocol=RegistryHttpProtocol, ssl=tls.context if tls else None)
    logging.getLogger("myregistry").info(
        "serving %s storage at %s on %s://%s:%s with %s worker(s)", settings.storage,
        os.path.abspath(settings.storage_root), "https" if tls else "http", settings.host, settings.port,
        settings.workers)
    logging.getLogger("myregistry").log(access_level, access_line)
    if tls:  # SIGHUP re-reads the certificate and key in every process (entrypoints/tls.py)
        reload_on_sighup(tls, None if settings.workers == 1 else sanic_server_pids(app))
    if settings.workers == 1:
        Sanic.serve_single(primary=app)  # one process: no worker manager to start or stop
    else:
        Sanic.serve(primary=app, app_loader=loader)


def _prepare_access(settings: Settings) -> tuple[int, str]:
    """Read the access configuration once before serving (a bad file stops the start with its reason),
    make the token signing key if there is none, and say how the registry is protected."""
    from .container import build_container

    if settings.auth == "none":
        local = settings.host in ("127.0.0.1", "::1", "localhost")
        return (logging.INFO if local else logging.WARNING,
                f"REGISTRY_AUTH=none: the registry is OPEN. Anyone who can reach {settings.host}:{settings.port} "
                "may pull, push, delete and collect garbage. Set REGISTRY_AUTH=htpasswd or token to protect it "
                "(README, 'Access control').")
    container = build_container(settings)
    try:
        container.access_rules()()
        passwords = container.passwords()
        ring = container.key_ring()
        if ring is not None:
            ring.ensure()
            ring.signing()
        container.tokens()
    except (ValueError, OSError) as err:
        sys.exit(f"myregistry serve: {err}")
    users = f"{len(passwords.file.value)} user(s) in {settings.auth_htpasswd}" if passwords else "no local users"
    rules = f"rules from {settings.auth_rules}" if settings.auth_rules else \
        "no rules file: every logged-in user may do everything, anonymous callers nothing"
    if settings.auth == "token" and settings.auth_token_public_keys:
        how = (f"bearer tokens from {settings.auth_token_realm} (issuer {settings.auth_token_issuer!r}, "
               f"service {settings.auth_token_service!r}, keys {settings.auth_token_public_keys})")
    elif settings.auth == "token":
        how = f"bearer tokens from this registry's /auth/token (service {settings.auth_token_service!r})"
    else:
        how = "HTTP Basic"
    certs = f"; client certificates signed by {settings.tls_client_ca}" if settings.tls_client_ca else ""
    line = f"access control: {how}; {users}; {rules}{certs}"
    if not settings.tls_cert and settings.host not in ("127.0.0.1", "::1", "localhost"):
        return logging.WARNING, (line + f". Without TLS, passwords and tokens cross the network in clear text to "
                                 f"{settings.host}:{settings.port}: set REGISTRY_TLS_CERT and REGISTRY_TLS_KEY, or "
                                 "put a TLS proxy in front and bind REGISTRY_HOST=127.0.0.1.")
    return logging.INFO, line


def _app(settings: Settings):
    """The app for this process: a forked worker reuses the one its parent built (which holds no open
    resources: the container creates its objects on first use)."""
    from sanic import Sanic

    from .http.app import create_app

    if "myregistry" in Sanic._app_registry:
        return Sanic.get_app("myregistry")
    return create_app(settings, None, "myregistry")


def import_layout(args: argparse.Namespace) -> None:
    from adapters.oci_layout import OciLayoutSource
    from domain.errors import RegistryError
    from domain.names import RepositoryName, Tag

    from .container import build_container

    target, _, tag = args.target.rpartition(":")
    if not target or "/" in tag:
        target, tag = args.target, "latest"
    try:
        repo, tag_value = RepositoryName.parse(target), Tag.parse(tag)
        source = OciLayoutSource(args.directory)
        container = build_container(_settings())
        report = asyncio.run(container.import_image()(source, args.ref or "", repo, tag_value))
    except (RegistryError, OSError) as err:
        sys.exit(f"myregistry import: {getattr(err, 'message', err)}")
    print(f"imported {repo}:{tag_value} as {report.digest}: {report.manifests} manifest(s), "
          f"{report.blobs_uploaded} blob(s) uploaded ({report.bytes_uploaded} bytes), "
          f"{report.blobs_present} already stored")


def _progress(phase: str, done: int, total: int) -> None:
    if total and (done == total or done % 50 == 0):
        print(f"  {phase}: {done}/{total}", file=sys.stderr, flush=True)


class ProgressBar:
    """A progress bar on a terminal, one line per phase, redrawn in place at most every 0.1 s."""

    WIDTH = 30

    def __init__(self, stream) -> None:
        self.stream, self.phase, self.drawn_at = stream, None, 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if phase != self.phase:
            self.close()
            self.phase = phase
        elif done < total and now - self.drawn_at < 0.1:
            return
        self.drawn_at = now
        filled = self.WIDTH * done // total if total else self.WIDTH
        self.stream.write(f"\r  {phase:<9} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {done}/{total}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.phase is not None:
            self.stream.write("\n")
            self.stream.flush()
            self.phase = None


def collect_garbage(args: argparse.Namespace) -> None:
    from domain.errors import RegistryError
    from domain.names import RepositoryName

    from .container import build_container

    settings = _settings()
    if args.grace is not None:
        settings = settings.model_copy(update={"gc_grace_seconds": args.grace})
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    try:
        repo = RepositoryName.parse(args.repository) if args.repository else None
        report = asyncio.run(build_container(settings).collect_garbage()(
            repo, dry_run=args.dry_run, delete_untagged=args.delete_untagged, progress=bar or _progress))
    except RegistryError as err:
        sys.exit(f"myregistry gc: {err.message}")
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        import orjson
        print(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
        return
    verb = "would remove" if report.dry_run else "removed"
    scope = f"repository {report.repository}" if report.repository else "the whole registry"
    print(f"garbage collection of {scope}{' (dry run)' if report.dry_run else ''}: {verb} "
          f"{len(report.manifests_removed)} manifest(s), {len(report.blobs_removed)} blob(s) "
          f"({report.bytes_freed} bytes), {report.layer_links_removed} layer link(s), "
          f"{report.uploads_purged} idle upload(s), {report.debris_removed} leftover(s) of interrupted writes, "
          f"{len(report.repositories_removed)} empty repositor(ies) "
          f"in {report.duration_seconds:.2f} s")
    for item in report.manifests_removed:
        print(f"  manifest {item}")
    for item in report.blobs_removed:
        print(f"  blob {item}")


def delete_repository(args: argparse.Namespace) -> None:
    from domain.errors import RegistryError
    from domain.names import RepositoryName

    from .container import build_container

    try:
        asyncio.run(build_container(_settings()).delete_repository()(RepositoryName.parse(args.name)))
    except RegistryError as err:
        sys.exit(f"myregistry delete-repository: {err.message}")
    print(f"deleted repository {args.name}; blobs no other repository uses go at the next garbage collection")


def _htpasswd_path(args: argparse.Namespace) -> str:
    path = args.file or _settings().auth_htpasswd
    if not path:
        sys.exit("myregistry users: say which file: --file PATH or REGISTRY_AUTH_HTPASSWD")
    return path


def _read_password(name: str) -> str:
    """From a terminal: asked twice, not echoed. Otherwise: the first line of stdin. Never argv, where
    other users of the machine and the shell's history would see it."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            sys.exit("myregistry users add: the passwords differ; nothing changed")
    else:
        first = sys.stdin.readline().rstrip("\r\n")
    if len(first) < 8:
        sys.exit("myregistry users add: use a password of at least 8 characters; nothing changed")
    if len(first.encode("utf-8")) > 72:
        sys.exit("myregistry users add: bcrypt uses at most 72 bytes of a password; use a shorter one "
                 "(nothing changed)")
    return first


def users(args: argparse.Namespace) -> None:
    from adapters.auth.htpasswd import hash_password, read_users, write_users
    from domain.access import valid_user_name

    path = _htpasswd_path(args)
    try:
        known = read_users(path)
        if args.action == "list":
            for name in sorted(known):
                print(name)
            return
        if args.name in ("anonymous", "authenticated"):
            sys.exit(f"myregistry users {args.action}: {args.name!r} is reserved (the rules use it for "
                     "everyone / every logged-in user); choose another name")
        if not args.name or not valid_user_name(args.name):
            sys.exit(f"myregistry users {args.action}: give a user name of letters, digits and . _ @ + - "
                     "(starting with a letter or digit)")
        if args.action == "remove":
            if args.name not in known:
                sys.exit(f"myregistry users remove: no user {args.name!r} in {path}")
            del known[args.name]
            write_users(path, known)
            print(f"removed {args.name} from {path}; their refresh tokens stop working now, access tokens "
                  "within their lifetime (REGISTRY_AUTH_TOKEN_TTL)")
            return
        replaced = args.name in known
        known[args.name] = hash_password(_read_password(args.name), args.rounds)
        write_users(path, known)
    except ValueError as err:  # a damaged file: say where, change nothing
        sys.exit(f"myregistry users: {err}")
    print(f"{'changed the password of' if replaced else 'added'} {args.name} in {path}")


def token_key(args: argparse.Namespace) -> None:
    from adapters.auth.tokens import jwks_document

    settings = _settings()
    if settings.auth != "token" or settings.auth_token_public_keys:
        sys.exit("myregistry token-key: only the built-in token endpoint has keys (REGISTRY_AUTH=token "
                 "without REGISTRY_AUTH_TOKEN_PUBLIC_KEYS)")
    from .container import build_container

    ring = build_container(settings).key_ring()
    try:
        if args.action == "rotate":
            kid = ring.rotate()
            print(f"new signing key {kid}; tokens signed with the previous key stay valid for "
                  f"{int(settings.auth_token_ttl)} s; workers pick the new key up within 10 s", file=sys.stderr)
        else:
            ring.ensure()
        sys.stdout.write(jwks_document(ring.verification_keys()).decode() + "\n")
    except (ValueError, OSError) as err:
        sys.exit(f"myregistry token-key: {err}")


CONFIG_SKELETON = """\
# My Registry settings: put these in the environment or in a .env file in the working directory.
# The environment wins over the file. Every setting is described in the README.
PORT=5000
STORAGE_ROOT=./data

# Access control: none (open; local use only), htpasswd (HTTP Basic), or token (bearer tokens).
REGISTRY_AUTH=token
REGISTRY_AUTH_HTPASSWD=./htpasswd          # myregistry users add NAME
REGISTRY_AUTH_RULES=./access.toml          # myregistry config --rules > access.toml
# REGISTRY_AUTH_TOKEN_SERVICE=myregistry
# REGISTRY_AUTH_TOKEN_TTL=300
# An external token server instead of the built-in one (Harbor-, GitLab-style):
# REGISTRY_AUTH_TOKEN_REALM=https://auth.example.com/token
# REGISTRY_AUTH_TOKEN_ISSUER=auth.example.com
# REGISTRY_AUTH_TOKEN_PUBLIC_KEYS=./token-server-keys.pem   # PEM keys or certificates, or a JWKS file

# TLS (re-read on SIGHUP). Clients may log in with a certificate signed by the client CA (CN = user).
# REGISTRY_TLS_CERT=./certs/registry.crt
# REGISTRY_TLS_KEY=./certs/registry.key
# REGISTRY_TLS_CLIENT_CA=./certs/clients-ca.crt
"""


def config(args: argparse.Namespace) -> None:
    from adapters.auth.rules_file import EXAMPLE

    sys.stdout.write(EXAMPLE if args.rules else CONFIG_SKELETON)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="myregistry", description="An OCI container image registry.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="serve the registry API (PORT, STORAGE_ROOT, REGISTRY_* settings)")
    p.add_argument("--port", type=int, help="overrides PORT")
    p.set_defaults(func=serve)
    p = sub.add_parser("import", help="load an image from an OCI image layout directory, without HTTP")
    p.add_argument("directory", help="an OCI image layout (umoci, skopeo oci:, buildah push oci:)")
    p.add_argument("target", help="NAME[:TAG] in this registry (TAG defaults to latest)")
    p.add_argument("--ref", help="which image of the layout (its org.opencontainers.image.ref.name); "
                                 "optional when the layout holds one")
    p.set_defaults(func=import_layout)
    p = sub.add_parser("gc", help="collect garbage: unreferenced blobs, links, idle uploads (safe while serving)")
    p.add_argument("--repository", help="only this repository")
    p.add_argument("--dry-run", action="store_true", help="report what would go; change nothing")
    p.add_argument("--delete-untagged", action="store_true",
                   help="also remove manifests no tag reaches (never children or referrers of kept ones)")
    p.add_argument("--grace", type=float, help="seconds of protection for recently used content "
                                               "(default REGISTRY_GC_GRACE_SECONDS, 3600)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=collect_garbage)
    p = sub.add_parser("delete-repository", help="delete a repository's manifests, tags, links and uploads")
    p.add_argument("name")
    p.set_defaults(func=delete_repository)
    p = sub.add_parser("users", help="manage the users of the htpasswd file (REGISTRY_AUTH_HTPASSWD)")
    p.add_argument("action", choices=["add", "remove", "list"],
                   help="add (or change the password of) a user, remove one, or list them; the password is "
                        "asked on the terminal or read from the first line of stdin")
    p.add_argument("name", nargs="?")
    p.add_argument("--file", help="the htpasswd file (default REGISTRY_AUTH_HTPASSWD)")
    p.add_argument("--rounds", type=int, default=12, choices=range(4, 16), metavar="4..15",
                   help="bcrypt cost (default 12)")
    p.set_defaults(func=users)
    p = sub.add_parser("token-key", help="the built-in token endpoint's signing keys: print them (JWKS) or rotate")
    p.add_argument("action", choices=["show", "rotate"])
    p.set_defaults(func=token_key)
    p = sub.add_parser("config", help="print a settings skeleton (.env), or with --rules an access rules file")
    p.add_argument("--rules", action="store_true")
    p.set_defaults(func=config)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
