"""CPO inner step (Achiam et al. 2017, section 6.1), dual solved as a convex layer.

Per task: ``g, b`` from the surrogates, ``H^-1 g, H^-1 b`` by conjugate gradient on
Fisher-vector products (kept in the graph), then one batched dual solve for all
tasks (``solver="cvxpylayers"``: a differentiable convex program; ``"closed_form"``:
the analytic solution), and the step ``x = H^-1 (g - nu b) / lambda`` or the
recovery step when the constraint cannot be met inside the trust region.
"""

from __future__ import annotations

import torch
from torch import Tensor

from meta_safe.meta_optimizers import overshoot_margin as overshoot
from meta_safe.meta_optimizers.base import InnerContext, MetaOptimizer, State
from meta_safe.meta_optimizers.gradients import add_flat, constraint_margin, task_gradients
from meta_safe.meta_optimizers.trust_region import TrustRegion
from meta_safe.optim.cpo_step import CASE_INFEASIBLE, SOLVERS, cpo_step
from meta_safe.rl.policy import GaussianPolicy, Params
from meta_safe.rl.surrogate import PolicyData, mean_kl, surrogates


class CPOLayer(MetaOptimizer):
    """:param trust_radius: KL bound ``delta``. :param damping: Fisher damping.
    :param cg_iters: conjugate-gradient iterations. :param solver: one of ``SOLVERS``.
    :param line_search_steps: backtracking steps (0: take the full step). Each candidate
        ``shrink^j x`` is accepted when its mean KL is within ``1.5 delta``, its cost
        surrogate does not exceed the linearised budget ``max(0, -c)`` (when recovering:
        decreases) and, while the constraint is satisfied, its reward surrogate does not
        decrease (Achiam et al. 2017, appendix 10.3). The scale is chosen without
        gradient, so the step stays differentiable (exact meta-gradients almost everywhere).
    :param shrink: backtracking factor in (0, 1).
    :param fisher_stride: the Fisher is averaged over every ``k``-th sample of the batch.
    :param overshoot_margin: tighten each step's constraint by the measured overshoot of
        the linear cost model over the previous steps
        (:mod:`meta_safe.meta_optimizers.overshoot_margin`); the estimate lives in the rule's
        state, so it builds up over the inner steps of an adaptation and over a single-task run.
    :param overshoot_decay: weight of the previous overshoot estimate, in ``[0, 1)``.
    :param overshoot_prior: the overshoot assumed before any was measured (cost units,
        ``>= 0``): the first step's margin, so a fresh adaptation starts conservative.
    :param overshoot_hold: the margin holds the largest recent overshoot,
        ``max(decay * previous, new)``, instead of a moving average (``constant`` model).
    :param overshoot_model: ``"constant"`` (the margin is the same for any step) or
        ``"step_length"``: the overshoot grows with the step's length ``t = sqrt(KL /
        delta)``, as the distribution-shift term of CPO's bound does; each step picks the
        length whose constraint ``c + o t + b^T x <= 0`` (trust radius ``delta t^2``)
        leaves the most reward gain, and ``o`` is refitted to each measured miss.
    """

    def __init__(
        self,
        trust_radius: float = 0.01,
        damping: float = 0.1,
        cg_iters: int = 10,
        solver: str = "cvxpylayers",
        line_search_steps: int = 0,
        shrink: float = 0.8,
        fisher_stride: int = 5,
        overshoot_margin: bool = False,
        overshoot_decay: float = 0.8,
        overshoot_prior: float = 0.0,
        overshoot_hold: bool = False,
        overshoot_model: str = "constant",
    ) -> None:
        super().__init__()
        self.trust_region = TrustRegion(trust_radius, damping, cg_iters, fisher_stride)
        if not 0.0 <= overshoot_decay < 1.0:
            raise ValueError(f"overshoot_decay={overshoot_decay} is invalid: must lie in [0, 1)")
        if not overshoot_prior >= 0.0:
            raise ValueError(f"overshoot_prior={overshoot_prior} is invalid: must be >= 0")
        self.overshoot_margin, self.overshoot_decay = bool(overshoot_margin), overshoot_decay
        self.overshoot_prior, self.overshoot_hold = float(overshoot_prior), bool(overshoot_hold)
        if overshoot_model not in overshoot.MODELS:
            raise ValueError(
                f"overshoot_model={overshoot_model!r} is unknown: valid choices are "
                f"{list(overshoot.MODELS)}"
            )
        self.overshoot_model = overshoot_model
        if solver not in SOLVERS:
            raise ValueError(f"solver={solver!r} is unknown: valid choices are {list(SOLVERS)}")
        if line_search_steps < 0:
            raise ValueError(f"line_search_steps={line_search_steps} is invalid: must be >= 0")
        if not 0 < shrink < 1:
            raise ValueError(f"shrink={shrink} is invalid: must lie in (0, 1)")
        self.line_search_steps, self.shrink, self.solver = line_search_steps, shrink, solver

    def init_state(self, num_tasks: int, dtype: torch.dtype = torch.float32) -> State:
        """The overshoot history (empty without ``overshoot_margin``)."""
        if not self.overshoot_margin:
            return {}
        return overshoot.initial_state(num_tasks, self.overshoot_prior, self.overshoot_model)

    def step(
        self,
        policy: GaussianPolicy,
        params: list[Params],
        state: State,
        data: list[PolicyData],
        ctx: InnerContext,
    ) -> tuple[list[Params], State, dict[str, Tensor]]:
        gs, bs, hgs, hbs = [], [], [], []
        for p, d in zip(params, data, strict=True):
            g, b = task_gradients(policy, p, d, ctx.create_graph)
            hg, hb = self.trust_region.solve(policy, p, d, [g, b], ctx.create_graph)
            gs.append(g)
            bs.append(b)
            hgs.append(hg)
            hbs.append(hb)
        margin = constraint_margin(data, ctx.cost_limit).to(gs[0].dtype)
        delta = self.trust_region.trust_radius
        fractions = torch.ones(len(params), dtype=gs[0].dtype)
        if self.overshoot_margin:
            episode_costs = torch.stack([d.episode_cost.detach() for d in data])
            if self.overshoot_model == "step_length":
                expected_overshoot, miss_moment, length_moment = (
                    overshoot.update_proportional_overshoot(
                        state, episode_costs, self.overshoot_decay
                    )
                )
                g_t, b_t, hg_t, hb_t = (torch.stack(v).detach() for v in (gs, bs, hgs, hbs))
                fractions = overshoot.choose_step_fractions(
                    (g_t * hg_t).sum(-1),
                    (g_t * hb_t).sum(-1),
                    (b_t * hb_t).sum(-1),
                    margin.detach(),
                    expected_overshoot,
                    delta,
                )
                margin = margin + (expected_overshoot * fractions).to(margin.dtype)
            else:
                expected_overshoot = overshoot.update_overshoot(
                    state, episode_costs, self.overshoot_decay, self.overshoot_hold
                )
                margin = margin + expected_overshoot.to(margin.dtype)
        radii = delta * fractions**2
        steps, info = cpo_step(
            torch.stack(gs),
            torch.stack(bs),
            margin,
            torch.stack(hgs),
            torch.stack(hbs),
            radii if self.overshoot_model == "step_length" else delta,
            solver=self.solver,
        )
        scales = [
            self._backtrack(policy, p, d, s, float(m.detach()), int(case), float(radius))
            for p, d, s, m, case, radius in zip(
                params, data, steps, margin, info["case"], radii, strict=True
            )
        ]
        applied = steps * torch.tensor(scales, dtype=steps.dtype).unsqueeze(1)
        new_params = [add_flat(p, s) for p, s in zip(params, applied.unbind(0), strict=True)]
        metrics = {
            "step_scale": torch.tensor(scales),
            "lambda": info["lambda"].detach(),
            "nu": info["nu"].detach(),
            "case": info["case"].detach().float(),
        }
        if self.overshoot_margin:
            state = {
                "previous_cost": episode_costs.double(),
                "predicted_change": overshoot.predicted_change(torch.stack(bs), applied),
                "overshoot": expected_overshoot,
            }
            metrics["overshoot_margin"] = expected_overshoot.detach()
            if self.overshoot_model == "step_length":
                # A recovery step follows -H^-1 b, where the linear model holds; only
                # steps that seek reward carry evidence of the overshoot.
                seeks_reward = info["case"].detach() != CASE_INFEASIBLE
                state["step_length"] = torch.where(
                    seeks_reward, fractions * torch.tensor(scales, dtype=fractions.dtype), 0.0
                ).double()
                state["miss_moment"], state["length_moment"] = miss_moment, length_moment
                metrics["step_fraction"] = fractions.detach()
        return new_params, state, metrics

    @torch.no_grad()
    def _backtrack(
        self,
        policy: GaussianPolicy,
        params: Params,
        data: PolicyData,
        step: Tensor,
        margin: float,
        case: int,
        trust_radius: float,
    ) -> float:
        """Largest ``shrink^j`` whose candidate passes the CPO acceptance test (0 if none)."""
        if self.line_search_steps == 0:
            return 1.0
        base = {k: v.detach() for k, v in params.items()}
        reward_0, cost_0 = surrogates(policy, base, data)
        step = step.detach()
        for j in range(self.line_search_steps):
            scale = self.shrink**j
            candidate = add_flat(base, scale * step)
            reward, cost = surrogates(policy, candidate, data)
            kl = mean_kl(policy, candidate, base, data.obs)
            if case == CASE_INFEASIBLE:
                accept = cost < cost_0
            else:
                # While violating, reward may drop to restore the constraint.
                improves = margin > 0 or bool(reward >= reward_0)
                accept = bool(cost - cost_0 <= max(0.0, -margin)) and improves
            if bool(accept) and float(kl) <= 1.5 * trust_radius:
                return scale
        return 0.0
