"""Count, SimHash, RND, RDD and NovelD rewards pinned to closed forms and to the properties that
make them exploration bonuses.

Observations come from a seeded random rollout on navix Empty-5x5 (34 distinct fully observed
states). "Familiar" states are those with the agent in the two left columns of the room, "novel"
those with the agent in the right column; distillation sources are trained on familiar states only.

Measured with the default settings (predictor lr 1e-4, 4 init seeds), mean reward of familiar over
novel states: RND 0.18-0.20 after 2 updates and about 0.055 after 10; RDD 0.20-0.21 and about
0.12 (its familiar reward stays about twice RND's: the sigma^2 / n pseudo-count term). With
observation normalization off, raw grid codes (0..10) make the first updates' error about ten
times larger and the same on every state (ratio 0.93-1.00 after 2 updates): the predictor first
fits what all observations share; after 10 updates the ratio is still 0.37-0.42, against 0.055
with normalization.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autotelic.envs as envs
from autotelic import runs
from autotelic.errors import UserError
from autotelic.rewards.base import RewardSource, Transition, build_sources
from autotelic.rewards.count import CountState, count_visits
from autotelic.rewards.rnd import Distiller

GRID_ENV = "navix:Navix-Empty-5x5-v0"
AGENT = 10  # navix/MiniGrid object tag of the agent (channel 0)


@functools.cache
def grid_spec() -> envs.EnvSpec:
    return envs.make(GRID_ENV).spec


@functools.cache
def grid_states() -> tuple[np.ndarray, np.ndarray]:
    """The distinct observations of a seeded random rollout `[S, 5, 5, 3]` uint8, and a mask `[S]`
    of the familiar ones (agent in column 1 or 2)."""
    env = envs.make(GRID_ENV)
    num_envs, num_steps = 16, 64

    def collect(key: jax.Array) -> jax.Array:
        state, _ = jax.vmap(env.reset)(jax.random.split(key, num_envs))

        def body(carry: Any, step_key: jax.Array) -> tuple[Any, jax.Array]:
            action_key, env_key = jax.random.split(step_key)
            actions = jax.random.randint(action_key, (num_envs,), 0, env.spec.num_actions)
            state, result = jax.vmap(env.step)(jax.random.split(env_key, num_envs), carry, actions)
            return state, result.final_obs

        _, next_obs = jax.lax.scan(body, state, jax.random.split(key, num_steps))
        return next_obs

    obs = np.asarray(jax.jit(collect)(jax.random.PRNGKey(0))).reshape(-1, *env.spec.obs_shape)
    states = np.unique(obs.reshape(len(obs), -1), axis=0).reshape(-1, *env.spec.obs_shape)
    column = np.array([np.argwhere(s[..., 0] == AGENT)[0][1] for s in states])
    return states, column <= 2


def transitions(obs: Any, next_obs: Any, done: Any = False, obs_ndim: int = 3) -> Transition:
    """Transitions whose leading axes (`[N]` or `[T, N]`) are those of `next_obs` beyond its last
    `obs_ndim` observation axes."""
    next_obs = jnp.asarray(next_obs)
    batch = next_obs.shape[: next_obs.ndim - obs_ndim]
    done = jnp.broadcast_to(jnp.asarray(done), batch)
    return Transition(
        obs=jnp.asarray(obs),
        action=jnp.zeros(batch, jnp.int32),
        next_obs=next_obs,
        terminated=done,
        truncated=jnp.zeros(batch, bool),
        extrinsic=jnp.zeros(batch, jnp.float32),
    )


def familiar_rollout() -> Transition:
    """`[16, 16]` transitions into familiar states, the same every call."""
    states, familiar = grid_states()
    pool = states[familiar]
    index = np.random.RandomState(0).randint(0, len(pool), 16 * 16)
    obs = pool[index].reshape(16, 16, *pool.shape[1:])
    return transitions(obs, obs)


def source(name: str, settings: dict[str, Any], spec: envs.EnvSpec) -> tuple[RewardSource, Any]:
    (built,), (params,) = build_sources((name,), {name: settings}, spec)
    return built, params


@functools.cache
def trained(name: str, settings: tuple[tuple[str, Any], ...] = ()) -> dict[int, Any]:
    """States of source `name` after 0, 2 and 10 updates on the familiar rollout."""
    built, _ = source(name, dict(settings), grid_spec())
    state = built.init(jax.random.PRNGKey(0), grid_spec(), 16)
    update = jax.jit(built.update)
    rollout = familiar_rollout()
    history = {0: state}
    for i in range(10):
        state, metrics = update(state, rollout, jax.random.PRNGKey(100 + i))
        assert np.isfinite(metrics["predictor_loss"])
        history[i + 1] = state
    return history


def familiar_and_novel_reward(
    name: str, state: Any, settings: dict[str, Any]
) -> tuple[float, float]:
    """Mean reward for entering familiar and novel states."""
    built, _ = source(name, settings, grid_spec())
    states, familiar = grid_states()
    reward, _ = jax.jit(built.reward)(state, transitions(states, states))
    reward = np.asarray(reward)
    return float(reward[familiar].mean()), float(reward[~familiar].mean())


# ------------------------------------------------------------------------------------ count


def test_exact_count_bonus_is_beta_over_sqrt_n_across_envs_and_episodes() -> None:
    beta = 0.5
    built, params = source("count", {"beta": beta}, grid_spec())
    assert params.normalize == "none"  # the paper adds the raw bonus
    states, _ = grid_states()
    a, b, c = states[0], states[1], states[2]
    # Three envs, four steps; envs are counted in env order within a step, and an episode end
    # (done) never resets the global counts.
    steps = [
        ([a, a, b], [False, False, False]),
        ([b, c, a], [True, False, False]),
        ([a, a, a], [False, True, True]),
        ([c, b, c], [False, False, False]),
    ]
    state = built.init(jax.random.PRNGKey(0), grid_spec(), 3)
    reward_fn = jax.jit(built.reward)
    seen: dict[bytes, int] = {}
    for next_obs, done in steps:
        expected = []
        for obs in next_obs:
            seen[obs.tobytes()] = seen.get(obs.tobytes(), 0) + 1
            expected.append(np.float32(beta) / np.sqrt(np.float32(seen[obs.tobytes()])))
        batch = np.stack(next_obs)
        reward, state = reward_fn(state, transitions(batch, batch, np.asarray(done)))
        np.testing.assert_array_equal(np.asarray(reward), np.asarray(expected, np.float32))
    assert seen[a.tobytes()] == 6  # the last step paid beta / sqrt(6) to env 2
    _, metrics = built.update(state, None, jax.random.PRNGKey(0))
    assert int(metrics["distinct_states"]) == 3 and int(metrics["overflow"]) == 0


def test_exact_count_is_exact_under_slot_collisions_and_reports_a_full_table() -> None:
    # 8 distinct states in an 8-slot table: every slot fills, so most keys probe past a taken
    # slot; counts must still be exact. A 9th state finds no room: it pays beta, is reported.
    built, _ = source("count", {"beta": 1.0, "table_size": 8}, grid_spec())
    states, _ = grid_states()
    state = built.init(jax.random.PRNGKey(0), grid_spec(), 1)
    reward_fn = jax.jit(built.reward)
    for visit in range(1, 4):
        for s in states[:8]:
            reward, state = reward_fn(state, transitions(s[None], s[None]))
            assert float(reward[0]) == np.float32(1.0) / np.sqrt(np.float32(visit))
    reward, state = reward_fn(state, transitions(states[8][None], states[8][None]))
    assert float(reward[0]) == 1.0
    _, metrics = built.update(state, None, jax.random.PRNGKey(0))
    assert int(metrics["distinct_states"]) == 8
    assert float(metrics["table_load"]) == 1.0
    assert int(metrics["overflow"]) == 1


def test_count_table_matches_sequential_linear_probing_across_vmapped_tables() -> None:
    # All N visits of a step are placed at once; the counts must equal one-visit-at-a-time
    # linear probing, per table, under vmap over seeds too. Keys are drawn from a small pool and
    # many share a start slot (equal low bits) in a 64-slot table, so groups of equal keys,
    # probe chains and several new keys racing for one empty slot all occur; 40 distinct keys
    # never fill the table.
    size, seeds, num, steps = 64, 3, 16, 12
    rng = np.random.default_rng(0)
    pool_a = (rng.integers(0, 8, 40) + size * rng.integers(0, 2**20, 40)).astype(np.uint32)
    pool_b = rng.integers(0, 2**32, 40, dtype=np.uint64).astype(np.uint32)
    picks = rng.integers(0, 40, (steps, seeds, num))
    empty = jnp.zeros((seeds, size), jnp.uint32)
    state = CountState(
        counts=jnp.zeros((seeds, size), jnp.int32),
        key_a=empty,
        key_b=empty,
        projection=jnp.zeros((seeds, 0, 1)),
        overflow=jnp.zeros((seeds,), jnp.int32),
    )
    visits = jax.jit(jax.vmap(count_visits))
    tables: list[dict[int, list[int]]] = [{} for _ in range(seeds)]  # slot -> [key index, n]
    for step in range(steps):
        state, n = visits(state, jnp.asarray(pool_a[picks[step]]), jnp.asarray(pool_b[picks[step]]))
        for seed in range(seeds):
            expected = []
            for key in picks[step, seed]:
                slot = int(pool_a[key]) % size
                while slot in tables[seed] and tables[seed][slot][0] != key:
                    slot = (slot + 1) % size
                entry = tables[seed].setdefault(slot, [key, 0])
                entry[1] += 1
                expected.append(entry[1])
            np.testing.assert_array_equal(np.asarray(n[seed]), expected)
    for seed in range(seeds):
        held = {int(k): c for k, c in tables[seed].values()}
        counts = np.asarray(state.counts[seed])
        assert sorted(counts[counts > 0]) == sorted(held.values())
        assert int(state.overflow[seed]) == 0


def test_simhash_counts_identical_observations_together_and_far_ones_apart() -> None:
    spec = envs.make("gymnax:CartPole-v1").spec
    built, params = source("count", {"beta": 1.0}, spec)  # hash=auto -> simhash on vectors
    assert params.hash == "auto"
    state = built.init(jax.random.PRNGKey(3), spec, 2)
    reward_fn = jax.jit(built.reward)
    x = np.asarray([0.03, -0.2, 0.05, 0.4], np.float32)
    far = -x  # sgn(A(-x)) = -sgn(Ax): every one of the k bits differs

    def visit(state: Any, obs: np.ndarray) -> tuple[np.ndarray, Any]:
        reward, state = reward_fn(state, transitions(obs, obs, obs_ndim=1))
        return 1.0 / np.square(np.asarray(reward)), state  # the count n

    counts, state = visit(state, np.stack([x, x]))
    np.testing.assert_allclose(counts, [1, 2], rtol=1e-6)  # identical: one code
    counts, state = visit(state, np.stack([far, x]))
    np.testing.assert_allclose(counts, [1, 3], rtol=1e-6)  # far apart: a new code
    # SimHash codes depend on direction only: 2x shares x's code.
    counts, state = visit(state, np.stack([2 * x, far]))
    np.testing.assert_allclose(counts, [4, 2], rtol=1e-6)


def test_count_check_rejects_exact_counts_on_vector_observations() -> None:
    spec = envs.make("gymnax:CartPole-v1").spec
    message = "exact counts need discrete observations; use sources.count.hash=simhash"
    with pytest.raises(UserError, match=re.escape(message)):
        build_sources(("count",), {"count": {"hash": "exact"}}, spec)
    with pytest.raises(UserError, match="power of two"):
        build_sources(("count",), {"count": {"table_size": 1000}}, grid_spec())


# ------------------------------------------------------------------------------------ RND / RDD


@pytest.mark.parametrize("name", ["rnd", "rdd"])
def test_reward_is_zero_until_the_first_rollout_initialises_the_normalizer(name: str) -> None:
    history = trained(name)
    before, _ = familiar_and_novel_reward(name, history[0], {})
    after_familiar, after_novel = familiar_and_novel_reward(name, history[1], {})
    assert before == 0.0
    assert after_familiar > 0.0 and after_novel > 0.0
    distill = history[1].distill if name == "rdd" else history[1]
    assert float(distill.obs_stats.count) == 16 * 16  # the whole first rollout


@pytest.mark.parametrize("name", ["rnd", "rdd"])
def test_trained_states_pay_well_below_unseen_states(name: str) -> None:
    history = trained(name)
    familiar, novel = familiar_and_novel_reward(name, history[10], {})
    assert familiar / novel < 0.3, (familiar, novel)
    # The bonus decays with training on the same states (RDD: the pseudo-count and discrepancy
    # terms both shrink), while unseen states keep most of theirs.
    familiar_early, novel_early = familiar_and_novel_reward(name, history[2], {})
    assert familiar < 0.5 * familiar_early
    assert novel > 0.5 * novel_early


def test_rnd_observation_normalization_is_what_separates_novel_from_familiar_early() -> None:
    norm_on = trained("rnd")
    norm_off = trained("rnd", (("obs_norm", False),))
    off = {"obs_norm": False}
    on_familiar, on_novel = familiar_and_novel_reward("rnd", norm_on[2], {})
    off_familiar, off_novel = familiar_and_novel_reward("rnd", norm_off[2], off)
    assert on_familiar / on_novel < 0.3
    # Off: after 2 updates the error is about the same on familiar and novel states, and an
    # order of magnitude larger (the raw codes' shared offset still dominates it).
    assert off_familiar / off_novel > 0.8
    assert off_familiar > 5 * on_familiar
    # Off: the gap opens later and stays weaker.
    on_ratio = np.divide(*familiar_and_novel_reward("rnd", norm_on[10], {}))
    off_ratio = np.divide(*familiar_and_novel_reward("rnd", norm_off[10], off))
    assert off_ratio > 3 * on_ratio


# ------------------------------------------------------------------------------------ NovelD


@functools.cache
def noveld_after_training() -> tuple[RewardSource, Any, Any]:
    built, params = source("noveld", {}, grid_spec())
    state = built.init(jax.random.PRNGKey(0), grid_spec(), 2)
    update = jax.jit(built.update)
    # the rollout has 16 envs, the memory 2: update touches only the distillation part
    rollout = familiar_rollout()
    for i in range(5):
        state, _ = update(state, rollout, jax.random.PRNGKey(i))
    return built, params, state


def test_noveld_equals_the_novelty_gain_on_first_visits_only() -> None:
    built, params, state = noveld_after_training()
    assert params.alpha == 0.5 and params.coef == 0.05 and params.normalize == "none"
    states, familiar = grid_states()
    known, fresh = states[familiar][:2], states[~familiar][:3]

    distiller = Distiller(params, grid_spec())

    def novelty(obs: np.ndarray) -> np.ndarray:
        predicted, target = distiller.outputs(state.distill, jnp.asarray(obs))
        return np.linalg.norm(np.asarray(predicted) - np.asarray(target), axis=-1)

    reward_fn = jax.jit(built.reward)
    # env 0 walks known[0] -> fresh[0] -> fresh[1] -> fresh[0]: the return to fresh[0] pays 0.
    # env 1 walks fresh[2] -> known[1] -> fresh[2] -> fresh[2]: only next observations enter the
    # memory, so reaching its start fresh[2] is a first visit; reaching it again pays 0.
    walk = [
        (np.stack([known[0], fresh[2]]), np.stack([fresh[0], known[1]])),
        (np.stack([fresh[0], known[1]]), np.stack([fresh[1], fresh[2]])),
        (np.stack([fresh[1], fresh[2]]), np.stack([fresh[0], fresh[2]])),
    ]
    first_visit = [[True, True], [True, True], [False, False]]
    memory_state = state
    paid_something = False
    for (obs, next_obs), first in zip(walk, first_visit, strict=True):
        reward, memory_state = reward_fn(memory_state, transitions(obs, next_obs))
        gain = np.maximum(novelty(next_obs) - 0.5 * novelty(obs), 0.0)
        expected = np.where(first, gain, 0.0)
        np.testing.assert_allclose(np.asarray(reward), expected, rtol=1e-5, atol=1e-6)
        paid_something |= bool((expected > 0).any())
    assert paid_something  # the closed form was checked on non-zero values too
    # entering a familiar state from a novel one is below the alpha-scaled novelty: pays 0
    assert novelty(known[1:2])[0] < 0.5 * novelty(fresh[2:3])[0]


def test_noveld_episodic_memory_resets_after_the_terminal_transition() -> None:
    built, _, state = noveld_after_training()
    states, familiar = grid_states()
    start, target = states[familiar][0], states[~familiar][0]
    obs, next_obs = np.stack([start, start]), np.stack([target, target])
    reward_fn = jax.jit(built.reward)

    # Both envs enter `target` three times. Env 0's second entry ends its episode; env 1's never
    # does. The terminal entry is still a repeat within the ending episode (pays 0); only the
    # transition after it starts with an empty memory.
    r1, state = reward_fn(state, transitions(obs, next_obs, np.asarray([False, False])))
    r2, state = reward_fn(state, transitions(obs, next_obs, np.asarray([True, False])))
    r3, state = reward_fn(state, transitions(obs, next_obs, np.asarray([False, False])))
    r1, r2, r3 = np.asarray(r1), np.asarray(r2), np.asarray(r3)
    assert r1[0] > 0 and r1[1] > 0
    np.testing.assert_array_equal(r2, [0.0, 0.0])
    assert r3[0] == r1[0]  # new episode in env 0: first visit again
    assert r3[1] == 0.0
    np.testing.assert_array_equal(np.asarray(state.memory.length), [1, 1])


def test_train_warns_once_when_the_count_table_passes_half_full(capsys, tmp_path) -> None:
    from autotelic.cli import main

    args = ["train", "--env", "navix:Navix-DoorKey-5x5-v0", "--reward", "count", "--quiet"]
    args += ["--steps", "768", "--num-envs", "8", "--out", str(tmp_path / "run")]
    args += ["ppo.num_steps=32", "network.kind=mlp", "sources.count.table_size=16"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("warning: the count table is") == 1, err
    assert "sources.count.table_size" in err
    loads = [row["count/table_load"] for row in runs.read_metrics(tmp_path / "run")]
    assert max(loads) > 0.5  # the warning spoke the truth
