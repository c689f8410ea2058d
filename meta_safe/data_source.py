"""Where the inner loop's data comes from: the data-source interface and real rollouts.

The inner loop (:func:`meta_safe.adaptation.adapt`) asks a data source for one batch of
:class:`~meta_safe.rl.surrogate.PolicyData` per task and never learns which kind it
got: :class:`RealRollouts` collects every sample in the env; Dyna's source
(:class:`meta_safe.dyna.DynaRollouts`) adds imagined rollouts of a dynamics model.
The post-adaptation batch of the meta-objective is always real.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from meta_safe.rl.policy import GaussianPolicy, ObsNormalizer, Params
from meta_safe.rl.rollout import Batch, BatchedEnv, collect
from meta_safe.rl.surrogate import AdvantageConfig, PolicyData, prepare


@dataclass
class InnerBatch:
    """What a data source returns for one inner step.

    :ivar data: per-task policy data (real and, for Dyna, imagined samples).
    :ivar real: the real batch (``[T, E, N]``): its episodes measure the policy.
    :ivar info: scalars to log (model share, imagined path lengths, ...).
    """

    data: list[PolicyData]
    real: Batch
    info: dict[str, float]


class InnerDataSource(Protocol):
    """One batch per task for inner step ``k`` with the behaviour policies ``params``."""

    num_tasks: int

    def inner_batch(
        self,
        k: int,
        policy: GaussianPolicy,
        params: Params,
        normalizer: ObsNormalizer,
        generator: torch.Generator,
        seed: int,
    ) -> InnerBatch: ...


class RealRollouts:
    """Every sample from the env: ``env.num_envs x steps_per_env`` steps per task."""

    def __init__(
        self, env: BatchedEnv, steps_per_env: int, adv_cfg: AdvantageConfig, horizon: int
    ) -> None:
        self.env, self.steps_per_env = env, steps_per_env
        self.num_tasks = env.num_tasks
        self.adv_cfg, self.horizon = adv_cfg, horizon

    def collect(
        self,
        policy: GaussianPolicy,
        params: Params,
        normalizer: ObsNormalizer,
        generator: torch.Generator,
        seed: int,
    ) -> Batch:
        """A fresh real batch ``[T, E, steps_per_env]`` with per-task ``params``."""
        return collect(
            self.env, policy, params, normalizer, self.steps_per_env, generator, True, seed
        )

    def inner_batch(
        self,
        k: int,
        policy: GaussianPolicy,
        params: Params,
        normalizer: ObsNormalizer,
        generator: torch.Generator,
        seed: int,
    ) -> InnerBatch:
        """:param params: behaviour parameters, each tensor ``[T, ...]`` (detached)."""
        return self.wrap(self.collect(policy, params, normalizer, generator, seed))

    def wrap(self, batch: Batch) -> InnerBatch:
        """Policy data of a real batch alone."""
        return InnerBatch(prepare(batch, self.adv_cfg, self.horizon), batch, {})


def adaptation_info(infos: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each data-source scalar over the collections that reported it."""
    keys = sorted({k for info in infos for k in info})
    return {k: sum(i[k] for i in infos if k in i) / sum(k in i for i in infos) for k in keys}
