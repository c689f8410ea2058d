"""Coordinate-wise LSTM learned optimiser (Andrychowicz et al. 2016) for constrained steps.

One small ``nn.LSTMCell``, shared by every parameter coordinate of every task, reads per
coordinate ``i`` of task ``t``::

    x_ti = [pre(g_ti), pre(b_ti), log(1 + lambda_t), pre(v_t)]            (7 features)

with ``g, b`` the reward / cost surrogate gradients, ``v = J_C - d`` the violation and
``pre`` the log/sign preprocessing of Andrychowicz et al., section 3.2 (``p = 10``)::

    pre(x) = (log(max(|x|, e^-p)) / p,  clamp(e^p x, -1, 1))

(the two-branch formula of the paper written without branches; it is continuous in
``x``, and its gradient is finite everywhere, including at ``x = 0``). From the new
hidden state ``h_ti`` two heads produce

    dlambda_t = w_l . mean_i h_ti + c_l                          (pooled multiplier head)
    lambda'_t = max(0, lambda_t + eta_lambda v_t + dlambda_t)
    theta'_ti = theta_ti + (eta_R g_hat_ti - lambda'_t eta_C b_hat_ti) / (1 + lambda'_t)
                         + s * rms_t(g_hat) * (w_o . h_ti + c_o)

``g_hat, b_hat`` are the step directions of the PID rule (``directions``,
:class:`~meta_safe.meta_optimizers.directions.StepDirections`; by default natural-gradient
steps of KL ``trust_radius``, so ``eta_R = 1`` is one TRPO step), with the same
``1 / (1 + lambda)`` normalisation. The learned correction is measured in units of the
reward direction's RMS over coordinates, ``rms_t(g_hat)``, so ``s`` is relative to a
trust-region step whatever the policy's size.
The residual terms (``eta_R``, ``eta_C``, ``eta_lambda``: learnable, positive via
softplus; ``residual=False`` drops them) make the untrained rule a primal-dual
trust-region step, so the LSTM only has to learn corrections; the heads start with zero
bias and small weights (``0.1 x`` the default init), which keeps the initial correction
small, while every weight still receives a gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer, State
from meta_safe.meta_optimizers.directions import StepDirections, primal_dual_direction
from meta_safe.meta_optimizers.gradients import add_flat, constraint_margin, stacked_task_gradients
from meta_safe.meta_optimizers.multipliers import (
    check_non_negative,
    check_positive,
    dual_ascent,
    positive_parameter,
)
from meta_safe.meta_optimizers.trust_region import TrustRegion
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData

#: Features per coordinate: pre(g) (2), pre(b) (2), log1p(lambda) (1), pre(v) (2).
NUM_FEATURES = 7
#: Initial head weights are this multiple of PyTorch's default initialisation.
HEAD_INIT_GAIN = 0.1


def log_sign_preprocess(x: Tensor, p: float) -> Tensor:
    """Andrychowicz et al. (2016) section 3.2 preprocessing; ``[...] -> [..., 2]``."""
    floor = math.exp(-p)
    log_magnitude = torch.log(x.abs().clamp_min(floor)) / p
    sign_or_scaled = (x * math.exp(p)).clamp(-1.0, 1.0)
    return torch.stack([log_magnitude, sign_or_scaled], dim=-1)


class LSTMOptimizer(MetaOptimizer):
    """Learned coordinate-wise LSTM inner step with a learned multiplier update.

    :param hidden_size: LSTM hidden units per coordinate.
    :param output_scale: ``s``, multiplies the per-coordinate head's output, in units of
        ``rms(g_hat)`` (``> 0``).
    :param residual: add the primal-dual gradient step (else the LSTM alone moves ``theta``
        and ``lambda``).
    :param eta_reward: initial residual reward step (in units of ``directions``, ``> 0``).
    :param eta_cost: initial residual cost step (``> 0``).
    :param eta_lambda: initial residual multiplier step per unit of violation (``> 0``).
    :param lambda_init: initial multiplier (``>= 0``).
    :param preprocess_p: ``p`` of the log/sign gradient preprocessing (``> 0``).
    :param directions: ``natural`` | ``rms`` | ``raw`` step directions (as the PID rule).
    :param trust_radius: KL of a unit ``natural`` direction. :param damping: Fisher damping.
    :param cg_iters: CG steps. :param fisher_stride: the Fisher uses every ``k``-th sample.
    """

    learnable = True
    default_outer_lr = 0.003

    def __init__(
        self,
        hidden_size: int = 16,
        output_scale: float = 1.0,
        residual: bool = True,
        eta_reward: float = 1.0,
        eta_cost: float = 1.0,
        eta_lambda: float = 0.05,
        lambda_init: float = 0.0,
        preprocess_p: float = 10.0,
        directions: str = "natural",
        trust_radius: float = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        fisher_stride: int = 5,
    ) -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size={hidden_size} is invalid: must be >= 1")
        check_positive(
            output_scale=output_scale,
            eta_reward=eta_reward,
            eta_cost=eta_cost,
            eta_lambda=eta_lambda,
            preprocess_p=preprocess_p,
        )
        check_non_negative(lambda_init=lambda_init)
        self.hidden_size, self.output_scale = int(hidden_size), float(output_scale)
        self.residual, self.lambda_init = bool(residual), float(lambda_init)
        self.preprocess_p = float(preprocess_p)
        region = TrustRegion(trust_radius, damping, cg_iters, fisher_stride)
        self.directions = StepDirections(directions, region)
        self.cell = nn.LSTMCell(NUM_FEATURES, self.hidden_size)
        self.update_head = nn.Linear(self.hidden_size, 1)
        self.multiplier_head = nn.Linear(self.hidden_size, 1)
        with torch.no_grad():
            for head in (self.update_head, self.multiplier_head):
                head.weight.mul_(HEAD_INIT_GAIN)
                head.bias.zero_()
        if self.residual:
            self.raw_eta_reward = positive_parameter(eta_reward)
            self.raw_eta_cost = positive_parameter(eta_cost)
            self.raw_eta_lambda = positive_parameter(eta_lambda)

    def init_state(
        self, num_tasks: int, dtype: torch.dtype = torch.float32, num_params: int = 0
    ) -> State:
        """``lambda [T]``, ``h, c [T, P, hidden]``.

        ``P`` is unknown before the first step unless given: with ``num_params=0`` the
        recurrent state starts as ``[T, 0, hidden]`` and the first step fills it with zeros.
        """
        shape = (num_tasks, num_params, self.hidden_size)
        return {
            "lambda": torch.full((num_tasks,), self.lambda_init, dtype=dtype),
            "h": torch.zeros(shape, dtype=dtype),
            "c": torch.zeros(shape, dtype=dtype),
        }

    def step(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        state: State,
        data: list[PolicyData],
        ctx: InnerContext,
    ) -> tuple[list[Params], State, dict[str, Tensor]]:
        g, b = stacked_task_gradients(policy, params, data, ctx.create_graph)  # [T, P] each
        num_tasks, num_params = g.shape
        dtype, net_dtype = g.dtype, self.cell.weight_ih.dtype
        violation = constraint_margin(data, ctx.cost_limit).to(dtype)  # [T], a constant
        lam = state["lambda"].to(dtype)
        h, c = state["h"], state["c"]
        if h.shape[1] == 0:
            h = c = torch.zeros(num_tasks, num_params, self.hidden_size, dtype=net_dtype)
        elif h.shape[:2] != (num_tasks, num_params):
            raise ValueError(
                f"LSTM state h has shape {tuple(h.shape)}, expected "
                f"({num_tasks}, {num_params}, {self.hidden_size})"
            )

        per_task = torch.cat(
            [torch.log1p(lam).unsqueeze(-1), log_sign_preprocess(violation, self.preprocess_p)],
            dim=-1,
        )  # [T, 3]
        features = torch.cat(
            [
                log_sign_preprocess(g, self.preprocess_p),
                log_sign_preprocess(b, self.preprocess_p),
                per_task.unsqueeze(1).expand(num_tasks, num_params, 3),
            ],
            dim=-1,
        )  # [T, P, 7]
        # One cell call over all coordinates of all tasks: [T * P, features].
        h_flat, c_flat = self.cell(
            features.reshape(-1, NUM_FEATURES).to(net_dtype),
            (
                h.reshape(-1, self.hidden_size).to(net_dtype),
                c.reshape(-1, self.hidden_size).to(net_dtype),
            ),
        )
        h = h_flat.reshape(num_tasks, num_params, self.hidden_size)
        c = c_flat.reshape(num_tasks, num_params, self.hidden_size)
        g_hat, b_hat = self.directions(policy, params, data, g, b, ctx.create_graph)
        unit = g_hat.pow(2).mean(-1, keepdim=True).sqrt()  # [T, 1]: rms of the reward direction
        correction = self.output_scale * unit * self.update_head(h).squeeze(-1).to(dtype)
        dlam = self.multiplier_head(h.mean(1)).squeeze(-1).to(dtype)  # [T]

        if self.residual:
            eta_reward = F.softplus(self.raw_eta_reward).to(dtype)
            eta_cost = F.softplus(self.raw_eta_cost).to(dtype)
            eta_lambda = F.softplus(self.raw_eta_lambda).to(dtype)
            new_lam = dual_ascent(lam, violation, eta_lambda, increment=dlam)
            steps = primal_dual_direction(g_hat, b_hat, new_lam, eta_reward, eta_cost) + correction
        else:
            new_lam = (lam + dlam).clamp_min(0.0)
            steps = correction
        new_params = [add_flat(p, s) for p, s in zip(params, steps, strict=True)]
        new_state = {"lambda": new_lam, "h": h, "c": c}
        metrics = {
            "lambda": new_lam.detach(),
            "violation": violation.detach(),
            "step_norm": steps.detach().norm(dim=-1),
            "correction_norm": correction.detach().norm(dim=-1),
        }
        return new_params, new_state, metrics
