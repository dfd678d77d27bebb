import numpy as np
import pytest

from worldmodel.data import CorrelatedPolicy, MixedPolicy, UniformPolicy, make_policy

LOW, HIGH = np.array([-1.0, -2.0]), np.array([1.0, 0.0])


def lag1(x):
    return np.mean([np.corrcoef(x[:-1, i], x[1:, i])[0, 1] for i in range(x.shape[1])])


@pytest.mark.parametrize("policy", [UniformPolicy(), CorrelatedPolicy(), MixedPolicy()])
def test_actions_respect_bounds_and_seed(policy):
    a = policy.sample(np.random.default_rng(0), 5000, LOW, HIGH)
    assert a.dtype == np.float32 and a.shape == (5000, 2)
    assert (a >= LOW).all() and (a <= HIGH).all()
    assert np.array_equal(a, policy.sample(np.random.default_rng(0), 5000, LOW, HIGH))


def test_mixed_episodes_are_each_uniform_or_correlated_in_the_asked_share():
    policy = MixedPolicy(uniform_fraction=0.3, beta=0.95)
    rng = np.random.default_rng(2)
    smooth = [lag1(policy.sample(rng, 400, LOW, HIGH)) > 0.5 for _ in range(400)]
    assert 0.62 < np.mean(smooth) < 0.78  # 70 % correlated episodes
    with pytest.raises(ValueError, match="uniform_fraction"):
        MixedPolicy(uniform_fraction=1.5)


def test_uniform_is_white_and_correlated_is_smooth():
    rng = np.random.default_rng(1)
    assert abs(lag1(UniformPolicy().sample(rng, 20000, LOW, HIGH))) < 0.03
    assert lag1(CorrelatedPolicy(beta=0.9).sample(rng, 20000, LOW, HIGH)) > 0.8


def test_bad_policy_settings_raise():
    with pytest.raises(ValueError, match="unknown behaviour policy 'brownian'"):
        make_policy("brownian")
    with pytest.raises(ValueError, match="beta must be in"):
        CorrelatedPolicy(beta=1.0)
