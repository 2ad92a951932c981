"""PPO updates for host environments (`gym:` ids): jitted policy and learner, envs in workers.

`make_host_update(trainer, config, pools)` returns `update(state) -> (state, metrics)` with exactly
the contract of `jax.jit(jax.vmap(trainer.update))` over S seeds: `state` is the stacked
`TrainState` `[S, ...]`, metrics are `[S]` arrays. Inside, one call is

    state, acted = act(state)                       jitted, vmapped over seeds
    for t in range(num_steps):
        pools step acted.action                     worker processes, all seeds at once
        state, record_t, acted = observe_act(state, acted, step)   jitted, vmapped: observe
                                                    step t, then act for t + 1 (observe alone
                                                    at the last step)
    state, metrics = learn(state, stack(records), initial_carry)   jitted, vmapped

which is `Trainer.update` with the `lax.scan` unrolled in Python and `env.step` replaced by the
pools, so the PPO math is the JAX path's own (tests/test_host_parity.py checks that both paths
give the same update on the same deterministic env).

State. Host env state is not a pytree, so `TrainState.env_state` holds a dummy `[S, N]` int32 and
the real envs live in the pools. On the first call after `init` or after a resume the pools are
reset (env seeds from the run seed and the update number, see `autotelic.envs.host`) and their
observations replace `state.obs`, with `episode_start` true, zero recurrent state and zero running
episode return/length. **A resume therefore restarts the episodes that were in progress** at the
checkpoint; everything else in the state (parameters, optimizer, reward normalizers, reward-source
states, keys, update counter) resumes exactly. Since no transition marks the cut, reward sources
with per-episode memory (and self-imitation's per-env episode window) carry the cut episode into
the first new one.

Captions. Pool `i` maps caption texts to ids with the vocabulary of seed `i`'s run directory
(`captions.jsonl`, append-only); it is flushed after every update, before any checkpoint can
refer to its ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config
from .envs.base import StepResult
from .envs.captions import VOCABULARY_FILE, CaptionVocabulary
from .envs.host import HostEnv, HostEnvError, HostPool
from .ppo import Trainer, TrainState


def make_pools(env: HostEnv, config: Config, run_dirs: Sequence[Path] | None) -> list[HostPool]:
    """One pool of `config.ppo.num_envs` envs per seed; seed `i`'s caption vocabulary lives in
    `run_dirs[i]` (in memory when `run_dirs` is None). Workers start at the first reset."""
    pools = []
    for i, seed in enumerate(config.seeds):
        path = Path(run_dirs[i]) / VOCABULARY_FILE if run_dirs is not None else None
        pools.append(HostPool(env, config.ppo.num_envs, seed, CaptionVocabulary(path)))
    return pools


class HostUpdate:
    """`update(state) -> (state, metrics)` over S seeds, stepping `pools[i]` for seed `i`."""

    def __init__(self, trainer: Trainer, config: Config, pools: Sequence[HostPool]) -> None:
        if len(pools) != len(config.seeds):
            raise ValueError(f"{len(pools)} pools for {len(config.seeds)} seeds; need one each")
        self.trainer = trainer
        self.config = config
        self.pools = list(pools)
        self.num_steps = config.ppo.num_steps
        self.needs_reset = True
        self.act = jax.jit(jax.vmap(trainer.act))
        self.observe = jax.jit(jax.vmap(trainer.observe))

        def observe_act(state: TrainState, acted: Any, env_state: Any, step: StepResult) -> Any:
            state, record = trainer.observe(state, acted, env_state, step)
            state, acted = trainer.act(state)
            return state, record, acted

        # one dispatch per env step instead of two: observe step t and act for step t + 1
        self.observe_act = jax.jit(jax.vmap(observe_act))
        self.learn = jax.jit(jax.vmap(trainer.learn))
        # Records [S, N, ...] -> rollout [S, T, N, ...] (time inside the seed axis, as vmap wants).
        self.stack = jax.jit(lambda records: jax.tree_util.tree_map(_stack_time, *records))

    def reset_envs(self, state: TrainState) -> TrainState:
        """Reset every pool and start fresh episodes from their observations."""
        updates = np.asarray(state.update)
        obs = np.stack([pool.reset(int(u)) for pool, u in zip(self.pools, updates, strict=True)])
        self.needs_reset = False
        return state._replace(
            obs=jnp.asarray(obs, dtype=state.obs.dtype),
            episode_start=jnp.ones_like(state.episode_start),
            carry=jnp.zeros_like(state.carry),
            episode_return=jnp.zeros_like(state.episode_return),
            episode_length=jnp.zeros_like(state.episode_length),
        )

    def step_pools(self, actions: np.ndarray) -> StepResult:
        """Step pool i with `actions[i]`, all pools at once; the results stacked `[S, N, ...]`."""
        for pool, seed_actions in zip(self.pools, actions, strict=True):
            pool.step_async(seed_actions)
        results = [pool.step_wait() for pool in self.pools]
        # numpy leaves: the jitted observe transfers them in its own call, with no dispatch each
        return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *results)

    def __call__(self, state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        try:
            return self._update(state)
        except HostEnvError as error:
            from .train import TrainingStoppedError

            self.close()
            run = self.config.out or "<run dir>"
            raise TrainingStoppedError(
                f"{error}\nThe last checkpoint is intact; continue with "
                f"`autotelic train --resume {run}`.",
                exit_code=1,
            ) from None

    def _update(self, state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        if self.needs_reset:
            state = self.reset_envs(state)
        initial_carry = state.carry
        records = []
        state, acted = self.act(state)
        for t in range(self.num_steps):
            step = self.step_pools(np.asarray(acted.action))
            if t + 1 < self.num_steps:
                state, record, acted = self.observe_act(state, acted, state.env_state, step)
            else:
                state, record = self.observe(state, acted, state.env_state, step)
            records.append(record)
        state, metrics = self.learn(state, self.stack(records), initial_carry)
        for pool in self.pools:
            pool.vocabulary.flush()
        return state, metrics

    @property
    def vocabularies(self) -> list[CaptionVocabulary]:
        """The caption vocabulary of each seed (what `autotelic.feedback` submits from)."""
        return [pool.vocabulary for pool in self.pools]

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


def _stack_time(*xs: jax.Array) -> jax.Array:
    return jnp.stack(xs, axis=1)


def make_host_update(trainer: Trainer, config: Config, pools: Sequence[HostPool]) -> HostUpdate:
    """The host-env counterpart of `jax.jit(jax.vmap(trainer.update))` (see the module doc)."""
    return HostUpdate(trainer, config, pools)
