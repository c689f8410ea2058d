"""The loop-free discounted sum against the step-by-step recursion."""

import pytest
import torch

from meta_safe.rl.discounting import reverse_discounted_sum


def recursion(values: torch.Tensor, continues: torch.Tensor, discount: float) -> torch.Tensor:
    out = torch.zeros_like(values, dtype=torch.float64)
    running = torch.zeros_like(values[..., 0], dtype=torch.float64)
    for t in range(values.shape[-1] - 1, -1, -1):
        running = values[..., t].double() + discount * continues[..., t].double() * running
        out[..., t] = running
    return out


@pytest.mark.parametrize("discount", [0.0, 0.3, 0.5, 0.9603, 0.99, 1.0])
@pytest.mark.parametrize("cut_rate", [0.0, 0.002, 0.05, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 500, 2000])
def test_equals_the_recursion(discount: float, cut_rate: float, steps: int) -> None:
    """Batch-length horizons, no cut, rare cuts, a cut at every step; discounts whose
    ``c^N`` underflows run the loop, the others the closed form."""
    gen = torch.Generator().manual_seed(steps)
    values = torch.randn(3, 4, steps, generator=gen, dtype=torch.float64) * 5
    continues = torch.rand(3, 4, steps, generator=gen) >= cut_rate
    expected = recursion(values, continues, discount)
    got = reverse_discounted_sum(values, continues, discount)
    assert got.dtype == torch.float64 and got.shape == values.shape
    scale = expected.abs().max().clamp_min(1.0)
    assert float((got - expected).abs().max() / scale) < 1e-12


def test_a_float32_signal_is_summed_in_float64() -> None:
    values = torch.full((1, 300), 1e-3, dtype=torch.float32)
    got = reverse_discounted_sum(values, torch.ones(1, 300, dtype=torch.bool), 1.0)
    expected = recursion(values, torch.ones(1, 300), 1.0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)


def test_a_meta_step_equals_the_one_of_the_recursion(tmp_path, monkeypatch) -> None:
    """One cpo_layer meta-iteration with the closed form, and again with the recursion
    in its place: the same data, and the change of the meta-parameters (a function of
    the meta-gradients of reward and cost) equal within 1e-6 relative."""
    from tiny import tiny_cfg

    import meta_safe.rl.advantages as advantages
    import meta_safe.rl.value_baseline as value_baseline
    from meta_safe.trainer import MetaTrainer

    def meta_step(name: str) -> dict[str, torch.Tensor]:
        cfg = tiny_cfg("meta_optimizer=cpo_layer", "meta.iterations=1", "evaluate_after=false")
        trainer = MetaTrainer(cfg, tmp_path / name)
        before = {k: v.detach().clone() for k, v in trainer.state.meta_params.items()}
        trainer.run_iteration()
        return {k: trainer.state.meta_params[k].detach() - v for k, v in before.items()}

    closed_form = meta_step("closed_form")
    for module in (advantages, value_baseline):
        monkeypatch.setattr(module, "reverse_discounted_sum", recursion)
    recursive = meta_step("recursion")
    for name, change in recursive.items():
        assert change.norm() > 0
        relative = (closed_form[name] - change).norm() / change.norm()
        assert relative < 1e-6, (name, float(relative))
