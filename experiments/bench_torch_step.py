"""Per-step latency of the torch backend: old eager step vs the compiled fast path.

Side by side in one run, for ``[tasks, envs]`` = [1, 1], [3, 8], [8, 64], [1, 4096]:

* ``env.step`` -- ``BatchedCircleEnv.step`` with ``fast=False`` (eager, ~300 torch ops,
  the previous implementation) and ``fast=True`` (one kernel compiled by ``torch.compile``);
* ``kernel`` -- the bare tensor program: eager ``env_step`` (physics + observation + reward
  + cost, as the old ``step`` ran it) vs the compiled ``fast_env_step`` (the same plus the
  episode clock), without the env's auto-reset check.

Times are the median over ``--repeats`` blocks of ``--steps`` steps, eager and fast blocks
interleaved so both see the same machine load. Compile time (first call per shape) is
reported separately and excluded from the per-step times.

    python experiments/bench_torch_step.py
    python experiments/bench_torch_step.py --threads 1
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from meta_safe.cli.errors import ArgumentParser, run_cli
from stochastic_circle.tasks import CircleTask
from stochastic_circle.torch_backend import (
    PARALLEL_STEP_ELEMENTS,
    BatchedCircleEnv,
    channel_major,
    env_step,
    fast_env_step,
)

SIZES: tuple[tuple[int, int], ...] = ((1, 1), (3, 8), (8, 64), (1, 4096))


def block_ms(fn: Callable[[], object], steps: int) -> float:
    """Milliseconds per call of ``fn`` over ``steps`` calls."""
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps * 1e3


def interleaved(fns: list[Callable[[], object]], steps: int, repeats: int) -> list[float]:
    """Median ms per call of each ``fn``, blocks of the fns interleaved; warm-up first."""
    for fn in fns:
        block_ms(fn, max(steps // 10, 5))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times, strict=True):
            acc.append(block_ms(fn, steps))
    return [statistics.median(acc) for acc in times]


def bench_size(num_tasks: int, num_envs: int, steps: int, repeats: int) -> dict[str, float]:
    tasks = [CircleTask(radius=1.2 + 0.1 * i, wall_distance=0.9) for i in range(num_tasks)]
    eager_env = BatchedCircleEnv(tasks, num_envs, seed=0, fast=False)
    fast_env = BatchedCircleEnv(tasks, num_envs, seed=0, fast=True)
    eager_env.reset()
    fast_env.reset()
    action = torch.rand(num_tasks, num_envs, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1

    model = fast_env.model
    start = time.perf_counter()
    fast_env.step(action)  # compiles (or loads from inductor's cache) for this shape
    compile_s = time.perf_counter() - start

    def old_kernel() -> object:
        with torch.no_grad():
            return env_step(fast_env.state, action, fast_env.task_tensors, model)

    kernel_action = (
        channel_major(action) if action.shape[:-1].numel() >= PARALLEL_STEP_ELEMENTS else action
    )

    def new_kernel() -> object:  # fed as env.step feeds it
        return fast_env_step(
            fast_env.state, kernel_action, fast_env.elapsed, 500, fast_env.env_task_tensors, model
        )

    old_step, new_step, old_k, new_k = interleaved(
        [
            lambda: eager_env.step(action),
            lambda: fast_env.step(action),
            old_kernel,
            new_kernel,
        ],
        steps,
        repeats,
    )
    return {
        "compile_s": compile_s,
        "old_step": old_step,
        "new_step": new_step,
        "old_kernel": old_k,
        "new_kernel": new_k,
    }


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per variant")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = [(t, e, bench_size(t, e, args.steps, args.repeats)) for t, e in SIZES]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ms per step (median)\n")
    print(
        "| [tasks, envs] | env.step eager | env.step fast | speed-up | kernel eager "
        "| kernel compiled | speed-up | fast steps/s | first call (compile) s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, e, r in rows:
        print(
            f"| [{t}, {e}] | {r['old_step']:.4f} | {r['new_step']:.4f} | "
            f"{r['old_step'] / r['new_step']:.1f}x | {r['old_kernel']:.4f} | "
            f"{r['new_kernel']:.4f} | {r['old_kernel'] / r['new_kernel']:.1f}x | "
            f"{t * e / r['new_step'] * 1e3:,.0f} | {r['compile_s']:.1f} |"
        )
    if not fast_env_step.enabled:
        print("\nnote: torch.compile was unavailable; the fast path ran eagerly")


if __name__ == "__main__":
    run_cli(main)
