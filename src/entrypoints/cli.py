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
    # Forked workers inherit the imported modules: the first request is answered well within a second,
    # where spawned workers would each import everything again.
    Sanic.start_method = "fork"
    RegistryHttpProtocol.header_timeout = settings.header_timeout
    loader = AppLoader(factory=partial(_app, settings))
    app = loader.load()
    app.prepare(host=settings.host, port=settings.port, workers=settings.workers,
                single_process=settings.workers == 1, access_log=False, motd=False,
                protocol=RegistryHttpProtocol)
    logging.getLogger("myregistry").info(
        "serving %s storage at %s on http://%s:%s with %s worker(s)", settings.storage,
        os.path.abspath(settings.storage_root), settings.host, settings.port, settings.workers)
    if settings.workers == 1:
        Sanic.serve_single(primary=app)  # one process: no worker manager to start or stop
    else:
        Sanic.serve(primary=app, app_loader=loader)


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
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
