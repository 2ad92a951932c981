"""The annotation service against a real local chat-completions server with injected faults and
a real SQLite store: exactly-once labelling, reuse across runs, crash recovery, several
processes, and a submit() that never waits."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from test_feedback_annotators import FakeChatServer, make_annotator, truth

from autotelic.feedback.annotators import Annotator, Failure
from autotelic.feedback.service import AnnotationService
from autotelic.feedback.store import Label, LabelStore

FAST = {
    "lease": 5.0,
    "sync_interval": 0.05,
    "poll_interval": 0.02,
    "backoff_base": 0.02,
    "backoff_max": 0.2,
}
FAULTS = ["429", "500", "503", "malformed", "drop", "timeout", "slow", "nolabel"]


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def expected(caption: str) -> int:
    return int(truth(caption) == "helpful")


def captions_named(prefix: str, count: int) -> list[str]:
    return [f"{prefix} {i} {'gold' if i % 3 == 0 else 'rock'}" for i in range(count)]


@pytest.fixture
def server():
    fake = FakeChatServer(hang=2.0, slow=0.1)
    yield fake
    fake.gate.set()
    fake.kill()


def assert_store_exact(path: Path, captions: list[str], annotator) -> None:
    """Every caption stored once with the right label, nothing pending, file intact."""
    with LabelStore(path) as store:
        rows = list(store.labels(annotator.name, annotator.version))
        assert sorted(r.caption for r in rows) == sorted(set(captions))
        assert all(r.status == "ok" and r.label == expected(r.caption) for r in rows)
        assert store.pending() == []
        assert store.integrity_check() == "ok"


def test_every_caption_labelled_once_through_faults_and_a_server_restart(server, tmp_path):
    captions = captions_named("event", 60)
    server.faults = {c: [FAULTS[i % len(FAULTS)]] for i, c in enumerate(captions[::2])}
    annotator = make_annotator(server, timeout=1.0, retries=2)
    path = tmp_path / "labels.sqlite"
    with AnnotationService(path, annotator, **FAST) as service:
        assert service.submit(captions[:30]) == 30
        assert service.submit(captions[:40]) == 10  # duplicates are dropped at once
        assert service.submit(["", "   "]) == 0  # nothing to label
        assert wait_for(lambda: len(service.lookup(captions)) >= 10)
        server.kill()  # mid-run: connections refused until it comes back
        service.submit(captions[40:] + captions[:5])
        assert wait_for(lambda: "refused" in str(service.stats()["last_error"]))
        server.restart()
        assert service.wait_idle(timeout=60)
        labels = service.lookup(captions)
        assert {c: labels[c].label for c in captions} == {c: expected(c) for c in captions}
        fresh = service.new_labels()
        assert sorted(x.caption for x in fresh) == sorted(captions)
        assert service.new_labels() == []
    assert server.delivered == Counter(dict.fromkeys(captions, 1))  # each answered once
    assert_store_exact(path, captions, annotator)


def test_a_restarted_service_reuses_stored_labels(server, tmp_path):
    path = tmp_path / "labels.sqlite"
    captions = captions_named("seen", 12)
    with AnnotationService(path, make_annotator(server), **FAST) as first:
        first.submit(captions)
        assert first.wait_idle(timeout=60)
        before = first.lookup(captions)
    asked = Counter(server.requests)
    with AnnotationService(path, make_annotator(server), **FAST) as second:
        # labels already in the store are known without asking anyone
        assert wait_for(lambda: len(second.lookup(captions)) == len(captions))
        assert second.submit([*captions, "new gold"]) == 1
        assert second.wait_idle(timeout=60)
        assert second.lookup(captions) == before
        assert sorted(x.caption for x in second.new_labels()) == sorted([*captions, "new gold"])
    assert server.requests - asked == Counter({"new gold": 1})
    # another prompt version is another question: asked again
    with AnnotationService(path, make_annotator(server, task="Find the amulet."), **FAST) as other:
        other.submit(captions[:2])
        assert other.wait_idle(timeout=60)
    assert server.requests - asked == Counter({"new gold": 1, captions[0]: 1, captions[1]: 1})


def _crashing_run(path: str, url: str, captions: list[str], ready) -> None:
    """A training run that queues captions while the endpoint is down, then is killed."""
    server = FakeChatServer.__new__(FakeChatServer)
    server.port = int(url.rsplit(":", 1)[1].split("/")[0])
    service = AnnotationService(path, make_annotator(server, timeout=1.0), **FAST)
    service.submit(captions)
    with LabelStore(path) as store:
        wait_for(lambda: len(store.pending()) == len(captions))
    ready.set()
    time.sleep(600)  # killed before this ends


def test_captions_queued_before_a_crash_are_labelled_by_the_next_run(server, tmp_path):
    path = tmp_path / "labels.sqlite"
    captions = captions_named("before crash", 10)
    server.kill()
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    run = context.Process(target=_crashing_run, args=(str(path), server.url, captions, ready))
    run.start()
    try:
        assert ready.wait(60)
    finally:
        os.kill(run.pid, signal.SIGKILL)
        run.join(10)
    server.restart()
    annotator = make_annotator(server)
    with AnnotationService(path, annotator, **FAST) as service:  # submits nothing itself
        with LabelStore(path) as store:
            assert wait_for(lambda: store.pending() == [])
        assert wait_for(lambda: len(service.lookup(captions)) == len(captions))
    assert server.delivered == Counter(dict.fromkeys(captions, 1))
    assert_store_exact(path, captions, annotator)


def test_submit_and_lookup_never_wait_for_the_annotator_or_the_store(server, tmp_path):
    path = tmp_path / "labels.sqlite"
    server.gate.clear()  # every request stalls until the gate opens
    annotator = make_annotator(server, timeout=30.0, batch_size=4)
    with AnnotationService(path, annotator, **FAST) as service:
        service.submit(captions_named("stalled", 4))
        assert wait_for(lambda: server.waiting >= 1)  # the labeller is stuck in a request
        returned = service.submit(captions_named("more", 200))
        # submit came back while the server was still holding the labeller's requests
        assert returned == 200 and server.waiting >= 1 and not server.gate.is_set()
        assert service.lookup(captions_named("stalled", 4)) == {}
        server.gate.set()
        assert service.wait_idle(timeout=60)

        # now lock the store itself, as a long write of another process would
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            assert service.submit(["during the lock gold"]) == 1
            assert len(service.lookup(captions_named("more", 200))) == 200
            assert service.stats()["waiting"] == 1  # still queued: the store is locked
        finally:
            locker.execute("COMMIT")
            locker.close()
        assert service.wait_idle(timeout=60)
        assert service.lookup(["during the lock gold"])["during the lock gold"].label == 1


def test_oldest_captions_are_labelled_first(server, tmp_path):
    captions = captions_named("fifo", 20)
    server.gate.clear()
    annotator = make_annotator(server, concurrency=1, batch_size=1)
    with AnnotationService(tmp_path / "labels.sqlite", annotator, **FAST) as service:
        for caption in captions:  # one at a time, as captions arrive during training
            service.submit([caption])
        server.gate.set()
        assert service.wait_idle(timeout=60)
    assert server.order == captions


def test_a_caption_that_keeps_failing_is_stored_as_error_without_blocking_others(server, tmp_path):
    captions = ["poison gold", *captions_named("fine", 6)]
    server.always = {"poison gold": "500"}
    annotator = make_annotator(server, retries=0, concurrency=1, batch_size=2)
    path = tmp_path / "labels.sqlite"
    with AnnotationService(path, annotator, max_attempts=3, **FAST) as service:
        service.submit(captions)
        assert service.wait_idle(timeout=60)
        labels = service.lookup(captions)
    poison = labels["poison gold"]
    assert poison.status == "error" and poison.label is None
    with LabelStore(path) as store:  # the reason is kept in the store
        stored = store.lookup(["poison gold"], annotator.name, annotator.version)
        assert "3 failed attempts" in stored["poison gold"].raw_reply
        assert "500" in stored["poison gold"].raw_reply
    assert poison.attempts == 3 and server.requests["poison gold"] == 3
    assert all(labels[c].label == expected(c) for c in captions[1:])


class FlakyAnnotator(Annotator):
    """Raises on its first call (a bug), then labels by length."""

    name = "flaky"
    version = "v1"
    batch_size = 3

    def __init__(self):
        self.calls = 0
        self.seen: list[str] = []

    def annotate(self, captions, cancel=None):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("annotator bug")
        self.seen += captions
        return [
            Label(c, self.name, self.version, len(c) % 2, None, "ok", "by length")
            if "down" not in c
            else Failure(c, "endpoint down", outage=True)
            for c in captions
        ]


def test_an_annotator_that_raises_loses_nothing(tmp_path):
    annotator = FlakyAnnotator()
    captions = [f"c{'x' * i}" for i in range(7)]
    with AnnotationService(tmp_path / "labels.sqlite", annotator, **FAST) as service:
        service.submit(captions)
        assert service.wait_idle(timeout=60)
        assert {c: x.label for c, x in service.lookup(captions).items()} == {
            c: len(c) % 2 for c in captions
        }
        assert sorted(annotator.seen) == sorted(captions)  # each seen once after the bug
        service.submit(["down"])  # outages keep it queued, never stored
        assert wait_for(lambda: annotator.seen.count("down") >= 2)
    with LabelStore(tmp_path / "labels.sqlite") as store:
        assert [p.caption for p in store.pending()] == ["down"]
        assert store.pending()[0].claimed_by is None  # stop() released the claim
        assert store.pending()[0].attempts == 0  # an outage is not the caption's fault


def _sharing_run(path: str, port: int, captions: list[str], results) -> None:
    server = FakeChatServer.__new__(FakeChatServer)
    server.port = port
    with AnnotationService(path, make_annotator(server), **FAST) as service:
        service.submit(captions)
        done = service.wait_idle(timeout=90)
        labels = {c: x.label for c, x in service.lookup(captions).items()}
    results.put((done, labels))


def test_two_runs_sharing_a_store_ask_each_caption_once(server, tmp_path):
    path = str(tmp_path / "shared.sqlite")
    LabelStore(path).close()
    everything = captions_named("shared", 80)
    shares = [everything[:60], everything[20:][::-1]]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    runs = [
        context.Process(target=_sharing_run, args=(path, server.port, share, results))
        for share in shares
    ]
    for run in runs:
        run.start()
    reports = [results.get(timeout=120) for _ in runs]
    for run in runs:
        run.join(30)
        assert run.exitcode == 0
    assert all(done for done, _ in reports)
    # each run knows the labels of all its captions, including those the other run paid for
    assert sorted(sorted(labels) for _, labels in reports) == sorted(map(sorted, shares))
    assert all(label == expected(c) for _, labels in reports for c, label in labels.items())
    # the endpoint answered each caption once, although both runs wanted 40 of them
    assert server.delivered == Counter(dict.fromkeys(everything, 1))
    assert_store_exact(Path(path), everything, make_annotator(server))


def test_process_mode_labels_in_a_child_process(server, tmp_path):
    path = tmp_path / "labels.sqlite"
    captions = captions_named("child", 15)
    annotator = make_annotator(server)
    service = AnnotationService(path, annotator, mode="process", **FAST)
    try:
        service.submit(captions)
        assert service.wait_idle(timeout=90)
        labels = service.lookup(captions)
        assert {c: labels[c].label for c in captions} == {c: expected(c) for c in captions}
        child = service._process
        assert child is not None and child.pid != os.getpid()
    finally:
        service.stop()
    assert not child.is_alive()
    assert server.delivered == Counter(dict.fromkeys(captions, 1))
    assert_store_exact(path, captions, annotator)


def test_stop_keeps_unlabelled_captions_queued(server, tmp_path):
    path = tmp_path / "labels.sqlite"
    server.gate.clear()
    annotator = make_annotator(server, timeout=30.0, batch_size=2)
    service = AnnotationService(path, annotator, **FAST)
    captions = captions_named("unfinished", 6)
    service.submit(captions)
    assert wait_for(lambda: server.waiting >= 1)
    stopper = threading.Thread(target=service.stop, kwargs={"timeout": 0.5})
    stopper.start()
    stopper.join(30)
    with pytest.raises(RuntimeError, match="after stop"):
        service.submit(["late"])
    with LabelStore(path) as store:
        pending = store.pending()
        assert sorted(p.caption for p in pending) == sorted(captions)
        assert all(p.claimed_by is None for p in pending)
    server.gate.set()  # the abandoned request finishes; its answer is simply stored


class WrongKeyAnnotator(FlakyAnnotator):
    """Answers under another prompt version: a bug that must not write labels under a key."""

    name = "wrong-key"

    def annotate(self, captions, cancel=None):
        self.seen += captions
        return [Label(c, self.name, "other", 1, None, "ok", "") for c in captions]


def test_answers_under_the_wrong_key_are_not_stored(tmp_path):
    annotator = WrongKeyAnnotator()
    path = tmp_path / "labels.sqlite"
    with AnnotationService(path, annotator, **FAST) as service:
        service.submit(["a", "b"])
        assert wait_for(lambda: len(annotator.seen) >= 4)  # asked, refused, asked again
        assert "expected wrong-key/v1" in service.stats()["last_error"]
    with LabelStore(path) as store:
        assert list(store.labels()) == []
        assert sorted(p.caption for p in store.pending()) == ["a", "b"]


class DyingAnnotator(FlakyAnnotator):
    """Kills the process it labels in: a crash in native code, say."""

    name = "dying"

    def annotate(self, captions, cancel=None):
        os._exit(3)


def test_a_dead_labeller_process_is_restarted_and_nothing_is_lost(tmp_path):
    path = tmp_path / "labels.sqlite"
    service = AnnotationService(path, DyingAnnotator(), mode="process", **FAST)
    try:
        service.submit(["x", "y"])
        assert wait_for(lambda: service.stats()["labeller_restarts"] >= 1)
        assert "exited with code 3" in service.stats()["last_error"]
    finally:
        service.stop()
    with LabelStore(path) as store:  # the claims of the dead processes run out; nothing lost
        assert list(store.labels()) == []
        assert sorted(p.caption for p in store.pending()) == ["x", "y"]
