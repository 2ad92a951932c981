"""gymnax adapter: `gymnax:<id>` with the id exactly as gymnax registers it, default env params.

Resets: gymnax's public `step` resets inside the call, with a key of its own choosing, and returns
the reset's observation (gymnax before 1.0 dropped the real last one altogether). The adapter calls
`step_env` (the bare transition, no reset) and resets itself with the step's key, keeping the real
last observation in `final_obs`. Needs gymnax >= 1.0 (checked at construction).

Termination versus truncation: since gymnax 1.0, `step_env`'s done flag is the natural end of the
episode only, and the time limit is `is_truncated` (``time >= max_steps_in_episode``). An episode
that ends naturally on the very step the time limit runs out is reported as terminated (absorbing
state: no bootstrap), never as both.

`success` (the episode reached its goal) is a judgement gymnax does not make. By default it is "the
episode terminated with a positive reward" (Catch, DeepSea, FrozenLake, FourRooms, ...); a few
classic tasks override it (`SUCCESS_ON_TERMINATION`): MountainCar and Acrobot terminate only by
reaching the goal (with reward -1 or 0), while CartPole and MinAtar terminate only by failing.

Observations: flat vectors are "vector" (float32 ``[D]``); ``[H, W, C]`` arrays (MinAtar, Pong) are
"image" (float32); 2-D arrays (Catch, DeepSea) become images ``[H, W, 1]``, except degenerate ones
(SimpleBandit's ``[1, 1]``), which are flattened into vectors; a discrete observation (FrozenLake's
cell index) is one-hot encoded into a "vector".

Only discrete action spaces are supported; continuous ones raise `UserError` at construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import UserError, unknown
from .base import EnvSpec, StepResult, strong_types, tree_select

# Registered ids left out of the listing, with the reason (no construction happens at listing time,
# so listing stays cheap and free of side effects).
EXCLUDED = {
    "MNISTBandit-bsuite": "downloads the MNIST data set over the network when constructed",
}

# Ids whose natural termination alone says whether the goal was reached (True) or not (False).
SUCCESS_ON_TERMINATION = {
    "MountainCar-v0": True,
    "Acrobot-v1": True,
    "CartPole-v1": False,
    "Asterix-MinAtar": False,
    "Breakout-MinAtar": False,
    "Freeway-MinAtar": False,
    "Seaquest-MinAtar": False,
    "SpaceInvaders-MinAtar": False,
}


def gymnax_ids() -> list[str]:
    """Every id gymnax registers, sorted, minus the ones in `EXCLUDED`."""
    import gymnax

    return sorted(name for name in gymnax.registered_envs if name not in EXCLUDED)


@dataclass(frozen=True)
class GymnaxEnv:
    """A gymnax environment behind the `JaxEnv` contract (see `autotelic.envs.base`).

    The env params stay in the adapter (closed over under jit, never in the state), so a vmapped
    rollout carries only the per-env state.
    """

    gymnax_id: str
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.gymnax_id in EXCLUDED:
            raise UserError(
                f"gymnax environment {self.gymnax_id!r} is not supported: "
                f"it {EXCLUDED[self.gymnax_id]}."
            )
        if self.gymnax_id not in gymnax_ids():
            raise unknown("gymnax environment", self.gymnax_id, gymnax_ids())
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"env option max_steps must be >= 1, got {self.max_steps}.")
        from gymnax.environments import spaces

        # Build the env and spec now, not lazily inside a jit trace that would cache tracers.
        with jax.ensure_compile_time_eval():
            env, params = self._env_params
            space = env.action_space(params)
            if not isinstance(space, spaces.Discrete):
                raise UserError(
                    f"gymnax environment {self.gymnax_id!r} has a continuous action space "
                    f"({type(space).__name__}); autotelic supports only discrete actions."
                )
            if not hasattr(env, "is_truncated"):
                raise UserError(
                    "the installed gymnax predates 1.0, whose step_env separates termination "
                    "from the time limit; autotelic needs gymnax>=1.0 (pip install -U gymnax)."
                )
            self.spec  # noqa: B018

    @cached_property
    def _env_params(self) -> tuple[Any, Any]:
        import gymnax

        env, params = gymnax.make(self.gymnax_id)
        if self.max_steps is not None:
            params = params.replace(max_steps_in_episode=self.max_steps)
        return env, params

    @cached_property
    def _obs_categories(self) -> int:
        """Size of a discrete observation space (one-hot encoded), 0 for array observations."""
        from gymnax.environments import spaces

        env, params = self._env_params
        space = env.observation_space(params)
        return int(space.n) if isinstance(space, spaces.Discrete) else 0

    def _observe(self, observation: jax.Array) -> jax.Array:
        if self._obs_categories:
            return jax.nn.one_hot(observation, self._obs_categories, dtype=jnp.float32)
        observation = jnp.asarray(observation, dtype=jnp.float32)
        if observation.ndim == 2 and min(observation.shape) > 1:
            return observation[..., None]
        if observation.ndim == 3:
            return observation
        return observation.reshape(-1)

    @cached_property
    def spec(self) -> EnvSpec:
        env, params = self._env_params
        obs = jax.eval_shape(self.reset, jax.random.key(0))[1]
        kind = "vector" if len(obs.shape) == 1 else "image"
        return EnvSpec(
            env_id=f"gymnax:{self.gymnax_id}",
            obs_shape=tuple(int(d) for d in obs.shape),
            obs_dtype="float32",
            obs_kind=kind,
            num_actions=int(env.action_space(params).n),
            max_steps=int(params.max_steps_in_episode),
            description=f"gymnax semantics, T={int(params.max_steps_in_episode)}",
            options=(("max_steps", self.max_steps),),
        )

    def _fresh(self, key: jax.Array) -> tuple[Any, jax.Array]:
        # The reset draws from the second half of the step key, and `step` draws the transition's
        # own noise from the first half, so `reset(key)` is exactly the reset `step(key, ...)` does.
        env, params = self._env_params
        observation, state = env.reset_env(jax.random.split(key)[1], params)
        return strong_types(state), self._observe(observation)

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        return self._fresh(key)

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> tuple[Any, StepResult]:
        env, params = self._env_params
        action = jnp.asarray(action, dtype=jnp.int32)
        observation, nxt, reward, done, _ = env.step_env(
            jax.random.split(key)[0], state, action, params
        )
        nxt = strong_types(nxt)
        terminated = jnp.asarray(done, dtype=jnp.bool_)
        truncated = jnp.asarray(env.is_truncated(nxt, params), dtype=jnp.bool_) & ~terminated
        reward = jnp.asarray(reward, dtype=jnp.float32)
        rule = SUCCESS_ON_TERMINATION.get(self.gymnax_id)
        success = terminated & (reward > 0.0) if rule is None else terminated & rule
        fresh_state, fresh_obs = self._fresh(key)
        ended = terminated | truncated
        final_obs = self._observe(observation)
        return tree_select(ended, fresh_state, nxt), StepResult(
            obs=jnp.where(ended, fresh_obs, final_obs),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            final_obs=final_obs,
            success=success,
        )
