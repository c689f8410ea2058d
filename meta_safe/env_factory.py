"""Build a batched ``[tasks, envs]`` environment from the ``env`` config group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meta_safe.device import current_device
from meta_safe.rl.rollout import BatchedEnv
from stochastic_circle.tasks import CircleTask, TaskDistribution

BACKENDS: tuple[str, ...] = ("torch", "mujoco")


def make_batched_env(
    env_cfg: Any,
    tasks: Sequence[CircleTask],
    num_envs: int,
    seed: int,
    track_states: bool = False,
    fused_rollout: bool = False,
) -> BatchedEnv:
    """Torch or MuJoCo backend as ``env_cfg.backend`` says; same interface either way.
    Its tensors live on :func:`~meta_safe.device.current_device`.

    :param track_states: the env exposes planar states (``state``, ``final_state``) for
        the batches (Dyna needs them); the torch backend always does.
    :param fused_rollout: on the torch backend, collections run the stretches between
        episode ends as one compiled program (see :mod:`meta_safe.rl.fused_rollout`): for
        envs collected from many times at one shape, as in meta-training.
    """
    backend = env_cfg.backend
    common = {
        "seed": seed,
        "placement": env_cfg.placement,
        "episode_steps": env_cfg.episode_steps,
        "device": current_device(),
    }
    if backend == "torch":
        from stochastic_circle.torch_backend import BatchedCircleEnv

        return BatchedCircleEnv(list(tasks), num_envs, fused_rollout=fused_rollout, **common)
    if backend == "mujoco":
        from stochastic_circle.mujoco_batched import MujocoBatchedEnv

        threads = env_cfg.get("step_threads", 1)
        return MujocoBatchedEnv(
            list(tasks), num_envs, step_threads=threads, track_states=track_states, **common
        )
    raise ValueError(f"env.backend={backend!r} is unknown: valid choices are {list(BACKENDS)}")


def task_distribution(env_cfg: Any, split: str) -> TaskDistribution:
    """The ``fixed``, ``meta_train`` or ``held_out`` distribution of the env config."""
    valid = ("fixed", "meta_train", "held_out")
    if split not in valid:
        raise ValueError(f"split={split!r} is unknown: valid choices are {list(valid)}")
    ranges = env_cfg[split]
    return TaskDistribution(
        name=split,
        robot=env_cfg.robot,
        num_walls=env_cfg.num_walls,
        radius=tuple(ranges["radius"]),
        wall_scale=tuple(ranges["wall_scale"]),
        damping_scale=tuple(ranges.get("damping_scale", (1.0, 1.0))),
        gear_scale=tuple(ranges.get("gear_scale", (1.0, 1.0))),
    )
