"""The worker-process pool keeps the adapters' contract on stock MiniGrid: one `step` is one real
transition per env, reset in the same call, the real last observation in `final_obs`, terminated
and truncated apart, success flagged, env seeds derived from the run seed; a dead or failing
worker raises a clear error and closing stops every worker."""

from __future__ import annotations

import os
import signal
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

from autotelic.envs.host import HostEnv, HostEnvError, HostPool

LEFT, RIGHT, FORWARD = 0, 1, 2
EMPTY = "MiniGrid-Empty-5x5-v0"


def documented_seeds(run_seed: int, env_index: int, epoch: int = 0):
    """Episode seeds as autotelic.envs.host documents them: SeedSequence([seed, env, epoch])."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([run_seed, env_index, epoch])))
    while True:
        yield int(rng.integers(0, 2**31 - 1))


def test_pool_steps_like_stock_minigrid_with_same_call_autoreset():
    """Three envs in two workers against three stock envs stepped by hand with the same actions."""
    num_envs, run_seed, horizon = 3, 7, 10
    pool = HostPool(HostEnv(EMPTY, workers=2, kwargs={"max_steps": horizon}), num_envs, run_seed)
    assert [len(g) for g in pool.groups] == [2, 1]
    stock = [gym.make(EMPTY, max_steps=horizon, disable_env_checker=True) for _ in range(num_envs)]
    seeds = [documented_seeds(run_seed, j) for j in range(num_envs)]
    first = [e.reset(seed=next(s))[0]["image"] for e, s in zip(stock, seeds, strict=True)]
    expected_obs = np.stack(first)
    rng = np.random.default_rng(0)
    lengths, running = [], np.zeros(num_envs, int)
    seen = {"terminated": 0, "truncated": 0}
    try:
        obs = pool.reset()
        np.testing.assert_array_equal(obs, expected_obs)
        for _ in range(100):
            actions = rng.choice([LEFT, RIGHT, FORWARD], size=num_envs, p=[0.2, 0.2, 0.6])
            step = pool.step(actions)
            running += 1
            for j, env in enumerate(stock):
                raw, reward, terminated, truncated, _ = env.step(int(actions[j]))
                # final_obs is the real next observation, before any reset
                np.testing.assert_array_equal(step.final_obs[j], raw["image"])
                assert step.reward[j] == np.float32(reward)
                assert step.terminated[j] == terminated
                # a goal reached on the horizon step is a termination only
                assert step.truncated[j] == (truncated and not terminated)
                assert step.success[j] == (terminated and reward > 0)
                if terminated or truncated:
                    seen["terminated" if terminated else "truncated"] += 1
                    lengths.append((running[j], bool(step.truncated[j])))
                    running[j] = 0
                    raw, _ = env.reset(seed=next(seeds[j]))
                # obs after an episode end is the next episode's first observation
                np.testing.assert_array_equal(step.obs[j], raw["image"])
    finally:
        pool.close()
    assert seen["terminated"] > 0 and seen["truncated"] > 0, seen
    assert all(n == horizon for n, truncated in lengths if truncated)
    assert all(n < horizon for n, truncated in lengths if not truncated)


def test_goal_on_the_horizon_step_is_terminated_with_the_real_last_observation():
    # Empty-5x5: the agent starts at (1, 1) facing east, the goal is at (3, 3); five steps reach
    # it, and with max_steps=5 MiniGrid reports that step as terminated *and* truncated.
    pool = HostPool(HostEnv(EMPTY, kwargs={"max_steps": 5}), 1, seed=0)
    with pool:
        first = pool.reset()
        for action in (FORWARD, FORWARD, RIGHT, FORWARD):
            step = pool.step(np.array([action]))
            assert not (step.terminated[0] or step.truncated[0])
        step = pool.step(np.array([FORWARD]))
        assert step.terminated[0] and not step.truncated[0] and step.success[0]
        assert step.reward[0] == np.float32(1 - 0.9 * 5 / 5)
        assert pool.last_captions == ["reached the goal"]
        assert pool.vocabulary.text(int(step.caption[0])) == "reached the goal"
        np.testing.assert_array_equal(step.obs, first)  # fixed layout: the reset looks the same
        assert not np.array_equal(step.final_obs, first)  # the goal is in front of the agent


def test_a_killed_worker_raises_a_clear_error_and_the_pool_stops():
    pool = HostPool(HostEnv(EMPTY, workers=2), 4, seed=0)
    pool.reset()
    processes = pool.processes
    os.kill(processes[1].pid, signal.SIGKILL)
    processes[1].join(timeout=10)
    with pytest.raises(HostEnvError, match=r"worker 1 of gym:MiniGrid-Empty-5x5-v0 .*died"):
        pool.step(np.zeros(4, int))
    assert not any(p.is_alive() for p in processes), "the other workers must be stopped too"
    with pytest.raises(HostEnvError, match="died"):  # and the pool stays failed
        pool.step(np.zeros(4, int))


def test_an_env_error_in_a_worker_is_reported_with_its_traceback():
    pool = HostPool(HostEnv(EMPTY), 2, seed=0)
    pool.reset()
    processes = pool.processes
    with pytest.raises(HostEnvError, match=r"(?s)failed:.*Unknown action"):
        pool.step(np.array([0, 99]))
    assert processes and not any(p.is_alive() for p in processes)


def test_close_stops_every_worker_cleanly():
    pool = HostPool(HostEnv(EMPTY, workers=2), 2, seed=0)
    pool.reset()
    processes = pool.processes
    assert len(processes) == 2 and all(p.is_alive() for p in processes)
    pool.close()
    assert [p.exitcode for p in processes] == [0, 0]
    pool.close()  # idempotent
