"""Meta-train every meta-optimizer with the same settings, evaluate on held-out tasks, tabulate.

Each run is the ordinary entry point (``python -m meta_safe.meta_trainer``) in its own
process and run directory, so every row can be reproduced on its own. Example::

    .venv/bin/python experiments/compare_meta_optimizers.py --out runs/compare \
        --rules cpo_layer,lagrangian,pid,lstm,trpo meta.iterations=30 evaluation.inner_steps=3

Prints one markdown table (held-out return and cost before adaptation and after the
last inner step, share of tasks within the cost limit, wall-clock per run) and writes
it to ``<out>/table.md``. ``--aggregate-only`` re-reads finished runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_one(rule: str, out: Path, overrides: list[str]) -> float:
    """Train + evaluate one rule; returns wall-clock seconds."""
    start = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "meta_safe.meta_trainer",
        f"meta_optimizer={rule}",
        f"run_dir={out / rule}",
        "runtime.progress=false",
        *overrides,
    ]
    print("$ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    (out / rule / "wall_clock.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def table(out: Path, rules: list[str]) -> str:
    lines = [
        "| meta-optimizer | return before | return after K | cost before | cost after K "
        "| within limit after K | wall-clock (train + eval) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rule in rules:
        report = json.loads((out / rule / "evaluation.json").read_text())
        s = report["summary"]
        wall = out / rule / "wall_clock.txt"
        seconds = float(wall.read_text()) if wall.exists() else float("nan")
        lines.append(
            f"| {rule} | {s['mean_return'][0]:.2f} ± {s['stderr_return'][0]:.2f} "
            f"| {s['mean_return'][-1]:.2f} ± {s['stderr_return'][-1]:.2f} "
            f"| {s['mean_cost'][0]:.1f} ± {s['stderr_cost'][0]:.1f} "
            f"| {s['mean_cost'][-1]:.1f} ± {s['stderr_cost'][-1]:.1f} "
            f"| {100 * s['within_limit'][-1]:.0f}% | {seconds:.0f} s |"
        )
    k = len(s["mean_return"]) - 1
    tasks = len(report["tasks"])
    lines.append("")
    lines.append(
        f"K = {k} inner steps on {tasks} held-out tasks, cost limit "
        f"{report['cost_limit']:g}; mean ± standard error over tasks."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", default="cpo_layer,lagrangian,pid,lstm,trpo")
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--aggregate-only", action="store_true")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every run")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rules = args.rules.split(",")
    if not args.aggregate_only:
        for rule in rules:
            run_one(rule, out, args.overrides)
    text = table(out, rules)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
