"""Evaluate meta-trained checkpoints under the Meta-CPO reference's own meta-test protocol.

The protocol of the public Meta-CPO code (Cho and Sun, AAAI 2024): one fixed task (Car
robot, circle radius 2.31, walls at |x| = 1.409), 50 adaptation updates of 3,000 steps,
after each update the policy's mean action evaluated, its cost scored as the discounted
(gamma 0.99) episode cost, limit 10. For every ``<run>/seed*`` checkpoint this runs::

    python -m meta_safe.evaluate checkpoint=<seed dir> "tasks=[[2.31,1.409]]" \\
        evaluation.inner_steps=50 evaluation.envs_per_task=6 evaluation.policy=mean \\
        evaluation.cost_discount=0.99 env.backend=mujoco stem=evaluation_reference

(skipped where ``evaluation_reference.json`` exists) and prints, beside the reference's
three logged meta-test runs, the mean return and discounted cost over the 50 updates,
the share of evaluations within the limit, and the return over the first and last 10::

    .venv/bin/python experiments/reference_protocol.py runs/car/cpo_layer --out table.md
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

from meta_safe.cli.errors import ArgumentParser, run_cli

REPO = Path(__file__).resolve().parent.parent
TASK = "[[2.31,1.409]]"
STEM = "evaluation_reference"

REFERENCE_LOGS = [  # Mgineer117/Meta-CPO, commit 620d597: its three committed meta-test logs
    {"return": 11.71, "cost": 3.40, "within": 0.94, "first10": 12.24, "last10": 10.94},
    {"return": 12.20, "cost": 5.17, "within": 0.86, "first10": 12.27, "last10": 11.53},
    {"return": 11.35, "cost": 2.64, "within": 1.00, "first10": 11.98, "last10": 11.02},
]


def evaluate(seed_dir: Path, updates: int, envs: int, overrides: list[str]) -> float:
    """Run the protocol on one checkpoint; returns wall-clock seconds (0 if already done)."""
    if (seed_dir / f"{STEM}.json").exists():
        return 0.0
    cmd = [
        sys.executable, "-m", "meta_safe.evaluate", f"checkpoint={seed_dir}", f"tasks={TASK}",
        f"evaluation.inner_steps={updates}", f"evaluation.envs_per_task={envs}",
        "evaluation.policy=mean", "evaluation.cost_discount=0.99", "env.backend=mujoco",
        f"stem={STEM}", *overrides,
    ]  # fmt: skip
    print("$ " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    with (seed_dir / "evaluate_reference.log").open("w") as log:
        subprocess.run(cmd, cwd=REPO, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - start


def seed_row(report: dict) -> dict[str, float]:
    """Aggregates over the evaluations after updates 1..N of one checkpoint (one task)."""
    returns, costs = report["returns"][0][1:], report["costs"][0][1:]
    limit = report["cost_limit"]
    return {
        "return": statistics.fmean(returns),
        "cost": statistics.fmean(costs),
        "within": sum(c <= limit for c in costs) / len(costs),
        "first10": statistics.fmean(returns[:10]),
        "last10": statistics.fmean(returns[-10:]),
        "before": report["returns"][0][0],
        "cost_before": report["costs"][0][0],
    }


def mean_se(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    se = statistics.stdev(values) * scale / math.sqrt(len(values))
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def table(rows: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "| system | runs | return before | mean return, updates 1-50 | first 10 -> last 10 "
        "| mean discounted cost | evaluations with cost <= 10 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, seeds in rows.items():
        lines.append(
            f"| {name} | {len(seeds)} | {mean_se([s['before'] for s in seeds])} "
            f"| {mean_se([s['return'] for s in seeds])} "
            f"| {mean_se([s['first10'] for s in seeds])} "
            f"-> {mean_se([s['last10'] for s in seeds])} "
            f"| {mean_se([s['cost'] for s in seeds])} "
            f"| {mean_se([s['within'] for s in seeds], 100, 0)}% |"
        )
    for index, log in enumerate(REFERENCE_LOGS):
        lines.append(
            f"| reference Meta-CPO, logged run {index + 1} | 1 | | {log['return']:.2f} "
            f"| {log['first10']:.2f} -> {log['last10']:.2f} | {log['cost']:.2f} "
            f"| {100 * log['within']:.0f}% |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="variant directories holding seed*/checkpoint.pt")
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--envs", type=int, default=6, help="envs of 500 steps per update")
    parser.add_argument("--out", help="also write the table here")
    parser.add_argument("--override", action="append", default=[], help="evaluate override")
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {}
    for run in map(Path, args.runs):
        seeds = sorted(p for p in run.glob("seed*") if (p / "checkpoint.pt").exists())
        if not seeds:
            print(f"error: no seed*/checkpoint.pt under {run}", file=sys.stderr)
            return 2
        for seed_dir in seeds:
            seconds = evaluate(seed_dir, args.updates, args.envs, args.override)
            if seconds:
                print(f"{seed_dir}: {seconds:.0f} s", flush=True)
        rows[f"meta_safe {run.name}"] = [
            seed_row(json.loads((s / f"{STEM}.json").read_text())) for s in seeds
        ]
    text = table(rows)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
