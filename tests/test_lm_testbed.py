"""The testbed, the policies, the two commands and their bad input, and the mechanism itself:
GRPO with the verifier reward raises held-out accuracy, a random reward does not."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from autotelic.errors import UserError  # noqa: E402
from autotelic.lm.commands import add_commands  # noqa: E402
from autotelic.lm.grpo import GRPOConfig, train  # noqa: E402
from autotelic.lm.model import (  # noqa: E402
    TinyConfig,
    load_policy,
    save_policy,
    tiny_policy,
    transformers_available,
)
from autotelic.lm.testbed import (  # noqa: E402
    ArithmeticTasks,
    PretrainConfig,
    extract_answer,
    load_task_file,
    pretrain,
)
from autotelic.runs import read_metrics  # noqa: E402

torch.set_num_threads(1)


def run_command(argv: list[str]) -> int:
    """The commands as the CLI runs them: UserError -> one message and status 2."""
    parser = argparse.ArgumentParser(prog="autotelic")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as error:
        print(f"autotelic: error: {error}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------ testbed


def test_generated_tasks_keep_held_out_questions_out_of_training():
    tasks = ArithmeticTasks("add", 49)
    held = tasks.held_out(200)
    held_prompts = {t.prompt for t in held}
    assert len(held) == len(held_prompts) > 100
    trained = tasks.sample(5000, np.random.default_rng(0))
    assert not held_prompts & {t.prompt for t in trained}
    # a held-out question's rephrasing is held out too
    assert not held_prompts & {t.rephrase for t in trained}
    task = tasks.make((12, 7))
    assert (task.prompt, task.answer, task.rephrase, task.solution) == (
        "12+7=",
        "19",
        "7+12=",
        "19",
    )
    chain = ArithmeticTasks("chain", 9).make((3, 4, 5))
    assert (chain.prompt, chain.answer, chain.solution) == ("3+4+5=", "12", "7,12")


def test_answer_extraction():
    assert extract_answer("7,12") == "12"
    assert extract_answer("so 19") == "19"
    assert extract_answer("  yes ") == "yes"
    assert extract_answer("") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2 is not valid JSON"),
        ('["3+4=", "7"]', "line 2: expected an object"),
        ('{"prompt": "3+4="}', 'line 2: "answer" is missing'),
        ('{"prompt": 5, "answer": "7"}', 'line 2: "prompt" must be a non-empty string'),
        ('{"prompt": "3+4=", "answer": [7]}', 'line 2: "answer" must be a string or a number'),
        ('{"prompt": "3+4=", "answer": 7, "hint": 1}', "line 2: unknown field"),
        ('{"prompt": "3+4=", "answer": 7, "rephrase": ""}', 'line 2: "rephrase"'),
    ],
)
def test_malformed_task_file_rows_are_named(tmp_path: Path, line: str, message: str):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"prompt": "1+1=", "answer": 2}\n' + line + "\n")
    with pytest.raises(UserError, match=message):
        load_task_file(path)


def test_task_file_reads_rows(tmp_path: Path):
    path = tmp_path / "tasks.jsonl"
    path.write_text(
        '{"prompt": "1+1=", "answer": 2}\n\n{"prompt": "2+2=", "answer": "4", "rephrase": "2+2="}\n'
    )
    rows = load_task_file(path)
    assert [(r.prompt, r.answer, r.rephrase) for r in rows] == [
        ("1+1=", "2", None),
        ("2+2=", "4", "2+2="),
    ]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no rows"):
        load_task_file(tmp_path / "empty.jsonl")


# ------------------------------------------------------------------------------ policies


def test_left_padding_does_not_change_the_logits():
    torch.manual_seed(0)
    policy = tiny_policy()
    tok = policy.tokenizer
    prompts = [tok.encode("12+7="), tok.encode("3+4=")]
    completions = [tok.encode("19"), tok.encode("7,1")]
    batched, targets, mask = policy.completion_logits(prompts, completions)
    for i in range(2):
        alone, _, _ = policy.completion_logits([prompts[i]], [completions[i]])
        length = len(completions[i])
        assert torch.allclose(batched[i, :length], alone[0], atol=1e-5)
        assert mask[i].sum() == length and targets[i, :length].tolist() == completions[i]


def test_tiny_policy_round_trips(tmp_path: Path):
    torch.manual_seed(0)
    policy = tiny_policy(TinyConfig(vocab_size=tiny_policy().tokenizer.vocab_size, d_model=32))
    save_policy(policy, tmp_path / "m", {"testbed": {"kind": "add", "max_operand": 9}})
    loaded = load_policy(tmp_path / "m")
    ids = [policy.tokenizer.encode("1+2=")]
    first, _, _ = policy.completion_logits(ids, [[5, 6]])
    second, _, _ = loaded.completion_logits(ids, [[5, 6]])
    assert torch.equal(first, second)


def test_bad_model_paths(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_policy(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"\0")
    with pytest.raises(UserError, match="is not a model"):
        load_policy(tmp_path / "junk")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{")
    with pytest.raises(UserError, match="unreadable"):
        load_policy(tmp_path / "broken")


def test_bad_input_exits_2_with_one_message(tmp_path: Path, capsys):
    assert run_command(["lm-train", "--model", str(tmp_path / "nope"), "--reward", "verifier"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    model = tmp_path / "model"
    save_policy(tiny_policy(), model, {"testbed": {"kind": "add", "max_operand": 9}})
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"prompt": "1+1=", "answer": 2}\n{"prompt": "2+2="}\n')
    out = tmp_path / "run"
    status = run_command(
        [
            "lm-train",
            "--model",
            str(model),
            "--reward",
            "verifier",
            "--tasks",
            str(tasks),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert status == 2 and "line 2" in capsys.readouterr().err
    assert not out.exists()  # nothing written before the input was checked
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"prompt": "what is 1+1!", "answer": 2}\n')
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "1+" * 20 + "1=", "answer": 21}) + "\n")
    for argv, message in [
        (["--reward", "verifier", "--tasks", str(odd)], "the character '!'"),
        (["--reward", "verifier", "--tasks", str(long)], "exceeds the model's context of 32"),
        (["--reward", "nope"], "unknown reward"),
        (["--reward", "verifier", "--reward-weights", "1,2"], "2 weights for 1 rewards"),
        (["--reward", "majority", "--reward-option", "majority"], "NAME.KEY=VALUE"),
        (["--reward", "majority", "--reward-option", "verifier.x=1"], "not among the rewards"),
        (["--reward", "majority", "--loss", "ppo"], "unknown loss"),
        (["--reward", "majority", "--group-size", "1"], "at least 2"),
        (["--reward", "rlpr", "--tasks", str(tmp_path / "none.jsonl")], "cannot read task file"),
    ]:
        assert run_command(["lm-train", "--model", str(model), *argv, "--quiet"]) == 2
        assert message in capsys.readouterr().err
    assert run_command(["lm-pretrain", "--task", "mul", "--out", str(tmp_path / "p")]) == 2
    assert "unknown task kind" in capsys.readouterr().err


def test_commands_write_run_directories(tmp_path: Path, capsys):
    pre = tmp_path / "pre"
    argv = ["lm-pretrain", "--max-operand", "9", "--steps", "4", "--batch-size", "8"]
    assert (
        run_command([*argv, "--eval-every", "2", "--eval-size", "8", "--out", str(pre), "--quiet"])
        == 0
    )
    for name in ("config.yaml", "metrics.csv", "summary.json", "model.json", "model.pt"):
        assert (pre / name).exists(), name
    assert [int(r["update"]) for r in read_metrics(pre)] == [1, 2, 3, 4]
    assert run_command([*argv, "--out", str(pre), "--quiet"]) == 2  # not into a used directory
    assert "already holds an autotelic run" in capsys.readouterr().err

    run = tmp_path / "train"
    status = run_command(
        [
            "lm-train",
            "--model",
            str(pre),
            "--reward",
            "majority,self_certainty",
            "--reward-weights",
            "1,0.5",
            "--steps",
            "2",
            "--prompts",
            "2",
            "--group-size",
            "3",
            "--eval-every",
            "1",
            "--eval-size",
            "8",
            "--out",
            str(run),
            "--quiet",
        ]
    )
    assert status == 0
    rows = read_metrics(run)
    assert [int(r["update"]) for r in rows] == [1, 2]
    assert rows[-1]["env_steps"] == 2 * 2 * 3
    assert {"reward/majority", "reward/self_certainty", "sample_accuracy", "eval_accuracy"} <= set(
        rows[0]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rewards"] == ["majority", "self_certainty"] and summary["steps"] == 2
    assert "collapse_step" in summary and "peak_accuracy_step" in summary
    load_policy(run / "model")  # the trained policy can be trained on again
    assert "held-out accuracy" in capsys.readouterr().out


# ------------------------------------------------------------------------------ Hugging Face


def save_tiny_hf_model(directory: Path) -> None:
    """A randomly initialised two-layer GPT-2 with a character tokenizer, saved locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    characters = "0123456789+=,?"
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(characters)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()  # join characters back without spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>"
    )
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=32,
        n_embd=16,
        n_layer=2,
        n_head=2,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))


@pytest.mark.skipif(not transformers_available(), reason="transformers is not installed")
def test_hugging_face_causal_lm_from_a_local_path(tmp_path: Path):
    model_dir = tmp_path / "hf"
    save_tiny_hf_model(model_dir)
    policy = load_policy(model_dir)
    assert (
        policy.kind == "hf" and policy.tokenizer.decode(policy.tokenizer.encode("12+7=")) == "12+7="
    )
    tok = policy.tokenizer
    prompts, completions = (
        [tok.encode("12+7="), tok.encode("3=")],
        [tok.encode("19"), tok.encode("4,")],
    )
    batched, _, _ = policy.completion_logits(prompts, completions)
    for i in range(2):  # left padding and position ids line up with the unpadded run
        alone, _, _ = policy.completion_logits([prompts[i]], [completions[i]])
        assert torch.allclose(batched[i, : len(completions[i])], alone[0], atol=1e-5)
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        "\n".join(
            json.dumps({"prompt": f"{a}+{b}=", "answer": a + b}) for a in range(3) for b in range(3)
        )
    )
    summary = train(
        GRPOConfig(
            model=str(model_dir),
            rewards=("verifier", "self_certainty"),
            tasks=str(tasks),
            steps=2,
            prompts_per_step=2,
            group_size=2,
            max_new_tokens=3,
            eval_every=2,
            kl_beta=0.04,
            out=str(tmp_path / "run"),
        ),
        quiet=True,
    )
    assert summary["backend"] == "hf" and summary["steps"] == 2
    assert load_policy(tmp_path / "run" / "model").kind == "hf"


@pytest.mark.skipif(not transformers_available(), reason="transformers is not installed")
def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path: Path):
    from transformers import ViTConfig

    ViTConfig(
        hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
    ).save_pretrained(str(tmp_path / "vit"))
    with pytest.raises(UserError, match="not a causal language model"):
        load_policy(tmp_path / "vit")


# ------------------------------------------------------------------------------ the mechanism


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory) -> Path:
    """A tiny transformer pretrained briefly on a+b, a, b in 0..49 (about 40% held-out)."""
    out = tmp_path_factory.mktemp("lm") / "pretrained"
    pretrain(
        PretrainConfig(max_operand=49, steps=600, batch_size=64, eval_every=600, out=str(out)),
        quiet=True,
    )
    return out


@pytest.mark.slow
def test_verifier_reward_raises_accuracy_and_random_reward_does_not(
    pretrained: Path, tmp_path: Path
):
    results = {}
    for reward in ("verifier", "random"):
        results[reward] = train(
            GRPOConfig(
                model=str(pretrained),
                rewards=(reward,),
                steps=40,
                learning_rate=3e-4,
                eval_every=20,
                out=str(tmp_path / reward),
            ),
            quiet=True,
        )
    start = results["verifier"]["initial_accuracy"]
    assert results["random"]["initial_accuracy"] == start
    assert 0.2 < start < 0.7  # the pretrained model leaves room both ways
    assert results["verifier"]["final_accuracy"] >= start + 0.08
    assert results["random"]["final_accuracy"] <= start + 0.02
