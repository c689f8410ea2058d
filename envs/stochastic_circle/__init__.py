"""stochastic_circle: randomised circle tasks for safe meta-RL.

Importing the package is cheap: it registers the gymnasium ids (string entry
points) but does not import safety_gymnasium; the backends live in
:mod:`stochastic_circle.torch_backend` and :mod:`stochastic_circle.mujoco_backend`.
gymnasium loads the gymnasium_robotics plugin on import, and that prints a notice about
the Adroit hand tasks' reward versions to stderr on every command; it does not concern
circle tasks, so it is dropped here before gymnasium is first imported. On a Linux
machine without a display, ``MUJOCO_GL`` defaults to ``egl`` (offscreen rendering).
"""

import os as _os
import sys as _sys

if _sys.platform.startswith("linux") and not _os.environ.get("DISPLAY"):
    _os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering on headless machines

try:
    from farama_notifications import notifications as _notifications

    _notifications.pop("gymnasium_robotics", None)
except ImportError:  # pragma: no cover - farama_notifications ships with gymnasium
    pass

from stochastic_circle.registration import ENV_IDS, register_envs
from stochastic_circle.tasks import CircleTask, TaskDistribution, reference_distribution

__all__ = ["ENV_IDS", "CircleTask", "TaskDistribution", "reference_distribution", "register_envs"]

register_envs()
