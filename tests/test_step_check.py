"""The measured accept/reject test of inner steps (meta_safe.step_check)."""

import torch

from meta_safe.data_source import InnerBatch
from meta_safe.rl.rollout import Batch
from meta_safe.step_check import StepCheck, blend, checked_step, merge, rejected


def fake_batch(cost: torch.Tensor) -> Batch:
    """A one-step batch per task whose measured episode cost is ``cost [T]``."""
    num_tasks = cost.shape[0]
    z = torch.zeros(num_tasks, 1, 1)
    return Batch(
        raw_obs=z.unsqueeze(-1), obs=z.unsqueeze(-1), next_obs=z.unsqueeze(-1),
        actions=z.unsqueeze(-1), log_probs=z, rewards=z, costs=cost.view(-1, 1, 1).float(),
        terminated=z.bool(), truncated=torch.ones_like(z).bool(), timestep=z.long(),
        episode_return=torch.zeros(num_tasks, dtype=torch.float64),
        episode_cost=cost.double(), episodes=torch.ones(num_tasks, dtype=torch.long),
    )  # fmt: skip


class CostOfW:
    """A data source whose measured cost is ``100 * w`` of each task's policy."""

    num_tasks = 3

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def inner_batch(self, k, policy, params, normalizer, generator, seed) -> InnerBatch:
        w = params["w"].detach().view(-1)
        self.calls.append(w.clone())
        return InnerBatch([f"data w={float(v):.3f}" for v in w], fake_batch(100 * w), {})


def test_rejection_needs_a_cost_above_the_limit_and_above_the_previous() -> None:
    cost = torch.tensor([5.0, 20.0, 20.0, 30.0])
    previous = torch.tensor([50.0, 10.0, 25.0, 30.0])
    assert rejected(cost, previous, 10.0).tolist() == [False, True, False, False]


def test_checked_step_shrinks_rejected_steps_and_keeps_the_previous_policy() -> None:
    """Task 0 is safe after the full step (kept, no retry), task 1 after halving it twice
    (scale 1/4), task 2 never (previous policy and batch kept); the kept parameters stay
    differentiable in theta_0."""
    theta = torch.tensor(0.05, requires_grad=True)
    previous = [{"w": theta * 1.0} for _ in range(3)]
    proposed = [{"w": theta + d} for d in (0.0, 0.2, 1.0)]  # costs 5, 25, 105
    source = CostOfW()
    previous_batch = InnerBatch(["prev"] * 3, fake_batch(torch.full((3,), 5.0)), {})
    first = source.inner_batch(1, None, {"w": torch.stack([p["w"] for p in proposed])}, None,
                               None, 0)  # fmt: skip
    check = StepCheck(tries=3, shrink=0.5, cost_limit=10.5)
    params, batch, record = checked_step(
        check, None, source, None, None, 1, 0, previous, previous_batch, proposed, first
    )
    assert record.scale.tolist() == [1.0, 0.25, 0.0]
    assert record.rejected.tolist() == [0, 2, 3]
    assert record.extra_steps == 3 * 3  # two retries and a fresh batch, 3 tasks x 1 step
    assert [round(float(p["w"].detach()), 6) for p in params] == [0.05, 0.1, 0.05]
    assert batch.data[0] == "data w=0.050" and batch.data[1] == "data w=0.100"
    assert batch.data[2] == "data w=0.050"  # the kept previous policy's fresh batch
    assert torch.allclose(batch.real.episode_cost, torch.tensor([5.0, 10.0, 5.0]).double())
    (grad,) = torch.autograd.grad(params[1]["w"], theta)
    assert torch.isclose(grad, torch.tensor(1.0))
    assert len(source.calls) == 4  # the first collection, two retries, the fresh batch


def test_merge_and_blend() -> None:
    a = InnerBatch(["a0", "a1"], fake_batch(torch.tensor([1.0, 2.0])), {"x": 1.0})
    b = InnerBatch(["b0", "b1"], fake_batch(torch.tensor([3.0, 4.0])), {})
    merged = merge(a, b, torch.tensor([False, True]))
    assert merged.data == ["a0", "b1"]
    assert merged.real.episode_cost.tolist() == [1.0, 4.0]
    assert merged.real.costs.view(-1).tolist() == [1.0, 4.0]
    prev = [{"w": torch.tensor(1.0)}, {"w": torch.tensor(1.0)}]
    prop = [{"w": torch.tensor(3.0)}, {"w": torch.tensor(3.0)}]
    out = blend(prev, prop, torch.tensor([1.0, 0.25]))
    assert out[0] is prop[0] and float(out[1]["w"]) == 1.5


def test_single_task_training_never_accepts_a_costlier_violating_update() -> None:
    """With the step check every accepted update's measured cost is within the limit or
    no higher than before it, and rejections and their env steps are counted."""
    from meta_safe.env_factory import task_distribution
    from meta_safe.meta_optimizers import build_meta_optimizer
    from meta_safe.rl.policy import GaussianPolicy
    from meta_safe.rl.surrogate import AdvantageConfig
    from meta_safe.single_task import train_single_task
    from tests.tiny import compose_cfg

    overrides = ["env.episode_steps=100", "env.cost_limit=2", "meta_optimizer=trpo",
                 "env.fixed.wall_scale=[0.2,0.2]", "meta_optimizer.trust_radius=0.05"]  # fmt: skip
    cfg = compose_cfg(*overrides)
    task = task_distribution(cfg.env, "fixed").sample(1, seed=0)[0]
    torch.manual_seed(0)
    policy = GaussianPolicy(_obs_dim(cfg), 2, [16], "tanh", 0.0)
    check = StepCheck(tries=2, shrink=0.5, cost_limit=2.0)
    result = train_single_task(
        cfg.env, task, build_meta_optimizer(cfg.meta_optimizer), policy, 6, 4, 100,
        AdvantageConfig(), seed=0, step_check=check,
    )  # fmt: skip
    assert len(result.rejected) == 6 and sum(result.rejected) > 0
    for before, after, count in zip(result.costs, result.costs[1:], result.rejected, strict=False):
        if count < check.tries:  # an accepted candidate (else: the old policy, fresh batch)
            assert after <= max(2.0, before) + 1e-9
    assert any(count < check.tries for count in result.rejected)
    # tries=2: one retry per rejected update, and a fresh batch when that fails too
    extra = sum(min(r, 2) for r in result.rejected)
    assert result.env_steps == 4 * 100 * (7 + extra)


def _obs_dim(cfg) -> int:
    from meta_safe.maml import probe_obs_dim

    return probe_obs_dim(cfg.env)
