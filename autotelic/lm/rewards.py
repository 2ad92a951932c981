"""Rewards for language-model policies, computed on whole groups.

A reward is called once per group: the G completions sampled for one prompt (and, for co_reward,
the G completions for the same question rephrased). It declares in `needs` what else it uses:

    labels    the ground-truth answer of the prompt
    rephrase  the group sampled for the rephrased prompt (`Group.partner`)
    logits    the policy's full-vocabulary logits over each completion (`Group.logits`, [T_i, V])
    score     a scoring call: log pi(target | prefix) from the policy (`LMPolicy.score`)
    generate  the policy generating text of its own (`LMPolicy.greedy`)

and returns one value per completion, [G], or per turn (`TurnRewards`, info_gain). The trainer
checks `needs` against what the backend and the tasks provide before anything runs.

`RewardSet.score` assembles groups from samples that may arrive in any order and in any number of
pieces, and scores a group only once all of it is there; state (memory_novelty's memories, the
normalisation windows) changes only in `Reward.update`, once per step, in group order. So the
rewards of a step do not depend on how its batch was split.

GRPO turns rewards into advantages per group (grpo.py): a reward that is constant within every
group (for example self_judge on a policy that always says "100") teaches nothing.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import UserError, unknown
from .testbed import (
    JUDGE_TEMPLATE,
    TURN_SEPARATOR,
    answer_span,
    answers_match,
    extract_answer,
    normalize_answer,
)

NEEDS = ("labels", "rephrase", "logits", "score", "generate")


# ------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class Sample:
    """One completion, as it leaves the sampler."""

    group_id: int  # which prompt of the step
    view: int  # 0: the prompt; 1: its rephrasing (co_reward)
    index: int  # place within the group, 0..G-1
    prompt: str
    prompt_ids: tuple[int, ...]
    completion: str
    completion_ids: tuple[int, ...]  # EOS included when the policy produced it
    answer: str | None = None
    logits: torch.Tensor | None = None  # [len(completion_ids), V], detached


@dataclass(frozen=True)
class Group:
    """The G completions for one prompt at one step."""

    group_id: int
    view: int
    step: int
    prompt: str
    prompt_ids: tuple[int, ...]
    answer: str | None
    completions: tuple[str, ...]
    completion_ids: tuple[tuple[int, ...], ...]
    logits: tuple[torch.Tensor, ...] | None = None
    partner: Group | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.completions)

    @classmethod
    def of(cls, samples: Sequence[Sample], step: int) -> Group:
        samples = sorted(samples, key=lambda s: s.index)
        first = samples[0]
        has_logits = all(s.logits is not None for s in samples)
        return cls(
            group_id=first.group_id,
            view=first.view,
            step=step,
            prompt=first.prompt,
            prompt_ids=first.prompt_ids,
            answer=first.answer,
            completions=tuple(s.completion for s in samples),
            completion_ids=tuple(s.completion_ids for s in samples),
            logits=tuple(s.logits for s in samples) if has_logits else None,  # type: ignore[misc]
        )


@dataclass
class TurnRewards:
    """Rewards per turn of each completion (info_gain), and the turn each token belongs to.

    values[i]: [K_i] float; token_turn[i]: [len(completion_ids[i])] int in 0..K_i-1.
    """

    values: list[np.ndarray]
    token_turn: list[np.ndarray]

    def totals(self) -> np.ndarray:
        return np.array([float(v.sum()) for v in self.values])


RewardValue = np.ndarray | TurnRewards


# ------------------------------------------------------------------------------ protocol


@dataclass
class Reward:
    """Base of every reward; options are dataclass fields (set with `--reward-option`)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()

    def requirements(self) -> frozenset[str]:
        """What this instance needs (may depend on its options)."""
        return self.needs

    def __call__(self, group: Group, policy: Any) -> RewardValue:
        raise NotImplementedError

    def update(self, groups: Sequence[Group]) -> None:
        """End of a step: `groups` is every group scored in it, in (group_id, view) order."""


def _answers(completions: Iterable[str]) -> list[str | None]:
    return [normalize_answer(extract_answer(c)) for c in completions]


def majority_answer(completions: Sequence[str]) -> str | None:
    """The most frequent answer among completions; None when none has an answer.

    Ties go to the answer whose first occurrence comes first in the group (index order), which
    is also what counting in insertion order and taking the first maximum gives. Completions with
    no answer do not vote.
    """
    counts: dict[str, int] = {}
    for answer in _answers(completions):
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a, c in counts.items() if c == best)


# ------------------------------------------------------------------------------ rewards


@dataclass
class Verifier(Reward):
    """r_i = 1[ans(o_i) = y*]: exact match with the ground truth (the supervised control of
    RLVR; "DeepSeekMath", arXiv 2402.03300, trains with such rule-based outcome rewards)."""

    name: ClassVar[str] = "verifier"
    summary: ClassVar[str] = "exact match with the ground-truth answer (supervised control)"
    needs: ClassVar[frozenset[str]] = frozenset({"labels"})

    def __call__(self, group: Group, policy: Any) -> np.ndarray:
        return np.array(
            [float(answers_match(extract_answer(c), group.answer)) for c in group.completions]
        )


@dataclass
class Majority(Reward):
    """Majority vote, "TTRL: Test-Time Reinforcement Learning" (arXiv 2504.16084):
    y_hat = mode_j ans(o_j), r_i = 1[ans(o_i) = y_hat]. Tie rule: see `majority_answer`.
    The paper votes over 64 samples and trains on 32; here the group votes and is trained on."""

    name: ClassVar[str] = "majority"
    summary: ClassVar[str] = "1 if the answer agrees with the group's majority vote (TTRL)"

    def __call__(self, group: Group, policy: Any) -> np.ndarray:
        winner = majority_answer(group.completions)
        return np.array([float(a is not None and a == winner) for a in _answers(group.completions)])


def _require_logits(group: Group, name: str) -> tuple[torch.Tensor, ...]:
    if group.logits is None:
        raise UserError(f"the {name} reward needs the policy's logits, and none were given.")
    return group.logits


@dataclass
class SelfCertainty(Reward):
    """Self-certainty, "Learning to Reason without External Rewards" (Intuitor, arXiv
    2505.19590): u_i = (1/|o_i|) sum_t KL(U || p_t), U uniform over the V tokens:
        KL(U || p_t) = -log V - (1/V) sum_v log p_t(v).
    The released code computes logsumexp(z_t) - mean_v z_t = KL + log V; the constant log V
    cancels in GRPO's group normalization. The paper's form is returned."""

    name: ClassVar[str] = "self_certainty"
    summary: ClassVar[str] = "mean KL(uniform || next-token distribution) (Intuitor)"
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})

    def __call__(self, group: Group, policy: Any) -> np.ndarray:
        values = []
        for logits in _require_logits(group, self.name):
            if logits.shape[0] == 0:
                values.append(0.0)
                continue
            logp = torch.log_softmax(logits.double(), dim=-1)
            kl = -math.log(logits.shape[-1]) - logp.mean(dim=-1)
            values.append(float(kl.mean()))
        return np.array(values)


@dataclass
class NegEntropy(Reward):
    """Negative mean token entropy, "Maximizing Confidence Alone Improves Reasoning" (RENT,
    arXiv 2505.22660) and "The Unreasonable Effectiveness of Entropy Minimization in LLM
    Reasoning" (arXiv 2505.15134): r = -(1/T) sum_t H(p_t), H(p) = -sum_v p(v) log p(v).
    `last_tokens` > 0 keeps only the last tokens (RENT's variant over the answer chunk)."""

    name: ClassVar[str] = "neg_entropy"
    summary: ClassVar[str] = "minus the mean token entropy (RENT / entropy minimization)"
    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    last_tokens: int = 0

    def __call__(self, group: Group, policy: Any) -> np.ndarray:
        values = []
        for logits in _require_logits(group, self.name):
            if self.last_tokens > 0:
                logits = logits[-self.last_tokens :]
            if logits.shape[0] == 0:
                values.append(0.0)
                continue
            logp = torch.log_softmax(logits.double(), dim=-1)
            entropy = -(logp.exp() * logp).sum(dim=-1)
            values.append(-float(entropy.mean()))
        return np.array(values)


def tokens_before(ids: Sequence[int], characters: int, tokenizer: Any) -> int:
    """The largest j such that decode(ids[:j]) is at most `characters` long."""
    count = 0
    for j in range(1, len(ids) + 1):
        if len(tokenizer.decode(ids[:j])) <= characters:
            count = j
        else:
            break
    return count


@dataclass
class RLPR(Reward):
    """Reference probability, "RLPR: Extrapolating RLVR to General Domains without Verifiers"
    (arXiv 2506.18254): with the completion's reasoning z (the text before its answer) kept
    and the reference y* put in place of the generated answer,
        r = (1/|y*|) sum_i pi(y*_i | x, z, y*_<i)     (mean probability, not log-probability).
    `debias`: subtract the same score without reasoning, r - (1/|y*|) sum_i pi(y*_i | x, y*_<i)
    (the paper's debiasing). Not included: the paper's EMA-based filter of low-std prompts.
    On single-step tasks (testbed `add`) z is empty for every sample, so the reward is constant
    within a group; use reasoning tasks (testbed `chain`)."""

    name: ClassVar[str] = "rlpr"
    summary: ClassVar[str] = "mean probability of the reference answer after the reasoning (RLPR)"
    needs: ClassVar[frozenset[str]] = frozenset({"labels", "score"})
    debias: bool = False

    def __call__(self, group: Group, policy: Any) -> np.ndarray:
        tokenizer = policy.tokenizer
        reference = tokenizer.encode(group.answer or "")
        prefixes = []
        for text, ids in zip(group.completions, group.completion_ids, strict=True):
            span = answer_span(text)
            reasoning_chars = span[0] if span is not None else len(text)
            kept = tokens_before(ids, reasoning_chars, tokenizer)
            prefixes.append(list(group.prompt_ids) + list(ids[:kept]))
        logps = policy.score(prefixes, [reference] * len(prefixes))
        values = np.array([float(lp.exp().mean()) if len(lp) else 0.0 for lp in logps])
        if self.debias:
            (base,) = policy.score([list(group.prompt_ids)], [reference])
            values = values - (float(base.exp().mean()) if len(base) else 0.0)
        return values


def token_f1(predicted: str | None, truth: str | None) -> float:
    """Word-level F1 of two answers (1.0 for an exact match of one-word answers)."""
    a = (normalize_answer(predicted) or "").split()
    b = (normalize_answer(truth) or "").split()
    if not a or not b:
        return 0.0
    common = sum(min(a.count(w), b.count(w)) for w in set(a))
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def token_turns(ids: Sequence[int], tokenizer: Any, separator: str) -> np.ndarray:
    """[T] turn index of each token: the number of separators in the text before it."""
    turns = np.zeros(len(ids), dtype=np.int64)
    for j in range(len(ids)):
        turns[j] = tokenizer.decode(ids[:j]).count(separator)
    return turns


@dataclass
class InfoGain(Reward):
    """Information gain per turn, "Information Gain-based Policy Optimization: A Simple and
    Effective Approach for Multi-Turn LLM Agents" (IGPO, arXiv 2510.14967), turn-level reward:
        pi(a | q, o_<=t) = exp((1/L) sum_j log pi(a_j | q, o_<=t, a_<j))   (ground truth a)
        r_t = pi(a | q, o_<=t) - pi(a | q, o_<=t-1)   for turns t < T,
        r_T = F1(ans(o), a)                             for the last turn.
    Turns are the pieces of a completion between `separator`s (the testbed's `chain` tasks:
    "7,12" has turns "7," and "12"). Advantages: grpo.turn_advantages (pooled group
    normalization, then a discounted sum over later turns, each token taking its turn's)."""

    name: ClassVar[str] = "info_gain"
    summary: ClassVar[str] = "per-turn gain in the probability of the true answer (IGPO)"
    needs: ClassVar[frozenset[str]] = frozenset({"labels", "score"})
    separator: str = TURN_SEPARATOR

    def __call__(self, group: Group, policy: Any) -> TurnRewards:
        tokenizer = policy.tokenizer
        reference = tokenizer.encode(group.answer or "")
        token_turn = [token_turns(ids, tokenizer, self.separator) for ids in group.completion_ids]
        prefixes, owners = [], []
        for i, (ids, turns) in enumerate(zip(group.completion_ids, token_turn, strict=True)):
            num_turns = int(turns.max()) + 1 if len(turns) else 1
            # the prompt alone, then the prompt with each finished turn but the last
            starts = [0] + [int(np.argmax(turns >= k)) for k in range(1, num_turns)]
            for start in starts:
                prefixes.append(list(group.prompt_ids) + list(ids[:start]))
                owners.append(i)
        logps = policy.score(prefixes, [reference] * len(prefixes))
        belief = [float(lp.mean().exp()) if len(lp) else 0.0 for lp in logps]
        per_completion: list[list[float]] = [[] for _ in group.completions]
        for owner, p in zip(owners, belief, strict=True):
            per_completion[owner].append(p)
        values = []
        for i, beliefs in enumerate(per_completion):
            gains = [beliefs[k + 1] - beliefs[k] for k in range(len(beliefs) - 1)]
            outcome = token_f1(extract_answer(group.completions[i]), group.answer)
            values.append(np.array([*gains, outcome]))
        return TurnRewards(values, token_turn)


@dataclass
class CoReward(Reward):
    """Cross-view agreement, "Co-Reward: Self-supervised Reinforcement Learning for Large
    Language Model Reasoning via Contrastive Agreement" (arXiv 2508.00410), Eq. 6-8: the prompt
    x and its rephrasing x' each get G samples; with y_v the majority answer on x and y'_v on x',
        r_i = 1[ans(o_i) = y'_v],   r'_i = 1[ans(o'_i) = y_v].
    Both groups are trained. Ties in the votes: see `majority_answer`."""

    name: ClassVar[str] = "co_reward"
    summary: ClassVar[str] = "1 if the answer agrees with the vote on the rephrased prompt"
    needs: ClassVar[frozenset[str]] = frozenset({"rephrase"})

    def __call__(self, group: Group, policy: Any) -> np.ndarray:
        if group.partner is None:
            raise UserError("the co_reward reward needs each prompt's rephrasing, and none came.")
        other_vote = majority_answer(group.partner.completions)
        return np.array(
            [float(a is not None and a == other_vote) for a in _answers(group.completions)]
        )


_JUDGE_SCORE = re.compile(r"-?\d+(?:\.\d+)?")


def parse_judge_score(text: str) -> float | None:
    """The first number in a judgement, clipped to [0, 100] and scaled to [0, 1]; None if the
    judgement holds no number."""
    match = _JUDGE_SCORE.search(text)
    if match is None:
        return None
    return min(max(float(match.group()), 0.0), 100.0) / 100.0


@dataclass
class SelfJudge(Reward):
    """The policy judges its own answer, "SSR-Zero: Simple Self-Rewarding Reinforcement Learning
    for Machine Translation" (arXiv 2505.16637): the policy is shown the question and its
    answer in a judging prompt (`template`, with {prompt} and {completion}), replies greedily,
    and the first number of the reply, 0-100, scaled to [0, 1], is the reward; a reply without
    a number scores 0. The paper judges translations with no reference, as here."""

    name: ClassVar[str] = "self_judge"
    summary: ClassVar[str] = "the policy's own 0-100 score of its answer (SSR-Zero)"
    needs: ClassVar[frozenset[str]] = frozenset({"generate"})
    template: str = JUDGE_TEMPLATE
    max_tokens: int = 4

    def __call__(self, group: Group, policy: Any) -> np.ndarray:
        prompts = [
            self.template.format(prompt=group.prompt, completion=c) for c in group.completions
        ]
        replies = policy.greedy(prompts, self.max_tokens)
        return np.array([parse_judge_score(r) or 0.0 for r in replies])


def ngram_embedding(text: str, dim: int = 256, orders: Sequence[int] = (1, 2, 3)) -> np.ndarray:
    """A fixed text embedding: signed hashed character n-gram counts, L2-normalized, [dim]."""
    vector = np.zeros(dim)
    for n in orders:
        for start in range(len(text) - n + 1):
            code = zlib.crc32(text[start : start + n].encode())
            vector[code % dim] += 1.0 if (code >> 16) & 1 else -1.0
    norm = np.linalg.norm(vector)
    return vector / norm if norm > 0 else vector


class _EpisodicMemory:
    """Memory-R+'s M: up to `capacity` queries, each with its last `per_query` responses."""

    def __init__(self, capacity: int, per_query: int) -> None:
        self.capacity = capacity
        self.per_query = per_query
        self.entries: OrderedDict[str, tuple[np.ndarray, deque[np.ndarray]]] = OrderedDict()

    def write(self, key: str, query: np.ndarray, responses: list[np.ndarray]) -> None:
        if not responses:
            return
        if key not in self.entries:
            if len(self.entries) >= self.capacity:
                self.entries.popitem(last=False)  # the oldest query goes
            self.entries[key] = (query, deque(maxlen=self.per_query))
        self.entries[key][1].extend(responses)

    def read(self, query: np.ndarray, k: int) -> list[np.ndarray]:
        """B(M, q): the responses of the k stored queries most cosine-similar to `query`."""
        if not self.entries:
            return []
        keys = list(self.entries)
        similarity = np.array([float(self.entries[key][0] @ query) for key in keys])
        order = np.argsort(-similarity, kind="stable")[:k]
        return [r for i in order for r in self.entries[keys[i]][1]]


@dataclass
class MemoryNovelty(Reward):
    """Episodic-memory reward, "Reasoning Under 1 Billion: Memory-Augmented Reinforcement
    Learning for Large Language Models" (Memory-R+, arXiv 2504.02273), Sec. 2:
        Eq. 2  after each step, responses with outcome R > tau_s go to the success memory M_s,
               those with R <= tau_f to the failure memory M_f;
        Eq. 3  B(M, q) = responses of the k stored queries nearest q (cosine similarity);
        Eq. 4  R_exploit = -|| a - mean(B(M_s, q)) ||;
        Eq. 5  R_explore = 1 - max_{a' in B(M_f, q)} cos(a, a');
        Eq. 6  each min-max normalized over a window of the last `window` values (here: the
               window before this step plus this group's values);
        Eq. 7  R_mem = w_exploit * R_exploit_hat + w_explore * R_explore_hat.
    A term whose memory holds nothing for the query is 0. The paper trains on R + R_mem (Eq. 8):
    combine with the outcome reward, e.g. --reward verifier,memory_novelty. `outcome` names the
    reward that decides success (the paper's verifier; `majority` makes it label-free).
    Embeddings: the paper uses a pretrained sentence encoder, which cannot be downloaded here;
    this uses hashed character n-grams (`ngram_embedding`)."""

    name: ClassVar[str] = "memory_novelty"
    summary: ClassVar[str] = (
        "kNN episodic memory: near past successes, far from failures (Memory-R+)"
    )
    outcome: str = "verifier"
    k: int = 1
    capacity: int = 10_000
    per_query: int = 100
    window: int = 100
    success_threshold: float = 0.5
    failure_threshold: float = 0.5
    exploit_weight: float = 1.0
    explore_weight: float = 1.0
    explore_warmup_steps: int = 0
    embedding_dim: int = 256
    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        if self.outcome not in ("verifier", "majority"):
            raise UserError(
                f"memory_novelty outcome must be verifier or majority, got {self.outcome!r}."
            )
        self._outcome: Reward = Verifier() if self.outcome == "verifier" else Majority()
        self.success = _EpisodicMemory(self.capacity, self.per_query)
        self.failure = _EpisodicMemory(self.capacity, self.per_query)
        self.windows = {"exploit": deque(maxlen=self.window), "explore": deque(maxlen=self.window)}
        self._pending: dict[tuple[int, int], dict[str, Any]] = {}

    def requirements(self) -> frozenset[str]:
        return self._outcome.requirements()

    def _normalize(self, raw: list[float | None], which: str) -> np.ndarray:
        present = [r for r in raw if r is not None]
        pool = list(self.windows[which]) + present
        if not pool:
            return np.zeros(len(raw))
        low, high = min(pool), max(pool)
        return np.array(
            [0.0 if r is None else (r - low) / (high - low + self.epsilon) for r in raw]
        )

    def __call__(self, group: Group, policy: Any) -> np.ndarray:
        query = ngram_embedding(group.prompt, self.embedding_dim)
        responses = [ngram_embedding(c, self.embedding_dim) for c in group.completions]
        successes = self.success.read(query, self.k)
        failures = self.failure.read(query, self.k)
        exploit: list[float | None] = [None] * group.size
        explore: list[float | None] = [None] * group.size
        if successes:
            centroid = np.mean(successes, axis=0)
            exploit = [-float(np.linalg.norm(a - centroid)) for a in responses]
        if failures and group.step >= self.explore_warmup_steps:
            stack = np.stack(failures)
            explore = [1.0 - float(np.max(stack @ a)) for a in responses]
        outcome = np.asarray(self._outcome(group, policy))
        self._pending[(group.group_id, group.view)] = {
            "key": group.prompt,
            "query": query,
            "responses": responses,
            "outcome": outcome,
            "exploit": [r for r in exploit if r is not None],
            "explore": [r for r in explore if r is not None],
        }
        return self.exploit_weight * self._normalize(
            exploit, "exploit"
        ) + self.explore_weight * self._normalize(explore, "explore")

    def update(self, groups: Sequence[Group]) -> None:
        for key in sorted(self._pending):
            entry = self._pending[key]
            outcome, responses = entry["outcome"], entry["responses"]
            won = [a for a, r in zip(responses, outcome, strict=True) if r > self.success_threshold]
            lost = [
                a for a, r in zip(responses, outcome, strict=True) if r <= self.failure_threshold
            ]
            self.success.write(entry["key"], entry["query"], won)
            self.failure.write(entry["key"], entry["query"], lost)
            self.windows["exploit"].extend(entry["exploit"])
            self.windows["explore"].extend(entry["explore"])
        self._pending.clear()


@dataclass
class RandomReward(Reward):
    """r_i ~ Bernoulli(p), independent of the completion: the no-signal control of "Spurious
    Rewards: Rethinking Training Signals in RLVR" (arXiv 2506.10947), with p = 0.5. Drawn
    from a generator keyed by (seed, step, group, view), so splitting a batch changes nothing."""

    name: ClassVar[str] = "random"
    summary: ClassVar[str] = "coin flips, independent of the completion (no-signal control)"
    probability: float = 0.5
    seed: int = 0

    def __call__(self, group: Group, policy: Any) -> np.ndarray:
        rng = np.random.default_rng([self.seed, group.step, group.group_id, group.view])
        return (rng.random(group.size) < self.probability).astype(float)


REWARDS: dict[str, type[Reward]] = {
    cls.name: cls
    for cls in (
        Verifier,
        Majority,
        SelfCertainty,
        NegEntropy,
        RLPR,
        InfoGain,
        CoReward,
        SelfJudge,
        MemoryNovelty,
        RandomReward,
    )
}


def _coerce(value: str, annotation: Any, where: str) -> Any:
    kind = {"int": int, "float": float, "bool": bool, "str": str}.get(str(annotation), str)
    if kind is bool:
        lowered = value.lower()
        if lowered in ("1", "true", "yes"):
            return True
        if lowered in ("0", "false", "no"):
            return False
        raise UserError(f"{where} must be true or false, got {value!r}.")
    try:
        return kind(value)
    except ValueError:
        raise UserError(f"{where} must be a {kind.__name__}, got {value!r}.") from None


def make_reward(name: str, options: dict[str, str] | None = None) -> Reward:
    """A reward by name; `options` set its fields from strings (`--reward-option name.key=v`)."""
    if name not in REWARDS:
        raise unknown("reward", name, REWARDS)
    cls = REWARDS[name]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, text in (options or {}).items():
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            raise UserError(f"the {name} reward has no option {key!r}; its options: {known}.")
        values[key] = _coerce(text, fields[key].type, f"{name}.{key}")
    return cls(**values)


# ------------------------------------------------------------------------------ scoring a step


@dataclass
class Scored:
    """A sample's reward: `total` (weighted sum), its parts by reward name, and for turn
    rewards the weighted reward of each turn and the turn of each token."""

    total: float
    parts: dict[str, float]
    turn_values: np.ndarray | None = None
    token_turn: np.ndarray | None = None


class RewardSet:
    """Several rewards summed with weights, scored group by group as samples arrive."""

    def __init__(
        self,
        rewards: Sequence[Reward],
        weights: Sequence[float] | None = None,
        group_size: int = 8,
        views: int = 1,
    ) -> None:
        if not rewards:
            raise UserError("give at least one reward.")
        self.rewards = list(rewards)
        self.weights = list(weights) if weights is not None else [1.0] * len(self.rewards)
        if len(self.weights) != len(self.rewards):
            raise UserError(
                f"{len(self.weights)} reward weights for {len(self.rewards)} rewards; "
                "give one each."
            )
        self.group_size = group_size
        self.views = views

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    def requirements(self) -> frozenset[str]:
        needs: frozenset[str] = frozenset()
        for reward in self.rewards:
            needs |= reward.requirements()
        return needs

    def score(
        self, chunks: Iterable[Sequence[Sample]], policy: Any, step: int
    ) -> dict[tuple[int, int, int], Scored]:
        """Rewards keyed by (group_id, view, index) for samples given in any order and split."""
        pending: dict[int, list[Sample]] = {}
        unit = self.group_size * self.views
        results: dict[tuple[int, int, int], Scored] = {}
        scored_groups: list[Group] = []
        for chunk in chunks:
            for sample in chunk:
                pending.setdefault(sample.group_id, []).append(sample)
                if len(pending[sample.group_id]) == unit:
                    groups = self._assemble(pending.pop(sample.group_id), step)
                    for group in groups:
                        self._score_group(group, policy, results)
                    scored_groups.extend(groups)
        if pending:
            gid, samples = next(iter(pending.items()))
            raise ValueError(
                f"group {gid} is incomplete: {len(samples)} of {unit} samples arrived; a group "
                "must be scored whole."
            )
        scored_groups.sort(key=lambda g: (g.group_id, g.view))
        for reward in self.rewards:
            reward.update(scored_groups)
        return results

    def _assemble(self, samples: list[Sample], step: int) -> list[Group]:
        by_view: dict[int, list[Sample]] = {}
        for sample in samples:
            by_view.setdefault(sample.view, []).append(sample)
        if sorted(by_view) != list(range(self.views)) or any(
            sorted(s.index for s in v) != list(range(self.group_size)) for v in by_view.values()
        ):
            raise ValueError(f"group {samples[0].group_id} has duplicate or missing samples.")
        groups = [Group.of(by_view[v], step) for v in range(self.views)]
        if self.views == 2:
            first, second = groups
            groups = [
                dataclasses.replace(first, partner=second),
                dataclasses.replace(second, partner=first),
            ]
        return groups

    def _score_group(
        self, group: Group, policy: Any, results: dict[tuple[int, int, int], Scored]
    ) -> None:
        size = group.size
        totals = np.zeros(size)
        parts: list[dict[str, float]] = [{} for _ in range(size)]
        turn_values: list[np.ndarray] | None = None
        token_turn: list[np.ndarray] | None = None
        sequence_part = np.zeros(size)
        for reward, weight in zip(self.rewards, self.weights, strict=True):
            value = reward(group, policy)
            if isinstance(value, TurnRewards):
                totals_here = value.totals()
                if turn_values is None:
                    turn_values = [weight * v for v in value.values]
                    token_turn = value.token_turn
                else:
                    turn_values = [
                        a + weight * v for a, v in zip(turn_values, value.values, strict=True)
                    ]
            else:
                totals_here = np.asarray(value, dtype=float)
                if totals_here.shape != (size,):
                    raise ValueError(
                        f"{reward.name} returned shape {totals_here.shape}, not ({size},)"
                    )
                sequence_part += weight * totals_here
            totals += weight * totals_here
            for i in range(size):
                parts[i][reward.name] = float(totals_here[i])
        for i in range(size):
            turns = None
            if turn_values is not None:
                # a whole-sequence reward belongs to the last turn, where the outcome is known
                turns = turn_values[i].copy()
                turns[-1] += sequence_part[i]
            results[(group.group_id, group.view, i)] = Scored(
                float(totals[i]),
                parts[i],
                turns,
                None if token_turn is None else token_turn[i],
            )


def check_requirements(
    rewards: RewardSet,
    capabilities: frozenset[str],
    has_labels: bool,
    has_rephrase: bool,
    backend: str,
) -> None:
    """UserError when a reward needs what the backend or the tasks cannot give."""
    for reward in rewards.rewards:
        needs = reward.requirements()
        missing = sorted((needs & {"logits", "score", "generate"}) - capabilities)
        if missing:
            raise UserError(
                f"the {reward.name} reward needs the policy's {' and '.join(missing)}, which the "
                f"{backend} backend cannot give. Use a backend that exposes them (autotelic's "
                "own trainer, `autotelic lm-train`), or a text-only reward."
            )
        if "labels" in needs and not has_labels:
            raise UserError(
                f"the {reward.name} reward needs ground-truth answers, and the tasks have none."
            )
        if "rephrase" in needs and not has_rephrase:
            raise UserError(
                f"the {reward.name} reward needs a rephrasing of every prompt; give each task-file "
                'row a "rephrase" field, or use the generated testbed tasks.'
            )
