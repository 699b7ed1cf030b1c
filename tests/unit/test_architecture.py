import os
import re
import shutil
import subprocess
import sys

from tests.support import REPO_ROOT


def test_layers_are_respected():
    """domain <- adapters <- entrypoints, and the domain imports no framework (import-linter)."""
    lint_imports = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    result = subprocess.run([lint_imports], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.path.join(REPO_ROOT, "src")})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_code_is_lint_clean():
    ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
    result = subprocess.run([ruff, "check", "src", "tests"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# Layout-specific names of CNCF Distribution's on-disk layout (and ours beside it). Only layout.py may
# spell them or join paths; every other filesystem adapter asks `Layout` (the review found walkers that
# re-encoded `<alg>/<prefix>/<hex>/data`, `_uploads/<id>/data` and `<alg>/<hex>/link` by hand).
_LAYOUT_LITERALS = re.compile(
    r"os\.path\.join"
    r"|\b_(?:uploads|layers|manifests|referrers|myregistry)\b"
    r"|[\"'](?:link|data|startedat|current|index|revisions|tags|blobs|repositories|catalog|\+)[\"']"
)
# Justified generic joins: (file, stripped line). remove_debris walks any tree it is given.
_GENERIC_JOINS = {("files.py", "path = os.path.join(directory, name)")}


def test_only_the_layout_knows_the_storage_layout():
    directory = os.path.join(REPO_ROOT, "src", "adapters", "filesystem")
    found = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".py") or name == "layout.py":
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if _LAYOUT_LITERALS.search(line) and (name, line.strip()) not in _GENERIC_JOINS:
                    found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "layout paths built outside layout.py:\n" + "\n".join(found)


def test_handlers_reach_storage_only_through_use_cases():
    """HTTP modules call use-cases; only the collection jobs' runner (gc_jobs.py) holds the jobs store and
    the collector lock it schedules collections with."""
    http = os.path.join(REPO_ROOT, "src", "entrypoints", "http")
    found = []
    for name in sorted(os.listdir(http)):
        if name.endswith(".py") and name != "gc_jobs.py":
            with open(os.path.join(http, name)) as f:
                found += [f"{name}:{n}: {line.strip()}" for n, line in enumerate(f, 1) if ".adapters." in line]
    assert found == [], "adapters used outside a use-case:\n" + "\n".join(found)


def test_the_domain_type_checks():
    """mypy over src/domain (the code every adapter and entrypoint builds on): no errors."""
    mypy = shutil.which("mypy") or os.path.join(os.path.dirname(sys.executable), "mypy")
    result = subprocess.run([mypy], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
