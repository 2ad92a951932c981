"""PPO with one value head per reward source, end to end in JAX.

`make_trainer(config, env, sources, heads)` returns `init(key) -> state` and
`update(state) -> (state, metrics)`, both pure: one call of `update` is a whole PPO iteration
(rollout as a `lax.scan` over vmapped envs, reward normalization, GAE per head, clipped-surrogate
minibatch epochs, reward-source updates). The CLI jits `jax.vmap(update)` so several seeds train
at once, and does logging and checkpoints between calls.

Value heads: head 0 is the extrinsic reward (episodic), head k > 0 the k-th intrinsic source, each
with its own discount, episodic flag and coefficient. The policy advantage is
`sum_k coef_k * A_k` ("Exploration by Random Network Distillation", Burda et al. 2018, Sec. 2.3:
returns of different horizons are combined through separate value heads). With no intrinsic
source this is plain PPO ("Proximal Policy Optimization Algorithms", Schulman et al. 2017, Eq. 7).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import sil as self_imitation
from .config import Config
from .envs.base import JaxEnv, StepResult, step_envs
from .masked import apply_masked
from .networks import Network, make_network
from .rewards.base import HeadConfig, RewardSource, Transition, merge_moments

Array = jax.Array


# ------------------------------------------------------------------------------------ state


class NormState(NamedTuple):
    """Running statistics of one head's discounted reward stream (RND-style normalization).

    discounted_return: [N] f32, R_t = gamma * R_{t-1} + r_t per env
    mean, var, count:  running moments of R over every step seen so far
    """

    discounted_return: Array
    mean: Array
    var: Array
    count: Array


class TrainState(NamedTuple):
    params: Any
    opt_state: Any
    env_state: Any
    obs: Array  # [N, *obs_shape]
    episode_start: Array  # [N] bool: obs is the first observation of an episode
    carry: Array  # [N, C] recurrent state (unused width-1 zeros for feed-forward nets)
    episode_return: Array  # [N] f32 extrinsic return of the running episode
    episode_length: Array  # [N] int32
    source_states: tuple[Any, ...]
    reward_norms: tuple[NormState, ...]  # one per intrinsic head
    key: Array
    update: Array  # int32 number of completed updates
    sil: Any = None  # self_imitation.SILState when config.sil.enabled


class Rollout(NamedTuple):
    """What one rollout stores, each leaf `[T, N, ...]`."""

    obs: Array
    episode_start: Array
    action: Array
    log_prob: Array
    values: Array  # [T, N, K]
    final_values: Array  # [T, N, K] V(real next obs), read only on truncation (set in `learn`)
    rewards: Array  # [T, N, K] raw rewards: extrinsic, then each intrinsic source
    next_obs: Array
    terminated: Array
    truncated: Array
    success: Array
    completed_return: Array  # return of the episode that ended at this step (0 otherwise)
    completed_length: Array
    caption: Array | None = None  # caption ids, for envs that give captions


class Acted(NamedTuple):
    """The policy's output at one rollout step, `[N, ...]` leaves."""

    action: Array
    log_prob: Array
    values: Array  # [N, K]
    carry: Array  # recurrent state after reading the observation
    env_key: Array  # the key the envs step with (JAX envs) at this step


class PPOBatch(NamedTuple):
    """What the PPO loss reads: `[T, n, ...]` leaves and the recurrent state at t = 0 `[n, C]`."""

    carry: Any
    obs: Array
    episode_start: Array
    action: Array
    log_prob: Array
    values: Array
    advantages: Array
    returns: Array


# ------------------------------------------------------------------------------------ GAE


def gae(
    rewards: Array,
    values: Array,
    next_values: Array,
    final_values: Array,
    terminated: Array,
    truncated: Array,
    gammas: Array,
    episodic: Array,
    gae_lambda: float,
) -> tuple[Array, Array]:
    """Generalized advantage estimation for K heads at once.

    rewards, values, final_values: [T, N, K]; next_values: [T, N, K] value of the next observation
    in the stream (the reset observation after an episode end); terminated, truncated: [T, N];
    gammas: [K]; episodic: [K] bool. Returns (advantages, returns), both [T, N, K].

    Episodic head: bootstrap 0 after termination, V(real last obs) after truncation, and the
    trace stops at the episode end. Non-episodic head: the stream runs on through episode ends,
    bootstrapping from the next episode's first observation ("Exploration by Random Network
    Distillation", Sec. 2.3). "High-Dimensional Continuous Control Using GAE", Eq. 16.
    """
    term = terminated[..., None]
    trunc = truncated[..., None]
    bootstrap = jnp.where(term, 0.0, jnp.where(trunc, final_values, next_values))
    bootstrap = jnp.where(episodic, bootstrap, next_values)
    trace = jnp.where(episodic, 1.0 - (term | trunc).astype(jnp.float32), 1.0)
    deltas = rewards + gammas * bootstrap - values

    def backward(advantage_next: Array, x: tuple[Array, Array]) -> tuple[Array, Array]:
        delta, cont = x
        advantage = delta + gammas * gae_lambda * cont * advantage_next
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(deltas[0]), (deltas, trace), reverse=True)
    return advantages, advantages + values


def update_norm(
    norm: NormState, rewards: Array, dones: Array, gamma: float, episodic: bool
) -> tuple[NormState, Array]:
    """Update the running std of discounted returns with `rewards: [T, N]` and return the
    normalized rewards `r / std(R)` (RND paper, Sec. 2.4: no mean subtraction)."""

    def discount(running: Array, x: tuple[Array, Array]) -> tuple[Array, Array]:
        reward, done = x
        running = gamma * running + reward
        out = running
        if episodic:
            running = jnp.where(done, 0.0, running)
        return running, out

    last, returns = jax.lax.scan(discount, norm.discounted_return, (rewards, dones))
    batch_count = jnp.asarray(returns.size, jnp.float32)
    mean, var, total = merge_moments(
        norm.mean, norm.var, norm.count, returns.mean(), returns.var(), batch_count
    )
    new = NormState(last, mean, var, total)
    return new, rewards / jnp.sqrt(var + 1e-8)


# ------------------------------------------------------------------------------------ trainer


@dataclass(frozen=True)
class Trainer:
    """`init(key) -> state` and `update(state) -> (state, metrics)` for one seed.

    `update` is `learn` after `num_steps` of `act`, `env.step`, `observe` in a `lax.scan`. The
    pieces are exposed for drivers whose envs cannot step inside JAX: they call `act`, step the
    envs themselves, call `observe` with a `StepResult`, stack the records and call `learn`.
    """

    init: Callable[[Array], TrainState]
    update: Callable[[TrainState], tuple[TrainState, dict[str, Array]]]
    network: Network
    head_names: tuple[str, ...]
    act: Callable[[TrainState], tuple[TrainState, Acted]]
    observe: Callable[[TrainState, Acted, Any, StepResult], tuple[TrainState, Rollout]]
    learn: Callable[[TrainState, Rollout, Array], tuple[TrainState, dict[str, Array]]]


def make_trainer(
    config: Config,
    env: JaxEnv,
    sources: tuple[RewardSource, ...] = (),
    heads: tuple[HeadConfig, ...] = (),
    source_names: tuple[str, ...] = (),
) -> Trainer:
    """Pure `init` and `update` for one seed (vmap them for several)."""
    ppo = config.ppo
    spec = env.spec
    num_envs, num_steps = ppo.num_envs, ppo.num_steps
    num_heads = 1 + len(sources)
    head_names = ("extrinsic", *source_names)
    gammas = jnp.asarray([config.extrinsic.gamma] + [h.gamma for h in heads], jnp.float32)
    episodic = jnp.asarray([True] + [h.episodic for h in heads])
    coefs = jnp.asarray([config.extrinsic.coef] + [h.coef for h in heads], jnp.float32)
    network = make_network(spec, config.network, num_heads)
    num_minibatches = ppo.num_minibatches
    sil_config = config.sil
    sil_shared = sil_config.enabled and sil_config.optimizer == "shared"
    # With `sil.optimizer: shared` the SIL steps advance PPO's Adam (and its schedule) too.
    steps_per_update = ppo.update_epochs * num_minibatches
    steps_per_update += sil_config.updates if sil_shared else 0
    total_optimizer_steps = config.num_updates * steps_per_update

    if ppo.anneal_lr:
        learning_rate: Any = optax.linear_schedule(ppo.learning_rate, 0.0, total_optimizer_steps)
    else:
        learning_rate = ppo.learning_rate
    optimizer = optax.chain(
        optax.clip_by_global_norm(ppo.max_grad_norm), optax.adam(learning_rate, eps=1e-5)
    )
    sil_optimizer = (
        optimizer
        if sil_shared
        else self_imitation.make_optimizer(sil_config, ppo.learning_rate, ppo.max_grad_norm)
    )

    def init(key: Array) -> TrainState:
        key, k_net, k_env, k_src = jax.random.split(key, 4)
        params = network.init(k_net)
        env_state, obs = jax.vmap(env.reset)(jax.random.split(k_env, num_envs))
        src_keys = jax.random.split(k_src, max(1, len(sources)))
        source_states = tuple(
            src.init(src_keys[i], spec, num_envs) for i, src in enumerate(sources)
        )
        zero = jnp.zeros((), jnp.float32)
        norms = tuple(
            NormState(jnp.zeros((num_envs,), jnp.float32), zero, jnp.ones((), jnp.float32), zero)
            for _ in sources
        )
        return TrainState(
            params=params,
            opt_state=optimizer.init(params),
            env_state=env_state,
            obs=obs,
            episode_start=jnp.ones((num_envs,), bool),
            carry=network.initial_carry(num_envs),
            episode_return=jnp.zeros((num_envs,), jnp.float32),
            episode_length=jnp.zeros((num_envs,), jnp.int32),
            source_states=source_states,
            reward_norms=norms,
            key=key,
            update=jnp.zeros((), jnp.int32),
            sil=(
                self_imitation.init(
                    sil_config, obs, num_envs, () if sil_shared else sil_optimizer.init(params)
                )
                if sil_config.enabled
                else None
            ),
        )

    def act(state: TrainState) -> tuple[TrainState, Acted]:
        """The policy's half of one rollout step: sample an action for every env."""
        key, k_action, k_env = jax.random.split(state.key, 3)
        carry, logits, values = network.apply(
            state.params, state.carry, state.obs, state.episode_start
        )
        action = jax.random.categorical(k_action, logits).astype(jnp.int32)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], 1)[:, 0]
        return state._replace(key=key), Acted(action, log_prob, values, carry, k_env)

    def observe(
        state: TrainState, acted: Acted, env_state: Any, step: StepResult
    ) -> tuple[TrainState, Rollout]:
        """The other half, once the envs have stepped: intrinsic rewards, episode statistics,
        the rollout record and the state for the next step."""
        action, log_prob, values, carry = acted.action, acted.log_prob, acted.values, acted.carry
        # V(real last observation) is needed only to bootstrap truncated episodes. A recurrent
        # net needs this step's carry for it; a feed-forward net's are computed in `learn`
        # for the truncated transitions only (`apply_masked`).
        done = step.terminated | step.truncated
        final_values = jnp.zeros_like(values)
        if network.recurrent:

            def value_of_final_obs() -> Array:
                return network.apply(state.params, carry, step.final_obs, jnp.zeros_like(done))[2]

            final_values = jax.lax.cond(
                jnp.any(step.truncated), value_of_final_obs, lambda: final_values
            )
        transition = Transition(
            obs=state.obs,
            action=action,
            next_obs=step.final_obs,
            terminated=step.terminated,
            truncated=step.truncated,
            extrinsic=step.reward,
            caption=step.caption,
        )
        intrinsic, source_states = [], []
        for source, source_state in zip(sources, state.source_states, strict=True):
            if source.rollout_reward is not None:  # scored in `learn`, over the whole rollout
                intrinsic.append(jnp.zeros_like(step.reward, jnp.float32))
                source_states.append(source_state)
                continue
            reward, source_state = source.reward(source_state, transition)
            intrinsic.append(reward.astype(jnp.float32))
            source_states.append(source_state)
        rewards = jnp.stack([step.reward, *intrinsic], axis=-1)
        episode_return = state.episode_return + step.reward
        episode_length = state.episode_length + 1
        record = Rollout(
            obs=state.obs,
            episode_start=state.episode_start,
            action=action,
            log_prob=log_prob,
            values=values,
            final_values=final_values,
            rewards=rewards,
            next_obs=step.final_obs,
            terminated=step.terminated,
            truncated=step.truncated,
            success=step.success & done,
            completed_return=jnp.where(done, episode_return, 0.0),
            completed_length=jnp.where(done, episode_length, 0),
            caption=step.caption,
        )
        state = state._replace(
            env_state=env_state,
            obs=step.obs,
            episode_start=done,
            carry=carry,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length),
            source_states=tuple(source_states),
        )
        return state, record

    def rollout_step(state: TrainState, _: None) -> tuple[TrainState, Rollout]:
        state, acted = act(state)
        env_state, step = step_envs(
            env, jax.random.split(acted.env_key, num_envs), state.env_state, acted.action
        )
        return observe(state, acted, env_state, step)

    def sequence_apply(
        params: Any, carry: Array, obs: Array, episode_start: Array
    ) -> tuple[Array, Array]:
        """Logits and values for a `[T, n, ...]` batch, carrying the recurrent state in time."""
        if not network.recurrent:
            flat_obs = obs.reshape(-1, *obs.shape[2:])
            flat_start = episode_start.reshape(-1)
            dummy = network.initial_carry(flat_obs.shape[0])
            _, logits, values = network.apply(params, dummy, flat_obs, flat_start)
            shape = obs.shape[:2]
            return logits.reshape(*shape, -1), values.reshape(*shape, -1)

        def step(c: Array, x: tuple[Array, Array]) -> tuple[Array, tuple[Array, Array]]:
            c, logits, values = network.apply(params, c, *x)
            return c, (logits, values)

        _, (logits, values) = jax.lax.scan(step, carry, (obs, episode_start))
        return logits, values

    def loss_fn(params: Any, batch: PPOBatch) -> tuple[Array, tuple[Array, ...]]:
        logits, values = sequence_apply(params, batch.carry, batch.obs, batch.episode_start)
        log_probs_all = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs_all, batch.action[..., None], -1)[..., 0]
        entropy = -(jnp.exp(log_probs_all) * log_probs_all).sum(-1).mean()
        advantage = (batch.advantages * coefs).sum(-1)
        if ppo.normalize_advantage:
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        log_ratio = log_prob - batch.log_prob
        ratio = jnp.exp(log_ratio)
        clipped = jnp.clip(ratio, 1.0 - ppo.clip_eps, 1.0 + ppo.clip_eps)
        policy_loss = -jnp.minimum(ratio * advantage, clipped * advantage).mean()
        value_error = jnp.square(values - batch.returns)
        if ppo.clip_value:
            values_clipped = batch.values + jnp.clip(
                values - batch.values, -ppo.clip_eps, ppo.clip_eps
            )
            value_error = jnp.maximum(value_error, jnp.square(values_clipped - batch.returns))
        value_losses = 0.5 * value_error.reshape(-1, num_heads).mean(0)  # [K]
        total = policy_loss + ppo.vf_coef * value_losses.sum() - ppo.ent_coef * entropy
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = (jnp.abs(ratio - 1.0) > ppo.clip_eps).mean()
        return total, (policy_loss, value_losses, entropy, approx_kl, clip_fraction)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def minibatches(key: Array, batch: PPOBatch) -> PPOBatch:
        """Shuffle and split into `[M, T', n, ...]` minibatches. Recurrent nets split along envs
        and keep whole time sequences; feed-forward nets shuffle single samples (T' = 1)."""
        if network.recurrent:
            order = jax.random.permutation(key, num_envs)

            def split_envs(x: Array) -> Array:
                x = jnp.take(x, order, axis=1)
                x = x.reshape(x.shape[0], num_minibatches, -1, *x.shape[2:])
                return jnp.swapaxes(x, 0, 1)

            sequences = jax.tree_util.tree_map(split_envs, batch._replace(carry=None))
            carry = jnp.take(batch.carry, order, axis=0).reshape(
                num_minibatches, -1, network.carry_size
            )
            return sequences._replace(carry=carry)
        size = num_steps * num_envs
        order = jax.random.permutation(key, size)

        def split_samples(x: Array) -> Array:
            x = x.reshape(size, *x.shape[2:])[order]
            return x.reshape(num_minibatches, 1, size // num_minibatches, *x.shape[1:])

        samples = jax.tree_util.tree_map(split_samples, batch._replace(carry=None))
        carry = jnp.zeros((num_minibatches, size // num_minibatches, network.carry_size))
        return samples._replace(carry=carry)

    def update(state: TrainState) -> tuple[TrainState, dict[str, Array]]:
        initial_carry = state.carry
        state, rollout = jax.lax.scan(rollout_step, state, None, num_steps)
        return learn(state, rollout, initial_carry)

    def learn(
        state: TrainState, rollout: Rollout, initial_carry: Array
    ) -> tuple[TrainState, dict[str, Array]]:
        """Everything after the rollout: reward normalization, GAE, PPO epochs, self-imitation,
        reward-source updates. `state` is the state after the rollout's last step and
        `initial_carry` the recurrent state at its first step."""
        _, _, last_values = network.apply(state.params, state.carry, state.obs, state.episode_start)
        if not network.recurrent:
            dummy, start = network.initial_carry(num_envs), jnp.zeros((num_envs,), bool)
            rollout = rollout._replace(
                final_values=apply_masked(
                    lambda obs: network.apply(state.params, dummy, obs, start)[2],
                    rollout.next_obs,
                    rollout.truncated,
                    num_envs,
                )
            )
        transitions = Transition(
            obs=rollout.obs,
            action=rollout.action,
            next_obs=rollout.next_obs,
            terminated=rollout.terminated,
            truncated=rollout.truncated,
            extrinsic=rollout.rewards[..., 0],
            caption=rollout.caption,
        )
        # Sources that score a whole rollout at once: `observe` left their column at 0.
        scored_states = list(state.source_states)
        for k, source in enumerate(sources):
            if source.rollout_reward is not None:
                reward, scored_states[k] = source.rollout_reward(scored_states[k], transitions)
                rollout = rollout._replace(
                    rewards=rollout.rewards.at[..., k + 1].set(reward.astype(jnp.float32))
                )
        state = state._replace(source_states=tuple(scored_states))

        # Intrinsic reward normalization, one stream per head.
        dones = rollout.terminated | rollout.truncated
        rewards = [rollout.rewards[..., 0]]
        norms = []
        for k, (head, norm) in enumerate(zip(heads, state.reward_norms, strict=True), start=1):
            raw = rollout.rewards[..., k]
            new_norm, normalized = update_norm(norm, raw, dones, head.gamma, head.episodic)
            if head.normalize == "none":
                new_norm, normalized = norm, raw
            norms.append(new_norm)
            rewards.append(normalized)
        rewards_used = jnp.stack(rewards, axis=-1)

        next_values = jnp.concatenate([rollout.values[1:], last_values[None]], axis=0)
        advantages, returns = gae(
            rewards_used,
            rollout.values,
            next_values,
            rollout.final_values,
            rollout.terminated,
            rollout.truncated,
            gammas,
            episodic,
            ppo.gae_lambda,
        )

        ppo_batch = PPOBatch(
            carry=initial_carry,
            obs=rollout.obs,
            episode_start=rollout.episode_start,
            action=rollout.action,
            log_prob=rollout.log_prob,
            values=rollout.values,
            advantages=advantages,
            returns=returns,
        )

        def epoch(carry_in: tuple[Any, Any, Array], _: None) -> tuple[Any, Any]:
            params, opt_state, key = carry_in
            key, k_perm = jax.random.split(key)
            batches = minibatches(k_perm, ppo_batch)

            def minibatch(inner: tuple[Any, Any], batch: PPOBatch) -> tuple[tuple[Any, Any], Any]:
                params, opt_state = inner
                (loss, aux), grads = grad_fn(params, batch)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
                return (params, opt_state), (loss, aux, optax.global_norm(grads))

            (params, opt_state), stats = jax.lax.scan(minibatch, (params, opt_state), batches)
            return (params, opt_state, key), stats

        key, k_epochs, k_sources = jax.random.split(state.key, 3)
        (params, opt_state, _), stats = jax.lax.scan(
            epoch, (state.params, state.opt_state, k_epochs), None, ppo.update_epochs
        )
        loss, (policy_loss, value_losses, entropy, approx_kl, clip_fraction), grad_norm = stats

        sil_state, sil_metrics = state.sil, {}
        if sil_config.enabled:
            key, k_sil = jax.random.split(key)
            sil_state = self_imitation.add_rollout(
                sil_config,
                state.sil,
                rollout.obs,
                rollout.action,
                rollout.rewards[..., 0],
                dones,
                rollout.completed_return,
                state.update + 1,
                config.extrinsic.gamma,
            )

            def apply_single(p: Any, obs: Array) -> tuple[Array, Array]:
                dummy = network.initial_carry(obs.shape[0])
                start = jnp.zeros((obs.shape[0],), bool)
                _, logits, values = network.apply(p, dummy, obs, start)
                return logits, values[:, 0]

            sil_opt_state = opt_state if sil_shared else sil_state.opt_state
            sil_state, params, sil_opt_state, sil_metrics = self_imitation.train(
                sil_config, sil_state, params, sil_opt_state, k_sil, apply_single, sil_optimizer
            )
            if sil_shared:
                opt_state = sil_opt_state
            else:
                sil_state = sil_state._replace(opt_state=sil_opt_state)

        source_states, source_metrics = [], {}
        src_keys = jax.random.split(k_sources, max(1, len(sources)))
        for i, (name, source, source_state) in enumerate(
            zip(source_names, sources, state.source_states, strict=True)
        ):
            source_state, metrics = source.update(source_state, transitions, src_keys[i])
            source_states.append(source_state)
            source_metrics.update({f"{name}/{k}": v for k, v in metrics.items()})

        finite = jnp.isfinite(loss).all()
        for leaf in jax.tree_util.tree_leaves(params):
            finite &= jnp.isfinite(leaf).all()

        episodes = dones.sum()
        metrics: dict[str, Array] = {
            "update": state.update + 1,
            "env_steps": (state.update + 1) * num_steps * num_envs,
            "episodes": episodes,
            "episode_return_sum": rollout.completed_return.sum(),
            "episode_length_sum": rollout.completed_length.sum(),
            "episode_success_sum": rollout.success.sum(),
            "episode_return_mean": rollout.completed_return.sum() / jnp.maximum(episodes, 1),
            "success_rate": rollout.success.sum() / jnp.maximum(episodes, 1),
            "loss/total": loss.mean(),
            "loss/policy": policy_loss.mean(),
            "loss/entropy": entropy.mean(),
            "loss/approx_kl": approx_kl.mean(),
            "loss/clip_fraction": clip_fraction.mean(),
            "loss/grad_norm": grad_norm.mean(),
            "finite": finite,
        }
        for k, name in enumerate(head_names):
            metrics[f"{name}/reward_raw"] = rollout.rewards[..., k].mean()
            metrics[f"{name}/reward"] = rewards_used[..., k].mean()
            metrics[f"{name}/advantage_mean"] = advantages[..., k].mean()
            metrics[f"{name}/advantage_std"] = advantages[..., k].std()
            metrics[f"{name}/return_mean"] = returns[..., k].mean()
            metrics[f"{name}/value_loss"] = value_losses[..., k].mean()
        metrics.update(source_metrics)
        metrics.update(sil_metrics)

        state = state._replace(
            params=params,
            opt_state=opt_state,
            source_states=tuple(source_states),
            reward_norms=tuple(norms),
            key=key,
            update=state.update + 1,
            sil=sil_state,
        )
        return state, metrics

    return Trainer(
        init=init,
        update=update,
        network=network,
        head_names=head_names,
        act=act,
        observe=observe,
        learn=learn,
    )


def seed_keys(seeds: tuple[int, ...]) -> Array:
    """One PRNG key per seed, stacked `[S, 2]`."""
    return jnp.stack([jax.random.PRNGKey(int(s)) for s in seeds])


def init_seeds(trainer: Trainer, seeds: tuple[int, ...]) -> TrainState:
    """The initial state of every seed, stacked on a leading axis (the input of `vmap(update)`).

    Runs `vmap(init)` eagerly, op by op, on purpose. Under `jit`, XLA's CPU runtime executes
    independent operations side by side on its small thread pool; the orthogonal initializers'
    batched QR factorizations (LAPACK custom calls) then each wait for pool threads that the other
    holds, and the program deadlocks with every thread asleep (seen with jaxlib 0.10.2 on 2 cores).
    Eager dispatch runs one operation at a time. It costs a second or two, once per run.
    """
    return jax.vmap(trainer.init)(seed_keys(seeds))


def host(tree: Any) -> Any:
    """Device arrays -> numpy (forces the computation to finish)."""
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
