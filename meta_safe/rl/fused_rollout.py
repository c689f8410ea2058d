"""A whole stretch of on-policy steps on the torch backend as one compiled program.

:func:`~meta_safe.rl.rollout.collect` steps the env and the policy once per env step,
and each step pays Python and dispatch overhead that dwarfs its arithmetic at small
batches. Here the policy's forward pass (normalise, per-task MLP mean, pre-drawn noise)
and the env's step are one body of ``torch._higher_order_ops.scan``, compiled once by
inductor for a batch shape: a segment of hundreds of steps is a single call.

The arithmetic is that of the stepwise loop (same noise, same normalisation, same
physics), so the batches are equal up to float rounding; a segment never crosses an
episode end (auto-resets and their random start states stay with the env's own
:meth:`step`). Only :class:`~stochastic_circle.torch_backend.BatchedCircleEnv` with
``fused_rollout=True`` and a plain Gaussian MLP policy take this path; anything else, or
a compiler failure (a warning, once), steps as before.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from meta_safe.optim.gauss_newton import MLPLayout, activate, batched_layers
from meta_safe.rl.policy import Params

#: Shortest segment worth a compiled program (shorter stretches step one by one).
MIN_SEGMENT_STEPS: int = 64

#: Names of the per-step outputs of the compiled scan, each ``[n, T, E, ...]``.
OUTPUTS: tuple[str, ...] = (
    "raw_obs",
    "obs",
    "actions",
    "means",
    "rewards",
    "costs",
    "truncated",
    "timestep",
    "states",
    "next_states",
    "next_obs",
)


def _segment_program(activation: str, episode_steps: int, model: Any) -> Callable[..., Any]:
    """The scan over steps for one activation, episode length and dynamics model."""
    from torch._higher_order_ops.scan import scan

    from stochastic_circle.torch_backend import TaskTensors, clocked_env_step

    def segment(
        state: Tensor,
        raw_obs: Tensor,
        elapsed: Tensor,
        noise: Tensor,
        weights: list[Tensor],
        biases: list[Tensor],
        obs_mean: Tensor,
        obs_std: Tensor,
        clip: Tensor,
        task_fields: list[Tensor],
    ) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        task = TaskTensors(*task_fields)
        last = len(weights) - 1

        def body(carry: tuple[Tensor, ...], noise_t: Tensor) -> tuple[Any, Any]:
            state_t, raw_t, elapsed_t = carry
            obs = torch.minimum(torch.maximum((raw_t - obs_mean) / obs_std, -clip), clip)
            h = obs
            for index, (weight, bias) in enumerate(zip(weights, biases, strict=True)):
                h = torch.baddbmm(bias, h, weight)
                if index < last:
                    h = activate(h, activation)
            actions = h + noise_t
            next_state, next_raw, reward, cost, next_elapsed, _, truncated = clocked_env_step(
                state_t, actions, elapsed_t, episode_steps, task, model
            )
            outputs = (
                raw_t.clone(), obs, actions, h, reward, cost, truncated, elapsed_t.clone(),
                state_t.clone(), next_state.clone(), next_raw.clone(),
            )  # fmt: skip
            return (next_state, next_raw, next_elapsed), outputs

        return scan(body, (state, raw_obs, elapsed), noise)

    return segment


class FusedRollout:
    """Compiled segments, one program per (activation, episode length, dynamics model);
    inductor specialises each to the batch shape it first sees (static shapes compile
    to the fastest code; a new shape compiles once more). ``STOCHASTIC_CIRCLE_COMPILE=0``
    in the environment turns the path off, as it does the compiled env step."""

    def __init__(self) -> None:
        self.enabled = os.environ.get("STOCHASTIC_CIRCLE_COMPILE", "1") != "0"
        self._programs: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def program(self, activation: str, episode_steps: int, model: Any) -> Callable[..., Any]:
        key = (activation, episode_steps, model)
        if key not in self._programs:
            self._programs[key] = torch.compile(
                _segment_program(activation, episode_steps, model),
                fullgraph=True,
                dynamic=False,
                options={"cpp_wrapper": True},
            )
        return self._programs[key]

    def segment_length(self, env: Any, layout: MLPLayout | None, remaining: int) -> int:
        """Steps the next segment may take (0: step one by one): up to the step before
        the first episode end, at least :data:`MIN_SEGMENT_STEPS`."""
        if not (self.enabled and layout is not None and getattr(env, "fused_rollout", False)):
            return 0
        before_end = env.episode_steps - 1 - int(env.elapsed.max())
        length = min(remaining, before_end)
        return length if length >= MIN_SEGMENT_STEPS else 0

    @torch.no_grad()
    def run(
        self,
        env: Any,
        layout: MLPLayout,
        params: Params,
        per_task: bool,
        raw_obs: Tensor,
        obs_mean: Tensor,
        obs_std: Tensor,
        clip: float,
        noise: Tensor,
    ) -> dict[str, Tensor] | None:
        """Advance ``env`` by ``len(noise)`` steps and return the per-step outputs.

        :param params: policy parameters; with ``per_task`` each tensor is ``[T, ...]``.
        :param raw_obs: ``[T, E, obs_dim]`` the env's current observation.
        :param obs_mean, obs_std: ``[obs_dim]`` the normaliser's frozen statistics.
        :param noise: ``[n, T, E, act_dim]`` scaled action noise of the segment's steps.
        :return: :data:`OUTPUTS` and ``terminated``, each ``[T, E, n, ...]``, or ``None``
            (the env untouched; the caller steps one by one) if compiling failed or the
            policy's dtype is not the env's.
        """
        if params["log_std"].dtype != raw_obs.dtype:
            return None  # (a policy in another dtype than the env's: step one by one)
        if not per_task:  # one policy for all tasks: the same layers for each
            params = {k: v.expand(env.num_tasks, *v.shape) for k, v in params.items()}
        weights, biases = batched_layers(layout, params)
        weights, biases = [w.contiguous() for w in weights], [b.contiguous() for b in biases]
        task_fields = [getattr(env.env_task_tensors, f.name) for f in fields(env.env_task_tensors)]
        dtype = raw_obs.dtype
        args = (
            env.state.contiguous(), raw_obs.contiguous(), env.elapsed.clone(),
            noise.to(dtype).contiguous(), weights, biases, obs_mean, obs_std,
            torch.tensor(clip, dtype=dtype, device=raw_obs.device), task_fields,
        )  # fmt: skip
        try:
            (state, last_raw, elapsed), outputs = self.program(
                layout.activation, env.episode_steps, env.model
            )(*args)
        except Exception as exc:  # any compiler failure: step one by one from now on
            self.enabled = False
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            warnings.warn(
                f"compiling the fused rollout failed, stepping one by one instead: "
                f"{type(exc).__name__}: {reason}",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        env.resume(state, last_raw, elapsed)
        batch = {name: out.movedim(0, 2) for name, out in zip(OUTPUTS, outputs, strict=True)}
        batch["terminated"] = torch.zeros_like(batch["truncated"])  # (no episode ends)
        return batch


#: Process-wide compiled segments shared by every collection.
fused_rollout = FusedRollout()
