"""The `autotelic` command line.

    autotelic train [--env ID] [--reward SOURCES] [--steps N] [--seed S | --seeds LIST]
                    [--num-envs E] [--self-imitation] [--out DIR] [--config FILE] [key=value ...]
    autotelic train --resume RUN_DIR
    autotelic bench SPEC.yaml [--out DIR] [--address RAY_ADDRESS] [--cpus-per-run N] [--quiet]
                    [--summarize]
    autotelic envs
    autotelic rewards
    autotelic explain RUN_DIR [--episodes N] [--seed S] [--shapley-samples M] ...
    autotelic report RUN_DIR
    autotelic labels count|list|export [--store PATH] ...
    autotelic lm-pretrain [--task add|chain] [--steps N] [--out DIR] ...
    autotelic lm-train --model DIR --reward verifier|majority|... [--out DIR] ...

Bad input prints one message and exits with status 2; nothing is written before the input has
been checked.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from .errors import UserError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for every user error
        self.print_usage(sys.stderr)
        print(f"autotelic: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autotelic", description="RL in which the agent makes its own reward.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train an agent with PPO (JAX-native or gym: envs)")
    train.add_argument("--env", help="environment id, e.g. navix:Navix-DoorKey-8x8-v0")
    train.add_argument(
        "--reward",
        help="intrinsic reward sources, comma-separated (none or omitted: extrinsic only)",
    )
    train.add_argument("--steps", type=int, help="total env steps per seed")
    train.add_argument("--seed", type=int, help="one seed")
    train.add_argument("--seeds", help="several seeds, trained vmapped in one process: 0,1,2")
    train.add_argument("--num-envs", type=int, help="parallel envs per seed")
    train.add_argument("--out", help="run directory (several seeds: one subdirectory each)")
    train.add_argument("--config", help="YAML config file; flags and key=value override it")
    train.add_argument(
        "--self-imitation",
        action="store_true",
        help="add self-imitation learning (replay of the best episodes; options sil.*=...)",
    )
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument("--quiet", action="store_true", help="no live progress")
    train.add_argument(
        "overrides", nargs="*", metavar="key=value", help="e.g. ppo.learning_rate=3e-4"
    )

    bench = commands.add_parser(
        "bench", help="train a grid of tasks x reward sources x seeds from a spec, with Ray"
    )
    bench.add_argument("spec", metavar="SPEC.yaml", help="the bench spec (see autotelic.bench)")
    bench.add_argument("--out", help="output directory (default: runs/bench-<spec name>)")
    bench.add_argument(
        "--address", help="Ray cluster to run on, e.g. auto or HOST:6379 (default: local Ray)"
    )
    bench.add_argument(
        "--cpus-per-run",
        type=float,
        default=1.0,
        help="CPUs each configuration (all its seeds) reserves in Ray (default 1)",
    )
    bench.add_argument("--quiet", action="store_true", help="no progress lines")
    bench.add_argument(
        "--summarize",
        action="store_true",
        help="train nothing: write the results of what --out holds now (finished, partial and "
        "pending configurations)",
    )

    commands.add_parser("envs", help="list the environments")
    commands.add_parser("rewards", help="list the reward sources")
    # Commands of the subsystems register themselves (each module imports its heavy
    # dependencies only when its command runs).
    from .explain.commands import add_commands as add_explain_commands
    from .feedback.commands import add_commands as add_feedback_commands
    from .lm.commands import add_commands as add_lm_commands

    add_explain_commands(commands)
    add_feedback_commands(commands)
    add_lm_commands(commands)
    return parser


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(
            f"--seeds must be comma-separated integers, e.g. 0,1,2; got {text!r}."
        ) from None


def _train_config(args: argparse.Namespace) -> Any:
    from . import config as config_module

    data: dict[str, Any] = config_module.load_yaml(args.config) if args.config else {}
    if args.env is not None:
        data["env"] = args.env
    if args.reward is not None:
        names = [r.strip() for r in args.reward.split(",") if r.strip()]
        data["rewards"] = [] if names in ([], ["none"]) else names
    if args.steps is not None:
        data["steps"] = args.steps
    if args.seed is not None and args.seeds is not None:
        raise UserError("give --seed or --seeds, not both.")
    if args.seed is not None:
        data["seeds"] = [args.seed]
    if args.seeds is not None:
        data["seeds"] = _seeds(args.seeds)
    if args.num_envs is not None:
        data.setdefault("ppo", {})["num_envs"] = args.num_envs
    if args.self_imitation:
        data.setdefault("sil", {})["enabled"] = True
    for assignment in args.overrides:
        config_module.apply_override(data, assignment)
    if args.out is not None:
        data["out"] = args.out
    config = config_module.build(data)
    if not config.out:
        from dataclasses import replace

        name = config.env.split(":")[-1]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        tag = "-".join(config.rewards) or "extrinsic"
        tag += "-sil" if config.sil.enabled else ""
        config = replace(config, out=str(Path("runs") / f"{name}-{tag}-{stamp}"))
    return config


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainingStoppedError, load_run_config, train

    if args.resume:
        given = [
            flag
            for flag, value in (
                ("--env", args.env),
                ("--reward", args.reward),
                ("--steps", args.steps),
                ("--seed", args.seed),
                ("--seeds", args.seeds),
                ("--num-envs", args.num_envs),
                ("--out", args.out),
                ("--config", args.config),
                ("--self-imitation", args.self_imitation or None),
            )
            if value is not None
        ]
        if given or args.overrides:
            raise UserError(
                f"--resume continues a run exactly as configured; drop {', '.join(given) or ''}"
                f"{' and ' if given and args.overrides else ''}"
                f"{'the key=value overrides' if args.overrides else ''}."
            )
        config, out = load_run_config(Path(args.resume))
        resume = True
    else:
        config = _train_config(args)
        out = Path(config.out)
        resume = False
    try:
        summaries = train(config, out, resume=resume, quiet=args.quiet)
    except TrainingStoppedError as stop:
        print(f"autotelic: {stop}", file=sys.stderr)
        return stop.exit_code
    for summary in summaries:
        ret = summary["final_return"]
        success = summary["success_rate"]
        print(
            f"seed {summary['seed']}: {summary['env_steps']:,} env steps in "
            f"{summary['wall_seconds']:.0f} s ({summary['steps_per_second'] or 0:,.0f} steps/s), "
            f"final return {'n/a' if ret is None else f'{ret:.3f}'}, "
            f"success {'n/a' if success is None else f'{success:.2f}'}"
        )
    print(f"results: {out.resolve()}")
    if (out / "report.html").exists():
        print(f"report: {(out / 'report.html').resolve()}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench

    return bench(
        Path(args.spec),
        out=Path(args.out) if args.out else None,
        address=args.address,
        cpus_per_run=args.cpus_per_run,
        quiet=args.quiet,
        summarize_only=args.summarize,
    )


def _cmd_envs(args: argparse.Namespace) -> int:
    from .envs import ALIASES, NAMESPACES, list_envs

    listing = list_envs()
    for namespace, ids in listing.items():
        print(f"{namespace}  ({NAMESPACES[namespace][2]})")
        if not ids:
            print("  (package not installed)")
        for env_id in ids:
            print(f"  {env_id}")
    print("aliases")
    for alias, target in ALIASES.items():
        print(f"  {alias} -> {target}")
    return 0


def _cmd_rewards(args: argparse.Namespace) -> int:
    from .rewards.base import REGISTRY, source_names

    names = source_names()
    if not names:
        print("no intrinsic reward sources are registered; training uses the extrinsic reward.")
    for name in names:
        print(f"{name:12s} {REGISTRY[name].summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = _parser()
    # key=value overrides may come anywhere among the flags, which argparse's positional
    # handling does not allow; collect the leftovers here instead.
    args, extras = parser.parse_known_args(argv)
    unknown = [e for e in extras if e.startswith("-")]
    if unknown or (extras and args.command != "train"):
        parser.error(f"unrecognized arguments: {' '.join(unknown or extras)}")
    if args.command == "train":
        args.overrides = [*args.overrides, *extras]
    handlers = {
        "train": _cmd_train,
        "bench": _cmd_bench,
        "envs": _cmd_envs,
        "rewards": _cmd_rewards,
    }
    handler = handlers.get(args.command) or args.func
    try:
        return handler(args)
    except UserError as error:
        print(f"autotelic: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
