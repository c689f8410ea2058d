"""An accept/reject test on each inner step, on the stepped policy's *measured* cost.

A linearised cost model cannot see a cost cliff: a small step from a policy that never
reaches a wall can send whole orbits through it. This test looks instead. After an inner
step the batch the new policy collects anyway measures its cost; the step is rejected
for a task when that cost exceeds the limit *and* is higher than the cost before the
step (or above ``d - margin``, with a margin for the noise of one batch). A rejected
step is shrunk (``x -> shrink x``) and the shrunk policy collects a
fresh batch, up to ``tries - 1`` times; a task whose every candidate is rejected keeps
its previous policy, which collects a fresh batch (the next step must not see the data
that proposed the rejected one). Accepted tasks keep their first batch.

Rejected candidates did run in the environment: their steps are counted and their
number per task and step is reported (:class:`StepCheckRecord`), so a user sees what
the test cost. The shrink factors are constants of the graph, so an adaptation with the
test stays differentiable in the initial parameters. The meta-optimizer's own state
(multipliers, overshoot history, LSTM memory) advances as if the proposed step had been
taken.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from meta_safe.data_source import InnerBatch, InnerDataSource
from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import Batch, behaviour_params

RETRY_SEED_STRIDE = 1_000
"""Retry ``j`` of collection ``k`` uses env seed ``seed + k + j * RETRY_SEED_STRIDE``."""


@dataclass(frozen=True)
class StepCheck:
    """:ivar tries: candidates per step, the full step included (``>= 2`` to retry).
    :ivar shrink: step factor per retry, in ``(0, 1)``. :ivar cost_limit: ``d``.
    :ivar margin: a candidate passes outright only at cost ``<= d - margin`` (one batch
        estimates the cost with noise; a margin keeps a re-measurement under ``d``)."""

    tries: int
    shrink: float
    cost_limit: float
    margin: float = 0.0


@dataclass
class StepCheckRecord:
    """:ivar rejected: ``[T]`` rejected candidates of this step per task.
    :ivar scale: ``[T]`` factor of the step taken (``0``: previous policy kept).
    :ivar extra_steps: env steps of the retry collections."""

    rejected: Tensor
    scale: Tensor
    extra_steps: int


def rejected(cost: Tensor, previous_cost: Tensor, cost_limit: float) -> Tensor:
    """``[T]`` bool: the stepped policy's cost is above the limit and above the previous."""
    return (cost > cost_limit) & (cost > previous_cost)


def replace_tasks(base: Batch, new: Batch, mask: Tensor) -> Batch:
    """``base`` with the tasks where ``mask [T]`` holds taken from ``new``."""
    values = {}
    for f in fields(base):
        a, b = getattr(base, f.name), getattr(new, f.name)
        if a is None:
            values[f.name] = None
            continue
        values[f.name] = torch.where(mask.view(-1, *([1] * (a.dim() - 1))), b, a)
    return Batch(**values)


def merge(base: InnerBatch, new: InnerBatch, mask: Tensor) -> InnerBatch:
    """Per task, ``new``'s data where ``mask [T]`` holds, else ``base``'s."""
    data = [n if m else b for b, n, m in zip(base.data, new.data, mask.tolist(), strict=True)]
    return InnerBatch(data, replace_tasks(base.real, new.real, mask), base.info)


def blend(previous: list[Params], proposed: list[Params], scale: Tensor) -> list[Params]:
    """Per task ``previous + scale_t (proposed - previous)`` (in the graph of both)."""
    out = []
    for prev, prop, s in zip(previous, proposed, scale.tolist(), strict=True):
        out.append(prop if s == 1.0 else {n: prev[n] + s * (prop[n] - prev[n]) for n in prev})
    return out


def checked_step(
    check: StepCheck,
    policy: GaussianPolicy,
    source: InnerDataSource,
    normalizer: ObsNormalizer,
    generator: torch.Generator,
    k: int,
    seed: int,
    previous: list[Params],
    previous_batch: InnerBatch,
    proposed: list[Params],
    batch: InnerBatch,
) -> tuple[list[Params], InnerBatch, StepCheckRecord]:
    """Apply the test to step ``k`` (``batch``: what ``proposed`` collected).

    :return: the parameters kept per task, their batch, and what the test did.
    """
    num_tasks = len(proposed)
    previous_cost = previous_batch.real.episode_cost
    scale = torch.ones(num_tasks, dtype=torch.float64)
    count = torch.zeros(num_tasks, dtype=torch.long)
    threshold = check.cost_limit - check.margin
    bad = rejected(batch.real.episode_cost, previous_cost, threshold)
    params, extra = proposed, 0

    def recollect(attempt: int) -> tuple[list[Params], InnerBatch]:
        """The policies stepped by ``scale`` and a fresh batch of them (all tasks run)."""
        stepped = blend(previous, proposed, scale)
        again = source.inner_batch(k, policy, behaviour_params(stepped), normalizer, generator,
                                   seed + attempt * RETRY_SEED_STRIDE)  # fmt: skip
        return stepped, again

    for retry in range(1, check.tries):
        if not bool(bad.any()):
            break
        count += bad.long()
        scale = torch.where(bad, scale * check.shrink, scale)
        params, again = recollect(retry)
        extra += again.real.num_steps
        batch = merge(batch, again, bad)
        bad = bad & rejected(again.real.episode_cost, previous_cost, threshold)
    if bool(bad.any()):
        # Keep the previous policy, with a fresh batch: the next step must not see the
        # same data (it would propose the same rejected step again).
        count += bad.long()
        scale = torch.where(bad, torch.zeros_like(scale), scale)
        params, again = recollect(check.tries)
        extra += again.real.num_steps
        batch = merge(batch, again, bad)
    return params, batch, StepCheckRecord(count, scale, extra)
