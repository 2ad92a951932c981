"""Random Network Distillation: the error of a trained predictor against a fixed random network.

"Exploration by Random Network Distillation", Burda, Edwards, Storkey, Klimov 2018
(arXiv 1810.12894), Sec. 2.2:

    r_t = ||f_hat(s_{t+1}) - f(s_{t+1})||^2

f is a randomly initialised network that is never trained; f_hat is trained by regression on the
observations the agent meets, so the error is small on familiar observations and large on new ones.
Both read the *next* observation `transition.next_obs`, the real s_{t+1} (never a reset).

Implemented as in the paper (Sec. 2.4) unless said here:

* Observation normalization: each input dimension is whitened with running mean and variance and
  clipped to [-5, 5] before either network sees it. The paper warms these statistics up with a
  random agent before training; here the first rollout plays that part: until statistics exist
  (`count == 0`) the reward is 0, and `update` initialises them from that rollout before the
  predictor's first step. PPO's initial policy is near uniform, so the first rollout is close to
  the paper's random-agent warm-up. Every later rollout updates the statistics before the predictor
  trains on it (as the reference code does). `obs_norm=false` turns this off (see `RNDParams`).
* Reduction: the mean of the squared error over features (the reference code's `reduce_mean`);
  the constant factor 1/features disappears under the return-std reward normalization.
* Networks: MLPs on the flattened observation (the paper's are convolutional, for 84x84 Atari
  frames; autotelic's grids are at most a few hundred numbers). The predictor is one hidden layer
  deeper than the target, as in the paper, so it can fit the target.
* Grid observations enter as their integer codes cast to float (`encoding=raw`) or one-hot.

The pieces (`Distiller`, `ObsStats`, `DistillState`) are shared with the sources built on RND
(NovelD, RDD), which import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..envs.base import EnvSpec
from ..errors import UserError
from ..networks import grid_one_hot
from .base import (
    HeadConfig,
    RewardSource,
    SourceEntry,
    Transition,
    merge_moments,
    register,
    stateless_rollout_reward,
)

Array = jax.Array

ENCODINGS = ("raw", "one_hot")


@dataclass(frozen=True)
class RNDParams(HeadConfig):
    """RND's settings; the head defaults (gamma 0.99, non-episodic, return-std normalization) are
    the paper's (Sec. 2.3-2.4). The paper weights advantages 2 A_E + 1 A_I; here the extrinsic
    coefficient is `extrinsic.coef`, so the same ratio is `coef=0.5` with the default extrinsic 1.

    learning_rate:     predictor Adam step size; 1e-4 is the paper's learning rate. Kept after
                       checking it on navix Empty-5x5 (tests/test_rewards_count_rnd.py): with
                       256 observations per update, states trained on pay 0.2x what unseen
                       states pay after 2 updates and 0.055x after 10. 1e-3 fades the bonus of
                       seen states about ten times faster (0.004x after 5 updates of 1,024)
    update_proportion: the fraction of the rollout the predictor trains on in each pass: a
                       fresh random subset of round(p * batch) samples per pass (the reference
                       code draws a Bernoulli(p) mask instead; the expected count is the same,
                       and a subset saves the compute the masked samples would cost). 1.0 is
                       the paper's value and the best setting on DoorKey in the RLeXplore study
                       (its Table 5); values below 1 keep the predictor's effective batch fixed
                       when the number of envs grows
    update_epochs:     passes over the rollout per update (the paper's 4)
    num_minibatches:   minibatches per pass (the paper's 4); the remainder of the samples that
                       does not divide evenly is left out of that pass (a different one each pass)
    hidden:            width of the hidden layers of both networks
    features:          output width of both networks (the paper's 512)
    obs_norm:          whiten and clip observations with running statistics (paper: yes). Off,
                       raw grid codes reach the networks; see the tests for what that does
    obs_clip:          clip of the whitened observation (the paper's 5)
    encoding:          grid observations as float codes ("raw") or one-hot ("one_hot")
    """

    learning_rate: float = 1e-4
    update_proportion: float = 1.0
    update_epochs: int = 4
    num_minibatches: int = 4
    hidden: int = 256
    features: int = 512
    obs_norm: bool = True
    obs_clip: float = 5.0
    encoding: str = "raw"


class ObsStats(NamedTuple):
    """Running moments of the (encoded, flattened) observations.

    mean, var: [D] f32; count: [] f32 number of observations folded in (0: none yet)
    """

    mean: Array
    var: Array
    count: Array


class DistillState(NamedTuple):
    """target: fixed random network params; predictor: trained params; opt_state: the predictor's
    Adam state; obs_stats: observation normalizer."""

    target: Any
    predictor: Any
    opt_state: Any
    obs_stats: ObsStats


def update_moments(stats: ObsStats, x: Array) -> ObsStats:
    """Fold a batch `x: [B, D]` into running moments (the parallel-variance combination of
    Chan, Golub, LeVeque 1979). With `count == 0` the result is exactly the batch's moments."""
    batch_count = jnp.asarray(x.shape[0], jnp.float32)
    return ObsStats(*merge_moments(*stats, x.mean(0), x.var(0), batch_count))


class FeatureMLP(nn.Module):
    """`[B, D] -> [B, features]`: `depth` leaky-ReLU layers of width `hidden`, then a linear map.
    Orthogonal initialisation, as the reference code's networks."""

    hidden: int
    depth: int
    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for _ in range(self.depth):
            dense = nn.Dense(self.hidden, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))
            x = nn.leaky_relu(dense(x))
        return nn.Dense(self.features, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x)


def check_distiller(params: RNDParams, spec: EnvSpec, name: str) -> None:
    """UserErrors for settings no distiller can run with (shared by RND, NovelD, RDD)."""
    if params.encoding not in ENCODINGS:
        raise UserError(
            f"sources.{name}.encoding must be one of {', '.join(ENCODINGS)}, "
            f"got {params.encoding!r}."
        )
    if params.encoding == "one_hot" and spec.obs_kind != "grid":
        raise UserError(
            f"sources.{name}.encoding=one_hot needs grid observations; {spec.env_id} has "
            f"{spec.obs_kind} observations. Use sources.{name}.encoding=raw."
        )
    if not 0.0 < params.update_proportion <= 1.0:
        raise UserError(
            f"sources.{name}.update_proportion must be in (0, 1], got {params.update_proportion}."
        )
    if params.learning_rate <= 0:
        raise UserError(f"sources.{name}.learning_rate must be > 0, got {params.learning_rate}.")
    for field in ("update_epochs", "num_minibatches", "hidden", "features"):
        if getattr(params, field) < 1:
            raise UserError(f"sources.{name}.{field} must be >= 1, got {getattr(params, field)}.")
    if params.obs_clip <= 0:
        raise UserError(f"sources.{name}.obs_clip must be > 0, got {params.obs_clip}.")


@dataclass(frozen=True)
class Distiller:
    """A fixed random target, a trained predictor and the observation normalizer, as pure
    functions of a `DistillState`. `params` is an `RNDParams` (or a subclass of it)."""

    params: RNDParams
    spec: EnvSpec

    @property
    def input_size(self) -> int:
        spec = self.spec
        if spec.obs_kind == "grid" and self.params.encoding == "one_hot":
            return int(np.prod(spec.obs_shape[:-1])) * sum(spec.obs_categories)
        return int(np.prod(spec.obs_shape))

    @property
    def target_net(self) -> FeatureMLP:
        return FeatureMLP(self.params.hidden, 2, self.params.features)

    @property
    def predictor_net(self) -> FeatureMLP:
        return FeatureMLP(self.params.hidden, 3, self.params.features)

    @property
    def optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.params.learning_rate)

    def init(self, key: Array) -> DistillState:
        k_target, k_predictor = jax.random.split(key)
        dummy = jnp.zeros((1, self.input_size), jnp.float32)
        target = self.target_net.init(k_target, dummy)
        predictor = self.predictor_net.init(k_predictor, dummy)
        size = self.input_size
        stats = ObsStats(
            jnp.zeros((size,), jnp.float32), jnp.ones((size,), jnp.float32), jnp.zeros(())
        )
        return DistillState(target, predictor, self.optimizer.init(predictor), stats)

    def encode(self, obs: Array) -> Array:
        """`obs: [B, *obs_shape]` -> `[B, D]` f32, before normalization."""
        if self.spec.obs_kind == "grid" and self.params.encoding == "one_hot":
            x = grid_one_hot(obs, self.spec.obs_categories)
        else:
            x = obs.astype(jnp.float32)
        return x.reshape(x.shape[0], -1)

    def normalize(self, stats: ObsStats, x: Array) -> Array:
        """Whiten and clip `x: [B, D]`. A dimension constant so far (var 0) maps any new value
        to the clip, which is what makes a never-seen grid cell code stand out."""
        if not self.params.obs_norm:
            return x
        clip = self.params.obs_clip
        return jnp.clip((x - stats.mean) / jnp.sqrt(stats.var + 1e-8), -clip, clip)

    def ready(self, state: DistillState) -> Array:
        """bool[]: the normalizer has statistics (always true with `obs_norm` off)."""
        if not self.params.obs_norm:
            return jnp.ones((), bool)
        return state.obs_stats.count > 0

    def outputs(self, state: DistillState, obs: Array) -> tuple[Array, Array]:
        """Predictor and target features of `obs: [B, *obs_shape]`, both `[B, features]`."""
        x = self.normalize(state.obs_stats, self.encode(obs))
        predicted = self.predictor_net.apply(state.predictor, x)
        target = self.target_net.apply(state.target, x)
        return predicted, target

    def squared_error(self, state: DistillState, obs: Array) -> Array:
        """`[B]` mean over features of (f_hat - f)^2 (RND paper, Sec. 2.2)."""
        predicted, target = self.outputs(state, obs)
        return jnp.square(predicted - target).mean(-1)

    def train(
        self, state: DistillState, obs: Array, key: Array, target_noise_std: float = 0.0
    ) -> tuple[DistillState, dict[str, Array]]:
        """Update the normalizer with `obs: [B, *obs_shape]`, then regress the predictor on the
        target for `update_epochs` passes of `num_minibatches` shuffled minibatches.

        `target_noise_std > 0` regresses on `f(s) + target_noise_std * eps`, eps ~ N(0, I) drawn
        afresh for every sample and pass (the stochastic target of RDD); 0 is plain RND.
        """
        p = self.params
        x = self.encode(obs)
        stats = update_moments(state.obs_stats, x) if p.obs_norm else state.obs_stats
        batch = x.shape[0]
        used = max(1, round(p.update_proportion * batch))
        minibatches = min(p.num_minibatches, used)
        size = used // minibatches
        optimizer = self.optimizer
        # Normalized inputs and target features, for the whole rollout at once when the passes
        # visit at least as many samples as it holds; otherwise (e.g. one pass over a quarter)
        # only for each minibatch's samples, so the unused ones cost nothing.
        whole = p.update_epochs * minibatches * size >= batch
        if whole:
            x = self.normalize(stats, x)
            target = self.target_net.apply(state.target, x)

        def inputs(idx: Array) -> tuple[Array, Array]:
            if whole:
                return x[idx], target[idx]
            xi = self.normalize(stats, x[idx])
            return xi, self.target_net.apply(state.target, xi)

        def loss_fn(predictor: Any, idx: Array, noise: Array) -> Array:
            xi, ti = inputs(idx)
            predicted = self.predictor_net.apply(predictor, xi)
            return jnp.square(predicted - (ti + noise)).mean(-1).mean()

        def step(carry: tuple[Any, Any], mb: tuple[Array, Array]) -> tuple[Any, Array]:
            predictor, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(predictor, *mb)
            updates, opt_state = optimizer.update(grads, opt_state, predictor)
            return (optax.apply_updates(predictor, updates), opt_state), loss

        def epoch(carry: tuple[Any, Any], epoch_key: Array) -> tuple[Any, Array]:
            k_order, k_noise = jax.random.split(epoch_key)
            order = jax.random.permutation(k_order, batch)[: minibatches * size]
            order = order.reshape(minibatches, size)
            noise_shape = (minibatches, size, p.features)
            if target_noise_std > 0:
                noise = target_noise_std * jax.random.normal(k_noise, noise_shape)
            else:
                noise = jnp.zeros(noise_shape)
            carry, losses = jax.lax.scan(step, carry, (order, noise))
            return carry, losses.mean()

        (predictor, opt_state), losses = jax.lax.scan(
            epoch,
            (state.predictor, state.opt_state),
            jax.random.split(key, p.update_epochs),
        )
        new_state = DistillState(state.target, predictor, opt_state, stats)
        return new_state, {"predictor_loss": losses[-1]}


def flatten_rollout(tree: Array) -> Array:
    """`[T, N, ...] -> [T * N, ...]`."""
    return tree.reshape(-1, *tree.shape[2:])


# ------------------------------------------------------------------------------------ source


def build(params: RNDParams, spec: EnvSpec) -> RewardSource:
    distiller = Distiller(params, spec)

    def init(key: Array, spec: EnvSpec, num_envs: int) -> DistillState:
        return distiller.init(key)

    def reward(state: DistillState, transition: Transition) -> tuple[Array, DistillState]:
        # next_obs: [N, *obs_shape] -> reward [N]; 0 until the normalizer has statistics.
        error = distiller.squared_error(state, transition.next_obs)
        return jnp.where(distiller.ready(state), error, 0.0), state

    def update(
        state: DistillState, rollout: Transition, key: Array
    ) -> tuple[DistillState, dict[str, Array]]:
        return distiller.train(state, flatten_rollout(rollout.next_obs), key)

    return RewardSource(init, reward, update, stateless_rollout_reward(reward))


def check(params: RNDParams, spec: EnvSpec) -> None:
    check_distiller(params, spec, "rnd")


register(
    SourceEntry(
        name="rnd",
        params_class=RNDParams,
        build=build,
        check=check,
        summary="Random Network Distillation: predictor error against a fixed random network "
        "(Burda et al. 2018)",
    )
)
