"""Every limit is a setting, and going past it gets an OCI error, not a 5xx and not a stored byte:
manifest size, blob size (monolithic, streamed, chunked), references per manifest, open upload sessions
per repository, request header size. Just under each limit works."""

from __future__ import annotations

import json
import os
import socket

import httpx
import pytest

from tests.support import OCI_MANIFEST, sha256, start_server

LIMITS = {"REGISTRY_MAX_MANIFEST_BYTES": "4096", "REGISTRY_MAX_BLOB_BYTES": str(1 << 20),
          "REGISTRY_MAX_MANIFEST_REFERENCES": "5", "REGISTRY_MAX_UPLOADS_PER_REPOSITORY": "3",
          "REGISTRY_MAX_HEADER_BYTES": "2048"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    base = tmp_path_factory.mktemp("limits")
    server = start_server(str(base / "data"), str(base / "server.log"), **LIMITS)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield server, client
    server.stop()


def code(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.json()["errors"][0]["code"]


def upload(client: httpx.Client, repo: str, data: bytes) -> httpx.Response:
    return client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data)


def manifest_with(layers: list[bytes], config: bytes = b"{}", pad: int = 0) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(config),
                      "size": len(config)},
           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256(layer),
                       "size": len(layer)} for layer in layers]}
    if pad:
        doc["annotations"] = {"pad": "x" * pad}
    return json.dumps(doc).encode()


def test_blob_size(limited):
    server, client = limited
    assert upload(client, "lim/blob", os.urandom(1 << 20)).status_code == 201  # exactly the limit
    big = os.urandom((1 << 20) + 1)
    r = upload(client, "lim/blob", big)
    assert r.status_code == 413 and code(r) == "SIZE_INVALID" and "REGISTRY_MAX_BLOB_BYTES" in r.text
    location = client.post("/v2/lim/blob/blobs/uploads/").headers["Location"]
    r = client.patch(location, content=big[: 600_000], headers={"Content-Range": "0-599999"})
    assert r.status_code == 202
    r = client.patch(r.headers["Location"], content=big[600_000:], headers={"Content-Range": f"600000-{len(big) - 1}"})
    assert r.status_code == 413 and code(r) == "SIZE_INVALID"
    assert client.get(location).status_code == 404  # the session went with its bytes
    assert client.head(f"/v2/lim/blob/blobs/{sha256(big)}").status_code == 404


def test_manifest_size_and_references(limited):
    server, client = limited
    config = b"{}"
    layers = [os.urandom(100) for _ in range(5)]
    for blob in [config, *layers]:
        assert upload(client, "lim/man", blob).status_code == 201
    ok = manifest_with(layers)  # 5 layers: the limit
    r = client.put("/v2/lim/man/manifests/ok", content=ok, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    extra = os.urandom(100)
    upload(client, "lim/man", extra)
    r = client.put("/v2/lim/man/manifests/many", content=manifest_with([*layers, extra]),
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and code(r) == "MANIFEST_INVALID" and "REGISTRY_MAX_MANIFEST_REFERENCES" in r.text
    r = client.put("/v2/lim/man/manifests/big", content=manifest_with(layers, pad=4096),
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 413 and code(r) == "SIZE_INVALID" and "REGISTRY_MAX_MANIFEST_BYTES" in r.text
    assert client.get("/v2/lim/man/tags/list").json()["tags"] == ["ok"]


def test_upload_sessions_per_repository(limited):
    server, client = limited
    locations = [client.post("/v2/lim/sessions/blobs/uploads/").headers["Location"] for _ in range(3)]
    r = client.post("/v2/lim/sessions/blobs/uploads/")
    assert r.status_code == 429 and code(r) == "TOOMANYREQUESTS"
    assert "REGISTRY_MAX_UPLOADS_PER_REPOSITORY" in r.text
    assert client.post("/v2/lim/other/blobs/uploads/").status_code == 202  # per repository
    assert client.delete(locations[0]).status_code == 204
    assert client.post("/v2/lim/sessions/blobs/uploads/").status_code == 202


def test_header_size(limited):
    server, client = limited
    assert client.get("/v2/", headers={"X-Pad": "p" * 1500}).status_code == 200
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 3000 + b"\r\n\r\n")
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413") and b'"SIZE_INVALID"' in answer, answer[:300]
    assert '"status":500' not in server.log()
