"""Count-based exploration: exact visit counts on discrete observations, SimHash pseudo-counts on
anything else.

The bonus is MBIE-EB's ("An analysis of model-based Interval Estimation for Markov Decision
Processes", Strehl & Littman 2008) as used by "#Exploration: A Study of Count-Based Exploration for
Deep Reinforcement Learning", Tang et al. 2017 (arXiv 1611.04717), Sec. 2 (the bonus of its
Algorithm 1):

    r(s) = beta / sqrt(n(phi(s)))

counted on the next observation s = s_{t+1} of each real transition, with n *including the current
visit* (so the first visit pays beta). Counts are global: they never reset, across episodes, envs
or updates. Within one env step the N envs are counted in env order, so when envs 0 and 1 reach
the same new state together, env 0 gets n = 1 and env 1 gets n = 2.

phi, chosen by `hash`:

* `exact` (default on grid observations): the whole observation, exactly. Each observation is
  fingerprinted by two independent 32-bit universal hashes (a random odd multiplier per position,
  summed mod 2^32), and the pair is the key of an open-addressing table with linear probing. Two
  distinct observations share a key only if both hashes agree, with probability about 2^-64 per
  pair (about 3e-10 for 10^5 distinct states); apart from that the counts are exact. A difference
  in a single position never collides (odd multipliers are invertible mod 2^32).
* `simhash` (default on vector and image observations): Tang et al. 2017, Sec. 2,
  `phi(s) = sgn(A g(s))`, A a fixed k x D matrix with i.i.d. N(0, 1) entries drawn from the
  source's init key, g(s) the flattened observation as float. The k sign bits are keyed into the
  same table.

Table: `table_size` slots (a power of two, default 2^18 = 262,144), 12 bytes each (count and a
64-bit key), so 3 MiB per seed in memory and in every checkpoint. Linear probing stays exact up to
a full table but slows as it fills; keep the number of distinct states below about half the table
(`count/table_load` reports the filled fraction). Once the table is full, a visit to a state not in
it is not recorded and pays beta as if first seen; `count/overflow` counts such visits.

Defaults: beta = 0.01, k = 64. The paper adds beta / sqrt(n) to the environment reward without
normalization, so the head is episodic (returns stop at episode ends, like the extrinsic reward it
was summed with) and `normalize = none`. These values follow our reading of the paper's
experiments but were not re-checked against its text here; the paper itself shows that the best k
depends on the domain (its discussion of granularity), so treat k as a knob.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..envs.base import EnvSpec
from ..errors import UserError
from .base import HeadConfig, RewardSource, SourceEntry, Transition, register

Array = jax.Array

HASHES = ("auto", "exact", "simhash")
_HASH_SEED = 0x5EED  # fixes the fingerprint multipliers: a property of the hash, not of a run


@dataclass(frozen=True)
class CountParams(HeadConfig):
    """beta:       bonus scale (beta / sqrt(n))
    hash:       "exact" (grid observations only), "simhash", or "auto": exact on grids,
                simhash on vector and image observations
    bits:       k, the SimHash code length
    table_size: slots of the count table, a power of two (see the module docstring)
    """

    episodic: bool = True
    normalize: str = "none"
    beta: float = 0.01
    hash: str = "auto"
    bits: int = 64
    table_size: int = 2**18


def resolved_hash(params: CountParams, spec: EnvSpec) -> str:
    if params.hash == "auto":
        return "exact" if spec.obs_kind == "grid" else "simhash"
    return params.hash


# ------------------------------------------------------------------------------------ hashing


def fmix32(h: Array) -> Array:
    """The 32-bit finalizer of MurmurHash3: a bijection on uint32 that spreads every input bit
    over the output, so the low bits used as a slot index are well mixed."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def fingerprint_multipliers(size: int) -> np.ndarray:
    """`[2, size]` uint32 odd multipliers, the same in every run."""
    rng = np.random.default_rng(_HASH_SEED)
    return (rng.integers(0, 2**32, size=(2, size), dtype=np.uint64) | 1).astype(np.uint32)


def fingerprint(values: Array, multipliers: Array) -> tuple[Array, Array]:
    """Two 32-bit hashes of each row of `values: [B, D]` (integers, cast to uint32).

    `h_j = fmix32(sum_i (v_i + 1) * m_ji mod 2^32)`: universal hashing with random odd
    multipliers `multipliers: [2, D]`; the +1 keeps zeros from dropping out of the sum.
    """
    v = values.astype(jnp.uint32) + jnp.uint32(1)
    first = (v * multipliers[0]).sum(-1, dtype=jnp.uint32)
    second = (v * multipliers[1]).sum(-1, dtype=jnp.uint32)
    return fmix32(first), fmix32(second)


def observation_fingerprint(obs: Array, multipliers: Array) -> tuple[Array, Array]:
    """Fingerprint each of `obs: [B, *shape]` exactly: integer codes by value, floats by their
    bit pattern (so only bit-identical float observations share a fingerprint)."""
    flat = obs.reshape(obs.shape[0], -1)
    if jnp.issubdtype(flat.dtype, jnp.floating):
        flat = jax.lax.bitcast_convert_type(flat.astype(jnp.float32), jnp.uint32)
    return fingerprint(flat, multipliers)


# ------------------------------------------------------------------------------------ table


class CountState(NamedTuple):
    """counts:     [S] int32 visits per slot; 0 marks an empty slot
    key_a/key_b: [S] uint32 the two halves of the 64-bit key held in each slot
    projection: [k, D] f32 SimHash matrix A ([0, D] under exact hashing)
    overflow:   [] int32 visits that found the table full (not recorded)
    """

    counts: Array
    key_a: Array
    key_b: Array
    projection: Array
    overflow: Array


class _Probe(NamedTuple):
    """The loop state of `count_visits` for one table: the table and, per visit, the search of
    its group's leader."""

    counts: Array
    key_a: Array
    key_b: Array
    slot: Array  # [N] uint32 the slot each leader looks at
    probes: Array  # [N] int32 slots passed over so far
    pending: Array  # [N] bool leaders still probing
    old: Array  # [N] int32 the count a resolved leader found (0 for a claimed slot)
    full: Array  # [N] bool leaders that found the table full


class _Groups(NamedTuple):
    """Visits `[N]` grouped by key: `rank` earlier visits of the same key in this call, the env
    index of the group's first visit (`leader`), and the group's size on its leader (`visits`)."""

    rank: Array
    leader: Array
    is_leader: Array
    visits: Array


def _run_starts(values: Array) -> Array:
    """bool `[N]`: where a run of equal values starts in the sorted `values: [N]`."""
    return jnp.concatenate([jnp.ones((1,), bool), values[1:] != values[:-1]])


def _group(key_a: Array, key_b: Array) -> _Groups:
    num = key_a.shape[0]
    index = jnp.arange(num, dtype=jnp.int32)
    order = jnp.lexsort((index, key_b, key_a))  # the last key is the primary one; stable
    first = _run_starts(key_a[order]) | _run_starts(key_b[order])
    group_start = jax.lax.cummax(jnp.where(first, index, 0))
    group = jnp.cumsum(first.astype(jnp.int32)) - 1
    group_size = jax.ops.segment_sum(jnp.ones((num,), jnp.int32), group, num_segments=num)
    unsort = jnp.zeros((num,), jnp.int32).at[order]
    return _Groups(
        rank=unsort.set(index - group_start),
        leader=unsort.set(order[group_start]),
        is_leader=jnp.zeros((num,), bool).at[order].set(first),
        visits=unsort.set(group_size[group]),
    )


def _probe_round(p: _Probe, key_a: Array, key_b: Array, visits: Array) -> _Probe:
    """One slot further for every pending leader of one table."""
    size = p.counts.shape[0]
    index = jnp.arange(key_a.shape[0], dtype=jnp.int32)
    held = p.counts[p.slot]
    empty = held == 0
    match = ~empty & (p.key_a[p.slot] == key_a) & (p.key_b[p.slot] == key_b)
    # (`~match` is implied by `empty`; it makes the key-table writes below depend on the reads
    # above, so XLA orders them and updates the tables in place instead of copying them.)
    claim = p.pending & empty & ~match
    # the lowest env index wins each claimed slot: sort the claims by (slot, index)
    claimed = jnp.where(claim, p.slot.astype(jnp.int32), size)  # size <= 2^30 (check)
    by_slot = jnp.lexsort((index, claimed))
    won = claim & jnp.zeros_like(claim).at[by_slot].set(_run_starts(claimed[by_slot]))
    found = p.pending & match
    claimed_slot = jnp.where(won, p.slot, size)  # out of range: dropped
    advance = p.pending & ~empty & ~match
    probes = p.probes + advance.astype(jnp.int32)
    full = advance & (probes >= size)
    return _Probe(
        counts=p.counts.at[jnp.where(won | found, p.slot, size)].add(visits, mode="drop"),
        key_a=p.key_a.at[claimed_slot].set(key_a, mode="drop"),
        key_b=p.key_b.at[claimed_slot].set(key_b, mode="drop"),
        slot=jnp.where(advance, (p.slot + 1) & jnp.uint32(size - 1), p.slot),
        probes=probes,
        pending=p.pending & ~won & ~found & ~full,
        old=jnp.where(found, held, p.old),
        full=p.full | full,
    )


def _place(
    counts: Array, table_a: Array, table_b: Array, key_a: Array, key_b: Array
) -> tuple[Array, Array, Array, Array, Array]:
    """`count_visits` on a batch of B tables (`[B, S]`) and visits (`[B, N]`); returns the
    updated tables, the counts `[B, N]` and the number of unrecorded visits `[B]`.

    The probing loop is written over the batch by hand (its rounds vmapped, the loop not):
    a vmapped loop with a per-table stopping condition would select between the old and new
    tables, i.e. copy every table, on every round.
    """
    groups = jax.vmap(_group)(key_a, key_b)
    start = _Probe(
        counts=counts,
        key_a=table_a,
        key_b=table_b,
        slot=key_a & jnp.uint32(counts.shape[1] - 1),
        probes=jnp.zeros(key_a.shape, jnp.int32),
        pending=groups.is_leader,
        old=jnp.zeros(key_a.shape, jnp.int32),
        full=jnp.zeros(key_a.shape, bool),
    )
    done = jax.lax.while_loop(
        lambda p: p.pending.any(),
        lambda p: jax.vmap(_probe_round)(p, key_a, key_b, groups.visits),
        start,
    )
    rows = jnp.arange(key_a.shape[0])[:, None]
    full = done.full[rows, groups.leader]
    n = jnp.where(full, 1, done.old[rows, groups.leader] + groups.rank + 1)
    return done.counts, done.key_a, done.key_b, n, full.sum(-1, dtype=jnp.int32)


@jax.custom_batching.custom_vmap
def _place_one(
    counts: Array, table_a: Array, table_b: Array, key_a: Array, key_b: Array
) -> tuple[Array, Array, Array, Array, Array]:
    out = _place(counts[None], table_a[None], table_b[None], key_a[None], key_b[None])
    return tuple(x[0] for x in out)


@_place_one.def_vmap
def _place_many(axis_size: int, in_batched: list[bool], *args: Array) -> tuple[tuple, tuple]:
    """Under vmap (seeds of one configuration) the B tables go to `_place` as one batch."""
    args = tuple(
        x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
        for x, batched in zip(args, in_batched, strict=True)
    )
    return _place(*args), (True,) * 5


def count_visits(state: CountState, key_a: Array, key_b: Array) -> tuple[CountState, Array]:
    """Record visits of the states keyed `key_a, key_b: [N]` (uint32) in env order; returns the
    new state and the counts `[N]` int32, each including its own visit and those of lower env
    indices in the same call (1 for a state absent from a full table: not recorded).

    All N visits are placed at once, updating the table in place: O(N log N + N x probe length)
    per call. (A loop over visits, each probing in a nested loop, made XLA copy the whole table
    on every visit: 0.6 s per 64 visits at 2^22 slots.)

    1. Equal keys are grouped (a stable sort keeps env order); the i-th visit of a group of g
       gets `old + i` and the group adds g to its slot, exactly as g sequential visits would.
    2. The first visit of each group (its leader) probes the table (linear probing from
       `key_a mod size`), all leaders in lock step, one slot per round: a slot holding its key
       resolves it; an empty slot is claimed, by the lowest env index when several leaders reach
       the same empty slot in one round, and the others probe on; a slot holding another key
       sends it to the next one. A leader that has probed every slot finds the table full: its
       group's visits count 1 each and go to `overflow`.
    """
    counts, table_a, table_b, n, unrecorded = _place_one(
        state.counts, state.key_a, state.key_b, key_a, key_b
    )
    new = state._replace(
        counts=counts, key_a=table_a, key_b=table_b, overflow=state.overflow + unrecorded
    )
    return new, n


def count_visit(state: CountState, key_a: Array, key_b: Array) -> tuple[CountState, Array]:
    """Record one visit of the state keyed (key_a, key_b) (uint32 scalars) and return the new
    state and its count n including this visit (1 if the table is full and the key absent)."""
    state, n = count_visits(state, key_a[None], key_b[None])
    return state, n[0]


# ------------------------------------------------------------------------------------ source


def build(params: CountParams, spec: EnvSpec) -> RewardSource:
    method = resolved_hash(params, spec)
    obs_size = int(np.prod(spec.obs_shape))
    code_size = obs_size if method == "exact" else params.bits
    multipliers = jnp.asarray(fingerprint_multipliers(code_size))

    def keys(state: CountState, obs: Array) -> tuple[Array, Array]:
        """`obs: [N, *obs_shape]` -> the two uint32 halves `[N]` of the key of phi(s)."""
        if method == "exact":
            return observation_fingerprint(obs, multipliers)
        flat = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        bits = (flat @ state.projection.T > 0).astype(jnp.uint32)  # sgn(A g(s)): [N, k] bits
        return fingerprint(bits, multipliers)

    def init(key: Array, spec: EnvSpec, num_envs: int) -> CountState:
        size = params.table_size
        rows = params.bits if method == "simhash" else 0
        return CountState(
            counts=jnp.zeros((size,), jnp.int32),
            key_a=jnp.zeros((size,), jnp.uint32),
            key_b=jnp.zeros((size,), jnp.uint32),
            projection=jax.random.normal(key, (rows, obs_size), jnp.float32),
            overflow=jnp.zeros((), jnp.int32),
        )

    def reward(state: CountState, transition: Transition) -> tuple[Array, CountState]:
        key_a, key_b = keys(state, transition.next_obs)
        state, n = count_visits(state, key_a, key_b)
        return params.beta / jnp.sqrt(n.astype(jnp.float32)), state

    def update(
        state: CountState, rollout: Transition, key: Array
    ) -> tuple[CountState, dict[str, Array]]:
        distinct = (state.counts > 0).sum()
        return state, {
            "distinct_states": distinct,
            "table_load": distinct / state.counts.shape[0],
            "overflow": state.overflow,
        }

    return RewardSource(init, reward, update)


def check(params: CountParams, spec: EnvSpec) -> None:
    if params.hash not in HASHES:
        raise UserError(
            f"sources.count.hash must be one of {', '.join(HASHES)}, got {params.hash!r}."
        )
    if resolved_hash(params, spec) == "exact" and spec.obs_kind != "grid":
        raise UserError(
            "exact counts need discrete observations; use sources.count.hash=simhash "
            f"({spec.env_id} has {spec.obs_kind} observations)."
        )
    size = params.table_size
    if size < 2 or size & (size - 1) or size > 2**30:
        raise UserError(
            f"sources.count.table_size must be a power of two between 2 and 2^30, got {size}."
        )
    if params.bits < 1:
        raise UserError(f"sources.count.bits must be >= 1, got {params.bits}.")
    if params.beta <= 0:
        raise UserError(f"sources.count.beta must be > 0, got {params.beta}.")


register(
    SourceEntry(
        name="count",
        params_class=CountParams,
        build=build,
        check=check,
        summary="visit counts, beta/sqrt(n): exact on grids, SimHash elsewhere (Tang et al. 2017)",
    )
)
