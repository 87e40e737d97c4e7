"""benchmarks/check_docs.py: every table in docs/BENCHMARKS.md matches its committed raw output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "check_docs.py"
DOC = ROOT / "docs" / "BENCHMARKS.md"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_real_docs_match_their_raw_output() -> None:
    r = _run()
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"check_docs: (\d+) tables, (\d+) numbers checked, 0 mismatches", r.stdout)
    assert m, r.stdout
    assert int(m.group(1)) >= 15 and int(m.group(2)) >= 500, r.stdout


def test_an_altered_number_fails_naming_it(tmp_path: Path) -> None:
    text = DOC.read_text()
    row = "| slide | 52 | **137** | **187** | 350 |"  # section 3, from bench_scheduler.json
    assert row in text
    bad = tmp_path / "BENCHMARKS.md"
    bad.write_text(text.replace(row, "| slide | 52 | **137** | **197** | 350 |"))
    r = _run("--doc", str(bad), "--root", str(ROOT))
    assert r.returncode == 1, r.stdout
    assert "1 mismatches" in r.stdout, r.stdout
    line = next(x for x in r.stdout.splitlines() if x.startswith("MISMATCH"))
    assert "3. Scheduler overhead" in line and "'slide'" in line and "'N=1,024'" in line, line
    assert "doc 197" in line and "raw 187.3" in line, line


def test_fix_rewrites_only_the_stale_cell_in_its_own_format(tmp_path: Path) -> None:
    text = DOC.read_text()
    row = "| slide | 52 | **137** | **187** | 350 |"
    assert row in text
    bad = tmp_path / "BENCHMARKS.md"
    bad.write_text(text.replace(row, "| slide | 52 | **137** | **197** | 350 |"))
    r = _run("--doc", str(bad), "--root", str(ROOT), "--fix")
    assert r.returncode == 0, r.stdout
    assert "rewrote 1 cell(s)" in r.stdout and "0 mismatches" in r.stdout, r.stdout
    assert bad.read_text() == text  # bold kept, the raw value rounded as shown, nothing else


def test_a_table_without_a_raw_comment_fails(tmp_path: Path) -> None:
    bad = tmp_path / "BENCHMARKS.md"
    bad.write_text(DOC.read_text() + "\n## 99. New\n\n| x | y |\n|---|---|\n| a | 1.5 |\n")
    r = _run("--doc", str(bad), "--root", str(ROOT))
    assert r.returncode == 1, r.stdout
    assert "99. New" in r.stdout and "no <!-- raw:" in r.stdout, r.stdout


def test_claims_page_matches_its_raw_output() -> None:
    # docs/CLAIMS.md (issue 16): the papers' claims beside our sweep results
    r = _run("--doc", str(ROOT / "docs" / "CLAIMS.md"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"check_docs: 2 tables, \d+ numbers checked, 0 mismatches", r.stdout), r.stdout
