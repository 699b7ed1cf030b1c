"""Races of issue 9 over HTTP, on the filesystem store, with real concurrency: raw sockets holding a request
inside an upload session, threads, servers with 1 and 2 workers, and a collection held still in its mark
by a named pipe in place of a manifest's bytes (so "during the mark" is a fact, not a timing bet).

Every loop is bounded in rounds and time. What each test asserts is the invariant a client relies on:
the bytes served under a digest hash to it; an acknowledged write is whole after any collection; a tag
never names a manifest that is gone; a deleted repository leaves nothing behind."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import pytest

from tests.race_support import (
    FifoBlob,
    HeldRequest,
    Tree,
    backdate,
    backdate_tree,
    cli_background,
    run_gc,
)
from tests.support import OCI_INDEX, OCI_MANIFEST, Image, make_image, make_index, push_image, sha256, start_server

OLD = 7200  # seconds: past every grace period the tests use


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory):
    """One process: two requests on the same session share an event loop; a collection blocked in its
    mark must not block the answers. Idle uploads expire after a minute (tests backdate them)."""
    base = tmp_path_factory.mktemp("races-1")
    server = start_server(str(base / "data"), str(base / "server.log"), REGISTRY_GC_GRACE_SECONDS="0",
                          REGISTRY_UPLOAD_MAX_IDLE_SECONDS="60")
    server.workers = 1
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two processes: requests on the same session or repository may land in different workers. Idle
    uploads expire after a minute here too."""
    base = tmp_path_factory.mktemp("races-2")
    server = start_server(str(base / "data"), str(base / "server.log"), REGISTRY_WORKERS="2",
                          REGISTRY_GC_GRACE_SECONDS="0", REGISTRY_UPLOAD_MAX_IDLE_SECONDS="60")
    server.workers = 2
    yield server
    server.stop()


@pytest.fixture(params=["one_worker", "two_workers"])
def either(request):
    return request.getfixturevalue(request.param)


def start_session(client: httpx.Client, repo: str, first: bytes) -> str:
    location = client.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
    r = client.patch(location, content=first, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202, r.text
    return r.headers["Location"]


def assert_served_whole(client: httpx.Client, repo: str, digest: str, expected: bytes | None = None) -> None:
    r = client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 200, f"{repo}@{digest}: {r.status_code} {r.text[:200]}"
    assert sha256(r.content) == digest, (
        f"{repo}@{digest} is served as {len(r.content)} bytes hashing to {sha256(r.content)}")
    if expected is not None:
        assert r.content == expected


def assert_image_whole(client: httpx.Client, repo: str, image: Image) -> None:
    r = client.get(f"/v2/{repo}/manifests/{image.digest}")
    assert r.status_code == 200 and r.content == image.manifest, (repo, image.digest, r.status_code)
    for blob in image.blobs():
        assert_served_whole(client, repo, sha256(blob), blob)


def refused_as_busy(response) -> bool:
    status = getattr(response, "status", None) or getattr(response, "status_code", None)
    if status != 416:
        return False
    body = response.body if hasattr(response, "body") else response.content
    return b"BLOB_UPLOAD_INVALID" in body


# -- 1. one upload session, two requests ------------------------------------------------------------------

def test_commit_while_another_request_appends_never_poisons_the_blob(either):
    """Issue 9 #1. A PATCH is inside the session (its 100 Continue came) with its 1000 bytes held; a PUT
    ?digest=<4096 bytes> arrives. One of the two is refused with 416 BLOB_UPLOAD_INVALID; whatever was
    stored under a digest hashes to it; an honest push of the same bytes elsewhere serves them. With two
    workers the rounds put the two requests in different processes too."""
    rounds = 4 if either.workers > 1 else 1
    with httpx.Client(base_url=either.url, timeout=30) as client:
        for i in range(rounds):
            repo = f"poison/r{i}"
            good, extra = os.urandom(4096), os.urandom(1000)
            digest = sha256(good)
            location = start_session(client, repo, good)
            held = HeldRequest(either.port, "PATCH", location, len(extra))
            assert held.entered, f"the first request on a free session was refused: {held.final}"
            put = client.put(location, params={"digest": digest})
            patch = held.finish(extra)
            if put.status_code == 201:
                assert_served_whole(client, repo, digest, good)
            if patch.status == 202:
                status = client.get(location)
                assert status.status_code == 204 and status.headers.get("Range") == "0-5095", (
                    status.status_code, status.headers)
                both = good + extra
                done = client.put(location, params={"digest": sha256(both)})
                assert done.status_code == 201, done.text
                assert_served_whole(client, repo, sha256(both), both)
            # The same bytes pushed honestly to another repository are served as they are.
            r = client.post(f"/v2/poison/honest{i}/blobs/uploads/", params={"digest": digest}, content=good)
            assert r.status_code == 201, r.text
            assert_served_whole(client, f"poison/honest{i}", digest, good)
            assert [refused_as_busy(put), refused_as_busy(patch)].count(True) == 1, (
                f"round {i}: PUT {put.status_code} {put.text[:200]}, held PATCH {patch}: exactly one of two "
                "requests using the session at once must get 416 BLOB_UPLOAD_INVALID")


def test_two_patches_on_one_session_never_mix_bytes(either):
    """Issue 9 #1 (append + append). Two PATCHes both asking to enter the same session: the second is
    refused (416) and the session holds the first one's bytes after the 4096 it had, nothing else."""
    with httpx.Client(base_url=either.url, timeout=30) as client:
        for i in range(3):
            repo = f"mix/r{i}"
            first, a, b = os.urandom(4096), os.urandom(1000), os.urandom(700)
            location = start_session(client, repo, first)
            held_a = HeldRequest(either.port, "PATCH", location, len(a))
            assert held_a.entered, held_a.final
            held_b = HeldRequest(either.port, "PATCH", location, len(b))
            rb = held_b.finish(b)
            ra = held_a.finish(a)
            status = client.get(location)
            assert status.status_code == 204, status.text
            size = int(status.headers["Range"].split("-")[1]) + 1
            accepted = [body for body, r in ((a, ra), (b, rb)) if r.status == 202]
            assert size in (len(first) + len(a), len(first) + len(b)), (
                f"round {i}: the session holds {size} bytes after PATCHes answered {ra.status} and {rb.status}: "
                "two appends were mixed")
            assert len(accepted) == 1 and refused_as_busy(rb if ra.status == 202 else ra), (ra, rb)
            content = first + accepted[0]
            assert size == len(content)
            done = client.put(location, params={"digest": sha256(content)})
            assert done.status_code == 201, f"round {i}: the session does not hold 4096 + one PATCH: {done.text}"
            assert_served_whole(client, repo, sha256(content), content)


def test_cancel_while_a_patch_is_inside_is_refused(either):
    """Issue 9 #1 (DELETE): cancelling a session another request is using gets 416 and changes nothing;
    the PATCH's bytes land and the session completes."""
    with httpx.Client(base_url=either.url, timeout=30) as client:
        first, more = os.urandom(4096), os.urandom(1000)
        location = start_session(client, "busy/cancel", first)
        held = HeldRequest(either.port, "PATCH", location, len(more))
        assert held.entered, held.final
        cancel = client.delete(location)
        patch = held.finish(more)
        assert refused_as_busy(cancel), (cancel.status_code, cancel.text)
        assert patch.status == 202, patch
        done = client.put(location, params={"digest": sha256(first + more)})
        assert done.status_code == 201, done.text
        assert_served_whole(client, "busy/cancel", sha256(first + more), first + more)


def test_a_client_hanging_up_midway_leaves_the_session_as_it_was_and_free(either):
    """Issue 9 (all-or-nothing appends): a PATCH whose client hangs up after half its body leaves the
    session at its size before that request, and frees it: the next PATCH is taken (a 416 "in use" is
    only allowed until the server has seen the hang-up, bounded at 10 s)."""
    with httpx.Client(base_url=either.url, timeout=30) as client:
        # Over a MiB: the registry hands bodies to storage in pieces of about that size.
        first, half, more = os.urandom(4096), os.urandom(3 << 19), os.urandom(300)
        location = start_session(client, "busy/hangup", first)
        held = HeldRequest(either.port, "PATCH", location, 3 << 20)
        assert held.entered, held.final
        held.sock.sendall(half)
        # No signal tells that the server has stored the half; a pause lets it, so that a registry
        # keeping partial bytes is caught. What a fixed registry must do does not depend on it.
        time.sleep(0.3)
        held.close()
        deadline = time.monotonic() + 10
        while True:
            r = client.patch(location, content=more, headers={"Content-Type": "application/octet-stream"})
            if not (refused_as_busy(r) and b"in use" in r.content) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 202, f"the session stays busy after its client hung up: {r.status_code} {r.text}"
        assert r.headers["Range"] == f"0-{len(first) + len(more) - 1}", (
            f"the hung-up request left bytes in the session: {r.headers['Range']}")
        done = client.put(location, params={"digest": sha256(first + more)})
        assert done.status_code == 201, done.text


def test_an_honest_push_replaces_a_poisoned_copy(one_worker):
    """Issue 9 #1, the second half: a blob file whose size does not match what is committed under its
    digest (as the race left it) is replaced by the next honest push, which is then served."""
    good = os.urandom(4096)
    digest = sha256(good)
    tree = Tree(one_worker.storage_root)
    with httpx.Client(base_url=one_worker.url, timeout=30) as client:
        r = client.post("/v2/poisoned/one/blobs/uploads/", params={"digest": digest}, content=good)
        assert r.status_code == 201
        with open(tree.blob_data(digest), "ab") as f:
            f.write(os.urandom(1000))
        for how in ("post", "session"):
            repo = f"poisoned/{how}"
            if how == "post":
                r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, content=good)
            else:
                location = start_session(client, repo, good)
                r = client.put(location, params={"digest": digest})
            assert r.status_code == 201, r.text
            assert_served_whole(client, repo, digest, good)
            with open(tree.blob_data(digest), "ab") as f:
                f.write(os.urandom(1000))


# -- 2, 3. a collection held in its mark while a push is acknowledged ------------------------------------

def push_blobs_only(client: httpx.Client, repo: str, image: Image) -> None:
    for blob in image.blobs():
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(blob)}, content=blob)
        assert r.status_code == 201, r.text


def hook_after(client: httpx.Client, root: str, repo: str) -> FifoBlob:
    """A tagged image in `repo` whose manifest bytes become a named pipe: the mark blocks on reading it
    (repositories are marked in name order; `repo` is named to come last) until the test releases it."""
    image = make_image(f"hook-{repo}", layers=1, layer_size=64)
    push_image(client, repo, image, "keep")
    return FifoBlob(Tree(root).blob_data(image.digest), image.manifest)


def age_repository(root: str, repo: str, image: Image | None) -> None:
    """As if nobody had touched the repository (and the image's blobs) for two hours."""
    tree = Tree(root)
    backdate_tree(OLD, tree.repository(repo))
    if image is not None:
        backdate(OLD, *(tree.blob_data(sha256(b)) for b in [image.manifest, *image.blobs()]))


class Collection:
    """A collection running beside the test: over the CLI (its own process) or over HTTP (a thread)."""

    def __init__(self, server, how: str, *args: str) -> None:
        self.how, self.report, self.error = how, None, None
        if how == "cli":
            self.process = cli_background("gc", "--grace", "60", "--json", *args,
                                          STORAGE_ROOT=server.storage_root)
        else:
            params = {"delete_untagged": "true"} if "--delete-untagged" in args else {}

            def run() -> None:
                try:
                    with httpx.Client(base_url=server.url, timeout=120) as c:
                        self.report = run_gc(c, **params)
                except Exception as e:  # reported by finish()
                    self.error = e
            self.thread = threading.Thread(target=run, daemon=True)
            self.thread.start()

    def alive(self) -> bool:
        return self.process.poll() is None if self.how == "cli" else self.thread.is_alive()

    def finish(self) -> None:
        if self.how == "cli":
            out, err = self.process.communicate(timeout=60)
            assert self.process.returncode == 0, err[-2000:]
        else:
            self.thread.join(60)
            assert not self.thread.is_alive(), "the collection did not finish"
            assert self.error is None, self.error


def during_mark(server, fifo: FifoBlob, how: str, *args: str):
    collection = Collection(server, how, *args)
    assert fifo.wait_for_reader(30), "the collection never reached the held manifest"
    assert collection.alive()
    return collection


@pytest.mark.parametrize("how", ["cli", "http"])
def test_index_pushed_during_delete_untagged_keeps_its_children_whole(one_worker, how):
    """Issue 9 #2. Untagged manifests unused for two hours: an image, and an index listing a second image;
    a delete_untagged collection is held in its mark after it passed their repository; an index tagged
    `latest` listing the image and the nested index is pushed (201). Afterwards everything it reaches,
    transitively, is served: both indexes, both images, their configs and layers. Over HTTP with one
    worker, the push must also be answered while the collection is blocked (issue 9 #5)."""
    server = one_worker
    with httpx.Client(base_url=server.url, timeout=30) as client:
        repo = f"a-{how}/index"
        direct = make_image(f"child-{how}", layers=2, layer_size=2048)
        nested = make_image(f"grandchild-{how}", layers=2, layer_size=2048, arch="arm64")
        push_image(client, repo, direct)
        push_image(client, repo, nested)
        middle = make_index([(nested, "arm64")])
        r = client.put(f"/v2/{repo}/manifests/{sha256(middle)}", content=middle, headers={"Content-Type": OCI_INDEX})
        assert r.status_code == 201, r.text
        age_repository(server.storage_root, repo, direct)
        age_repository(server.storage_root, repo, nested)
        backdate(OLD, Tree(server.storage_root).blob_data(sha256(middle)))
        top = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": direct.digest, "size": len(direct.manifest),
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": OCI_INDEX, "digest": sha256(middle), "size": len(middle)}]}).encode()
        fifo = hook_after(client, server.storage_root, f"z-{how}/hook2")
        try:
            collection = during_mark(server, fifo, how, "--delete-untagged")
            try:
                r = client.put(f"/v2/{repo}/manifests/latest", content=top, headers={"Content-Type": OCI_INDEX},
                               timeout=10)
            finally:
                fifo.release()
            assert r.status_code == 201, r.text
            collection.finish()
        finally:
            fifo.restore()
        assert client.get(f"/v2/{repo}/manifests/latest").content == top
        assert client.get(f"/v2/{repo}/manifests/{sha256(middle)}").content == middle
        assert_image_whole(client, repo, direct)
        assert_image_whole(client, repo, nested)


@pytest.mark.parametrize("how", ["cli", "http"])
def test_upload_completed_during_a_collection_is_kept(one_worker, how):
    """Issue 9 #3. A session written two hours ago; a collection is held in its mark; PUT ?digest=
    completes the session (201). Afterwards the blob is served and a manifest using it is accepted."""
    server = one_worker
    with httpx.Client(base_url=server.url, timeout=30) as client:
        repo = f"a-{how}/upload"
        image = make_image(f"upload-{how}", layers=1, layer_size=4096)
        layer = image.layers[0]
        location = start_session(client, repo, layer)
        backdate_tree(OLD, Tree(server.storage_root).repository(repo))
        fifo = hook_after(client, server.storage_root, f"z-{how}/hook3")
        try:
            collection = during_mark(server, fifo, how)
            try:
                r = client.put(location, params={"digest": sha256(layer)}, timeout=10)
            finally:
                fifo.release()
            assert r.status_code == 201, r.text
            collection.finish()
        finally:
            fifo.restore()
        assert_served_whole(client, repo, sha256(layer), layer)
        r = client.post(f"/v2/{repo}/blobs/uploads/", params={"digest": sha256(image.config)}, content=image.config)
        assert r.status_code == 201
        r = client.put(f"/v2/{repo}/manifests/v1", content=image.manifest, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201, f"the acknowledged layer is gone: {r.text}"
        assert_image_whole(client, repo, image)


def together(url: str, **calls) -> dict:
    """Run each call(client) in a thread of its own, on its own connection, released at once by a
    barrier; return their results by name."""
    barrier = threading.Barrier(len(calls))
    results: dict = {}

    def run(key: str, call) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            barrier.wait(10)
            results[key] = call(c)

    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def delete_repository_while_deleting_tags(url: str, repo: str, doomed: list[str]) -> dict:
    """Three threads delete `doomed` tags; once the first has deleted ten, DELETE the repository."""
    started = threading.Event()
    answers: dict = {}

    def delete_tags(k: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for n, tag in enumerate(doomed[k::3]):
                if n == 10 and k == 0:
                    started.set()
                c.delete(f"/v2/{repo}/manifests/{tag}")

    def delete_repository() -> None:
        started.wait(10)
        with httpx.Client(base_url=url, timeout=30) as c:
            answers["repo"] = c.delete(f"/v2/{repo}/_repository").status_code

    threads = [threading.Thread(target=delete_tags, args=(k,)) for k in range(3)]
    threads.append(threading.Thread(target=delete_repository))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return answers


# -- 6. DELETE by digest racing PUT of the same bytes by tag ----------------------------------------------

def test_delete_by_digest_racing_put_by_tag_never_leaves_a_dangling_tag(two_workers):
    """Issue 9 #6. Each round (at most 60, 15 s): the manifest is linked; DELETE by digest and PUT of the
    same bytes by a new tag start together and both succeed. Then, if GET by tag serves the manifest, GET
    by digest does too (the other order leaves both 404). 300 other tags make the DELETE's scan of the
    tags long enough for the PUT to land inside it. After a delete_untagged collection, every tag still
    listed serves a whole image and no unlisted one serves."""
    server = two_workers
    repo = "race/delput"
    image, other = make_image("delput"), make_image("delput-other", layers=1, layer_size=64)
    tree = Tree(server.storage_root)
    broken: list[str] = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        push_image(client, repo, image)
        push_image(client, repo, other, "other")
        for i in range(300):
            tree.set_tag(repo, f"filler{i:03d}", other.digest)
        rounds, deadline = 0, time.monotonic() + 15
        while rounds < 60 and time.monotonic() < deadline:
            tag = f"t{rounds}"
            r = client.put(f"/v2/{repo}/manifests/{image.digest}", content=image.manifest,
                           headers={"Content-Type": OCI_MANIFEST})
            assert r.status_code == 201
            results = together(
                server.url,
                delete=lambda c: c.delete(f"/v2/{repo}/manifests/{image.digest}").status_code,
                put=lambda c, tag=tag: c.put(f"/v2/{repo}/manifests/{tag}", content=image.manifest,
                                             headers={"Content-Type": OCI_MANIFEST}).status_code)
            assert results == {"delete": 202, "put": 201}, results
            by_tag = client.get(f"/v2/{repo}/manifests/{tag}").status_code
            by_digest = client.get(f"/v2/{repo}/manifests/{image.digest}").status_code
            if by_tag == 200 and by_digest != 200:
                broken.append(f"round {rounds}: GET by tag 200, by digest {by_digest}")
            rounds += 1
            if broken:
                break
        assert not broken, f"a tag names a manifest that is gone after {rounds} round(s): {broken}"
        # A collection keeps what the tags name, whole; a tag it cannot keep whole is not listed.
        run_gc(client, delete_untagged="true")
        tags = client.get(f"/v2/{repo}/tags/list").json()["tags"]
        for tag in [f"t{i}" for i in range(rounds)]:
            r = client.get(f"/v2/{repo}/manifests/{tag}")
            assert (r.status_code == 200) == (tag in tags), (tag, r.status_code)
            if r.status_code == 200:
                assert_image_whole(client, repo, image)


# -- 9. repository deletion racing tag DELETEs -----------------------------------------------------------

def test_repository_deletion_racing_tag_deletes_leaves_no_tag(two_workers):
    """Issue 9 #9. 300 tags on one image; three threads delete the first 150 while DELETE
    /v2/x/app/_repository runs (from their 10th deletion on). After its 202, no tag is listed or
    resolvable and tags/list answers 404 NAME_UNKNOWN: the deletion does not stop at a tag that went
    from under it."""
    server = two_workers
    repo = "x/app"
    tree = Tree(server.storage_root)
    image = make_image("repo-race", layers=1, layer_size=64)
    tags = [f"v{i:03d}" for i in range(300)]
    failures: list[str] = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for trial in range(3):
            push_image(client, repo, image, "v000")
            for tag in tags[1:]:
                tree.set_tag(repo, tag, image.digest)
            assert len(client.get(f"/v2/{repo}/tags/list").json()["tags"]) == 300
            answers = delete_repository_while_deleting_tags(server.url, repo, tags[:150])
            assert answers.get("repo") == 202, answers
            r = client.get(f"/v2/{repo}/tags/list")
            listed = len(r.json().get("tags") or []) if r.status_code == 200 else 0
            left = [tag for tag in tags if client.get(f"/v2/{repo}/manifests/{tag}").status_code != 404]
            if r.status_code != 404 or r.json()["errors"][0]["code"] != "NAME_UNKNOWN" or left:
                failures.append(f"trial {trial}: tags/list {r.status_code} listing {listed} tag(s); "
                                f"{len(left)} tag(s) still resolve")
    assert not failures, f"{len(failures)} of 3 trials: {failures}"


# -- 14 (end). the idle-upload purge and a request inside the session ------------------------------------

def test_purge_keeps_a_session_a_request_is_using(either):
    """Issue 9 #14: the purge re-checks before removing. A session idle for two hours (the limit is a
    minute) has a PATCH inside it (its 100 Continue came) when a collection purges idle uploads; the PATCH
    then gets 202, so the session must still be there holding its bytes. With two workers the purge may
    run in the other process."""
    server = either
    with httpx.Client(base_url=server.url, timeout=30) as client:
        repo = f"purge/busy{server.workers}"
        first, more = os.urandom(4096), os.urandom(1000)
        location = start_session(client, repo, first)
        backdate_tree(OLD, Tree(server.storage_root).repository(repo))
        held = HeldRequest(server.port, "PATCH", location, len(more))
        assert held.entered, held.final
        try:
            run_gc(client)
        finally:
            patch = held.finish(more)
        assert patch.status == 202, patch
        status = client.get(location)
        assert status.status_code == 204, (
            f"PATCH answered 202 but the session is gone: {status.status_code} {status.text[:200]}")
        assert status.headers["Range"] == "0-5095"
        r = client.put(location, params={"digest": sha256(first + more)})
        assert r.status_code == 201, r.text
        assert_served_whole(client, repo, sha256(first + more), first + more)


# -- 14. listings with directory mtimes pinned (a kernel with coarse timestamps) -------------------------

@pytest.fixture
def pinned(tmp_path):
    """One worker (so a per-process cache would be the one asked again), grace 0."""
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_GC_GRACE_SECONDS="0")
    yield server
    server.stop()


def read_with_pinned_mtime(directory: str, read, change):
    """Read a listing with `directory` unchanged for 10 s; change it; put its mtime back to the value it
    had at the read, as a file system whose timestamps tick coarsely leaves it; return the listing now."""
    backdate(10, directory)
    before = os.stat(directory).st_mtime_ns
    read()
    change()
    assert os.stat(directory).st_mtime_ns != before
    os.utime(directory, ns=(before, before))
    return read()


def test_tag_list_with_pinned_mtime(pinned):
    """Issue 9 #14: tags/list is read from storage, not from a listing cached against a directory mtime
    that did not move."""
    a, b = make_image("pin-a", layers=1, layer_size=64), make_image("pin-b", layers=1, layer_size=64)
    with httpx.Client(base_url=pinned.url, timeout=30) as client:
        push_image(client, "pin/app", a, "a")
        tags = read_with_pinned_mtime(Tree(pinned.storage_root).tags_dir("pin/app"),
                                      lambda: client.get("/v2/pin/app/tags/list").json()["tags"],
                                      lambda: push_image(client, "pin/app", b, "b"))
        assert tags == ["a", "b"], f"tags/list lacks a tag GET serves: {tags}"


def test_catalog_with_pinned_mtime(pinned):
    """Issue 9 #14: the same for the catalog (its index directory's mtime pinned)."""
    a, b = make_image("pin-a", layers=1, layer_size=64), make_image("pin-b", layers=1, layer_size=64)
    with httpx.Client(base_url=pinned.url, timeout=30) as client:
        push_image(client, "pin/one", a, "a")
        assert client.get("/v2/_catalog").json()["repositories"] == ["pin/one"]  # the index is built
        catalog = read_with_pinned_mtime(Tree(pinned.storage_root).catalog_dir(),
                                         lambda: client.get("/v2/_catalog").json()["repositories"],
                                         lambda: push_image(client, "pin/two", b, "b"))
        assert catalog == ["pin/one", "pin/two"], f"the catalog lacks a repository: {catalog}"


def test_delete_untagged_with_pinned_tags_mtime_keeps_the_tagged_manifest(pinned):
    """Issue 9 #14: the collector's mark reads the tags from storage, so a manifest tagged just before
    (tags directory mtime pinned) is not taken for untagged."""
    tree = Tree(pinned.storage_root)
    a, b = make_image("pingc-a", layers=1, layer_size=64), make_image("pingc-b", layers=1, layer_size=64)
    with httpx.Client(base_url=pinned.url, timeout=30) as client:
        push_image(client, "pin/gc", a, "a")
        read_with_pinned_mtime(tree.tags_dir("pin/gc"), lambda: client.get("/v2/pin/gc/tags/list"),
                               lambda: push_image(client, "pin/gc", b, "b"))
        report = run_gc(client, "pin/gc", delete_untagged="true")
        assert client.get("/v2/pin/gc/manifests/b").content == b.manifest, report
        assert_image_whole(client, "pin/gc", b)
        assert_image_whole(client, "pin/gc", a)


# -- 8. repository deletion and open upload sessions -----------------------------------------------------

@pytest.mark.parametrize("storage", ["filesystem", "memory"])
def test_repository_deletion_ends_its_upload_sessions(tmp_path, storage):
    """Issue 9 #8: the use-case ends the sessions, whatever the adapter."""
    server = start_server(str(tmp_path / "data"), str(tmp_path / "log"), REGISTRY_STORAGE=storage)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            push_image(client, "del/sessions", make_image("del-sessions", layers=1, layer_size=64), "v1")
            location = start_session(client, "del/sessions", b"x" * 100)
            assert client.delete("/v2/del/sessions/_repository").status_code == 202
            r = client.get(location)
            assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN", (
                r.status_code, r.text)
    finally:
        server.stop()
