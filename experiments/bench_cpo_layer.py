"""Micro-benchmark: one batched CPO dual solve + backward, cvxpylayers vs the closed form.

Usage: ``python experiments/bench_cpo_layer.py --repeats 20``

Every task is built in the *active* case (the only one the layer is called for), with a
policy-sized parameter vector (P = 1312, the reference Meta-CPO policy) and a diagonal
Fisher stand-in so ``H^-1 g`` and ``H^-1 b`` are exact. Prints a markdown table of median
wall times (forward + backward of ``sum(step)`` w.r.t. g, b and c).
"""

from __future__ import annotations

import math
import statistics
import time

import torch

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.optim.cpo_step import CASE_ACTIVE, cpo_step


def make_active_batch(tasks: int, params: int, delta: float, seed: int = 0):
    """``g, b [tasks, P]``, ``c [tasks]``, ``H^-1 g``, ``H^-1 b`` with every task active."""
    gen = torch.Generator().manual_seed(seed)
    fisher_diag = 0.1 + torch.rand(params, generator=gen, dtype=torch.float64)
    g = torch.randn(tasks, params, generator=gen, dtype=torch.float64)
    b = 0.5 * g + torch.randn(tasks, params, generator=gen, dtype=torch.float64)  # r > 0
    hinv_g, hinv_b = g / fisher_diag, b / fisher_diag
    q, r = (g * hinv_g).sum(-1), (g * hinv_b).sum(-1)
    # c < 0 but the pure trust-region step would overshoot the constraint by 2x
    c = -0.5 * r * torch.sqrt(2 * delta / q)
    return g, b, c, hinv_g, hinv_b


def time_solve_backward(solver: str, batch, delta: float, repeats: int) -> float:
    """Median seconds for one batched ``cpo_step`` forward plus backward."""
    times = []
    for _ in range(repeats + 1):  # +1: the first call may build and cache the layer
        g, b, c, hinv_g, hinv_b = (t.clone().requires_grad_() for t in batch)
        start = time.perf_counter()
        step, info = cpo_step(g, b, c, hinv_g, hinv_b, delta, solver=solver)
        step.sum().backward()
        times.append(time.perf_counter() - start)
        assert torch.all(info["case"] == CASE_ACTIVE)
    return statistics.median(times[1:])


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per cell")
    parser.add_argument("--params", type=int, default=1312, help="policy parameter count P")
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--delta", type=float, default=0.01, help="trust radius (max KL)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # a fair, reproducible comparison on a shared 2-core machine
    print(f"CPO dual solve + backward, P = {args.params}, median of {args.repeats} repeats\n")
    print(
        "| tasks | closed form (ms) | cvxpylayers (ms) | cvxpylayers / closed form | "
        "max rel. step diff |"
    )
    print("|---:|---:|---:|---:|---:|")
    for tasks in args.tasks:
        batch = make_active_batch(tasks, args.params, args.delta)
        closed = time_solve_backward("closed_form", batch, args.delta, args.repeats)
        layer = time_solve_backward("cvxpylayers", batch, args.delta, args.repeats)
        with torch.no_grad():
            x_cf, _ = cpo_step(*batch, args.delta, solver="closed_form")
            x_cl, _ = cpo_step(*batch, args.delta, solver="cvxpylayers")
            rel = ((x_cf - x_cl).norm(dim=-1) / x_cf.norm(dim=-1)).max().item()
        ratio = layer / closed if closed > 0 else math.inf
        print(f"| {tasks} | {1e3 * closed:.2f} | {1e3 * layer:.2f} | {ratio:.0f}x | {rel:.1e} |")


if __name__ == "__main__":
    run_cli(main)
