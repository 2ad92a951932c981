"""Learning speed: env steps and wall time for PPO to reach a mean episodic return of 0.9.

    python benchmarks/learning.py --env navix:Navix-DoorKey-8x8-v0 --seeds 0,1,2,3,4 \
        --steps 3000000 --out bench-runs/doorkey8

Trains all seeds vmapped in one process through the real `autotelic train`, then reads each
seed's metrics.csv. "Reached" = the first update at which the mean of `episode_return_mean` over
the last 10 updates is >= the threshold. Prints a JSON line with per-seed results and the IQM with
a 95% bootstrap interval over seeds. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from autotelic import runs
from autotelic.stats import bootstrap_ci


def steps_to_threshold(rows: list[dict[str, float]], threshold: float, window: int = 10):
    returns = np.asarray([r["episode_return_mean"] for r in rows])
    for i in range(len(rows)):
        recent = returns[max(0, i - window + 1) : i + 1]
        if i + 1 >= window and recent.mean() >= threshold:
            return rows[i]["env_steps"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="navix:Navix-DoorKey-8x8-v0")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=3_000_000)
    parser.add_argument("--reward", default="none")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--out", required=True)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    tick = time.perf_counter()
    if not out.exists():
        command = [sys.executable, "-m", "autotelic", "train", "--env", args.env]
        command += ["--seeds", args.seeds, "--steps", str(args.steps), "--reward", args.reward]
        command += ["--out", str(out), "--quiet", *args.overrides]
        subprocess.run(command, check=True)
    wall = time.perf_counter() - tick
    run_dirs = runs.run_dirs_for(out, tuple(seeds))
    per_seed = []
    for seed, run_dir in zip(seeds, run_dirs, strict=True):
        rows = runs.read_metrics(run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        per_seed.append(
            {
                "seed": seed,
                "steps_to_threshold": steps_to_threshold(rows, args.threshold),
                "final_return": summary["final_return"],
                "success_rate": summary["success_rate"],
            }
        )
    reached = [p["steps_to_threshold"] for p in per_seed if p["steps_to_threshold"] is not None]
    finals = [p["final_return"] for p in per_seed]
    result = {
        "env": args.env,
        "reward": args.reward,
        "steps_budget": args.steps,
        "threshold": args.threshold,
        "seeds_reached": f"{len(reached)}/{len(seeds)}",
        "steps_to_threshold_iqm_ci": bootstrap_ci([reached]) if reached else None,
        "final_return_iqm_ci": bootstrap_ci([finals]),
        "wall_seconds_all_seeds_vmapped": round(wall, 1),
        "per_seed": per_seed,
        "overrides": args.overrides,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
