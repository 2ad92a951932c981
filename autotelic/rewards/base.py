"""The slot a reward source fills.

A reward source is three pure functions over an explicit state pytree, in the manner of an optax
`GradientTransformation`:

    init(key, spec, num_envs) -> state
    reward(state, transition) -> (reward [N] f32, state)    every env step, in the rollout
    rollout_reward(state, rollout) -> (reward [T, N], state)   optional, the same over a rollout
    update(state, rollout, key) -> (state, metrics)         once per PPO update

`reward` runs inside the rollout's `lax.scan`, batched over the N envs, on one *real* transition
(the env adapters never show a reset as a transition). Sources with per-episode memory (E3B's
covariance, episodic kNN, NovelD's first-visit counts) reset it where `transition.done` is true.
`update` sees the whole rollout `[T, N, ...]` (e.g. to train a predictor). Both must be jit- and
vmap-able; everything a source needs to resume bit for bit lives in its state, which is
checkpointed with the run.

The training loop owns what is common to every source (its value head, discount, episodic flag,
coefficient and reward normalization), configured by `HeadConfig`; a source only says what the
reward *is*. Adding a source is one new file that calls `register`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..config import from_dict
from ..envs.base import EnvSpec, step_envs
from ..errors import UserError, unknown

Array = jax.Array


class Transition(NamedTuple):
    """One real transition per env: all fields have a leading `[N]` (or `[T, N]`) axis.

    obs:        s_t
    action:     a_t (int32)
    next_obs:   s_{t+1}, the real next observation (never the reset observation)
    terminated: bool, s_{t+1} is absorbing
    truncated:  bool, the time limit cut the episode after this transition
    extrinsic:  f32, the environment's reward for the transition
    caption:    int32 caption id of the transition (0: none), or None when the env gives none
    """

    obs: Array
    action: Array
    next_obs: Array
    terminated: Array
    truncated: Array
    extrinsic: Array
    caption: Array | None = None

    @property
    def done(self) -> Array:
        return self.terminated | self.truncated


def merge_moments(
    mean: Array, var: Array, count: Array, batch_mean: Array, batch_var: Array, batch_count: Array
) -> tuple[Array, Array, Array]:
    """Running (mean, var, count) with a batch's moments folded in: the parallel-variance
    combination of Chan, Golub & LeVeque 1979. With `count == 0` it returns the batch's."""
    delta = batch_mean - mean
    total = count + batch_count
    m2 = var * count + batch_var * batch_count + jnp.square(delta) * count * batch_count / total
    return mean + delta * batch_count / total, m2 / total, total


class RewardSource(NamedTuple):
    """`rollout_reward`, when a source has it, is `reward` over a whole rollout at once:
    `rollout_reward(state, transitions [T, N, ...]) -> (rewards [T, N], state)` gives what T
    calls of `reward` give. The training loop then scores the rollout after it is collected
    (no action depends on an intrinsic reward), which lets a source batch work that one step at a
    time cannot (episodic kNN: one pass over each env's memory for all T queries)."""

    init: Callable[[Array, EnvSpec, int], Any]
    reward: Callable[[Any, Transition], tuple[Array, Any]]
    update: Callable[[Any, Transition, Array], tuple[Any, dict[str, Array]]]
    rollout_reward: Callable[[Any, Transition], tuple[Array, Any]] | None = None


def stateless_rollout_reward(
    reward: Callable[[Any, Transition], tuple[Array, Any]],
) -> Callable[[Any, Transition], tuple[Array, Any]]:
    """`rollout_reward` for a source whose `reward` reads its state and never changes it (RND's
    prediction error): one call on the rollout flattened to `[T * N]`, one batch for the networks
    instead of T small ones. Not a gain for every network on a CPU: ICM's conv trunk on one batch
    of 4,096 DoorKey views took 151 ms against 98 ms in 64 batches of 64, so ICM scores step by
    step."""

    def rollout_reward(state: Any, rollout: Transition) -> tuple[Array, Any]:
        steps, num_envs = rollout.action.shape[:2]
        flat = jax.tree_util.tree_map(lambda x: x.reshape(steps * num_envs, *x.shape[2:]), rollout)
        reward_, _ = reward(state, flat)
        return reward_.reshape(steps, num_envs), state

    return rollout_reward


def scan_reward(source: RewardSource, state: Any, rollout: Transition) -> tuple[Array, Any]:
    """`reward` one step at a time over a rollout `[T, N]`: the definition `rollout_reward`
    must agree with, with the same signature."""
    state, rewards = jax.lax.scan(lambda s, t: source.reward(s, t)[::-1], state, rollout)
    return rewards, state


def random_rollouts(
    env: Any, num_envs: int, num_steps: int
) -> Callable[[tuple[Any, Array, Array]], tuple[tuple[Any, Array, Array], Transition]]:
    """A jitted collector of uniformly random-policy rollouts, for tests and measurements of
    reward sources: `collect((env_states, obs, key)) -> (carry, transitions [num_steps,
    num_envs])`, the envs stepped (and auto-reset) as in training."""

    def env_step(carry: Any, _: None) -> tuple[Any, Transition]:
        env_states, obs, key = carry
        key, k_action, k_env = jax.random.split(key, 3)
        action = jax.random.randint(k_action, (num_envs,), 0, env.spec.num_actions)
        env_states, step = step_envs(env, jax.random.split(k_env, num_envs), env_states, action)
        transition = Transition(
            obs, action, step.final_obs, step.terminated, step.truncated, step.reward
        )
        return (env_states, step.obs, key), transition

    return jax.jit(lambda carry: jax.lax.scan(env_step, carry, None, num_steps))


NORMALIZATIONS = ("return_std", "none")


@dataclass(frozen=True)
class HeadConfig:
    """Settings every intrinsic source has; a source's parameter class extends this.

    coef:      weight of this source's advantage in the policy advantage
    gamma:     this head's discount
    episodic:  true: returns stop at episode ends; false: they run across episodes (RND-style)
    normalize: "return_std" divides the reward by the running std of its discounted return
               (the RND paper's recipe, no mean subtraction); "none" leaves it raw
    """

    coef: float = 1.0
    gamma: float = 0.99
    episodic: bool = False
    normalize: str = "return_std"


@dataclass(frozen=True)
class SourceEntry:
    name: str
    params_class: type
    build: Callable[[Any, EnvSpec], RewardSource]
    check: Callable[[Any, EnvSpec], None] | None = None  # raises UserError if unusable here
    summary: str = ""
    needs_captions: bool = False  # reads Transition.caption: only envs that give captions


REGISTRY: dict[str, SourceEntry] = {}


def register(entry: SourceEntry) -> SourceEntry:
    REGISTRY[entry.name] = entry
    return entry


def _load_builtin_sources() -> None:
    # Importing the package registers every built-in source.
    from .. import rewards  # noqa: F401


def source_names(captions: bool = True) -> list[str]:
    """Registered source names; `captions=False` leaves out those that need caption ids."""
    _load_builtin_sources()
    return sorted(n for n, e in REGISTRY.items() if captions or not e.needs_captions)


def resolve_params(name: str, overrides: dict[str, Any]) -> Any:
    """The parameter dataclass of source `name` with `overrides` applied and checked."""
    _load_builtin_sources()
    if name not in REGISTRY:
        raise unknown("reward source", name, REGISTRY, "`autotelic rewards` lists them.")
    params = from_dict(REGISTRY[name].params_class, overrides, f"sources.{name}.")
    if not 0 <= params.gamma <= 1:
        raise UserError(f"sources.{name}.gamma must be in [0, 1], got {params.gamma}.")
    if params.normalize not in NORMALIZATIONS:
        raise UserError(
            f"sources.{name}.normalize must be one of {', '.join(NORMALIZATIONS)}, "
            f"got {params.normalize!r}."
        )
    return params


def build_sources(
    names: tuple[str, ...], settings: dict[str, dict[str, Any]], spec: EnvSpec
) -> tuple[tuple[RewardSource, ...], tuple[Any, ...]]:
    """The sources and their resolved parameters, checked against the env before compiling."""
    sources, params_list = [], []
    for name in names:
        params = resolve_params(name, settings.get(name, {}))
        entry = REGISTRY[name]
        if entry.check is not None:
            entry.check(params, spec)
        sources.append(entry.build(params, spec))
        params_list.append(params)
    return tuple(sources), tuple(params_list)


def params_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)
