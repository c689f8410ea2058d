"""Dyna: imagined rollouts of a learned dynamics model supplying the inner loop.

* :mod:`meta_safe.dyna.models`: :class:`Transitions`, the :class:`DynamicsModel` protocol,
  the exact :class:`KnownModel` and the learned probabilistic :class:`EnsembleModel`
  (planar physics state + accelerometer, task context ``(damping_scale, gear_scale)``).
* :mod:`meta_safe.dyna.model_env`: :class:`ModelEnv` (the sampler's ``BatchedEnv`` on
  top of a model, with the known reward/cost/observation functions),
  :func:`calibrate_disagreement_limit` and :func:`model_fraction`.
* :mod:`meta_safe.dyna.metrics`: :func:`prediction_errors` on held-out real trajectories.

Point robot only (the known functions are the torch backend's).
"""

from meta_safe.dyna.metrics import prediction_errors
from meta_safe.dyna.model_env import ModelEnv, calibrate_disagreement_limit, model_fraction
from meta_safe.dyna.models import (
    DynamicsModel,
    EnsembleModel,
    KnownModel,
    Prediction,
    Transitions,
    context_from_tasks,
)

__all__ = [
    "DynamicsModel",
    "EnsembleModel",
    "KnownModel",
    "ModelEnv",
    "Prediction",
    "Transitions",
    "calibrate_disagreement_limit",
    "context_from_tasks",
    "model_fraction",
    "prediction_errors",
]
