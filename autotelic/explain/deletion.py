"""Deletion and insertion curves for any attribution, always against random orders.

Players (features, pixels, channels, reward sources, agents) are removed from the full input in
order of decreasing attribution while the model score is recorded (deletion), or added to the
fully removed input in the same order (insertion) ("RISE: Randomized Input Sampling for
Explanation of Black-box Models", Petsiuk, Das, Saenko 2018, the deletion and insertion
metrics). A good attribution makes the score fall fast when deleting (low area under
the curve) and rise fast when inserting (high area).

These metrics depend only on the ranking, and the partially removed inputs are off the data
distribution, so an area means little on its own: every result here comes with the areas of
`num_random_orders` random orders, their mean, standard deviation and standard error.

The score is a game `v(mask) -> float` over `n` players, exactly as in
`autotelic.explain.shapley`; how a removed player is filled (a baseline value or background
states the agent visited) is the game's business. For input features build it with
`shapley.FeatureGame`, which offers both fills.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .shapley import AttributionInputError, ValueFunction, evaluate_coalitions


@dataclass(frozen=True)
class CurveComparison:
    """One curve (deletion or insertion) for an attribution, next to random orders.

    Attributes
    ----------
    kind : "deletion" or "insertion"
    fractions : [S + 1] float64
        Fraction of players removed (deletion) or inserted (insertion) at each point, 0 to 1.
    curve : [S + 1] float64
        Model score at each point, players taken in attribution order.
    auc : float
        Area under `curve` over `fractions` (trapezoid rule), in the units of the score.
    random_curves : [R, S + 1] float64
        The same curve for R uniformly random orders.
    random_aucs : [R] float64
    """

    kind: str
    fractions: np.ndarray
    curve: np.ndarray
    auc: float
    random_curves: np.ndarray
    random_aucs: np.ndarray

    @property
    def random_mean(self) -> float:
        return float(self.random_aucs.mean())

    @property
    def random_std(self) -> float:
        """Spread of a single random order's area (ddof = 1)."""
        return float(self.random_aucs.std(ddof=1))

    @property
    def random_se(self) -> float:
        """Standard error of `random_mean`: `random_std / sqrt(R)`."""
        return self.random_std / float(np.sqrt(len(self.random_aucs)))

    def _advantage(self) -> float:
        """How much better than the random mean the attribution's area is (positive = better)."""
        gap = self.random_mean - self.auc
        return gap if self.kind == "deletion" else -gap

    def standard_errors_better_than_random(self) -> float:
        """`(random mean - auc) / SE` for deletion (sign flipped for insertion).

        This treats the attribution's area as fixed and asks whether it differs from the *mean*
        random area; it grows with the number of random orders. To ask whether the attribution
        beats a *typical single* random order, use `standard_deviations_better_than_random` or
        `empirical_p_value` (a random attribution scores about 0 there).
        """
        return _ratio(self._advantage(), self.random_se)

    def standard_deviations_better_than_random(self) -> float:
        """`(random mean - auc) / SD` for deletion (sign flipped for insertion)."""
        return _ratio(self._advantage(), self.random_std)

    def empirical_p_value(self) -> float:
        """`(1 + #random orders at least as good) / (1 + R)`: small when the attribution wins."""
        if self.kind == "deletion":
            as_good = np.sum(self.random_aucs <= self.auc)
        else:
            as_good = np.sum(self.random_aucs >= self.auc)
        return float((1 + as_good) / (1 + len(self.random_aucs)))

    def as_dict(self) -> dict[str, Any]:
        """Plain Python types, ready for `json.dump`."""
        return {
            "kind": self.kind,
            "fractions": self.fractions.tolist(),
            "curve": self.curve.tolist(),
            "auc": self.auc,
            "random_curves": self.random_curves.tolist(),
            "random_aucs": self.random_aucs.tolist(),
            "random_mean": self.random_mean,
            "random_std": self.random_std,
            "random_se": self.random_se,
            "standard_errors_better_than_random": self.standard_errors_better_than_random(),
            "empirical_p_value": self.empirical_p_value(),
        }


@dataclass(frozen=True)
class DeletionInsertion:
    """Both curves of one attribution."""

    deletion: CurveComparison
    insertion: CurveComparison

    def as_dict(self) -> dict[str, Any]:
        return {"deletion": self.deletion.as_dict(), "insertion": self.insertion.as_dict()}


def _ratio(numerator: float, denominator: float) -> float:
    if denominator > 0:
        return numerator / denominator
    if numerator == 0:
        return 0.0
    return float(np.copysign(np.inf, numerator))


def attribution_order(attribution: Any, seed: int = 0) -> np.ndarray:
    """Player indices by decreasing attribution, ties broken at random: [n] int64.

    `attribution` of any shape is flattened (row-major), so an `[H, W]` map orders pixels in the
    same numbering as `np.arange(H * W).reshape(H, W)`.
    """
    scores = np.asarray(attribution, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(scores)):
        raise AttributionInputError("the attribution contains NaN or infinite values.")
    tie_breaker = np.random.default_rng(seed).random(scores.shape)
    # lexsort sorts by the last key first: decreasing attribution, then the random tie-breaker.
    return np.lexsort((tie_breaker, -scores))


def _counts(num_players: int, num_steps: int | None) -> np.ndarray:
    if num_steps is None or num_steps >= num_players:
        return np.arange(num_players + 1)
    if num_steps < 1:
        raise AttributionInputError(f"num_steps must be >= 1, got {num_steps}.")
    return np.unique(np.round(np.linspace(0, num_players, num_steps + 1)).astype(np.int64))


def _curve_masks(orders: np.ndarray, counts: np.ndarray, kind: str) -> np.ndarray:
    """Coalitions along the curves: orders [R, n], counts [S+1] -> masks [R, S+1, n] bool."""
    rank = np.argsort(orders, axis=1)  # rank[r, p] = when player p is taken in order r
    taken = rank[:, None, :] < counts[None, :, None]
    return ~taken if kind == "deletion" else taken


def curves(
    value_fn: ValueFunction,
    orders: Any,
    *,
    kind: Literal["deletion", "insertion"] = "deletion",
    num_steps: int | None = None,
    batched: bool = False,
    batch_size: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Score curves for given player orders.

    Parameters
    ----------
    value_fn
        The game `v(mask [n]) -> float` (or batched `v(masks [B, n]) -> [B]` with `batched`).
    orders
        `[R, n]` or `[n]` permutations of the players, first to be taken first.
    kind
        "deletion" starts from all players present and removes them; "insertion" starts from
        none and adds them.
    num_steps
        Points on the curve besides the start; default one per player. Fewer steps take players
        in near-equal chunks (useful for images).

    Returns
    -------
    fractions : [S + 1] float64, and curves : [R, S + 1] float64 (or [S + 1] for one order).
    """
    if kind not in ("deletion", "insertion"):
        raise AttributionInputError(f"kind must be 'deletion' or 'insertion', got {kind!r}.")
    orders = np.asarray(orders, dtype=np.int64)
    single = orders.ndim == 1
    orders = np.atleast_2d(orders)
    num_players = orders.shape[1]
    if not np.all(np.sort(orders, axis=1) == np.arange(num_players)):
        raise AttributionInputError("every order must be a permutation of 0..n-1.")
    counts = _counts(num_players, num_steps)
    masks = _curve_masks(orders, counts, kind)
    scores = evaluate_coalitions(
        value_fn, masks.reshape(-1, num_players), None, batched, batch_size
    )
    scores = scores.reshape(len(orders), len(counts))
    fractions = counts / num_players
    return fractions, (scores[0] if single else scores)


def area_under_curve(fractions: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Trapezoid-rule area under `scores [..., S + 1]` over `fractions [S + 1]`."""
    scores = np.asarray(scores, dtype=np.float64)
    widths = np.diff(fractions)
    return np.sum(widths * 0.5 * (scores[..., 1:] + scores[..., :-1]), axis=-1)


def evaluate(
    value_fn: ValueFunction,
    attribution: Any,
    *,
    num_random_orders: int = 20,
    seed: int = 0,
    num_steps: int | None = None,
    batched: bool = False,
    batch_size: int = 4096,
) -> DeletionInsertion:
    """Deletion and insertion curves of `attribution`, each against random orders.

    Parameters
    ----------
    value_fn
        The score as a game over the players (see `curves`).
    attribution
        One number per player, any shape (flattened row-major). Higher = more important for the
        score; players are deleted / inserted in decreasing order.
    num_random_orders
        R >= 2 uniformly random orders for the baseline (at least 20 recommended).
    seed
        Seeds the random orders and the tie-breaking of equal attributions.
    num_steps, batched, batch_size
        As in `curves`.
    """
    scores = np.asarray(attribution, dtype=np.float64).reshape(-1)
    num_players = len(scores)
    if num_players < 1:
        raise AttributionInputError("the attribution is empty.")
    if num_random_orders < 2:
        raise AttributionInputError(
            f"num_random_orders must be >= 2 to estimate a spread, got {num_random_orders}."
        )
    rng = np.random.default_rng(seed)
    order = attribution_order(scores, seed=int(rng.integers(2**31 - 1)))
    random_orders = np.argsort(rng.random((num_random_orders, num_players)), axis=1)
    all_orders = np.concatenate([order[None], random_orders])
    results = {}
    for kind in ("deletion", "insertion"):
        fractions, scores_by_order = curves(
            value_fn,
            all_orders,
            kind=kind,
            num_steps=num_steps,
            batched=batched,
            batch_size=batch_size,
        )
        areas = area_under_curve(fractions, scores_by_order)
        results[kind] = CurveComparison(
            kind=kind,
            fractions=fractions,
            curve=scores_by_order[0],
            auc=float(areas[0]),
            random_curves=scores_by_order[1:],
            random_aucs=areas[1:],
        )
    return DeletionInsertion(deletion=results["deletion"], insertion=results["insertion"])


def deletion_standard_errors_below_random(
    value_fn: ValueFunction,
    attribution: Any,
    *,
    num_random_orders: int = 20,
    seed: int = 0,
    num_steps: int | None = None,
    batched: bool = False,
    batch_size: int = 4096,
) -> float:
    """How many standard errors the attribution's deletion area lies below the random mean.

    `(mean_r AUC_r - AUC) / (sd_r AUC_r / sqrt(R))` over R random orders; positive and large
    means the attribution finds the features the score depends on. See
    `CurveComparison.standard_errors_better_than_random` for what this does and does not say.
    """
    result = evaluate(
        value_fn,
        attribution,
        num_random_orders=num_random_orders,
        seed=seed,
        num_steps=num_steps,
        batched=batched,
        batch_size=batch_size,
    )
    return result.deletion.standard_errors_better_than_random()
