"""The exact meta-gradients of one meta-iteration equal a recorded reference.

Anything that makes the meta-gradient cheaper (another CG backward, batched backward
passes, a fused rollout) must leave what it computes unchanged: this test fixes the
reward and cost meta-gradients ``g`` and ``b`` that the outer CPO step receives, for
one tiny meta-iteration of each constrained inner rule, to within 1e-6 relative.

The tasks' envs are scripted (:class:`ScriptedEnv`): observations and costs come from
a seeded numpy stream whatever the actions, and the reward is a smooth function of
the action, so the meta-gradient is a smooth function of its inputs (computed in
float64). On a simulator it is not: the batches collected after an inner step move
with the last bit of the parameters, so a recorded simulator reference would not
survive a change of CPU kernels (design document, *Reproducibility*).

When the computation changes on purpose, rewrite the reference with
``.venv/bin/python tests/test_meta_gradient_reference.py`` and say why in the commit;
``... --sensitivity`` prints how far ``g`` moves under small perturbations.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import meta_safe.maml as maml
from meta_safe.maml import init_meta, meta_step
from stochastic_circle import torch_backend
from stochastic_circle.torch_backend import PointDynamics

sys.path.insert(0, str(Path(__file__).parent))
from tiny import tiny_cfg  # noqa: E402

REFERENCE = Path(__file__).parent / "data" / "meta_gradient_reference.json"
RULES = {
    "cpo_layer": ("meta_optimizer=cpo_layer",),
    "cpo_closed_form": ("meta_optimizer=cpo_layer", "meta_optimizer.solver=closed_form"),
    "lagrangian": ("meta_optimizer=lagrangian",),
}
OBS_DIM, EPISODE = 28, 40


class ScriptedEnv:
    """``[T, E]`` envs whose observations (normal) and costs (1 with probability 0.3)
    are drawn from ``numpy.random.default_rng(seed)`` step by step, whatever the
    actions; reward ``sin(step + t) + 0.5 tanh(a_0) - 0.1 a_1^2``. Episodes of 40 steps."""

    def __init__(self, tasks, num_envs: int, seed: int, **_: object) -> None:
        self.num_tasks, self.num_envs = len(tasks), num_envs
        self.seed, self.final_obs = seed, torch.zeros(len(tasks), num_envs, OBS_DIM)

    @property
    def obs_dim(self) -> int:
        return OBS_DIM

    @property
    def action_dim(self) -> int:
        return 2

    def _obs(self) -> Tensor:
        return torch.from_numpy(self.rng.normal(size=(self.num_tasks, self.num_envs, OBS_DIM)))

    def reset(self, seed: int | None = None) -> Tensor:
        self.rng = np.random.default_rng(self.seed if seed is None else seed)
        self.clock = 0
        return self._obs()

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        self.clock += 1
        shape = (self.num_tasks, self.num_envs)
        offset = torch.arange(self.num_tasks, dtype=torch.float64)[:, None]
        reward = (
            (self.clock + offset).sin() + 0.5 * action[..., 0].tanh() - 0.1 * action[..., 1] ** 2
        )
        cost = torch.from_numpy((self.rng.random(shape) < 0.3).astype(np.float64))
        truncated = torch.full(shape, self.clock % EPISODE == 0)
        obs = self._obs()
        self.final_obs = obs
        if bool(truncated.all()):
            obs = self._obs()  # the next episode's first observation
        return obs, reward, cost, torch.zeros(shape, dtype=torch.bool), truncated


def meta_gradients(
    rule: str,
    monkeypatch: pytest.MonkeyPatch,
    perturbation: float = 0.0,
    simulator: bool = False,
    extra: tuple[str, ...] = (),
) -> dict:
    """``g`` and ``b`` (flat, ``[num_params]``, as lists) of the first meta-iteration of
    ``rule``, and their dtype. ``perturbation`` multiplies every meta-parameter by
    ``1 + perturbation z`` (``z`` standard normal, seeded); ``simulator`` collects on the
    contracting Point model in float64 instead of the scripted env (start box 1.0, so
    costs occur); ``extra`` are more overrides."""
    placement: tuple[str, ...] = ()
    if simulator:
        original_env = torch_backend.BatchedCircleEnv
        smooth = PointDynamics(turn_gain=1.0)

        def smooth_env(*args, **kwargs):
            return original_env(*args, model=smooth, dtype=torch.float64, **kwargs)

        monkeypatch.setattr(torch_backend, "BatchedCircleEnv", smooth_env)
        placement = ("env.placement=1.0",)
    else:
        monkeypatch.setattr(
            maml, "make_batched_env", lambda cfg, tasks, n, seed, **kw: ScriptedEnv(tasks, n, seed)
        )
    seen: dict = {}
    original_step = maml.outer_step

    def recording_step(policy, meta_params, pre_data, g, b, *rest, **kwargs):
        seen["dtype"] = str(g.dtype)
        seen["g"] = g.detach().double().tolist()
        seen["b"] = b.detach().double().tolist()
        return original_step(policy, meta_params, pre_data, g, b, *rest, **kwargs)

    monkeypatch.setattr(maml, "outer_step", recording_step)
    overrides = ("seed=3", "meta.inner_steps=2", f"env.episode_steps={EPISODE}", *placement)
    setup, state = init_meta(tiny_cfg(*overrides, *RULES[rule], *extra))
    generator = torch.Generator().manual_seed(5)
    state.meta_params = {
        k: v.double() * (1 + perturbation * torch.randn(v.shape, generator=generator).double())
        for k, v in state.meta_params.items()
    }
    meta_step(setup, state)
    return seen


def relative_error(value: list[float], reference: list[float]) -> float:
    a, b = torch.tensor(value, dtype=torch.float64), torch.tensor(reference, dtype=torch.float64)
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("rule", sorted(RULES))
def test_meta_gradients_equal_the_reference(rule: str, monkeypatch) -> None:
    reference = json.loads(REFERENCE.read_text())[rule]
    computed = meta_gradients(rule, monkeypatch)
    assert computed["dtype"] == reference["dtype"] == "torch.float64"
    for name in ("g", "b"):
        assert len(computed[name]) == len(reference[name])
        error = relative_error(computed[name], reference[name])
        assert error <= 1e-6, f"{rule}: {name} differs from the reference by {error:.2e} relative"


def _script_mode() -> None:
    """What ``conftest.py``'s fixtures set, for running this file as a script."""
    torch.set_num_threads(1)
    from meta_safe.rl import fused_rollout

    fused_rollout.fused_rollout.enabled = False


def write_reference() -> None:
    """Record the reference."""
    _script_mode()
    out = {}
    for rule in sorted(RULES):
        torch.manual_seed(0)
        with pytest.MonkeyPatch.context() as patch:
            out[rule] = meta_gradients(rule, patch)
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {REFERENCE}")


def sensitivity(rule: str = "cpo_closed_form") -> None:
    """Print how far ``g`` moves under parameter perturbations and setting changes, on
    the scripted env and on the simulator: why the reference uses the scripted env, and
    that the tolerance still sees a real change."""
    _script_mode()
    cases = [
        ("scripted", 1e-15, False, ()),
        ("scripted", 1e-12, False, ()),
        ("scripted", 1e-9, False, ()),
        ("simulator (contracting Point model, float64)", 1e-15, True, ()),
        ("scripted, meta_optimizer.cg_iters=9", 0.0, False, ("meta_optimizer.cg_iters=9",)),
        ("scripted, meta_optimizer.damping=0.11", 0.0, False, ("meta_optimizer.damping=0.11",)),
    ]
    bases: dict[bool, list[float]] = {}
    print(f"rule {rule}: relative change of g against the unperturbed run on the same env\n")
    print("| env and setting | perturbation | change of g |\n|---|---:|---:|")
    for label, perturbation, simulator, extra in cases:
        if simulator not in bases:
            torch.manual_seed(0)
            with pytest.MonkeyPatch.context() as patch:
                bases[simulator] = meta_gradients(rule, patch, simulator=simulator)["g"]
        torch.manual_seed(0)
        with pytest.MonkeyPatch.context() as patch:
            g = meta_gradients(rule, patch, perturbation, simulator, extra)["g"]
        print(f"| {label} | {perturbation:.0e} | {relative_error(g, bases[simulator]):.1e} |")


if __name__ == "__main__":
    if sys.argv[1:] == ["--sensitivity"]:
        sensitivity()
    else:
        write_reference()
