"""Shared pytest setup: deterministic, single-threaded torch for reproducible tests."""

import os

import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _stepwise_rollouts(monkeypatch) -> None:
    """Collections step one by one: compiling the fused rollout takes tens of seconds per
    batch shape, and the suite's many shapes would each pay it. Its own tests
    (``test_fused_rollout.py``) build their own compiled runner."""
    from meta_safe.rl import fused_rollout

    monkeypatch.setattr(fused_rollout.fused_rollout, "enabled", False)
