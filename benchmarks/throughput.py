"""Throughput: env steps/s of PPO and of the same env stepped alone with random actions, side by
side in one process.

    python benchmarks/throughput.py                       # CNN, 4 epochs, 1024 envs, DoorKey-8x8
    python benchmarks/throughput.py --network mlp --num-envs 256 --reward rnd
    python benchmarks/throughput.py --network mlp --reward rnd sources.rnd.hidden=64

Each measurement runs `--repeats` timed calls after two warm-up calls (which compile), and
reports the median. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax

from autotelic import config as config_module
from autotelic import envs
from autotelic.envs.base import step_envs
from autotelic.ppo import init_seeds, make_trainer
from autotelic.rewards.base import build_sources


def time_calls(fn, state, repeats: int) -> tuple[list[float], object]:
    for _ in range(2):
        state = fn(state)
        jax.block_until_ready(state)
    seconds = []
    for _ in range(repeats):
        tick = time.perf_counter()
        state = fn(state)
        jax.block_until_ready(state)
        seconds.append(time.perf_counter() - tick)
    return seconds, state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="navix:Navix-DoorKey-8x8-v0")
    parser.add_argument("--network", default="cnn")
    parser.add_argument("--num-envs", type=int, default=1024)
    parser.add_argument("--num-steps", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--reward", default="")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. sources.rnd.hidden=64",
    )
    args = parser.parse_args()

    rewards = [r for r in args.reward.split(",") if r]
    data = {
        "env": args.env,
        "rewards": rewards,
        "ppo": {
            "num_envs": args.num_envs,
            "num_steps": args.num_steps,
            "update_epochs": args.epochs,
        },
        "network": {"kind": args.network},
    }
    for assignment in args.overrides:
        config_module.apply_override(data, assignment)
    config = config_module.build(data)
    env = envs.make(config.env, **config.env_options)
    batch = config.batch_size

    # 1. the env alone, random actions, same number of envs and steps per call
    def random_rollout(carry):
        state, key = carry

        def step(c, _):
            state, key = c
            key, k_action, k_env = jax.random.split(key, 3)
            actions = jax.random.randint(k_action, (args.num_envs,), 0, env.spec.num_actions)
            state, _ = step_envs(env, jax.random.split(k_env, args.num_envs), state, actions)
            return (state, key), None

        (state, key), _ = jax.lax.scan(step, (state, key), None, args.num_steps)
        return state, key

    key = jax.random.PRNGKey(0)
    env_state, _ = jax.vmap(env.reset)(jax.random.split(key, args.num_envs))
    env_seconds, _ = time_calls(jax.jit(random_rollout), (env_state, key), args.repeats)

    # 2. PPO: one full update (rollout + GAE + epochs + source updates) per call
    sources, params = build_sources(config.rewards, config.sources, env.spec)
    trainer = make_trainer(config, env, sources, params, config.rewards)
    update = jax.jit(jax.vmap(lambda s: trainer.update(s)[0]))
    state = init_seeds(trainer, (0,))
    ppo_seconds, _ = time_calls(update, state, args.repeats)

    env_sps = batch / statistics.median(env_seconds)
    ppo_sps = batch / statistics.median(ppo_seconds)
    result = {
        "env": args.env,
        "network": args.network,
        "rewards": rewards,
        "num_envs": args.num_envs,
        "num_steps": args.num_steps,
        "epochs": args.epochs,
        "env_random_steps_per_second": round(env_sps),
        "ppo_steps_per_second": round(ppo_sps),
        "ppo_seconds_per_update_median": round(statistics.median(ppo_seconds), 3),
        "repeats": args.repeats,
        "jax": jax.__version__,
        "devices": [d.platform for d in jax.devices()],
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
