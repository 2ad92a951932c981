"""Evaluate a function on the masked entries of a `[T, N, ...]` batch only."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def apply_masked(fn: Callable[[Array], Array], x: Array, mask: Array, rows: int) -> Array:
    """`fn` on the entries of `x: [T, N, ...]` where `mask: [T, N]` is true, 0 elsewhere.

    `fn` maps `[rows, ...]` to `[rows, ...]` row by row. The masked entries are evaluated `rows`
    at a time, in a loop that runs ceil(count / rows) times (not at all when nothing is masked).
    Under `vmap` the loop runs as often as the fullest batch member needs. The alternative,
    `lax.cond` on "anything masked" around a full evaluation, evaluates both branches under
    `vmap` (a `cond` with a batched predicate becomes a `select`)."""
    num_steps, num_envs = mask.shape
    size = num_steps * num_envs
    flat_x = x.reshape(size, *x.shape[2:])
    flat = mask.reshape(size)
    count = flat.sum()
    order = jnp.nonzero(flat, size=size, fill_value=0)[0]  # the masked ones first
    spare = size + jnp.arange(rows)
    shape = jax.eval_shape(fn, jax.ShapeDtypeStruct((rows, *x.shape[2:]), x.dtype))

    def evaluate(carry: tuple[Array, Array]) -> tuple[Array, Array]:
        step, out = carry
        position = step * rows + jnp.arange(rows)
        index = order[jnp.minimum(position, size - 1)]
        # Positions past the masked ones write to spare rows that are dropped below.
        target = jnp.where(position < count, index, spare)
        return step + 1, out.at[target].set(fn(flat_x[index]))

    out = jnp.zeros((size + rows, *shape.shape[1:]), shape.dtype)
    _, out = jax.lax.while_loop(
        lambda carry: carry[0] * rows < count, evaluate, (jnp.int32(0), out)
    )
    return out[:size].reshape(num_steps, num_envs, *shape.shape[1:])
