"""`autotelic train` end to end: learning, run directory contents, resume after SIGKILL and
Ctrl-C, non-finite values."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from autotelic import runs

# Small, quick settings for the resume tests: 8k env steps per update, so a run lasts a few
# seconds after compiling and a signal lands in the middle of it.
RESUME_ARGS = [
    "--env", "navix:Navix-DoorKey-5x5-v0", "--seed", "3", "--num-envs", "64", "--quiet",
    "network.kind=mlp", "ppo.num_steps=128", "checkpoint_every=3",
]  # fmt: skip
RESUME_STEPS = str(64 * 128 * 30)


@pytest.mark.slow
def test_ppo_learns_doorkey_5x5_and_writes_a_complete_run_directory(cli, tmp_path):
    out = tmp_path / "run"
    result = cli(
        "train", "--env", "navix:Navix-DoorKey-5x5-v0", "--steps", "300000", "--seed", "0",
        "--out", str(out), "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"results: {out.resolve()}" in result.stdout
    assert f"report: {(out / 'report.html').resolve()}" in result.stdout  # written at the end
    summary = json.loads((out / "summary.json").read_text())
    for key in ("env", "rewards", "seed", "env_steps", "wall_seconds", "steps_per_second",
                "final_return", "success_rate"):  # fmt: skip
        assert key in summary
    assert summary["env"] == "navix:Navix-DoorKey-5x5-v0"
    assert summary["rewards"] == []
    assert summary["env_steps"] >= 300000
    assert summary["final_return"] >= 0.9, summary
    assert summary["success_rate"] >= 0.95, summary
    assert (out / "config.yaml").exists()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert runs.checkpoint_updates(out)[-1] == summary["updates"]
    rows = runs.read_metrics(out)
    assert [r["update"] for r in rows] == list(range(1, summary["updates"] + 1))
    assert rows[-1]["env_steps"] == summary["env_steps"]


def _uninterrupted(cli, tmp_path: Path) -> Path:
    ref = tmp_path / "reference"
    result = cli("train", *RESUME_ARGS, "--steps", RESUME_STEPS, "--out", str(ref))
    assert result.returncode == 0, result.stderr
    return ref


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autotelic",
            "train",
            *RESUME_ARGS,
            "--steps",
            RESUME_STEPS,
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(out: Path, process: subprocess.Popen, update: int) -> None:
    """Until the run has checkpointed `update`; fails if the run ends first. A hung run is caught
    by the tests' pytest-timeout mark, not by a clock here."""
    while not (out.exists() and any(u >= update for u in runs.checkpoint_updates(out))):
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)


def _metrics_bytes(run_dir: Path) -> bytes:
    return (run_dir / "metrics.csv").read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(900)  # guards against a hung run only
def test_sigkill_then_resume_logs_identical_metrics(cli, tmp_path):
    reference = _uninterrupted(cli, tmp_path)
    out = tmp_path / "killed"
    process = _start(out)
    _wait_for_checkpoint(out, process, 6)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = runs.checkpoint_updates(out)[-1]
    assert killed_at < 30, "the run finished before it could be killed; make it longer"
    resumed = cli("train", "--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert _metrics_bytes(out) == _metrics_bytes(reference)
    final = runs.checkpoint_updates(out)[-1]
    ref_state = np.load(reference / "checkpoints" / f"update-{final:08d}.npz")
    new_state = np.load(out / "checkpoints" / f"update-{final:08d}.npz")
    leaves = [f for f in ref_state.files if f != "__meta__"]
    assert all(np.array_equal(ref_state[f], new_state[f]) for f in leaves)


@pytest.mark.slow
@pytest.mark.timeout(900)  # guards against a hung run only
def test_ctrl_c_checkpoints_exits_cleanly_and_resumes_identically(cli, tmp_path):
    reference = _uninterrupted(cli, tmp_path)
    out = tmp_path / "interrupted"
    process = _start(out)
    _wait_for_checkpoint(out, process, 3)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "--resume" in stderr
    stopped_at = runs.checkpoint_updates(out)[-1]
    rows = runs.read_metrics(out)
    assert rows[-1]["update"] == stopped_at, "the interrupt must checkpoint the update in hand"
    resumed = cli("train", "--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert _metrics_bytes(out) == _metrics_bytes(reference)


def test_resume_of_a_finished_run_changes_nothing(cli, tmp_path):
    out = tmp_path / "done"
    args = ["--env", "navix:Navix-Empty-5x5-v0", "--steps", "512", "--num-envs", "8", "--quiet",
            "network.kind=mlp", "ppo.num_steps=32"]  # fmt: skip
    assert cli("train", *args, "--out", str(out)).returncode == 0
    before = _metrics_bytes(out)
    again = cli("train", "--resume", str(out), "--quiet")
    assert again.returncode == 0, again.stderr
    assert _metrics_bytes(out) == before


def test_several_seeds_train_together_into_one_directory_each(cli, tmp_path):
    out = tmp_path / "group"
    result = cli(
        "train", "--env", "navix:Navix-Empty-5x5-v0", "--steps", "2048", "--seeds", "0,1,2",
        "--num-envs", "8", "--out", str(out), "--quiet", "network.kind=mlp", "ppo.num_steps=32",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    group = json.loads((out / "group.json").read_text())
    assert group["seeds"] == [0, 1, 2]
    summaries = [json.loads((out / f"seed_{s}" / "summary.json").read_text()) for s in range(3)]
    assert [s["seed"] for s in summaries] == [0, 1, 2]
    metrics = [_metrics_bytes(out / f"seed_{s}") for s in range(3)]
    assert len(set(metrics)) == 3, "different seeds must give different runs"
    assert result.stdout.count("seed ") == 3


def test_seeds_spread_over_devices_match_one_device_and_resume_identically(cli, tmp_path):
    # A fresh process gets one CPU device per seed (`train.request_cpu_devices`), and each trains
    # its seed alone (`shard_map` over a vmap of one). The programs differ from the 4-wide vmap
    # of devices=1 only in how XLA compiles them, so the first update agrees to float rounding,
    # seed by seed: a seed trained on the wrong device, or with another seed's data, would not.
    common = [
        "--env", "navix:Navix-DoorKey-5x5-v0", "--steps", "2048", "--seeds", "0,1,2,3",
        "--num-envs", "8", "--quiet", "--reward", "rnd", "network.kind=mlp", "ppo.num_steps=32",
        "checkpoint_every=2",
    ]  # fmt: skip
    spread, single = tmp_path / "spread", tmp_path / "single"
    assert cli("train", *common, "--out", str(spread)).returncode == 0
    result = cli("train", *common, "--out", str(single), "devices=1")
    assert result.returncode == 0, result.stderr
    for seed in range(4):
        one = json.loads((spread / f"seed_{seed}" / "summary.json").read_text())
        assert one["devices"] == 4
        assert json.loads((single / f"seed_{seed}" / "summary.json").read_text())["devices"] == 1
        first = runs.read_metrics(spread / f"seed_{seed}")[0]
        other = runs.read_metrics(single / f"seed_{seed}")[0]
        assert first.keys() == other.keys()
        for key in first:
            assert first[key] == pytest.approx(other[key], rel=1e-3, abs=1e-5), (seed, key)
    # Resuming from the checkpoint before the last one retrains the last updates bit for bit.
    reference = {seed: _metrics_bytes(spread / f"seed_{seed}") for seed in range(4)}
    last = runs.checkpoint_updates(spread / "seed_0")[-1]
    for seed in range(4):
        (spread / f"seed_{seed}" / "summary.json").unlink()
        (spread / f"seed_{seed}" / "checkpoints" / f"update-{last:08d}.npz").unlink()
    resumed = cli("train", "--resume", str(spread), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert {seed: _metrics_bytes(spread / f"seed_{seed}") for seed in range(4)} == reference


def test_non_finite_values_stop_the_run_and_keep_the_last_good_checkpoint(cli, tmp_path):
    out = tmp_path / "nan"
    result = cli(
        "train", "--env", "navix:Navix-Empty-5x5-v0", "--steps", "4096", "--num-envs", "8",
        "--out", str(out), "--quiet", "network.kind=mlp", "ppo.num_steps=32",
        "ppo.learning_rate=1e30", "ppo.max_grad_norm=1e30",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "non-finite" in result.stderr and "update 1" in result.stderr
    assert "Traceback" not in result.stderr
    saved = runs.checkpoint_updates(out)
    assert saved == [0]
    with np.load(out / "checkpoints" / "update-00000000.npz") as data:
        leaves = [data[f] for f in data.files if f != "__meta__"]
    assert all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.floating))
    assert not (out / "summary.json").exists()
