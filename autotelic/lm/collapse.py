"""Collapse monitor: the label-free reward against held-out true accuracy.

Label-free rewards sharpen the policy's initial distribution; their reward keeps rising while
true accuracy rises, then falls ("How Far Can Unsupervised RLVR Scale LLM Training?", arXiv
2603.08660, which proposes a "model collapse step" as a trainability indicator without a
confirmed definition). This monitor uses its own definition, on running means over `window`
evaluations:

    peak step      the evaluation with the highest smoothed held-out accuracy (first if tied)
    collapse step  the first evaluation after the peak whose smoothed accuracy is at least `drop`
                   below the peak while the smoothed reward is at least its value at the peak:
                   the reward no longer tracks accuracy
    agreement saturation step
                   the first step whose vote agreement (share of a group agreeing with its
                   majority answer, label-free) reaches `saturation`

A verifier reward falls with accuracy, so it never shows a collapse; that is the point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def running_mean(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over up to `window` values: out[i] = mean(values[max(0, i-window+1): i+1])."""
    array = np.asarray(values, dtype=float)
    return np.array([array[max(0, i - window + 1) : i + 1].mean() for i in range(len(array))])


@dataclass
class CollapseMonitor:
    drop: float = 0.1
    window: int = 3
    saturation: float = 0.95
    steps: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    agreement_saturation_step: int | None = None

    def observe_agreement(self, step: int, agreement: float) -> None:
        if self.agreement_saturation_step is None and agreement >= self.saturation:
            self.agreement_saturation_step = step

    def observe(self, step: int, reward: float, accuracy: float) -> None:
        """One evaluation: the mean training reward since the last one, and held-out accuracy."""
        self.steps.append(step)
        self.rewards.append(reward)
        self.accuracies.append(accuracy)

    def _peak_index(self) -> int | None:
        if not self.accuracies:
            return None
        return int(np.argmax(running_mean(self.accuracies, self.window)))

    @property
    def peak_step(self) -> int | None:
        index = self._peak_index()
        return None if index is None else self.steps[index]

    @property
    def peak_accuracy(self) -> float | None:
        index = self._peak_index()
        if index is None:
            return None
        return float(running_mean(self.accuracies, self.window)[index])

    @property
    def collapse_step(self) -> int | None:
        peak = self._peak_index()
        if peak is None:
            return None
        accuracy = running_mean(self.accuracies, self.window)
        reward = running_mean(self.rewards, self.window)
        for j in range(peak + 1, len(self.steps)):
            if accuracy[j] <= accuracy[peak] - self.drop and reward[j] >= reward[peak]:
                return self.steps[j]
        return None

    def warning(self) -> str | None:
        step = self.collapse_step
        if step is None:
            return None
        return (
            f"collapse: reward holds while held-out accuracy fell from its peak at step "
            f"{self.peak_step} (detected at step {step})"
        )

    def report(self) -> dict[str, Any]:
        return {
            "peak_accuracy_step": self.peak_step,
            "peak_accuracy_smoothed": self.peak_accuracy,
            "collapse_step": self.collapse_step,
            "agreement_saturation_step": self.agreement_saturation_step,
            "collapse_drop": self.drop,
            "collapse_window": self.window,
        }
