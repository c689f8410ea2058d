"""The ``dyna`` config section without the model: how imagined data enters an update."""

from __future__ import annotations

from dataclasses import dataclass

#: Where imagined paths branch: real episode-start states (paths then run whole
#: episodes: measured, short branches from one episode's states do not improve the
#: gradient even with the exact model), or any real state visited (MBPO's branching).
BRANCH_FROM = ("episode_starts", "visited")


@dataclass
class DynaSettings:
    """The ``dyna`` config section without the model (the ``dyna`` config group)."""

    real_envs_per_task: int = 1
    model_envs_per_task: int = 7
    model_steps: int = 500
    max_length: int = 500
    uncertainty_steps: float = 500.0
    real_floor: float = 0.1
    max_model_fraction: float = 0.9
    train_every: int = 1
    branch_from: str = "episode_starts"
    start_pool_size: int = 4096
    # False: meta-training's inner updates use real data only (meta.envs_per_task envs,
    # as dyna=none) while the model learns from every real batch, and only adaptation
    # mixes in imagined data; True: meta-training's inner updates are Dyna's too
    imagined_in_meta_training: bool = False

    def __post_init__(self) -> None:
        if self.branch_from not in BRANCH_FROM:
            raise ValueError(
                f"dyna.branch_from={self.branch_from!r} is invalid: valid choices are "
                f"{list(BRANCH_FROM)}"
            )
        if self.start_pool_size < 1:
            raise ValueError(f"dyna.start_pool_size={self.start_pool_size} must be >= 1")
        for name in ("real_envs_per_task", "model_envs_per_task", "model_steps", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"dyna.{name}={getattr(self, name)} is invalid: must be >= 1")
        if not self.uncertainty_steps > 0:
            raise ValueError(f"dyna.uncertainty_steps={self.uncertainty_steps} must be > 0")
        if not 0 < self.real_floor <= 1:
            raise ValueError(f"dyna.real_floor={self.real_floor} is invalid: must be in (0, 1]")
        if not 0 <= self.max_model_fraction < 1:
            raise ValueError(
                f"dyna.max_model_fraction={self.max_model_fraction} is invalid: must be in [0, 1)"
            )
        if self.train_every < 1:
            raise ValueError(f"dyna.train_every={self.train_every} is invalid: must be >= 1")
