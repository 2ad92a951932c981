"""Explanations: per-source credit, Shapley values with error bars, chosen-action saliency,
deletion curves, and the run report.

* `shapley`: exact and sampled Shapley values of any game over players (reward sources,
  observation features or channels, agents), with standard errors and confidence intervals;
  `FeatureGame` turns a model and a fill policy into such a game.
* `saliency`: chosen-action perturbation and gradient maps for image observations (JAX), and
  the weight-randomization sanity check.
* `deletion`: deletion and insertion curves against random-order baselines.
* `credit`: exact per-reward-source shares of the advantage and the value (NumPy).
* `evaluate`: `autotelic explain`, evaluation episodes of a trained run and their attributions.
* `report`: `autotelic report`, one self-contained HTML page per run, group or bench.
* `render`: frames drawn from grid and image observations.
* `commands`: the `explain` and `report` command-line parsers.

`saliency` imports JAX; import it explicitly (`from autotelic.explain import saliency`).
"""

from __future__ import annotations

from . import deletion, shapley
from .shapley import (
    MAX_EXACT_PLAYERS,
    AttributionInputError,
    FeatureGame,
    ShapleyValues,
    TooManyPlayersError,
)

__all__ = [
    "MAX_EXACT_PLAYERS",
    "AttributionInputError",
    "FeatureGame",
    "ShapleyValues",
    "TooManyPlayersError",
    "deletion",
    "shapley",
]
