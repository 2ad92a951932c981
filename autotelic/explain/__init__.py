"""Explanations: Shapley values with error bars, chosen-action saliency, deletion curves.

* `shapley`: exact and sampled Shapley values of any game over players (reward sources,
  observation features or channels, agents), with standard errors and confidence intervals;
  `FeatureGame` turns a model and a fill policy into such a game.
* `saliency`: chosen-action perturbation and gradient maps for image observations (JAX), and
  the weight-randomization sanity check.
* `deletion`: deletion and insertion curves against random-order baselines.

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
