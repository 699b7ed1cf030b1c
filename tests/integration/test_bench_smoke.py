"""The benchmark in smoke mode (tiny sizes, one round), so it never rots. Its figures are not judged
here: speed is measured by the full run (bench/run.py), never by a timed test."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

from entrypoints.settings import Settings
from tests.support import REPO_ROOT, require_tool


def test_benchmark_smoke_run(tmp_path):
    for tool in ("docker-registry", "hey", "skopeo", "nginx", "curl"):
        require_tool(tool)
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "run.py"), "--smoke", "--out",
                             str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = glob.glob(str(tmp_path / "bench-*.json"))
    report = json.load(open(path))
    metrics = {row["metric"]: row for row in report["rows"]}
    for expected in ("push_monolithic_MBps", "push_chunked_MBps", "pull_warm_MBps", "push_parallel_MBps",
                     "pull_parallel_MBps", "skopeo_push_s", "skopeo_pull_s", "GET /v2/ rps", "HEAD blob p99_ms",
                     "GET manifest by digest rps", "catalog_10k_s", "tags_list_10k_s", "gc_s",
                     "peak_rss_per_process_MB", "startup_s"):
        row = metrics[expected]
        assert row["ours"] > 0 and row["distribution"] > 0 and row["ratio"] > 0, row
    # Small requests are also measured against the two ceilings: a bare Sanic app (the framework) and
    # nginx (the machine), in the same run and with our default worker count.
    for label in ("GET /v2/", "GET manifest by tag", "HEAD manifest by tag", "GET manifest by digest", "HEAD blob"):
        for key in ("rps", "p99_ms"):
            row = metrics[f"{label} {key}"]
            for column in ("ours", "distribution", "bare_sanic", "nginx", "ratio", "ours_per_bare_sanic",
                           "ours_per_nginx"):
                assert row[column] is not None and row[column] > 0, (column, row)
    # The default (REGISTRY_WORKERS=auto): one per CPU this process may use, capped by max_workers.
    expected_workers = min(len(os.sched_getaffinity(0)), Settings.model_fields["max_workers"].default)
    assert report["workers"] == {"ours": expected_workers, "bare_sanic": expected_workers,
                                 "nginx": expected_workers}, report["workers"]
    assert set(report["limits"]) == {"sha256_MBps", "disk_write_MBps", "nginx_pull_MBps"}
    assert glob.glob(str(tmp_path / "bench-*.md"))
    assert "| metric | ours | Distribution 2.8.2 |" in result.stdout
    assert "| request | ours rps | Distribution rps | bare Sanic rps | nginx rps |" in result.stdout
    assert "REGISTRY_WORKERS=auto" in result.stdout
