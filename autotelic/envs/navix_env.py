"""navix adapter: `navix:<id>` with the id exactly as navix 0.7.4 registers it.

Two semantics, chosen by the `semantics` option:

* ``minigrid`` (default): MiniGrid's reward and horizon, so numbers compare with published MiniGrid
  results. Reaching the goal pays ``1 - 0.9 * t / T`` (``t`` counted after the step, as in
  MiniGrid's ``_reward``); ``T`` is MiniGrid's ``max_steps`` for the task family (DoorKey
  ``10 * size**2``, KeyCorridor ``30 * room_size**2``, FourRooms 100, the others ``4 * size**2``).
* ``navix``: exactly what ``navix.make(id)`` gives: reward 1 on the goal, navix's horizon.

Either way the adapter never exposes navix's deferred auto-reset (navix resets on the call *after*
a terminal step, and that call swallows the action): it steps the real dynamics and resets in the
same call, so every step the learner sees is a real transition.

Observations (`observation` option): ``symbolic`` (default) is navix's fully observable grid
``[H, W, 3]`` of (object, colour, state) codes; ``first_person`` is navix's egocentric
``[7, 7, 3]`` crop centred on the agent (not MiniGrid's forward view: no occlusion, agent in the
centre).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import UserError
from .base import EnvSpec, StepResult, strong_types, tree_select

# Value ranges of the three symbolic channels: object tag (0..10), colour (0..5, 6 = unset),
# state (direction 0..3 for the agent, open/closed/locked 0..2 for doors).
SYMBOLIC_CATEGORIES = (11, 7, 4)
SEMANTICS = ("minigrid", "navix")
OBSERVATIONS = ("symbolic", "first_person")


def navix_ids() -> list[str]:
    import navix

    return sorted(navix.registry())


def minigrid_max_steps(env_id: str, height: int, width: int) -> int:
    """MiniGrid's episode horizon for the task a navix id ports."""
    if "DoorKey" in env_id:
        return 10 * height * width
    corridor = re.search(r"KeyCorridorS(\d+)R(\d+)", env_id)
    if corridor:
        return 30 * int(corridor.group(1)) ** 2
    if "FourRooms" in env_id:
        return 100
    return 4 * height * width


@dataclass(frozen=True)
class NavixEnv:
    """A navix environment behind the `JaxEnv` contract (see `autotelic.envs.base`)."""

    navix_id: str
    semantics: str = "minigrid"
    observation: str = "symbolic"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.navix_id not in navix_ids():
            from ..errors import unknown

            raise unknown("navix environment", self.navix_id, navix_ids())
        if self.semantics not in SEMANTICS:
            raise UserError(
                f"env option semantics={self.semantics!r} is not one of {', '.join(SEMANTICS)}."
            )
        if self.observation not in OBSERVATIONS:
            raise UserError(
                f"env option observation={self.observation!r} is not one of "
                f"{', '.join(OBSERVATIONS)}."
            )
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"env option max_steps must be >= 1, got {self.max_steps}.")
        # Build the env and spec now: built lazily inside a jit trace, navix's jnp arithmetic
        # (e.g. `action_space.n`) gives tracers, which `int()` rejects and the cache would leak.
        with jax.ensure_compile_time_eval():
            self.spec  # noqa: B018

    @cached_property
    def _env(self) -> Any:
        import navix

        observation_fn = (
            navix.observations.symbolic
            if self.observation == "symbolic"
            else navix.observations.symbolic_first_person
        )
        probe = navix.make(self.navix_id)
        if self.max_steps is not None:
            horizon = self.max_steps
        elif self.semantics == "minigrid":
            horizon = minigrid_max_steps(self.navix_id, probe.height, probe.width)
        else:
            horizon = probe.max_steps
        return navix.make(self.navix_id, max_steps=horizon, observation_fn=observation_fn)

    @cached_property
    def spec(self) -> EnvSpec:
        env = self._env
        obs_shape = (env.height, env.width, 3) if self.observation == "symbolic" else (7, 7, 3)
        reward = (
            "1 - 0.9*t/T on success (MiniGrid)" if self.semantics == "minigrid" else "1 on goal"
        )
        return EnvSpec(
            env_id=f"navix:{self.navix_id}",
            obs_shape=obs_shape,
            obs_dtype="uint8",
            obs_kind="grid",
            num_actions=int(env.action_space.n),
            max_steps=int(env.max_steps),
            obs_categories=SYMBOLIC_CATEGORIES,
            description=f"{self.semantics} semantics, T={env.max_steps}, reward {reward}",
            options=(
                ("semantics", self.semantics),
                ("observation", self.observation),
                ("max_steps", self.max_steps),
            ),
        )

    def _observe(self, observation: jax.Array) -> jax.Array:
        limits = jnp.asarray(SYMBOLIC_CATEGORIES, dtype=jnp.uint8) - 1
        return jnp.minimum(observation.astype(jnp.uint8), limits)

    def _fresh(self, key: jax.Array) -> Any:
        from navix.rendering.cache import RenderingCache

        # The rendering cache holds RGB tiles (tens of kB per env) that symbolic observations
        # never read; a one-pixel placeholder keeps the env state small.
        cache = RenderingCache(patches=jnp.zeros((1, 1, 1, 3), dtype=jnp.uint8))
        return strong_types(self._env.reset(key, cache))

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        timestep = self._fresh(key)
        return timestep, self._observe(timestep.observation)

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> tuple[Any, StepResult]:
        # `_step` is navix's real transition; its public `step` would first reset a finished
        # episode and swallow the action, which we never let happen (we reset here instead).
        nxt = strong_types(self._env._step(state, action))
        terminated = nxt.step_type == 2
        truncated = nxt.step_type == 1
        raw_reward = nxt.reward.astype(jnp.float32)
        success = terminated & (raw_reward > 0)
        if self.semantics == "minigrid":
            progress = nxt.t.astype(jnp.float32) / self._env.max_steps
            reward = jnp.where(success, 1.0 - 0.9 * progress, jnp.minimum(raw_reward, 0.0))
        else:
            reward = raw_reward
        done = terminated | truncated
        fresh = self._fresh(key)
        new_state = tree_select(done, fresh, nxt)
        final_obs = self._observe(nxt.observation)
        obs = jnp.where(done, self._observe(fresh.observation), final_obs)
        return new_state, StepResult(
            obs=obs,
            reward=reward,
            terminated=terminated,
            truncated=truncated & ~terminated,
            final_obs=final_obs,
            success=success,
        )
