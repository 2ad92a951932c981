"""Cost of one reward source per rollout: its `reward` over T steps of N envs, and its `update`.

    python benchmarks/source_cost.py --reward episodic --env navix:Navix-DoorKey-16x16-v0
    python benchmarks/source_cost.py --reward episodic env_options.observation=first_person \
        sources.episodic.trunk=mlp

The transitions are real: N envs stepped with uniformly random actions, T steps per rollout.
`--warm-rollouts` rollouts go through the source first (rewards and updates, untimed), so
per-episode state such as the episodic memory is as full as it would be that far into a run of
a random policy. Then `--repeats` further rollouts are timed, each as one compiled call of the
rewards and one of the update; the medians are reported. Rewards are scored as the training loop
scores them: a whole rollout at once where the source can (`rollout_reward`), else one step at a
time (`--step-by-step` forces that). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time

import jax

from autotelic import config as config_module
from autotelic import envs
from autotelic.rewards.base import build_sources, random_rollouts, scan_reward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="navix:Navix-DoorKey-16x16-v0")
    parser.add_argument("--reward", required=True, help="one source, e.g. episodic")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--num-steps", type=int, default=64)
    parser.add_argument("--warm-rollouts", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--step-by-step",
        action="store_true",
        help="score with `reward` one step at a time even where the source scores a rollout at "
        "once (the training loop's path)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    data = {"env": args.env, "rewards": [args.reward]}
    for assignment in args.overrides:
        config_module.apply_override(data, assignment)
    config = config_module.build(data)
    env = envs.make(config.env, **config.env_options)
    (source,), _ = build_sources(config.rewards, config.sources, env.spec)
    num_envs, num_steps = args.num_envs, args.num_steps

    collect = random_rollouts(env, num_envs, num_steps)
    rewards_at_once = source.rollout_reward is not None and not args.step_by_step
    # At once is what the training loop runs where a source can.
    score = source.rollout_reward if rewards_at_once else functools.partial(scan_reward, source)
    rewards = jax.jit(lambda state, batch: score(state, batch)[::-1])
    update = jax.jit(source.update)

    key = jax.random.PRNGKey(0)
    key, k_reset, k_source = jax.random.split(key, 3)
    env_state, obs = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))
    carry = (env_state, obs, key)
    state = source.init(k_source, env.spec, num_envs)
    reward_seconds, update_seconds = [], []
    for rollout in range(args.warm_rollouts + args.repeats):
        carry, batch = collect(carry)
        jax.block_until_ready(batch)
        tick = time.perf_counter()
        state, reward = rewards(state, batch)
        jax.block_until_ready(reward)
        middle = time.perf_counter()
        state, metrics = update(state, batch, jax.random.fold_in(key, rollout))
        jax.block_until_ready(metrics)
        if rollout >= args.warm_rollouts:
            reward_seconds.append(middle - tick)
            update_seconds.append(time.perf_counter() - middle)

    batch_size = num_envs * num_steps
    reward_ms = 1e3 * statistics.median(reward_seconds)
    update_ms = 1e3 * statistics.median(update_seconds)
    result = {
        "env": args.env,
        "reward": args.reward,
        "overrides": args.overrides,
        "num_envs": num_envs,
        "num_steps": num_steps,
        "warm_rollouts": args.warm_rollouts,
        "scored": "rollout" if rewards_at_once else "step by step",
        "reward_ms_per_rollout": round(reward_ms, 1),
        "update_ms_per_rollout": round(update_ms, 1),
        "source_steps_per_second": round(batch_size / ((reward_ms + update_ms) / 1e3)),
        "repeats": args.repeats,
        "jax": jax.__version__,
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
