"""Prediction quality of a dynamics model on held-out real trajectories (for logging).

:func:`prediction_errors` measures one-step and open-loop multi-step errors: from every
start step ``t0`` with ``t0 + max(horizons) <= H`` the model is rolled out on the real
actions, fed its own predictions, and compared with the real states after ``h`` steps.
Errors are root-mean-square Euclidean errors of the planar position ``(x, y)`` (metres)
and velocity ``(vx, vy)`` (m/s), plus the wrapped heading error (radians) and the
turn-rate error (rad/s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from meta_safe.dyna.transitions import DynamicsModel


def _rmse(error: Tensor) -> float:
    """RMS of the Euclidean norm over the last dim of ``error [N, d]``."""
    return float(error.double().pow(2).sum(-1).mean().sqrt())


def state_errors(predicted: Tensor, real: Tensor) -> dict[str, float]:
    """RMSE of position, velocity, heading and turn rate between ``[N, 6]`` state tensors."""
    turn = torch.remainder(predicted[:, 2] - real[:, 2] + math.pi, 2 * math.pi) - math.pi
    return {
        "pos_rmse": _rmse(predicted[:, :2] - real[:, :2]),
        "vel_rmse": _rmse(predicted[:, 3:5] - real[:, 3:5]),
        "heading_rmse": _rmse(turn.unsqueeze(-1)),
        "omega_rmse": _rmse((predicted[:, 5] - real[:, 5]).unsqueeze(-1)),
    }


@torch.no_grad()
def prediction_errors(
    model: DynamicsModel,
    states: Tensor,
    actions: Tensor,
    context: Tensor,
    horizons: Sequence[int] = (1, 5, 10, 25),
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """One-step and open-loop multi-step errors of ``model`` on real trajectories.

    :param states: ``[S, H+1, 6]`` real state sequences. :param actions: ``[S, H, 2]``
        the actions taken. :param context: ``[S, 2]`` ``(damping_scale, gear_scale)``.
    :param horizons: open-loop horizons, each in ``[1, H]``.
    :param generator: passed to ``model.predict`` (elite choice, noise).
    :return: ``{"one_step/pos_rmse", "one_step/vel_rmse", "one_step/heading_rmse"}`` over
        every transition, and ``"h{h}/pos_rmse"`` etc. for every ``h`` in ``horizons``.
    """
    if states.dim() != 3 or states.shape[-1] != 6:
        raise ValueError(f"states has shape {tuple(states.shape)}: expected [S, H+1, 6]")
    S, H = states.shape[0], states.shape[1] - 1
    if tuple(actions.shape) != (S, H, 2):
        raise ValueError(f"actions has shape {tuple(actions.shape)}: expected {(S, H, 2)}")
    if tuple(context.shape) != (S, 2):
        raise ValueError(f"context has shape {tuple(context.shape)}: expected {(S, 2)}")
    if not horizons or any(not 1 <= int(h) <= H for h in horizons):
        raise ValueError(f"horizons={tuple(horizons)} is invalid: each must lie in [1, H={H}]")
    # one step from every real state
    pred = model.predict(
        states[:, :-1].reshape(-1, 6),
        actions.reshape(-1, 2),
        context.unsqueeze(1).expand(S, H, 2).reshape(-1, 2),
        generator=generator,
    )
    result = {
        f"one_step/{k}": v
        for k, v in state_errors(pred.next_states, states[:, 1:].reshape(-1, 6)).items()
    }
    # open loop from every start that leaves room for the longest horizon
    longest = max(int(h) for h in horizons)
    starts = torch.arange(H - longest + 1)
    state = states[:, starts].reshape(-1, 6)
    ctx = context.unsqueeze(1).expand(S, len(starts), 2).reshape(-1, 2)
    wanted = {int(h) for h in horizons}
    for step in range(1, longest + 1):
        act = actions[:, starts + step - 1].reshape(-1, 2)
        state = model.predict(state, act, ctx, generator=generator).next_states
        if step in wanted:
            real = states[:, starts + step].reshape(-1, 6)
            result.update({f"h{step}/{k}": v for k, v in state_errors(state, real).items()})
    return result
