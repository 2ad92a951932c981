"""`autotelic explain`: record evaluation episodes of a trained run and write their attributions.

For each run directory (one seed; a group directory is explained seed by seed):

1. Load the run's config and its newest checkpoint, and rebuild the trainer's env, network and
   reward sources from the config (`autotelic.train.prepare`).
2. Continue the checkpointed training state: the same envs (`ppo.num_envs` of them, mid-episode as
   the checkpoint left them), the same network carry and the same reward-source states, stepped
   with the trained policy (actions *sampled*, as in training) under a fresh evaluation key. Every
   source computes its reward from its checkpointed state, threaded through the steps exactly as
   in a training rollout; sources are never updated. Steps are recorded until enough episodes have
   run from their first to their last step.
3. Rewards as the trainer uses them: intrinsic rewards are divided by the checkpointed running
   std of their discounted return (heads with `normalize = return_std`; the trainer would also
   fold the new batch into that std first). Per-head GAE runs over the whole recording with the
   trainer's own function, so non-episodic heads see past episode ends as in training.
4. Per step of each recorded episode (at most `max_steps` steps of it):
   * per-source credit: `coef_k * A_k` of the chosen action's advantage and `coef_k * V_k` of the
     weighted value, summing to the totals exactly (`autotelic.explain.credit`), and which source
     dominated;
   * with intrinsic sources, Shapley values over the value heads of the chosen action's advantage
     (exact, through `shapley.exact`: the game is additive, so they equal the shares; the largest
     gap is recorded as a check) and, per episode, of the coefficient-weighted discounted episode
     return `sum_{k in S} coef_k sum_t gamma_k^t r_{k,t}`;
   * chosen-action saliency for grid and image observations (`autotelic.explain.saliency`):
     occlusion of one cell at a time (grids: the cell's codes set to 0, the "unseen" code of
     MiniGrid-style grids) or of Gaussian patches replaced by a blur (images), and the gradient of
     `log pi(a | s)` (skipped for one-hot grid encodings, whose gradient is zero);
   * Shapley values of the chosen action's probability `pi(a_t | s_t)` over observation channels
     (or grid cells with `players="cells"`), a removed player filled from each of up to 32 states
     visited during the recording in turn and the results averaged (`shapley.FeatureGame` with
     `fill="marginal"`: the interventional expectation). Exact enumeration by default; with
     `shapley_samples = M`, M sampled permutations (antithetic pairs when M is even) with standard
     errors and 95% intervals.
5. The frames to replay each episode (`autotelic.explain.render`), and, when the env state exposes
   the agent's position (navix, xminigrid), a visit count per grid cell and, per cell, how often
   each source dominated, over every recorded step of every env.

Only runs on JAX-native envs can be explained; a run whose envs step on the host (outside JAX)
is refused with a UserError.

Output, RUN_DIR/explain/ (built in a temporary directory and moved into place, so a crash never
leaves a half-written one):

    summary.json              settings, heads, episodes, dominance, visitation, notes
    episode_<i>.npz           per-step arrays of episode i (see `EPISODE_ARRAYS`) and its frames
    episode_<i>_credit.csv    the per-step credit of episode i as a table
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import __version__
from ..errors import UserError
from . import credit as credit_lib
from . import render, shapley

EXPLAIN_DIR = "explain"
FORMAT = 1
DEFAULT_EPISODES = 3
DEFAULT_MAX_STEPS = 500
BACKGROUND_STATES = 32  # visited states averaged over for the marginal fill
CHUNK_STEPS = 64  # env steps per compiled recording call
MAX_RECORD_STEPS = 20_000
PLAYER_KINDS = ("channels", "cells")
MODEL_ROWS = 256  # model batches are padded to a multiple of this (few compiled shapes)
SALIENCY_ROWS = 64  # likewise for the observations of one saliency call

# What each episode_<i>.npz holds ([L] = explained steps of the episode, K heads, P players).
EPISODE_ARRAYS = {
    "obs": "[L, *obs_shape] observations s_t",
    "frames": "[L or L + 1, h, w, 3] uint8 RGB frames (+ the last observation when complete)",
    "action": "[L] int chosen actions",
    "probs": "[L, A] policy probabilities",
    "values": "[L, K] per-head values V_k(s_t)",
    "advantages": "[L, K] per-head GAE advantages A_k",
    "rewards_raw": "[L, K] rewards as the env and the sources gave them",
    "rewards": "[L, K] rewards as the trainer uses them (intrinsic ones normalized)",
    "advantage_shares": "[L, K] coef_k * A_k",
    "advantage_total": "[L] sum of the shares: the policy advantage",
    "value_shares": "[L, K] coef_k * V_k",
    "value_total": "[L]",
    "dominant": "[L] head with the largest |advantage share|",
    "position": "[L, 2] agent (row, col) when the env exposes it",
    "source_shapley": "[L, K] exact Shapley values of the advantage game over heads",
    "saliency_occlusion": "[L, H, W] drop in log pi(a|s) when a cell / patch is occluded",
    "saliency_gradient": "[L, H, W] max over channels of |d log pi(a|s) / ds|",
    "obs_shapley": "[L, P] Shapley values of pi(a_t|s_t) over observation players",
    "obs_shapley_se": "[L, P] their standard errors (0 when exact)",
    "obs_shapley_ci_low": "[L, P]",
    "obs_shapley_ci_high": "[L, P]",
    "obs_shapley_empty": "[L] v(empty): pi(a_t | all players filled)",
    "obs_shapley_full": "[L] v(N) = pi(a_t | s_t)",
}

NAVIX_MINIGRID_ACTIONS = ("left", "right", "forward", "pickup", "drop", "toggle", "done")


@dataclass(frozen=True)
class ExplainOptions:
    """episodes:        evaluation episodes to record and explain
    shapley_samples: 0 for exact Shapley values over observation players, else the number of
                     sampled permutations
    players:         "channels" (observation channels, or vector features) or "cells" (grid
                     positions) as the players of the observation Shapley values
    eval_seed:       seed of the evaluation randomness (env resets, sampled actions, background)
    max_steps:       most steps explained per episode (longer episodes are cut, and marked so)
    """

    episodes: int = DEFAULT_EPISODES
    shapley_samples: int = 0
    players: str = "channels"
    eval_seed: int = 0
    max_steps: int = DEFAULT_MAX_STEPS


# ------------------------------------------------------------------------------------ input


def check_options(options: ExplainOptions) -> None:
    if options.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {options.episodes}.")
    if options.shapley_samples < 0 or options.shapley_samples == 1:
        raise UserError(
            "--shapley-samples must be 0 (exact enumeration) or at least 2 sampled permutations "
            f"(a standard error needs two), got {options.shapley_samples}."
        )
    if options.players not in PLAYER_KINDS:
        raise UserError(
            f"--players must be one of {', '.join(PLAYER_KINDS)}, got {options.players!r}."
        )
    if options.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {options.max_steps}.")
    if options.eval_seed < 0:
        raise UserError(f"--eval-seed must be >= 0, got {options.eval_seed}.")


def run_dirs(run_dir: Path, seed: int | None = None) -> list[Path]:
    """The run directories to explain: `run_dir` itself, or the seeds of a group directory
    (`group.json` + `seed_<s>/`), all of them or only `seed`."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"run directory {str(run_dir)!r} does not exist.")
    if not run_dir.is_dir():
        raise UserError(f"{str(run_dir)!r} is not a directory; pass a run directory.")
    group = run_dir / "group.json"
    if group.exists():
        try:
            data = json.loads(group.read_text())
            seeds = [int(s) for s in data["seeds"]]
            names = [str(n) for n in data["runs"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(
                f"{str(group)!r} is damaged or from an incompatible version ({error})."
            ) from None
        if seed is not None:
            if seed not in seeds:
                raise UserError(
                    f"{str(run_dir)!r} holds seeds {', '.join(map(str, seeds))}; "
                    f"--seed {seed} is not one of them."
                )
            return [run_dir / names[seeds.index(seed)]]
        return [run_dir / name for name in names]
    if not (run_dir / "config.yaml").exists():
        if (run_dir / "results.json").exists():
            raise UserError(
                f"{str(run_dir)!r} is a bench directory; explain one of its runs, e.g. "
                f"{run_dir}/<task>/<rewards>."
            )
        raise UserError(
            f"{str(run_dir)!r} is not a complete run directory: it has no config.yaml (nor a "
            "group.json); pass the directory that `autotelic train --out` wrote."
        )
    if seed is not None:
        own = _config_seed(run_dir)
        if own is not None and own != seed:
            raise UserError(f"{str(run_dir)!r} is the run of seed {own}, not --seed {seed}.")
    return [run_dir]


def _config_seed(run_dir: Path) -> int | None:
    import yaml

    try:
        seeds = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("seeds")
        return int(seeds[0]) if seeds and len(seeds) == 1 else None
    except Exception:
        return None


def load_config(run_dir: Path) -> Any:
    """The run's config; UserError for a missing, unreadable or incompatible config.yaml."""
    from ..train import load_run_config

    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{str(run_dir)!r} is an incomplete run directory: config.yaml is missing.")
    try:
        config, _ = load_run_config(run_dir)
    except UserError as error:
        raise UserError(
            f"{str(run_dir)!r}: its config.yaml cannot be read by autotelic {__version__} "
            f"({error}). It was written by another version, or edited; explain it with the "
            "version that trained it."
        ) from None
    return config


@dataclass
class LoadedRun:
    """A trained run, rebuilt: config, env, trainer, sources, heads and its newest state."""

    run_dir: Path
    config: Any
    env: Any
    trainer: Any
    sources: tuple[Any, ...]
    heads: credit_lib.HeadSettings
    state: Any  # TrainState with NumPy leaves
    update: int
    meta: dict[str, Any]


def check_run(run_dir: Path) -> tuple[Any, int]:
    """Config and newest checkpoint update of a run directory, or a UserError saying what is
    missing. Cheap: builds no network and reads no checkpoint."""
    from .. import runs

    config = load_config(run_dir)
    updates = runs.checkpoint_updates(run_dir)
    if not updates:
        raise UserError(
            f"{str(run_dir)!r} is an incomplete run directory: it holds no checkpoint "
            "(checkpoints/update-*.npz). Train it first, or continue it with "
            f"`autotelic train --resume {run_dir}`."
        )
    return config, updates[-1]


def load_run(run_dir: Path) -> LoadedRun:
    """Rebuild a run's trainer from its config and load its newest checkpoint."""
    import jax

    from .. import runs
    from ..rewards.base import build_sources
    from ..train import prepare, resolved_config

    config, update = check_run(run_dir)
    try:
        setup = prepare(config)
    except UserError as error:
        raise UserError(
            f"{str(run_dir)!r}: the run's config does not build with autotelic {__version__} "
            f"({error})."
        ) from None
    if getattr(setup.env, "host", False):
        raise UserError(
            f"{str(run_dir)!r} trained on {config.env}, whose envs step on the host (outside "
            "JAX); `autotelic explain` records episodes with JAX-native envs only. "
            "`autotelic report` still shows its learning curves and credit over training."
        )
    sources, _ = build_sources(config.rewards, config.sources, setup.env.spec)
    heads = credit_lib.head_settings(_plain(resolved_config(setup)))
    # The checkpoint's structure, traced rather than run: running `init` executes the env resets
    # and initializers op by op, which takes seconds.
    shapes = jax.eval_shape(setup.trainer.init, jax.random.PRNGKey(0))
    like = jax.tree_util.tree_map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), shapes)
    state, meta = runs.load_checkpoint(run_dir, update, like)
    return LoadedRun(run_dir, config, setup.env, setup.trainer, sources, heads, state, update, meta)


def _plain(config: Any) -> dict[str, Any]:
    from ..config import to_dict

    return to_dict(config)


def num_players(spec: Any, players: str) -> int:
    """How many observation players `players` makes for an env's observations."""
    shape = tuple(spec.obs_shape)
    spatial = spec.obs_kind in ("grid", "image") and len(shape) == 3
    if players == "cells":
        if not spatial:
            raise UserError(
                f"--players cells needs grid or image observations [H, W, C]; {spec.env_id} "
                f"has {spec.obs_kind} observations of shape {list(shape)}. Use --players channels."
            )
        return shape[0] * shape[1]
    return shape[-1] if spatial else int(np.prod(shape))


def check_players(spec: Any, options: ExplainOptions) -> int:
    """The number of observation players, or TooManyPlayersError (exit status 2) when exact
    enumeration is asked for more players than it can handle."""
    count = num_players(spec, options.players)
    if options.shapley_samples == 0 and count > shapley.MAX_EXACT_PLAYERS:
        raise shapley.TooManyPlayersError(
            f"--players {options.players} makes {count} players for {spec.env_id} "
            f"(observations {list(spec.obs_shape)}); exact Shapley values need 2**{count} "
            f"coalitions and the limit is {shapley.MAX_EXACT_PLAYERS} players. Add "
            "--shapley-samples M (e.g. 64) to sample permutations with error bars, or use "
            "--players channels."
        )
    return count


def player_names(spec: Any, players: str) -> list[str]:
    shape = tuple(spec.obs_shape)
    if players == "cells":
        return [f"({row},{col})" for row in range(shape[0]) for col in range(shape[1])]
    if spec.obs_kind == "grid" and len(shape) == 3:
        if spec.env_id.startswith(("navix:", "grid:")) and shape[2] == 3:
            return ["object", "colour", "state"]
        if spec.env_id.startswith("xminigrid:") and shape[2] == 2:
            return ["tile", "colour"]
    if spec.obs_kind in ("grid", "image") and len(shape) == 3:
        return [f"channel {c}" for c in range(shape[2])]
    return [f"feature {i}" for i in range(int(np.prod(shape)))]


def player_groups(spec: Any, players: str) -> np.ndarray:
    shape = tuple(spec.obs_shape)
    if players == "cells":
        return np.arange(shape[0] * shape[1]).reshape(shape[0], shape[1], 1)
    if spec.obs_kind in ("grid", "image") and len(shape) == 3:
        return np.arange(shape[2])
    return np.arange(int(np.prod(shape))).reshape(shape)


def action_names(spec: Any) -> list[str]:
    options = dict(spec.options)
    minigrid_actions = spec.env_id.startswith("grid:") or (
        spec.env_id.startswith("navix:") and options.get("semantics") == "minigrid"
    )
    if minigrid_actions and spec.num_actions == len(NAVIX_MINIGRID_ACTIONS):
        return list(NAVIX_MINIGRID_ACTIONS)
    return [f"action {a}" for a in range(spec.num_actions)]


# ------------------------------------------------------------------------------------ recording


class RecorderCarry(NamedTuple):
    env_state: Any
    obs: Any
    episode_start: Any
    net_carry: Any
    source_states: Any
    key: Any


def agent_position(env_state: Any) -> Any:
    """The agent's (row, col) in one env's state, or None when the state does not expose it."""
    import jax.numpy as jnp

    inner = getattr(env_state, "state", None)
    if inner is not None and hasattr(inner, "get_player"):  # navix Timestep
        return jnp.asarray(inner.get_player(idx=0).position, jnp.int32).reshape(2)
    for holder in (inner, env_state):  # xminigrid TimeStep, or its bare State
        agent = getattr(holder, "agent", None)
        if agent is not None and hasattr(agent, "position"):
            return jnp.asarray(agent.position, jnp.int32).reshape(2)
    return None


def position_grid_shape(env_state: Any) -> tuple[int, int] | None:
    """(H, W) of the grid the agent moves on, for one env's state."""
    inner = getattr(env_state, "state", None)
    if inner is not None and hasattr(inner, "grid"):
        return tuple(int(s) for s in np.shape(inner.grid)[:2])
    grid = getattr(env_state, "grid", None)
    if grid is not None:
        return tuple(int(s) for s in np.shape(grid)[:2])
    return None


class Programs:
    """The compiled functions an explanation needs, built once per configuration (every seed of
    a group reuses them: parameters and states are arguments, not constants)."""

    def __init__(self, loaded: LoadedRun) -> None:
        import jax
        import jax.numpy as jnp

        from ..envs.base import step_envs
        from ..rewards.base import Transition

        env, network, sources = loaded.env, loaded.trainer.network, loaded.sources
        num_envs = loaded.config.ppo.num_envs
        first_env = jax.tree_util.tree_map(lambda x: x[0], loaded.state.env_state)
        self.has_positions = agent_position(first_env) is not None
        self.grid_shape = position_grid_shape(first_env) if self.has_positions else None
        self.network = network

        def step(params: Any, carry: RecorderCarry, _: None) -> tuple[RecorderCarry, dict]:
            # One env step of every env, as the trainer's rollout takes it (`ppo.make_trainer`'s
            # rollout_step), recording what the explanations need.
            key, k_action, k_env = jax.random.split(carry.key, 3)
            carry_in = jnp.where(carry.episode_start[:, None], 0.0, carry.net_carry)
            net_carry, logits, values = network.apply(
                params, carry.net_carry, carry.obs, carry.episode_start
            )
            action = jax.random.categorical(k_action, logits).astype(jnp.int32)
            if self.has_positions:
                position = jax.vmap(agent_position)(carry.env_state)
            else:
                position = jnp.zeros((num_envs, 2), jnp.int32)
            env_state, result = step_envs(
                env, jax.random.split(k_env, num_envs), carry.env_state, action
            )
            done = result.terminated | result.truncated
            not_started = jnp.zeros_like(done)
            _, _, final_values = network.apply(params, net_carry, result.final_obs, not_started)
            transition = Transition(
                obs=carry.obs,
                action=action,
                next_obs=result.final_obs,
                terminated=result.terminated,
                truncated=result.truncated,
                extrinsic=result.reward,
            )
            intrinsic, source_states = [], []
            for source, source_state in zip(sources, carry.source_states, strict=True):
                reward, source_state = source.reward(source_state, transition)
                intrinsic.append(reward.astype(jnp.float32))
                source_states.append(source_state)
            record = {
                "obs": carry.obs,
                "final_obs": result.final_obs,
                "episode_start": carry.episode_start,
                "carry_in": carry_in,
                "action": action,
                "logits": logits,
                "values": values,
                "final_values": final_values,
                "rewards_raw": jnp.stack([result.reward, *intrinsic], axis=-1),
                "terminated": result.terminated,
                "truncated": result.truncated,
                "success": result.success & done,
                "position": position,
            }
            new = RecorderCarry(env_state, result.obs, done, net_carry, tuple(source_states), key)
            return new, record

        def chunk(params: Any, carry: RecorderCarry) -> tuple[RecorderCarry, dict]:
            return jax.lax.scan(lambda c, x: step(params, c, x), carry, None, CHUNK_STEPS)

        self.record_chunk = jax.jit(chunk)
        self.values_of = jax.jit(
            lambda params, carry, obs, start: network.apply(params, carry, obs, start)[2]
        )

        def logits_fn(params: Any, obs: Any) -> Any:
            """One observation -> logits, `params = (network params, carry [C])`."""
            net_params, carry_row = params
            start = jnp.zeros((1,), bool)
            return network.apply(net_params, carry_row[None], obs[None], start)[1][0]

        self.logits_fn = logits_fn

        def probability(params: Any, carry_row: Any, obs: Any, action: Any) -> Any:
            rows = obs.shape[0]
            carry = jnp.broadcast_to(carry_row, (rows, carry_row.shape[0]))
            logits = network.apply(params, carry, obs, jnp.zeros((rows,), bool))[1]
            return jax.nn.softmax(logits)[:, action]

        self.probability = jax.jit(probability)


_PROGRAMS: dict[str, Programs] = {}


def programs_for(loaded: LoadedRun) -> Programs:
    """Compiled functions for this run's configuration (shared by seeds of the same config)."""
    from ..runs import comparable

    data = comparable(_plain(loaded.config))
    data.pop("seeds", None)
    key = json.dumps(data, sort_keys=True, default=str)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = Programs(loaded)
    return _PROGRAMS[key]


@dataclass
class Segment:
    env: int
    start: int
    end: int  # last step, inclusive
    complete: bool

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def find_episodes(episode_start: np.ndarray, done: np.ndarray) -> list[Segment]:
    """Whole episodes in a recording: from a step whose observation starts an episode to the
    step that ends it. `episode_start`, `done`: [T, N] bool. Sorted by end step, then env."""
    found = []
    for env in range(done.shape[1]):
        for start in np.flatnonzero(episode_start[:, env]):
            ends = np.flatnonzero(done[start:, env])
            if len(ends):
                found.append(Segment(env, int(start), int(start + ends[0]), True))
    return sorted(found, key=lambda s: (s.end, s.env))


def record(loaded: LoadedRun, programs: Programs, options: ExplainOptions) -> dict[str, Any]:
    """Step the checkpointed state with the trained policy until `options.episodes` whole episodes
    have run (or a step limit is hit). Returns host arrays `[T, N, ...]` plus "last_values"."""
    import jax
    import jax.numpy as jnp

    state = loaded.state
    num_envs = loaded.config.ppo.num_envs
    max_episode = loaded.env.spec.max_steps
    limit = min(
        MAX_RECORD_STEPS,
        (1 + math.ceil(options.episodes / num_envs)) * max_episode + CHUNK_STEPS,
    )
    carry = RecorderCarry(
        env_state=jax.device_put(state.env_state),
        obs=jnp.asarray(state.obs),
        episode_start=jnp.asarray(state.episode_start),
        net_carry=jnp.asarray(state.carry),
        source_states=jax.device_put(state.source_states),
        key=jax.random.PRNGKey(options.eval_seed),
    )
    params = jax.device_put(state.params)
    chunks: list[dict[str, np.ndarray]] = []
    steps = 0
    while True:
        carry, chunk = programs.record_chunk(params, carry)
        chunks.append(jax.tree_util.tree_map(np.asarray, jax.device_get(chunk)))
        steps += CHUNK_STEPS
        starts = np.concatenate([c["episode_start"] for c in chunks])
        done = np.concatenate([c["terminated"] | c["truncated"] for c in chunks])
        if len(find_episodes(starts, done)) >= options.episodes or steps >= limit:
            break
    recording = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
    recording["last_values"] = np.asarray(
        programs.values_of(params, carry.net_carry, carry.obs, carry.episode_start)
    )
    return recording


# ------------------------------------------------------------------------------------ attribution


def _padded_model(programs: Programs, params: Any, carry_row: Any, action: int) -> Callable:
    """`inputs [B, *obs] -> pi(action | input) [B]`, batches padded to few compiled shapes."""

    def model(inputs: Any) -> np.ndarray:
        inputs = np.asarray(inputs)
        rows = len(inputs)
        padded = max(MODEL_ROWS, math.ceil(rows / MODEL_ROWS) * MODEL_ROWS)
        if padded != rows:
            filler = np.zeros((padded - rows, *inputs.shape[1:]), dtype=inputs.dtype)
            inputs = np.concatenate([inputs, filler])
        out = programs.probability(params, carry_row, inputs, action)
        return np.asarray(out, dtype=np.float64)[:rows]

    return model


def observation_shapley(
    programs: Programs,
    params: Any,
    obs: np.ndarray,
    actions: np.ndarray,
    carries: np.ndarray,
    background: np.ndarray,
    groups: np.ndarray,
    options: ExplainOptions,
) -> dict[str, np.ndarray]:
    """Shapley values of `pi(a_t | s_t)` over observation players at every step, marginal fill."""
    rows_per_coalition = len(background)
    batch_size = max(1, 8192 // rows_per_coalition)
    results = []
    for t in range(len(obs)):
        game = shapley.FeatureGame(
            _padded_model(programs, params, carries[t], int(actions[t])),
            obs[t],
            fill="marginal",
            background=background,
            groups=groups,
        )
        if options.shapley_samples:
            samples = options.shapley_samples
            result = shapley.sample(
                game,
                game.num_players,
                samples,
                seed=options.eval_seed * 100_003 + t,
                antithetic=samples % 2 == 0 and samples >= 4,
                batched=True,
                batch_size=batch_size,
            )
        else:
            result = shapley.exact(game, game.num_players, batched=True, batch_size=batch_size)
        results.append(result)
    return {
        "obs_shapley": np.stack([r.values for r in results]),
        "obs_shapley_se": np.stack([r.standard_error for r in results]),
        "obs_shapley_ci_low": np.stack([r.ci_low for r in results]),
        "obs_shapley_ci_high": np.stack([r.ci_high for r in results]),
        "obs_shapley_empty": np.asarray([r.empty_value for r in results]),
        "obs_shapley_full": np.asarray([r.full_value for r in results]),
        "method": results[0].method if results else "exact",
    }


def saliency_maps(
    programs: Programs,
    loaded: LoadedRun,
    params: Any,
    obs: np.ndarray,
    actions: np.ndarray,
    carries: np.ndarray,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Chosen-action saliency maps for grid and image observations; ({} , why) otherwise."""
    import jax.numpy as jnp

    from . import saliency

    spec = loaded.env.spec
    shape = tuple(spec.obs_shape)
    if spec.obs_kind not in ("grid", "image") or len(shape) != 3:
        return {}, {
            "skipped": f"{spec.obs_kind} observations of shape {list(shape)} are not images"
        }
    if spec.obs_kind == "grid":
        perturbation = {
            "mode": "occlude",
            "radius": 0.1,  # float32 weight of a neighbouring cell: exp(-50), i.e. exactly 0
            "stride": 1,
            "fill_value": 0.0,
            "upsample": False,
        }
    else:
        stride = max(1, min(shape[0], shape[1]) // 10)
        perturbation = {
            "mode": "blur",
            "radius": float(stride),
            "stride": stride,
            "blur_sigma": float(stride),
            "upsample": True,
        }
    one_hot = spec.obs_kind == "grid" and loaded.config.network.encoding == "one_hot"
    settings: dict[str, Any] = {"score": "log_prob", "occlusion": perturbation}
    if one_hot:
        settings["gradient"] = "skipped: one-hot grid encoding has zero gradient"
    else:
        settings["gradient"] = {"channel_reduction": "max_abs", "times_input": False}
    recurrent = programs.network.recurrent
    # A feed-forward policy ignores the carry: one batched call. A recurrent one needs each
    # step's own carry, which rides along in the parameters, one step per call.
    if recurrent:
        batches = [(obs[t : t + 1], actions[t : t + 1], carries[t]) for t in range(len(obs))]
    else:
        # Padded to a multiple of SALIENCY_ROWS so that episodes of different lengths share
        # compiled programs; the padding rows are dropped below.
        rows = max(SALIENCY_ROWS, math.ceil(len(obs) / SALIENCY_ROWS) * SALIENCY_ROWS)
        pad = rows - len(obs)
        padded_obs = np.concatenate([obs, np.repeat(obs[-1:], pad, axis=0)])
        padded_actions = np.concatenate([actions, np.repeat(actions[-1:], pad)])
        batches = [(padded_obs, padded_actions, carries[0])]
    occlusion, gradient = [], []
    for batch_obs, batch_actions, carry_row in batches:
        bundle = (params, jnp.asarray(carry_row))
        occlusion.append(
            np.asarray(
                saliency.perturbation_saliency(
                    programs.logits_fn, bundle, batch_obs, batch_actions, **perturbation
                )
            )
        )
        if not one_hot:
            gradient.append(
                np.asarray(
                    saliency.gradient_saliency(programs.logits_fn, bundle, batch_obs, batch_actions)
                )
            )
    maps = {"saliency_occlusion": np.concatenate(occlusion)[: len(obs)]}
    if gradient:
        maps["saliency_gradient"] = np.concatenate(gradient)[: len(obs)]
    return maps, settings


def reward_source_shapley(
    advantage_shares: np.ndarray, episode_rewards: np.ndarray, heads: credit_lib.HeadSettings
) -> tuple[np.ndarray, dict[str, Any]]:
    """Shapley values over the value heads, exactly (`shapley.exact`).

    Per step (advantage_shares [L, K]): of the chosen action's advantage; the game is additive,
    so the values must equal the shares, and the largest gap is reported as a check. Per episode
    (episode_rewards [T, K], the rewards as used over the whole episode): of the coefficient-
    weighted discounted return from the episode's first step. Returns ([L, K], summary entries).
    """
    per_step = np.zeros((0, heads.num_heads))
    if len(advantage_shares):
        per_step = np.stack(
            [
                shapley.exact(credit_lib.additive_game(row), heads.num_heads, batched=True).values
                for row in advantage_shares
            ]
        )
    weighted_returns = heads.coefs * credit_lib.discounted_returns(episode_rewards, heads.gammas)
    episode_game = shapley.exact(
        credit_lib.additive_game(weighted_returns), heads.num_heads, batched=True
    )
    gap = float(np.max(np.abs(per_step - advantage_shares))) if len(per_step) else 0.0
    return per_step, {
        "source_shapley_gap": gap,
        "return_shapley": {
            "game": "coef-weighted discounted return of the episode from its first step",
            "values": {
                name: float(v) for name, v in zip(heads.names, episode_game.values, strict=True)
            },
            "total": float(episode_game.full_value - episode_game.empty_value),
        },
    }


# ------------------------------------------------------------------------------------ explain


def explain_run(loaded: LoadedRun, options: ExplainOptions) -> Path:
    """Record, attribute and write RUN_DIR/explain/ for one loaded run; returns that path."""
    import jax

    programs = programs_for(loaded)
    heads = loaded.heads
    spec = loaded.env.spec
    recording = record(loaded, programs, options)
    done = recording["terminated"] | recording["truncated"]

    scales = credit_lib.reward_scales(
        [float(norm.var) for norm in loaded.state.reward_norms], heads
    )
    rewards_used = recording["rewards_raw"] / scales.astype(np.float32)
    next_values = np.concatenate([recording["values"][1:], recording["last_values"][None]])
    advantages, _ = credit_lib.per_head_gae(
        rewards_used,
        recording["values"],
        next_values,
        recording["final_values"],
        recording["terminated"],
        recording["truncated"],
        heads,
        loaded.config.ppo.gae_lambda,
    )
    everything = credit_lib.credit(advantages, recording["values"], heads)

    segments = find_episodes(recording["episode_start"], done)[: options.episodes]
    notes = []
    if not segments:
        segments = [Segment(0, 0, done.shape[0] - 1, False)]
        notes.append(
            f"no episode ran from start to end within {done.shape[0]} recorded steps; "
            "the recording of env 0 is explained as an incomplete episode."
        )
    elif len(segments) < options.episodes:
        notes.append(
            f"only {len(segments)} of the {options.episodes} requested episodes finished "
            f"within {done.shape[0]} recorded steps."
        )

    rng = np.random.default_rng(options.eval_seed)
    all_obs = recording["obs"].reshape(-1, *spec.obs_shape)
    picks = rng.choice(len(all_obs), size=min(BACKGROUND_STATES, len(all_obs)), replace=False)
    background = all_obs[np.sort(picks)]
    groups = player_groups(spec, options.players)
    names = player_names(spec, options.players)
    params = jax.device_put(loaded.state.params)
    renderer = render.frame_renderer(spec.env_id, spec.obs_kind, tuple(spec.obs_shape))

    episodes_meta, episode_arrays = [], []
    saliency_settings: dict[str, Any] = {}
    obs_method = "exact"
    for index, segment in enumerate(segments):
        explained = min(segment.length, options.max_steps)
        steps = np.arange(segment.start, segment.start + explained)
        env = segment.env
        logits = recording["logits"][steps, env].astype(np.float64)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        arrays: dict[str, np.ndarray] = {
            "obs": recording["obs"][steps, env],
            "action": recording["action"][steps, env],
            "probs": probs,
            "values": recording["values"][steps, env],
            "advantages": advantages[steps, env],
            "rewards_raw": recording["rewards_raw"][steps, env],
            "rewards": rewards_used[steps, env],
            "advantage_shares": everything.advantage_shares[steps, env],
            "advantage_total": everything.advantage[steps, env],
            "value_shares": everything.value_shares[steps, env],
            "value_total": everything.value[steps, env],
            "dominant": everything.dominant[steps, env],
        }
        if programs.has_positions:
            arrays["position"] = recording["position"][steps, env]
        cut = explained < segment.length
        replay = arrays["obs"]
        if segment.complete and not cut:
            replay = np.concatenate([replay, recording["final_obs"][segment.end, env][None]])
        rendered = render.frames(replay, renderer)
        if rendered is not None:
            arrays["frames"] = rendered
        carries = recording["carry_in"][steps, env]
        maps, saliency_settings = saliency_maps(
            programs, loaded, params, arrays["obs"], arrays["action"], carries
        )
        arrays.update(maps)
        shapley_arrays = observation_shapley(
            programs, params, arrays["obs"], arrays["action"], carries, background, groups, options
        )
        obs_method = shapley_arrays.pop("method")
        arrays.update(shapley_arrays)

        full_steps = np.arange(segment.start, segment.end + 1)
        episode_rewards_raw = recording["rewards_raw"][full_steps, env]
        meta: dict[str, Any] = {
            "index": index,
            "file": f"episode_{index}.npz",
            "env": env,
            "start_step": segment.start,
            "length": segment.length,
            "explained_steps": explained,
            "complete": segment.complete,
            "cut": cut,
            "terminated": bool(recording["terminated"][segment.end, env]),
            "truncated": bool(recording["truncated"][segment.end, env]),
            "success": bool(recording["success"][segment.end, env]),
            "return": float(episode_rewards_raw[:, 0].sum()),
            "raw_reward_sums": {
                name: float(episode_rewards_raw[:, k].sum()) for k, name in enumerate(heads.names)
            },
            "dominance": credit_lib.Credit(
                heads.names,
                arrays["advantage_shares"],
                arrays["advantage_total"],
                arrays["value_shares"],
                arrays["value_total"],
                arrays["dominant"],
            ).dominance(),
            "max_credit_gap": float(
                np.max(np.abs(arrays["advantage_shares"].sum(-1) - arrays["advantage_total"]))
            ),
        }
        if heads.num_heads > 1:
            per_step, source_meta = reward_source_shapley(
                arrays["advantage_shares"], rewards_used[full_steps, env], heads
            )
            arrays["source_shapley"] = per_step
            meta.update(source_meta)
        episodes_meta.append(meta)
        episode_arrays.append(arrays)

    summary: dict[str, Any] = {
        "format": FORMAT,
        "version": __version__,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_dir": str(loaded.run_dir.resolve()),
        "update": loaded.update,
        "env_steps": loaded.meta.get("env_steps"),
        "seed": loaded.meta.get("seed"),
        "env": spec.env_id,
        "obs_kind": spec.obs_kind,
        "obs_shape": list(spec.obs_shape),
        "action_names": action_names(spec),
        "heads": heads.as_dict(),
        "reward_scales": scales.tolist(),
        "gae_lambda": loaded.config.ppo.gae_lambda,
        "eval_seed": options.eval_seed,
        "num_envs": int(done.shape[1]),
        "recorded_steps": int(done.shape[0]),
        "policy": "actions sampled from the trained policy, as in training",
        "episodes": episodes_meta,
        "dominance": {
            "over": "every recorded step of every env",
            "fractions": everything.dominance(),
        },
        "saliency": saliency_settings,
        "observation_shapley": {
            "value": "probability of the chosen action, pi(a_t | s_t)",
            "players": options.players,
            "player_names": names,
            "fill": "marginal",
            "background_states": len(background),
            "background": "states visited during the recording, sampled uniformly",
            "method": obs_method,
            "num_permutations": options.shapley_samples,
            "confidence": 0.95 if options.shapley_samples else 1.0,
        },
        "arrays": EPISODE_ARRAYS,
        "notes": notes,
    }
    if programs.has_positions and programs.grid_shape is not None:
        counts, by_head = visitation(
            recording["position"], everything.dominant, programs.grid_shape, heads.num_heads
        )
        summary["visitation"] = {
            "available": True,
            "over": "every recorded step of every env (agent position before each step)",
            "shape": list(programs.grid_shape),
            "counts": counts.tolist(),
            "dominant_counts": by_head.tolist(),
        }
    else:
        summary["visitation"] = {
            "available": False,
            "reason": f"the state of {spec.env_id} does not expose the agent's grid position",
        }
    return write_explain_dir(loaded.run_dir, summary, episode_arrays, heads.names)


def visitation(
    positions: np.ndarray, dominant_heads: np.ndarray, grid_shape: tuple[int, int], num_heads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Visits per grid cell and, per head, the visits at which that head dominated.

    positions: [..., 2] (row, col); dominant_heads: [...] matching. Returns counts [H, W] and
    dominant counts [K, H, W] (summing over K to the counts). Positions off the grid are ignored.
    """
    height, width = grid_shape
    positions = np.asarray(positions).reshape(-1, 2)
    rows, cols = positions[:, 0], positions[:, 1]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    cells = rows[inside] * width + cols[inside]
    dominant_inside = np.asarray(dominant_heads).reshape(-1)[inside]
    counts = np.bincount(cells, minlength=height * width).reshape(height, width)
    by_head = np.stack(
        [
            np.bincount(cells[dominant_inside == k], minlength=height * width)
            for k in range(num_heads)
        ]
    ).reshape(num_heads, height, width)
    return counts, by_head


def _credit_csv(arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["step", "action", "action_probability", "advantage_total"]
        + [f"{n}/advantage_share" for n in names]
        + ["value_total"]
        + [f"{n}/value_share" for n in names]
        + [f"{n}/reward" for n in names]
        + ["dominant"]
    )
    for t in range(len(arrays["action"])):
        action = int(arrays["action"][t])
        writer.writerow(
            [
                t,
                action,
                repr(float(arrays["probs"][t, action])),
                repr(float(arrays["advantage_total"][t])),
            ]
            + [repr(float(v)) for v in arrays["advantage_shares"][t]]
            + [repr(float(arrays["value_total"][t]))]
            + [repr(float(v)) for v in arrays["value_shares"][t]]
            + [repr(float(v)) for v in arrays["rewards"][t]]
            + [names[int(arrays["dominant"][t])]]
        )
    return out.getvalue()


def write_explain_dir(
    run_dir: Path,
    summary: dict[str, Any],
    episodes: list[dict[str, np.ndarray]],
    names: tuple[str, ...],
) -> Path:
    """Write everything into a temporary directory beside RUN_DIR/explain, then swap it in."""
    from ..runs import atomic_write_bytes, atomic_write_text

    final = run_dir / EXPLAIN_DIR
    staging = run_dir / f".{EXPLAIN_DIR}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        for meta, arrays in zip(summary["episodes"], episodes, strict=True):
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            atomic_write_bytes(staging / meta["file"], buffer.getvalue())
            csv_name = meta["file"].replace(".npz", "_credit.csv")
            atomic_write_text(staging / csv_name, _credit_csv(arrays, names))
        atomic_write_text(staging / "summary.json", json.dumps(summary, indent=1) + "\n")
        old = run_dir / f".{EXPLAIN_DIR}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
        if old.exists():
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def explain(run_dir: Path, options: ExplainOptions, seed: int | None = None) -> list[Path]:
    """`autotelic explain`: check everything first, then explain each run; returns the explain
    directories written. UserError (exit status 2) for bad input, before anything is written."""
    check_options(options)
    targets = run_dirs(Path(run_dir), seed)
    for target in targets:
        check_run(target)
    loaded = [load_run(target) for target in targets]
    for run in loaded:
        check_players(run.env.spec, options)
    return [explain_run(run, options) for run in loaded]


def read_explain(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]] | None:
    """summary.json and the episode arrays of RUN_DIR/explain, or None if there are none."""
    directory = Path(run_dir) / EXPLAIN_DIR
    path = directory / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if summary.get("format") != FORMAT:
        return None
    episodes = []
    for meta in summary.get("episodes", []):
        try:
            with np.load(directory / meta["file"]) as data:
                episodes.append({key: data[key] for key in data.files})
        except (OSError, ValueError, KeyError):
            return None
    return summary, episodes
