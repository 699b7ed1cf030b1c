import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.digest import Digest
from domain.errors import ManifestInvalid, Unsupported
from domain.manifest import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    media_type_of,
    parse_manifest,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def image(**extra):
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 2},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 3}]}
    doc.update(extra)
    return {k: v for k, v in doc.items() if v is not None}


@given(st.integers(0, 8), st.booleans(), st.text(max_size=20))
def test_digest_is_of_the_exact_bytes(indent, sort_keys, note):
    raw = json.dumps(image(annotations={"note": note}), indent=indent or None, sort_keys=sort_keys).encode()
    m = parse_manifest(raw, OCI_MANIFEST)
    assert m.digest == Digest.of(raw)
    assert m.raw is raw


def test_image_references():
    m = parse_manifest(json.dumps(image()).encode())
    assert m.media_type == OCI_MANIFEST
    assert [str(d) for d in m.required_blobs()] == [D1, D2]


def test_media_type_from_content_type_or_structure():
    raw = json.dumps(image(mediaType=None)).encode()
    assert parse_manifest(raw, OCI_MANIFEST).media_type == OCI_MANIFEST
    assert parse_manifest(raw).media_type == OCI_MANIFEST
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert parse_manifest(index).media_type == OCI_INDEX
    assert media_type_of(index) == OCI_INDEX


def test_subject_and_artifact_type():
    raw = json.dumps(image(artifactType="application/x.sig", subject={
        "mediaType": OCI_MANIFEST, "digest": D1, "size": 10})).encode()
    m = parse_manifest(raw)
    assert m.subject.digest == Digest.parse(D1)
    assert m.referrer_descriptor().artifact_type == "application/x.sig"
    plain = parse_manifest(json.dumps(image()).encode())
    assert plain.referrer_descriptor().artifact_type == "application/vnd.oci.image.config.v1+json"


def test_foreign_layers_are_not_required():
    doc = image(mediaType=DOCKER_MANIFEST)
    doc["layers"].append({"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                          "digest": "sha256:" + "3" * 64, "size": 1, "urls": ["https://example.invalid/x"]})
    assert len(parse_manifest(json.dumps(doc).encode()).required_blobs()) == 2


@pytest.mark.parametrize("raw, content_type", [
    (b"", None), (b"not json", None), (b"[]", None), (b'{"schemaVersion": 3}', None),
    (json.dumps(image(schemaVersion="2")).encode(), None),
    (json.dumps(image(mediaType=DOCKER_MANIFEST)).encode(), OCI_MANIFEST),
    (json.dumps(image(mediaType="application/x.unknown")).encode(), None),
    (json.dumps(image(config={"mediaType": "x", "digest": "sha256:bad", "size": 1})).encode(), None),
    (json.dumps(image(config={"mediaType": "x", "digest": D1, "size": -1})).encode(), None),
    (json.dumps(image(config={"mediaType": "x", "digest": D1, "size": True})).encode(), None),
    (json.dumps(image(layers="nope")).encode(), None),
    (json.dumps(image(config=None)).encode(), None),
    (json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [{}]}).encode(), None),
    (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "config": {}, "manifests": []}).encode(), None),
    (json.dumps(image(mediaType=None)).encode(), DOCKER_MANIFEST),
])
def test_invalid_manifests(raw, content_type):
    with pytest.raises(ManifestInvalid):
        parse_manifest(raw, content_type)


def test_schema1_is_unsupported():
    with pytest.raises(Unsupported):
        parse_manifest(b'{"schemaVersion": 1, "name": "x"}')


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw):
    try:
        parse_manifest(raw)
    except (ManifestInvalid, Unsupported):
        pass
