"""Manifests parsed from their exact bytes.

The digest of a manifest is the digest of the bytes the client sent; nothing here re-serializes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .digest import Digest
from .errors import DigestInvalid, ManifestInvalid, Unsupported

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
IMAGE_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_MANIFEST_LIST, OCI_INDEX)
MANIFEST_TYPES = IMAGE_TYPES + INDEX_TYPES
# Layers a registry is not expected to hold (they name external URLs).
FOREIGN_LAYER_TYPES = (
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    raw: bytes
    digest: Digest
    media_type: str
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = field(default=None)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def required_blobs(self) -> list[Digest]:
        """Blobs that must be in the repository before this manifest is accepted."""
        needed = [self.config.digest] if self.config else []
        needed += [d.digest for d in self.layers if not d.urls and d.media_type not in FOREIGN_LAYER_TYPES]
        return needed

    def referrer_descriptor(self) -> Descriptor:
        """How this manifest appears in a referrers list (artifactType falls back to the config type)."""
        artifact_type = self.artifact_type or (self.config.media_type if self.config else None)
        return Descriptor(self.media_type, self.digest, len(self.raw), artifact_type, self.annotations)


def _descriptor(value: Any, where: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{where} must be a descriptor object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestInvalid(f"{where}.mediaType must be a non-empty string")
    if not isinstance(digest, str):
        raise ManifestInvalid(f"{where}.digest must be a string")
    try:
        parsed = Digest.parse(digest)
    except DigestInvalid as e:
        raise ManifestInvalid(f"{where}.digest: {e.message}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{where}.size must be a non-negative integer")
    artifact_type = value.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid(f"{where}.artifactType must be a string")
    urls = value.get("urls") or ()
    if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
        raise ManifestInvalid(f"{where}.urls must be a list of strings")
    return Descriptor(media_type, parsed, size, artifact_type, _annotations(value, where), tuple(urls))


def _annotations(value: dict[str, Any], where: str) -> dict[str, str] | None:
    annotations = value.get("annotations")
    if annotations is None:
        return None
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise ManifestInvalid(f"{where}.annotations must map strings to strings")
    return annotations


def _descriptors(doc: dict[str, Any], key: str, required: bool, limit: int) -> tuple[Descriptor, ...]:
    value = doc.get(key)
    if value is None:
        if required:
            raise ManifestInvalid(f"manifest has no {key!r} list")
        return ()
    if not isinstance(value, list):
        raise ManifestInvalid(f"{key!r} must be a list")
    if len(value) > limit:
        raise ManifestInvalid(f"manifest lists {len(value)} {key}; the limit is {limit} "
                              "(REGISTRY_MAX_MANIFEST_REFERENCES)")
    return tuple(_descriptor(v, f"{key}[{i}]") for i, v in enumerate(value))


def _sniff(doc: dict[str, Any]) -> str:
    # Without a mediaType field and a usable Content-Type, the structure decides (OCI types only:
    # Docker's types always carry mediaType).
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def parse_manifest(raw: bytes, content_type: str | None = None, *, max_references: int = 10_000) -> Manifest:
    """Parse and validate a manifest. `content_type` is what the client declared, if anything."""
    content_type = (content_type or "").split(";")[0].strip().lower() or None
    if content_type in DOCKER_SCHEMA1:
        raise Unsupported("Docker schema 1 manifests are not supported: push schema 2 or OCI (e.g. "
                          "`skopeo copy --format v2s2`)")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ManifestInvalid(f"manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    schema = doc.get("schemaVersion")
    if schema == 1:
        raise Unsupported("Docker schema 1 manifests are not supported: push schema 2 or OCI")
    if schema != 2 or isinstance(schema, bool):
        raise ManifestInvalid("manifest schemaVersion must be 2")
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise ManifestInvalid("manifest mediaType must be a string")
    if body_type and content_type and content_type in MANIFEST_TYPES and body_type != content_type:
        raise ManifestInvalid(f"Content-Type {content_type!r} does not match the manifest's mediaType {body_type!r}")
    media_type = body_type or (content_type if content_type in MANIFEST_TYPES else None) or _sniff(doc)
    if media_type not in MANIFEST_TYPES:
        raise ManifestInvalid(f"unsupported manifest media type {media_type!r}; expected one of "
                              + ", ".join(MANIFEST_TYPES))
    if not body_type and media_type.startswith("application/vnd.docker."):
        raise ManifestInvalid("Docker manifests must carry their mediaType field")

    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid("artifactType must be a string")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    annotations = _annotations(doc, "manifest")
    digest = Digest.of(raw)
    if media_type in INDEX_TYPES:
        if "config" in doc or "layers" in doc:
            raise ManifestInvalid(f"an index ({media_type}) cannot have config or layers")
        manifests = _descriptors(doc, "manifests", True, max_references)
        return Manifest(raw, digest, media_type, manifests=manifests, subject=subject,
                        artifact_type=artifact_type, annotations=annotations)
    if "manifests" in doc:
        raise ManifestInvalid(f"an image manifest ({media_type}) cannot have a manifests list")
    if "config" not in doc:
        raise ManifestInvalid("image manifest has no config descriptor")
    config = _descriptor(doc["config"], "config")
    layers = _descriptors(doc, "layers", media_type == DOCKER_MANIFEST, max_references)
    return Manifest(raw, digest, media_type, config=config, layers=layers, subject=subject,
                    artifact_type=artifact_type, annotations=annotations)


SCHEMA1_LAYER = "application/vnd.docker.container.image.rootfs.diff+x-gtar"


def parse_stored(raw: bytes) -> Manifest:
    """A manifest as it is stored, possibly written by another registry, for the paths that must know
    what it references (collection, repository deletion, a push protecting an index's children):
    without the limits put on requests, and Docker schema 1 understood (its layers are
    `fsLayers[].blobSum`; it has no config). ManifestInvalid when it cannot be read: callers then keep
    everything it might reference."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ManifestInvalid(f"stored manifest is not valid JSON: {e}") from None
    if isinstance(doc, dict) and doc.get("schemaVersion") == 1:
        layers = doc.get("fsLayers")
        if not isinstance(layers, list):
            raise ManifestInvalid("schema 1 manifest has no fsLayers list")
        found = []
        for i, layer in enumerate(layers):
            blob_sum = layer.get("blobSum") if isinstance(layer, dict) else None
            if not isinstance(blob_sum, str):
                raise ManifestInvalid(f"fsLayers[{i}].blobSum must be a string")
            try:
                found.append(Descriptor(SCHEMA1_LAYER, Digest.parse(blob_sum), 0))
            except DigestInvalid as e:
                raise ManifestInvalid(f"fsLayers[{i}].blobSum: {e.message}") from None
        return Manifest(raw, Digest.of(raw), media_type_of(raw), layers=tuple(found))
    try:
        return parse_manifest(raw, max_references=1 << 62)
    except Unsupported as e:
        raise ManifestInvalid(e.message) from None


def build_index(descriptors: list[Descriptor]) -> bytes:
    """An OCI image index listing the given descriptors (the referrers API answer)."""
    return orjson.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                         "manifests": [d.to_json() for d in descriptors]})


def media_type_of(raw: bytes) -> str:
    """The media type of stored manifest bytes: their mediaType field, else what their structure says.
    Used when serving, so it tolerates manifests another registry wrote."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return OCI_MANIFEST
    if not isinstance(doc, dict):
        return OCI_MANIFEST
    media_type = doc.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1[1] if "signatures" in doc else DOCKER_SCHEMA1[0]
    return _sniff(doc)
