"""The registry API over a real socket, against a live server process with filesystem storage."""

from __future__ import annotations

import json
import os
import uuid

import httpx
import pytest

from tests.support import OCI_INDEX, OCI_MANIFEST, make_image, make_index, push_image, sha256

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"


def repo_name() -> str:
    return f"t/{uuid.uuid4().hex[:12]}"


def error_code(r: httpx.Response) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text
    return r.json()["errors"][0]["code"]


def test_base(client):
    r = client.get("/v2/")
    assert r.status_code == 200 and r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert r.json() == {}


def test_request_id_is_echoed_and_generated(client, server):
    r = client.get("/v2/", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    r = client.get("/v2/", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["X-Request-ID"] != "bad id\twith spaces" and len(r.headers["X-Request-ID"]) == 32
    client.get("/v2/nope/tags/list", headers={"X-Request-ID": "trace-me-42"})
    lines = [json.loads(line) for line in server.log().splitlines() if "trace-me-42" in line]
    assert lines and lines[-1]["status"] == 404 and lines[-1]["method"] == "GET"
    assert {"time", "duration_ms", "bytes", "path"} <= set(lines[-1])


def test_health(client):
    for path in ("/health", "/health/live", "/health/ready"):
        r = client.get(path)
        assert r.status_code == 200 and r.json()["status"] == "ok"


class TestUploads:
    def test_monolithic_post(self, client):
        repo, data = repo_name(), os.urandom(5000)
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
        assert r.status_code == 201
        assert r.headers["Location"] == f"/v2/{repo}/blobs/{sha256(data)}"
        assert r.headers["Docker-Content-Digest"] == sha256(data)
        assert client.get(r.headers["Location"]).content == data

    def test_post_then_put_with_body(self, client):
        repo, data = repo_name(), os.urandom(3000)
        r = client.post(f"/v2/{repo}/blobs/uploads/")
        assert r.status_code == 202 and r.headers["Docker-Upload-UUID"]
        assert "Range" not in r.headers
        r = client.put(r.headers["Location"], params={"digest": sha256(data)}, content=data)
        assert r.status_code == 201
        assert client.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data

    def test_chunked_with_content_range_and_status(self, client):
        repo, data = repo_name(), os.urandom(10_000)
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        for start in range(0, 10_000, 3000):
            chunk = data[start:start + 3000]
            r = client.patch(location, content=chunk, headers={
                "Content-Range": f"{start}-{start + len(chunk) - 1}", "Content-Type": "application/octet-stream"})
            assert r.status_code == 202, r.text
            assert r.headers["Range"] == f"0-{start + len(chunk) - 1}"
            location = r.headers["Location"]
        r = client.get(location)
        assert r.status_code == 204 and r.headers["Range"] == "0-9999"
        r = client.put(location, params={"digest": sha256(data)})
        assert r.status_code == 201
        assert client.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data

    def test_out_of_order_chunk_is_416(self, client):
        repo = repo_name()
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        client.patch(location, content=b"abc", headers={"Content-Range": "0-2"})
        r = client.patch(location, content=b"xyz", headers={"Content-Range": "5-7"})
        assert r.status_code == 416 and error_code(r) == "BLOB_UPLOAD_INVALID"
        assert client.get(location).headers["Range"] == "0-2"

    def test_content_range_length_mismatch(self, client):
        location = client.post(f"/v2/{repo_name()}/blobs/uploads/").headers["Location"]
        r = client.patch(location, content=b"abcd", headers={"Content-Range": "0-9"})
        assert r.status_code == 400 and error_code(r) == "SIZE_INVALID"
        r = client.patch(location, content=b"abcd", headers={"Content-Range": "garbage"})
        assert r.status_code == 400 and error_code(r) == "BLOB_UPLOAD_INVALID"

    def test_streamed_patch_without_length(self, client):
        """podman's way: Transfer-Encoding: chunked, no Content-Length, no Content-Range."""
        repo, data = repo_name(), os.urandom(200_000)

        def body():
            for i in range(0, len(data), 7000):
                yield data[i:i + 7000]
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        r = client.patch(location, content=body())
        assert r.status_code == 202 and r.headers["Range"] == f"0-{len(data) - 1}"
        assert client.put(r.headers["Location"], params={"digest": sha256(data)}).status_code == 201
        assert client.get(f"/v2/{repo}/blobs/{sha256(data)}").content == data

    def test_wrong_digest_is_400_and_stores_nothing(self, client):
        repo, data = repo_name(), b"real content"
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        r = client.put(location, params={"digest": sha256(b"something else")}, content=data)
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
        assert client.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
        assert client.head(f"/v2/{repo}/blobs/{sha256(b'something else')}").status_code == 404

    def test_missing_or_bad_digest_param(self, client):
        location = client.post(f"/v2/{repo_name()}/blobs/uploads/").headers["Location"]
        r = client.put(location, content=b"x")
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
        r = client.put(location, params={"digest": "md5:abc"}, content=b"x")
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"

    def test_cancel_and_unknown_sessions(self, client):
        repo = repo_name()
        location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
        assert client.delete(location).status_code == 204
        r = client.get(location)
        assert r.status_code == 404 and error_code(r) == "BLOB_UPLOAD_UNKNOWN"
        assert client.delete(location).status_code == 404
        for bogus in ("not-a-uuid", "..", "%2e%2e", str(uuid.uuid4())):
            r = client.patch(f"/v2/{repo}/blobs/uploads/{bogus}", content=b"x")
            assert r.status_code == 404, bogus

    def test_session_is_bound_to_its_repository(self, client):
        location = client.post(f"/v2/{repo_name()}/blobs/uploads/").headers["Location"]
        other = location.replace("/v2/t/", "/v2/u/")
        assert client.get(other).status_code == 404

    def test_mount(self, client):
        source, target, data = repo_name(), repo_name(), os.urandom(1000)
        client.post(f"/v2/{source}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
        r = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": sha256(data), "from": source})
        assert r.status_code == 201 and r.headers["Location"] == f"/v2/{target}/blobs/{sha256(data)}"
        assert client.get(f"/v2/{target}/blobs/{sha256(data)}").content == data
        # without `from`, any stored blob is found
        third = repo_name()
        assert client.post(f"/v2/{third}/blobs/uploads/", params={"mount": sha256(data)}).status_code == 201

    def test_refused_mount_is_a_usable_session(self, client):
        repo, data = repo_name(), os.urandom(100)
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"mount": sha256(data), "from": repo_name()})
        assert r.status_code == 202
        assert client.put(r.headers["Location"], params={"digest": sha256(data)}, content=data).status_code == 201

    def test_mount_with_bad_digest(self, client):
        r = client.post(f"/v2/{repo_name()}/blobs/uploads/", params={"mount": "sha256:nope", "from": "x"})
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"


class TestBlobs:
    def test_head_get_range(self, client):
        repo, data = repo_name(), os.urandom(10_000)
        client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
        url = f"/v2/{repo}/blobs/{sha256(data)}"
        r = client.head(url)
        assert r.status_code == 200 and r.headers["Content-Length"] == "10000"
        assert r.headers["Docker-Content-Digest"] == sha256(data) and r.content == b""
        r = client.get(url, headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == data[100:200]
        assert r.headers["Content-Range"] == "bytes 100-199/10000"
        assert client.get(url, headers={"Range": "bytes=9990-"}).content == data[9990:]
        assert client.get(url, headers={"Range": "bytes=-10"}).content == data[-10:]
        r = client.get(url, headers={"Range": "bytes=20000-"})
        assert r.status_code == 416
        assert client.get(url, headers={"Range": "lines=1-2"}).status_code == 200

    def test_large_blob_whole_and_ranged_and_a_client_that_hangs_up(self, client, server):
        """Large bodies go out with sendfile: whole, ranged across sendfile calls, and to a client that
        leaves after the first bytes. The server must neither log a failure nor stop serving."""
        import socket

        repo, data = repo_name(), os.urandom(20 << 20)
        seen = len(server.log())
        client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
        url = f"/v2/{repo}/blobs/{sha256(data)}"
        r = client.get(url)
        assert r.status_code == 200 and r.content == data
        r = client.get(url, headers={"Range": f"bytes={(8 << 20) - 5}-{(17 << 20) + 3}"})
        assert r.status_code == 206 and r.content == data[(8 << 20) - 5:(17 << 20) + 4]
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert client.get(url, headers={"Range": "bytes=0-9"}).content == data[:10]
        log = server.log()[seen:]
        assert "Traceback" not in log and '"level":"ERROR"' not in log, log

    def test_unknown_blob_and_other_repositories(self, client):
        repo, data = repo_name(), os.urandom(100)
        client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
        r = client.get(f"/v2/{repo_name()}/blobs/{sha256(data)}")
        assert r.status_code == 404 and error_code(r) == "BLOB_UNKNOWN"
        assert client.head(f"/v2/{repo}/blobs/{sha256(b'none')}").status_code == 404
        r = client.get(f"/v2/{repo}/blobs/sha256:short")
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"

    def test_delete(self, client):
        repo, data = repo_name(), os.urandom(100)
        client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(data)}, content=data)
        assert client.delete(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 202
        assert client.head(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404
        assert client.delete(f"/v2/{repo}/blobs/{sha256(data)}").status_code == 404


class TestManifests:
    def test_push_pull_by_tag_and_digest(self, client):
        repo, image = repo_name(), make_image("m1")
        r = push_image(client, repo, image, "v1")
        assert r.headers["Docker-Content-Digest"] == image.digest
        assert r.headers["Location"] == f"/v2/{repo}/manifests/{image.digest}"
        for ref in ("v1", image.digest):
            r = client.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": "*/*"})
            assert r.status_code == 200 and r.content == image.manifest
            assert r.headers["Content-Type"] == OCI_MANIFEST
            assert r.headers["Docker-Content-Digest"] == image.digest
            h = client.head(f"/v2/{repo}/manifests/{ref}")
            assert h.status_code == 200 and h.headers["Content-Length"] == str(len(image.manifest))

    @pytest.mark.parametrize("media_type", [DOCKER_MANIFEST, OCI_MANIFEST])
    def test_media_types_round_trip(self, client, media_type):
        repo, image = repo_name(), make_image("m2")
        for blob in image.blobs():
            client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
        doc = json.loads(image.manifest)
        doc["mediaType"] = media_type
        raw = json.dumps(doc).encode()
        assert client.put(f"/v2/{repo}/manifests/x", content=raw,
                          headers={"Content-Type": media_type}).status_code == 201
        assert client.get(f"/v2/{repo}/manifests/x").headers["Content-Type"] == media_type

    @pytest.mark.parametrize("list_type", [OCI_INDEX, DOCKER_LIST])
    def test_index_needs_its_children(self, client, list_type):
        repo, amd, arm = repo_name(), make_image("i1"), make_image("i2", arch="arm64")
        doc = json.loads(make_index([(amd, "amd64"), (arm, "arm64")]))
        doc["mediaType"] = list_type
        index = json.dumps(doc).encode()
        push_image(client, repo, amd)
        r = client.put(f"/v2/{repo}/manifests/multi", content=index, headers={"Content-Type": list_type})
        assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN"
        push_image(client, repo, arm)
        r = client.put(f"/v2/{repo}/manifests/multi", content=index, headers={"Content-Type": list_type})
        assert r.status_code == 201
        assert client.get(f"/v2/{repo}/manifests/multi").headers["Content-Type"] == list_type

    def test_missing_blobs(self, client):
        repo, image = repo_name(), make_image("m3")
        client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(image.config)}, content=image.config)
        r = client.put(f"/v2/{repo}/manifests/v1", content=image.manifest, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 400 and error_code(r) == "MANIFEST_BLOB_UNKNOWN"
        assert client.get(f"/v2/{repo}/manifests/v1").status_code == 404

    def test_invalid_manifests(self, client):
        repo, image = repo_name(), make_image("m4")
        push_image(client, repo, image)
        cases = [b"", b"{", b"[]", b'{"schemaVersion": 2}', b'{"schemaVersion": 2, "config": 5}']
        for raw in cases:
            r = client.put(f"/v2/{repo}/manifests/bad", content=raw, headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 400 and error_code(r) == "MANIFEST_INVALID", raw
        r = client.put(f"/v2/{repo}/manifests/{sha256(b'other')}", content=image.manifest,
                       headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
        r = client.put(f"/v2/{repo}/manifests/bad", content=b'{"schemaVersion": 1}',
                       headers={"Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws"})
        assert r.status_code == 415 and error_code(r) == "UNSUPPORTED"

    def test_reference_no_tag_can_have(self, client):
        """Reads and deletes by a reference outside the tag grammar find no manifest (404, as the
        conformance tests and Distribution expect); a PUT to it is TAG_INVALID."""
        repo, image = repo_name(), make_image("m-badref")
        push_image(client, repo, image, "v1")
        for bad in (".INVALID_MANIFEST_NAME", "-x", "a" * 129):
            for method in ("GET", "HEAD", "DELETE"):
                r = client.request(method, f"/v2/{repo}/manifests/{bad}")
                assert r.status_code == 404, (method, bad, r.status_code)
                if method != "HEAD":
                    assert error_code(r) == "MANIFEST_UNKNOWN", (method, bad)
            r = client.put(f"/v2/{repo}/manifests/{bad}", content=image.manifest,
                           headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 400 and error_code(r) == "TAG_INVALID", bad
        r = client.get(f"/v2/{repo}/manifests/sha256:nothex")
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"

    def test_oversized_manifest_is_413(self, client):
        r = client.put(f"/v2/{repo_name()}/manifests/big", content=b" " * (4 * 1024 * 1024 + 1),
                       headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 413 and error_code(r) == "SIZE_INVALID"

    def test_bad_references(self, client):
        repo = repo_name()
        r = client.get(f"/v2/{repo}/manifests/sha256:abc")
        assert r.status_code == 400 and error_code(r) == "DIGEST_INVALID"
        r = client.get(f"/v2/{repo}/manifests/-bad-tag")
        assert r.status_code == 404 and error_code(r) == "MANIFEST_UNKNOWN"
        r = client.get(f"/v2/{repo}/manifests/latest")
        assert r.status_code == 404 and error_code(r) == "NAME_UNKNOWN"

    def test_delete_by_tag_and_by_digest(self, client):
        repo, image = repo_name(), make_image("m5")
        push_image(client, repo, image, "a")
        client.put(f"/v2/{repo}/manifests/b", content=image.manifest, headers={"Content-Type": OCI_MANIFEST})
        assert client.delete(f"/v2/{repo}/manifests/a").status_code == 202
        assert client.get(f"/v2/{repo}/manifests/a").status_code == 404
        assert client.get(f"/v2/{repo}/manifests/{image.digest}").status_code == 200
        assert client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
        r = client.get(f"/v2/{repo}/manifests/b")
        assert r.status_code == 404 and error_code(r) == "MANIFEST_UNKNOWN"
        assert client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 404
        assert client.get(f"/v2/{repo}/tags/list").json()["tags"] == []


class TestListings:
    def test_tags_pagination(self, client):
        repo, image = repo_name(), make_image("l1", layers=1)
        tags = ["b", "a", "c1", "c0", "Z", "_x"]
        for tag in tags:
            push_image(client, repo, image, tag)
        assert client.get(f"/v2/{repo}/tags/list").json() == {"name": repo, "tags": sorted(tags)}
        seen, url = [], f"/v2/{repo}/tags/list?n=4"
        while url:
            r = client.get(url)
            seen += r.json()["tags"]
            link = r.headers.get("Link")
            url = link[1:link.index(">")] if link else None
        assert seen == sorted(tags)
        assert client.get(f"/v2/{repo}/tags/list", params={"n": 2, "last": "a"}).json()["tags"] == ["b", "c0"]
        assert client.get(f"/v2/{repo}/tags/list", params={"n": 0}).json()["tags"] == []
        assert client.get(f"/v2/{repo}/tags/list", params={"n": -1}).status_code == 400

    def test_unknown_repository(self, client):
        r = client.get(f"/v2/{repo_name()}/tags/list")
        assert r.status_code == 404 and error_code(r) == "NAME_UNKNOWN"

    def test_catalog(self, client):
        prefix = f"cat{uuid.uuid4().hex[:6]}"
        image = make_image("c", layers=1)
        names = [f"{prefix}/b", f"{prefix}/a", f"{prefix}/a/deeper"]
        for n in names:
            push_image(client, n, image, "v")
        full = client.get("/v2/_catalog").json()["repositories"]
        assert full == sorted(full) and set(names) <= set(full)
        r = client.get("/v2/_catalog", params={"n": 1, "last": f"{prefix}/a"})
        assert r.json()["repositories"] == [f"{prefix}/a/deeper"]
        assert 'rel="next"' in r.headers["Link"]


class TestReferrers:
    def test_subject_artifacts_and_filter(self, client):
        repo, image = repo_name(), make_image("r1")
        push_image(client, repo, image, "v1")
        empty = b"{}"
        client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(empty)}, content=empty)

        def artifact(kind):
            return json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": kind,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": 2},
                "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": 2}],
                "subject": {"mediaType": OCI_MANIFEST, "digest": image.digest, "size": len(image.manifest)},
            }).encode()
        sig, sbom = artifact("application/x.sig"), artifact("application/x.sbom")
        for raw in (sig, sbom):
            r = client.put(f"/v2/{repo}/manifests/{sha256(raw)}", content=raw, headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 201 and r.headers["OCI-Subject"] == image.digest
        r = client.get(f"/v2/{repo}/referrers/{image.digest}")
        assert r.status_code == 200 and r.headers["Content-Type"] == OCI_INDEX
        body = r.json()
        assert body["mediaType"] == OCI_INDEX
        assert {m["digest"]: m["artifactType"] for m in body["manifests"]} == {
            sha256(sig): "application/x.sig", sha256(sbom): "application/x.sbom"}
        r = client.get(f"/v2/{repo}/referrers/{image.digest}", params={"artifactType": "application/x.sbom"})
        assert r.headers["OCI-Filters-Applied"] == "artifactType"
        assert [m["digest"] for m in r.json()["manifests"]] == [sha256(sbom)]

    def test_subject_may_be_missing_and_unknown_subjects_are_empty(self, client):
        repo, empty = repo_name(), b"{}"
        client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(empty)}, content=empty)
        missing = sha256(b"not pushed yet")
        raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.a",
                          "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty),
                                     "size": 2}, "layers": [],
                          "subject": {"mediaType": OCI_MANIFEST, "digest": missing, "size": 1}}).encode()
        r = client.put(f"/v2/{repo}/manifests/{sha256(raw)}", content=raw, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201 and r.headers["OCI-Subject"] == missing
        assert [m["digest"] for m in client.get(f"/v2/{repo}/referrers/{missing}").json()["manifests"]] == [sha256(raw)]
        r = client.get(f"/v2/{repo}/referrers/{sha256(b'none')}")
        assert r.status_code == 200 and r.json()["manifests"] == []
        assert client.get(f"/v2/{repo}/referrers/sha256:bad").status_code == 400


class TestBadInput:
    @pytest.mark.parametrize("path", [
        "/v2/UPPER/tags/list", "/v2/a//b/tags/list", "/v2/-a/tags/list", "/v2/a/../b/tags/list",
        "/v2/a/%2e%2e/b/tags/list", "/v2/a%2fb/tags/list", "/v2/" + "a" * 300 + "/tags/list",
        "/v2/a/_layers/tags/list",
    ])
    def test_bad_names_are_4xx_json(self, client, path):
        r = client.get(path)
        assert 400 <= r.status_code < 500, path
        assert r.headers["content-type"].startswith("application/json")

    def test_unknown_route_and_method(self, client):
        r = client.get("/v2/a/unknown/thing")
        assert r.status_code == 404 and error_code(r) == "UNSUPPORTED"
        r = client.post("/v2/a/tags/list")
        assert r.status_code == 405 and error_code(r) == "UNSUPPORTED"
        r = client.put(f"/v2/a/blobs/{sha256(b'x')}")
        assert r.status_code == 405

    def test_nothing_is_written_outside_the_root(self, client, server):
        parent = os.path.dirname(server.storage_root)
        before = set(os.listdir(parent))
        for path in ("/v2/..%2f..%2fescape/blobs/uploads/", "/v2/%2e%2e/escape/blobs/uploads/",
                     "/v2/a/blobs/uploads/..%2f..%2f..%2fescape"):
            assert client.post(path).status_code in (400, 404, 405)
        assert set(os.listdir(parent)) == before
