"""Real clients against a live server: skopeo, podman, buildah and containerd's ctr. Images are built
here (OCI layouts written in Python, or buildah from scratch); pulled content is compared byte for byte."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

import httpx
import pytest

from tests.support import IN_CI, make_image, make_index, require_tool, scratch_build_context, sha256, write_layout

pytestmark = pytest.mark.clients


def sh(*args: str, env: dict | None = None, timeout: float = 300) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return result.stdout


def blobs_of_layout(directory: str) -> dict[str, bytes]:
    out = {}
    base = os.path.join(directory, "blobs", "sha256")
    for name in os.listdir(base):
        with open(os.path.join(base, name), "rb") as f:
            out["sha256:" + name] = f.read()
    return out


@pytest.fixture
def api(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def reference(server, repo: str) -> str:
    return f"localhost:{server.port}/{repo}"


class TestSkopeo:
    @pytest.fixture(autouse=True)
    def _tool(self):
        require_tool("skopeo")

    def test_copy_inspect_list_pull_delete(self, server, api, tmp_path):
        image = make_image("skopeo-1", layers=3, layer_size=200_000)
        write_layout(str(tmp_path / "src"), image.manifest, image.blobs(), "v1")
        ref = reference(server, "clients/skopeo")
        sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:v1", f"docker://{ref}:v1")
        raw = sh("skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}:v1")
        assert raw.encode() == image.manifest  # kept byte for byte, same digest
        info = json.loads(sh("skopeo", "inspect", "--tls-verify=false", f"docker://{ref}:v1"))
        assert info["Digest"] == image.digest and info["Layers"] == [sha256(b) for b in image.layers]
        sh("skopeo", "copy", "--dest-tls-verify=false", f"docker://{ref}:v1", f"docker://{ref}:v2",
           "--src-tls-verify=false")
        tags = json.loads(sh("skopeo", "list-tags", "--tls-verify=false", f"docker://{ref}"))["Tags"]
        assert sorted(tags) == ["v1", "v2"]
        sh("skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}:v1", f"oci:{tmp_path / 'back'}:v1")
        back = blobs_of_layout(str(tmp_path / "back"))
        for blob in [image.manifest, *image.blobs()]:
            assert back[sha256(blob)] == blob
        sh("skopeo", "delete", "--tls-verify=false", f"docker://{ref}:v1")
        assert api.get(f"/v2/clients/skopeo/manifests/{image.digest}").status_code == 404
        assert api.get("/v2/clients/skopeo/tags/list").json()["tags"] == []

    def test_umoci_built_image(self, server, api, tmp_path):
        require_tool("umoci")
        layout = tmp_path / "umoci"
        payload = os.urandom(123_456)
        (tmp_path / "payload.bin").write_bytes(payload)
        sh("umoci", "init", "--layout", str(layout))
        sh("umoci", "new", "--image", f"{layout}:latest")
        sh("umoci", "insert", "--image", f"{layout}:latest", str(tmp_path / "payload.bin"), "/payload.bin")
        ref = reference(server, "clients/umoci")
        sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{ref}:latest")
        manifest = api.get("/v2/clients/umoci/manifests/latest").json()
        layer = api.get(f"/v2/clients/umoci/blobs/{manifest['layers'][-1]['digest']}").content
        assert file_in_layer(layer, "payload.bin") == payload
        sh("skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}:latest", f"oci:{tmp_path / 'back'}:latest")
        original, back = blobs_of_layout(str(layout)), blobs_of_layout(str(tmp_path / "back"))
        for digest in [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]:
            assert back[digest] == original[digest]

    def test_all_platforms_of_an_index(self, server, api, tmp_path):
        amd, arm = make_image("skopeo-amd"), make_image("skopeo-arm", arch="arm64")
        index = make_index([(amd, "amd64"), (arm, "arm64")])
        write_layout(str(tmp_path / "src"), index, [amd.manifest, arm.manifest, *amd.blobs(), *arm.blobs()],
                     "multi", "application/vnd.oci.image.index.v1+json")
        ref = reference(server, "clients/multi")
        sh("skopeo", "copy", "--all", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:multi",
           f"docker://{ref}:multi")
        assert sh("skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}:multi").encode() == index
        sh("skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{ref}:multi",
           f"oci:{tmp_path / 'back'}:multi")
        back = blobs_of_layout(str(tmp_path / "back"))
        for blob in [index, amd.manifest, arm.manifest, *amd.blobs(), *arm.blobs()]:
            assert back[sha256(blob)] == blob

    def test_format_v2s2(self, server, api, tmp_path):
        image = make_image("skopeo-v2s2")
        write_layout(str(tmp_path / "src"), image.manifest, image.blobs(), "v1")
        ref = reference(server, "clients/v2s2")
        sh("skopeo", "copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:v1",
           f"docker://{ref}:v1")
        r = api.get("/v2/clients/v2s2/manifests/v1")
        assert r.headers["Content-Type"] == "application/vnd.docker.distribution.manifest.v2+json"
        assert r.headers["Docker-Content-Digest"] == sha256(r.content)
        manifest = r.json()
        assert [layer["digest"] for layer in manifest["layers"]] == [sha256(b) for b in image.layers]
        for layer in image.layers:
            assert api.get(f"/v2/clients/v2s2/blobs/{sha256(layer)}").content == layer


@pytest.fixture
def containers_env(tmp_path):
    """podman and buildah with vfs storage in a temp dir: no daemon, no host state touched."""
    root = tmp_path / "root"
    run = tempfile.mkdtemp(prefix="mr-run-", dir="/tmp")  # podman refuses a runroot over 50 characters
    conf = tmp_path / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{run}"\ngraphroot = "{root}"\n')
    env = {"CONTAINERS_STORAGE_CONF": str(conf)}
    flags = ["--storage-driver", "vfs", "--root", str(root), "--runroot", run]
    yield env, flags
    shutil.rmtree(run, ignore_errors=True)


def file_in_layer(layer_gz: bytes, path: str) -> bytes:
    # Streaming mode: umoci's layers end without tar padding, which random access rejects.
    tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_gz)), mode="r|")
    try:
        for member in tar:
            if member.name.lstrip("./") == path:
                return tar.extractfile(member).read()
    except tarfile.ReadError:
        pass
    raise AssertionError(f"{path} not in layer")


    def test_collection_between_skopeo_pushes(self, server, api, tmp_path):
        """Push two images sharing layers, delete one with skopeo, collect, then pull the other and push
        the deleted one again: nothing the remaining image needs is lost, and re-pushing works."""
        base = make_image("gc-skopeo", layers=2, layer_size=50_000)
        first = tmp_path / "first"
        second = tmp_path / "second"
        other = make_image("gc-skopeo-other", layers=1)
        write_layout(str(first), base.manifest, base.blobs(), "v1")
        write_layout(str(second), other.manifest, other.blobs(), "v1")
        ref = reference(server, "clients/gc")
        sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{first}:v1", f"docker://{ref}:keep")
        sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{second}:v1", f"docker://{ref}:drop")
        sh("skopeo", "delete", "--tls-verify=false", f"docker://{ref}:drop")
        report = api.post("/v2/clients/gc/_gc").json()
        assert report["dry_run"] is False
        sh("skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}:keep", f"oci:{tmp_path / 'back'}:v1")
        back = blobs_of_layout(str(tmp_path / "back"))
        for blob in [base.manifest, *base.blobs()]:
            assert back[sha256(blob)] == blob
        sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{second}:v1", f"docker://{ref}:again")
        assert api.get("/v2/clients/gc/manifests/again").content == other.manifest


class TestPodmanBuildah:
    def test_buildah_build_from_scratch_push_and_podman_pull_push(self, server, api, tmp_path, containers_env):
        require_tool("buildah")
        require_tool("podman")
        env, flags = containers_env
        payload = os.urandom(300_000)
        ctx = scratch_build_context(tmp_path / "ctx", payload)
        ref = reference(server, "clients/buildah")
        sh("buildah", *flags, "bud", "--isolation", "chroot", "-t", f"{ref}:v1", str(ctx), env=env)
        sh("buildah", *flags, "push", "--tls-verify=false", f"{ref}:v1", env=env)
        manifest = api.get("/v2/clients/buildah/manifests/v1").json()
        layer = api.get(f"/v2/clients/buildah/blobs/{manifest['layers'][0]['digest']}").content
        assert file_in_layer(layer, "payload.bin") == payload

        # podman: pull it back into fresh storage, push under another name, compare content
        sh("podman", *flags, "rmi", "-a", "-f", env=env)
        sh("podman", *flags, "pull", "--tls-verify=false", f"{ref}:v1", env=env)
        other = reference(server, "clients/podman")
        sh("podman", *flags, "push", "--tls-verify=false", f"{ref}:v1", f"{other}:v2", env=env)
        pushed = api.get("/v2/clients/podman/manifests/v2").json()
        config = api.get(f"/v2/clients/podman/blobs/{pushed['config']['digest']}").json()
        original = api.get(f"/v2/clients/buildah/blobs/{manifest['config']['digest']}").json()
        assert config["rootfs"]["diff_ids"] == original["rootfs"]["diff_ids"]
        layer = api.get(f"/v2/clients/podman/blobs/{pushed['layers'][0]['digest']}").content
        assert file_in_layer(layer, "payload.bin") == payload

    def test_buildah_manifest_list_push(self, server, api, tmp_path, containers_env):
        require_tool("buildah")
        env, flags = containers_env
        ref = reference(server, "clients/list")
        images = []
        for arch in ("amd64", "arm64"):
            ctx = tmp_path / arch
            ctx.mkdir()
            (ctx / "arch.txt").write_text(arch)
            (ctx / "Containerfile").write_text("FROM scratch\nCOPY arch.txt /arch.txt\n")
            sh("buildah", *flags, "bud", "--isolation", "chroot", "--arch", arch, "-t", f"{ref}-{arch}:v1",
               str(ctx), env=env)
            images.append(f"{ref}-{arch}:v1")
        sh("buildah", *flags, "manifest", "create", f"{ref}:v1", env=env)
        for arch, image in zip(("amd64", "arm64"), images):
            sh("buildah", *flags, "manifest", "add", "--arch", arch, f"{ref}:v1", f"containers-storage:{image}",
               env=env)
        sh("buildah", *flags, "manifest", "push", "--all", "--tls-verify=false", f"{ref}:v1",
           f"docker://{ref}:v1", env=env)
        index = api.get("/v2/clients/list/manifests/v1").json()
        assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]
        for child in index["manifests"]:
            manifest = api.get(f"/v2/clients/list/manifests/{child['digest']}").json()
            arch = child["platform"]["architecture"]
            layer = api.get(f"/v2/clients/list/blobs/{manifest['layers'][0]['digest']}").content
            assert file_in_layer(layer, "arch.txt") == arch.encode()


@pytest.fixture(scope="module")
def containerd(tmp_path_factory):
    require_tool("containerd")
    require_tool("ctr")
    base = tmp_path_factory.mktemp("containerd")
    sock = base / "containerd.sock"
    (base / "config.toml").write_text(f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{base}/debug.sock"
""")
    log = open(base / "log", "wb")
    proc = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=log, stderr=log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if subprocess.run(["ctr", "-a", str(sock), "version"], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"containerd did not start: {(base / 'log').read_text()[-2000:]}")
    yield ["ctr", "-a", str(sock), "-n", "myregistry-test"]
    proc.terminate()
    proc.wait(10)


def test_containerd_pull_and_push(server, api, tmp_path, containerd):
    require_tool("skopeo")
    image = make_image("ctr-1", layers=2, layer_size=100_000)
    write_layout(str(tmp_path / "src"), image.manifest, image.blobs(), "v1")
    ref = reference(server, "clients/ctr")
    sh("skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'src'}:v1", f"docker://{ref}:v1")
    sh(*containerd, "images", "pull", "--plain-http", f"{ref}:v1")
    other = reference(server, "clients/ctr-pushed")
    sh(*containerd, "images", "tag", f"{ref}:v1", f"{other}:v9")
    sh(*containerd, "images", "push", "--plain-http", f"{other}:v9")
    r = api.get("/v2/clients/ctr-pushed/manifests/v9")
    assert r.content == image.manifest and r.headers["Docker-Content-Digest"] == image.digest
    for blob in image.blobs():
        assert api.get(f"/v2/clients/ctr-pushed/blobs/{sha256(blob)}").content == blob


def test_ci_has_every_client():
    """In CI a missing client is a failure, never a silent skip."""
    if not IN_CI:
        pytest.skip("only meaningful in CI")
    for tool in ("skopeo", "podman", "buildah", "containerd", "ctr", "umoci", "docker-registry", "hey", "nginx",
                 "dockerd", "docker", "strace"):
        require_tool(tool)
