"""A tiny but real configuration shared by the tests that train: 2 tasks x 2 envs x
40-step episodes."""

import csv
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT
from omegaconf import DictConfig

from meta_safe.config import compose_config

TINY = [
    "meta.tasks_per_iteration=2",
    "meta.envs_per_task=2",
    "meta.steps_per_env=40",
    "env.episode_steps=40",
    "policy.hidden=[16]",
    "runtime.progress=false",
    "evaluation.tasks=2",
    "evaluation.inner_steps=1",
    "evaluation.envs_per_task=2",
    "evaluation.steps_per_env=40",
]

SMALL_MODEL = [
    "dyna=ensemble",
    "dyna.model.members=3",
    "dyna.model.elites=2",
    "dyna.model.hidden=[16]",
    "dyna.model.max_updates=30",
    "dyna.model_envs_per_task=2",
    "dyna.model_steps=10",
]

# A small ensemble whose imagined data also enters meta-training's inner updates.
SMALL_ENSEMBLE = [*SMALL_MODEL, "dyna.imagined_in_meta_training=true"]


def compose_cfg(*overrides: str) -> DictConfig:
    """The validated configuration of ``meta_safe/configs/`` with ``overrides``."""
    return compose_config(overrides)


def tiny_cfg(*overrides: str) -> DictConfig:
    return compose_cfg(*TINY, *overrides)


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def run_module(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
