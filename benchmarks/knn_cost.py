"""Cost of episodic novelty's kNN search for one step of N envs, under memory fills seen in
training, against scanning every env's memory as far as the fullest one (the search before
2026-11-23, kept here as the reference).

    python benchmarks/knn_cost.py
    python benchmarks/knn_cost.py --envs 64 --capacity 2561 --repeats 30

Fills (slots used per env, `--capacity` = DoorKey-16x16's horizon + 1):
  late        62 envs in short episodes (1-64 steps), 2 envs stuck in long ones (2,145 and 2,550),
              the state of a DoorKey-16x16 run after it is solved;
  short       every env at 40;
  lockstep    every env at the same fill, 640 / 1,280 / 2,561 (early in a run the episodes all
              start together and run to the horizon);
  spread      fills uniform in 500-1,500.
Both searches must agree (checked on every fill before timing). Each figure is the median over
`--repeats` calls of a jitted search; the two alternate so a change of load reaches both.
Prints one line per fill and a JSON summary. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from autotelic.rewards.episodic import nearest_sq_distances

REFERENCE_BLOCK = 512


def scan_to_fullest(memory: jax.Array, size: jax.Array, query: jax.Array, k: int) -> jax.Array:
    """Every env scanned in blocks of 512 slots up to the fullest env's fill, a running top-k."""
    num_envs, capacity, _ = memory.shape
    filled = jnp.minimum(size, capacity)

    def block_distances(start: jax.Array) -> jax.Array:
        begin = jnp.minimum(start, capacity - REFERENCE_BLOCK)
        block = jax.lax.dynamic_slice_in_dim(memory, begin, REFERENCE_BLOCK, axis=1)
        sq = jnp.sum(jnp.square(block - query[:, None, :]), axis=-1)
        slot = begin + jnp.arange(REFERENCE_BLOCK)[None, :]
        return jnp.where((slot >= start) & (slot < filled[:, None]), sq, jnp.inf)

    def scan_block(i: jax.Array, negated: jax.Array) -> jax.Array:
        sq = block_distances(i * REFERENCE_BLOCK)
        return jax.lax.top_k(jnp.concatenate([negated, -sq], axis=1), k)[0]

    blocks = (filled.max() + REFERENCE_BLOCK - 1) // REFERENCE_BLOCK
    negated = jnp.full((num_envs, k), -jnp.inf, jnp.float32)
    nearest = -jax.lax.fori_loop(0, blocks, scan_block, negated)
    return jnp.where(jnp.isfinite(nearest), nearest, 0.0)


def fills(num_envs: int, capacity: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    late = np.concatenate([rng.integers(1, 65, num_envs - 2), [2145, 2550]])
    return {
        "late": np.minimum(late, capacity),
        "short": np.full(num_envs, 40),
        "lockstep 640": np.full(num_envs, min(640, capacity)),
        "lockstep 1280": np.full(num_envs, min(1280, capacity)),
        "lockstep full": np.full(num_envs, capacity),
        "spread": rng.integers(500, 1500, num_envs),
    }


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--capacity", type=int, default=2561)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if args.capacity < REFERENCE_BLOCK:
        parser.error(f"--capacity must be at least {REFERENCE_BLOCK}")

    rng = np.random.default_rng(0)
    memory = jnp.asarray(rng.normal(size=(args.envs, args.capacity, args.dim)), jnp.float32)
    query = jnp.asarray(rng.normal(size=(args.envs, args.dim)), jnp.float32)
    current = jax.jit(lambda m, s, q: nearest_sq_distances(m, s, q, args.k)[0])
    reference = jax.jit(lambda m, s, q: scan_to_fullest(m, s, q, args.k))
    rows = []
    for name, fill in fills(args.envs, args.capacity, rng).items():
        size = jnp.asarray(fill, jnp.int32)
        np.testing.assert_allclose(
            np.asarray(current(memory, size, query)),
            np.asarray(reference(memory, size, query)),
            rtol=1e-5,
        )
        ref_ms, cur_ms = [], []
        for _ in range(2):
            ref_ms.append(median_ms(reference, memory, size, query, repeats=args.repeats))
            cur_ms.append(median_ms(current, memory, size, query, repeats=args.repeats))
        row = {
            "fill": name,
            "scan_to_fullest_ms": round(statistics.median(ref_ms), 3),
            "per_env_blocks_ms": round(statistics.median(cur_ms), 3),
        }
        row["speedup"] = round(row["scan_to_fullest_ms"] / row["per_env_blocks_ms"], 2)
        rows.append(row)
        print(
            f"{name:>14}: scan to the fullest {row['scan_to_fullest_ms']:.2f} ms, "
            f"per-env blocks {row['per_env_blocks_ms']:.2f} ms ({row['speedup']:.2f}x)",
            flush=True,
        )
    summary = {
        "benchmark": "knn_cost",
        "envs": args.envs,
        "capacity": args.capacity,
        "dim": args.dim,
        "k": args.k,
        "repeats": args.repeats,
        "machine": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "rows": rows,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
