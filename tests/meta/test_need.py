"""`need`: a test that cannot run skips on a developer's machine and fails in CI, naming why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_x.py").write_text(
        "from tests.conftest import need\n\n"
        "def test_x():\n    need(False, 'the frobnicator is not installed')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PROSERVE_STRICT")}
    env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs",
                           "-p", "no:xdist", str(tmp_path / "test_x.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def test_skips_locally_and_fails_in_ci(tmp_path: Path) -> None:
    local = _run(tmp_path, "")
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    assert "the frobnicator is not installed" in local.stdout
    ci = _run(tmp_path, "true")
    assert ci.returncode == 1 and "1 failed" in ci.stdout, ci.stdout
    assert "cannot run in CI: the frobnicator is not installed" in ci.stdout
