"""`autotelic report` on language-model runs: a tiny lm-pretrain and lm-train run get their own
pages (written at the end of each command and rewritten by `autotelic report`), which open in a
real headless Chromium without console errors and with every plot drawn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from _browser import PLOT_SIZES, DevTools, check_plots, chromium_binary, open_page

pytest.importorskip("torch")

from autotelic import cli
from autotelic.explain import report

LM_TRAIN_PLOTS = {"lm-rewards", "lm-accuracy", "lm-policy"}
PRETRAIN = ["--max-operand", "9", "--steps", "4", "--batch-size", "8", "--eval-every", "2"]
TRAIN = ["--reward", "majority,self_certainty", "--steps", "3", "--prompts", "2"]
TRAIN += ["--group-size", "3", "--eval-every", "1", "--eval-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lm-report")
    pre, run = root / "pre", root / "train"
    argv = ["lm-pretrain", *PRETRAIN, "--eval-size", "8", "--out", str(pre), "--quiet"]
    assert cli.main(argv) == 0
    assert cli.main(["lm-train", "--model", str(pre), *TRAIN, "--out", str(run)]) == 0
    return pre, run


def test_lm_runs_are_marked_and_reported_at_the_end(runs: tuple[Path, Path], tmp_path: Path):
    pre, run = runs
    for directory, command in ((pre, "lm-pretrain"), (run, "lm-train")):
        config = yaml.safe_load((directory / "config.yaml").read_text())
        assert (config["kind"], config["command"]) == ("lm", command)
        assert (directory / "report.html").exists()  # written by the command itself
        assert report.lm_run_kind(directory) == command
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 2, 3}
    assert {"prompt", "answer", "completion", "reward"} <= set(samples[0])

    # a directory written before the marker existed is still recognized by its fields
    old = tmp_path / "old"
    shutil.copytree(run, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["kind"], config["command"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    (old / "summary.json").unlink()
    assert report.lm_run_kind(old) == "lm-train"
    assert "No summary.json yet" in report.build_report(old)


def test_report_failure_is_only_a_warning(runs, tmp_path, monkeypatch, capsys):
    def broken(run_dir: Path) -> Path:
        raise RuntimeError("no figures today")

    monkeypatch.setattr(report, "write_report", broken)
    out = tmp_path / "again"
    assert cli.main(["lm-train", "--model", str(runs[0]), *TRAIN, "--out", str(out)]) == 0
    assert "warning: no report.html written (no figures today)" in capsys.readouterr().err
    assert (out / "summary.json").exists() and not (out / "report.html").exists()


def test_lm_reports_open_in_headless_chromium_with_every_plot(runs: tuple[Path, Path]):
    binary = chromium_binary()
    pre, run = runs
    for directory in runs:
        (directory / "report.html").unlink()
        assert cli.main(["report", str(directory)]) == 0
        assert (directory / "report.html").exists()
    text = (run / "report.html").read_text()
    assert "Collapse monitor" in text and "peaked at step" in text
    assert 'data-section="samples"' in text and 'data-table="summary"' in text
    assert "http://" not in text and "https://" not in text  # nothing to fetch

    browser = DevTools(binary)
    try:
        train_plots = json.loads(
            browser.evaluate(open_page(browser, run / "report.html"), PLOT_SIZES)
        )
        pre_plots = json.loads(
            browser.evaluate(open_page(browser, pre / "report.html"), PLOT_SIZES)
        )
        problems = browser.problems()
    finally:
        browser.close()
    assert not problems, problems
    check_plots(train_plots, LM_TRAIN_PLOTS)
    check_plots(pre_plots, {"lm-pretrain-curves"})
