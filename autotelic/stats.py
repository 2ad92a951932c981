"""Aggregate statistics over seeds: interquartile mean and bootstrap confidence intervals.

IQM and stratified-bootstrap percentile intervals follow "Deep Reinforcement Learning at the
Edge of the Statistical Precipice" (Agarwal et al. 2021): the IQM is the mean of the middle 50%
of runs; the interval resamples runs with replacement within each task (stratum).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iqm(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the middle 50% of `values` (fractional weights at the quartile boundaries, so
    every sample size gives exactly half the mass)."""
    x = np.sort(np.asarray(values, dtype=float).ravel())
    n = len(x)
    if n == 0:
        return float("nan")
    lo, hi = 0.25 * n, 0.75 * n
    weights = np.clip(np.minimum(np.arange(1, n + 1), hi) - np.maximum(np.arange(n), lo), 0, 1)
    return float((weights * x).sum() / weights.sum())


def bootstrap_ci(
    strata: Sequence[Sequence[float]],
    statistic=iqm,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high): `statistic` of all runs pooled, with a percentile interval from
    resampling runs with replacement inside each stratum (task)."""
    rng = np.random.default_rng(seed)
    groups = [np.asarray(g, dtype=float) for g in strata if len(g)]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    point = statistic(np.concatenate(groups))
    draws = np.empty(resamples)
    for i in range(resamples):
        draws[i] = statistic(np.concatenate([rng.choice(g, size=len(g)) for g in groups]))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(point), float(low), float(high)
