"""Typed schema of the configuration in ``configs/`` (hydra structured configs).

The yaml files are merged onto these dataclasses, so a mistyped or unknown key
fails at start-up with the valid keys listed, and wrong types are rejected.
The ``meta_optimizer`` and ``dyna`` groups are free-form here: their keys are
the constructor arguments of the class named by ``_target_``, checked there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from meta_safe.rl.surrogate import AdvantageConfig

OUTER_STEPS = ("cpo", "trpo")  # outer step on theta_0: constrained (CPO) or cost-blind (TRPO)


@dataclass
class RangeConfig:
    """A task distribution: ``[low, high]`` ranges (wall distance = radius * wall_scale)."""

    radius: list[float] = field(default_factory=lambda: [1.0, 1.5])
    wall_scale: list[float] = field(default_factory=lambda: [0.55, 0.75])
    damping_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    gear_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])


@dataclass
class EnvConfig:
    backend: str = "torch"  # torch | mujoco
    robot: str = "point"  # point | car
    num_walls: int = 2  # 2 | 4
    episode_steps: int = 500  # steps per episode (truncation)
    placement: float = 0.2  # start position uniform in [-placement, placement]^2
    step_threads: int = 1  # MuJoCo backend: threads stepping the envs (mj_step releases the GIL)
    cost_limit: float = 10.0  # per-episode cost limit d
    fixed: RangeConfig = field(default_factory=RangeConfig)
    meta_train: RangeConfig = field(default_factory=RangeConfig)
    held_out: RangeConfig = field(default_factory=RangeConfig)


@dataclass
class PolicyConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # MLP hidden sizes
    activation: str = "tanh"  # tanh | relu | elu
    log_std_init: float = -0.5  # initial log standard deviation of actions


@dataclass
class MetaConfig:
    iterations: int = 20  # meta-iterations (outer steps)
    tasks_per_iteration: int = 3  # tasks sampled per meta-iteration
    inner_steps: int = 1  # K: inner updates per task, each on fresh data
    envs_per_task: int = 8  # parallel envs per task per collection
    steps_per_env: int = 500  # steps per env per collection (500 = one episode)
    first_order: bool = False  # drop second-order terms of the meta-gradient
    outer_trust_radius: float = 0.01  # KL bound of the outer CPO step on the initial policy
    outer_damping: float = 0.1  # Fisher damping of the outer step
    outer_cg_iters: int = 10  # conjugate-gradient iterations of the outer step
    outer_fisher_stride: int = 5  # the outer Fisher is averaged over every k-th sample
    cost_penalty: float = 1.0  # mu in J_R - mu * max(0, J_C - d) (per episode) for learnable rules


@dataclass
class EvaluationConfig:
    tasks: int = 20  # held-out tasks
    inner_steps: int = 3  # adaptation steps on each held-out task
    envs_per_task: int = 8
    steps_per_env: int = 500
    seed: int = 10_000  # seed of held-out task sampling and rollouts
    split: str = "held_out"  # fixed | meta_train | held_out


@dataclass
class CriticConfig:
    cost: str = "mlp"  # linear | mlp: value function of the cost in single-task training
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    lr: float = 1e-3
    epochs: int = 10  # passes over each batch
    minibatch: int = 256


@dataclass
class RuntimeConfig:
    device: str = "cpu"
    torch_threads: int = 1
    progress: bool = True  # live progress bar


@dataclass
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    meta_optimizer: Any = None
    dyna: Any = None
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    seed: int = 0
    resume: bool = False  # continue the run in run_dir from its last checkpoint
    run_dir: str | None = None  # default: hydra's output directory
    checkpoint_every: int = 1  # meta-iterations between checkpoints
    evaluate_after: bool = True  # run the held-out evaluation when training ends


CHOICES: dict[str, tuple[Any, ...]] = {
    "env.backend": ("torch", "mujoco"),
    "env.robot": ("point", "car"),
    "env.num_walls": (2, 4),
    "policy.activation": ("tanh", "relu", "elu"),
    "evaluation.split": ("fixed", "meta_train", "held_out"),
    "runtime.device": ("cpu", "cuda"),
    "critic.cost": ("linear", "mlp"),
}
POSITIVE: tuple[str, ...] = (
    "env.episode_steps",
    "env.step_threads",
    "meta.iterations",
    "meta.tasks_per_iteration",
    "meta.envs_per_task",
    "meta.steps_per_env",
    "meta.outer_trust_radius",
    "meta.outer_fisher_stride",
    "evaluation.tasks",
    "evaluation.envs_per_task",
    "evaluation.steps_per_env",
    "checkpoint_every",
    "runtime.torch_threads",
    "critic.lr",
    "critic.epochs",
    "critic.minibatch",
)
NON_NEGATIVE: tuple[str, ...] = ("meta.inner_steps", "evaluation.inner_steps", "env.cost_limit")


def validate(cfg: DictConfig) -> DictConfig:
    """Merge ``cfg`` onto the schema and check values; raise ``ValueError`` naming the bad one."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
    except Exception as error:  # omegaconf raises several types; all mean "bad config"
        raise ValueError(f"invalid configuration: {error}") from error
    for key, choices in CHOICES.items():
        value = OmegaConf.select(merged, key)
        if value not in choices:
            raise ValueError(f"{key}={value!r} is invalid: valid choices are {list(choices)}")
    for key in POSITIVE:
        value = OmegaConf.select(merged, key)
        if not value > 0:
            raise ValueError(f"{key}={value!r} is invalid: must be > 0")
    for key in NON_NEGATIVE:
        value = OmegaConf.select(merged, key)
        if value < 0:
            raise ValueError(f"{key}={value!r} is invalid: must be >= 0")
    outer = merged.meta_optimizer.get("outer_step", "cpo") if merged.meta_optimizer else "cpo"
    if outer not in OUTER_STEPS:
        raise ValueError(
            f"meta_optimizer.outer_step={outer!r} is invalid: valid choices are {list(OUTER_STEPS)}"
        )
    if merged.env.backend == "torch" and merged.env.robot != "point":
        raise ValueError(
            f"env.robot={merged.env.robot!r} is not available on env.backend='torch': "
            "valid robots there are ['point'] (use env.backend=mujoco for 'car')"
        )
    return merged
