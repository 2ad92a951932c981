"""What every registered reward source must do inside the training loop, checked on each of
`source_names()` (so sources added later are covered without editing this file):

(a) `make_trainer`'s update runs under `jit(vmap(...))` over 2 seeds on a navix grid (init is
    vmapped eagerly, as `train.py` does, see `ppo.init_seeds`), and two updates give finite
    metrics, including `<name>/reward_raw`;
(b) the checkpoint round trip is exact: the state written by `runs.save_checkpoint` and read back by
    `runs.load_checkpoint` continues with bit-identical metrics and state.

Each source compiles one `update`, shared by both tests: about 15-40 s per source on a 2-core
CPU, nearly all of it compilation.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

import autotelic.envs as envs
from autotelic import runs
from autotelic.config import build
from autotelic.ppo import Trainer, host, init_seeds, make_trainer
from autotelic.rewards.base import (
    build_sources,
    random_rollouts,
    scan_reward,
    source_names,
)

ENV = "navix:Navix-Empty-5x5-v0"
SEEDS = (0, 1)


@functools.cache
def compiled(name: str) -> tuple[Trainer, Any]:
    """The trainer for source `name` (tiny PPO config) and its jitted, seed-vmapped update."""
    config = build(
        {
            "env": ENV,
            "rewards": [name],
            "seeds": list(SEEDS),
            "steps": 4 * 16 * 3,
            "ppo": {"num_envs": 4, "num_steps": 16, "update_epochs": 1, "num_minibatches": 2},
            "network": {"kind": "mlp", "hidden": 16},
        }
    )
    env = envs.make(config.env, **config.env_options)
    sources, params = build_sources(config.rewards, config.sources, env.spec)
    trainer = make_trainer(config, env, sources, params, config.rewards)
    return trainer, jax.jit(jax.vmap(trainer.update))


@functools.cache
def two_updates(name: str) -> tuple[Any, list[dict[str, np.ndarray]]]:
    trainer, update = compiled(name)
    state = init_seeds(trainer, SEEDS)  # eagerly, as train.py does (see ppo.init_seeds)
    history = []
    for _ in range(2):
        state, metrics = update(state)
        history.append(host(metrics))
    return state, history


@pytest.fixture(params=source_names(captions=False))  # caption sources: test_feedback_source
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_runs_under_jit_and_vmap_with_finite_metrics(name: str) -> None:
    _, history = two_updates(name)
    for metrics in history:
        assert f"{name}/reward_raw" in metrics
        for key, value in metrics.items():
            assert value.shape[0] == len(SEEDS), key
            assert np.all(np.isfinite(value)), f"{key} is not finite: {value}"
        assert np.all(metrics["finite"])
    assert np.all(history[-1]["update"] == 2)


def test_checkpoint_round_trip_continues_bit_identically(name: str, tmp_path: Path) -> None:
    _, update = compiled(name)
    state, _ = two_updates(name)
    host_state = host(state)
    runs.save_checkpoint(tmp_path, 2, host_state, {"source": name})
    restored, meta = runs.load_checkpoint(tmp_path, 2, host_state)
    assert meta["update"] == 2

    original_next, original_metrics = update(state)
    restored_next, restored_metrics = update(jax.device_put(restored))
    original_metrics, restored_metrics = host(original_metrics), host(restored_metrics)
    assert original_metrics.keys() == restored_metrics.keys()
    for key in original_metrics:
        np.testing.assert_array_equal(original_metrics[key], restored_metrics[key], err_msg=key)
    for a, b in zip(
        jax.tree_util.tree_leaves(host(original_next)),
        jax.tree_util.tree_leaves(host(restored_next)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


ROLLOUT_SCORED = [
    (name, {})
    for name in source_names(captions=False)
    if name in ("rnd", "noveld", "episodic", "e3b", "icm")
] + [("e3b", {"bonus_on": "next_obs"}), ("icm", {"trunk": "mlp"})]


@pytest.mark.parametrize(
    "name, options",
    ROLLOUT_SCORED,
    ids=[f"{n}{''.join(f'-{v}' for v in o.values())}" for n, o in ROLLOUT_SCORED],
)
def test_rollout_reward_equals_the_step_by_step_reward(name: str, options: dict) -> None:
    # The training loop scores a rollout at once where a source has `rollout_reward`; `reward`,
    # one step at a time, is the definition. Real navix transitions of a random policy (episodes
    # end inside rollouts), the source trained between rollouts.
    env = envs.make("navix:Navix-Empty-5x5-v0")
    config = build(
        {"env": "navix:Navix-Empty-5x5-v0", "rewards": [name], "sources": {name: options}}
    )
    (source,), _ = build_sources(config.rewards, config.sources, env.spec)
    assert source.rollout_reward is not None
    num_envs, num_steps = 4, 40

    collect = random_rollouts(env, num_envs, num_steps)
    stepped_fn = jax.jit(functools.partial(scan_reward, source))
    batched_fn = jax.jit(source.rollout_reward)
    update = jax.jit(source.update)
    key = jax.random.PRNGKey(0)
    env_state, obs = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    carry, state = (env_state, obs, key), source.init(key, env.spec, num_envs)
    ended = 0
    for rollout in range(4):
        carry, batch = collect(carry)
        ended += int(batch.done.sum())
        expected, stepped = stepped_fn(state, batch)
        reward, scored = batched_fn(state, batch)
        # Networks applied to one [T * N] batch round differently from T batches of N. E3B's
        # bonus phi^T C^-1 phi of a state close to those already in C is about 1 out of terms
        # of |phi|^2 / lambda (thousands here): that rounding shows at 1e-3 relative in the
        # small bonuses, so its errors are measured against the bonus scale.
        scale = float(np.abs(expected).max()) if name == "e3b" else 1.0
        np.testing.assert_allclose(reward, expected, rtol=2e-4, atol=1e-6 * scale)
        for a, b in zip(
            jax.tree_util.tree_leaves(scored), jax.tree_util.tree_leaves(stepped), strict=True
        ):
            leaf_scale = float(np.abs(b).max()) if name == "e3b" else 1.0
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5 * leaf_scale)
        state, _ = update(stepped, batch, jax.random.PRNGKey(rollout))
    assert ended > 0  # episodes ended inside rollouts
