"""xminigrid adapter: `xminigrid:<id>` with the id exactly as xminigrid 0.9 registers it.

xminigrid's own semantics are kept: reaching the goal pays ``1 - 0.9 * t / T`` (``t`` counted after
the step), the horizon ``T`` is the task's ``max_steps`` parameter (MiniGrid's formula for the
MiniGrid ports, ``3 * H * W`` for XLand) unless the `max_steps` option overrides it.

Resets: `xminigrid.make` returns the bare environment, whose `step` never resets (only its optional
`GymAutoResetWrapper` does, and that one drops the last observation). Stepping a finished episode
would run on past the horizon without ending again, so the adapter resets in the same call, as the
contract in `autotelic.envs.base` requires.

Termination versus truncation: the last timestep of an episode has ``step_type == LAST``; its
``discount`` is 0 when the goal (or any terminal tile) was reached and 1 when only the time limit
ran out. A goal reached exactly on the last allowed step is reported as terminated.

Observations are xminigrid's egocentric ``[V, V, 2]`` uint8 view (``V`` = 7 for most MiniGrid ports,
3 for Memory, 5 for XLand), rotated so the agent looks up from the bottom-centre cell, with nothing
occluded (walls do not hide what is behind them). Channel 0 is the tile id
(0..12: empty/out-of-bounds, floor, wall, ball, square, pyramid, goal, key, locked/closed/open door,
hex, star), channel 1 the colour id (0..11, 0 also for out-of-bounds). The carried object is not
shown.

XLand ids run with xminigrid's default empty rule set: no goal, so their episodes only ever
truncate. Rule sets from xminigrid's benchmarks are not wired in yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import UserError, unknown
from .base import EnvSpec, StepResult, auto_reset, lazy_auto_reset, strong_types


def xminigrid_ids() -> list[str]:
    """Every id xminigrid registers, sorted."""
    import xminigrid

    return sorted(xminigrid.registered_environments())


def observation_categories() -> tuple[int, ...]:
    """Number of values of each observation channel: tile ids, then colour ids.

    Out-of-bounds cells of the view are padded with 0 in both channels (the EMPTY tile and colour),
    so these counts cover every value an observation can hold.
    """
    from xminigrid.core.constants import NUM_COLORS, NUM_TILES

    return (int(NUM_TILES), int(NUM_COLORS))


@dataclass(frozen=True)
class XMiniGridEnv:
    """An xminigrid environment behind the `JaxEnv` contract (see `autotelic.envs.base`).

    The env params stay in the adapter (closed over under jit, never in the state): xminigrid marks
    most of them as static, so they cannot be vmapped or carried anyway.
    """

    xminigrid_id: str
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.xminigrid_id not in xminigrid_ids():
            raise unknown("xminigrid environment", self.xminigrid_id, xminigrid_ids())
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"env option max_steps must be >= 1, got {self.max_steps}.")
        # Build the env and spec now, not lazily inside a jit trace that would cache tracers.
        with jax.ensure_compile_time_eval():
            self.spec  # noqa: B018

    @cached_property
    def _env_params(self) -> tuple[Any, Any]:
        import xminigrid

        env, params = xminigrid.make(self.xminigrid_id)
        if self.max_steps is not None:
            params = params.replace(max_steps=self.max_steps)
        return env, params

    @cached_property
    def spec(self) -> EnvSpec:
        env, params = self._env_params
        goal = "no goal (empty rule set)" if self.xminigrid_id.startswith("XLand") else "1-0.9*t/T"
        return EnvSpec(
            env_id=f"xminigrid:{self.xminigrid_id}",
            obs_shape=tuple(int(d) for d in env.observation_shape(params)),
            obs_dtype="uint8",
            obs_kind="grid",
            num_actions=int(env.num_actions(params)),
            max_steps=int(params.max_steps),
            obs_categories=observation_categories(),
            description=(
                f"xminigrid semantics, T={params.max_steps}, reward {goal}, "
                f"{params.view_size}x{params.view_size} egocentric view"
            ),
            options=(("max_steps", self.max_steps),),
        )

    def _fresh(self, key: jax.Array) -> Any:
        env, params = self._env_params
        return strong_types(env.reset(params, key))

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        timestep = self._fresh(key)
        return timestep, timestep.observation

    def _transition(self, state: Any, action: jax.Array) -> tuple[Any, ...]:
        """xminigrid's transition, no reset: (next, reward, terminated, truncated, success)."""
        from xminigrid.types import StepType

        env, params = self._env_params
        nxt = strong_types(env.step(params, state, jnp.asarray(action, dtype=jnp.int32)))
        done = nxt.step_type == StepType.LAST
        terminated = done & (nxt.discount == 0.0)
        truncated = done & ~terminated
        reward = nxt.reward.astype(jnp.float32)
        return nxt, reward, terminated, truncated, done & (reward > 0.0)

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> tuple[Any, StepResult]:
        nxt, reward, terminated, truncated, success = self._transition(state, action)
        return auto_reset(
            nxt, self._fresh(key), _observation, reward, terminated, truncated, success
        )

    def step_batch(
        self, keys: jax.Array, states: Any, actions: jax.Array
    ) -> tuple[Any, StepResult]:
        """`vmap(step)` with the same results, resetting only the envs whose episode ended."""
        outcome = jax.vmap(self._transition)(states, actions)
        return lazy_auto_reset(keys, outcome[0], self._fresh, _observation, *outcome[1:])


def _observation(timestep: Any) -> jax.Array:
    return timestep.observation
