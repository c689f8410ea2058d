"""Config schemas generated from constructors: a class's keyword defaults are the one
source of its config group's values, and its type hints type-check overrides."""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import typing
from typing import Any

from hydra.utils import get_class

OMEGACONF_SEQUENCES = (collections.abc.Sequence, tuple, list)


def _config_type(hint: Any) -> Any:
    """OmegaConf types: sequences (``Sequence[int]``, ``tuple[int, ...]``) become ``list``."""
    origin = typing.get_origin(hint)
    if origin in OMEGACONF_SEQUENCES:
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return list[args[0]] if args else list
    return hint


def _config_default(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return dataclasses.field(default_factory=lambda: list(value))
    return dataclasses.field(default=value)


def constructor_schema(target: str, leading: dict[str, Any] | None = None) -> type:
    """A dataclass with ``leading`` fields (``name: value``, typed by their value), then
    ``_target_`` and every keyword argument of ``target``'s constructor with its default.

    :raises TypeError: a constructor argument has no default.
    """
    cls = get_class(target)
    hints = typing.get_type_hints(cls.__init__)
    fields: list[tuple[str, Any, Any]] = [
        (key, type(value), dataclasses.field(default=value))
        for key, value in (leading or {}).items()
    ]
    fields.append(("_target_", str, dataclasses.field(default=target)))
    for arg, parameter in inspect.signature(cls.__init__).parameters.items():
        if arg == "self":
            continue
        if parameter.default is inspect.Parameter.empty:
            raise TypeError(f"{target}.__init__({arg}) needs a default to be configurable")
        fields.append((arg, _config_type(hints[arg]), _config_default(parameter.default)))
    return dataclasses.make_dataclass(f"{cls.__name__}Config", fields)
