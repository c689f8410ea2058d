"""The typed configuration: the one source of every default (hydra structured configs).

``meta_safe/configs/config.yaml`` only chooses the groups; the values below are the defaults, and
the yaml presets in ``meta_safe/configs/<group>/`` state only what they change. A mistyped or
unknown key fails at start-up with the valid keys listed, and wrong types are rejected.
The ``meta_optimizer`` and ``dyna`` groups are free-form here: their keys are the
constructor arguments of the class named by ``_target_``, checked there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from meta_safe.device import check_device
from meta_safe.dyna.registry import register_configs as register_dyna_configs
from meta_safe.errors import ConfigError
from meta_safe.meta_optimizers import register_configs as register_meta_optimizer_configs
from meta_safe.rl.surrogate import AdvantageConfig
from stochastic_circle.tasks import REFERENCE_LEVELS

CONFIG_DIR = str(Path(__file__).resolve().parent / "configs")
"""The hydra config directory (``meta_safe/configs/``, shipped with the package)."""

SCHEMA_NAME = "meta_safe_schema"
"""Name under which :class:`TrainConfig` is stored for ``configs/config.yaml``'s defaults list."""

OUTER_STEPS = ("auto", "cpo", "trpo")
"""Outer step on ``theta_0``: ``cpo`` constrains the post-adaptation cost, ``trpo`` ignores
it, ``auto`` picks ``trpo`` for a meta-optimizer that ignores cost and ``cpo`` otherwise."""

OUTER_CONSTRAINTS = ("mean", "worst", "cvar", "worst_step")
"""How the outer step combines the tasks' cost constraints: their mean,
the worst task's, the mean of the costliest ``meta.outer_cvar_fraction`` of them, or the
mean over tasks of the costliest inner step ``k`` (with ``meta.outer_cost_batches=every``)
(:func:`meta_safe.outer_constraint.outer_constraint_weights`)."""
OUTER_COST_BATCHES = ("post", "pre", "every")
"""Which costs the outer constraint covers: each task's after adapting, before adapting
(the meta-policy's own), or after every inner step ``k = 0..K``
(:func:`meta_safe.outer_constraint.constrained_costs`)."""

EVALUATION_POLICIES = ("auto", "sample", "fresh", "mean")
"""What evaluation measures after each step: the adaptation's own batches (``sample``),
separate episodes of the policy (``fresh``) or of its mean action (``mean``); ``auto``:
``fresh`` under a step check or with ``evaluation.measure_episodes`` set, else ``sample``
(:mod:`meta_safe.evaluation`)."""

SPLITS = ("fixed", "meta_train", "held_out")
SPLIT_NAMES = {
    "fixed": "copies of the fixed task",
    "meta_train": "unseen tasks from the training ranges",
    "held_out": "held-out tasks",
}
"""The task splits (``env.<split>`` ranges) and how tables name them."""


def _range(low: float, high: float) -> Any:
    return field(default_factory=lambda: [low, high])


_TRAIN = REFERENCE_LEVELS["meta_train"]


def _level(name: str) -> Any:
    """A :class:`RangeConfig` default from the task suite's reference level ``name``."""
    level = REFERENCE_LEVELS[name]
    return field(
        default_factory=lambda: RangeConfig(
            radius=list(level["radius"]), wall_scale=list(level["wall_scale"])
        )
    )


@dataclass
class RangeConfig:
    """A task distribution: ``[low, high]`` ranges (wall distance = radius * wall_scale)."""

    radius: list[float] = _range(*_TRAIN["radius"])  # circle radius
    wall_scale: list[float] = _range(*_TRAIN["wall_scale"])  # walls at |x| = radius * wall_scale
    damping_scale: list[float] = _range(1.0, 1.0)  # joint damping multiplier
    gear_scale: list[float] = _range(1.0, 1.0)  # actuator gear multiplier


@dataclass
class EnvConfig:
    """The task family and simulator (Meta-CPO's stochastic circle levels 0, 1 and 2)."""

    backend: str = "torch"  # torch (fast batched) | mujoco (Safety-Gymnasium)
    robot: str = "point"  # point | car (car needs backend=mujoco)
    num_walls: int = 2  # 2 | 4
    episode_steps: int = 500  # steps per episode (truncation)
    placement: float = 0.2  # start position uniform in [-placement, placement]^2
    step_threads: int = 1  # MuJoCo backend: threads stepping the envs (mj_step releases the GIL)
    cost_limit: float = 10.0  # per-episode (undiscounted) cost limit d
    fixed: RangeConfig = _level("fixed")  # level 0: one task
    meta_train: RangeConfig = _level("meta_train")  # level 1: the training distribution
    held_out: RangeConfig = _level("held_out")  # level 2: larger circles, never trained on


@dataclass
class PolicyConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # Gaussian MLP hidden sizes
    activation: str = "tanh"  # tanh | relu | elu
    log_std_init: float = -0.5  # initial log standard deviation of actions


@dataclass
class MetaConfig:
    """The outer loop."""

    iterations: int = 20  # meta-iterations (outer steps)
    tasks_per_iteration: int = 3  # tasks sampled per meta-iteration (Meta-CPO: 3)
    inner_steps: int = 1  # K: inner updates per task, each on fresh data
    envs_per_task: int = 8  # envs per task per collection (8 x 500 = Meta-CPO's 4,000 steps)
    steps_per_env: int = 500  # steps per env per collection (500 = one episode)
    first_order: bool = False  # drop second-order terms of the meta-gradient
    outer_step: str = "auto"  # auto | cpo | trpo (see OUTER_STEPS)
    outer_trust_radius: float = 0.01  # KL bound of the outer step on the initial policy
    outer_damping: float = 0.1  # Fisher damping of the outer step
    outer_cg_iters: int = 10  # conjugate-gradient iterations of the outer step
    outer_fisher_stride: int = 5  # the outer Fisher is averaged over every k-th sample
    outer_constraint: str = "mean"  # mean | worst | cvar | worst_step: how tasks' costs combine
    outer_cost_batches: str = "every"  # post | pre | every: whose costs the outer step constrains
    outer_cvar_fraction: float = 0.5  # cvar: share of tasks (the costliest) the constraint averages
    outer_cost_margin: float = 8.0  # the outer step targets J_C <= d - margin (d = 10: J_C <= 2)
    outer_line_search_steps: int = 0  # >0: backtrack the outer step on measured meta-policy cost
    outer_line_search_shrink: float = 0.5  # backtracking factor of that line search
    inner_cost_margin: float = 0.0  # the inner rule aims at J_C <= d - margin (adaptation too)
    step_check_tries: int = 0  # >0: accept/reject each inner step on its measured cost (tries)
    step_check_shrink: float = 0.5  # step factor per rejected try
    step_check_margin: float = 0.0  # a try passes outright at measured cost <= d - margin
    cost_penalty: float = 1.0  # mu in J_R - mu max(0, J_C - d) (per episode), learnable rules
    learned_rule_lr: float | None = None  # outer Adam rate of a learnable rule; null: its own


@dataclass
class EvaluationConfig:
    """Adaptation on unseen tasks after training (and in ``python -m meta_safe.evaluate``)."""

    tasks: int = 20  # tasks to adapt on
    inner_steps: int = 3  # adaptation steps on each task
    envs_per_task: int = 8  # envs per task per collection
    steps_per_env: int = 500  # steps per env per collection
    seed: int = 10_000  # seed of task sampling and rollouts
    split: str = "held_out"  # fixed | meta_train | held_out
    also_splits: list[str] = field(default_factory=lambda: ["meta_train"])  # after training too
    policy: str = "auto"  # auto | sample (adaptation's batches) | fresh | mean (extra episodes)
    measure_episodes: int | None = None  # fresh/mean: episodes per task; null: envs_per_task
    cost_discount: float = 1.0  # reported episode cost sum_t gamma^t c_t (reference: 0.99)
    step_check_tries: int | None = None  # the adaptation's step check; null: meta.step_check_tries
    inner_cost_margin: float | None = None  # adaptation aims at J_C <= d - margin; null: meta's
    # cpo_layer's step settings at adaptation (keys of ADAPTATION_RULE_KEYS); {}: as trained
    inner_rule: dict[str, Any] = field(default_factory=dict)


#: Settings of a rule without learned state that adaptation may change
#: (``evaluation.inner_rule.<key>``), and the rules that have none.
ADAPTATION_RULE_KEYS = (
    "line_search_steps",
    "shrink",
    "overshoot_margin",
    "overshoot_decay",
    "overshoot_prior",
    "overshoot_hold",
    "overshoot_model",
)
ADAPTABLE_RULES = ("cpo_layer",)


@dataclass
class CriticConfig:
    """Value function of the cost where training spans many batches of one task (the
    single-task trainers and the from-scratch baseline); meta inner loops always fit
    per-batch linear values."""

    cost: str = "mlp"  # linear | mlp (a critic that keeps learning across batches)
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    lr: float = 1e-3
    epochs: int = 10  # passes over each batch
    minibatch: int = 256


@dataclass
class RuntimeConfig:
    device: str = "cpu"  # cpu, cuda or cuda:N (policy, inner updates, meta-gradient, torch env)
    torch_threads: int = 1  # intra-op threads: 1 is fastest for these small ops
    # torch backend: meta-training runs each rollout as one compiled program of policy and
    # env (it compiles for 20-40 s per batch shape first; pays off from ~50 meta-iterations)
    fused_rollout: bool = False
    progress: bool = True  # live progress bar with return and cost


@dataclass
class LoggingConfig:
    """Where per-iteration metrics go besides ``metrics.csv`` (always written)."""

    tensorboard: bool = True  # run_dir/tensorboard/
    wandb: bool = False  # Weights & Biases (the wandb extra); imported only when on
    wandb_project: str = "meta_safe"
    wandb_entity: str | None = None  # null: your default entity
    wandb_mode: str = "online"  # online | offline (sync later with `wandb sync`)


@dataclass
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    meta_optimizer: Any = None  # chosen by meta_optimizer=<name> (generated from the classes)
    dyna: Any = None  # chosen by dyna=<name> (generated from the classes)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    seed: int = 0  # seeds tasks, start states, action noise and initial weights
    resume: bool = False  # continue the run in run_dir from its checkpoint (exactly)
    overwrite: bool = False  # replace the run already in run_dir (else a new run refuses it)
    run_dir: str | None = None  # null: a new directory runs/<date>_<time>_<meta_optimizer>
    checkpoint_every: int = 1  # meta-iterations between (atomic) checkpoints
    evaluate_after: bool = True  # adapt on held-out tasks when training ends, print the table


ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)
register_meta_optimizer_configs()
register_dyna_configs()

CHOICES: dict[str, tuple[Any, ...]] = {
    "env.backend": ("torch", "mujoco"),
    "env.robot": ("point", "car"),
    "env.num_walls": (2, 4),
    "policy.activation": ("tanh", "relu", "elu"),
    "evaluation.split": SPLITS,
    "evaluation.policy": EVALUATION_POLICIES,
    "critic.cost": ("linear", "mlp"),
    "meta.outer_step": OUTER_STEPS,
    "meta.outer_constraint": OUTER_CONSTRAINTS,
    "meta.outer_cost_batches": OUTER_COST_BATCHES,
    "logging.wandb_mode": ("online", "offline"),
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
NON_NEGATIVE: tuple[str, ...] = (
    "seed",
    "evaluation.seed",
    "meta.inner_steps",
    "evaluation.inner_steps",
    "env.cost_limit",
    "meta.outer_cost_margin",
    "meta.outer_line_search_steps",
    "meta.step_check_tries",
    "meta.step_check_margin",
    "meta.inner_cost_margin",
)

LEGACY_META_OPTIMIZER_KEYS = {"outer_step": "meta.outer_step", "learnable_outer_lr": None}
"""Keys older configs kept in the ``meta_optimizer`` group, and where they live now
(``None``: dropped; the rule's own default outer learning rate applies)."""


PRE_SAFETY_OUTER = {"outer_cost_batches": "post", "outer_cost_margin": 0.0}
"""What the outer step constrained before ``meta.outer_cost_batches`` and
``meta.outer_cost_margin`` existed (a full older config lacks them)."""


RESUME_MUTABLE: tuple[str, ...] = (
    "meta.iterations",
    "evaluation",
    "evaluate_after",
    "checkpoint_every",
    "runtime",
    "logging",
    "env.step_threads",
    "resume",
    "overwrite",
    "run_dir",
)
"""Keys (or whole sections) a resumed run may change: none of them changes what is
learned in an iteration. Any other difference from the checkpoint's configuration is
refused (:func:`resume_differences`)."""


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _with_group_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with the keys its ``meta_optimizer`` and ``dyna`` options lack (options
    that gained arguments since it was written) at today's defaults of the same option."""
    from meta_safe.dyna.registry import DYNA_MODELS, dyna_schema
    from meta_safe.meta_optimizers import META_OPTIMIZERS, config_schema

    schemas = {
        "meta_optimizer": (META_OPTIMIZERS, config_schema),
        "dyna": (DYNA_MODELS, dyna_schema),
    }
    for group, (registry, schema) in schemas.items():
        option = cfg.get(group)
        if isinstance(option, dict) and option.get("name") in registry:
            defaults = OmegaConf.to_container(OmegaConf.structured(schema(option["name"])))
            cfg[group] = {**defaults, **option}
    return cfg


def resume_differences(saved: dict[str, Any], requested: DictConfig) -> dict[str, tuple]:
    """``key -> (saved value, requested value)`` for every key outside
    :data:`RESUME_MUTABLE` whose value differs. ``saved`` is a checkpoint's config
    (validated here, so older configs are migrated and gain new keys' defaults, the
    keys their ``meta_optimizer`` and ``dyna`` options gained since included)."""
    before = _flatten(
        _with_group_defaults(OmegaConf.to_container(validate(OmegaConf.create(saved))))
    )
    after = _flatten(OmegaConf.to_container(requested))
    if after.get("meta.outer_step") == "auto":  # resolved by the rule when training starts
        after["meta.outer_step"] = before.get("meta.outer_step")
    differences = {
        key: (before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
        and not any(key == m or key.startswith(m + ".") for m in RESUME_MUTABLE)
    }
    for group in ("meta_optimizer", "dyna"):  # another option: name it, not its keys
        name = f"{group}.name"
        if name in differences:
            differences = {k: v for k, v in differences.items() if not k.startswith(group + ".")}
            differences[group] = (before.get(name), after.get(name))
    return differences


def migrate(cfg: DictConfig) -> DictConfig:
    """Move keys of an older configuration (e.g. a checkpoint's) to where they live now.

    ``meta_optimizer.outer_step`` becomes ``meta.outer_step``;
    ``meta_optimizer.learnable_outer_lr`` becomes ``meta.learned_rule_lr``; a full
    ``meta`` section without ``outer_cost_batches`` keeps the outer constraint it was
    trained with (:data:`PRE_SAFETY_OUTER`), so such a run resumes as it began.
    """
    meta = cfg.get("meta")
    if meta and "tasks_per_iteration" in meta and "outer_cost_batches" not in meta:
        cfg = OmegaConf.merge(cfg, {"meta": PRE_SAFETY_OUTER})
    rule = cfg.get("meta_optimizer")
    if not rule or not any(k in rule for k in LEGACY_META_OPTIMIZER_KEYS):
        return cfg
    moved = OmegaConf.to_container(cfg)
    rule, meta = moved["meta_optimizer"], moved.setdefault("meta", {})
    if "outer_step" in rule:
        meta["outer_step"] = rule.pop("outer_step")
    if "learnable_outer_lr" in rule:
        meta["learned_rule_lr"] = rule.pop("learnable_outer_lr")
    return OmegaConf.create(moved)


def _check_finite(node: Any, prefix: str = "") -> None:
    """Every float in the configuration is finite."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        name = f"{prefix}.{key}" if prefix and isinstance(key, str) else f"{prefix}{key}"
        name = f"{prefix}[{key}]" if isinstance(key, int) else name
        if isinstance(value, dict | list):
            _check_finite(value, name)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name}={value} is invalid: must be a finite number")


FREE_FORM = ("meta_optimizer", "dyna", "evaluation.inner_rule")
"""Sections whose keys are checked by the class their ``_target_`` names (the inner rule's
adaptation settings: by :func:`_check_inner_rule`)."""


def _check_known_keys(node: dict, schema: dict, prefix: str = "") -> None:
    """Every key of ``node`` exists in ``schema`` (recursively, free-form sections aside)."""
    for key, value in node.items():
        name = f"{prefix}{key}"
        if name in FREE_FORM:
            continue
        if key not in schema:
            where = f"under {prefix[:-1]}" if prefix else "at the top level"
            raise ConfigError(f"{name} is not a known key: valid keys {where} are {list(schema)}")
        if isinstance(value, dict) and isinstance(schema[key], dict):
            _check_known_keys(value, schema[key], f"{name}.")


def validate(cfg: DictConfig) -> DictConfig:
    """Merge ``cfg`` onto the schema and check values, ranges and combinations.

    :raises ConfigError: (a ``ValueError``) naming the bad key, its value and what is valid.
    """
    cfg = migrate(cfg)
    schema = OmegaConf.structured(TrainConfig)
    _check_known_keys(OmegaConf.to_container(cfg), OmegaConf.to_container(schema))
    try:
        merged = OmegaConf.merge(schema, cfg)
    except Exception as error:  # omegaconf raises several types; all mean "bad config"
        raise ConfigError(f"invalid configuration: {_omegaconf_message(error)}") from error
    _check_finite(OmegaConf.to_container(merged))
    for key, choices in CHOICES.items():
        value = OmegaConf.select(merged, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is invalid: valid choices are {list(choices)}")
    for key in POSITIVE:
        value = OmegaConf.select(merged, key)
        if not value > 0:
            raise ConfigError(f"{key}={value!r} is invalid: must be > 0")
    for key in NON_NEGATIVE:
        value = OmegaConf.select(merged, key)
        if value < 0:
            raise ConfigError(f"{key}={value!r} is invalid: must be >= 0")
    tries = merged.evaluation.step_check_tries
    if tries is not None and tries < 0:
        raise ConfigError(
            f"evaluation.step_check_tries={tries!r} is invalid: must be >= 0 (or null)"
        )
    episodes = merged.evaluation.measure_episodes
    if episodes is not None:
        if episodes < 1:  # (the schema already refuses anything but an integer)
            raise ConfigError(
                f"evaluation.measure_episodes={episodes!r} is invalid: must be an integer >= 1 "
                "(or null: evaluation.envs_per_task)"
            )
        if merged.evaluation.policy == "sample":
            raise ConfigError(
                f"evaluation.measure_episodes={episodes!r} needs separate episodes: set "
                "evaluation.policy=fresh or mean (or auto), not sample"
            )
    margin = merged.evaluation.inner_cost_margin
    if margin is not None and not margin >= 0:
        raise ConfigError(
            f"evaluation.inner_cost_margin={margin!r} is invalid: must be >= 0 (or null)"
        )
    _check_inner_rule(merged)
    for key in ("meta.outer_line_search_shrink", "meta.step_check_shrink"):
        shrink = OmegaConf.select(merged, key)
        if not 0 < shrink < 1:
            raise ConfigError(f"{key}={shrink!r} is invalid: must lie in (0, 1)")
    discount = merged.evaluation.cost_discount
    if not 0 < discount <= 1:
        raise ConfigError(f"evaluation.cost_discount={discount!r} is invalid: must lie in (0, 1]")
    for split in merged.evaluation.also_splits:
        if split not in SPLITS:
            raise ConfigError(
                f"evaluation.also_splits contains {split!r}: valid splits are {list(SPLITS)}"
            )
    if merged.resume and merged.overwrite:
        raise ConfigError(
            "resume=true and overwrite=true contradict each other: resume continues the "
            "run in run_dir, overwrite replaces it; pass one"
        )
    fraction = merged.meta.outer_cvar_fraction
    if not 0 < fraction <= 1:
        raise ConfigError(f"meta.outer_cvar_fraction={fraction!r} is invalid: must lie in (0, 1]")
    lr = merged.meta.learned_rule_lr
    if lr is not None and not lr > 0:
        raise ConfigError(f"meta.learned_rule_lr={lr!r} is invalid: must be > 0 (or null)")
    if merged.env.backend == "torch" and merged.env.robot != "point":
        raise ConfigError(
            f"env.robot={merged.env.robot!r} is not available on env.backend='torch': "
            "valid robots there are ['point'] (use env.backend=mujoco for 'car')"
        )
    check_device(merged.runtime.device)
    missing = [m for m in ("mujoco", "safety_gymnasium") if not module_available(m)]
    if merged.env.backend == "mujoco" and missing:
        raise ConfigError(
            f"env.backend='mujoco' needs {' and '.join(missing)}, which this environment "
            f"lacks: {MUJOCO_INSTALL} (or use env.backend=torch)"
        )
    if merged.logging.wandb and not module_available("wandb"):
        raise ConfigError(
            "logging.wandb=true needs the wandb package, which is not installed: "
            "pip install wandb (the wandb extra), or logging.wandb=false"
        )
    _check_task_ranges(merged.env)
    _check_components(merged)
    return merged


MUJOCO_INSTALL = (
    "install the mujoco extra (from a clone: pip install '.[mujoco]'), then "
    "pip install --no-deps safety-gymnasium==1.0.0 gymnasium-robotics==1.2.2"
)
"""How to add the MuJoCo backend to an installed meta-safe (see the README)."""


def module_available(name: str) -> bool:
    """Whether ``import name`` would find the module (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules without a spec
        return True


def _omegaconf_message(error: Exception) -> str:
    """The first line of an omegaconf error, with the key it names (``full_key``) and,
    for an unknown key, the valid ones."""
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    key = getattr(error, "full_key", None)
    message = f"{key}: {first}" if key and key not in first else first
    schema = getattr(error, "object_type", None)
    if isinstance(error, ConfigKeyError | ConfigAttributeError) and dataclasses.is_dataclass(
        schema
    ):
        valid = [f.name for f in dataclasses.fields(schema) if f.name not in ("name", "_target_")]
        message += f": valid keys are {valid}"
    return message


def _key_of(section: DictConfig, name: str, prefix: str) -> str | None:
    """The full key of the first ``name`` in ``section`` (depth first), else ``None``."""
    if name in section:
        return f"{prefix}.{name}"
    for key, value in section.items():
        if isinstance(value, DictConfig) and (found := _key_of(value, name, f"{prefix}.{key}")):
            return found
    return None


def _check_task_ranges(env: DictConfig) -> None:
    """Every split's ranges make a valid task distribution (ordered, positive, in the arena)."""
    from meta_safe.env_factory import task_distribution

    for split in SPLITS:
        try:
            task_distribution(env, split)
        except ValueError as error:
            raise ConfigError(f"env.{split}.{error}") from error


def _check_inner_rule(cfg: DictConfig) -> None:
    """``evaluation.inner_rule`` names settings of a rule without learned state."""
    overrides = cfg.evaluation.inner_rule
    if not overrides:
        return
    key = next(iter(overrides))
    if cfg.meta_optimizer.name not in ADAPTABLE_RULES:
        raise ConfigError(
            f"evaluation.inner_rule.{key} applies to {' or '.join(ADAPTABLE_RULES)}: this "
            f"run's rule is {cfg.meta_optimizer.name}, whose inner step is meta-learned"
        )
    unknown = [k for k in overrides if k not in ADAPTATION_RULE_KEYS]
    if unknown:
        raise ConfigError(
            f"evaluation.inner_rule.{unknown[0]} cannot be set at adaptation: valid keys are "
            f"{', '.join(ADAPTATION_RULE_KEYS)}"
        )


def adaptation_rule_config(cfg: DictConfig) -> DictConfig:
    """``meta_optimizer`` with ``evaluation.inner_rule`` applied: the rule adaptation uses."""
    return OmegaConf.merge(cfg.meta_optimizer, cfg.evaluation.get("inner_rule") or {})


def _check_components(cfg: DictConfig) -> None:
    """The chosen meta-optimizer and Dyna settings build (their constructors check their
    arguments), and Dyna fits the backend."""
    from hydra.errors import InstantiationException

    from meta_safe.dyna import build_dyna
    from meta_safe.meta_optimizers import build_meta_optimizer

    builds = {
        "meta_optimizer": lambda: build_meta_optimizer(cfg.meta_optimizer),
        "evaluation.inner_rule": lambda: build_meta_optimizer(adaptation_rule_config(cfg)),
        "dyna": lambda: build_dyna(cfg.dyna, cfg.env),
    }
    for section, build in builds.items():
        try:
            build()
        except (ValueError, TypeError, InstantiationException) as error:
            cause = error.__cause__ if isinstance(error, InstantiationException) else error
            if not isinstance(cause, ValueError | TypeError):
                raise
            message = " ".join(str(cause).split())
            name = message.split("=", 1)[0]
            if "=" in message and name.isidentifier() and name != section:
                key = _key_of(OmegaConf.select(cfg, section), name, section) or f"{section}.{name}"
                message = key + message[len(name) :]
            raise ConfigError(message) from error


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The validated configuration of ``meta_safe/configs/`` with hydra ``overrides`` applied (the
    same as the command line's), for use from Python."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            composed = compose("config", overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as error:
            cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else None
            message = _omegaconf_message(cause) if cause else str(error)
            message = message.split("Config search path")[0]  # hydra appends its search path
            raise ConfigError(" ".join(message.split())) from error
    return validate(composed)
