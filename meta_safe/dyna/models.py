"""The dynamics models behind one interface (:class:`DynamicsModel`): the exact
:class:`KnownModel` and the learned :class:`EnsembleModel`."""

from meta_safe.dyna.ensemble import EnsembleConfig, EnsembleModel, Standardizer, mean_pairwise_kl
from meta_safe.dyna.known_model import KnownModel
from meta_safe.dyna.transitions import (
    ACCEL_DIM,
    ACTION_DIM,
    CONTEXT_DIM,
    INPUT_DIM,
    STATE_DIM,
    TARGET_DIM,
    DynamicsModel,
    Prediction,
    Transitions,
    apply_targets,
    context_from_tasks,
    model_inputs,
    model_targets,
)

__all__ = [
    "ACCEL_DIM",
    "ACTION_DIM",
    "CONTEXT_DIM",
    "INPUT_DIM",
    "STATE_DIM",
    "TARGET_DIM",
    "DynamicsModel",
    "EnsembleConfig",
    "EnsembleModel",
    "KnownModel",
    "Prediction",
    "Standardizer",
    "Transitions",
    "apply_targets",
    "context_from_tasks",
    "mean_pairwise_kl",
    "model_inputs",
    "model_targets",
]
