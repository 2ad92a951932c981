"""Reward models on caption labels: retrieval, classifier, Bradley-Terry ranking, and ONI's
episodic count scaling, each pinned to a property that can fail."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autotelic.feedback import models as m
from autotelic.feedback.store import Label

SMALL = m.TextConfig(num_buckets=2**12, embed_dim=16, hidden=32, learning_rate=1e-2)

MONSTERS = ["newt", "jackal", "grid bug", "kobold", "gnome", "dwarf", "orc", "lichen"]
UNSEEN = ["fox", "giant rat", "bat", "goblin"]


def combat_captions(monsters: list[str]) -> tuple[list[str], np.ndarray]:
    """Killing a monster is helpful; being missed, bitten or hearing it is not."""
    captions, labels = [], []
    for monster in monsters:
        captions += [
            f"You kill the {monster}!",
            f"You destroy the {monster}!",
            f"The {monster} misses.",
            f"The {monster} bites!",
            f"You hear the {monster} in the distance.",
        ]
        labels += [1, 1, 0, 0, 0]
    return captions, np.array(labels, np.float32)


def test_caption_features_are_deterministic_and_bounded():
    captions = ["You kill the newt!", "", "x" * 500]
    first = m.caption_batch(captions, SMALL)
    m._ngrams.cache_clear()
    second = m.caption_batch(list(reversed(captions)), SMALL)
    np.testing.assert_array_equal(first.ngrams, second.ngrams[::-1])
    assert first.ngrams.shape == (3, SMALL.max_ngrams) and first.ngrams.max() < SMALL.num_buckets
    assert first.mask[1].sum() == 0 and first.ids[1] == 0  # the empty caption
    assert first.ids[0] == m.caption_id("You kill the newt!") != m.caption_id("You kill the newt")


def test_retrieval_returns_exact_labels_and_zero_otherwise():
    captions = ["You kill the newt!", "You hear a noise.", "There is a staircase down here."]
    ids = m.caption_ids(captions)
    state = m.retrieval_update(m.retrieval_init(), ids, np.array([1, 0, 1]))
    queries = m.caption_ids([*captions, "You kill the newt", ""]).reshape(1, 5)
    np.testing.assert_array_equal(m.retrieval_reward(state, queries), [[1, 0, 1, 0, 0]])
    state = m.retrieval_update(state, ids[:1], np.array([0.0]))  # a later label replaces
    np.testing.assert_array_equal(m.retrieval_reward(state, ids), [0, 0, 1])
    assert len(state.keys) == 3 and np.all(np.diff(state.keys.astype(np.float64)) > 0)
    np.testing.assert_array_equal(m.retrieval_reward(m.retrieval_init(), ids), [0, 0, 0])


def test_classifier_learns_a_separable_set_and_generalizes_to_unseen_captions():
    captions, labels = combat_captions(MONSTERS)
    held_out, held_out_labels = combat_captions(UNSEEN)
    train = m.caption_batch(captions, SMALL)
    # the dataset is padded to a fixed capacity so that it can grow without recompiling
    capacity = 64
    ngrams = np.zeros((capacity, SMALL.max_ngrams), np.int32)
    mask = np.zeros((capacity, SMALL.max_ngrams), np.float32)
    padded_labels = np.zeros(capacity, np.float32)
    ngrams[: len(captions)], mask[: len(captions)] = train.ngrams, train.mask
    padded_labels[: len(captions)] = labels
    state = m.classifier_init(jax.random.PRNGKey(0), SMALL)

    def fit(state, count, key):
        return m.classifier_fit(
            state, ngrams, mask, padded_labels, jnp.int32(count), key, SMALL, 32, 64
        )

    unchanged, _ = fit(state, 0, jax.random.PRNGKey(1))
    assert int(unchanged.steps) == 0  # nothing labelled yet: nothing learnt
    for i in range(4):
        state, metrics = fit(state, len(captions), jax.random.PRNGKey(i))
    assert int(state.steps) == 128 and float(metrics["classifier/loss"]) < 0.05
    np.testing.assert_array_equal(m.classifier_reward(state, train.ngrams, train.mask), labels)
    test = m.caption_batch(held_out, SMALL)
    np.testing.assert_array_equal(
        m.classifier_reward(state, test.ngrams, test.mask), held_out_labels
    )
    empty = m.caption_batch([""], SMALL)
    assert float(m.classifier_reward(state, empty.ngrams, empty.mask)[0]) == 0.0


def test_bradley_terry_loss_matches_its_closed_form():
    margin = jnp.array([0.0, 2.0, -1.0, 3.0])
    loss = m.bradley_terry_loss(margin, jnp.zeros(4), jnp.array([0.5, 1.0, 1.0, 0.0]))
    expected = [np.log(2), np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0)), np.log1p(np.exp(3.0))]
    np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_preference_pairs_label_ties_as_half():
    rng = np.random.default_rng(0)
    values = np.array([0.0, 1.0, 1.0, 2.0])
    first, second, preference = m.preference_pairs(values, 500, rng)
    assert np.all(first != second)
    difference = values[first] - values[second]
    np.testing.assert_array_equal(preference, np.sign(difference) * 0.5 + 0.5)
    assert {0.0, 0.5, 1.0} <= set(preference.tolist())
    _, _, with_margin = m.preference_pairs(np.array([0.0, 0.05]), 10, rng, tie_margin=0.1)
    assert np.all(with_margin == 0.5)


def test_bradley_terry_recovers_a_known_ranking_and_applies_its_normalization():
    rng = np.random.default_rng(0)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    captions, tiers = [], []
    for rank, word in enumerate(words):  # 4 tiers of 2 words; 3 captions per word
        for k in range(3):
            captions.append(f"the {word} thing number {k}")
            tiers.append(rank // 2)
    tiers = np.array(tiers, np.float64)
    order = rng.permutation(len(captions))  # the model must not rely on list order
    captions, tiers = [captions[i] for i in order], tiers[order]
    first, second, preference = m.preference_pairs(tiers, 1024, rng)
    batch = m.caption_batch(captions, SMALL)
    state = m.ranking_init(jax.random.PRNGKey(0), SMALL)
    for i in range(5):
        state, _ = m.ranking_fit(
            state,
            (batch.ngrams[first], batch.mask[first]),
            (batch.ngrams[second], batch.mask[second]),
            preference,
            jnp.int32(len(preference)),
            jax.random.PRNGKey(i),
            config=SMALL,
            steps=32,
            minibatch=128,
        )
    scores = np.asarray(m.ranking_score(state, batch.ngrams, batch.mask))
    # every caption of a higher tier outscores every caption of a lower tier
    for tier in range(3):
        assert scores[tiers == tier].max() < scores[tiers == tier + 1].min()
    # ties pull tier-mates together: spread within a tier is small next to the gaps
    gap = min(scores[tiers == t + 1].min() - scores[tiers == t].max() for t in range(3))
    assert max(np.ptp(scores[tiers == t]) for t in range(4)) < 0.5 * gap

    state, calibration = m.ranking_calibrate(state, batch.ngrams, batch.mask, quantile=0.5)
    normalized = (scores - scores.mean()) / scores.std()
    np.testing.assert_allclose(float(calibration["ranking/reward_mean"]), scores.mean(), rtol=1e-5)
    np.testing.assert_allclose(
        float(calibration["ranking/threshold"]), np.median(normalized), atol=1e-5
    )
    reward = np.asarray(m.ranking_reward(state, batch.ngrams, batch.mask))
    # the reward is the normalized score above the median and 0 below: not the raw score
    expected = np.where(normalized >= np.median(normalized), normalized, 0.0)
    np.testing.assert_allclose(reward, expected, atol=1e-4)
    assert np.all(reward[tiers >= 2] > 0) and np.all(reward[tiers <= 1] == 0)


def test_episodic_counts_follow_each_env_and_reset_at_episode_ends():
    ids = {name: m.caption_id(name) for name in ("a", "b", "c")}
    state = m.episodic_counts_init(num_envs=2, capacity=2)
    steps = [
        # (env 0 caption, env 1 caption, done0, done1) -> (N0, N1)
        (("a", "a", False, False), (1, 1)),
        (("a", "b", False, False), (2, 1)),
        (("", "a", False, False), (0, 2)),
        (("a", "b", True, False), (3, 2)),  # env 0's episode ends after this step
        (("a", "c", False, False), (1, 1)),  # env 1's 2 slots are full: c counts as new
        (("b", "c", False, True), (1, 1)),
        (("b", "c", False, False), (2, 1)),
    ]
    for (c0, c1, d0, d1), expected in steps:
        step_ids = np.array([ids.get(c0, 0), ids.get(c1, 0)], np.uint64)
        state, counts = m.episodic_counts_step(state, step_ids, np.array([d0, d1]))
        np.testing.assert_array_equal(counts, expected)
    assert int(state.overflow) == 2


@pytest.mark.parametrize("beta", [0.0, 1.0, 3.0])
def test_count_scaling_matches_the_formula(beta):
    reward = np.array([1.0, 0.5, 2.0, 0.0, 1.0])
    count = np.array([1, 2, 3, 4, 0])
    expected = reward / np.maximum(count, 1) ** beta
    np.testing.assert_allclose(m.count_scaled_reward(reward, count, beta), expected, rtol=1e-6)
    on_jax = m.count_scaled_reward(jnp.asarray(reward), jnp.asarray(count), beta)
    assert isinstance(on_jax, jax.Array)
    np.testing.assert_allclose(on_jax, expected, rtol=1e-6)
    if beta == 3.0:  # ONI's default: the third sighting of a caption pays 1/27
        assert m.count_scaled_reward(np.array([1.0]), np.array([3]))[0] == pytest.approx(1 / 27)


def test_only_ok_labels_are_learnt_from():
    labels = [
        Label("a", "x", "v", 1, None, "ok", ""),
        Label("b", "x", "v", None, None, "unparseable", "??"),
        Label("c", "x", "v", 0, None, "ok", ""),
        Label("d", "x", "v", None, None, "error", "HTTP 400"),
    ]
    captions, values = m.ok_labels(labels)
    assert captions == ["a", "c"]
    np.testing.assert_array_equal(values, [1.0, 0.0])
