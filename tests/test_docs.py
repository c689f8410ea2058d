"""The API reference builds in strict mode: every page's ``::: module.member`` exists
and every docstring parses (``make docs`` runs the same build)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO_ROOT


def test_api_reference_builds_strictly(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "python_api" / "index.html").read_text()
    for name in ("meta_safe.api.train", "meta_safe.api.load", "adapt", "rollout"):
        assert name in page, name
