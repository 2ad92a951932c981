"""GRPO and Dr. GRPO advantages and losses against reference computations written here with
plain Python loops, and the collapse monitor on hand-made curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from autotelic.lm.collapse import CollapseMonitor, running_mean  # noqa: E402
from autotelic.lm.grpo import (  # noqa: E402
    group_advantages,
    policy_loss,
    token_advantages,
    turn_advantages,
)
from autotelic.lm.rewards import Scored  # noqa: E402


def reference_advantages(rewards: list[float], scale: bool) -> list[float]:
    n = len(rewards)
    mean = math.fsum(rewards) / n
    std = math.sqrt(math.fsum((r - mean) ** 2 for r in rewards) / (n - 1))
    return [(r - mean) / (std + 1e-4) if scale else r - mean for r in rewards]


def test_group_advantages():
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert group_advantages(np.array(rewards), True) == pytest.approx(
        reference_advantages(rewards, True), abs=1e-12
    )
    assert group_advantages(np.array(rewards), False) == pytest.approx(
        reference_advantages(rewards, False), abs=1e-12
    )
    # a group that all agrees teaches nothing
    assert group_advantages(np.ones(4), True).tolist() == [0.0] * 4


def test_turn_advantages_pool_the_group_then_sum_later_turns():
    values = [np.array([0.3, 1.0]), np.array([-0.05, 0.0]), np.array([0.5])]
    gamma = 0.9
    pooled = [0.3, 1.0, -0.05, 0.0, 0.5]
    mean = sum(pooled) / 5
    std = math.sqrt(sum((p - mean) ** 2 for p in pooled) / 4) + 1e-4
    norm = [[(v - mean) / std for v in row] for row in values]
    expected = [[n[0] + gamma * n[1], n[1]] for n in norm[:2]] + [[norm[2][0]]]
    got = turn_advantages(values, True, gamma)
    for g, e in zip(got, expected, strict=True):
        assert g.tolist() == pytest.approx(e, abs=1e-12)


def reference_loss(logp, old, adv, mask, loss_type, eps, max_tokens, ref=None, beta=0.0):
    n, t = len(logp), len(logp[0])
    total = 0.0
    for i in range(n):
        row, length = 0.0, 0
        for j in range(t):
            if not mask[i][j]:
                continue
            length += 1
            ratio = math.exp(logp[i][j] - old[i][j])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            term = -min(ratio * adv[i][j], clipped * adv[i][j])
            if ref is not None:
                x = ref[i][j] - logp[i][j]
                term += beta * (math.exp(x) - x - 1)
            row += term
        total += row / max(length, 1) if loss_type == "grpo" else row
    return total / n if loss_type == "grpo" else total / (n * max_tokens)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_policy_loss_matches_the_reference(loss_type: str, beta: float):
    generator = torch.Generator().manual_seed(1)
    n, t = 6, 5
    logp = -torch.rand(n, t, generator=generator, dtype=torch.float64) * 3
    old = logp + (torch.rand(n, t, generator=generator, dtype=torch.float64) - 0.5) * 0.8
    ref = logp + (torch.rand(n, t, generator=generator, dtype=torch.float64) - 0.5)
    adv = torch.randn(n, t, generator=generator, dtype=torch.float64)
    lengths = [5, 3, 1, 4, 2, 5]
    mask = torch.tensor([[j < length for j in range(t)] for length in lengths])
    loss, stats = policy_loss(logp, old, adv, mask, loss_type, 0.2, 7, ref, beta)
    expected = reference_loss(
        logp.tolist(),
        old.tolist(),
        adv.tolist(),
        mask.tolist(),
        loss_type,
        0.2,
        7,
        ref.tolist() if beta else None,
        beta,
    )
    assert float(loss) == pytest.approx(expected, rel=1e-9)
    assert 0.0 < stats["clip_fraction"] < 1.0  # some ratios were clipped, some not


def test_on_policy_gradient_is_advantage_over_length():
    """With pi = pi_old, d loss / d logp[i, t] = -A[i, t] / (N |o_i|) for grpo and
    -A[i, t] / (N L_max) for dr_grpo."""
    n, t = 3, 4
    lengths = [4, 2, 1]
    mask = torch.tensor([[j < length for j in range(t)] for length in lengths])
    adv = torch.tensor([[1.0] * t, [-2.0] * t, [0.5] * t], dtype=torch.float64)
    for loss_type, denominator in (("grpo", lengths), ("dr_grpo", [10] * n)):
        logp = torch.full((n, t), -1.0, dtype=torch.float64, requires_grad=True)
        loss, _ = policy_loss(logp, logp.detach(), adv, mask, loss_type, 0.2, 10)
        loss.backward()
        for i in range(n):
            for j in range(t):
                want = -adv[i, j].item() / (n * denominator[i]) if j < lengths[i] else 0.0
                assert logp.grad[i, j].item() == pytest.approx(want, abs=1e-12)


def test_token_advantages_broadcast_sequences_and_map_turns():
    scored = [
        Scored(1.0, {}),
        Scored(0.0, {}),
        Scored(0.5, {}, np.array([0.2, 1.0]), np.array([0, 1, 1])),
    ]
    scored.append(Scored(0.0, {}, np.array([0.0]), np.array([0, 0])))
    out = token_advantages(scored, [[0, 1], [2, 3]], [2, 1, 3, 2], "dr_grpo", 1.0)
    assert out[0].tolist() == [0.5, 0.5, 0.0]
    assert out[1].tolist() == [-0.5, 0.0, 0.0]
    # turns pooled over the group: mean of 0.2, 1.0, 0.0 = 0.4; then summed over later turns
    assert out[2].tolist() == pytest.approx([-0.2 + 0.6, 0.6, 0.6])
    assert out[3].tolist() == pytest.approx([-0.4, -0.4, 0.0])


# ------------------------------------------------------------------------------ collapse


def feed(monitor: CollapseMonitor, accuracy: list[float], reward: list[float]) -> None:
    for step, (a, r) in enumerate(zip(accuracy, reward, strict=True)):
        monitor.observe(step * 10, r, a)


def test_running_mean():
    assert running_mean([1.0, 2.0, 3.0, 4.0], 3).tolist() == [1.0, 1.5, 2.0, 3.0]


def test_collapse_is_reward_holding_while_accuracy_falls():
    monitor = CollapseMonitor(drop=0.1, window=1)
    feed(
        monitor,
        accuracy=[0.3, 0.4, 0.5, 0.5, 0.3, 0.2, 0.1],
        reward=[0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.0],
    )
    assert monitor.peak_step == 20  # the first of the two 0.5s
    assert monitor.collapse_step == 40  # first accuracy 0.1 below the peak with reward >= 0.6
    assert "collapse" in (monitor.warning() or "")
    report = monitor.report()
    assert report["peak_accuracy_step"] == 20 and report["collapse_step"] == 40


def test_no_collapse_when_the_reward_falls_with_accuracy_or_accuracy_holds():
    tracking = CollapseMonitor(drop=0.1, window=1)
    feed(tracking, [0.3, 0.5, 0.3, 0.2], [0.3, 0.5, 0.3, 0.2])  # a verifier-like reward
    assert tracking.peak_step == 10 and tracking.collapse_step is None
    assert tracking.warning() is None
    steady = CollapseMonitor(drop=0.1, window=1)
    feed(steady, [0.3, 0.5, 0.45, 0.46], [0.1, 0.5, 0.9, 1.0])  # falls less than `drop`
    assert steady.collapse_step is None


def test_smoothing_ignores_a_single_bad_evaluation():
    monitor = CollapseMonitor(drop=0.1, window=3)
    feed(monitor, [0.5, 0.5, 0.5, 0.3, 0.5, 0.5], [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    # smoothed: 0.5, 0.5, 0.5, 0.433, 0.433, 0.433: never 0.1 below the peak
    assert monitor.collapse_step is None


def test_agreement_saturation_step():
    monitor = CollapseMonitor(saturation=0.9)
    for step, agreement in enumerate([0.3, 0.6, 0.92, 0.5, 1.0], start=1):
        monitor.observe_agreement(step, agreement)
    assert monitor.agreement_saturation_step == 3
