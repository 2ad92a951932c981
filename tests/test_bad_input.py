"""Every kind of bad input: one clear message, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import pytest

from autotelic.cli import main

QUICK = ["--steps", "256", "--num-envs", "8", "--quiet", "ppo.num_steps=32", "network.kind=mlp"]


def check_rejected(capsys, args: list[str], *needles: str) -> str:
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err
    assert captured.err.count("error:") == 1, captured.err
    for needle in needles:
        assert needle in captured.err, captured.err
    return captured.err


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--env", "navix:Navix-DoorKey-8x8-v1"], ["Navix-DoorKey-8x8-v0"]),
        (["--env", "Navix-DoorKey-8x8-v0"], ["navix:Navix-DoorKey-8x8-v0"]),
        (["--env", "nvx:Navix-DoorKey-8x8-v0"], ["namespace", "navix"]),
        (["--reward", "rndd"], ["reward source", "rndd"]),
        (["ppo.learnin_rate=3e-4"], ["ppo.learnin_rate", "learning_rate"]),
        (["ppo.learning_rate=-1"], ["ppo.learning_rate", "positive"]),
        (["ppo.learning_rate=fast"], ["ppo.learning_rate", "number"]),
        (["ppo.num_minibatches=3"], ["divisible", "ppo.num_minibatches"]),
        (["ppo.gae_lambda=1.5"], ["gae_lambda"]),
        (["extrinsic.gamma=2"], ["extrinsic.gamma"]),
        (["network.kind=transformer"], ["network.kind", "cnn"]),
        (["--steps", "0"], ["steps"]),
        (["--seeds", "0,x"], ["--seeds"]),
        (["--seed", "1", "--seeds", "1,2"], ["--seed or --seeds"]),
        (["--seeds", "1,1"], ["seeds repeat"]),
        (["ppo_learning_rate"], ["key=value"]),
        (["env_options.semantics=minigridd"], ["semantics", "minigrid"]),
        (["env_options.observationn=symbolic"], ["observationn"]),
        (["sources.rnd.coef=2"], ["rnd", "--reward rnd"]),
    ],
)
def test_bad_train_options_exit_2_before_writing(capsys, tmp_path, args, needles):
    out = tmp_path / "run"
    check_rejected(capsys, ["train", *QUICK, "--out", str(out), *args], *needles)
    assert not out.exists()


def test_missing_and_malformed_config_files(capsys, tmp_path):
    out = tmp_path / "run"
    check_rejected(capsys, ["train", "--config", str(tmp_path / "nope.yaml"), "--out", str(out)],
                   "does not exist")  # fmt: skip
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo: {num_envs: [1, 2\n")
    check_rejected(capsys, ["train", "--config", str(bad), "--out", str(out)], "not valid YAML")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    check_rejected(capsys, ["train", "--config", str(listing), "--out", str(out)], "mapping")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("ppo:\n  num_envs: many\n")
    check_rejected(capsys, ["train", "--config", str(wrong), "--out", str(out)],
                   "ppo.num_envs", "integer")  # fmt: skip
    assert not out.exists()


def test_output_directory_problems(capsys, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    check_rejected(capsys, ["train", *QUICK, "--out", str(a_file)], "not a directory")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    check_rejected(capsys, ["train", *QUICK, "--out", str(stranger)], "not empty")
    assert sorted(p.name for p in stranger.iterdir()) == ["notes.txt"]
    check_rejected(capsys, ["train", *QUICK, "--out", "/proc/autotelic-run"], "/proc")


def test_directory_holding_a_different_run_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--env", "navix:Navix-Empty-5x5-v0", "--out", str(out)]) == 0
    capsys.readouterr()
    before = sorted(str(p) for p in out.rglob("*"))
    check_rejected(capsys, ["train", *QUICK, "--env", "navix:Navix-Empty-6x6-v0",
                            "--out", str(out)], "different run", "--resume")  # fmt: skip
    check_rejected(capsys, ["train", *QUICK, "--env", "navix:Navix-Empty-5x5-v0",
                            "--out", str(out)], "already holds this run")  # fmt: skip
    assert sorted(str(p) for p in out.rglob("*")) == before


def test_resume_problems(capsys, tmp_path):
    check_rejected(capsys, ["train", "--resume", str(tmp_path / "missing")], "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    check_rejected(capsys, ["train", "--resume", str(empty)], "no autotelic run")
    check_rejected(capsys, ["train", "--resume", str(empty), "--steps", "10"], "--steps")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text("env: [unclosed\n")
    check_rejected(capsys, ["train", "--resume", str(broken)], "not valid YAML")


def test_incompatible_checkpoint_is_refused(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--env", "navix:Navix-Empty-5x5-v0", "--out", str(out)]) == 0
    capsys.readouterr()
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("hidden: 64", "hidden: 32"))
    (out / "summary.json").unlink()
    text = (out / "metrics.csv").read_text()
    check_rejected(capsys, ["train", "--resume", str(out)], "does not match")
    assert (out / "metrics.csv").read_text() == text


def test_unknown_command_and_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--stepz", "5"])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_envs_lists_every_namespace(capsys):
    assert main(["envs"]) == 0
    out = capsys.readouterr().out
    for expected in ("navix:Navix-DoorKey-8x8-v0", "xminigrid:MiniGrid-DoorKey-8x8",
                     "gymnax:CartPole-v1", "semantics=navix"):  # fmt: skip
        assert expected in out
