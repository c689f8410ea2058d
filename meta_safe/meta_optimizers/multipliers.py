"""Lagrange-multiplier updates, written once for the primal-dual rules.

* projected dual ascent ``lambda' = max(0, lambda + rate v)`` (lagrangian, lstm's residual);
* the PID multiplier of Stooke, Achiam and Abbeel (2020, algorithm 2), positional form:
  ``I <- max(I + v, 0)``, ``lambda = max(lambda_0 + K_P v + K_I I + K_D (v - v_prev), 0)``.

``v = J_C - d`` is the measured violation (a constant for autograd); gradients reach
learned rates and gains through ``lambda``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def dual_ascent(
    lam: Tensor, violation: Tensor, rate: Tensor | float, increment: Tensor | None = None
) -> Tensor:
    """``max(0, lambda + rate v [+ increment])``, all ``[T]``."""
    new = lam + rate * violation
    if increment is not None:
        new = new + increment
    return new.clamp_min(0.0)


def pid_multiplier(
    violation: Tensor,
    integral: Tensor,
    prev_violation: Tensor,
    k_p: Tensor,
    k_i: Tensor,
    k_d: Tensor,
    lambda_init: float,
) -> tuple[Tensor, Tensor]:
    """The PID multiplier and the new integral (anti-windup at 0). All ``[T]``."""
    integral = (integral + violation).clamp_min(0.0)
    derivative = violation - prev_violation
    lam = (lambda_init + k_p * violation + k_i * integral + k_d * derivative).clamp_min(0.0)
    return lam, integral


def inverse_softplus(x: float) -> float:
    """``y`` with ``softplus(y) = x`` (``x > 0``), numerically safe for large ``x``."""
    return x + math.log(-math.expm1(-x))


def positive_parameter(value: float) -> nn.Parameter:
    """An unconstrained parameter whose ``softplus`` is ``value``: gradient steps on it can
    never make the learned quantity negative."""
    return nn.Parameter(torch.tensor(inverse_softplus(value)))


def check_positive(**values: float) -> None:
    """Each value is finite and ``> 0``; else a ``ValueError`` naming it."""
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name}={value} is invalid: must be finite and > 0")


def check_non_negative(**values: float) -> None:
    """Each value is finite and ``>= 0``; else a ``ValueError`` naming it."""
    for name, value in values.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}={value} is invalid: must be finite and >= 0")
