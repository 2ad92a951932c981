"""Shapley values: closed forms, axioms, sampling accuracy, interval coverage, Shapley vs Banzhaf,
common random numbers and antithetic pairs, and features as players."""

from __future__ import annotations

import numpy as np
import pytest

from autotelic.errors import UserError
from autotelic.explain import shapley


def table_game(table: np.ndarray):
    """Batched game whose value at coalition S is table[bit code of S]."""
    num_players = int(np.log2(len(table)))
    bit_values = 1 << np.arange(num_players)

    def value(masks: np.ndarray) -> np.ndarray:
        return table[np.asarray(masks, dtype=np.int64) @ bit_values]

    return value


def glove(mask):
    """Player 0 owns a left glove, players 1 and 2 a right glove each; a pair is worth 1."""
    return float(mask[0] and (mask[1] or mask[2]))


# Hand-computed values. Glove: player 0 contributes unless it comes first (4 of 6 orders).
# Unanimity of 3: a player contributes only when last (1/3); Banzhaf counts 1 of 4 subsets.
# Threshold |S| >= 3 of 4 and "player 0 plus anyone" are the games of REFERENCES.md 4.3.
HAND_COMPUTED = {
    "glove": (glove, 3, [2 / 3, 1 / 6, 1 / 6], [3 / 4, 1 / 4, 1 / 4]),
    "unanimity-3": (lambda m: float(all(m)), 3, [1 / 3] * 3, [1 / 4] * 3),
    "threshold-3-of-4": (lambda m: float(sum(m) >= 3), 4, [1 / 4] * 4, [3 / 8] * 4),
    "0-and-anyone": (
        lambda m: float(m[0] and sum(m) >= 2),
        4,
        [3 / 4, 1 / 12, 1 / 12, 1 / 12],
        [7 / 8, 1 / 8, 1 / 8, 1 / 8],
    ),
}


@pytest.mark.parametrize("name", sorted(HAND_COMPUTED))
def test_exact_matches_hand_computed_games(name):
    game, num_players, shapley_values, banzhaf_values = HAND_COMPUTED[name]
    result = shapley.exact(game, num_players)
    np.testing.assert_allclose(result.values, shapley_values, atol=1e-12)
    np.testing.assert_allclose(shapley.banzhaf(game, num_players), banzhaf_values, atol=1e-12)
    assert result.num_evaluations == 2**num_players
    assert np.all(result.standard_error == 0)


@pytest.mark.parametrize("num_players", [1, 2, 5, 9, 12])
def test_exact_is_efficient_on_random_games(num_players):
    table = np.random.default_rng(num_players).normal(size=2**num_players) * 10
    result = shapley.exact(table_game(table), num_players, batched=True)
    assert abs(result.values.sum() - (table[-1] - table[0])) <= 1e-6
    assert result.full_value == table[-1] and result.empty_value == table[0]


def test_null_player_gets_exactly_zero():
    num_players, null = 7, 4
    base = np.random.default_rng(0).normal(size=2**num_players)
    codes = np.arange(2**num_players)
    table = base[codes & ~(1 << null)]  # v(S) = v(S without the null player)
    game = table_game(table)
    assert shapley.exact(game, num_players, batched=True).values[null] == 0.0
    sampled = shapley.sample(game, num_players, 64, seed=0, batched=True)
    assert sampled.values[null] == 0.0 and sampled.standard_error[null] == 0.0
    assert np.all(np.abs(np.delete(sampled.values, null)) > 0)


def test_symmetric_players_get_equal_values():
    rng = np.random.default_rng(1)
    by_count = rng.normal(size=3)  # players 1 and 2 only matter through how many are present
    weights = rng.normal(size=5)

    def game(masks):
        masks = np.asarray(masks, dtype=float)
        return masks @ weights * (1 - 0.5 * masks[:, 0]) + by_count[
            (masks[:, 1] + masks[:, 2]).astype(int)
        ] * (1 + masks[:, 3] * masks[:, 4])

    weights[1] = weights[2] = 0.7
    values = shapley.exact(game, 5, batched=True).values
    assert abs(values[1] - values[2]) <= 1e-12
    assert abs(values[1] - values[3]) > 1e-3  # not everyone is equal


def test_scalar_and_batched_conventions_agree():
    table = np.random.default_rng(2).normal(size=2**5)
    batched = table_game(table)

    def scalar(mask):
        return float(batched(np.asarray(mask)[None])[0])

    np.testing.assert_allclose(
        shapley.exact(scalar, 5).values, shapley.exact(batched, 5, batched=True).values
    )
    a = shapley.sample(scalar, 5, 30, seed=3)
    b = shapley.sample(batched, 5, 30, seed=3, batched=True, batch_size=7)
    np.testing.assert_allclose(a.values, b.values)
    np.testing.assert_allclose(a.standard_error, b.standard_error)


def test_exact_refuses_too_many_players_with_a_user_error():
    def never_called(mask):
        raise AssertionError("the game must not be evaluated")

    too_many = shapley.MAX_EXACT_PLAYERS + 1
    with pytest.raises(shapley.TooManyPlayersError, match="sampl") as caught:
        shapley.exact(never_called, too_many)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)
    with pytest.raises(shapley.TooManyPlayersError):
        shapley.banzhaf(never_called, too_many)


def weighted_vote(masks):
    """Weighted majority game [quota 9; 4, 3, 3, 2, 2, 1, 1] (total weight 16)."""
    return (np.asarray(masks) @ np.array([4, 3, 3, 2, 2, 1, 1]) >= 9).astype(float)


def test_sampled_values_within_001_of_exact_and_efficient():
    exact = shapley.exact(weighted_vote, 7, batched=True)
    assert abs(exact.values.sum() - 1.0) <= 1e-12
    # Contributions are 0/1, so SE <= 0.5 / sqrt(M) = 0.0016: 0.01 is more than 6 SE away.
    sampled = shapley.sample(weighted_vote, 7, 100_000, seed=0, batched=True)
    assert np.max(np.abs(sampled.values - exact.values)) < 0.01
    assert np.all(sampled.standard_error < 0.0017)
    assert abs(sampled.values.sum() - (sampled.full_value - sampled.empty_value)) <= 1e-9
    assert sampled.num_evaluations == 100_000 * 8


def test_confidence_intervals_cover_the_exact_values():
    rng = np.random.default_rng(0)
    covered = []
    for repetition in range(100):
        table = rng.normal(size=2**8)
        game = table_game(table)
        exact = shapley.exact(game, 8, batched=True).values
        sampled = shapley.sample(game, 8, 200, seed=repetition, batched=True)
        covered.append((sampled.ci_low <= exact) & (exact <= sampled.ci_high))
    coverage = np.mean(covered)
    assert coverage >= 0.90, coverage


def test_estimator_is_shapley_not_banzhaf():
    def unanimity(masks):
        return np.all(masks, axis=1).astype(float)

    def threshold(masks):
        return (np.sum(masks, axis=1) >= 3).astype(float)

    for game, num_players, shapley_value, banzhaf_value in [
        (unanimity, 3, 1 / 3, 1 / 4),
        (threshold, 4, 1 / 4, 3 / 8),
    ]:
        assert np.allclose(shapley.banzhaf(game, num_players, batched=True), banzhaf_value)
        sampled = shapley.sample(game, num_players, 20_000, seed=1, batched=True)
        assert np.all(np.abs(sampled.values - shapley_value) < 0.01)
        assert np.all(np.abs(sampled.values - banzhaf_value) > 0.05)


SKILLS = np.array([0.9, 0.6, 0.3, 0.0])


def team_game(masks, seeds):
    """Stochastic team: present agents succeed with their skill; 2+ successes earn a bonus;
    every episode adds noise that no agent controls. One seed drives one episode."""
    returns = np.empty(len(masks))
    for row, (mask, seed) in enumerate(zip(masks, seeds, strict=True)):
        episode = np.random.default_rng(int(seed))
        successes = int(np.sum((episode.random(len(SKILLS)) < SKILLS) & mask))
        returns[row] = successes + (successes >= 2) + episode.normal()
    return returns


def test_common_random_numbers_shrink_the_variance():
    common = dict(batched=True, stochastic=True, seed=5)
    with_crn = shapley.sample(team_game, 4, 400, common_random_numbers=True, **common)
    independent = shapley.sample(team_game, 4, 400, common_random_numbers=False, **common)
    assert with_crn.num_evaluations == independent.num_evaluations
    ratio = with_crn.standard_error[:3] / independent.standard_error[:3]
    assert np.all(ratio < 0.6), ratio
    # The agent that never succeeds changes nothing once the episode's randomness is shared.
    assert with_crn.values[3] == 0.0 and with_crn.standard_error[3] == 0.0
    assert independent.standard_error[3] > 0.05
    paired = shapley.sample(team_game, 4, 400, antithetic=True, **common)
    assert paired.values[3] == 0.0 and np.all(np.abs(paired.values[:3] - with_crn.values[:3]) < 0.2)


def test_antithetic_pairs_are_unbiased_with_correct_standard_errors():
    weights = np.array([3.0, 1.0, 0.5, 2.0, 0.0])

    def game(masks):
        # Strong pairwise terms (which antithetic pairs cancel) plus interactions of 3+ players.
        m = np.asarray(masks, dtype=float)
        pairwise = 4 * m[:, 0] * m[:, 3] - 3 * m[:, 1] * m[:, 4] + 3 * m[:, 2] * m[:, 3]
        three_way = 1.5 * m[:, 0] * m[:, 1] * m[:, 2]
        return m @ weights + pairwise + three_way + 2.0 * (m.sum(axis=1) >= 3)

    exact = shapley.exact(game, 5, batched=True).values
    runs = [
        shapley.sample(game, 5, 40, seed=seed, batched=True, antithetic=True) for seed in range(300)
    ]
    estimates = np.array([run.values for run in runs])
    spread = estimates.std(axis=0, ddof=1)
    bias_in_standard_errors = (estimates.mean(axis=0) - exact) / (spread / np.sqrt(len(runs)))
    assert np.all(np.abs(bias_in_standard_errors) < 4), bias_in_standard_errors
    # The reported SE (over pair means) matches the spread of the estimates across runs; treating
    # the 40 orderings as independent would overstate it 1.5-2.7 times on this game.
    reported = np.sqrt(np.mean([run.standard_error**2 for run in runs], axis=0))
    assert np.all((reported / spread > 0.8) & (reported / spread < 1.25)), reported / spread
    # Here the pairs help: same number of orderings, smaller spread than independent orderings.
    independent = [shapley.sample(game, 5, 40, seed=seed, batched=True) for seed in range(300)]
    independent_spread = np.array([run.values for run in independent]).std(axis=0, ddof=1)
    assert np.all(independent_spread > 1.3 * spread), independent_spread / spread


def test_antithetic_pairs_are_exact_for_pairwise_interactions():
    rng = np.random.default_rng(4)
    linear, pairwise = rng.normal(size=6), np.triu(rng.normal(size=(6, 6)), 1)

    def game(masks):
        m = np.asarray(masks, dtype=float)
        return m @ linear + np.einsum("bi,ij,bj->b", m, pairwise, m)

    exact = shapley.exact(game, 6, batched=True).values
    sampled = shapley.sample(game, 6, 8, seed=0, batched=True, antithetic=True)
    np.testing.assert_allclose(sampled.values, exact, atol=1e-12)
    assert np.all(sampled.standard_error < 1e-12)
    with pytest.raises(shapley.AttributionInputError, match="even"):
        shapley.sample(game, 6, 9, antithetic=True, batched=True)


def linear_model(weights):
    def model(inputs):
        return np.asarray(inputs).reshape(len(inputs), -1) @ weights.reshape(-1) + 0.5

    return model


def test_feature_game_baseline_fill_has_the_linear_closed_form():
    rng = np.random.default_rng(5)
    weights, x, baseline = rng.normal(size=6), rng.normal(size=6), rng.normal(size=6)
    game = shapley.FeatureGame(linear_model(weights), x, fill="baseline", baseline=baseline)
    values = shapley.exact(game, game.num_players, batched=True).values
    np.testing.assert_allclose(values, weights * (x - baseline), atol=1e-12)


def test_feature_game_marginal_fill_averages_over_visited_states():
    rng = np.random.default_rng(6)
    weights, x = rng.normal(size=5), rng.normal(size=5)
    visited = rng.normal(loc=2.0, size=(30, 5))
    game = shapley.FeatureGame(linear_model(weights), x, fill="marginal", background=visited)
    values = shapley.exact(game, 5, batched=True).values
    np.testing.assert_allclose(values, weights * (x - visited.mean(axis=0)), atol=1e-12)
    # For a non-linear model, averaging over states differs from filling with the mean state.
    squared = shapley.FeatureGame(
        lambda inputs: np.sum(inputs**2, axis=1), x, fill="marginal", background=visited
    )
    at_mean = shapley.FeatureGame(
        lambda inputs: np.sum(inputs**2, axis=1), x, fill="baseline", baseline=visited.mean(0)
    )
    np.testing.assert_allclose(
        shapley.exact(squared, 5, batched=True).values, x**2 - np.mean(visited**2, axis=0)
    )
    assert not np.allclose(
        shapley.exact(squared, 5, batched=True).values,
        shapley.exact(at_mean, 5, batched=True).values,
    )


def test_feature_game_channels_as_players():
    rng = np.random.default_rng(7)
    weights, image = rng.normal(size=(4, 4, 3)), rng.normal(size=(4, 4, 3))
    game = shapley.FeatureGame(
        linear_model(weights), image, fill="baseline", baseline=0.0, groups=np.arange(3)
    )
    assert game.num_players == 3
    values = shapley.exact(game, 3).values  # scalar convention works too
    np.testing.assert_allclose(values, np.sum(weights * image, axis=(0, 1)), atol=1e-12)


def test_feature_game_needs_an_explicit_fill():
    with pytest.raises(shapley.AttributionInputError, match="explicit baseline"):
        shapley.FeatureGame(linear_model(np.ones(3)), np.ones(3), fill="baseline")
    with pytest.raises(shapley.AttributionInputError, match="background"):
        shapley.FeatureGame(linear_model(np.ones(3)), np.ones(3), fill="marginal")
    with pytest.raises(shapley.AttributionInputError, match="every player index"):
        shapley.FeatureGame(
            linear_model(np.ones(3)), np.ones(3), fill="baseline", baseline=0, groups=[0, 2, 2]
        )
