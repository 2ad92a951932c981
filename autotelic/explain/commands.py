"""`autotelic explain` and `autotelic report`.

    autotelic explain RUN_DIR [--episodes N] [--seed S] [--shapley-samples M]
                      [--players channels|cells] [--eval-seed E] [--max-steps T] [--no-report]
    autotelic report  RUN_DIR

RUN_DIR is a run directory, a group directory of several seeds (`group.json` + `seed_<s>/`;
`explain` explains every seed, or only `--seed S`), or for `report` also a bench directory
(`results.json`). Bad input (a missing or incomplete directory, a config this version cannot
read, a player set too large for exact Shapley values without `--shapley-samples`) is one message
and exit status 2, with nothing written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .evaluate import DEFAULT_EPISODES, DEFAULT_MAX_STEPS, PLAYER_KINDS, ExplainOptions


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the `explain` and `report` commands to `subparsers`."""
    explain = subparsers.add_parser(
        "explain",
        help="record evaluation episodes of a trained run and write their attributions",
    )
    explain.add_argument("run_dir", metavar="RUN_DIR", help="run (or group of seeds) directory")
    explain.add_argument(
        "--episodes",
        type=int,
        default=DEFAULT_EPISODES,
        help=f"evaluation episodes to record (default {DEFAULT_EPISODES})",
    )
    explain.add_argument("--seed", type=int, help="only this seed of a group directory")
    explain.add_argument(
        "--shapley-samples",
        type=int,
        default=0,
        metavar="M",
        help="observation Shapley values from M sampled permutations with 95%% intervals "
        "(default 0: exact enumeration)",
    )
    explain.add_argument(
        "--players",
        choices=PLAYER_KINDS,
        default="channels",
        help="observation Shapley players: channels (or vector features) or grid cells",
    )
    explain.add_argument(
        "--eval-seed", type=int, default=0, help="seed of the evaluation randomness (default 0)"
    )
    explain.add_argument(
        "--max-steps",
        type=int,
        default=DEFAULT_MAX_STEPS,
        help=f"most steps explained per episode (default {DEFAULT_MAX_STEPS})",
    )
    explain.add_argument(
        "--no-report", action="store_true", help="do not rewrite RUN_DIR/report.html afterwards"
    )
    explain.set_defaults(func=cmd_explain)

    report = subparsers.add_parser(
        "report", help="write RUN_DIR/report.html, one self-contained page of plots"
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="run, group or bench directory")
    report.set_defaults(func=cmd_report)


def cmd_explain(args: argparse.Namespace) -> int:
    from .evaluate import explain
    from .report import write_report

    options = ExplainOptions(
        episodes=args.episodes,
        shapley_samples=args.shapley_samples,
        players=args.players,
        eval_seed=args.eval_seed,
        max_steps=args.max_steps,
    )
    written = explain(Path(args.run_dir), options, seed=args.seed)
    for path in written:
        print(f"explanations: {path.resolve()}")
    if not args.no_report:
        print(f"report: {write_report(Path(args.run_dir)).resolve()}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(f"report: {write_report(Path(args.run_dir)).resolve()}")
    return 0
