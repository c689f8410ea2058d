"""Gymnasium ids of the stochastic circle envs.

``gymnasium.make("StochasticCircle-Point-v0", task=CircleTask(...))`` builds a
:class:`stochastic_circle.mujoco_backend.MujocoCircleEnv`. Entry points are strings,
so registering imports neither mujoco nor safety_gymnasium.

No ``max_episode_steps`` is registered: the env truncates by itself at its
``episode_length`` (500), which a TimeLimit wrapper would otherwise duplicate
(and contradict when ``episode_length`` is changed).
"""

from __future__ import annotations

import gymnasium

_ENTRY_POINT = "stochastic_circle.mujoco_backend:MujocoCircleEnv"

#: Registered ids and the robot each one fixes.
ENV_IDS: dict[str, str] = {
    "StochasticCircle-Point-v0": "point",
    "StochasticCircle-Car-v0": "car",
}


def register_envs() -> None:
    """Register :data:`ENV_IDS` with gymnasium; idempotent (no re-registration warnings)."""
    for env_id, robot in ENV_IDS.items():
        if env_id in gymnasium.registry:
            continue
        gymnasium.register(id=env_id, entry_point=_ENTRY_POINT, kwargs={"robot": robot})
