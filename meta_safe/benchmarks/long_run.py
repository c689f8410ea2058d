"""Does a long run stay flat? Time per iteration and memory over a 300-iteration run.

Runs the ordinary training loop (:func:`meta_safe.trainer.train`: metrics log,
TensorBoard, an atomic checkpoint every iteration) on the torch backend with a small
batch, and records after every iteration its wall-clock (compute, logging and the
checkpoint write) and the process's resident memory. Prints the first, middle and last
50 iterations side by side, their ratios, and the least-squares slopes per 100
iterations. A loop that rewrote its metrics file or kept per-iteration state would show
a rising time or memory slope here.

    meta-safe bench long-run                 # 300 iterations, ~2 min
    meta-safe bench long-run --iterations 60 # a quick look
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.config import compose_config
from meta_safe.device import describe_device
from meta_safe.errors import ConfigError
from meta_safe.trainer import METRICS_FILE, MetaTrainer, train

PROG = "meta-safe bench long-run"

SMALL_BATCH = [
    "meta.tasks_per_iteration=2",
    "meta.envs_per_task=2",
    "meta.steps_per_env=100",
    "env.episode_steps=100",
    "meta.inner_steps=1",
    "evaluate_after=false",
    "runtime.progress=false",
]
WINDOW = 50


def resident_mb() -> float:
    """Current resident set size of this process in MB (Linux ``/proc``; else the peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def slope_per_100(values: list[float]) -> float:
    """Least-squares slope of ``values`` against their index, per 100 iterations."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, statistics.fmean(values)
    cov = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    var = sum((i - mean_x) ** 2 for i in range(n))
    return 100 * cov / var


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. meta_optimizer=pid")
    args = parser.parse_args(argv)
    if args.iterations < 3 * WINDOW // 5:
        raise ConfigError(
            f"--iterations={args.iterations} is invalid: must be >= {3 * WINDOW // 5}"
        )
    cfg = compose_config([*SMALL_BATCH, f"meta.iterations={args.iterations}", *args.overrides])
    torch.set_num_threads(cfg.runtime.torch_threads)
    seconds: list[float] = []
    memory: list[float] = []
    last = [time.perf_counter()]

    def record(trainer: MetaTrainer, row: dict[str, float]) -> None:
        now = time.perf_counter()
        seconds.append(now - last[0])
        memory.append(resident_mb())
        last[0] = now

    with tempfile.TemporaryDirectory(prefix="bench_long_run_") as run_dir:
        start = time.perf_counter()
        train(cfg, run_dir, on_iteration=record)
        total = time.perf_counter() - start
        metrics_kb = (Path(run_dir) / METRICS_FILE).stat().st_size / 1024
    n = len(seconds)
    window = min(WINDOW, n // 3)
    spans = {
        "first": slice(0, window),
        "middle": slice(n // 2 - window // 2, n // 2 - window // 2 + window),
        "last": slice(n - window, n),
    }
    print(
        f"{cfg.meta_optimizer.name}, torch backend, {n} iterations of "
        f"{cfg.meta.tasks_per_iteration} tasks x {cfg.meta.envs_per_task} envs x "
        f"{cfg.meta.steps_per_env} steps, a checkpoint every iteration, on "
        f"{describe_device(cfg.runtime.device)}; {total:.0f} s in all, "
        f"metrics.csv {metrics_kb:.0f} KB\n"
    )
    print("| iterations | median s per iteration | resident memory, MB |")
    print("|---|---:|---:|")
    medians = {}
    for name, span in spans.items():
        medians[name] = statistics.median(seconds[span])
        rss = statistics.fmean(memory[span])
        print(
            f"| {name} {window} ({span.start + 1}-{span.stop}) | {medians[name]:.4f} | {rss:.1f} |"
        )
    first_mb, last_mb = (statistics.fmean(memory[spans[k]]) for k in ("first", "last"))
    print(
        f"\nlast / first: time {medians['last'] / medians['first']:.3f}x, "
        f"memory {last_mb / first_mb:.3f}x"
    )
    steady = slice(min(10, n // 10), n)  # past the first iterations' warm-up
    print(
        f"slope per 100 iterations (from iteration {steady.start + 1}): "
        f"time {1000 * slope_per_100(seconds[steady]):+.2f} ms, "
        f"memory {slope_per_100(memory[steady]):+.2f} MB"
    )
    return 0


if __name__ == "__main__":
    run_cli(main)
