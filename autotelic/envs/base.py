"""The environment contract every JAX-native adapter fulfils.

The packages autotelic wraps disagree on reset conventions: navix resets on the call *after* a
terminal step and that call consumes the action; gymnax resets inside `step` and drops the real
terminal observation; xminigrid leaves resets to the caller. An adapter hides all of that behind one
rule: **every call to `step` is one real transition**. When the transition ends an episode, the
adapter resets in the same call, returns the first observation of the next episode as `obs`, and
keeps the real last observation in `final_obs` (used to bootstrap on truncation and by reward
sources, which must never see the reset as a transition).

All functions are pure and jit/vmap-able; an adapter instance is a static, hashable description.
An adapter may also offer `step_batch(keys, states, actions)`, a batched `step` with the same
results that skips work a vmapped `step` cannot skip (navix, `grid:` and xminigrid build fresh
states only for the envs that ended, see `lazy_auto_reset`); learners step batches through
`step_envs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclass(frozen=True)
class EnvSpec:
    """What a learner needs to know about an environment, uniform across packages.

    `obs_kind` is "grid" for integer-coded grids `[H, W, C]` whose channel c takes values in
    `[0, obs_categories[c])` (MiniGrid-style symbolic observations; networks one-hot them), or
    "vector" for float vectors `[D]`, "image" for float images `[H, W, C]`, or "nethack" for the
    host path's NetHack/MiniHack encoding (one int32 vector: glyph crop, bottom-line stats,
    message bytes; the layout is in `options`, see `autotelic.envs.host`).
    """

    env_id: str
    obs_shape: tuple[int, ...]
    obs_dtype: str
    obs_kind: str
    num_actions: int
    max_steps: int
    obs_categories: tuple[int, ...] = ()
    description: str = ""
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)


class StepResult(NamedTuple):
    """One real transition of one environment (add a leading axis when vmapped over envs).

    obs:        next observation to act on (first observation of a new episode when done)
    reward:     f32[] extrinsic reward of the transition
    terminated: bool[] the episode ended in an absorbing state (do not bootstrap)
    truncated:  bool[] the episode was cut by the time limit (bootstrap from `final_obs`)
    final_obs:  the real next observation s_{t+1}, before any reset
    success:    bool[] the episode ended by reaching its goal
    caption:    int32[] id of the text caption of the transition (0: none), or None for envs
                that give no captions; ids index the run's caption vocabulary
    """

    obs: Array
    reward: Array
    terminated: Array
    truncated: Array
    final_obs: Array
    success: Array
    caption: Array | None = None


class JaxEnv(Protocol):
    """A JAX-native environment: `reset(key) -> (state, obs)`, `step(key, state, action)`."""

    spec: EnvSpec

    def reset(self, key: Array) -> tuple[Any, Array]: ...

    def step(self, key: Array, state: Any, action: Array) -> tuple[Any, StepResult]: ...


def tree_select(condition: Array, on_true: Any, on_false: Any) -> Any:
    """Leaf-wise `where(condition, on_true, on_false)` for a scalar condition."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


def auto_reset(
    nxt: Any,
    fresh: Any,
    observe: Callable[[Any], Array],
    reward: Array,
    terminated: Array,
    truncated: Array,
    success: Array,
) -> tuple[Any, StepResult]:
    """The auto-reset epilogue of `step`: the real transition to state `nxt`, and, when its
    episode ended, the `fresh` state in its place, with `obs` its first observation while
    `final_obs` keeps the real s_{t+1}. A terminal step is reported as terminated, not truncated."""
    done = terminated | truncated
    final_obs = observe(nxt)
    return tree_select(done, fresh, nxt), StepResult(
        obs=jnp.where(done, observe(fresh), final_obs),
        reward=reward,
        terminated=terminated,
        truncated=truncated & ~terminated,
        final_obs=final_obs,
        success=success,
    )


def step_envs(env: Any, keys: Array, states: Any, actions: Array) -> tuple[Any, StepResult]:
    """Step a batch of envs (leading axis): the adapter's `step_batch` if it has one, else
    `vmap(env.step)`. Both give the same results; `step_batch` only does less work."""
    batched = getattr(env, "step_batch", None)
    if batched is not None:
        return batched(keys, states, actions)
    return jax.vmap(env.step)(keys, states, actions)


def reset_chunk(num_envs: int) -> int:
    """How many fresh states `lazy_auto_reset` makes per pass: an eighth of the batch."""
    return max(1, -(-num_envs // 8))


def lazy_auto_reset(
    keys: Array,
    nxt: Any,
    fresh: Callable[[Array], Any],
    observe: Callable[[Any], Array],
    reward: Array,
    terminated: Array,
    truncated: Array,
    success: Array,
) -> tuple[Any, StepResult]:
    """`auto_reset` over a batch of envs (every argument with a leading env axis, `fresh` and
    `observe` per env), with the same results as `vmap(auto_reset)` given `vmap(fresh)(keys)`.

    A vmapped `auto_reset` builds a fresh state for every env on every step and then keeps the
    few that are needed; for navix's DoorKey that reset costs about 25 times a step. Here fresh
    states are built only for the envs whose episode ended, `reset_chunk` envs per pass of a
    `while_loop` (no pass on a step where nothing ended), each from its own key as before.
    """
    done = terminated | truncated
    final_obs = jax.vmap(observe)(nxt)
    num_envs = done.shape[0]
    chunk = reset_chunk(num_envs)

    def pending(carry: tuple[Any, Array, Array]) -> Array:
        return jnp.any(carry[2])

    def make_some(carry: tuple[Any, Array, Array]) -> tuple[Any, Array, Array]:
        states, obs, waiting = carry
        index = jnp.nonzero(waiting, size=chunk, fill_value=num_envs)[0]
        made = jax.vmap(fresh)(keys[jnp.minimum(index, num_envs - 1)])
        made_obs = jax.vmap(observe)(made)
        # Out-of-range indices (fewer than `chunk` envs waiting) are dropped.
        states = jax.tree_util.tree_map(
            lambda all_, some: all_.at[index].set(some, mode="drop"), states, made
        )
        obs = obs.at[index].set(made_obs, mode="drop")
        return states, obs, waiting.at[index].set(False, mode="drop")

    states, obs, _ = jax.lax.while_loop(pending, make_some, (nxt, final_obs, done))
    return states, StepResult(
        obs=obs,
        reward=reward,
        terminated=terminated,
        truncated=truncated & ~terminated,
        final_obs=final_obs,
        success=success,
    )


def strong_types(tree: Any) -> Any:
    """Give every leaf a strong dtype.

    Weakly typed leaves (Python scalars turned into arrays) change type after the first `step`,
    which makes a jitted rollout recompile; casting once at reset keeps one compiled program.
    """

    def cast(leaf: Any) -> Any:
        leaf = jnp.asarray(leaf)
        return jnp.asarray(leaf, dtype=leaf.dtype) if getattr(leaf, "weak_type", False) else leaf

    return jax.tree_util.tree_map(cast, tree)
