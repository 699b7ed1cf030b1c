"""Settings come from the environment or a `.env` file in the working directory; the environment wins,
and a bad value names the variable and, when it came from there, the file."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from entrypoints.settings import Settings, describe_error


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    for var in [v for v in os.environ if v.startswith("REGISTRY_")] + ["PORT", "STORAGE_ROOT"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_env_file_is_read_and_the_environment_wins(in_tmp, monkeypatch):
    (in_tmp / ".env").write_text("PORT=5123\nREGISTRY_GC_GRACE_SECONDS=60\nSTORAGE_ROOT=/srv/registry\n")
    settings = Settings()
    assert (settings.port, settings.gc_grace_seconds, settings.storage_root) == (5123, 60, "/srv/registry")
    monkeypatch.setenv("PORT", "6000")
    assert Settings().port == 6000


def test_a_bad_value_names_the_variable_and_the_file(in_tmp, monkeypatch):
    (in_tmp / ".env").write_text("REGISTRY_GC_GRACE_SECONDS=soon\n")
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = describe_error(caught.value)
    assert "REGISTRY_GC_GRACE_SECONDS='soon'" in message and str(in_tmp / ".env") in message
    monkeypatch.setenv("REGISTRY_WORKERS", "0")
    (in_tmp / ".env").unlink()
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = describe_error(caught.value)
    assert "REGISTRY_WORKERS='0'" in message and ".env" not in message


def test_workers_default_to_the_usable_cpus_capped(in_tmp, monkeypatch):
    cpus = len(os.sched_getaffinity(0))
    assert Settings().workers == min(cpus, 8)
    monkeypatch.setenv("REGISTRY_MAX_WORKERS", "1")
    assert Settings().workers == 1
    monkeypatch.setenv("REGISTRY_WORKERS", "3")
    assert Settings().workers == 3
