"""No reward source ever treats an auto-reset as a transition.

At a step that ends an episode, the adapter resets in the same call: `StepResult.obs` is the first
observation of the next episode and `final_obs` the real last one. The PPO rollout must hand
every source `Transition(obs=s_t, next_obs=s_{t+1})` with `s_{t+1}` the real `final_obs`, and the
next transition must start from the new episode's first observation; a pair (last observation of
one episode -> first observation of the next) must never reach a source.

One trainer is compiled with every registered source at once (so sources added later are covered
without editing this file), each wrapped in a recorder that logs the transitions the source
receives and the rewards it returns, plus a spy that also logs what `update` receives. It runs
two PPO updates on navix DistShift1 with a 6-step horizon: many episode ends per rollout, cut by
the time limit (truncated) or by a step into the lava two cells ahead of the start (terminated).
The ground truth is the same env stepped by hand with the recorded actions; DistShift1's reset is
deterministic (a fixed layout, agent at (1, 1) facing east), so the replay needs no keys.

Per source: the transitions it received equal the ground truth; the rewards it paid inside the
rollout equal its `reward` replayed on the true transitions from the same starting state; and the
same replay on transitions that contain the reset (the reset observation as `next_obs` at episode
ends, or the reset step (last obs -> reset obs) standing in for the next episode's first
transition) gives different rewards, so the check would catch either mistake. For `count`, the
table after the run holds exactly the visit counts of the true next observations.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autotelic.envs as envs
from autotelic.config import build
from autotelic.ppo import TrainState, host, make_trainer
from autotelic.rewards.base import REGISTRY, HeadConfig, RewardSource, Transition, build_sources
from autotelic.rewards.base import source_names as registered_sources
from autotelic.rewards.count import count_visit, fingerprint_multipliers, observation_fingerprint

ENV, HORIZON = "navix:Navix-DistShift1-v0", 6
NUM_ENVS, NUM_STEPS, UPDATES = 8, 16, 2
LOG = NUM_STEPS * UPDATES
SPY = "spy"
# Narrow networks and single-minibatch updates for every source that has these settings: the
# same code paths, less to initialise op by op and to compile.
SMALL = {
    "hidden": 16,
    "features": 16,
    "embedding_dim": 16,
    "update_epochs": 1,
    "num_minibatches": 1,
    "table_size": 1024,
}


class Log(NamedTuple):
    """`[LOG, N, ...]` records, one row per env step, and the next row to write."""

    obs: jax.Array
    action: jax.Array
    next_obs: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    reward: jax.Array
    row: jax.Array


def empty_log(spec: Any, num_envs: int, rows: int = LOG) -> Log:
    obs = jnp.zeros((rows, num_envs, *spec.obs_shape), spec.obs_dtype)
    flag = jnp.zeros((rows, num_envs), bool)
    return Log(
        obs=obs,
        action=jnp.zeros((rows, num_envs), jnp.int32),
        next_obs=obs,
        terminated=flag,
        truncated=flag,
        reward=jnp.zeros((rows, num_envs), jnp.float32),
        row=jnp.zeros((), jnp.int32),
    )


def write(log: Log, row: jax.Array, transition: Transition, reward: jax.Array) -> Log:
    fields = (transition.obs, transition.action, transition.next_obs)
    fields += (transition.terminated, transition.truncated, reward)
    return Log(*(column.at[row].set(x) for column, x in zip(log[:6], fields, strict=True)), row)


def recorded(source: RewardSource) -> RewardSource:
    """`source` unchanged, plus a log of every transition it receives and reward it returns."""

    def init(key: jax.Array, spec: Any, num_envs: int) -> tuple[Any, Log]:
        return source.init(key, spec, num_envs), empty_log(spec, num_envs)

    def reward(state: tuple[Any, Log], transition: Transition) -> tuple[jax.Array, Any]:
        inner, log = state
        value, inner = source.reward(inner, transition)
        log = write(log, log.row, transition, value)._replace(row=log.row + 1)
        return value, (inner, log)

    def update(state: tuple[Any, Log], rollout: Transition, key: jax.Array) -> tuple[Any, Any]:
        inner, log = state
        inner, metrics = source.update(inner, rollout, key)
        return (inner, log), metrics

    return RewardSource(init, reward, update)


def spy() -> RewardSource:
    """Pays nothing; logs what `reward` receives and, separately, the rollouts `update` gets."""

    def init(key: jax.Array, spec: Any, num_envs: int) -> tuple[Log, Log]:
        return empty_log(spec, num_envs), empty_log(spec, num_envs)

    def reward(state: tuple[Log, Log], transition: Transition) -> tuple[jax.Array, Any]:
        seen, updates = state
        zero = jnp.zeros(transition.action.shape, jnp.float32)
        seen = write(seen, seen.row, transition, zero)._replace(row=seen.row + 1)
        return zero, (seen, updates)

    def update(state: tuple[Log, Log], rollout: Transition, key: jax.Array) -> tuple[Any, Any]:
        seen, updates = state
        rows = updates.row + jnp.arange(NUM_STEPS)
        zero = jnp.zeros(rollout.action.shape, jnp.float32)
        updates = write(updates, rows, rollout, zero)._replace(row=updates.row + NUM_STEPS)
        return (seen, updates), {}

    return RewardSource(init, reward, update)


@dataclasses.dataclass(frozen=True)
class CompiledReset:
    """`env` with a compiled `reset`, so that the trainer's eager `init` does not run navix's
    reset op by op (a reset holds no QR factorization, the reason `ppo.init_seeds` stays eager)."""

    env: Any

    @property
    def spec(self) -> Any:
        return self.env.spec

    @functools.cached_property
    def reset(self) -> Any:
        return jax.jit(self.env.reset)

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> Any:
        return self.env.step(key, state, action)


def small_settings(name: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(REGISTRY[name].params_class)}
    return {key: value for key, value in SMALL.items() if key in fields}


class Run(NamedTuple):
    env: Any
    names: tuple[str, ...]
    sources: tuple[RewardSource, ...]  # the real, unwrapped sources
    states: list[TrainState]  # before update 1, after update 1, after update 2


@functools.cache
def run() -> Run:
    names = tuple(registered_sources(captions=False))
    config = build(
        {
            "env": ENV,
            "env_options": {"max_steps": HORIZON},
            "rewards": list(names),
            "sources": {name: small_settings(name) for name in names},
            "steps": NUM_ENVS * NUM_STEPS * UPDATES,
            "ppo": {
                "num_envs": NUM_ENVS,
                "num_steps": NUM_STEPS,
                "update_epochs": 1,
                "num_minibatches": 1,
            },
            "network": {"kind": "mlp", "hidden": 16},
        }
    )
    env = CompiledReset(envs.make(config.env, **config.env_options))
    sources, params = build_sources(names, config.sources, env.spec)
    wrapped = (*(recorded(s) for s in sources), spy())
    heads = (*params, HeadConfig(normalize="none"))
    trainer = make_trainer(config, env, wrapped, heads, (*names, SPY))
    update = jax.jit(trainer.update)
    states = [trainer.init(jax.random.PRNGKey(0))]  # eagerly, as ppo.init_seeds explains
    for _ in range(UPDATES):
        states.append(update(states[-1])[0])
    return Run(env, names, tuple(sources), [host(s) for s in states])


class Truth(NamedTuple):
    """The env stepped by hand with the recorded actions: `[LOG, N, ...]`."""

    obs: np.ndarray
    next_obs: np.ndarray  # the real s_{t+1} (`final_obs`)
    terminated: np.ndarray
    truncated: np.ndarray
    extrinsic: np.ndarray
    following: np.ndarray  # the observation the agent acts on next (the reset one after an end)

    def transitions(self, action: np.ndarray) -> Transition:
        return Transition(
            self.obs, action, self.next_obs, self.terminated, self.truncated, self.extrinsic
        )


@functools.cache
def truth() -> Truth:
    r = run()
    actions = r.states[-1].source_states[-1][0].action
    step = jax.jit(jax.vmap(r.env.step))
    keys = jax.random.split(jax.random.PRNGKey(123), NUM_ENVS)  # the reset is deterministic
    env_state, obs = r.states[0].env_state, r.states[0].obs
    rows: list[tuple[np.ndarray, ...]] = []
    for t in range(LOG):
        env_state, result = step(keys, env_state, jnp.asarray(actions[t]))
        real = (result.final_obs, result.terminated, result.truncated, result.reward)
        rows.append((obs, *host(real)))
        obs = np.asarray(result.obs)
        rows[-1] += (obs,)
    return Truth(*(np.stack(column) for column in zip(*rows, strict=True)))


def reset_observation() -> np.ndarray:
    return np.asarray(run().env.reset(jax.random.PRNGKey(7))[1])  # any key: a fixed layout


def contaminated(action: np.ndarray, kind: str) -> Transition:
    """The ground truth with the reset treated as a transition (what the tests must rule out).

    "reset_as_next_obs": at an episode end, next_obs is the next episode's first observation.
    "reset_step":        the transition after an episode end is (last obs -> reset obs), the step
                         navix's deferred auto-reset would add, in place of the real first one.
    """
    tr = truth()
    next_obs, obs = tr.next_obs.copy(), tr.obs.copy()
    done = tr.terminated | tr.truncated
    if kind == "reset_as_next_obs":
        next_obs[done] = tr.following[done]
    else:
        after = np.zeros_like(done)
        after[1:] = done[:-1]
        obs[after] = tr.next_obs[:-1][done[:-1]]
        next_obs[after] = tr.obs[after]
    return tr.transitions(action)._replace(obs=obs, next_obs=next_obs)


@functools.cache
def jitted_reward(source: RewardSource) -> Any:
    return jax.jit(source.reward)


def replay(source: RewardSource, start: Any, transitions: Transition, rows: range) -> np.ndarray:
    """`source.reward` applied step by step to `transitions[rows]` from state `start`."""
    reward = jitted_reward(source)
    state, paid = jax.device_put(start), []
    for t in rows:
        value, state = reward(
            state, jax.tree_util.tree_map(lambda x, t=t: jnp.asarray(x[t]), transitions)
        )
        paid.append(np.asarray(value))
    return np.stack(paid)


# ------------------------------------------------------------------------------------ tests


def test_the_run_ends_many_episodes_on_observations_unlike_the_reset() -> None:
    """Makes the other tests meaningful: episode ends whose real last observation differs from
    the reset observation are where a reset mistaken for a transition would show."""
    tr = truth()
    done = tr.terminated | tr.truncated
    telling = done & ~np.all(tr.next_obs == reset_observation(), axis=(2, 3, 4))
    assert telling.sum() >= 10, telling.sum()
    assert (telling & tr.terminated).any() and (telling & tr.truncated).any()
    assert np.all(tr.following[done] == reset_observation())


@pytest.mark.parametrize("seen_by", ["reward", "update"])
def test_rollout_hands_sources_the_real_transitions(seen_by: str) -> None:
    r, tr = run(), truth()
    seen, updates = r.states[-1].source_states[-1]
    log = seen if seen_by == "reward" else updates
    assert int(log.row) == LOG
    np.testing.assert_array_equal(log.obs, tr.obs)
    np.testing.assert_array_equal(log.next_obs, tr.next_obs)
    np.testing.assert_array_equal(log.terminated, tr.terminated)
    np.testing.assert_array_equal(log.truncated, tr.truncated)
    # No transition leads from one episode into the next one's first observation: the obs after
    # an end is the reset observation and is never the next_obs of the ending transition
    # (except where the real last observation happens to equal it).
    done = tr.terminated | tr.truncated
    crossing = done & np.all(log.next_obs == tr.following, axis=(2, 3, 4))
    real_lookalike = done & np.all(tr.next_obs == tr.following, axis=(2, 3, 4))
    np.testing.assert_array_equal(crossing, real_lookalike)
    starts = np.zeros_like(done)
    starts[1:] = done[:-1]
    np.testing.assert_array_equal(log.obs[starts], tr.following[:-1][done[:-1]])
    # Within an episode s_{t+1} is the next transition's s_t (`embed_rollout` relies on it).
    inside = ~done[:-1]
    assert inside.any()
    np.testing.assert_array_equal(log.obs[1:][inside], log.next_obs[:-1][inside])


@pytest.fixture(params=registered_sources(captions=False))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_source_receives_real_transitions_and_pays_their_rewards(name: str) -> None:
    r, tr = run(), truth()
    k = r.names.index(name)
    log = r.states[-1].source_states[k][1]
    np.testing.assert_array_equal(log.obs, tr.obs)
    np.testing.assert_array_equal(log.next_obs, tr.next_obs)
    np.testing.assert_array_equal(log.terminated, tr.terminated)
    np.testing.assert_array_equal(log.truncated, tr.truncated)

    # Rewards of the second rollout (the first initialises RND-style normalizers and pays 0),
    # replayed from the source's state at its start.
    start = r.states[1].source_states[k][0]
    rows = range(NUM_STEPS, LOG)
    expected = replay(r.sources[k], start, tr.transitions(log.action), rows)
    np.testing.assert_allclose(log.reward[NUM_STEPS:], expected, rtol=1e-4, atol=1e-6)

    scale = np.abs(expected).max()
    assert scale > 0, f"{name} paid nothing in the second rollout"
    gaps = {
        kind: np.abs(
            replay(r.sources[k], start, contaminated(log.action, kind), rows) - expected
        ).max()
        for kind in ("reset_as_next_obs", "reset_step")
    }
    assert max(gaps.values()) > 1e-3 * scale, f"{name}: the reset would go unnoticed: {gaps}"


def test_count_table_holds_only_real_next_observations() -> None:
    r, tr = run(), truth()
    table = r.states[-1].source_states[r.names.index("count")][0]
    assert int(table.counts.sum()) == LOG * NUM_ENVS
    flat = tr.next_obs.reshape(LOG * NUM_ENVS, -1)
    distinct, occurrences = np.unique(flat, axis=0, return_counts=True)
    multipliers = jnp.asarray(fingerprint_multipliers(flat.shape[1]))
    key_a, key_b = observation_fingerprint(jnp.asarray(distinct), multipliers)
    device_table, visit = jax.device_put(table), jax.jit(count_visit)
    for a, b, expected in zip(key_a, key_b, occurrences, strict=True):
        _, n = visit(device_table, a, b)  # n counts this extra (discarded) visit
        assert int(n) - 1 == expected
    assert int((table.counts > 0).sum()) == len(distinct)
