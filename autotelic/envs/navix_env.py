"""navix adapter: `navix:<id>` with the id exactly as navix 0.7.4 registers it.

Two semantics, chosen by the `semantics` option:

* ``minigrid`` (default): MiniGrid's reward, horizon and action meanings, so numbers compare with
  published MiniGrid results. Reaching the goal pays ``1 - 0.9 * t / T`` (``t`` counted after the
  step, as in MiniGrid's ``_reward``); ``T`` is MiniGrid's ``max_steps`` for the task family
  (DoorKey ``10 * size**2``, KeyCorridor ``30 * room_size**2``, FourRooms 100, DistShift
  ``4 * width * height``, the others ``4 * size**2``). Three navix 0.7.4 dynamics that differ from
  MiniGrid's ``MiniGridEnv.step`` are replaced: stepping into lava ends the episode in every task
  (navix's DistShift lets the agent walk on lava); ``drop`` puts the carried key on the cell ahead
  only if that cell is empty and empties the agent's hands (navix keeps the key in the pocket, so
  a "dropped" key still opens doors, and drops it onto open doors or the goal); ``toggle`` closes
  an open door (navix doors never close). tests/test_minigrid_parity.py checks this against stock
  MiniGrid, step by step, on aligned layouts.
* ``navix``: exactly what ``navix.make(id)`` gives: reward 1 on the goal, navix's horizon (100)
  and navix's own action dynamics.

Either way the adapter never exposes navix's deferred auto-reset (navix resets on the call *after*
a terminal step, and that call swallows the action): it steps the real dynamics and resets in the
same call, so every step the learner sees is a real transition.

Observations (`observation` option):

* ``symbolic`` (default): navix's fully observable grid ``[H, W, 3]`` of (object, colour, state)
  codes, the agent drawn in as (agent, red, direction);
* ``first_person``: MiniGrid's egocentric ``[7, 7, 3]`` view, exactly stock MiniGrid's
  ``obs["image"]`` (`autotelic.envs.minigrid_view`: the window ahead of the agent, occlusion by
  walls and closed doors, the carried key shown at the agent's cell), computed from the symbolic
  grid; tests/test_minigrid_parity.py compares it with stock's after every step;
* ``navix_first_person``: navix's own ``symbolic_first_person`` crop, which sees through walls
  and never shows what is carried (kept for comparison; before 2026-11-22 this was what
  ``first_person`` meant).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import jax.numpy as jnp

from ..errors import UserError
from .base import EnvSpec, StepResult, auto_reset, lazy_auto_reset, strong_types
from .minigrid_view import (
    EMPTY,
    GREY,
    KEY,
    SEE_THROUGH_FAMILIES,
    VIEW,
    WALL,
    code,
    egocentric_view,
)

Array = jax.Array

# Value ranges of the three symbolic channels: object tag (0..10), colour (0..5, 6 = unset),
# state (direction 0..3 for the agent, open/closed/locked 0..2 for doors).
SYMBOLIC_CATEGORIES = (11, 7, 4)
SEMANTICS = ("minigrid", "navix")
OBSERVATIONS = ("symbolic", "first_person", "navix_first_person")


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


def _cell_ahead(state: Any) -> Array:
    from navix.grid import translate

    player = state.get_player(idx=0)
    return translate(player.position, player.direction)


def minigrid_drop(state: Any) -> Any:
    """MiniGrid's ``drop``: the carried object goes to the cell ahead if that cell holds nothing
    (no wall, no door, goal, lava or other object), and the agent's hands are then empty."""
    from navix.components import DISCARD_PILE_COORDS, EMPTY_POCKET_ID
    from navix.entities import Entities
    from navix.grid import positions_equal

    if Entities.KEY not in state.entities:  # keys are the only objects navix lets one carry
        return state
    player = state.get_player(idx=0)
    ahead = _cell_ahead(state)
    empty = state.grid[tuple(ahead)] == 0
    for entity in state.entities.values():
        empty &= ~jnp.any(positions_equal(entity.position, ahead))
    keys = state.get_keys()
    carried = (keys.id == player.pocket) & positions_equal(keys.position, DISCARD_PILE_COORDS)
    drop = empty & (player.pocket != EMPTY_POCKET_ID) & carried  # [num_keys]
    keys = keys.replace(position=jnp.where(drop[:, None], ahead, keys.position))
    pocket = jnp.where(jnp.any(drop), EMPTY_POCKET_ID, player.pocket).astype(player.pocket.dtype)
    state = state.set_keys(keys)
    return state.set_player(player.replace(pocket=pocket))


def minigrid_toggle(state: Any) -> Any:
    """MiniGrid's ``toggle`` on doors: a locked door opens (and unlocks) if the agent carries its
    key, which it keeps; an unlocked door switches between open and closed."""
    from navix.entities import Entities
    from navix.grid import positions_equal

    if Entities.DOOR not in state.entities:
        return state
    player = state.get_player(idx=0)
    ahead = _cell_ahead(state)
    doors = state.get_doors()
    here = positions_equal(ahead, doors.position)  # [num_doors]
    is_open = doors.open.astype(bool)
    locked = doors.locked
    unlock = here & ~is_open & locked & (player.pocket == doors.requires)
    flip = here & ~locked
    now_open = jnp.where(unlock, True, jnp.where(flip, ~is_open, is_open))
    doors = doors.replace(
        open=now_open.astype(doors.open.dtype),
        requires=jnp.where(unlock, jnp.asarray(-1, doors.requires.dtype), doors.requires),
    )
    opened = jnp.any(now_open & ~is_open)
    events = jax.lax.cond(
        opened,
        lambda: state.events.record_door_opening(doors, ahead),
        lambda: state.events,
    )
    state = state.set_doors(doors)
    return state.set_events(events)


def minigrid_first_person(grid: Array, state: Any, see_through_walls: bool = False) -> Array:
    """MiniGrid's 7x7 view (see `autotelic.envs.minigrid_view`) of a navix state whose symbolic
    grid is `grid: uint8[H, W, 3]`.

    navix parks a carried key at grid cell (0, W-1), a corner of the outer wall, so the symbolic
    grid shows the carried key there: it is read off as the carried object and the corner is
    restored to the wall it is in MiniGrid.
    """
    corner = grid[0, -1]
    carried = corner[0] == KEY
    carrying = jnp.where(carried, corner, code(EMPTY, 0))
    grid = grid.at[0, -1].set(jnp.where(carried, code(WALL, GREY), corner))
    player = state.get_player(idx=0)
    position = jnp.asarray(player.position, jnp.int32).reshape(2)
    direction = jnp.asarray(player.direction, jnp.int32)
    return egocentric_view(grid, position, direction, carrying, see_through_walls)


def minigrid_action_set() -> tuple[Any, ...]:
    """MiniGrid's seven actions in MiniGrid's order, with MiniGrid's ``drop`` and ``toggle``."""
    from navix import actions

    return (
        actions.rotate_ccw,  # 0 left
        actions.rotate_cw,  # 1 right
        actions.forward,  # 2 forward
        actions.pickup,  # 3 pickup
        minigrid_drop,  # 4 drop
        minigrid_toggle,  # 5 toggle
        actions.done,  # 6 done
    )


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

        observation_fn = {
            "symbolic": navix.observations.symbolic,
            "first_person": navix.observations.symbolic,  # the view is cut from it in _observe
            "navix_first_person": navix.observations.symbolic_first_person,
        }[self.observation]
        probe = navix.make(self.navix_id)
        if self.max_steps is not None:
            horizon = self.max_steps
        elif self.semantics == "minigrid":
            horizon = minigrid_max_steps(self.navix_id, probe.height, probe.width)
        else:
            horizon = probe.max_steps
        dynamics: dict[str, Any] = {}
        if self.semantics == "minigrid":
            dynamics = {
                "action_set": minigrid_action_set(),
                "termination_fn": navix.terminations.compose(
                    probe.termination_fn, navix.terminations.on_lava_fall
                ),
            }
        return navix.make(
            self.navix_id, max_steps=horizon, observation_fn=observation_fn, **dynamics
        )

    @property
    def _see_through_walls(self) -> bool:
        family = self.navix_id.removeprefix("Navix-")
        return family.startswith(SEE_THROUGH_FAMILIES)

    @cached_property
    def spec(self) -> EnvSpec:
        env = self._env
        obs_shape = (
            (env.height, env.width, 3) if self.observation == "symbolic" else (VIEW, VIEW, 3)
        )
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

    def _observe(self, timestep: Any) -> jax.Array:
        limits = jnp.asarray(SYMBOLIC_CATEGORIES, dtype=jnp.uint8) - 1
        observation = jnp.minimum(timestep.observation.astype(jnp.uint8), limits)
        if self.observation == "first_person":
            return minigrid_first_person(observation, timestep.state, self._see_through_walls)
        return observation

    def _fresh(self, key: jax.Array) -> Any:
        from navix.rendering.cache import RenderingCache

        # The rendering cache holds RGB tiles (tens of kB per env) that symbolic observations
        # never read; a one-pixel placeholder keeps the env state small.
        cache = RenderingCache(patches=jnp.zeros((1, 1, 1, 3), dtype=jnp.uint8))
        return strong_types(self._env.reset(key, cache))

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        timestep = self._fresh(key)
        return timestep, self._observe(timestep)

    def _transition(self, state: Any, action: jax.Array) -> tuple[Any, ...]:
        """navix's real transition, no reset: (next, reward, terminated, truncated, success).

        `_step` is navix's transition; its public `step` would first reset a finished episode and
        swallow the action, which we never let happen (we reset in `step` instead)."""
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
        return nxt, reward, terminated, truncated, success

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> tuple[Any, StepResult]:
        nxt, reward, terminated, truncated, success = self._transition(state, action)
        return auto_reset(
            nxt, self._fresh(key), self._observe, reward, terminated, truncated, success
        )

    def step_batch(
        self, keys: jax.Array, states: Any, actions: jax.Array
    ) -> tuple[Any, StepResult]:
        """`vmap(step)` with the same results, resetting only the envs whose episode ended
        (`lazy_auto_reset`: navix's DoorKey reset costs about 25 of its steps)."""
        outcome = jax.vmap(self._transition)(states, actions)
        return lazy_auto_reset(keys, outcome[0], self._fresh, self._observe, *outcome[1:])
