"""Hypothesis strategies for manifest-shaped JSON documents, and an independent oracle of what the OCI image
spec (and this registry's documented choices) accept.

Documents are mostly well formed, so the parser's checks beyond JSON decoding are what gets fuzzed: each
field is now and then missing, of the wrong type, a huge number, a bad digest or nested nonsense. Bytes are
sometimes broken after serialization too, so the decoding stage is still visited."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson
from hypothesis import strategies as st

from domain.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
MAX_SIZE = 2**64 - 1  # the largest integer orjson reads as an integer; larger ones come back as floats

_KEYS = ["schemaVersion", "mediaType", "config", "layers", "manifests", "subject", "annotations",
         "artifactType", "digest", "size", "urls", "platform", "fsLayers", "blobSum"]

# Any JSON value, nested: what a hostile client puts where a field should be.
nonsense: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.sampled_from([0, -1, 2, 2**63, 2**64, 10**30])
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(["", "sha256:", "2", OCI_MANIFEST, "\u0000", "a" * 300]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6),
                                                                 inner, max_size=4),
    max_leaves=10,
)




def _present(weight: int = 9) -> st.SearchStrategy[bool]:
    """True weight times out of weight + 1 (shrinks to True)."""
    return st.integers(0, weight).map(lambda n: n < weight)


def _rarely(weight: int) -> st.SearchStrategy[bool]:
    """True once out of weight + 1 (shrinks to False)."""
    return st.integers(0, weight).map(lambda n: n == weight)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], weight: int = 5) -> st.SearchStrategy[Any]:
    """`good` weight times out of weight + 1 (st.one_of would not weigh repeated branches); shrinks to good."""
    return _present(weight).flatmap(lambda ok: good if ok else bad)


_hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
good_digests = _hex64.map(lambda h: f"sha256:{h}") | st.text(alphabet="0123456789abcdef", min_size=128,
                                                               max_size=128).map(lambda h: f"sha512:{h}")
bad_digests = st.one_of(
    st.sampled_from(["", "sha256:", "sha256:short", "md5:d41d8cd98f00b204e9800998ecf8427e", "sha256" + "0" * 64,
                     "sha256:" + "A" * 64, "sha256:" + "0" * 63, "sha256:" + "0" * 65, "sha512:" + "0" * 64,
                     "SHA256:" + "0" * 64, "sha256:" + "0" * 64 + "\n", " sha256:" + "0" * 64, "sha256:" + "g" * 64,
                     "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", "a" * 1000]),
    _hex64.map(lambda h: f"sha256:{h}".upper()),
    nonsense,
)
good_sizes = st.integers(0, 10**9) | st.sampled_from([0, 2**53, 2**63 - 1, MAX_SIZE])
bad_sizes = st.one_of(st.integers(-(2**64), -1), st.sampled_from([2**64, 10**30, 1.0, 0.5, True, False, "1", None]),
                      nonsense)
media_types = st.sampled_from([OCI_CONFIG, OCI_LAYER, OCI_EMPTY, DOCKER_CONFIG, DOCKER_LAYER, FOREIGN_LAYER,
                               OCI_MANIFEST, OCI_INDEX, "application/x.anything", "a"]) | st.text(min_size=1,
                                                                                                    max_size=20)
string_maps = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)


@st.composite
def descriptors(draw: st.DrawFn, digest_pool: tuple[str, ...] = ()) -> dict[str, Any]:
    """A descriptor object, mostly well formed. Digests come from `digest_pool` (blobs that exist) when given."""
    digests = st.sampled_from(digest_pool) | good_digests if digest_pool else good_digests
    d: dict[str, Any] = {}
    # Each required field is missing or wrong about one time in 15, so most descriptors are whole.
    if draw(_present(30)):
        d["mediaType"] = draw(mostly(media_types, nonsense, 30))
    if draw(_present(30)):
        d["digest"] = draw(mostly(digests, bad_digests, 30))
    if draw(_present(30)):
        d["size"] = draw(mostly(good_sizes, bad_sizes, 30))
    if draw(_rarely(3)):
        d["annotations"] = draw(mostly(string_maps, nonsense, 6))
    if draw(_rarely(6)):
        d["urls"] = draw(mostly(st.lists(st.text(max_size=20), max_size=2), nonsense, 6))
    if draw(_rarely(6)):
        d["artifactType"] = draw(mostly(media_types, nonsense, 6))
    if draw(_rarely(6)):
        d["platform"] = draw(nonsense)
    return d


def _descriptor_lists(digest_pool: tuple[str, ...], max_size: int = 4) -> st.SearchStrategy[Any]:
    return mostly(st.lists(descriptors(digest_pool), max_size=max_size), nonsense, 6)


@dataclass(frozen=True)
class ManifestCase:
    raw: bytes
    content_type: str | None
    doc: Any  # what was serialized; raw may have been broken afterwards (`broken`)
    broken: bool


@st.composite
def manifest_documents(draw: st.DrawFn, digest_pool: tuple[str, ...] = ()) -> Any:
    """A JSON structure shaped like an image manifest, an index or an artifact, with flaws mixed in."""
    kind = draw(st.sampled_from(["image", "image", "image", "index", "index", "artifact", "artifact", "docker",
                                 "docker", "docker-list", "schema1"]))
    doc: dict[str, Any] = {}
    if draw(_present(30)):
        doc["schemaVersion"] = 1 if kind == "schema1" else draw(
            mostly(st.just(2), st.sampled_from([1, 3, 0, -2, "2", True, 2.5, None, 2**64, 10**30]) | nonsense, 20))
    if kind == "schema1":
        doc.update(name="x/y", tag="latest", architecture="amd64",
                   fsLayers=draw(st.lists(st.fixed_dictionaries({"blobSum": mostly(good_digests, bad_digests)}),
                                          max_size=3)))
        return doc
    type_of = {"image": OCI_MANIFEST, "artifact": OCI_MANIFEST, "index": OCI_INDEX, "docker": DOCKER_MANIFEST,
               "docker-list": DOCKER_MANIFEST_LIST}[kind]
    if draw(_present(4)):
        doc["mediaType"] = draw(mostly(st.just(type_of), st.sampled_from([*MANIFEST_TYPES, *DOCKER_SCHEMA1, "",
                                                                          "application/json"]) | nonsense, 6))
    if kind in ("index", "docker-list"):
        if draw(_present(12)):
            doc["manifests"] = draw(_descriptor_lists(digest_pool))
        if draw(_rarely(12)):
            doc[draw(st.sampled_from(["config", "layers"]))] = draw(nonsense | descriptors(digest_pool))
    else:
        if draw(_present(12)):
            doc["config"] = draw(mostly(descriptors(digest_pool), nonsense, 8))
        if draw(_present(8 if kind == "docker" else 3)):
            doc["layers"] = draw(_descriptor_lists(digest_pool))
        if draw(_rarely(20)):
            doc["manifests"] = draw(_descriptor_lists(digest_pool))
    if kind == "artifact" or draw(_rarely(5)):
        doc["subject"] = draw(mostly(descriptors(digest_pool), nonsense, 4))
    if kind == "artifact" or draw(_rarely(5)):
        doc["artifactType"] = draw(mostly(media_types, nonsense, 4))
    if draw(_rarely(3)):
        doc["annotations"] = draw(mostly(string_maps, nonsense, 4))
    if draw(_rarely(8)):
        doc[draw(st.text(max_size=10))] = draw(nonsense)  # unknown fields are allowed
    return doc


@st.composite
def manifest_cases(draw: st.DrawFn, digest_pool: tuple[str, ...] = ()) -> ManifestCase:
    """Serialized documents (any indentation, key order, escaping), a Content-Type, and now and then broken
    bytes or a top level that is not an object."""
    doc = draw(mostly(manifest_documents(digest_pool), nonsense, 30))
    raw = json.dumps(doc, indent=draw(st.sampled_from([None, None, 2, "\t"])), sort_keys=draw(st.booleans()),
                     ensure_ascii=draw(st.booleans()), allow_nan=False).encode()
    broken = draw(_rarely(12))
    if broken:
        cut = draw(st.integers(0, len(raw)))
        raw = draw(st.sampled_from([raw[:cut], raw[:cut] + b"\xff" + raw[cut:], b"\xef\xbb\xbf" + raw, raw + b"}",
                                    raw.replace(b":", b"=", 1), raw[:cut] + b"," + raw[cut:]]))
    body_type = doc.get("mediaType") if isinstance(doc, dict) else None
    content_type = draw(mostly(st.none(), st.one_of(
        st.just(body_type) if isinstance(body_type, str) else st.none(),
        st.sampled_from([*MANIFEST_TYPES, *DOCKER_SCHEMA1, "application/json", "text/plain", ""]),
        st.sampled_from([*MANIFEST_TYPES]).map(lambda t: t + "; charset=utf-8"),
    ), 2))
    return ManifestCase(raw, content_type, doc, broken)


def _descriptor_ok(value: Any) -> bool:
    """What the image spec asks of a descriptor (and what this registry checks)."""
    if not isinstance(value, dict):
        return False
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not (isinstance(media_type, str) and media_type and _digest_ok(digest)):
        return False
    if not (type(size) is int and 0 <= size <= MAX_SIZE):
        return False
    if value.get("artifactType") is not None and not isinstance(value["artifactType"], str):
        return False
    urls = value.get("urls")
    if urls and not (isinstance(urls, list) and all(isinstance(u, str) for u in urls)):
        return False
    return _annotations_ok(value.get("annotations"))


def _digest_ok(value: Any) -> bool:
    if not isinstance(value, str) or ":" not in value:
        return False
    algorithm, _, hex_part = value.partition(":")
    length = {"sha256": 64, "sha512": 128}.get(algorithm)
    return length is not None and len(hex_part) == length and all(c in "0123456789abcdef" for c in hex_part)


def _annotations_ok(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))


def expected_media_type(case: ManifestCase) -> str | None:
    """The media type a correct parser gives this case, or None when it must refuse it. Written from the
    spec and the registry's documented choices, not from the parser: a missing mediaType is taken from
    the Content-Type, else from the structure (OCI only); schema 1 is refused; a descriptor list may hold
    any number of entries up to REGISTRY_MAX_MANIFEST_REFERENCES (the documents here hold a few)."""
    if case.broken:
        try:
            doc = orjson.loads(case.raw)
        except orjson.JSONDecodeError:
            return None
    else:
        doc = case.doc
    if not isinstance(doc, dict):
        return None
    declared = (case.content_type or "").split(";")[0].strip().lower() or None
    if declared in DOCKER_SCHEMA1:
        return None
    schema = doc.get("schemaVersion")
    if type(schema) not in (int, float) or schema != 2:  # 2.0 is read as 2 (Distribution refuses it)
        return None
    body_type = doc.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        return None
    if body_type and declared in MANIFEST_TYPES and body_type != declared:
        return None
    media_type = body_type or (declared if declared in MANIFEST_TYPES else None) or (
        OCI_INDEX if "manifests" in doc else OCI_MANIFEST)
    if media_type not in MANIFEST_TYPES:
        return None
    if not body_type and media_type in (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST):
        return None
    if doc.get("artifactType") is not None and not isinstance(doc["artifactType"], str):
        return None
    if doc.get("subject") is not None and not _descriptor_ok(doc["subject"]):
        return None
    if not _annotations_ok(doc.get("annotations")):
        return None
    if media_type in INDEX_TYPES:
        if "config" in doc or "layers" in doc:
            return None
        manifests = doc.get("manifests")
        ok = isinstance(manifests, list) and all(_descriptor_ok(d) for d in manifests)
        return media_type if ok else None
    if "manifests" in doc or not _descriptor_ok(doc.get("config")):
        return None
    layers = doc.get("layers")
    if layers is None:
        return None if media_type == DOCKER_MANIFEST else media_type
    ok = isinstance(layers, list) and all(_descriptor_ok(d) for d in layers)
    return media_type if ok else None
