"""The label store on a real SQLite file: keys, FIFO claims, leases, crash safety, export, and
several processes writing at once."""

from __future__ import annotations

import csv
import json
import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest

from autotelic.errors import UserError
from autotelic.feedback.store import Label, LabelStore

A, V = "annotator-a", "v1"


def label(caption: str, value: int | None = 1, status: str = "ok", annotator: str = A) -> Label:
    return Label(caption, annotator, V, value, None, status, f"reply for {caption}")


@pytest.fixture
def store(tmp_path: Path):
    with LabelStore(tmp_path / "labels.sqlite") as opened:
        yield opened


def test_store_is_wal_and_survives_reopening(tmp_path: Path):
    path = tmp_path / "sub" / "labels.sqlite"
    with LabelStore(path) as store:
        assert store._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        store.enqueue(["old", "new"], A, V)
        store.record([label("old", 0)])
    with LabelStore(path, create=False) as store:  # e.g. after a crash: nothing lost
        assert [p.caption for p in store.pending(A, V)] == ["new"]
        (stored,) = store.lookup(["old", "new"], A, V).values()
        assert (stored.caption, stored.label, stored.status) == ("old", 0, "ok")
        assert stored.queued_at is not None and stored.labelled_at >= stored.queued_at
        assert store.integrity_check() == "ok"


def test_keys_are_caption_annotator_and_prompt_version(store: LabelStore):
    store.record([label("c", 1)])
    store.record([label("c", 0, annotator="annotator-b")])
    store.record([Label("c", A, "v2", None, None, "unparseable", "??")])
    assert store.lookup(["c"], A, V)["c"].label == 1
    assert store.lookup(["c"], "annotator-b", V)["c"].label == 0
    assert store.lookup(["c"], A, "v2")["c"].status == "unparseable"
    # a second answer for the same key changes nothing: the first one stays
    assert store.record([label("c", 0)]) == []
    assert store.lookup(["c"], A, V)["c"].label == 1
    assert len(list(store.labels())) == 3


def test_status_and_label_must_agree(store: LabelStore):
    with pytest.raises(ValueError, match="status"):
        store.record([label("x", status="maybe")])
    with pytest.raises(ValueError, match="status ok"):
        store.record([label("y"), label("x", value=None, status="ok")])
    with pytest.raises(ValueError, match="status ok"):
        store.record([label("x", value=1, status="unparseable")])
    conn = store._conn()  # the schema enforces it too, for writers other than this class
    for value, status in ((None, "ok"), (1, "error"), (2, "ok")):
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(
                "INSERT INTO labels (annotator, prompt_version, caption, label, status, "
                "raw_reply, attempts, labelled_at) VALUES ('a', 'v', 'c', ?, ?, '', 0, 0)",
                (value, status),
            )
    assert list(store.labels()) == []  # the failed transactions left nothing behind


def test_enqueue_skips_labelled_and_pending(store: LabelStore):
    store.record([label("done")])
    assert store.enqueue(["done", "a", "b", "a"], A, V) == ["a", "b"]
    assert store.enqueue(["b", "c"], A, V) == ["c"]
    assert store.enqueue(["done"], A, "v2") == ["done"]  # another prompt version asks again
    assert [p.caption for p in store.pending(A, V)] == ["a", "b", "c"]


def test_claims_are_fifo_exclusive_and_leased(store: LabelStore):
    store.enqueue([f"c{i}" for i in range(6)], A, V)
    assert store.claim(A, V, "one", 2, lease=60) == ["c0", "c1"]
    assert store.claim(A, V, "two", 2, lease=60) == ["c2", "c3"]
    assert store.claim(A, V, "three", 10, lease=0.05) == ["c4", "c5"]
    assert store.claim(A, V, "four", 10, lease=60) == []
    time.sleep(0.1)  # three's lease ran out (as if its process died)
    assert store.claim(A, V, "four", 10, lease=60) == ["c4", "c5"]
    assert store.renew("one", lease=60) == 2
    # a failed attempt is counted and deferred; other captions go first meanwhile
    store.release(["c0"], A, V, "one", error="HTTP 500", count_attempt=True, retry_after=60)
    store.release(["c1"], A, V, "one")
    assert store.claim(A, V, "five", 10, lease=60) == ["c1"]
    assert store.attempts(["c0", "c1"], A, V) == {"c0": 1, "c1": 0}
    (c0,) = [p for p in store.pending(A, V) if p.caption == "c0"]
    assert c0.last_error == "HTTP 500" and c0.claimed_by is None
    # release only touches the owner's own claims
    store.release(["c2"], A, V, "someone-else")
    assert store.claim(A, V, "six", 10, lease=60) == []
    assert store.release_owner("two") == 2
    assert store.claim(A, V, "six", 10, lease=60) == ["c2", "c3"]


def test_record_takes_the_caption_off_the_queue_with_its_history(store: LabelStore):
    store.enqueue(["x"], A, V)
    store.claim(A, V, "me", 1, lease=60)
    store.release(["x"], A, V, "me", error="timeout", count_attempt=True)
    store.claim(A, V, "me", 1, lease=60)
    assert store.record([label("x")]) == ["x"]
    assert store.pending() == []
    stored = store.lookup(["x"], A, V)["x"]
    assert stored.attempts == 1 and stored.id > 0


def test_labels_since_misses_nothing(store: LabelStore):
    store.record([label(f"c{i}") for i in range(5)])
    first = store.labels_since(0, A, V, limit=3)
    rest = store.labels_since(first[-1].id, A, V)
    assert [x.caption for x in first + rest] == [f"c{i}" for i in range(5)]
    assert store.labels_since(rest[-1].id, A, V) == []


def test_counts_and_export_round_trip(store: LabelStore, tmp_path: Path):
    captions = ["plain", 'with "quotes", commas', "new\nline", "unicode ✓"]
    store.record([label(c, i % 2) for i, c in enumerate(captions)])
    store.record([Label("?", A, V, None, 0.25, "unparseable", "hmm")])
    store.enqueue(["waiting"], A, V)
    (row,) = store.counts()
    assert row == {
        "annotator": A,
        "prompt_version": V,
        "ok": 4,
        "unparseable": 1,
        "error": 0,
        "helpful": 2,
        "pending": 1,
    }
    assert store.export(tmp_path / "out.jsonl") == 5
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == [*captions, "?"]
    assert rows[4]["label"] is None and rows[4]["score"] == 0.25
    assert store.export(tmp_path / "out.csv", status="ok") == 4
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as f:
        assert [r["caption"] for r in csv.DictReader(f)] == captions
    with pytest.raises(UserError, match="jsonl or"):
        store.export(tmp_path / "out.txt")
    assert not list(tmp_path.glob(".*tmp"))


def test_unusable_paths_are_user_errors(tmp_path: Path):
    with pytest.raises(UserError, match="no label store"):
        LabelStore(tmp_path / "missing.sqlite", create=False)
    with pytest.raises(UserError, match="directory"):
        LabelStore(tmp_path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(UserError, match=r"label store.*not a database"):
        LabelStore(junk)
    newer = tmp_path / "newer.sqlite"
    sqlite3.connect(newer).execute("PRAGMA user_version = 99").connection.close()
    with pytest.raises(UserError, match="newer"):
        LabelStore(newer)


# --------------------------------------------------------------------------- several processes


def _hammer(path: str, worker: int, captions: list[str], results) -> None:
    """Queue, claim and label captions as fast as possible; report what this process stored."""
    store = LabelStore(path, busy_timeout=60)
    owner = f"worker-{worker}"
    stored, claimed = [], []
    for start in range(0, len(captions), 7):
        store.enqueue(captions[start : start + 7], A, V)
        batch = store.claim(A, V, owner, 5, lease=600)
        claimed += batch
        stored += store.record([label(c, len(c) % 2) for c in batch])
    while batch := store.claim(A, V, owner, 5, lease=600):
        claimed += batch
        stored += store.record([label(c, len(c) % 2) for c in batch])
    store.close()
    results.put((worker, claimed, stored))


def test_processes_sharing_a_store_label_each_caption_once(tmp_path: Path):
    path = str(tmp_path / "shared.sqlite")
    LabelStore(path).close()
    everything = [f"caption {i}" for i in range(300)]
    # overlapping shares, in different orders
    shares = [everything[:200], everything[100:][::-1], everything[::2]]
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [
        context.Process(target=_hammer, args=(path, i, share, results))
        for i, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    reports = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    claimed = [c for _, got, _ in reports for c in got]
    stored = [c for _, _, got in reports for c in got]
    assert len(claimed) == len(set(claimed))  # no caption was handed to two labellers
    assert sorted(stored) == sorted(everything)  # each stored exactly once, none lost
    with LabelStore(path) as store:
        assert store.integrity_check() == "ok"
        assert store.pending() == []
        labels = list(store.labels())
        assert sorted(x.caption for x in labels) == sorted(everything)
        assert all(x.label == len(x.caption) % 2 for x in labels)
