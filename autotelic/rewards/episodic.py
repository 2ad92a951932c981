"""Episodic kNN novelty over inverse-dynamics embeddings, as in Never Give Up.

"Never Give Up: Learning Directed Exploration Strategies", Badia et al., ICLR 2020
(arXiv 2002.06038), Sec. 2 and the episodic-reward algorithm of its appendix. Each env keeps an
episodic memory M of controllable-state embeddings f(x), emptied at every episode start. A new
observation x_t is scored against its k nearest neighbours in M, then added to M:

    r^ep_t = 1 / (sqrt(sum_{f_j in N_k} K(f(x_t), f_j)) + c)         (NGU Eq. 2)
    K(x, y) = eps / (d_n^2 + eps),   d_n^2 = max(d^2(x, y) / d_m^2 - xi, 0)

d^2 is the squared Euclidean distance and d_m^2 a running average of the squared kNN distances
(updated with the current ones before they are normalized). The max is taken per neighbour: a
widely copied port takes `max` over the whole list, clamping every distance by one scalar. The
similarity s = sqrt(sum K) + c is what is compared with s_m: when s > s_m the reward is 0 (the
state is too close to too much of the memory for a count to mean anything).

With `lifelong=true` the episodic reward is modulated by RND's error (NGU Eq. 1),
`alpha_t = 1 + (err(x_t) - mu_e) / sigma_e` with running mean and std of err, and
`r_t = r^ep_t * min(max(alpha_t, 1), L)`. The RND networks are `autotelic.rewards.rnd`'s,
with RND's defaults, and are trained on the rollout's next observations in `update`; while RND's
observation normalizer has no statistics yet (the first rollout), alpha is taken as 1.

Which observation is scored: the transition (s_t, a_t, s_{t+1}) is paid the novelty of s_{t+1},
the real next observation, like RND (so episodic and lifelong terms score the same state). The
transition's s_t enters M just before s_{t+1} is scored, so M holds s_0..s_t when s_{t+1} is
scored, as in NGU where every observation of the episode enters the memory. (s_t is embedded
with the current f; it equals the previous transition's s_{t+1} except at an episode start.)
The kNN search scans only the filled part of each env's memory (see `nearest_in_memory`).

`reward` scores one step; the training loop calls `rollout_reward`, which gives the same rewards
and state for a whole rollout at once (no action depends on the intrinsic reward): the T steps'
embeddings in one batch (each observation once: s_t is embedded again only at episode starts
and at the rollout's first step, elsewhere it is the previous step's s_{t+1}), each env's
memory searched once for all T queries (a matrix product per block instead of T passes over
it), and the rollout's own insertions, visible to the later steps of their episode, searched as
a [T, T] block per env.

Memory: `[N, capacity, d]` per env with the number of insertions this episode; the effective
capacity is min(capacity, max_steps + 1), which holds a whole episode. With a smaller
`capacity` the memory is a ring buffer: once full, each insertion overwrites the oldest entry,
so the kNN search covers the most recent `capacity` observations of the episode. f is retrained
at every PPO update, also in mid-episode; the memory keeps the embeddings it was given, and d_m^2
is a cumulative mean over all distances seen (so it adapts slowly when f's scale drifts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ..envs.base import EnvSpec
from ..errors import UserError
from .base import HeadConfig, RewardSource, SourceEntry, Transition, register
from .inverse_dynamics import (
    EmbeddingState,
    check_embedding_params,
    embed_rollout,
    make_inverse_dynamics,
)
from .rnd import Distiller, DistillState, ObsStats, RNDParams, check_distiller, update_moments

Array = jax.Array

# Floor of the running mean d_m^2 that squared distances are divided by. While every distance
# seen is 0 up to float32 rounding (the same observation embedded in two batches of different
# shapes differs by about 1e-13), d_m^2 is that rounding, and dividing by it would turn two
# embeddings of one observation into neighbours at the mean distance. Taking d_m^2 as at least
# this floor puts rounding-level distances under the cluster distance xi, so they count as 0, as
# they are; real squared distances between embeddings are many orders larger.
MIN_MEAN_DISTANCE = 1e-8


@dataclass(frozen=True)
class EpisodicParams(HeadConfig):
    """NGU episodic-novelty settings; constants are the paper's.

    coef:               0.3, NGU's largest intrinsic weight beta (the most exploratory policy)
    gamma:              0.99, the discount NGU pairs with that policy
    episodic:           true: the memory, and so the reward, is per episode
    normalize:          "return_std"; NGU has no reward normalization but an R2D2 value rescaling
                        this loop does not use, and r^ep can reach 1/c = 1000
    k:                  number of neighbours (10)
    kernel_epsilon:     eps of the kernel (1e-4)
    cluster_distance:   xi, normalized squared distances below it count as 0 (0.008)
    c:                  pseudo-count constant (0.001)
    max_similarity:     s_m, similarity above which the reward is 0 (8)
    lifelong:           modulate by RND's error (NGU proper); false: the episodic term alone
    max_modulation:     L, the cap of the lifelong multiplier (5)
    capacity:           memory slots per env (NGU: 30000); used up to max_steps + 1
    learning_rate:      Adam step of the embedding and inverse model (NGU's table: 5e-4)
    embedding_dim:      size of f(x) (NGU: 32)
    hidden:             width of the encoder's last layer and the inverse model's hidden layer
    encoding:           grid codes as numbers ("raw") or one-hot ("one_hot")
    trunk:              encoder before the embedding layer: "cnn" (the paper's conv stack) or
                        "mlp" (two tanh layers, about 3x cheaper on a CPU)
    update_epochs, num_minibatches: passes over the rollout and minibatches per pass
    update_proportion:  fraction of the rollout the embedding trains on in each pass, a fresh
                        random subset per pass (1.0: all of it, the reference setting)
    """

    coef: float = 0.3
    gamma: float = 0.99
    episodic: bool = True
    normalize: str = "return_std"
    k: int = 10
    kernel_epsilon: float = 1e-4
    cluster_distance: float = 0.008
    c: float = 0.001
    max_similarity: float = 8.0
    lifelong: bool = False
    max_modulation: float = 5.0
    capacity: int = 30_000
    learning_rate: float = 5e-4
    embedding_dim: int = 32
    hidden: int = 256
    encoding: str = "raw"
    trunk: str = "cnn"
    update_epochs: int = 1
    num_minibatches: int = 4
    update_proportion: float = 1.0


class EpisodicState(NamedTuple):
    """model:          f and the inverse model
    memory:         [N, C, d] f32 episodic memory; slots >= min(size, C) are stale
    size:           [N] int32 embeddings inserted this episode (slot of the next: size mod C)
    episode_start:  [N] bool, the next transition's obs is the first of an episode
    distance_mean:  [] f32 running mean d_m^2 of squared kNN distances
    distance_count: [] f32 number of distances folded into it
    lifelong:       RND state, or None without lifelong modulation
    error_stats:    running moments of RND's error ([1]-shaped), or None"""

    model: EmbeddingState
    memory: Array
    size: Array
    episode_start: Array
    distance_mean: Array
    distance_count: Array
    lifelong: DistillState | None
    error_stats: ObsStats | None


def memory_insert(memory: Array, size: Array, embedding: Array, insert: Array) -> tuple[Any, Any]:
    """Write `embedding: [N, d]` at slot `size mod C` of `memory: [N, C, d]` where `insert: [N]`
    is true (ring buffer: a full memory overwrites its oldest entry). Returns (memory, size).

    Rows that do not insert are sent to an out-of-range slot and dropped, so the write never
    reads the memory and XLA can update it in place (a read-modify-write made it copy all
    N*C*d floats)."""
    capacity = memory.shape[1]
    rows = jnp.arange(memory.shape[0])
    slot = jnp.where(insert, size % capacity, capacity)
    memory = memory.at[rows, slot].set(embedding.astype(memory.dtype), mode="drop")
    return memory, size + insert.astype(size.dtype)


# How `nearest_sq_distances` splits a memory: the first `KNN_FIRST_BLOCK` slots of every env
# are scanned together; the rest in blocks of `KNN_BLOCK` slots, `KNN_ROWS` (env, block) pairs
# at a time.
KNN_FIRST_BLOCK = 128
KNN_BLOCK = 512
KNN_ROWS = 8


def nearest_sq_distances(memory: Array, size: Array, query: Array, k: int) -> tuple[Array, Array]:
    """Squared Euclidean distances from `query: [N, d]` to its k nearest valid entries of
    `memory: [N, C, d]`, ascending, and which of them exist (fewer than k entries early in an
    episode). Returns (sq_distances [N, k'] f32, valid [N, k'] bool), k' = min(k, C).

    One query per env over the whole filled memory: `nearest_in_memory` with Q = 1."""
    negated = nearest_in_memory(
        memory, size, query[:, None, :], jnp.ones((*size.shape, 1), bool), size[:, None], k, False
    )[:, 0]
    nearest = -negated
    valid = jnp.isfinite(nearest)
    return jnp.where(valid, nearest, 0.0), valid


def nearest_in_memory(
    memory: Array,
    size: Array,
    query: Array,
    use: Array,
    count: Array,
    k: int,
    expanded: bool,
    merge: bool = True,
) -> Array:
    """Exact k nearest squared distances from each of Q queries per env to that env's memory.

    memory: [N, C, d] ring buffers holding the last min(size, C) of `size: [N]` insertions
    query:  [N, Q, d]; use: [N, Q] bool, the query reads this memory at all
    count:  [N, Q] int32, insertions made when the query is scored (later insertions, not in
            `memory`, overwrite the oldest slots: an entry is seen only if it is among the last C)
    expanded: compute |q - m|^2 as |q|^2 + |m|^2 - 2 q.m, clamped at 0 (one matrix product per
            block; 1.7x faster for a rollout's 64 queries), else as the sum of squared differences
    merge:  true: returns the negated distances, `[N, Q, k']` descending (-inf where fewer than
            k' entries); false: returns `[N, Q, W]` negated candidates (-inf where none), W >= k',
            whose top k' is that result, for a caller that merges them with candidates of its own
            in one top-k (XLA's CPU top-k costs about 1.5 us per row whatever its width, so each
            extra top-k over a rollout's 4,096 rows costs several ms)

    The cost follows each env's own fill. The first `KNN_FIRST_BLOCK` slots are scanned for every
    env at once. Past them the memory is cut into blocks of `KNN_BLOCK` slots, and only the
    (env, block) pairs that hold filled slots are scanned, `KNN_ROWS` pairs per pass of a loop,
    each keeping its own k best; a last top-k merges them. So one env stuck in a long episode
    costs its own blocks, not a scan of every env's memory up to its length (which made a late
    DoorKey-16x16 rollout, short episodes but one env at 2,550 steps, pay 4-6x more)."""
    num_envs, capacity, _ = memory.shape
    kept = min(k, capacity)
    filled = jnp.minimum(size, capacity)
    # Slot s holds insertion number s + C * floor((size - 1 - s) / C) (the latest that landed
    # there); the query sees it while that number is >= count - C.
    oldest = count - capacity  # [N, Q]

    def visible(env: Array, slot: Array) -> Array:
        """[rows, Q, width] for `env: [rows]`, `slot: [rows, width]`."""
        number = slot + capacity * ((size[env][:, None] - 1 - slot) // capacity)
        seen = (slot < filled[env][:, None])[:, None, :]
        seen &= number[:, None, :] >= oldest[env][:, :, None]
        return seen & use[env][:, :, None]

    def distances(block: Array, queries: Array) -> Array:
        """block [rows, width, d], queries [rows, Q, d] -> [rows, Q, width]."""
        if expanded:
            cross = jnp.einsum("rqd,rwd->rqw", queries, block)
            norms = jnp.sum(jnp.square(queries), -1)[:, :, None]
            norms += jnp.sum(jnp.square(block), -1)[:, None, :]
            return jnp.maximum(norms - 2.0 * cross, 0.0)
        return jnp.sum(jnp.square(block[:, None, :, :] - queries[:, :, None, :]), axis=-1)

    envs = jnp.arange(num_envs)
    first_width = min(KNN_FIRST_BLOCK, capacity)
    first_slots = jnp.broadcast_to(jnp.arange(first_width), (num_envs, first_width))
    sq = distances(jax.lax.slice_in_dim(memory, 0, first_width, axis=1), query)
    negated = jnp.where(visible(envs, first_slots), -sq, -jnp.inf)  # [N, Q, first_width]
    rest = capacity - first_width
    if rest == 0:
        return jax.lax.top_k(negated, kept)[0] if merge else negated
    num_queries = query.shape[1]
    width = min(KNN_BLOCK, rest)
    blocks = -(-rest // width)
    pairs = num_envs * blocks
    pair_env = jnp.repeat(envs, blocks)
    pair_start = first_width + jnp.tile(jnp.arange(blocks), num_envs) * width
    live = (pair_start < filled[pair_env]) & use.any(axis=1)[pair_env]
    todo = jnp.nonzero(live, size=pairs, fill_value=0)[0]  # the live pairs first
    live_count = live.sum()
    rows = min(KNN_ROWS, pairs)

    def scan_pairs(carry: tuple[Array, Array]) -> tuple[Array, Array]:
        step, best = carry
        position = step * rows + jnp.arange(rows)
        pair = todo[jnp.minimum(position, pairs - 1)]
        env, start = pair_env[pair], pair_start[pair]
        # A block that would run past the end is moved back; slots it repeats are masked.
        slot = jnp.minimum(start, capacity - width)[:, None] + jnp.arange(width)[None, :]
        sq = distances(memory[env[:, None], slot], query[env])
        seen = visible(env, slot) & (slot >= start[:, None])[:, None, :]
        top = jax.lax.top_k(-jnp.where(seen, sq, jnp.inf), kept)[0]
        # Positions past the live pairs write to spare rows that are dropped below.
        target = jnp.where(position < live_count, pair, pairs + jnp.arange(rows))
        return step + 1, best.at[target].set(top)

    best = jnp.full((pairs + rows, num_queries, kept), -jnp.inf, jnp.float32)
    _, best = jax.lax.while_loop(
        lambda carry: carry[0] * rows < live_count, scan_pairs, (jnp.int32(0), best)
    )
    candidates = best[:pairs].reshape(num_envs, blocks, num_queries, kept)
    candidates = jnp.moveaxis(candidates, 1, 2).reshape(num_envs, num_queries, blocks * kept)
    candidates = jnp.concatenate([negated, candidates], axis=-1)
    return jax.lax.top_k(candidates, kept)[0] if merge else candidates


def rollout_nearest(
    memory: Array,
    size: Array,
    episode_start: Array,
    phi: Array,
    phi_next: Array,
    done: Array,
    k: int,
) -> tuple[Array, Array, Array, Array]:
    """The k nearest squared distances of every step of a rollout at once, and the memory after it.

    Gives what T calls of the per-step search (`reward`'s insert-then-search) give, in one pass:
    memory: [N, C, d], size: [N] and episode_start: [N] as at the rollout's start; phi, phi_next:
    [T, N, d] embeddings of s_t and s_{t+1}; done: [T, N]. Step t's query phi_next[t] sees the
    memory's entries (if no episode started since the rollout began) and the rollout's own
    insertions phi[tau], tau <= t, of its episode, of which only the last C count.
    Returns (sq [T, N, k'], valid [T, N, k'], memory, size)."""
    num_steps, num_envs = phi.shape[:2]
    capacity = memory.shape[1]
    kept = min(k, capacity)
    steps = jnp.arange(num_steps)[:, None]
    start = jnp.concatenate([episode_start[None], done[:-1]], axis=0)  # [T, N]
    segment = jax.lax.cummax(jnp.where(start, steps, -1), axis=0)  # step of the episode start
    carried = segment < 0  # still the episode the memory holds
    number = jnp.where(carried, size[None] + steps, steps - segment)  # insertion number of phi[t]
    count = number + 1  # insertions made when phi_next[t] is scored
    # The memory's entries.
    query, inserted = jnp.swapaxes(phi_next, 0, 1), jnp.swapaxes(phi, 0, 1)
    negated = nearest_in_memory(memory, size, query, carried.T, count.T, k, True, merge=False)
    # The rollout's own insertions: [N, T (query), T (insertion)].
    sq = jnp.sum(jnp.square(inserted[:, None, :, :] - query[:, :, None, :]), axis=-1)
    t, tau = steps.T[:, :, None], steps.T[:, None, :]  # [1, T, 1], [1, 1, T]
    seen = (tau <= t) & (segment.T[:, None, :] == segment.T[:, :, None])
    seen &= number.T[:, None, :] >= (count.T - capacity)[:, :, None]
    negated = jnp.concatenate([negated, jnp.where(seen, -sq, -jnp.inf)], axis=-1)
    nearest = -jax.lax.top_k(negated, kept)[0]  # [N, T, k'], one top-k for all candidates
    valid = jnp.isfinite(nearest)
    nearest = jnp.swapaxes(jnp.where(valid, nearest, 0.0), 0, 1)
    # Write the insertions, the last one of each slot only (a scatter with repeated slots
    # would pick any of them).
    slot = (number % capacity).T  # [N, T]
    overwritten = ((slot[:, None, :] == slot[:, :, None]) & (tau > t)).any(axis=-1)
    slot = jnp.where(overwritten, capacity, slot)
    memory = memory.at[jnp.arange(num_envs)[:, None], slot].set(
        inserted.astype(memory.dtype), mode="drop"
    )
    return nearest, jnp.swapaxes(valid, 0, 1), memory, count[-1].astype(size.dtype)


def update_distance_mean(mean: Array, count: Array, sq: Array, valid: Array) -> tuple[Any, Any]:
    """Fold the valid entries of `sq: [N, k]` into the running mean d_m^2 (a cumulative mean)."""
    n = valid.sum().astype(jnp.float32)
    total = count + n
    batch_sum = jnp.where(valid, sq, 0.0).sum()
    mean = mean + (batch_sum - n * mean) / jnp.maximum(total, 1.0)
    return mean, total


def episodic_novelty(
    sq_distances: Array,
    valid: Array,
    distance_mean: Array,
    kernel_epsilon: float,
    cluster_distance: float,
    c: float,
    max_similarity: float,
) -> Array:
    """NGU's episodic reward from the squared kNN distances `sq_distances: [..., k]` (entries
    with `valid` false are absent) and the running mean `distance_mean` = d_m^2. Returns [...].

    d_n^2 = max(d^2 / d_m^2 - xi, 0) per neighbour; K = eps / (d_n^2 + eps);
    s = sqrt(sum K) + c; r = 0 if s > s_m else 1 / s (NGU Eq. 2 and its appendix algorithm).
    """
    normalized = sq_distances / jnp.maximum(distance_mean, MIN_MEAN_DISTANCE)
    # Elementwise: each neighbour is clamped on its own (not by the max of the list).
    clustered = jnp.maximum(normalized - cluster_distance, 0.0)
    kernel = jnp.where(valid, kernel_epsilon / (clustered + kernel_epsilon), 0.0)
    similarity = jnp.sqrt(kernel.sum(axis=-1)) + c
    return jnp.where(similarity > max_similarity, 0.0, 1.0 / similarity)


def lifelong_multiplier(error: Array, stats: ObsStats, max_modulation: float) -> Array:
    """min(max(alpha, 1), L) with alpha = 1 + (err - mu_e) / sigma_e (NGU Eq. 1).

    error: [N] f32; stats: running moments of err with `mean, var: [1]`."""
    alpha = 1.0 + (error - stats.mean[0]) / jnp.sqrt(stats.var[0] + 1e-8)
    return jnp.clip(alpha, 1.0, max_modulation)


def effective_capacity(params: EpisodicParams, spec: EnvSpec) -> int:
    """Slots actually allocated: no episode inserts more than max_steps + 1 observations."""
    if spec.max_steps > 0:
        return max(1, min(params.capacity, spec.max_steps + 1))
    return params.capacity


def make_episodic(params: EpisodicParams, spec: EnvSpec) -> RewardSource:
    model = make_inverse_dynamics(
        spec,
        params.embedding_dim,
        params.hidden,
        params.encoding,
        params.learning_rate,
        params.update_epochs,
        params.num_minibatches,
        params.trunk,
        update_proportion=params.update_proportion,
    )
    capacity = effective_capacity(params, spec)
    distiller = Distiller(RNDParams(), spec) if params.lifelong else None

    def init(key: Array, spec: EnvSpec, num_envs: int) -> EpisodicState:
        k_model, k_lifelong = jax.random.split(key)
        lifelong, error_stats = None, None
        if distiller is not None:
            lifelong = distiller.init(k_lifelong)
            error_stats = ObsStats(jnp.zeros((1,)), jnp.ones((1,)), jnp.zeros(()))
        return EpisodicState(
            model=model.init(k_model),
            memory=jnp.zeros((num_envs, capacity, params.embedding_dim), jnp.float32),
            size=jnp.zeros((num_envs,), jnp.int32),
            episode_start=jnp.ones((num_envs,), bool),
            distance_mean=jnp.zeros((), jnp.float32),
            distance_count=jnp.zeros((), jnp.float32),
            lifelong=lifelong,
            error_stats=error_stats,
        )

    def reward(state: EpisodicState, transition: Transition) -> tuple[Array, EpisodicState]:
        start = state.episode_start
        both = jnp.concatenate([transition.obs, transition.next_obs], axis=0)
        phi, phi_next = jnp.split(model.embed(state.model.params, both), 2, axis=0)
        # A new episode empties the memory. s_t then enters it before s_{t+1} is scored, so M
        # holds s_0..s_t: one write per step, before any read (in place, see `memory_insert`).
        # Away from episode starts s_t is the previous s_{t+1}, embedded again with the current f.
        size = jnp.where(start, 0, state.size)
        memory, size = memory_insert(state.memory, size, phi, jnp.ones_like(start))
        sq, valid = nearest_sq_distances(memory, size, phi_next, params.k)
        distance_mean, distance_count = update_distance_mean(
            state.distance_mean, state.distance_count, sq, valid
        )
        novelty = episodic_novelty(
            sq,
            valid,
            distance_mean,
            params.kernel_epsilon,
            params.cluster_distance,
            params.c,
            params.max_similarity,
        )
        state = state._replace(
            memory=memory,
            size=size,
            episode_start=transition.done,
            distance_mean=distance_mean,
            distance_count=distance_count,
        )
        if distiller is None:
            return novelty, state
        error = distiller.squared_error(state.lifelong, transition.next_obs)
        ready = distiller.ready(state.lifelong)
        error_stats = jax.tree_util.tree_map(
            lambda new, old: jnp.where(ready, new, old),
            update_moments(state.error_stats, error[:, None]),
            state.error_stats,
        )
        multiplier = jnp.where(
            ready, lifelong_multiplier(error, error_stats, params.max_modulation), 1.0
        )
        return novelty * multiplier, state._replace(error_stats=error_stats)

    def rollout_reward(state: EpisodicState, rollout: Transition) -> tuple[Array, EpisodicState]:
        """`reward` over a whole rollout (`[T, N, ...]` leaves) at once: the same rewards and
        final state, with the embeddings computed in one batch and the kNN searches of all T
        steps sharing one pass over each env's memory (`rollout_nearest`)."""
        num_steps, num_envs = rollout.action.shape[:2]
        done = rollout.terminated | rollout.truncated
        phi, phi_next = embed_rollout(
            lambda obs: model.embed(state.model.params, obs), rollout.obs, rollout.next_obs, done
        )
        sq, valid, memory, size = rollout_nearest(
            state.memory, state.size, state.episode_start, phi, phi_next, done, params.k
        )

        def fold(carry: tuple[Array, Array], x: tuple[Array, Array]) -> tuple[Any, Array]:
            carry = update_distance_mean(*carry, *x)
            return carry, carry[0]

        (distance_mean, distance_count), means = jax.lax.scan(
            fold, (state.distance_mean, state.distance_count), (sq, valid)
        )
        novelty = episodic_novelty(
            sq,
            valid,
            means[:, None, None],
            params.kernel_epsilon,
            params.cluster_distance,
            params.c,
            params.max_similarity,
        )
        state = state._replace(
            memory=memory,
            size=size,
            episode_start=done[-1],
            distance_mean=distance_mean,
            distance_count=distance_count,
        )
        if distiller is None:
            return novelty, state
        next_flat = rollout.next_obs.reshape(num_steps * num_envs, *rollout.next_obs.shape[2:])
        errors = distiller.squared_error(state.lifelong, next_flat).reshape(num_steps, num_envs)
        ready = distiller.ready(state.lifelong)

        def modulate(stats: ObsStats, error: Array) -> tuple[ObsStats, Array]:
            stats = jax.tree_util.tree_map(
                lambda new, old: jnp.where(ready, new, old),
                update_moments(stats, error[:, None]),
                stats,
            )
            multiplier = lifelong_multiplier(error, stats, params.max_modulation)
            return stats, jnp.where(ready, multiplier, 1.0)

        error_stats, multipliers = jax.lax.scan(modulate, state.error_stats, errors)
        return novelty * multipliers, state._replace(error_stats=error_stats)

    def update(
        state: EpisodicState, rollout: Transition, key: Array
    ) -> tuple[EpisodicState, dict[str, Array]]:
        k_model, k_lifelong = jax.random.split(key)
        model_state, metrics = model.update(state.model, rollout, k_model)
        metrics = {**metrics, "distance_mean": state.distance_mean}
        state = state._replace(model=model_state)
        if distiller is not None:
            next_obs = rollout.next_obs.reshape(-1, *rollout.next_obs.shape[2:])
            lifelong, lifelong_metrics = distiller.train(state.lifelong, next_obs, k_lifelong)
            metrics.update({f"lifelong_{k}": v for k, v in lifelong_metrics.items()})
            metrics["lifelong_error_mean"] = state.error_stats.mean[0]
            state = state._replace(lifelong=lifelong)
        return state, metrics

    return RewardSource(init, reward, update, rollout_reward)


def check_episodic(params: EpisodicParams, spec: EnvSpec) -> None:
    check_embedding_params("episodic", params, spec)
    prefix = "sources.episodic."
    for name in ("k", "capacity"):
        if getattr(params, name) < 1:
            raise UserError(f"{prefix}{name} must be >= 1, got {getattr(params, name)}.")
    for name in ("kernel_epsilon", "c", "max_similarity"):
        if not getattr(params, name) > 0:
            raise UserError(f"{prefix}{name} must be > 0, got {getattr(params, name)}.")
    if params.cluster_distance < 0:
        raise UserError(f"{prefix}cluster_distance must be >= 0, got {params.cluster_distance}.")
    if params.max_modulation < 1:
        raise UserError(
            f"{prefix}max_modulation (L) must be >= 1, the multiplier is clipped to [1, L]; "
            f"got {params.max_modulation}."
        )
    if params.lifelong:
        check_distiller(RNDParams(), spec, "rnd")


register(
    SourceEntry(
        name="episodic",
        params_class=EpisodicParams,
        build=make_episodic,
        check=check_episodic,
        summary="NGU episodic kNN novelty over inverse-dynamics embeddings "
        "(lifelong=true adds the RND modulation)",
    )
)
