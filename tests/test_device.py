"""``runtime.device``: parsing and refusal, and training, evaluation, the API and a
resumed checkpoint on every device this machine has (CPU everywhere, CUDA where it
exists, compared against the CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from tiny import SMALL_ENSEMBLE, TINY

import meta_safe
from meta_safe.config import compose_config
from meta_safe.device import check_device, on_device, seeded_generator, to_device
from meta_safe.errors import ConfigError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def tensors_of(run: meta_safe.Run) -> dict[str, torch.Tensor]:
    """Every tensor of a run's learned state, by name."""
    state = run.state
    named = {f"meta_params.{k}": v for k, v in state.meta_params.items()}
    named |= {f"normalizer.{k}": v for k, v in state.normalizer.state_dict().items()}
    named |= {f"rule.{k}": v for k, v in state.meta_optimizer.state_dict().items()}
    if state.dyna is not None:
        named |= {f"model.{k}": v for k, v in state.dyna.model.net.state_dict().items()}
    return {k: v for k, v in named.items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", "cuda0", ""])
def test_malformed_devices_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="valid forms are 'cpu', 'cuda' and 'cuda:N'"):
        check_device(name)


def test_an_unavailable_cuda_device_is_refused_by_config_and_command() -> None:
    """``cuda`` without CUDA, and a device index past the last GPU."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        with pytest.raises(ConfigError, match=r"runtime.device='cuda' is unavailable"):
            compose_config(["runtime.device=cuda"])
    missing = f"cuda:{count}"
    done = subprocess.run(
        [sys.executable, "-m", "meta_safe.meta_trainer", f"runtime.device={missing}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: runtime.device='{missing}' is unavailable"), lines


def test_on_device_scopes_new_tensors_modules_and_generators() -> None:
    device = check_device(DEVICES[-1])
    with on_device(DEVICES[-1]):
        made = [torch.zeros(2), torch.tensor([1.0]), torch.nn.Linear(2, 2).weight]
        generator = seeded_generator(3)
        draw = torch.rand(4, generator=generator)
    assert {t.device.type for t in [*made, draw]} == {device.type}
    assert generator.device.type == device.type
    assert torch.zeros(1).device.type == "cpu"  # the scope ends with the block
    moved = to_device({"a": [torch.ones(1), (torch.ones(1), 3)], "b": "text"}, device)
    assert moved["a"][0].device.type == device.type and moved["a"][1][1] == 3
    assert moved["b"] == "text"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rule", ["cpo_layer", "lstm", "ensemble"])
def test_training_evaluation_and_resume_run_on_the_device(device, rule, tmp_path) -> None:
    """Policy, inner updates, meta-gradient, learned rule and model live on ``device``;
    a checkpoint resumes on it and evaluation and the API work there."""
    extra = (
        [*SMALL_ENSEMBLE, "meta_optimizer=cpo_layer"]
        if rule == "ensemble"
        else [f"meta_optimizer={rule}"]
    )
    overrides = [*TINY, *extra, "evaluate_after=false", f"runtime.device={device}"]
    run = meta_safe.train([*overrides, "meta.iterations=1"], run_dir=tmp_path)
    run = meta_safe.train([*overrides, "meta.iterations=2", "resume=true"], run_dir=tmp_path)
    assert run.iteration == 2
    tensors = tensors_of(run)
    assert tensors and all(t.device.type == device for t in tensors.values()), {
        k: t.device for k, t in tensors.items()
    }
    assert all(bool(torch.isfinite(t.float()).all()) for t in tensors.values())
    loaded = meta_safe.load(tmp_path, device=device)
    adapted = loaded.adapt([2.0, 1.5], inner_steps=1)
    assert adapted.params["log_std"].device.type == device
    action = loaded.act(torch.zeros(loaded.setup.policy.obs_dim), adapted.params)
    assert action.device.type == device and action.shape == (2,)
    episode = loaded.rollout([2.0, 1.5], adapted.params)
    assert episode.positions.device.type == "cpu" and episode.positions.shape[-1] == 2
    summary = loaded.evaluate().summary()
    assert len(summary["mean_return"]) == 2  # before and after one inner step


@pytest.mark.parametrize("device", DEVICES)
def test_a_checkpoint_acts_the_same_on_every_device(device, tmp_path) -> None:
    """A run saved on the CPU loads on ``device`` and gives the CPU's actions there."""
    meta_safe.train([*TINY, "meta.iterations=1", "evaluate_after=false"], run_dir=tmp_path)
    on_cpu, there = meta_safe.load(tmp_path), meta_safe.load(tmp_path, device=device)
    assert {t.device.type for t in tensors_of(there).values()} == {device}
    assert there.cfg.runtime.device == device
    obs = torch.randn(5, on_cpu.setup.policy.obs_dim, generator=torch.Generator().manual_seed(0))
    expected = on_cpu.act(obs)
    actual = there.act(obs.to(device))
    assert actual.device.type == device
    torch.testing.assert_close(actual.cpu(), expected, rtol=1e-5, atol=1e-6)
