"""The Python API: train a run, load one, act, adapt, evaluate and roll out.

    import meta_safe

    run = meta_safe.train(["meta_optimizer=pid", "meta.iterations=5"], run_dir="runs/pid")
    run = meta_safe.load("runs/pid")                     # later, or elsewhere
    task = meta_safe.CircleTask(radius=2.2, wall_distance=1.3)
    adapted = run.adapt(task, inner_steps=3)             # adapted.params, adapted.report
    episode = run.rollout(task, adapted.params)          # episode.positions [N, 2]
    report = run.evaluate()                              # evaluation.split, as configured

Everything goes through the same code as the commands: :func:`train` is the training
loop (run directory, checkpoints, resume), :meth:`Run.evaluate` the evaluation command.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from meta_safe.checkpoint import load as load_checkpoint
from meta_safe.config import compose_config, validate
from meta_safe.errors import ConfigError
from meta_safe.evaluation import AdaptationReport, evaluate_meta_state, evaluation_tasks
from meta_safe.maml import MetaSetup, MetaState
from meta_safe.rl.policy import Params
from meta_safe.trainer import MetaTrainer
from meta_safe.trainer import train as train_loop
from meta_safe.trajectories import Episode, rollout_episodes, write_video
from stochastic_circle.tasks import CircleTask

TaskLike = CircleTask | Sequence[float]
"""A :class:`CircleTask`, or ``[radius, wall_distance]`` (robot and walls from the run)."""


@dataclass
class Adaptation:
    """The result of :meth:`Run.adapt`: the adapted parameters (one task's, unstacked)
    and the report of every step (return, cost, within limit, before and after each)."""

    params: Params
    report: AdaptationReport


class Run:
    """A meta-trained run: its validated config, setup and learned state.

    :ivar cfg: the configuration. :ivar setup: the policy and what does not change.
    :ivar state: the learned state (meta-parameters, normaliser, rule, model).
    :ivar run_dir: where its checkpoint lives.

    Its tensors live on ``cfg.runtime.device``; so do the tensors its methods return,
    except :class:`Episode`'s (on the CPU).
    """

    def __init__(self, cfg: DictConfig, setup: MetaSetup, state: MetaState, run_dir: Path) -> None:
        self.cfg, self.setup, self.state, self.run_dir = cfg, setup, state, Path(run_dir)

    @property
    def iteration(self) -> int:
        """Meta-iterations trained."""
        return self.state.iteration

    @property
    def meta_params(self) -> Params:
        """The meta-policy's parameters (the policy before any adaptation)."""
        return {k: v.detach() for k, v in self.state.meta_params.items()}

    def act(self, obs: Tensor, params: Params | None = None, deterministic: bool = True) -> Tensor:
        """Actions for raw observations ``obs [..., obs_dim]`` -> ``[..., act_dim]``, on
        the run's device.

        :param params: the policy (default: the meta-policy; e.g. ``adapt(...).params``).
        :param deterministic: the mean action, else a sample of the Gaussian policy.
        """
        params = self.meta_params if params is None else params
        log_std = params["log_std"]
        obs = torch.as_tensor(obs, dtype=log_std.dtype, device=log_std.device)
        with torch.no_grad():
            mean, std = self.setup.policy.distribution(params, self.state.normalizer(obs))
            return mean if deterministic else mean + std * torch.randn_like(mean)

    def tasks(self, tasks: Sequence[TaskLike] | None = None) -> list[CircleTask]:
        """``tasks`` as :class:`CircleTask` (checked), or ``evaluation.split``'s sample."""
        if tasks is None:
            return evaluation_tasks(self.cfg)
        return [
            task if isinstance(task, CircleTask) else evaluation_tasks(self.cfg, [list(task)])[0]
            for task in tasks
        ]

    def evaluate(
        self, tasks: Sequence[TaskLike] | None = None, overrides: Sequence[str] = ()
    ) -> AdaptationReport:
        """Adapt on ``tasks`` (default: ``evaluation.split``'s) and measure every step.

        :param overrides: ``evaluation.*`` (or ``env.backend=...``) settings, e.g.
            ``["evaluation.inner_steps=5", "evaluation.policy=mean"]``.
        """
        cfg = self._with(overrides)
        chosen = self.tasks(tasks) if tasks is not None else evaluation_tasks(cfg)
        pairs = [[t.radius, t.wall_distance] for t in chosen]
        return evaluate_meta_state(self.setup, self.state, cfg, pairs)

    def adapt(
        self, task: TaskLike, inner_steps: int | None = None, overrides: Sequence[str] = ()
    ) -> Adaptation:
        """Adapt to one task for ``inner_steps`` (default: ``evaluation.inner_steps``)."""
        extra = [] if inner_steps is None else [f"evaluation.inner_steps={inner_steps}"]
        report = self.evaluate([task], [*overrides, *extra])
        params = {k: v[0] for k, v in report.policies[-1].items()}
        return Adaptation(params, report)

    def rollout(
        self,
        task: TaskLike,
        params: Params | None = None,
        deterministic: bool = True,
        seed: int = 0,
        render_every: int = 0,
        backend: str | None = None,
    ) -> Episode:
        """One episode of ``task``: positions, rewards, costs (and frames on MuJoCo).

        :param params: the policy (default: the meta-policy).
        :param render_every: keep a frame every ``k`` steps (``backend="mujoco"`` only).
        :param backend: ``torch`` or ``mujoco`` (default: the run's).
        """
        params = self.meta_params if params is None else params
        cfg = self._with([f"env.backend={backend}"] if backend else [])
        (chosen,) = self.tasks([task])
        stacked = {k: v.unsqueeze(0) for k, v in params.items()}
        with self.state.normalizer.frozen_statistics():
            (episode,) = rollout_episodes(
                cfg.env, [chosen], self.setup.policy, stacked, self.state.normalizer, seed,
                deterministic, render_every,
            )  # fmt: skip
        return episode

    @staticmethod
    def save_video(episode: Episode, path: str | Path, fps: int = 25) -> Path:
        """Write an episode's rendered frames (``rollout(..., render_every=k)``)."""
        return write_video(episode.frames or [], Path(path), fps)

    def _with(self, overrides: Sequence[str]) -> DictConfig:
        """The run's config with evaluation-time ``overrides`` (validated)."""
        allowed = (
            "evaluation.", "env.backend=", "env.cost_limit=", "runtime.torch_threads=",
            "runtime.progress=",
        )  # fmt: skip
        bad = [o for o in overrides if not o.startswith(allowed)]
        if bad:
            raise ConfigError(
                f"{bad[0]!r} cannot be set at evaluation: valid keys start with {allowed}"
            )
        return validate(OmegaConf.merge(self.cfg, OmegaConf.from_dotlist(list(overrides))))


def train(
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    cfg: DictConfig | None = None,
    on_iteration: Callable[[MetaTrainer, dict[str, float]], None] | None = None,
) -> Run:
    """Meta-train (or, with ``resume=true``, continue) and return the :class:`Run`.

    :param overrides: the command line's ``key=value`` overrides.
    :param run_dir: default: ``run_dir`` of the config, else ``runs/<date>_<time>_<rule>``.
    :param cfg: a composed config instead of ``overrides``.
    """
    from meta_safe.cli.train import default_run_dir

    cfg = cfg if cfg is not None else compose_config(list(overrides))
    directory = Path(run_dir or cfg.run_dir or default_run_dir(cfg))
    trainer = train_loop(cfg, directory, on_iteration)
    return Run(trainer.cfg, trainer.setup, trainer.state, directory)


def load(run_dir: str | Path, device: str | None = None) -> Run:
    """The run in ``run_dir`` (or a checkpoint file) from its checkpoint.

    :param device: ``cpu``, ``cuda`` or ``cuda:N`` to work on (default: the run's
        ``runtime.device``); a checkpoint written on one device loads on any other.
    """
    checkpoint = load_checkpoint(run_dir)
    cfg = OmegaConf.create(checkpoint["config"])
    if device is not None:
        cfg.runtime.device = device
    cfg = validate(cfg)
    path = Path(run_dir)
    directory = path if path.is_dir() else path.parent
    trainer = MetaTrainer(cfg, directory)
    trainer.load_state_dict(checkpoint)
    return Run(trainer.cfg, trainer.setup, trainer.state, directory)


__all__ = ["Adaptation", "Run", "TaskLike", "load", "train"]
