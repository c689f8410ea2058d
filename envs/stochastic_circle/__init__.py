"""stochastic_circle: randomised circle tasks for safe meta-RL.

Importing the package is cheap: it registers the gymnasium ids (string entry
points) but does not import mujoco or safety_gymnasium; the MuJoCo backend lives
in :mod:`stochastic_circle.mujoco_backend`.
"""

from stochastic_circle.registration import ENV_IDS, register_envs
from stochastic_circle.tasks import CircleTask, TaskDistribution, reference_distribution

__all__ = ["ENV_IDS", "CircleTask", "TaskDistribution", "reference_distribution", "register_envs"]

register_envs()
