"""Frames for replaying an episode, drawn from observations (no image files, no env renderer).

* MiniGrid-style symbolic grids `[H, W, 3]` of (object, colour, state) codes, as navix gives them:
  one small cell per grid position, the object drawn in its colour (walls grey, goal green, lava
  orange, doors filled when closed, outlined when open, striped when locked, keys, balls, boxes),
  the agent as a red triangle pointing in its direction (state code 0 east, 1 south, 2 west,
  3 north).
* Other integer grids (e.g. xminigrid's `[V, V, 2]` tile and colour ids): a fixed colour per tile
  id, with a centre square in the colour id's colour.
* Images `[H, W, C]`: every channel gets a fixed colour, a pixel shows its highest active channel.

Vector observations have no frames (`frames` returns None).
"""

from __future__ import annotations

import numpy as np

CELL = 16  # pixels per grid cell

# MiniGrid's colour indices: red, green, blue, purple, yellow, grey.
MINIGRID_COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [112, 39, 195], [255, 255, 0], [100, 100, 100]],
    dtype=np.uint8,
)
# MiniGrid's object indices.
UNSEEN, EMPTY, WALL, FLOOR, DOOR, KEY, BALL, BOX, GOAL, LAVA, AGENT = range(11)
BACKGROUND = np.array([24, 24, 24], dtype=np.uint8)
GRID_LINE = np.array([60, 60, 60], dtype=np.uint8)

# A fixed qualitative palette for generic tiles and image channels.
PALETTE = np.array(
    [
        [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
        [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
        [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
    ],
    dtype=np.uint8,
)  # fmt: skip


def _shape_masks(cell: int) -> dict[str, np.ndarray]:
    """Boolean `[cell, cell]` masks of the shapes drawn inside a cell."""
    centre = (cell - 1) / 2.0
    yy, xx = np.mgrid[0:cell, 0:cell].astype(np.float64)
    radius = np.hypot(yy - centre, xx - centre)
    inner = (yy >= 1) & (yy < cell - 1) & (xx >= 1) & (xx < cell - 1)
    border = inner & ~((yy >= 3) & (yy < cell - 3) & (xx >= 3) & (xx < cell - 3))
    # A triangle pointing east (+x), base at x = 0.15 cell, tip at x = 0.9 cell; the other
    # directions are rotations of it.
    base, tip = 0.15 * cell, 0.9 * cell
    east = (xx + 0.5 >= base) & (
        np.abs(yy - centre) <= 0.38 * cell * (tip - xx - 0.5) / (tip - base)
    )
    key_mask = ((radius <= cell * 0.22) & (xx < centre)) | (
        (np.abs(yy - centre) <= cell * 0.07) & (xx >= centre - 1) & (xx <= cell * 0.85)
    )
    return {
        "full": inner,
        "border": border,
        "ball": radius <= cell * 0.32,
        "key": key_mask,
        "stripe": inner & (np.abs(yy - centre) <= cell * 0.08),
        "east": east,
    }


def _agent_mask(masks: dict[str, np.ndarray], direction: int) -> np.ndarray:
    # Rotating the east triangle by 90 degrees clockwise (in image coordinates, rows down) turns
    # it to the south, and so on: k clockwise turns for direction k.
    return np.rot90(masks["east"], k=-int(direction) % 4)


def minigrid_frame(obs: np.ndarray, cell: int = CELL) -> np.ndarray:
    """`[H, W, 3]` MiniGrid codes -> `[H * cell, W * cell, 3]` uint8 RGB."""
    obs = np.asarray(obs)
    height, width = obs.shape[:2]
    image = np.empty((height * cell, width * cell, 3), dtype=np.uint8)
    image[...] = BACKGROUND
    image[::cell, :] = GRID_LINE
    image[:, ::cell] = GRID_LINE
    masks = _shape_masks(cell)
    for row in range(height):
        for col in range(width):
            tag, colour_index, state = (int(v) for v in obs[row, col, :3])
            colour = MINIGRID_COLOURS[colour_index % len(MINIGRID_COLOURS)]
            tile = image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
            if tag == UNSEEN:
                tile[masks["full"]] = 0
            elif tag == WALL:
                tile[masks["full"]] = (100, 100, 100)
            elif tag == FLOOR:
                tile[masks["full"]] = colour // 3
            elif tag == DOOR:
                if state == 0:  # open
                    tile[masks["border"]] = colour
                else:
                    tile[masks["full"]] = colour
                    if state == 2:  # locked
                        tile[masks["stripe"]] = BACKGROUND
            elif tag == KEY:
                tile[masks["key"]] = colour
            elif tag == BALL:
                tile[masks["ball"]] = colour
            elif tag == BOX:
                tile[masks["border"]] = colour
            elif tag == GOAL:
                tile[masks["full"]] = (0, 200, 0)
            elif tag == LAVA:
                tile[masks["full"]] = (255, 128, 0)
            elif tag == AGENT:
                tile[_agent_mask(masks, state)] = (255, 40, 40)
    return image


def tile_frame(obs: np.ndarray, cell: int = CELL) -> np.ndarray:
    """Any integer grid `[H, W, C]`: channel 0 picks the tile colour, channel 1 (if any) the
    colour of a centre square."""
    obs = np.asarray(obs).astype(np.int64)
    height, width = obs.shape[:2]
    image = np.empty((height * cell, width * cell, 3), dtype=np.uint8)
    image[...] = BACKGROUND
    masks = _shape_masks(cell)
    for row in range(height):
        for col in range(width):
            tile = image[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell]
            code = obs[row, col, 0]
            if code > 0:
                tile[masks["full"]] = PALETTE[code % len(PALETTE)]
            if obs.shape[2] > 1 and obs[row, col, 1] > 0:
                tile[masks["ball"]] = PALETTE[(obs[row, col, 1] + 7) % len(PALETTE)]
    image[::cell, :] = GRID_LINE
    image[:, ::cell] = GRID_LINE
    return image


def image_frame(obs: np.ndarray, scale: int | None = None) -> np.ndarray:
    """`[H, W, C]` image (e.g. binary feature planes) -> RGB; each pixel shows its
    highest-numbered active channel (value > 0.5 of the channel's maximum)."""
    obs = np.asarray(obs, dtype=np.float64)
    if obs.ndim == 2:
        obs = obs[..., None]
    height, width, channels = obs.shape
    if channels == 3 and obs.max() > 1.0:
        image = np.clip(obs, 0, 255).astype(np.uint8)
    else:
        peak = np.maximum(obs.max(axis=(0, 1), keepdims=True), 1e-12)
        active = obs / peak > 0.5
        image = np.empty((height, width, 3), dtype=np.uint8)
        image[...] = BACKGROUND
        for channel in range(channels):
            image[active[..., channel]] = PALETTE[channel % len(PALETTE)]
    scale = scale or max(1, 160 // max(height, width))
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def frame_renderer(env_id: str, obs_kind: str, obs_shape: tuple[int, ...]) -> str | None:
    """Which renderer fits an env: "minigrid", "tiles", "image" or None (no frames)."""
    if obs_kind == "grid" and len(obs_shape) == 3:
        if env_id.startswith("navix:") and obs_shape[2] == 3:
            return "minigrid"
        return "tiles"
    if obs_kind == "image" and len(obs_shape) in (2, 3):
        return "image"
    return None


def frames(observations: np.ndarray, renderer: str | None) -> np.ndarray | None:
    """`[T, *obs_shape]` -> `[T, h, w, 3]` uint8 frames, or None without a renderer."""
    if renderer is None:
        return None
    draw = {"minigrid": minigrid_frame, "tiles": tile_frame, "image": image_frame}[renderer]
    return np.stack([draw(obs) for obs in np.asarray(observations)])
