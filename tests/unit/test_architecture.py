import os
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
