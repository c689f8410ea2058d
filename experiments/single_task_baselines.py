"""Single-task learning curves of CPO, Lagrangian and TRPO on one circle task.

Uses the hydra configs (``meta_safe/configs/``), so any override works, e.g.::

    .venv/bin/python experiments/single_task_baselines.py --iterations 100 \
        --rules cpo_layer,lagrangian,trpo env.cost_limit=25

Prints (and writes to ``<out>/table.md``) return and cost over the last 10 batches,
the cost over the last 3, the share of updates that left the cost above the limit, the
step check's rejected candidates per update (``meta.step_check_tries``), the final
return and cost, wall-clock and env steps per second of the whole training loop (mean
± standard error over ``--seeds``), and writes the curves to ``--out`` (CSV + PNG).
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import torch

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.config import compose_config
from meta_safe.env_factory import task_distribution
from meta_safe.maml import inner_cost_margin_of, probe_obs_dim, step_check_of
from meta_safe.meta_optimizers import build_meta_optimizer
from meta_safe.rl.policy import GaussianPolicy
from meta_safe.rl.surrogate import AdvantageConfig
from meta_safe.single_task import train_single_task


def last_mean(values: list[float], n: int = 10) -> float:
    return statistics.fmean(values[-n:])


def above_limit(costs: list[float], limit: float) -> float:
    """Share of the batches after an update (all but the first) whose cost exceeds ``limit``."""
    after_updates = costs[1:]
    return sum(c > limit for c in after_updates) / max(1, len(after_updates))


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", default="cpo_layer,lagrangian,trpo")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--envs", type=int, default=8)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--out", default="runs/single_task")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. env.cost_limit=25")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, curves = [], {}
    for name in args.rules.split(","):
        cfg = compose_config([f"meta_optimizer={name}", *args.overrides])
        torch.set_num_threads(cfg.runtime.torch_threads)
        results = []
        for seed in seeds:
            torch.manual_seed(seed)
            task = task_distribution(cfg.env, "fixed").sample(1, seed=seed)[0]
            policy = GaussianPolicy(
                probe_obs_dim(cfg.env),
                2,
                cfg.policy.hidden,
                cfg.policy.activation,
                cfg.policy.log_std_init,
            )
            result = train_single_task(
                cfg.env,
                task,
                build_meta_optimizer(cfg.meta_optimizer),
                policy,
                args.iterations,
                args.envs,
                cfg.env.episode_steps,
                AdvantageConfig(**cfg.advantage),
                seed,
                critic_cfg=cfg.critic,
                step_check=step_check_of(cfg),
                cost_margin=inner_cost_margin_of(cfg),
            )
            results.append(result)
            curves[(name, seed)] = result
            print(f"{name} seed {seed}: done in {result.seconds:.0f} s", flush=True)
        rows.append((name, results))
    limit = cfg.env.cost_limit

    def mean_se(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.1f}"
        se = statistics.stdev(values) / len(values) ** 0.5
        return f"{statistics.fmean(values):.1f} ± {se:.1f}"

    lines = [
        f"Task {task} ({cfg.env.backend} backend), cost limit {limit:g}, "
        f"{args.iterations} updates x {args.envs * cfg.env.episode_steps} steps, seeds {args.seeds}"
        " (mean ± standard error across seeds)",
        "",
        "| rule | return, last 10 batches | cost, last 10 batches | cost, last 3 batches "
        "| updates above the limit | rejected candidates per update | final return | final cost "
        "| wall-clock per run | env steps/s of the whole loop |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, results in rows:
        seconds = statistics.fmean(r.seconds for r in results)
        rate = statistics.fmean(r.env_steps / r.seconds for r in results)
        lines.append(
            f"| {name} | {mean_se([last_mean(r.returns) for r in results])} "
            f"| {mean_se([last_mean(r.costs) for r in results])} "
            f"| {mean_se([last_mean(r.costs, 3) for r in results])} "
            f"| {100 * statistics.fmean(above_limit(r.costs, limit) for r in results):.0f}% "
            f"| {statistics.fmean(statistics.fmean(r.rejected or [0]) for r in results):.2f} "
            f"| {mean_se([r.returns[-1] for r in results])} "
            f"| {mean_se([r.costs[-1] for r in results])} | {seconds:.0f} s | {rate:,.0f} |"
        )
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    print("\n" + text)
    with (out / "curves.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rule", "seed", "iteration", "return", "cost"])
        for (name, seed), res in curves.items():
            for i, (ret, cost) in enumerate(zip(res.returns, res.costs, strict=True)):
                writer.writerow([name, seed, i, ret, cost])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_c) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {}
    for (name, seed), res in curves.items():
        color = colors.setdefault(name, f"C{len(colors)}")
        label = name if seed == seeds[0] else None
        ax_r.plot(res.returns, color=color, alpha=0.8, label=label)
        ax_c.plot(res.costs, color=color, alpha=0.8, label=label)
    ax_c.axhline(limit, ls="--", color="k", label="limit")
    ax_r.set(xlabel="update", ylabel="episode return")
    ax_c.set(xlabel="update", ylabel="episode cost")
    ax_r.legend()
    ax_c.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    print(f"\nwrote {out / 'table.md'}, {out / 'curves.csv'} and {out / 'curves.png'}")


if __name__ == "__main__":
    run_cli(main)
