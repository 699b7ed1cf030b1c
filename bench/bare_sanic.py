"""The framework's ceiling for small requests: a bare Sanic app that answers the benchmark's manifest
from memory, with no registry code at all (no storage, no value parsing, no access log, no metrics).

    BARE_PORT=5001 BARE_WORKERS=2 BARE_MANIFEST=manifest.json BARE_MEDIA_TYPE=... BARE_BLOB_SIZE=N \
        python bench/bare_sanic.py

It is started the way `myregistry serve` starts (forked workers through Sanic's AppLoader, uvloop when
installed, access log off), on the same routes and with the same response headers, so the gap between
the two on the same `hey` load is what the registry itself costs per request.
"""

from __future__ import annotations

import hashlib
import os
from functools import partial

from sanic import HTTPResponse, Request, Sanic
from sanic.worker.loader import AppLoader

NAME = "bare"


def create_app(manifest: bytes, media_type: str, blob_size: int) -> Sanic:
    if NAME in Sanic._app_registry:  # a forked worker reuses its parent's app, as ours does
        return Sanic.get_app(NAME)
    app = Sanic(NAME)
    app.config.update({"ACCESS_LOG": False, "MOTD": False, "KEEP_ALIVE_TIMEOUT": 120})
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    manifest_headers = {"Docker-Content-Digest": digest, "ETag": f'"{digest}"', "Content-Length": str(len(manifest))}

    @app.route("/v2/", methods=["GET", "HEAD"])
    async def api_version(request: Request) -> HTTPResponse:
        return HTTPResponse(b"{}", content_type="application/json")

    @app.route("/v2/<repo:path>/manifests/<reference>", methods=["GET", "HEAD"])
    async def get_manifest(request: Request, repo: str, reference: str) -> HTTPResponse:
        body = b"" if request.method == "HEAD" else manifest
        return HTTPResponse(body, headers=manifest_headers, content_type=media_type)

    @app.route("/v2/<repo:path>/blobs/<blob>", methods=["HEAD"])
    async def head_blob(request: Request, repo: str, blob: str) -> HTTPResponse:
        headers = {"Docker-Content-Digest": blob, "Content-Length": str(blob_size), "Accept-Ranges": "bytes",
                   "ETag": f'"{blob}"', "Cache-Control": "max-age=31536000"}
        return HTTPResponse(status=200, headers=headers, content_type="application/octet-stream")

    return app


def main() -> None:
    with open(os.environ["BARE_MANIFEST"], "rb") as f:
        manifest = f.read()
    workers = int(os.environ.get("BARE_WORKERS", "1"))
    port = int(os.environ["BARE_PORT"])
    Sanic.start_method = "fork"
    loader = AppLoader(factory=partial(create_app, manifest, os.environ["BARE_MEDIA_TYPE"],
                                       int(os.environ.get("BARE_BLOB_SIZE", "0"))))
    app = loader.load()
    app.prepare(host="127.0.0.1", port=port, workers=workers, single_process=workers == 1, access_log=False,
                motd=False)
    if workers == 1:
        Sanic.serve_single(primary=app)
    else:
        Sanic.serve(primary=app, app_loader=loader)


if __name__ == "__main__":
    main()
