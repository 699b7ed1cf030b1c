"""Hostile requests written byte by byte on a raw socket, where an HTTP client library would have
cleaned them up: dot segments, encoded slashes, NUL bytes, overlong names, duplicate and conflicting
headers, lying Content-Length, truncated bodies. The answer is a 4xx with the OCI error body (or a
closed connection for what is not HTTP), never a 5xx, never a file outside STORAGE_ROOT, and nothing
half sent is ever stored."""

from __future__ import annotations

import json
import os
import socket
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import make_image, push_image, sha256


def raw(server, request: bytes, close_after_send: bool = False, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send bytes as they are; return (status, headers, body) of the first response, status 0 when the
    server closed without one."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(request)
        if close_after_send:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                piece = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                piece = b""
            if not piece:
                return (0, {}, data) if not data else _parse(data, sock)
            data += piece
        return _parse(data, sock)


def _parse(data: bytes, sock: socket.socket) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        try:
            piece = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not piece:
            break
        body += piece
    return status, headers, body


def assert_clean_refusal(status: int, headers: dict, body: bytes, request: bytes) -> None:
    assert status == 0 or 400 <= status < 500, (request[:200], status, body[:300])
    if status >= 400 and body:
        assert headers.get("content-type", "").startswith("application/json"), (request[:200], body[:300])
        assert b'"errors"' in body and b'"code"' in body


def files_outside(server) -> set[str]:
    parent = os.path.dirname(os.path.realpath(server.storage_root))
    return {os.path.join(d, f) for d, _, fs in os.walk(parent) for f in fs
            if not os.path.realpath(os.path.join(d, f)).startswith(os.path.realpath(server.storage_root))}


TRAVERSALS = [
    "/v2/../../../../tmp/evil/blobs/uploads/",
    "/v2/a/../../../../tmp/evil/blobs/uploads/",
    "/v2/%2e%2e/%2e%2e/%2e%2e/evil/blobs/uploads/",
    "/v2/%2E%2E%2F%2E%2E%2Fevil/blobs/uploads/",
    "/v2/a%2f..%2f..%2fevil/blobs/uploads/",
    "/v2/..%252f..%252fevil/blobs/uploads/",
    "/v2//tmp/evil/blobs/uploads/",
    "/v2/./evil/blobs/uploads/",
    "/v2/evil%00x/blobs/uploads/",
    "/v2/evil/blobs/uploads/..%2f..%2f..%2fx",
    "/v2/evil/blobs/uploads/../../../../x",
    "/v2/evil/manifests/..%2f..%2f..%2fescape",
    "/v2/evil/manifests/../../../escape",
    "/v2/evil/blobs/sha256:..%2f..%2f" + "a" * 58,
    "/v2/evil/blobs/uploads/%2e%2e",
    "/v2/" + "a" * 300 + "/blobs/uploads/",
    "/v2/" + "/".join(["a"] * 200) + "/blobs/uploads/",
    "/v2/\\..\\..\\evil/blobs/uploads/",
    "/v2/evil/tags/list?n=../../x&last=../../../y",
]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "GET", "DELETE"])
def test_path_tricks_are_refused_and_write_nothing_outside(server, method):
    before = files_outside(server)
    for path in TRAVERSALS:
        request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd"
        status, headers, body = raw(server, request.encode("latin-1"))
        assert status < 500, (path, status, body[:300])
        if status >= 400 and body:
            assert b'"errors"' in body, (path, body[:300])
    request = b"POST /v2/evil\x00x/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert_clean_refusal(*raw(server, request), request)
    assert files_outside(server) == before


def test_overlong_request_line_and_headers_are_refused(server):
    long_path = "/v2/" + "a" * 20_000 + "/blobs/uploads/"
    request = f"POST {long_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    status, _, _ = raw(server, request)
    assert status == 0 or 400 <= status < 500
    huge_header = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\nConnection: close\r\n\r\n"
    status, _, _ = raw(server, huge_header)
    assert status == 0 or 400 <= status < 500
    many = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(2000)) + b"\r\n"
    status, _, _ = raw(server, many)
    assert status == 0 or 400 <= status < 500
    assert httpx.get(f"{server.url}/v2/").status_code == 200


def _session(server) -> str:
    r = httpx.post(f"{server.url}/v2/hostile/app/blobs/uploads/")
    assert r.status_code == 202
    return r.headers["Location"]


def test_duplicate_and_conflicting_headers(server):
    data = b"0123456789"
    digest = sha256(data)
    cases = [
        # two different lengths: which body is it? Refuse.
        f"PUT {{loc}}?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nContent-Length: 5\r\n"
        f"Connection: close\r\n\r\n0123456789",
        # length and chunked together: the classic smuggling shape. Refuse.
        f"PUT {{loc}}?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n"
        f"Connection: close\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
        # two Content-Range headers that disagree.
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Range: 0-9\r\nContent-Range: 5-14\r\nContent-Length: 10\r\n"
        "Connection: close\r\n\r\n0123456789",
        # a negative and a non-numeric length.
        f"PUT {{loc}}?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: -10\r\n"
        f"Connection: close\r\n\r\n0123456789",
        f"PUT {{loc}}?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n"
        f"Connection: close\r\n\r\n0123456789",
        # an unknown transfer coding.
        f"PUT {{loc}}?digest={digest} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n"
        f"Connection: close\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
    ]
    for template in cases:
        location = _session(server)
        request = template.replace("{loc}", location).encode()
        status, headers, body = raw(server, request)
        assert_clean_refusal(status, headers, body, request)
    # Two Content-Type headers on a manifest: refused or read as one, never a 5xx.
    image = make_image("dup-ct")
    with httpx.Client(base_url=server.url) as client:
        for blob in image.blobs():
            client.post("/v2/hostile/app/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
    request = (b"PUT /v2/hostile/app/manifests/dup HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Type: text/plain\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(image.manifest)) + image.manifest
    status, _, body = raw(server, request)
    assert status in (201, 400, 415), body
    assert httpx.head(f"{server.url}/v2/hostile/app/blobs/{digest}").status_code == 404


def test_lying_content_length_and_truncated_bodies_store_nothing(server):
    data = os.urandom(100_000)
    digest = sha256(data)
    # Promises 100000 bytes, sends 1000, goes away.
    location = _session(server)
    request = (f"PUT {location}?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n"
               .encode() + data[:1000])
    raw(server, request, close_after_send=True)
    # Chunked body cut off before its last chunk.
    location2 = _session(server)
    request = (f"PUT {location2}?digest={digest} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               .encode() + b"%x\r\n" % 50_000 + data[:50_000] + b"\r\n")
    raw(server, request, close_after_send=True)
    # A monolithic POST that stops short.
    request = (f"POST /v2/hostile/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
               f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:7])
    raw(server, request, close_after_send=True)
    # Says 10 bytes, sends more: the rest is a second "request" that is garbage.
    small = b"0123456789"
    location3 = _session(server)
    request = (f"PUT {location3}?digest={sha256(small)} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
               .encode() + small + b"GARBAGE-THAT-IS-NOT-HTTP\r\n\r\n")
    status, _, _ = raw(server, request)
    assert status == 201  # the declared body was whole and right; the rest is refused on its own
    time.sleep(0.3)
    assert httpx.head(f"{server.url}/v2/hostile/app/blobs/{digest}").status_code == 404
    for loc in (location, location2):
        r = httpx.get(f"{server.url}{loc}")
        # The session may keep what arrived (a client can resume) but never became a blob.
        assert r.status_code in (204, 404)
    assert httpx.get(f"{server.url}/v2/").status_code == 200


header_values = st.one_of(
    st.sampled_from(["0-0", "0-", "-1", "1-0", "bytes=0-1", "bytes 0-1/2", "0-99999999999999999999",
                     "18446744073709551616-18446744073709551617", "0-9/*", "\u00e9-1", " 0 - 1 ", ",", "0-1,2-3"]),
    st.text(alphabet="0123456789-=/*, bytes", max_size=30),
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from(["PATCH", "PUT", "GET", "HEAD"]),
       name=st.sampled_from(["Content-Range", "Range", "Content-Length"]), value=header_values,
       body=st.binary(max_size=64))
def test_range_and_length_headers_fuzzed(server, fuzzed_blob, method, name, value, body):
    if method in ("GET", "HEAD"):
        path = f"/v2/hostile/fuzz/blobs/{fuzzed_blob}"
    else:
        path = _session(server) + (f"?digest={sha256(body)}" if method == "PUT" else "")
    headers = f"{name}: {value}\r\n" if name != "Content-Length" else ""
    length = value if name == "Content-Length" else str(len(body))
    request = (f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {length}\r\n"
               f"Connection: close\r\n\r\n").encode() + body
    status, headers_out, out = raw(server, request, timeout=2)  # a lying length leaves the server waiting
    assert status < 500, (request[:300], status, out[:300])


@pytest.fixture(scope="module")
def fuzzed_blob(server):
    data = os.urandom(1000)
    r = httpx.post(f"{server.url}/v2/hostile/fuzz/blobs/uploads/", params={"digest": sha256(data)}, content=data)
    assert r.status_code == 201
    return sha256(data)


def test_a_tls_hello_gets_a_plain_http_answer(server):
    """Clients told a registry is insecure try HTTPS first. Docker's CLI (`manifest inspect --insecure`)
    falls back to HTTP only when the answer is HTTP ("server gave HTTP response to HTTPS client"), so the
    plain port must answer a ClientHello at once, in HTTP, and close."""
    hello = bytes.fromhex("16030100a5010000a10303") + os.urandom(32) + b"\x00" * 40
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        started = time.monotonic()
        s.sendall(hello)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert b"plain HTTP" in answer and time.monotonic() - started < 2
    assert httpx.get(f"{server.url}/v2/", timeout=5).status_code == 200


@pytest.mark.parametrize("url", [b"%", b"xxxxxxxxxx", b"?a=1", b"http://x:port/", b"http://["])
def test_a_url_that_does_not_parse_gets_a_400_with_its_own_id(server, url):
    """A request line whose URL no request can have (no leading slash, a bad port): Sanic could not
    make even the stand-in request it answers errors with, so the client got no answer, and a
    traceback went to the log under the id of the request before it on the connection."""
    n = url.hex()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Request-ID: before-bad-url-" + n.encode() + b"\r\n\r\n")
        status, headers, _ = _parse(sock.recv(65536), sock)
        assert status == 200
        sock.sendall(b"GET " + url + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data and (piece := sock.recv(65536)):
            data += piece
        assert data, "no answer"
        status, headers, body = _parse(data, sock)
    assert_clean_refusal(status, headers, body, url)
    assert status == 400 and headers["docker-distribution-api-version"] == "registry/2.0"
    rid = headers["x-request-id"]
    deadline = time.monotonic() + 5
    while f'"request_id":"{rid}"' not in server.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert [(r["status"], r["remote"]) for r in lines
            if r["request_id"] == rid and r["message"] == "request"] == [(400, "127.0.0.1")]
    before = [r["message"] for r in lines if r["request_id"] == f"before-bad-url-{n}"]
    assert before == ["request"]  # its own access line, and nothing of the next request


def test_server_is_still_whole(server):
    image = make_image("after-hostile")
    with httpx.Client(base_url=server.url) as client:
        push_image(client, "hostile/after", image, "ok")
        assert client.get("/v2/hostile/after/manifests/ok",
                          headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).content == image.manifest
    log = server.log()
    assert "Traceback" not in log and '"status":500' not in log
