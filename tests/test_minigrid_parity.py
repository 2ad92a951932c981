"""Parity of the navix adapter's default (`semantics=minigrid`) with stock Farama MiniGrid.

navix and MiniGrid draw their layouts with different random generators, so each comparison first
*aligns* the layouts: the adapter's first observation (navix's symbolic grid, which uses
MiniGrid's (object, colour, state) codes) is decoded into a MiniGrid `Grid` and the stock env's
grid, agent position and direction are overwritten with it. From then on both envs receive the
same actions and are compared after every step:

* the full grid (the stock env's `grid.encode()` with the agent drawn in, transposed to navix's
  row-major layout) against the adapter's real next observation `final_obs`;
* the agent's position and direction (the trajectory);
* reward (MiniGrid's `1 - 0.9 * t / T` on success, 0 otherwise), `terminated`, and `truncated`.
  MiniGrid reports `truncated=True` on the horizon step even when the goal is reached on it; the
  adapter's contract (`autotelic.envs.base.StepResult`) reports that step as terminated only.

Action sequences: a breadth-first planner solves each layout on the stock env (shortest
solution), optionally after idle steps that move the success step along the horizon; a scripted
DoorKey episode exercises pickup, drop, toggle and done; idle episodes must truncate exactly at
MiniGrid's `max_steps` with reward 0; DistShift1 checks that lava ends the episode; seeded random
action sequences over all seven actions cover everything else. Without alignment, the horizon of
every navix id is checked against the stock env of the same task and size.

One navix artefact is masked, not fixed: navix parks a picked-up key at grid cell (0, W-1), so
the symbolic observation shows a key on that corner wall while the key is carried
(`hide_carried_key`).
"""

from __future__ import annotations

import copy
import functools
from collections import deque
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import jax
import numpy as np
import pytest
from _minigrid import LockstepPair, align, stock_grid
from minigrid.core.actions import Actions  # importing minigrid registers its gymnasium ids
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

import autotelic.envs as envs
from autotelic.envs.navix_env import NavixEnv, navix_ids

LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = (int(a) for a in Actions)
MOVES = (LEFT, RIGHT, FORWARD)
AGENT, KEY, WALL = OBJECT_TO_IDX["agent"], OBJECT_TO_IDX["key"], OBJECT_TO_IDX["wall"]
WALL_CODE = np.array([WALL, COLOR_TO_IDX["grey"], 0], np.uint8)

# navix id -> stock id of the same task; the adapter's layout is decoded into the stock env.
TASKS = {
    "Navix-Empty-5x5-v0": "MiniGrid-Empty-5x5-v0",
    "Navix-DoorKey-5x5-v0": "MiniGrid-DoorKey-5x5-v0",
    "Navix-DoorKey-8x8-v0": "MiniGrid-DoorKey-8x8-v0",
    "Navix-FourRooms-v0": "MiniGrid-FourRooms-v0",
    "Navix-DistShift1-v0": "MiniGrid-DistShift1-v0",
}


def stock_id(navix_id: str) -> str:
    """The stock MiniGrid id of the task a navix id ports (same family and size)."""
    name = navix_id.replace("Navix-", "MiniGrid-")
    for size in ("5x5", "6x6"):
        name = name.replace(f"Obstacles-{size}-Random", f"Obstacles-Random-{size}")
    if name not in gym.registry:  # e.g. DoorKey-Random, Empty-Random-16x16: same horizon formula
        name = name.replace("Random-", "")
    return name


# ------------------------------------------------------------------------------------ helpers


@functools.cache
def adapter(navix_id: str, observation: str = "symbolic") -> tuple[NavixEnv, Callable, Callable]:
    env = envs.make(f"navix:{navix_id}", observation=observation)
    return env, jax.jit(env.reset), jax.jit(env.step)


def hide_carried_key(obs: np.ndarray) -> np.ndarray:
    """Undo navix's discard-pile artefact: a carried key is drawn at cell (0, W-1), a wall."""
    obs = np.array(obs, copy=True)
    if obs[0, -1, 0] == KEY:
        obs[0, -1] = WALL_CODE
    return obs


class Pair(LockstepPair):
    """The adapter and a stock MiniGrid env on the same layout, stepped in lockstep."""

    def __init__(self, navix_id: str, seed: int) -> None:
        self.env, reset, self._step = adapter(navix_id)
        self.state, obs = reset(jax.random.PRNGKey(seed))
        self.key = jax.random.PRNGKey(10_000 + seed)
        obs = np.asarray(obs)
        self.stock = gym.make(stock_id(navix_id)).unwrapped
        self.stock.reset(seed=seed)
        align(self.stock, obs)
        # The same layout seen through MiniGrid's 7x7 view (`observation=first_person`): the same
        # key gives the same layout, and the same actions keep both adapters in the same state.
        _, view_reset, self._view_step = adapter(navix_id, "first_person")
        self.view_state, view = view_reset(jax.random.PRNGKey(seed))
        np.testing.assert_array_equal(
            np.asarray(view), self.stock.gen_obs()["image"], err_msg="alignment, 7x7 view"
        )
        self.t = 0

    @property
    def horizon(self) -> int:
        return self.env.spec.max_steps

    def symbolic(self, ours: Any) -> np.ndarray:
        return hide_carried_key(np.asarray(ours.final_obs))


def plan(stock: Any, reached: Callable[[Any], bool], actions: tuple[int, ...]) -> list[int]:
    """Shortest action sequence from the stock env's current state after which `reached(env)`
    holds, by breadth-first search over MiniGrid's own dynamics. Moves share the parent's grid
    (they never change it); pickup, drop and toggle act on a copy. Leaves `stock` unchanged."""
    scratch = copy.deepcopy(stock)
    code = stock.grid.encode().tobytes()
    node = (stock.grid, code, tuple(stock.agent_pos), stock.agent_dir, stock.carrying)
    frontier = deque([(node, [])])
    seen = {(*node[1:4], node[4] is not None)}
    while frontier:
        (grid, code, pos, direction, carrying), path = frontier.popleft()
        for action in actions:
            changes_grid = action not in MOVES
            scratch.grid = copy.deepcopy(grid) if changes_grid else grid
            scratch.agent_pos, scratch.agent_dir = pos, direction
            scratch.carrying = copy.deepcopy(carrying)
            scratch.step_count = stock.step_count + len(path)
            _, _, terminated, truncated, _ = scratch.step(action)
            if reached(scratch):
                return [*path, action]
            if terminated or truncated:
                continue
            child_code = scratch.grid.encode().tobytes() if changes_grid else code
            pose = (tuple(scratch.agent_pos), scratch.agent_dir)
            if (child_code, *pose, scratch.carrying is not None) not in seen:
                seen.add((child_code, *pose, scratch.carrying is not None))
                child = (scratch.grid, child_code, *pose, scratch.carrying)
                frontier.append((child, [*path, action]))
    raise AssertionError("the planner found no solution")


def goal_reached(env: Any) -> bool:
    cell = env.grid.get(*env.agent_pos)
    return cell is not None and cell.type == "goal"


def carrying_key(env: Any) -> bool:
    return env.carrying is not None and env.carrying.type == "key"


def facing(kind: str) -> Callable[[Any], bool]:
    def check(env: Any) -> bool:
        cell = env.grid.get(*env.front_pos)
        return cell is not None and cell.type == kind

    return check


def idle(n: int) -> list[int]:
    """n actions that change nothing but the direction (turn pairs and the no-op `done`)."""
    return ([LEFT, RIGHT] * (n // 2)) + [DONE] * (n % 2)


def door_state(pair: Pair) -> str:
    doors = [c for c in pair.stock.grid.grid if c is not None and c.type == "door"]
    assert len(doors) == 1
    door = doors[0]
    return "open" if door.is_open else "locked" if door.is_locked else "closed"


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("navix_id", navix_ids())
def test_horizon_is_minigrids_max_steps(navix_id: str) -> None:
    stock = gym.make(stock_id(navix_id)).unwrapped
    env = NavixEnv(navix_id)
    assert (env.spec.obs_shape[0], env.spec.obs_shape[1]) == (stock.height, stock.width)
    assert env.spec.max_steps == stock.max_steps


def test_action_set_is_minigrids() -> None:
    """Seven actions in MiniGrid's order; what each does is compared step by step below."""
    env, _, _ = adapter("Navix-DoorKey-5x5-v0")
    stock = gym.make("MiniGrid-DoorKey-5x5-v0").unwrapped
    assert env.spec.num_actions == stock.action_space.n == 7
    names = [Actions(a).name for a in range(7)]
    assert names == ["left", "right", "forward", "pickup", "drop", "toggle", "done"]


def test_raw_navix_semantics_keep_navix_dynamics() -> None:
    import navix

    raw = navix.make("Navix-DoorKey-5x5-v0")
    ours = NavixEnv("Navix-DoorKey-5x5-v0", semantics="navix")._env
    assert ours.action_set == raw.action_set
    assert ours.termination_fn is raw.termination_fn
    assert ours.max_steps == raw.max_steps
    assert NavixEnv("Navix-DoorKey-5x5-v0")._env.action_set != raw.action_set


def test_empty_layout_is_identical_without_alignment() -> None:
    """Empty-NxN has a fixed layout in both packages: same grid, agent at (1, 1) facing east."""
    _, reset, _ = adapter("Navix-Empty-5x5-v0")
    _, obs = reset(jax.random.PRNGKey(0))
    stock = gym.make("MiniGrid-Empty-5x5-v0").unwrapped
    stock.reset(seed=0)
    np.testing.assert_array_equal(np.asarray(obs), stock_grid(stock))


@pytest.mark.parametrize("navix_id", list(TASKS))
def test_shortest_solution_matches(navix_id: str) -> None:
    """The stock env's shortest solution solves the adapter's env at the same step, along the
    same (row, col, direction) trajectory, with reward 1 - 0.9 * t / T."""
    for seed in (0, 1):
        pair = Pair(navix_id, seed)
        actions = plan(pair.stock, goal_reached, (LEFT, RIGHT, FORWARD, PICKUP, TOGGLE))
        reward, terminated, truncated = pair.run(actions)
        assert terminated and not truncated
        assert reward == pytest.approx(1.0 - 0.9 * len(actions) / pair.horizon)


@pytest.mark.parametrize("navix_id", ["Navix-Empty-5x5-v0", "Navix-DoorKey-5x5-v0"])
def test_success_reward_as_a_function_of_the_step(navix_id: str) -> None:
    """Idle steps before the shortest solution shift the success step t; the reward follows
    1 - 0.9 * t / T up to t = T (reward 0.1, terminated, and not reported as truncated), and one
    more idle step makes the episode truncate with reward 0 before the goal."""
    horizon = Pair(navix_id, 0).horizon
    solution = plan(Pair(navix_id, 0).stock, goal_reached, (LEFT, RIGHT, FORWARD, PICKUP, TOGGLE))
    for delay in (0, 3, 40, horizon - len(solution)):
        pair = Pair(navix_id, 0)
        reward, terminated, stock_truncated = pair.run(idle(delay) + solution)
        t = delay + len(solution)
        assert terminated and reward == pytest.approx(1.0 - 0.9 * t / horizon), delay
    # Success on the horizon step: MiniGrid flags it truncated too, the adapter terminated only
    # (`Pair.step` checked `truncated == stock_truncated and not terminated`).
    assert reward == pytest.approx(0.1) and stock_truncated
    assert pair.stock.step_count == horizon

    pair = Pair(navix_id, 0)
    actions = idle(horizon - len(solution) + 1) + solution
    for t, action in enumerate(actions[:horizon], start=1):
        reward, terminated, truncated, ours = pair.step(action)
        assert reward == 0.0 and not terminated
        assert truncated == (t == horizon)
    assert bool(ours.truncated)


@pytest.mark.parametrize("navix_id", list(TASKS))
def test_idle_episode_truncates_at_minigrids_horizon(navix_id: str) -> None:
    """Only turns and `done`: reward 0 throughout, truncation exactly at step T in both envs,
    then the adapter's next observation is a fresh episode while `final_obs` is the real one."""
    pair = Pair(navix_id, 3)
    cycle = [LEFT, DONE, RIGHT, RIGHT, DONE, LEFT, LEFT]
    for t in range(1, pair.horizon + 1):
        reward, terminated, truncated, ours = pair.step(cycle[t % len(cycle)])
        assert reward == 0.0 and not terminated
        assert truncated == (t == pair.horizon), t
    _, reset, _ = adapter(navix_id)
    _, fresh = reset(pair.step_key)  # the adapter resets with the key of the ending step
    np.testing.assert_array_equal(np.asarray(ours.obs), np.asarray(fresh))


def test_doorkey_action_meanings() -> None:
    """Scripted DoorKey-8x8 episode, compared step by step with stock MiniGrid:
    toggling the locked door without the key does nothing; `drop` puts the key on the empty cell
    ahead and empties the hands (the door then stays locked); `drop` onto a door does nothing;
    toggling with the key unlocks and opens the door, toggling again closes and reopens it;
    `done` does nothing; the episode then ends on the goal with MiniGrid's reward."""
    pair = Pair("Navix-DoorKey-8x8-v0", 0)
    moves = (LEFT, RIGHT, FORWARD)

    pair.run([*plan(pair.stock, facing("door"), moves), TOGGLE])
    assert door_state(pair) == "locked"
    pair.run(plan(pair.stock, carrying_key, (*moves, PICKUP)))
    pair.run([DROP])
    assert pair.stock.carrying is None and facing("key")(pair.stock)
    pair.run([*plan(pair.stock, facing("door"), moves), TOGGLE])
    assert door_state(pair) == "locked"
    pair.run(plan(pair.stock, carrying_key, (*moves, PICKUP)))
    pair.run([*plan(pair.stock, facing("door"), moves), DROP])
    assert carrying_key(pair.stock)
    pair.run([TOGGLE])
    assert door_state(pair) == "open"
    pair.run([TOGGLE])
    assert door_state(pair) == "closed"
    pair.run([TOGGLE, DONE])
    assert door_state(pair) == "open"
    reward, terminated, _ = pair.run(plan(pair.stock, goal_reached, (*moves, TOGGLE)))
    assert terminated and reward == pytest.approx(1.0 - 0.9 * pair.t / pair.horizon)


def test_lava_ends_the_episode_with_no_reward() -> None:
    """DistShift1: walking into lava terminates with reward 0 (MiniGrid), also in navix's port."""
    pair = Pair("Navix-DistShift1-v0", 0)
    reward, terminated, truncated = pair.run([*plan(pair.stock, facing("lava"), MOVES), FORWARD])
    assert terminated and not truncated and reward == 0.0


@pytest.mark.parametrize("navix_id", list(TASKS))
def test_random_action_sequences_match(navix_id: str) -> None:
    """Seeded uniform random actions over all seven: every step matches until the episode ends."""
    compared = 0
    for seed in range(4):
        pair = Pair(navix_id, seed)
        rng = np.random.default_rng(seed)
        for _ in range(150):
            _, terminated, truncated, _ = pair.step(int(rng.integers(7)))
            compared += 1
            if terminated or truncated:
                break
    assert compared >= 100


def test_navix_first_person_is_navixs_see_through_crop() -> None:
    # navix's own crop (kept as observation=navix_first_person) sees through walls: no cell is
    # ever unseen; MiniGrid's view of the same DoorKey layout hides the cells behind the wall.
    key = jax.random.PRNGKey(0)
    ours = envs.make("navix:Navix-DoorKey-8x8-v0", observation="first_person")
    theirs = envs.make("navix:Navix-DoorKey-8x8-v0", observation="navix_first_person")
    assert ours.spec.obs_shape == theirs.spec.obs_shape == (7, 7, 3)
    _, view = jax.jit(ours.reset)(key)
    _, crop = jax.jit(theirs.reset)(key)
    assert np.any(np.asarray(view)[..., 0] == OBJECT_TO_IDX["unseen"])
    assert not np.any(np.asarray(crop)[..., 0] == OBJECT_TO_IDX["unseen"])
