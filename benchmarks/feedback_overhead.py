"""Training env steps/s with LLM-feedback annotation on vs off, on the host path.

    python benchmarks/feedback_overhead.py                                   # NetHackScore-v0
    python benchmarks/feedback_overhead.py --env gym:MiniGrid-DoorKey-8x8-v0 --network mlp
    python benchmarks/feedback_overhead.py --rewards none,retrieval,classifier --repeats 2
    python benchmarks/feedback_overhead.py --repeats 5 \
        --rewards "none;classifier;classifier:feedback.max_train_share=1"

Each reward setting is trained through the real `autotelic train` in its own process, alternating
settings when `--repeats` > 1 so slow drifts of the machine hit all of them alike. "off" is
`--reward none` (extrinsic only: no captions are labelled, no reward model). "on" is a feedback
source with the embedded annotator: captions go to the label store, the annotator labels them in
the background, the reward model trains in its own thread, and the learner reads the newest table.
Steps/s are read from each run's timing.csv, leaving out the first `--skip` updates (compilation
and start-up). A setting is a reward, optionally followed by `:` and overrides for it alone
(`classifier:feedback.max_train_share=1`); settings are separated by `;` when any has overrides,
else by `,`. Prints one JSON line. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def steady_sps(run_dir: Path, skip: int) -> float:
    with (run_dir / "timing.csv").open() as f:
        rows = list(csv.DictReader(f))[skip:]
    if not rows:
        raise SystemExit(f"{run_dir}: fewer than {skip + 1} updates; raise --steps")
    seconds = sum(float(r["wall_seconds"]) for r in rows)
    steps = sum(float(r["wall_seconds"]) * float(r["steps_per_second"]) for r in rows)
    return steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="gym:NetHackScore-v0")
    parser.add_argument("--network", default="nethack")
    parser.add_argument("--rewards", default="none,retrieval")
    parser.add_argument("--steps", type=int, default=65536)
    parser.add_argument("--num-envs", type=int, default=16)
    parser.add_argument("--skip", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    rewards = args.rewards.split(";" if ";" in args.rewards else ",")
    results: dict[str, list[float]] = {r: [] for r in rewards}
    with tempfile.TemporaryDirectory(prefix="feedback-overhead-") as tmp:
        for repeat in range(args.repeats):
            for reward in rewards:
                name, _, extra = reward.partition(":")
                run_dir = Path(tmp) / f"{rewards.index(reward)}-{repeat}"
                store = Path(tmp) / f"labels-{rewards.index(reward)}-{repeat}.sqlite"
                command = [
                    sys.executable, "-m", "autotelic", "train", "--env", args.env,
                    "--reward", name, "--steps", str(args.steps), "--num-envs",
                    str(args.num_envs), "--out", str(run_dir), "--quiet",
                    f"network.kind={args.network}", f"feedback.store={store}", *args.overrides,
                    *extra.split(),
                ]  # fmt: skip
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                results[reward].append(steady_sps(run_dir, args.skip))
    base = sum(results[rewards[0]]) / len(results[rewards[0]])
    print(
        json.dumps(
            {
                "env": args.env,
                "num_envs": args.num_envs,
                "steps": args.steps,
                "steps_per_second": results,
                "slowdown_vs_" + rewards[0]: {
                    r: 1 - (sum(v) / len(v)) / base for r, v in results.items() if r != rewards[0]
                },
                "machine": f"{platform.machine()} {os.cpu_count()} cpus",
                "date": time.strftime("%Y-%m-%d"),
            }
        )
    )


if __name__ == "__main__":
    main()
