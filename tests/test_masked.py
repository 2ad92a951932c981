"""`apply_masked`: a function evaluated on the masked entries of a batch only."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autotelic.config import NetworkConfig
from autotelic.envs.base import EnvSpec
from autotelic.masked import apply_masked
from autotelic.networks import make_network

STEPS, ENVS, ROWS = 8, 32, 16


def random_mask(count: int) -> jnp.ndarray:
    mask = np.zeros(STEPS * ENVS, bool)
    mask[np.random.default_rng(count).permutation(STEPS * ENVS)[:count]] = True
    return jnp.asarray(mask.reshape(STEPS, ENVS))


@pytest.mark.parametrize("count", [0, 5, ROWS, 150, STEPS * ENVS])
def test_values_of_truncated_observations_equal_the_networks_and_zero_elsewhere(count):
    """How the PPO loop gets V(s_{t+1}) of truncated transitions: the network's values where
    the mask is set (also when that takes several passes of ROWS), 0 elsewhere."""
    spec = EnvSpec("probe", (6,), "float32", "vector", 3, 100)
    network = make_network(spec, NetworkConfig(kind="mlp"), num_heads=3)
    params = network.init(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (STEPS, ENVS, 6))
    mask = random_mask(count)

    def values(rows_obs):
        start = jnp.zeros((rows_obs.shape[0],), bool)
        return network.apply(params, network.initial_carry(rows_obs.shape[0]), rows_obs, start)[2]

    got = np.asarray(jax.jit(lambda o, m: apply_masked(values, o, m, ROWS))(obs, mask))
    every = np.asarray(values(obs.reshape(STEPS * ENVS, 6))).reshape(STEPS, ENVS, 3)
    masked = np.asarray(mask)
    assert got.shape == (STEPS, ENVS, 3)
    np.testing.assert_allclose(got[masked], every[masked], rtol=1e-5, atol=1e-6)
    assert (got[~masked] == 0.0).all()


def test_under_vmap_each_member_gets_its_own_entries_and_integer_outputs_keep_their_dtype():
    """Batch members with different mask counts (one empty): each gets its own results."""
    x = jnp.arange(2 * STEPS * ENVS, dtype=jnp.int32).reshape(2, STEPS, ENVS)
    masks = jnp.stack([random_mask(0), random_mask(40)])

    def fn(rows_x):
        return jnp.stack([rows_x * 3 + 1, -rows_x], axis=-1)

    got = np.asarray(jax.jit(jax.vmap(lambda a, m: apply_masked(fn, a, m, ROWS)))(x, masks))
    want = np.where(np.asarray(masks)[..., None], np.asarray(fn(x)), 0)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)
