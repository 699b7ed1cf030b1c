"""Prometheus metrics at /metrics on a live server with two workers: every scrape (whichever worker
answers it) gives the totals of both workers, the counts are exactly the requests made, and no label
carries a repository name, a tag, a digest or an upload id."""

from __future__ import annotations

import os
import re
import threading
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_disk_full import small_disk  # noqa: F401  (a fixture)
from tests.support import make_image, push_image, sha256, start_server

REPO = "zqsecret/metricsapp"
TAG = "zqtag1"
Samples = dict[tuple[str, frozenset], float]
LABEL_VALUES = {
    "route": {"base", "catalog", "blob", "manifest", "upload", "tags", "referrers", "gc", "repository", "health",
              "metrics", "other"},
    "method": {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"},
    "outcome": {"ok", "dry_run", "busy", "error"},
    "kind": {"disk_full", "permission", "io"},
}


def stored_on_disk(root: str) -> dict[str, int]:
    """Blobs and their bytes, and distinct manifests linked anywhere, read from Distribution's layout."""
    v2 = os.path.join(root, "docker", "registry", "v2")
    sizes = [os.path.getsize(os.path.join(d, "data")) for d, _, files in os.walk(os.path.join(v2, "blobs"))
             if "data" in files]
    manifests = set()
    for d, _, files in os.walk(os.path.join(v2, "repositories")):
        if "link" in files and os.sep + "revisions" + os.sep in d:
            manifests.add(os.path.basename(d))
    return {"blobs": len(sizes), "bytes": sum(sizes), "manifests": len(manifests)}


def scrape(client: httpx.Client) -> tuple[Samples, str]:
    r = client.get("/metrics", headers={"Connection": "close"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):  # raises on anything that does not parse
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, r.text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def requests(samples: Samples, route: str, method: str, status: int) -> float:
    return value(samples, "registry_http_requests_total", route=route, method=method, status=str(status))


def pids_in_log(server, path: str) -> set[int]:
    import orjson

    pids = set()
    for line in server.log().splitlines():
        if line.startswith("{") and f'"path":"{path}"' in line:
            pids.add(orjson.loads(line)["pid"])
    return pids


def test_metrics_add_up_across_workers(tmp_path):
    prom_parent = tmp_path / "prom"
    server = start_server(str(tmp_path / "data"), str(tmp_path / "server.log"), REGISTRY_WORKERS="2",
                          REGISTRY_FSYNC="false", REGISTRY_GC_GRACE_SECONDS="0",
                          PROMETHEUS_MULTIPROC_DIR=str(prom_parent))
    scrapes = 0
    try:
        closing = {"Connection": "close"}  # a new connection each time: requests land on either worker
        with httpx.Client(base_url=server.url, timeout=30, headers=closing) as c:
            # The same request until both workers have answered it (the access log names the pid).
            pings = 0
            while len(pids_in_log(server, "/v2/")) < 2:
                assert pings < 300, "one worker answered every request"
                assert c.get("/v2/").status_code == 200
                pings += 1
            pings_by_worker = len(pids_in_log(server, "/v2/"))

            image = make_image("metrics", layers=2, layer_size=20_000)
            push_image(c, REPO, image, TAG)
            assert c.get(f"/v2/{REPO}/manifests/{TAG}").content == image.manifest
            for blob in image.blobs():
                assert c.get(f"/v2/{REPO}/blobs/{sha256(blob)}").content == blob
            assert c.get(f"/v2/{REPO}/manifests/nosuchtag").status_code == 404
            assert c.head(f"/v2/{REPO}/blobs/{sha256(b'absent')}").status_code == 404

            # An upload receiving its body shows in the gauge, whichever worker is scraped.
            location = c.post(f"/v2/{REPO}/blobs/uploads/").headers["Location"]
            release = threading.Event()

            def body():
                yield b"x" * 1000
                release.wait(30)
                yield b"y" * 1000

            outcome: list[int] = []
            sender = threading.Thread(target=lambda: outcome.append(
                httpx.patch(server.url + location, content=body(), timeout=30).status_code))
            sender.start()
            try:
                deadline = time.monotonic() + 20
                while True:
                    samples, _ = scrape(c)
                    scrapes += 1
                    if value(samples, "registry_uploads_in_progress") == 1:
                        break
                    assert time.monotonic() < deadline, "the upload never showed as in progress"
            finally:
                release.set()
                sender.join(30)
            assert outcome == [202]

            first, _ = scrape(c)
            scrapes += 1
            assert value(first, "registry_gc_runs_total", outcome="ok") == 0
            assert c.delete(f"/v2/{REPO}/manifests/{image.digest}").status_code == 202
            r = c.post("/v2/_gc")
            assert r.status_code == 200, r.text
            report = r.json()
            assert report["blobs_removed"] >= 3 and report["bytes_freed"] >= sum(map(len, image.blobs()))

            seen = []
            for _ in range(4):  # several scrapes, answered by either worker: the same totals
                samples, text = scrape(c)
                # The scrapes before this one (its own is counted when its response is complete).
                assert requests(samples, "metrics", "GET", 200) == scrapes
                scrapes += 1
                assert value(samples, "registry_uploads_in_progress") == 0
                seen.append({k: v for k, v in samples.items() if ("route", "metrics") not in k[1]})

                assert requests(samples, "base", "GET", 200) == pings
                assert requests(samples, "upload", "POST", 201) == 3
                assert requests(samples, "upload", "POST", 202) == 1
                assert requests(samples, "upload", "PATCH", 202) == 1
                assert requests(samples, "manifest", "PUT", 201) == 1
                assert requests(samples, "manifest", "GET", 200) == 1
                assert requests(samples, "manifest", "GET", 404) == 1
                assert requests(samples, "manifest", "DELETE", 202) == 1
                assert requests(samples, "blob", "GET", 200) == 3
                assert requests(samples, "blob", "HEAD", 404) == 1
                assert requests(samples, "gc", "POST", 200) == 1
                # Histograms: one observation per request, with a time.
                hist = "registry_http_request_duration_seconds"
                assert value(samples, hist + "_count", route="blob", method="GET") == 3
                assert value(samples, hist + "_bucket", route="blob", method="GET", le="+Inf") == 3
                assert value(samples, hist + "_sum", route="blob", method="GET") > 0
                assert value(samples, hist + "_count", route="base", method="GET") == pings
                # Bytes: what went out and what came in, exactly.
                blobs_bytes = sum(map(len, image.blobs()))
                assert value(samples, "registry_http_response_bytes_total", route="blob", method="GET") == blobs_bytes
                assert value(samples, "registry_http_request_bytes_total", route="upload", method="POST") == blobs_bytes
                assert value(samples, "registry_http_request_bytes_total", route="manifest", method="PUT") == len(
                    image.manifest)
                assert value(samples, "registry_http_request_bytes_total", route="upload", method="PATCH") == 0
                # The collection.
                assert value(samples, "registry_gc_runs_total", outcome="ok") == 1
                assert value(samples, "registry_gc_duration_seconds_count") == 1
                assert value(samples, "registry_gc_bytes_freed_total") == report["bytes_freed"]
                assert value(samples, "registry_gc_blobs_removed_total") == report["blobs_removed"]
                assert value(samples, "registry_gc_manifests_removed_total") == report["manifests_removed"]
                # What is stored, from the collection's own walk: checked against the files themselves.
                on_disk = stored_on_disk(server.storage_root)
                assert report["stored"] == on_disk
                assert value(samples, "registry_stored_blobs") == on_disk["blobs"]
                assert value(samples, "registry_stored_bytes") == on_disk["bytes"]
                assert value(samples, "registry_stored_manifests") == on_disk["manifests"]
                assert value(samples, "registry_storage_errors_total", kind="io") == 0

                # Bounded labels: only known values; nothing from a request's path anywhere.
                for (_, labels) in samples:
                    for key, val in labels:
                        if key == "status":
                            assert re.fullmatch(r"[1-5]\d\d", val), val
                        elif key == "le":
                            float(val)
                        else:
                            assert val in LABEL_VALUES[key], (key, val)
                for secret in ("zqsecret", "metricsapp", TAG, "sha256", image.digest[7:], location.rsplit("/", 1)[1]):
                    assert secret not in text
                assert not re.search(r"[0-9a-f]{32}", text)
            assert all(s == seen[0] for s in seen)
            assert pings_by_worker == 2
    finally:
        server.stop()
    # Each start has a fresh directory of its own, removed when the server stops.
    assert os.listdir(prom_parent) == []


def test_a_full_disk_counts_as_a_storage_error(small_disk, tmp_path):  # noqa: F811
    server = start_server(os.path.join(small_disk, "data"), str(tmp_path / "server.log"), REGISTRY_WORKERS="2",
                          REGISTRY_FSYNC="false", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            big = os.urandom(40 * 1024 * 1024)
            r = c.post("/v2/full/blobs/uploads/", params={"digest": sha256(big)}, content=big)
            assert r.status_code == 503, r.text
            samples, _ = scrape(c)
            assert value(samples, "registry_storage_errors_total", kind="disk_full") == 1
            assert requests(samples, "upload", "POST", 503) == 1
            assert value(samples, "registry_uploads_in_progress") == 0
    finally:
        server.stop()
