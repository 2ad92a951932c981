"""The PPO iteration as a pure function: every network kind trains, truncation is exact, and
nothing recompiles between updates."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from autotelic import config as config_module
from autotelic import envs
from autotelic.ppo import init_seeds, make_trainer


def tiny(kind: str, **extra) -> config_module.Config:
    data = {
        "env": "navix:Navix-Empty-5x5-v0",
        "ppo": {"num_envs": 4, "num_steps": 16, "num_minibatches": 2},
        "network": {"kind": kind},
        "env_options": {"max_steps": 10},
    }
    data.update(extra)
    return config_module.build(data)


@pytest.mark.parametrize("kind", ["cnn", "mlp", "gru"])
def test_each_network_kind_runs_updates_under_jit_and_vmap(kind):
    config = tiny(kind)
    env = envs.make(config.env, **config.env_options)
    trainer = make_trainer(config, env)
    update = jax.jit(jax.vmap(trainer.update))
    state = init_seeds(trainer, (0, 1))
    before = jax.tree_util.tree_leaves(state.params)
    for _ in range(3):
        state, metrics = update(state)
    assert update._cache_size() == 1, "the update must not recompile"
    assert np.all(metrics["finite"])
    assert np.all(metrics["update"] == 3)
    # horizon 10 with 16 steps per env per update: every env truncates at least once per update
    assert np.all(metrics["episodes"] >= 4)
    after = jax.tree_util.tree_leaves(state.params)
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    # the two seeds are different runs
    assert not np.allclose(metrics["loss/total"][0], metrics["loss/total"][1])
