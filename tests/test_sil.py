"""Self-imitation: the buffer keeps the best episodes with exact discounted returns, episodes that
span rollouts are stored once when they end, and the loss is the paper's formula (zero when every
return is below its value estimate)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autotelic import sil
from autotelic.config import SILConfig, build
from autotelic.errors import UserError

GAMMA = 0.9


def _stream(episodes: list[list[float]], num_steps: int) -> list[dict[str, np.ndarray]]:
    """One env playing `episodes` (each a list of per-step rewards) back to back, cut into
    rollouts of `num_steps`. Observations are a running step id so each transition is traceable."""
    rewards, dones, completed = [], [], []
    for episode in episodes:
        for t, r in enumerate(episode):
            rewards.append(r)
            end = t == len(episode) - 1
            dones.append(end)
            completed.append(sum(episode) if end else 0.0)
    total = len(rewards)
    assert total % num_steps == 0
    out = []
    for start in range(0, total, num_steps):
        sl = slice(start, start + num_steps)
        out.append(
            {
                "obs": np.arange(start, start + num_steps, dtype=np.int32)[:, None, None],
                "action": (np.arange(start, start + num_steps) % 3)[:, None].astype(np.int32),
                "reward": np.asarray(rewards[sl], np.float32)[:, None],
                "done": np.asarray(dones[sl])[:, None],
                "completed": np.asarray(completed[sl], np.float32)[:, None],
            }
        )
    return out


def _run(config: SILConfig, rollouts: list[dict[str, np.ndarray]]) -> sil.SILState:
    state = sil.init(config, jnp.zeros((1, 1), jnp.int32), 1, optimizer_state=())
    add = jax.jit(lambda s, r, u: sil.add_rollout(config, s, *r, u, GAMMA))
    for u, r in enumerate(rollouts, start=1):
        batch = (r["obs"], r["action"], r["reward"], r["done"], r["completed"])
        state = add(state, batch, jnp.int32(u))
    return state


def _stored(state: sil.SILState) -> dict[int, tuple[float, float]]:
    valid = np.asarray(state.valid)
    obs = np.asarray(state.obs)[valid, 0]
    return {
        int(o): (float(r), float(e))
        for o, r, e in zip(
            obs, np.asarray(state.ret)[valid], np.asarray(state.episode_return)[valid], strict=True
        )
    }


def _expected_returns(episode: list[float]) -> list[float]:
    out, running = [], 0.0
    for r in reversed(episode):
        running = r + GAMMA * running
        out.append(running)
    return out[::-1]


def test_buffer_keeps_the_top_episodes_with_exact_returns() -> None:
    # Eight episodes of 4 steps each, sparse reward at the end; returns 0 (not stored), 0.5, ...
    finals = [0.0, 0.5, 0.2, 0.0, 0.9, 0.7, 0.1, 0.3]
    episodes = [[0.0, 0.0, 0.0, f] for f in finals]
    config = SILConfig(enabled=True, capacity=12, window=8)  # room for the best three episodes
    state = _run(config, _stream(episodes, num_steps=8))
    stored = _stored(state)
    best = sorted(range(len(finals)), key=lambda i: -finals[i])[:3]  # episodes 4, 5, 1
    expected = {}
    for i in best:
        for t, ret in enumerate(_expected_returns(episodes[i])):
            expected[4 * i + t] = (ret, finals[i])
    assert set(stored) == set(expected)
    for obs, (ret, ep) in expected.items():
        assert stored[obs][0] == pytest.approx(ret, abs=1e-6)
        assert stored[obs][1] == pytest.approx(ep, abs=1e-6)


def test_episode_spanning_rollouts_is_stored_once_when_it_ends() -> None:
    # A 13-step episode crosses three rollouts of 5 steps; the next episode's two steps fill the
    # last rollout and never end, so they must not be stored.
    long_episode = [0.0] * 12 + [1.0]
    episodes = [long_episode, [0.0, 0.0]]
    config = SILConfig(enabled=True, capacity=64, window=16)
    rollouts = _stream(episodes, num_steps=5)
    state = sil.init(config, jnp.zeros((1, 1), jnp.int32), 1, optimizer_state=())
    sizes = []
    for u, r in enumerate(rollouts, start=1):
        state = sil.add_rollout(
            config, state, r["obs"], r["action"], r["reward"], r["done"], r["completed"], u, GAMMA
        )
        sizes.append(int(state.valid.sum()))
    assert sizes == [0, 0, 13]
    stored = _stored(state)
    assert set(stored) == set(range(13))
    for t, ret in enumerate(_expected_returns(long_episode)):
        assert stored[t][0] == pytest.approx(ret, abs=1e-6)
    # One more rollout of a zero-return continuation: nothing is stored twice.
    more = _stream([[0.0, 0.0, 0.0, 0.0, 0.0]], num_steps=5)[0]
    state = sil.add_rollout(
        config,
        state,
        more["obs"] + 100,
        more["action"],
        more["reward"],
        more["done"],
        more["completed"],
        4,
        GAMMA,
    )
    assert int(state.valid.sum()) == 13


def test_window_shorter_than_episode_keeps_its_last_steps() -> None:
    episode = [0.0] * 11 + [1.0]
    config = SILConfig(enabled=True, capacity=64, window=4)
    state = _run(config, _stream([episode], num_steps=4))
    # Each rollout sees window (4) + rollout (4) steps: the episode's last 8 steps are stored.
    assert set(_stored(state)) == set(range(4, 12))


def test_ties_keep_the_newer_episode() -> None:
    episodes = [[0.0, 0.5], [0.0, 0.5]]
    config = SILConfig(enabled=True, capacity=2, window=2)
    state = _run(config, _stream(episodes, num_steps=2))
    assert set(_stored(state)) == {2, 3}


def _loss(config: SILConfig, logits, value, action, ret, weight):
    return sil.loss(
        config,
        jnp.asarray(logits, jnp.float32),
        jnp.asarray(value, jnp.float32),
        jnp.asarray(action, jnp.int32),
        jnp.asarray(ret, jnp.float32),
        jnp.asarray(weight, jnp.float32),
    )


def test_loss_is_zero_with_zero_gradient_when_returns_are_below_values() -> None:
    config = SILConfig(enabled=True)
    logits = jnp.asarray([[0.3, -1.0, 2.0], [1.0, 0.0, 0.0]])
    value = jnp.asarray([0.8, 0.5])
    ret = jnp.asarray([0.5, 0.1])

    def total(lg: jax.Array, v: jax.Array) -> jax.Array:
        return _loss(config, lg, v, [0, 2], ret, [1.0, 1.0])[0]

    assert float(total(logits, value)) == 0.0
    g_logits, g_value = jax.grad(total, argnums=(0, 1))(logits, value)
    assert np.all(np.asarray(g_logits) == 0.0) and np.all(np.asarray(g_value) == 0.0)


def test_loss_matches_the_formula() -> None:
    config = SILConfig(enabled=True, min_batch=1.0, clip_advantage=10.0)
    logits = np.asarray([[0.3, -1.0, 2.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    value = np.asarray([0.2, 0.5, 0.9])
    ret = np.asarray([0.7, 0.1, 1.5])
    action = np.asarray([1, 2, 0])
    weight = np.asarray([1.0, 0.5, 0.25])
    total, aux = _loss(config, logits, value, action, ret, weight)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    nlogp = -log_probs[np.arange(3), action]
    gap = np.maximum(ret - value, 0.0)
    valid = (ret > value).astype(float)
    n = valid.sum()
    policy = (weight * valid * gap * np.minimum(nlogp, 5.0)).sum() / n
    value_loss = (weight * valid * 0.5 * gap**2).sum() / n
    entropy = (weight * valid * -(np.exp(log_probs) * log_probs).sum(1)).sum() / n
    expected = policy + 0.01 * value_loss - 0.01 * entropy
    assert float(aux["policy_loss"]) == pytest.approx(policy, rel=1e-5)
    assert float(aux["value_loss"]) == pytest.approx(value_loss, rel=1e-5)
    assert float(total) == pytest.approx(expected, rel=1e-5)
    # The gradient pushes up the log-probability of the imitated action where R > V.
    g = jax.grad(lambda lg: _loss(config, lg, value, action, ret, weight)[0])(
        jnp.asarray(logits, jnp.float32)
    )
    assert float(g[0, 1]) < 0.0 and float(g[2, 0]) < 0.0
    assert np.all(np.asarray(g[1]) == 0.0)  # R < V: no gradient


def test_prioritized_sampling_follows_the_probabilities_and_skips_empty_slots() -> None:
    # Slots 0, 3 and the last are empty (probability 0) and must never be drawn; the others
    # must be drawn in proportion to their probability (200k draws: 4-sigma bands).
    probs = np.asarray([0.0, 0.5, 0.1, 0.0, 0.25, 0.05, 0.1, 0.0], np.float32)
    draws = 200_000
    index = np.asarray(jax.jit(sil.sample, static_argnums=2)(jax.random.PRNGKey(7), probs, draws))
    frequency = np.bincount(index, minlength=probs.size) / draws
    assert frequency[probs == 0].sum() == 0
    sigma = np.sqrt(probs * (1 - probs) / draws)
    assert np.all(np.abs(frequency - probs) <= 4 * sigma + 1e-12), (frequency, probs)
    # an empty buffer (all zero) still yields in-range indices (their gradients are masked)
    empty = np.asarray(sil.sample(jax.random.PRNGKey(0), np.zeros(8, np.float32), 64))
    assert empty.min() >= 0 and empty.max() < 8


def test_train_imitates_stored_actions_and_refreshes_priorities() -> None:
    """SIL steps on a stored set of good transitions raise pi(a|s) of the stored actions."""
    config = SILConfig(enabled=True, capacity=8, batch_size=16, updates=50, ent_coef=0.0)
    obs = jnp.eye(4, dtype=jnp.float32)
    actions = jnp.asarray([0, 1, 2, 0], jnp.int32)
    params = {"w": jnp.zeros((4, 3)), "v": jnp.zeros((4,))}

    def apply(p, o):
        return o @ p["w"], o @ p["v"]

    optimizer = sil.make_optimizer(config, 0.05, 1.0)
    state = sil.init(config, obs, 4, optimizer.init(params))
    state = state._replace(
        obs=state.obs.at[:4].set(obs),
        action=state.action.at[:4].set(actions),
        ret=state.ret.at[:4].set(1.0),
        episode_return=state.episode_return.at[:4].set(1.0),
        priority=state.priority.at[:4].set(1.0),
        valid=state.valid.at[:4].set(True),
    )
    state, new_params, _, metrics = jax.jit(
        lambda s, p, k: sil.train(config, s, p, s.opt_state, k, apply, optimizer)
    )(state, params, jax.random.PRNGKey(0))
    probs = jax.nn.softmax(obs @ new_params["w"])
    assert np.all(np.asarray(probs[jnp.arange(4), actions]) > 0.6)
    assert np.all(np.asarray(new_params["v"]) > 0.0)  # V moves toward R where R > V
    assert np.all(np.asarray(state.priority[:4]) < 1.0)  # refreshed to (R - V)_+
    assert int(metrics["sil/buffer_size"]) == 4

    # An empty buffer changes nothing.
    empty = sil.init(config, obs, 4, optimizer.init(params))
    _, same, _, _ = sil.train(
        config, empty, params, empty.opt_state, jax.random.PRNGKey(1), apply, optimizer
    )
    assert all(np.array_equal(same[k], params[k]) for k in params)


def test_loss_weight_scales_the_gradient_step() -> None:
    """With plain SGD the parameter change is linear in `loss_weight`: 0.1 gives a tenth of the
    step of 1.0 (the released code's PPO setting against its A2C one)."""
    import optax

    obs = jnp.eye(4, dtype=jnp.float32)
    params = {"w": jnp.zeros((4, 3)), "v": jnp.zeros((4,))}

    def apply(p, o):
        return o @ p["w"], o @ p["v"]

    deltas = {}
    for weight in (1.0, 0.1):
        config = SILConfig(enabled=True, capacity=8, batch_size=16, updates=1, loss_weight=weight)
        optimizer = optax.sgd(0.5)
        state = sil.init(config, obs, 4, optimizer.init(params))
        state = state._replace(
            obs=state.obs.at[:4].set(obs),
            action=state.action.at[:4].set(jnp.asarray([0, 1, 2, 0], jnp.int32)),
            ret=state.ret.at[:4].set(1.0),
            priority=state.priority.at[:4].set(1.0),
            valid=state.valid.at[:4].set(True),
        )
        _, new, _, _ = sil.train(
            config, state, params, state.opt_state, jax.random.PRNGKey(0), apply, optimizer
        )
        deltas[weight] = np.concatenate([np.ravel(new["w"]), np.ravel(new["v"])])
    assert np.abs(deltas[1.0]).max() > 1e-3
    np.testing.assert_allclose(deltas[0.1], 0.1 * deltas[1.0], rtol=1e-5, atol=1e-8)


def test_bad_sil_options_are_user_errors() -> None:
    with pytest.raises(UserError, match="feed-forward"):
        build({"sil": {"enabled": True}, "network": {"kind": "gru"}})
    with pytest.raises(UserError, match=r"sil\.capacity"):
        build({"sil": {"enabled": True, "capacity": 0}})
    with pytest.raises(UserError, match=r"sil\.optimizer must be 'own' or 'shared'"):
        build({"sil": {"enabled": True, "optimizer": "ppo"}})
    with pytest.raises(UserError, match=r"sil\.loss_weight"):
        build({"sil": {"enabled": True, "loss_weight": 0}})
    with pytest.raises(UserError, match=r"unknown option 'sil\.capacty'"):
        build({"sil": {"capacty": 10}})
    assert dataclasses.asdict(build({}).sil)["enabled"] is False


def _adam_counts(opt_state) -> list[np.ndarray]:
    return [
        np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(opt_state)
        if getattr(path[-1], "name", None) == "count"
    ]


@pytest.mark.parametrize("optimizer", ["own", "shared"])
def test_inside_ppo_fills_the_buffer_and_resumes_bit_identically(tmp_path, optimizer) -> None:
    """PPO + SIL on a small navix task under jit(vmap) over two seeds: successful episodes enter
    the buffer, metrics stay finite, and a checkpoint round trip continues bit for bit. The SIL
    steps advance their own Adam (`own`) or PPO's (`shared`), and nothing else."""
    import autotelic.envs as envs
    from autotelic import runs
    from autotelic.ppo import host, init_seeds, make_trainer

    config = build(
        {
            "env": "navix:Navix-Empty-5x5-v0",
            "seeds": [0, 1],
            "steps": 8 * 32 * 6,
            "ppo": {"num_envs": 8, "num_steps": 32, "update_epochs": 1, "num_minibatches": 2},
            "network": {"kind": "mlp", "hidden": 16},
            "sil": {
                "enabled": True,
                "capacity": 256,
                "window": 32,
                "batch_size": 32,
                "updates": 3,
                "optimizer": optimizer,
            },
        }
    )
    env = envs.make(config.env)
    trainer = make_trainer(config, env)
    update = jax.jit(jax.vmap(trainer.update))
    state = init_seeds(trainer, config.seeds)
    filled = np.zeros(2, int)  # per seed: updates whose SIL steps had a non-empty buffer
    for _ in range(4):
        state, metrics = update(state)
        filled += np.asarray(metrics["sil/buffer_size"]) > 0
    metrics = host(metrics)
    assert np.all(metrics["sil/buffer_size"] > 0), metrics["sil/buffer_size"]
    assert np.all(metrics["sil/best_episode_return"] > 0.5)
    assert all(np.all(np.isfinite(v)) for v in metrics.values())
    # 4 updates of 1 epoch x 2 minibatches, plus 3 SIL steps through whichever Adam in each
    # update that found the buffer non-empty (an empty buffer leaves the optimizer untouched).
    ppo_counts, sil_counts = _adam_counts(state.opt_state), _adam_counts(state.sil.opt_state)
    assert ppo_counts, "no Adam step count found in PPO's optimizer state"
    if optimizer == "shared":
        assert all(np.array_equal(c, 4 * 2 + 3 * filled) for c in ppo_counts), ppo_counts
        assert sil_counts == []
    else:
        assert all(np.all(c == 4 * 2) for c in ppo_counts), ppo_counts
        assert sil_counts and all(np.array_equal(c, 3 * filled) for c in sil_counts), sil_counts
    # Every stored transition's return is gamma^k times its episode's (terminal) reward, k >= 0.
    stored = host(state.sil)
    valid = stored.valid
    assert np.all(stored.ret[valid] <= stored.episode_return[valid] + 1e-6)
    assert np.all(stored.ret[valid] > 0)

    host_state = host(state)
    runs.save_checkpoint(tmp_path, 4, host_state, {})
    restored, _ = runs.load_checkpoint(tmp_path, 4, host_state)
    a_state, a_metrics = update(state)
    b_state, b_metrics = update(jax.device_put(restored))
    for key, value in host(a_metrics).items():
        np.testing.assert_array_equal(value, host(b_metrics)[key], err_msg=key)
    for a, b in zip(
        jax.tree_util.tree_leaves(host(a_state)),
        jax.tree_util.tree_leaves(host(b_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
