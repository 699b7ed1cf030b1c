"""An OCI image layout directory (as umoci, skopeo `oci:` and buildah write them) as an ImageSource."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import orjson

from domain.digest import Digest
from domain.errors import ManifestUnknown
from domain.ports import ImageSource

REF_NAME = "org.opencontainers.image.ref.name"


class OciLayoutSource(ImageSource):
    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        if not os.path.isfile(os.path.join(self.directory, "oci-layout")):
            raise FileNotFoundError(f"{directory} is not an OCI image layout (no oci-layout file)")

    def _blob_path(self, digest: Digest) -> str:
        return os.path.join(self.directory, "blobs", digest.algorithm, digest.hex)

    async def manifest_for(self, reference: str) -> tuple[bytes, str]:
        with open(os.path.join(self.directory, "index.json"), "rb") as f:
            index = orjson.loads(f.read())
        entries = index.get("manifests") or []
        named = [m for m in entries if (m.get("annotations") or {}).get(REF_NAME) == reference]
        chosen = named or (entries if len(entries) == 1 and not reference else [])
        if len(chosen) != 1:
            names = sorted({(m.get("annotations") or {}).get(REF_NAME, "?") for m in entries})
            raise ManifestUnknown(f"no single manifest named {reference!r} in {self.directory}; it has: "
                                  + ", ".join(names))
        digest = Digest.parse(chosen[0]["digest"])
        return await self.read(digest), chosen[0].get("mediaType")

    async def read(self, digest: Digest) -> bytes:
        with open(self._blob_path(digest), "rb") as f:
            return f.read()

    async def stream(self, digest: Digest) -> AsyncIterator[bytes]:
        with open(self._blob_path(digest), "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
