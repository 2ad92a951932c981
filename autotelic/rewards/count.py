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


def count_visit(state: CountState, key_a: Array, key_b: Array) -> tuple[CountState, Array]:
    """Record one visit of the state keyed (key_a, key_b) (uint32 scalars) and return the new
    state and its count n including this visit (1 if the table is full and the key absent)."""
    size = state.counts.shape[0]
    mask = jnp.uint32(size - 1)

    def searching(carry: tuple[Array, Array]) -> Array:
        slot, probes = carry
        occupied = state.counts[slot] > 0
        match = (state.key_a[slot] == key_a) & (state.key_b[slot] == key_b)
        return occupied & ~match & (probes < size)

    def next_slot(carry: tuple[Array, Array]) -> tuple[Array, Array]:
        slot, probes = carry
        return (slot + 1) & mask, probes + 1

    start = (key_a & mask).astype(jnp.uint32)
    slot, probes = jax.lax.while_loop(searching, next_slot, (start, jnp.zeros((), jnp.int32)))
    full = probes >= size
    n = jnp.where(full, 0, state.counts[slot]) + 1
    counts = state.counts.at[slot].set(jnp.where(full, state.counts[slot], n))
    key_a_table = state.key_a.at[slot].set(jnp.where(full, state.key_a[slot], key_a))
    key_b_table = state.key_b.at[slot].set(jnp.where(full, state.key_b[slot], key_b))
    new = state._replace(
        counts=counts,
        key_a=key_a_table,
        key_b=key_b_table,
        overflow=state.overflow + full.astype(jnp.int32),
    )
    return new, n


def count_visits(state: CountState, key_a: Array, key_b: Array) -> tuple[CountState, Array]:
    """Record visits `key_a, key_b: [N]` in env order; returns the counts `[N]` int32."""

    def one(table: CountState, keys: tuple[Array, Array]) -> tuple[CountState, Array]:
        return count_visit(table, *keys)

    return jax.lax.scan(one, state, (key_a, key_b))


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
