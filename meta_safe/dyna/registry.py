"""The ``dyna`` config group, generated from code: ``none``, ``ensemble`` (a learned
model) and ``known`` (the exact model). Each option's values are :class:`DynaSettings`'
defaults plus its model's constructor defaults."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from hydra.core.config_store import ConfigStore

from meta_safe.dyna.settings import DynaSettings
from meta_safe.registry import constructor_schema

#: option -> (model class, whether it must be fitted to real data)
DYNA_MODELS: dict[str, tuple[str, bool]] = {
    "ensemble": ("meta_safe.dyna.ensemble.EnsembleModel", True),
    "known": ("meta_safe.dyna.known_model.KnownModel", False),
}


@dataclasses.dataclass
class NoDynaConfig:
    """``dyna=none``: the inner loop uses real environment data only."""

    name: str = "none"


def dyna_schema(name: str) -> type:
    """The typed config of ``dyna=<name>``: name, learned, model, then the settings."""
    target, learned = DYNA_MODELS[name]
    model = constructor_schema(target)
    fields: list[tuple[str, Any, Any]] = [
        ("name", str, dataclasses.field(default=name)),
        ("learned", bool, dataclasses.field(default=learned)),
        ("model", model, dataclasses.field(default_factory=model)),
    ]
    hints = typing.get_type_hints(DynaSettings)
    for f in dataclasses.fields(DynaSettings):
        fields.append((f.name, hints[f.name], dataclasses.field(default=f.default)))
    return dataclasses.make_dataclass(f"Dyna{name.title()}Config", fields)


def register_configs(store: ConfigStore | None = None) -> None:
    """Store the ``dyna`` group's options."""
    store = store or ConfigStore.instance()
    store.store(group="dyna", name="none", node=NoDynaConfig)
    for name in DYNA_MODELS:
        store.store(group="dyna", name=name, node=dyna_schema(name))
