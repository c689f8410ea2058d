"""The compute device of a run: parse and check ``runtime.device``, scope work to it.

Work runs inside :func:`on_device`, a :class:`torch.device` context: every tensor and
module created inside it without an explicit device lands on the run's device, and
:func:`seeded_generator` makes generators for that device. Arrays coming from NumPy
(the MuJoCo backend, the convex solver) are moved there by whoever converts them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from meta_safe.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(name: str, key: str = "runtime.device") -> torch.device:
    """``name`` as a :class:`torch.device` if this machine has it, else a
    :class:`ConfigError` naming ``key``."""
    if not isinstance(name, str) or not DEVICE_PATTERN.match(name):
        raise ConfigError(f"{key}={name!r} is invalid: valid forms are 'cpu', 'cuda' and 'cuda:N'")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = (
                "without CUDA" if torch.version.cuda is None else f"with CUDA {torch.version.cuda}"
            )
            raise ConfigError(
                f"{key}={name!r} is unavailable: torch {torch.__version__} is built "
                f"{built} and sees no GPU; use {key}=cpu"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"{key}={name!r} is unavailable: this machine has {count} CUDA "
                f"device(s), valid are cuda:0..cuda:{count - 1}"
            )
    return device


@contextmanager
def on_device(name: str | torch.device) -> Iterator[torch.device]:
    """Create tensors and modules on ``name`` by default for the duration of the block."""
    device = check_device(name) if isinstance(name, str) else name
    if device == torch.get_default_device():
        # Already the default: a device context would only add a Python hook to every op.
        yield device
        return
    with torch.device(device):
        yield device


def current_device() -> torch.device:
    """The device new tensors land on here (the innermost :func:`on_device`, else CPU)."""
    return torch.get_default_device()


def seeded_generator(seed: int) -> torch.Generator:
    """A generator on :func:`current_device`, seeded with ``seed``."""
    return torch.Generator(device=current_device()).manual_seed(seed)


def to_device(tree: Any, device: torch.device) -> Any:
    """``tree`` (tensors inside dicts, lists and tuples) with every tensor on ``device``."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {key: to_device(value, device) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(to_device(value, device) for value in tree)
    return tree


def describe_device(name: str | torch.device) -> str:
    """A line naming the device for benchmark output, e.g. ``cuda:0 (NVIDIA A100)``."""
    device = torch.device(name)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
