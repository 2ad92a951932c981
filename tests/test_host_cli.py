"""`autotelic train --env gym:<id>`: the host path writes the same run directory as the JAX-native
path (plus the caption vocabulary), resumes from a checkpoint, and rejects bad input with exit
status 2."""

from __future__ import annotations

import json

from autotelic import runs
from autotelic.cli import main

ARGS = [
    "--env", "gym:MiniGrid-Empty-5x5-v0", "--steps", "1024", "--num-envs", "4", "--seed", "1",
    "--quiet", "network.kind=mlp", "network.hidden=16", "ppo.num_steps=64", "checkpoint_every=1",
]  # fmt: skip
UPDATES = 4  # 1024 steps / (4 envs x 64 steps)


def test_gym_minigrid_run_writes_a_complete_run_directory_and_resumes(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("train", *ARGS, "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"] == "gym:MiniGrid-Empty-5x5-v0"
    assert summary["env_steps"] == UPDATES * 256 and summary["updates"] == UPDATES
    assert (out / "config.yaml").exists() and list((out / "tb").glob("events.out.tfevents.*"))
    assert runs.checkpoint_updates(out) == [UPDATES - 1, UPDATES]
    rows = runs.read_metrics(out)
    assert [r["update"] for r in rows] == list(range(1, UPDATES + 1))
    assert all(r["finite"] for r in rows)
    # the random policy reaches the goal on Empty-5x5, and each success was captioned
    assert sum(r["episode_success_sum"] for r in rows) > 0
    captions = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert "reached the goal" in captions

    # Lose the last checkpoint and the summary, as if the run had died during its last update.
    vocabulary_before = (out / "captions.jsonl").read_bytes()
    metrics_before = (out / "metrics.csv").read_text().splitlines()
    (out / "checkpoints" / f"update-{UPDATES:08d}.npz").unlink()
    (out / "summary.json").unlink()
    resumed = cli("train", "--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    rows = runs.read_metrics(out)
    assert [r["update"] for r in rows] == list(range(1, UPDATES + 1))
    assert (out / "metrics.csv").read_text().splitlines()[:UPDATES] == metrics_before[:UPDATES]
    assert runs.checkpoint_updates(out)[-1] == UPDATES
    assert json.loads((out / "summary.json").read_text())["updates"] == UPDATES
    # the vocabulary is append-only: every id the checkpoints hold keeps its caption
    assert (out / "captions.jsonl").read_bytes().startswith(vocabulary_before)


def test_envs_lists_the_gym_namespace(capsys):
    assert main(["envs"]) == 0
    listing = capsys.readouterr().out
    assert "gym  (Gymnasium envs stepped in worker processes" in listing
    assert "  gym:MiniGrid-DoorKey-8x8-v0\n" in listing


def test_bad_gym_input_exits_2_with_a_hint(capsys, tmp_path):
    code = main(["train", "--env", "gym:MiniGrid-Empty-5x5-v9", "--out", str(tmp_path / "a")])
    assert code == 2
    assert "gym:MiniGrid-Empty-5x5-v0" in capsys.readouterr().err
    code = main(
        ["train", "--env", "gym:MiniGrid-Empty-5x5-v0", "--out", str(tmp_path / "b"),
         "network.kind=nethack"]
    )  # fmt: skip
    assert code == 2
    assert "network.kind=nethack reads NetHack observations" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
