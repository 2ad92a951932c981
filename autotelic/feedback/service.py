"""The annotation service: captions in, labels out, and training never waits for either.

    service = AnnotationService("labels.sqlite", EmbeddedAnnotator())
    service.submit(captions)          # returns at once: only an in-memory queue is touched
    labels = service.lookup(captions) # returns at once: only what is already known
    fresh = service.new_labels()      # labels that arrived since the last call (to train on)
    service.stop()

Three moving parts, none of them in the caller's thread:

* the *sync* thread moves submitted captions into the store's pending queue (skipping those
  already labelled or pending under this annotator and prompt version) and reads every new
  label of this annotator and prompt version from the store into an in-memory cache - labels
  written by this service, by an earlier run, or by another process sharing the store;
* the *labeller* (a thread, or a child process with `mode="process"` so that annotating never
  competes with training for the interpreter lock) claims the oldest pending captions - first
  in, first out, so old captions are never starved - asks the annotator and writes the answers;
* the *store* (see `store.py`) is the only channel between them, so everything survives a crash:
  captions still pending when a run stops or dies are labelled by the next service that opens
  the store with the same annotator and prompt version.

Exactly once: a caption is labelled only from the pending queue, which never takes a caption
that is already labelled; a claimed caption is invisible to other labellers while the claim's
lease is renewed; and the label insert keeps the first answer. The one way an endpoint can see a
caption twice is a labeller that dies mid-request (the next one asks again); its answer is then
still stored only once.

`stop()` also closes the annotator (threads, loaded model); annotators reopen lazily if used again.

Failures (see `annotators.py`): an outage (endpoint down, overloaded, misconfigured) keeps the
captions queued without counting against them and backs the labeller off exponentially up to
`backoff_max`; a caption whose own request keeps failing is retried later and stored with status
`error` after `max_attempts` such failures.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import secrets
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from .annotators import Annotator, Failure, backoff_delay
from .settings import MODES
from .store import Label, LabelStore

MAX_QUICK_RESTARTS = 5


@dataclass(frozen=True)
class ServiceSettings:
    """mode:          "thread" (labeller in this process) or "process" (a child process)
    lease:         seconds a claim lasts without renewal; renewed every lease/3 while working
    poll_interval: seconds an idle labeller waits before looking for pending captions again
    sync_interval: seconds between reads of new labels from the store
    backoff_base:  first wait after an outage, doubled per consecutive outage (with jitter)
    backoff_max:   longest wait after an outage, and longest deferral of a failing caption
    max_attempts:  failures of a caption's own request before it is stored with status `error`
    """

    mode: str = "thread"
    lease: float = 60.0
    poll_interval: float = 0.05
    sync_interval: float = 0.2
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    max_attempts: int = 5

    def check(self) -> None:
        if self.mode not in MODES:
            raise UserError(
                f"annotation mode must be one of {', '.join(MODES)}, got {self.mode!r}."
            )
        for name in ("lease", "poll_interval", "sync_interval", "backoff_base", "backoff_max"):
            if getattr(self, name) <= 0:
                raise UserError(f"annotation {name} must be positive, got {getattr(self, name)}.")
        if self.max_attempts < 1:
            raise UserError(f"annotation max_attempts must be at least 1, got {self.max_attempts}.")


def _owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


# ------------------------------------------------------------------------------------ labeller


class Labeller:
    """Claims pending captions, asks the annotator, records the answers, until `stop` is set.

    Runs in a service thread or in a child process (`run_labeller_process`); can also be run on
    its own (e.g. a dedicated labelling job next to several training runs).
    """

    def __init__(
        self,
        store: LabelStore,
        annotator: Annotator,
        settings: ServiceSettings,
        stop: Any,  # threading.Event or multiprocessing.Event
        owner: str | None = None,
        on_recorded: Any = None,  # callable(), told after each write
        parent_pid: int | None = None,  # stop when this process is gone
    ):
        self.store, self.annotator, self.settings, self.stop = store, annotator, settings, stop
        self.owner = owner or _owner_id()
        self.on_recorded = on_recorded
        self.parent_pid = parent_pid
        self.last_error: str | None = None
        self.labelled = 0
        self._rng = random.Random()

    def _orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def _heartbeat(self, done: threading.Event) -> None:
        while not done.wait(self.settings.lease / 3):
            try:
                self.store.renew(self.owner, self.settings.lease)
            except Exception as error:  # a busy store: try again next beat, the lease has slack
                self.last_error = f"renewing claims failed: {error}"

    def run(self) -> None:
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(done,), daemon=True)
        beat.start()
        outages = 0
        try:
            while not self.stop.is_set() and not self._orphaned():
                try:
                    outage = self._round()
                except Exception as error:  # never die: captions stay pending, retry later
                    self.last_error = f"labelling round failed: {error!r}"
                    outage = True
                    # give the round's claims back rather than renew them forever (if the store
                    # is unusable right now, the lease runs out instead)
                    with contextlib.suppress(Exception):
                        self.store.release_owner(self.owner)
                if outage is None:  # nothing pending
                    self.stop.wait(self.settings.poll_interval)
                    continue
                outages = outages + 1 if outage else 0
                if outages:
                    s = self.settings
                    self.stop.wait(
                        backoff_delay(outages - 1, s.backoff_base, s.backoff_max, self._rng)
                    )
        finally:
            done.set()
            try:
                self.store.release_owner(self.owner)
            except Exception as error:  # the lease runs out instead
                self.last_error = f"releasing claims failed: {error}"
            self.annotator.close()

    def _round(self) -> bool | None:
        """One claim-annotate-record round. None: nothing to do; True: only outages."""
        annotator, s = self.annotator, self.settings
        name, version = annotator.name, annotator.version
        batch = self.store.claim(name, version, self.owner, annotator.batch_size, s.lease)
        if not batch:
            return None
        try:
            outcomes = annotator.annotate(batch, cancel=self.stop)
            _check_outcomes(outcomes, batch, name, version)
        except Exception as error:  # an annotator bug must not lose the batch
            outcomes = [Failure(c, f"annotator failed: {error!r}", outage=True) for c in batch]
        labels = [o for o in outcomes if isinstance(o, Label)]
        failures = [o for o in outcomes if isinstance(o, Failure)]
        counted = [f for f in failures if not f.outage]
        if counted:
            attempts = self.store.attempts([f.caption for f in counted], name, version)
            retry = []
            for failure in counted:
                tries = attempts.get(failure.caption, 0) + 1
                if tries >= s.max_attempts:
                    labels.append(
                        Label(
                            caption=failure.caption,
                            annotator=name,
                            prompt_version=version,
                            label=None,
                            score=None,
                            status="error",
                            raw_reply=f"gave up after {tries} failed attempts: {failure.reason}",
                            attempts=tries,
                            labelled_at=time.time(),
                        )
                    )
                else:
                    retry.append((failure, tries))
            for failure, tries in retry:
                delay = backoff_delay(tries - 1, s.backoff_base, s.backoff_max, self._rng)
                self.store.release(
                    [failure.caption],
                    name,
                    version,
                    self.owner,
                    error=failure.reason,
                    count_attempt=True,
                    retry_after=delay,
                )
        outages = [f for f in failures if f.outage]
        if outages:
            self.last_error = outages[-1].reason
            self.store.release(
                [f.caption for f in outages], name, version, self.owner, error=outages[-1].reason
            )
        if labels:
            self.labelled += len(self.store.record(labels))
            if self.on_recorded is not None:
                self.on_recorded()
        return bool(outages) and not labels and not counted


def _check_outcomes(outcomes: list, batch: list[str], name: str, version: str) -> None:
    """An annotator must answer each caption of the batch, in order, under its own key."""
    if len(outcomes) != len(batch):
        raise RuntimeError(f"{len(outcomes)} outcomes for {len(batch)} captions")
    for outcome, caption in zip(outcomes, batch, strict=True):
        if outcome.caption != caption:
            raise RuntimeError(f"outcome for {outcome.caption!r} in the place of {caption!r}")
        if isinstance(outcome, Label) and (outcome.annotator, outcome.prompt_version) != (
            name,
            version,
        ):
            raise RuntimeError(
                f"label under {outcome.annotator}/{outcome.prompt_version}, "
                f"expected {name}/{version}"
            )


def run_labeller_process(
    store_path: str,
    annotator: Annotator,
    settings: ServiceSettings,
    stop: Any,
    owner: str,
    parent_pid: int,
) -> None:
    """Child-process entry point of a `mode="process"` service."""
    store = LabelStore(store_path)
    try:
        Labeller(store, annotator, settings, stop, owner=owner, parent_pid=parent_pid).run()
    except KeyboardInterrupt:  # the terminal's Ctrl-C reaches the whole process group
        pass
    finally:
        store.close()


# ------------------------------------------------------------------------------------- service


class AnnotationService:
    """See the module docstring. `store` is a `LabelStore` (left open at `stop`) or a path (the
    service opens the store and closes it at `stop`). Keyword arguments override
    `ServiceSettings` fields. Use as a context manager or call `stop()`.
    """

    def __init__(
        self,
        store: LabelStore | str | os.PathLike,
        annotator: Annotator,
        settings: ServiceSettings | None = None,
        *,
        start: bool = True,
        **overrides: Any,
    ):
        self.settings = replace(settings or ServiceSettings(), **overrides)
        self.settings.check()
        self._owns_store = not isinstance(store, LabelStore)
        self.store = LabelStore(store) if self._owns_store else store
        self.annotator = annotator
        self.name, self.version = annotator.name, annotator.version
        self.owner = _owner_id()
        self.last_error: str | None = None

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # cache grew or inbox drained
        self._inbox: deque[str] = deque()
        self._submitted: set[str] = set()
        self._waiting: set[str] = set()  # submitted, label not yet known
        self._cache: dict[str, Label] = {}
        self._fresh: list[Label] = []
        self._last_id = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sync_done = threading.Event()
        self._labeller: Labeller | None = None
        self._labeller_thread: threading.Thread | None = None
        self._process: Any = None
        self._process_stop: Any = None
        self._restarts = 0
        self._quick_deaths = 0
        self._restart_at: float | None = None
        self._started_at = 0.0
        self._rng = random.Random()
        self._sync_thread: threading.Thread | None = None
        if start:
            self.start()

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._sync_thread is not None:
            return
        self._sync_thread = threading.Thread(target=self._sync_loop, name="label-sync", daemon=True)
        self._sync_thread.start()
        self._start_labeller()

    def _start_labeller(self) -> None:
        self._started_at = time.monotonic()
        if self.settings.mode == "thread":
            self._labeller = Labeller(
                self.store,
                self.annotator,
                self.settings,
                self._stopping,
                owner=self.owner,
                on_recorded=self._wake.set,
            )
            self._labeller_thread = threading.Thread(
                target=self._labeller.run, name="labeller", daemon=True
            )
            self._labeller_thread.start()
            return
        # spawn, not fork: a forked copy of a process running JAX or other threads can deadlock
        context = multiprocessing.get_context("spawn")
        self._process_stop = context.Event()
        process = context.Process(
            target=run_labeller_process,
            args=(
                str(self.store.path),
                self.annotator,
                self.settings,
                self._process_stop,
                self.owner,
                os.getpid(),
            ),
            name="labeller",
            daemon=True,
        )
        process.start()
        self._process = process

    def stop(self, timeout: float = 30.0) -> None:
        """Stop labelling, flush submitted captions into the store's queue (the next service
        resumes them), and release unfinished claims. Idempotent."""
        if self._stopping.is_set() and self._sync_thread is None:
            return
        with self._lock:  # submit() checks the flag under the lock: no caption slips past the flush
            self._stopping.set()
        # the sync thread flushes the inbox into the store and exits; stopping it first also
        # ends any restart of the labeller process that it may be in the middle of
        self._wake.set()
        if self._sync_thread is not None:
            self._sync_thread.join(timeout)
            self._sync_thread = None
        if self._process_stop is not None:
            self._process_stop.set()
        if self._labeller_thread is not None:
            self._labeller_thread.join(timeout)
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)
            self._process = None
        try:
            self.store.release_owner(self.owner)
        except Exception as error:  # the leases run out instead
            self.last_error = f"releasing claims failed: {error}"
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> AnnotationService:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ callers

    def submit(self, captions: Iterable[str]) -> int:
        """Queue captions for labelling; returns how many were new to this service.

        Never blocks on the store or the annotator: captions go to an in-memory queue that the
        sync thread moves into the store. Empty captions, captions submitted before and captions
        whose label is already known are skipped here; the store skips the rest that are
        labelled or pending.
        """
        new = 0
        with self._lock:
            if self._stopping.is_set():
                raise RuntimeError("submit() after stop(): this service no longer takes captions")
            for caption in captions:
                if not caption or caption.isspace() or caption in self._submitted:
                    continue
                self._submitted.add(caption)
                if caption in self._cache:
                    continue
                self._waiting.add(caption)
                self._inbox.append(caption)
                new += 1
        if new:
            self._wake.set()
        return new

    def lookup(self, captions: Iterable[str]) -> dict[str, Label]:
        """The known labels of `captions` (any status; `label` is None unless status is `ok`).
        Never waits: a caption whose label has not arrived is simply absent. The labels held
        here carry no raw reply (it stays in the store, to keep memory small)."""
        with self._lock:
            cache = self._cache
            return {c: cache[c] for c in captions if c in cache}

    def new_labels(self) -> list[Label]:
        """Labels that reached this service since the last call, oldest first (at start this
        includes every label already in the store for this annotator and prompt version)."""
        with self._lock:
            fresh, self._fresh = self._fresh, []
        return fresh

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every caption submitted to this service has a known label (benchmarks and
        tests; training should never call this). False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._inbox or self._waiting:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining if remaining is not None else 1.0)
        return True

    def stats(self) -> dict[str, Any]:
        with self._lock:
            stats = {
                "submitted": len(self._submitted),
                "waiting": len(self._waiting),
                "unqueued": len(self._inbox),
                "known_labels": len(self._cache),
            }
        labeller = self._labeller
        stats["labelled_here"] = labeller.labelled if labeller else None
        stats["last_error"] = (labeller.last_error if labeller else None) or self.last_error
        stats["labeller_restarts"] = self._restarts
        return stats

    # --------------------------------------------------------------------------------- sync

    def _sync_once(self) -> None:
        with self._lock:
            batch = list(self._inbox)
        if batch:
            # the store skips captions already labelled or pending under this key
            self.store.enqueue(batch, self.name, self.version)
            with self._lock:
                for _ in batch:  # only this thread pops, so these are the same captions
                    self._inbox.popleft()
                self._changed.notify_all()
        while True:
            fresh = self.store.labels_since(
                self._last_id, self.name, self.version, with_reply=False
            )
            if not fresh:
                break
            with self._lock:
                for label in fresh:
                    self._cache[label.caption] = label
                    self._waiting.discard(label.caption)
                self._fresh.extend(fresh)
                self._last_id = fresh[-1].id
                self._changed.notify_all()

    def _check_process(self) -> None:
        """Restart a labeller process that died, with backoff; give up after
        `MAX_QUICK_RESTARTS` deaths in a row within a minute of starting (captions stay queued
        for a later run, and training goes on)."""
        process = self._process
        if process is None or process.is_alive() or self._stopping.is_set():
            return
        now = time.monotonic()
        if self._restart_at is None:
            lived = now - self._started_at
            self._quick_deaths = 0 if lived > 60 else self._quick_deaths + 1
            if self._quick_deaths > MAX_QUICK_RESTARTS:
                self.last_error = (
                    f"labeller process exited with code {process.exitcode} "
                    f"{self._quick_deaths} times in a row; no more labelling in this run "
                    "(queued captions stay in the store for the next one)"
                )
                print(f"autotelic: {self.last_error}", file=sys.stderr)
                self._process = None
                return
            s = self.settings
            delay = backoff_delay(self._quick_deaths - 1, s.backoff_base, s.backoff_max, self._rng)
            self._restart_at = now + delay
            self.last_error = (
                f"labeller process exited with code {process.exitcode}; restarting in {delay:.1f} s"
            )
            print(f"autotelic: {self.last_error}", file=sys.stderr)
        if now >= self._restart_at:
            self._restart_at = None
            self._restarts += 1
            self._start_labeller()

    def _sync_loop(self) -> None:
        failures = 0
        while True:
            stopping = self._stopping.is_set()
            try:
                self._sync_once()
                self._check_process()
                failures = 0
            except Exception as error:  # e.g. the store is busy: nothing is dropped, retry
                failures += 1
                self.last_error = f"syncing with the label store failed: {error!r}"
                if stopping and failures > 3:
                    print(f"autotelic: {self.last_error}", file=sys.stderr)
                    break
            if stopping and failures == 0:
                break
            self._wake.wait(self.settings.sync_interval)
            self._wake.clear()


def open_service(
    store_path: str | os.PathLike | None, annotator: Annotator, **settings: Any
) -> AnnotationService:
    """A service on the store at `store_path` (default: `default_store_path()`)."""
    from .store import default_store_path

    return AnnotationService(
        Path(store_path) if store_path else default_store_path(), annotator, **settings
    )
