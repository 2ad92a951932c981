"""`autotelic lm-pretrain` and `autotelic lm-train`.

    autotelic lm-pretrain [--task add|chain] [--max-operand N] [--steps N] [--batch-size B]
                          [--lr LR] [--d-model D] [--layers L] [--heads H] [--judge-fraction F]
                          [--eval-every N] [--eval-size N] [--seed S] [--threads T] [--out DIR]
                          [--quiet]
    autotelic lm-train --model DIR --reward NAMES [--reward-weights W,...]
                       [--reward-option NAME.KEY=VALUE ...] [--tasks FILE.jsonl | --task KIND]
                       [--max-operand N] [--steps N] [--prompts B] [--group-size G] [--lr LR]
                       [--loss grpo|dr_grpo] [--clip EPS] [--kl BETA] [--epochs E]
                       [--turn-gamma G] [--temperature T] [--max-new-tokens N]
                       [--eval-every N] [--eval-size N] [--collapse-drop D] [--seed S]
                       [--threads T] [--out DIR] [--quiet]

`add_commands(subparsers)` adds both to the main parser; each command returns an exit status and
raises UserError for bad input (exit 2, one message).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import UserError

EXIT_INTERRUPTED = 130


def _torch_available() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise UserError(
            "the language-model commands need PyTorch: pip install 'autotelic[lm]'."
        ) from None


def add_commands(subparsers: Any) -> None:
    pretrain = subparsers.add_parser(
        "lm-pretrain", help="pretrain the tiny testbed transformer on generated arithmetic"
    )
    pretrain.add_argument("--task", default="add", help="testbed task kind: add or chain")
    pretrain.add_argument("--max-operand", type=int, default=99, help="operands are 0..N")
    pretrain.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    pretrain.add_argument("--batch-size", type=int, default=128, help="rows per step")
    pretrain.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    pretrain.add_argument("--d-model", type=int, default=64, help="width of the transformer")
    pretrain.add_argument("--layers", type=int, default=2, help="transformer blocks")
    pretrain.add_argument("--heads", type=int, default=4, help="attention heads")
    pretrain.add_argument(
        "--judge-fraction",
        type=float,
        default=0.2,
        help="share of rows teaching the judging format used by the self_judge reward",
    )
    pretrain.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    pretrain.add_argument("--eval-size", type=int, default=256, help="held-out questions")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    pretrain.add_argument("--out", help="run directory (default: runs/lm-pretrain-<task>-<time>)")
    pretrain.add_argument("--quiet", action="store_true", help="no live progress")
    pretrain.set_defaults(func=cmd_lm_pretrain)

    train = subparsers.add_parser(
        "lm-train", help="GRPO on a language model with a self-made or verifier reward"
    )
    train.add_argument(
        "--model",
        required=True,
        help="an lm-pretrain run directory, or a local Hugging Face causal LM directory",
    )
    train.add_argument(
        "--reward",
        required=True,
        help="rewards, comma-separated and summed: verifier, majority, self_certainty, "
        "neg_entropy, rlpr, info_gain, co_reward, self_judge, memory_novelty, random",
    )
    train.add_argument("--reward-weights", help="one weight per reward, comma-separated")
    train.add_argument(
        "--reward-option",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a reward option, e.g. memory_novelty.outcome=majority (repeatable)",
    )
    train.add_argument("--tasks", help='JSONL task file: {"prompt": ..., "answer": ...} per line')
    train.add_argument("--task", help="testbed task kind (default: the model's)")
    train.add_argument(
        "--max-operand", type=int, help="testbed operand range (default: the model's)"
    )
    train.add_argument("--steps", type=int, default=100, help="GRPO steps")
    train.add_argument("--prompts", type=int, default=32, help="prompts per step (B)")
    train.add_argument("--group-size", type=int, default=8, help="completions per prompt (G)")
    train.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    train.add_argument("--loss", default="grpo", help="grpo or dr_grpo")
    train.add_argument("--clip", type=float, default=0.2, help="ratio clip epsilon")
    train.add_argument("--kl", type=float, default=0.0, help="KL coefficient to the start policy")
    train.add_argument("--epochs", type=int, default=1, help="optimizer passes per batch")
    train.add_argument("--turn-gamma", type=float, default=1.0, help="turn discount (info_gain)")
    train.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    train.add_argument(
        "--max-new-tokens", type=int, default=0, help="completion budget (0: from the tasks)"
    )
    train.add_argument("--eval-every", type=int, default=10, help="steps between evaluations")
    train.add_argument("--eval-size", type=int, default=256, help="held-out questions")
    train.add_argument(
        "--collapse-drop",
        type=float,
        default=0.1,
        help="accuracy fall below its peak that counts as collapse",
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, default=1, help="PyTorch threads")
    train.add_argument("--out", help="run directory (default: runs/lm-train-<rewards>-<time>)")
    train.add_argument("--quiet", action="store_true", help="no live progress")
    train.set_defaults(func=cmd_lm_train)


def _write_report(out: str) -> None:
    """RUN_DIR/report.html, as the agent side writes it; a failure is only a warning."""
    try:
        from ..explain.report import write_report

        print(f"report: {write_report(Path(out)).resolve()}")
    except Exception as error:  # the run itself is complete
        print(f"autotelic: warning: no report.html written ({error}).", file=sys.stderr)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def cmd_lm_pretrain(args: argparse.Namespace) -> int:
    _torch_available()
    from .testbed import PretrainConfig, pretrain

    out = args.out or str(Path("runs") / f"lm-pretrain-{args.task}-{_stamp()}")
    config = PretrainConfig(
        task=args.task,
        max_operand=args.max_operand,
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        judge_fraction=args.judge_fraction,
        eval_every=args.eval_every,
        eval_size=args.eval_size,
        seed=args.seed,
        threads=args.threads,
        out=out,
    )
    try:
        summary = pretrain(config, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"autotelic: interrupted; {out} is incomplete.", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(
        f"{summary['parameters']:,} parameters, {summary['steps']} steps in "
        f"{summary['wall_seconds']:.0f} s: held-out accuracy {summary['eval_accuracy']:.3f} "
        f"on {summary['eval_size']} questions"
    )
    print(f"model: {Path(out).resolve()}")
    _write_report(out)
    return 0


def _parse_rewards(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[float, ...], dict]:
    names = tuple(n.strip() for n in args.reward.split(",") if n.strip())
    if not names:
        raise UserError("--reward needs at least one reward name.")
    if len(set(names)) != len(names):
        raise UserError(f"--reward names a reward twice: {args.reward!r}.")
    weights: tuple[float, ...] = ()
    if args.reward_weights:
        try:
            weights = tuple(float(w) for w in args.reward_weights.split(","))
        except ValueError:
            raise UserError(
                f"--reward-weights must be comma-separated numbers, got {args.reward_weights!r}."
            ) from None
        if len(weights) != len(names):
            raise UserError(
                f"--reward-weights gives {len(weights)} weights for {len(names)} rewards."
            )
    options: dict[str, dict[str, str]] = {}
    for item in args.reward_option:
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not name or not option:
            raise UserError(
                f"--reward-option must look like NAME.KEY=VALUE (e.g. "
                f"memory_novelty.outcome=majority), got {item!r}."
            )
        options.setdefault(name.strip(), {})[option.strip()] = value.strip()
    return names, weights, options


def cmd_lm_train(args: argparse.Namespace) -> int:
    _torch_available()
    from .grpo import GRPOConfig, train

    names, weights, options = _parse_rewards(args)
    out = args.out or str(Path("runs") / f"lm-train-{'-'.join(names)}-{_stamp()}")
    config = GRPOConfig(
        model=args.model,
        rewards=names,
        reward_weights=weights,
        reward_options=options,
        tasks=args.tasks or "",
        task=args.task or "",
        max_operand=args.max_operand or 0,
        steps=args.steps,
        prompts_per_step=args.prompts,
        group_size=args.group_size,
        learning_rate=args.lr,
        loss=args.loss,
        clip_eps=args.clip,
        kl_beta=args.kl,
        epochs=args.epochs,
        turn_gamma=args.turn_gamma,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        eval_every=args.eval_every,
        eval_size=args.eval_size,
        collapse_drop=args.collapse_drop,
        seed=args.seed,
        threads=args.threads,
        out=out,
    )
    try:
        summary = train(config, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"autotelic: interrupted; {out} is incomplete.", file=sys.stderr)
        return EXIT_INTERRUPTED

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print(
        f"{summary['steps']} GRPO steps in {summary['wall_seconds']:.0f} s "
        f"({summary['seconds_per_step']:.3f} s/step): held-out accuracy "
        f"{fmt(summary['initial_accuracy'])} -> {fmt(summary['final_accuracy'])}"
    )
    if summary.get("collapse_step") is not None:
        print(
            f"collapse: accuracy peaked at step {summary['peak_accuracy_step']} and fell while "
            f"the reward held (detected at step {summary['collapse_step']})"
        )
    print(f"results: {Path(out).resolve()}")
    _write_report(out)
    return 0
