"""Run directories for the language-model commands, laid out like the agent side's:

    OUT/
      config.yaml     the resolved config, headed by `kind: lm` and `command: lm-pretrain|lm-train`
                      (how `autotelic report` tells these runs from the agent side's)
      metrics.csv     one row per step (`update`; `env_steps` counts completions sampled)
      timing.csv      wall-clock per step
      tb/             TensorBoard event files
      samples.jsonl   lm-train: a few completions of one prompt at each evaluation, one JSON
                      object a line: {"step", "prompt", "answer", "completion", "reward"}
      summary.json    written when the run completes
      report.html     written when the run completes (`autotelic report OUT` rewrites it)
      model.json, model.pt (tiny model) or a Hugging Face save (lm-train: the trained policy)

Writes go through autotelic.runs (atomic files, MetricsWriter); only the checks differ, because
these runs have one seed and no resume.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from .. import __version__
from ..config import to_dict
from ..errors import UserError
from ..runs import MetricsWriter, atomic_write_text

__all__ = [
    "KIND",
    "SAMPLES_NAME",
    "MetricsWriter",
    "append_samples",
    "check_out_dir",
    "create_run_dir",
    "progress",
    "write_summary",
]

KIND = "lm"  # config.yaml's `kind` in every language-model run directory
SAMPLES_NAME = "samples.jsonl"
_COMMANDS = {"PretrainConfig": "lm-pretrain", "GRPOConfig": "lm-train"}


def check_out_dir(out: Path, command: str) -> None:
    """Refuse an --out that is a file, is not empty, or cannot be written."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {str(out)!r} exists and is not a directory.")
    if out.exists() and any(out.iterdir()):
        held = "an autotelic run" if (out / "config.yaml").exists() else "other files"
        raise UserError(
            f"output directory {str(out)!r} already holds {held}; `autotelic {command}` writes "
            "into a new or empty directory. Choose another --out."
        )
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {str(probe)!r}: permission denied. Choose another --out.")


def create_run_dir(out: Path, config: Any) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create run directory {str(out)!r}: {error}") from None
    data = {"kind": KIND, "command": _COMMANDS.get(type(config).__name__), **to_dict(config)}
    atomic_write_text(out / "config.yaml", yaml.safe_dump(data, sort_keys=False))


def append_samples(out: Path, rows: list[dict[str, Any]]) -> None:
    """Append sample completions to OUT/samples.jsonl (read by the report)."""
    with open(out / SAMPLES_NAME, "a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def write_summary(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    summary = {
        "kind": KIND,
        **summary,
        "version": __version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


def progress(quiet: bool) -> Any:
    """The agent side's progress bar (`autotelic.runs.progress_bar`)."""
    from ..runs import progress_bar

    return progress_bar(quiet)
