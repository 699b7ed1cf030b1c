"""Chunked request bodies ending with a trailer section (RFC 9112 7.1.2: `0\\r\\nX-Checksum: abc\\r\\n\\r\\n`),
written byte by byte on a raw socket: accepted on every upload route, the trailer fields dropped, the
whole section consumed (a request pipelined after it is answered as its own request); and a malformed
chunked body refused with the OCI error, leaving the upload session as it was (issue 9, defect 13)."""

from __future__ import annotations

import hashlib
import socket

import httpx
import pytest

from tests.support import OCI_MANIFEST, make_image, sha256, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trailers")
    server = start_server(str(tmp / "data"), str(tmp / "log"))
    yield server
    server.stop()
    assert "Traceback" not in server.log()


class Connection:
    """One keep-alive connection: send raw bytes, read whole responses one after another."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.pending = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except ConnectionResetError:
            return b""

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: (status, lower-cased headers, body); status 0 when the server closed."""
        while b"\r\n\r\n" not in self.pending:
            piece = self._more()
            if not piece:
                return 0, {}, self.pending
            self.pending += piece
        head, _, rest = self.pending.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            piece = self._more()
            if not piece:
                break
            rest += piece
        self.pending = rest[length:]
        return int(lines[0].split()[1]), headers, rest[:length]

    def closed(self) -> bool:
        """True when the server closed the connection (nothing more to read)."""
        return not self.pending and self._more() == b""


def chunked(*pieces: bytes, trailer: bytes = b"X-Checksum: abc\r\nX-Other: 1\r\n") -> bytes:
    """A chunked body: each piece as a chunk (with a chunk extension on the first), the last chunk,
    `trailer` (field lines), the empty line."""
    out = b""
    for i, piece in enumerate(pieces):
        extension = b";name=value" if i == 0 else b""
        out += b"%x%s\r\n%s\r\n" % (len(piece), extension, piece)
    return out + b"0\r\n" + trailer + b"\r\n"


def request(method: str, target: str, body: bytes, content_type: str = "application/octet-stream") -> bytes:
    return (f"{method} {target} HTTP/1.1\r\nHost: registry\r\nContent-Type: {content_type}\r\n"
            f"Transfer-Encoding: chunked\r\nTrailer: X-Checksum, X-Other\r\n\r\n").encode() + body


LIVE = b"GET /health/live HTTP/1.1\r\nHost: registry\r\n\r\n"


def new_session(server, repo: str) -> str:
    r = httpx.post(f"{server.url}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    return r.headers["Location"]


def session_size(server, location: str) -> int:
    r = httpx.get(f"{server.url}{location}")
    assert r.status_code == 204, r.text
    return int(r.headers["Range"].split("-")[1]) + 1


def test_sanic_internals_the_protocol_relies_on_are_there():
    """protocol.py reads request bodies with Sanic's internals; after a Sanic upgrade that changed them,
    this says what is gone (and the tests below say what broke)."""
    from entrypoints.http.protocol import RegistryHttp, RegistryHttpProtocol, sanic_internals_missing

    assert sanic_internals_missing() == []
    assert RegistryHttpProtocol.HTTP_CLASS is RegistryHttp


def test_patch_with_a_trailer_is_accepted_and_the_next_request_is_its_own(server):
    location = new_session(server, "trailers/patch")
    with Connection(server.port) as conn:
        # The PATCH and a pipelined GET in one write: the trailer must be consumed, not read as a request.
        conn.send(request("PATCH", location, chunked(b"hello", b" chunked", b" world")) + LIVE)
        status, headers, body = conn.response()
        assert status == 202, body
        assert headers["range"] == "0-18"
        status, _, body = conn.response()
        assert (status, body) == (200, b'{"status":"ok"}')
    assert session_size(server, location) == 19


def test_expect_100_continue_then_a_chunked_body_with_a_trailer(server):
    """What curl sends for `curl -T - -H 'Trailer: ...'`: headers with Expect: 100-continue, then the
    body once the server says to go on."""
    location = new_session(server, "trailers/continue")
    with Connection(server.port) as conn:
        head, body = request("PATCH", location, chunked(b"after the go-ahead")).split(b"\r\n\r\n", 1)
        conn.send(head + b"\r\nExpect: 100-continue\r\n\r\n")
        status, _, _ = conn.response()
        assert status == 100
        conn.send(body)
        status, headers, body = conn.response()
        assert status == 202, body
        assert headers["range"] == "0-17"


def test_put_with_a_last_chunk_and_a_trailer_commits_the_right_bytes(server):
    repo = "trailers/put"
    location = new_session(server, repo)
    head, tail = b"A" * 70_000, hashlib.shake_256(b"tail").digest(100_000)
    assert httpx.patch(f"{server.url}{location}", content=head).status_code == 202
    digest = sha256(head + tail)
    with Connection(server.port) as conn:
        conn.send(request("PUT", f"{location}?digest={digest}", chunked(tail[:33_333], tail[33_333:])))
        status, headers, body = conn.response()
        assert status == 201, body
        assert headers["docker-content-digest"] == digest
    served = httpx.get(f"{server.url}/v2/{repo}/blobs/{digest}").content
    assert sha256(served) == digest and len(served) == 170_000


def test_monolithic_post_with_a_trailer(server):
    repo = "trailers/post"
    blob = hashlib.shake_256(b"post").digest(50_000)
    with Connection(server.port) as conn:
        conn.send(request("POST", f"/v2/{repo}/blobs/uploads/?digest={sha256(blob)}", chunked(blob[:1], blob[1:]))
                  + LIVE)
        status, _, body = conn.response()
        assert status == 201, body
        assert conn.response()[0] == 200
    assert httpx.get(f"{server.url}/v2/{repo}/blobs/{sha256(blob)}").content == blob


def test_manifest_put_with_a_trailer(server):
    """A route that is not streamed reads its body through the same code."""
    repo, image = "trailers/manifest", make_image("trailers")
    for blob in image.blobs():
        assert httpx.post(f"{server.url}/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)},
                          content=blob).status_code == 201
    with Connection(server.port) as conn:
        conn.send(request("PUT", f"/v2/{repo}/manifests/v1", chunked(image.manifest), OCI_MANIFEST))
        status, headers, body = conn.response()
        assert status == 201, body
        assert headers["docker-content-digest"] == image.digest
    assert httpx.get(f"{server.url}/v2/{repo}/manifests/v1", headers={"Accept": OCI_MANIFEST}).content == image.manifest


# Each bad body starts with a chunk larger than the piece the use-case hands to storage at once (1 MiB),
# so bytes reach the session before the error: the append must still leave nothing.
BIG = b"\xab" * (3 << 19)
BIG_CHUNK = b"%x\r\n%s\r\n" % (len(BIG), BIG)
MALFORMED = {
    "bad hex size": BIG_CHUNK + b"5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
    "negative size": BIG_CHUNK + b"-4\r\nmore\r\n0\r\n\r\n",
    "no CRLF after a chunk's data": BIG_CHUNK + b"5\r\nhelloXY5\r\nworld\r\n0\r\n\r\n",
    "trailer line without a colon": BIG_CHUNK + b"0\r\nnot a field\r\n\r\n",
    "trailer line folded": BIG_CHUNK + b"0\r\nX-A: 1\r\n folded\r\n\r\n",
    "trailer section over the header limit": BIG_CHUNK + b"0\r\n" + b"X-Big: 1\r\n" * 2000 + b"\r\n",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_chunked_body_is_refused_and_the_session_keeps_its_size(server, case):
    location = new_session(server, "trailers/bad")
    assert httpx.patch(f"{server.url}{location}", content=b"0123456789").status_code == 202
    with Connection(server.port) as conn:
        conn.send(request("PATCH", location, MALFORMED[case]) + LIVE)
        status, headers, body = conn.response()
        assert status == 400, (case, status, body)
        assert headers["content-type"].startswith("application/json")
        assert httpx.Response(400, content=body).json()["errors"][0]["code"]
        # The stream after a bad chunk cannot be framed: the pipelined request is not answered as one.
        assert conn.closed(), case
    assert session_size(server, location) == 10, case
