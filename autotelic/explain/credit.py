"""Exact per-reward-source credit: each source's share of the advantage and of the value.

The trainer (`autotelic.ppo`) keeps one value head per reward source: head 0 is the extrinsic
reward, head k > 0 the k-th intrinsic source, each with its own discount `gamma_k`, episodic flag
and coefficient `coef_k`. GAE runs per head on that head's (normalized) reward, and the policy is
trained on the mixture

    A_t = sum_k coef_k * A_{k,t}

("Exploration by Random Network Distillation", Burda et al. 2018, Sec. 2.3; the per-component
form is that of "Value Function Decomposition for Iterative Design of Reinforcement Learning
Agents", MacGlashan et al. 2022, `Q = sum_c Q_c`). The mixture is linear, so the decomposition is
exact, not an approximation: source k's share of the chosen action's advantage is
`coef_k * A_{k,t}` and of the (weighted) value `coef_k * V_k(s_t)`, and the shares add up to the
totals. Because the advantage game `v(S) = sum_{k in S} coef_k A_k` is additive, these shares are
also its Shapley values (each source is a player whose marginal contribution never depends on the
others; "A Value for n-Person Games", Shapley 1953, additivity and the null-player axiom).

What the shares do *not* include: the trainer standardizes the mixed advantage per minibatch
(`(A - mean) / std`) before the clipped surrogate. `normalized_shares` spreads that affine map
over the sources exactly, given the batch it was computed on.

Everything here is NumPy over arrays with a trailing head axis `[..., K]`, except `per_head_gae`,
which calls the trainer's own `autotelic.ppo.gae` (JAX) so evaluation and training compute
advantages the same way. `training_credit` reads the per-head columns of a run's metrics.csv.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NORM_EPS = 1e-8  # the epsilon of `autotelic.ppo.update_norm`: r / sqrt(var + 1e-8)


# ------------------------------------------------------------------------------------ heads


@dataclass(frozen=True)
class HeadSettings:
    """What the trainer does with each value head, head 0 extrinsic.

    names:     [K] "extrinsic", then each source's name
    coefs:     [K] weight of the head's advantage in the policy advantage
    gammas:    [K] the head's discount
    episodic:  [K] returns stop at episode ends (the extrinsic head always is)
    normalize: [K] "none" or "return_std" (the extrinsic head is never normalized)
    """

    names: tuple[str, ...]
    coefs: np.ndarray
    gammas: np.ndarray
    episodic: np.ndarray
    normalize: tuple[str, ...]

    @property
    def num_heads(self) -> int:
        return len(self.names)

    def as_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "coefs": self.coefs.tolist(),
            "gammas": self.gammas.tolist(),
            "episodic": self.episodic.tolist(),
            "normalize": list(self.normalize),
        }


def head_settings(config: Mapping[str, Any]) -> HeadSettings:
    """The heads of a run from its config as plain data (`config.yaml` of a run directory).

    Reads `extrinsic.{coef,gamma}` and `sources.<name>.{coef,gamma,episodic,normalize}` for each
    name in `rewards`. A run directory's config spells every source setting out; a setting that is
    missing (a hand-written config) takes the source's default, which needs the source registry.
    """
    extrinsic = dict(config.get("extrinsic") or {})
    names = ["extrinsic"]
    coefs = [float(extrinsic.get("coef", 1.0))]
    gammas = [float(extrinsic.get("gamma", 0.99))]
    episodic = [True]
    normalize = ["none"]
    sources = dict(config.get("sources") or {})
    for name in config.get("rewards") or []:
        given = dict(sources.get(name) or {})
        wanted = ("coef", "gamma", "episodic", "normalize")
        if not all(key in given for key in wanted):
            from ..rewards.base import resolve_params

            resolved = resolve_params(name, given)
            given = {key: getattr(resolved, key) for key in wanted}
        names.append(str(name))
        coefs.append(float(given["coef"]))
        gammas.append(float(given["gamma"]))
        episodic.append(bool(given["episodic"]))
        normalize.append(str(given["normalize"]))
    return HeadSettings(
        names=tuple(names),
        coefs=np.asarray(coefs, dtype=np.float64),
        gammas=np.asarray(gammas, dtype=np.float64),
        episodic=np.asarray(episodic, dtype=bool),
        normalize=tuple(normalize),
    )


def reward_scales(norm_variances: Sequence[float], heads: HeadSettings) -> np.ndarray:
    """`[K]` divisors that turn raw rewards into the rewards the trainer's GAE reads.

    The extrinsic head is used raw (1). An intrinsic head with `normalize = "return_std"` is
    divided by `sqrt(var + 1e-8)`, `var` the running variance of its discounted return (the
    trainer's `NormState.var`; RND paper, Sec. 2.4); with "none" it is used raw.
    `norm_variances`: [K - 1], one per intrinsic head.
    """
    variances = np.asarray(norm_variances, dtype=np.float64).reshape(-1)
    if len(variances) != heads.num_heads - 1:
        raise ValueError(
            f"need one running variance per intrinsic head ({heads.num_heads - 1}), "
            f"got {len(variances)}."
        )
    scales = np.ones(heads.num_heads, dtype=np.float64)
    for k in range(1, heads.num_heads):
        if heads.normalize[k] == "return_std":
            scales[k] = np.sqrt(variances[k - 1] + NORM_EPS)
    return scales


def per_head_gae(
    rewards: Any,
    values: Any,
    next_values: Any,
    final_values: Any,
    terminated: Any,
    truncated: Any,
    heads: HeadSettings,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """GAE for every head at once, exactly as the trainer computes it (`autotelic.ppo.gae`).

    rewards (as used, i.e. already normalized), values, next_values, final_values: [T, N, K];
    terminated, truncated: [T, N]. Returns (advantages, returns), both [T, N, K] float32 NumPy
    ("High-Dimensional Continuous Control Using Generalized Advantage Estimation", Schulman et al.
    2016, Eq. 16, per head).
    """
    import jax.numpy as jnp

    from ..ppo import gae

    advantages, returns = gae(
        jnp.asarray(rewards, jnp.float32),
        jnp.asarray(values, jnp.float32),
        jnp.asarray(next_values, jnp.float32),
        jnp.asarray(final_values, jnp.float32),
        jnp.asarray(terminated, bool),
        jnp.asarray(truncated, bool),
        jnp.asarray(heads.gammas, jnp.float32),
        jnp.asarray(heads.episodic, bool),
        float(gae_lambda),
    )
    return np.asarray(advantages), np.asarray(returns)


# ------------------------------------------------------------------------------------ shares


def _check_heads(per_head: np.ndarray, coefs: np.ndarray, what: str) -> None:
    if per_head.ndim < 1 or per_head.shape[-1] != coefs.shape[0]:
        raise ValueError(
            f"{what} must end with one entry per head ({coefs.shape[0]}), got shape "
            f"{per_head.shape}."
        )


def shares(per_head: Any, coefs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each head's weighted share and the total: `(coef_k * x_k [..., K], sum_k [...])`.

    In float64. The total is the sum of the returned shares, so they add up to it exactly; it
    equals the trainer's `(x * coefs).sum(-1)` up to the trainer's float32 rounding.
    """
    per_head = np.asarray(per_head, dtype=np.float64)
    coefs = np.asarray(coefs, dtype=np.float64).reshape(-1)
    _check_heads(per_head, coefs, "per-head values")
    weighted = per_head * coefs
    return weighted, weighted.sum(axis=-1)


def normalized_shares(advantage_shares: Any, axis: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The sources' shares of the *standardized* advantage the PPO loss uses.

    The trainer feeds `(A - mean(A)) / (std(A) + 1e-8)` to the clipped surrogate, mean and std
    over a minibatch. Both are linear in the sources up to the common divisor, so
    `(s_k - mean(s_k)) / (std(A) + 1e-8)` (means and std over the same `axis`) are shares that sum
    to the standardized advantage exactly. `advantage_shares`: [..., K]; `axis`: the batch axes
    (default every axis but the head axis). Returns (shares [..., K], standardized total [...]).
    """
    values = np.asarray(advantage_shares, dtype=np.float64)
    if axis is None:
        axis = tuple(range(values.ndim - 1))
    total = values.sum(axis=-1)
    scale = total.std(axis=axis, keepdims=True) + 1e-8
    centred = values - values.mean(axis=axis, keepdims=True)
    normalized = centred / scale[..., None]
    return normalized, normalized.sum(axis=-1)


def dominant(weighted_shares: Any) -> np.ndarray:
    """Index of the head with the largest |share| at each position: [..., K] -> [...] int."""
    return np.argmax(np.abs(np.asarray(weighted_shares)), axis=-1)


def dominance_fractions(dominant_heads: Any, num_heads: int) -> np.ndarray:
    """How often each head dominated: `[K]` fractions summing to 1 (zeros when empty)."""
    counts = np.bincount(np.asarray(dominant_heads).reshape(-1), minlength=num_heads)
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


@dataclass(frozen=True)
class Credit:
    """Per-step credit of every head; leading axes `[...]` as given (e.g. `[T]` or `[T, N]`).

    advantage_shares: [..., K] coef_k * A_k      advantage: [...] their sum (the policy advantage)
    value_shares:     [..., K] coef_k * V_k      value:     [...] their sum
    dominant:         [...] head with the largest |advantage share|
    """

    names: tuple[str, ...]
    advantage_shares: np.ndarray
    advantage: np.ndarray
    value_shares: np.ndarray
    value: np.ndarray
    dominant: np.ndarray

    def dominance(self) -> dict[str, float]:
        """Fraction of steps each head dominated."""
        fractions = dominance_fractions(self.dominant, len(self.names))
        return {name: float(f) for name, f in zip(self.names, fractions, strict=True)}


def credit(advantages: Any, values: Any, heads: HeadSettings) -> Credit:
    """Credit of every head at every step from per-head advantages and values `[..., K]`."""
    advantage_shares, advantage = shares(advantages, heads.coefs)
    value_shares, value = shares(values, heads.coefs)
    return Credit(
        names=heads.names,
        advantage_shares=advantage_shares,
        advantage=advantage,
        value_shares=value_shares,
        value=value,
        dominant=dominant(advantage_shares),
    )


def additive_game(weighted_shares: Any) -> Any:
    """The game `v(S) = sum_{k in S} share_k` over heads, batched for `shapley.exact`.

    `weighted_shares`: [K]. Its exact Shapley values are the shares themselves (additivity); the
    evaluation computes them through `shapley.exact` as a check of both.
    """
    weights = np.asarray(weighted_shares, dtype=np.float64).reshape(-1)

    def value(masks: Any) -> np.ndarray:
        return np.asarray(masks, dtype=np.float64) @ weights

    return value


def discounted_returns(rewards: Any, gammas: Any) -> np.ndarray:
    """Each head's discounted return from the first step, `sum_t gamma_k^t r_{k,t}`:
    rewards [T, K], gammas [K] -> [K]."""
    rewards = np.asarray(rewards, dtype=np.float64)
    gammas = np.asarray(gammas, dtype=np.float64).reshape(-1)
    steps = np.arange(rewards.shape[0], dtype=np.float64)[:, None]
    return (rewards * gammas[None, :] ** steps).sum(axis=0)


# ------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainingCredit:
    """Per-update credit over training, from a run's metrics.csv (one row per update).

    update, env_steps:  [U]
    mean_shares:  [U, K] coef_k * mean_t A_k over the update's batch; sums to `mean_advantage`,
                  the batch mean of the (unstandardized) policy advantage, exactly
    mean_advantage: [U]
    scale:        [U, K] |coef_k| * std_t A_k: how far source k moves the advantage from step to
                  step (the spread of its share)
    scale_shares: [U, K] `scale` divided by its sum over heads: a relative measure (spreads of
                  correlated sources do not add), each row sums to 1
    value_shares: [U, K] coef_k * mean return target of head k (what the value heads learn)
    dominant:     [U] head with the largest `scale` in each update
    """

    names: tuple[str, ...]
    update: np.ndarray
    env_steps: np.ndarray
    mean_shares: np.ndarray
    mean_advantage: np.ndarray
    scale: np.ndarray
    scale_shares: np.ndarray
    value_shares: np.ndarray
    dominant: np.ndarray

    def dominance(self) -> dict[str, float]:
        fractions = dominance_fractions(self.dominant, len(self.names))
        return {name: float(f) for name, f in zip(self.names, fractions, strict=True)}


def training_credit(rows: Iterable[Mapping[str, float]], heads: HeadSettings) -> TrainingCredit:
    """Credit per update from metrics.csv rows (`autotelic.runs.read_metrics`).

    Reads `<head>/advantage_mean`, `<head>/advantage_std` and `<head>/return_mean` for every head
    name. A missing column raises ValueError naming it.
    """
    rows = list(rows)
    names = heads.names

    def column(key: str) -> np.ndarray:
        try:
            return np.asarray([float(row[key]) for row in rows], dtype=np.float64)
        except KeyError:
            raise ValueError(f"metrics have no column {key!r}") from None

    if rows:
        means = np.stack([column(f"{name}/advantage_mean") for name in names], axis=-1)
        stds = np.stack([column(f"{name}/advantage_std") for name in names], axis=-1)
        targets = np.stack([column(f"{name}/return_mean") for name in names], axis=-1)
    else:
        means = stds = targets = np.zeros((0, len(names)))
    mean_shares, mean_advantage = shares(means, heads.coefs)
    scale = np.abs(heads.coefs) * stds
    totals = scale.sum(axis=-1, keepdims=True)
    scale_shares = np.divide(scale, totals, out=np.zeros_like(scale), where=totals > 0)
    value_shares, _ = shares(targets, heads.coefs)
    return TrainingCredit(
        names=names,
        update=column("update") if rows else np.zeros(0),
        env_steps=column("env_steps") if rows else np.zeros(0),
        mean_shares=mean_shares,
        mean_advantage=mean_advantage,
        scale=scale,
        scale_shares=scale_shares,
        value_shares=value_shares,
        dominant=dominant(scale) if rows else np.zeros(0, dtype=np.int64),
    )
