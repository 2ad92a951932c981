"""The embedding-based reward sources (ICM, E3B, NGU episodic kNN) and their shared
inverse-dynamics embedding, checked against closed forms and on a tiny deterministic grid world.

Networks are kept small so that each jitted function compiles in a few seconds; learning tests
train on fixed data with the sources' own `update`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from autotelic.envs.base import EnvSpec
from autotelic.errors import UserError
from autotelic.rewards.base import (
    REGISTRY,
    RewardSource,
    Transition,
    resolve_params,
    scan_reward,
)
from autotelic.rewards.e3b import elliptical_bonus, reset_cov_inverse
from autotelic.rewards.episodic import (
    KNN_BLOCK,
    KNN_FIRST_BLOCK,
    KNN_ROWS,
    episodic_novelty,
    lifelong_multiplier,
    memory_insert,
    nearest_sq_distances,
)
from autotelic.rewards.inverse_dynamics import EmbeddingState, fit, make_inverse_dynamics
from autotelic.rewards.rnd import ObsStats

SMALL = {"hidden": 32, "embedding_dim": 8}


def build(name: str, spec: EnvSpec, **overrides: Any) -> RewardSource:
    params = resolve_params(name, overrides)
    REGISTRY[name].check(params, spec)
    return REGISTRY[name].build(params, spec)


def transitions(obs: Any, next_obs: Any, action: Any = None, done: Any = None) -> Transition:
    """A `[T, N]` transition batch from obs and next_obs `[T, N, ...]`."""
    obs, next_obs = jnp.asarray(obs), jnp.asarray(next_obs)
    steps, envs = obs.shape[:2]
    action = jnp.zeros((steps, envs), jnp.int32) if action is None else jnp.asarray(action)
    done = jnp.zeros((steps, envs), bool) if done is None else jnp.asarray(done)
    return Transition(
        obs=obs,
        action=action.astype(jnp.int32),
        next_obs=next_obs,
        terminated=done,
        truncated=jnp.zeros_like(done),
        extrinsic=jnp.zeros((steps, envs), jnp.float32),
    )


def run_rewards(source: RewardSource, state: Any, batch: Transition) -> tuple[Any, Any]:
    """The source's reward at every step of `batch: [T, N]`, in one jitted scan."""

    def body(carry: Any, transition: Transition) -> tuple[Any, Any]:
        reward, carry = source.reward(carry, transition)
        return carry, (reward, carry)

    return jax.jit(lambda s, b: jax.lax.scan(body, s, b))(state, batch)


# ------------------------------------------------------------------ a tiny deterministic world

SIDE = 4
GRID_SPEC = EnvSpec("test-grid-world", (SIDE * SIDE,), "float32", "vector", 4, 50)
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right; walls block


def grid_transitions(cells: list[tuple[int, int]]) -> tuple[np.ndarray, ...]:
    """Every (cell, action) of `cells` as one-hot obs, action, one-hot next obs: `[len*4, ...]`."""
    obs, actions, next_obs = [], [], []
    for row, col in cells:
        for action, (dr, dc) in enumerate(MOVES):
            nr, nc = min(max(row + dr, 0), SIDE - 1), min(max(col + dc, 0), SIDE - 1)
            obs.append(np.eye(SIDE * SIDE)[row * SIDE + col])
            next_obs.append(np.eye(SIDE * SIDE)[nr * SIDE + nc])
            actions.append(action)
    return (
        np.asarray(obs, np.float32),
        np.asarray(actions, np.int32),
        np.asarray(next_obs, np.float32),
    )


def as_rollout(obs: np.ndarray, actions: np.ndarray, next_obs: np.ndarray, envs: int) -> Any:
    """Flat samples `[B, ...]` -> a `[B / envs, envs]` rollout (B divisible by envs)."""

    def fold(x: np.ndarray) -> np.ndarray:
        return x.reshape(-1, envs, *x.shape[1:])

    return transitions(fold(obs), fold(next_obs), fold(actions))


ALL_CELLS = [(r, c) for r in range(SIDE) for c in range(SIDE)]


# ------------------------------------------------------------------------------------ E3B


def test_sherman_morrison_bonus_matches_direct_inverse_over_50_updates_with_resets():
    num_envs, dim, ridge, steps = 4, 8, 0.1, 50
    rng = np.random.default_rng(0)
    phis = 0.4 * rng.normal(size=(steps, num_envs, dim)).astype(np.float32)
    starts = np.zeros((steps, num_envs), bool)
    starts[0] = True
    starts[20, 1] = starts[35, 2] = True  # episodes restart mid-way for two envs

    @jax.jit
    def step(cov_inverse: Any, phi: Any, start: Any) -> tuple[Any, Any]:
        cov_inverse = reset_cov_inverse(cov_inverse, start, ridge)
        return elliptical_bonus(cov_inverse, phi)

    cov_inverse = jnp.zeros((num_envs, dim, dim), jnp.float32)
    covariances = [np.eye(dim) * ridge for _ in range(num_envs)]
    for t in range(steps):
        bonus, cov_inverse = step(cov_inverse, phis[t], starts[t])
        for env in range(num_envs):
            if starts[t, env]:
                covariances[env] = np.eye(dim) * ridge
            phi = phis[t, env].astype(np.float64)
            expected = phi @ np.linalg.inv(covariances[env]) @ phi  # C_{t-1} excludes phi_t
            np.testing.assert_allclose(bonus[env], expected, atol=1e-5)
            covariances[env] = covariances[env] + np.outer(phi, phi)
    for env in range(num_envs):  # after 50 rank-one updates C^{-1} is still the inverse
        np.testing.assert_allclose(
            cov_inverse[env], np.linalg.inv(covariances[env]), atol=1e-4, rtol=1e-4
        )
    # Env 1 restarted at t = 20, so its ellipse holds 30 embeddings, env 0's all 50.
    assert np.trace(np.asarray(cov_inverse[1])) > np.trace(np.asarray(cov_inverse[0]))


def test_e3b_source_scores_obs_zeroes_first_step_and_resets_at_episode_start():
    spec = EnvSpec("test-vector", (5,), "float32", "vector", 3, 50)
    source = build("e3b", spec, **SMALL)
    steps, num_envs = 12, 2
    rng = np.random.default_rng(1)
    stream = rng.normal(size=(steps + 1, num_envs, 5)).astype(np.float32)
    done = np.zeros((steps, num_envs), bool)
    done[6, 0] = True  # env 0: transitions 0-6 are one episode, 7-11 the next
    # At an episode end obs[t+1] is the reset observation, not next_obs[t]; both stay valid here.
    batch = transitions(stream[:-1], stream[1:], done=done)
    state = source.init(jax.random.PRNGKey(0), spec, num_envs)
    _, (bonus, states) = run_rewards(source, state, batch)

    model = make_inverse_dynamics(spec, 8, 32, "raw", 1e-4, 1, 4)
    phi = np.asarray(model.embed(state.model.params, stream[:-1].reshape(-1, 5)), np.float64)
    phi = phi.reshape(steps, num_envs, 8)
    for env in range(num_envs):
        cov = np.eye(8) * 0.1
        for t in range(steps):
            first = t == 0 or bool(done[t - 1, env])
            if first:
                cov = np.eye(8) * 0.1
                assert bonus[t, env] == 0.0  # the reference pays nothing for step 0
            else:
                expected = phi[t, env] @ np.linalg.inv(cov) @ phi[t, env]
                np.testing.assert_allclose(bonus[t, env], expected, rtol=1e-4, atol=1e-5)
            cov = cov + np.outer(phi[t, env], phi[t, env])
    # Right after the reset the ellipse holds only the new episode's first embedding.
    first_of_episode = phi[7, 0]
    np.testing.assert_allclose(
        states.cov_inverse[7, 0],
        np.linalg.inv(np.eye(8) * 0.1 + np.outer(first_of_episode, first_of_episode)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_e3b_next_obs_mode_is_the_reference_stream_one_step_earlier():
    spec = EnvSpec("test-vector", (5,), "float32", "vector", 3, 50)
    steps = 10
    stream = np.random.default_rng(2).normal(size=(steps + 1, 1, 5)).astype(np.float32)
    batch = transitions(stream[:-1], stream[1:])
    rewards = {}
    for mode in ("obs", "next_obs"):
        source = build("e3b", spec, bonus_on=mode, **SMALL)
        state = source.init(jax.random.PRNGKey(0), spec, 1)  # same key: same phi
        _, (rewards[mode], _) = run_rewards(source, state, batch)
    # next_obs mode pays at t what the reference pays at t + 1 (s_{t+1} against s_0..s_t).
    np.testing.assert_allclose(rewards["next_obs"][:-1], rewards["obs"][1:], rtol=1e-5, atol=1e-6)
    assert rewards["obs"][0, 0] == 0.0 and rewards["next_obs"][0, 0] > 0.0


# ------------------------------------------------------------------------------- NGU kernel

KERNEL = {"kernel_epsilon": 1e-4, "cluster_distance": 0.008, "c": 0.001, "max_similarity": 8.0}


def test_ngu_kernel_matches_hand_computation_with_elementwise_clamp():
    # d^2 = [0.002, 0.004, 0.9], d_m^2 = 0.5: d^2/d_m^2 = [0.004, 0.008, 1.8];
    # minus xi = 0.008 and clamped per neighbour: [0, 0, 1.792] -> K = [1, 1, 1e-4/1.7921].
    sq = jnp.asarray([[0.002, 0.004, 0.9]])
    valid = jnp.ones((1, 3), bool)
    reward = episodic_novelty(sq, valid, jnp.asarray(0.5), **KERNEL)
    kernel_sum = 1.0 + 1.0 + 1e-4 / (1.792 + 1e-4)
    expected = 1.0 / (math.sqrt(kernel_sum) + 0.001)
    np.testing.assert_allclose(reward, [expected], rtol=1e-6)
    # The widely copied `np.max(d - xi, 0)` reduces the list to its largest entry, 1.792, and
    # clamps every neighbour with it: K = 1e-4/1.7921 for all three, a reward near 72, not 0.707.
    scalar_clamp = 1.0 / (math.sqrt(3 * 1e-4 / (1.792 + 1e-4)) + 0.001)
    assert scalar_clamp > 70.0 and float(reward[0]) < 0.75
    # Absent neighbours (memory shorter than k) contribute nothing.
    padded = episodic_novelty(
        jnp.asarray([[0.002, 0.004, 0.9, 0.0]]),
        jnp.asarray([[True, True, True, False]]),
        jnp.asarray(0.5),
        **KERNEL,
    )
    np.testing.assert_allclose(padded, [expected], rtol=1e-6)


def test_rounding_level_distances_count_as_zero_while_every_distance_seen_is_rounding():
    # One observation embedded in two batches of different shapes differs by float32 rounding
    # (squared distance ~1e-13). While d_m^2 is itself that rounding, d^2 / d_m^2 would be 1,
    # a neighbour at the mean distance; the floor of d_m^2 keeps it at distance 0 (K = 1).
    valid = jnp.ones((1, 1), bool)
    exact = episodic_novelty(jnp.zeros((1, 1)), valid, jnp.asarray(0.0), **KERNEL)
    rounded = episodic_novelty(jnp.full((1, 1), 3e-13), valid, jnp.asarray(3e-13), **KERNEL)
    np.testing.assert_allclose(exact, [1 / 1.001], rtol=1e-6)
    np.testing.assert_allclose(rounded, exact, rtol=1e-6)
    # Real distances are measured against the running mean, however small it is above the floor.
    real = episodic_novelty(jnp.full((1, 1), 2e-6), valid, jnp.asarray(1e-6), **KERNEL)
    np.testing.assert_allclose(real, [1 / (math.sqrt(1e-4 / (1.992 + 1e-4)) + 0.001)], rtol=1e-5)


def test_ngu_similarity_compared_with_s_m_includes_c():
    # Four neighbours at distance 0: K = 1 each, sqrt(sum K) = 2, s = 2 + c = 2.001.
    sq, valid = jnp.zeros((1, 4)), jnp.ones((1, 4), bool)
    kernel = {**KERNEL, "max_similarity": 2.0005}  # between sqrt(sum K) and sqrt(sum K) + c
    np.testing.assert_allclose(episodic_novelty(sq, valid, jnp.asarray(1.0), **kernel), [0.0])
    kernel = {**KERNEL, "max_similarity": 2.0015}
    np.testing.assert_allclose(
        episodic_novelty(sq, valid, jnp.asarray(1.0), **kernel), [1 / 2.001], rtol=1e-6
    )


def test_lifelong_multiplier_is_one_plus_standardized_error_clipped_to_one_and_l():
    stats = ObsStats(jnp.asarray([2.0]), jnp.asarray([4.0]), jnp.asarray(10.0))  # mu 2, sigma 2
    errors = jnp.asarray([0.0, 2.0, 5.0, 100.0])  # alpha = 0, 1, 2.5, 50
    np.testing.assert_allclose(lifelong_multiplier(errors, stats, 5.0), [1.0, 1.0, 2.5, 5.0])


# --------------------------------------------------------------------------- episodic memory


def test_memory_is_a_ring_buffer_once_full():
    memory = jnp.zeros((1, 3, 1))
    size = jnp.zeros((1,), jnp.int32)
    for value in range(1, 6):  # insert 1..5 into 3 slots: 4 and 5 overwrite 1 and 2
        memory, size = memory_insert(memory, size, jnp.asarray([[float(value)]]), jnp.ones(1, bool))
    assert int(size[0]) == 5
    np.testing.assert_allclose(memory[0, :, 0], [4.0, 5.0, 3.0])
    sq, valid = nearest_sq_distances(memory, size, jnp.asarray([[1.0]]), k=10)
    np.testing.assert_allclose(sq[0], [4.0, 9.0, 16.0])  # 1 is gone: nearest is 3
    assert bool(valid.all())
    # A masked insert leaves memory and size alone.
    same, same_size = memory_insert(memory, size, jnp.asarray([[9.0]]), jnp.zeros(1, bool))
    np.testing.assert_allclose(same, memory)
    assert int(same_size[0]) == 5


def brute_force_nearest(memory: np.ndarray, size: int, query: np.ndarray, k: int) -> np.ndarray:
    filled = memory[: min(size, memory.shape[0])]
    return np.sort(np.sum(np.square(filled - query), axis=-1))[:k]


def test_blocked_nearest_neighbours_equal_a_brute_force_search_over_the_filled_slots():
    # Capacity past the first block and two more, the last overlapping the one before it; envs
    # whose memory is empty, inside the first block, at its edge, in each later block, and
    # wrapped around (ring). More live (env, block) pairs than one pass of the loop takes.
    capacity = KNN_FIRST_BLOCK + 2 * KNN_BLOCK + 76
    sizes = [0, 5, 3, KNN_FIRST_BLOCK, KNN_FIRST_BLOCK + 1, KNN_FIRST_BLOCK + KNN_BLOCK + 7]
    sizes += [capacity - 3, 3 * capacity + 11] * (KNN_ROWS // 2)
    assert sum(min(s, capacity) > KNN_FIRST_BLOCK for s in sizes) * 2 > KNN_ROWS
    rng = np.random.default_rng(0)
    memory = rng.normal(size=(len(sizes), capacity, 3)).astype(np.float32)
    query = rng.normal(size=(len(sizes), 3)).astype(np.float32)
    sq, valid = nearest_sq_distances(
        jnp.asarray(memory), jnp.asarray(sizes, jnp.int32), jnp.asarray(query), k=10
    )
    for env, size in enumerate(sizes):
        expected = brute_force_nearest(memory[env], size, query[env], 10)
        assert int(valid[env].sum()) == len(expected)
        np.testing.assert_allclose(np.asarray(sq[env])[: len(expected)], expected, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(sq[env])[len(expected) :], 0.0)
    # Every env filled past the first block and into the next ones, each to its own length.
    long_sizes = [KNN_FIRST_BLOCK + KNN_BLOCK + 1 + 37 * i for i in range(len(sizes))]
    sq, _ = nearest_sq_distances(
        jnp.asarray(memory), jnp.asarray(long_sizes, jnp.int32), jnp.asarray(query), k=10
    )
    for env, size in enumerate(long_sizes):
        expected = brute_force_nearest(memory[env], size, query[env], 10)
        np.testing.assert_allclose(np.asarray(sq[env]), expected, rtol=1e-6)


def test_blocked_nearest_neighbours_under_vmap_with_different_fills_per_seed():
    # vmap over seeds turns the loop over live blocks into one that runs until every seed is
    # done: a seed with one long memory and a seed with short ones must both stay exact.
    capacity = KNN_FIRST_BLOCK + 3 * KNN_BLOCK
    sizes = np.array([[2, 40, 7, capacity - 9], [3, 60, 1, 20]], np.int32)
    rng = np.random.default_rng(1)
    memory = rng.normal(size=(2, 4, capacity, 5)).astype(np.float32)
    query = rng.normal(size=(2, 4, 5)).astype(np.float32)
    search = jax.jit(jax.vmap(lambda m, s, q: nearest_sq_distances(m, s, q, k=4)))
    sq, valid = search(jnp.asarray(memory), jnp.asarray(sizes), jnp.asarray(query))
    for seed in range(2):
        for env in range(4):
            expected = brute_force_nearest(memory[seed, env], sizes[seed, env], query[seed, env], 4)
            assert int(valid[seed, env].sum()) == len(expected)
            np.testing.assert_allclose(
                np.asarray(sq[seed, env])[: len(expected)], expected, rtol=1e-6
            )


def test_episodic_novelty_of_repeated_observation_drops_and_resets_at_episode_start():
    spec = EnvSpec("test-vector", (5,), "float32", "vector", 3, 50)
    source = build("episodic", spec, **SMALL)
    steps, num_envs = 14, 2
    rng = np.random.default_rng(3)
    # Env 0 sees one observation over and over; env 1 a fresh one each step.
    repeated = np.broadcast_to(rng.normal(size=(1, 1, 5)), (steps + 1, 1, 5))
    fresh = rng.normal(size=(steps + 1, 1, 5))
    stream = np.concatenate([repeated, fresh], axis=1).astype(np.float32)
    done = np.zeros((steps, num_envs), bool)
    done[11, :] = True  # both episodes end after transition 11
    batch = transitions(stream[:-1], stream[1:], done=done)
    state = source.init(jax.random.PRNGKey(0), spec, num_envs)
    _, (reward, states) = run_rewards(source, state, batch)
    reward = np.asarray(reward)

    # Env 0: every neighbour is at distance 0 (K = 1), and the memory holds t + 1 copies when
    # transition t is scored: r = 1 / (sqrt(min(t + 1, k)) + c).
    for t in range(12):
        expected = 1.0 / (math.sqrt(min(t + 1, 10)) + 0.001)
        np.testing.assert_allclose(reward[t, 0], expected, rtol=1e-5)
    assert reward[11, 0] < 0.5 * reward[0, 0]
    # The new episode starts with an empty memory: the same observation is novel again.
    np.testing.assert_allclose(reward[12, 0], 1.0 / (1.0 + 0.001), rtol=1e-5)
    # s_t enters the memory when transition t is scored: t + 1 entries, from 1 again after the end.
    np.testing.assert_array_equal(np.asarray(states.size)[:, 0], [*range(1, 13), 1, 2])
    # Fresh observations stay more novel than the repeated one.
    assert reward[5:12, 1].min() > reward[5:12, 0].max()


@pytest.mark.parametrize(
    "capacity, lifelong",
    [(7, False), (KNN_FIRST_BLOCK + KNN_BLOCK + 30, True)],
    ids=["ring-buffer-wraps-inside-a-rollout", "memory-past-two-blocks-lifelong"],
)
def test_rollout_reward_equals_the_step_by_step_reward_and_state(capacity, lifelong):
    # The training loop scores a rollout at once (`rollout_reward`); `reward`, one step at a
    # time, is the definition. Envs end episodes never, rarely, often, and at the very first step
    # of a rollout; observations repeat (zero distances, ties) or are fresh; the memory wraps
    # (capacity 7 < T) or grows past the first two blocks of the search; f is retrained between
    # rollouts so memories hold embeddings of older f's.
    spec = EnvSpec("test-vector", (5,), "float32", "vector", 3, 100_000)
    source = build("episodic", spec, capacity=capacity, lifelong=lifelong, **SMALL)
    num_steps, num_envs, rollouts = 48, 5, 14
    rng = np.random.default_rng(7)
    palette = rng.normal(size=(6, 5)).astype(np.float32)
    end_rate = np.array([0.0, 0.005, 0.05, 0.3, 0.0])

    scan_rewards = jax.jit(functools.partial(scan_reward, source))
    batched = jax.jit(source.rollout_reward)
    update = jax.jit(source.update)
    state = source.init(jax.random.PRNGKey(0), spec, num_envs)
    stream = palette[rng.integers(0, 6, size=(num_envs,))]
    for r in range(rollouts):
        fresh = rng.normal(size=(num_steps, num_envs, 5)).astype(np.float32)
        repeat = palette[rng.integers(0, 6, size=(num_steps, num_envs))]
        next_obs = np.where(rng.random((num_steps, num_envs, 1)) < 0.5, fresh, repeat)
        done = rng.random((num_steps, num_envs)) < end_rate
        done[num_steps - 1, 4] = r % 3 == 0  # env 4: the next rollout opens an episode
        # s_t is the previous s_{t+1} except after an episode end, where it is a reset
        # observation of its own (the rollout path embeds s_t again only there).
        obs = np.concatenate([stream[None], next_obs[:-1]], axis=0)
        reset = rng.normal(size=(num_steps, num_envs, 5)).astype(np.float32)
        obs[1:] = np.where(done[:-1, :, None], reset[1:], obs[1:])
        batch = transitions(obs, next_obs, rng.integers(0, 3, (num_steps, num_envs)), done)
        expected, stepped = scan_rewards(state, batch)
        reward, scored = batched(state, batch)
        # The rollout path expands |q - m|^2 = |q|^2 + |m|^2 - 2 q.m: rounding, not exactness.
        np.testing.assert_allclose(reward, expected, rtol=2e-4, atol=1e-5)
        for field in ("memory", "distance_mean", "distance_count", "error_stats"):
            for a, b in zip(
                jax.tree_util.tree_leaves(getattr(scored, field)),
                jax.tree_util.tree_leaves(getattr(stepped, field)),
                strict=True,
            ):
                np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6, err_msg=field)
        np.testing.assert_array_equal(scored.size, stepped.size)
        np.testing.assert_array_equal(scored.episode_start, stepped.episode_start)
        state, _ = update(stepped, batch, jax.random.PRNGKey(r))
        stream = np.where(done[-1][:, None], reset[0], next_obs[-1])
    sizes = np.asarray(state.size)
    assert sizes[0] == rollouts * num_steps  # env 0 never ended an episode
    if capacity > KNN_FIRST_BLOCK + KNN_BLOCK:
        assert sizes.max() > KNN_FIRST_BLOCK + KNN_BLOCK  # the search reached the third block


# ------------------------------------------------------------------------------ learning


def test_icm_forward_error_falls_on_trained_transitions_not_on_unseen_ones():
    seen_cells = [(r, c) for r in range(SIDE) for c in range(2)]  # left half
    unseen_cells = [(r, c) for r in range(SIDE) for c in range(2, SIDE)]
    source = build(
        "icm",
        GRID_SPEC,
        eta=2.0,  # reward = ||phi_hat - phi||^2
        reward_clip=0.0,
        learning_rate=1e-3,
        update_epochs=8,
        num_minibatches=2,
        hidden=64,
        embedding_dim=16,
    )
    seen = as_rollout(*grid_transitions(seen_cells), envs=4)
    unseen = as_rollout(*grid_transitions(unseen_cells), envs=4)
    state = source.init(jax.random.PRNGKey(0), GRID_SPEC, 4)
    reward = jax.jit(jax.vmap(source.reward, in_axes=(None, 0)))
    update = jax.jit(source.update)

    def errors(state: Any) -> tuple[float, float]:
        return float(reward(state, seen)[0].mean()), float(reward(state, unseen)[0].mean())

    seen_before, _ = errors(state)
    key = jax.random.PRNGKey(1)
    for _ in range(20):
        key, k_update = jax.random.split(key)
        state, metrics = update(state, seen, k_update)
    seen_after, unseen_after = errors(state)
    assert seen_after < 0.2 * seen_before
    assert seen_after < 0.2 * unseen_after
    assert float(metrics["inverse_accuracy"]) > 0.5


@pytest.mark.parametrize("trunk", ["cnn", "mlp"])
def test_inverse_dynamics_accuracy_rises_above_chance_on_a_deterministic_grid(trunk):
    obs, actions, next_obs = grid_transitions(ALL_CELLS)  # 64 transitions, chance = 1/4
    model = make_inverse_dynamics(GRID_SPEC, 16, 64, "raw", 1e-3, 8, 2, trunk)
    rollout = as_rollout(obs, actions, next_obs, envs=4)
    state = model.init(jax.random.PRNGKey(0))

    @jax.jit
    def accuracy(params: Any) -> Any:
        logits = model.inverse_logits(params, jnp.asarray(obs), jnp.asarray(next_obs))
        return (jnp.argmax(logits, axis=-1) == actions).mean()

    before = float(accuracy(state.params))
    update = jax.jit(model.update)
    key = jax.random.PRNGKey(1)
    for _ in range(10):
        key, k_update = jax.random.split(key)
        state, metrics = update(state, rollout, k_update)
    after = float(accuracy(state.params))
    # The best possible is 60/64: at a corner the two blocked moves look alike.
    assert after > 0.6, (before, after)
    assert after > before + 0.2
    assert float(metrics["inverse_loss"]) < math.log(4) - 0.5


# ------------------------------------------------------------------------- jit, vmap, grids


def run_source(source: RewardSource, state: Any, key: Any, batch: Transition) -> Any:
    """What PPO asks of a source after `init`: the rewards of `batch: [T, N]`, an update, and the
    rewards of the next rollout (here the same batch again). Returns (rewards [2, T, N],
    the update's metrics)."""
    first, state = scan_reward(source, state, batch)
    state, metrics = source.update(state, batch, key)
    second, _ = scan_reward(source, state, batch)
    return jnp.stack([first, second]), metrics


def vmapped_over_seeds(sources: list[RewardSource], spec: EnvSpec, batch: Transition) -> Any:
    """`run_source` for each source and 2 seeds under one jit, vmapped over seeds after `init`.

    `init` runs seed after seed (`lax.map`): vmapped, the orthogonal initializer's QR becomes a
    batched LAPACK call, and in jaxlib 0.10.2 concurrent batched LAPACK calls can deadlock XLA's
    CPU thread pool (every worker waits for sub-tasks queued behind it; seen here with 2 cores).
    """
    num_envs = batch.action.shape[1]

    def run(keys: Any) -> Any:
        results = []
        for source in sources:
            states = jax.lax.map(lambda k, source=source: source.init(k, spec, num_envs), keys)
            step = jax.vmap(lambda s, k, source=source: run_source(source, s, k, batch))
            results.append(step(states, keys))
        return results

    return jax.jit(run)(jax.random.split(jax.random.PRNGKey(0), 2))


def vector_batch(steps: int, num_envs: int) -> tuple[EnvSpec, Transition]:
    spec = EnvSpec("test-vector", (6,), "float32", "vector", 4, 20)
    stream = jax.random.normal(jax.random.PRNGKey(1), (steps + 1, num_envs, 6))
    done = jnp.zeros((steps, num_envs), bool).at[3, 1].set(True)
    return spec, transitions(stream[:-1], stream[1:], jnp.ones((steps, num_envs)), done)


def test_e3b_runs_vmapped_over_seeds():
    spec, batch = vector_batch(8, 3)
    source = build("e3b", spec, bonus_on="next_obs", **SMALL)
    [(rewards, metrics)] = vmapped_over_seeds([source], spec, batch)
    assert rewards.shape == (2, 2, 8, 3)
    assert bool(jnp.isfinite(rewards).all()) and bool((rewards > 0).all())
    assert all(bool(jnp.isfinite(v).all()) for v in metrics.values())
    assert not np.allclose(rewards[0], rewards[1])  # each seed has its own embedding


def test_lifelong_modulation_scales_the_episodic_reward_by_one_to_l_vmapped_over_seeds():
    spec, batch = vector_batch(8, 3)
    plain = build("episodic", spec, **SMALL)
    lifelong = build("episodic", spec, lifelong=True, **SMALL)
    (episodic, _), (modulated, metrics) = vmapped_over_seeds([plain, lifelong], spec, batch)
    assert bool(jnp.isfinite(modulated).all())
    assert all(bool(jnp.isfinite(v).all()) for v in metrics.values())
    # Same key, same embedding: the first rollout, before RND's normalizer has statistics, is
    # unmodulated; after the update every reward is multiplied by min(max(alpha, 1), L).
    np.testing.assert_allclose(modulated[:, 0], episodic[:, 0], rtol=1e-6)
    ratio = np.asarray(modulated[:, 1] / episodic[:, 1])
    assert ratio.min() >= 1.0 - 1e-5 and ratio.max() <= 5.0 + 1e-4
    assert (ratio > 1.01).any()
    assert not np.allclose(episodic[0], episodic[1])  # each seed has its own embedding


def test_embedding_reads_integer_grid_codes():
    spec = EnvSpec("test-grid", (5, 5, 3), "uint8", "grid", 4, 20, (11, 6, 3))
    source = build("e3b", spec, encoding="one_hot", **SMALL)
    steps, num_envs = 6, 2
    codes = jax.random.randint(jax.random.PRNGKey(1), (steps + 1, num_envs, 5, 5, 3), 0, 3)
    codes = codes.astype(jnp.uint8)
    batch = transitions(codes[:-1], codes[1:], jnp.ones((steps, num_envs)))
    key = jax.random.PRNGKey(0)
    state = source.init(key, spec, num_envs)
    rewards, metrics = jax.jit(lambda s: run_source(source, s, key, batch))(state)
    assert rewards.shape == (2, steps, num_envs)
    assert bool((rewards[:, 1:] > 0).all()) and bool(jnp.isfinite(metrics["inverse_loss"]))


# ---------------------------------------------------------------------------- bad settings


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("e3b", {"bonus_on": "state"}, "sources.e3b.bonus_on must be one of obs, next_obs"),
        ("e3b", {"ridge": 0.0}, "sources.e3b.ridge must be > 0"),
        ("icm", {"beta": 1.5}, r"sources.icm.beta must be in \[0, 1\]"),
        ("icm", {"encoding": "one_hot"}, "grid observations only"),
        ("episodic", {"k": 0}, "sources.episodic.k must be >= 1"),
        ("episodic", {"max_modulation": 0.5}, "max_modulation"),
        ("episodic", {"embedding_dim": 0}, "sources.episodic.embedding_dim must be >= 1"),
        ("episodic", {"trunk": "transformer"}, "sources.episodic.trunk must be one of cnn, mlp"),
        ("episodic", {"update_proportion": 0.0}, r"sources.episodic.update_proportion must be in"),
        ("e3b", {"update_proportion": 1.5}, r"sources.e3b.update_proportion must be in \(0, 1\]"),
    ],
)
def test_bad_settings_are_user_errors_naming_the_option(name, overrides, message):
    spec = EnvSpec("test-vector", (6,), "float32", "vector", 4, 20)
    with pytest.raises(UserError, match=message):
        build(name, spec, **overrides)


@pytest.mark.parametrize(("proportion", "drawn"), [(1.0, 64), (0.25, 16), (0.3, 16)])
def test_fit_trains_each_pass_on_a_fresh_subset_of_the_given_proportion(proportion, drawn):
    """Each pass of `fit` uses round(p * B) samples (less the shuffle's remainder), each once,
    and different passes draw different subsets. Plain SGD with step 1 on loss -sum(w[index])
    adds 1 to w[i] every time sample i is used, so w counts the uses."""
    batch = {"index": jnp.arange(64)}
    optimizer = optax.sgd(1.0)
    params = {"w": jnp.zeros(64)}
    state = EmbeddingState(params, optimizer.init(params))

    def loss_fn(params, minibatch):
        loss = -jnp.sum(params["w"][minibatch["index"]])
        return loss, {"loss": loss}

    one, _ = fit(loss_fn, optimizer, state, batch, jax.random.PRNGKey(0), 1, 4, proportion)
    uses = np.asarray(one.params["w"])
    assert sorted(set(uses.tolist())) == ([1.0] if drawn == 64 else [0.0, 1.0])
    assert uses.sum() == drawn
    three, _ = fit(loss_fn, optimizer, state, batch, jax.random.PRNGKey(0), 3, 4, proportion)
    uses = np.asarray(three.params["w"])
    assert uses.sum() == 3 * drawn and uses.max() <= 3
    if drawn < 64:
        assert ((uses > 0) & (uses < 3)).any()  # not the same subset three times
