"""MiniGrid's egocentric 7x7 view, computed from a full grid of (object, colour, state) codes.

Shared by `grid:` (KeyCorridor) and the navix adapter's ``first_person`` observation, so both give
exactly stock MiniGrid's ``obs["image"]`` (`MiniGridEnv.gen_obs`):

* the 7x7 window ahead of the agent, indexed ``[x, y]`` as stock's array is: the agent at
  ``[3, 6]`` looking towards ``y = 0``, cell ``[x, y]`` lying ``6 - y`` cells ahead and ``x - 3``
  cells to its right;
* cells outside the grid are grey walls;
* cells hidden behind walls and closed or locked doors are 0 (unseen), as stock's
  `Grid.process_vis` decides, unless the env sees through walls (stock's ``see_through_walls``:
  True for Empty, DistShift, DynamicObstacles and GoToDoor, False for DoorKey, FourRooms,
  KeyCorridor, LavaGap and the crossings);
* the agent's own cell shows the object it carries ((empty, 0, 0) with empty hands).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# MiniGrid's object, colour and door-state codes.
UNSEEN, EMPTY, WALL, FLOOR, DOOR, KEY, BALL, BOX, GOAL, LAVA, AGENT = range(11)
RED, GREY = 0, 5
OPEN, CLOSED, LOCKED = 0, 1, 2
VIEW = 7  # MiniGrid's agent_view_size

# navix ids (by family) whose stock MiniGrid env sees through walls.
SEE_THROUGH_FAMILIES = ("Empty", "DistShift", "Dynamic-Obstacles", "GoToDoor")

# (row, column) step of each direction: 0 right, 1 down, 2 left, 3 up (MiniGrid's DIR_TO_VEC).
STEPS = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], dtype=np.int32)


def _view_offsets() -> np.ndarray:
    """int32[4, 7, 7, 2]: (row, column) offset from the agent of view cell [x, y], per direction.

    The view cell [x, y] lies 6 - y cells ahead of the agent and x - 3 cells to its right (stock's
    `get_view_coords`, inverted).
    """
    offsets = np.zeros((4, VIEW, VIEW, 2), dtype=np.int32)
    for direction, ahead in enumerate(STEPS):
        right = STEPS[(direction + 1) % 4]
        for x in range(VIEW):
            for y in range(VIEW):
                offsets[direction, x, y] = ahead * (VIEW - 1 - y) + right * (x - VIEW // 2)
    return offsets


VIEW_OFFSETS = _view_offsets()


def code(kind: int, colour: Array | int, state: Array | int = 0) -> Array:
    """The uint8[3] code of one cell."""
    return jnp.stack([jnp.asarray(kind), jnp.asarray(colour), jnp.asarray(state)]).astype(jnp.uint8)


def visible(transparent: Array) -> Array:
    """Stock's `Grid.process_vis` for a view `[x, y]` with the agent at [3, 6]: bool[7, 7].

    Stock sweeps the rows from the agent's up. In each row, visibility spreads sideways from the
    row's seed cells, leaving only cells one can see past (a left-to-right then a right-to-left
    pass, which together reach exactly the cells joined to a seed through see-through cells);
    every visible see-through cell then seeds the row above at its own column and the two beside
    it. Rows are bit masks here (bit x for column x), swept by a scan.
    """
    size = transparent.shape[0]
    full = (1 << size) - 1
    bits = jnp.sum(jnp.where(transparent, 1 << jnp.arange(size)[:, None], 0), axis=0)  # [y]

    def row_up(seed: Array, see_past: Array) -> tuple[Array, Array]:
        rightward, leftward = seed, seed
        for _ in range(size - 1):
            rightward = rightward | (((rightward & see_past) << 1) & full)
            leftward = leftward | ((leftward & see_past) >> 1)
        row = rightward | leftward
        spread = row & see_past
        return (spread | (spread << 1) | (spread >> 1)) & full, row

    _, rows = jax.lax.scan(row_up, jnp.int32(1 << (size // 2)), bits[::-1])
    return ((rows[::-1][None, :] >> jnp.arange(size)[:, None]) & 1) == 1


def egocentric_view(
    grid: Array, pos: Array, direction: Array, carrying: Array, see_through_walls: bool = False
) -> Array:
    """MiniGrid's view `uint8[7, 7, 3]` (see the module docstring).

    grid: uint8[H, W, 3] codes in row-major (row, column) layout; what it holds at the agent's
    cell does not matter. pos: int32[2] the agent's (row, column). direction: int32[] (0 right,
    1 down, 2 left, 3 up). carrying: uint8[3] the carried object's code, (EMPTY, 0, 0) if none.
    see_through_walls: stock's flag of the same name (static): no occlusion.
    """
    height, width = grid.shape[0], grid.shape[1]
    where = pos + jnp.asarray(VIEW_OFFSETS)[direction]  # [7, 7, 2]
    inside = (
        (where[..., 0] >= 0)
        & (where[..., 0] < height)
        & (where[..., 1] >= 0)
        & (where[..., 1] < width)
    )
    flat = jnp.clip(where[..., 0], 0, height - 1) * width + jnp.clip(where[..., 1], 0, width - 1)
    view = grid.reshape(-1, 3)[flat]
    view = jnp.where(inside[..., None], view, code(WALL, GREY))
    if not see_through_walls:
        kind, door = view[..., 0], view[..., 2]
        transparent = (kind != WALL) & ((kind != DOOR) | (door == OPEN))
        view = jnp.where(visible(transparent)[..., None], view, jnp.uint8(UNSEEN))
    return view.at[VIEW // 2, VIEW - 1].set(carrying.astype(jnp.uint8))
