"""Helpers shared by the tests that compare our grid envs with stock MiniGrid step by step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.core.grid import Grid

AGENT = OBJECT_TO_IDX["agent"]


def stock_grid(stock: Any) -> np.ndarray:
    """Stock's full-grid encoding with the agent drawn in as (agent, red, direction), laid out
    row-major `[H, W, 3]` as our `symbolic` observations are."""
    grid = stock.grid.encode()
    x, y = stock.agent_pos
    grid[x, y] = [AGENT, COLOR_TO_IDX["red"], stock.agent_dir]
    return grid.transpose(1, 0, 2)


def agent_pose(obs: np.ndarray) -> tuple[int, int, int]:
    """(row, col, direction) of the agent in a row-major symbolic observation."""
    cells = np.argwhere(obs[..., 0] == AGENT)
    assert len(cells) == 1, f"expected one agent cell, found {len(cells)}"
    row, col = cells[0]
    return int(row), int(col), int(obs[row, col, 2])


def align(stock: Any, obs: np.ndarray) -> None:
    """Put the layout of our symbolic observation `obs` (agent drawn in) into a reset stock env,
    with the agent's pose, empty hands and step count 0."""
    row, col, direction = agent_pose(obs)
    cells = obs.transpose(1, 0, 2).copy()  # MiniGrid indexes grids [x, y]
    cells[col, row] = [OBJECT_TO_IDX["empty"], 0, 0]
    stock.grid, _ = Grid.decode(cells)
    stock.agent_pos, stock.agent_dir = (col, row), direction
    stock.carrying, stock.step_count = None, 0
    np.testing.assert_array_equal(stock_grid(stock), obs, err_msg="alignment")


def check_step(
    where: str, stock: Any, stock_step: tuple, final_obs: np.ndarray, ours: Any, view: Any
) -> None:
    """Compare one step of ours with stock's: `stock_step` is what `stock.step` returned;
    `final_obs` our symbolic observation after the step; `ours`, `view`: the StepResults of our
    env with the symbolic and with the 7x7 (`first_person`) observation, stepped alike."""
    stock_obs, reward, terminated, truncated, _ = stock_step
    x, y = stock.agent_pos
    assert agent_pose(final_obs) == (y, x, stock.agent_dir), where
    np.testing.assert_array_equal(final_obs, stock_grid(stock), err_msg=where)
    np.testing.assert_array_equal(
        np.asarray(view.final_obs), stock_obs["image"], err_msg=where + ", 7x7 view"
    )
    assert float(ours.reward) == pytest.approx(reward, abs=1e-6), where
    assert bool(ours.terminated) == terminated, where
    assert bool(ours.truncated) == (truncated and not terminated), where
    assert bool(ours.success) == (terminated and reward > 0), where
    for field in ("reward", "terminated", "truncated"):
        assert bool(np.all(getattr(view, field) == getattr(ours, field))), where


class LockstepPair:
    """Our env (symbolic and 7x7 view, same keys) and a stock env on the same layout, stepped in
    lockstep. Subclasses set `_step`, `_view_step`, `state`, `view_state`, `key`, `stock` and
    `t` in `__init__`."""

    def symbolic(self, ours: Any) -> np.ndarray:
        """Our symbolic observation after a step, as compared with stock's grid."""
        return np.asarray(ours.final_obs)

    def step(self, action: int) -> tuple[float, bool, bool, Any]:
        """Step all three, check every compared quantity, return stock's (r, te, tr) and ours."""
        import jax
        import jax.numpy as jnp
        from minigrid.core.actions import Actions

        self.t += 1
        self.key, self.step_key = jax.random.split(self.key)
        self.state, ours = self._step(self.step_key, self.state, jnp.int32(action))
        self.view_state, view = self._view_step(self.step_key, self.view_state, jnp.int32(action))
        stock_step = self.stock.step(action)
        where = f"step {self.t}, action {Actions(action).name}"
        check_step(where, self.stock, stock_step, self.symbolic(ours), ours, view)
        _, reward, terminated, truncated, _ = stock_step
        return reward, terminated, truncated, ours

    def run(self, actions: list[int]) -> tuple[float, bool, bool]:
        reward, terminated, truncated = 0.0, False, False
        for i, action in enumerate(actions):
            assert not (terminated or truncated), f"episode ended before action {i}"
            reward, terminated, truncated, _ = self.step(action)
        return reward, terminated, truncated
