"""Safety-Gymnasium 1.0.0 imports and runs on Python 3.11 + numpy 2 via our compat layer."""

import dataclasses

import numpy as np
import pytest

from stochastic_circle import compat

pytestmark = pytest.mark.mujoco


def test_apply_is_idempotent_and_restores_dataclasses() -> None:
    original = dataclasses._get_field
    compat.apply()
    compat.apply()
    assert dataclasses._get_field is original, "the dataclass patch must not outlive the import"


def test_array_defaults_become_per_instance_copies() -> None:
    sg = compat.import_safety_gymnasium()
    from safety_gymnasium.assets.geoms import Sigwalls

    first, second = Sigwalls(), Sigwalls()
    assert isinstance(first.color, np.ndarray)
    assert first.color is not second.color
    np.testing.assert_array_equal(first.color, second.color)
    assert sg.__name__ == "safety_gymnasium"


def test_mujoco_jnt_accepts_one_element_array() -> None:
    import mujoco

    compat.apply()
    xml = (
        "<mujoco><worldbody><body><joint type='hinge'/><geom size='.1'/></body>"
        "</worldbody></mujoco>"
    )
    model = mujoco.MjModel.from_xml_string(xml)
    assert model.jnt(np.array([0])).id == model.jnt(0).id
    with pytest.raises(TypeError, match="one joint id"):
        model.jnt(np.array([0, 0]))


@pytest.mark.parametrize(
    ("env_id", "obs_dim"), [("SafetyPointCircle1-v0", 28), ("SafetyCarCircle1-v0", 40)]
)
def test_stock_circle_env_runs_a_full_episode(env_id: str, obs_dim: int) -> None:
    env = compat.import_safety_gymnasium().make(env_id)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (obs_dim,)
    rng = np.random.default_rng(0)
    rewards, costs = [], []
    step = 0
    while step < 1000:
        step += 1
        obs, reward, cost, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 2))
        rewards.append(reward)
        costs.append(cost)
        assert not terminated
        if truncated:
            break
    assert step == 500 and truncated
    assert np.all(np.isfinite(rewards)) and np.all(np.isfinite(costs))
    assert np.all(np.isfinite(obs))
    env.close()
