"""`autotelic train`: builds everything from a config, then runs jitted PPO updates (vmapped over
seeds) with logging, checkpoints, live progress, Ctrl-C handling and resume between them.

The math lives in `ppo.py`; this file only moves data between the device and the run directories.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import envs, runs
from .config import Config, build, load_yaml, to_dict
from .errors import UserError
from .ppo import Trainer, host, init_seeds, make_trainer
from .rewards.base import build_sources


class TrainingStoppedError(Exception):
    """Training ended early (interrupt or non-finite values); the message says what to do."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Setup:
    config: Config
    env: Any
    trainer: Trainer
    source_params: tuple[Any, ...]


def prepare(config: Config) -> Setup:
    """Everything that can reject the config, done before any directory is touched or any
    function is compiled."""
    env = envs.make(config.env, **config.env_options)
    sources, params = build_sources(config.rewards, config.sources, env.spec)
    trainer = make_trainer(config, env, sources, params, config.rewards)
    if uses_feedback(config):
        from .feedback.online import make_annotator

        make_annotator(_feedback_settings(config), env.spec)  # checks; contacts nothing
    return Setup(config, env, trainer, params)


def uses_feedback(config: Config) -> bool:
    """The run has a source trained from caption labels (retrieval, classifier, ranking)."""
    from .rewards.base import REGISTRY, source_names

    source_names()  # loads the built-in sources
    return any(REGISTRY[name].needs_captions for name in config.rewards)


def _feedback_settings(config: Config) -> Any:
    config.feedback.check()
    return config.feedback


def resolved_config(setup: Setup) -> Config:
    """The config with every source's parameters spelled out (defaults included)."""
    return with_source_defaults(setup.config)


def with_source_defaults(config: Config) -> Config:
    """`config` with every source's parameters completed by this version's defaults, building
    nothing. A source parameter added after a run was recorded defaults to the behaviour from
    before it existed, so the recorded run compares equal to one that leaves it at its default.
    UserError if the record names a parameter this version does not have."""
    from dataclasses import replace

    from .rewards.base import params_dict, resolve_params

    sources = {
        name: params_dict(resolve_params(name, config.sources.get(name, {})))
        for name in config.rewards
    }
    return replace(config, sources=sources)


def request_cpu_devices(config: Config) -> None:
    """Ask JAX for one CPU device per seed (threads of this process), so that `seed_devices` can
    spread the seeds over a CPU's cores: one vmapped program keeps XLA's CPU runtime mostly on one
    core. Only possible before JAX has run anything in this process; afterwards (a library caller
    that already used JAX, tests) nothing changes and the seeds share the devices there are. On a
    GPU machine the CPU devices go unused."""
    wanted = config.devices or len(config.seeds)
    if wanted <= 1:
        return
    with contextlib.suppress(RuntimeError):  # raised once JAX is running: keep its devices
        jax.config.update("jax_num_cpu_devices", max(wanted, jax.config.jax_num_cpu_devices))


def seed_devices(config: Config) -> list[Any]:
    """The local devices the seeds train on: the largest number, at most `config.devices` (0: no
    limit), that divides the number of seeds. Each device trains its share of the seeds vmapped,
    with no communication between devices (`shard_map`); one device is plain `vmap`."""
    available = jax.local_devices()
    limit = min(config.devices or len(config.seeds), len(available))
    count = max(n for n in range(1, limit + 1) if len(config.seeds) % n == 0)
    return available[:count]


def _shard_seeds(update: Any, devices: list[Any]) -> tuple[Any, Any]:
    """`update` (vmapped over the leading seed axis) run as one program per device, each on its
    block of seeds, and the sharding that puts a seed-stacked tree there."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("seed",))
    seeds = PartitionSpec("seed")
    # check_vma off: the per-device programs share nothing, so there is no collective to check.
    sharded = jax.shard_map(update, mesh=mesh, in_specs=seeds, out_specs=seeds, check_vma=False)
    return jax.jit(sharded), NamedSharding(mesh, seeds)


def _seed_slice(tree: Any, index: int) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x[index]), tree)


def _stack(trees: list[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *trees)


class _Interrupt:
    """Turns SIGINT/SIGTERM into a flag checked between updates, so the state in hand is whole."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _status(metrics: dict[str, np.ndarray], sps: float, rewards: tuple[str, ...]) -> str:
    returns = metrics["episode_return_mean"]
    parts = [f"{sps:,.0f} steps/s", f"return {np.mean(returns):.3f}"]
    parts.append(f"success {np.mean(metrics['success_rate']):.2f}")
    for name in rewards:
        parts.append(f"{name} {np.mean(metrics[f'{name}/reward_raw']):.3g}")
    return " | ".join(parts)


def train(
    config: Config,
    out: Path,
    resume: bool = False,
    quiet: bool = False,
    report: bool = True,
) -> list[dict[str, Any]]:
    """Train `config` into `out` (new run) or continue the run in `out` (resume=True), then write
    `out/report.html` (unless `report=False`; a failure to draw it is only a warning).

    Returns one summary per seed. Raises UserError for bad input and TrainingStoppedError when the
    run stops early.
    """
    request_cpu_devices(config)
    setup = prepare(config)
    config = resolved_config(setup)
    run_dirs = runs.run_dirs_for(out, config.seeds)
    if not resume:
        runs.check_out_dir(out, config)

    trainer = setup.trainer
    host_pools: list[Any] = []
    if getattr(setup.env, "host", False):
        # gym: envs step in worker processes between jitted calls (autotelic.host_driver);
        # same contract as the jitted update below.
        from .host_driver import make_host_update, make_pools

        host_pools = make_pools(setup.env, config, run_dirs)
        update = make_host_update(trainer, config, host_pools)
        devices = [jax.local_devices()[0]]
    else:
        devices = seed_devices(config)
        if len(devices) > 1:
            update, placement = _shard_seeds(jax.vmap(trainer.update), devices)
        else:
            update = jax.jit(jax.vmap(trainer.update))
    state = init_seeds(trainer, config.seeds)
    start_update = 0
    if resume:
        common = set(runs.checkpoint_updates(run_dirs[0]))
        for run_dir in run_dirs[1:]:
            common &= set(runs.checkpoint_updates(run_dir))
        if common:
            start_update = max(common)
            like = _seed_slice(host(state), 0)
            restored = [runs.load_checkpoint(d, start_update, like)[0] for d in run_dirs]
            state = jax.device_put(_stack(restored))
    else:
        run_dirs = runs.create_run_dirs(out, config)
    if len(devices) > 1:
        state = jax.device_put(state, placement)

    num_updates = config.num_updates
    if start_update >= num_updates:
        for pool in host_pools:
            pool.close()
        summaries = []
        for seed, run_dir in zip(config.seeds, run_dirs, strict=True):
            path = run_dir / "summary.json"
            if not path.exists():
                seed_config = runs.config_for_seed(config, seed, run_dir)
                runs.write_summary(
                    run_dir,
                    seed_config,
                    {"head_names": trainer.head_names, "devices": len(devices)},
                )
            summaries.append(json.loads(path.read_text()))
        return summaries

    feedback = None
    if uses_feedback(config):
        # Labels arrive in the background; after each update the newest reward tables are
        # copied into the sources' states (autotelic.feedback.online).
        from .feedback.online import OnlineFeedback

        feedback = OnlineFeedback(
            config.rewards,
            run_dirs,
            _feedback_settings(config),
            spec=setup.env.spec,
            seed=config.seeds[0],
        )
        if start_update:
            feedback.load(start_update)
    try:
        summaries = _loop(
            config, out, setup, update, state, start_update, run_dirs, feedback, quiet, len(devices)
        )
    finally:
        if feedback is not None:
            feedback.close()
        for pool in host_pools:
            pool.close()
    if report:
        from .bench import write_report_safely

        write_report_safely(out)
    return summaries


TABLE_LOAD_WARNING = 0.5


def _warn_full_tables(metrics: dict[str, np.ndarray], warned: set[str]) -> set[str]:
    """Warn once per source when a hash table (`<source>/table_load`) passes half full: linear
    probing slows sharply beyond that and the run can crawl long before the table is full."""
    for key, value in metrics.items():
        source = key.split("/")[0]
        load = float(np.max(value))
        if key.endswith("/table_load") and source not in warned and load > TABLE_LOAD_WARNING:
            print(
                f"autotelic: warning: the {source} table is {load:.0%} full; lookups slow down "
                f"as it fills. Raise sources.{source}.table_size (a power of two) for the next "
                "run, or count coarser states (sources.count.hash=simhash, fewer "
                "sources.count.bits).",
                file=sys.stderr,
            )
            warned = warned | {source}
    return warned


def _loop(
    config: Config,
    out: Path,
    setup: Setup,
    update: Any,
    state: Any,
    start_update: int,
    run_dirs: list[Path],
    feedback: Any,
    quiet: bool,
    num_devices: int = 1,
) -> list[dict[str, Any]]:
    """The training loop proper: updates, metrics, checkpoints, progress, interrupts.
    num_devices: how many devices the seeds are spread over (recorded in summary.json)."""
    trainer = setup.trainer
    num_updates = config.num_updates
    writers = [runs.MetricsWriter(d, start_update) for d in run_dirs]
    batch = config.batch_size
    last_saved = start_update
    good_state = state

    def checkpoint(snapshot: Any, at_update: int) -> None:
        host_state = host(snapshot)
        for i, run_dir in enumerate(run_dirs):
            runs.save_checkpoint(
                run_dir,
                at_update,
                _seed_slice(host_state, i),
                {"seed": config.seeds[i], "env_steps": at_update * batch},
            )
        if feedback is not None:
            feedback.save(at_update, snapshot)

    progress = runs.progress_bar(quiet)
    label = f"{config.env} [{','.join(config.rewards) or 'extrinsic'}]"
    try:
        with _Interrupt() as interrupt, progress:
            task = progress.add_task(
                label,
                total=num_updates * batch,
                completed=start_update * batch,
                status="compiling...",
            )
            warned: set[str] = set()
            for index in range(start_update, num_updates):
                tick = time.perf_counter()
                new_state, metrics = update(state)
                metrics = host(metrics)
                seconds = time.perf_counter() - tick
                sps = batch * len(config.seeds) / seconds
                if not bool(np.all(metrics["finite"])):
                    bad = [
                        s for s, ok in zip(config.seeds, metrics["finite"], strict=True) if not ok
                    ]
                    checkpoint(good_state, index)
                    for writer in writers:
                        writer.close()
                    raise TrainingStoppedError(
                        f"non-finite loss or parameters at update {index + 1} (seed "
                        f"{', '.join(map(str, bad))}); stopped. The last good state (update "
                        f"{index}) is checkpointed: lower ppo.learning_rate or check the reward "
                        f"sources, then continue with `autotelic train --resume {out}`.",
                        exit_code=1,
                    )
                state = good_state = new_state
                if feedback is not None:
                    state = good_state = feedback.after_update(state, update.vocabularies)
                    metrics.update(feedback.metrics())
                first = index == start_update
                warned = _warn_full_tables(metrics, warned)
                for i, writer in enumerate(writers):
                    row = {k: v[i] for k, v in metrics.items()}
                    writer.write(row, seconds, batch / seconds, compiled=first)
                progress.update(task, advance=batch, status=_status(metrics, sps, config.rewards))
                done = index + 1
                if done % config.checkpoint_every == 0 or done == num_updates:
                    checkpoint(state, done)
                    last_saved = done
                    for writer in writers:
                        writer.flush()
                if interrupt.requested:
                    if last_saved != done:
                        checkpoint(state, done)
                    for writer in writers:
                        writer.close()
                    raise TrainingStoppedError(
                        f"interrupted after update {done}/{num_updates}; checkpoint saved. "
                        f"Continue with `autotelic train --resume {out}`.",
                        exit_code=130,
                    )
    except KeyboardInterrupt:
        for writer in writers:
            writer.close()
        raise TrainingStoppedError(
            f"interrupted; the last checkpoint (update {last_saved}) is intact. "
            f"Continue with `autotelic train --resume {out}`.",
            exit_code=130,
        ) from None

    summaries = []
    for seed, run_dir, writer in zip(config.seeds, run_dirs, writers, strict=True):
        writer.close()
        seed_config = runs.config_for_seed(config, seed, run_dir)
        summaries.append(
            runs.write_summary(
                run_dir,
                seed_config,
                {"head_names": list(trainer.head_names), "devices": num_devices},
            )
        )
    return summaries


def load_run_config(run: Path) -> tuple[Config, Path]:
    """The config of the run (or group of runs) in `run`, for `--resume`."""
    if not run.exists():
        raise UserError(f"run directory {str(run)!r} does not exist.")
    group = run / "group.json"
    single = run / "config.yaml"
    if group.exists():
        try:
            data = json.loads(group.read_text())["config"]
        except (ValueError, KeyError) as error:
            raise UserError(f"{str(group)!r} is damaged ({error}); cannot resume.") from None
    elif single.exists():
        data = load_yaml(single)
    else:
        raise UserError(
            f"{str(run)!r} holds no autotelic run (no config.yaml or group.json); "
            "pass the directory that `autotelic train --out` wrote."
        )
    data["out"] = str(run)
    return build(data), run


def config_dict(config: Config) -> dict[str, Any]:
    return to_dict(config)
