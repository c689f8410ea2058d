"""Learning tests: a policy really improves, and the constraint really binds.

CPO and unconstrained TRPO trained from scratch on the default fixed point-circle task
(torch backend, cost limit 25), 30 updates of 16,000 steps (32 envs x 500), CPO with the
default persistent MLP cost critic and the overshoot-calibrated margin
(``meta_optimizer.overshoot_margin=true``, :mod:`meta_safe.meta_optimizers.overshoot_margin`).

"Ends near the limit" is judged on the last 10 batches (320 episodes): one batch is a
noisy number, because each episode either stays inside the walls (cost 0) or drifts out
(40-270). Measured here (seeds 0-6): CPO's late cost is 30.1, 25.4, 23.2, 26.1, 25.3,
18.2 and 26.1, mean 24.9, so the mean of three seeds lands on either side of the limit
(an earlier rounding of the same arithmetic gave 24.9, 19.2 and 23.3 for seeds 0-2);
the test allows the mean of seeds 0-2 10% above it and each seed 25%. TRPO's cost ends
near 200. Without the margin the same CPO and budget end at 39.9, 37.2 and 37.3, so the
margin is what this test pins down. About 30 s per run.
"""

import statistics

import pytest
import torch
from hydra import compose, initialize_config_dir

from meta_safe.config import CONFIG_DIR, validate
from meta_safe.env_factory import task_distribution
from meta_safe.meta_optimizers import build_meta_optimizer
from meta_safe.rl.policy import GaussianPolicy
from meta_safe.rl.surrogate import AdvantageConfig
from meta_safe.single_task import SingleTaskResult, train_single_task

ITERATIONS = 30
ENVS = 32
SEEDS = (0, 1, 2)
COST_LIMIT = 25.0


def run(overrides: list[str], seed: int) -> SingleTaskResult:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = validate(compose("config", overrides=[*overrides, f"env.cost_limit={COST_LIMIT}"]))
    torch.manual_seed(seed)
    task = task_distribution(cfg.env, "fixed").sample(1, seed=0)[0]
    policy = GaussianPolicy(
        28, 2, cfg.policy.hidden, cfg.policy.activation, cfg.policy.log_std_init
    )
    return train_single_task(
        cfg.env,
        task,
        build_meta_optimizer(cfg.meta_optimizer),
        policy,
        ITERATIONS,
        ENVS,
        cfg.env.episode_steps,
        AdvantageConfig(**cfg.advantage),
        seed=seed,
        critic_cfg=cfg.critic,
    )


def late(values: list[float]) -> float:
    return statistics.mean(values[-10:])


@pytest.mark.slow
def test_cpo_improves_return_and_ends_near_the_cost_limit() -> None:
    runs = [
        run(["meta_optimizer=cpo_layer", "meta_optimizer.overshoot_margin=true"], seed)
        for seed in SEEDS
    ]
    for result in runs:
        assert late(result.returns) > result.returns[0] + 10.0, result.returns
    late_costs = [late(result.costs) for result in runs]
    assert statistics.mean(late_costs) <= 1.1 * COST_LIMIT, late_costs
    assert max(late_costs) <= 1.25 * COST_LIMIT, late_costs


@pytest.mark.slow
def test_unconstrained_trpo_runs_through_the_walls() -> None:
    """The same budget without a constraint: the limit binds (TRPO's cost is far above it)."""
    result = run(["meta_optimizer=trpo"], seed=0)
    assert late(result.returns) > result.returns[0] + 10.0, result.returns
    assert late(result.costs) > 4 * COST_LIMIT, result.costs
