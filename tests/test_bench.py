"""`autotelic bench` end to end: a real local Ray instance (started by the command) trains a
1-task grid; results, curves, a failing configuration, skipping on rerun, bad specs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from autotelic.bench import load_spec, plan, reward_label
from autotelic.cli import main
from autotelic.errors import UserError

TASK = "navix:Navix-Empty-5x5-v0"
TASK_DIR = "navix__Navix-Empty-5x5-v0"
# 4 envs x 16 steps = 64 env steps per update. final_return and success_rate come from the
# episodes that end in the last 5% of env steps: of 10,240 that is the last 8 updates, 128 steps
# per env, more than Empty-5x5's 100-step horizon, so every seed has some even if it learned
# nothing, and the IQM is over both seeds. (Compiling costs far more than the 160 updates.)
STEPS = 10_240
# A small count table keeps the count runs' checkpoints small; it reaches only the count runs.
OVERRIDES = {
    "ppo.num_envs": 4,
    "ppo.num_steps": 16,
    "network.kind": "mlp",
    "sources.count.table_size": 1024,
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_spec(tmp_path: Path, **changes: Any) -> Path:
    spec = {
        "name": "test",
        "steps": STEPS,
        "seeds": [0, 1],
        "tasks": [TASK],
        "rewards": ["none", "count"],
        "overrides": OVERRIDES,
    }
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def results(out: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((out / "results.json").read_text())
    return {row["rewards"]: row for row in data["configurations"]}


def metrics_mtimes(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(out.glob("*/*/seed_*/metrics.csv"))}


def assert_interval(interval: dict[str, Any]) -> None:
    assert interval["seeds"] == 2, interval
    point, low, high = interval["iqm"], interval["low"], interval["high"]
    assert all(x is not None and math.isfinite(x) for x in (point, low, high)), interval
    assert low <= point <= high, interval


def test_bench_reports_every_configuration_and_skips_finished_ones_on_rerun(cli, capsys, tmp_path):
    # none and count train normally. rnd's predictor takes Adam steps of 1e30 (the sources.rnd
    # override reaches only the rnd runs): its parameters overflow in the first update and PPO's
    # loss is non-finite in the second, a real run-time failure next to two successes.
    # --cpus-per-run 0.5 runs all three at once (compiling dominates; one round instead of two).
    spec = write_spec(
        tmp_path,
        rewards=["none", "count", "rnd"],
        overrides={**OVERRIDES, "sources.rnd.learning_rate": 1.0e30},
    )
    out = tmp_path / "bench"
    first = cli("bench", str(spec), "--out", str(out), "--quiet", "--cpus-per-run", "0.5")
    assert first.returncode == 1, first.stderr

    rows = results(out)
    assert set(rows) == {"none", "count", "rnd"}
    for name in ("none", "count"):
        row = rows[name]
        assert row["status"] == "trained", row
        assert row["error"] is None
        assert row["dir"] == f"{TASK_DIR}/{name}"
        assert row["env_steps_per_seed"] == STEPS
        assert_interval(row["final_return"])
        assert_interval(row["success_rate"])
        assert row["wall_seconds_per_seed"] == pytest.approx(row["group_wall_seconds"] / 2)
        for seed in (0, 1):
            assert (out / TASK_DIR / name / f"seed_{seed}" / "summary.json").exists()
    failed = rows["rnd"]
    assert failed["status"] == "failed"
    assert "non-finite" in failed["error"], failed
    assert failed["final_return"]["iqm"] is None and failed["wall_seconds_per_seed"] is None

    markdown = (out / "results.md").read_text()
    assert "| task | rewards | final return IQM [95% CI]" in markdown
    for name in ("none", "count", "rnd"):
        assert f"| {TASK} | {name} |" in markdown
        assert f"| {TASK} | {name} |" in first.stdout  # the table is printed too
    assert "## Not finished" in markdown and "non-finite" in markdown
    assert "failed: " in first.stderr and "Traceback" not in first.stderr
    assert f"results: {out.resolve() / 'results.md'}" in first.stdout
    assert (out / f"curves_{TASK_DIR}.png").read_bytes()[:8] == PNG_MAGIC

    # --summarize trains nothing and reads the same directories: the finished ones as such, the
    # failed rnd as partial with what its checkpoint holds (the last good update, the first).
    before = metrics_mtimes(out)
    summary = cli("bench", str(spec), "--out", str(out), "--summarize")
    assert summary.returncode == 0, summary.stderr
    assert metrics_mtimes(out) == before
    rows = results(out)
    assert {name: row["status"] for name, row in rows.items()} == {
        "none": "finished",
        "count": "finished",
        "rnd": "partial",
    }
    assert rows["rnd"]["env_steps_checkpointed"] == 64 and rows["rnd"]["env_steps_target"] == STEPS
    assert rows["none"]["env_steps_checkpointed"] == STEPS
    assert_interval(rows["none"]["final_return"])
    assert "| partial (0.00M of 0.01M steps) |" in summary.stdout
    assert "## Still to train" in (out / "results.md").read_text()

    # The same grid without the failing entry: both configurations are finished, so nothing
    # trains again (Ray is not even started).
    spec = write_spec(tmp_path)
    before = metrics_mtimes(out)
    again = cli("bench", str(spec), "--out", str(out), "--quiet")
    assert again.returncode == 0, again.stderr
    assert {name: row["status"] for name, row in results(out).items()} == {
        "none": "skipped",
        "count": "skipped",
    }
    assert metrics_mtimes(out) == before

    # A run recorded before a source parameter existed (count's record without `bits`) is the
    # configuration that leaves it at its default, which is the behaviour from before it
    # existed; a recorded value other than the spec's is still a difference.
    group = out / TASK_DIR / "count" / "group.json"
    original = group.read_text()
    recorded = json.loads(original)
    del recorded["config"]["sources"]["count"]["bits"]
    group.write_text(json.dumps(recorded))
    states = {reward_label(c.rewards): c.state for c in plan(load_spec(spec), spec, out.resolve())}
    assert states == {"none": "finished", "count": "finished"}
    recorded["config"]["sources"]["count"]["beta"] = 0.02
    group.write_text(json.dumps(recorded))
    with pytest.raises(UserError, match=r"differs in: sources\.count\.beta\)"):
        plan(load_spec(spec), spec, out.resolve())
    group.write_text(original)

    # A configuration that lacks one seed's summary is resumed (the resume itself is
    # `train(..., resume=True)`, tested with `autotelic train --resume`); the other is skipped.
    (out / TASK_DIR / "none" / "seed_1" / "summary.json").unlink()
    states = {reward_label(c.rewards): c.state for c in plan(load_spec(spec), spec, out.resolve())}
    assert states == {"none": "partial", "count": "finished"}
    assert main(["bench", str(spec), "--out", str(out), "--summarize"]) == 0
    capsys.readouterr()
    assert {name: row["status"] for name, row in results(out).items()} == {
        "none": "partial",
        "count": "finished",
    }

    # The same --out with a different spec is refused before anything runs.
    changed = write_spec(tmp_path, steps=2 * STEPS)
    assert main(["bench", str(changed), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "another config" in err and "steps" in err, err


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"rewards": ["none", "count,rndd"]}, ["reward source", "rndd"]),
        ({"tasks": ["navix:Navix-Empty-5x5-v1"]}, ["Navix-Empty-5x5-v0"]),
        ({"overrides": {"ppo.learnin_rate": 1e-3}}, ["ppo.learnin_rate", "learning_rate"]),
        ({"overrides": {"ppo.learning_rate": -1}}, ["ppo.learning_rate", "positive"]),
        ({"overrides": {"steps": 10}}, ["overrides may not set", "steps"]),
        ({"overrides": {"sources.rnd.coef": 2}}, ["sources.rnd.coef", "no rewards entry"]),
        ({"seed": [0]}, ["unknown spec key", "seeds"]),
        ({"rewards": [["rnd", "count"]]}, ["rewards entry", "comma-separated"]),
        ({"seeds": [0, 0]}, ["seeds repeat"]),
        ({"self_imitation": "yes"}, ["self_imitation must be true, false or a list"]),
        ({"overrides": {"sil.enabled": True}}, ["overrides may not set", "self_imitation"]),
    ],
)
def test_bad_specs_exit_2_before_writing(capsys, tmp_path, changes, needles):
    spec = write_spec(tmp_path, **changes)
    out = tmp_path / "bench"
    code = main(["bench", str(spec), "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err.count("error:") == 1, captured.err
    assert "Traceback" not in captured.err
    for needle in needles:
        assert needle in captured.err, captured.err
    assert not out.exists()


def test_summarize_refuses_an_empty_out_and_a_cluster_address(capsys, tmp_path):
    spec = write_spec(tmp_path)
    out = tmp_path / "bench"
    for extra, needle in (([], "holds no runs"), (["--address", "auto"], "drop --address")):
        code = main(["bench", str(spec), "--out", str(out), "--summarize", *extra])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("error:") == 1 and needle in err and "Traceback" not in err, err
        assert not out.exists()


def write_metrics(run_dir: Path, episodes: list[int], returns: list[float], tail: str = "") -> None:
    run_dir.mkdir(parents=True)
    lines = ["update,env_steps,episodes,episode_return_mean"]
    for i, (count, value) in enumerate(zip(episodes, returns, strict=True)):
        lines.append(f"{i + 1},{64 * (i + 1)},{count},{value}")
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n" + tail)


def test_curve_weights_each_update_by_its_episodes_and_skips_seeds_without_any(tmp_path):
    # 200 updates -> 100 stretches of 2. Seed 0: one episode of return 1 and three of return 0
    # per stretch -> 0.25 everywhere (an unweighted mean of the two updates would give 0.5).
    # Seed 1: no episode in the first stretch (left out there; the logged mean 0 is no return),
    # then two episodes of return 0.25 per stretch. A line still being written ends seed 0's
    # file and is ignored.
    from autotelic.bench import curve

    seeds = [tmp_path / "seed_0", tmp_path / "seed_1"]
    write_metrics(seeds[0], [1, 3] * 100, [1.0, 0.0] * 100, tail="201,12864,1,0.")
    write_metrics(seeds[1], [0, 0] + [1, 1] * 99, [0.0, 0.0] + [0.25, 0.25] * 99)
    xs, points, lows, highs = curve(seeds)
    assert xs == [128.0 * (i + 1) for i in range(100)]
    assert points == pytest.approx([0.25] * 100)
    assert lows == pytest.approx([0.25] * 100) and highs == pytest.approx([0.25] * 100)
    # With seed 1 changed to 0.75 after the first stretch, the first point is seed 0's alone.
    (seeds[1] / "metrics.csv").unlink()
    seeds[1].rmdir()
    write_metrics(seeds[1], [0, 0] + [1, 1] * 99, [0.0, 0.0] + [0.75, 0.75] * 99)
    xs, points, lows, highs = curve(seeds)
    assert points[0] == pytest.approx(0.25) and points[1] == pytest.approx(0.5)
    assert lows[1] == pytest.approx(0.25) and highs[1] == pytest.approx(0.75)


def test_self_imitation_doubles_the_grid_into_separate_directories(tmp_path):
    spec_path = write_spec(
        tmp_path, self_imitation=[False, True], overrides={**OVERRIDES, "sil.capacity": 512}
    )
    out = (tmp_path / "bench").resolve()
    configurations = plan(load_spec(spec_path), spec_path, out)
    by_name = {c.reward_name: c for c in configurations}
    assert sorted(by_name) == ["count", "count +sil", "none", "none +sil"]
    for name, configuration in by_name.items():
        assert configuration.config.sil.enabled == name.endswith("+sil")
        assert configuration.config.sil.capacity == 512  # sil.* overrides reach every run
        suffix = "-sil" if name.endswith("+sil") else ""
        assert configuration.out == out / TASK_DIR / (name.split()[0] + suffix)
    assert not out.exists()  # planning writes nothing
