"""Online rewards from language-model feedback ("Online Intrinsic Rewards for Decision Making
Agents from Large Language Model Feedback", Zheng et al. 2024, arXiv 2410.23022).

* `store`      - the SQLite label store shared by all runs
* `annotators` - an OpenAI-compatible chat endpoint, or an embedded sentence encoder
* `service`    - the background annotation service (submit / lookup never wait)
* `models`     - retrieval, classifier and Bradley-Terry reward models, episodic count scaling
* `commands`   - the `autotelic labels` command

Importing this package does not import JAX; `models` does.
"""

from .annotators import Annotator, ChatAnnotator, EmbeddedAnnotator, Failure, parse_label
from .service import AnnotationService, Labeller, ServiceSettings
from .store import Label, LabelStore, default_store_path

__all__ = [
    "AnnotationService",
    "Annotator",
    "ChatAnnotator",
    "EmbeddedAnnotator",
    "Failure",
    "Label",
    "LabelStore",
    "Labeller",
    "ServiceSettings",
    "default_store_path",
    "parse_label",
]
