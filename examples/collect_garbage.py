"""Run a use-case from a plain script, without HTTP or the CLI: collect garbage in a registry's storage.

    PYTHONPATH=src python examples/collect_garbage.py ./data [--delete-untagged]

It builds the same container the server uses (settings from the environment, storage root from the
argument) and calls the use-case; it is safe to run while the server is serving that storage.
"""

import asyncio
import sys

from entrypoints.container import build_container
from entrypoints.settings import Settings


async def main(storage_root: str, delete_untagged: bool) -> None:
    container = build_container(Settings(storage_root=storage_root))
    report = await container.collect_garbage()(delete_untagged=delete_untagged)
    print(f"removed {len(report.manifests_removed)} manifests and {len(report.blobs_removed)} blobs, "
          f"freed {report.bytes_freed} bytes")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], "--delete-untagged" in sys.argv[2:]))
