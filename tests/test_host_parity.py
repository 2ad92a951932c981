"""The host path does the JAX path's PPO math: the same deterministic env, written once as a JAX env
(stepped inside `jax.jit(jax.vmap(trainer.update))`) and once as a Gymnasium env (stepped in
worker processes by `autotelic.host_driver`), gives the same updates.

The env is a corridor of `LENGTH` cells: action 1 moves right, 0 left; reaching the right end
pays 1 and terminates; every step costs 0.01 per cell from the end; after `HORIZON` steps the
episode is truncated. With 16 steps per update both termination and truncation (bootstrapped from
the real last observation) occur, so every branch of GAE is exercised.

This module is imported by the worker processes too (`gym:test_host_parity:AutotelicChain-v0`),
which is why the Gymnasium env registers itself at import.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np

from autotelic import config as config_module
from autotelic.envs.base import EnvSpec, StepResult
from autotelic.host_driver import make_host_update, make_pools
from autotelic.ppo import init_seeds, make_trainer
from autotelic.rewards.base import build_sources
from autotelic.train import prepare

LENGTH = 4
HORIZON = 7
GYM_ID = "AutotelicChain-v0"


def step_reward(position: Any) -> Any:
    return (position == LENGTH - 1) * 1.0 - 0.01 * (LENGTH - 1 - position)


class ChainGym(gymnasium.Env):
    observation_space = gymnasium.spaces.Box(0.0, 1.0, (LENGTH,), np.float32)
    action_space = gymnasium.spaces.Discrete(2)

    def _obs(self) -> np.ndarray:
        return np.eye(LENGTH, dtype=np.float32)[self.position]

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position, self.t = 0, 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.position = int(np.clip(self.position + (1 if action == 1 else -1), 0, LENGTH - 1))
        self.t += 1
        terminated = self.position == LENGTH - 1
        truncated = self.t >= HORIZON
        reward = float(np.float32(step_reward(self.position)))
        return self._obs(), reward, terminated, truncated, {"success": terminated}


if GYM_ID not in gymnasium.registry:
    gymnasium.register(GYM_ID, entry_point=ChainGym)


class ChainJax:
    """The same corridor as a JAX-native env (state: position, t)."""

    spec = EnvSpec("toy:chain", (LENGTH,), "float32", "vector", 2, HORIZON)

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        state = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
        return state, jax.nn.one_hot(state[0], LENGTH, dtype=jnp.float32)

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> tuple[Any, StepResult]:
        position, t = state
        position = jnp.clip(position + jnp.where(action == 1, 1, -1), 0, LENGTH - 1)
        t = t + 1
        terminated = position == LENGTH - 1
        truncated = (t >= HORIZON) & ~terminated
        done = terminated | truncated
        final_obs = jax.nn.one_hot(position, LENGTH, dtype=jnp.float32)
        next_state = (jnp.where(done, 0, position), jnp.where(done, 0, t))
        obs = jax.nn.one_hot(next_state[0], LENGTH, dtype=jnp.float32)
        reward = step_reward(position).astype(jnp.float32)
        return next_state, StepResult(obs, reward, terminated, truncated, final_obs, terminated)


def config_for(kind: str, rewards: tuple[str, ...]) -> config_module.Config:
    """Two seeds (a pool each), small nets, 3 updates of 4 envs x 16 steps."""
    return config_module.build(
        {
            "env": f"gym:test_host_parity:{GYM_ID}",
            "env_options": {"workers": 1},
            "seeds": [0, 1],
            "steps": 3 * 4 * 16,
            "rewards": list(rewards),
            "ppo": {"num_envs": 4, "num_steps": 16, "num_minibatches": 2, "update_epochs": 2},
            "network": {"kind": kind, "hidden": 16, "gru_hidden": 16},
        }
    )


def test_host_path_and_jax_path_give_the_same_updates():
    # A recurrent policy (episode starts reset its state) and an intrinsic head (SimHash counts of
    # the real last observation, normalized in `learn`): every piece of `observe` and `learn` runs.
    config = config_for("gru", ("count",))
    host_setup = prepare(config)  # the CLI's own construction for a gym: env
    assert host_setup.env.spec.obs_shape == ChainJax.spec.obs_shape
    pools = make_pools(host_setup.env, config, None)
    host_update = make_host_update(host_setup.trainer, config, pools)

    sources, params = build_sources(config.rewards, config.sources, ChainJax.spec)
    jax_trainer = make_trainer(config, ChainJax(), sources, params, config.rewards)
    jax_update = jax.jit(jax.vmap(jax_trainer.update))

    # One init for both (it is the same network and key; eager init is the slow part here). The
    # host state differs only where `init` met the env: a dummy env state and a placeholder
    # observation, which the driver replaces with the pools' first observations.
    jax_state = init_seeds(jax_trainer, config.seeds)
    host_init = jax.vmap(host_setup.trainer.init)
    host_shapes = jax.eval_shape(host_init, jax.random.split(jax.random.PRNGKey(0), 2))
    host_state = jax_state._replace(
        env_state=jnp.zeros(host_shapes.env_state.shape, host_shapes.env_state.dtype),
        obs=jnp.zeros(host_shapes.obs.shape, host_shapes.obs.dtype),
    )
    terminations = truncations = 0
    try:
        for _ in range(3):
            host_state, host_metrics = host_update(host_state)
            jax_state, jax_metrics = jax_update(jax_state)
            assert set(host_metrics) == set(jax_metrics)
            successes = int(np.sum(jax_metrics["episode_success_sum"]))
            terminations += successes
            truncations += int(np.sum(jax_metrics["episodes"])) - successes
            for name, value in jax_metrics.items():
                np.testing.assert_allclose(
                    np.asarray(host_metrics[name]), np.asarray(value), rtol=1e-5, atol=1e-6,
                    err_msg=name,
                )  # fmt: skip
        # every leaf of the state but the env state (a dummy on the host path) agrees
        for field in host_state._fields:
            if field == "env_state":
                continue
            host_leaves = jax.tree_util.tree_leaves(getattr(host_state, field))
            jax_leaves = jax.tree_util.tree_leaves(getattr(jax_state, field))
            assert len(host_leaves) == len(jax_leaves), field
            for a, b in zip(host_leaves, jax_leaves, strict=True):
                np.testing.assert_allclose(
                    np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=field
                )
    finally:
        host_update.close()
    # both kinds of episode end happened, so both GAE bootstraps were compared
    assert terminations > 0 and truncations > 0
    assert host_update.act._cache_size() == 1, "the host path's act must not recompile"
    assert host_update.observe._cache_size() == 1, "the host path's observe must not recompile"
    assert host_update.learn._cache_size() == 1, "the host path's learn must not recompile"
