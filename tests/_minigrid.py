"""Helpers shared by the tests that compare our grid envs with stock MiniGrid."""

from __future__ import annotations

from typing import Any

import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX


def stock_grid(stock: Any) -> np.ndarray:
    """Stock's full-grid encoding with the agent drawn in as (agent, red, direction), laid out
    row-major `[H, W, 3]` as our `symbolic` observations are."""
    grid = stock.grid.encode()
    x, y = stock.agent_pos
    grid[x, y] = [OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"], stock.agent_dir]
    return grid.transpose(1, 0, 2)
