"""Text captions of transitions, and the vocabulary that turns them into int32 ids.

A caption says in words what one transition did; captions are what an annotator labels (ONI,
"Online Intrinsic Rewards for Decision Making Agents from Large Language Model Feedback", Zheng et
al. 2024, labels NetHack's messages). Each env family captions in its own way:

* NetHack and MiniHack: the game's own `message` for the step ("You kill the newt!"), decoded
  from NLE's NUL-padded bytes; an empty message is no caption.
* MiniGrid: a sentence generated from the env's state before and after the step, for the events
  that change the world or end the episode: "picked up the yellow key", "dropped the yellow key",
  "opened the yellow door" (also when the toggle unlocked it), "closed the yellow door",
  "opened the red box", "reached the goal", "fell into the lava". Turning and walking are no
  caption.

Captions are computed in the worker processes, where the env lives, from the real transition
(before any reset). The learner sees only ids: `CaptionVocabulary` maps each distinct caption to an
int32 id in order of first appearance, 0 meaning no caption, and keeps them in an append-only file
in the run directory so the ids in a checkpoint mean the same captions after a resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

NO_CAPTION = 0
VOCABULARY_FILE = "captions.jsonl"


# ------------------------------------------------------------------------------------ captioners


class Captioner(Protocol):
    """Captions one env's transitions: `before` runs just before `env.step`, `caption` just after
    (the env still in the post-step state, before any reset)."""

    def before(self, env: Any) -> Any: ...

    def caption(self, env: Any, before: Any, raw_obs: Any, terminated: bool) -> str: ...


def decode_message(message: np.ndarray) -> str:
    """NLE's `message` (uint8[256], NUL padded) as text, whitespace runs collapsed."""
    raw = bytes(np.asarray(message, dtype=np.uint8))
    text = raw.split(b"\0", 1)[0].decode("latin-1")
    return " ".join(text.split())


class NetHackCaptioner:
    """The game's message of the step (NetHack and MiniHack)."""

    def before(self, env: Any) -> None:
        return None

    def caption(self, env: Any, before: Any, raw_obs: Any, terminated: bool) -> str:
        return decode_message(raw_obs["message"])


def _describe(obj: Any) -> str:
    return f"the {obj.color} {obj.type}"


class MiniGridCaptioner:
    """What one MiniGrid step changed, from the env's state before and after it.

    An action acts on the agent's hands or on the one cell in front of it, so the snapshot is the
    carried object and that cell (what is there, and a door's open/locked state).
    """

    def before(self, env: Any) -> tuple[Any, tuple[int, int], Any, tuple[bool, bool] | None]:
        base = env.unwrapped
        front = tuple(int(v) for v in base.front_pos)
        cell = base.grid.get(*front) if self._inside(base, front) else None
        door = (bool(cell.is_open), bool(cell.is_locked)) if _is(cell, "door") else None
        return base.carrying, front, cell, door

    @staticmethod
    def _inside(base: Any, pos: tuple[int, int]) -> bool:
        return 0 <= pos[0] < base.grid.width and 0 <= pos[1] < base.grid.height

    def caption(self, env: Any, before: Any, raw_obs: Any, terminated: bool) -> str:
        base = env.unwrapped
        carried_before, front, cell_before, door_before = before
        if carried_before is None and base.carrying is not None:
            return f"picked up {_describe(base.carrying)}"
        if carried_before is not None and base.carrying is None:
            return f"dropped {_describe(carried_before)}"
        cell_now = base.grid.get(*front) if self._inside(base, front) else None
        if door_before is not None and cell_now is cell_before:
            was_open = door_before[0]
            if not was_open and cell_now.is_open:
                return f"opened {_describe(cell_now)}"
            if was_open and not cell_now.is_open:
                return f"closed {_describe(cell_now)}"
        if _is(cell_before, "box") and cell_now is not cell_before:
            return f"opened {_describe(cell_before)}"
        if terminated:
            here = base.grid.get(*(int(v) for v in base.agent_pos))
            if _is(here, "goal"):
                return "reached the goal"
            if _is(here, "lava"):
                return "fell into the lava"
        return ""


def _is(cell: Any, kind: str) -> bool:
    return cell is not None and getattr(cell, "type", None) == kind


def captioner_for(env: Any) -> Captioner | None:
    """The captioner of `env`'s family (a gymnasium env, possibly wrapped), or None."""
    base = env.unwrapped
    try:
        from minigrid.minigrid_env import MiniGridEnv
    except ImportError:
        MiniGridEnv = None
    if MiniGridEnv is not None and isinstance(base, MiniGridEnv):
        return MiniGridCaptioner()
    try:
        from nle.env.base import NLE
    except ImportError:
        NLE = None
    if NLE is not None and isinstance(base, NLE):
        return NetHackCaptioner()
    return None


# ------------------------------------------------------------------------------------ vocabulary


class CaptionVocabulary:
    """Caption text <-> int32 id, ids in order of first appearance, 0 = no caption.

    With a `path`, the vocabulary lives in an append-only file, one JSON string per line (line i
    holds id i). `flush` appends what is new and fsyncs; the training driver flushes after every
    update, before any checkpoint, so every id a checkpoint holds is in the file. A line torn by a
    crash mid-append is dropped at load (and cut off at the next flush); its caption simply gets
    the same id again when it next appears. The file is read lazily, at first use, so a vocabulary
    can be made before its run directory exists.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._texts: list[str] = [""]
        self._ids: dict[str, int] = {"": NO_CAPTION}
        self._loaded = self.path is None
        self._saved = 1  # entries (including the empty caption) already in the file
        self._valid_bytes = 0

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        assert self.path is not None
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn append
        self._valid_bytes = end
        for number, line in enumerate(data[:end].splitlines(), start=1):
            try:
                text = json.loads(line)
            except ValueError:
                text = None
            if not isinstance(text, str):
                raise ValueError(
                    f"caption vocabulary {str(self.path)!r} is damaged at line {number} "
                    f"({line[:80]!r}); it must hold one JSON string per line."
                )
            self._ids.setdefault(text, len(self._texts))
            self._texts.append(text)
        self._saved = len(self._texts)

    def id(self, text: str) -> int:
        """The id of `text`, given a new one if unseen ("" is 0)."""
        self._load()
        found = self._ids.get(text)
        if found is None:
            found = len(self._texts)
            self._ids[text] = found
            self._texts.append(text)
        return found

    def ids(self, texts: Iterable[str]) -> np.ndarray:
        """`[n]` int32 ids of `texts`."""
        return np.asarray([self.id(t) for t in texts], dtype=np.int32)

    def text(self, caption_id: int) -> str:
        self._load()
        return self._texts[int(caption_id)]

    def texts(self) -> list[str]:
        """Every caption, index = id (index 0 is the empty caption)."""
        self._load()
        return list(self._texts)

    def captions(self, start: int = 1) -> list[str]:
        """Captions with id >= `start`, in id order (a reader that has seen ids below `start`
        gets just the new ones)."""
        self._load()
        return self._texts[max(int(start), 1) :]

    def __len__(self) -> int:
        """Number of distinct captions (not counting 'no caption')."""
        self._load()
        return len(self._texts) - 1

    def flush(self) -> None:
        """Append new captions to the file and fsync it (nothing to do without a path)."""
        if self.path is None:
            return
        self._load()
        if self._saved == len(self._texts) and self.path.exists():
            return
        lines = b"".join(
            json.dumps(t, ensure_ascii=False).encode() + b"\n" for t in self._texts[self._saved :]
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:
            if handle.tell() != self._valid_bytes:
                handle.truncate(self._valid_bytes)
                handle.seek(self._valid_bytes)
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())
            self._valid_bytes = handle.tell()
        self._saved = len(self._texts)
