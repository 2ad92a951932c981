"""The run's `feedback:` settings, one definition shared by the run config (`autotelic.config`)
and the feedback pipeline (`autotelic.feedback.online`). Imports neither JAX nor NumPy."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

ANNOTATORS = ("embedded", "chat")
MODES = ("thread", "process")  # where the labeller runs: a thread, or a child process


@dataclass(frozen=True)
class FeedbackSettings:
    """The run's `feedback:` settings (every field has a default).

    annotator:      "embedded" (sentence encoder, no server; weaker than an LLM) or "chat" (an
                    OpenAI-compatible chat-completions server)
    url, model:     chat: the server's base URL (e.g. http://127.0.0.1:8000/v1) and model name
    api_key_env:    chat: name of the environment variable holding the API key (never the key)
    task:           chat: the task in words, put into the prompt (default: by env family)
    goals:          embedded: goal sentences (default: by env family, NetHack or MiniGrid)
    threshold:      embedded: cosine at or above which a caption is helpful
    store:          label store file (default: $AUTOTELIC_LABEL_STORE or the per-user store)
    prompt_version: chat: your name for the prompt (the stored key adds a digest of the prompt)
    mode:           "thread" or "process" (labeller in a child process)
    steps_per_batch, steps_per_update, minibatch: text-model training (see the module docstring)
    max_train_share: largest share of wall time the model worker spends training and rescoring
                    (1 = ONI's rule, train on every batch of labels as it arrives)
    classifier_threshold: P(helpful) above which the classifier pays 1
    pairs_per_label, ranking_quantile: ranking pairs per new label; eps quantile (Motif: 0.5)
    top_captions:   captions listed in feedback/top_captions.json
    """

    annotator: str = "embedded"
    url: str = ""
    model: str = ""
    api_key_env: str = ""
    task: str = ""
    goals: tuple[str, ...] = ()
    threshold: float = 0.5
    store: str = ""
    prompt_version: str = "classify-v1"
    mode: str = "thread"
    steps_per_batch: int = 32
    steps_per_update: int = 0
    minibatch: int = 256
    max_train_share: float = 0.25
    classifier_threshold: float = 0.5
    pairs_per_label: int = 10
    ranking_quantile: float = 0.5
    top_captions: int = 100

    def check(self) -> None:
        if self.annotator not in ANNOTATORS:
            raise UserError(
                f"feedback.annotator must be one of {', '.join(ANNOTATORS)}, "
                f"got {self.annotator!r}."
            )
        if self.mode not in MODES:
            raise UserError(f"feedback.mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        for name in ("steps_per_batch", "steps_per_update", "pairs_per_label", "top_captions"):
            if getattr(self, name) < 0:
                raise UserError(f"feedback.{name} must be >= 0, got {getattr(self, name)}.")
        if not 0.0 < self.max_train_share <= 1.0:
            raise UserError(
                f"feedback.max_train_share must be in (0, 1], got {self.max_train_share}."
            )
        if self.minibatch < 1:
            raise UserError(f"feedback.minibatch must be >= 1, got {self.minibatch}.")
        if not 0.0 <= self.classifier_threshold <= 1.0:
            raise UserError(
                "feedback.classifier_threshold must be a probability in [0, 1], "
                f"got {self.classifier_threshold}."
            )
        if not 0.0 <= self.ranking_quantile <= 1.0:
            raise UserError(
                f"feedback.ranking_quantile must be in [0, 1], got {self.ranking_quantile}."
            )
