"""Deletion and insertion curves: closed forms, and a planted signal that Shapley attributions
find far better than random orders."""

from __future__ import annotations

import numpy as np
import pytest

from autotelic.explain import deletion, shapley


def additive_game(weights):
    def value(masks):
        return np.asarray(masks, dtype=float) @ weights

    return value


def test_curves_follow_the_order_and_have_the_trapezoid_area():
    game = additive_game(np.array([1.0, 4.0, 2.0]))
    fractions, curve = deletion.curves(game, [1, 2, 0], kind="deletion", batched=True)
    np.testing.assert_allclose(fractions, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(curve, [7, 3, 1, 0])
    _, inserted = deletion.curves(game, [1, 2, 0], kind="insertion", batched=True)
    np.testing.assert_allclose(inserted, [0, 4, 6, 7])
    area = deletion.area_under_curve(fractions, curve)
    assert area == pytest.approx((7 + 3 + 3 + 1 + 1 + 0) / 2 / 3)
    chunked_fractions, chunked = deletion.curves(
        additive_game(np.arange(10.0)), np.arange(10)[::-1], num_steps=5, batched=True
    )
    np.testing.assert_allclose(chunked_fractions, np.linspace(0, 1, 6))
    np.testing.assert_allclose(chunked, [45, 28, 15, 6, 1, 0])


def test_attribution_order_is_decreasing_with_random_tie_breaks():
    order = deletion.attribution_order([0.1, 3.0, -2.0, 0.5])
    np.testing.assert_array_equal(order, [1, 3, 0, 2])
    tied = {tuple(deletion.attribution_order(np.zeros(4), seed=s)) for s in range(20)}
    assert len(tied) > 1


def planted_signal():
    """log pi(a=1 | x) for a logit that reads 3 of 20 features; removed features become 0."""
    weights = np.zeros(20)
    weights[[0, 5, 12]] = [3.0, -2.0, 4.0]
    x = np.random.default_rng(0).normal(size=20)
    x[[0, 5, 12]] = [1.5, -1.2, 1.0]

    def log_prob(inputs):
        return -np.logaddexp(0.0, -(inputs @ weights))

    return shapley.FeatureGame(log_prob, x, fill="baseline", baseline=0.0)


def test_shapley_deletion_beats_random_orders_on_a_planted_signal():
    game = planted_signal()
    # 20 players is beyond exact enumeration: sampled values, which put the mass on 0, 5, 12.
    attribution = shapley.sample(game, 20, 200, seed=0, batched=True)
    assert set(np.argsort(-attribution.values)[:3]) == {0, 5, 12}
    result = deletion.evaluate(game, attribution.values, num_random_orders=30, batched=True)
    assert result.deletion.standard_errors_better_than_random() > 3
    assert result.deletion.standard_deviations_better_than_random() > 1.5
    assert result.insertion.standard_errors_better_than_random() > 3
    assert result.deletion.empirical_p_value() < 0.05
    assert result.deletion.random_curves.shape == (30, 21)
    assert deletion.deletion_standard_errors_below_random(
        game, attribution.values, num_random_orders=30, batched=True
    ) == pytest.approx(result.deletion.standard_errors_better_than_random())


def test_random_attributions_are_not_better_than_random_orders():
    game = planted_signal()
    margins = [
        deletion.evaluate(
            game,
            np.random.default_rng(100 + seed).normal(size=20),
            num_random_orders=30,
            seed=seed,
            batched=True,
        ).deletion.standard_deviations_better_than_random()
        for seed in range(50)
    ]
    # One random order's margin is about N(0, 1); the mean of 50 has SE 0.14.
    assert abs(np.mean(margins)) < 0.5, np.mean(margins)
