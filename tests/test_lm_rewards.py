"""Each language-model reward against values computed by hand on small fixed groups, and group
rewards that do not depend on how a batch is split."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from autotelic.errors import UserError  # noqa: E402
from autotelic.lm import rewards as rw  # noqa: E402
from autotelic.lm.model import CharTokenizer  # noqa: E402
from autotelic.lm.trl_adapter import reward_function  # noqa: E402

TOKENIZER = CharTokenizer()


def group(
    completions: list[str],
    prompt: str = "3+4=",
    answer: str | None = "7",
    logits: list[torch.Tensor] | None = None,
    step: int = 1,
    group_id: int = 0,
) -> rw.Group:
    return rw.Group(
        group_id=group_id,
        view=0,
        step=step,
        prompt=prompt,
        prompt_ids=tuple(TOKENIZER.encode(prompt)),
        answer=answer,
        completions=tuple(completions),
        completion_ids=tuple(tuple(TOKENIZER.encode(c)) for c in completions),
        logits=None if logits is None else tuple(logits),
    )


class StubPolicy:
    """Answers scoring calls from a table {prefix text: probabilities of the target tokens}, and
    judging prompts from a table {prompt: reply}; records what it was asked."""

    def __init__(
        self, probabilities: dict[str, list[float]], replies: dict[str, str] | None = None
    ):
        self.tokenizer = TOKENIZER
        self.probabilities = probabilities
        self.replies = replies or {}
        self.asked: list[tuple[str, str]] = []

    def score(self, prefixes, targets):
        out = []
        for prefix, target in zip(prefixes, targets, strict=True):
            text = TOKENIZER.decode(prefix)
            self.asked.append((text, TOKENIZER.decode(target)))
            probs = self.probabilities[text]
            assert len(probs) == len(target)
            out.append(torch.log(torch.tensor(probs, dtype=torch.float64)))
        return out

    def greedy(self, prompts, max_new_tokens):
        return [self.replies[p] for p in prompts]


# ------------------------------------------------------------------------------ verifier, votes


def test_verifier_exact_match_after_normalization():
    values = rw.Verifier()(group(["19", " 19", "18", "019", "", "x19"], answer="19"), None)
    assert values.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_majority_vote_with_a_tie_goes_to_the_answer_seen_first():
    # "3" and "5" both have two votes; "3" appears first; the empty completion has no vote
    assert rw.Majority()(group(["3", "5", "5", "3", ""]), None).tolist() == [1, 0, 0, 1, 0]
    # the same tie, "5" first this time
    assert rw.Majority()(group(["5", "3", "3", "5"]), None).tolist() == [1, 0, 0, 1]
    # "07" and "7" are one answer, which outvotes "2"
    assert rw.Majority()(group(["07", "2", "7", "2", "7.0"]), None).tolist() == [1, 0, 1, 0, 1]
    # nobody answers: nobody is rewarded
    assert rw.Majority()(group(["", " "]), None).tolist() == [0, 0]
    assert rw.majority_answer(["", "4", "4"]) == "4"


def test_co_reward_uses_the_vote_on_the_other_view():
    first = group(["12", "12", "5"], prompt="7+5=")
    second = group(["5", "5", "12"], prompt="5+7=")
    first = rw.dataclasses.replace(first, partner=second)
    second = rw.dataclasses.replace(second, partner=first)
    # the vote on the rephrasing is "5", the vote on the prompt "12"
    assert rw.CoReward()(first, None).tolist() == [0, 0, 1]
    assert rw.CoReward()(second, None).tolist() == [0, 0, 1]
    with pytest.raises(UserError, match="rephrasing"):
        rw.CoReward()(group(["1"]), None)


# ------------------------------------------------------------------------------ logits


def known_logits() -> torch.Tensor:
    # token 1: uniform over 4; token 2: probabilities 1/8, 1/8, 1/8, 5/8
    return torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, math.log(5.0)]], dtype=torch.float64)


def test_self_certainty_is_mean_kl_from_uniform():
    second = 0.25 * (3 * math.log(0.25 / 0.125) + math.log(0.25 / 0.625))
    expected = (0.0 + second) / 2
    values = rw.SelfCertainty()(group(["ab", ""], logits=[known_logits(), torch.zeros(0, 4)]), None)
    assert values[0] == pytest.approx(expected, abs=1e-9)
    assert values[1] == 0.0
    # a more peaked distribution is more certain
    sharp = torch.tensor([[0.0, 0.0, 0.0, 10.0]])
    more = rw.SelfCertainty()(group(["a"], logits=[sharp]), None)[0]
    assert more > expected


def test_neg_entropy_is_minus_mean_token_entropy():
    entropy_1 = math.log(4.0)
    entropy_2 = 3 * 0.125 * math.log(8.0) + 0.625 * math.log(1.0 / 0.625)
    values = rw.NegEntropy()(group(["ab"], logits=[known_logits()]), None)
    assert values[0] == pytest.approx(-(entropy_1 + entropy_2) / 2, abs=1e-9)
    last = rw.NegEntropy(last_tokens=1)(group(["ab"], logits=[known_logits()]), None)
    assert last[0] == pytest.approx(-entropy_2, abs=1e-9)


def test_rewards_that_need_logits_say_so_without_them():
    with pytest.raises(UserError, match="logits"):
        rw.SelfCertainty()(group(["a"]), None)


# ------------------------------------------------------------------------------ scoring calls


def test_rlpr_is_mean_reference_probability_after_each_reasoning():
    policy = StubPolicy({"3+4+5=7,": [0.9, 0.5], "3+4+5=9,": [0.2, 0.4], "3+4+5=": [0.1, 0.3]})
    chain = group(["7,12", "9,13"], prompt="3+4+5=", answer="12")
    values = rw.RLPR()(chain, policy)
    assert values.tolist() == pytest.approx([0.7, 0.3])
    # the reference replaced the generated answer, after the completion's own reasoning
    assert policy.asked == [("3+4+5=7,", "12"), ("3+4+5=9,", "12")]
    debiased = rw.RLPR(debias=True)(chain, policy)
    assert debiased.tolist() == pytest.approx([0.5, 0.1])


def test_info_gain_per_turn():
    policy = StubPolicy({"3+4+5=": [0.1, 0.1], "3+4+5=7,": [0.8, 0.2], "3+4+5=9,": [0.05, 0.05]})
    chain = group(["7,12", "9,11"], prompt="3+4+5=", answer="12")
    out = rw.InfoGain()(chain, policy)
    # belief = geometric mean of the answer's token probabilities: 0.1, 0.4, 0.05
    assert out.values[0].tolist() == pytest.approx([0.4 - 0.1, 1.0])  # last turn: F1 = 1
    assert out.values[1].tolist() == pytest.approx([0.05 - 0.1, 0.0])
    assert out.token_turn[0].tolist() == [0, 0, 1, 1]  # "7" "," | "1" "2"
    assert out.totals().tolist() == pytest.approx([1.3, -0.05])


def test_self_judge_parses_the_policys_own_score():
    assert rw.parse_judge_score("100") == 1.0
    assert rw.parse_judge_score(" 85 points") == pytest.approx(0.85)
    assert rw.parse_judge_score("250") == 1.0
    assert rw.parse_judge_score("-5") == 0.0
    assert rw.parse_judge_score("7.5/10") == pytest.approx(0.075)
    assert rw.parse_judge_score("no idea") is None
    policy = StubPolicy({}, {"3+4=7?": "100", "3+4=8?": "0", "3+4=9?": "maybe"})
    values = rw.SelfJudge()(group(["7", "8", "9"]), policy)
    assert values.tolist() == [1.0, 0.0, 0.0]
    custom = rw.SelfJudge(template="Q {prompt} A {completion} score:")
    policy = StubPolicy({}, {"Q 3+4= A 7 score:": "42"})
    assert custom(group(["7"]), policy).tolist() == [0.42]


# ------------------------------------------------------------------------------ memory, random


def test_memory_novelty_against_a_hand_computation():
    reward = rw.MemoryNovelty(window=100)
    first = group(["7", "8", "70"], step=1)
    assert reward(first, None).tolist() == [0.0, 0.0, 0.0]  # empty memories: no signal
    reward.update([first])
    second = group(["7", "9", "8"], step=2)
    values = reward(second, None)

    embed = rw.ngram_embedding
    responses = [embed(c) for c in second.completions]
    centroid = embed("7")  # the one success so far
    failures = [embed("8"), embed("70")]
    exploit = [-np.linalg.norm(a - centroid) for a in responses]
    explore = [1 - max(float(a @ f) for f in failures) for a in responses]

    def normalized(raw: list[float]) -> list[float]:  # Eq. 6, the window held nothing yet
        return [(r - min(raw)) / (max(raw) - min(raw) + 1e-8) for r in raw]

    expected = np.add(normalized(exploit), normalized(explore))
    assert values == pytest.approx(expected)
    # a repeat of the success is nearest the success centroid; a repeat of a failure least novel
    assert values[0] == pytest.approx(max(values)) and values[2] < values[1]


def test_memory_novelty_label_free_outcome_and_bad_option():
    assert rw.make_reward("memory_novelty", {"outcome": "majority"}).requirements() == frozenset()
    assert rw.make_reward("memory_novelty").requirements() == {"labels"}
    with pytest.raises(UserError, match="outcome"):
        rw.make_reward("memory_novelty", {"outcome": "vibes"})
    with pytest.raises(UserError, match="no option"):
        rw.make_reward("majority", {"k": "3"})
    with pytest.raises(UserError, match="must be a int"):
        rw.make_reward("memory_novelty", {"k": "many"})
    with pytest.raises(UserError, match="Did you mean"):
        rw.make_reward("majorty")


def test_random_reward_is_seeded_by_step_and_group_only():
    reward = rw.RandomReward()
    a = reward(group(["1"] * 64, step=3, group_id=5), None)
    b = reward(group(["2"] * 64, step=3, group_id=5), None)
    c = reward(group(["1"] * 64, step=4, group_id=5), None)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    draws = np.concatenate([reward(group(["1"] * 64, step=s), None) for s in range(50)])
    assert set(draws.tolist()) == {0.0, 1.0} and abs(draws.mean() - 0.5) < 0.05


# ------------------------------------------------------------------------------ whole vs split


def make_samples(views: int = 1) -> list[rw.Sample]:
    answers = {0: "7", 1: "9", 2: "5"}
    completions = {
        0: [["7", "7", "8", "6"], ["7", "1", "1", "7"]],
        1: [["9", "8", "8", "9"], ["9", "9", "2", ""]],
        2: [["5", "", "4", "5"], ["4", "4", "5", "5"]],
    }
    samples = []
    for gid, answer in answers.items():
        for view in range(views):
            prompt = f"q{gid}v{view}="
            for index, text in enumerate(completions[gid][view]):
                samples.append(rw.Sample(gid, view, index, prompt, (), text, (), answer))
    return samples


def reward_set(views: int) -> rw.RewardSet:
    names = ["verifier", "majority", "memory_novelty", "random"]
    if views == 2:
        names.append("co_reward")
    rewards = [rw.make_reward(n) for n in names]
    return rw.RewardSet(
        rewards, [1.0, 0.5, 0.25, 2.0, 1.0][: len(names)], group_size=4, views=views
    )


@pytest.mark.parametrize("views", [1, 2])
def test_group_rewards_are_identical_whole_or_split(views: int):
    whole, split = reward_set(views), reward_set(views)
    shuffled = make_samples(views)
    random.Random(0).shuffle(shuffled)
    for step in (1, 2):  # the second step reads the memories the first one wrote
        expected = whole.score([make_samples(views)], None, step)
        sizes = [1, 3, 2, 5, 7]
        chunks, start = [], 0
        while start < len(shuffled):
            size = sizes[len(chunks) % len(sizes)]
            chunks.append(shuffled[start : start + size])
            start += size
        got = split.score(chunks, None, step)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key].total == pytest.approx(value.total, abs=1e-12)
            assert got[key].parts == pytest.approx(value.parts, abs=1e-12)
    # the memory reward did see something on step 2, so the check above was not vacuous
    assert any(v.parts["memory_novelty"] != 0 for v in expected.values())


def test_an_incomplete_group_is_refused():
    with pytest.raises(ValueError, match="incomplete"):
        reward_set(1).score([make_samples(1)[:-1]], None, 1)


def test_weighted_sum_and_turn_rewards_combine():
    policy = StubPolicy({"3+4+5=": [0.1, 0.1], "3+4+5=7,": [0.8, 0.2], "3+4+5=9,": [0.05, 0.05]})
    samples = [
        rw.Sample(
            0,
            0,
            i,
            "3+4+5=",
            tuple(TOKENIZER.encode("3+4+5=")),
            text,
            tuple(TOKENIZER.encode(text)),
            "12",
        )
        for i, text in enumerate(["7,12", "9,11"])
    ]
    combined = rw.RewardSet([rw.InfoGain(), rw.Verifier()], [2.0, 0.5], group_size=2)
    scored = combined.score([samples], policy, 1)
    first, second = scored[(0, 0, 0)], scored[(0, 0, 1)]
    # info_gain turns x2, and the verifier's 0.5 x outcome added on the last turn
    assert first.turn_values.tolist() == pytest.approx([0.6, 2.0 + 0.5])
    assert second.turn_values.tolist() == pytest.approx([-0.1, 0.0])
    assert first.total == pytest.approx(2 * 1.3 + 0.5)
    assert first.parts == pytest.approx({"info_gain": 1.3, "verifier": 1.0})


# ------------------------------------------------------------------------------ backends


def test_a_reward_needing_logits_is_refused_by_a_backend_without_them():
    rewards = rw.RewardSet([rw.SelfCertainty()], group_size=4)
    with pytest.raises(UserError, match="self_certainty reward needs the policy's logits"):
        rw.check_requirements(rewards, frozenset({"generate"}), True, True, "text-only")
    rw.check_requirements(rewards, frozenset({"logits"}), True, True, "tiny")
    with pytest.raises(UserError, match="ground-truth"):
        rw.check_requirements(rw.RewardSet([rw.RLPR()]), frozenset({"score"}), False, True, "tiny")
    with pytest.raises(UserError, match="rephrase"):
        rw.check_requirements(rw.RewardSet([rw.CoReward()]), frozenset(), True, False, "tiny")


def test_trl_adapter_runs_text_rewards_and_refuses_the_others():
    majority = reward_function("majority", num_generations=3)
    prompts = ["a=", "a=", "a=", "b=", "b=", "b="]
    completions = ["1", "2", "1", [{"content": "4"}], [{"content": "4"}], [{"content": "5"}]]
    assert majority(prompts=prompts, completions=completions) == [1, 0, 1, 1, 1, 0]
    verifier = reward_function("verifier", num_generations=3)
    answers = ["1"] * 3 + ["5"] * 3
    assert verifier(prompts=prompts, completions=completions, answer=answers) == [1, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="split across processes"):
        majority(prompts=prompts[:4], completions=completions[:4])
    with pytest.raises(ValueError, match="share one prompt"):
        majority(prompts=["a=", "b=", "a=", "b=", "a=", "b="], completions=completions)
    for name in ("self_certainty", "neg_entropy", "rlpr", "info_gain", "self_judge", "co_reward"):
        with pytest.raises(UserError, match="cannot run as a TRL reward function"):
            reward_function(name, num_generations=4)
