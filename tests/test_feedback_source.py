"""The feedback reward sources (`retrieval`, `classifier`, `ranking`) and their host side
`OnlineFeedback`: ONI's count-scaled reward r / N_ep(caption)^3 paid exactly, inside jit and vmap
and the PPO update; labels from the embedded annotator and a real SQLite store turned into
tables; a classifier that rewards an unseen caption; checkpoints; and the refusal of envs that
give no captions."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autotelic import runs
from autotelic.config import build
from autotelic.envs.base import EnvSpec, StepResult
from autotelic.envs.captions import CaptionVocabulary
from autotelic.errors import UserError
from autotelic.feedback import models
from autotelic.feedback.annotators import DOORKEY_GOALS, Annotator, EmbeddedAnnotator
from autotelic.feedback.online import FeedbackSettings, OnlineFeedback
from autotelic.feedback.store import Label, LabelStore
from autotelic.ppo import host, init_seeds, make_trainer
from autotelic.rewards.base import REGISTRY, Transition, build_sources, resolve_params
from autotelic.rewards.feedback import FEEDBACK_SOURCES

SPEC = EnvSpec(
    env_id="test:captions",
    obs_shape=(1,),
    obs_dtype="float32",
    obs_kind="vector",
    num_actions=2,
    max_steps=4,
    options=(("captions", True),),
)
SMALL = models.TextConfig(num_buckets=2**12, embed_dim=16, hidden=32, learning_rate=1e-2)


def build_source(name: str = "retrieval", **overrides: Any):
    params = resolve_params(name, overrides)
    REGISTRY[name].check(params, SPEC)
    return REGISTRY[name].build(params, SPEC), params


def transition(captions, dones) -> Transition:
    """Transitions with these caption ids and episode ends (any leading shape)."""
    shape = np.shape(captions)
    return Transition(
        obs=jnp.zeros((*shape, 1)),
        action=jnp.zeros(shape, jnp.int32),
        next_obs=jnp.zeros((*shape, 1)),
        terminated=jnp.asarray(dones, bool),
        truncated=jnp.zeros(shape, bool),
        extrinsic=jnp.zeros(shape),
        caption=jnp.asarray(captions, jnp.int32),
    )


# ------------------------------------------------------------------------------ the source

VALUES = {1: 1.0, 2: 0.5, 3: 2.0, 4: 0.0}  # table entries; 4 has no label yet
SCRIPT = [
    # (caption env 0, caption env 1, done 0, done 1) -> (N_ep 0, N_ep 1); 2 slots per env
    ((1, 1, False, False), (1, 1)),
    ((1, 2, False, False), (2, 1)),
    ((0, 1, False, False), (0, 2)),  # no caption: pays 0, not counted
    ((1, 2, True, False), (3, 2)),  # env 0's episode ends after this step is paid
    ((1, 3, False, False), (1, 0)),  # env 1's slots hold 1 and 2: caption 3 is lost, pays 0
    ((2, 3, False, True), (1, 0)),  # still lost; env 1's episode ends
    ((2, 3, False, False), (2, 1)),  # env 1 counts afresh
    ((4, 3, False, False), (0, 2)),  # env 0's slots hold 1 and 2: caption 4 is lost
    ((9, 4, False, False), (0, 0)),  # 9 >= vocab_size: no table entry; 4 lost in env 1
]


def test_reward_is_table_over_count_cubed_with_resets_and_overflow():
    source, params = build_source("retrieval", vocab_size=8, episode_slots=2)
    assert (params.beta, params.coef, params.gamma) == (3.0, 1.0, 0.99)
    assert params.episodic and params.normalize == "none"
    state = source.init(jax.random.PRNGKey(0), SPEC, 2)
    table = np.zeros(8, np.float32)
    for caption, value in VALUES.items():
        table[caption] = value
    state = state._replace(table=jnp.asarray(table))
    step = jax.jit(source.reward)
    paid_steps = 0
    for (c0, c1, d0, d1), counts in SCRIPT:
        reward, state = step(state, transition([c0, c1], [d0, d1]))
        expected = [
            VALUES.get(c, 0.0) / n**3 if n > 0 and c < 8 else 0.0
            for c, n in zip((c0, c1), counts, strict=True)
        ]
        np.testing.assert_allclose(reward, expected, rtol=1e-6, atol=0)
        paid_steps += sum(r != 0 for r in expected)
    assert reward.dtype == jnp.float32
    assert int(state.overflow) == 4 and int(state.out_of_table) == 1
    # per-caption sightings (table ids only), lost ones included
    sightings = [c for (c0, c1, _, _), _ in SCRIPT for c in (c0, c1) if 0 < c < 8]
    np.testing.assert_array_equal(state.seen, np.bincount(sightings, minlength=8))

    rollout = transition(np.array([[c0, c1] for (c0, c1, _, _), _ in SCRIPT]), np.zeros((9, 2)))
    state, metrics = jax.jit(source.update)(state, rollout, jax.random.PRNGKey(1))
    assert float(metrics["caption_fraction"]) == pytest.approx(17 / 18)
    assert float(metrics["rewarded_fraction"]) == pytest.approx(paid_steps / 18)
    assert int(metrics["table_nonzero"]) == 3 and int(state.rewarded) == 0


def test_count_exponent_and_vmap_over_seeds():
    source, _ = build_source("classifier", vocab_size=4, episode_slots=4, beta=1.0)
    seeds = jax.vmap(lambda k: source.init(k, SPEC, 3))(jax.random.split(jax.random.PRNGKey(0), 2))
    tables = jnp.asarray([[0.0, 1.0, 2.0, 3.0], [0.0, -1.0, 0.5, 0.0]], jnp.float32)
    seeds = seeds._replace(table=tables)
    step = jax.jit(jax.vmap(source.reward))
    batch = transition([[1, 2, 3], [1, 2, 3]], np.zeros((2, 3), bool))
    for n in (1, 2, 3):
        reward, seeds = step(seeds, batch)
        np.testing.assert_allclose(reward, tables[:, 1:] / n, rtol=1e-6)  # beta = 1


# ------------------------------------------------------------------- envs without captions


def test_envs_without_captions_are_refused_before_compiling():
    no_captions = [
        replace(SPEC, options=()),  # a JAX-native env
        replace(SPEC, options=(("family", "box"),)),  # a host env that cannot caption
        replace(SPEC, options=(("family", "minigrid"), ("captions", False))),
    ]
    for name in FEEDBACK_SOURCES:
        for spec in no_captions:
            with pytest.raises(UserError, match=r"gives none.*gym:NetHackScore-v0"):
                build_sources((name,), {}, spec)
        build_sources((name,), {}, replace(SPEC, options=(("family", "nethack"),)))
    with pytest.raises(UserError, match="vocab_size"):
        build_sources(("ranking",), {"ranking": {"vocab_size": 1}}, SPEC)
    with pytest.raises(UserError, match="episode_slots"):
        build_sources(("ranking",), {"ranking": {"episode_slots": 0}}, SPEC)
    # a spec that claimed captions but a transition without them fails at trace time, clearly
    source, _ = build_source()
    state = source.init(jax.random.PRNGKey(0), SPEC, 1)
    with pytest.raises(UserError, match="gives none"):
        source.reward(state, transition([1], [False])._replace(caption=None))


# --------------------------------------------------------------------- inside the PPO update


@dataclass(frozen=True)
class CaptionedEnv:
    """A JAX env that captions every step: caption id = action + 1 + (t odd), episodes of 4."""

    spec: EnvSpec = SPEC

    def reset(self, key):
        return jnp.zeros((), jnp.int32), jnp.zeros((1,), jnp.float32)

    def step(self, key, t, action):
        t = t + 1
        done = t >= 4
        obs = jnp.full((1,), t / 4, jnp.float32)
        caption = (action + 1 + t % 2).astype(jnp.int32)
        result = StepResult(
            obs=jnp.where(done, 0.0, obs),
            reward=jnp.zeros((), jnp.float32),
            terminated=done,
            truncated=jnp.zeros((), bool),
            final_obs=obs,
            success=jnp.zeros((), bool),
            caption=caption,
        )
        return jnp.where(done, 0, t), result


def test_ppo_update_pays_the_host_written_table_and_checkpoints_it(tmp_path: Path):
    config = build(
        {
            "env": "navix:Navix-Empty-5x5-v0",  # only for validation; CaptionedEnv is used
            "rewards": ["retrieval"],
            "sources": {"retrieval": {"vocab_size": 8, "episode_slots": 4}},
            "seeds": [0, 1],
            "ppo": {"num_envs": 2, "num_steps": 8, "update_epochs": 1, "num_minibatches": 1},
            "network": {"kind": "mlp", "hidden": 8},
        }
    )
    env = CaptionedEnv()
    sources, params = build_sources(config.rewards, config.sources, env.spec)
    trainer = make_trainer(config, env, sources, params, config.rewards)
    update = jax.jit(jax.vmap(trainer.update))
    state = init_seeds(trainer, config.seeds)
    state, metrics = update(state)
    assert np.all(host(metrics)["retrieval/reward_raw"] == 0)  # empty table: nothing paid
    table = jnp.zeros((2, 8)).at[:, 2].set(1.0)  # caption 2 is helpful, for both seeds
    source_state = state.source_states[0]._replace(table=table)
    state = state._replace(source_states=(source_state,))
    state, metrics = update(state)
    metrics = host(metrics)
    assert np.all(metrics["retrieval/caption_fraction"] == 1)
    assert np.all(metrics["retrieval/reward_raw"] > 0)
    assert np.all(metrics["retrieval/rewarded_fraction"] > 0)
    # episodes of 4 steps: caption 2 can pay 1, 1/8, 1/27 or 1/64 in one episode
    assert np.all(metrics["retrieval/reward_raw"] <= 0.5)

    like = host(state)
    runs.save_checkpoint(tmp_path, 2, jax.tree_util.tree_map(lambda x: x[0], like), {})
    restored, _ = runs.load_checkpoint(tmp_path, 2, jax.tree_util.tree_map(lambda x: x[0], like))
    np.testing.assert_array_equal(restored.source_states[0].table, table[0])
    np.testing.assert_array_equal(restored.source_states[0].seen, like.source_states[0].seen[0])


# --------------------------------------------------------------------------- OnlineFeedback


class FakeState(NamedTuple):
    """What `after_update` reads of a `TrainState`: the source states, stacked over seeds."""

    source_states: tuple


def feedback_state(names: tuple[str, ...], seeds: int = 2, vocab_size: int = 64) -> FakeState:
    settings = {name: {"vocab_size": vocab_size} for name in names}
    sources, _ = build_sources(names, settings, SPEC)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    return FakeState(tuple(jax.vmap(lambda k, s=s: s.init(k, SPEC, 2))(keys) for s in sources))


@pytest.fixture(scope="module")
def embedded():
    annotator = EmbeddedAnnotator(goals=DOORKEY_GOALS)
    yield annotator
    annotator.close()


COLOURS = ("red", "green", "purple", "yellow", "grey")
DOORKEY = [
    caption
    for colour in COLOURS
    for caption in (
        f"picked up the {colour} key",
        f"opened the {colour} door",
        f"picked up the {colour} ball",
        f"dropped the {colour} ball",
    )
] + ["reached the goal", "fell into the lava"]


def vocabulary(captions) -> CaptionVocabulary:
    vocab = CaptionVocabulary()
    vocab.ids(captions)
    return vocab


def test_retrieval_tables_converge_to_the_stored_labels(embedded, tmp_path: Path):
    store = tmp_path / "labels.sqlite"
    vocabs = [vocabulary(DOORKEY[:10]), vocabulary(DOORKEY[::-1])]  # two seeds, two numberings
    state = feedback_state(("retrieval",))
    feedback = OnlineFeedback(
        ("retrieval",), None, FeedbackSettings(), annotator=embedded, store=store
    )
    try:
        state = feedback.after_update(state, vocabs)
        assert feedback.wait(60)
        vocabs[0].ids(DOORKEY[10:])  # seed 0 meets the rest of the captions later
        state = feedback.after_update(state, vocabs)
        assert feedback.wait(60)
        state = feedback.after_update(state, vocabs)
        metrics = feedback.metrics()
    finally:
        feedback.close()
    with LabelStore(store) as opened:
        labels = opened.lookup(DOORKEY, embedded.name, embedded.version)
    assert len(labels) == len(DOORKEY)
    table = np.asarray(state.source_states[0].table)
    for s, vocab in enumerate(vocabs):
        expected = np.zeros(64, np.float32)
        for caption in DOORKEY:
            expected[vocab.id(caption)] = labels[caption].label
        np.testing.assert_array_equal(table[s], expected)
    helpful = sum(label.label for label in labels.values())
    assert 0 < helpful < len(DOORKEY)
    np.testing.assert_array_equal(metrics["feedback/labels"], [len(DOORKEY)] * 2)
    np.testing.assert_allclose(metrics["retrieval/table_nonzero_fraction"], helpful / len(DOORKEY))
    assert np.all(metrics["feedback/pending"] == 0)


def sight(state: FakeState, caption: int) -> FakeState:
    """One step in which env 0 of every seed shows `caption` (env 1 shows none), paid by the
    first source."""
    source, _ = build_source("classifier", vocab_size=64)
    seeds = state.source_states[0].table.shape[0]
    batch = transition([[caption, 0]] * seeds, [[False, False]] * seeds)
    _, first = jax.vmap(source.reward)(state.source_states[0], batch)
    return state._replace(source_states=(first, *state.source_states[1:]))


class HoldingBack(Annotator):
    """The embedded annotator, except that it fails on `held_out` captions (status `error`), so
    they reach the vocabulary but never the training data."""

    def __init__(self, inner: EmbeddedAnnotator, held_out: set[str]):
        self.inner, self.held_out = inner, held_out
        self.name, self.version = inner.name + "-holding-back", inner.version
        self.batch_size = inner.batch_size

    def annotate(self, captions, cancel=None):
        outcomes = self.inner.annotate(captions, cancel)
        return [
            Label(c, self.name, self.version, None, None, "error", "held out")
            if c in self.held_out
            else replace(o, annotator=self.name)
            for c, o in zip(captions, outcomes, strict=True)
        ]


def test_classifier_rewards_unseen_captions_and_models_checkpoint(embedded, tmp_path: Path):
    unseen = {"picked up the blue key": 1.0, "picked up the blue ball": 0.0}
    annotator = HoldingBack(embedded, set(unseen))
    vocab = vocabulary([*DOORKEY, *unseen])
    names = ("classifier", "ranking")
    settings = FeedbackSettings(
        steps_per_batch=100, steps_per_update=100, minibatch=64, top_captions=5
    )  # one step count: one compile per model
    run_dirs = [tmp_path / "run"]
    store = tmp_path / "labels.sqlite"
    state = feedback_state(names, seeds=1)
    feedback = OnlineFeedback(
        names, run_dirs, settings, annotator=annotator, store=store, seed=3, text=SMALL
    )
    try:
        state = feedback.after_update(state, [vocab])
        assert feedback.wait(60)
        state = feedback.after_update(state, [vocab])
        assert feedback.wait(60)  # the update's extra steps: done before the models are saved
        metrics = feedback.metrics()
        # captions the policy met, counted by the source, for top_captions.json
        for caption in ("reached the goal", "reached the goal", "picked up the blue key"):
            state = sight(state, vocab.id(caption))
        for update in (10, 20, 30):
            feedback.save(update, state)
        saved = feedback.state_dict()
    finally:
        feedback.close()

    classifier = np.asarray(state.source_states[0].table[0])
    for caption, label in unseen.items():
        assert classifier[vocab.id(caption)] == label, caption
    for caption in DOORKEY:  # the labelled captions are fitted
        expected = float(embedded.scores([caption])[0] >= embedded.threshold)
        assert classifier[vocab.id(caption)] == expected, caption
    ranking = np.asarray(state.source_states[1].table[0])
    helpful = [vocab.id(c) for c in DOORKEY if embedded.scores([c])[0] >= 0.5]
    unhelpful = [vocab.id(c) for c in DOORKEY if embedded.scores([c])[0] < 0.5]
    assert ranking[helpful].mean() > ranking[unhelpful].mean()
    # below the threshold (the median on the labelled captions) the reward is 0, as in Motif
    assert np.mean(ranking[unhelpful] == 0) >= 0.5
    assert 0 < metrics["classifier/loss"][0] < 0.3 and metrics["ranking/reward_std"][0] > 0
    assert metrics["feedback/errors"][0] == len(unseen)

    # the sidecar: newest two kept, and a fresh object restores the models exactly
    checkpoints = sorted(p.name for p in (run_dirs[0] / "checkpoints").iterdir())
    assert checkpoints == ["feedback_00000020.npz", "feedback_00000030.npz"]
    top = json.loads((run_dirs[0] / "feedback" / "top_captions.json").read_text())
    assert [(t["caption"], t["count"], t["label"]) for t in top] == [
        ("reached the goal", 2, 1),
        ("picked up the blue key", 1, None),
    ]
    assert top[1]["status"] == "error" and top[1]["reward"]["classifier"] == 1.0
    restored = OnlineFeedback(
        names, run_dirs, settings, annotator=annotator, store=store, seed=3, text=SMALL
    )
    try:
        assert restored.load(30)
        again = restored.state_dict()
        assert again.keys() == saved.keys()
        for key in saved:
            np.testing.assert_array_equal(again[key], saved[key], err_msg=key)
        meta = json.loads(bytes(saved["__meta__"]).decode())
        assert meta["cursor"] == len(DOORKEY) + len(unseen)  # store ids of the labels
        assert len(saved["pairs/first"]) == settings.pairs_per_label * len(DOORKEY)
    finally:
        restored.close()
    other = OnlineFeedback(("classifier",), run_dirs, settings, annotator=annotator, store=store)
    try:
        assert not other.load(30)  # saved by other sources: the models start afresh
    finally:
        other.close()


def test_max_train_share_defers_training_rounds_and_loses_no_labels(embedded, tmp_path: Path):
    """A training round due before `max_train_share` allows waits for the next round; its
    labels are in the dataset meanwhile, and the deferred round trains on all of them."""
    settings = FeedbackSettings(steps_per_batch=100, minibatch=64, max_train_share=1e-6)
    first, later = DOORKEY[:12], DOORKEY[12:]
    vocab = vocabulary(first)
    state = feedback_state(("classifier",), seeds=1)
    feedback = OnlineFeedback(
        ("classifier",), None, settings, annotator=embedded, store=tmp_path / "l.sqlite", text=SMALL
    )
    try:
        state = feedback.after_update(state, [vocab])
        assert feedback.wait(60)
        steps_first = int(feedback._classifier.steps)
        assert steps_first == 100
        # the first round took > 0 s, so with a share of 1e-6 the next may start only after
        # about a million times as long: the worker takes the new labels but defers training
        vocab.ids(later)
        state = feedback.after_update(state, [vocab])
        assert feedback.service.wait_idle(60)
        while not (feedback._due_labels and len(feedback._labels) == len(DOORKEY)):
            feedback._wake.set()  # pytest-timeout bounds this loop
            threading.Event().wait(0.02)
        assert int(feedback._classifier.steps) == steps_first
        assert len(feedback._data_rows) == len(DOORKEY)
        assert feedback.wait(60)  # waiting lifts the limit: the deferred round runs
        assert int(feedback._classifier.steps) == 2 * steps_first
        state = feedback.after_update(state, [vocab])
    finally:
        feedback.close()
    table = np.asarray(state.source_states[0].table[0])
    for caption in DOORKEY:
        expected = float(embedded.scores([caption])[0] >= embedded.threshold)
        assert table[vocab.id(caption)] == expected, caption


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_max_train_share_out_of_range_is_a_user_error(share: float):
    with pytest.raises(UserError, match=r"feedback\.max_train_share must be in"):
        FeedbackSettings(max_train_share=share).check()
