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
