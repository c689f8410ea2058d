"""Inner update rules ("meta-optimizers"), chosen by ``meta_optimizer=<name>``.

:data:`META_OPTIMIZERS` is the registry: each name maps to a
:class:`~meta_safe.meta_optimizers.base.MetaOptimizer` class, and the config group
``meta_optimizer/<name>`` is generated from that class's constructor (its keyword
defaults are the one source of the group's values; its type hints type-check overrides).
Adding a meta-optimizer is a module plus one line here.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer
from meta_safe.registry import constructor_schema

META_OPTIMIZERS: dict[str, str] = {
    "cpo_layer": "meta_safe.meta_optimizers.cpo_layer.CPOLayer",
    "lagrangian": "meta_safe.meta_optimizers.lagrangian.Lagrangian",
    "pid": "meta_safe.meta_optimizers.pid.PIDLagrangian",
    "lstm": "meta_safe.meta_optimizers.lstm.LSTMOptimizer",
    "cppo_em": "meta_safe.meta_optimizers.cppo_em.CPPOEM",
    "trpo": "meta_safe.meta_optimizers.trpo.TRPO",
}

LEGACY_TARGETS: dict[str, str] = {
    "meta_safe.meta_optimizers.cpo_layer.CPOLayerUpdate": META_OPTIMIZERS["cpo_layer"],
    "meta_safe.meta_optimizers.lagrangian.LagrangianUpdate": META_OPTIMIZERS["lagrangian"],
    "meta_safe.meta_optimizers.pid.PIDLagrangianUpdate": META_OPTIMIZERS["pid"],
    "meta_safe.meta_optimizers.lstm.LSTMUpdate": META_OPTIMIZERS["lstm"],
    "meta_safe.meta_optimizers.cppo_em.CPPOEMUpdate": META_OPTIMIZERS["cppo_em"],
    "meta_safe.meta_optimizers.trpo.TRPOUpdate": META_OPTIMIZERS["trpo"],
}
"""``_target_`` strings of checkpoints written before the classes were renamed."""


def config_schema(name: str) -> type:
    """The typed config of ``meta_optimizer=<name>``: ``name``, ``_target_`` and every
    constructor argument with its default."""
    return constructor_schema(META_OPTIMIZERS[name], {"name": name})


def register_configs(store: ConfigStore | None = None) -> None:
    """Store one ``meta_optimizer`` group option per registered meta-optimizer."""
    store = store or ConfigStore.instance()
    for name in META_OPTIMIZERS:
        store.store(group="meta_optimizer", name=name, node=config_schema(name))


def build_meta_optimizer(cfg: DictConfig | dict[str, Any]) -> MetaOptimizer:
    """Instantiate the meta-optimizer named by ``cfg._target_`` (``name`` is dropped;
    targets of older checkpoints are mapped to the current classes)."""
    spec = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    spec.pop("name", None)
    if "_target_" not in spec:
        raise ValueError(
            f"meta_optimizer config has no _target_: valid choices are {list(META_OPTIMIZERS)}"
        )
    spec["_target_"] = LEGACY_TARGETS.get(spec["_target_"], spec["_target_"])
    rule = instantiate(spec)
    if not isinstance(rule, MetaOptimizer):
        raise TypeError(f"meta_optimizer _target_ {spec['_target_']!r} is not a MetaOptimizer")
    return rule


__all__ = [
    "LEGACY_TARGETS",
    "META_OPTIMIZERS",
    "InnerContext",
    "MetaOptimizer",
    "build_meta_optimizer",
    "config_schema",
    "register_configs",
]
