"""Self-imitation learning: replay the agent's own best episodes and imitate the actions whose
return beat the value estimate.

"Self-Imitation Learning", Oh, Guo, Singh, Lee, ICML 2018, Eq. 1-3:

    L_sil = E_{s,a,R ~ D} [ -log pi(a|s) (R - V(s))_+ ]  +  beta_sil * E [ 0.5 ((R - V(s))_+)^2 ]

with R the discounted Monte-Carlo return of the stored episode from (s, a) on, D a prioritized
replay buffer (priority (R - V)_+, Sec. 3), and the SIL step run several times per policy update.
Defaults are the paper's released code for the Atari experiments: 4 SIL updates of batch 512 per
policy update, value weight 0.01, entropy weight 0.01, priority exponent 0.6, importance weights
with exponent 1.0, the advantage clipped to [0, 1], -log pi capped at 5 in value, the sums
divided by max(#samples with R > V, 64), and only episodes with a positive return stored. As in
the released code's PPO variant, the SIL steps go through PPO's optimizer (Adam, its moments
and learning-rate schedule) and the SIL loss is scaled by 0.1 (`optimizer: shared`,
`loss_weight: 0.1`).

Where this differs from the paper, as named options (`SILConfig`):

* **Top-episode buffer.** The buffer keeps the transitions of the highest-return episodes seen so
  far (ties: the newer episode wins), not the most recent ones: what an exploration agent must not
  forget is its few successes. This is the replay idea of "SPEAR" (self-imitation with a buffer of
  the agent's best trajectories). Capacity is counted in transitions.
* **Episode window.** Returns are computed when an episode ends. Each env keeps its last
  `window` steps, so only the last `window + num_steps` steps of a longer episode are stored (the
  ones nearest the reward; with a sparse terminal reward the earlier ones carry a return of
  gamma^k with large k).
* **Extrinsic only.** R is the discounted extrinsic return (gamma = extrinsic.gamma) and V is the
  extrinsic value head; intrinsic heads are not self-imitated. A truncated episode's return is
  not bootstrapped (it is a Monte-Carlo return; episodes with return <= min_return are not
  stored anyway).
* **Own optimizer, as an option** (`optimizer: own`; the default is `shared`, the paper's).
  `shared`: SIL steps go through PPO's Adam, moments and learning-rate schedule, as the released
  code does (its SIL train op is built on PPO's optimizer); a SIL gradient is then measured
  against PPO's second moments, and `loss_weight` (the released code's SIL loss weight: 0.1 with
  PPO, 1.0 with A2C) scales it. `own`: SIL steps use an Adam state of their own at the PPO
  learning rate. Adam rescales every step to about the learning rate whatever the loss's size,
  so even a tiny SIL loss (few samples with R > V, divided by `min_batch`) moves the policy by
  full-size steps, 4 per PPO update; `loss_weight` then only matters through Adam's epsilon. On
  KeyCorridorS3R3 `own` held NovelD, count, ICM and episodic novelty, which solve it alone, to
  0.10-0.70 mean return, where `shared` let NovelD solve it (BENCHMARKS.md, "Self-imitation's
  optimizer"). But without an intrinsic reward, `own` is what let the few stored successes pull
  PPO along: 0.376 mean return against 0.003 with `shared` on DoorKey-16x16, 0.156 against 0.002
  on KeyCorridorS3R3.
* **Feed-forward policies only.** Single replayed transitions carry no recurrent state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from .config import SILConfig

Array = jax.Array


class SILState(NamedTuple):
    """Per-seed self-imitation state (checkpointed with the run).

    window_*: the last `W` steps of every env, time-major `[W, N, ...]`, not yet resolvable
              because their episode has not ended (or was already stored: `window_valid` false).
    buffer_*: `[C, ...]` transitions of the best episodes so far.
    """

    window_obs: Array
    window_action: Array
    window_reward: Array
    window_done: Array
    window_episode_return: Array  # the episode's return at its last step, 0 elsewhere
    window_valid: Array
    obs: Array
    action: Array
    ret: Array  # discounted return from this step to the episode end
    episode_return: Array  # undiscounted extrinsic return of the whole episode (buffer order key)
    stamp: Array  # update at which the transition entered the buffer (ties: newer first)
    priority: Array
    valid: Array
    opt_state: Any


def init(config: SILConfig, obs: Array, num_envs: int, optimizer_state: Any) -> SILState:
    """Empty window and buffer shaped like `obs: [N, *obs_shape]`."""
    window, capacity = config.window, config.capacity
    obs_shape, obs_dtype = obs.shape[1:], obs.dtype
    return SILState(
        window_obs=jnp.zeros((window, num_envs, *obs_shape), obs_dtype),
        window_action=jnp.zeros((window, num_envs), jnp.int32),
        window_reward=jnp.zeros((window, num_envs), jnp.float32),
        window_done=jnp.zeros((window, num_envs), bool),
        window_episode_return=jnp.zeros((window, num_envs), jnp.float32),
        window_valid=jnp.zeros((window, num_envs), bool),
        obs=jnp.zeros((capacity, *obs_shape), obs_dtype),
        action=jnp.zeros((capacity,), jnp.int32),
        ret=jnp.zeros((capacity,), jnp.float32),
        episode_return=jnp.full((capacity,), -jnp.inf, jnp.float32),
        stamp=jnp.zeros((capacity,), jnp.int32),
        priority=jnp.zeros((capacity,), jnp.float32),
        valid=jnp.zeros((capacity,), bool),
        opt_state=optimizer_state,
    )


def episode_returns(
    reward: Array, done: Array, completed_return: Array, resolvable_from: int, gamma: float
) -> tuple[Array, Array, Array]:
    """Backward pass over a time-major stream `[W, N]`.

    Returns (R, resolved, episode_return), each `[W, N]`:
      R_t = r_t + gamma * R_{t+1} * (1 - done_t)      the discounted return to the episode's end
      resolved_t: the episode containing t ends at an index >= `resolvable_from` (it ended in the
                  newest rollout, so R_t is final and the transition has not been stored before)
      episode_return_t: the episode's undiscounted return, read at its last step.
    """

    def backward(
        carry: tuple[Array, Array, Array], x: tuple[Array, Array, Array, Array]
    ) -> tuple[tuple[Array, Array, Array], tuple[Array, Array, Array]]:
        ret_next, resolved_next, ep_next = carry
        r, d, completed, t = x
        ret = r + gamma * ret_next * (1.0 - d.astype(jnp.float32))
        resolved = jnp.where(d, t >= resolvable_from, resolved_next)
        ep = jnp.where(d, completed, ep_next)
        return (ret, resolved, ep), (ret, resolved, ep)

    num_envs = reward.shape[1]
    zeros = jnp.zeros((num_envs,), jnp.float32)
    steps = jnp.broadcast_to(jnp.arange(reward.shape[0])[:, None], reward.shape)
    init_carry = (zeros, jnp.zeros((num_envs,), bool), zeros)
    _, out = jax.lax.scan(
        backward, init_carry, (reward, done, completed_return, steps), reverse=True
    )
    return out


def add_rollout(
    config: SILConfig,
    state: SILState,
    obs: Array,
    action: Array,
    reward: Array,
    done: Array,
    completed_return: Array,
    update: Array,
    gamma: float,
) -> SILState:
    """Append one rollout (`[T, N, ...]`, extrinsic `reward`, `done` = terminated | truncated)
    to the window, store the transitions of episodes that ended in it and whose return exceeds
    `config.min_return`, keep the best `capacity` transitions, and slide the window."""
    window = config.window
    w_obs = jnp.concatenate([state.window_obs, obs], 0)
    w_action = jnp.concatenate([state.window_action, action.astype(jnp.int32)], 0)
    w_reward = jnp.concatenate([state.window_reward, reward.astype(jnp.float32)], 0)
    w_done = jnp.concatenate([state.window_done, done], 0)
    w_epret = jnp.concatenate([state.window_episode_return, completed_return], 0)
    w_valid = jnp.concatenate([state.window_valid, jnp.ones(done.shape, bool)], 0)

    ret, resolved, ep_return = episode_returns(w_reward, w_done, w_epret, window, gamma)
    candidate = w_valid & resolved & (ep_return > config.min_return)

    # Merge buffer and candidates; order by episode return, then newest first.
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    stamp_new = jnp.full(ret.size, update, jnp.int32)
    all_valid = jnp.concatenate([state.valid, flat(candidate)])
    all_ep = jnp.where(
        all_valid, jnp.concatenate([state.episode_return, flat(ep_return)]), -jnp.inf
    )
    all_stamp = jnp.concatenate([state.stamp, stamp_new])
    order = jnp.lexsort((-all_stamp, -all_ep))[: config.capacity]  # last key is primary

    max_priority = jnp.maximum(jnp.max(jnp.where(state.valid, state.priority, 0.0)), 1.0)
    take = lambda a, b: jnp.concatenate([a, b])[order]  # noqa: E731
    new_priority = jnp.full(ret.size, max_priority)

    # Slide the window: keep the last `window` steps. A step stays pending while its episode
    # runs on; an episode that ended before this rollout was already resolved then, so `w_valid`
    # is false for it.
    pending = w_valid & ~resolved
    keep = slice(w_obs.shape[0] - window, None)
    return state._replace(
        window_obs=w_obs[keep],
        window_action=w_action[keep],
        window_reward=w_reward[keep],
        window_done=w_done[keep],
        window_episode_return=w_epret[keep],
        window_valid=pending[keep],
        obs=take(state.obs, flat(w_obs)),
        action=take(state.action, flat(w_action)),
        ret=take(state.ret, flat(ret)),
        episode_return=all_ep[order],
        stamp=all_stamp[order],
        priority=take(state.priority, new_priority),
        valid=all_valid[order],
    )


def loss(
    config: SILConfig,
    logits: Array,
    value: Array,
    action: Array,
    ret: Array,
    weight: Array,
) -> tuple[Array, dict[str, Array]]:
    """The SIL loss (paper Eq. 1-3) on a batch: `logits [B, A]`, extrinsic `value [B]`,
    `action [B]`, discounted returns `ret [B]`, importance weights `weight [B]`.

    Only samples with R > V(s) contribute; with every return below its value estimate the loss
    and its gradient are exactly zero.
    """
    log_probs = jax.nn.log_softmax(logits)
    nlogp = -jnp.take_along_axis(log_probs, action[:, None], 1)[:, 0]
    # Cap -log pi at `clip_nlogp` in value while keeping its gradient (released code).
    nlogp = nlogp + jax.lax.stop_gradient(jnp.minimum(nlogp, config.clip_nlogp) - nlogp)
    gap = ret - value
    mask = jax.lax.stop_gradient((gap > 0).astype(jnp.float32))
    advantage = jax.lax.stop_gradient(jnp.clip(gap, 0.0, config.clip_advantage))
    denominator = jnp.maximum(mask.sum(), config.min_batch)
    policy_loss = (weight * mask * advantage * nlogp).sum() / denominator
    value_loss = (weight * mask * 0.5 * jnp.square(jnp.maximum(gap, 0.0))).sum() / denominator
    entropy = -(jnp.exp(log_probs) * log_probs).sum(-1)
    entropy = (weight * mask * entropy).sum() / denominator
    total = policy_loss + config.value_coef * value_loss - config.ent_coef * entropy
    return total, {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "valid_fraction": mask.mean(),
    }


def make_optimizer(config: SILConfig, learning_rate: float, max_grad_norm: float) -> Any:
    """The SIL steps' own Adam (`optimizer: own`); unused with `optimizer: shared`."""
    del config
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate, eps=1e-5)
    )


def sample(key: Array, probs: Array, size: int) -> Array:
    """`size` indices drawn with replacement with P(i) = probs_i (`probs: [C]`, summing to 1 or
    all zero), by inverse-CDF sampling; an index with probability 0 is never drawn.

    (A categorical draw by the Gumbel-max trick would draw size x C noise: 8M numbers per SIL
    step at the defaults, 2.3 s of a 2.8 s PPO update on 2 cores.)
    """
    cdf = jnp.cumsum(probs)
    last = probs.shape[0] - 1 - jnp.argmax((probs > 0)[::-1])  # where u rounding up to 1 lands
    u = jax.random.uniform(key, (size,)) * cdf[-1]
    return jnp.minimum(jnp.searchsorted(cdf, u, side="right"), last)


def train(
    config: SILConfig,
    state: SILState,
    params: Any,
    opt_state: Any,
    key: Array,
    apply: Callable[[Any, Array], tuple[Array, Array]],
    optimizer: Any,
) -> tuple[SILState, Any, Any, dict[str, Array]]:
    """`config.updates` SIL gradient steps on prioritized samples from the buffer, through
    `optimizer` from `opt_state` (the SIL state's own Adam state with `optimizer: own`, PPO's with
    `shared`). Returns (state, params, opt_state, metrics).

    `apply(params, obs) -> (logits [B, A], extrinsic value [B])`. Sampling: P(i) proportional to
    priority_i^alpha over stored transitions; importance weights (C P(i))^-beta / max; the sampled
    priorities are refreshed to (R - V)_+ ("Prioritized Experience Replay", Schaul et al. 2016,
    Sec. 3.3-3.4; SIL Sec. 3). With an empty buffer nothing changes.
    """
    count = state.valid.sum()
    scaled = jnp.where(state.valid, jnp.power(state.priority + 1e-6, config.alpha), 0.0)
    probs = scaled / jnp.maximum(scaled.sum(), 1e-12)
    any_stored = count > 0

    def grad_step(
        carry: tuple[Any, Any, Array], k: Array
    ) -> tuple[tuple[Any, Any, Array], tuple[Array, dict[str, Array]]]:
        params, opt_state, priority = carry
        index = sample(k, probs, config.batch_size)
        weight = jnp.power(jnp.maximum(count, 1) * probs[index], -config.beta)
        weight = weight / jnp.maximum(weight.max(), 1e-12)

        def objective(p: Any) -> tuple[Array, tuple[dict[str, Array], Array]]:
            logits, value = apply(p, state.obs[index])
            total, aux = loss(config, logits, value, state.action[index], state.ret[index], weight)
            return config.loss_weight * total, (aux, value)

        (total, (aux, value)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        grads = jax.tree_util.tree_map(lambda g: jnp.where(any_stored, g, 0.0), grads)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        params = jax.tree_util.tree_map(
            lambda new, old: jnp.where(any_stored, new, old), new_params, params
        )
        opt_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(any_stored, new, old), new_opt_state, opt_state
        )
        refreshed = jnp.maximum(state.ret[index] - value, 0.0)
        priority = priority.at[index].set(jnp.where(any_stored, refreshed, priority[index]))
        return (params, opt_state, priority), (total, aux)

    keys = jax.random.split(key, config.updates)
    (params, opt_state, priority), (total, aux) = jax.lax.scan(
        grad_step, (params, opt_state, state.priority), keys
    )
    stored_returns = jnp.where(state.valid, state.episode_return, -jnp.inf)
    metrics = {
        "sil/loss": total.mean(),
        "sil/policy_loss": aux["policy_loss"].mean(),
        "sil/value_loss": aux["value_loss"].mean(),
        "sil/valid_fraction": aux["valid_fraction"].mean(),
        "sil/buffer_size": count,
        "sil/best_episode_return": jnp.where(any_stored, stored_returns.max(), 0.0),
    }
    return state._replace(priority=priority), params, opt_state, metrics
