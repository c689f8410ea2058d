"""Seconds per meta-iteration at the reference Meta-CPO batch, by phase and backend.

One meta-iteration at the reference batch: 3 training tasks x 4 collections (3 inner
steps + the post-adaptation batch) x 8 envs x 500 steps = 48,000 env steps and
12 policy updates (the reference's count: 3 tasks x 4; here 9 inner CPO updates, then
the meta-gradient through them and one outer CPO step). Each configuration runs in its
own subprocess, so peak memory is per configuration and compile caches do not leak. One warm-up
iteration (torch.compile, cvxpylayers construction, ...) is timed separately and
excluded; the table reports the median of ``--iterations`` timed iterations.

    meta-safe bench meta-iteration --quick        # smoke test, ~48x smaller
    meta-safe bench meta-iteration --iterations 2 # the full benchmark
    meta-safe bench meta-iteration --backends torch --meta-optimizer pid

``torch-fused`` is the torch row with ``runtime.fused_rollout=true`` (each rollout one
compiled program of policy and env; its compile is in the warm-up column).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.device import describe_device

PROG = "meta-safe bench meta-iteration"
WORKER_MODULE = "meta_safe.benchmarks.meta_iteration"

RESULT_PREFIX = "BENCH_RESULT "

#: Hydra env config, label and extra overrides of each backend row.
BACKENDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "torch": ("point_circle", "torch, Point", ()),
    "torch-fused": ("point_circle", "torch, Point, fused rollout", ("runtime.fused_rollout=true",)),
    "mujoco": ("car_circle_mujoco", "MuJoCo, Car", ()),
}
#: The reference Meta-CPO batch (3 tasks x (3 + 1) collections x 8 envs x 500 steps).
BATCH = {
    "meta.inner_steps": 3,
    "meta.tasks_per_iteration": 3,
    "meta.envs_per_task": 8,
    "meta.steps_per_env": 500,
}
QUICK_STEPS = 100  # --quick: steps_per_env = episode_steps = 100

#: Public Meta-CPO code at this batch on a 2-core machine (seconds per meta-iteration).
REFERENCE = {"sampling": 70.0, "updates": 90.0, "total": 160.0}
#: Targets (seconds per meta-iteration, peak resident memory).
TARGET_SECONDS = {"torch": 0.5, "mujoco": 4.0}
TARGET_MEMORY_GB = 1.2

PHASES = ("time_sampling", "time_inner_update", "time_meta_gradient", "time_outer_step")


# ------------------------------------------------------------------------ worker
def peak_rss_bytes(who: int) -> int:
    """``ru_maxrss`` in bytes (Linux reports KiB, macOS bytes)."""
    value = resource.getrusage(who).ru_maxrss
    return value if platform.system() == "Darwin" else value * 1024


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build a :class:`MetaTrainer` from ``spec['overrides']`` and time its iterations."""
    from meta_safe.config import compose_config
    from meta_safe.trainer import MetaTrainer

    cfg = compose_config(spec["overrides"])
    with tempfile.TemporaryDirectory(prefix="bench_meta_") as run_dir:
        start = time.perf_counter()
        trainer = MetaTrainer(cfg, run_dir)
        setup = time.perf_counter() - start
        rows = []
        for _ in range(1 + spec["iterations"]):  # the first one is the warm-up
            start = time.perf_counter()
            row = trainer.run_iteration()
            row["time_total"] = time.perf_counter() - start
            rows.append(row)
    import torch

    return {
        "setup": setup,
        "warmup": rows[0],
        "timed": rows[1:],
        "torch_threads": torch.get_num_threads(),
        "device": describe_device(trainer.device),
        "rss_self": peak_rss_bytes(resource.RUSAGE_SELF),
        "rss_children": peak_rss_bytes(resource.RUSAGE_CHILDREN),
    }


# ------------------------------------------------------------------------ parent
def run_worker(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run :func:`worker` in a fresh interpreter and parse its result line."""
    cmd = [
        sys.executable,
        "-m",
        "meta_safe.benchmarks.meta_iteration",
        "--worker",
        json.dumps(spec),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-key median over timed iterations."""
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def fmt_ratio(reference: float, ours: float) -> str:
    return f"{reference / ours:.0f}x" if ours > 0 else "inf"


def main(argv: list[str] | None = None, prog: str = PROG) -> None:
    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2, help="timed meta-iterations")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 iteration, 100 steps")
    parser.add_argument(
        "--backends", default="torch,torch-fused,mujoco", help=f"comma list of {list(BACKENDS)}"
    )
    parser.add_argument("--meta-optimizer", default="cpo_layer", help="meta_optimizer config")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="override runtime.torch_threads (default: the config's)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="extra hydra overrides for every row, e.g. meta_optimizer.fisher_stride=5",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        result = worker(json.loads(args.worker))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        parser.error(f"--backends {unknown} unknown: valid choices are {list(BACKENDS)}")
    iterations = 1 if args.quick else args.iterations
    if iterations < 1:
        parser.error("--iterations must be >= 1")
    batch = dict(BATCH)
    if args.quick:
        batch["meta.steps_per_env"] = QUICK_STEPS
    collections = batch["meta.inner_steps"] + 1
    steps = batch["meta.tasks_per_iteration"] * collections * batch["meta.envs_per_task"]
    steps *= batch["meta.steps_per_env"]
    updates = batch["meta.tasks_per_iteration"] * collections

    results = {}
    for backend in backends:
        env_name, label, extra = BACKENDS[backend]
        overrides = [
            f"env={env_name}",
            f"meta_optimizer={args.meta_optimizer}",
            *(f"{k}={v}" for k, v in batch.items()),
            "runtime.progress=false",
            "evaluate_after=false",
        ]
        if args.quick:
            overrides.append(f"env.episode_steps={QUICK_STEPS}")
        if args.torch_threads is not None:
            overrides.append(f"runtime.torch_threads={args.torch_threads}")
        overrides.extend(extra)
        overrides.extend(args.overrides)
        print(f"[{label}] {iterations} timed + 1 warm-up iteration(s) ...", flush=True)
        start = time.perf_counter()
        result = run_worker({"overrides": overrides, "iterations": iterations}, args.timeout)
        result["wall"] = time.perf_counter() - start
        results[backend] = result

    mode = "QUICK smoke test (not comparable to the reference)" if args.quick else "full batch"
    print(
        f"\n## Seconds per meta-iteration ({mode}), meta_optimizer={args.meta_optimizer}"
        f"{' ' + ' '.join(args.overrides) if args.overrides else ''}\n\n"
        f"{batch['meta.tasks_per_iteration']} tasks x {collections} collections "
        f"({batch['meta.inner_steps']} inner + post) x {batch['meta.envs_per_task']} envs x "
        f"{batch['meta.steps_per_env']} steps = {steps:,} env steps, {updates} policy updates "
        f"per meta-iteration; median of {iterations} timed iteration(s) after 1 warm-up; "
        f"each row in its own process; {platform.node()}, on "
        f"{', '.join(sorted({r['device'] for r in results.values()}))} (MuJoCo steps on the "
        "CPU).\n"
    )
    print(
        "| backend | sampling (s) | inner updates (s) | meta-gradient (s) | outer step (s) "
        "| other (s) | **total (s)** | env steps/s | peak RSS (GB) | warm-up (s) | setup (s) "
        "| torch threads |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backend, result in results.items():
        m = median_row(result["timed"])
        other = m["time_total"] - sum(m[p] for p in PHASES)
        rss = max(result["rss_self"], result["rss_children"]) / 1e9
        print(
            f"| {BACKENDS[backend][1]} | {m['time_sampling']:.3f} | {m['time_inner_update']:.3f} "
            f"| {m['time_meta_gradient']:.3f} | {m['time_outer_step']:.3f} | {other:.3f} "
            f"| **{m['time_total']:.3f}** | {m['env_steps'] / m['time_total']:,.0f} "
            f"| {rss:.2f} | {result['warmup']['time_total']:.2f} | {result['setup']:.2f} "
            f"| {result['torch_threads']} |"
        )
    print(
        f"| reference Meta-CPO (2 cores) | ~{REFERENCE['sampling']:.0f} "
        f"| ~{REFERENCE['updates']:.0f} (all updates) | | | | **~{REFERENCE['total']:.0f}** "
        f"| ~{48_000 / REFERENCE['total']:,.0f} | | | | |"
    )

    print("\n## Against the reference and the targets\n")
    print(
        "| backend | total (s) | reference / ours (total) | reference / ours (sampling) "
        "| reference / ours (updates) | time target | memory target |"
    )
    print("|---|---:|---:|---:|---:|---|---|")
    for backend, result in results.items():
        m = median_row(result["timed"])
        upd = m["time_inner_update"] + m["time_meta_gradient"] + m["time_outer_step"]
        rss = max(result["rss_self"], result["rss_children"]) / 1e9
        target = TARGET_SECONDS[backend.split("-")[0]]
        op = "<="
        ok_time = m["time_total"] <= target
        if args.quick:
            ratios = ["n/a (quick)"] * 3
            time_check = f"{op} {target:g} s: n/a (quick)"
        else:
            ratios = [
                fmt_ratio(REFERENCE["total"], m["time_total"]),
                fmt_ratio(REFERENCE["sampling"], m["time_sampling"]),
                fmt_ratio(REFERENCE["updates"], upd),
            ]
            time_check = f"{op} {target:g} s: {'PASS' if ok_time else 'FAIL'}"
        mem_check = f"< {TARGET_MEMORY_GB:g} GB: {'PASS' if rss < TARGET_MEMORY_GB else 'FAIL'}"
        print(
            f"| {BACKENDS[backend][1]} | {m['time_total']:.3f} | {' | '.join(ratios)} "
            f"| {time_check} | {mem_check} |"
        )
    print(
        f"\nReference: public Meta-CPO code, ~{REFERENCE['total']:.0f} s per meta-iteration at "
        f"this batch on a 2-core machine (~{REFERENCE['sampling']:.0f} s sampling, "
        f"~{REFERENCE['updates']:.0f} s updates). Targets: <= {TARGET_SECONDS['mujoco']:g} s "
        f"on MuJoCo, <= {TARGET_SECONDS['torch']:g} s on torch, < {TARGET_MEMORY_GB:g} GB peak "
        "resident memory. 'updates' = inner updates + meta-gradient + outer step; 'other' = "
        "task sampling, env construction and bookkeeping outside the timed phases."
    )
    wall = sum(r["wall"] for r in results.values())
    print(f"\nbenchmark wall time: {wall:.0f} s (including process start-up and warm-up)")


if __name__ == "__main__":
    run_cli(main)
