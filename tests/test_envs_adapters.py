"""The `JaxEnv` contract (autotelic.envs.base) checked on every adapter with jitted random rollouts.

Each rollout is compiled once per module and shared by the tests that read it, which keeps the file
fast; the rollouts are seeded, so the episode ends they contain are the same on every run.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autotelic.envs as envs
from autotelic.envs.base import JaxEnv
from autotelic.envs.gymnax_env import EXCLUDED, GymnaxEnv, gymnax_ids
from autotelic.envs.keycorridor import KeyCorridorEnv
from autotelic.envs.navix_env import NavixEnv
from autotelic.envs.xminigrid_env import XMiniGridEnv, xminigrid_ids
from autotelic.errors import UserError

NUM_ENVS = 8
NUM_STEPS = 300

# name -> (adapter factory, whether the seeded rollout must contain terminations / truncations)
ROLLOUTS: dict[str, tuple[Any, bool, bool]] = {
    "navix-empty": (lambda: NavixEnv("Navix-Empty-5x5-v0"), True, True),
    "xminigrid-empty": (lambda: XMiniGridEnv("MiniGrid-Empty-5x5"), True, True),
    "gymnax-cartpole": (lambda: GymnaxEnv("CartPole-v1", max_steps=30), True, True),
    "gymnax-breakout": (lambda: GymnaxEnv("Breakout-MinAtar", max_steps=20), True, True),
    "gymnax-frozenlake": (lambda: GymnaxEnv("FrozenLake-misc", max_steps=20), True, True),
    # random actions never fetch the key, open the door and pick up the ball in 30 steps
    "grid-keycorridor": (lambda: KeyCorridorEnv("KeyCorridorS3R3", max_steps=30), False, True),
}


def rollout(env: JaxEnv, num_steps: int = NUM_STEPS, seed: int = 0) -> dict[str, np.ndarray]:
    """Random actions on `NUM_ENVS` envs under one jit: every StepResult field, the episode length
    including each step, and the observation `reset` gives for each step's key."""

    def run(key: jax.Array) -> Any:
        key, reset_key = jax.random.split(key)
        state, obs = jax.vmap(env.reset)(jax.random.split(reset_key, NUM_ENVS))

        def body(carry: Any, step_key: jax.Array) -> Any:
            state, length = carry
            action_key, env_key = jax.random.split(step_key)
            actions = jax.random.randint(action_key, (NUM_ENVS,), 0, env.spec.num_actions)
            keys = jax.random.split(env_key, NUM_ENVS)
            state, result = jax.vmap(env.step)(keys, state, actions)
            _, reset_obs = jax.vmap(env.reset)(keys)
            length = length + 1
            done = result.terminated | result.truncated
            out = {**result._asdict(), "length": length, "reset_obs": reset_obs}
            return (state, jnp.where(done, 0, length)), out

        carry = (state, jnp.zeros(NUM_ENVS, dtype=jnp.int32))
        _, outs = jax.lax.scan(body, carry, jax.random.split(key, num_steps))
        return obs, outs

    first_obs, outs = jax.jit(run)(jax.random.key(seed))
    return {"first_obs": np.asarray(first_obs), **{k: np.asarray(v) for k, v in outs.items()}}


@functools.cache
def cached_rollout(name: str) -> tuple[JaxEnv, dict[str, np.ndarray]]:
    env = ROLLOUTS[name][0]()
    return env, rollout(env)


@pytest.fixture(params=sorted(ROLLOUTS))
def rolled(request: pytest.FixtureRequest) -> tuple[str, JaxEnv, dict[str, np.ndarray]]:
    env, out = cached_rollout(request.param)
    return request.param, env, out


def test_shapes_and_dtypes(rolled: tuple[str, JaxEnv, dict[str, np.ndarray]]) -> None:
    _, env, out = rolled
    spec = env.spec
    batch = (NUM_STEPS, NUM_ENVS)
    assert out["first_obs"].shape == (NUM_ENVS, *spec.obs_shape)
    for name in ("first_obs", "obs", "final_obs"):
        assert out[name].dtype == np.dtype(spec.obs_dtype), name
    assert out["obs"].shape == out["final_obs"].shape == (*batch, *spec.obs_shape)
    assert out["reward"].shape == batch and out["reward"].dtype == np.float32
    for name in ("terminated", "truncated", "success"):
        assert out[name].shape == batch and out[name].dtype == np.bool_, name
    assert np.isfinite(out["reward"]).all()
    if spec.obs_kind == "grid":
        assert len(spec.obs_categories) == spec.obs_shape[-1]
        limits = np.asarray(spec.obs_categories)
        for name in ("first_obs", "obs", "final_obs"):
            assert (out[name] < limits).all(), name
    elif spec.obs_kind == "vector":
        assert len(spec.obs_shape) == 1
    else:
        assert spec.obs_kind == "image" and len(spec.obs_shape) == 3


def test_terminated_and_truncated_exclusive(
    rolled: tuple[str, JaxEnv, dict[str, np.ndarray]],
) -> None:
    name, _, out = rolled
    _, expect_terminated, expect_truncated = ROLLOUTS[name]
    assert not (out["terminated"] & out["truncated"]).any()
    # the seeded rollout exercises both kinds of episode end, so the other tests check something
    assert out["terminated"].any() == expect_terminated
    assert out["truncated"].any() == expect_truncated
    assert not (out["success"] & ~out["terminated"]).any()


def test_reset_in_same_call(rolled: tuple[str, JaxEnv, dict[str, np.ndarray]]) -> None:
    _, _, out = rolled
    done = out["terminated"] | out["truncated"]
    obs, final_obs = out["obs"], out["final_obs"]
    # not done: the observation to act on is the real next observation, bit for bit
    np.testing.assert_array_equal(obs[~done], final_obs[~done])
    # done: `obs` is what `reset(key)` gives for the step's key, `final_obs` the real last one
    np.testing.assert_array_equal(obs[done], out["reset_obs"][done])
    differs = (obs[done] != final_obs[done]).reshape(done.sum(), -1).any(axis=1)
    assert differs.mean() > 0.5


def test_episode_lengths(rolled: tuple[str, JaxEnv, dict[str, np.ndarray]]) -> None:
    _, env, out = rolled
    length = out["length"]
    assert length.max() <= env.spec.max_steps
    assert (length[out["truncated"]] == env.spec.max_steps).all()
    # an episode only reaches the horizon by ending there
    at_limit = length == env.spec.max_steps
    assert (out["terminated"] | out["truncated"])[at_limit].all()


def test_gymnax_final_obs_is_the_real_terminal_state() -> None:
    # CartPole terminates when |x| > 2.4 or |theta| > 12 degrees and resets to values in +-0.05:
    # the terminal observation is out of bounds, the next episode's first one is not.
    _, out = cached_rollout("gymnax-cartpole")
    terminal = out["final_obs"][out["terminated"]]
    out_of_bounds = (np.abs(terminal[:, 0]) > 2.4) | (np.abs(terminal[:, 2]) > 12 * np.pi / 180)
    assert out_of_bounds.all()
    assert (np.abs(out["obs"][out["terminated"] | out["truncated"]]) <= 0.05).all()


@pytest.mark.parametrize("name", ["navix-empty", "xminigrid-empty"], ids=["navix", "xminigrid"])
def test_minigrid_success_reward(name: str) -> None:
    env, out = cached_rollout(name)
    success = out["success"]
    assert success.any()
    expected = 1.0 - 0.9 * out["length"][success] / env.spec.max_steps
    np.testing.assert_allclose(out["reward"][success], expected, atol=1e-6)
    assert (out["reward"][~success] == 0.0).all()


@pytest.mark.parametrize(
    "env",
    [
        NavixEnv("Navix-Empty-8x8-v0", max_steps=5),
        XMiniGridEnv("MiniGrid-Empty-8x8", max_steps=5),
    ],
    ids=["navix", "xminigrid"],
)
def test_truncation_exactly_at_max_steps(env: JaxEnv) -> None:
    # The goal is at least 10 moves away (opposite corner of the 6x6 room; DoorKey would also do,
    # but compiles several times slower), so every episode is cut at exactly 5 steps.
    assert env.spec.max_steps == 5
    out = rollout(env, num_steps=23, seed=1)
    done = out["terminated"] | out["truncated"]
    expected = np.zeros_like(done)
    expected[4::5] = True
    np.testing.assert_array_equal(done, expected)
    assert out["truncated"][4::5].all() and not out["terminated"].any()
    assert (out["length"][4::5] == 5).all()


@pytest.mark.parametrize("semantics,expected", [("minigrid", 1.0 - 0.9 * 5 / 100), ("navix", 1.0)])
def test_navix_goal_reward(semantics: str, expected: float) -> None:
    # Empty-5x5: the agent starts at (1, 1) facing east, the goal is at (3, 3). navix's default
    # (MiniGrid) action set: 0 rotate counter-clockwise, 1 rotate clockwise, 2 forward.
    env = NavixEnv("Navix-Empty-5x5-v0", semantics=semantics)
    assert env.spec.max_steps == 100
    state, _ = env.reset(jax.random.key(0))
    step = jax.jit(env.step)
    actions = [2, 2, 1, 2, 2]
    for t, action in enumerate(actions, start=1):
        state, result = step(jax.random.key(t), state, jnp.int32(action))
        if t < len(actions):
            assert not result.terminated and not result.truncated and result.reward == 0.0
    assert result.terminated and result.success and not result.truncated
    assert abs(float(result.reward) - expected) < 1e-6


@pytest.mark.parametrize(
    "env",
    [
        NavixEnv("Navix-Empty-5x5-v0"),
        XMiniGridEnv("MiniGrid-Empty-5x5"),
        GymnaxEnv("CartPole-v1"),
        KeyCorridorEnv("KeyCorridorS3R3"),
    ],
    ids=["navix", "xminigrid", "gymnax", "grid"],
)
def test_no_recompilation(env: JaxEnv) -> None:
    keys = jax.random.split(jax.random.key(0), NUM_ENVS)
    state, _ = jax.vmap(env.reset)(keys)
    step = jax.jit(jax.vmap(env.step))
    actions = jnp.zeros(NUM_ENVS, dtype=jnp.int32)
    for i in range(3):
        state, _ = step(jax.random.split(jax.random.key(i + 1), NUM_ENVS), state, actions)
    assert step._cache_size() == 1


def test_registry() -> None:
    with pytest.raises(UserError, match="Navix-DoorKey-8x8-v0"):
        envs.make("navix:Navix-DoorKey-8x8-v1")
    with pytest.raises(UserError, match="namespace"):
        envs.make("nosuchpackage:Thing-v0")
    assert isinstance(envs.make("doorkey-5x5"), NavixEnv)
    with pytest.raises(UserError, match="navix:Navix-DoorKey-5x5-v0"):
        envs.make("Navix-DoorKey-5x5-v0")
    listing = envs.list_envs()
    for namespace in ("navix", "xminigrid", "gymnax"):
        assert listing[namespace], namespace
        assert all(i.startswith(f"{namespace}:") for i in listing[namespace])
    assert "xminigrid:MiniGrid-DoorKey-8x8" in listing["xminigrid"]
    assert "gymnax:CartPole-v1" in listing["gymnax"]
    xminigrid_env = envs.make("xminigrid:MiniGrid-Empty-5x5", max_steps=7)
    assert xminigrid_env.spec.max_steps == 7 and xminigrid_env.spec.obs_categories == (13, 12)


def test_xminigrid_listing_and_errors() -> None:
    ids = xminigrid_ids()
    assert ids == sorted(ids) and "MiniGrid-Empty-5x5" in ids
    with pytest.raises(UserError, match="MiniGrid-DoorKey-8x8"):
        XMiniGridEnv("MiniGrid-DoorKey-8x9")
    with pytest.raises(UserError, match="max_steps"):
        XMiniGridEnv("MiniGrid-Empty-5x5", max_steps=0)
    # The adapter relies on xminigrid.make giving the bare env, whose step never resets (its
    # auto-reset wrapper would replace the last observation before the adapter could keep it).
    import xminigrid
    from xminigrid.wrappers import Wrapper

    assert not isinstance(xminigrid.make("MiniGrid-Empty-5x5")[0], Wrapper)


def test_gymnax_listing_and_errors() -> None:
    ids = gymnax_ids()
    assert ids == sorted(ids) and "CartPole-v1" in ids
    assert not set(EXCLUDED) & set(ids)
    with pytest.raises(UserError, match="continuous"):
        GymnaxEnv("Pendulum-v1")
    with pytest.raises(UserError, match="continuous"):
        envs.make("gymnax:MountainCarContinuous-v0")
    with pytest.raises(UserError, match="not supported"):
        GymnaxEnv("MNISTBandit-bsuite")
    spec = GymnaxEnv("Breakout-MinAtar").spec
    assert (spec.obs_kind, spec.obs_shape, spec.obs_dtype) == ("image", (10, 10, 4), "float32")
    spec = GymnaxEnv("Acrobot-v1").spec
    assert (spec.obs_kind, spec.obs_shape, spec.max_steps) == ("vector", (6,), 500)


def _signature(tree: Any) -> Any:
    leaves = jax.tree_util.tree_leaves(tree)
    return jax.tree_util.tree_structure(tree), [(x.shape, x.dtype, x.weak_type) for x in leaves]


def assert_stable_state(env: JaxEnv) -> None:
    """`step` hands back a state of exactly the type `reset` made (else a jitted rollout would
    recompile or fail), and results of the documented shapes; abstract evaluation only."""
    key = jax.random.key(0)
    state, obs = jax.eval_shape(env.reset, key)
    new_state, result = jax.eval_shape(env.step, key, state, jnp.int32(0))
    assert _signature(new_state) == _signature(state), env.spec.env_id
    assert (obs.shape, str(obs.dtype)) == (env.spec.obs_shape, env.spec.obs_dtype)
    assert _signature(result.obs) == _signature(result.final_obs) == _signature(obs)
    assert (result.reward.shape, result.reward.dtype) == ((), jnp.float32)
    for flag in (result.terminated, result.truncated, result.success):
        assert (flag.shape, flag.dtype) == ((), jnp.bool_)


def test_every_gymnax_id_constructs_or_is_continuous() -> None:
    continuous = []
    for name in gymnax_ids():
        try:
            env = GymnaxEnv(name)
        except UserError as error:
            assert "continuous" in str(error)
            continuous.append(name)
            continue
        assert_stable_state(env)
        assert env.spec.obs_kind in ("vector", "image")
    assert sorted(continuous) == [
        "MountainCarContinuous-v0",
        "Pendulum-v1",
        "PointRobot-misc",
        "Reacher-misc",
        "Swimmer-misc",
    ]


@pytest.mark.parametrize(
    "env_id",
    [
        "navix:Navix-DoorKey-8x8-v0",
        "navix:Navix-KeyCorridorS3R3-v0",
        "xminigrid:MiniGrid-DoorKey-8x8",
        "xminigrid:MiniGrid-MemoryS8",
        "xminigrid:MiniGrid-Playground",
        "xminigrid:XLand-MiniGrid-R4-9x9",
        "grid:KeyCorridorS3R3",
    ],
)
def test_state_type_stable(env_id: str) -> None:
    assert_stable_state(envs.make(env_id))


@pytest.mark.parametrize(
    ("make_env", "some_end_alone"),
    [
        # DoorKey's reset is the costly one `step_batch` avoids; a 7-step horizon ends all 24 envs
        # at once (3 passes of 8). Random walks reach Empty's goal, so there some envs end alone.
        (lambda: NavixEnv("Navix-DoorKey-5x5-v0", observation="first_person", max_steps=7), False),
        (lambda: NavixEnv("Navix-Empty-5x5-v0", max_steps=20), True),
        (lambda: KeyCorridorEnv("KeyCorridorS3R1", observation="first_person", max_steps=5), False),
        (lambda: XMiniGridEnv("MiniGrid-Empty-5x5", max_steps=20), True),
    ],
    ids=["navix-doorkey", "navix-empty", "grid-keycorridor", "xminigrid-empty"],
)
def test_batched_step_with_lazy_resets_equals_vmapped_step(
    make_env: Any, some_end_alone: bool
) -> None:
    """`step_envs` (the adapter's `step_batch`, which builds fresh states only for the envs that
    ended) gives exactly what `vmap(env.step)` gives, state and StepResult, step after step,
    also when more envs end in one step than one reset pass covers and when none end."""
    from autotelic.envs.base import reset_chunk, step_envs

    env = make_env()
    num_envs = 24
    assert hasattr(env, "step_batch")

    def run(step: Any) -> Any:
        def body(state: Any, key: jax.Array) -> Any:
            action_key, env_key = jax.random.split(key)
            actions = jax.random.randint(action_key, (num_envs,), 0, env.spec.num_actions)
            return step(jax.random.split(env_key, num_envs), state, actions)

        state, _ = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(1), num_envs))
        return jax.lax.scan(body, state, jax.random.split(jax.random.PRNGKey(2), 60))

    batched = jax.jit(lambda: run(functools.partial(step_envs, env)))()
    vmapped = jax.jit(lambda: run(jax.vmap(env.step)))()
    leaves_b, leaves_v = jax.tree_util.tree_leaves(batched), jax.tree_util.tree_leaves(vmapped)
    assert len(leaves_b) == len(leaves_v)
    for b, v in zip(leaves_b, leaves_v, strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(v))
    ended = np.asarray(vmapped[1].terminated | vmapped[1].truncated).sum(axis=1)
    assert ended.max() > reset_chunk(num_envs), "no step ended more envs than one pass resets"
    assert (ended == 0).any()
    assert ((ended > 0) & (ended < num_envs)).any() == some_end_alone
