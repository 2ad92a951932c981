"""Shapley values of a cooperative game, exactly or by permutation sampling with error bars.

A *game* is a value function over coalitions of `n` players. A coalition is a boolean mask
`[n]` (True = the player is present). Players can be reward sources, observation features or
channels, or the agents of a team; the caller decides what `v` measures (probability of the
chosen action, a value estimate, an episode return).

Three call conventions are accepted for `v`:

* scalar:      `v(mask [n] bool) -> float`
* batched:     `v(masks [B, n] bool) -> [B]` (pass `batched=True`; much faster)
* stochastic:  `v(mask, seed) -> float` or, batched, `v(masks [B, n], seeds [B] int64) -> [B]`
  (pass `stochastic=True`). The seed is a non-negative int the game uses for all of its
  randomness (environment and policy), e.g. through `jax.random.key(seed)`. Equal seeds must
  give equal randomness; that is what common random numbers rely on.

Formulas (all from "A Value for n-Person Games", Shapley 1953):

* Shapley value, in its weighted-subset form:
  `phi_i = sum_{S subset N minus i} |S|! (n - |S| - 1)! / n! * [v(S u {i}) - v(S)]`
* equivalently the mean marginal contribution of `i` over uniformly random orderings of the
  players; `sample` estimates that mean.

The axioms the estimates keep: efficiency (`sum_i phi_i = v(N) - v(empty)`, exactly, also for
every sampled permutation), the null player (a player that never changes `v` gets 0) and symmetry
(interchangeable players get equal values).

`banzhaf` is here only to document the most common mistake: averaging marginal contributions
over coalitions drawn *uniformly over subsets* estimates the Banzhaf index (Banzhaf, "Weighted
Voting Doesn't Work: A Mathematical Analysis", Rutgers Law Review 1965), which differs from the
Shapley value as soon as interactions of three or more players exist.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np

from ..errors import UserError

MAX_EXACT_PLAYERS = 16
"""Exact enumeration evaluates 2**n coalitions; above 16 players (65,536) use `sample`."""

ValueFunction = Callable[..., Any]


class AttributionInputError(UserError, ValueError):
    """Bad input to an attribution function (the CLI maps it to exit status 2)."""


class TooManyPlayersError(AttributionInputError):
    """Exact enumeration was asked for more players than `MAX_EXACT_PLAYERS`."""


@dataclass(frozen=True)
class ShapleyValues:
    """Shapley values with their uncertainty.

    Attributes
    ----------
    values : [n] float64
        Point estimates (exact values for `exact`).
    standard_error : [n] float64
        Standard error of each estimate (zeros for `exact`).
    ci_low, ci_high : [n] float64
        Two-sided confidence interval at level `confidence` (equal to `values` for `exact`).
    confidence : float
        Level of the interval, e.g. 0.95.
    empty_value, full_value : float
        v(empty) and v(N) (means over the sampled permutations for stochastic games); the values
        always sum to `full_value - empty_value`.
    num_evaluations : int
        How many coalitions were evaluated (calls of a scalar `v`, rows for a batched one).
    num_permutations : int
        Permutations sampled (0 for exact enumeration).
    method : str
        "exact", "permutation" or "antithetic-permutation".
    """

    values: np.ndarray
    standard_error: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    confidence: float
    empty_value: float
    full_value: float
    num_evaluations: int
    num_permutations: int
    method: str

    def as_dict(self) -> dict[str, Any]:
        """Plain Python types, ready for `json.dump`."""
        return {
            "values": self.values.tolist(),
            "standard_error": self.standard_error.tolist(),
            "ci_low": self.ci_low.tolist(),
            "ci_high": self.ci_high.tolist(),
            "confidence": self.confidence,
            "empty_value": self.empty_value,
            "full_value": self.full_value,
            "num_evaluations": self.num_evaluations,
            "num_permutations": self.num_permutations,
            "method": self.method,
        }


# ---------------------------------------------------------------------------------------------
# Evaluating a game
# ---------------------------------------------------------------------------------------------


def evaluate_coalitions(
    value_fn: ValueFunction,
    masks: np.ndarray,
    seeds: np.ndarray | None,
    batched: bool,
    batch_size: int,
) -> np.ndarray:
    """Evaluate a game at many coalitions.

    Parameters
    ----------
    value_fn
        The game, see the module docstring for the call conventions.
    masks
        `[B, n]` bool coalitions.
    seeds
        `[B]` int64 game seeds for a stochastic game, None for a deterministic one.
    batched
        Whether `value_fn` takes a batch of masks.
    batch_size
        Most coalitions per call of a batched `value_fn`.

    Returns
    -------
    `[B]` float64 values.
    """
    out = np.empty(len(masks), dtype=np.float64)
    if not batched:
        for row, mask in enumerate(masks):
            result = value_fn(mask) if seeds is None else value_fn(mask, int(seeds[row]))
            out[row] = float(np.asarray(result))
        return out
    for start in range(0, len(masks), batch_size):
        stop = min(start + batch_size, len(masks))
        chunk = masks[start:stop]
        result = value_fn(chunk) if seeds is None else value_fn(chunk, seeds[start:stop])
        result = np.asarray(result, dtype=np.float64).reshape(-1)
        if result.shape != (stop - start,):
            raise AttributionInputError(
                f"a batched value function must return one value per coalition: got shape "
                f"{result.shape} for {stop - start} coalitions. Return an array [B] for masks "
                "[B, n], or pass batched=False."
            )
        out[start:stop] = result
    return out


def _check_players(num_players: int) -> None:
    if not isinstance(num_players, int | np.integer) or num_players < 1:
        raise AttributionInputError(f"num_players must be a positive int, got {num_players!r}.")


def _all_coalitions(num_players: int) -> np.ndarray:
    """Every coalition as a mask, row k = the bits of k: [2**n, n] bool."""
    codes = np.arange(2**num_players, dtype=np.int64)
    return ((codes[:, None] >> np.arange(num_players)) & 1).astype(bool)


def _coalition_table(
    value_fn: ValueFunction,
    num_players: int,
    batched: bool,
    stochastic: bool,
    seed: int,
    batch_size: int,
    method: str,
) -> np.ndarray:
    """v at every coalition, indexed by the coalition's bit code: [2**n] float64."""
    _check_players(num_players)
    if num_players > MAX_EXACT_PLAYERS:
        raise TooManyPlayersError(
            f"exact {method} enumeration needs 2**{num_players} = {2**num_players:,} coalition "
            f"values; the limit is {MAX_EXACT_PLAYERS} players. Use permutation sampling instead "
            "(autotelic.explain.shapley.sample, which reports standard errors and confidence "
            "intervals), or group the players (e.g. channels or patches instead of pixels)."
        )
    masks = _all_coalitions(num_players)
    seeds = np.full(len(masks), seed, dtype=np.int64) if stochastic else None
    return evaluate_coalitions(value_fn, masks, seeds, batched, batch_size)


def exact(
    value_fn: ValueFunction,
    num_players: int,
    *,
    batched: bool = False,
    stochastic: bool = False,
    seed: int = 0,
    batch_size: int = 4096,
) -> ShapleyValues:
    """Shapley values by enumerating all 2**n coalitions.

    `phi_i = sum_{S subset N minus i} |S|! (n-|S|-1)! / n! [v(S u {i}) - v(S)]`
    ("A Value for n-Person Games", Shapley 1953, the weighted-subset formula).

    Parameters
    ----------
    value_fn
        The game, see the module docstring for the call conventions.
    num_players
        n; at most `MAX_EXACT_PLAYERS`.
    batched, stochastic
        Call convention of `value_fn`.
    seed
        For a stochastic game, every coalition is evaluated with this one seed (common random
        numbers), so the result is the exact Shapley value of the game with that randomness fixed.
    batch_size
        Most coalitions passed to a batched `value_fn` in one call.

    Returns
    -------
    ShapleyValues with zero standard errors.

    Raises
    ------
    TooManyPlayersError
        If `num_players > MAX_EXACT_PLAYERS` (a `UserError`: exit status 2 from the CLI).
    """
    table = _coalition_table(
        value_fn, num_players, batched, stochastic, seed, batch_size, method="Shapley"
    )
    n = num_players
    codes = np.arange(2**n, dtype=np.int64)
    sizes = _popcount(codes)
    # Shapley weight of a coalition S not containing i: |S|! (n - |S| - 1)! / n!
    weight_by_size = np.array(
        [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    )
    values = np.empty(n, dtype=np.float64)
    for player in range(n):
        bit = np.int64(1) << player
        without = codes[(codes & bit) == 0]
        marginal = table[without | bit] - table[without]
        values[player] = np.dot(weight_by_size[sizes[without]], marginal)
    zeros = np.zeros(n)
    return ShapleyValues(
        values=values,
        standard_error=zeros,
        ci_low=values.copy(),
        ci_high=values.copy(),
        confidence=1.0,
        empty_value=float(table[0]),
        full_value=float(table[-1]),
        num_evaluations=len(table),
        num_permutations=0,
        method="exact",
    )


def banzhaf(
    value_fn: ValueFunction,
    num_players: int,
    *,
    batched: bool = False,
    stochastic: bool = False,
    seed: int = 0,
    batch_size: int = 4096,
) -> np.ndarray:
    """Exact Banzhaf index, [n] float64 — for comparison only, it is *not* the Shapley value.

    `beta_i = 2**-(n-1) sum_{S subset N minus i} [v(S u {i}) - v(S)]` (Banzhaf, "Weighted Voting
    Doesn't Work: A Mathematical Analysis", 1965): every coalition gets the same weight, which is
    what sampling coalitions uniformly over subsets estimates. It does not satisfy efficiency;
    e.g. for unanimity of 3 players (v = 1 only for N) Shapley gives 1/3 each, Banzhaf 1/4.
    Arguments as in `exact`.
    """
    table = _coalition_table(
        value_fn, num_players, batched, stochastic, seed, batch_size, method="Banzhaf"
    )
    codes = np.arange(2**num_players, dtype=np.int64)
    values = np.empty(num_players, dtype=np.float64)
    for player in range(num_players):
        bit = np.int64(1) << player
        without = codes[(codes & bit) == 0]
        values[player] = np.mean(table[without | bit] - table[without])
    return values


def _popcount(codes: np.ndarray) -> np.ndarray:
    counts = np.zeros_like(codes)
    remaining = codes.copy()
    while np.any(remaining):
        counts += remaining & 1
        remaining >>= 1
    return counts


# ---------------------------------------------------------------------------------------------
# Permutation sampling
# ---------------------------------------------------------------------------------------------


def sample(
    value_fn: ValueFunction,
    num_players: int,
    num_permutations: int,
    seed: int = 0,
    *,
    antithetic: bool = False,
    common_random_numbers: bool = True,
    batched: bool = False,
    stochastic: bool = False,
    confidence: float = 0.95,
    batch_size: int = 4096,
) -> ShapleyValues:
    """Shapley values estimated from random permutations, with standard errors and intervals.

    For each sampled ordering `pi` of the players, walk the chain of its prefixes
    `empty, {pi_1}, {pi_1, pi_2}, ..., N` (n + 1 evaluations) and credit each player with
    `v(P u {i}) - v(P)`, where `P` are its predecessors. The estimate is the mean over orderings,
    `phi_hat_i = (1/M) sum_m [v(P_i^m u {i}) - v(P_i^m)]` (the random-order form of
    "A Value for n-Person Games", Shapley 1953; sampled as in "Polynomial calculation of the
    Shapley value based on sampling", Castro, Gomez, Tejada 2009). The contributions of
    one ordering telescope to `v(N) - v(empty)`, so the estimates are exactly efficient.

    Uncertainty: `SE_i = sd_i / sqrt(M)` with the sample standard deviation (ddof = 1) of the
    per-ordering contributions, and the interval `phi_hat_i +/- z SE_i` with `z` the normal
    quantile (1.96 for 95%). This normal approximation relies on the central limit theorem:
    use at least ~30 orderings (pairs, with `antithetic`). A player whose contribution never
    varies (e.g. a null player under common random numbers) gets SE = 0 and a zero-width
    interval.

    Parameters
    ----------
    value_fn
        The game, see the module docstring for the call conventions.
    num_players
        n.
    num_permutations
        M, the number of orderings (even when `antithetic`). Costs `M (n + 1)` evaluations.
    seed
        Seeds the orderings and the per-evaluation game seeds; same seed, same result.
    antithetic
        Use each ordering together with its reverse. The two contributions of a pair are
        averaged first and the standard error is computed over the `M / 2` pair means, which is
        the correct SE for paired samples. The estimator stays unbiased (each half is a uniform
        ordering); it is exact for games whose interactions involve at most two players, and
        usually helps when a player's contribution grows or shrinks with its position.
    common_random_numbers
        For a stochastic game, evaluate every coalition of one ordering (and its reverse) with the
        same seed, so the with/without evaluations share their randomness and the noise that
        does not depend on the player cancels in the difference. Without it, every evaluation
        gets its own seed. No effect on a deterministic game.
    batched, stochastic
        Call convention of `value_fn`.
    confidence
        Level of the normal-approximation interval.
    batch_size
        Most coalitions passed to a batched `value_fn` in one call.
    """
    _check_players(num_players)
    if not isinstance(num_permutations, int | np.integer) or num_permutations < 2:
        raise AttributionInputError(
            f"num_permutations must be an int >= 2 (a standard error needs two samples), "
            f"got {num_permutations!r}."
        )
    if antithetic and num_permutations % 2:
        raise AttributionInputError(
            f"antithetic sampling uses orderings in (forward, reverse) pairs, so num_permutations "
            f"must be even (and >= 4 for a standard error); got {num_permutations}."
        )
    if antithetic and num_permutations < 4:
        raise AttributionInputError("antithetic sampling needs num_permutations >= 4 (two pairs).")
    if not 0.0 < confidence < 1.0:
        raise AttributionInputError(f"confidence must be in (0, 1), got {confidence}.")

    n = num_players
    rng = np.random.default_rng(seed)
    num_draws = num_permutations // 2 if antithetic else num_permutations
    drawn = np.argsort(rng.random((num_draws, n)), axis=1)
    if antithetic:
        orderings = np.empty((num_permutations, n), dtype=np.int64)
        orderings[0::2] = drawn
        orderings[1::2] = drawn[:, ::-1]
    else:
        orderings = drawn

    game_seeds: np.ndarray | None = None
    if stochastic:
        if common_random_numbers:
            per_ordering = rng.integers(0, 2**31 - 1, size=num_draws, dtype=np.int64)
            if antithetic:
                per_ordering = np.repeat(per_ordering, 2)
            game_seeds = np.repeat(per_ordering[:, None], n + 1, axis=1)
        else:
            game_seeds = rng.integers(0, 2**31 - 1, size=(num_permutations, n + 1), dtype=np.int64)

    # position[m, p] = where player p stands in ordering m; prefix k holds positions < k.
    position = np.argsort(orderings, axis=1)
    contributions = np.empty((num_permutations, n), dtype=np.float64)
    chain_ends = np.empty((num_permutations, 2), dtype=np.float64)
    orderings_per_chunk = max(1, batch_size // (n + 1))
    for start in range(0, num_permutations, orderings_per_chunk):
        stop = min(start + orderings_per_chunk, num_permutations)
        prefix_sizes = np.arange(n + 1)
        masks = position[start:stop, None, :] < prefix_sizes[None, :, None]  # [m, n + 1, n]
        seeds = None if game_seeds is None else game_seeds[start:stop].reshape(-1)
        chain = evaluate_coalitions(value_fn, masks.reshape(-1, n), seeds, batched, batch_size)
        chain = chain.reshape(stop - start, n + 1)
        steps = np.diff(chain, axis=1)  # steps[m, k] is the contribution of ordering[m, k]
        contributions[start:stop] = np.take_along_axis(steps, position[start:stop], axis=1)
        chain_ends[start:stop] = chain[:, [0, -1]]

    if antithetic:
        samples = 0.5 * (contributions[0::2] + contributions[1::2])
        method = "antithetic-permutation"
    else:
        samples = contributions
        method = "permutation"
    values = samples.mean(axis=0)
    standard_error = samples.std(axis=0, ddof=1) / np.sqrt(len(samples))
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    return ShapleyValues(
        values=values,
        standard_error=standard_error,
        ci_low=values - z * standard_error,
        ci_high=values + z * standard_error,
        confidence=confidence,
        empty_value=float(chain_ends[:, 0].mean()),
        full_value=float(chain_ends[:, 1].mean()),
        num_evaluations=num_permutations * (n + 1),
        num_permutations=num_permutations,
        method=method,
    )


# ---------------------------------------------------------------------------------------------
# Features as players
# ---------------------------------------------------------------------------------------------


class FeatureGame:
    """The game whose players are input features (or groups of them: channels, patches).

    `v(S) = model_fn(x with the features outside S removed)`, where "removed" follows `fill`:

    * `"baseline"`: removed features take the values of `baseline` (a scalar or an array shaped
      like `x`). Cheap, but the filled inputs may be unlike anything the agent saw.
    * `"marginal"`: removed features take their values from each row of `background` (states the
      agent visited) in turn and `v` is the mean over the rows — the interventional expectation
      `E_{x'~background}[f(x_S, x'_{not S})]` ("A Unified Approach to Interpreting Model
      Predictions", Lundberg and Lee 2017, eq. 11 with feature independence). Costs one model call
      per background row; a few dozen rows is usually enough.

    There is deliberately no default fill value: a silent zero is a choice with consequences.

    Parameters
    ----------
    model_fn
        Batched model, `model_fn(inputs [B, *x.shape]) -> [B]` (NumPy or JAX), e.g. the
        log-probability of the chosen action or the value estimate.
    x
        The input being explained, any shape.
    fill
        "baseline" or "marginal".
    baseline
        Fill values for "baseline": a scalar or an array broadcastable to `x.shape`.
    background
        `[K, *x.shape]` visited states for "marginal".
    groups
        Integer array broadcastable to `x.shape` giving each element's player index
        (0..num_players-1, every index used). Default: every element of `x` is a player. For
        an image `[H, W, C]`, `np.arange(C)` makes channels the players and
        `np.arange(H * W).reshape(H, W, 1)` makes pixels the players.

    Calling the game with masks `[n]` returns a float, with masks `[B, n]` an array `[B]`, so it
    works with `batched=True` (recommended) and `batched=False`.
    """

    def __init__(
        self,
        model_fn: Callable[[Any], Any],
        x: Any,
        *,
        fill: Literal["baseline", "marginal"],
        baseline: Any = None,
        background: Any = None,
        groups: Any = None,
    ) -> None:
        self.model_fn = model_fn
        self.x = np.asarray(x)
        self.fill = fill
        if groups is None:
            groups = np.arange(self.x.size).reshape(self.x.shape)
        groups = np.asarray(groups)
        if not np.issubdtype(groups.dtype, np.integer):
            raise AttributionInputError(f"groups must hold integers, got dtype {groups.dtype}.")
        try:
            self.groups = np.broadcast_to(groups, self.x.shape)
        except ValueError:
            raise AttributionInputError(
                f"groups of shape {groups.shape} do not broadcast to the input shape "
                f"{self.x.shape}."
            ) from None
        used = np.unique(self.groups)
        if used[0] != 0 or used[-1] != len(used) - 1:
            raise AttributionInputError(
                "groups must use every player index 0..num_players-1 at least once; got indices "
                f"{used[:10].tolist()}{'...' if len(used) > 10 else ''}."
            )
        self.num_players = len(used)

        if fill == "baseline":
            if baseline is None:
                raise AttributionInputError(
                    "fill='baseline' needs an explicit baseline (a scalar or an array shaped like "
                    "the input), e.g. baseline=0.0 or the mean visited state. Or use "
                    "fill='marginal' with background states."
                )
            try:
                self.fill_values = np.broadcast_to(np.asarray(baseline), self.x.shape)[None]
            except ValueError:
                raise AttributionInputError(
                    f"baseline of shape {np.shape(baseline)} does not broadcast to the input "
                    f"shape {self.x.shape}."
                ) from None
        elif fill == "marginal":
            if background is None:
                raise AttributionInputError(
                    "fill='marginal' needs background states [K, *input_shape] (states the agent "
                    "visited) to average over."
                )
            background = np.asarray(background)
            if background.ndim != self.x.ndim + 1 or background.shape[1:] != self.x.shape:
                raise AttributionInputError(
                    f"background must have shape [K, *{self.x.shape}], got {background.shape}."
                )
            if len(background) == 0:
                raise AttributionInputError("background must hold at least one state.")
            self.fill_values = background
        else:
            raise AttributionInputError(
                f"unknown fill {fill!r}; expected 'baseline' or 'marginal'."
            )

    def compose(self, masks: np.ndarray) -> np.ndarray:
        """Inputs for coalitions `masks: [B, n]` -> `[B, K, *x.shape]` (K = 1 for a baseline)."""
        present = np.asarray(masks, dtype=bool)[:, self.groups]  # [B, *x.shape]
        present = present[:, None]  # [B, 1, *x.shape]
        return np.where(present, self.x[None, None], self.fill_values[None])

    def __call__(self, masks: Any) -> Any:
        masks = np.asarray(masks, dtype=bool)
        single = masks.ndim == 1
        if single:
            masks = masks[None]
        if masks.shape[1] != self.num_players:
            raise AttributionInputError(
                f"masks must have {self.num_players} columns (one per player), got {masks.shape}."
            )
        inputs = self.compose(masks)
        batch, rows = inputs.shape[:2]
        outputs = np.asarray(self.model_fn(inputs.reshape(batch * rows, *self.x.shape)))
        outputs = outputs.astype(np.float64).reshape(batch, rows).mean(axis=1)
        return float(outputs[0]) if single else outputs
