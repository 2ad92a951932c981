"""GRPO for language-model policies (`autotelic lm-train`).

One step, top to bottom:
  1. draw B prompts (and their rephrasings when a reward needs them); sample G completions each;
  2. one forward pass over prompt + completion gives the per-token log-probabilities and, for
     rewards that need them, the logits (detached);
  3. the rewards score each group whole (rewards.RewardSet);
  4. advantages per group: A_i = (r_i - mean r) / (std r + eps) for `grpo`, r_i - mean r for
     `dr_grpo`; per-turn rewards (info_gain) get IGPO's turn advantages;
  5. the clipped surrogate with an optional KL to the starting policy, `epochs` times.

Math (all per token t of completion i, mask m):
    rho = pi(o_t) / pi_old(o_t);  s = min(rho A, clip(rho, 1 - eps, 1 + eps) A)
    KL = pi_ref/pi - log(pi_ref/pi) - 1     (the k3 estimator; DeepSeekMath Eq. 4)
    l = -(s - beta KL)
    grpo:    loss = (1/N) sum_i (1/|o_i|) sum_t l            ("DeepSeekMath", arXiv 2402.03300,
                                                             Eq. 3: GRPO objective)
    dr_grpo: loss = (1/(N L_max)) sum_i sum_t l, no std in A ("Understanding R1-Zero-Like
             Training: A Critical Perspective", arXiv 2503.20783: Dr. GRPO removes
             the length and std normalizations; L_max = max_new_tokens, a constant)
std is the sample standard deviation (ddof = 1); eps = 1e-4.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from . import runs
from .collapse import CollapseMonitor
from .model import LMPolicy, count_parameters, load_policy, read_tiny_meta, save_policy
from .rewards import RewardSet, Sample, Scored, check_requirements, majority_answer, make_reward
from .testbed import (
    ArithmeticTasks,
    Task,
    accuracy,
    answers_match,
    extract_answer,
    load_task_file,
    normalize_answer,
    solution_tokens,
)

LOSSES = ("grpo", "dr_grpo")
ADVANTAGE_EPS = 1e-4
SAMPLES_PER_STEP = 4  # completions of one prompt kept in samples.jsonl per evaluation


# ------------------------------------------------------------------------------ math


def group_advantages(rewards: np.ndarray, scale_by_std: bool) -> np.ndarray:
    """rewards [G] -> advantages [G]: centred, and divided by the sample std for GRPO."""
    rewards = np.asarray(rewards, dtype=float)
    centred = rewards - rewards.mean()
    if not scale_by_std:
        return centred
    return centred / (rewards.std(ddof=1) + ADVANTAGE_EPS)


def turn_advantages(
    turn_values: list[np.ndarray], scale_by_std: bool, gamma: float = 1.0
) -> list[np.ndarray]:
    """IGPO turn advantages ("Information Gain-based Policy Optimization", arXiv 2510.14967):
    normalize every turn reward of the group with the mean (and std) of all of them
    pooled, then give each turn the discounted sum of the normalized rewards from it to the end:
        A_hat_{i,t} = (r_{i,t} - mean R) / std R,
        A_{i,t} = sum_{k >= t} gamma^(k - t) A_hat_{i,k}.
    turn_values: G arrays [K_i] -> G arrays [K_i]."""
    pooled = np.concatenate(turn_values)
    centre = pooled.mean()
    scale = pooled.std(ddof=1) + ADVANTAGE_EPS if scale_by_std and len(pooled) > 1 else 1.0
    out = []
    for values in turn_values:
        normalized = (values - centre) / scale
        discounted = np.zeros_like(normalized)
        running = 0.0
        for k in range(len(normalized) - 1, -1, -1):
            running = normalized[k] + gamma * running
            discounted[k] = running
        out.append(discounted)
    return out


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str = "grpo",
    clip_eps: float = 0.2,
    max_tokens: int = 1,
    ref_logp: torch.Tensor | None = None,
    kl_beta: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped GRPO / Dr. GRPO loss. All tensors [N, T]; mask is bool. See the module doc."""
    mask_f = mask.float()
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(logp)
    if ref_logp is not None and kl_beta > 0:
        log_ref_ratio = ref_logp - logp
        kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1.0
        per_token = per_token + kl_beta * kl
    n = logp.shape[0]
    if loss_type == "grpo":
        lengths = mask_f.sum(dim=1).clamp(min=1.0)
        loss = ((per_token * mask_f).sum(dim=1) / lengths).sum() / n
    elif loss_type == "dr_grpo":
        loss = (per_token * mask_f).sum() / (n * max_tokens)
    else:
        raise ValueError(f"unknown loss {loss_type!r}")
    with torch.no_grad():
        tokens = mask_f.sum().clamp(min=1.0)
        stats = {
            "kl": float((kl * mask_f).sum() / tokens),
            "clip_fraction": float(
                (((ratio - 1.0).abs() > clip_eps).float() * mask_f).sum() / tokens
            ),
        }
    return loss, stats


def token_advantages(
    scored: list[Scored], groups: list[list[int]], lengths: list[int], loss_type: str, gamma: float
) -> torch.Tensor:
    """Per-token advantages [N, T_max] from the rewards of each sample; `groups` lists the sample
    rows of each group."""
    scale = loss_type == "grpo"
    width = max(lengths, default=0)
    out = torch.zeros(len(scored), width)
    for rows in groups:
        if scored[rows[0]].turn_values is not None:
            turn_adv = turn_advantages([scored[r].turn_values for r in rows], scale, gamma)  # type: ignore[misc]
            for r, adv in zip(rows, turn_adv, strict=True):
                token_turn = scored[r].token_turn
                assert token_turn is not None
                out[r, : lengths[r]] = torch.as_tensor(adv[token_turn], dtype=torch.float32)
        else:
            adv = group_advantages(np.array([scored[r].total for r in rows]), scale)
            for r, a in zip(rows, adv, strict=True):
                out[r, : lengths[r]] = float(a)
    return out


def token_logp(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log pi(target) [N, T] from logits [N, T, V]."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class GRPOConfig:
    model: str = ""
    rewards: tuple[str, ...] = ("verifier",)
    reward_weights: tuple[float, ...] = ()
    reward_options: dict[str, dict[str, str]] = field(default_factory=dict)
    tasks: str = ""  # a JSONL task file; empty: the model's testbed tasks
    task: str = ""  # testbed kind (default: the one the model was pretrained on)
    max_operand: int = 0  # testbed operand range (default: the pretraining one)
    steps: int = 100
    prompts_per_step: int = 32
    group_size: int = 8
    learning_rate: float = 1e-4
    loss: str = "grpo"
    clip_eps: float = 0.2
    kl_beta: float = 0.0
    epochs: int = 1
    turn_gamma: float = 1.0
    temperature: float = 1.0
    max_new_tokens: int = 0  # 0: the testbed's longest solution, or 32 for task files
    max_grad_norm: float = 1.0
    eval_every: int = 10
    eval_size: int = 256
    collapse_drop: float = 0.1
    seed: int = 0
    threads: int = 1
    out: str = ""


def validate(config: GRPOConfig) -> None:
    if config.loss not in LOSSES:
        raise UserError(f"unknown loss {config.loss!r}; known: {', '.join(LOSSES)}.")
    positive = {
        "--steps": config.steps,
        "--prompts": config.prompts_per_step,
        "--epochs": config.epochs,
        "--eval-every": config.eval_every,
        "--eval-size": config.eval_size,
        "--threads": config.threads,
    }
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}.")
    if config.group_size < 2:
        raise UserError(
            f"--group-size must be at least 2 (advantages compare within a group), "
            f"got {config.group_size}."
        )
    if not config.learning_rate > 0:
        raise UserError(f"--lr must be positive, got {config.learning_rate}.")
    if config.kl_beta < 0 or config.clip_eps <= 0 or config.temperature <= 0:
        raise UserError("--kl must be >= 0, --clip and --temperature > 0.")
    if config.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be positive, got {config.max_new_tokens}.")


# ------------------------------------------------------------------------------ task sources


@dataclass
class TaskSource:
    """Where prompts come from: `sample(count, rng)` for training, `evaluation` for accuracy."""

    train: Any  # ArithmeticTasks or list[Task]
    evaluation: list[Task]
    max_new_tokens: int
    description: str

    def sample(self, count: int, rng: np.random.Generator) -> list[Task]:
        if isinstance(self.train, ArithmeticTasks):
            return self.train.sample(count, rng)
        picks = rng.integers(0, len(self.train), count)
        return [self.train[int(i)] for i in picks]

    @property
    def has_labels(self) -> bool:
        if isinstance(self.train, ArithmeticTasks):
            return True
        return all(t.answer is not None for t in self.train)

    @property
    def has_rephrase(self) -> bool:
        if isinstance(self.train, ArithmeticTasks):
            return True
        return all(t.rephrase is not None for t in self.train)


def _check_fits(prompts: list[str], budget: int, policy: LMPolicy, where: str) -> None:
    """Encode every prompt now (unknown characters are a UserError here, not mid-run) and check
    that prompt plus completion fits the model's context."""
    longest = max(len(policy.tokenizer.encode(p)) for p in prompts)
    context = policy.context_length
    if context is not None and longest + budget > context:
        raise UserError(
            f"{where}: a prompt of {longest} tokens plus {budget} new tokens exceeds the model's "
            f"context of {context}; shorten the prompts or lower --max-new-tokens."
        )


def task_source(config: GRPOConfig, policy: LMPolicy) -> TaskSource:
    if config.tasks:
        rows = load_task_file(config.tasks)
        prompts = [t.prompt for t in rows] + [t.rephrase for t in rows if t.rephrase]
        longest = max(len(policy.tokenizer.encode(p)) for p in prompts)
        context = policy.context_length
        budget = config.max_new_tokens or (32 if context is None else min(32, context - longest))
        _check_fits(prompts, max(budget, 1), policy, f"task file {config.tasks!r}")
        # test-time training: accuracy is measured on the task file itself
        return TaskSource(rows, rows[: config.eval_size], budget, config.tasks)
    spec: dict[str, Any] = {}
    if policy.kind == "tiny":
        spec = read_tiny_meta(Path(policy.source)).get("testbed", {})
    kind = config.task or spec.get("kind", "add")
    max_operand = config.max_operand or spec.get("max_operand", 99)
    generated = ArithmeticTasks(kind, max_operand)
    budget = config.max_new_tokens or solution_tokens(generated)
    largest = generated.make((max_operand,) * generated.arity)
    _check_fits([largest.prompt], budget, policy, f"testbed {kind} tasks")
    return TaskSource(
        generated, generated.held_out(config.eval_size), budget, f"testbed {kind} 0..{max_operand}"
    )


# ------------------------------------------------------------------------------ the loop


def _status(metrics: dict[str, float], monitor: CollapseMonitor, rewards: list[str]) -> str:
    parts = [f"{metrics['seconds']:.2f} s/step", f"reward {metrics['reward']:.3f}"]
    if not math.isnan(metrics.get("sample_accuracy", math.nan)):
        parts.append(f"sample acc {metrics['sample_accuracy']:.2f}")
    if monitor.accuracies:
        parts.append(f"held-out acc {monitor.accuracies[-1]:.3f}")
    warning = monitor.warning()
    if warning:
        parts.append(f"[bold red]{warning}[/]")
    return " | ".join(parts)


def _sample_rows(
    step: int, samples: list[Sample], scored: list[Scored], groups: dict[tuple[int, int], list[int]]
) -> list[dict[str, Any]]:
    """The first group's completions (up to SAMPLES_PER_STEP) for samples.jsonl."""
    rows = groups.get((0, 0), [])[:SAMPLES_PER_STEP]
    return [
        {
            "step": step,
            "prompt": samples[r].prompt,
            "answer": samples[r].answer,
            "completion": samples[r].completion,
            "reward": float(scored[r].total),
        }
        for r in rows
    ]


def train(config: GRPOConfig, quiet: bool = False) -> dict[str, Any]:
    """Run GRPO as configured; write the run to config.out. Returns the summary.

    Raises UserError for bad input, before anything is written."""
    validate(config)
    torch.set_num_threads(config.threads)
    policy = load_policy(config.model)
    source = task_source(config, policy)
    rewards = [make_reward(name, config.reward_options.get(name)) for name in config.rewards]
    unknown_options = set(config.reward_options) - set(config.rewards)
    if unknown_options:
        raise UserError(
            f"--reward-option names {', '.join(sorted(unknown_options))}, which is not among "
            f"the rewards ({', '.join(config.rewards)})."
        )
    views = 2 if any("rephrase" in r.requirements() for r in rewards) else 1
    reward_set = RewardSet(
        rewards, config.reward_weights or None, group_size=config.group_size, views=views
    )
    check_requirements(
        reward_set, policy.capabilities, source.has_labels, source.has_rephrase, policy.kind
    )
    wants_logits = "logits" in reward_set.requirements()
    out = Path(config.out)
    runs.check_out_dir(out, "lm-train")

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    reference = copy.deepcopy(policy.module).eval() if config.kl_beta > 0 else None
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    monitor = CollapseMonitor(drop=config.collapse_drop)
    labelled_eval = [t for t in source.evaluation if t.answer is not None]
    max_tokens = source.max_new_tokens
    group_size = config.group_size

    runs.create_run_dir(out, config)
    writer = runs.MetricsWriter(out)
    progress = runs.progress(quiet)
    started = time.perf_counter()
    initial_accuracy = accuracy(policy, labelled_eval, max_tokens) if labelled_eval else math.nan
    final_accuracy = initial_accuracy
    rewards_since_eval: list[float] = []
    step_seconds: list[float] = []
    label = f"lm-train [{','.join(config.rewards)}]"
    with progress:
        bar = progress.add_task(label, total=config.steps, status="")
        for step in range(1, config.steps + 1):
            tick = time.perf_counter()
            tasks = source.sample(config.prompts_per_step, rng)
            # rows: one per completion; view 1 is the rephrased prompt (co_reward)
            rows: list[tuple[int, int, int, Task, str]] = []
            for gid, task in enumerate(tasks):
                for view in range(views):
                    prompt = task.prompt if view == 0 else (task.rephrase or task.prompt)
                    rows.extend((gid, view, index, task, prompt) for index in range(group_size))
            prompt_ids = [policy.tokenizer.encode(r[4]) for r in rows]
            completion_ids = policy.sample(prompt_ids, max_tokens, config.temperature, generator)

            # with one epoch, this pass is also the one the loss backpropagates through
            with torch.set_grad_enabled(config.epochs == 1):
                logits, targets, mask = policy.completion_logits(prompt_ids, completion_ids)
            old_logp = token_logp(logits, targets).detach()
            lengths = [len(c) for c in completion_ids]
            samples = [
                Sample(
                    group_id=gid,
                    view=view,
                    index=index,
                    prompt=prompt,
                    prompt_ids=tuple(prompt_ids[row]),
                    completion=policy.tokenizer.decode(completion_ids[row]),
                    completion_ids=tuple(completion_ids[row]),
                    answer=task.answer,
                    logits=logits[row, : lengths[row]].detach() if wants_logits else None,
                )
                for row, (gid, view, index, task, prompt) in enumerate(rows)
            ]
            scored_by_key = reward_set.score([samples], policy, step)
            scored = [scored_by_key[(s.group_id, s.view, s.index)] for s in samples]
            groups: dict[tuple[int, int], list[int]] = {}
            for row, s in enumerate(samples):
                groups.setdefault((s.group_id, s.view), []).append(row)
            advantages = token_advantages(
                scored, list(groups.values()), lengths, config.loss, config.turn_gamma
            )
            ref_logp = None
            if reference is not None:
                with torch.no_grad():
                    ref_logits, _, _ = policy.completion_logits(
                        prompt_ids, completion_ids, module=reference
                    )
                    ref_logp = token_logp(ref_logits, targets)
            with torch.no_grad():
                logp_all = torch.log_softmax(logits.detach().float(), dim=-1)
                token_entropy = -(logp_all.exp() * logp_all).sum(-1)
                entropy = float((token_entropy * mask).sum() / mask.sum().clamp(min=1))
            for _ in range(config.epochs):
                if config.epochs > 1:
                    logits, targets, mask = policy.completion_logits(prompt_ids, completion_ids)
                logp = token_logp(logits, targets)
                loss, stats = policy_loss(
                    logp,
                    old_logp,
                    advantages,
                    mask,
                    config.loss,
                    config.clip_eps,
                    max_tokens,
                    ref_logp,
                    config.kl_beta,
                )
                optimizer.zero_grad()
                loss.backward()
                grad_norm = float(
                    torch.nn.utils.clip_grad_norm_(list(policy.parameters()), config.max_grad_norm)
                )
                optimizer.step()

            totals = np.array([s.total for s in scored])
            rewards_since_eval.append(float(totals.mean()))
            metrics: dict[str, float] = {
                "update": step,
                "env_steps": step * len(rows),
                "reward": float(totals.mean()),
            }
            for name in reward_set.names:
                metrics[f"reward/{name}"] = float(np.mean([s.parts[name] for s in scored]))
            if source.has_labels:
                metrics["sample_accuracy"] = float(
                    np.mean(
                        [answers_match(extract_answer(s.completion), s.answer) for s in samples]
                    )
                )
            agreement = []
            for group_rows in groups.values():
                texts = [samples[r].completion for r in group_rows]
                vote = majority_answer(texts)
                agreement.append(
                    np.mean(
                        [
                            normalize_answer(extract_answer(t)) == vote and vote is not None
                            for t in texts
                        ]
                    )
                )
            metrics["vote_agreement"] = float(np.mean(agreement))
            metrics["completion_tokens"] = float(np.mean(lengths))
            metrics["entropy"] = entropy
            metrics["loss"] = loss.item()
            metrics["grad_norm"] = grad_norm
            metrics.update(stats)
            monitor.observe_agreement(step, metrics["vote_agreement"])
            if step == 1 and labelled_eval:
                # step 1's samples come from the starting policy: its reward pairs with the
                # accuracy measured before training
                monitor.observe(0, metrics["reward"], initial_accuracy)
            evaluated = labelled_eval and (step % config.eval_every == 0 or step == config.steps)
            metrics["eval_accuracy"] = math.nan
            if evaluated:
                final_accuracy = accuracy(policy, labelled_eval, max_tokens)
                metrics["eval_accuracy"] = final_accuracy
                monitor.observe(step, float(np.mean(rewards_since_eval)), final_accuracy)
                rewards_since_eval = []
            if step % config.eval_every == 0 or step == config.steps or step == 1:
                runs.append_samples(out, _sample_rows(step, samples, scored, groups))
            seconds = time.perf_counter() - tick
            step_seconds.append(seconds)
            metrics["seconds"] = seconds
            writer.write(metrics, seconds, len(rows) / seconds)
            progress.update(bar, advance=1, status=_status(metrics, monitor, reward_set.names))
    writer.close()
    save_policy(policy, out / "model")
    steady = step_seconds[1:] or step_seconds
    summary = {
        "command": "lm-train",
        "model": config.model,
        "backend": policy.kind,
        "parameters": count_parameters(policy),
        "rewards": list(config.rewards),
        "loss": config.loss,
        "tasks": source.description,
        "steps": config.steps,
        "prompts_per_step": config.prompts_per_step,
        "group_size": group_size,
        "seed": config.seed,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "seconds_per_step": round(float(np.median(steady)), 4),
        "initial_accuracy": None if math.isnan(initial_accuracy) else initial_accuracy,
        "final_accuracy": None if math.isnan(final_accuracy) else final_accuracy,
        "eval_size": len(labelled_eval),
        **monitor.report(),
    }
    return runs.write_summary(out, summary)
