"""Sample efficiency of Dyna: real env steps per adaptation update for the same result.

Meta-trains ``dyna=none``, ``dyna=ensemble`` and ``dyna=known`` on the same seeds
(``run_variants.py``), then evaluates on the same held-out tasks:

* ``none`` adapts with ``E`` real envs per task per update for E in ``--real-envs``
  (E x 500 real steps per update), giving held-out return against real steps;
* ``ensemble`` and ``known`` adapt with ``dyna.real_envs_per_task`` (default 1: 500 real
  steps per update) plus model rollouts.

The table gives, per row, real steps per update, held-out return and cost after K
steps, the share of tasks within the limit, and the real steps of meta-training; the
last lines give how many real steps per update ``none`` needs to match each Dyna row's
return (log-linear interpolation between the measured budgets), and the ratio::

    .venv/bin/python experiments/bench_dyna.py --out runs/dyna --seeds 0,1,2 --jobs 2
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aggregate import mean_se  # noqa: E402
from run_variants import run, train_and_evaluate  # noqa: E402

from meta_safe.cli.errors import ArgumentParser, run_cli

VARIANTS = {"none": ["dyna=none"], "ensemble": ["dyna=ensemble"], "known": ["dyna=known"]}


def evaluate_with_envs(seed_dir: Path, envs: int) -> Path:
    """Evaluate a finished run with ``envs`` real envs per task per update."""
    out = seed_dir / f"envs{envs}"
    report = out / "evaluation_torch.json"
    if not report.exists():
        cmd = [
            sys.executable,
            "-m",
            "meta_safe.evaluate",
            f"checkpoint={seed_dir}",
            f"evaluation.envs_per_task={envs}",
            f"out={out}",
        ]
        out.mkdir(parents=True, exist_ok=True)
        print("$ " + " ".join(cmd[1:]), flush=True)
        run(cmd, out / "evaluate.log")
    return report


def training_real_steps(seed_dir: Path) -> float:
    """Real env steps of meta-training (sum of the metrics' ``env_steps``)."""
    with (seed_dir / "metrics.csv").open() as handle:
        return sum(float(row["env_steps"]) for row in csv.DictReader(handle))


def wall_clock(seed_dirs: list[Path]) -> float:
    """Mean wall-clock of meta-training + evaluation per run (``wall_clock.txt``)."""
    values = [float((d / "wall_clock.txt").read_text()) for d in seed_dirs]
    return sum(values) / len(values)


def row(reports: list[dict], train_steps: list[float]) -> dict[str, float]:
    """Across-seed means of the per-seed task means after K steps."""
    ret = mean_se([r["summary"]["mean_return"][-1] for r in reports])
    gain = mean_se(
        [r["summary"]["mean_return"][-1] - r["summary"]["mean_return"][0] for r in reports]
    )
    cost = mean_se([r["summary"]["mean_cost"][-1] for r in reports])
    within = mean_se([r["summary"]["within_limit"][-1] for r in reports])
    return {
        "real_steps": reports[0]["env_steps_per_step"],
        "return": ret[0],
        "return_se": ret[1],
        "gain": gain[0],
        "gain_se": gain[1],
        "cost": cost[0],
        "cost_se": cost[1],
        "within": within[0],
        "train_steps": sum(train_steps) / len(train_steps),
        "limit": reports[0]["cost_limit"],
    }


def steps_to_match(curve: list[dict[str, float]], target: float) -> float:
    """Real steps at which ``none``'s return reaches ``target`` (log-linear interpolation)."""
    points = sorted((c["real_steps"], c["return"]) for c in curve)
    if target <= points[0][1]:
        return points[0][0]
    for (s0, r0), (s1, r1) in zip(points, points[1:], strict=False):
        if r0 < target <= r1:
            frac = (target - r0) / (r1 - r0)
            return math.exp(math.log(s0) + frac * (math.log(s1) - math.log(s0)))
    return math.inf  # not reached within the measured budgets


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/dyna")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--real-envs", default="1,2,4,8", help="budgets evaluated for none")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for every run")
    args = parser.parse_args()
    start = time.perf_counter()
    out = Path(args.out).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [int(e) for e in args.real_envs.split(",")]
    jobs = [
        (out / name / f"seed{seed}", [*args.overrides, *overrides], seed, [])
        for name, overrides in VARIANTS.items()
        for seed in seeds
    ]
    evals = [(out / "none" / f"seed{seed}", envs) for seed in seeds for envs in budgets]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for message in pool.map(lambda job: train_and_evaluate(*job), jobs):
            print(message, flush=True)
        reports = list(pool.map(lambda e: evaluate_with_envs(*e), evals))
    del reports

    rows: dict[str, dict[str, float]] = {}
    curve = []
    for envs in budgets:
        dirs = [out / "none" / f"seed{seed}" for seed in seeds]
        loaded = [
            json.loads((d / f"envs{envs}" / "evaluation_torch.json").read_text()) for d in dirs
        ]
        rows[f"none, {envs} env"] = row(loaded, [training_real_steps(d) for d in dirs])
        rows[f"none, {envs} env"]["wall_clock"] = wall_clock(dirs)
        curve.append(rows[f"none, {envs} env"])
    for name in ("ensemble", "known"):
        dirs = [out / name / f"seed{seed}" for seed in seeds]
        loaded = [json.loads((d / "evaluation.json").read_text()) for d in dirs]
        rows[f"{name}, 1 env + model"] = row(loaded, [training_real_steps(d) for d in dirs])
        rows[f"{name}, 1 env + model"]["wall_clock"] = wall_clock(dirs)

    lines = [
        "| variant | real steps per update per task | return after K | gain from adaptation "
        "| cost after K | within limit | real steps of meta-training | train + eval per run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['real_steps']:,} | {r['return']:.2f} ± {r['return_se']:.2f} "
            f"| {r['gain']:+.2f} ± {r['gain_se']:.2f} "
            f"| {r['cost']:.1f} ± {r['cost_se']:.1f} | {100 * r['within']:.0f}% "
            f"| {r['train_steps']:,.0f} | {r['wall_clock']:.0f} s |"
        )
    lines.append("")
    for name in ("ensemble", "known"):
        r = rows[f"{name}, 1 env + model"]
        needed = steps_to_match(curve, r["return"])
        most = max(c["real_steps"] for c in curve)
        if math.isinf(needed):
            verdict = (
                f"dyna=none does not reach that return with up to {most:,} real steps per "
                f"update (more than {most / r['real_steps']:.0f}x)"
            )
        else:
            verdict = (
                f"dyna=none needs {needed:,.0f} for that return ({needed / r['real_steps']:.1f}x)"
            )
        lines.append(
            f"- dyna={name}: return {r['return']:.2f} with {r['real_steps']:,} real steps per "
            f"update; {verdict}."
        )
    lines.append("\nGain from adaptation: return after K steps minus return before adapting.")
    lines.append(
        f"\nSeeds {args.seeds}; mean ± standard error across seeds of the per-seed mean over "
        f"held-out tasks. This invocation took {time.perf_counter() - start:.0f} s "
        "(finished runs and evaluations are reused)."
    )
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    (out / "summary.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    run_cli(main)
