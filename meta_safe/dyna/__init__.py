"""Dyna: imagined rollouts of a dynamics model supplying the inner loop.

* :mod:`meta_safe.dyna.transitions`: what a model predicts (:class:`DynamicsModel`,
  :class:`Transitions`, the state layout);
* :mod:`meta_safe.dyna.known_model`, :mod:`meta_safe.dyna.ensemble`: the exact model and
  the learned probabilistic ensemble;
* :mod:`meta_safe.dyna.model_env`: :class:`ModelEnv`, the sampler's env on top of a model;
* :mod:`meta_safe.dyna.settings`, :mod:`meta_safe.dyna.state`: the ``dyna`` settings and
  the learned state kept across meta-iterations (checkpointed);
* :mod:`meta_safe.dyna.source`: :class:`DynaRollouts`, the inner loop's data source;
* :mod:`meta_safe.dyna.metrics`: model errors on held-out real trajectories;
* :mod:`meta_safe.dyna.registry`: the ``dyna`` config group.

Point robot on the torch backend only (the known functions are the torch backend's).
"""

from meta_safe.dyna.settings import BRANCH_FROM, DynaSettings
from meta_safe.dyna.source import DynaRollouts, complete_episodes, join_batches, merge
from meta_safe.dyna.state import DynaState, build_dyna, held_out_errors, transitions

__all__ = [
    "BRANCH_FROM",
    "DynaRollouts",
    "DynaSettings",
    "DynaState",
    "build_dyna",
    "complete_episodes",
    "held_out_errors",
    "join_batches",
    "merge",
    "transitions",
]
