"""Host-path throughput: env steps/s of a Gymnasium env stepped alone, in the worker pool, and
under PPO training through `autotelic.host_driver`, side by side.

    python benchmarks/host_throughput.py                              # MiniGrid DoorKey-8x8
    python benchmarks/host_throughput.py --env gym:NetHackScore-v0 --network nethack
    python benchmarks/host_throughput.py --num-envs 32 --workers 2 --seconds 20

1. alone:  `num_envs` envs in this process, random actions, `env.step` and reset on episode end
           (what the env costs without autotelic);
2. pool:   the same in `HostPool` worker processes (adds pipes, encoding, captions, autoreset);
3. train:  PPO updates of one seed (act, pool step, observe per env step; learn per update),
           after one warm-up update that compiles.

Each measurement runs for about `--seconds`. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import jax
import numpy as np

from autotelic import config as config_module
from autotelic.envs.host import HostPool
from autotelic.host_driver import make_host_update, make_pools
from autotelic.ppo import init_seeds
from autotelic.train import prepare


def env_alone(env, num_envs: int, seconds: float) -> float:
    """Steps/s of `num_envs` gymnasium envs stepped in this process with random actions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_envs = [env.make_gym() for _ in range(num_envs)]
    rng = np.random.default_rng(0)
    for i, e in enumerate(gym_envs):
        e.reset(seed=i)
    steps, tick = 0, time.perf_counter()
    while time.perf_counter() - tick < seconds:
        for e in gym_envs:
            _, _, terminated, truncated, _ = e.step(int(rng.integers(e.action_space.n)))
            if terminated or truncated:
                e.reset()
        steps += num_envs
    rate = steps / (time.perf_counter() - tick)
    for e in gym_envs:
        e.close()
    return rate


def pool_alone(env, num_envs: int, seconds: float) -> float:
    """Steps/s of the worker pool with random actions."""
    rng = np.random.default_rng(0)
    with HostPool(env, num_envs, seed=0) as pool:
        pool.reset()
        steps, tick = 0, time.perf_counter()
        while time.perf_counter() - tick < seconds:
            pool.step(rng.integers(env.spec.num_actions, size=num_envs))
            steps += num_envs
        return steps / (time.perf_counter() - tick)


def training(config, seconds: float) -> tuple[float, float]:
    """(steps/s of PPO updates after warm-up, seconds of the first update incl. compile)."""
    setup = prepare(config)
    update = make_host_update(setup.trainer, config, make_pools(setup.env, config, None))
    try:
        state = init_seeds(setup.trainer, config.seeds)
        tick = time.perf_counter()
        state, metrics = update(state)
        jax.block_until_ready(metrics)
        first = time.perf_counter() - tick
        updates, tick = 0, time.perf_counter()
        while updates == 0 or time.perf_counter() - tick < seconds:
            state, metrics = update(state)
            jax.block_until_ready(metrics)
            updates += 1
        return updates * config.batch_size / (time.perf_counter() - tick), first
    finally:
        update.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="gym:MiniGrid-DoorKey-8x8-v0")
    parser.add_argument("--network", default="mlp")
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--num-steps", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    data = {
        "env": args.env,
        "env_options": {"workers": args.workers} if args.workers else {},
        "steps": 10**9,
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
    env = prepare(config).env

    alone = env_alone(env, config.ppo.num_envs, args.seconds)
    pooled = pool_alone(env, config.ppo.num_envs, args.seconds)
    trained, first = training(config, args.seconds)
    result = {
        "env": config.env,
        "network": config.network.kind,
        "num_envs": config.ppo.num_envs,
        "num_steps": config.ppo.num_steps,
        "update_epochs": config.ppo.update_epochs,
        "workers": env.workers,
        "env_alone_sps": round(alone),
        "pool_sps": round(pooled),
        "train_sps": round(trained),
        "first_update_seconds": round(first, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
    }
    print(f"env alone (1 process):  {alone:10,.0f} steps/s")
    print(f"worker pool:            {pooled:10,.0f} steps/s")
    print(f"PPO on the host path:   {trained:10,.0f} steps/s (first update {first:.1f} s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
