"""Env throughput of the circle-task backends, resets included, side by side in one run.

Every row plays whole 500-step episodes with random actions and counts
``envs x episodes x 500`` env steps over the wall time of resets plus steps, so
stock Safety-Gymnasium's model rebuild in ``reset`` is charged where it happens.
Rows: stock ``SafetyPointCircle1-v0``; the physics alone (``mj_step`` + ``mj_forward``
per env step on our env's compiled model, no resets: the limit any env on it can
reach); our MuJoCo backend (1 env, SyncVectorEnv, AsyncVectorEnv, the batched env on 1
and 2 stepping threads); the torch batched backend at 1, 64, 4096 and 16384 envs. A
second table sets the batched MuJoCo env at the meta-training batch (3 tasks x 8 envs,
Point and Car, 1 and 2 threads) against the physics alone on the same models and threads.

    meta-safe bench envs            # 4 episodes per env
    meta-safe bench envs --quick    # 1 episode per env, smaller batches
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from meta_safe.cli.errors import ArgumentParser, run_cli
from meta_safe.device import check_device, describe_device
from stochastic_circle.mujoco_backend import EPISODE_LENGTH, MujocoCircleEnv, make_vector_env
from stochastic_circle.tasks import CircleTask

PROG = "meta-safe bench envs"

#: The stock Circle1 task, so every backend simulates the same thing.
TASK = CircleTask(robot="point", radius=1.5, wall_distance=1.125)


@dataclass(frozen=True)
class Result:
    """One row of the table: ``env_steps`` steps of ``num_envs`` envs took ``seconds``."""

    backend: str
    num_envs: int
    episodes: int
    env_steps: int
    seconds: float

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.seconds


def timed(run: Callable[[], int]) -> tuple[int, float]:
    """Run ``run`` (which returns the env steps it made) and time it."""
    start = time.perf_counter()
    steps = run()
    return steps, time.perf_counter() - start


def timed_episodes(env: Any, episodes: int, seed: int) -> tuple[int, float]:
    """Time ``episodes`` full episodes (reset included) of one env on fixed random actions."""
    acts = np.random.default_rng(seed).uniform(-1, 1, (EPISODE_LENGTH, 2))

    def run() -> int:
        for _ in range(episodes):
            env.reset()
            for action in acts:
                env.step(action)
        return episodes * EPISODE_LENGTH

    return timed(run)


def bench_stock(episodes: int, seed: int) -> Result:
    """Stock Safety-Gymnasium: every reset rebuilds and recompiles the MuJoCo model."""
    from stochastic_circle.compat import import_safety_gymnasium

    env = import_safety_gymnasium().make("SafetyPointCircle1-v0")
    env.reset(seed=seed)  # first build is construction cost, not per-episode cost
    steps, seconds = timed_episodes(env, episodes, seed)
    env.close()
    return Result("stock SafetyPointCircle1-v0", 1, episodes, steps, seconds)


def bench_mujoco_single(episodes: int, seed: int) -> Result:
    """Our MuJoCo env, one instance, reset every 500 steps."""
    env = MujocoCircleEnv(TASK, seed=seed)
    steps, seconds = timed_episodes(env, episodes, seed)
    return Result("ours MuJoCo, 1 env", 1, episodes, steps, seconds)


def bench_mujoco_vector(episodes: int, num_envs: int, asynchronous: bool, seed: int) -> Result:
    """Our MuJoCo env in a gymnasium vector env (auto-resets at episode ends)."""
    envs = make_vector_env([TASK] * num_envs, seed=seed, asynchronous=asynchronous)
    acts = np.random.default_rng(seed).uniform(-1, 1, (EPISODE_LENGTH, num_envs, 2))

    def run() -> int:
        envs.reset(seed=seed)
        for _ in range(episodes):
            for action in acts:
                envs.step(action)
        return episodes * EPISODE_LENGTH * num_envs

    steps, seconds = timed(run)
    envs.close()
    kind = "AsyncVectorEnv" if asynchronous else "SyncVectorEnv"
    return Result(f"ours MuJoCo, {kind}", num_envs, episodes, steps, seconds)


def bench_resets(resets: int, seed: int) -> str:
    """Median seconds per ``reset()`` of our MuJoCo env with ``render_mode=None`` and
    ``"rgb_array"``, measured alternately in one process, plus the first (renderer
    construction) and later ``render()`` calls; a markdown table."""
    import statistics

    envs = {
        mode: MujocoCircleEnv(TASK, seed=seed, render_mode=mode) for mode in (None, "rgb_array")
    }
    times: dict[str | None, list[float]] = {mode: [] for mode in envs}
    for i in range(resets):
        for mode, env in envs.items():
            start = time.perf_counter()
            env.reset(seed=seed + i)
            times[mode].append(time.perf_counter() - start)
    renders = []
    for _ in range(4):
        start = time.perf_counter()
        frame = envs["rgb_array"].render()
        renders.append(time.perf_counter() - start)
    for env in envs.values():
        env.close()
    plain, rendering = (statistics.median(times[m]) for m in envs)
    return "\n".join(
        [
            f"MuJoCo reset with and without rendering ({resets} resets each, alternated; "
            f"frames {frame.shape[1]}x{frame.shape[0]})",
            "",
            "| render_mode | median reset (ms) | x render_mode=None |",
            "|---|---:|---:|",
            f"| None | {1e3 * plain:.3f} | 1.00 |",
            f"| rgb_array | {1e3 * rendering:.3f} | {rendering / plain:.2f} |",
            "",
            f"first render() (builds the renderer): {1e3 * renders[0]:.0f} ms; later "
            f"render(): {1e3 * statistics.median(renders[1:]):.1f} ms",
        ]
    )


def bench_raw_physics(episodes: int, seed: int) -> Result:
    """What one env step costs in MuJoCo alone on our env's compiled model: the same
    ``mj_step(nstep=...)`` and ``mj_forward`` as :meth:`MujocoCircleEnv.step_with_cost`,
    without observation, reward, cost or resets."""
    from stochastic_circle.mujoco_backend import advance_physics

    env = MujocoCircleEnv(TASK, seed=seed)
    env.reset(seed=seed)
    model, data = env.model, env.data
    acts = np.random.default_rng(seed).uniform(-1, 1, (EPISODE_LENGTH, 2))

    def run() -> int:
        for _ in range(episodes):
            for action in acts:
                data.ctrl[:] = action
                advance_physics(model, data)
        return episodes * EPISODE_LENGTH

    steps, seconds = timed(run)
    return Result("physics only (mj_step + mj_forward)", 1, episodes, steps, seconds)


def bench_mujoco_batched(episodes: int, num_envs: int, threads: int, seed: int) -> Result:
    """The batched MuJoCo env of meta-training (torch tensors in and out), ``threads``
    stepping threads."""
    import torch

    from stochastic_circle.mujoco_batched import MujocoBatchedEnv

    env = MujocoBatchedEnv([TASK], num_envs, seed=seed, step_threads=threads)
    generator = torch.Generator().manual_seed(seed)

    def run() -> int:
        env.reset(seed=seed)
        for _ in range(episodes * EPISODE_LENGTH):
            env.step(torch.rand(1, num_envs, 2, generator=generator) * 2 - 1)
        return episodes * EPISODE_LENGTH * num_envs

    steps, seconds = timed(run)
    env.close()
    label = f"ours MuJoCo batched, {threads} thread{'s' if threads > 1 else ''}"
    return Result(label, num_envs, episodes, steps, seconds)


#: The meta-training batch of the reference configuration: 3 tasks x 8 envs.
BATCH_TASKS, BATCH_ENVS = 3, 8


@dataclass(frozen=True)
class ShareRow:
    """The batched MuJoCo env against the physics alone on the same models and threads."""

    robot: str
    threads: int
    physics: Result
    env: Result

    @property
    def share(self) -> float:
        return self.env.steps_per_second / self.physics.steps_per_second


def bench_batched_share(robot: str, threads: int, episodes: int, seed: int) -> ShareRow:
    """The batched env at the meta-training batch, resets and tensor conversion included,
    and the physics alone (controls, ``mj_step(nstep=...)``, ``mj_forward``) on its own
    compiled models with the same threads; fastest of 3 alternated repetitions each."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from stochastic_circle.mujoco_backend import advance_physics
    from stochastic_circle.mujoco_batched import MujocoBatchedEnv

    tasks = [CircleTask(robot=robot, radius=1.5, wall_distance=1.125)] * BATCH_TASKS
    env = MujocoBatchedEnv(tasks, BATCH_ENVS, seed=seed, step_threads=threads)
    count = BATCH_TASKS * BATCH_ENVS
    generator = torch.Generator().manual_seed(seed)
    actions = torch.rand(EPISODE_LENGTH, BATCH_TASKS, BATCH_ENVS, 2, generator=generator) * 2 - 1
    controls = actions.double().numpy().reshape(EPISODE_LENGTH, count, 2)
    models_datas = [(e.model, e.data) for row in env.envs for e in row]
    first, *others = env._blocks  # the env's own split of the envs over its threads
    pool = ThreadPoolExecutor(len(others)) if others else None

    def physics_block(rows: slice, control: np.ndarray) -> None:
        for (model, data), ctrl in zip(models_datas[rows], control[rows], strict=True):
            data.ctrl[:] = ctrl
            advance_physics(model, data)

    def physics() -> int:
        for _ in range(episodes):
            for control in controls:
                parts = [pool.submit(physics_block, rows, control) for rows in others]
                physics_block(first, control)
                for part in parts:
                    part.result()
        return episodes * EPISODE_LENGTH * count

    def stepping() -> int:
        env.reset(seed=seed)
        for _ in range(episodes):
            for action in actions:
                env.step(action)
        return episodes * EPISODE_LENGTH * count

    env.reset(seed=seed)
    runs: dict[str, list[float]] = {"physics": [], "env": []}
    for _ in range(3):
        runs["physics"].append(timed(physics)[1])
        runs["env"].append(timed(stepping)[1])
    env.close()
    if pool is not None:
        pool.shutdown()
    steps = episodes * EPISODE_LENGTH * count
    label = f"{threads} thread{'s' if threads > 1 else ''}"
    return ShareRow(
        robot,
        threads,
        Result(f"physics only, {label}", count, episodes, steps, min(runs["physics"])),
        Result(f"ours MuJoCo batched, {label}", count, episodes, steps, min(runs["env"])),
    )


def share_table(rows: list[ShareRow]) -> str:
    """The :func:`bench_batched_share` rows as a markdown table."""
    lines = [
        f"Batched MuJoCo env at the meta-training batch ({BATCH_TASKS} tasks x {BATCH_ENVS} "
        "envs) against the physics alone on the same models and threads (fastest of 3 "
        "alternated repetitions each)",
        "",
        "| robot | threads | physics only (steps/s) | batched env (steps/s) | share |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.robot} | {r.threads} | {r.physics.steps_per_second:,.0f} | "
            f"{r.env.steps_per_second:,.0f} | {r.share:.0%} |"
        )
    return "\n".join(lines)


def bench_torch(episodes: int, num_envs: int, seed: int, device: str = "cpu") -> Result | None:
    """The torch batched backend (auto-resets) on ``device``; None when it is not
    installed yet."""
    try:
        import torch

        from stochastic_circle.torch_backend import BatchedCircleEnv
    except ImportError:
        return None
    env = BatchedCircleEnv([TASK], num_envs=num_envs, seed=seed, device=device)
    # The first step compiles the fused step kernel (torch.compile): construction cost,
    # like stock's first model build, so it is kept out of the timing.
    env.reset(seed=seed)
    env.step(torch.zeros(1, num_envs, 2, device=device))
    generator = torch.Generator(device=device).manual_seed(seed)

    def run() -> int:
        env.reset(seed=seed)
        for _ in range(episodes * EPISODE_LENGTH):
            action = torch.rand(1, num_envs, 2, generator=generator, device=device) * 2 - 1
            env.step(action)
        if device != "cpu":
            torch.cuda.synchronize()
        return episodes * EPISODE_LENGTH * num_envs

    steps, seconds = timed(run)
    return Result(f"torch batched ({device})", num_envs, episodes, steps, seconds)


def markdown_table(results: list[Result], stock: Result) -> str:
    """Results as a markdown table with a ratio-to-stock column."""
    lines = [
        "| backend | envs | episodes/env | env steps | seconds | steps/s | x stock |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = r.steps_per_second / stock.steps_per_second
        lines.append(
            f"| {r.backend} | {r.num_envs} | {r.episodes} | {r.env_steps:,} | "
            f"{r.seconds:.2f} | {r.steps_per_second:,.0f} | {ratio:,.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = PROG) -> None:
    parser = ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4, help="full episodes per env")
    parser.add_argument("--quick", action="store_true", help="1 episode, smaller torch batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of actions and start states")
    parser.add_argument("--device", default="cpu", help="device of the torch backend: cpu, cuda")
    parser.add_argument("--resets", type=int, default=200, help="resets per render mode")
    args = parser.parse_args(argv)
    device = check_device(args.device, key="--device")
    episodes = 1 if args.quick else args.episodes
    if episodes < 1:
        parser.error(f"--episodes={episodes} is invalid: must be >= 1")

    stock = bench_stock(episodes, args.seed)
    # the share compares the fastest of 3 alternated repetitions of each
    pairs = [
        (bench_raw_physics(episodes, args.seed), bench_mujoco_single(episodes, args.seed))
        for _ in range(3)
    ]
    physics = min((p for p, _ in pairs), key=lambda r: r.seconds)
    single = min((s for _, s in pairs), key=lambda r: r.seconds)
    results = [
        stock,
        physics,
        single,
        bench_mujoco_vector(episodes, 4, asynchronous=False, seed=args.seed),
        bench_mujoco_vector(episodes, 2, asynchronous=True, seed=args.seed),
        bench_mujoco_batched(episodes, 4, 1, args.seed),
        bench_mujoco_batched(episodes, 4, 2, args.seed),
    ]
    torch_sizes = (1, 64, 512) if args.quick else (1, 64, 4096, 16384)
    torch_results = [bench_torch(episodes, n, args.seed, str(device)) for n in torch_sizes]
    print(f"MuJoCo rows on the CPU; torch rows on {describe_device(device)}\n")
    print(markdown_table(results + [r for r in torch_results if r is not None], stock))
    share = single.steps_per_second / physics.steps_per_second
    print(
        f"\nours MuJoCo, 1 env, resets included: {share:.0%} of the physics-only rate on "
        "the same model (fastest of 3 alternated repetitions each)"
    )
    if any(r is None for r in torch_results):
        print("\ntorch backend: not available")
    shares = [
        bench_batched_share(robot, threads, episodes, args.seed)
        for robot in ("point", "car")
        for threads in (1, 2)
    ]
    print("\n" + share_table(shares))
    print("\n" + bench_resets(20 if args.quick else args.resets, args.seed))


if __name__ == "__main__":
    run_cli(main)
