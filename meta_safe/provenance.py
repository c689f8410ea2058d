"""What a run's numbers depend on besides its configuration: library versions and kernels.

A run repeats bit for bit from its configuration and seed only on the same numerical
environment: the same versions of the libraries that compute (torch, numpy, the convex
solvers, MuJoCo) and the same torch CPU kernels (AVX2 and AVX-512 builds of the same
operation round differently, and a policy-gradient run amplifies a last-bit difference
into a different training). Each training start records :func:`environment_record` in
its run directory's ``environment.json``; a resume on a different environment says so.
"""

from __future__ import annotations

import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ENVIRONMENT_FILE = "environment.json"
NUMERIC_PACKAGES: tuple[str, ...] = (
    "torch",
    "numpy",
    "scipy",
    "cvxpy",
    "cvxpylayers",
    "diffcp",
    "scs",
    "clarabel",
    "mujoco",
)
"""The installed packages whose versions can change a run's numbers."""


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or ``"absent"``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def environment_record() -> dict[str, str]:
    """The numerical environment of this process (all values are strings).

    Keys: ``python``, ``machine`` (e.g. ``x86_64``), ``cpu_kernels`` (torch's CPU
    capability: ``AVX2``, ``AVX512``, ``DEFAULT``...), ``torch_threads``, ``meta_safe``, and
    one per :data:`NUMERIC_PACKAGES`.
    """
    from meta_safe import __version__

    return {
        "python": ".".join(map(str, sys.version_info[:3])),
        "machine": platform.machine(),
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": str(torch.get_num_threads()),
        "meta_safe": __version__,
        **{name: package_version(name) for name in NUMERIC_PACKAGES},
    }


def environment_differences(
    recorded: dict[str, str], current: dict[str, str]
) -> dict[str, tuple[str, str]]:
    """``{key: (recorded, current)}`` for every key whose value differs (or is missing)."""
    keys = sorted(set(recorded) | set(current))
    return {
        k: (recorded.get(k, "unrecorded"), current.get(k, "unrecorded"))
        for k in keys
        if recorded.get(k) != current.get(k)
    }


def read_environments(run_dir: Path) -> list[dict[str, Any]]:
    """The records of a run's starts, oldest first (``[]`` when none was written)."""
    path = Path(run_dir) / ENVIRONMENT_FILE
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return records if isinstance(records, list) else []


def record_start(run_dir: Path, from_iteration: int) -> dict[str, tuple[str, str]]:
    """Append this process's environment to ``run_dir/environment.json`` as the start at
    ``from_iteration``. Records of starts at or after that iteration (a continuation whose
    iterations the checkpoint no longer holds) are dropped.

    :returns: how this environment differs from the one that trained up to
        ``from_iteration`` (empty for a new run, or one without a record).
    """
    earlier = [r for r in read_environments(run_dir) if r.get("from_iteration", 0) < from_iteration]
    current = environment_record()
    differences: dict[str, tuple[str, str]] = {}
    if earlier and from_iteration > 0:
        last = {k: v for k, v in earlier[-1].items() if k != "from_iteration"}
        differences = environment_differences(last, current)
    path = Path(run_dir) / ENVIRONMENT_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([*earlier, {"from_iteration": from_iteration, **current}], indent=2))
    tmp.replace(path)
    return differences


def describe_differences(differences: dict[str, tuple[str, str]]) -> str:
    """One line: ``cpu_kernels AVX512 -> AVX2, numpy 2.3.5 -> 2.4.6``."""
    return ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differences.items())
