"""stochastic_circle: randomised circle tasks for safe meta-RL.

Importing the package is cheap: it registers the gymnasium ids (string entry
points) but does not import safety_gymnasium; the backends live in
:mod:`stochastic_circle.torch_backend` and :mod:`stochastic_circle.mujoco_backend`.
(gymnasium 0.28 itself loads the gymnasium_robotics plugin on import, which prints a
notice about Adroit reward versions to stderr; it does not concern circle tasks.)
"""

from stochastic_circle.registration import ENV_IDS, register_envs
from stochastic_circle.tasks import CircleTask, TaskDistribution, reference_distribution

__all__ = ["ENV_IDS", "CircleTask", "TaskDistribution", "reference_distribution", "register_envs"]

register_envs()
