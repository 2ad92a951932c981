"""The JAX KeyCorridor (`autotelic.envs.keycorridor`) against stock Farama MiniGrid.

Parity: the port and stock draw layouts with different random generators, so each comparison
first *aligns* them: the port's first full-grid observation is decoded into a MiniGrid `Grid` and
the stock env's grid, agent pose and target ball are overwritten with it. Both envs then receive
the same actions and are compared after every step: the full grid (stock's `grid.encode()` with
the agent drawn in, transposed to row-major) against the port's `final_obs` with
``observation="symbolic"``, the agent's pose, the 7x7 egocentric view (stock's `obs["image"]`)
against `final_obs` with ``observation="first_person"`` (a second port env fed the same keys),
reward, terminated and truncated. Action sequences: solutions planned on the stock env by
breadth-first search, stage by stage (fetch the key, open the locked door, pick up the ball; each
stage shortest), a scripted episode through pickup, drop, toggle (locked, unlocked, closing) and
done, idle episodes to the horizon, and seeded random actions (also on S6R3's large rooms, where
walls and doors hide more of the view).

The generator is checked over a few hundred layouts (structure, solvability, variety) and its
distribution against stock's own resets.
"""

from __future__ import annotations

import copy
import functools
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _minigrid import LockstepPair, agent_pose, align
from minigrid.core.actions import Actions  # importing minigrid registers its gymnasium ids
from minigrid.core.constants import OBJECT_TO_IDX

import autotelic.envs as envs
from autotelic.envs.keycorridor import SIZES, KeyCorridorEnv
from autotelic.errors import UserError

LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = (int(a) for a in Actions)
MOVES = (LEFT, RIGHT, FORWARD)
SOLVE = (LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE)
AGENT, DOOR = OBJECT_TO_IDX["agent"], OBJECT_TO_IDX["door"]
KEY, BALL, WALL = OBJECT_TO_IDX["key"], OBJECT_TO_IDX["ball"], OBJECT_TO_IDX["wall"]
LOCKED = 2
HORIZON = 270


# ------------------------------------------------------------------------------------ helpers


@functools.cache
def port(name: str, observation: str) -> tuple[KeyCorridorEnv, Callable, Callable]:
    env = envs.make(f"grid:{name}", observation=observation)
    return env, jax.jit(env.reset), jax.jit(env.step)


def align_corridor(stock: Any, obs: np.ndarray) -> None:
    """Put the layout of a port's symbolic observation into a reset stock env."""
    align(stock, obs)
    balls = [c for c in stock.grid.grid if c is not None and c.type == "ball"]
    assert len(balls) == 1
    stock.obj = balls[0]  # stock ends the episode when exactly this object is picked up


class Pair(LockstepPair):
    """The port (symbolic and first-person, same keys) and stock MiniGrid, in lockstep."""

    def __init__(self, seed: int, name: str = "KeyCorridorS3R3") -> None:
        self.env, reset, self._step = port(name, "symbolic")
        _, fp_reset, self._view_step = port(name, "first_person")
        key = jax.random.PRNGKey(seed)
        self.state, obs = reset(key)
        self.view_state, fp_obs = fp_reset(key)
        self.key = jax.random.PRNGKey(10_000 + seed)
        self.stock = gym.make(f"MiniGrid-{name}-v0").unwrapped
        self.stock.reset(seed=seed)
        align_corridor(self.stock, np.asarray(obs))
        image = self.stock.gen_obs()["image"]
        np.testing.assert_array_equal(np.asarray(fp_obs), image, err_msg="first view")
        self.t = 0


Goal = Callable[[Any, bool], bool]


def plan(stock: Any, reached: Goal, actions: tuple[int, ...]) -> list[int]:
    """Shortest action sequence from the stock env's state after which `reached(env, terminated)`
    holds, by breadth-first search over stock MiniGrid's own `step` (observations switched off).
    Leaves `stock` unchanged."""
    scratch = copy.deepcopy(stock)
    scratch.gen_obs = lambda: None
    code = stock.grid.encode().tobytes()

    def held(carrying: Any) -> Any:
        return None if carrying is None else carrying.encode()

    node = (stock.grid, code, tuple(stock.agent_pos), stock.agent_dir, stock.carrying)
    frontier = deque([(node, [])])
    seen = {(code, node[2], node[3], held(node[4]))}
    while frontier:
        (grid, code, pos, direction, carrying), path = frontier.popleft()
        for action in actions:
            changes = action not in MOVES
            scratch.grid = copy.deepcopy(grid) if changes else grid
            if changes:  # keep the target ball the grid's own object
                balls = [c for c in scratch.grid.grid if c is not None and c.type == "ball"]
                scratch.obj = balls[0] if balls else stock.obj
            scratch.agent_pos, scratch.agent_dir = pos, direction
            scratch.carrying = copy.deepcopy(carrying) if changes else carrying
            scratch.step_count = stock.step_count + len(path)
            _, _, terminated, truncated, _ = scratch.step(action)
            if reached(scratch, terminated):
                return [*path, action]
            if terminated or truncated:
                continue
            child_code = scratch.grid.encode().tobytes() if changes else code
            state = (child_code, tuple(scratch.agent_pos), scratch.agent_dir)
            if (*state, held(scratch.carrying)) not in seen:
                seen.add((*state, held(scratch.carrying)))
                child = (scratch.grid, *state, scratch.carrying)
                frontier.append((child, [*path, action]))
    raise AssertionError("the planner found no solution")


def solved(env: Any, terminated: bool) -> bool:
    return terminated


def solve(stock: Any) -> list[int]:
    """A solution planned stage by stage on the stock env, each stage a shortest one: fetch the
    key (unless the locked door is already open), open the locked door, then pick up the ball
    (dropping the key first). Leaves `stock` unchanged."""
    scratch = copy.deepcopy(stock)
    actions: list[int] = []

    def stage(reached: Goal, allowed: tuple[int, ...], then: tuple[int, ...] = ()) -> None:
        for action in [*plan(scratch, reached, allowed), *then]:
            scratch.step(action)
            actions.append(action)

    locked = any(getattr(c, "is_locked", False) for c in scratch.grid.grid)
    if locked and not carrying_key(scratch, False):
        stage(carrying_key, (*MOVES, TOGGLE, PICKUP))
    if locked:
        stage(facing("door", "locked"), (*MOVES, TOGGLE), (TOGGLE,))
    stage(solved, SOLVE)
    return actions


def carrying_key(env: Any, terminated: bool) -> bool:
    return env.carrying is not None and env.carrying.type == "key"


def facing(kind: str, state: str | None = None) -> Goal:
    def check(env: Any, terminated: bool) -> bool:
        cell = env.grid.get(*env.front_pos)
        if cell is None or cell.type != kind:
            return False
        return state is None or door_state(cell) == state

    return check


def facing_empty(env: Any, terminated: bool) -> bool:
    return env.grid.get(*env.front_pos) is None


def door_state(door: Any) -> str:
    return "open" if door.is_open else "locked" if door.is_locked else "closed"


def idle(n: int) -> list[int]:
    """n actions that change nothing but the direction (turn pairs and `done`)."""
    return ([LEFT, RIGHT] * (n // 2)) + [DONE] * (n % 2)


@functools.cache
def layouts(name: str, count: int) -> dict[str, np.ndarray]:
    """`count` first states of the port, vmapped: grid [N, H, W, 3], pos [N, 2], direction [N]."""
    env, _, _ = port(name, "symbolic")
    keys = jax.random.split(jax.random.PRNGKey(2024), count)
    state, obs = jax.jit(jax.vmap(env.reset))(keys)
    return {
        "grid": np.asarray(state.grid),
        "pos": np.asarray(state.pos),
        "direction": np.asarray(state.direction),
        "obs": np.asarray(obs),
    }


def solvable(grid: np.ndarray, pos: np.ndarray) -> bool:
    """Key reachable through empty cells and unlocked doors, then the ball through the locked
    door (opened with that key). Objects are picked up from the cell before them."""

    def reach(passable: np.ndarray) -> set[tuple[int, int]]:
        todo, seen = [tuple(pos)], {tuple(pos)}
        while todo:
            r, c = todo.pop()
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                n = (r + dr, c + dc)
                if n not in seen and passable[n]:
                    seen.add(n)
                    todo.append(n)
        return seen

    def touches(cells: set[tuple[int, int]], kind: int) -> bool:
        return any(
            grid[r + dr, c + dc, 0] == kind
            for r, c in cells
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
        )

    kinds, states = grid[..., 0], grid[..., 2]
    floor = kinds == OBJECT_TO_IDX["empty"]
    unlocked = floor | ((kinds == DOOR) & (states != LOCKED))
    before = reach(unlocked)
    if not (touches(before, KEY) and touches(before, DOOR)):
        return False
    after = reach(unlocked | (kinds == DOOR))  # the key is carried: every door opens
    return touches(after, BALL)


# ------------------------------------------------------------------------------------ parity


def test_spec_and_registry() -> None:
    env = envs.make("keycorridor-s3r3")
    assert isinstance(env, KeyCorridorEnv) and env.name == "KeyCorridorS3R3"
    stock = gym.make("MiniGrid-KeyCorridorS3R3-v0").unwrapped
    assert env.spec.max_steps == stock.max_steps == HORIZON
    assert env.spec.num_actions == stock.action_space.n == 7
    assert env.spec.obs_shape == (7, 7, 3) and env.spec.obs_kind == "grid"
    assert dict(env.spec.options)["observation"] == "first_person"
    symbolic = envs.make("grid:KeyCorridorS6R3", observation="symbolic")
    assert symbolic.spec.obs_shape == (16, 16, 3)
    assert envs.make("grid:KeyCorridorS3R3", max_steps=50).spec.max_steps == 50
    listing = envs.list_envs()["grid"]
    assert listing == sorted(f"grid:{name}" for name in SIZES)
    for name, (room_size, num_rows) in SIZES.items():
        stock = gym.make(f"MiniGrid-{name}-v0").unwrapped
        assert (stock.room_size, stock.num_rows) == (room_size, num_rows)
        assert KeyCorridorEnv(name).spec.max_steps == stock.max_steps


def test_explanations_name_minigrid_actions_and_channels() -> None:
    from autotelic.explain.evaluate import action_names, player_names

    spec = envs.make("keycorridor-s3r3").spec
    assert action_names(spec) == [a.name for a in Actions]
    assert player_names(spec, "channels") == ["object", "colour", "state"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"observation": "pixels"}, "'pixels'"),
        ({"max_steps": 0}, "got 0"),
        ({"max_steps": 2.5}, "got 2.5"),
        ({"max_steps": True}, "got True"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        envs.make("grid:KeyCorridorS3R3", **options)


def test_unknown_size() -> None:
    with pytest.raises(UserError, match="KeyCorridorS3R3"):
        envs.make("grid:KeyCorridorS3R4")


@pytest.mark.parametrize(
    ("name", "seeds"),
    [("KeyCorridorS3R3", range(12)), ("KeyCorridorS3R1", (0, 1)), ("KeyCorridorS4R3", (0, 1))],
)
def test_planned_solutions_match(name: str, seeds: range) -> None:
    """A solution planned on stock (fetch the key, open the locked door, drop the key, pick up
    the ball) solves the port at the same step, along the same trajectory and views."""
    for seed in seeds:
        pair = Pair(seed, name)
        actions = solve(pair.stock)
        assert PICKUP in actions and TOGGLE in actions and DROP in actions
        reward, terminated, truncated = pair.run(actions)
        assert terminated and not truncated
        assert reward == pytest.approx(1.0 - 0.9 * len(actions) / pair.env.spec.max_steps)


def test_scripted_episode() -> None:
    """Pickup, drop, toggle and done in every situation KeyCorridor offers, step by step against
    stock: the locked door stays locked without its key; drop with empty hands, drop onto a door,
    toggle on a key, pickup with full hands and pickup of the ball with the key in hand do
    nothing; the key unlocks and opens the door, which then closes (blocking the way) and opens
    again; an unlocked door of `connect_all` opens and closes (key in hand); the key is dropped,
    picked up and dropped again before the ball is fetched."""
    assert sum(scripted_episode(seed) for seed in range(4)) >= 1, "no unlocked door to toggle"


def scripted_episode(seed: int) -> bool:
    """The scripted episode of `test_scripted_episode` on one layout; whether it had an unlocked
    door to toggle."""
    pair = Pair(seed)
    stock = pair.stock
    locked_at = next(
        (x, y)
        for x in range(stock.width)
        for y in range(stock.height)
        if getattr(stock.grid.get(x, y), "is_locked", False)
    )

    def lock() -> str:
        return door_state(stock.grid.get(*locked_at))

    pair.run([*plan(stock, facing("door", "locked"), (*MOVES, TOGGLE)), TOGGLE, PICKUP])
    assert lock() == "locked"
    pair.run(plan(stock, carrying_key, (*MOVES, TOGGLE, PICKUP)))
    pair.run([DROP])
    assert stock.carrying is None and facing("key")(stock, False)
    pair.run([DROP, TOGGLE, PICKUP, PICKUP])
    assert carrying_key(stock, False)
    pair.run([*plan(stock, facing("door", "locked"), (*MOVES, TOGGLE)), DROP])
    assert carrying_key(stock, False), "dropped onto a door"
    pair.run([TOGGLE])
    assert lock() == "open"
    pair.run([TOGGLE])
    assert lock() == "closed"
    position = tuple(stock.agent_pos)
    pair.run([FORWARD])
    assert tuple(stock.agent_pos) == position, "walked through a closed door"
    pair.run([TOGGLE, DONE, FORWARD])
    assert lock() == "open" and tuple(stock.agent_pos) == locked_at
    pair.run([*plan(stock, facing("ball"), MOVES), PICKUP])
    assert carrying_key(stock, False), "picked up the ball with the key in hand"

    def other_door(env: Any, terminated: bool) -> bool:
        return facing("door")(env, terminated) and tuple(env.front_pos) != locked_at

    try:
        to_door = plan(stock, other_door, (*MOVES, TOGGLE))
    except AssertionError:  # no unlocked door in this layout
        to_door = None
    if to_door is not None:
        pair.run([*to_door, DONE])
        before = door_state(stock.grid.get(*stock.front_pos))
        pair.run([TOGGLE])
        assert door_state(stock.grid.get(*stock.front_pos)) != before
        pair.run([TOGGLE])
        assert door_state(stock.grid.get(*stock.front_pos)) == before
    pair.run([*plan(stock, facing_empty, MOVES), DROP, PICKUP, DROP])
    assert stock.carrying is None
    reward, terminated, _ = pair.run(solve(stock))
    assert terminated and reward == pytest.approx(1.0 - 0.9 * pair.t / HORIZON)
    return to_door is not None


def test_success_reward_as_a_function_of_the_step() -> None:
    """Idle steps before the shortest solution move the success step t: the reward follows
    1 - 0.9 * t / 270 up to t = 270 (0.1, terminated and not reported as truncated)."""
    solution = solve(Pair(5).stock)
    for delay in (0, 1, 100, HORIZON - len(solution)):
        pair = Pair(5)
        reward, terminated, stock_truncated = pair.run(idle(delay) + solution)
        t = delay + len(solution)
        assert terminated and reward == pytest.approx(1.0 - 0.9 * t / HORIZON), delay
    assert reward == pytest.approx(0.1) and stock_truncated and pair.stock.step_count == HORIZON


def test_idle_episode_truncates_at_270() -> None:
    """Turns and `done` only: reward 0 throughout, truncation exactly at step 270 in both envs;
    then `obs` is the next episode's first observation and `final_obs` the real last one."""
    pair = Pair(3)
    cycle = [LEFT, DONE, RIGHT, RIGHT, DONE, LEFT, LEFT]
    for t in range(1, HORIZON + 1):
        reward, terminated, truncated, ours = pair.step(cycle[t % len(cycle)])
        assert reward == 0.0 and float(ours.reward) == 0.0 and not terminated
        assert truncated == (t == HORIZON) == bool(ours.truncated), t
    _, reset, _ = port("KeyCorridorS3R3", "symbolic")
    _, fresh = reset(pair.step_key)  # the port resets with the key of the ending step
    np.testing.assert_array_equal(np.asarray(ours.obs), np.asarray(fresh))
    assert not np.array_equal(np.asarray(ours.obs), np.asarray(ours.final_obs))


@pytest.mark.parametrize(
    ("name", "seeds", "limit"),
    [("KeyCorridorS3R3", range(12), None), ("KeyCorridorS6R3", (0, 1), 400)],
)
def test_random_action_sequences_match(name: str, seeds: range, limit: int | None) -> None:
    """Seeded uniform random actions over all seven, on S3R3 from the start and from states where
    the key is in hand or the locked door is open: every step matches until the episode ends (or
    `limit` steps on S6R3)."""
    compared = 0
    for seed in seeds:
        pair = Pair(seed, name)
        if limit is None and seed % 3 == 1:
            pair.run(plan(pair.stock, carrying_key, (*MOVES, TOGGLE, PICKUP)))
        elif limit is None and seed % 3 == 2:
            pair.run(plan(pair.stock, carrying_key, (*MOVES, TOGGLE, PICKUP)))
            pair.run([*plan(pair.stock, facing("door", "locked"), (*MOVES, TOGGLE)), TOGGLE])
        rng = np.random.default_rng(seed)
        for _ in range(limit or HORIZON):
            _, terminated, truncated, _ = pair.step(int(rng.integers(7)))
            compared += 1
            if terminated or truncated:
                break
    assert compared >= 2000 if limit is None else compared == limit * len(seeds)


# ------------------------------------------------------------------------------------ generator


def test_generated_layouts() -> None:
    """300 S3R3 layouts: 7x7, walls around, one locked door in column 2's left wall whose colour
    is the one key's, the key in a room of column 0, the ball behind the locked door, the agent
    in the hallway facing a free cell or a wall, closed unlocked doors elsewhere, all solvable."""
    out = layouts("KeyCorridorS3R3", 300)
    assert out["grid"].shape == (300, 7, 7, 3)
    for grid, pos, direction, obs in zip(
        out["grid"], out["pos"], out["direction"], out["obs"], strict=True
    ):
        kinds, colours, states = grid[..., 0], grid[..., 1], grid[..., 2]
        assert np.all(kinds[[0, -1], :] == WALL) and np.all(kinds[:, [0, -1]] == WALL)
        locked = np.argwhere((kinds == DOOR) & (states == LOCKED))
        assert len(locked) == 1
        (door_row, door_col) = locked[0]
        keys, balls = np.argwhere(kinds == KEY), np.argwhere(kinds == BALL)
        assert len(keys) == 1 and len(balls) == 1
        assert colours[tuple(keys[0])] == colours[door_row, door_col]
        assert door_col == 4 and door_row % 2 == 1
        assert keys[0][1] == 1, "key outside column 0"
        assert tuple(balls[0]) == (door_row, 5), "ball not behind the locked door"
        assert pos[1] == 3 and 2 <= pos[0] <= 4, "agent outside the middle of the hallway"
        assert kinds[tuple(pos)] == OBJECT_TO_IDX["empty"]
        others = (kinds == DOOR) & (states != LOCKED)
        assert np.all(states[others] == 1), "connect_all doors are closed"
        assert 0 <= direction < 4 and agent_pose(obs) == (pos[0], pos[1], direction)
        assert solvable(grid, pos)
    assert len({g.tobytes() for g in out["grid"]}) > 150, "layouts barely vary with the key"


@pytest.mark.parametrize("name", ["KeyCorridorS3R1", "KeyCorridorS3R2", "KeyCorridorS6R3"])
def test_every_size_is_solvable(name: str) -> None:
    out = layouts(name, 100)
    room_size, num_rows = SIZES[name]
    assert out["grid"].shape[1:3] == ((room_size - 1) * num_rows + 1, (room_size - 1) * 3 + 1)
    for grid, pos in zip(out["grid"], out["pos"], strict=True):
        assert np.sum((grid[..., 0] == DOOR) & (grid[..., 2] == LOCKED)) == 1
        assert solvable(grid, pos)


def layout_features(grid: np.ndarray, pos: tuple[int, int], direction: int) -> dict[str, Any]:
    """What characterises an S3R3 layout: locked row, key row, agent pose, door walls."""
    kinds, states = grid[..., 0], grid[..., 2]
    locked = tuple(np.argwhere((kinds == DOOR) & (states == LOCKED))[0])
    doors = tuple(map(tuple, np.argwhere((kinds == DOOR) & (states != LOCKED))))
    return {
        "locked row": locked[0],
        "key row": int(np.argwhere(kinds == KEY)[0][0]),
        "agent": (*pos, direction),
        "number of doors": len(doors),
        "doors": (locked[0], doors),
    }


def test_layout_distribution_matches_stock() -> None:
    """Frequencies over 3000 layouts of each: the locked row, the key row, the agent's pose, the
    number of doors `connect_all` adds and the exact door set with the locked row (about 120
    kinds); the total variation distance between the port's and stock's frequencies stays at
    sampling noise (about 0.1 for the door sets, 0.03 for the rest)."""
    count = 3000
    ours = layouts("KeyCorridorS3R3", count)
    stock = gym.make("MiniGrid-KeyCorridorS3R3-v0").unwrapped
    theirs = []
    for seed in range(count):
        stock.reset(seed=seed)
        x, y = stock.agent_pos
        theirs.append(
            layout_features(stock.grid.encode().transpose(1, 0, 2), (y, x), stock.agent_dir)
        )
    mine = [
        layout_features(g, tuple(p), int(d))
        for g, p, d in zip(ours["grid"], ours["pos"], ours["direction"], strict=True)
    ]
    bounds = {"locked row": 0.05, "key row": 0.05, "agent": 0.08, "number of doors": 0.06}
    bounds["doors"] = 0.16
    for feature, bound in bounds.items():
        a = Counter(m[feature] for m in mine)
        b = Counter(t[feature] for t in theirs)
        distance = 0.5 * sum(abs(a[k] - b[k]) for k in set(a) | set(b)) / count
        assert distance < bound, (feature, distance, a.most_common(5), b.most_common(5))
    # the redundant doors stock's connect_all adds appear in the port too
    assert max(m["number of doors"] for m in mine) == max(t["number of doors"] for t in theirs)


# ------------------------------------------------------------------------------------ batching


def test_jit_vmap_and_auto_reset() -> None:
    """jit(vmap(step)) over 16 envs under a scan: one compiled program, state types stable; on
    the idle horizon every env truncates at 270 with `final_obs` the old episode's last view and
    `obs` the first view of the episode `reset(key)` starts."""
    env = KeyCorridorEnv("KeyCorridorS3R3")
    n = 16
    state, obs = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(7), n))
    assert obs.shape == (n, 7, 7, 3) and obs.dtype == jnp.uint8
    step = jax.jit(jax.vmap(env.step))

    @jax.jit
    def idle_run(state: Any, keys: jax.Array) -> Any:
        def body(state: Any, key: jax.Array) -> Any:
            actions = jnp.full((n,), DONE, dtype=jnp.int32)
            state, result = jax.vmap(env.step)(jax.random.split(key, n), state, actions)
            return state, (result.truncated, result.reward)

        return jax.lax.scan(body, state, keys)

    state, (truncated, reward) = idle_run(state, jax.random.split(jax.random.PRNGKey(1), 269))
    assert not bool(jnp.any(truncated)) and float(jnp.sum(reward)) == 0.0
    assert np.all(np.asarray(state.t) == 269)
    before = state
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    state, result = step(keys, state, jnp.full((n,), LEFT, dtype=jnp.int32))
    assert np.all(np.asarray(result.truncated)) and not np.any(np.asarray(result.terminated))
    turned = before._replace(direction=(before.direction + 3) % 4)
    np.testing.assert_array_equal(result.final_obs, jax.vmap(env.first_person)(turned))
    fresh_state, fresh_obs = jax.vmap(env.reset)(keys)
    np.testing.assert_array_equal(result.obs, fresh_obs)
    for leaf, expected in zip(jax.tree.leaves(state), jax.tree.leaves(fresh_state), strict=True):
        np.testing.assert_array_equal(leaf, expected)
        assert leaf.dtype == expected.dtype
    assert np.all(np.asarray(state.t) == 0)
    state, _ = step(keys, state, jnp.zeros(n, dtype=jnp.int32))
    assert step._cache_size() == 1
    # a random batch: successes end episodes at once and reset them the same way
    actions = jax.random.randint(jax.random.PRNGKey(3), (n,), 0, 7)
    _, result = step(keys, state, actions)
    assert result.obs.shape == result.final_obs.shape == (n, 7, 7, 3)
