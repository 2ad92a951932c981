"""NetHack through the host path: the observation encoding, NLE in the worker pool (time limit as
truncation, seeded episodes, message captions), the `nethack` network, and a short training run.

NLE is required, not optional, for these tests: without it they fail with the install hint."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from autotelic import config as config_module
from autotelic import runs
from autotelic.config import NetworkConfig
from autotelic.envs.host import (
    NETHACK_BLANK_GLYPH,
    NETHACK_BLSTATS,
    NETHACK_NUM_GLYPHS,
    HostEnv,
    HostPool,
    encode_nethack,
    env_rng,
    reset_env,
)
from autotelic.networks import make_network

try:
    import nle.nethack as nethack
except ImportError:
    nethack = None

INSTALL_HINT = (
    "NLE is not installed, so the NetHack host path is untested. Install it with "
    "`pip install nle==1.3.0` (a manylinux wheel for CPython 3.11); for MiniHack also "
    "`pip install minihack 'setuptools<81'`."
)
SCORE = "NetHackScore-v0"
SEARCH = 22  # NetHackScore's action 22 searches: the agent stays put and a turn passes


@pytest.fixture(autouse=True)
def require_nle():
    if nethack is None:
        pytest.fail(INSTALL_HINT, pytrace=False)


def test_nle_constants_match_the_installed_package():
    assert nethack.MAX_GLYPH + 1 == NETHACK_NUM_GLYPHS
    assert nethack.GLYPH_CMAP_OFF == NETHACK_BLANK_GLYPH  # S_stone is cmap entry 0
    assert nethack.NLE_BLSTATS_SIZE == NETHACK_BLSTATS


def test_encoding_crops_glyphs_around_the_agent_and_appends_blstats_and_message():
    env = HostEnv(SCORE, crop=9, message=True)
    gym_env = env.make_gym()
    try:
        raw = reset_env(gym_env, env_rng(0, 0, 0))
    finally:
        gym_env.close()
    obs = env.encoding(raw)
    assert env.spec.obs_kind == "nethack" and env.spec.obs_shape == (81 + 27 + 256,)
    assert obs.shape == env.spec.obs_shape and obs.dtype == np.int32
    x, y = int(raw["blstats"][0]), int(raw["blstats"][1])
    window = obs[:81].reshape(9, 9)
    assert window[4, 4] == raw["glyphs"][y, x]
    assert nethack.glyph_is_monster(int(window[4, 4]))  # the agent stands in the centre
    np.testing.assert_array_equal(obs[81:108], raw["blstats"])
    np.testing.assert_array_equal(obs[108:], raw["message"])

    # an agent in the map's corner: the window's first rows and columns are off the map
    corner = {**raw, "blstats": raw["blstats"].copy()}
    corner["blstats"][:2] = 0
    window = encode_nethack(corner, 9, False)[:81].reshape(9, 9)
    np.testing.assert_array_equal(window[4:, 4:], raw["glyphs"][:5, :5])
    assert np.all(window[:4] == NETHACK_BLANK_GLYPH) and np.all(
        window[:, :4] == NETHACK_BLANK_GLYPH
    )


def test_nle_in_the_pool_truncates_at_its_step_limit_and_replays_seeded_episodes():
    horizon, run_seed = 5, 11
    env = HostEnv(SCORE, max_episode_steps=horizon, workers=1)
    reference = env.make_gym()
    rng = env_rng(run_seed, 1, 0)  # env 1's documented episode seeds
    try:
        first = env.encoding(reset_env(reference, rng))
        second = env.encoding(reset_env(reference, rng))
    finally:
        reference.close()
    pool = HostPool(env, 2, run_seed)
    with pool:
        obs = pool.reset()
        np.testing.assert_array_equal(obs[1], first)
        for t in range(1, horizon + 1):
            step = pool.step(np.full(2, SEARCH))
            assert len(pool.last_captions) == 2
            decoded = [pool.vocabulary.text(i) for i in step.caption]
            assert decoded == pool.last_captions
            assert not step.terminated.any()
            assert step.truncated.all() == (t == horizon)
        # NLE ends the episode with end_status ABORTED; the pool reports it as a truncation
        np.testing.assert_array_equal(step.obs[1], second)  # the next seeded episode
        assert not np.array_equal(step.final_obs[1], step.obs[1])


def test_minihack_goes_through_the_same_path():
    try:
        import minihack  # noqa: F401
    except ImportError:
        pytest.fail(INSTALL_HINT, pytrace=False)
    env = HostEnv("MiniHack-Room-5x5-v0", max_episode_steps=3, workers=1)
    assert env.spec.obs_kind == "nethack" and env.spec.num_actions == 8
    with HostPool(env, 1, seed=0) as pool:
        pool.reset()
        flags = [pool.step(np.array([1])) for _ in range(3)]  # 1: east
    assert [bool(f.truncated[0]) for f in flags] == [False, False, True]
    assert not any(f.terminated[0] or f.success[0] for f in flags)


def test_the_nethack_network_is_small_and_reads_the_encoding():
    # Shapes only (abstract evaluation): the training run below checks the numbers.
    env = HostEnv(SCORE, message=True)
    network = make_network(env.spec, NetworkConfig(kind="nethack"), num_heads=2)
    params = jax.eval_shape(network.init, jax.random.PRNGKey(0))
    size = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))
    assert size < 400_000, size
    obs = jax.ShapeDtypeStruct((3, *env.spec.obs_shape), env.spec.obs_dtype)
    start = jax.ShapeDtypeStruct((3,), bool)
    _, logits, values = jax.eval_shape(network.apply, params, network.initial_carry(3), obs, start)
    assert logits.shape == (3, env.spec.num_actions) and values.shape == (3, 2)


def test_a_few_updates_of_ppo_on_nethack_score(tmp_path: Path):
    from autotelic.train import train

    config = config_module.build(
        {
            "env": f"gym:{SCORE}",
            "env_options": {"workers": 2},
            "steps": 3 * 4 * 32,
            "ppo": {"num_envs": 4, "num_steps": 32, "num_minibatches": 2, "update_epochs": 2},
            "network": {"kind": "nethack", "hidden": 32},
            "out": str(tmp_path / "run"),
        }
    )
    [summary] = train(config, tmp_path / "run", quiet=True)
    assert summary["updates"] == 3 and summary["env_steps"] == 384
    rows = runs.read_metrics(tmp_path / "run")
    assert [r["update"] for r in rows] == [1, 2, 3]
    assert all(r["finite"] for r in rows)  # finite loss and parameters, every update
    captions = (tmp_path / "run" / "captions.jsonl").read_text().splitlines()
    assert captions, "NetHack's messages must reach the run's caption vocabulary"
