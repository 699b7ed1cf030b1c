"""The Sanic app factory. `myregistry serve` and the tests build the app the same way."""

from __future__ import annotations

import itertools
import os

import orjson
from sanic import Sanic

from ..container import Container, build_container
from ..settings import Settings
from . import (
    auth,
    base,
    blobs,
    errors,
    gc,
    health,
    logs,
    maintenance,
    manifests,
    metrics,
    protocol,
    referrers,
    tags,
    token,
    uploads,
)

_counter = itertools.count()


async def _flush_access_lines(app: Sanic) -> None:
    logs.flush_pending()  # a worker's last answers (workers end without running atexit)


def build_access(settings: Settings, container: Container) -> auth.Access | None:
    """What the auth middleware needs for these settings; None when the registry is open."""
    if settings.auth == "none":
        return None
    certificate_user = None
    if settings.tls_client_ca:
        from ..tls import client_certificate_user as certificate_user
    return auth.Access(
        mode=settings.auth, rules=container.access_rules(),
        login=container.login() if settings.auth == "htpasswd" else None,
        tokens=container.tokens() if settings.auth == "token" else None,
        realm=settings.auth_token_realm, service=settings.auth_token_service, certificate_user=certificate_user)


def create_app(settings: Settings | None = None, container: Container | None = None,
               name: str | None = None) -> Sanic:
    settings = settings or Settings()
    container = container or build_container(settings)
    logs.configure_logging(settings.log_level)
    # App names are process-global in Sanic; tests build many apps in one process.
    protocol.install_hooks(logs.begin, logs.on_response)
    app = Sanic(name or f"myregistry{os.getpid()}x{next(_counter)}", dumps=orjson.dumps, configure_logging=False,
                request_class=protocol.RegistryRequest)
    app.config.update({
        "REQUEST_MAX_SIZE": 1024 * 1024,  # non-streaming routes carry no real body
        "REQUEST_BUFFER_SIZE": 1024 * 1024,
        "REQUEST_MAX_HEADER_SIZE": settings.max_header_bytes,
        "REQUEST_TIMEOUT": settings.request_timeout,
        "RESPONSE_TIMEOUT": settings.response_timeout,
        "KEEP_ALIVE_TIMEOUT": settings.keep_alive_timeout,
        "ACCESS_LOG": False,
        "MOTD": False,
        "FALLBACK_ERROR_FORMAT": "json",
    })
    app.ctx.container = container
    app.ctx.settings = settings
    for bp in (base.bp, health.bp, gc.bp, tags.bp, referrers.bp, uploads.bp, blobs.bp, manifests.bp):
        app.blueprint(bp)
    access = build_access(settings, container)
    if access is not None and access.mode == "token" and not settings.auth_token_public_keys:
        app.blueprint(token.bp)
    auth.install(app, access)
    errors.install(app)
    metrics.install(app)
    # The request's bookkeeping is done by the protocol (protocol.install_hooks); the access check is
    # the only request middleware, and only when access control is on.
    if access is not None:
        app.on_request(auth.authorize, priority=100)
    app.after_server_stop(_flush_access_lines)
    maintenance.schedule(app, settings)

    return app
