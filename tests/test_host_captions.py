"""Captions: MiniGrid events described from consecutive env states (in-process and through the
worker pool), NetHack messages decoded, and the caption vocabulary's ids surviving a reload."""

from __future__ import annotations

import copy
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the MiniGrid ids)

from autotelic.envs.captions import (
    CaptionVocabulary,
    MiniGridCaptioner,
    captioner_for,
    decode_message,
)
from autotelic.envs.host import HostEnv, HostPool, env_rng, reset_env

LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE = 0, 1, 2, 3, 4, 5
DOORKEY = "MiniGrid-DoorKey-5x5-v0"


def _key(env: Any) -> tuple:
    base = env.unwrapped
    doors = tuple(c.is_open for c in base.grid.grid if c is not None and c.type == "door")
    return tuple(base.agent_pos), base.agent_dir, base.carrying is not None, doors


def plan(env: Any, reached: Callable[[Any, bool, float], bool]) -> list[int]:
    """Shortest action sequence from `env`'s state after which `reached(env, terminated, reward)`
    holds (breadth-first over copies of the env)."""
    frontier = deque([(copy.deepcopy(env), [])])
    seen = {_key(env)}
    while frontier:
        node, actions = frontier.popleft()
        for action in (LEFT, RIGHT, FORWARD, PICKUP, TOGGLE):
            child = copy.deepcopy(node)
            _, reward, terminated, truncated, _ = child.step(action)
            if reached(child, terminated, reward):
                return [*actions, action]
            if terminated or truncated or _key(child) in seen:
                continue
            seen.add(_key(child))
            frontier.append((child, [*actions, action]))
    raise AssertionError("no plan found")


def doorkey_script(env: Any) -> tuple[list[int], list[str]]:
    """Actions that pick up the key, drop it and pick it up again, open the door, close and reopen
    it, then reach the goal, with the caption each event must get (in order)."""
    probe = copy.deepcopy(env)
    actions: list[int] = []

    def extend(more: list[int]) -> None:
        for action in more:
            probe.step(action)
        actions.extend(more)

    extend(plan(probe, lambda e, t, r: e.unwrapped.carrying is not None))
    extend([DROP, PICKUP])
    extend(plan(probe, lambda e, t, r: any(_key(e)[3])))
    extend([TOGGLE, TOGGLE])
    extend(plan(probe, lambda e, t, r: t and r > 0))
    events = [
        "picked up the yellow key",
        "dropped the yellow key",
        "picked up the yellow key",
        "opened the yellow door",
        "closed the yellow door",
        "opened the yellow door",
        "reached the goal",
    ]
    return actions, events


def run_captioner(env: Any, actions: list[int]) -> list[str]:
    captioner = captioner_for(env)
    assert isinstance(captioner, MiniGridCaptioner)
    captions = []
    for action in actions:
        before = captioner.before(env)
        raw, _, terminated, _, _ = env.step(action)
        captions.append(captioner.caption(env, before, raw, terminated))
    return captions


def test_minigrid_events_are_captioned_in_process_and_through_the_pool():
    run_seed = 3
    env = gym.make(DOORKEY, disable_env_checker=True)
    reset_env(env, env_rng(run_seed, 0, 0))  # the layout the pool's env 0 gets
    actions, events = doorkey_script(env)
    captions = run_captioner(copy.deepcopy(env), actions)
    assert [c for c in captions if c] == events
    assert len(actions) > len(events)  # turning and walking are steps without a caption

    pool = HostPool(HostEnv(DOORKEY), 1, run_seed)
    with pool:
        pool.reset()
        ids, texts = [], []
        for action in actions:
            step = pool.step(np.array([action]))
            ids.append(int(step.caption[0]))
            texts.extend(pool.last_captions)
        assert step.terminated[0] and step.success[0]
    assert texts == captions
    assert [pool.vocabulary.text(i) for i in ids] == captions
    # ids in order of first appearance, 0 for no caption
    assert pool.vocabulary.texts() == ["", *dict.fromkeys(events)]
    assert all((i == 0) == (t == "") for i, t in zip(ids, texts, strict=True))


def test_falling_into_lava_is_captioned():
    env = gym.make("MiniGrid-LavaGapS5-v0", disable_env_checker=True)
    env.reset(seed=0)
    actions = plan(env, lambda e, t, r: t and r == 0)
    assert run_captioner(env, actions)[-1] == "fell into the lava"


def test_nethack_messages_decode_to_text():
    message = np.zeros(256, np.uint8)
    text = b"You see here a   newt corpse."
    message[: len(text)] = np.frombuffer(text, np.uint8)
    assert decode_message(message) == "You see here a newt corpse."
    assert decode_message(np.zeros(256, np.uint8)) == ""


def test_vocabulary_ids_survive_a_reload(tmp_path):
    path = tmp_path / "run" / "captions.jsonl"
    vocabulary = CaptionVocabulary(path)
    texts = ["picked up the yellow key", 'a "quoted"\nline', "ünïcödé", "picked up the yellow key"]
    ids = vocabulary.ids(texts)
    assert ids.dtype == np.int32 and list(ids) == [1, 2, 3, 1]
    assert vocabulary.id("") == 0
    vocabulary.flush()
    again = CaptionVocabulary(path)
    assert list(again.ids(texts)) == [1, 2, 3, 1]
    assert again.id("reached the goal") == 4
    again.flush()
    third = CaptionVocabulary(path)
    assert third.texts() == ["", *dict.fromkeys(texts), "reached the goal"]
    assert len(third) == 4
    assert third.captions(4) == ["reached the goal"] and third.captions() == third.texts()[1:]


def test_a_torn_append_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "captions.jsonl"
    vocabulary = CaptionVocabulary(path)
    vocabulary.ids(["one", "two"])
    vocabulary.flush()
    with open(path, "ab") as handle:
        handle.write(b'"thr')  # a crash mid-append
    reloaded = CaptionVocabulary(path)
    assert reloaded.texts() == ["", "one", "two"]
    assert reloaded.id("three") == 3
    reloaded.flush()
    assert path.read_bytes() == b'"one"\n"two"\n"three"\n'


def test_a_damaged_vocabulary_is_refused(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_bytes(b'"one"\nnot json\n')
    with pytest.raises(ValueError, match="damaged at line 2"):
        CaptionVocabulary(path).id("x")
