"""ICM: curiosity as the error of a forward model in a learned feature space.

"Curiosity-driven Exploration by Self-supervised Prediction", Pathak, Agrawal, Efros, Darrell,
ICML 2017 (arXiv 1705.05363):

* phi(s) is trained by an inverse model, `a_hat_t = g(phi(s_t), phi(s_{t+1}))`, with the
  cross-entropy L_I (Eq. 2-3);
* a forward model predicts the next features, `phi_hat(s_{t+1}) = f(phi(s_t), a_t)`, with
  `L_F = 1/2 ||phi_hat(s_{t+1}) - phi(s_{t+1})||^2` (Eq. 4-5);
* the curiosity reward is `r^i_t = (eta / 2) ||phi_hat(s_{t+1}) - phi(s_{t+1})||^2` (Eq. 6);
* the modules minimise `(1 - beta) L_I + beta L_F` (Eq. 7), beta = 0.2.

The paper trains policy and ICM jointly, `-lambda E[sum r] + (1-beta) L_I + beta L_F`; here the
ICM has its own optimizer and is trained once per PPO update on the rollout, so lambda (which
only weighs the two losses of disjoint parameters) has no counterpart.

Deviations, each a named option:
* `reward_clip`: the reference code clips the *total* reward r^e + r^i to [-1, 1]; with one value
  head per source the intrinsic reward is clipped alone (0 disables).
* `embedding_dim` / `hidden`: the paper's phi is the 288-d output of four ELU convs on 42x42
  frames; here phi is the shared encoder plus a linear layer to `embedding_dim` (default 288).
* `learning_rate` 1e-3: the reference code (noreward-rl) uses Adam at 1e-4 for everything and
  scales the ICM loss by 10 ("predictor lr 10x the policy's" in the project references). Under
  Adam a loss scale barely changes the step, so this default reads the intent as a 10x rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..envs.base import EnvSpec
from ..errors import UserError
from .base import HeadConfig, RewardSource, SourceEntry, Transition, register
from .inverse_dynamics import (
    Embedding,
    EmbeddingState,
    InverseHead,
    check_embedding_params,
    dense,
    embed_rollout,
    fit,
    flatten,
    inverse_loss,
    make_optimizer,
)

Array = jax.Array


@dataclass(frozen=True)
class ICMParams(HeadConfig):
    """ICM settings; defaults from the paper and its reference code (noreward-rl).

    eta:           reward scale, r = (eta/2) ||phi_hat - phi||^2 (code: PREDICTION_BETA 0.01)
    beta:          forward-loss weight in (1 - beta) L_I + beta L_F (paper: 0.2)
    reward_clip:   clip r^i to [-reward_clip, reward_clip]; 0 disables (code clips rewards to 1)
    normalize:     "none": the reference code does not normalize the curiosity reward
    episodic:      true: A3C's returns stop at episode ends
    learning_rate: Adam step of phi, inverse and forward models (see the module docstring)
    embedding_dim: size of phi (paper: 288)
    hidden:        width of the encoder's last layer and of the inverse/forward hidden layer
                   (paper: 256)
    encoding:      grid codes as numbers ("raw") or one-hot ("one_hot")
    trunk:         encoder before the embedding layer: "cnn" (the paper's conv stack) or
                   "mlp" (two tanh layers, about 3x cheaper on a CPU)
    update_epochs, num_minibatches: passes over the rollout and minibatches per pass
    """

    coef: float = 1.0
    gamma: float = 0.99
    episodic: bool = True
    normalize: str = "none"
    eta: float = 0.01
    beta: float = 0.2
    reward_clip: float = 1.0
    learning_rate: float = 1e-3
    embedding_dim: int = 288
    hidden: int = 256
    encoding: str = "raw"
    trunk: str = "cnn"
    update_epochs: int = 1
    num_minibatches: int = 4


class ForwardHead(nn.Module):
    """Forward model: `phi: [B, d], action: [B] int32 -> phi_hat(s_{t+1}): [B, d]` (ICM Sec. 2.2:
    phi(s_t) concatenated with a one-hot a_t, a 256-unit hidden layer, then d outputs)."""

    num_actions: int
    hidden: int

    @nn.compact
    def __call__(self, phi: Array, action: Array) -> Array:
        x = jnp.concatenate([phi, jax.nn.one_hot(action, self.num_actions)], axis=-1)
        x = nn.relu(dense(self.hidden)(x))
        return dense(phi.shape[-1], 1.0)(x)


class ICMState(NamedTuple):
    model: EmbeddingState  # params {"embedding", "inverse", "forward"} and their Adam state


def forward_error(
    params: Any, nets: tuple[Embedding, InverseHead, ForwardHead], batch: Transition
) -> tuple[Array, Array]:
    """Per-sample squared error ||phi_hat(s_{t+1}) - phi(s_{t+1})||^2 `[B]`, the inverse logits
    `[B, A]`, for `batch` with `obs, action, next_obs` leaves `[B, ...]`."""
    embedding, inverse, _ = nets
    phis = embedding.apply(params["embedding"], jnp.concatenate([batch.obs, batch.next_obs]))
    phi, phi_next = jnp.split(phis, 2, axis=0)
    logits = inverse.apply(params["inverse"], phi, phi_next)
    return prediction_error(params, nets, phi, batch.action, phi_next), logits


def prediction_error(
    params: Any,
    nets: tuple[Embedding, InverseHead, ForwardHead],
    phi: Array,
    action: Array,
    phi_next: Array,
) -> Array:
    """||f(phi(s_t), a_t) - phi(s_{t+1})||^2 per sample: `phi, phi_next: [B, d]`, `action: [B]`."""
    predicted = nets[2].apply(params["forward"], phi, action)
    return jnp.sum(jnp.square(predicted - phi_next), axis=-1)


def make_icm(params: ICMParams, spec: EnvSpec) -> RewardSource:
    embedding = Embedding(spec, params.hidden, params.embedding_dim, params.encoding, params.trunk)
    inverse = InverseHead(spec.num_actions, params.hidden)
    forward = ForwardHead(spec.num_actions, params.hidden)
    nets = (embedding, inverse, forward)
    optimizer = make_optimizer(params.learning_rate)

    def init(key: Array, spec: EnvSpec, num_envs: int) -> ICMState:
        k_embed, k_inverse, k_forward = jax.random.split(key, 3)
        obs = jnp.zeros((1, *spec.obs_shape), spec.obs_dtype)
        phi = jnp.zeros((1, params.embedding_dim), jnp.float32)
        net_params = {
            "embedding": embedding.init(k_embed, obs),
            "inverse": inverse.init(k_inverse, phi, phi),
            "forward": forward.init(k_forward, phi, jnp.zeros((1,), jnp.int32)),
        }
        return ICMState(EmbeddingState(net_params, optimizer.init(net_params)))

    def curiosity(error: Array) -> Array:
        scaled = 0.5 * params.eta * error  # ICM Eq. 6
        if params.reward_clip > 0:
            scaled = jnp.clip(scaled, -params.reward_clip, params.reward_clip)
        return scaled

    def reward(state: ICMState, transition: Transition) -> tuple[Array, ICMState]:
        return curiosity(forward_error(state.model.params, nets, transition)[0]), state

    def rollout_reward(state: ICMState, rollout: Transition) -> tuple[Array, ICMState]:
        """`reward` over a rollout (`[T, N, ...]` leaves) at once, each observation embedded
        once (`embed_rollout`) and the forward model applied to all T * N transitions together."""
        net_params = state.model.params
        done = rollout.terminated | rollout.truncated
        phi, phi_next = embed_rollout(
            lambda obs: embedding.apply(net_params["embedding"], obs),
            rollout.obs,
            rollout.next_obs,
            done,
        )
        size = done.size
        error = prediction_error(
            net_params,
            nets,
            phi.reshape(size, -1),
            rollout.action.reshape(size),
            phi_next.reshape(size, -1),
        )
        return curiosity(error).reshape(done.shape), state

    def loss(net_params: Any, batch: Transition) -> tuple[Array, dict[str, Array]]:
        error, logits = forward_error(net_params, nets, batch)
        forward_loss = 0.5 * error.mean()  # ICM Eq. 5
        inv_loss, accuracy = inverse_loss(logits, batch.action)  # ICM Eq. 3
        total = (1.0 - params.beta) * inv_loss + params.beta * forward_loss  # ICM Eq. 7
        return total, {
            "loss": total,
            "forward_loss": forward_loss,
            "inverse_loss": inv_loss,
            "inverse_accuracy": accuracy,
        }

    def update(
        state: ICMState, rollout: Transition, key: Array
    ) -> tuple[ICMState, dict[str, Array]]:
        model, metrics = fit(
            loss,
            optimizer,
            state.model,
            flatten(rollout),
            key,
            params.update_epochs,
            params.num_minibatches,
        )
        return ICMState(model), metrics

    return RewardSource(init, reward, update, rollout_reward)


def check_icm(params: ICMParams, spec: EnvSpec) -> None:
    check_embedding_params("icm", params, spec)
    if not 0.0 <= params.beta <= 1.0:
        raise UserError(f"sources.icm.beta must be in [0, 1], got {params.beta}.")
    if not params.eta > 0:
        raise UserError(f"sources.icm.eta must be > 0, got {params.eta}.")
    if params.reward_clip < 0:
        raise UserError(
            f"sources.icm.reward_clip must be >= 0 (0 disables clipping), got {params.reward_clip}."
        )


register(
    SourceEntry(
        name="icm",
        params_class=ICMParams,
        build=make_icm,
        check=check_icm,
        summary="ICM curiosity: forward-model error in an inverse-dynamics feature space",
    )
)
