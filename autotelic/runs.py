"""Run directories: resolved config, metrics (CSV and TensorBoard), atomic checkpoints, summary.

One run directory per seed:

    RUN_DIR/
      config.yaml         the resolved config (its `seeds` is this run's seed alone)
      metrics.csv         one row per update; deterministic columns only (bit-identical on resume)
      timing.csv          wall-clock per update (not deterministic, so kept apart)
      tb/                 TensorBoard event files
      checkpoints/        update-XXXXXXXX.npz, the two newest kept, each written atomically
      summary.json        written when the run completes

Several seeds trained together share a group directory that holds `group.json` and one run
directory per seed (`seed_<s>/`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from . import __version__
from .config import Config, dump, to_dict
from .errors import UserError

CHECKPOINT_FORMAT = 1
KEEP_CHECKPOINTS = 2
SUMMARY_WINDOW = 0.05  # final_return and success_rate: episodes of the last 5% of env steps


# ------------------------------------------------------------------------------ atomic writes


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# ------------------------------------------------------------------------------ layout checks


def run_dirs_for(out: Path, seeds: tuple[int, ...]) -> list[Path]:
    """Where each seed's run directory goes: `out` itself for one seed, `out/seed_<s>` else."""
    if len(seeds) == 1:
        return [out]
    return [out / f"seed_{s}" for s in seeds]


def config_for_seed(config: Config, seed: int, out: Path) -> Config:
    from dataclasses import replace

    return replace(config, seeds=(seed,), out=str(out))


def comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run (everything but where it is written)."""
    return {k: v for k, v in config_dict.items() if k != "out"}


def check_out_dir(out: Path, config: Config) -> None:
    """Refuse an output directory that cannot be written or already holds something else."""
    for target in [out, *run_dirs_for(out, config.seeds)]:
        if target.exists() and not target.is_dir():
            raise UserError(f"output path {str(target)!r} exists and is not a directory.")
    if out.exists() and any(out.iterdir()):
        existing = out / "config.yaml"
        group = out / "group.json"
        if existing.exists() or group.exists():
            same = False
            if existing.exists() and len(config.seeds) == 1:
                import yaml

                try:
                    old = yaml.safe_load(existing.read_text())
                    same = comparable(old) == comparable(to_dict(config))
                except Exception:
                    same = False
            if same:
                raise UserError(
                    f"{str(out)!r} already holds this run. Continue it with "
                    f"`autotelic train --resume {out}`, or choose another --out."
                )
            raise UserError(
                f"{str(out)!r} already holds a different run. Choose another --out, or "
                f"`autotelic train --resume {out}` to continue that run."
            )
        raise UserError(
            f"output directory {str(out)!r} is not empty and holds no autotelic run; "
            "choose an empty or new directory."
        )
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {str(probe)!r}: permission denied. Choose another --out.")


def create_run_dirs(out: Path, config: Config) -> list[Path]:
    """Make the group/run directories and write each run's config.yaml."""
    dirs = run_dirs_for(out, config.seeds)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for seed, run_dir in zip(config.seeds, dirs, strict=True):
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(run_dir / "config.yaml", dump(config_for_seed(config, seed, run_dir)))
        if len(config.seeds) > 1:
            group = {
                "seeds": list(config.seeds),
                "runs": [d.name for d in dirs],
                "config": to_dict(config),
            }
            atomic_write_text(out / "group.json", json.dumps(group, indent=2))
    except OSError as error:
        raise UserError(f"cannot create run directory {str(out)!r}: {error}") from None
    return dirs


# ------------------------------------------------------------------------------ checkpoints


def _checkpoint_name(update: int) -> str:
    return f"update-{update:08d}.npz"


def checkpoint_updates(run_dir: Path) -> list[int]:
    """Updates at which `run_dir` holds a complete checkpoint, oldest first."""
    found = []
    for path in (run_dir / "checkpoints").glob("update-*.npz"):
        try:
            found.append(int(path.stem.split("-")[1]))
        except (IndexError, ValueError):
            continue
    return sorted(found)


def save_checkpoint(run_dir: Path, update: int, state: Any, meta: dict[str, Any]) -> Path:
    """Save one seed's state pytree (numpy leaves) atomically; keep the newest two."""
    import io

    leaves = jax.tree_util.tree_leaves(state)
    buffer = io.BytesIO()
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    header = {"format": CHECKPOINT_FORMAT, "version": __version__, "update": update, **meta}
    arrays["__meta__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(buffer, **arrays)
    path = run_dir / "checkpoints" / _checkpoint_name(update)
    atomic_write_bytes(path, buffer.getvalue())
    for old in checkpoint_updates(run_dir)[:-KEEP_CHECKPOINTS]:
        (run_dir / "checkpoints" / _checkpoint_name(old)).unlink(missing_ok=True)
    return path


def load_checkpoint(run_dir: Path, update: int, like: Any) -> tuple[Any, dict[str, Any]]:
    """The state saved at `update`, restored into the structure of `like` (shapes checked)."""
    path = run_dir / "checkpoints" / _checkpoint_name(update)
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            leaves = [data[f"leaf_{i:05d}"] for i in range(len(data.files) - 1)]
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"checkpoint {str(path)!r} is unreadable: {error}") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"checkpoint {str(path)!r} has format {meta.get('format')}, this autotelic reads "
            f"format {CHECKPOINT_FORMAT}; resume it with the version that wrote it."
        )
    template, treedef = jax.tree_util.tree_flatten(like)
    if len(template) != len(leaves) or any(
        np.shape(a) != np.shape(b) or np.asarray(a).dtype != b.dtype
        for a, b in zip(template, leaves, strict=False)
    ):
        raise UserError(
            f"checkpoint {str(path)!r} does not match the run's config (different network, "
            "env or reward sources); it cannot be resumed with this config."
        )
    return jax.tree_util.tree_unflatten(treedef, leaves), meta


# ------------------------------------------------------------------------------ metrics


def _format(value: Any) -> str:
    value = np.asarray(value)
    if value.dtype == bool:
        return str(int(value))
    if np.issubdtype(value.dtype, np.integer):
        return str(int(value))
    return repr(float(value))


class MetricsWriter:
    """Per-run metrics.csv, timing.csv and TensorBoard events. On resume, rows after the
    checkpoint are dropped so the file reads as if the run had never stopped."""

    def __init__(self, run_dir: Path, resume_update: int = 0) -> None:
        self.run_dir = run_dir
        self.csv_path = run_dir / "metrics.csv"
        self.timing_path = run_dir / "timing.csv"
        self.columns: list[str] | None = None
        if resume_update > 0 or self.csv_path.exists():
            self._truncate(self.csv_path, resume_update)
            self._truncate(self.timing_path, resume_update)
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as handle:
                header = next(csv.reader(handle), None)
            self.columns = header
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_update + 1)

    @staticmethod
    def _truncate(path: Path, last_update: int) -> None:
        if not path.exists():
            return
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        column = header.index("update")
        kept = [r for r in body if len(r) == len(header) and int(r[column]) <= last_update]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(kept)
            handle.flush()
            os.fsync(handle.fileno())

    def write(
        self,
        metrics: dict[str, Any],
        wall_seconds: float,
        steps_per_second: float,
        compiled: bool = False,
    ) -> None:
        """Append one update. `compiled`: this update's time includes compiling the program."""
        if self.columns is None:
            first = ["update", "env_steps"]
            self.columns = first + [c for c in metrics if c not in first]
            with open(self.csv_path, "w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)
            with open(self.timing_path, "w", newline="") as handle:
                csv.writer(handle).writerow(
                    ["update", "wall_seconds", "steps_per_second", "compiled"]
                )
        with open(self.csv_path, "a", newline="") as handle:
            csv.writer(handle).writerow([_format(metrics[c]) for c in self.columns])
        update = int(metrics["update"])
        with open(self.timing_path, "a", newline="") as handle:
            csv.writer(handle).writerow(
                [update, f"{wall_seconds:.3f}", f"{steps_per_second:.1f}", int(compiled)]
            )
        step = int(metrics["env_steps"])
        for name, value in metrics.items():
            if name in ("update", "env_steps"):
                continue
            value = float(np.asarray(value))
            if math.isfinite(value):
                self.tb.add_scalar(name, value, update)
        self.tb.add_scalar("env_steps", step, update)
        self.tb.add_scalar("steps_per_second", steps_per_second, update)

    def flush(self) -> None:
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def _read_rows(path: Path) -> list[dict[str, float]]:
    """The complete rows of a metrics or timing CSV. A run that is still training may be in the
    middle of writing its last line; that line (no newline yet) is left out."""
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    return _read_rows(Path(run_dir) / "metrics.csv")


def read_timing(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "timing.csv"
    if not path.exists():
        return []
    return _read_rows(path)


# ------------------------------------------------------------------------------ summary


@dataclass(frozen=True)
class Window:
    episodes: float
    final_return: float
    success_rate: float


def final_window(rows: Iterable[dict[str, float]], total_steps: float) -> Window:
    """Episodes that ended in the last 5% of env steps (at least the last update)."""
    rows = list(rows)
    if not rows:
        return Window(0, float("nan"), float("nan"))
    start = total_steps * (1.0 - SUMMARY_WINDOW)
    window = [r for r in rows if r["env_steps"] > start] or rows[-1:]
    # the update that straddles the window start contributes its share of steps
    episodes = sum(r["episodes"] for r in window)
    if episodes == 0:
        return Window(0, float("nan"), float("nan"))
    returns = sum(r["episode_return_sum"] for r in window)
    successes = sum(r["episode_success_sum"] for r in window)
    return Window(episodes, returns / episodes, successes / episodes)


def write_summary(run_dir: Path, config: Config, extra: dict[str, Any]) -> dict[str, Any]:
    rows = read_metrics(run_dir)
    timing = read_timing(run_dir)
    env_steps = int(rows[-1]["env_steps"]) if rows else 0
    wall = sum(t["wall_seconds"] for t in timing)
    steady = [t for t in timing if not t.get("compiled", 0)]
    steady_seconds = sum(t["wall_seconds"] for t in steady)
    steady_steps = len(steady) * (env_steps / len(rows)) if rows else 0
    window = final_window(rows, env_steps)
    summary = {
        "env": config.env,
        "rewards": list(config.rewards),
        "seed": config.seeds[0],
        "env_steps": env_steps,
        "updates": int(rows[-1]["update"]) if rows else 0,
        "wall_seconds": round(wall, 3),
        "steps_per_second": round(env_steps / wall, 1) if wall > 0 else None,
        # excluding updates whose time includes compilation (the first of each process)
        "steady_steps_per_second": round(steady_steps / steady_seconds, 1)
        if steady_seconds > 0
        else None,
        "final_return": None if math.isnan(window.final_return) else window.final_return,
        "success_rate": None if math.isnan(window.success_rate) else window.success_rate,
        "final_window_episodes": int(window.episodes),
        "version": __version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


def progress_bar(quiet: bool) -> Any:
    """A rich progress bar on stderr, with a free-text status field (silent when quiet)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True, quiet=quiet),
        transient=False,
    )
