"""The hydra entry point resolves, validates and runs."""

import subprocess
from pathlib import Path

import pytest
from tiny import TINY, run_module


def run_trainer(*args: str) -> subprocess.CompletedProcess:
    return run_module("meta_safe.meta_trainer", *args, timeout=300)


def test_help_lists_config_groups() -> None:
    result = run_trainer("--help")
    assert result.returncode == 0, result.stderr
    for group in ("env:", "meta_optimizer:", "dyna:"):
        assert group in result.stdout


def test_cfg_job_prints_resolved_config() -> None:
    result = run_trainer("--cfg", "job", "seed=7", "env.cost_limit=25")
    assert result.returncode == 0, result.stderr
    assert "seed: 7" in result.stdout and "cost_limit: 25" in result.stdout


def test_unknown_option_is_a_clear_error() -> None:
    result = run_trainer("--cfg", "job", "meta_optimizer=does_not_exist")
    assert result.returncode != 0
    assert "does_not_exist" in result.stderr and "cpo_layer" in result.stderr


@pytest.mark.slow
def test_cli_trains_evaluates_and_evaluate_runs_on_mujoco(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_module(
        "meta_safe.meta_trainer",
        *TINY,
        "meta_optimizer=lagrangian",
        "meta.iterations=1",
        f"run_dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| inner steps | return" in result.stdout
    for name in ("metrics.csv", "checkpoint.pt", "evaluation.json", "evaluation.png"):
        assert (run_dir / name).exists(), name
    result = run_module(
        "meta_safe.evaluate", f"checkpoint={run_dir}", "env.backend=mujoco",
        "tasks=[[2.2,1.3],[2.4,1.4]]",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mujoco backend" in result.stdout
    assert (run_dir / "evaluation_mujoco.json").exists()
    bad = run_module("meta_safe.evaluate", f"checkpoint={tmp_path / 'nope'}")
    assert bad.returncode != 0 and "does not exist" in bad.stderr
