"""Networks: shapes for every kind, GRU hidden-state resets at episode boundaries, and the 2x2
convolution written as a matmul equals a real convolution."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autotelic import envs
from autotelic.config import NetworkConfig
from autotelic.networks import Conv2x2, make_network, max_pool_2x2


@pytest.mark.parametrize("kind", ["cnn", "mlp", "gru"])
@pytest.mark.parametrize(
    ("env_id", "options"),
    [
        ("navix:Navix-DoorKey-5x5-v0", {}),
        ("navix:Navix-DoorKey-16x16-v0", {}),
        ("navix:Navix-DoorKey-8x8-v0", {"observation": "first_person"}),
        ("gymnax:CartPole-v1", {}),
    ],
)
def test_every_network_gives_logits_and_one_value_per_head(kind, env_id, options):
    env = envs.make(env_id, **options)
    network = make_network(env.spec, NetworkConfig(kind=kind), num_heads=3)
    params = network.init(jax.random.PRNGKey(0))
    _, obs = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(1), 5))
    carry, logits, values = network.apply(params, network.initial_carry(5), obs, jnp.ones(5, bool))
    assert logits.shape == (5, env.spec.num_actions)
    assert values.shape == (5, 3)
    assert carry.shape == (5, network.carry_size)
    assert np.isfinite(np.asarray(logits)).all()


def test_gru_state_resets_where_an_episode_starts():
    env = envs.make("navix:Navix-DoorKey-5x5-v0")
    network = make_network(env.spec, NetworkConfig(kind="gru"), num_heads=1)
    params = network.init(jax.random.PRNGKey(0))
    steps = 8
    obs = jax.random.randint(jax.random.PRNGKey(2), (steps, 2, 5, 5, 3), 0, 4).astype(jnp.uint8)
    starts = jnp.zeros((steps, 2), bool).at[0].set(True).at[5, 0].set(True)

    def run(obs, starts, carry):
        def step(c, x):
            c, logits, values = network.apply(params, c, *x)
            return c, (logits, values)

        return jax.lax.scan(step, carry, (obs, starts))[1]

    logits, _ = run(obs, starts, network.initial_carry(2))
    # env 0 starts a new episode at t=5: from there it must match a fresh run from zero state
    fresh, _ = run(obs[5:], starts[5:].at[0].set(True), network.initial_carry(2))
    np.testing.assert_allclose(logits[5:, 0], fresh[:, 0], rtol=1e-6, atol=1e-6)
    # env 1 does not: its memory of t<5 must change its outputs
    assert not np.allclose(logits[5:, 1], fresh[:, 1], atol=1e-4)


def test_conv2x2_as_matmul_equals_a_valid_convolution():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 5, 4))
    ours = Conv2x2(7)
    params = ours.init(jax.random.PRNGKey(1), x)
    kernel = params["params"]["Dense_0"][
        "kernel"
    ]  # [4 * C, F], views ordered (0,0),(0,1),(1,0),(1,1)
    bias = params["params"]["Dense_0"]["bias"]
    conv = nn.Conv(7, (2, 2), padding="VALID")
    conv_kernel = kernel.reshape(2, 2, 4, 7)
    expected = conv.apply({"params": {"kernel": conv_kernel, "bias": bias}}, x)
    np.testing.assert_allclose(ours.apply(params, x), expected, rtol=1e-5, atol=1e-5)


def test_max_pool_2x2_matches_flax():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 6, 3))
    expected = nn.max_pool(x, (2, 2), strides=(2, 2))
    np.testing.assert_array_equal(max_pool_2x2(x), expected)
