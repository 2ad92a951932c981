"""E3B: an elliptical episodic bonus over inverse-dynamics embeddings.

"Exploration via Elliptical Episodic Bonuses", Henaff, Raileanu, Jiang, Rocktaschel, NeurIPS 2022
(arXiv 2210.05805), Sec. 3 and Algorithm 1:

    b(s_t) = phi(s_t)^T C_{t-1}^{-1} phi(s_t),   C_{t-1} = sum_{i<t} phi(s_i) phi(s_i)^T + lambda I

over the states of the current episode, lambda = 0.1. C^{-1} is kept directly and updated by
Sherman-Morrison, u = C^{-1} phi, C^{-1} <- C^{-1} - u u^T / (1 + b), so a step costs O(d^2)
instead of an O(d^3) inversion; per env that is one `[d, d]` matrix, all envs together a
`[N, d, d]` tensor updated in one batched contraction.

Which observation gets the bonus (`bonus_on`):
* "obs" (default, the reference code, facebookresearch/e3b `minihack/src/utils.py`): the
  transition (s_t, a_t, s_{t+1}) is paid b(s_t), the novelty of the state acted from, against
  the ellipse of s_0..s_{t-1}; the first transition of an episode is paid 0 (the reference
  zeroes step 0, where C^{-1} = I/lambda makes b = |phi|^2/lambda a constant, not a novelty),
  and the terminal observation is never scored.
* "next_obs": the transition is paid b(s_{t+1}) against the ellipse of s_0..s_t (s_0 enters the
  ellipse before the first bonus). The reward stream is the reference stream moved one step
  earlier, so the action that reaches a novel state is the one paid for it (the convention of
  RND and ICM in this package); the terminal observation is scored.

Either way C^{-1} is reset to I/lambda at the first transition of each episode (the step after
`transition.done`), and each obs enters the ellipse once. phi is retrained at every PPO update,
also in mid-episode; C^{-1} keeps the embeddings it was built from, as the reference's actors do.

The training loop scores a whole rollout at once (`rollout_reward`): the embeddings of all its
steps in one batch, then the per-step ellipse updates in a scan; `reward`, one step at a time,
is the definition it agrees with.

Other deviations: `embedding_dim` defaults to 128 where the reference uses 1024 (its NetHack
encoder width; [N, 1024, 1024] per seed is heavy on a CPU and small grids need far less);
`normalize="return_std"` divides by the running std of the discounted intrinsic return, the
reference by the running std of the reward itself; the reference clips the total reward to
[-1, 1], which has no per-head counterpart here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..envs.base import EnvSpec
from ..errors import UserError
from .base import HeadConfig, RewardSource, SourceEntry, Transition, register
from .inverse_dynamics import (
    EmbeddingState,
    check_embedding_params,
    embed_rollout,
    make_inverse_dynamics,
)

Array = jax.Array

BONUS_ON = ("obs", "next_obs")


@dataclass(frozen=True)
class E3BParams(HeadConfig):
    """E3B settings; defaults from the paper and its reference code unless noted.

    coef:          1.0 (reference `intrinsic_reward_coef`)
    normalize:     "return_std" (reference `reward_norm int`: divide by a running std)
    episodic:      true: the bonus is episodic and the reference's returns stop at episode ends
    ridge:         lambda, C_0 = lambda I (paper: 0.1)
    bonus_on:      "obs" (reference) or "next_obs"; see the module docstring
    learning_rate: Adam step of phi and the inverse model (reference: 1e-4)
    embedding_dim: size of phi; 128 here, 1024 in the reference (see the module docstring)
    hidden:        width of the encoder's last layer and of the inverse model's hidden layer
                   (reference inverse model: 256)
    encoding:      grid codes as numbers ("raw") or one-hot ("one_hot")
    trunk:         encoder before the embedding layer: "cnn" (the paper's conv stack) or
                   "mlp" (two tanh layers, about 3x cheaper on a CPU)
    update_epochs, num_minibatches: passes over the rollout and minibatches per pass
    update_proportion:  fraction of the rollout the embedding trains on in each pass, a fresh
                        random subset per pass (1.0: all of it, the reference setting)
    """

    coef: float = 1.0
    gamma: float = 0.99
    episodic: bool = True
    normalize: str = "return_std"
    ridge: float = 0.1
    bonus_on: str = "obs"
    learning_rate: float = 1e-4
    embedding_dim: int = 128
    hidden: int = 256
    encoding: str = "raw"
    trunk: str = "cnn"
    update_epochs: int = 1
    num_minibatches: int = 4
    update_proportion: float = 1.0


class E3BState(NamedTuple):
    """model:         phi and the inverse model
    cov_inverse:   [N, d, d] f32, C^{-1} of each env's running episode
    episode_start: [N] bool, the next transition's obs is the first of an episode"""

    model: EmbeddingState
    cov_inverse: Array
    episode_start: Array


def initial_cov_inverse(num_envs: int, dim: int, ridge: float) -> Array:
    """`[N, d, d]` copies of C_0^{-1} = I / lambda."""
    return jnp.broadcast_to(jnp.eye(dim, dtype=jnp.float32) / ridge, (num_envs, dim, dim))


def reset_cov_inverse(cov_inverse: Array, reset: Array, ridge: float) -> Array:
    """C^{-1} back to I / lambda where `reset: [N] bool`; `cov_inverse: [N, d, d]`."""
    fresh = initial_cov_inverse(cov_inverse.shape[0], cov_inverse.shape[-1], ridge)
    return jnp.where(reset[:, None, None], fresh, cov_inverse)


def elliptical_bonus(cov_inverse: Array, phi: Array) -> tuple[Array, Array]:
    """The bonus of `phi: [N, d]` and C^{-1} with phi added, for every env at once.

    b = phi^T C^{-1} phi (E3B Sec. 3, the elliptical bonus); then C <- C + phi phi^T, i.e. by
    Sherman-Morrison C^{-1} <- C^{-1} - u u^T / (1 + b) with u = C^{-1} phi (E3B Algorithm 1).
    cov_inverse: [N, d, d] f32 (symmetric). Returns (bonus [N] f32, cov_inverse [N, d, d]).
    """
    u = jnp.einsum("nij,nj->ni", cov_inverse, phi)
    bonus = jnp.sum(phi * u, axis=-1)
    cov_inverse = cov_inverse - jnp.einsum("ni,nj->nij", u, u) / (1.0 + bonus)[:, None, None]
    return bonus, cov_inverse


def make_e3b(params: E3BParams, spec: EnvSpec) -> RewardSource:
    model = make_inverse_dynamics(
        spec,
        params.embedding_dim,
        params.hidden,
        params.encoding,
        params.learning_rate,
        params.update_epochs,
        params.num_minibatches,
        params.trunk,
        update_proportion=params.update_proportion,
    )

    def init(key: Array, spec: EnvSpec, num_envs: int) -> E3BState:
        return E3BState(
            model=model.init(key),
            cov_inverse=initial_cov_inverse(num_envs, params.embedding_dim, params.ridge),
            episode_start=jnp.ones((num_envs,), bool),
        )

    def reward(state: E3BState, transition: Transition) -> tuple[Array, E3BState]:
        start = state.episode_start
        # phi is not differentiated here: the bonus is a reward, phi is trained in `update`.
        cov_inverse = reset_cov_inverse(state.cov_inverse, start, params.ridge)
        if params.bonus_on == "obs":
            phi = model.embed(state.model.params, transition.obs)
            bonus, cov_inverse = elliptical_bonus(cov_inverse, phi)
            bonus = jnp.where(start, 0.0, bonus)
        else:
            both = jnp.concatenate([transition.obs, transition.next_obs], axis=0)
            phi, phi_next = jnp.split(model.embed(state.model.params, both), 2, axis=0)
            _, with_first = elliptical_bonus(cov_inverse, phi)
            cov_inverse = jnp.where(start[:, None, None], with_first, cov_inverse)
            bonus, cov_inverse = elliptical_bonus(cov_inverse, phi_next)
        state = state._replace(cov_inverse=cov_inverse, episode_start=transition.done)
        return bonus, state

    def rollout_reward(state: E3BState, rollout: Transition) -> tuple[Array, E3BState]:
        """`reward` over a rollout (`[T, N, ...]` leaves) at once: the same bonuses and state,
        the embeddings computed in one batch (`embed_rollout`), then the T Sherman-Morrison
        steps in a scan."""
        done = rollout.terminated | rollout.truncated
        starts = jnp.concatenate([state.episode_start[None], done[:-1]], axis=0)
        phi, phi_next = embed_rollout(
            lambda obs: model.embed(state.model.params, obs), rollout.obs, rollout.next_obs, done
        )

        def step(cov_inverse: Array, x: tuple[Array, Array, Array]) -> tuple[Array, Array]:
            start, phi_t, phi_next_t = x
            cov_inverse = reset_cov_inverse(cov_inverse, start, params.ridge)
            if params.bonus_on == "obs":
                bonus, cov_inverse = elliptical_bonus(cov_inverse, phi_t)
                return cov_inverse, jnp.where(start, 0.0, bonus)
            _, with_first = elliptical_bonus(cov_inverse, phi_t)
            cov_inverse = jnp.where(start[:, None, None], with_first, cov_inverse)
            bonus, cov_inverse = elliptical_bonus(cov_inverse, phi_next_t)
            return cov_inverse, bonus

        cov_inverse, bonuses = jax.lax.scan(step, state.cov_inverse, (starts, phi, phi_next))
        return bonuses, state._replace(cov_inverse=cov_inverse, episode_start=done[-1])

    def update(
        state: E3BState, rollout: Transition, key: Array
    ) -> tuple[E3BState, dict[str, Array]]:
        model_state, metrics = model.update(state.model, rollout, key)
        return state._replace(model=model_state), metrics

    return RewardSource(init, reward, update, rollout_reward)


def check_e3b(params: E3BParams, spec: EnvSpec) -> None:
    check_embedding_params("e3b", params, spec)
    if not params.ridge > 0:
        raise UserError(f"sources.e3b.ridge must be > 0 (C_0 = ridge * I), got {params.ridge}.")
    if params.bonus_on not in BONUS_ON:
        raise UserError(
            f"sources.e3b.bonus_on must be one of {', '.join(BONUS_ON)}, got {params.bonus_on!r}."
        )


register(
    SourceEntry(
        name="e3b",
        params_class=E3BParams,
        build=make_e3b,
        check=check_e3b,
        summary="E3B elliptical episodic bonus over inverse-dynamics embeddings",
    )
)
