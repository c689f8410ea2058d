"""The "trained from scratch" row: a policy trained on each held-out task from a random
initialisation, with the same number of updates and real steps as adaptation.

For every held-out task of the evaluation config (same tasks, same seeds as
``meta_safe.cli.evaluate``) it runs K = ``evaluation.inner_steps`` updates of the chosen
rule (default CPO), each on ``evaluation.envs_per_task x evaluation.steps_per_env``
fresh steps, and writes an adaptation report in the format of the meta-trained runs
to ``<out>/seed<k>/evaluation.json``, so ``experiments/aggregate.py`` tabulates it next
to them::

    .venv/bin/python experiments/scratch_baseline.py --out runs/compare/cpo_scratch \
        --seeds 0,1,2 meta_optimizer=cpo_layer
    # the same on unseen tasks from the training ranges, next to run_variants' in_dist
    .venv/bin/python experiments/scratch_baseline.py --out runs/compare/cpo_scratch \
        --seeds 0,1,2 --stem evaluation_in_dist evaluation.split=meta_train
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.config import compose_config
from meta_safe.evaluation import AdaptationReport, evaluation_tasks
from meta_safe.maml import inner_cost_margin_of, probe_obs_dim
from meta_safe.meta_optimizers import build_meta_optimizer
from meta_safe.rl.policy import GaussianPolicy
from meta_safe.rl.surrogate import AdvantageConfig
from meta_safe.single_task import train_single_task


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--stem", default="evaluation", help="report name (evaluation[_<name>])")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. env.cost_limit=25")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = compose_config(args.overrides)
    ev = cfg.evaluation
    tasks = evaluation_tasks(cfg)
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.perf_counter()
        torch.manual_seed(seed)
        policy = GaussianPolicy(
            probe_obs_dim(cfg.env),
            2,
            cfg.policy.hidden,
            cfg.policy.activation,
            cfg.policy.log_std_init,
        )
        returns, costs = [], []
        for index, task in enumerate(tasks):
            result = train_single_task(
                cfg.env,
                task,
                build_meta_optimizer(cfg.meta_optimizer),
                policy,
                ev.inner_steps,
                ev.envs_per_task,
                ev.steps_per_env,
                AdvantageConfig(**cfg.advantage),
                seed=ev.seed + 1000 * seed + index,
                critic_cfg=cfg.critic,
                cost_margin=inner_cost_margin_of(cfg, evaluation=True),
            )
            returns.append(result.returns)
            costs.append(result.costs)
        report = AdaptationReport(
            tasks, returns, costs, cfg.env.cost_limit, ev.envs_per_task * ev.steps_per_env
        )
        seed_dir = Path(args.out) / f"seed{seed}"
        report.write(seed_dir, stem=args.stem)
        seconds = time.perf_counter() - start
        suffix = args.stem.removeprefix("evaluation")
        (seed_dir / f"wall_clock{suffix}.txt").write_text(f"{seconds:.1f}\n")
        print(report.table(f"{cfg.meta_optimizer.name} from scratch, seed {seed}"))
        print(f"seed {seed}: {seconds:.0f} s")


if __name__ == "__main__":
    run_cli(main)
