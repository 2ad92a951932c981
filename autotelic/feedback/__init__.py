"""Online rewards from language-model feedback ("Online Intrinsic Rewards for Decision Making
Agents from Large Language Model Feedback", Zheng et al. 2024, arXiv 2410.23022).

* `store`      - the SQLite label store shared by all runs
* `annotators` - an OpenAI-compatible chat endpoint, or an embedded sentence encoder
* `service`    - the background annotation service (submit / lookup never wait)
* `models`     - retrieval, classifier and Bradley-Terry reward models, episodic count scaling
* `commands`   - the `autotelic labels` command

* `settings`   - the run's `feedback:` settings (also the run config's `feedback` section)

Importing this package imports nothing else until a name is used; `models` imports JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Annotator": "annotators",
    "ChatAnnotator": "annotators",
    "EmbeddedAnnotator": "annotators",
    "Failure": "annotators",
    "parse_label": "annotators",
    "AnnotationService": "service",
    "Labeller": "service",
    "ServiceSettings": "service",
    "Label": "store",
    "LabelStore": "store",
    "default_store_path": "store",
    "FeedbackSettings": "settings",
}


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): `autotelic.config` imports `feedback.settings` without pulling in NumPy.
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


__all__ = [
    "AnnotationService",
    "Annotator",
    "ChatAnnotator",
    "EmbeddedAnnotator",
    "Failure",
    "FeedbackSettings",
    "Label",
    "LabelStore",
    "Labeller",
    "ServiceSettings",
    "default_store_path",
    "parse_label",
]
