"""`autotelic bench`: a grid of training runs (tasks x reward sources x seeds) from one YAML spec,
run as independent Ray tasks and summarized over seeds with IQM, bootstrap intervals and curves.

    name: tiny                        # names the default output directory, runs/bench-<name>
    steps: 20000                      # env steps per seed
    seeds: [0, 1]                     # every configuration trains all of them, vmapped
    tasks: [navix:Navix-Empty-5x5-v0, navix:Navix-DoorKey-5x5-v0]
    rewards: [none, count, "rnd,episodic"]    # one entry per configuration: a source list
    overrides:                        # optional, dotted key -> value, applied to every run
      ppo.num_envs: 8
      network.kind: mlp
      sources.rnd.coef: 0.5           # sources.<name>.*: only the runs that use <name>
    self_imitation: [false, true]     # optional: every entry without and with --self-imitation

A configuration is one task with one reward entry. It trains its seeds vmapped in one process
(`autotelic.train.train`), into

    OUT/<task, ':' -> '__'>/<reward entry, ',' -> '+'>[-sil]/seed_<s>/

Configurations share nothing, so each is one Ray task: the same command runs them side by side on
a laptop (a local Ray instance) or spreads them over a cluster (`--address`; OUT must then be on a
filesystem every node sees, since the runs write there and the results are read back from there).

The whole spec is checked before anything starts: a bad key, env id, reward source or override is
one message and exit status 2, with nothing written. A run that fails (non-finite values, a crash,
a dead worker) is reported in the results with its message and makes the exit status 1; it never
disappears from the table. Ctrl-C asks every running configuration to checkpoint the update in
hand and stop, writes the results so far and exits with 130. Rerunning the same command skips
configurations whose every seed has a summary.json and resumes the others from their last
checkpoint, so an interrupted or partly failed bench is finished by running it again.

Results: OUT/results.json and OUT/results.md (final return and success rate as IQM over seeds with
a 95% bootstrap interval, wall time, throughput, status) and OUT/curves_<task>.png (episode return
against env steps, IQM over seeds with its interval shaded, one line per reward entry). They are
rewritten each time a configuration ends, so a bench killed outright (no Ctrl-C) still has the
table of what finished. `--summarize` trains nothing and writes them from what OUT holds at that
moment: finished configurations, partial ones (started, not finished: running elsewhere or
stopped) with the env steps their checkpoints hold, and pending ones.

`--cpus-per-run` is what each configuration reserves in Ray, which bounds how many run at once;
it does not pin a run to cores. JAX sizes its thread pool to the CPUs the process may use (its
affinity), so to confine runs to cores, start Ray under an affinity or cgroup limit.

This module imports neither JAX nor Ray at the top, so the Ray workers that import it to find
the task function stay light until a run starts.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, build, load_yaml, to_dict
from .errors import UserError, close_matches, unknown

SPEC_KEYS = ("name", "steps", "seeds", "tasks", "rewards", "overrides", "self_imitation")
# Options the spec sets itself (or that bench owns); an override may not set them.
OWNED_OPTIONS = {
    "env": "tasks",
    "steps": "steps",
    "seeds": "seeds",
    "rewards": "rewards",
    "out": "--out",
    "sil.enabled": "self_imitation",
}
CURVE_POINTS = 100  # learning curves are thinned to this many updates (bootstrap cost per point)
CURVE_RESAMPLES = 500
INTERRUPT_GRACE_SECONDS = 60  # after Ctrl-C, how long running configurations get to checkpoint


# ------------------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class Spec:
    """A validated bench spec. `rewards` holds each entry as a tuple of source names."""

    name: str
    steps: int
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    rewards: tuple[tuple[str, ...], ...]
    overrides: dict[str, Any] = field(default_factory=dict)
    self_imitation: tuple[bool, ...] = (False,)


def reward_label(names: tuple[str, ...], sil: bool = False) -> str:
    """How a reward entry is written in the spec and the results: "none", "rnd,episodic", and
    "rnd +sil" with self-imitation."""
    return (",".join(names) or "none") + (" +sil" if sil else "")


def task_dirname(task: str) -> str:
    """A task id as a directory (and file name) part: ':' is not portable in paths."""
    return task.replace(":", "__").replace("/", "_")


def reward_dirname(names: tuple[str, ...], sil: bool = False) -> str:
    return ("+".join(names) or "none") + ("-sil" if sil else "")


def _reward_entry(entry: Any, where: str) -> tuple[str, ...]:
    if not isinstance(entry, str):
        raise UserError(
            f"{where}: each rewards entry is one string of comma-separated sources, e.g. none, "
            f'rnd or "rnd,episodic"; got {entry!r}.'
        )
    names = tuple(n.strip() for n in entry.split(",") if n.strip())
    if names in ((), ("none",)):
        return ()
    if "none" in names:
        raise UserError(f"{where}: rewards entry {entry!r} mixes none with sources; drop none.")
    return names


def _string_list(data: dict[str, Any], key: str, where: str, example: str) -> list[Any]:
    value = data.get(key)
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}: {key} must be a non-empty list, e.g. {key}: {example}.")
    return value


def load_spec(path: Path) -> Spec:
    """The spec in `path`, with every field checked for type and shape (not yet for meaning:
    env ids, sources and overrides are checked by building each run's config in `plan`)."""
    where = str(path)
    if not path.is_file():
        raise UserError(f"bench spec {where!r} does not exist (or is not a file).")
    data = load_yaml(path)
    for key in data:
        if key not in SPEC_KEYS:
            matches = close_matches(str(key), SPEC_KEYS)
            hint = f" Did you mean {matches[0]}?" if matches else ""
            raise UserError(
                f"{where}: unknown spec key {key!r}.{hint} Keys: {', '.join(SPEC_KEYS)}."
            )
    for key in ("name", "steps", "seeds", "tasks", "rewards"):
        if key not in data:
            raise UserError(f"{where}: the spec needs {key!r} (keys: {', '.join(SPEC_KEYS)}).")
    name = data["name"]
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UserError(
            f"{where}: name must be letters, digits, '.', '_' or '-' (it names the output "
            f"directory); got {name!r}."
        )
    steps = data["steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"{where}: steps must be a positive integer (env steps per seed).")
    seeds = _string_list(data, "seeds", where, "[0, 1, 2]")
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise UserError(f"{where}: seeds must be integers, e.g. seeds: [0, 1, 2]; got {seeds}.")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{where}: seeds repeat: {seeds}.")
    tasks = _string_list(data, "tasks", where, "[navix:Navix-DoorKey-5x5-v0]")
    if any(not isinstance(t, str) for t in tasks):
        raise UserError(f"{where}: tasks must be env ids (strings); got {tasks}.")
    if len(set(tasks)) != len(tasks):
        raise UserError(f"{where}: tasks repeat: {tasks}.")
    entries = _string_list(data, "rewards", where, '[none, rnd, "rnd,episodic"]')
    rewards = tuple(_reward_entry(e, where) for e in entries)
    if len(set(rewards)) != len(rewards):
        raise UserError(f"{where}: rewards entries repeat: {entries}.")
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UserError(
            f"{where}: overrides must be a mapping of dotted keys to values, e.g. "
            f"overrides: {{ppo.num_envs: 16}}; got {overrides!r}."
        )
    for key in overrides:
        first = str(key).split(".")[0]
        owned = str(key) if str(key) in OWNED_OPTIONS else first
        if owned in OWNED_OPTIONS:
            raise UserError(
                f"{where}: overrides may not set {key!r}; the spec sets it through "
                f"{OWNED_OPTIONS[owned]}."
            )
    used = {source for entry in rewards for source in entry}
    from .rewards.base import source_names

    for source in sorted(used - set(source_names())):
        error = unknown("reward source", source, source_names(), "`autotelic rewards` lists them.")
        raise UserError(f"{where}: {error}")
    for key in overrides:
        parts = str(key).split(".")
        if parts[0] == "sources" and len(parts) > 1 and parts[1] not in used:
            raise UserError(
                f"{where}: override {key!r} configures source {parts[1]!r}, which no rewards "
                f"entry uses (sources in use: {', '.join(sorted(used)) or 'none'})."
            )
    sil = data.get("self_imitation", [False])
    sil = sil if isinstance(sil, list) else [sil]
    if not sil or any(not isinstance(v, bool) for v in sil) or len(set(sil)) != len(sil):
        raise UserError(
            f"{where}: self_imitation must be true, false or a list of them, e.g. "
            f"self_imitation: [false, true]; got {data.get('self_imitation')!r}."
        )
    return Spec(
        name=name,
        steps=steps,
        seeds=tuple(seeds),
        tasks=tuple(tasks),
        rewards=rewards,
        overrides={str(k): v for k, v in overrides.items()},
        self_imitation=tuple(sil),
    )


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """`data[a][b][c] = value` for key "a.b.c" (the value already parsed by YAML)."""
    parts = [p for p in key.split(".") if p]
    if not parts:
        raise UserError(f"override key {key!r} is empty.")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {key!r}: {part} is not a section.")
        node = child
    node[parts[-1]] = value


def run_data(
    spec: Spec, task: str, rewards: tuple[str, ...], out: Path, sil: bool = False
) -> dict[str, Any]:
    """The plain config data of one configuration: the spec's overrides, then its own settings.
    `sources.<name>.*` overrides reach only the configurations that use source <name>."""
    data: dict[str, Any] = {}
    for key, value in spec.overrides.items():
        parts = key.split(".")
        if parts[0] == "sources" and len(parts) > 1 and parts[1] not in rewards:
            continue
        _set_dotted(data, key, value)
    data.update(
        env=task, steps=spec.steps, seeds=list(spec.seeds), rewards=list(rewards), out=str(out)
    )
    if sil:
        data.setdefault("sil", {})["enabled"] = True
    return data


# ------------------------------------------------------------------------------------ the plan


NEW, PARTIAL, FINISHED = "new", "partial", "finished"


@dataclass(frozen=True)
class Configuration:
    """One task with one reward entry: a group directory of runs, one per seed.

    config: resolved (every source's defaults spelled out), as the run directory records it
    state:  new (nothing on disk), partial (started, some seed lacks summary.json), finished
    """

    task: str
    rewards: tuple[str, ...]
    config: Config
    out: Path
    state: str
    sil: bool = False

    @property
    def reward_name(self) -> str:
        return reward_label(self.rewards, self.sil)

    @property
    def label(self) -> str:
        return f"{self.task} [{self.reward_name}]"

    @property
    def run_dirs(self) -> list[Path]:
        from . import runs

        return runs.run_dirs_for(self.out, self.config.seeds)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix.rstrip(".") or "(whole config)"]
    found = []
    for key in sorted(set(old) | set(new), key=str):
        found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
    return found


def _state(config: Config, out: Path) -> str:
    """What is on disk for `config` at `out`; UserError if it is something else."""
    from . import runs
    from .train import load_run_config, with_source_defaults

    if out.is_dir() and ((out / "group.json").exists() or (out / "config.yaml").exists()):
        stored, _ = load_run_config(out)
        # A run recorded before a source parameter existed has its default (the old behaviour);
        # a parameter this version lacks is left as recorded and reported as a difference below.
        with contextlib.suppress(UserError):
            stored = with_source_defaults(stored)
        old, new = runs.comparable(to_dict(stored)), runs.comparable(to_dict(config))
        if old != new:
            raise UserError(
                f"{str(out)!r} holds runs with another config than the spec asks for "
                f"(differs in: {', '.join(_differences(old, new))}). Delete that directory to "
                "start it over, or choose another --out."
            )
        done = all((d / "summary.json").exists() for d in runs.run_dirs_for(out, config.seeds))
        return FINISHED if done else PARTIAL
    runs.check_out_dir(out, config)  # refuses a non-empty directory that holds no run
    return NEW


def plan(spec: Spec, spec_path: Path, out: Path) -> list[Configuration]:
    """Every configuration of the spec, each config built and checked against its env and sources
    (`train.prepare`), and the state of its directory. Touches nothing on disk."""
    from .train import prepare, resolved_config

    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a directory.")
    if (out / "group.json").exists() or (out / "config.yaml").exists():
        raise UserError(
            f"--out {str(out)!r} holds a training run, not a bench; choose another directory."
        )
    configurations = []
    for task in spec.tasks:
        for rewards in spec.rewards:
            for sil in spec.self_imitation:
                group = out / task_dirname(task) / reward_dirname(rewards, sil)
                try:
                    config = build(run_data(spec, task, rewards, group, sil))
                    config = resolved_config(prepare(config))
                    state = _state(config, group)
                except UserError as error:
                    raise UserError(
                        f"{spec_path}: task {task}, rewards {reward_label(rewards, sil)}: {error}"
                    ) from None
                configurations.append(Configuration(task, rewards, config, group, state, sil))
    return configurations


# ------------------------------------------------------------------------------------ running


def train_configuration(config_data: dict[str, Any], out: str, resume: bool) -> dict[str, Any]:
    """One configuration, start to end, in this process (a Ray worker). Never raises for a failed
    run: the outcome says what went wrong, so the driver can report it next to the others.

    config_data: `to_dict` of the resolved config (plain data: unpickling it imports no JAX)
    Returns {"ok": bool, "error": str | None, "traceback": str | None}.
    """
    from .train import TrainingStoppedError, load_run_config, train

    try:
        if resume:
            config, path = load_run_config(Path(out))
        else:
            config, path = build(config_data), Path(out)
        train(config, path, resume=resume, quiet=True, report=False)
    except TrainingStoppedError as stop:
        return {"ok": False, "error": str(stop), "traceback": None}
    except SystemExit as stop:
        return {"ok": False, "error": f"exited with status {stop.code}", "traceback": None}
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        return {"ok": False, "error": message, "traceback": traceback.format_exc()}
    return {"ok": True, "error": None, "traceback": None}


def _ray_error_message(error: Exception) -> str:
    import ray

    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, ray.exceptions.RayTaskError) and lines:
        return lines[-1]  # the exception the task raised; the lines before are its traceback
    return " ".join(lines) or type(error).__name__


def _start_ray(address: str | None, cpus_per_run: float) -> None:
    import logging
    import warnings

    import ray

    with warnings.catch_warnings():
        # A local ray.init starts Ray's processes by fork + exec: the child runs no Python before
        # exec, so JAX's warning about forking a multithreaded process does not apply.
        warnings.filterwarnings(
            "ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning
        )
        if address is None:
            ray.init(
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            return
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as error:
            raise UserError(f"cannot connect to the Ray cluster at {address!r}: {error}") from None
    largest = max(
        (node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0
    )
    if cpus_per_run > largest:
        print(
            f"autotelic: warning: --cpus-per-run {cpus_per_run:g} exceeds the CPUs of every "
            f"node of the cluster ({largest:g}); the runs wait until such a node joins.",
            file=sys.stderr,
        )


def run_all(
    configurations: list[Configuration],
    address: str | None,
    cpus_per_run: float,
    quiet: bool,
    on_outcome: Callable[[dict[Path, dict[str, Any]]], None] | None = None,
) -> tuple[dict[Path, dict[str, Any]], bool]:
    """Train every configuration that is not finished, one Ray task each.

    Returns the outcome per group directory and whether the run was interrupted (Ctrl-C: the
    running configurations are asked to checkpoint and stop, as `autotelic train` does).
    on_outcome: called with the outcomes so far each time a configuration ends (not after
    Ctrl-C), so that a bench killed outright still leaves the results of what finished.
    """
    pending = [c for c in configurations if c.state != FINISHED]
    if not pending:
        return {}, False
    import ray

    _start_ray(address, cpus_per_run)
    outcomes: dict[Path, dict[str, Any]] = {}
    interrupted = False
    restore = _interrupt_on_signals()
    try:
        # max_calls=1: a fresh process per configuration, so JAX's memory and compiled programs
        # go with it. max_retries=0: a crashed run is reported, not silently started over.
        remote = ray.remote(num_cpus=cpus_per_run, max_retries=0, max_calls=1)(train_configuration)
        refs = {
            remote.remote(to_dict(c.config), str(c.out), c.state == PARTIAL): c for c in pending
        }
        total = len(refs)

        def record(ref: Any, stopping: bool = False) -> None:
            """Store the outcome of a finished task; `stopping`: after Ctrl-C."""
            configuration = refs.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as error:
                outcome = {"ok": False, "error": _ray_error_message(error), "traceback": None}
            outcome["interrupted"] = stopping and not outcome["ok"]
            outcomes[configuration.out] = outcome
            if not quiet:
                status = "done"
                if not outcome["ok"]:
                    status = f"{'interrupted' if stopping else 'FAILED'}: {outcome['error']}"
                print(
                    f"[{total - len(refs)}/{total}] {configuration.label}: {status}",
                    file=sys.stderr,
                )
            if on_outcome is not None and not stopping:
                on_outcome(outcomes)

        try:
            while refs:
                # a timeout, so that Ctrl-C reaches this loop while every run is still going
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                for ref in ready:
                    record(ref)
        except KeyboardInterrupt:
            interrupted = True
            print(
                "autotelic: interrupted; asking the running configurations to checkpoint...",
                file=sys.stderr,
            )
            for ref in refs:
                ray.cancel(ref)  # delivered to the run as Ctrl-C: it checkpoints and stops
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=INTERRUPT_GRACE_SECONDS)
            for ref in ready:
                record(ref, stopping=True)
            for configuration in refs.values():
                outcomes[configuration.out] = {
                    "ok": False,
                    "error": "interrupted; did not stop within "
                    f"{INTERRUPT_GRACE_SECONDS} s, its last checkpoint is what remains",
                    "traceback": None,
                    "interrupted": True,
                }
    finally:
        restore()
        ray.shutdown()
    return outcomes, interrupted


def _interrupt_on_signals() -> Any:
    """Make SIGTERM (what schedulers and `kill` send) and SIGINT stop the bench as Ctrl-C does,
    also when SIGINT was ignored at start (a shell starts background jobs that way). Returns a
    function that restores the previous handlers. Only the main thread can install handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    return restore


# ------------------------------------------------------------------------------------ results


def _interval(values: list[float]) -> dict[str, Any]:
    """IQM over seeds with a 95% percentile-bootstrap interval; None where there is no value."""
    from .stats import bootstrap_ci

    def finite_or_none(x: float) -> float | None:
        return x if math.isfinite(x) else None

    point, low, high = bootstrap_ci([values]) if values else (math.nan,) * 3
    return {
        "iqm": finite_or_none(point),
        "low": finite_or_none(low),
        "high": finite_or_none(high),
        "seeds": len(values),
    }


UNFINISHED = ("failed", "interrupted")
TO_TRAIN = ("partial", "pending")  # not failed, just not (yet) trained to the end


def checkpointed_steps(configuration: Configuration) -> int:
    """Env steps per seed that the configuration's checkpoints hold now (the least over its
    seeds): what a resumed run starts from."""
    from . import runs

    done = []
    for run_dir in configuration.run_dirs:
        updates = runs.checkpoint_updates(run_dir) if run_dir.is_dir() else []
        done.append(updates[-1] if updates else 0)
    return min(done, default=0) * configuration.config.batch_size


def _status(
    outcome: dict[str, Any] | None, resumed: bool, complete: bool, started: bool, summarizing: bool
) -> str:
    """resumed: the configuration was partial when this invocation began; complete: every seed
    has its summary.json now; started: some run directory exists."""
    if outcome is None:  # not trained by this invocation: what is on disk
        if complete:
            return "finished" if summarizing else "skipped"
        return "partial" if started else "pending"
    if not outcome["ok"]:
        return "interrupted" if outcome.get("interrupted") else "failed"
    return "resumed" if resumed else "trained"


def summarize(
    configuration: Configuration,
    outcome: dict[str, Any] | None,
    out: Path,
    summarizing: bool = False,
) -> dict[str, Any]:
    """One row of results.json, read from the run directories (the same whether the runs were
    trained now or by an earlier invocation). outcome: what this invocation's training of the
    configuration returned (None: not trained by it, or not yet)."""
    summaries = []
    for run_dir in configuration.run_dirs:
        path = run_dir / "summary.json"
        if path.exists():
            summaries.append(json.loads(path.read_text()))
    complete = len(summaries) == len(configuration.config.seeds)
    started = any(d.is_dir() for d in configuration.run_dirs)
    resumed = configuration.state == PARTIAL
    status = _status(outcome, resumed, complete, started, summarizing)
    if status not in UNFINISHED + TO_TRAIN and not complete:
        status, outcome = "failed", {"error": "finished without a summary.json for every seed"}
    returns = [s["final_return"] for s in summaries if s.get("final_return") is not None]
    successes = [s["success_rate"] for s in summaries if s.get("success_rate") is not None]
    group_wall = max((s["wall_seconds"] for s in summaries), default=None)
    env_steps = sum(s["env_steps"] for s in summaries)
    row: dict[str, Any] = {
        "task": configuration.task,
        "rewards": configuration.reward_name,
        "dir": str(configuration.out.relative_to(out)),
        "status": status,
        "error": (outcome or {}).get("error", "unknown") if status in UNFINISHED else None,
        "seeds": list(configuration.config.seeds),
        "final_return": _interval(returns) if complete else _interval([]),
        "success_rate": _interval(successes) if complete else _interval([]),
        # Each seed's wall_seconds is the whole group's (the seeds train vmapped together).
        "group_wall_seconds": group_wall if complete else None,
        "wall_seconds_per_seed": group_wall / len(summaries) if complete and group_wall else None,
        "env_steps_per_second": round(env_steps / group_wall, 1)
        if complete and group_wall
        else None,
        "env_steps_per_seed": summaries[0]["env_steps"] if complete else None,
        "env_steps_target": configuration.config.num_updates * configuration.config.batch_size,
        "env_steps_checkpointed": summaries[0]["env_steps"]
        if complete
        else checkpointed_steps(configuration),
    }
    if outcome and outcome.get("traceback"):
        row["traceback"] = outcome["traceback"]
    return row


def _fmt_interval(interval: dict[str, Any], digits: int) -> str:
    if interval["iqm"] is None:
        return "n/a"
    point, low, high = interval["iqm"], interval["low"], interval["high"]
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _fmt_status(row: dict[str, Any]) -> str:
    """The status, with how far an unfinished configuration got (its checkpoints)."""
    status = row["status"]
    done, target = row.get("env_steps_checkpointed"), row.get("env_steps_target")
    if status in UNFINISHED + TO_TRAIN and done and target:
        status += f" ({done / 1e6:.2f}M of {target / 1e6:.2f}M steps)"
    return status


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (also what the command prints)."""
    lines = [
        "| task | rewards | final return IQM [95% CI] | success rate IQM [95% CI] "
        "| wall s / seed | env steps/s | status |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for row in rows:
        wall = row["wall_seconds_per_seed"]
        sps = row["env_steps_per_second"]
        lines.append(
            f"| {row['task']} | {row['rewards']} | {_fmt_interval(row['final_return'], 3)} "
            f"| {_fmt_interval(row['success_rate'], 2)} "
            f"| {'n/a' if wall is None else f'{wall:.1f}'} "
            f"| {'n/a' if sps is None else f'{sps:,.0f}'} | {_fmt_status(row)} |"
        )
    return "\n".join(lines)


NOTES = (
    "IQM: mean of the middle 50% of seeds. CI: 95% percentile bootstrap, resampling seeds. "
    "final return and success rate: episodes of each seed's last 5% of env steps. "
    "wall s / seed: the configuration's wall time divided by its number of seeds; the seeds train "
    "vmapped in one process, so this is not what one seed takes alone. env steps/s: env steps of "
    "all seeds together per wall-clock second, compilation included. status: trained, resumed "
    "(continued from a checkpoint), skipped (finished by an earlier invocation), finished (on "
    "disk, with --summarize), failed, interrupted (Ctrl-C; checkpointed), partial (started, not "
    "finished: still running, or stopped), pending (not started); unfinished ones show the env "
    "steps per seed their checkpoints hold."
)


def markdown(spec: Spec, rows: list[dict[str, Any]], curves: list[Path]) -> str:
    parts = [
        f"# bench {spec.name}",
        "",
        f"{spec.steps:,} env steps per seed, seeds {', '.join(map(str, spec.seeds))}"
        + (
            ", overrides: " + ", ".join(f"{k}={v}" for k, v in spec.overrides.items())
            if spec.overrides
            else ""
        )
        + ".",
        "",
        table(rows),
        "",
        NOTES,
    ]
    failed = [r for r in rows if r["status"] in UNFINISHED]
    if failed:
        parts += ["", "## Not finished", ""]
        parts += [f"- {r['task']} [{r['rewards']}]: {r['error']}" for r in failed]
        parts += ["", "Run the same command again to resume them."]
    to_train = [r for r in rows if r["status"] in TO_TRAIN]
    if to_train:
        parts += ["", "## Still to train", ""]
        parts += [f"- {r['task']} [{r['rewards']}]: {_fmt_status(r)}" for r in to_train]
        parts += [
            "",
            "`autotelic bench` with this spec and --out trains them (partial ones resume from "
            "their checkpoints).",
        ]
    if curves:
        parts += ["", "## Learning curves", ""]
        parts += [f"![{path.stem}]({path.name})" for path in curves]
    return "\n".join(parts) + "\n"


def curve(run_dirs: list[Path]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Episode return against env steps: the run is cut into up to CURVE_POINTS equal stretches
    of updates; per seed, the mean return of every episode that ended in a stretch (the logged
    per-update means weighted by their episode counts), then the IQM over seeds and its 95%
    interval. A seed none of whose episodes ended in a stretch says nothing there and is left out
    of that point. Each point sits at the stretch's last env step.

    Returns (env_steps, iqm, low, high), each [points].
    """
    import numpy as np

    from . import runs
    from .stats import bootstrap_ci

    per_seed = [runs.read_metrics(d) for d in run_dirs if (d / "metrics.csv").exists()]
    per_seed = [rows for rows in per_seed if rows]
    if not per_seed:
        return [], [], [], []
    length = min(len(rows) for rows in per_seed)  # the seeds share the update grid
    episodes = np.array([[r["episodes"] for r in rows[:length]] for rows in per_seed])
    returns = np.array([[r["episode_return_mean"] for r in rows[:length]] for rows in per_seed])
    totals = np.where(episodes > 0, returns * episodes, 0.0)
    steps_axis = [r["env_steps"] for r in per_seed[0][:length]]
    edges = np.unique(np.linspace(0, length, min(length, CURVE_POINTS) + 1).round().astype(int))
    xs, points, lows, highs = [], [], [], []
    for begin, end in itertools.pairwise(edges):
        count = episodes[:, begin:end].sum(axis=1)
        values = totals[:, begin:end].sum(axis=1)[count > 0] / count[count > 0]
        if not len(values):
            continue
        point, low, high = bootstrap_ci([values], resamples=CURVE_RESAMPLES)
        xs.append(steps_axis[end - 1])
        points.append(point)
        lows.append(low)
        highs.append(high)
    return xs, points, lows, highs


def plot_curves(
    task: str, configurations: list[Configuration], rows: list[dict[str, Any]], path: Path
) -> bool:
    """One PNG for `task`: a line per reward entry with its interval shaded. False if no
    configuration of the task logged any update."""
    import io

    from matplotlib.figure import Figure

    from .runs import atomic_write_bytes

    # A bare Figure renders PNG with Agg and keeps no pyplot state: no display, no global backend.
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    drawn = False
    for configuration, row in zip(configurations, rows, strict=True):
        xs, points, lows, highs = curve(configuration.run_dirs)
        if not xs:
            continue
        label = configuration.reward_name
        if row["status"] in UNFINISHED + TO_TRAIN:
            label += f" ({row['status']})"
        (line,) = axes.plot(xs, points, label=label)
        axes.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = True
    if not drawn:
        return False
    seeds = len(configurations[0].config.seeds)
    axes.set_title(f"{task} ({seeds} seeds: IQM, shaded 95% bootstrap CI)")
    axes.set_xlabel("env steps per seed")
    axes.set_ylabel("episode return")
    axes.grid(alpha=0.3)
    axes.legend(title="rewards")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return True


def write_report_safely(out: Path) -> Path | None:
    """The HTML report of a finished bench or run; a failure to draw it is a warning, never a
    failure of the training that has already finished."""
    try:
        from .explain.report import write_report

        return write_report(out)
    except Exception as error:  # the report is a by-product; training results are on disk
        print(
            f"autotelic: warning: no report.html ({type(error).__name__}: {error})", file=sys.stderr
        )
        return None


def write_results(
    spec: Spec,
    spec_path: Path,
    out: Path,
    configurations: list[Configuration],
    outcomes: dict[Path, dict[str, Any]],
    summarizing: bool = False,
) -> list[dict[str, Any]]:
    """results.json, results.md and the curves; returns the rows."""
    from .runs import atomic_write_text

    rows = [summarize(c, outcomes.get(c.out), out, summarizing) for c in configurations]
    curves = []
    for task in spec.tasks:
        indices = [i for i, c in enumerate(configurations) if c.task == task]
        path = out / f"curves_{task_dirname(task)}.png"
        if plot_curves(
            task, [configurations[i] for i in indices], [rows[i] for i in indices], path
        ):
            curves.append(path)
    results = {
        "name": spec.name,
        "spec": str(spec_path.resolve()),
        "steps": spec.steps,
        "seeds": list(spec.seeds),
        "tasks": list(spec.tasks),
        "rewards": [reward_label(r) for r in spec.rewards],
        "self_imitation": list(spec.self_imitation),
        "overrides": spec.overrides,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "notes": NOTES,
        "curves": [p.name for p in curves],
        "configurations": rows,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown(spec, rows, curves))
    return rows


# ------------------------------------------------------------------------------------ command


def bench(
    spec_path: Path,
    out: Path | None = None,
    address: str | None = None,
    cpus_per_run: float = 1.0,
    quiet: bool = False,
    summarize_only: bool = False,
) -> int:
    """`autotelic bench`: check the spec, train what is missing, write and print the results.

    summarize_only: train nothing; write the results of what is on disk now (finished, partial
    and pending configurations), e.g. while a long bench runs elsewhere.

    Returns the exit status: 0 if every configuration finished (with summarize_only: unless one
    failed), 1 if any failed, 130 if interrupted. Raises UserError (exit 2) for bad input, before
    anything is written.
    """
    if summarize_only and address is not None:
        raise UserError(
            "--summarize trains nothing and needs no Ray cluster; drop --address, or drop "
            "--summarize to train."
        )
    if not cpus_per_run > 0:
        raise UserError(f"--cpus-per-run must be > 0, got {cpus_per_run:g}.")
    if address is None and cpus_per_run > (os.cpu_count() or 1):
        raise UserError(
            f"--cpus-per-run {cpus_per_run:g} is more than this machine's {os.cpu_count()} CPUs; "
            "no run could start."
        )
    spec = load_spec(spec_path)
    out = (out or Path("runs") / f"bench-{spec.name}").resolve()
    configurations = plan(spec, spec_path, out)
    if summarize_only:
        return _summarize_only(spec, spec_path, out, configurations)
    if not quiet:
        counts = {
            state: sum(c.state == state for c in configurations)
            for state in (NEW, PARTIAL, FINISHED)
        }
        print(
            f"bench {spec.name}: {len(configurations)} configurations x {len(spec.seeds)} seeds; "
            f"{counts[NEW]} to train, {counts[PARTIAL]} to resume, {counts[FINISHED]} finished; "
            f"Ray {'at ' + address if address else 'local'}",
            file=sys.stderr,
        )

    def write_so_far(outcomes: dict[Path, dict[str, Any]]) -> None:
        # A by-product of a long bench: a failure to write it must not stop the training.
        try:
            write_results(spec, spec_path, out, configurations, outcomes)
        except Exception as error:
            print(
                f"autotelic: warning: results so far not written ({type(error).__name__}: {error})",
                file=sys.stderr,
            )

    outcomes, interrupted = run_all(configurations, address, cpus_per_run, quiet, write_so_far)
    out.mkdir(parents=True, exist_ok=True)
    rows = write_results(spec, spec_path, out, configurations, outcomes)
    print(table(rows))
    report = write_report_safely(out)
    if report is not None:
        print(f"report: {report}")
    failed = [r for r in rows if r["status"] in UNFINISHED]
    for row in failed:
        print(f"{row['status']}: {row['task']} [{row['rewards']}]: {row['error']}", file=sys.stderr)
    print(f"results: {out / 'results.md'}")
    if interrupted:
        return 130
    return 1 if failed else 0


def _summarize_only(
    spec: Spec, spec_path: Path, out: Path, configurations: list[Configuration]
) -> int:
    """`autotelic bench --summarize`: the results of what is on disk, training nothing."""
    if all(c.state == NEW for c in configurations):
        raise UserError(
            f"--summarize: {str(out)!r} holds no runs of {spec_path} yet; run the same command "
            "without --summarize to train them (or pass the --out that bench used)."
        )
    rows = write_results(spec, spec_path, out, configurations, {}, summarizing=True)
    print(table(rows))
    report = write_report_safely(out)
    if report is not None:
        print(f"report: {report}")
    print(f"results: {out / 'results.md'}")
    return 0
