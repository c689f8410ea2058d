"""The persistent MLP critic: learns, is reproducible, and checkpoints exactly."""

import pytest
import torch

from meta_safe.rl.critic import MLPCritic


def data(seed: int):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(1, 4, 100, 3, generator=gen)
    timestep = torch.arange(100).expand(1, 4, 100)
    targets = torch.sin(obs[..., 0]) + 0.5 * obs[..., 1] ** 2 + timestep / 100
    return obs, timestep, targets


def test_critic_learns_a_value_across_batches_and_beats_the_mean() -> None:
    critic = MLPCritic(3, hidden=(32, 32), lr=3e-3, epochs=20, minibatch=64, seed=0)
    for seed in range(5):  # keeps learning across batches
        critic.fit(*data(seed), horizon=100)
    obs, timestep, targets = data(99)  # unseen batch
    error = (critic.predict(obs, timestep, 100) - targets.double()).pow(2).mean()
    baseline = (targets - targets.mean()).pow(2).mean()
    assert error < 0.2 * baseline


def test_critic_is_reproducible_and_resumes_exactly() -> None:
    a = MLPCritic(3, seed=1, epochs=2)
    b = MLPCritic(3, seed=1, epochs=2)
    a.fit(*data(0), horizon=100)
    b.load_state_dict(a.state_dict())
    a.fit(*data(1), horizon=100)
    b.fit(*data(1), horizon=100)
    obs, timestep, _ = data(2)
    assert torch.equal(a.predict(obs, timestep, 100), b.predict(obs, timestep, 100))


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"lr": 0.0}, {"activation": "sigmoid"}])
def test_invalid_critic_settings_are_clear_errors(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MLPCritic(3, **kwargs)
