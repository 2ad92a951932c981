"""Seeds on one device against seeds spread over one device each (`devices=1` against the default
`devices=0`), measured through `autotelic train` itself: each run is a fresh process (the CPU
devices are fixed when JAX starts), its steady per-update times are read from timing.csv.

    python benchmarks/seed_devices.py --env navix:Navix-DoorKey-16x16-v0 --seeds 0,1,2,3,4 \\
        --updates 20 --spec benchmarks/specs/hard-exploration.yaml
    python benchmarks/seed_devices.py --reward episodic \
        --spec benchmarks/specs/hard-exploration.yaml

`--spec` takes the overrides of a bench spec (the `sources.<name>.*` ones only for the sources
the run uses); further `key=value` arguments follow them. The two settings alternate for
`--repeats` rounds so that a change in the machine's load reaches both. Prints one line per run and
a JSON summary (median ms per update and env steps/s of each setting). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def spec_overrides(path: str | None, rewards: list[str]) -> list[str]:
    if path is None:
        return []
    overrides = yaml.safe_load(Path(path).read_text()).get("overrides", {}) or {}
    kept = []
    for key, value in overrides.items():
        if key.startswith("sources.") and key.split(".")[1] not in rewards:
            continue
        kept.append(f"{key}={value}")
    return kept


def batch_size(args: argparse.Namespace, overrides: list[str]) -> int:
    """Env steps per update of the run's config (so that `--updates` is what runs)."""
    from autotelic import config

    data: dict = {"env": args.env, "rewards": [r for r in args.reward.split(",") if r]}
    for override in overrides:
        config.apply_override(data, override)
    return config.build(data).batch_size


def one_run(args: argparse.Namespace, overrides: list[str], devices: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        steps = args.updates * batch_size(args, overrides)
        command = [
            sys.executable, "-m", "autotelic", "train", "--env", args.env, "--seeds", args.seeds,
            "--steps", str(steps), "--out", str(out), "--quiet",
            *(["--reward", args.reward] if args.reward else []), *overrides,
            f"devices={devices}", "checkpoint_every=1000000",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"run failed ({result.returncode}):\n{result.stderr[-2000:]}")
        first = sorted(out.glob("seed_*"))[0]
        summary = json.loads((first / "summary.json").read_text())
        with open(first / "timing.csv") as handle:
            rows = [line.split(",") for line in handle.read().splitlines()[1:]]
        steady = [float(r[1]) for r in rows if r[3] == "0"]
        seeds = len(args.seeds.split(","))
        per_update = statistics.median(steady)
        steps = summary["env_steps"] / summary["updates"] * seeds
        return {
            "devices": summary["devices"],
            "ms_per_update": per_update * 1e3,
            "env_steps_per_second": steps / per_update,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="navix:Navix-DoorKey-16x16-v0")
    parser.add_argument("--reward", default="", help="comma-separated sources (default none)")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--updates", type=int, default=20, help="updates per run")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of both settings")
    parser.add_argument("--spec", help="take the overrides of this bench spec")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    rewards = [r for r in args.reward.split(",") if r]
    overrides = spec_overrides(args.spec, rewards) + args.overrides
    results: dict[str, list[dict[str, float]]] = {"one device": [], "spread": []}
    for _ in range(args.repeats):
        for label, devices in (("one device", 1), ("spread", 0)):
            run = one_run(args, overrides, devices)
            results[label].append(run)
            print(
                f"{label}: {run['devices']} device(s), {run['ms_per_update']:.0f} ms/update, "
                f"{run['env_steps_per_second']:,.0f} env steps/s",
                flush=True,
            )
    summary = {
        "env": args.env,
        "reward": args.reward or "none",
        "seeds": args.seeds,
        "overrides": overrides,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    for label, runs in results.items():
        summary[label] = {
            "devices": runs[0]["devices"],
            "ms_per_update_median": round(statistics.median(r["ms_per_update"] for r in runs)),
            "env_steps_per_second_median": round(
                statistics.median(r["env_steps_per_second"] for r in runs)
            ),
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
