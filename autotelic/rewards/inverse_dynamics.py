"""Controllable-state embeddings learned by inverse dynamics; shared by ICM, E3B and episodic kNN.

This module registers no reward source (it is imported like every module of the package, which
is harmless). It provides:

* `Embedding`: phi(s), the observation encoder of `autotelic.networks` followed by a linear map to
  `embedding_dim` features.
* `InverseHead`: logits of p(a_t | phi(s_t), phi(s_{t+1})). Training phi through this model keeps
  the features of the environment the agent can control and drops the rest ("Curiosity-driven
  Exploration by Self-supervised Prediction", Pathak et al. 2017, Sec. 2.2, Eq. 3; the same model
  trains the embeddings of "Exploration via Elliptical Episodic Bonuses", Henaff et al. 2022,
  Sec. 3, and of "Never Give Up", Badia et al. 2020, Sec. 2).
* `InverseDynamics`: both nets plus their optimizer: `init`, `embed`, `loss` and `update`.
* `fit`: shuffled-minibatch epochs of any loss over a flattened rollout (ICM reuses it with its
  forward model added).
* `embed_rollout`: phi(s_t) and phi(s_{t+1}) of a whole rollout, each observation embedded once
  (the `rollout_reward` of ICM, E3B and episodic kNN).

Every function is pure: parameters and optimizer state travel in `EmbeddingState`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ..envs.base import EnvSpec
from ..errors import UserError
from ..masked import apply_masked
from ..networks import Encoder, dense
from .base import Transition

Array = jax.Array

ENCODINGS = ("raw", "one_hot")
TRUNKS = ("cnn", "mlp")
OBS_KINDS = ("grid", "vector", "image")

# Both reference implementations (ICM's A3C code and E3B's IMPALA code) clip the gradient norm of
# their embedding networks at 40; a fixed guard against rare huge steps, not a tuning knob.
MAX_GRAD_NORM = 40.0


class Embedding(nn.Module):
    """phi: `obs: [B, *obs_shape] -> [B, embedding_dim] f32`.

    The trunk is the policy network's encoder with its own weights: `trunk="cnn"` (default, the
    papers' choice) is the conv stack on grids and images, `trunk="mlp"` two tanh layers (about
    3x cheaper on a CPU for MiniGrid's 7x7 views); vectors always get the tanh MLP. The last
    layer is linear so the embedding scale is learned.
    """

    spec: EnvSpec
    hidden: int
    embedding_dim: int
    encoding: str = "raw"
    trunk: str = "cnn"

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        features = Encoder(self.spec, self.trunk, self.hidden, self.encoding)(obs)
        return dense(self.embedding_dim, 1.0)(features)


class InverseHead(nn.Module):
    """Inverse model: `phi, phi_next: [B, d] -> logits [B, num_actions]` (one hidden ReLU layer,
    256 units in the ICM and E3B papers)."""

    num_actions: int
    hidden: int

    @nn.compact
    def __call__(self, phi: Array, phi_next: Array) -> Array:
        x = jnp.concatenate([phi, phi_next], axis=-1)
        x = nn.relu(dense(self.hidden)(x))
        return dense(self.num_actions, 0.01)(x)


class EmbeddingState(NamedTuple):
    """Trainable part of an embedding-based source: flax params and the optax state."""

    params: Any
    opt_state: Any


def make_optimizer(learning_rate: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(MAX_GRAD_NORM), optax.adam(learning_rate))


def flatten(transitions: Transition) -> Transition:
    """`[T, N, ...]` leaves -> `[T * N, ...]`: each real transition is one training sample."""
    return jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), transitions)


def inverse_loss(logits: Array, action: Array) -> tuple[Array, Array]:
    """Cross-entropy of the taken action (ICM Eq. 3's L_I for discrete actions) and accuracy.

    logits: [B, A] f32; action: [B] int32. Returns (loss [], accuracy []).
    """
    log_probs = jax.nn.log_softmax(logits)
    loss = -jnp.take_along_axis(log_probs, action[:, None].astype(jnp.int32), axis=1).mean()
    accuracy = (jnp.argmax(logits, axis=-1) == action).mean()
    return loss, accuracy


def fit(
    loss_fn: Callable[[Any, Transition], tuple[Array, dict[str, Array]]],
    optimizer: optax.GradientTransformation,
    state: EmbeddingState,
    batch: Transition,
    key: Array,
    update_epochs: int,
    num_minibatches: int,
    update_proportion: float = 1.0,
) -> tuple[EmbeddingState, dict[str, Array]]:
    """`update_epochs` passes over `batch` (leaves `[B, ...]`) in `num_minibatches` shuffled
    minibatches; one Adam step per minibatch, so each sample is used once per epoch as in the
    reference implementations (one gradient step per collected batch). The `B mod num_minibatches`
    samples left over by the shuffle are skipped in that epoch. With `update_proportion` p < 1
    each pass trains on a fresh random subset of round(p * B) samples (as RND's option of that
    name), and the samples left out cost nothing.

    Returns the new state and the mean of `loss_fn`'s metrics over all steps.
    """
    size = jax.tree_util.tree_leaves(batch)[0].shape[0]
    drawn = max(1, round(update_proportion * size))
    num_minibatches = max(1, min(num_minibatches, drawn))
    minibatch_size = drawn // num_minibatches
    used = minibatch_size * num_minibatches
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(carry: EmbeddingState, minibatch: Transition) -> tuple[EmbeddingState, Any]:
        (_, metrics), grads = grad_fn(carry.params, minibatch)
        updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
        return EmbeddingState(optax.apply_updates(carry.params, updates), opt_state), metrics

    def epoch(carry: EmbeddingState, epoch_key: Array) -> tuple[EmbeddingState, Any]:
        order = jax.random.permutation(epoch_key, size)[:used]
        minibatches = jax.tree_util.tree_map(
            lambda x: x[order].reshape(num_minibatches, minibatch_size, *x.shape[1:]), batch
        )
        return jax.lax.scan(step, carry, minibatches)

    state, metrics = jax.lax.scan(epoch, state, jax.random.split(key, update_epochs))
    return state, jax.tree_util.tree_map(jnp.mean, metrics)


def embed_rollout(
    embed: Callable[[Array], Array], obs: Array, next_obs: Array, done: Array
) -> tuple[Array, Array]:
    """(phi(s_t), phi(s_{t+1})), each `[T, N, d]`, of a rollout `obs, next_obs: [T, N, ...]`,
    `done: [T, N]`, with every observation embedded once.

    s_{t+1} of a transition that does not end its episode is the next transition's s_t, so s_t
    is embedded again only at the rollout's first step (embedded last with an older phi, or not
    at all) and after an episode end (the reset observation); every s_{t+1} is embedded in one
    batch. `embed` maps `[B, ...]` to `[B, d]` row by row."""
    num_steps, num_envs = done.shape
    flat = next_obs.reshape(num_steps * num_envs, *next_obs.shape[2:])
    phi_next = embed(flat).reshape(num_steps, num_envs, -1)
    again = jnp.concatenate([jnp.ones((1, num_envs), bool), done[:-1]], axis=0)
    fresh = apply_masked(embed, obs, again, num_envs)
    shifted = jnp.concatenate([jnp.zeros_like(phi_next[:1]), phi_next[:-1]], axis=0)
    return jnp.where(again[..., None], fresh, shifted), phi_next


@dataclass(frozen=True)
class InverseDynamics:
    """phi(s) trained only through the inverse model (E3B and episodic kNN).

    `init(key) -> EmbeddingState`; `embed(params, obs [B, ...]) -> [B, d]`;
    `update(state, rollout [T, N], key) -> (state, {"inverse_loss", "inverse_accuracy"})`.
    """

    embedding: Embedding
    inverse: InverseHead
    optimizer: optax.GradientTransformation
    update_epochs: int
    num_minibatches: int
    update_proportion: float = 1.0

    def init(self, key: Array) -> EmbeddingState:
        k_embed, k_inverse = jax.random.split(key)
        obs = jnp.zeros((1, *self.embedding.spec.obs_shape), self.embedding.spec.obs_dtype)
        phi = jnp.zeros((1, self.embedding.embedding_dim), jnp.float32)
        params = {
            "embedding": self.embedding.init(k_embed, obs),
            "inverse": self.inverse.init(k_inverse, phi, phi),
        }
        return EmbeddingState(params, self.optimizer.init(params))

    def embed(self, params: Any, obs: Array) -> Array:
        return self.embedding.apply(params["embedding"], obs)

    def inverse_logits(self, params: Any, obs: Array, next_obs: Array) -> Array:
        """logits [B, A] of a_t given s_t, s_{t+1} (both `[B, *obs_shape]`)."""
        phis = self.embed(params, jnp.concatenate([obs, next_obs], axis=0))
        phi, phi_next = jnp.split(phis, 2, axis=0)
        return self.inverse.apply(params["inverse"], phi, phi_next)

    def loss(self, params: Any, batch: Transition) -> tuple[Array, dict[str, Array]]:
        logits = self.inverse_logits(params, batch.obs, batch.next_obs)
        loss, accuracy = inverse_loss(logits, batch.action)
        return loss, {"inverse_loss": loss, "inverse_accuracy": accuracy}

    def update(
        self, state: EmbeddingState, rollout: Transition, key: Array
    ) -> tuple[EmbeddingState, dict[str, Array]]:
        return fit(
            self.loss,
            self.optimizer,
            state,
            flatten(rollout),
            key,
            self.update_epochs,
            self.num_minibatches,
            self.update_proportion,
        )


def make_inverse_dynamics(
    spec: EnvSpec,
    embedding_dim: int,
    hidden: int,
    encoding: str,
    learning_rate: float,
    update_epochs: int,
    num_minibatches: int,
    trunk: str = "cnn",
    update_proportion: float = 1.0,
) -> InverseDynamics:
    return InverseDynamics(
        embedding=Embedding(spec, hidden, embedding_dim, encoding, trunk),
        inverse=InverseHead(spec.num_actions, hidden),
        optimizer=make_optimizer(learning_rate),
        update_epochs=update_epochs,
        num_minibatches=num_minibatches,
        update_proportion=update_proportion,
    )


def check_embedding_params(name: str, params: Any, spec: EnvSpec) -> None:
    """UserError unless the embedding options of source `name` are usable on `spec`.

    Reads `embedding_dim`, `hidden`, `encoding`, `trunk`, `learning_rate`, `update_epochs`,
    `num_minibatches` and `update_proportion` (if it has one) from `params`.
    """
    prefix = f"sources.{name}."
    if spec.obs_kind not in OBS_KINDS:
        raise UserError(
            f"reward source {name} embeds observations of kind {', '.join(OBS_KINDS)}; "
            f"{spec.env_id} has {spec.obs_kind!r} observations."
        )
    if spec.num_actions < 2:
        raise UserError(
            f"reward source {name} learns its embedding by predicting the action, which needs at "
            f"least 2 discrete actions; {spec.env_id} has {spec.num_actions}."
        )
    for field_name in ("embedding_dim", "hidden", "update_epochs", "num_minibatches"):
        value = getattr(params, field_name)
        if value < 1:
            raise UserError(f"{prefix}{field_name} must be >= 1, got {value}.")
    if not params.learning_rate > 0:
        raise UserError(f"{prefix}learning_rate must be > 0, got {params.learning_rate}.")
    proportion = getattr(params, "update_proportion", 1.0)
    if not 0.0 < proportion <= 1.0:
        raise UserError(f"{prefix}update_proportion must be in (0, 1], got {proportion}.")
    if params.encoding not in ENCODINGS:
        raise UserError(
            f"{prefix}encoding must be one of {', '.join(ENCODINGS)}, got {params.encoding!r}."
        )
    if params.trunk not in TRUNKS:
        raise UserError(f"{prefix}trunk must be one of {', '.join(TRUNKS)}, got {params.trunk!r}.")
    if params.encoding == "one_hot" and spec.obs_kind != "grid":
        raise UserError(
            f"{prefix}encoding=one_hot applies to grid observations only; {spec.env_id} has "
            f"{spec.obs_kind!r} observations. Use encoding=raw."
        )
