"""The fused rollout (policy and env as one compiled scan) against the stepwise loop."""

from dataclasses import fields

import pytest
import torch

import meta_safe.rl.rollout as rollout
from meta_safe.rl import fused_rollout as fused
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer
from meta_safe.rl.rollout import collect, stack_params
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import BatchedCircleEnv, PointDynamics

TASKS = [CircleTask(radius=1.2 + 0.2 * t, wall_distance=0.5 + 0.1 * t) for t in range(3)]
EPISODE = 40
#: The fitted Point model's turn rate chatters at its force limit (each physics step
#: multiplies a difference in it by ~4), so a rounding difference between two ways of
#: computing a step grows to order one within a step. A weaker turn gain keeps the map
#: contracting, and two correct implementations then agree to rounding over a batch.
SMOOTH = PointDynamics(turn_gain=1.0)


def batches(fused_env: bool, per_task: bool, fast: bool, steps: int = 2 * EPISODE + 10):
    """A warmed-up normaliser, then one batch across two episode ends."""
    torch.manual_seed(3)
    policy = GaussianPolicy(28, 2)
    params = policy.init_params()
    params = stack_params([params] * len(TASKS)) if per_task else params
    env = BatchedCircleEnv(TASKS, 4, seed=0, episode_steps=EPISODE, fast=fast, model=SMOOTH)
    env.fused_rollout = fused_env
    normalizer = ObsNormalizer(28)
    collect(env, policy, params, normalizer, EPISODE - 1, torch.Generator().manual_seed(1),
            per_task, 2)  # fmt: skip
    before = normalizer.mean.clone()
    batch = collect(env, policy, params, normalizer, steps, torch.Generator().manual_seed(2),
                    per_task, 5)  # fmt: skip
    return batch, env, normalizer, before


@pytest.mark.parametrize("per_task", [True, False])
def test_fused_segments_equal_the_stepwise_loop(monkeypatch, per_task: bool) -> None:
    """Run eagerly (no compiler), the fused segments compute what the stepwise loop does,
    to float rounding: every batch field, the env's state and clock afterwards, and the
    normaliser's update. The batch spans two episode ends (the steps there, with their
    auto-resets, stay stepwise), so segments and single steps interleave."""
    monkeypatch.setattr(fused, "MIN_SEGMENT_STEPS", 8)
    runner = fused.FusedRollout()
    runner.enabled = True
    monkeypatch.setattr(runner, "program", fused._segment_program)  # eager scan
    monkeypatch.setattr(rollout, "fused_rollout", runner)
    calls, original = [], runner.run

    def counted(*args, **kwargs):
        calls.append(len(args[-1]))  # the segment's noise [n, T, E, act]
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "run", counted)
    stepwise, env_a, norm_a, _ = batches(False, per_task, fast=False)
    segmented, env_b, norm_b, _ = batches(True, per_task, fast=False)
    assert calls == [39, 39, 39, 10]  # warm-up 39 steps, then 39 + 1 + 39 + 1 + 10
    for field in fields(stepwise):
        a, b = getattr(stepwise, field.name), getattr(segmented, field.name)
        assert a.shape == b.shape, field.name
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, equal_nan=True, msg=field.name)
    assert segmented.truncated[:, :, EPISODE - 1].all()
    assert segmented.timestep[:, :, EPISODE].eq(0).all()
    torch.testing.assert_close(env_a.state, env_b.state, rtol=1e-5, atol=1e-5)
    assert torch.equal(env_a.elapsed, env_b.elapsed)
    torch.testing.assert_close(norm_a.mean, norm_b.mean)
    torch.testing.assert_close(norm_a.var, norm_b.var)


def test_compiled_segments_equal_the_compiled_step(monkeypatch) -> None:
    """Compiled, the fused segments give the compiled per-step kernel's batch, to float
    rounding, in every field; the env keeps its channel-major state layout."""
    monkeypatch.setattr(fused, "MIN_SEGMENT_STEPS", 8)
    runner = fused.FusedRollout()
    runner.enabled = True
    monkeypatch.setattr(rollout, "fused_rollout", runner)
    # every segment 39 steps long, so one compiled program (a new length compiles again)
    stepwise, _, norm_a, _ = batches(False, True, fast=True, steps=2 * EPISODE)
    segmented, env, norm_b, _ = batches(True, True, fast=True, steps=2 * EPISODE)
    assert runner.enabled, "the fused rollout failed to compile"
    for field in fields(stepwise):
        a, b = getattr(stepwise, field.name), getattr(segmented, field.name)
        # (normalised observations: the normaliser divides rounding by stds as small as 1e-3)
        atol = 1e-3 if field.name in ("obs", "next_obs") else 1e-4
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol, equal_nan=True, msg=field.name)
    torch.testing.assert_close(norm_a.var, norm_b.var, rtol=1e-5, atol=1e-5)
    assert env.state.stride() == (4, 1, len(TASKS) * 4)  # channel-major, as the env keeps it


def test_a_policy_in_another_dtype_steps_one_by_one(monkeypatch) -> None:
    """A float64 policy on a float32 env is not fused (and the runner stays enabled)."""
    runner = fused.FusedRollout()
    runner.enabled = True
    env = BatchedCircleEnv(TASKS, 2, seed=0, episode_steps=EPISODE)
    params = {k: v.double() for k, v in GaussianPolicy(28, 2).init_params().items()}
    raw = env.reset(seed=0)
    out = runner.run(env, None, params, False, raw, raw[0, 0], raw[0, 0], 10.0, raw[..., :2])
    assert out is None and runner.enabled


class EnvBuiltError(Exception):
    """Raised once meta-training's env exists."""


def test_the_option_reaches_meta_trainings_env(monkeypatch) -> None:
    """``runtime.fused_rollout=true`` builds meta-training's env with the fused path on;
    the default leaves it off."""
    from meta_safe import maml
    from meta_safe.config import compose_config
    from meta_safe.env_factory import make_batched_env

    built = []

    def spy(*args, **kwargs):
        env = make_batched_env(*args, **kwargs)
        built.append(env.fused_rollout)
        raise EnvBuiltError  # (stop before any collection)

    for value in (None, "true", "false"):
        overrides = ["runtime.progress=false"] + (
            [] if value is None else [f"runtime.fused_rollout={value}"]
        )
        setup, state = maml.init_meta(compose_config(overrides))
        with monkeypatch.context() as patched, pytest.raises(EnvBuiltError):
            patched.setattr(maml, "make_batched_env", spy)
            maml.meta_step(setup, state)
    assert built == [False, True, False]
