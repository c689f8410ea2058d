"""Single-task training: the inner rule's cost target and bad arguments."""

import pytest
import torch

from meta_safe.env_factory import task_distribution
from meta_safe.maml import probe_obs_dim
from meta_safe.meta_optimizers import build_meta_optimizer
from meta_safe.rl.policy import GaussianPolicy
from meta_safe.rl.surrogate import AdvantageConfig
from meta_safe.single_task import train_single_task
from tests.tiny import compose_cfg


def _train(cost_margin: float, limits: list[float], iterations: int = 2):
    cfg = compose_cfg("env.episode_steps=40", "env.cost_limit=7", "meta_optimizer=cpo_layer")
    rule = build_meta_optimizer(cfg.meta_optimizer)
    step = rule.step

    def recording_step(policy, params, state, data, ctx):
        limits.append(ctx.cost_limit)
        return step(policy, params, state, data, ctx)

    rule.step = recording_step
    task = task_distribution(cfg.env, "fixed").sample(1, seed=0)[0]
    torch.manual_seed(0)
    policy = GaussianPolicy(probe_obs_dim(cfg.env), 2, [8], "tanh", -0.5)
    return train_single_task(
        cfg.env, task, rule, policy, iterations, 2, 40, AdvantageConfig(), seed=0,
        cost_margin=cost_margin,
    )  # fmt: skip


def test_single_task_rule_aims_below_the_limit_by_the_margin():
    """Every update sees the target ``cost_limit - cost_margin``, as meta-training's inner
    rule does with ``meta.inner_cost_margin``; no margin leaves the limit itself."""
    with_margin, without = [], []
    _train(2.5, with_margin)
    _train(0.0, without)
    assert with_margin == [4.5, 4.5]
    assert without == [7.0, 7.0]


def test_single_task_rejects_a_negative_margin():
    with pytest.raises(ValueError, match=r"cost_margin=-1.0 is invalid: must be >= 0"):
        _train(-1.0, [])
