"""The hydra entry point resolves, validates and runs."""

import subprocess
import sys

from conftest import REPO_ROOT


def run_trainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "meta_safe.meta_trainer", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_lists_config_groups() -> None:
    result = run_trainer("--help")
    assert result.returncode == 0, result.stderr
    for group in ("env:", "meta_optimizer:", "dyna:", "runtime:"):
        assert group in result.stdout


def test_cfg_job_prints_resolved_config() -> None:
    result = run_trainer("--cfg", "job", "seed=7", "env.cost_limit=25")
    assert result.returncode == 0, result.stderr
    assert "seed: 7" in result.stdout and "cost_limit: 25" in result.stdout


def test_unknown_option_is_a_clear_error() -> None:
    result = run_trainer("--cfg", "job", "meta_optimizer=does_not_exist")
    assert result.returncode != 0
    assert "does_not_exist" in result.stderr and "cpo_layer" in result.stderr
