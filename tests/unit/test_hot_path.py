"""What the small-request path does cheaply must stay what it did: parse caches, the layout's paths, the
manifest bytes kept by digest (never served once deleted), Sanic's header bytes, the access line's
time stamp and redaction, the mmapped metrics, small blob bodies."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sanic import HTTPResponse

from adapters.filesystem.files import read_link, read_link_and_time, read_whole
from adapters.filesystem.layout import Layout
from domain import digest as digest_module
from domain import errors
from domain import names as names_module
from domain.digest import Digest
from domain.names import RepositoryName, Tag
from domain.usecases import get_manifest as get_manifest_module
from entrypoints.container import build_container
from entrypoints.http import logs, sendfile
from entrypoints.http.params import Response
from entrypoints.settings import Settings
from tests.support import OCI_MANIFEST, REPO_ROOT, make_image, sha256

D = "sha256:" + "ab" * 32


def test_parse_caches_give_the_same_values_and_still_refuse(monkeypatch):
    assert Digest.parse(D) == Digest.parse(D) == Digest("sha256", "ab" * 32)
    assert RepositoryName.parse("a/b") == RepositoryName.parse("a/b") == RepositoryName("a/b")
    assert Tag.parse("v1") == Tag.parse("v1") == Tag("v1")
    for bad, parse, error in [(D.upper(), Digest.parse, errors.DigestInvalid),
                              ("A/b", RepositoryName.parse, errors.NameInvalid),
                              (".v1", Tag.parse, errors.TagInvalid)]:
        for _ in range(2):  # refused every time: a refusal is never kept
            with pytest.raises(error):
                parse(bad)
    monkeypatch.setattr(digest_module, "PARSE_CACHE_SIZE", 10)
    monkeypatch.setattr(names_module, "PARSE_CACHE_SIZE", 10)
    for i in range(50):
        assert str(Digest.parse(f"sha256:{i:064x}")) == f"sha256:{i:064x}"
        assert str(RepositoryName.parse(f"r{i}")) == f"r{i}"
        assert str(Tag.parse(f"t{i}")) == f"t{i}"
    assert len(digest_module._parsed) <= 10 and len(names_module._names) <= 10 and len(names_module._tags) <= 10


def test_layout_paths_are_those_os_path_join_made(tmp_path):
    layout = Layout(str(tmp_path))
    repo, tag, digest = RepositoryName("a/b.c/d"), Tag("v1.0"), Digest.parse(D)
    v2 = os.path.join(str(tmp_path), "docker", "registry", "v2")
    base = os.path.join(v2, "repositories", "a", "b.c", "d")
    assert layout.repository(repo) == base
    assert layout.blob_data(digest) == os.path.join(v2, "blobs", "sha256", "ab", "ab" * 32, "data")
    assert layout.layer_link(repo, digest) == os.path.join(base, "_layers", "sha256", "ab" * 32, "link")
    assert layout.revision_link(repo, digest) == os.path.join(base, "_manifests", "revisions", "sha256", "ab" * 32,
                                                              "link")
    assert layout.tag_current_link(repo, tag) == os.path.join(base, "_manifests", "tags", "v1.0", "current", "link")
    assert layout.tags_dir(repo) == os.path.join(base, "_manifests", "tags")


def test_layout_still_refuses_a_path_out_of_the_root(tmp_path):
    layout = Layout(str(tmp_path))
    with pytest.raises(ValueError):  # values bypassing the parsers: the check still holds
        layout.blob_data(Digest("sha256", "../../../../../etc"))
    with pytest.raises(ValueError):
        layout.repository(RepositoryName("../../../x"))
    with pytest.raises(ValueError):
        layout.tag_current_link(RepositoryName("a"), Tag("../../../../../../x"))
    inside = layout.blob_data(Digest("sha256", "/etc/passwd"))  # an absolute part does not restart the path
    assert inside.startswith(layout.blobs_root + os.sep)


def test_small_file_reads(tmp_path):
    path = str(tmp_path / "link")
    assert read_link(path) is None and read_link_and_time(path) == (None, 0.0)
    with pytest.raises(FileNotFoundError):
        read_whole(path)
    with open(path, "w") as f:
        f.write(D + "\n")
    assert read_link(path) == Digest.parse(D)
    found, mtime = read_link_and_time(path)
    assert found == Digest.parse(D) and mtime == os.stat(path).st_mtime
    with open(path, "w") as f:
        f.write("not a digest")
    assert read_link(path) is None and read_link_and_time(path)[0] is None
    data = os.urandom(3 << 20)
    with open(path, "wb") as f:
        f.write(data)
    assert read_whole(path) == data
    with pytest.raises(NotADirectoryError):
        read_whole(os.path.join(path, "below"))


def _run(coro):
    return asyncio.run(coro)


async def _chunks(data: bytes):
    yield data


def _pushed(image_seed: str, tag: str = "latest"):
    uc = build_container(Settings(storage="memory"))
    repo = RepositoryName("team/app")
    image = make_image(image_seed)

    async def push():
        for blob in image.blobs():
            await uc.upload_blob()(repo, Digest.parse(sha256(blob)), _chunks(blob))
        await uc.put_manifest()(repo, Tag(tag), image.manifest, OCI_MANIFEST)
    _run(push())
    return uc, repo, image


def test_kept_manifest_bytes_are_never_served_once_deleted():
    uc, repo, image = _pushed("kept")
    get = uc.get_manifest()
    digest = Digest.parse(image.digest)
    for _ in range(2):  # read, then kept
        got = _run(get(repo, Tag("latest")))
        assert got.raw == image.manifest and got.media_type == OCI_MANIFEST and got.digest == digest
    assert digest.hex in get._kept
    # The bytes go (a collection, a disk emptied by hand): the kept copy is not served.
    _run(uc.adapters.blobs().delete(digest))
    with pytest.raises(errors.ManifestUnknown, match="content is gone"):
        _run(get(repo, digest))
    # The link goes: unknown, kept bytes or not.
    uc2, repo2, image2 = _pushed("kept2")
    get2 = uc2.get_manifest()
    digest2 = Digest.parse(image2.digest)
    _run(get2(repo2, digest2))
    _run(uc2.delete_manifest()(repo2, digest2))
    with pytest.raises(errors.ManifestUnknown):
        _run(get2(repo2, digest2))
    with pytest.raises(errors.ManifestUnknown):
        _run(get2(repo2, Tag("latest")))


def test_a_moved_tag_is_seen_at_once():
    uc, repo, first = _pushed("one")
    get = uc.get_manifest()
    assert _run(get(repo, Tag("latest"))).raw == first.manifest
    second = make_image("two")

    async def push_second():
        for blob in second.blobs():
            await uc.upload_blob()(repo, Digest.parse(sha256(blob)), _chunks(blob))
        await uc.put_manifest()(repo, Tag("latest"), second.manifest, OCI_MANIFEST)
    _run(push_second())
    assert _run(get(repo, Tag("latest"))).raw == second.manifest


def test_kept_manifest_bytes_are_bounded(monkeypatch):
    monkeypatch.setattr(get_manifest_module, "KEPT_BYTES", 3000)
    uc = build_container(Settings(storage="memory"))
    repo = RepositoryName("bounded")
    get = uc.get_manifest()

    async def push_and_get(i: int) -> None:
        image = make_image(f"b{i}")
        for blob in image.blobs():
            await uc.upload_blob()(repo, Digest.parse(sha256(blob)), _chunks(blob))
        await uc.put_manifest()(repo, Tag(f"t{i}"), image.manifest, OCI_MANIFEST)
        assert (await get(repo, Tag(f"t{i}"))).raw == image.manifest
    for i in range(20):
        _run(push_and_get(i))
        assert get._kept_bytes == sum(len(raw) for raw, _ in get._kept.values()) <= 3000


@pytest.mark.parametrize("status", [200, 201, 204, 206, 304, 404, 500])
def test_response_headers_are_the_bytes_sanic_makes(status):
    cases = [{"Docker-Content-Digest": D, "ETag": f'"{D}"', "Content-Length": "12"},
             {"X-Evil": "a\r\nSet-Cookie: x=1", "Bad\r\nName": "v", "Nul": "a\x00b", "Number": 5}, {}]
    for headers in cases:
        ours = Response(b"body", status=status, headers=dict(headers), content_type="application/json")
        sanic = HTTPResponse(b"body", status=status, headers=dict(headers), content_type="application/json")
        assert list(ours.processed_headers) == list(sanic.processed_headers)
        assert ours.headers == sanic.headers
    bad = Response(status=200, headers={"X": "a\r\nb"}, content_type="text/plain")
    assert (b"X", b"ab") in bad.processed_headers


@given(st.dictionaries(st.text(st.characters(max_codepoint=127), min_size=1, max_size=12),
                       st.text(st.characters(blacklist_categories=("Cs",)), max_size=20), max_size=6))
def test_any_header_value_is_encoded_as_sanic_encodes_it(headers):
    """Whatever a value holds (controls, CR, LF, NUL, tabs, non-ASCII), the shortcut sends Sanic's bytes."""
    ours = Response(b"", status=200, headers=dict(headers), content_type="text/plain")
    sanic = HTTPResponse(b"", status=200, headers=dict(headers), content_type="text/plain")
    assert list(ours.processed_headers) == list(sanic.processed_headers)


def test_every_answer_of_ours_carries_the_request_id_and_api_version_once():
    response = Response(b"{}", status=200, headers={"Content-Length": "2"}, content_type="application/json")
    assert all(name not in (b"X-Request-ID", b"Docker-Distribution-API-Version")
               for name, _ in response.processed_headers)
    response.request_id = "abc"
    pairs = list(response.processed_headers)
    assert pairs.count((b"X-Request-ID", b"abc")) == 1
    assert pairs.count((b"Docker-Distribution-API-Version", b"registry/2.0")) == 1


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_timestamp_is_strftime_with_milliseconds(epoch):
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
    assert logs.timestamp(epoch) == expected


def test_request_ids_are_32_hex_and_distinct():
    ids = [logs.new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize("text", [
    f"Authorization: Bearer {JWT}", "Authorization: Basic YWxpY2U6aHVudGVyMg==",
    "{'authorization': 'Basic YWxpY2U6aHVudGVyMg=='}", f"token {JWT} in a message",
    "bearer abcdefghijklmnopqrstuvwxyz0123",
])
def test_redact_hides_tokens_and_authorization_values(text):
    out = logs.redact(text)
    for secret in (JWT, "YWxpY2U6aHVudGVyMg==", "abcdefghijklmnopqrstuvwxyz0123"):
        assert secret not in out
    assert "[redacted]" in out


@given(st.text(st.sampled_from("eyJjEYbBeEaArRuUtThHoOiIzZnN x/%-"), max_size=40))
def test_the_cheap_secret_test_misses_nothing_the_pattern_finds(text):
    if logs._MAY_HOLD_SECRET.search(text):
        assert logs._may_hold_secret(text)


def test_redact_leaves_ordinary_text_alone():
    for text in ("send Basic credentials (user:password), or none for an anonymous token",
                 "GET /v2/app/manifests/latest failed: storage failed while reading", "bearer tokens expire"):
        assert logs.redact(text) == text


def test_redact_query_hides_credential_parameters_only():
    query = (f"mount={D}&from=a/b&password=hunter2&access_token={JWT}&refresh_token=r1&client_secret=s3"
             "&api_key=k4&scope=repository:a:pull&service=registry&n=10&last=x&digest=" + D)
    out = logs.redact_query(query)
    for secret in ("hunter2", JWT, "r1", "s3", "k4"):
        assert secret not in out
    for kept in (f"mount={D}", "from=a/b", "scope=repository:a:pull", "service=registry", "n=10", "last=x",
                 f"digest={D}"):
        assert kept in out


def test_mmapped_metrics_add_up_as_prometheus_client_counts():
    """In multiprocess mode (a fresh process: the mode is process-wide), requests recorded through the
    direct mmapped writes read back exactly, across the file growing and in a forked child."""
    script = textwrap.dedent("""
        import os, re, sys
        from entrypoints.http import metrics
        path = metrics.use_multiprocess_dir()
        m = metrics._metrics()
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess as mp

        def scrape():
            metrics.publish()
            registry = CollectorRegistry()
            mp.MultiProcessCollector(registry, path)
            return generate_latest(registry).decode()

        def total(name, text):
            return sum(float(v) for v in re.findall(name + r"\\{[^}]*\\} (\\S+)", text))

        records = [m.series_for(f"r{i % 12}", "GET", 200 + i) for i in range(600)]  # the files grow
        assert "mmapped" in records[0].__qualname__, records[0].__qualname__
        for k, record in enumerate(records):
            record(0.003, k, 7)
        for record in records[:10]:
            record(100.0, 0, 0)
        text = scrape()
        assert total("registry_http_requests_total", text) == 610
        assert total("registry_http_response_bytes_total", text) == sum(range(600))
        assert total("registry_http_request_bytes_total", text) == 600 * 7
        bucket = 'registry_http_request_duration_seconds_bucket{le="%s",method="GET",route="r0"} (\\\\S+)'
        assert re.findall(bucket % re.escape("0.005"), text) == ["50.0"]
        assert re.findall(bucket % re.escape("+Inf"), text) == ["51.0"]
        series = r'registry_http_requests_total\\{method="GET",route="r0",status="200"\\} (\\S+)'
        pid = os.fork()
        if pid == 0:  # as observe() finds it
            record = m.series.get(("r0", "GET", 200)) or m.series_for("r0", "GET", 200)
            record(0.001, 0, 0)
            record(0.001, 0, 0)
            os._exit(0 if re.findall(series, scrape()) == ["4.0"] else 1)
        assert os.waitpid(pid, 0)[1] == 0, "the forked child's requests did not add up"
        record = m.series.get(("r0", "GET", 200)) or m.series_for("r0", "GET", 200)
        record(0.001, 0, 0)  # the parent goes on with its own file: nothing of the child's is lost
        assert re.findall(series, scrape()) == ["5.0"], re.findall(series, scrape())
        print("ok")
    """)
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO_ROOT, "src")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


class _Region:
    def __init__(self, region):
        self.file_region = region


def test_small_bodies_are_read_whole_and_large_ones_left_to_sendfile(tmp_path):
    path = str(tmp_path / "data")
    data = bytes(random.Random(1).randrange(256) for _ in range(sendfile.SMALL_BODY + 10))
    with open(path, "wb") as f:
        f.write(data)
    assert sendfile.small_body(_Region((path, 0, 4096))) == data[:4096]
    assert sendfile.small_body(_Region((path, 100, 50))) == data[100:150]
    assert sendfile.small_body(_Region((path, 0, 0))) == b""
    assert sendfile.small_body(_Region((path, 0, sendfile.SMALL_BODY + 10))) is None  # sendfile's
    assert sendfile.small_body(_Region((path, len(data) - 5, 10))) is None  # shorter than said: the stream's way
    assert sendfile.small_body(_Region((str(tmp_path / "gone"), 0, 10))) is None
    assert sendfile.small_body(object()) is None


class _Request:
    """What logs.finish reads of a Sanic request (protocol.RegistryRequest's slots included)."""

    def __init__(self, rid: str, status_path: str = "/v2/") -> None:
        self.request_id, self.user, self.login_failed = rid, None, None
        self.streaming = self.logged = self.metrics_upload = False
        self.app = SimpleNamespace(ctx=SimpleNamespace(logs_proxied=False))
        self.method, self.path, self.ip, self.remote_addr, self.query_string = "GET", status_path, "127.0.0.1", "", ""
        self.transport = self.route = None
        self.headers: dict[str, str] = {}


def test_access_lines_of_one_loop_turn_are_written_together_and_in_order(tmp_path, monkeypatch):
    """The first request answered in a turn of the event loop is written at once; the others of that
    turn at its end; another log line first writes the waiting ones; none is written twice."""
    out = open(tmp_path / "log", "w")
    monkeypatch.setattr(sys, "stdout", out)
    handler = logs._OrderedHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("myregistry.test-order")
    logger.addHandler(handler)
    logger.propagate = False
    monkeypatch.setattr(logs.access, "level", logging.INFO)

    def ids() -> list[str]:
        return [orjson.loads(line).get("request_id") for line in (tmp_path / "log").read_text().splitlines()]

    async def turns() -> None:
        logs.finish(_Request("a"), 200, 0)
        assert ids() == ["a"]  # at once: its line is there before its answer leaves
        logs.finish(_Request("b"), 404, 0)
        c = _Request("c")
        logs.finish(c, 200, 10)
        logs.finish(c, 499, 10)  # a second finish of the same request is ignored
        assert ids() == ["a"]
        logger.warning("something")  # written after the access lines made before it
        assert ids() == ["a", "b", "c", "-"]
        logs.finish(_Request("d"), 200, 0)
        assert ids() == ["a", "b", "c", "-"]
        await asyncio.sleep(0)  # the end of the turn
        assert ids() == ["a", "b", "c", "-", "d"]
        logs.finish(_Request("e"), 200, 0)  # a new turn: at once again
        assert ids()[-1] == "e"

    try:
        _run(turns())
    finally:
        logger.removeHandler(handler)
        out.close()


@given(path=st.text(max_size=60), user=st.none() | st.text(max_size=20), status=st.integers(100, 599),
       nbytes=st.none() | st.integers(0, 1 << 40), elapsed=st.floats(0, 1e5),
       epoch=st.floats(1e9, 4e9), rid=st.from_regex(r"[A-Za-z0-9._:@/+=-]{1,40}", fullmatch=True),
       method=st.sampled_from(["GET", "HEAD", "PUT", "PATCH"]))
def test_the_access_line_template_says_what_the_general_line_says(path, user, status, nbytes, elapsed, epoch,
                                                                   rid, method):
    request = _Request(rid, path)
    request.method, request.user = method, user
    fast = logs._access_line(request, status, nbytes, elapsed, epoch)
    general = logs._access_line_of_any(request, status, nbytes, elapsed, epoch, False)
    assert fast.endswith(b"\n") and fast.count(b"\n") == 1
    assert orjson.loads(fast) == orjson.loads(general)


@given(piece=st.text(min_size=1, max_size=16), times=st.integers(300, 8000), user=st.none() | st.text(max_size=300))
def test_every_access_line_fits_one_atomic_pipe_write(piece, times, user, tmp_path_factory):
    """However long and however escaped a client's path (Sanic takes up to 8 KB), each line is written
    in one write of at most PIPE_BUF bytes, so workers sharing a pipe never interleave their lines."""
    path = (piece * times)[:8000]
    out_dir = tmp_path_factory.mktemp("fit")
    request = _Request("fit", path)
    request.user = user
    request.query_string = "n=" + "x" * 600
    with open(out_dir / "log", "wb") as out:
        written: list[int] = []
        real_write = os.write

        def counting_write(fd: int, data: bytes) -> int:
            written.append(len(data))
            return real_write(fd, data)

        original_stdout, sys.stdout = sys.stdout, out
        original_write, os.write = os.write, counting_write
        original_level = logs.access.level
        logs.access.setLevel(logging.INFO)
        try:
            logs._write(((request, 200, 10, 0.001, 1.7e9),))
        finally:
            sys.stdout, os.write = original_stdout, original_write
            logs.access.setLevel(original_level)
    line = orjson.loads((out_dir / "log").read_bytes())
    assert written and max(written) <= 4096
    assert line["status"] == 200 and path.startswith(line["path"])
    assert line.get("truncated", False) is (len(logs._access_line(request, 200, 10, 0.001, 1.7e9)) > 4096)


def test_a_request_finished_after_its_event_loop_stopped_or_closed_is_logged_at_once(tmp_path, monkeypatch):
    """The loop comes from the request's protocol (cheaper than asking asyncio); a request finished
    when that loop no longer runs (a handler closed after its worker's loop stopped) has no end of turn
    to wait for: its line is written at once, never lost to an error or left waiting."""
    out = open(tmp_path / "log", "w")
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(logs.access, "level", logging.INFO)
    monkeypatch.setattr(logs, "_turn_loop", None)

    def finished(rid: str, loop: asyncio.AbstractEventLoop) -> None:
        request = _Request(rid)
        request.stream = SimpleNamespace(protocol=SimpleNamespace(_arrived=None, loop=loop))
        logs.finish(request, 499, 0)

    stopped = asyncio.new_event_loop()
    closed = asyncio.new_event_loop()
    closed.close()
    try:
        finished("stopped-1", stopped)
        finished("stopped-2", stopped)
        finished("closed", closed)
    finally:
        stopped.close()
        out.close()
    ids = [orjson.loads(line)["request_id"] for line in (tmp_path / "log").read_text().splitlines()]
    assert ids == ["stopped-1", "stopped-2", "closed"]
