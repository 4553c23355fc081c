"""The codebase stays ruff-clean (style.md: ruff in CI; ruff comes with the test extra)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_clean():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "vrex_edge", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_formatted():
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "vrex_edge", "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
