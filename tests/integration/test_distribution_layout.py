"""Our storage is CNCF Distribution's: a data directory either one wrote is served by the other, image by
image, byte-identical. Uses Debian's docker-registry (Distribution 2.8.2) and skopeo."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

import httpx
import pytest

from tests.support import free_port, make_image, make_index, require_tool, sha256, start_server, write_layout

from .test_clients import sh

pytestmark = pytest.mark.distribution


class Distribution:
    def __init__(self, root: str, workdir: str) -> None:
        self.port = free_port()
        config = os.path.join(workdir, f"distribution-{self.port}.yml")
        with open(config, "w") as f:
            f.write(f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
""")
        self.log = open(os.path.join(workdir, f"distribution-{self.port}.log"), "wb")
        self.process = subprocess.Popen(["docker-registry", "serve", config], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v2/", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("Distribution did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def images(tmp_path):
    """Three layouts: an OCI image, a two-platform index, and an image to push as Docker v2s2."""
    one = make_image("dist-one", layers=2, layer_size=50_000)
    amd, arm = make_image("dist-amd"), make_image("dist-arm", arch="arm64")
    index = make_index([(amd, "amd64"), (arm, "arm64")])
    v2 = make_image("dist-v2s2")
    write_layout(str(tmp_path / "one"), one.manifest, one.blobs(), "v1")
    write_layout(str(tmp_path / "multi"), index, [amd.manifest, arm.manifest, *amd.blobs(), *arm.blobs()],
                 "multi", "application/vnd.oci.image.index.v1+json")
    write_layout(str(tmp_path / "v2s2"), v2.manifest, v2.blobs(), "v1")
    return [("lib/one", "v1", str(tmp_path / "one"), []),
            ("lib/multi", "multi", str(tmp_path / "multi"), ["--all"]),
            ("other/v2s2", "v1", str(tmp_path / "v2s2"), ["--format", "v2s2"])]


def push_all(port: int, layouts) -> dict[str, bytes]:
    """Push every layout; the raw manifest each tag then serves."""
    served = {}
    for repo, tag, layout, flags in layouts:
        ref = f"docker://127.0.0.1:{port}/{repo}:{tag}"
        sh("skopeo", "copy", *flags, "--dest-tls-verify=false", f"oci:{layout}:{tag}", ref)
        served[f"{repo}:{tag}"] = sh("skopeo", "inspect", "--raw", "--tls-verify=false", ref).encode()
    return served


def pull_all(port: int, layouts, served: dict[str, bytes], out) -> None:
    """Pull every image from the other registry and check it is what the first one served."""
    out.mkdir(exist_ok=True)
    for repo, tag, _layout, flags in layouts:
        ref = f"docker://127.0.0.1:{port}/{repo}:{tag}"
        raw = sh("skopeo", "inspect", "--raw", "--tls-verify=false", ref).encode()
        assert raw == served[f"{repo}:{tag}"], f"{repo}:{tag} manifest differs"
        dest = out / repo.replace("/", "_")
        # dir: keeps every manifest's bytes as served (oci: would convert v2s2 to OCI)
        sh("skopeo", "copy", *[f for f in flags if f == "--all"], "--src-tls-verify=false", ref, f"dir:{dest}")
        assert (dest / "manifest.json").read_bytes() == raw
        checked = 0
        for entry in os.listdir(dest):
            name = entry.removesuffix(".manifest.json")
            if len(name) == 64:
                assert sha256((dest / entry).read_bytes()) == "sha256:" + name, entry
                checked += 1
        assert checked >= 3
        tags = json.loads(sh("skopeo", "list-tags", "--tls-verify=false", f"docker://127.0.0.1:{port}/{repo}"))
        assert tags["Tags"] == [tag]


@pytest.fixture(autouse=True)
def _tools():
    require_tool("docker-registry")
    require_tool("skopeo")


@contextlib.contextmanager
def serving(kind: str, root: str, workdir):
    """A registry of either kind on `root`; yields its port."""
    if kind == "distribution":
        dist = Distribution(root, str(workdir))
        try:
            yield dist.port
        finally:
            dist.stop()
    else:
        ours = start_server(root, str(workdir / "ours.log"))
        try:
            yield ours.port
        finally:
            ours.stop()


@pytest.mark.parametrize("writer, reader", [("distribution", "ours"), ("ours", "distribution")])
def test_data_written_by_one_is_served_by_the_other(tmp_path, writer, reader):
    layouts = images(tmp_path)
    root = str(tmp_path / "data")
    with serving(writer, root, tmp_path) as port:
        served = push_all(port, layouts)
    with serving(reader, root, tmp_path) as port:
        pull_all(port, layouts, served, tmp_path / "pulled")
        catalog = httpx.get(f"http://127.0.0.1:{port}/v2/_catalog").json()["repositories"]
        assert catalog == ["lib/multi", "lib/one", "other/v2s2"]
