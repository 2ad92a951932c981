"""Random Distribution Distillation: RND whose target output is a sample from a normal distribution.

"Exploration by Random Distribution Distillation", Fang, Yang, Tao, Lyu, Li, Shen, Li 2025
(arXiv 2505.11044).

What was confirmed, and from where: only the paper's abstract (arXiv abstract page and the first
page of its HTML version, arxiv.org/html/2505.11044v1). It states that RDD samples the output of
the target network from a normal distribution, rewards the difference between the prediction
network and the target network, and that the intrinsic reward is bounded by a pseudo-count term
(which decays with visits) plus a discrepancy term (which vanishes as the predictor converges).
The body of the paper (Section 3: the exact target distribution, how its variance is set, and the
reward equation) could not be read here, so the definition below is this module's reading of the
stated mechanism, not the paper's equation:

    target sample   y(s) = f(s) + sigma * eps,   eps ~ N(0, I) drawn afresh every time s is used
    predictor       f_hat trained by regression on y(s) for the visited s
    reward          r(s') = mean_k (f_hat(s') - f(s'))_k^2          (reward_target = "mean")

f is a fixed random network (the target's mean), sigma = `target_std` a fixed scalar. Why this
gives the two stated terms: a predictor that has fitted n noisy samples of y(s) sits near their
average, whose distance to f(s) has expected square sigma^2 / n per feature (n the number of
samples fitted for s; for a predictor trained by stochastic gradient, an effective count), so

    r(s) <= 2 (f_hat(s) - ybar_n(s))^2 + 2 (ybar_n(s) - f(s))^2
          = 2 * discrepancy (fit error, -> 0 as the predictor converges)
          + 2 * pseudo-count term (expectation sigma^2 / n(s), decaying with visits)

`reward_target = "sample"` rewards against a fresh sample instead, (f_hat(s') - y(s'))^2, whose
expectation is the above plus the constant sigma^2: a noisier signal with the same ranking of
states in expectation, offered in case the paper's reward turns out to be that one.

Everything else (running observation normalization initialised from the first rollout, reward 0
until then, MLP networks, Adam, update proportion, non-episodic head with return-std reward
normalization) is RND's, imported from `rnd.py`; see its docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..envs.base import EnvSpec
from ..errors import UserError
from .base import RewardSource, SourceEntry, Transition, register
from .rnd import Distiller, DistillState, RNDParams, check_distiller, flatten_rollout

Array = jax.Array

REWARD_TARGETS = ("mean", "sample")


@dataclass(frozen=True)
class RDDParams(RNDParams):
    """RND's settings (see `RNDParams`) plus the stochastic target.

    target_std:    sigma, the standard deviation of the target distribution around f(s), in the
                   units of the target features (which are of order 1 on normalized inputs).
                   Not confirmed from the paper; 1.0 makes the pseudo-count term comparable in
                   size to an untrained predictor's error
    reward_target: "mean": reward against f(s), the distribution's mean; "sample": against a
                   fresh draw from it (see the module docstring)
    """

    target_std: float = 1.0
    reward_target: str = "mean"


class RDDState(NamedTuple):
    """distill: RND's networks, optimizer and normalizer; key: [2] uint32, the source of the
    target draws made in `reward` (reward_target=sample only; split on every call)."""

    distill: DistillState
    key: Array


def build(params: RDDParams, spec: EnvSpec) -> RewardSource:
    distiller = Distiller(params, spec)

    def init(key: Array, spec: EnvSpec, num_envs: int) -> RDDState:
        k_distill, k_reward = jax.random.split(key)
        return RDDState(distiller.init(k_distill), k_reward)

    def reward(state: RDDState, transition: Transition) -> tuple[Array, RDDState]:
        # next_obs: [N, *obs_shape] -> reward [N]; 0 until the normalizer has statistics.
        predicted, target = distiller.outputs(state.distill, transition.next_obs)
        if params.reward_target == "sample":
            key, k_noise = jax.random.split(state.key)
            target = target + params.target_std * jax.random.normal(k_noise, target.shape)
            state = state._replace(key=key)
        error = jnp.square(predicted - target).mean(-1)
        return jnp.where(distiller.ready(state.distill), error, 0.0), state

    def update(
        state: RDDState, rollout: Transition, key: Array
    ) -> tuple[RDDState, dict[str, Array]]:
        distill, metrics = distiller.train(
            state.distill, flatten_rollout(rollout.next_obs), key, params.target_std
        )
        return state._replace(distill=distill), metrics

    return RewardSource(init, reward, update)


def check(params: RDDParams, spec: EnvSpec) -> None:
    check_distiller(params, spec, "rdd")
    if params.target_std <= 0:
        raise UserError(f"sources.rdd.target_std must be > 0, got {params.target_std}.")
    if params.reward_target not in REWARD_TARGETS:
        raise UserError(
            f"sources.rdd.reward_target must be one of {', '.join(REWARD_TARGETS)}, "
            f"got {params.reward_target!r}."
        )


register(
    SourceEntry(
        name="rdd",
        params_class=RDDParams,
        build=build,
        check=check,
        summary="Random Distribution Distillation: RND with a normally distributed target "
        "(Fang et al. 2025; equation not confirmed, see the module docstring)",
    )
)
