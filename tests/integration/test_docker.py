"""The Docker engine itself (Debian's docker.io, started in a sandbox by tests/dockerd.py) against a live
registry with default settings, as a user drives it: load, push, pull, build, manifest lists, pulls by
digest and after a collection. Nothing comes from the internet: images are docker-archive tars written
here, or `FROM scratch` builds. Images are a few KiB each (vfs storage copies every layer)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile

import httpx
import pytest

from tests.dockerd import DockerEngine, sandboxed_dockerd
from tests.support import Server, sha256, start_server, tar_of

pytestmark = pytest.mark.clients

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join([DOCKER_MANIFEST, DOCKER_LIST, "application/vnd.oci.image.manifest.v1+json",
                             "application/vnd.oci.image.index.v1+json"])

@pytest.fixture(scope="module")
def docker() -> DockerEngine:
    with sandboxed_dockerd() as engine:
        yield engine


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """This module's own registry (default settings: as many workers as CPUs), so its log holds only the
    Docker traffic of these tests."""
    base = tmp_path_factory.mktemp("docker-registry")
    server = start_server(str(base / "data"), str(base / "server.log"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def collecting_registry(tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A registry whose collection may remove what was just pushed (grace 0), for the pull after a
    collection; otherwise default settings."""
    base = tmp_path_factory.mktemp("docker-registry-gc")
    server = start_server(str(base / "data"), str(base / "server.log"), REGISTRY_GC_GRACE_SECONDS="0")
    yield server
    server.stop()


# --- images, written here ------------------------------------------------------------------------------

_tar = tar_of


def docker_archive(tag: str, layers: list[dict[str, bytes]], arch: str = "amd64",
                   labels: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """A `docker save` archive of one image named `tag` (its layers hold the given files), and the image's
    config, whose digest is the image's Id."""
    layer_tars = [_tar(files) for files in layers]
    config = json.dumps({
        "architecture": arch, "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Cmd": ["/app"], "Labels": labels or {}},
        "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in layer_tars]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
    }, sort_keys=True).encode()
    config_name = sha256(config)[7:] + ".json"
    entries = {config_name: config}
    for t in layer_tars:
        entries[f"{sha256(t)[7:]}/layer.tar"] = t
    entries["manifest.json"] = json.dumps([{
        "Config": config_name, "RepoTags": [tag],
        "Layers": [f"{sha256(t)[7:]}/layer.tar" for t in layer_tars]}]).encode()
    return _tar(entries), config


def payload(seed: str, size: int = 2048) -> bytes:
    return hashlib.shake_256(seed.encode()).digest(size)


def load(docker: DockerEngine, tmp_path, tag: str, seed: str, arch: str = "amd64",
         shared: dict[str, bytes] | None = None) -> str:
    """`docker load` an image of one small layer unique to `seed` (after a `shared` one, if given); its Id."""
    layers = ([shared] if shared else []) + [{f"app/{seed}.bin": payload(seed)}]
    archive, config = docker_archive(tag, layers, arch=arch)
    path = tmp_path / f"{seed}.tar"
    path.write_bytes(archive)
    out = docker("load", "-i", str(path))
    assert f"Loaded image: {tag}" in out
    image_id = docker.inspect(tag)["Id"]
    assert image_id == sha256(config)
    return image_id


def push(docker: DockerEngine, ref: str) -> tuple[str, str]:
    """`docker push`: its output and the digest it reports."""
    out = docker("push", ref)
    found = re.search(r"digest: (sha256:[0-9a-f]{64}) size: \d+", out)
    assert found, out
    return out, found.group(1)


def same_image(before: dict, after: dict) -> None:
    assert after["Id"] == before["Id"]
    assert after["RootFS"]["Layers"] == before["RootFS"]["Layers"]
    assert (after["Architecture"], after["Os"]) == (before["Architecture"], before["Os"])
    assert after["Config"]["Labels"] == before["Config"]["Labels"]


def removed(docker: DockerEngine, ref: str, image_id: str) -> None:
    docker("rmi", ref)
    assert not docker.has_image(image_id), "the image must be gone locally, so the pull fetches every blob"


def manifest_of(registry: Server, repo: str, reference: str) -> httpx.Response:
    r = httpx.get(f"{registry.url}/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
    assert r.status_code == 200, r.text
    return r


def file_in_layer(layer_gz: bytes, path: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_gz))) as tar:
        for member in tar:
            if member.name.lstrip("./") == path:
                return tar.extractfile(member).read()
    raise AssertionError(f"{path} not in layer")


# --- tests -----------------------------------------------------------------------------------------------

def test_load_push_rmi_pull_gives_the_same_image(docker, registry, tmp_path):
    ref = f"{registry.host}/demo/app:1"
    image_id = load(docker, tmp_path, ref, "app-1")
    before = docker.inspect(ref)
    out, digest = push(docker, ref)
    assert "Pushed" in out
    r = manifest_of(registry, "demo/app", "1")
    assert r.headers["Docker-Content-Digest"] == digest == sha256(r.content)
    assert r.json()["config"]["digest"] == image_id
    removed(docker, ref, image_id)
    docker("pull", ref)
    after = docker.inspect(ref)
    same_image(before, after)
    assert f"{registry.host}/demo/app@{digest}" in after["RepoDigests"]


def test_second_push_says_layer_already_exists(docker, registry, tmp_path):
    ref = f"{registry.host}/demo/again:1"
    load(docker, tmp_path, ref, "again-1")
    first, digest = push(docker, ref)
    assert "Layer already exists" not in first
    second, digest_again = push(docker, ref)
    assert "Layer already exists" in second and "Pushed" not in second, second
    assert digest_again == digest


def test_push_to_another_repository_mounts_the_layer(docker, registry, tmp_path):
    source, target = f"{registry.host}/demo/mount-src:1", f"{registry.host}/demo/mount-dst:1"
    load(docker, tmp_path, source, "mount-1")
    _, digest = push(docker, source)
    docker("tag", source, target)
    out, digest_there = push(docker, target)
    assert "Mounted from demo/mount-src" in out, out
    assert digest_there == digest
    layer = manifest_of(registry, "demo/mount-dst", "1").json()["layers"][0]["digest"]
    r = httpx.get(f"{registry.url}/v2/demo/mount-dst/blobs/{layer}")
    assert r.status_code == 200 and sha256(r.content) == layer


def test_build_from_scratch_push_and_pull(docker, registry, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    content = payload("built", 3000)
    (context / "payload.bin").write_bytes(content)
    (context / "Dockerfile").write_text(
        "FROM scratch\nCOPY payload.bin /payload.bin\nLABEL org.example.test=myregistry\n")
    ref = f"{registry.host}/demo/built:1"
    docker("build", "-t", ref, str(context), timeout=180)
    before = docker.inspect(ref)
    assert before["Config"]["Labels"] == {"org.example.test": "myregistry"}
    _, digest = push(docker, ref)
    manifest = manifest_of(registry, "demo/built", digest).json()
    layer = httpx.get(f"{registry.url}/v2/demo/built/blobs/{manifest['layers'][0]['digest']}").content
    assert file_in_layer(layer, "payload.bin") == content
    removed(docker, ref, before["Id"])
    docker("pull", ref)
    same_image(before, docker.inspect(ref))


@pytest.fixture(scope="module")
def inspected(docker, registry, tmp_path_factory) -> tuple[str, str, str]:
    """An image pushed for `docker manifest inspect`: its reference, manifest digest and config digest."""
    ref = f"{registry.host}/demo/inspect:1"
    image_id = load(docker, tmp_path_factory.mktemp("inspect"), ref, "inspect-1")
    _, digest = push(docker, ref)
    return ref, digest, image_id


def test_manifest_inspect_insecure(docker, registry, inspected):
    ref, _, image_id = inspected
    manifest = json.loads(docker("manifest", "inspect", "--insecure", ref))
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert manifest["config"]["digest"] == image_id
    assert manifest == manifest_of(registry, "demo/inspect", "1").json()


@pytest.fixture(scope="module")
def two_platforms(docker, registry, tmp_path_factory) -> dict[str, tuple[str, str, str]]:
    """Two pushed images whose configs say different architectures: arch -> (reference, digest, Id)."""
    tmp = tmp_path_factory.mktemp("multi")
    images = {}
    for arch in ("amd64", "arm64"):
        ref = f"{registry.host}/demo/multi-{arch}:1"
        image_id = load(docker, tmp, ref, f"multi-{arch}", arch=arch)
        assert docker.inspect(ref)["Architecture"] == arch
        _, digest = push(docker, ref)
        images[arch] = (ref, digest, image_id)
    return images


def test_multi_arch_manifest_create_push_inspect_pull(docker, registry, two_platforms):
    amd, arm = two_platforms["amd64"], two_platforms["arm64"]
    ref = f"{registry.host}/demo/multi:1"
    docker("manifest", "create", "--insecure", ref, amd[0], arm[0])
    docker("manifest", "annotate", "--arch", "arm64", "--variant", "v8", ref, arm[0])
    out = docker("manifest", "push", "--insecure", ref)
    pushed = out.strip().splitlines()[-1]  # the list's digest, after a line per platform image
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pushed), out
    r = manifest_of(registry, "demo/multi", "1")
    assert r.headers["Content-Type"] == DOCKER_LIST and sha256(r.content) == pushed
    platforms = {(m["platform"]["architecture"], m["platform"].get("variant")): m["digest"]
                 for m in r.json()["manifests"]}
    assert platforms == {("amd64", None): amd[1], ("arm64", "v8"): arm[1]}
    listed = json.loads(docker("manifest", "inspect", "--insecure", ref))
    assert listed["mediaType"] == DOCKER_LIST
    assert {m["digest"] for m in listed["manifests"]} == {amd[1], arm[1]}
    # The engine picks its own platform from the list.
    native = docker.version()["Server"]["Arch"]
    if native in two_platforms:
        docker("pull", ref)
        assert docker.inspect(ref)["Id"] == two_platforms[native][2]


def test_pull_by_digest(docker, registry, tmp_path):
    ref = f"{registry.host}/demo/digest:1"
    image_id = load(docker, tmp_path, ref, "digest-1")
    before = docker.inspect(ref)
    _, digest = push(docker, ref)
    removed(docker, ref, image_id)
    by_digest = f"{registry.host}/demo/digest@{digest}"
    out = docker("pull", by_digest)
    assert f"Digest: {digest}" in out
    after = docker.inspect(by_digest)
    same_image(before, after)
    assert after["RepoTags"] == [] and after["RepoDigests"] == [by_digest]


def test_pull_after_a_collection(docker, collecting_registry, tmp_path):
    """Two images share a layer; one is deleted and a collection (grace 0) removes what only it used. The
    other pulls whole into an engine that has neither; the deleted one is gone."""
    registry = collecting_registry
    shared = {"shared/base.bin": payload("gc-shared")}
    keep, drop = f"{registry.host}/demo/gc:keep", f"{registry.host}/demo/gc:drop"
    keep_id = load(docker, tmp_path, keep, "gc-keep", shared=shared)
    drop_id = load(docker, tmp_path, drop, "gc-drop", shared=shared)
    before = docker.inspect(keep)
    push(docker, keep)
    _, drop_digest = push(docker, drop)
    kept = manifest_of(registry, "demo/gc", "keep").json()
    dropped = manifest_of(registry, "demo/gc", "drop").json()
    assert kept["layers"][0]["digest"] == dropped["layers"][0]["digest"]  # the shared layer, pushed once
    assert httpx.delete(f"{registry.url}/v2/demo/gc/manifests/{drop_digest}").status_code == 202

    r = httpx.post(f"{registry.url}/v2/_gc", timeout=120)
    assert r.status_code == 200, r.text
    report = r.json()
    only_dropped = {dropped["config"]["digest"], dropped["layers"][1]["digest"]}
    assert only_dropped <= set(report["removed"]["blobs"]), report
    still_used = {kept["config"]["digest"], *(layer["digest"] for layer in kept["layers"])}
    assert not still_used & set(report["removed"]["blobs"]), report

    removed(docker, keep, keep_id)
    removed(docker, drop, drop_id)
    docker("pull", keep)
    same_image(before, docker.inspect(keep))
    for gone in (drop, f"{registry.host}/demo/gc@{drop_digest}"):
        assert "manifest unknown" in docker.fails("pull", gone)


def test_registry_logs_no_warning_or_error(docker, registry, collecting_registry):
    """Ordinary Docker traffic (the tests above) leaves no WARNING or ERROR in the registries' logs."""
    for server in (registry, collecting_registry):
        bad = [line for line in server.log().splitlines()
               if re.search(r'"level":\s*"(WARNING|ERROR|CRITICAL)"', line) or "Traceback" in line]
        assert not bad, "\n".join(bad[:20])


BASE_IMAGE = "python:3.11-slim"


def test_the_project_image_builds_and_serves(docker, tmp_path):
    """The Dockerfile builds and the image serves, where its base image can be had: on a user's machine
    `docker build` pulls it; here (no internet) nothing can be pulled, so the test says so and skips. A
    stand-in base image loaded into the engine (`docker load`) makes it run."""
    import os
    import subprocess

    from tests.support import REPO_ROOT

    if docker.run("image", "inspect", BASE_IMAGE).returncode != 0:
        # Not pulled here on purpose: this machine reaches no image registry, and tests send no traffic
        # off the machine.
        pytest.skip(f"the base image {BASE_IMAGE} is not in this sandboxed engine and the machine cannot "
                    "pull it (no internet): the image build is not tried")
    built = docker.run("build", "--network", "host", "-t", "myregistry:test", REPO_ROOT, timeout=600)
    assert built.returncode == 0, (built.stdout + built.stderr).decode(errors="replace")
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 10001, 10001)
    port = 5000 + os.getpid() % 1000
    run = docker.run("run", "-d", "--network", "host", "-e", f"PORT={port}", "-v", f"{data}:/data",
                     "myregistry:test")
    assert run.returncode == 0, run.stderr
    container = run.stdout.decode().strip()
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                subprocess.run(["sleep", "0.2"])
        else:
            pytest.fail("the container never became ready:\n" + docker.run("logs", container).stdout.decode())
        assert docker("inspect", "-f", "{{.Config.User}}", container).strip() == "registry"
    finally:
        docker.run("rm", "-f", container)
