"""The host-environment path: Gymnasium environments stepped in worker processes.

`gym:<id>` names any environment `gymnasium.make` can build (`gym:MiniGrid-DoorKey-8x8-v0`,
`gym:NetHackScore-v0`, `gym:MiniHack-Room-5x5-v0`, ...; `gym:some.module:Env-v0` imports
`some.module` first, as `gymnasium.make` does). Such envs cannot step inside JAX, so training runs
the policy and the PPO update jitted and steps the envs here, between jitted calls
(`autotelic.host_driver`).

`HostEnv` describes the env (its `EnvSpec`, how raw observations become one array); it fulfils the
`JaxEnv` protocol only as far as `init` needs (`reset` gives a placeholder observation and a dummy
env state, `step` refuses). `HostPool` runs `num_envs` copies in worker processes, one process per
group of envs, talking over pipes, with the contract of the JAX-native adapters
(`autotelic.envs.base`): **one `step` call is one real transition for every env**; an env whose
transition ends its episode is reset in the same call, its `obs` is the first observation of the
next episode and `final_obs` the real last one. `terminated` (absorbing; do not bootstrap) and
`truncated` (time limit; bootstrap from `final_obs`) are kept apart, with the conventions:

* a step that both terminates and hits the time limit is reported as terminated only (MiniGrid
  says both when the goal is reached on the last step);
* NLE reports running out of `max_episode_steps` as `terminated` with `end_status` ABORTED (its
  `truncated` flag is computed before the step counter moves and never fires); that is a
  truncation, and reported as one;
* `success`: MiniGrid, the episode terminated with a positive reward (the goal); NetHack/MiniHack,
  `end_status` TASK_SUCCESSFUL; other envs, `info["success"]` or `info["is_success"]`.

Observations, by family (one array each, described by the spec):

* MiniGrid: the egocentric `image` `[7, 7, 3]` uint8 of (object, colour, state) codes, obs_kind
  "grid" with navix's symbolic categories, so the cnn/mlp/gru networks read it unchanged.
* NetHack and MiniHack: obs_kind "nethack", one int32 vector `[crop*crop + 27 (+ 256)]`: the
  glyph ids of a `crop` x `crop` window centred on the agent (cells off the map hold the blank
  glyph), then the 27 bottom-line stats, then optionally (`message=true`) the 256 message bytes.
  `EnvSpec.options` records the layout (crop, blstats, message_bytes, num_glyphs) for the
  `nethack` network.
* Anything else: a Box observation as float32 ("vector" if 1-D, "image" otherwise) or a Discrete
  one one-hot. Actions must be Discrete.

Seeds: env `j` of the run with seed `s` draws its episode seeds from
`SeedSequence([s, j, epoch])`, `epoch` being the update the pool was (re)started at, so a run is
reproducible and a resumed run does not replay the episodes it started with. NLE's own RNGs
(core, disp) are seeded from the same stream at every reset, with NetHack's reseeding off.

Options (`env_options` in the config): `workers` (processes per seed; default min(num_envs, CPU
count)), `crop` (9), `message` (false), `captions` (true: ids of each step's caption, see
`autotelic.envs.captions`), `max_episode_steps` (a gymnasium TimeLimit; for NetHack/MiniHack,
NLE's own step limit), `kwargs` (a mapping passed to `gymnasium.make`).

Host env state is not a pytree: it cannot be checkpointed, and a resumed run starts new episodes
(see `autotelic.host_driver`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import traceback
import warnings
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax.numpy as jnp
import numpy as np

from ..errors import UserError, unknown
from .base import EnvSpec, StepResult
from .captions import CaptionVocabulary, captioner_for

# MiniGrid's (object, colour, state) code ranges, as the navix adapter declares them, so networks
# and reward sources configured for navix grids read stock MiniGrid views the same way.
MINIGRID_CATEGORIES = (11, 7, 4)

# NLE facts (nle 1.3.0; tests/test_host_nethack.py checks them against the installed package).
NETHACK_NUM_GLYPHS = 5977  # nle.nethack.MAX_GLYPH + 1
NETHACK_BLANK_GLYPH = 2359  # GLYPH_CMAP_OFF + S_stone (0): the map where nothing is known
NETHACK_BLSTATS = 27
NETHACK_MESSAGE_BYTES = 256
NETHACK_KEYS = ("glyphs", "blstats", "message")
NLE_ABORTED = -1  # end_status when the env's own max_episode_steps ran out
NLE_TASK_SUCCESSFUL = 2

PLUGINS = ("minigrid", "nle", "minihack")  # packages that register gymnasium ids on import


class HostEnvError(RuntimeError):
    """A worker process died or its env raised; the message says which and why."""


def _import_plugins() -> None:
    for name in PLUGINS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # minihack warns about pkg_resources
                __import__(name)
        except ImportError:
            continue


def gym_ids() -> list[str]:
    """Every id registered with gymnasium, after importing the packages that register theirs."""
    import gymnasium

    _import_plugins()
    return sorted(gymnasium.registry)


def _entry_point(gym_id: str) -> str:
    import gymnasium

    spec = gymnasium.registry.get(gym_id.split(":")[-1])
    entry = getattr(spec, "entry_point", "") if spec is not None else ""
    return entry if isinstance(entry, str) else getattr(entry, "__module__", "")


def _is_nethack_entry(gym_id: str) -> bool:
    return _entry_point(gym_id).startswith(("nle.", "minihack."))


# ------------------------------------------------------------------------------------ encoding


@dataclass(frozen=True)
class Encoding:
    """How one raw gymnasium observation becomes the learner's single array."""

    family: str  # minigrid, nethack, box or discrete
    obs_shape: tuple[int, ...]
    obs_dtype: str
    crop: int = 9
    message: bool = False
    categories: int = 0  # size of a Discrete observation space

    def __call__(self, raw: Any) -> np.ndarray:
        if self.family == "minigrid":
            return np.asarray(raw["image"], dtype=np.uint8)
        if self.family == "nethack":
            return encode_nethack(raw, self.crop, self.message)
        if self.family == "discrete":
            one_hot = np.zeros(self.categories, np.float32)
            one_hot[int(raw)] = 1.0
            return one_hot
        return np.asarray(raw, dtype=np.float32).reshape(self.obs_shape)


def encode_nethack(raw: dict[str, np.ndarray], crop: int, message: bool) -> np.ndarray:
    """NLE's dict observation -> int32 `[crop*crop + 27 (+ 256)]`: glyph window centred on the
    agent (blstats[0] = x, blstats[1] = y), bottom-line stats, optionally the message bytes."""
    glyphs = raw["glyphs"]
    blstats = np.asarray(raw["blstats"])
    height, width = glyphs.shape
    top, left = int(blstats[1]) - crop // 2, int(blstats[0]) - crop // 2
    rows = slice(max(top, 0), min(top + crop, height))
    columns = slice(max(left, 0), min(left + crop, width))
    window = np.full((crop, crop), NETHACK_BLANK_GLYPH, np.int32)
    inside = glyphs[rows, columns]  # the part of the window that lies on the map
    window[rows.start - top : rows.stop - top, columns.start - left : columns.stop - left] = inside
    parts = [window.reshape(-1), blstats.astype(np.int32)]
    if message:
        parts.append(np.asarray(raw["message"], dtype=np.int32))
    return np.concatenate(parts)


def nethack_layout(spec: EnvSpec) -> dict[str, int]:
    """The pieces of a "nethack" observation: crop, blstats, message_bytes, num_glyphs."""
    return {
        k: int(v)
        for k, v in spec.options
        if k in ("crop", "blstats", "message_bytes", "num_glyphs")
    }


# ------------------------------------------------------------------------------------ the env


@dataclass(frozen=True)
class HostEnv:
    """A gymnasium environment for the host path: its spec and how to build and encode it."""

    gym_id: str
    workers: int | None = None
    crop: int = 9
    message: bool = False
    captions: bool = True
    max_episode_steps: int | None = None
    kwargs: Any = ()

    host = True  # the training driver branches on this

    def __post_init__(self) -> None:
        kwargs = self.kwargs
        if isinstance(kwargs, dict):
            kwargs = tuple(sorted(kwargs.items()))
        object.__setattr__(self, "kwargs", tuple(tuple(kv) for kv in kwargs))
        if self.workers is not None and self.workers < 1:
            raise UserError(f"env option workers must be >= 1, got {self.workers}.")
        if self.crop < 1 or self.crop % 2 == 0:
            raise UserError(f"env option crop must be an odd number >= 1, got {self.crop}.")

    # ---- building

    def make_gym(self) -> Any:
        """A fresh gymnasium env (in whichever process calls it)."""
        import gymnasium

        name = self.gym_id
        if ":" not in name and name not in gymnasium.registry:
            _import_plugins()
        kwargs = dict(self.kwargs)
        target: Any = name
        time_limit = self.max_episode_steps
        if _is_nethack_entry(name):
            if "observation_keys" not in kwargs:
                kwargs["observation_keys"] = NETHACK_KEYS  # skip copying the big unused arrays
            if time_limit is not None:
                # NLE counts its own steps (`max_episode_steps`, which `gymnasium.make` keeps for
                # its TimeLimit), so the limit goes into the env's constructor arguments.
                spec = gymnasium.spec(name)
                target = dataclasses.replace(
                    spec, kwargs={**spec.kwargs, "max_episode_steps": time_limit}
                )
                time_limit = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gymnasium.make(
                target, max_episode_steps=time_limit, disable_env_checker=True, **kwargs
            )

    def _check_id(self) -> None:
        import gymnasium

        name = self.gym_id
        if ":" in name:
            module, name = name.split(":", 1)
            try:
                __import__(module)
            except ImportError as error:
                raise UserError(
                    f"environment gym:{self.gym_id}: cannot import module {module!r} ({error})."
                ) from None
        else:
            _import_plugins()
        if name not in gymnasium.registry:
            raise unknown(
                "gymnasium environment",
                name,
                sorted(gymnasium.registry),
                "`autotelic envs` lists the gym: ids.",
            )

    @cached_property
    def _probe(self) -> tuple[EnvSpec, Encoding]:
        """Build one env here, read its spaces and first observation, and close it."""
        import gymnasium.spaces as spaces

        self._check_id()
        try:
            env = self.make_gym()
        except Exception as error:
            raise UserError(f"gymnasium cannot make {self.gym_id!r}: {error}") from None
        try:
            if not isinstance(env.action_space, spaces.Discrete):
                raise UserError(
                    f"gym:{self.gym_id} has a {type(env.action_space).__name__} action space; "
                    "the host path trains discrete policies (Discrete action spaces) only."
                )
            raw, _ = env.reset(seed=0)
            encoding = self._encoding(env, raw)
            obs = encoding(raw)
            family = encoding.family
            if family == "minigrid":
                kind, categories = "grid", MINIGRID_CATEGORIES
                note = f"MiniGrid {obs.shape[0]}x{obs.shape[1]} egocentric view"
            elif family == "nethack":
                kind, categories = "nethack", ()
                note = f"{self.crop}x{self.crop} glyph crop + blstats" + (
                    " + message" if self.message else ""
                )
            else:
                kind, categories = ("vector" if obs.ndim == 1 else "image"), ()
                note = f"{type(env.observation_space).__name__} observation"
            layout: tuple[tuple[str, Any], ...] = (("family", family),)
            if family == "nethack":
                layout += (
                    ("crop", self.crop),
                    ("blstats", NETHACK_BLSTATS),
                    ("message_bytes", NETHACK_MESSAGE_BYTES if self.message else 0),
                    ("num_glyphs", NETHACK_NUM_GLYPHS),
                )
            spec = EnvSpec(
                env_id=f"gym:{self.gym_id}",
                obs_shape=tuple(int(d) for d in obs.shape),
                obs_dtype=str(obs.dtype),
                obs_kind=kind,
                num_actions=int(env.action_space.n),
                max_steps=_max_steps(env),
                obs_categories=categories,
                description=f"gymnasium env in worker processes (host path); {note}",
                options=layout,
            )
            return spec, encoding
        finally:
            env.close()

    def _encoding(self, env: Any, raw: Any) -> Encoding:
        import gymnasium.spaces as spaces

        base = env.unwrapped
        if _instance_of(base, "minigrid.minigrid_env", "MiniGridEnv"):
            if not isinstance(raw, dict) or "image" not in raw:
                raise UserError(f"gym:{self.gym_id}: MiniGrid observation without 'image'.")
            shape = tuple(np.asarray(raw["image"]).shape)
            return Encoding("minigrid", shape, "uint8")
        if _instance_of(base, "nle.env.base", "NLE"):
            missing = [k for k in NETHACK_KEYS if k not in raw]
            if missing:
                raise UserError(
                    f"gym:{self.gym_id}: the NetHack encoding needs observation keys "
                    f"{', '.join(NETHACK_KEYS)}; missing {', '.join(missing)} (check "
                    "kwargs.observation_keys)."
                )
            size = self.crop * self.crop + NETHACK_BLSTATS
            size += NETHACK_MESSAGE_BYTES if self.message else 0
            return Encoding("nethack", (size,), "int32", crop=self.crop, message=self.message)
        space = env.observation_space
        if isinstance(space, spaces.Discrete):
            return Encoding("discrete", (int(space.n),), "float32", categories=int(space.n))
        if isinstance(space, spaces.Box):
            shape = tuple(int(d) for d in space.shape)
            if len(shape) == 2:
                shape = (*shape, 1)
            elif len(shape) > 3 or len(shape) == 0:
                shape = (int(np.prod(shape)),)
            return Encoding("box", shape, "float32")
        raise UserError(
            f"gym:{self.gym_id} has a {type(space).__name__} observation space; the host path "
            "reads MiniGrid and NetHack/MiniHack observations, Box and Discrete spaces."
        )

    @property
    def spec(self) -> EnvSpec:
        return self._probe[0]

    @property
    def encoding(self) -> Encoding:
        return self._probe[1]

    @property
    def has_captions(self) -> bool:
        return self.captions and self.encoding.family in ("minigrid", "nethack")

    # ---- the JaxEnv face, for `init` only

    def reset(self, key: Any) -> tuple[Any, Any]:
        """A dummy env state and a placeholder observation (zeros). The host driver replaces the
        observation with the real one before the first step."""
        spec = self.spec
        return jnp.zeros((), jnp.int32), jnp.zeros(spec.obs_shape, spec.obs_dtype)

    def step(self, key: Any, state: Any, action: Any) -> tuple[Any, StepResult]:
        raise UserError(
            f"gym:{self.gym_id} steps in worker processes, outside JAX; `autotelic train` drives "
            "it through autotelic.host_driver. Commands that step envs inside JAX need a "
            "JAX-native env (navix:, xminigrid:, gymnax:)."
        )


def _instance_of(obj: Any, module: str, name: str) -> bool:
    try:
        cls = getattr(__import__(module, fromlist=[name]), name)
    except ImportError:
        return False
    return isinstance(obj, cls)


def _max_steps(env: Any) -> int:
    limit = getattr(env.spec, "max_episode_steps", None) if env.spec is not None else None
    base = env.unwrapped
    for candidate in (
        limit,
        getattr(base, "max_steps", None),
        getattr(base, "_max_episode_steps", None),
    ):
        if isinstance(candidate, int | np.integer) and candidate > 0:
            return int(candidate)
    return 0


def is_host_env(env: Any) -> bool:
    return isinstance(env, HostEnv)


# ------------------------------------------------------------------------------------ seeding


def env_rng(run_seed: int, env_index: int, epoch: int) -> np.random.Generator:
    """The episode-seed stream of env `env_index` of the run with seed `run_seed`, for a pool
    (re)started at update `epoch`."""
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([run_seed, env_index, epoch]))
    )


def reset_env(env: Any, rng: np.random.Generator) -> Any:
    """Reset `env` with the next seeds of `rng`; returns the raw first observation."""
    seed = int(rng.integers(0, 2**31 - 1))
    base = env.unwrapped
    if _instance_of(base, "nle.env.base", "NLE"):
        core, disp = (int(s) for s in rng.integers(1, 2**62, size=2))
        base.seed(core=core, disp=disp, reseed=False)  # NLE ignores reset's seed for NetHack
    raw, _ = env.reset(seed=seed)
    return raw


def end_flags(
    env: Any, family: str, reward: float, terminated: bool, truncated: bool, info: dict[str, Any]
) -> tuple[bool, bool, bool]:
    """(terminated, truncated, success) under the conventions in the module docstring."""
    terminated, truncated = bool(terminated), bool(truncated)
    if family == "nethack":
        status = int(info.get("end_status", 0))
        if status == NLE_ABORTED:
            terminated, truncated = False, True
        success = status == NLE_TASK_SUCCESSFUL
    elif family == "minigrid":
        success = terminated and reward > 0
    else:
        success = bool(info.get("success", info.get("is_success", False)))
    if terminated:
        truncated = False
    return terminated, truncated, success and (terminated or truncated)


# ------------------------------------------------------------------------------------ workers


def _worker_main(conn: Any, env: HostEnv, run_seed: int, indices: list[int]) -> None:
    """One worker process: builds the envs of its group and serves reset/step/close commands.

    Replies ("ok", payload) or ("error", traceback). Ctrl-C is the parent's to handle (it stops
    between updates and closes the pool), so the worker ignores SIGINT; when the parent dies, the
    pipe closes and the worker exits.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    envs: list[Any] = []
    try:
        encoding = env.encoding
        for _ in indices:
            envs.append(env.make_gym())
        captioners = [captioner_for(e) if env.has_captions else None for e in envs]
        rngs: list[np.random.Generator] = []
        conn.send(("ok", None))
        while True:
            command, payload = conn.recv()
            if command == "close":
                conn.send(("ok", None))
                return
            if command == "reset":
                rngs = [env_rng(run_seed, j, int(payload)) for j in indices]
                obs = np.stack([encoding(reset_env(e, r)) for e, r in zip(envs, rngs, strict=True)])
                conn.send(("ok", obs))
            elif command == "step":
                conn.send(("ok", _step_group(envs, rngs, captioners, encoding, payload)))
            else:
                raise ValueError(f"unknown worker command {command!r}")
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the parent is gone
    except BaseException:
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        for e in envs:
            with contextlib.suppress(Exception):
                e.close()


def _step_group(
    envs: list[Any],
    rngs: list[np.random.Generator],
    captioners: list[Any],
    encoding: Encoding,
    actions: np.ndarray,
) -> tuple[Any, ...]:
    count = len(envs)
    obs = np.empty((count, *encoding.obs_shape), encoding.obs_dtype)
    rewards = np.zeros(count, np.float32)
    terminated = np.zeros(count, bool)
    truncated = np.zeros(count, bool)
    success = np.zeros(count, bool)
    finals: dict[int, np.ndarray] = {}
    captions: list[str] = []
    for i, (env, captioner) in enumerate(zip(envs, captioners, strict=True)):
        before = captioner.before(env) if captioner is not None else None
        raw, reward, term, trunc, info = env.step(int(actions[i]))
        term, trunc, succ = end_flags(env, encoding.family, float(reward), term, trunc, info)
        captions.append(captioner.caption(env, before, raw, term) if captioner is not None else "")
        rewards[i], terminated[i], truncated[i], success[i] = reward, term, trunc, succ
        if term or trunc:
            finals[i] = encoding(raw)
            raw = reset_env(env, rngs[i])
        obs[i] = encoding(raw)
    return obs, rewards, terminated, truncated, success, finals, captions


# ------------------------------------------------------------------------------------ the pool


def _context(start_method: str | None) -> Any:
    """Worker processes never fork the training process: JAX runs threads there, and a fork
    copies their locks in whatever state they are. The default is a fork server: a fresh
    interpreter that imports this module, MiniGrid and NLE once and forks each worker from that
    clean state, so a worker starts in milliseconds instead of importing everything again;
    "spawn" where there is no fork server."""
    if start_method is None:
        start_method = (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # Takes effect when the server starts (the first pool of the process), no-op later;
        # minihack is left to the workers: it warns on import (pkg_resources), where the server
        # could not silence it.
        context.set_forkserver_preload([__name__, *_installed(("minigrid", "nle"))])
    return context


def _installed(names: tuple[str, ...]) -> list[str]:
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is not None]


def _shutdown(workers: list[tuple[Any, Any]]) -> None:
    """Ask every worker to close, then make sure it has gone (terminate, then kill)."""
    for conn, _ in workers:
        with contextlib.suppress(BrokenPipeError, OSError):
            conn.send(("close", None))
    for conn, process in workers:
        process.join(timeout=5)
        if process.is_alive():
            process.terminate()
            process.join(timeout=2)
        if process.is_alive():
            process.kill()
            process.join(timeout=2)
        conn.close()
    workers.clear()


class HostPool:
    """`num_envs` copies of `env` in worker processes, stepped together.

    `reset(epoch) -> obs [N, ...]`; `step(actions [N]) -> StepResult` of numpy arrays (caption ids
    from `vocabulary` when the env family captions, else None); `step_async` / `step_wait` split a
    step so several pools step at once. The caption texts of the last step are `last_captions`.
    Workers start at the first `reset`. `close()` (also at garbage collection and interpreter
    exit) stops them; a worker that died or raised makes every later call raise `HostEnvError`.
    """

    def __init__(
        self,
        env: HostEnv,
        num_envs: int,
        seed: int,
        vocabulary: CaptionVocabulary | None = None,
        start_method: str | None = None,
    ) -> None:
        self.env = env
        self.spec = env.spec
        self.num_envs = num_envs
        self.seed = int(seed)
        self.captions = env.has_captions
        self.vocabulary = vocabulary if vocabulary is not None else CaptionVocabulary()
        workers = env.workers or min(num_envs, os.cpu_count() or 1)
        self.groups = [list(g) for g in np.array_split(np.arange(num_envs), min(workers, num_envs))]
        self._context = _context(start_method)
        self._workers: list[tuple[Any, Any]] = []
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        self._failure: str | None = None
        self._pending = False
        self.last_captions: list[str] = []

    # ---- process management

    def _start(self) -> None:
        for indices in self.groups:
            parent_end, child_end = self._context.Pipe()
            process = self._context.Process(
                target=_worker_main,
                args=(child_end, self.env, self.seed, [int(i) for i in indices]),
                daemon=True,
                name=f"autotelic-host-{self.env.gym_id}-{indices[0]}",
            )
            process.start()
            child_end.close()  # so the parent sees EOF when the worker dies
            self._workers.append((parent_end, process))
        for k in range(len(self._workers)):
            self._receive(k)

    def _describe(self, k: int) -> str:
        indices = self.groups[k]
        return (
            f"worker {k} of gym:{self.env.gym_id} (seed {self.seed}, envs "
            f"{indices[0]}-{indices[-1]})"
        )

    def _fail(self, message: str) -> HostEnvError:
        self._failure = message
        self.close()
        return HostEnvError(message)

    def _dead(self, k: int) -> HostEnvError:
        process = self._workers[k][1]
        process.join(timeout=1)
        code = process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return self._fail(
            f"{self._describe(k)} died ({how}). The host envs cannot continue; training stops "
            "here (resume from the last checkpoint)."
        )

    def _receive(self, k: int) -> Any:
        conn, process = self._workers[k]
        try:
            while not conn.poll(1.0):
                if not process.is_alive():
                    raise EOFError
            status, payload = conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            raise self._dead(k) from None
        if status == "error":
            raise self._fail(f"{self._describe(k)} failed:\n{payload}")
        return payload

    def _send(self, k: int, message: tuple[str, Any]) -> None:
        try:
            self._workers[k][0].send(message)
        except (BrokenPipeError, ConnectionResetError, OSError):
            raise self._dead(k) from None

    def _check(self) -> None:
        if self._failure is not None:
            raise HostEnvError(self._failure)

    # ---- the env interface

    def reset(self, epoch: int = 0) -> np.ndarray:
        """Reset every env with the seed stream of `epoch`; returns obs `[N, ...]`."""
        self._check()
        if not self._workers:
            self._start()
        for k in range(len(self._workers)):
            self._send(k, ("reset", int(epoch)))
        return np.concatenate([self._receive(k) for k in range(len(self._workers))])

    def step_async(self, actions: np.ndarray) -> None:
        self._check()
        if not self._workers:
            raise HostEnvError("HostPool.step before reset: call reset() first.")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        for k, indices in enumerate(self.groups):
            self._send(k, ("step", actions[indices[0] : indices[-1] + 1]))
        self._pending = True

    def step_wait(self) -> StepResult:
        """The `StepResult` of the step sent by `step_async` (numpy leaves, `[N, ...]`)."""
        self._check()
        self._pending = False
        parts = [self._receive(k) for k in range(len(self._workers))]
        obs = np.concatenate([p[0] for p in parts])
        final_obs = obs.copy()
        for indices, part in zip(self.groups, parts, strict=True):
            for i, final in part[5].items():
                final_obs[indices[0] + i] = final
        self.last_captions = [c for p in parts for c in p[6]]
        caption = self.vocabulary.ids(self.last_captions) if self.captions else None
        return StepResult(
            obs=obs,
            reward=np.concatenate([p[1] for p in parts]),
            terminated=np.concatenate([p[2] for p in parts]),
            truncated=np.concatenate([p[3] for p in parts]),
            final_obs=final_obs,
            success=np.concatenate([p[4] for p in parts]),
            caption=caption,
        )

    def step(self, actions: np.ndarray) -> StepResult:
        self.step_async(actions)
        return self.step_wait()

    @property
    def processes(self) -> list[Any]:
        return [process for _, process in self._workers]

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        _shutdown(self._workers)

    def __enter__(self) -> HostPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
