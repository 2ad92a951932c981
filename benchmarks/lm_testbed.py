"""The language-model testbed: every reward against the verifier and random controls.

    python benchmarks/lm_testbed.py --out bench-runs/lm-testbed            # the full grid
    python benchmarks/lm_testbed.py --out /tmp/smoke --rewards verifier,random \
        --seeds 0 --steps 10 --pretrain-steps 100                           # a smoke run

For each seed: pretrain a tiny transformer on the testbed's tasks (`lm-pretrain`), then run GRPO
(`lm-train`) from it with each reward. Reads each run's metrics.csv and summary.json and prints
a JSON line per run and one summary: held-out accuracy before and after, the accuracy curve over
steps, the collapse step where one occurs, and seconds per GRPO step (median, excluding the
first). Writes results.json and curves.png into --out. Runs whose directory already holds a
summary are read, not rerun.

This demonstrates mechanisms on a model of about 100k parameters; it says nothing about gains on
large models. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotelic import runs

ALL_REWARDS = (
    "verifier",
    "random",
    "majority",
    "self_certainty",
    "neg_entropy",
    "rlpr",
    "info_gain",
    "co_reward",
    "self_judge",
    "verifier,memory_novelty",
)


def pretrained_model(out: Path, seed: int, args: argparse.Namespace) -> Path:
    from autotelic.lm.testbed import PretrainConfig, pretrain

    model = out / f"pretrain-seed{seed}"
    if not (model / "summary.json").exists():
        pretrain(
            PretrainConfig(
                task=args.task,
                max_operand=args.max_operand,
                steps=args.pretrain_steps,
                batch_size=args.pretrain_batch,
                eval_every=args.pretrain_steps,
                seed=seed,
                out=str(model),
            ),
            quiet=True,
        )
    return model


def grpo_run(model: Path, rewards: str, seed: int, out: Path, args: argparse.Namespace) -> Path:
    from autotelic.lm.grpo import GRPOConfig, train

    run = out / f"{rewards.replace(',', '+')}-seed{seed}"
    if not (run / "summary.json").exists():
        train(
            GRPOConfig(
                model=str(model),
                rewards=tuple(rewards.split(",")),
                steps=args.steps,
                prompts_per_step=args.prompts,
                group_size=args.group_size,
                learning_rate=args.lr,
                loss=args.loss,
                eval_every=args.eval_every,
                eval_size=args.eval_size,
                seed=seed,
                out=str(run),
            ),
            quiet=True,
        )
    return run


def read_run(run: Path) -> dict[str, Any]:
    summary = json.loads((run / "summary.json").read_text())
    rows = runs.read_metrics(run)
    curve = [(0, summary["initial_accuracy"])] + [
        (int(r["update"]), r["eval_accuracy"]) for r in rows if not np.isnan(r["eval_accuracy"])
    ]
    return {
        "initial_accuracy": summary["initial_accuracy"],
        "final_accuracy": summary["final_accuracy"],
        "peak_accuracy_step": summary["peak_accuracy_step"],
        "collapse_step": summary["collapse_step"],
        "agreement_saturation_step": summary["agreement_saturation_step"],
        "seconds_per_step": summary["seconds_per_step"],
        "final_reward": rows[-1]["reward"] if rows else None,
        "curve": curve,
    }


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for rewards, per_seed in results.items():
        steps = [s for s, _ in per_seed[0]["curve"]]
        curves = np.array([[a for _, a in r["curve"]] for r in per_seed])
        axis.plot(steps, curves.mean(axis=0), label=rewards)
    axis.set_xlabel("GRPO step")
    axis.set_ylabel("held-out accuracy (greedy)")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--rewards", default=";".join(ALL_REWARDS), help="';'-separated runs")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--task", default="chain")
    parser.add_argument("--max-operand", type=int, default=29)
    parser.add_argument("--pretrain-steps", type=int, default=800)
    parser.add_argument("--pretrain-batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--loss", default="grpo")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-size", type=int, default=256)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    reward_runs = [r.strip() for r in args.rewards.split(";") if r.strip()]
    tick = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {r: [] for r in reward_runs}
    for seed in seeds:
        model = pretrained_model(out, seed, args)
        for rewards in reward_runs:
            result = read_run(grpo_run(model, rewards, seed, out, args))
            results[rewards].append(result)
            print(json.dumps({"rewards": rewards, "seed": seed, **result}), flush=True)
    table = {}
    for rewards, per_seed in results.items():
        change = [r["final_accuracy"] - r["initial_accuracy"] for r in per_seed]
        table[rewards] = {
            "accuracy_change_mean": float(np.mean(change)),
            "accuracy_change_per_seed": change,
            "collapse_steps": [r["collapse_step"] for r in per_seed],
            "seconds_per_step_median": float(np.median([r["seconds_per_step"] for r in per_seed])),
        }
    summary = {
        "task": args.task,
        "max_operand": args.max_operand,
        "seeds": seeds,
        "steps": args.steps,
        "prompts_x_group": f"{args.prompts}x{args.group_size}",
        "wall_seconds": round(time.perf_counter() - tick, 1),
        "results": table,
    }
    runs.atomic_write_text(out / "results.json", json.dumps({**summary, "runs": results}, indent=2))
    plot(results, out / "curves.png")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
