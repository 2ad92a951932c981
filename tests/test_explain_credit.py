"""Per-reward-source credit: exact shares of the advantage and the value, pinned to a hand-computed
two-head example, the trainer's own mixing formula and the per-update metrics."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from autotelic.explain import credit, shapley

# Two heads: extrinsic (episodic, gamma 0.9) and one source (non-episodic, gamma 0.5); lambda 0.8.
# Three steps of one env; the episode terminates at the last step.
HEADS = credit.HeadSettings(
    names=("extrinsic", "bonus"),
    coefs=np.array([1.0, 2.0]),
    gammas=np.array([0.9, 0.5]),
    episodic=np.array([True, False]),
    normalize=("none", "none"),
)
REWARDS = np.array([[0.0, 0.2], [0.0, 0.1], [1.0, 0.4]])  # [T, K]
VALUES = np.array([[0.5, 0.3], [0.6, 0.2], [0.7, 0.1]])
LAST_VALUES = np.array([0.4, 0.25])  # V(first observation of the next episode)
TERMINATED = np.array([False, False, True])

# By hand (GAE, delta_t = r_t + gamma * bootstrap - V_t, A_t = delta_t + gamma lambda c_t A_{t+1}):
# extrinsic: deltas 0.9*0.6-0.5 = 0.04, 0.9*0.7-0.6 = 0.03, 1 + 0 - 0.7 = 0.3 (terminated: no
#   bootstrap, trace cut): A = 0.04 + 0.72*0.246, 0.03 + 0.72*0.3, 0.3 = 0.21712, 0.246, 0.3
# bonus (runs on through the episode end, bootstrapping from the next episode's first value):
#   deltas 0.2+0.5*0.2-0.3 = 0, 0.1+0.5*0.1-0.2 = -0.05, 0.4+0.5*0.25-0.1 = 0.425:
#   A = 0.4*0.12, -0.05 + 0.4*0.425, 0.425 = 0.048, 0.12, 0.425
HAND_ADVANTAGES = np.array([[0.21712, 0.048], [0.246, 0.12], [0.3, 0.425]])
HAND_ADVANTAGE_SHARES = np.array([[0.21712, 0.096], [0.246, 0.24], [0.3, 0.85]])
HAND_ADVANTAGE_TOTAL = np.array([0.31312, 0.486, 1.15])
HAND_VALUE_SHARES = np.array([[0.5, 0.6], [0.6, 0.4], [0.7, 0.2]])
HAND_VALUE_TOTAL = np.array([1.1, 1.0, 0.9])


def hand_example_advantages() -> np.ndarray:
    next_values = np.concatenate([VALUES[1:], LAST_VALUES[None]])
    advantages, returns = credit.per_head_gae(
        REWARDS[:, None],
        VALUES[:, None],
        next_values[:, None],
        np.zeros_like(VALUES)[:, None],
        TERMINATED[:, None],
        np.zeros_like(TERMINATED)[:, None],
        HEADS,
        gae_lambda=0.8,
    )
    np.testing.assert_allclose(returns[:, 0], advantages[:, 0] + VALUES, atol=1e-6)
    return advantages[:, 0]


def test_per_head_gae_matches_the_hand_computation():
    np.testing.assert_allclose(hand_example_advantages(), HAND_ADVANTAGES, atol=1e-6)


def test_two_head_credit_matches_the_hand_computation():
    result = credit.credit(HAND_ADVANTAGES, VALUES, HEADS)
    np.testing.assert_allclose(result.advantage_shares, HAND_ADVANTAGE_SHARES, atol=1e-12)
    np.testing.assert_allclose(result.advantage, HAND_ADVANTAGE_TOTAL, atol=1e-12)
    np.testing.assert_allclose(result.value_shares, HAND_VALUE_SHARES, atol=1e-12)
    np.testing.assert_allclose(result.value, HAND_VALUE_TOTAL, atol=1e-12)
    assert result.dominant.tolist() == [0, 0, 1]
    assert result.dominance() == pytest.approx({"extrinsic": 2 / 3, "bonus": 1 / 3})


def test_shares_sum_to_the_total_exactly_and_match_the_trainer_mixture():
    rng = np.random.default_rng(0)
    advantages = rng.normal(size=(64, 8, 4)).astype(np.float32) * [1.0, 30.0, 1e-3, 5.0]
    values = rng.normal(size=(64, 8, 4)).astype(np.float32)
    coefs = np.array([1.0, 0.3, 7.0, -0.5], dtype=np.float32)
    heads = credit.HeadSettings(
        names=("extrinsic", "a", "b", "c"),
        coefs=coefs.astype(np.float64),
        gammas=np.full(4, 0.99),
        episodic=np.ones(4, bool),
        normalize=("none",) * 4,
    )
    result = credit.credit(advantages, values, heads)
    # exactly: the total is the sum of the shares
    assert np.array_equal(result.advantage_shares.sum(-1), result.advantage)
    assert np.array_equal(result.value_shares.sum(-1), result.value)
    # the trainer's policy advantage, `(advantages * coefs).sum(-1)` in float32
    trainer = np.asarray((jnp.asarray(advantages) * jnp.asarray(coefs)).sum(-1))
    np.testing.assert_allclose(result.advantage, trainer, rtol=1e-5, atol=1e-5)
    # and the same sum in float64, term by term
    exact = sum(
        coefs[k].astype(np.float64) * advantages[..., k].astype(np.float64) for k in range(4)
    )
    np.testing.assert_allclose(result.advantage, exact, rtol=0, atol=1e-12)
    assert sum(result.dominance().values()) == pytest.approx(1.0)


def test_normalized_shares_sum_to_the_standardized_advantage():
    rng = np.random.default_rng(1)
    shares, total = credit.shares(rng.normal(size=(128, 3)), [1.0, 0.5, 2.0])
    normalized, normalized_total = credit.normalized_shares(shares)
    standardized = (total - total.mean()) / (total.std() + 1e-8)  # as in ppo.loss_fn
    np.testing.assert_allclose(normalized.sum(-1), standardized, atol=1e-12)
    np.testing.assert_allclose(normalized_total, standardized, atol=1e-12)


def test_shapley_values_of_the_additive_advantage_game_are_the_shares():
    shares_row = HAND_ADVANTAGE_SHARES[2]
    result = shapley.exact(credit.additive_game(shares_row), 2, batched=True)
    np.testing.assert_allclose(result.values, shares_row, atol=1e-12)
    assert result.full_value - result.empty_value == pytest.approx(HAND_ADVANTAGE_TOTAL[2])


def test_training_credit_from_metric_rows():
    rows = [
        {
            "update": 1.0,
            "env_steps": 64.0,
            "extrinsic/advantage_mean": 0.5,
            "extrinsic/advantage_std": 1.0,
            "extrinsic/return_mean": 2.0,
            "bonus/advantage_mean": -0.25,
            "bonus/advantage_std": 0.1,
            "bonus/return_mean": 1.0,
        },
        {
            "update": 2.0,
            "env_steps": 128.0,
            "extrinsic/advantage_mean": 0.0,
            "extrinsic/advantage_std": 0.2,
            "extrinsic/return_mean": 1.0,
            "bonus/advantage_mean": 0.5,
            "bonus/advantage_std": 0.3,
            "bonus/return_mean": 3.0,
        },
    ]
    history = credit.training_credit(rows, HEADS)
    np.testing.assert_allclose(history.mean_shares, [[0.5, -0.5], [0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(history.mean_advantage, [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(history.scale, [[1.0, 0.2], [0.2, 0.6]], atol=1e-12)
    np.testing.assert_allclose(history.scale_shares.sum(-1), [1.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(history.value_shares, [[2.0, 2.0], [1.0, 6.0]], atol=1e-12)
    assert history.dominant.tolist() == [0, 1]
    assert history.env_steps.tolist() == [64.0, 128.0]
    with pytest.raises(ValueError, match="bonus/advantage_std"):
        credit.training_credit(
            [{k: v for k, v in rows[0].items() if k != "bonus/advantage_std"}], HEADS
        )


def test_head_settings_and_reward_scales_follow_the_trainer():
    config = {
        "rewards": ["rnd", "count", "episodic"],
        "extrinsic": {"coef": 2.0, "gamma": 0.97},
        "sources": {
            "rnd": {"coef": 0.5, "gamma": 0.99, "episodic": False, "normalize": "return_std"},
            "count": {"beta": 0.02},  # the rest: the source's defaults
        },
    }
    heads = credit.head_settings(config)
    assert heads.names == ("extrinsic", "rnd", "count", "episodic")
    assert heads.coefs.tolist() == [2.0, 0.5, 1.0, 0.3]
    assert heads.gammas.tolist() == [0.97, 0.99, 0.99, 0.99]
    assert heads.episodic.tolist() == [True, False, True, True]
    assert heads.normalize == ("none", "return_std", "none", "return_std")
    scales = credit.reward_scales([4.0, 9.0, 0.25], heads)
    np.testing.assert_allclose(scales, [1.0, np.sqrt(4.0 + 1e-8), 1.0, np.sqrt(0.25 + 1e-8)])


def test_discounted_returns_per_head():
    returns = credit.discounted_returns(REWARDS, HEADS.gammas)
    np.testing.assert_allclose(returns, [0.81, 0.2 + 0.05 + 0.1], atol=1e-12)
