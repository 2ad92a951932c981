"""Reward models distilled from caption labels, and ONI's episodic count scaling.

Every model is pure functions over an explicit state (a NamedTuple of arrays, checkpointable with
the run) and knows nothing of PPO:

* retrieval (numpy):   exact caption lookup; a caption with no `ok` label gets 0.
      state = retrieval_init();  state = retrieval_update(state, ids, labels)
      reward = retrieval_reward(state, ids)
* classifier (JAX):    a small text classifier on hashed word and character n-grams, trained
      online on the labels, so unseen captions get a reward too. Reward 1[P(helpful) > 0.5]
      (the classification variant of ONI).
* ranking (JAX):       Bradley-Terry on caption pairs, ties as 0.5, as in "Motif: Intrinsic
      Motivation from Artificial Intelligence Feedback" (Klissarov et al. 2024, arXiv 2310.00166):
      P(a > b) = exp r(a) / (exp r(a) + exp r(b)), trained by cross-entropy against the
      preference y in {1, 0.5, 0}. The reward is the *normalized* and thresholded score
      1[r_hat >= eps] * r_hat with r_hat = (r - mu) / sigma over the labelled captions and eps
      their median of r_hat - normalization actually applied (the ONI reference code computes it
      but rewards the raw score).
* episodic counts (numpy): N_ep(caption), the number of times a caption was seen in the current
      episode of each env, and the scaling r / N_ep^beta (beta = 3) of "Online Intrinsic Rewards
      for Decision Making Agents from Large Language Model Feedback" (Zheng et al. 2024,
      arXiv 2410.23022), whose total reward is r = c_ext r_ext + c_llm r_llm / N_ep(msg)^beta.

Captions enter as `CaptionBatch` (from `caption_batch`): a 64-bit id per caption for exact
lookups and counts, and the hashed n-gram bag for the text models. The empty caption has id 0
and is never rewarded.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .store import Label

Array = jax.Array

# ------------------------------------------------------------------------------------ captions


def caption_id(caption: str) -> int:
    """A stable 64-bit id of the exact caption (BLAKE2b); 0 only for the empty caption."""
    if not caption:
        return 0
    value = int.from_bytes(
        hashlib.blake2b(caption.encode("utf-8"), digest_size=8).digest(), "little"
    )
    return value or 1


def caption_ids(captions: Sequence[str]) -> np.ndarray:
    """`[B]` uint64 ids."""
    return np.fromiter((caption_id(c) for c in captions), dtype=np.uint64, count=len(captions))


@dataclass(frozen=True)
class TextConfig:
    """Text model settings.

    num_buckets:   size of the hashed n-gram vocabulary (a power of two)
    max_ngrams:    n-grams kept per caption (words, then word pairs, then character trigrams)
    embed_dim:     n-gram embedding width
    hidden:        hidden units of the MLP on the averaged embedding
    learning_rate: Adam step size
    """

    num_buckets: int = 2**15
    max_ngrams: int = 128
    embed_dim: int = 32
    hidden: int = 64
    learning_rate: float = 3e-3


_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


@lru_cache(maxsize=1 << 16)
def _ngrams(caption: str, num_buckets: int, max_ngrams: int) -> tuple[int, ...]:
    words = _TOKEN.findall(caption.lower())
    grams = [f"w {w}" for w in words]
    grams += [f"b {a} {b}" for a, b in itertools.pairwise(words)]
    for word in words:
        padded = f"<{word}>"
        grams += [f"c {padded[i : i + 3]}" for i in range(len(padded) - 2)]
    return tuple(zlib.crc32(g.encode("utf-8")) % num_buckets for g in grams[:max_ngrams])


class CaptionBatch(NamedTuple):
    """ids:     [B] uint64 caption ids (0: empty caption)
    ngrams:  [B, L] int32 hashed n-gram buckets (0 where masked)
    mask:    [B, L] float32, 1 where `ngrams` holds an n-gram
    """

    ids: np.ndarray
    ngrams: np.ndarray
    mask: np.ndarray


def caption_batch(captions: Sequence[str], config: TextConfig = TextConfig()) -> CaptionBatch:
    """Featurize captions (deterministic: the same caption always gives the same features)."""
    length = config.max_ngrams
    ngrams = np.zeros((len(captions), length), np.int32)
    mask = np.zeros((len(captions), length), np.float32)
    for row, caption in enumerate(captions):
        grams = _ngrams(caption, config.num_buckets, length)
        ngrams[row, : len(grams)] = grams
        mask[row, : len(grams)] = 1.0
    return CaptionBatch(caption_ids(captions), ngrams, mask)


def ok_labels(labels: Sequence[Label]) -> tuple[list[str], np.ndarray]:
    """The captions whose label is `ok`, and their labels `[B]` float32 in {0, 1}. Unparseable
    and error rows are left out, never guessed (unlike the ONI reference code, which turns
    parse failures into "unhelpful")."""
    kept = [x for x in labels if x.status == "ok" and x.label is not None]
    return [x.caption for x in kept], np.array([x.label for x in kept], np.float32)


# ----------------------------------------------------------------------------------- retrieval


class RetrievalState(NamedTuple):
    """keys: [M] uint64 caption ids, sorted; values: [M] float32 their labels."""

    keys: np.ndarray
    values: np.ndarray


def retrieval_init() -> RetrievalState:
    return RetrievalState(np.zeros(0, np.uint64), np.zeros(0, np.float32))


def retrieval_update(state: RetrievalState, ids: np.ndarray, labels: np.ndarray) -> RetrievalState:
    """Add labels (`ids: [B] uint64`, `labels: [B]`); a later label for a known id replaces it."""
    ids = np.asarray(ids, np.uint64)
    labels = np.asarray(labels, np.float32)
    keys = np.concatenate([state.keys, ids])
    values = np.concatenate([state.values, labels])
    # keep the last occurrence of each id: unique on the reversed arrays keeps first hits
    keys_rev, first = np.unique(keys[::-1], return_index=True)
    return RetrievalState(keys_rev, values[::-1][first])


def retrieval_reward(state: RetrievalState, ids: np.ndarray) -> np.ndarray:
    """`ids: [...] uint64` -> `[...]` float32: the stored label, 0 where unlabelled or empty."""
    ids = np.asarray(ids, np.uint64)
    if len(state.keys) == 0:
        return np.zeros(ids.shape, np.float32)
    position = np.clip(np.searchsorted(state.keys, ids), 0, len(state.keys) - 1)
    hit = (state.keys[position] == ids) & (ids != 0)
    return np.where(hit, state.values[position], 0.0).astype(np.float32)


# ------------------------------------------------------------------------------- text encoder


def _text_init(key: Array, config: TextConfig) -> dict[str, Array]:
    k_embed, k_hidden, k_out = jax.random.split(key, 3)
    d, h = config.embed_dim, config.hidden
    return {
        "embed": 0.1 * jax.random.normal(k_embed, (config.num_buckets, d)),
        "hidden_w": jax.random.normal(k_hidden, (d, h)) * jnp.sqrt(2.0 / d),
        "hidden_b": jnp.zeros(h),
        "out_w": jax.random.normal(k_out, (h, 1)) * jnp.sqrt(1.0 / h),
        "out_b": jnp.zeros(1),
    }


def text_score(params: dict[str, Array], ngrams: Array, mask: Array) -> Array:
    """`[B, L]` n-grams -> `[B]` scalar score: mean n-gram embedding (a bag of n-grams, as in
    "Bag of Tricks for Efficient Text Classification", Joulin et al. 2017) then an MLP."""
    vectors = params["embed"][ngrams] * mask[..., None]
    mean = vectors.sum(-2) / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
    hidden = jax.nn.relu(mean @ params["hidden_w"] + params["hidden_b"])
    return (hidden @ params["out_w"] + params["out_b"])[..., 0]


class TextModelState(NamedTuple):
    params: dict[str, Array]
    opt_state: Any
    steps: Array  # int32 gradient steps taken


def _optimizer(config: TextConfig) -> optax.GradientTransformation:
    return optax.adam(config.learning_rate)


def _text_state(key: Array, config: TextConfig) -> TextModelState:
    params = _text_init(key, config)
    return TextModelState(params, _optimizer(config).init(params), jnp.zeros((), jnp.int32))


def _adam_steps(
    state: TextModelState,
    loss_fn: Any,  # (params, rows [minibatch] int32) -> scalar loss
    count: Array,
    key: Array,
    config: TextConfig,
    steps: int,
    minibatch: int,
) -> tuple[TextModelState, Array]:
    """`steps` Adam steps, each on `minibatch` rows drawn with replacement from the first
    `count` rows of the data `loss_fn` closes over; the state is unchanged while `count` is 0
    (nothing to learn from yet). Returns the new state and the mean loss."""
    optimizer = _optimizer(config)

    def step(carry, step_key):
        params, opt_state = carry
        rows = jax.random.randint(step_key, (minibatch,), 0, jnp.maximum(count, 1))
        loss, grads = jax.value_and_grad(loss_fn)(params, rows)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(
        step, (state.params, state.opt_state), jax.random.split(key, steps)
    )
    trained = TextModelState(params, opt_state, state.steps + steps)
    keep = count > 0
    return jax.tree.map(lambda new, old: jnp.where(keep, new, old), trained, state), losses.mean()


# ---------------------------------------------------------------------------------- classifier


def classifier_init(key: Array, config: TextConfig = TextConfig()) -> TextModelState:
    return _text_state(key, config)


def classifier_probability(state: TextModelState, ngrams: Array, mask: Array) -> Array:
    """`[B]` P(helpful)."""
    return jax.nn.sigmoid(text_score(state.params, ngrams, mask))


def classifier_reward(
    state: TextModelState, ngrams: Array, mask: Array, threshold: float = 0.5
) -> Array:
    """`[B]` float32 1[P(helpful) > threshold] (ONI's classification reward); 0 for an empty
    caption (no n-grams)."""
    has_text = mask.sum(-1) > 0
    helpful = classifier_probability(state, ngrams, mask) > threshold
    return (helpful & has_text).astype(jnp.float32)


@partial(jax.jit, static_argnames=("config", "steps", "minibatch"))
def classifier_fit(
    state: TextModelState,
    ngrams: Array,
    mask: Array,
    labels: Array,
    count: Array,
    key: Array,
    config: TextConfig = TextConfig(),
    steps: int = 32,
    minibatch: int = 256,
) -> tuple[TextModelState, dict[str, Array]]:
    """`steps` Adam steps of binary cross-entropy on minibatches drawn with replacement from the
    first `count` rows of the dataset (`ngrams, mask: [C, L]`, `labels: [C]` in {0, 1}).

    The dataset may be padded to a fixed capacity C, so it can grow without recompiling (ONI
    takes 32 steps per arriving label batch while the dataset is small).
    """

    def loss_fn(params, rows):
        logits = text_score(params, ngrams[rows], mask[rows])
        return optax.sigmoid_binary_cross_entropy(logits, labels[rows]).mean()

    new_state, loss = _adam_steps(state, loss_fn, count, key, config, steps, minibatch)
    return new_state, {"classifier/loss": loss}


# ------------------------------------------------------------------------------------- ranking


class RankingState(NamedTuple):
    """The Bradley-Terry model and the normalization its reward applies.

    reward_mean, reward_std: mu and sigma of the raw score over the labelled captions
    threshold:               eps, the `quantile` of the normalized score over them
    """

    model: TextModelState
    reward_mean: Array
    reward_std: Array
    threshold: Array


def ranking_init(key: Array, config: TextConfig = TextConfig()) -> RankingState:
    zero = jnp.zeros((), jnp.float32)
    return RankingState(_text_state(key, config), zero, jnp.ones((), jnp.float32), zero)


def ranking_score(state: RankingState, ngrams: Array, mask: Array) -> Array:
    """`[B]` raw Bradley-Terry score r(caption)."""
    return text_score(state.model.params, ngrams, mask)


def bradley_terry_loss(score_first: Array, score_second: Array, preference: Array) -> Array:
    """Cross-entropy between (y, 1 - y) and the softmax of the score pair, per pair (Motif,
    Sec. 2; ties are y = 0.5). Softmax of two scores is the sigmoid of their difference."""
    margin = score_first - score_second
    return -(
        preference * jax.nn.log_sigmoid(margin) + (1 - preference) * jax.nn.log_sigmoid(-margin)
    )


@partial(jax.jit, static_argnames=("config", "steps", "minibatch"))
def ranking_fit(
    state: RankingState,
    first: tuple[Array, Array],
    second: tuple[Array, Array],
    preference: Array,
    count: Array,
    key: Array,
    config: TextConfig = TextConfig(),
    steps: int = 32,
    minibatch: int = 256,
) -> tuple[RankingState, dict[str, Array]]:
    """`steps` Adam steps of the Bradley-Terry loss on minibatches of the first `count` pairs.

    first, second: (ngrams [P, L], mask [P, L]) of each pair's captions
    preference:    [P] 1 if the first caption is preferred, 0 if the second, 0.5 for a tie
    """

    def loss_fn(params, rows):
        a = text_score(params, first[0][rows], first[1][rows])
        b = text_score(params, second[0][rows], second[1][rows])
        return bradley_terry_loss(a, b, preference[rows]).mean()

    model, loss = _adam_steps(state.model, loss_fn, count, key, config, steps, minibatch)
    return state._replace(model=model), {"ranking/loss": loss}


def ranking_calibrate(
    state: RankingState, ngrams: Array, mask: Array, quantile: float = 0.5
) -> tuple[RankingState, dict[str, Array]]:
    """Set mu, sigma and eps from the raw scores of the labelled captions (`[M, L]`), as Motif
    does after training (eps is the `quantile` of the normalized score; 0.5 in Motif)."""
    scores = ranking_score(state, ngrams, mask)
    mean = scores.mean()
    std = jnp.maximum(scores.std(), 1e-6)
    threshold = jnp.quantile((scores - mean) / std, quantile)
    metrics = {
        "ranking/reward_mean": mean,
        "ranking/reward_std": std,
        "ranking/threshold": threshold,
    }
    return state._replace(reward_mean=mean, reward_std=std, threshold=threshold), metrics


def ranking_reward(state: RankingState, ngrams: Array, mask: Array) -> Array:
    """`[B]` 1[r_hat >= eps] * r_hat, r_hat = (r - mu) / sigma (Motif's intrinsic reward before
    count scaling); 0 for an empty caption."""
    normalized = (ranking_score(state, ngrams, mask) - state.reward_mean) / state.reward_std
    has_text = mask.sum(-1) > 0
    return jnp.where((normalized >= state.threshold) & has_text, normalized, 0.0)


def preference_pairs(
    values: np.ndarray, num_pairs: int, rng: np.random.Generator, tie_margin: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random caption pairs labelled from per-caption values (labels or annotator scores).

    values: [M]; returns first [P] int, second [P] int (indices into values, first != second
    when M > 1) and preference [P] float32: 1 if values[first] > values[second] + tie_margin,
    0 if it is below by more than the margin, 0.5 (a tie) otherwise.
    """
    values = np.asarray(values, np.float64)
    count = len(values)
    if count < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    first = rng.integers(0, count, num_pairs)
    second = (first + rng.integers(1, count, num_pairs)) % count
    difference = values[first] - values[second]
    preference = np.where(
        difference > tie_margin, 1.0, np.where(difference < -tie_margin, 0.0, 0.5)
    )
    return first, second, preference.astype(np.float32)


# ------------------------------------------------------------------------------ count scaling


class EpisodicCounts(NamedTuple):
    """Per-env counts of captions in the current episode.

    keys:     [N, K] uint64 caption ids (valid in the first `size` slots)
    counts:   [N, K] int32
    size:     [N] int32 distinct captions seen this episode
    overflow: [] int64 sightings of a new caption in an env whose K slots were full (counted as
              first sightings); raise K if this grows
    """

    keys: np.ndarray
    counts: np.ndarray
    size: np.ndarray
    overflow: np.ndarray


def episodic_counts_init(num_envs: int, capacity: int = 256) -> EpisodicCounts:
    return EpisodicCounts(
        np.zeros((num_envs, capacity), np.uint64),
        np.zeros((num_envs, capacity), np.int32),
        np.zeros(num_envs, np.int32),
        np.zeros((), np.int64),
    )


def episodic_counts_step(
    state: EpisodicCounts, ids: np.ndarray, done: np.ndarray
) -> tuple[EpisodicCounts, np.ndarray]:
    """Count this step's caption of each env (`ids: [N]` uint64, 0 = no caption) and return
    N_ep(caption) `[N]` int32 including this sighting (0 where there is no caption). Envs whose
    episode ended with this step (`done: [N]` bool) start their next episode from zero, after
    the caption of the final step was counted in the episode it belongs to."""
    ids = np.asarray(ids, np.uint64)
    done = np.asarray(done, bool)
    keys, counts, size = state.keys.copy(), state.counts.copy(), state.size.copy()
    num_envs, capacity = keys.shape
    envs = np.arange(num_envs)
    valid = ids != 0
    occupied = np.arange(capacity)[None, :] < size[:, None]
    match = (keys == ids[:, None]) & occupied
    found = match.any(1) & valid
    slot = np.where(found, match.argmax(1), size)
    fresh = valid & ~found & (size < capacity)
    lost = valid & ~found & (size >= capacity)
    counts[envs[found], slot[found]] += 1
    keys[envs[fresh], slot[fresh]] = ids[fresh]
    counts[envs[fresh], slot[fresh]] = 1
    size = size + fresh.astype(np.int32)
    result = np.zeros(num_envs, np.int32)
    result[found | fresh] = counts[envs[found | fresh], slot[found | fresh]]
    result[lost] = 1
    keys[done], counts[done], size[done] = 0, 0, 0
    return EpisodicCounts(keys, counts, size, state.overflow + lost.sum()), result


def count_scaled_reward(reward, count, beta: float = 3.0):
    """r / N_ep(caption)^beta (ONI; beta = 3). `count` < 1 (no caption) is treated as 1, so
    pass a zero reward there. Works on numpy and JAX arrays alike."""
    xp = jnp if isinstance(reward, jax.Array) or isinstance(count, jax.Array) else np
    count = xp.maximum(xp.asarray(count, dtype=xp.float32), 1.0)
    return xp.asarray(reward, dtype=xp.float32) / count**beta
