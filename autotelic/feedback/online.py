"""The host side of the feedback reward sources (`retrieval`, `classifier`, `ranking`, see
`autotelic.rewards.feedback`): captions go to the annotator, labels come back, reward models
train on them, and each source's caption-reward table is written into the training state.

    feedback = OnlineFeedback(config.rewards, run_dirs, settings, spec=env.spec)
    feedback.load(update)                        # on resume, before the first update
    for each PPO update:
        state, metrics = update(state)
        state = feedback.after_update(state, vocabularies)    # never waits
        metrics.update(feedback.metrics())
        at checkpoints: feedback.save(update, state)
    feedback.close(state)

Three threads besides the caller's, none of which training ever waits for:

* the annotation service (`service.py`): its sync thread moves submitted captions into the label
  store and reads labels back; its labeller (a thread or a child process) asks the annotator;
* the *model worker* (here): takes the labels that reached the service, trains the reward models
  on them and recomputes every caption's reward, then *publishes* one table per source and seed.

`after_update` only hands the captions that are new to the vocabulary to the service and the
worker, and copies the newest published table into the state (one `[seeds, vocab_size]` array per
source, about 256 KB per seed with the default vocab_size). A table reaches the policy at the
update after the worker published it; while the worker trains, the previous table stays in use.

Models (`models.py`), one per feedback source in the run, all trained on the same labels:

* retrieval: table[id] = the caption's `ok` label; captions without one (unlabelled,
  unparseable, error) get 0.
* classifier: `classifier_fit` on the `ok` labels, `steps_per_batch` Adam steps (ONI: 32) each
  time the worker finds a batch of new labels (ONI's rule below 25,000 labels). Above that, ONI's
  learner takes one step per learner iteration instead; here `steps_per_update` (default 0) adds
  that many steps after PPO updates at any dataset size. It is off by default because every
  training round rescores the whole vocabulary, which on 2 cores costs the learner more than one
  more step gains. Each fit samples its minibatches from up to 4,096 labelled captions drawn at
  random. table[id] = 1[P(helpful) > classifier_threshold] for every caption of the vocabulary.
* ranking: each batch of `k` new labels adds `pairs_per_label * k` random pairs of labelled
  captions, preferred by label, ties 0.5 (`preference_pairs`), to a buffer of the newest
  65,536 pairs; `ranking_fit` trains on up to 2,048 of them per fit, then `ranking_calibrate`
  sets mu, sigma and the `ranking_quantile` threshold from the scores of (up to 2,048, a power of
  two) labelled captions; table[id] = `ranking_reward`, the normalized thresholded score.

Training share (`max_train_share`, default 0.25; a deviation from ONI, whose learner trains on
every batch as it arrives): a round of training and rescoring that took t seconds lets the next
one start only after t * (1 - share) / share seconds, so the worker spends at most about that share
of wall time training. Labels arriving meanwhile enter the dataset at once (retrieval pays them at
the next publication, without training) and the deferred round trains on all of them, with
`steps_per_batch` steps as for any batch. On NetHack, where new messages arrive all the time,
the classifier trained on every batch took 20.7% of the learner's env steps/s on 2 cores
(BENCHMARKS.md); 1 restores ONI's rule.

Labels come from every run that shares the store (same annotator and prompt version), so the
models also learn from captions this run never saw, and all seeds of a run share one model; the
tables differ per seed only because each seed numbers its captions in its own vocabulary.

Checkpoints: `save` writes `checkpoints/feedback_<update>.npz` next to each seed's checkpoint (the
model parameters and optimizer state, the ranking pairs, and the id of the newest label the
models were trained on: on resume, older labels, which the service hands out again, rebuild the
dataset without training twice), keeping the newest two, and `feedback/top_captions.json` (the
most frequent captions with their label, reward and count) for the report. The tables themselves
are part of the sources' state, in the main checkpoint.

Reproducibility: labels arrive when the annotator gets to them, so runs with feedback sources are
not bit-for-bit repeatable, and the metrics here are wall-clock dependent.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import runs
from ..envs.base import EnvSpec
from ..errors import UserError
from ..rewards.feedback import FEEDBACK_SOURCES
from . import models
from .annotators import (
    DOORKEY_GOALS,
    NETHACK_EXAMPLES,
    NETHACK_GOALS,
    Annotator,
    ChatAnnotator,
    EmbeddedAnnotator,
)
from .service import AnnotationService
from .settings import ANNOTATORS, FeedbackSettings
from .store import Label, LabelStore, default_store_path

SIDECAR_FORMAT = 1
TOP_CAPTIONS_FILE = "top_captions.json"
FIT_ROWS = 4096  # labelled captions a classifier fit samples its minibatches from
FIT_PAIRS = 2048  # pairs a ranking fit samples its minibatches from
MAX_PAIRS = 65536  # newest ranking pairs kept
CALIBRATION_ROWS = 2048  # labelled captions the ranking normalization is computed on (at most)
SCORE_CHUNK = 512  # captions per call when recomputing a table

# Own-voice examples for the chat prompt on MiniGrid (its captions are generated sentences).
MINIGRID_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("picked up the yellow key", "helpful"),
    ("fell into the lava", "unhelpful"),
    ("opened the yellow door", "helpful"),
    ("dropped the yellow key", "unhelpful"),
)
DEFAULT_TASKS = {
    "nethack": (
        "play NetHack well: explore the dungeon, find the stairs down and descend, defeat "
        "monsters and collect gold and useful items; a higher in-game score is better"
    ),
    "minigrid": "reach the goal square of the grid, picking up keys and opening doors on the way",
}


def _family(spec: EnvSpec | None) -> str | None:
    return dict(spec.options).get("family") if spec is not None else None


def make_annotator(settings: FeedbackSettings, spec: EnvSpec | None = None) -> Annotator:
    """The annotator `settings` describe; defaults (goals, task, examples) follow the env family.
    Cheap (nothing is loaded or contacted), so it doubles as the settings' check."""
    settings.check()
    family = _family(spec)
    env_id = spec.env_id if spec is not None else "this env"
    if settings.annotator == "embedded":
        goals = tuple(settings.goals)
        if not goals:
            if family == "nethack":
                goals = NETHACK_GOALS
            elif family == "minigrid":
                goals = DOORKEY_GOALS
            else:
                raise UserError(
                    f"the embedded annotator has no default goals for {env_id}; give "
                    "feedback.goals (sentences in the style of the env's captions)."
                )
        return EmbeddedAnnotator(goals=goals, threshold=settings.threshold)
    if not settings.url or not settings.model:
        raise UserError(
            "feedback.annotator=chat needs feedback.url (e.g. http://127.0.0.1:8000/v1) and "
            "feedback.model (the name the server expects)."
        )
    api_key = None
    if settings.api_key_env:
        api_key = os.environ.get(settings.api_key_env)
        if not api_key:
            raise UserError(
                f"feedback.api_key_env names ${settings.api_key_env}, which is not set."
            )
    task = settings.task or DEFAULT_TASKS.get(family or "", "")
    if not task:
        raise UserError(f"feedback.task is needed for {env_id}: the task in words.")
    examples = MINIGRID_EXAMPLES if family == "minigrid" else NETHACK_EXAMPLES
    return ChatAnnotator(
        base_url=settings.url,
        model=settings.model,
        task=task,
        prompt_version=settings.prompt_version,
        api_key=api_key,
        examples=examples,
    )


def _vocabulary_texts(vocab: Any, start: int) -> list[str]:
    """Captions of ids >= start, in id order (`captions(start)` if the vocabulary has it, else
    `texts()`)."""
    if hasattr(vocab, "captions"):
        return list(vocab.captions(start))
    return list(vocab.texts()[start:])


# ----------------------------------------------------------------------------- caption rows


class _Captions:
    """Every caption the worker knows (from any seed's vocabulary or from a label), numbered
    in order of arrival, with its 64-bit id and hashed n-gram features."""

    def __init__(self, config: models.TextConfig):
        self.config = config
        self.index: dict[str, int] = {}
        self.texts: list[str] = []
        dtype = np.uint16 if config.num_buckets <= 2**16 else np.int32
        self._ngrams = np.zeros((0, config.max_ngrams), dtype)
        self._lengths = np.zeros(0, np.int32)
        self._ids = np.zeros(0, np.uint64)

    def __len__(self) -> int:
        return len(self.texts)

    def rows(self, texts: Sequence[str]) -> np.ndarray:
        """Row numbers of `texts`, adding the new ones."""
        new = [t for t in dict.fromkeys(texts) if t not in self.index]
        if new:
            batch = models.caption_batch(new, self.config)
            start = len(self.texts)
            if start + len(new) > len(self._lengths):
                capacity = max(1024, 2 ** math.ceil(math.log2(start + len(new))))
                self._ngrams = _grow(self._ngrams, capacity)
                self._lengths = _grow(self._lengths, capacity)
                self._ids = _grow(self._ids, capacity)
            end = start + len(new)
            self._ngrams[start:end] = batch.ngrams
            self._lengths[start:end] = batch.mask.sum(axis=1)
            self._ids[start:end] = batch.ids
            for offset, text in enumerate(new):
                self.index[text] = start + offset
            self.texts.extend(new)
        return np.fromiter((self.index[t] for t in texts), np.int64, count=len(texts))

    def ids(self, rows: np.ndarray) -> np.ndarray:
        return self._ids[rows]

    def features(self, rows: np.ndarray, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(ngrams [B, L] int32, mask [B, L] float32)` of `rows`, zero-padded to `size` rows."""
        size = len(rows) if size is None else size
        length = self.config.max_ngrams
        ngrams = np.zeros((size, length), np.int32)
        mask = np.zeros((size, length), np.float32)
        ngrams[: len(rows)] = self._ngrams[rows]
        mask[: len(rows)] = np.arange(length)[None, :] < self._lengths[rows][:, None]
        return ngrams, mask


def _grow(array: np.ndarray, capacity: int) -> np.ndarray:
    grown = np.zeros((capacity, *array.shape[1:]), array.dtype)
    grown[: len(array)] = array
    return grown


# ---------------------------------------------------------------------------------- worker


class OnlineFeedback:
    """Annotation, reward models and caption-reward tables for the run's feedback sources.

    rewards:   the run's reward sources (`config.rewards`); the feedback ones among them are
               served, each located in `state.source_states` by its position here
    run_dirs:  one run directory per seed (for `save`, `load` and top_captions.json), or None
    settings:  the run's `feedback:` settings
    spec:      the env's spec (picks default goals, task and prompt examples by env family)
    annotator: use this annotator instead of the one `settings` describe
    store:     the label store (a `LabelStore` or a path) instead of `settings.store`
    seed:      seeds the models' initialization and sampling
    text:      the text models' size and learning rate (default `models.TextConfig()`)
    """

    def __init__(
        self,
        rewards: Sequence[str],
        run_dirs: Sequence[str | Path] | None,
        settings: FeedbackSettings | None = None,
        *,
        spec: EnvSpec | None = None,
        annotator: Annotator | None = None,
        store: LabelStore | str | Path | None = None,
        seed: int = 0,
        text: models.TextConfig | None = None,
    ):
        self.settings = settings or FeedbackSettings()
        self.settings.check()
        self.rewards = tuple(rewards)
        self.sources = tuple(name for name in self.rewards if name in FEEDBACK_SOURCES)
        if not self.sources:
            raise UserError(
                f"OnlineFeedback serves the sources {', '.join(FEEDBACK_SOURCES)}; the run's "
                f"rewards are {', '.join(self.rewards) or 'none'}."
            )
        self.positions = {name: self.rewards.index(name) for name in self.sources}
        self.run_dirs = [Path(d) for d in run_dirs] if run_dirs is not None else None
        text = self.text = text or models.TextConfig()
        self.seed = seed
        self.annotator = annotator or make_annotator(self.settings, spec)
        if store is None:
            store = Path(self.settings.store) if self.settings.store else default_store_path()
        self.service = AnnotationService(store, self.annotator, mode=self.settings.mode)

        self._lock = threading.Lock()  # inputs from the caller, published tables, statistics
        self._model_lock = threading.Lock()  # the models and the dataset, while they change
        self._due_labels = False  # training deferred by max_train_share: labels to train on
        self._due_updates = 0  # ... and PPO updates passed
        self._train_at = 0.0  # monotonic time before which no training round starts
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._started_wall = time.time()
        self.last_error: str | None = None
        self._reported_errors: set[str] = set()

        # caller side (main thread)
        self._seed_texts: list[list[str]] = []  # per seed: caption of id i at index i-1
        self._copied_version = 0
        self._last_state: Any = None
        self._beyond_warned = False
        self._rate_mark = (time.monotonic(), 0)

        # handed from the caller to the worker (under _lock)
        self._incoming: list[list[str]] = []
        self._updates_due = 0
        self._table_sizes: dict[str, int] = {}
        self._num_seeds = 0
        self._busy = False

        # worker side (under _model_lock)
        self._captions = _Captions(text)
        self._seed_rows: list[np.ndarray] = []
        self._labels: dict[str, Label] = {}  # every label received, any status
        self._held_labels: list[Label] = []  # taken from the service, not yet in the dataset
        self._data_rows: list[int] = []  # the `ok` labels: caption row ...
        self._data_values: list[float] = []  # ... and label
        self._data_index: dict[str, int] = {}
        self._cursor = 0  # store id of the newest label trained on
        self._replay_until = 0  # labels up to this id only rebuild the dataset (resume)
        self._fresh_labels = 0  # labels labelled since this object started
        self._counts = {"unparseable": 0, "error": 0, "helpful": 0}
        self._rng = np.random.default_rng(seed)
        self._fits = 0
        self._model_version = dict.fromkeys(self.sources, 0)  # bumped when a model changes
        self._row_rewards: dict[str, np.ndarray] = {
            n: np.zeros(0, np.float32) for n in self.sources
        }
        self._rows_scored = dict.fromkeys(self.sources, 0)
        self._scored_version = dict.fromkeys(self.sources, -1)
        self._model_metrics: dict[str, float] = {}
        self._pairs = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        self._retrieval = models.retrieval_init()
        key = jax.random.PRNGKey(seed)
        self._classifier = (
            models.classifier_init(key, text) if "classifier" in self.sources else None
        )
        self._ranking = models.ranking_init(key, text) if "ranking" in self.sources else None
        threshold = self.settings.classifier_threshold
        self._score_classifier = jax.jit(
            lambda s, g, m: models.classifier_reward(s, g, m, threshold)
        )
        self._score_ranking = jax.jit(models.ranking_reward)
        self._calibrate = jax.jit(models.ranking_calibrate, static_argnames="quantile")
        for name in self.sources:
            self._model_metrics.update(self._empty_model_metrics(name))

        # published by the worker (under _lock)
        self._published: dict[str, np.ndarray] = {}
        self._published_version = 0
        self._nonzero: dict[str, np.ndarray] = {}

    # --------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the model worker (done by the first `after_update`; call `load` before)."""
        if self._thread is not None or self._closed:
            return
        self._thread = threading.Thread(target=self._run, name="feedback-models", daemon=True)
        self._thread.start()

    def close(self, state: Any = None, timeout: float = 30.0) -> None:
        """Stop the worker and the annotation service (captions still queued stay in the store
        for the next run) and write top_captions.json from `state` (default: the last state
        `after_update` returned). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.service.stop()
        state = state if state is not None else self._last_state
        if state is not None and self.run_dirs is not None:
            self.write_top_captions(state)

    def __enter__(self) -> OnlineFeedback:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------- caller side

    def after_update(self, state: Any, vocab: Any) -> Any:
        """Call after every PPO update with the stacked state `[S, ...]` and the caption
        vocabulary of each seed (a sequence, one per seed, or one vocabulary for all). Submits
        the captions new since the last call, tells the worker an update passed, and returns
        `state` with the newest published table of each feedback source. Never waits for the
        annotator or the models."""
        if self._closed:
            raise RuntimeError("after_update() after close()")
        tables = {name: state.source_states[i].table for name, i in self.positions.items()}
        num_seeds = next(iter(tables.values())).shape[0]
        vocabs = list(vocab) if isinstance(vocab, (list, tuple)) else [vocab] * num_seeds
        if len(vocabs) != num_seeds:
            raise ValueError(f"{len(vocabs)} vocabularies for {num_seeds} seeds; need one each")
        if not self._seed_texts:
            self._seed_texts = [[] for _ in range(num_seeds)]
            with self._lock:
                self._num_seeds = num_seeds
                self._incoming = [[] for _ in range(num_seeds)]
                self._table_sizes = {name: int(t.shape[-1]) for name, t in tables.items()}
        new_texts: list[str] = []
        for s, v in enumerate(vocabs):
            known = self._seed_texts[s]
            fresh = _vocabulary_texts(v, len(known) + 1)
            if fresh:
                known.extend(fresh)
                new_texts.extend(fresh)
                with self._lock:
                    self._incoming[s].extend(fresh)
        if new_texts:
            self.service.submit(new_texts)
        with self._lock:
            self._updates_due += 1
            version, published = self._published_version, self._published
        self.start()
        self._wake.set()
        if version > self._copied_version:
            states = list(state.source_states)
            for name, i in self.positions.items():
                table = published[name]
                states[i] = states[i]._replace(table=jnp.asarray(table, tables[name].dtype))
            state = state._replace(source_states=tuple(states))
            self._copied_version = version
        if not self._beyond_warned:
            limit = min(self._table_sizes.values())
            if any(len(t) >= limit for t in self._seed_texts):
                self._beyond_warned = True
                print(
                    f"autotelic: more than {limit - 1} distinct captions; those beyond pay 0. "
                    "Raise sources.<name>.vocab_size.",
                    file=sys.stderr,
                )
        self._last_state = state
        return state

    def metrics(self) -> dict[str, np.ndarray]:
        """Host-side metrics, each an `[S]` array (shared values repeated per seed); the same
        keys every call. Wall-clock dependent: log them apart from deterministic metrics if that
        matters."""
        num_seeds = len(self._seed_texts) or len(self.run_dirs or ()) or 1
        stats = self.service.stats()
        now = time.monotonic()
        with self._lock:
            fresh = self._fresh_labels
            nonzero = dict(self._nonzero)
            model_metrics = dict(self._model_metrics)
            labels = len(self._data_rows)
            counts = dict(self._counts)
        mark_time, mark_fresh = self._rate_mark
        rate = (fresh - mark_fresh) / max(now - mark_time, 1e-6)
        self._rate_mark = (now, fresh)
        shared = {
            "feedback/labels": labels,
            "feedback/helpful": counts["helpful"],
            "feedback/unparseable": counts["unparseable"],
            "feedback/errors": counts["error"],
            "feedback/pending": stats["waiting"] + stats["unqueued"],
            "feedback/captions_per_second": rate,
            **model_metrics,
        }
        out = {k: np.full(num_seeds, float(v)) for k, v in shared.items()}
        out["feedback/vocabulary"] = np.array(
            [float(len(t)) for t in self._seed_texts] or [0.0] * num_seeds
        )  # distinct captions of each seed
        for name in self.sources:
            out[f"{name}/table_nonzero_fraction"] = nonzero.get(name, np.zeros(num_seeds))
        return out

    # ------------------------------------------------------------------------------ worker

    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            try:
                self._pass()
            except Exception as error:  # training goes on with the last published table
                message = f"feedback model worker failed: {error!r}"
                self.last_error = message
                if message not in self._reported_errors:
                    self._reported_errors.add(message)
                    print(f"autotelic: {message}\n{traceback.format_exc()}", file=sys.stderr)
                with self._lock:
                    self._busy = False
                self._stop.wait(1.0)
            if stopping:
                return
            self._wake.wait(0.2)
            self._wake.clear()

    def _pass(self) -> None:
        """One round: new captions and labels in, models trained, tables published."""
        with self._lock:
            updates, self._updates_due = self._updates_due, 0
            sizes, num_seeds = dict(self._table_sizes), self._num_seeds
            self._busy = True
        # labels leave the service once: keep them until they are in the dataset, so that a
        # failing round retries them instead of losing them
        self._held_labels.extend(self.service.new_labels())
        with self._model_lock:
            grew = self._add_captions()
            trained = self._add_labels(self._held_labels)
            self._held_labels = []
            changed = self._score()
        # publish before training too: new captions and retrieval labels need no training, and
        # a text model's first fit waits for its compilation
        if (grew or changed) and sizes:
            self._publish(sizes, num_seeds)
        # training rounds may use at most `max_train_share` of wall time: a round due before
        # its time is deferred (its labels are in the dataset and train with the next round)
        self._due_labels |= trained
        self._due_updates += updates
        now = time.monotonic()
        if self._data_rows and (self._due_labels or self._due_updates) and now >= self._train_at:
            with self._model_lock:
                self._train(self._due_labels, self._due_updates)
                changed = self._score()
            self._due_labels, self._due_updates = False, 0
            elapsed = time.monotonic() - now
            share = self.settings.max_train_share
            self._train_at = time.monotonic() + elapsed * (1.0 - share) / share
            if changed and sizes:
                self._publish(sizes, num_seeds)
        with self._lock:
            self._busy = False

    def _add_captions(self) -> bool:
        """Give the captions new to each seed's vocabulary their rows. A seed's captions leave
        `_incoming` only once they are added, so ids and rows stay aligned even if this fails."""
        with self._lock:
            incoming = [list(texts) for texts in self._incoming]
        while len(self._seed_rows) < len(incoming):
            self._seed_rows.append(np.zeros(0, np.int64))
        grew = False
        for s, texts in enumerate(incoming):
            if texts:
                rows = self._captions.rows(texts)
                self._seed_rows[s] = np.concatenate([self._seed_rows[s], rows])
                with self._lock:
                    del self._incoming[s][: len(texts)]
                grew = True
        return grew

    def _add_labels(self, labels: list[Label]) -> bool:
        """Take arriving labels into the dataset; True if any should be trained on."""
        if not labels:
            return False
        new_ok = 0
        ok_texts = []
        self._captions.rows([x.caption for x in labels if x.status == "ok"])  # in one batch
        for label in labels:
            previous = self._labels.get(label.caption)
            self._labels[label.caption] = label
            with self._lock:
                if label.labelled_at >= self._started_wall:
                    self._fresh_labels += 1
                if previous is None and label.status != "ok":
                    self._counts[label.status] = self._counts.get(label.status, 0) + 1
            if label.status != "ok" or label.label is None:
                continue
            value = float(label.label)
            position = self._data_index.get(label.caption)
            if position is None:
                self._data_index[label.caption] = len(self._data_rows)
                self._data_rows.append(int(self._captions.rows([label.caption])[0]))
                self._data_values.append(value)
            else:
                self._data_values[position] = value
            ok_texts.append(label.caption)
            if label.id > self._replay_until:
                new_ok += 1
        if ok_texts:
            values = [self._data_values[self._data_index[t]] for t in ok_texts]
            self._retrieval = models.retrieval_update(
                self._retrieval, models.caption_ids(ok_texts), np.asarray(values, np.float32)
            )
            if "ranking" in self.sources and new_ok:
                self._add_pairs(new_ok)
            if "retrieval" in self.sources:
                self._model_version["retrieval"] += 1
        self._cursor = max(self._cursor, max(label.id for label in labels))
        with self._lock:
            self._counts["helpful"] = int(sum(v == 1.0 for v in self._data_values))
        return new_ok > 0

    def _add_pairs(self, new: int) -> None:
        values = np.asarray(self._data_values, np.float64)
        first, second, preference = models.preference_pairs(
            values, self.settings.pairs_per_label * new, self._rng
        )
        old_first, old_second, old_preference = self._pairs
        self._pairs = (
            np.concatenate([old_first, first])[-MAX_PAIRS:],
            np.concatenate([old_second, second])[-MAX_PAIRS:],
            np.concatenate([old_preference, preference])[-MAX_PAIRS:],
        )

    def _fit_key(self) -> jax.Array:
        self._fits += 1
        return jax.random.fold_in(jax.random.PRNGKey(self.seed), self._fits)

    def _train(self, new_labels: bool, updates: int) -> None:
        """`steps_per_batch` steps if labels arrived, then `steps_per_update` if updates passed
        (once, however many passed since the last round)."""
        schedule = []
        if new_labels and self.settings.steps_per_batch:
            schedule.append(self.settings.steps_per_batch)
        if updates and self.settings.steps_per_update:
            schedule.append(self.settings.steps_per_update)
        if not schedule or (self._classifier is None and self._ranking is None):
            return
        count = len(self._data_rows)
        minibatch = self.settings.minibatch
        if self._classifier is not None:
            take = min(count, FIT_ROWS)
            chosen = self._rng.choice(count, take, replace=False)
            rows = np.asarray(self._data_rows)[chosen]
            ngrams, mask = self._captions.features(rows, FIT_ROWS)
            labels = np.zeros(FIT_ROWS, np.float32)
            labels[:take] = np.asarray(self._data_values, np.float32)[chosen]
            for steps in schedule:
                self._classifier, fit_metrics = models.classifier_fit(
                    self._classifier,
                    ngrams,
                    mask,
                    labels,
                    jnp.int32(take),
                    self._fit_key(),
                    self.text,
                    steps,
                    minibatch,
                )
            self._set_metrics(fit_metrics)
            self._model_version["classifier"] += 1
        if self._ranking is not None:
            self._train_ranking(schedule, count, minibatch)
            self._model_version["ranking"] += 1

    def _train_ranking(self, schedule: list[int], count: int, minibatch: int) -> None:
        first, second, preference = self._pairs
        usable = np.flatnonzero((first < count) & (second < count))
        if len(usable):
            take = min(len(usable), FIT_PAIRS)
            chosen = usable[self._rng.choice(len(usable), take, replace=False)]
            data_rows = np.asarray(self._data_rows)
            a = self._captions.features(data_rows[first[chosen]], FIT_PAIRS)
            b = self._captions.features(data_rows[second[chosen]], FIT_PAIRS)
            prefs = np.zeros(FIT_PAIRS, np.float32)
            prefs[:take] = preference[chosen]
            for steps in schedule:
                self._ranking, fit_metrics = models.ranking_fit(
                    self._ranking,
                    a,
                    b,
                    prefs,
                    jnp.int32(take),
                    self._fit_key(),
                    self.text,
                    steps,
                    minibatch,
                )
            self._set_metrics(fit_metrics)
        if count >= 2:
            size = 2 ** int(math.log2(min(count, CALIBRATION_ROWS)))
            chosen = self._rng.choice(count, size, replace=False)
            ngrams, mask = self._captions.features(np.asarray(self._data_rows)[chosen])
            self._ranking, calibration = self._calibrate(
                self._ranking, ngrams, mask, quantile=self.settings.ranking_quantile
            )
            self._set_metrics(calibration)

    def _set_metrics(self, metrics: dict[str, Any]) -> None:
        values = {k: float(v) for k, v in metrics.items()}
        with self._lock:
            self._model_metrics.update(values)

    def _empty_model_metrics(self, name: str) -> dict[str, float]:
        if name == "classifier":
            return {
                "classifier/loss": 0.0,
                "classifier/threshold": self.settings.classifier_threshold,
            }
        if name == "ranking":
            return {
                "ranking/loss": 0.0,
                "ranking/reward_mean": 0.0,
                "ranking/reward_std": 1.0,
                "ranking/threshold": 0.0,
            }
        return {}

    def _score(self) -> bool:
        """Bring every source's per-caption rewards up to date; True if any changed."""
        changed = False
        total = len(self._captions)
        for name in self.sources:
            rewards = self._row_rewards[name]
            stale = self._scored_version[name] != self._model_version[name]
            start = 0 if stale else self._rows_scored[name]
            if start >= total:
                continue
            if len(rewards) < total:
                rewards = _grow(rewards, max(1024, 2 ** math.ceil(math.log2(total))))
            rows = np.arange(start, total)
            rewards[start:total] = self._rewards_of(name, rows)
            self._row_rewards[name] = rewards
            self._rows_scored[name] = total
            self._scored_version[name] = self._model_version[name]
            changed = True
        return changed

    def _rewards_of(self, name: str, rows: np.ndarray) -> np.ndarray:
        if name == "retrieval":
            return models.retrieval_reward(self._retrieval, self._captions.ids(rows))
        out = np.zeros(len(rows), np.float32)
        model = self._classifier if name == "classifier" else self._ranking.model
        if int(model.steps) == 0:  # an untrained model pays nothing
            return out
        for start in range(0, len(rows), SCORE_CHUNK):
            chunk = rows[start : start + SCORE_CHUNK]
            ngrams, mask = self._captions.features(chunk, SCORE_CHUNK)
            if name == "classifier":
                scored = self._score_classifier(self._classifier, ngrams, mask)
            else:
                scored = self._score_ranking(self._ranking, ngrams, mask)
            out[start : start + len(chunk)] = np.asarray(scored)[: len(chunk)]
        return out

    def _publish(self, sizes: dict[str, int], num_seeds: int) -> None:
        tables, nonzero = {}, {}
        for name in self.sources:
            size = sizes[name]
            table = np.zeros((num_seeds, size), np.float32)
            fraction = np.zeros(num_seeds)
            for s in range(num_seeds):
                rows = self._seed_rows[s][: size - 1] if s < len(self._seed_rows) else []
                if len(rows):
                    values = self._row_rewards[name][rows]
                    table[s, 1 : 1 + len(rows)] = values
                    fraction[s] = float(np.mean(values != 0))
            tables[name], nonzero[name] = table, fraction
        with self._lock:
            self._published = tables
            self._nonzero = nonzero
            self._published_version += 1

    # ------------------------------------------------------------------------ tests, bench

    def wait(self, timeout: float = 60.0) -> bool:
        """Wait until every submitted caption is labelled, every label trained on and the
        tables published (tests and benchmarks; training never calls this). False on timeout."""
        deadline = time.monotonic() + timeout
        if not self.service.wait_idle(timeout):
            return False
        self.start()
        while time.monotonic() < deadline:
            known = self.service.stats()["known_labels"]
            self._train_at = 0.0  # waiting means: train now, whatever max_train_share says
            with self._lock:
                idle = (
                    not self._busy
                    and not any(self._incoming)
                    and self._updates_due == 0
                    and not self._due_labels
                    and self._due_updates == 0
                    and len(self._labels) >= known
                )
            if idle:
                return True
            self._wake.set()
            time.sleep(0.02)
        return False

    def table(self, name: str) -> np.ndarray:
        """The newest published `[S, vocab_size]` table of source `name` (a copy)."""
        with self._lock:
            return np.array(self._published[name])

    # ------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, np.ndarray]:
        """The models, the ranking pairs and the dataset cursor as numpy arrays."""
        with self._model_lock:
            meta = {
                "format": SIDECAR_FORMAT,
                "sources": list(self.sources),
                "annotator": [self.annotator.name, self.annotator.version],
                "text": asdict(self.text),
                "cursor": int(self._cursor),
                "fits": int(self._fits),
                "rng": self._rng.bit_generator.state,
            }
            out = {"__meta__": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
            for name, model in (("classifier", self._classifier), ("ranking", self._ranking)):
                if model is not None:
                    for i, leaf in enumerate(jax.tree_util.tree_leaves(model)):
                        out[f"{name}/leaf_{i:04d}"] = np.asarray(leaf)
            first, second, preference = self._pairs
            out["pairs/first"], out["pairs/second"] = first.copy(), second.copy()
            out["pairs/preference"] = preference.copy()
        return out

    def load_state_dict(self, data: dict[str, np.ndarray]) -> None:
        """Restore `state_dict` output. Call before the first `after_update`. Raises ValueError
        if it was saved by other sources, another annotator or another text model."""
        if self._thread is not None:
            raise RuntimeError("load_state_dict() must come before the first after_update()")
        meta = json.loads(bytes(np.asarray(data["__meta__"])).decode())
        expected = {
            "format": SIDECAR_FORMAT,
            "sources": list(self.sources),
            "annotator": [self.annotator.name, self.annotator.version],
            "text": asdict(self.text),
        }
        for key, value in expected.items():
            if meta.get(key) != value:
                raise ValueError(f"saved {key} {meta.get(key)!r}, this run has {value!r}")
        restored = {}
        for name, model in (("classifier", self._classifier), ("ranking", self._ranking)):
            if model is None:
                continue
            leaves, treedef = jax.tree_util.tree_flatten(model)
            saved = [data[f"{name}/leaf_{i:04d}"] for i in range(len(leaves))]
            for old, new in zip(leaves, saved, strict=True):
                if np.shape(old) != np.shape(new) or np.asarray(old).dtype != new.dtype:
                    raise ValueError(f"saved {name} model does not match this run's")
            restored[name] = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in saved])
        with self._model_lock:
            self._classifier = restored.get("classifier", self._classifier)
            self._ranking = restored.get("ranking", self._ranking)
            self._cursor = self._replay_until = int(meta["cursor"])
            self._fits = int(meta["fits"])
            self._rng.bit_generator.state = meta["rng"]
            self._pairs = (
                np.asarray(data["pairs/first"], np.int64),
                np.asarray(data["pairs/second"], np.int64),
                np.asarray(data["pairs/preference"], np.float32),
            )
            for name in self.sources:
                self._model_version[name] += 1

    @staticmethod
    def sidecar_path(run_dir: str | Path, update: int) -> Path:
        return Path(run_dir) / "checkpoints" / f"feedback_{update:08d}.npz"

    def save(self, update: int, state: Any = None) -> None:
        """Write the sidecar `checkpoints/feedback_<update>.npz` (atomically) into every run
        directory, keeping the newest two, and top_captions.json from `state` (default: the last
        state `after_update` returned; `close` writes it again from the same state)."""
        if state is not None:
            self._last_state = state
        if self.run_dirs is None:
            return
        buffer = io.BytesIO()
        np.savez(buffer, **self.state_dict())
        data = buffer.getvalue()
        for run_dir in self.run_dirs:
            runs.atomic_write_bytes(self.sidecar_path(run_dir, update), data)
            saved = sorted((run_dir / "checkpoints").glob("feedback_*.npz"))
            for old in saved[: -runs.KEEP_CHECKPOINTS]:
                old.unlink(missing_ok=True)
        if self._last_state is not None:
            self.write_top_captions(self._last_state)

    def load(self, update: int) -> bool:
        """Restore the sidecar saved with the checkpoint at `update` (from the first run
        directory). False, with a note on stderr, when there is none or it does not fit this
        run: the models then start afresh and relearn from the stored labels."""
        if self.run_dirs is None:
            return False
        path = self.sidecar_path(self.run_dirs[0], update)
        try:
            with np.load(path) as data:
                self.load_state_dict({k: data[k] for k in data.files})
        except FileNotFoundError:
            print(f"autotelic: no {path.name}; the feedback models start afresh.", file=sys.stderr)
            return False
        except (OSError, ValueError, KeyError) as error:
            print(
                f"autotelic: cannot use {path} ({error}); the feedback models start afresh.",
                file=sys.stderr,
            )
            return False
        return True

    def top_captions(self, state: Any, seed_index: int = 0) -> list[dict[str, Any]]:
        """The seed's most frequent captions: caption, label (1, 0 or None if it has no `ok`
        label yet), status, count (steps it appeared on) and each source's table value."""
        first = self.positions[self.sources[0]]
        seen = np.asarray(state.source_states[first].seen[seed_index])
        texts = self._seed_texts[seed_index] if seed_index < len(self._seed_texts) else []
        limit = min(len(seen) - 1, len(texts))
        counts = seen[1 : 1 + limit]
        order = np.argsort(-counts, kind="stable")[: self.settings.top_captions]
        tables = {
            name: np.asarray(state.source_states[i].table[seed_index])
            for name, i in self.positions.items()
        }
        # no lock: the worker only adds to `_labels`, and a lookup of one key is atomic
        labels = {texts[k]: self._labels.get(texts[k]) for k in order}
        out = []
        for k in order:
            if counts[k] == 0:
                break
            text = texts[k]
            label = labels[text]
            out.append(
                {
                    "caption": text,
                    "label": label.label if label is not None else None,
                    "status": label.status if label is not None else "pending",
                    "count": int(counts[k]),
                    "reward": {name: float(t[k + 1]) for name, t in tables.items()},
                }
            )
        return out

    def write_top_captions(self, state: Any) -> None:
        """`RUN_DIR/feedback/top_captions.json` for every seed (atomically)."""
        if self.run_dirs is None or not self._seed_texts:
            return
        for s, run_dir in enumerate(self.run_dirs):
            text = json.dumps(self.top_captions(state, s), indent=1, ensure_ascii=False)
            runs.atomic_write_text(run_dir / "feedback" / TOP_CAPTIONS_FILE, text)


__all__ = [
    "ANNOTATORS",
    "FeedbackSettings",
    "OnlineFeedback",
    "make_annotator",
]
