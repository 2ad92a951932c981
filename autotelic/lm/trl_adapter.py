"""autotelic's text-only rewards as reward functions for TRL's `GRPOTrainer`.

    from autotelic.lm.trl_adapter import reward_functions
    trainer = GRPOTrainer(..., reward_funcs=reward_functions(["majority"], num_generations=8))

TRL calls a reward function as `f(prompts=..., completions=..., completion_ids=...,
trainer_state=..., **dataset_columns) -> list[float]`, once per process with that process's
slice of the batch, where the G completions of a prompt are consecutive. Completions are strings
(standard datasets) or lists of messages (conversational ones); both are accepted. This module
never imports TRL, so it loads whether or not TRL is installed.

What runs there and what does not:

    verifier, random      run as usual (verifier reads the dataset column `answer_column`).
    majority              runs when every group a process receives is whole. TRL hands each
                          process only its local slice of the batch, so a group can be split across
                          processes, and a vote over part of a group is a different reward. The
                          adapter checks that the completions come in whole runs of G for the same
                          prompt and raises otherwise (make the per-device batch a multiple of G).
    memory_novelty        runs; its memories live in the function object of each process, so with
                          several processes each keeps its own.
    self_certainty,       cannot run: they need the policy's full-vocabulary logits over each
    neg_entropy           completion, and TRL gives reward functions only text and token ids.
    rlpr, info_gain       cannot run: they need scoring calls to the policy being trained (the
                          probability of the reference answer after the reasoning or after each
                          turn); reward functions get no handle on that model.
    self_judge            cannot run: the policy must generate its own judgement with its current
                          weights; a reward function has no access to them.
    co_reward             cannot run: it needs the group sampled for the rephrased prompt next to
                          the group for the prompt, and TRL samples and shards prompts
                          independently.

Those rewards run in `autotelic lm-train`, whose trainer gives rewards the logits, scoring calls
and whole groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..errors import UserError
from .rewards import RewardSet, Sample, make_reward

TEXT_ONLY = ("verifier", "majority", "random", "memory_novelty")
WHY_NOT = {
    "self_certainty": "it needs the policy's full-vocabulary logits, and TRL passes reward "
    "functions only text and token ids",
    "neg_entropy": "it needs the policy's full-vocabulary logits, and TRL passes reward "
    "functions only text and token ids",
    "rlpr": "it needs scoring calls to the policy being trained (the probability of the "
    "reference answer), and TRL gives reward functions no handle on the model",
    "info_gain": "it needs scoring calls to the policy being trained (the probability of the "
    "true answer after each turn), and TRL gives reward functions no handle on the model",
    "self_judge": "the policy must generate its own judgement with its current weights, and "
    "TRL gives reward functions no handle on the model",
    "co_reward": "it needs the group sampled for the rephrased prompt next to the prompt's own "
    "group, and TRL samples and shards prompts independently",
}


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def _text(item: Any) -> str:
    """A completion or prompt as text: a string, or the content of the last message."""
    if isinstance(item, str):
        return item
    if isinstance(item, list) and item and isinstance(item[-1], dict):
        return str(item[-1].get("content", ""))
    raise TypeError(f"cannot read a completion of type {type(item).__name__}")


def reward_function(
    name: str,
    num_generations: int,
    answer_column: str = "answer",
    options: dict[str, str] | None = None,
) -> Callable[..., list[float]]:
    """One autotelic reward as a TRL reward function. Raises UserError for rewards that cannot
    run inside TRL, saying why."""
    if name in WHY_NOT:
        raise UserError(
            f"the {name} reward cannot run as a TRL reward function: {WHY_NOT[name]}. Train "
            f"with `autotelic lm-train --reward {name}` instead."
        )
    if num_generations < 2:
        raise UserError(f"num_generations must be at least 2, got {num_generations}.")
    reward = make_reward(name, options)
    wants_labels = "labels" in reward.requirements()
    reward_set = RewardSet([reward], group_size=num_generations)
    calls = {"count": 0}

    def score(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        texts = [_text(c) for c in completions]
        prompt_texts = [_text(p) for p in prompts]
        answers: Sequence[Any] = [None] * len(texts)
        if wants_labels:
            if answer_column not in kwargs:
                raise ValueError(
                    f"the {name} reward needs the dataset column {answer_column!r} (the ground "
                    "truth); add it to the dataset or pass answer_column."
                )
            answers = kwargs[answer_column]
        if len(texts) % num_generations:
            raise ValueError(
                f"{len(texts)} completions reached this process, not a multiple of "
                f"num_generations={num_generations}: a group was split across processes. Make "
                "the per-device batch a multiple of num_generations."
            )
        samples = []
        for row, (prompt, text) in enumerate(zip(prompt_texts, texts, strict=True)):
            group, index = divmod(row, num_generations)
            if prompt != prompt_texts[group * num_generations]:
                raise ValueError(
                    f"completions {group * num_generations}..{row} do not share one prompt: a "
                    "group arrived split or out of order."
                )
            answer = answers[row]
            samples.append(
                Sample(
                    group_id=group,
                    view=0,
                    index=index,
                    prompt=prompt,
                    prompt_ids=(),
                    completion=text,
                    completion_ids=(),
                    answer=None if answer is None else str(answer),
                )
            )
        state = kwargs.get("trainer_state")
        step = getattr(state, "global_step", None)
        calls["count"] += 1
        step = calls["count"] if step is None else int(step) * 1_000_003 + calls["count"]
        scored = reward_set.score([samples], None, step)
        return [scored[(s.group_id, 0, s.index)].total for s in samples]

    score.__name__ = f"autotelic_{name}"
    return score


def reward_functions(
    names: Sequence[str], num_generations: int, answer_column: str = "answer"
) -> list[Callable[..., list[float]]]:
    return [reward_function(n, num_generations, answer_column) for n in names]
