"""meta_safe: safe meta-reinforcement learning.

MAML through constrained inner updates ("meta-optimizers") on randomised circle tasks.
The public API (:mod:`meta_safe.api`)::

    import meta_safe

    run = meta_safe.train(["meta_optimizer=pid", "meta.iterations=5"], run_dir="runs/pid")
    run = meta_safe.load("runs/pid")
    adapted = run.adapt(meta_safe.CircleTask(radius=2.2, wall_distance=1.3), inner_steps=3)
    print(adapted.report.table())

The building blocks (:func:`init_meta`, :func:`meta_step`, :func:`adapt`,
:func:`evaluate_adaptation`, ...) are exported too.
"""

from meta_safe.adaptation import AdaptationResult, adapt
from meta_safe.api import Adaptation, Run, load, train
from meta_safe.config import TrainConfig, compose_config, validate
from meta_safe.errors import CheckpointError, ConfigError, RunDirError, UserError
from meta_safe.evaluation import AdaptationReport, evaluate_adaptation, evaluate_meta_state
from meta_safe.maml import MetaSetup, MetaState, init_meta, meta_step
from meta_safe.meta_optimizers import build_meta_optimizer
from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer
from meta_safe.trainer import MetaTrainer
from meta_safe.trainer import train as train_loop
from meta_safe.trajectories import Episode, plot_trajectories, rollout_episodes
from stochastic_circle.tasks import CircleTask

__version__ = "0.5.0"

__all__ = [
    "Adaptation",
    "AdaptationReport",
    "AdaptationResult",
    "CheckpointError",
    "CircleTask",
    "ConfigError",
    "Episode",
    "InnerContext",
    "MetaOptimizer",
    "MetaSetup",
    "MetaState",
    "MetaTrainer",
    "Run",
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
    "load",
    "meta_step",
    "plot_trajectories",
    "rollout_episodes",
    "train",
    "train_loop",
    "validate",
]
