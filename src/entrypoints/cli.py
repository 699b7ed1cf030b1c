"""`myregistry`: serve the registry, or run a use-case directly against the configured storage."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
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

    from .http.app import create_app
    from .http.logs import configure_logging
    from .http.protocol import RegistryHttpProtocol

    settings = _settings()
    configure_logging(settings.log_level)
    if args.port:
        settings = settings.model_copy(update={"port": args.port})
    loader = AppLoader(factory=partial(create_app, settings, None, "myregistry"))
    app = loader.load()
    app.prepare(host=settings.host, port=settings.port, workers=settings.workers,
                single_process=settings.workers == 1, access_log=False, motd=False,
                protocol=RegistryHttpProtocol)
    logging.getLogger("myregistry").info(
        "serving %s storage at %s on http://%s:%s with %s worker(s)", settings.storage,
        os.path.abspath(settings.storage_root), settings.host, settings.port, settings.workers)
    Sanic.serve(primary=app, app_loader=loader)


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
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
