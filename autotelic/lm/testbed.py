"""The CPU testbed: arithmetic tasks generated on the fly, task files, answer parsing, and the
supervised pretraining of the tiny transformer (`autotelic lm-pretrain`).

Tasks are made here rather than downloaded, so nothing the model sees can have leaked from a
public benchmark ("Reasoning or Memorization?", arXiv 2507.10532: on leakage-free generated
arithmetic only accurate rewards help). Held-out questions are chosen by a hash of the sorted
operands, so a held-out question and its rephrasings are never trained on.

Formats (`kind`):
    add    prompt "12+7="     solution "19"       rephrase "7+12="
    chain  prompt "3+4+5="    solution "7,12"     rephrase "5+4+3="   (two turns: partial sum, sum)
A completion ends with the EOS token; its answer is the last number in it.
A judging prompt for the self_judge reward is JUDGE_TEMPLATE, answered "100" (right) or "0" (wrong).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from . import runs
from .model import CharTokenizer, LMPolicy, TinyConfig, count_parameters, save_policy, tiny_policy

KINDS = ("add", "chain")
JUDGE_TEMPLATE = "{prompt}{completion}?"
TURN_SEPARATOR = ","
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Task:
    prompt: str
    answer: str | None = None  # ground truth, when known
    rephrase: str | None = None  # the same question asked another way (co_reward)
    solution: str | None = None  # a full correct completion (pretraining only)


# ------------------------------------------------------------------------------ answers


def answer_span(text: str) -> tuple[int, int] | None:
    """Where the answer is in a completion: the last number, else the whole stripped text."""
    matches = list(_NUMBER.finditer(text))
    if matches:
        return matches[-1].span()
    stripped = text.strip()
    if not stripped:
        return None
    start = text.index(stripped)
    return start, start + len(stripped)


def extract_answer(text: str) -> str | None:
    span = answer_span(text)
    return None if span is None else text[span[0] : span[1]]


def normalize_answer(answer: str | None) -> str | None:
    """A canonical form, so that "07", "7" and "7.0" vote together."""
    if answer is None:
        return None
    answer = answer.strip()
    if _NUMBER.fullmatch(answer):
        value = float(answer)
        return str(int(value)) if value.is_integer() else repr(value)
    return answer.lower() or None


def answers_match(predicted: str | None, truth: str | None) -> bool:
    a, b = normalize_answer(predicted), normalize_answer(truth)
    return a is not None and a == b


# ------------------------------------------------------------------------------ generated tasks


class ArithmeticTasks:
    """Sums of small non-negative integers, made on demand."""

    def __init__(self, kind: str = "add", max_operand: int = 99) -> None:
        if kind not in KINDS:
            raise UserError(f"unknown task kind {kind!r}; known: {', '.join(KINDS)}.")
        if max_operand < 2:
            raise UserError(f"--max-operand must be at least 2, got {max_operand}.")
        self.kind = kind
        self.max_operand = max_operand
        self.arity = 2 if kind == "add" else 3

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_operand": self.max_operand}

    @staticmethod
    def is_held_out(operands: tuple[int, ...]) -> bool:
        key = 0
        for value in sorted(operands):
            key = (key * 1_000_003 + value + 1) % 2_147_483_647
        return (key * 2_654_435_761) % 2**32 < 0.1 * 2**32  # about 10% of questions

    def make(self, operands: tuple[int, ...]) -> Task:
        prompt = "+".join(map(str, operands)) + "="
        rephrase = "+".join(map(str, operands[::-1])) + "="
        partial = np.cumsum(operands)[1:]
        solution = TURN_SEPARATOR.join(str(int(p)) for p in partial)
        return Task(prompt, str(int(partial[-1])), rephrase, solution)

    def sample(self, count: int, rng: np.random.Generator) -> list[Task]:
        """`count` training questions (never a held-out one)."""
        tasks: list[Task] = []
        while len(tasks) < count:
            operands = tuple(int(x) for x in rng.integers(0, self.max_operand + 1, self.arity))
            if not self.is_held_out(operands):
                tasks.append(self.make(operands))
        return tasks

    def held_out(self, count: int) -> list[Task]:
        """A fixed evaluation set, the same for every seed and run."""
        rng = np.random.default_rng(20_250_101)
        tasks: list[Task] = []
        seen: set[tuple[int, ...]] = set()
        attempts = 0
        while len(tasks) < count and attempts < 200 * count:
            attempts += 1
            operands = tuple(int(x) for x in rng.integers(0, self.max_operand + 1, self.arity))
            if self.is_held_out(operands) and operands not in seen:
                seen.add(operands)
                tasks.append(self.make(operands))
        return tasks


# ------------------------------------------------------------------------------ task files


def load_task_file(path: str | Path) -> list[Task]:
    """Rows of JSON objects, one a line: {"prompt": str, "answer": str or number} and optionally
    "rephrase": str. Blank lines are skipped; anything else wrong is a UserError naming the line."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise UserError(
            f"cannot read task file {str(path)!r}: {error.strerror or error}."
        ) from None
    tasks = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"task file {str(path)!r}, line {number}"
        try:
            row = json.loads(line)
        except ValueError as error:
            raise UserError(f"{where} is not valid JSON ({error.args[0]}).") from None
        if not isinstance(row, dict):
            raise UserError(f'{where}: expected an object like {{"prompt": ..., "answer": ...}}.')
        unknown = set(row) - {"prompt", "answer", "rephrase"}
        if unknown:
            raise UserError(
                f"{where}: unknown field(s) {', '.join(sorted(unknown))}; a row has prompt, "
                "answer and optionally rephrase."
            )
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise UserError(f'{where}: "prompt" must be a non-empty string.')
        if "answer" not in row:
            raise UserError(f'{where}: "answer" is missing.')
        answer = row["answer"]
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise UserError(f'{where}: "answer" must be a string or a number.')
        if isinstance(answer, float) and not math.isfinite(answer):
            raise UserError(f'{where}: "answer" must be finite.')
        rephrase = row.get("rephrase")
        if rephrase is not None and (not isinstance(rephrase, str) or not rephrase):
            raise UserError(f'{where}: "rephrase" must be a non-empty string when given.')
        tasks.append(Task(prompt, str(answer), rephrase))
    if not tasks:
        raise UserError(f"task file {str(path)!r} has no rows.")
    return tasks


# ------------------------------------------------------------------------------ evaluation


def accuracy(
    policy: LMPolicy, tasks: list[Task], max_new_tokens: int, batch_size: int = 256
) -> float:
    """Greedy exact-match accuracy of `policy` on `tasks` (all must have answers)."""
    correct = 0
    for start in range(0, len(tasks), batch_size):
        chunk = tasks[start : start + batch_size]
        texts = policy.greedy([t.prompt for t in chunk], max_new_tokens)
        correct += sum(
            answers_match(extract_answer(x), t.answer) for x, t in zip(texts, chunk, strict=True)
        )
    return correct / max(len(tasks), 1)


def solution_tokens(tasks: ArithmeticTasks) -> int:
    """Longest solution in tokens, plus EOS: the completion budget for this task family."""
    biggest = tasks.make((tasks.max_operand,) * tasks.arity)
    return len(biggest.solution or "") + 1


# ------------------------------------------------------------------------------ pretraining


@dataclass(frozen=True)
class PretrainConfig:
    task: str = "add"
    max_operand: int = 99
    steps: int = 1500
    batch_size: int = 128
    learning_rate: float = 3e-3
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    judge_fraction: float = 0.2  # share of rows that teach the judging format (self_judge)
    eval_every: int = 100
    eval_size: int = 256
    seed: int = 0
    threads: int = 1
    out: str = ""


def _wrong_solution(task: Task, rng: np.random.Generator) -> str:
    """The task's solution with its final answer moved by 1 to 10."""
    assert task.solution is not None and task.answer is not None
    shift = int(rng.integers(1, 11)) * (1 if rng.random() < 0.5 or int(task.answer) < 11 else -1)
    head, _, _ = task.solution.rpartition(TURN_SEPARATOR)
    wrong = str(int(task.answer) + shift)
    return f"{head}{TURN_SEPARATOR}{wrong}" if head else wrong


def pretraining_rows(
    tasks: ArithmeticTasks, count: int, judge_fraction: float, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """(prompt, target completion) pairs: solutions, and judging rows "q a?" -> "100" / "0"."""
    rows = []
    for task in tasks.sample(count, rng):
        assert task.solution is not None
        if rng.random() < judge_fraction:
            right = rng.random() < 0.5
            shown = task.solution if right else _wrong_solution(task, rng)
            judge = JUDGE_TEMPLATE.format(prompt=task.prompt, completion=shown)
            rows.append((judge, "100" if right else "0"))
        else:
            rows.append((task.prompt, task.solution))
    return rows


def supervised_loss(policy: LMPolicy, rows: list[tuple[str, str]]) -> torch.Tensor:
    """Mean cross-entropy of the target completions (EOS included) given their prompts."""
    tokenizer = policy.tokenizer
    prompts = [tokenizer.encode(p) for p, _ in rows]
    targets = [[*tokenizer.encode(t), tokenizer.eos_id] for _, t in rows]
    logits, target_ids, mask = policy.completion_logits(prompts, targets)
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target_ids.reshape(-1), reduction="none"
    )
    return (losses * mask.reshape(-1)).sum() / mask.sum()


def pretrain(config: PretrainConfig, quiet: bool = False) -> dict[str, Any]:
    """Train a tiny transformer on the testbed's solutions; write the run and the model to
    config.out. Returns the summary."""
    if config.steps < 1 or config.batch_size < 1 or config.eval_size < 1:
        raise UserError("--steps, --batch-size and --eval-size must be positive.")
    if not 0.0 <= config.judge_fraction < 1.0:
        raise UserError(f"--judge-fraction must be in [0, 1), got {config.judge_fraction}.")
    if config.d_model % config.n_heads:
        raise UserError(
            f"--d-model ({config.d_model}) must be a multiple of --heads ({config.n_heads})."
        )
    tasks = ArithmeticTasks(config.task, config.max_operand)
    out = Path(config.out)
    runs.check_out_dir(out, "lm-pretrain")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)

    policy = tiny_policy(
        TinyConfig(
            vocab_size=CharTokenizer().vocab_size,
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.n_heads,
        )
    )
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    held_out = tasks.held_out(config.eval_size)
    budget = solution_tokens(tasks)

    runs.create_run_dir(out, config)
    writer = runs.MetricsWriter(out)
    progress = runs.progress(quiet)
    started = time.perf_counter()
    eval_accuracy = float("nan")
    with progress:
        bar = progress.add_task(f"lm-pretrain {config.task}", total=config.steps, status="")
        for step in range(1, config.steps + 1):
            tick = time.perf_counter()
            rows = pretraining_rows(tasks, config.batch_size, config.judge_fraction, rng)
            loss = supervised_loss(policy, rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            evaluated = step % config.eval_every == 0 or step == config.steps
            eval_accuracy = accuracy(policy, held_out, budget) if evaluated else float("nan")
            seconds = time.perf_counter() - tick
            writer.write(
                {
                    "update": step,
                    "env_steps": step * config.batch_size,
                    "loss": loss.item(),
                    "eval_accuracy": eval_accuracy,
                },
                seconds,
                config.batch_size / seconds,
            )
            status = f"loss {loss.item():.3f}"
            if evaluated:
                status += f" | held-out accuracy {eval_accuracy:.3f}"
                progress.update(bar, status=status)
            progress.update(bar, advance=1)
    writer.close()
    save_policy(policy, out, {"testbed": tasks.spec(), "max_new_tokens": budget})
    return runs.write_summary(
        out,
        {
            "command": "lm-pretrain",
            "task": config.task,
            "max_operand": config.max_operand,
            "parameters": count_parameters(policy),
            "steps": config.steps,
            "wall_seconds": round(time.perf_counter() - started, 3),
            "final_loss": loss.item(),
            "eval_accuracy": eval_accuracy,
            "eval_size": len(held_out),
            "seed": config.seed,
        },
    )
