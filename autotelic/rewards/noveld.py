"""NovelD: reward crossing the boundary from explored to unexplored, once per episode.

"NovelD: A Simple yet Effective Exploration Criterion", Zhang, Xu, Wang, Wu, Keutzer, Gonzalez,
Tian 2021 (NeurIPS), Sec. 3:

    r(s_t, a_t, s_{t+1}) = max(N(s_{t+1}) - alpha * N(s_t), 0) * 1[N_e(s_{t+1}) == 1]

N is the RND novelty of an observation, here (as in the authors' code) the Euclidean norm of the
predictor-target difference, ||f_hat(s) - f(s)||_2, computed with RND's networks and observation
normalizer, imported from `rnd.py` (including: reward 0 during the first rollout, whose
observations initialise the normalizer; the predictor trains on each rollout's s_{t+1}).
alpha = 0.5 (the paper's value).

N_e is the number of times s_{t+1} has been seen in the current episode of that env, counting this
visit, so the bonus pays only on the first visit within an episode. It is exact (up to 64-bit
fingerprint collisions, about 2^-64 per pair of states): each env keeps
the 64-bit fingerprints (see `count.py`) of the next-observations of its running episode, room
for `spec.max_steps` of them, one per transition, which is every transition an episode can have.
Where `transition.done` is true the memory is emptied *after* the terminal transition's reward,
so the first transition of the next episode starts with an empty memory. The reset observation is
not recorded (it is never an s_{t+1}). On float observations "seen" means bit-identical, so on
continuous observations N_e is almost always 1 and the bonus reduces to the novelty difference.

Defaults from the authors' released code: intrinsic coefficient 0.05, no reward normalization,
and one reward stream whose returns stop at episode ends (IMPALA's per-step discount), hence
`episodic = true`; gamma is left at 0.99. Deviation: that code clips the summed reward
r_ext + 0.05 r_int to [-1, 1]; autotelic keeps a value head per source and mixes advantages, so
there is no summed reward to clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..envs.base import EnvSpec
from ..errors import UserError
from .base import RewardSource, SourceEntry, Transition, register
from .count import fingerprint_multipliers, observation_fingerprint
from .rnd import Distiller, DistillState, RNDParams, check_distiller, flatten_rollout

Array = jax.Array


@dataclass(frozen=True)
class NovelDParams(RNDParams):
    """RND's settings (see `RNDParams`) with NovelD's head defaults, plus alpha."""

    coef: float = 0.05
    episodic: bool = True
    normalize: str = "none"
    alpha: float = 0.5


class EpisodicMemory(NamedTuple):
    """Per-env fingerprints of the next-observations seen in the running episode.

    key_a, key_b: [N, L] uint32 (L = spec.max_steps); only the first `length[i]` of row i count
    length:       [N] int32
    """

    key_a: Array
    key_b: Array
    length: Array


class NovelDState(NamedTuple):
    distill: DistillState
    memory: EpisodicMemory


def first_visits(
    memory: EpisodicMemory, key_a: Array, key_b: Array, done: Array
) -> tuple[EpisodicMemory, Array]:
    """Record the visits `key_a, key_b: [N]` and return `[N]` bool: N_e == 1, i.e. the key was not
    in that env's memory before. Memories of envs with `done: [N]` are emptied afterwards."""
    capacity = memory.key_a.shape[1]
    valid = jnp.arange(capacity) < memory.length[:, None]
    match = (memory.key_a == key_a[:, None]) & (memory.key_b == key_b[:, None]) & valid
    first = ~match.any(axis=1)
    # A full memory (an episode longer than spec.max_steps) stops recording; the write index is
    # clamped and the length kept, so nothing already recorded is overwritten.
    store = first & (memory.length < capacity)
    slot = jnp.minimum(memory.length, capacity - 1)
    rows = jnp.arange(key_a.shape[0])
    key_a_mem = memory.key_a.at[rows, slot].set(jnp.where(store, key_a, memory.key_a[rows, slot]))
    key_b_mem = memory.key_b.at[rows, slot].set(jnp.where(store, key_b, memory.key_b[rows, slot]))
    length = jnp.where(done, 0, memory.length + store.astype(jnp.int32))
    return EpisodicMemory(key_a_mem, key_b_mem, length), first


def build(params: NovelDParams, spec: EnvSpec) -> RewardSource:
    distiller = Distiller(params, spec)
    multipliers = jnp.asarray(fingerprint_multipliers(int(np.prod(spec.obs_shape))))
    capacity = max(1, spec.max_steps)

    def novelty(distill: DistillState, obs: Array) -> Array:
        """N(s) = ||f_hat(s) - f(s)||_2: `[N]`."""
        predicted, target = distiller.outputs(distill, obs)
        return jnp.sqrt(jnp.square(predicted - target).sum(-1))

    def init(key: Array, spec: EnvSpec, num_envs: int) -> NovelDState:
        memory = EpisodicMemory(
            key_a=jnp.zeros((num_envs, capacity), jnp.uint32),
            key_b=jnp.zeros((num_envs, capacity), jnp.uint32),
            length=jnp.zeros((num_envs,), jnp.int32),
        )
        return NovelDState(distiller.init(key), memory)

    def reward(state: NovelDState, transition: Transition) -> tuple[Array, NovelDState]:
        # obs, next_obs: [N, *obs_shape] -> reward [N]
        key_a, key_b = observation_fingerprint(transition.next_obs, multipliers)
        memory, first = first_visits(state.memory, key_a, key_b, transition.done)
        gain = novelty(state.distill, transition.next_obs) - params.alpha * novelty(
            state.distill, transition.obs
        )
        bonus = jnp.maximum(gain, 0.0) * first
        bonus = jnp.where(distiller.ready(state.distill), bonus, 0.0)
        return bonus, state._replace(memory=memory)

    def rollout_reward(state: NovelDState, rollout: Transition) -> tuple[Array, NovelDState]:
        """`reward` over a rollout (`[T, N, ...]` leaves): the novelties in one batch, the
        first-visit memory stepped through the T steps in order."""
        steps, num_envs = rollout.action.shape[:2]
        next_obs, obs = flatten_rollout(rollout.next_obs), flatten_rollout(rollout.obs)
        gain = novelty(state.distill, next_obs) - params.alpha * novelty(state.distill, obs)
        key_a, key_b = observation_fingerprint(next_obs, multipliers)

        def visit(memory: EpisodicMemory, x: tuple[Array, ...]) -> tuple[EpisodicMemory, Array]:
            return first_visits(memory, *x)

        memory, first = jax.lax.scan(
            visit,
            state.memory,
            (key_a.reshape(steps, num_envs), key_b.reshape(steps, num_envs), rollout.done),
        )
        bonus = jnp.maximum(gain.reshape(steps, num_envs), 0.0) * first
        bonus = jnp.where(distiller.ready(state.distill), bonus, 0.0)
        return bonus, state._replace(memory=memory)

    def update(
        state: NovelDState, rollout: Transition, key: Array
    ) -> tuple[NovelDState, dict[str, Array]]:
        distill, metrics = distiller.train(state.distill, flatten_rollout(rollout.next_obs), key)
        return state._replace(distill=distill), metrics

    return RewardSource(init, reward, update, rollout_reward)


def check(params: NovelDParams, spec: EnvSpec) -> None:
    check_distiller(params, spec, "noveld")
    if params.alpha < 0:
        raise UserError(f"sources.noveld.alpha must be >= 0, got {params.alpha}.")


register(
    SourceEntry(
        name="noveld",
        params_class=NovelDParams,
        build=build,
        check=check,
        summary="NovelD: RND novelty gain max(N(s')-0.5N(s),0) on first visits in an episode "
        "(Zhang et al. 2021)",
    )
)
