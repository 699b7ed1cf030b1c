"""The command-line tool: `myregistry import` runs use-cases without HTTP; bad settings fail clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.support import REPO_ROOT, make_image, make_index, sha256, start_server, write_layout

ENV = {**os.environ, "PYTHONPATH": os.path.join(REPO_ROOT, "src")}


def myregistry(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], capture_output=True, text=True,
                          env={**ENV, **env}, timeout=120)


def test_import_layout_then_serve(tmp_path):
    image = make_image("cli-import", layers=2)
    write_layout(str(tmp_path / "layout"), image.manifest, image.blobs(), "latest")
    root = str(tmp_path / "data")
    result = myregistry("import", str(tmp_path / "layout"), "imported/app:v1", STORAGE_ROOT=root)
    assert result.returncode == 0, result.stderr
    assert image.digest in result.stdout and "3 blob(s) uploaded" in result.stdout
    again = myregistry("import", str(tmp_path / "layout"), "imported/app:v2", STORAGE_ROOT=root)
    assert "0 blob(s) uploaded" in again.stdout and "3 already stored" in again.stdout
    server = start_server(root, str(tmp_path / "log"))
    try:
        r = httpx.get(f"{server.url}/v2/imported/app/manifests/v1")
        assert r.content == image.manifest
        for blob in image.blobs():
            assert httpx.get(f"{server.url}/v2/imported/app/blobs/{sha256(blob)}").content == blob
        assert httpx.get(f"{server.url}/v2/imported/app/tags/list").json()["tags"] == ["v1", "v2"]
    finally:
        server.stop()


def test_import_index_with_children(tmp_path):
    amd, arm = make_image("cli-amd"), make_image("cli-arm", arch="arm64")
    index = make_index([(amd, "amd64"), (arm, "arm64")])
    write_layout(str(tmp_path / "layout"), index, [amd.manifest, arm.manifest, *amd.blobs(), *arm.blobs()],
                 "multi", "application/vnd.oci.image.index.v1+json")
    result = myregistry("import", str(tmp_path / "layout"), "multi:latest", "--ref", "multi",
                        STORAGE_ROOT=str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    assert "3 manifest(s)" in result.stdout and sha256(index) in result.stdout


def test_import_errors_are_readable(tmp_path):
    result = myregistry("import", str(tmp_path), "x:y", STORAGE_ROOT=str(tmp_path / "data"))
    assert result.returncode != 0 and "not an OCI image layout" in result.stderr
    result = myregistry("import", str(tmp_path), "Bad:y", STORAGE_ROOT=str(tmp_path / "data"))
    assert result.returncode != 0 and "invalid repository name" in result.stderr


def test_bad_settings_name_the_variable(tmp_path):
    result = myregistry("serve", PORT="notaport", STORAGE_ROOT=str(tmp_path))
    assert result.returncode != 0 and "PORT='notaport'" in result.stderr
    result = myregistry("serve", REGISTRY_STORAGE="floppy", STORAGE_ROOT=str(tmp_path))
    assert result.returncode != 0 and "REGISTRY_STORAGE" in result.stderr
