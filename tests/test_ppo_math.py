"""GAE and the value-head arithmetic against hand computations."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from autotelic.ppo import NormState, gae, update_norm


def reference_gae(rewards, values, next_values, final_values, terminated, truncated, gamma, lam,
                  episodic):  # fmt: skip
    """Plain-loop GAE for one head and one env: the textbook recursion, written out."""
    steps = len(rewards)
    advantages = np.zeros(steps)
    running = 0.0
    for t in reversed(range(steps)):
        if episodic:
            if terminated[t]:
                bootstrap = 0.0
            elif truncated[t]:
                bootstrap = final_values[t]
            else:
                bootstrap = next_values[t]
            cont = 0.0 if (terminated[t] or truncated[t]) else 1.0
        else:
            bootstrap = next_values[t]
            cont = 1.0
        delta = rewards[t] + gamma * bootstrap - values[t]
        running = delta + gamma * lam * cont * running
        advantages[t] = running
    return advantages


def test_gae_hand_computed_three_steps():
    # r = [1, 0, 2], V = [0.5, 0.4, 0.3], V(next after last) = 0.2, gamma 0.9, lambda 0.8,
    # no episode end. deltas: d2 = 2 + .9*.2 - .3 = 1.88; d1 = 0 + .9*.3 - .4 = -0.13;
    # d0 = 1 + .9*.4 - .5 = 0.86. A2 = 1.88; A1 = -0.13 + .72*1.88 = 1.2236;
    # A0 = 0.86 + .72*1.2236 = 1.740992.
    rewards = jnp.asarray([1.0, 0.0, 2.0]).reshape(3, 1, 1)
    values = jnp.asarray([0.5, 0.4, 0.3]).reshape(3, 1, 1)
    next_values = jnp.asarray([0.4, 0.3, 0.2]).reshape(3, 1, 1)
    false = jnp.zeros((3, 1), bool)
    adv, ret = gae(
        rewards, values, next_values, jnp.zeros_like(values), false, false,
        jnp.asarray([0.9]), jnp.asarray([True]), 0.8,
    )  # fmt: skip
    np.testing.assert_allclose(adv[:, 0, 0], [1.740992, 1.2236, 1.88], rtol=1e-6)
    np.testing.assert_allclose(ret[:, 0, 0], [2.240992, 1.6236, 2.18], rtol=1e-6)


def test_gae_truncation_bootstraps_from_final_observation_termination_does_not():
    # One step that truncates: A = r + gamma * V(final obs) - V. One that terminates: A = r - V.
    values = jnp.asarray([[[1.0]], [[1.0]]])
    rewards = jnp.asarray([[[0.5]], [[0.5]]])
    next_values = jnp.asarray([[[7.0]], [[7.0]]])  # the reset observation: must be ignored
    final_values = jnp.asarray([[[3.0]], [[3.0]]])
    truncated = jnp.asarray([[True], [False]])
    terminated = jnp.asarray([[False], [True]])
    adv, _ = gae(
        rewards, values, next_values, final_values, terminated, truncated,
        jnp.asarray([0.5]), jnp.asarray([True]), 0.95,
    )  # fmt: skip
    np.testing.assert_allclose(adv[:, 0, 0], [0.5 + 0.5 * 3.0 - 1.0, 0.5 - 1.0], rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_reference_with_episodic_and_non_episodic_heads(seed):
    rng = np.random.default_rng(seed)
    steps, envs = 40, 3
    gammas = np.asarray([0.99, 0.9, 0.5])
    episodic = np.asarray([True, False, True])
    rewards = rng.normal(size=(steps, envs, 3))
    values = rng.normal(size=(steps, envs, 3))
    next_values = rng.normal(size=(steps, envs, 3))
    final_values = rng.normal(size=(steps, envs, 3))
    ends = rng.random((steps, envs))
    terminated = ends < 0.1
    truncated = (ends >= 0.1) & (ends < 0.2)
    adv, ret = gae(
        *(jnp.asarray(x, jnp.float32) for x in (rewards, values, next_values, final_values)),
        jnp.asarray(terminated), jnp.asarray(truncated),
        jnp.asarray(gammas, jnp.float32), jnp.asarray(episodic), 0.9,
    )  # fmt: skip
    assert terminated.any() and truncated.any()
    for env in range(envs):
        for head in range(3):
            expected = reference_gae(
                rewards[:, env, head], values[:, env, head], next_values[:, env, head],
                final_values[:, env, head], terminated[:, env], truncated[:, env],
                gammas[head], 0.9, episodic[head],
            )  # fmt: skip
            np.testing.assert_allclose(adv[:, env, head], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ret, np.asarray(adv) + values, rtol=1e-5, atol=1e-5)


def test_per_source_advantages_sum_to_the_total():
    # GAE is linear in (reward, value): heads that share gamma and the episodic flag give
    # advantages that add up to the advantage of the summed reward under the summed value.
    rng = np.random.default_rng(7)
    steps, envs, heads = 30, 4, 3
    arrays = [jnp.asarray(rng.normal(size=(steps, envs, heads)), jnp.float32) for _ in range(4)]
    rewards, values, next_values, final_values = arrays
    terminated = jnp.asarray(rng.random((steps, envs)) < 0.1)
    truncated = jnp.asarray(rng.random((steps, envs)) < 0.05) & ~terminated
    gammas = jnp.full((heads,), 0.97)
    episodic = jnp.ones((heads,), bool)
    per_head, _ = gae(
        rewards, values, next_values, final_values, terminated, truncated, gammas, episodic, 0.9
    )
    summed = [x.sum(-1, keepdims=True) for x in arrays]
    total, _ = gae(*summed, terminated, truncated, gammas[:1], episodic[:1], 0.9)
    np.testing.assert_allclose(per_head.sum(-1), total[..., 0], rtol=1e-4, atol=1e-4)


def test_reward_normalization_divides_by_running_std_of_discounted_return():
    rewards = jnp.asarray([[1.0], [2.0], [3.0]])
    dones = jnp.zeros((3, 1), bool)
    zero = jnp.zeros(())
    state = NormState(jnp.zeros((1,)), zero, jnp.ones(()), zero)
    new, normalized = update_norm(state, rewards, dones, 0.5, episodic=False)
    # R: 1, 0.5*1+2 = 2.5, 0.5*2.5+3 = 4.25 ; population variance of those three values
    returns = np.asarray([1.0, 2.5, 4.25])
    np.testing.assert_allclose(new.var, returns.var(), rtol=1e-6)
    np.testing.assert_allclose(new.mean, returns.mean(), rtol=1e-6)
    np.testing.assert_allclose(new.discounted_return, [4.25], rtol=1e-6)
    np.testing.assert_allclose(normalized[:, 0], [1, 2, 3] / np.sqrt(returns.var()), rtol=1e-5)
    # a second batch merges moments exactly like one batch of all six values
    more = jnp.asarray([[0.0], [1.0], [0.5]])
    merged, _ = update_norm(new, more, dones, 0.5, episodic=False)
    all_returns = np.concatenate([returns, [2.125, 2.0625, 1.53125]])
    np.testing.assert_allclose(merged.var, all_returns.var(), rtol=1e-5)
    np.testing.assert_allclose(merged.count, 6)
