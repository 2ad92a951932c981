"""KeyCorridor in pure JAX: `grid:KeyCorridorS3R3` (also S3R1, S3R2, S4R3, S5R3, S6R3).

The environment comes from the "Minimalistic Gridworld Environment" (MiniGrid; Chevalier-Boisvert,
Willems and Pal, 2018; now Farama's Minigrid, Chevalier-Boisvert et al., "Minigrid & Miniworld",
NeurIPS 2023 Datasets and Benchmarks); the KeyCorridor task comes from BabyAI (Chevalier-Boisvert
et al., ICLR 2019) and is one of the MiniGrid suite's environments. This module is our own
implementation, written against the behaviour of stock MiniGrid 3.2 (`KeyCorridorEnv`, `RoomGrid`,
`MiniGridEnv`); tests/test_keycorridor.py compares it with the stock env step by step. It exists
because navix 0.7.4's KeyCorridor cannot be solved (its doors sit on wall cells and picking up the
ball never ends the episode).

Layout (``room_size`` S, ``num_rows`` R, three columns of S x S rooms sharing their walls, a grid
of ``3(S-1)+1`` columns by ``R(S-1)+1`` rows; 7 x 7 for S3R3), drawn from the same distribution
as stock (not the same layouts for the same seed: the random streams differ):

* every room wall has one door slot, at a uniform position along the wall's inside;
* the walls between the rooms of the middle column are removed: that column is the hallway;
* a locked door of a uniform colour in the left wall of the room of column 2 at a uniform row;
  the ball, of a uniform colour, at a uniform free cell inside that room;
* the key, of the locked door's colour, at a uniform free cell inside a room of column 0 at a
  uniform row;
* the agent uniform over (cell, direction) pairs in the rectangle of the middle room of the
  hallway (row R // 2), on a free cell, facing a free cell or a wall (stock's rejection loop);
* stock's `connect_all`: closed, unlocked doors of uniform colours are added on the door slots of
  uniformly drawn walls (never the hallway, never a wall of the locked room) until every room is
  reachable from the agent's. Drawing uniform (room, side) pairs with rejection adds the
  remaining walls in a uniformly random order, so here one random order of the candidate walls
  is drawn and its shortest prefix that connects every room is kept.

Every layout is solvable: the locked room has no door but the locked one, so every other room,
the key's included, is reachable through unlocked doors.

Dynamics are MiniGrid's seven actions: 0 left, 1 right, 2 forward (into empty cells and open
doors only), 3 pickup (the key or ball ahead, hands empty), 4 drop (onto the empty cell ahead),
5 toggle (an unlocked door opens or closes; a locked door unlocks and opens when the agent carries
the key of its colour, which it keeps), 6 done (nothing). Picking up the ball ends the episode
(``terminated``) with reward ``1 - 0.9 * t / T`` (``t`` counted after the step); otherwise the
reward is 0 and the episode is truncated at ``T = 30 * S**2`` steps (270 for S3R3; the
``max_steps`` option overrides it).

Observations (``observation`` option), uint8 (object, colour, state) codes of MiniGrid
(`SYMBOLIC_CATEGORIES`):

* ``first_person`` (default): MiniGrid's egocentric 7 x 7 view, exactly stock's
  ``obs["image"]``, indexed ``[x, y]`` as stock's array is (the agent at ``[3, 6]`` looking
  towards ``y = 0``); cells outside the grid are walls, cells hidden by walls and closed doors
  are 0 (unseen, stock's ``process_vis``: KeyCorridor does not see through walls), the agent's
  own cell shows what it carries. It is the default because MiniGrid's published KeyCorridor
  results (and the intrinsic-reward papers that report them) use this partial view, and because
  it is what `gym:MiniGrid-KeyCorridorS3R3-v0` gives on the host path, so the two compare.
* ``symbolic``: the full grid ``[H, W, 3]`` in row-major (row, column) layout: stock's
  ``grid.encode()`` transposed, with the agent drawn in as (10, 0, direction), as in the navix
  adapter. Like stock's encoding it does not show what is carried (a carried key is simply
  missing from the grid).

Known deviations from stock MiniGrid:

* layouts come from JAX's random generator: the same distribution (up to float32 resolution of
  the uniform draws), not the same layouts for the same seed;
* no mission string (it is always "pick up the <colour> ball", and the ball is the only ball);
* the auto-reset of `autotelic.envs.base`: `step` resets a finished episode in the same call and
  keeps the real last observation in ``final_obs``;
* picking up the ball on the horizon step is reported as terminated only (stock also reports
  truncated there);
* stock's give-up guards (`connect_all` raising after 5000 draws, `place_obj` after 1000 tries)
  have no counterpart: on KeyCorridor they would need thousands of consecutive unlucky draws;
* an action outside 0..6 does nothing (stock raises);
* no rendering, no other object kinds (boxes, goals, lava: KeyCorridor has none) and no
  ``obj_type`` option (stock's registered KeyCorridors all use the ball);
* ``symbolic`` draws the agent in, which stock's full-grid encoding leaves out.

Implementation notes (for 256+ envs vmapped on a CPU): the layout is built from one uniform draw
and one scatter; `connect_all`'s cut is computed in closed form per side column; visibility
sweeps rows as bit masks in a 7-step scan. Every step also draws the next episode's layout (the
contract's auto-reset), so reset cost is step cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import UserError, unknown
from .base import EnvSpec, StepResult, auto_reset, lazy_auto_reset, strong_types
from .minigrid_view import (
    AGENT,
    BALL,
    CLOSED,
    DOOR,
    EMPTY,
    GREY,
    KEY,
    LOCKED,
    OPEN,
    RED,
    STEPS,
    VIEW,
    WALL,
    code,
    egocentric_view,
)
from .navix_env import SYMBOLIC_CATEGORIES

Array = jax.Array

NUM_COLOURS = 6
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)
NUM_ACTIONS = 7
OBSERVATIONS = ("first_person", "symbolic")

# The configurations stock MiniGrid registers: id -> (room_size, num_rows).
SIZES = {
    "KeyCorridorS3R1": (3, 1),
    "KeyCorridorS3R2": (3, 2),
    "KeyCorridorS3R3": (3, 3),
    "KeyCorridorS4R3": (4, 3),
    "KeyCorridorS5R3": (5, 3),
    "KeyCorridorS6R3": (6, 3),
}
COLUMNS = 3


def keycorridor_ids() -> list[str]:
    return sorted(SIZES)


class KeyCorridorState(NamedTuple):
    grid: Array  # uint8[H, W, 3]: every cell's (object, colour, state), the agent not drawn
    pos: Array  # int32[2]: the agent's (row, column)
    direction: Array  # int32[]: 0 right, 1 down, 2 left, 3 up
    carrying: Array  # uint8[3]: code of the carried object, (EMPTY, 0, 0) when hands are empty
    t: Array  # int32[]: steps taken in the episode


class _Geometry:
    """What does not depend on the random draws, as NumPy constants (cells are flat row-major)."""

    def __init__(self, room_size: int, num_rows: int) -> None:
        s, rows = room_size, num_rows
        self.room_size, self.rows = s, rows
        self.height, self.width = (s - 1) * rows + 1, (s - 1) * COLUMNS + 1
        h, w = self.height, self.width
        self.cells = h * w
        kind = np.full((h, w), EMPTY, dtype=np.uint8)
        kind[:: s - 1, :] = WALL
        kind[:, :: s - 1] = WALL
        for j in range(1, rows):  # the hallway: middle-column walls between rows
            kind[j * (s - 1), (s - 1) + 1 : 2 * (s - 1)] = EMPTY
        self.base = np.zeros((self.cells, 3), dtype=np.uint8)
        self.base[:, 0] = kind.ravel()
        self.base[kind.ravel() == WALL, 1] = GREY

        row, col = np.divmod(np.arange(self.cells), w)
        inside = (row % (s - 1) != 0) & (col % (s - 1) != 0)
        # The default agent position while objects are placed (RoomGrid's grid centre), which
        # `place_obj` and `reject_next_to` keep objects away from, is never near a side room, so
        # every inside cell of a side room is a uniform candidate for the key and the ball.
        centre = ((rows // 2) * (s - 1) + s // 2, (COLUMNS // 2) * (s - 1) + s // 2)
        near_centre = np.abs(row - centre[0]) + np.abs(col - centre[1]) < 2
        assert not np.any(near_centre & inside & (col // (s - 1) != 1))

        # Walls between rooms that `connect_all` may put a door in (not the hallway's): the rooms
        # on either side, and the cell of the wall's door slot at offset o, `slot_base + o *
        # slot_stride` (o uniform in 1..S-2: stock's `door_pos`).
        edges, slot_base, slot_stride = [], [], []
        for j in range(rows):
            for i in range(COLUMNS):
                if i + 1 < COLUMNS:  # the right wall of room (i, j)
                    edges.append((j * COLUMNS + i, j * COLUMNS + i + 1))
                    slot_base.append(j * (s - 1) * w + (i + 1) * (s - 1))
                    slot_stride.append(w)
                if j + 1 < rows and i != 1:  # the bottom wall of room (i, j)
                    edges.append((j * COLUMNS + i, (j + 1) * COLUMNS + i))
                    slot_base.append((j + 1) * (s - 1) * w + i * (s - 1))
                    slot_stride.append(1)
        self.edges = np.array(edges, dtype=np.int32).reshape(-1, 2)
        self.slot_base = np.array(slot_base, dtype=np.int32)
        self.slot_stride = np.array(slot_stride, dtype=np.int32)
        # the locked door's wall, per row: the right wall of the hallway room
        self.locked_edge = np.array(
            [edges.index((j * COLUMNS + 1, j * COLUMNS + 2)) for j in range(rows)], np.int32
        )
        # The side columns (0 and 2) as chains of rooms: the wall from each room to the hallway
        # room beside it, the wall below each room but the last, and which of those lower walls
        # lie between rows j and j2 (`between[j, j2, k]`).
        self.to_hallway = np.array(
            [
                [
                    edges.index((j * COLUMNS + min(c, 1), j * COLUMNS + max(c, 1)))
                    for j in range(rows)
                ]
                for c in (0, 2)
            ],
            dtype=np.int32,
        )
        self.below = np.array(
            [
                [edges.index((j * COLUMNS + c, (j + 1) * COLUMNS + c)) for j in range(rows - 1)]
                for c in (0, 2)
            ],
            dtype=np.int32,
        ).reshape(2, rows - 1)
        k = np.arange(rows - 1)
        j, j2 = np.arange(rows)[:, None, None], np.arange(rows)[None, :, None]
        self.between = (np.minimum(j, j2) <= k) & (k < np.maximum(j, j2))

        # The agent's start: (cell, direction) pairs in the rectangle of the hallway's middle
        # room on a free cell, and the cell each faces. Before `connect_all` such a cell faces
        # a free cell, a wall or the locked door: stock rejects only the last.
        top = ((rows // 2) * (s - 1), s - 1)
        rect = (row >= top[0]) & (row < top[0] + s) & (col >= top[1]) & (col < top[1] + s)
        free = np.flatnonzero(rect & (kind.ravel() == EMPTY))
        front = (row[free, None] + STEPS[:, 0]) * w + col[free, None] + STEPS[:, 1]
        assert np.all(np.isin(kind.ravel()[front], (EMPTY, WALL)))
        self.start_cell = np.repeat(free, 4).astype(np.int32)
        self.start_front = front.ravel().astype(np.int32)


def _pick(u: Array, allowed: Array) -> Array:
    """Index of a uniformly drawn True entry of `allowed` (1-D), from one uniform `u` in [0, 1)."""
    n = allowed.shape[0]
    upto = jnp.sum(jnp.tril(jnp.ones((n, n), dtype=bool)) & allowed[None, :], axis=1)
    target = jnp.floor(u * upto[-1]).astype(upto.dtype)
    return jnp.argmax(upto > target).astype(jnp.int32)


def _below(u: Array, n: int) -> Array:
    """A uniform integer in [0, n) from uniforms `u` in [0, 1)."""
    return jnp.minimum(jnp.floor(u * n), n - 1).astype(jnp.int32)


def generate(g: _Geometry, key: Array) -> tuple[Array, Array, Array]:
    """A KeyCorridor layout: (grid uint8[cells, 3], agent cell int32[], direction int32[])."""
    s, w, num_edges = g.room_size, g.width, len(g.edges)
    # All the randomness of a layout in one draw; offsets inside rooms and along walls have a
    # single value when S = 3 and draw nothing.
    spots = 0 if s == 3 else num_edges + 4
    u = jax.random.uniform(key, (5 + 2 * num_edges + spots,))
    locked_row, key_row = _below(u[0], g.rows), _below(u[1], g.rows)
    door_colour, ball_colour = _below(u[2], NUM_COLOURS), _below(u[3], NUM_COLOURS)
    order = u[5 : 5 + num_edges]
    colours = _below(u[5 + num_edges : 5 + 2 * num_edges], NUM_COLOURS)
    if spots:
        offsets = 1 + _below(u[5 + 2 * num_edges :], s - 2)
        slots, inside = offsets[:num_edges], offsets[num_edges:]
    else:
        slots, inside = 1, jnp.ones(4, dtype=jnp.int32)
    door_at = jnp.asarray(g.slot_base) + slots * jnp.asarray(g.slot_stride)

    locked_at = door_at[jnp.asarray(g.locked_edge)[locked_row]]
    ball_at = (locked_row * (s - 1) + inside[0]) * w + 2 * (s - 1) + inside[1]
    key_at = (key_row * (s - 1) + inside[2]) * w + inside[3]

    # The agent: stock's rejection loop leaves it uniform over the allowed (cell, direction).
    start = _pick(u[4], jnp.asarray(g.start_front) != locked_at)
    agent_at, direction = jnp.asarray(g.start_cell)[start], start % 4

    # connect_all: the candidate walls in a uniformly random order, cut at the shortest prefix
    # that connects every room. The hallway column and the locked room (through its door) are
    # connected from the start; a side-column room j is connected from the prefix holding, for
    # some room j2 of its column, the wall from j2 to the hallway and the walls between j and j2:
    # one past the latest position among them. The cut is one past the latest room's.
    locked_room = locked_row * COLUMNS + 2
    room_a, room_b = jnp.asarray(g.edges[:, 0]), jnp.asarray(g.edges[:, 1])
    candidate = (room_a != locked_room) & (room_b != locked_room)
    priority = jnp.where(candidate, order, 2.0)
    index = jnp.arange(num_edges)
    earlier = (priority[None, :] < priority[:, None]) | (
        (priority[None, :] == priority[:, None]) & (index[None, :] < index[:, None])
    )
    rank = jnp.sum(earlier, axis=1).astype(jnp.int32)  # a permutation even if draws tie
    never = num_edges + 1
    locked = jnp.asarray(g.locked_edge)[locked_row] == index
    time = jnp.where(candidate, rank, jnp.where(locked, -1, never))
    across = time[jnp.asarray(g.to_hallway)]  # [2, rows]
    down = time[jnp.asarray(g.below)]  # [2, rows - 1]
    chain = jnp.max(jnp.where(g.between, down[:, None, None, :], -1), axis=-1, initial=-1)
    since = jnp.min(jnp.maximum(across[:, None, :], chain), axis=-1)  # [2, rows]
    doors = candidate & (rank <= jnp.max(since))

    # Everything onto the walls and floor in one scatter (dropped doors go out of range).
    at = jnp.concatenate(
        [jnp.where(doors, door_at, g.cells), jnp.stack([locked_at, ball_at, key_at])]
    ).astype(jnp.int32)
    codes = jnp.concatenate(
        [
            jnp.stack([jnp.full_like(colours, DOOR), colours, jnp.full_like(colours, CLOSED)], 1),
            jnp.stack(
                [
                    jnp.stack([DOOR, door_colour, LOCKED]),
                    jnp.stack([BALL, ball_colour, 0]),
                    jnp.stack([KEY, door_colour, 0]),
                ]
            ),
        ]
    ).astype(jnp.uint8)
    grid = jnp.asarray(g.base).at[at].set(codes, mode="drop")
    return grid, agent_at, direction


@dataclass(frozen=True)
class KeyCorridorEnv:
    """MiniGrid's KeyCorridor behind the `JaxEnv` contract (see the module docstring)."""

    name: str = "KeyCorridorS3R3"
    observation: str = "first_person"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.name not in SIZES:
            raise unknown("KeyCorridor environment", self.name, SIZES)
        if self.observation not in OBSERVATIONS:
            raise UserError(
                f"env option observation={self.observation!r} is not one of "
                f"{', '.join(OBSERVATIONS)}."
            )
        if self.max_steps is not None and (
            isinstance(self.max_steps, bool)
            or not isinstance(self.max_steps, int | np.integer)
            or self.max_steps < 1
        ):
            raise UserError(
                f"env option max_steps must be an integer >= 1, got {self.max_steps!r}."
            )

    @property
    def room_size(self) -> int:
        return SIZES[self.name][0]

    @property
    def num_rows(self) -> int:
        return SIZES[self.name][1]

    @property
    def horizon(self) -> int:
        return int(self.max_steps) if self.max_steps is not None else 30 * self.room_size**2

    @cached_property
    def _geometry(self) -> _Geometry:
        return _Geometry(self.room_size, self.num_rows)

    @cached_property
    def spec(self) -> EnvSpec:
        g = self._geometry
        if self.observation == "first_person":
            shape, view = (VIEW, VIEW, 3), "7x7 egocentric view with occlusion"
        else:
            shape, view = (g.height, g.width, 3), "full grid"
        return EnvSpec(
            env_id=f"grid:{self.name}",
            obs_shape=shape,
            obs_dtype="uint8",
            obs_kind="grid",
            num_actions=NUM_ACTIONS,
            max_steps=self.horizon,
            obs_categories=SYMBOLIC_CATEGORIES,
            description=(
                f"MiniGrid KeyCorridor (JAX port), T={self.horizon}, reward 1-0.9*t/T on picking "
                f"up the ball, {view}"
            ),
            options=(("observation", self.observation), ("max_steps", self.max_steps)),
        )

    # ------------------------------------------------------------------------------ observations

    def symbolic(self, state: KeyCorridorState) -> Array:
        """The full grid `[H, W, 3]` with the agent drawn in."""
        g = self._geometry
        agent = code(AGENT, RED, state.direction)
        here = (jnp.arange(g.height)[:, None] == state.pos[0]) & (
            jnp.arange(g.width)[None, :] == state.pos[1]
        )
        return jnp.where(here[..., None], agent, state.grid)

    def first_person(self, state: KeyCorridorState) -> Array:
        """MiniGrid's egocentric view `[7, 7, 3]`, indexed [x, y] like stock's `obs["image"]`."""
        return egocentric_view(state.grid, state.pos, state.direction, state.carrying)

    def _observe(self, state: KeyCorridorState) -> Array:
        return (
            self.first_person(state) if self.observation == "first_person" else self.symbolic(state)
        )

    # ------------------------------------------------------------------------------ contract

    def _fresh(self, key: Array) -> KeyCorridorState:
        g = self._geometry
        grid, agent_at, direction = generate(g, key)
        return strong_types(
            KeyCorridorState(
                grid=grid.reshape(g.height, g.width, 3),
                pos=jnp.stack([agent_at // g.width, agent_at % g.width]).astype(jnp.int32),
                direction=direction.astype(jnp.int32),
                carrying=code(EMPTY, 0),
                t=jnp.zeros((), dtype=jnp.int32),
            )
        )

    def reset(self, key: Array) -> tuple[KeyCorridorState, Array]:
        state = self._fresh(key)
        return state, self._observe(state)

    def transition(
        self, state: KeyCorridorState, action: Array
    ) -> tuple[KeyCorridorState, Array, Array, Array]:
        """One MiniGrid step: (next state, reward, terminated, truncated), no reset."""
        g = self._geometry
        action = jnp.asarray(action, dtype=jnp.int32)
        grid = state.grid.reshape(-1, 3)
        ahead = state.pos + jnp.asarray(STEPS)[state.direction]
        ahead_at = ahead[0] * g.width + ahead[1]
        cell = grid[ahead_at]
        kind, colour, door = cell[0], cell[1], cell[2]
        carrying = state.carrying
        hands_empty = carrying[0] == EMPTY

        turn = jnp.where(action == LEFT, 3, jnp.where(action == RIGHT, 1, 0))
        direction = (state.direction + turn) % 4
        passable = (kind == EMPTY) | ((kind == DOOR) & (door == OPEN))
        pos = jnp.where((action == FORWARD) & passable, ahead, state.pos)
        picks = (action == PICKUP) & ((kind == KEY) | (kind == BALL)) & hands_empty
        drops = (action == DROP) & (kind == EMPTY) & ~hands_empty
        fits = (carrying[0] == KEY) & (carrying[1] == colour)
        toggled = jnp.where(door == LOCKED, jnp.where(fits, OPEN, LOCKED), OPEN + CLOSED - door)
        toggles = (action == TOGGLE) & (kind == DOOR)
        empty = code(EMPTY, 0)
        new_cell = jnp.where(
            picks,
            empty,
            jnp.where(
                drops,
                carrying,
                jnp.where(toggles, code(DOOR, colour, toggled), cell),
            ),
        )
        grid = jnp.where((jnp.arange(grid.shape[0]) == ahead_at)[:, None], new_cell, grid)
        carrying = jnp.where(picks, cell, jnp.where(drops, empty, carrying))
        t = state.t + 1
        terminated = (action == PICKUP) & (carrying[0] == BALL)
        truncated = t >= self.horizon
        reward = jnp.where(terminated, 1.0 - 0.9 * t.astype(jnp.float32) / self.horizon, 0.0)
        nxt = KeyCorridorState(
            grid=grid.reshape(state.grid.shape),
            pos=pos,
            direction=direction,
            carrying=carrying,
            t=t,
        )
        return nxt, reward.astype(jnp.float32), terminated, truncated

    def step(
        self, key: Array, state: KeyCorridorState, action: Array
    ) -> tuple[KeyCorridorState, StepResult]:
        nxt, reward, terminated, truncated = self.transition(state, action)
        return auto_reset(
            nxt, self._fresh(key), self._observe, reward, terminated, truncated, terminated
        )

    def step_batch(
        self, keys: Array, states: KeyCorridorState, actions: Array
    ) -> tuple[KeyCorridorState, StepResult]:
        """`vmap(step)` with the same results, resetting only the envs whose episode ended."""
        nxt, reward, terminated, truncated = jax.vmap(self.transition)(states, actions)
        return lazy_auto_reset(
            keys, nxt, self._fresh, self._observe, reward, terminated, truncated, terminated
        )
