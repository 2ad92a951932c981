"""`autotelic explain` and `autotelic report` end to end on a tiny trained run: attributions that
add up, the HTML report opened in a real headless Chromium (no console errors, every plot drawn),
and bad input (exit status 2, one message, nothing written).

One run of two seeds is trained per module (navix Empty-5x5 with the count bonus, 2,048 env steps).
The commands are called through an argparse parser built with `add_commands`, with the same
handling of `UserError` as `autotelic.cli.main`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _browser import PLOT_SIZES, DevTools, chromium_binary
from _browser import check_plots as _check_plots
from _browser import open_page as _open

from autotelic.errors import UserError
from autotelic.explain import evaluate
from autotelic.explain.commands import add_commands

EXPECTED_PLOTS = {
    "learning-curves",
    "intrinsic-rewards",
    "credit-over-training",
    "visitation",
    "dominance-map",
    "episode-credit",
    "observation-shapley",
    "episode-frame",
    "saliency-occlusion",
    "saliency-gradient",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        print(f"autotelic: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def run_command(*argv: str) -> int:
    """Parse and run like `autotelic.cli.main`: a UserError is one line and status 2."""
    parser = _Parser(prog="autotelic")
    add_commands(parser.add_subparsers(dest="command", required=True, parser_class=_Parser))
    try:
        args = parser.parse_args(list(argv))
        return args.func(args)
    except UserError as error:
        print(f"autotelic: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as stop:
        return int(stop.code)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from autotelic.config import build
    from autotelic.train import train

    out = tmp_path_factory.mktemp("explain") / "run"
    config = build(
        {
            "env": "navix:Navix-Empty-5x5-v0",
            "rewards": ["count"],
            "seeds": [0, 1],
            "steps": 2048,
            "ppo": {"num_envs": 4, "num_steps": 16, "update_epochs": 1, "num_minibatches": 2},
            "network": {"kind": "mlp", "hidden": 16},
            "out": str(out),
        }
    )
    train(config, out, quiet=True)
    return out


@pytest.fixture(scope="module")
def explained(trained: Path) -> Path:
    assert run_command("explain", str(trained), "--episodes", "2", "--no-report") == 0
    return trained


def test_explanations_add_up(explained: Path) -> None:
    for seed in (0, 1):
        directory = explained / f"seed_{seed}" / "explain"
        summary = json.loads((directory / "summary.json").read_text())
        coefs = np.asarray(summary["heads"]["coefs"])
        assert summary["heads"]["names"] == ["extrinsic", "count"]
        assert len(summary["episodes"]) == 2  # --episodes 2; every env ends one within the limit
        for meta in summary["episodes"]:
            arrays = np.load(directory / meta["file"])
            steps = meta["explained_steps"]
            shares, total = arrays["advantage_shares"], arrays["advantage_total"]
            assert shares.shape == (steps, 2)
            assert np.array_equal(shares.sum(-1), total)
            np.testing.assert_allclose(shares, arrays["advantages"] * coefs, atol=1e-12)
            assert np.array_equal(arrays["value_shares"].sum(-1), arrays["value_total"])
            np.testing.assert_allclose(arrays["source_shapley"], shares, atol=1e-12)
            assert meta["max_credit_gap"] == 0.0
            # observation Shapley values: efficient, and v(N) is pi(chosen action)
            chosen = arrays["probs"][np.arange(steps), arrays["action"]]
            np.testing.assert_allclose(arrays["obs_shapley_full"], chosen, atol=1e-5)
            efficiency = arrays["obs_shapley"].sum(-1)
            gap = arrays["obs_shapley_full"] - arrays["obs_shapley_empty"]
            np.testing.assert_allclose(efficiency, gap, atol=1e-6)
            assert arrays["saliency_occlusion"].shape == (steps, 5, 5)
            assert arrays["saliency_gradient"].shape == (steps, 5, 5)
            frames = arrays["frames"]
            assert frames.shape[1:] == (80, 80, 3) and frames.dtype == np.uint8
            assert len(frames) == steps + (1 if meta["complete"] and not meta["cut"] else 0)
            assert (directory / meta["file"].replace(".npz", "_credit.csv")).exists()
        visits = np.asarray(summary["visitation"]["counts"])
        assert visits.shape == (5, 5)
        assert visits.sum() == summary["recorded_steps"] * summary["num_envs"]
        assert visits[0].sum() == 0  # the top row is wall
        by_head = np.asarray(summary["visitation"]["dominant_counts"])
        assert np.array_equal(by_head.sum(0), visits)


def test_sampled_shapley_over_grid_cells(explained: Path, tmp_path: Path) -> None:
    copy = tmp_path / "seed_0"
    shutil.copytree(explained / "seed_0", copy, ignore=shutil.ignore_patterns("explain"))
    # An odd number of orderings: plain permutation sampling. (With an even number the orderings
    # come in antithetic pairs, which are exact here: the visited states differ from each other
    # only in the agent's two cells, so the game has no interactions of three or more cells.)
    argv = ["explain", str(copy), "--players", "cells", "--shapley-samples", "7"]
    assert run_command(*argv, "--episodes", "1", "--max-steps", "4", "--no-report") == 0
    summary = json.loads((copy / "explain" / "summary.json").read_text())
    assert summary["observation_shapley"]["method"] == "permutation"
    assert len(summary["observation_shapley"]["player_names"]) == 25
    arrays = np.load(copy / "explain" / "episode_0.npz")
    assert arrays["obs_shapley"].shape == (4, 25)
    gap = arrays["obs_shapley_full"] - arrays["obs_shapley_empty"]
    np.testing.assert_allclose(arrays["obs_shapley"].sum(-1), gap, atol=1e-6)
    assert np.all(arrays["obs_shapley_ci_low"] <= arrays["obs_shapley_ci_high"])
    # the border walls are the same in every visited state, so filling them from the background
    # changes nothing: null players, whose value is 0 in every sampled ordering
    walls = np.ones((5, 5), bool)
    walls[1:4, 1:4] = False
    np.testing.assert_allclose(arrays["obs_shapley"][:, walls.reshape(-1)], 0.0, atol=1e-6)
    np.testing.assert_allclose(arrays["obs_shapley_se"][:, walls.reshape(-1)], 0.0, atol=1e-6)
    assert np.any(arrays["obs_shapley_se"] > 0)


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def _bad_inputs(root: Path, trained: Path) -> dict[str, tuple[list[str], Path]]:
    """name -> (argv, directory that must stay unchanged)."""
    empty = root / "empty"
    empty.mkdir()
    config_only = root / "config-only"
    config_only.mkdir()
    shutil.copy(trained / "seed_0" / "config.yaml", config_only / "config.yaml")
    newer = root / "newer"
    shutil.copytree(trained / "seed_0", newer, ignore=shutil.ignore_patterns("explain", "tb"))
    with open(newer / "config.yaml", "a") as handle:
        handle.write("option_from_a_later_version: 1\n")
    cells = root / "cells"
    shutil.copytree(trained / "seed_0", cells, ignore=shutil.ignore_patterns("explain", "tb"))
    no_metrics = root / "no-metrics"
    no_metrics.mkdir()
    shutil.copy(trained / "seed_0" / "config.yaml", no_metrics / "config.yaml")
    missing = root / "missing"
    return {
        "explain-missing": (["explain", str(missing)], root),
        "report-missing": (["report", str(missing)], root),
        "explain-no-config": (["explain", str(empty)], empty),
        "report-no-config": (["report", str(empty)], empty),
        "explain-no-checkpoint": (["explain", str(config_only)], config_only),
        "explain-incompatible-config": (["explain", str(newer)], newer),
        "report-no-metrics": (["report", str(no_metrics)], no_metrics),
        "explain-too-many-players": (["explain", str(cells), "--players", "cells"], cells),
        "explain-unknown-seed": (["explain", str(trained), "--seed", "7"], trained),
        "explain-bad-episodes": (["explain", str(cells), "--episodes", "0"], cells),
    }


def test_bad_input_exits_2_with_one_message_and_writes_nothing(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, (argv, watched) in _bad_inputs(tmp_path, trained).items():
        before = _tree(watched)
        capsys.readouterr()
        code = run_command(*argv)
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert code == 2, (name, captured.err)
        assert len(lines) == 1 and lines[0].startswith("autotelic: error: "), (name, lines)
        assert "Traceback" not in captured.err + captured.out, name
        assert _tree(watched) == before, f"{name} wrote files"
        if name == "explain-too-many-players":
            assert "--shapley-samples" in captured.err


def test_find_episodes_takes_whole_episodes_only() -> None:
    starts = np.array([[1, 1], [0, 0], [1, 0], [0, 1], [0, 0]], bool)
    done = np.array([[0, 0], [1, 0], [0, 1], [0, 0], [1, 0]], bool)
    found = evaluate.find_episodes(starts, done)
    # env 1's second episode (from step 3) never ends in the recording: left out
    assert [(s.env, s.start, s.end) for s in found] == [(0, 0, 1), (1, 0, 2), (0, 2, 4)]


# ------------------------------------------------------------------------------------ browser


def _bench_dir(root: Path, trained: Path) -> Path:
    """A bench output directory as `autotelic bench` writes it, holding the trained group as its
    one finished configuration, plus a failed configuration without runs."""
    from matplotlib.figure import Figure

    bench = root / "bench"
    group = bench / "navix__Navix-Empty-5x5-v0" / "count"
    shutil.copytree(trained, group, ignore=shutil.ignore_patterns("tb", "feedback", "*.html"))
    figure = Figure(figsize=(4, 3))
    figure.add_subplot().plot([0, 1], [0, 1])
    figure.savefig(bench / "curves_navix__Navix-Empty-5x5-v0.png", format="png")
    interval = {"iqm": 0.5, "low": 0.2, "high": 0.8, "seeds": 2}
    results = {
        "name": "tiny",
        "steps": 2048,
        "seeds": [0, 1],
        "notes": "IQM over seeds.",
        "curves": ["curves_navix__Navix-Empty-5x5-v0.png"],
        "configurations": [
            {"task": "navix:Navix-Empty-5x5-v0", "rewards": "count", "status": "trained",
             "dir": "navix__Navix-Empty-5x5-v0/count", "final_return": interval,
             "success_rate": interval},
            {"task": "navix:Navix-Empty-5x5-v0", "rewards": "rnd", "status": "failed",
             "dir": "navix__Navix-Empty-5x5-v0/rnd", "final_return": {"iqm": None},
             "success_rate": {"iqm": None}},
        ],
    }  # fmt: skip
    (bench / "results.json").write_text(json.dumps(results))
    return bench


def test_report_opens_in_headless_chromium_with_every_plot(explained: Path, tmp_path: Path) -> None:
    binary = chromium_binary()
    page = explained / "report.html"
    assert run_command("report", str(explained / "seed_1")) == 0
    single = (explained / "seed_1" / "report.html").read_text()
    assert 'data-plot="episode-frame"' in single
    assert 'data-section="feedback"' not in single
    feedback = explained / "feedback"
    feedback.mkdir()
    captions = [
        {"caption": "You open the <door>", "label": 1, "count": 12},
        {"caption": "You bump into a wall", "label": 0, "count": 7},
    ]
    (feedback / "top_captions.json").write_text(json.dumps(captions))
    assert run_command("report", str(explained)) == 0
    text = page.read_text()
    assert 'data-section="feedback"' in text and "You open the &lt;door&gt;" in text
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    bench = _bench_dir(tmp_path, explained)
    assert run_command("report", str(bench)) == 0
    assert (bench / "navix__Navix-Empty-5x5-v0" / "count" / "report.html").exists()

    browser = DevTools(binary)
    try:
        session = _open(browser, page)
        plots = json.loads(browser.evaluate(session, PLOT_SIZES))
        browser.evaluate(
            session,
            "document.querySelector('#viewer-seed0 button.next').click();"
            "document.querySelector('#viewer-seed0 button.next').click();"
            "var s = document.querySelector('#viewer-seed1 select.episode');"
            "s.value = String(s.options.length - 1); s.dispatchEvent(new Event('change'));"
            "document.querySelector('#viewer-seed1 button.play').click(); true",
        )
        time.sleep(0.8)  # let the player advance a few frames
        browser.evaluate(session, "document.querySelector('#viewer-seed1 button.play').click()")
        frame = browser.evaluate(session, "document.getElementById('frame-seed0').src")
        label = browser.evaluate(
            session, "document.querySelector('#viewer-seed0 .step-label').textContent"
        )
        rows = browser.evaluate(
            session, "document.querySelectorAll('#viewer-seed0 tbody.attributions tr').length"
        )
        bench_session = _open(browser, bench / "report.html")
        bench_plots = json.loads(browser.evaluate(bench_session, PLOT_SIZES))
        links = browser.evaluate(bench_session, "document.querySelectorAll('a').length")
        problems = browser.problems()
    finally:
        browser.close()

    assert not problems, problems
    _check_plots(plots, EXPECTED_PLOTS)
    _check_plots(bench_plots, {"bench-curves"})
    assert label.startswith("step 2 /")
    assert frame.startswith("data:image/png;base64,")
    assert rows > 10
    assert links == 1  # the finished configuration's report; the failed one has none
