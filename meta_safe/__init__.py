"""meta_safe: safe meta-reinforcement learning.

MAML through constrained inner updates ("meta-optimizers") on randomised circle tasks.
The public API::

    import meta_safe

    cfg = meta_safe.compose_config(["meta_optimizer=pid", "meta.iterations=5"])
    trainer = meta_safe.train(cfg, "runs/pid")
    report = meta_safe.evaluate_meta_state(trainer.setup, trainer.state, cfg)
    print(report.table())
"""

from meta_safe.adaptation import AdaptationResult, adapt
from meta_safe.config import TrainConfig, compose_config, validate
from meta_safe.errors import CheckpointError, ConfigError, RunDirError, UserError
from meta_safe.evaluation import AdaptationReport, evaluate_adaptation, evaluate_meta_state
from meta_safe.maml import MetaSetup, MetaState, init_meta, meta_step
from meta_safe.meta_optimizers import build_meta_optimizer
from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer
from meta_safe.trainer import MetaTrainer, train

__version__ = "0.4.0"

__all__ = [
    "AdaptationReport",
    "AdaptationResult",
    "CheckpointError",
    "ConfigError",
    "InnerContext",
    "MetaOptimizer",
    "MetaSetup",
    "MetaState",
    "MetaTrainer",
    "RunDirError",
    "TrainConfig",
    "UserError",
    "__version__",
    "adapt",
    "build_meta_optimizer",
    "compose_config",
    "evaluate_adaptation",
    "evaluate_meta_state",
    "init_meta",
    "meta_step",
    "train",
    "validate",
]
