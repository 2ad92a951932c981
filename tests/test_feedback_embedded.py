"""The embedded annotator: offline sentence-encoder scores against the task's goal sentences,
deterministic on a fixed caption set, and usable by the service like any annotator."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from autotelic.errors import UserError
from autotelic.feedback.annotators import NETHACK_GOALS, EmbeddedAnnotator
from autotelic.feedback.service import AnnotationService
from autotelic.feedback.store import LabelStore

# caption -> (label, cosine to the closest default NetHack goal) as measured once; a change means
# the encoder, its weights or the goals changed, and the prompt version must change with them
FIXED = {
    "There is a staircase down here.": (1, 1.0),
    "You descend the stairs.": (1, 0.9573),
    "You find a hidden passage.": (1, 1.0),
    "You see here a gold piece.": (1, 0.7429),
    "You kill the newt!": (1, 0.6335),
    "What do you want to eat?": (0, 0.1514),
    "Hello Agent, welcome to NetHack!  You are a neutral male human Valkyrie.": (0, 0.1502),
    "It's solid stone.": (0, 0.2763),
    "You hear some noises in the distance.": (0, 0.3488),
    "Really attack the dog?": (0, 0.2511),
}


@pytest.fixture(scope="module")
def annotator():
    loaded = EmbeddedAnnotator()
    yield loaded
    loaded.close()


def test_embedded_annotator_labels_a_fixed_set_deterministically(annotator):
    captions = list(FIXED)
    outcomes = annotator.annotate(captions)
    assert {o.caption: o.label for o in outcomes} == {c: v[0] for c, v in FIXED.items()}
    scores = np.array([o.score for o in outcomes])
    np.testing.assert_allclose(scores, [v[1] for v in FIXED.values()], atol=2e-3)
    assert all(o.status == "ok" and "cosine" in o.raw_reply for o in outcomes)
    # the same scores whatever the batch: reversed, one at a time, and in a fresh instance
    np.testing.assert_array_equal(annotator.scores(captions[::-1])[::-1], scores)
    np.testing.assert_array_equal([annotator.scores([c])[0] for c in captions], scores)
    fresh = pickle.loads(pickle.dumps(annotator))  # as a labeller process receives it
    assert fresh._encoder is None
    np.testing.assert_array_equal(fresh.scores(captions), scores)


def test_embedded_prompt_version_tracks_goals_and_threshold(annotator):
    assert EmbeddedAnnotator().version == annotator.version
    assert EmbeddedAnnotator(threshold=0.6).version != annotator.version
    assert EmbeddedAnnotator(goals="You open the door.").version != annotator.version
    assert EmbeddedAnnotator(goals=list(NETHACK_GOALS)).version == annotator.version
    with pytest.raises(UserError, match="goal"):
        EmbeddedAnnotator(goals=())
    with pytest.raises(UserError, match="threshold"):
        EmbeddedAnnotator(threshold=2.0)


def test_embedded_annotator_behind_the_service(annotator, tmp_path):
    path = tmp_path / "labels.sqlite"
    captions = list(FIXED)
    with AnnotationService(path, annotator, sync_interval=0.05, poll_interval=0.02) as service:
        service.submit(captions)
        assert service.wait_idle(timeout=60)
        labels = service.lookup(captions)
    assert {c: labels[c].label for c in captions} == {c: v[0] for c, v in FIXED.items()}
    with LabelStore(path) as store:
        (row,) = store.counts()
        assert row["annotator"] == "embedded-sentence-v1" and row["ok"] == len(FIXED)
        assert row["helpful"] == 5 and row["pending"] == 0
