"""The hot-path shortcuts attacked from outside, against one live server with 2 workers:
- manifest bytes each worker keeps by digest: after a delete by tag, by digest, of the repository, a
  garbage collection (grace 0, untagged manifests deleted), or the bytes removed from storage under
  their links (as another process sharing it would), no worker serves what is gone, though
  both had the bytes in hand (the access log shows both pids served them first); a tag deleted then
  pushed again with other bytes (another media type) is served with the new bytes and type by both;
  a manifest kept by a worker is not served from a repository where it is not linked;
- small blobs sent in one response: sizes around the 64 KiB limit, whole, HEAD and Range, every
  byte and header checked;
- parse caches and paths built without normalising: odd digests, upload ids and names (dots,
  encoded slashes, NUL, non-ASCII, overlong), each after its valid form was parsed and cached, sent
  on a raw socket (a client would normalise `..`): a 4xx, never a 500, never content, no file made
  outside the storage root, no ERROR/WARNING in the log.
Every request goes over its own connection, so both workers answer."""

from __future__ import annotations

import json
import os
import socket

import httpx
import orjson
import pytest

from tests.support import OCI_INDEX, OCI_MANIFEST, make_image, make_index, push_image, sha256, start_server

ROUNDS = 24  # fresh connections per check: both workers answer (asserted through the access log)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("hot_path_attack")
    srv = start_server(str(base / "data"), str(base / "server.log"), REGISTRY_WORKERS="2",
                       REGISTRY_GC_GRACE_SECONDS="0")
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def fresh(server, method: str, path: str, **kw) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        return c.request(method, path, **kw)


def raw_status(server, method: str, target: str, body: bytes = b"") -> int:
    """The status of a request sent byte for byte as given (no client normalises its path)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n".encode("utf-8", "surrogateescape") + body)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    assert out.startswith(b"HTTP/1.1 "), (target, out[:200])
    return int(out.split(b" ", 2)[1])


def access_pids(server, method: str, path: str, status: int) -> set[int]:
    pids = set()
    for line in server.log().splitlines():
        if '"myregistry.access"' in line:
            entry = json.loads(line)
            if entry["method"] == method and entry["path"] == path and entry["status"] == status:
                pids.add(entry["pid"])
    return pids


def warm(server, path: str, expected: bytes) -> None:
    """GET `path` on fresh connections until both workers have served (and so kept) `expected`."""
    for _ in range(10):
        for _ in range(ROUNDS):
            r = fresh(server, "GET", path)
            assert r.status_code == 200 and r.content == expected
        if len(access_pids(server, "GET", path, 200)) >= 2:
            return
    pytest.fail(f"one worker answered every GET {path}: the test cannot reach both")


def assert_gone(server, path: str) -> None:
    """404 on GET and HEAD, on fresh connections, until both workers have answered it."""
    for _ in range(10):
        for _ in range(ROUNDS):
            for method in ("GET", "HEAD"):
                r = fresh(server, method, path)
                assert r.status_code == 404, (method, path, r.status_code, r.content[:200])
        if len(access_pids(server, "GET", path, 404)) >= 2:
            return
    pytest.fail(f"one worker answered every GET {path}: the test cannot reach both")


def test_deleted_tag_digest_and_repository_are_gone_on_every_worker(server, client):
    by_tag, by_digest, whole_repo = make_image("atk-tag"), make_image("atk-digest"), make_image("atk-repo")
    push_image(client, "atk/del", by_tag, "t")
    push_image(client, "atk/del", by_digest, "d")
    push_image(client, "atk/delrepo", whole_repo, "r")
    paths = {"/v2/atk/del/manifests/t": by_tag.manifest,
             f"/v2/atk/del/manifests/{by_digest.digest}": by_digest.manifest,
             "/v2/atk/delrepo/manifests/r": whole_repo.manifest,
             f"/v2/atk/delrepo/manifests/{whole_repo.digest}": whole_repo.manifest}
    for path, body in paths.items():
        warm(server, path, body)

    assert client.delete("/v2/atk/del/manifests/t").status_code == 202
    assert client.delete(f"/v2/atk/del/manifests/{by_digest.digest}").status_code == 202
    assert client.delete("/v2/atk/delrepo/_repository").status_code == 202
    for path in paths:
        assert_gone(server, path)
    assert_gone(server, "/v2/atk/del/manifests/d")  # the tag went with the manifest it named
    # the untagged manifest deleted only by tag is still there, by digest, with its bytes
    r = fresh(server, "GET", f"/v2/atk/del/manifests/{by_tag.digest}")
    assert r.status_code == 200 and r.content == by_tag.manifest


def test_garbage_collection_then_the_same_manifest_pushed_again(server, client):
    image = make_image("atk-gc")
    push_image(client, "atk/gc", image, "t")
    by_digest = f"/v2/atk/gc/manifests/{image.digest}"
    warm(server, by_digest, image.manifest)
    assert client.delete("/v2/atk/gc/manifests/t").status_code == 202
    report = client.post("/v2/_gc", params={"delete_untagged": "true"})
    assert report.status_code == 200 and report.json()["manifests_removed"] >= 1, report.text
    assert_gone(server, by_digest)
    assert fresh(server, "HEAD", f"/v2/atk/gc/blobs/{image.digest}").status_code == 404  # the bytes went too

    push_image(client, "atk/gc", image, "again")  # the same bytes come back: served again, whole
    for _ in range(ROUNDS):
        r = fresh(server, "GET", "/v2/atk/gc/manifests/again")
        assert r.status_code == 200 and r.content == image.manifest
        assert r.headers["content-type"] == OCI_MANIFEST and r.headers["docker-content-digest"] == image.digest


def test_manifest_bytes_removed_from_storage_are_not_served_from_a_worker_copy(server, client):
    # Another process sharing the storage (an operator, another instance's collection) removes the
    # bytes while the links stay: each worker's copy must not outlive them; once the same bytes are
    # back, both serve them again.
    image = make_image("atk-bytes")
    push_image(client, "atk/bytes", image, "t")
    for path in ("/v2/atk/bytes/manifests/t", f"/v2/atk/bytes/manifests/{image.digest}"):
        warm(server, path, image.manifest)
    hex_ = image.digest[7:]
    data = os.path.join(server.storage_root, "docker", "registry", "v2", "blobs", "sha256", hex_[:2], hex_, "data")
    os.remove(data)
    assert_gone(server, "/v2/atk/bytes/manifests/t")
    assert_gone(server, f"/v2/atk/bytes/manifests/{image.digest}")
    assert client.post("/v2/atk/bytes/blobs/uploads/", params={"digest": image.digest},
                       content=image.manifest).status_code == 201
    for _ in range(ROUNDS):
        r = fresh(server, "GET", "/v2/atk/bytes/manifests/t")
        assert r.status_code == 200 and r.content == image.manifest and r.headers["content-type"] == OCI_MANIFEST


def test_a_tag_deleted_and_pushed_again_with_other_bytes_and_type(server, client):
    first, second = make_image("atk-first"), make_image("atk-second")
    push_image(client, "atk/retag", first, "t")
    push_image(client, "atk/retag", second)
    warm(server, "/v2/atk/retag/manifests/t", first.manifest)
    assert client.delete("/v2/atk/retag/manifests/t").status_code == 202
    index = make_index([(second, "arm64")])
    assert client.put("/v2/atk/retag/manifests/t", content=index,
                      headers={"Content-Type": OCI_INDEX}).status_code == 201
    for _ in range(ROUNDS):
        for method in ("GET", "HEAD"):
            r = fresh(server, method, "/v2/atk/retag/manifests/t")
            assert r.status_code == 200
            assert r.headers["content-type"] == OCI_INDEX
            assert r.headers["docker-content-digest"] == sha256(index)
            assert r.headers["content-length"] == str(len(index))
            assert r.content == (index if method == "GET" else b"")


def test_a_kept_manifest_is_not_served_where_it_is_not_linked(server, client):
    image = make_image("atk-elsewhere")
    push_image(client, "atk/home", image, "t")
    push_image(client, "atk/other", make_image("atk-other"), "t")
    warm(server, f"/v2/atk/home/manifests/{image.digest}", image.manifest)
    assert_gone(server, f"/v2/atk/other/manifests/{image.digest}")


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537])
def test_small_blob_limit_whole_head_and_ranges(server, client, size):
    data = os.urandom(size)
    digest = sha256(data)
    assert client.post("/v2/atk/blobs/blobs/uploads/", params={"digest": digest}, content=data).status_code == 201
    path = f"/v2/atk/blobs/blobs/{digest}"
    for _ in range(4):
        r = fresh(server, "GET", path)
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-length"] == str(size) and r.headers["docker-content-digest"] == digest
        h = fresh(server, "HEAD", path)
        assert h.status_code == 200 and h.headers["content-length"] == str(size) and h.content == b""
    ranges = ["bytes=0-", "bytes=1-", "bytes=0-0", "bytes=-1", "bytes=-65536", "bytes=0-65534", "bytes=0-65535",
              "bytes=1-65536", "bytes=0-65536", "bytes=65535-65536", f"bytes={max(size - 1, 0)}-",
              f"bytes=0-{2 * size + 5}", f"bytes={size}-", "bytes=5-3"]
    for header in ranges:
        for method in ("GET", "HEAD"):
            r = fresh(server, method, path, headers={"Range": header})
            assert r.status_code in (206, 416), (header, r.status_code)
            if r.status_code == 416:
                continue
            unit, _, span = r.headers["content-range"].partition(" ")
            first, last = (int(x) for x in span.split("/")[0].split("-"))
            assert unit == "bytes" and span.endswith(f"/{size}") and 0 <= first <= last < size, header
            assert r.headers["content-length"] == str(last - first + 1), header
            assert r.content == (data[first:last + 1] if method == "GET" else b""), header


def test_odd_digests_upload_ids_and_names_after_their_valid_forms(server, client, tmp_path):
    image = make_image("atk-odd")
    push_image(client, "atk/odd", image, "tag")
    upload = client.post("/v2/atk/odd/blobs/uploads/").headers["Location"].rsplit("/", 1)[1]
    digest = image.digest
    blob = sha256(image.config)
    for path in ("/v2/atk/odd/manifests/tag", f"/v2/atk/odd/manifests/{digest}", f"/v2/atk/odd/blobs/{blob}"):
        assert raw_status(server, "GET", path) == 200  # the valid forms, parsed and cached first
    assert raw_status(server, "GET", f"/v2/atk/odd/blobs/uploads/{upload}") == 204
    root = os.path.realpath(server.storage_root)
    outside = set(os.listdir(os.path.dirname(root)))

    odd_digests = [digest.upper(), digest + "%00", digest + "%0a", digest + "/..", digest[:-1] + "%2F",
                   "sha256:" + "../" * 22, "sha256:..%2F..%2F..%2Fetc", "sha256:%2e%2e", "..", "%2e%2e",
                   "sha256:" + "\udcc3\udca9" * 64, "sha512:" + digest[7:], "md5:" + "a" * 32,
                   digest + "a", "sha256:" + "a" * 20000, f"sha256:{digest[7:]}%20"]
    for odd in odd_digests:
        for method in ("GET", "HEAD", "DELETE"):
            for kind in ("blobs", "manifests"):
                status = raw_status(server, method, f"/v2/atk/odd/{kind}/{odd}")
                assert 400 <= status < 500, (method, kind, odd[:60], status)

    odd_uploads = ["..", "%2e%2e", "..%2F..%2F..", upload + "%2F..", upload.upper(), upload + "%00",
                   upload[:-1] + "g", "\udcc3\udca9", "x" * 5000, "../../../../etc/passwd", upload + "/.."]
    for odd in odd_uploads:
        for method, body in (("GET", b""), ("PATCH", b"x"), ("DELETE", b""), ("PUT", b"x")):
            query = f"?digest={sha256(b'x')}" if method == "PUT" else ""
            status = raw_status(server, method, f"/v2/atk/odd/blobs/uploads/{odd}{query}", body)
            assert 400 <= status < 500, (method, odd[:60], status)

    odd_names = ["atk/ODD", "atk/odd/", "atk//odd", "atk/od\udcc3\udca9", "atk/odd%00", "atk/odd%0a",
                 "atk/../atk/odd", "atk/./odd", "%2e%2e/atk/odd", "atk/odd%2F..%2F..%2Fx", "atk/" + "a" * 252,
                 "atk/o..dd", "atk/odd\udcff"]
    odd_refs = ["tag", "TAG", "t%C3%A9", ".tag", "-tag", "a" * 129, "..", "tag%00", "tag%2F..", digest]
    for name in odd_names:
        for ref in odd_refs:
            for method in ("GET", "HEAD"):
                status = raw_status(server, method, f"/v2/{name}/manifests/{ref}")
                assert 400 <= status < 500, (method, name, ref[:60], status)
    for ref in odd_refs[1:-1]:
        status = raw_status(server, "GET", f"/v2/atk/odd/manifests/{ref}")
        assert status in (400, 404), (ref, status)

    assert set(os.listdir(os.path.dirname(root))) == outside, "a file appeared beside the storage root"
    for path in ("/v2/atk/odd/manifests/tag", f"/v2/atk/odd/blobs/{blob}"):
        assert raw_status(server, "GET", path) == 200  # the cached valid forms still work
    problems = [line for line in server.log().splitlines()
                if any(f'"level":"{level}"' in line for level in ("ERROR", "WARNING", "CRITICAL"))
                or "Traceback" in line]
    assert not problems, problems[:5]


def test_no_error_logged_by_the_whole_attack(server):
    # Last in the file: everything above is ordinary (if hostile) traffic.
    lines = server.log().splitlines()
    bad = [line for line in lines if line.startswith("{") and orjson.loads(line)["level"] in ("ERROR", "WARNING")]
    assert not bad and not any("Traceback" in line for line in lines), bad[:5]
