"""Make Safety-Gymnasium 1.0.0 import and run on Python >= 3.11 with numpy 2.

Safety-Gymnasium 1.0.0 (its last release) has two incompatibilities, both fixed
here at run time without touching site-packages:

1. **Array defaults in dataclasses.** Its geoms declare fields such as
   ``color: np.array = COLOR['sigwall']``. Since Python 3.11, ``dataclasses``
   rejects any unhashable default ("mutable default ... use default_factory"),
   so ``import safety_gymnasium`` fails. While safety_gymnasium is imported we
   wrap ``dataclasses._get_field`` so that an ``ndarray`` default becomes a
   ``default_factory`` returning a copy (each instance then owns its array,
   which is also safer than the shared class-level array the authors had).
2. **``model.jnt(array)``.** With current MuJoCo, ``model.sensor(i).objid`` is a
   1-element array and ``MjModel.jnt`` only accepts an int or a name, so
   building the Car robot fails. We wrap ``MjModel.jnt`` to accept a 1-element
   integer array.

Use :func:`import_safety_gymnasium` (what ``stochastic_circle`` itself does)
instead of ``import safety_gymnasium``. Applying the fixes twice is harmless.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import pkgutil
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

_PATCHED_MARK = "_meta_safe_compat_patched"


def _array_default_to_factory(cls: type, name: str) -> None:
    """Replace an ndarray class-attribute default ``cls.name`` by a default_factory."""
    default = cls.__dict__.get(name, dataclasses.MISSING)
    if isinstance(default, np.ndarray):
        frozen = default.copy()
        setattr(cls, name, dataclasses.field(default_factory=frozen.copy))
    elif isinstance(default, dataclasses.Field) and isinstance(default.default, np.ndarray):
        frozen = default.default.copy()
        default.default = dataclasses.MISSING
        default.default_factory = frozen.copy


@contextlib.contextmanager
def _dataclasses_accept_array_defaults() -> Iterator[None]:
    """Temporarily let ``@dataclass`` accept ndarray defaults (turned into factories)."""
    original = dataclasses._get_field  # type: ignore[attr-defined]

    def get_field(cls: type, a_name: str, a_type: Any, *args: Any, **kwargs: Any) -> Any:
        _array_default_to_factory(cls, a_name)
        return original(cls, a_name, a_type, *args, **kwargs)

    dataclasses._get_field = get_field  # type: ignore[attr-defined]
    try:
        yield
    finally:
        dataclasses._get_field = original  # type: ignore[attr-defined]


def _patch_mujoco_jnt() -> None:
    """Let ``MjModel.jnt`` take a 1-element integer array, as numpy 2 hands it one."""
    import mujoco

    original = mujoco.MjModel.jnt
    if getattr(original, _PATCHED_MARK, False):
        return

    def jnt(self: Any, key: Any = "", _original: Any = original) -> Any:
        if isinstance(key, np.ndarray):
            if key.size != 1:
                raise TypeError(f"MjModel.jnt expects one joint id, got array of shape {key.shape}")
            key = int(key.reshape(-1)[0])
        return _original(self, key)

    setattr(jnt, _PATCHED_MARK, True)
    mujoco.MjModel.jnt = jnt


def _import_all_submodules(package: ModuleType) -> None:
    """Import every submodule now, so all dataclasses are built while patched.

    Safety-Gymnasium imports task modules lazily (on ``make``); importing them
    here means no dataclass is created after the patch has been removed.
    Multi-agent and vision modules that need extra packages are skipped.
    """
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if any(part in info.name for part in (".multi_agent", "vision", ".utils.keyboard")):
            continue
        with contextlib.suppress(ImportError):
            importlib.import_module(info.name)


def apply() -> None:
    """Apply both fixes; idempotent. Must run before ``safety_gymnasium`` is imported."""
    _patch_mujoco_jnt()
    if "safety_gymnasium" in sys.modules and getattr(
        sys.modules["safety_gymnasium"], _PATCHED_MARK, False
    ):
        return
    with _dataclasses_accept_array_defaults():
        package = importlib.import_module("safety_gymnasium")
        _import_all_submodules(importlib.import_module("safety_gymnasium.tasks"))
        _import_all_submodules(importlib.import_module("safety_gymnasium.assets"))
    setattr(package, _PATCHED_MARK, True)


def import_safety_gymnasium() -> ModuleType:
    """Return the ``safety_gymnasium`` module with the compatibility fixes applied."""
    apply()
    return sys.modules["safety_gymnasium"]
