"""`autotelic labels` list / count / export on a real store, through its argparse wiring."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from autotelic.errors import UserError
from autotelic.feedback.commands import add_commands
from autotelic.feedback.store import Label, LabelStore


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="autotelic")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "labels.sqlite"
    with LabelStore(path) as store:
        store.record(
            [
                Label("You kill the newt!", "chat:m", "v1+abc", 1, None, "ok", "LABEL: helpful"),
                Label("It's solid stone.", "chat:m", "v1+abc", 0, None, "ok", "LABEL: unhelpful"),
                Label("Hmm.", "chat:m", "v1+abc", None, None, "unparseable", "I wonder"),
                Label("You find gold.", "embedded", "goals+1", 1, 0.8, "ok", "cosine 0.8"),
            ]
        )
        store.enqueue(["Still waiting."], "chat:m", "v1+abc")
    return path


def test_labels_count(store_path, capsys):
    assert run("labels", "count", "--store", str(store_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "annotator",
        "prompt_version",
        "ok",
        "helpful",
        "unparseable",
        "error",
        "pending",
    ]
    assert lines[1].split() == ["chat:m", "v1+abc", "2", "1", "1", "0", "1"]
    assert lines[2].split() == ["embedded", "goals+1", "1", "1", "0", "0", "0"]


def test_labels_list_with_filters(store_path, capsys):
    assert run("labels", "list", "--store", str(store_path), "--status", "ok") == 0
    out = capsys.readouterr().out
    assert "You kill the newt!" in out and "You find gold." in out and "Hmm." not in out
    assert run("labels", "list", "--store", str(store_path), "--annotator", "embedded") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and "score=0.8000" in out[0]
    assert run("labels", "list", "--store", str(store_path), "--pending") == 0
    assert "Still waiting." in capsys.readouterr().out


def test_labels_export(store_path, tmp_path):
    out = tmp_path / "labels.jsonl"
    assert (
        run("labels", "export", str(out), "--store", str(store_path), "--prompt-version", "v1+abc")
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["caption"] for r in rows] == ["You kill the newt!", "It's solid stone.", "Hmm."]
    csv_out = tmp_path / "labels.data"
    assert run("labels", "export", str(csv_out), "--format", "csv", "--store", str(store_path)) == 0
    assert csv_out.read_text().splitlines()[0].startswith("caption,annotator,prompt_version")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("labels", "count", "--store", "{missing}"), "no label store"),
        (("labels", "list", "--store", "{store}", "--status", "great"), "--status"),
        (("labels", "list", "--store", "{store}", "--limit", "-1"), "--limit"),
        (("labels", "list", "--store", "{store}", "--pending", "--status", "ok"), "--pending"),
        (("labels", "export", "out.txt", "--store", "{store}"), "jsonl or"),
        (("labels", "export", "out.csv", "--store", "{store}", "--format", "xml"), "--format"),
    ],
)
def test_labels_bad_input_is_a_user_error(store_path, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    filled = [a.format(missing=tmp_path / "nope.sqlite", store=store_path) for a in argv]
    with pytest.raises(UserError, match=message):
        run(*filled)
    assert not (tmp_path / "nope.sqlite").exists()  # looking never creates a store
