"""Policies for GRPO: a tiny causal transformer defined here, and Hugging Face causal LMs loaded
from a local directory.

Both are wrapped by `LMPolicy`, which is all the trainer and the rewards see:

    logits(input_ids [N, L], attention_mask [N, L] bool, position_ids [N, L]) -> [N, L, V]
    sample(prompt_ids, max_new_tokens, temperature, generator) -> completion ids (EOS kept)
    completion_logits(prompt_ids, completion_ids) -> logits [N, T, V], targets [N, T], mask [N, T]
    score(prefix_ids, target_ids) -> per-token log-probabilities of each target   (no grad)
    greedy(prompts, max_new_tokens) -> texts                                       (no grad)

Sequences are packed as [left padding, prompt, completion, right padding]: every prompt ends at the
same column, so the logits that predict completion token j sit at column P - 1 + j for all rows.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..runs import atomic_write_bytes, atomic_write_text

TINY_FORMAT = "autotelic-tiny-lm"
TINY_FORMAT_VERSION = 1
# Everything the testbed writes, plus enough punctuation and letters for small task files.
DEFAULT_ALPHABET = "0123456789+-*/=,.?:;() abcdefghijklmnopqrstuvwxyz"

# What a backend can give a reward (see rewards.Reward.needs).
FULL_CAPABILITIES = frozenset({"logits", "score", "generate"})


# ------------------------------------------------------------------------------ tokenizers


class CharTokenizer:
    """One token per character; id 0 pads, id 1 ends a completion."""

    pad_id = 0
    eos_id = 1

    def __init__(self, alphabet: str = DEFAULT_ALPHABET) -> None:
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet has repeated characters")
        self.alphabet = alphabet
        self._ids = {c: i + 2 for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 2

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as missing:
            raise UserError(
                f"the text {text!r} has the character {missing.args[0]!r}, which the tiny model's "
                f"vocabulary lacks (it knows {self.alphabet!r}); rewrite the prompt or pretrain a "
                "model with that character."
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[i - 2] for i in ids if i >= 2)


class HFTokenizer:
    """A Hugging Face tokenizer seen through the same three calls as `CharTokenizer`."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if tokenizer.eos_token_id is None:
            raise UserError(
                "the model's tokenizer defines no end-of-sequence token; completions could not "
                "end. Set eos_token in the tokenizer config."
            )
        self.eos_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids if int(i) != self.eos_id]
        return self.tokenizer.decode(ids, skip_special_tokens=True)


# ------------------------------------------------------------------------------ tiny transformer


@dataclass(frozen=True)
class TinyConfig:
    vocab_size: int
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    max_len: int = 32
    mlp_ratio: int = 4


class _Block(nn.Module):
    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, config.mlp_ratio * d), nn.GELU(), nn.Linear(config.mlp_ratio * d, d)
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
        heads = [
            t.view(n, length, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v)
        ]
        attended = torch.nn.functional.scaled_dot_product_attention(*heads, attn_mask=attn_mask)
        x = x + self.proj(attended.transpose(1, 2).reshape(n, length, d))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """A pre-norm causal transformer small enough to train on two CPU cores (about 100k
    parameters at the defaults)."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_len, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        """input_ids, attention_mask (bool), position_ids: [N, L] -> logits [N, L, V]."""
        length = input_ids.shape[1]
        if length > self.config.max_len:
            raise UserError(
                f"a prompt plus completion of {length} tokens exceeds the tiny model's context of "
                f"{self.config.max_len}; shorten the prompts or --max-new-tokens."
            )
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        # a padded query attends to itself only, so no softmax row is empty (which gives NaN)
        mask = (causal & attention_mask[:, None, :]) | torch.eye(length, dtype=torch.bool)
        x = self.token(input_ids) + self.position(position_ids.clamp(0, self.config.max_len - 1))
        for block in self.blocks:
            x = block(x, mask[:, None])
        return self.head(self.norm(x))


class _HFModule(nn.Module):
    """A Hugging Face causal LM behind the tiny transformer's call signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask.long(), position_ids=position_ids
        )
        return out.logits


# ------------------------------------------------------------------------------ the policy


class LMPolicy:
    """A causal LM that GRPO can sample from, score with, and train."""

    capabilities = FULL_CAPABILITIES

    def __init__(self, module: nn.Module, tokenizer: Any, kind: str, source: str = "") -> None:
        self.module = module
        self.tokenizer = tokenizer
        self.kind = kind  # "tiny" or "hf"
        self.source = source

    def parameters(self) -> Any:
        return self.module.parameters()

    @property
    def context_length(self) -> int | None:
        """Longest prompt plus completion the model takes, when it has a limit."""
        if self.kind == "tiny":
            return int(self.module.config.max_len)
        config = self.module.model.config
        for name in ("max_position_embeddings", "n_positions"):
            if isinstance(getattr(config, name, None), int):
                return int(getattr(config, name))
        return None

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.module(input_ids, attention_mask, position_ids)

    # -- packing

    def _pack(
        self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """ids, mask, positions [N, P + T]; P = longest prompt, T = longest completion."""
        pad = self.tokenizer.pad_id
        prompt_len = max(len(p) for p in prompts)
        completion_len = max((len(c) for c in completions), default=0)
        rows, masks = [], []
        for prompt, completion in zip(prompts, completions, strict=True):
            left = prompt_len - len(prompt)
            right = completion_len - len(completion)
            rows.append([pad] * left + list(prompt) + list(completion) + [pad] * right)
            masks.append(
                [False] * left + [True] * (len(prompt) + len(completion)) + [False] * right
            )
        ids = torch.tensor(rows, dtype=torch.long)
        mask = torch.tensor(masks, dtype=torch.bool)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return ids, mask, positions, prompt_len, completion_len

    def completion_logits(
        self,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
        module: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits that predict each completion token: [N, T, V]; targets [N, T]; mask [N, T].
        `module`: another network with the same tokenizer (the frozen reference for the KL)."""
        ids, mask, positions, prompt_len, completion_len = self._pack(prompt_ids, completion_ids)
        if completion_len == 0:
            n = len(prompt_ids)
            vocab = self.tokenizer.vocab_size
            return torch.zeros(n, 0, vocab), torch.zeros(n, 0, dtype=torch.long), mask[:, :0]
        logits = (module or self.module)(ids, mask, positions)
        window = logits[:, prompt_len - 1 : prompt_len - 1 + completion_len]
        return window, ids[:, prompt_len:], mask[:, prompt_len:]

    # -- no-grad calls used by sampling, evaluation and the rewards

    @torch.no_grad()
    def sample(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """One completion per prompt; temperature 0 is greedy. A completion keeps its EOS."""
        n = len(prompt_ids)
        completions: list[list[int]] = [[] for _ in range(n)]
        done = torch.zeros(n, dtype=torch.bool)
        for _ in range(max_new_tokens):
            ids, mask, positions, _, _ = self._pack(prompt_ids, completions)
            next_logits = self.logits(ids, mask, positions)[:, -1].float()
            if temperature <= 0:
                tokens = next_logits.argmax(dim=-1)
            else:
                probs = torch.softmax(next_logits / temperature, dim=-1)
                tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            for row in range(n):
                if not done[row]:
                    token = int(tokens[row])
                    completions[row].append(token)
                    if token == self.tokenizer.eos_id:
                        done[row] = True
            if bool(done.all()):
                break
        return completions

    @torch.no_grad()
    def score(
        self, prefix_ids: Sequence[Sequence[int]], target_ids: Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """log pi(target_j | prefix, target_<j) for each row: a list of [len(target)] tensors."""
        logits, targets, _ = self.completion_logits(prefix_ids, target_ids)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]
        return [logp[i, : len(t)] for i, t in enumerate(target_ids)]

    @torch.no_grad()
    def greedy(self, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        encoded = [self.tokenizer.encode(p) for p in prompts]
        return [self.tokenizer.decode(c) for c in self.sample(encoded, max_new_tokens, 0.0)]


def count_parameters(policy: LMPolicy) -> int:
    return sum(p.numel() for p in policy.parameters())


# ------------------------------------------------------------------------------ build, save, load


def tiny_policy(config: TinyConfig | None = None, alphabet: str = DEFAULT_ALPHABET) -> LMPolicy:
    tokenizer = CharTokenizer(alphabet)
    config = config or TinyConfig(vocab_size=tokenizer.vocab_size)
    if config.vocab_size != tokenizer.vocab_size:
        raise ValueError("config.vocab_size does not match the alphabet")
    return LMPolicy(TinyTransformer(config), tokenizer, "tiny")


def save_policy(policy: LMPolicy, directory: Path, extra: dict[str, Any] | None = None) -> None:
    """Save a tiny policy (model.json + model.pt, each written atomically) or a Hugging Face one
    (`save_pretrained`, model and tokenizer)."""
    directory.mkdir(parents=True, exist_ok=True)
    if policy.kind == "hf":
        policy.module.model.save_pretrained(str(directory))
        policy.tokenizer.tokenizer.save_pretrained(str(directory))
        return
    buffer = io.BytesIO()
    torch.save(policy.module.state_dict(), buffer)
    atomic_write_bytes(directory / "model.pt", buffer.getvalue())
    meta = {
        "format": TINY_FORMAT,
        "format_version": TINY_FORMAT_VERSION,
        "config": asdict(policy.module.config),
        "alphabet": policy.tokenizer.alphabet,
        **(extra or {}),
    }
    atomic_write_text(directory / "model.json", json.dumps(meta, indent=2))


def read_tiny_meta(directory: Path) -> dict[str, Any]:
    try:
        meta = json.loads((directory / "model.json").read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{str(directory)!r}: model.json is unreadable ({error}).") from None
    if meta.get("format") != TINY_FORMAT:
        raise UserError(f"{str(directory)!r}: model.json is not an autotelic tiny model.")
    return meta


def load_policy(path: str | Path) -> LMPolicy:
    """A policy from `autotelic lm-pretrain` output or a local Hugging Face causal LM directory.

    Raises UserError when the path is missing, is not a model, or is not a causal LM.
    """
    directory = Path(path)
    if not directory.exists():
        raise UserError(
            f"model path {str(directory)!r} does not exist. Pass the --out directory of "
            "`autotelic lm-pretrain`, or a local Hugging Face model directory."
        )
    if directory.is_dir() and (directory / "model.json").exists():
        meta = read_tiny_meta(directory)
        try:
            config = TinyConfig(**meta["config"])
            policy = tiny_policy(config, meta["alphabet"])
            state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
            policy.module.load_state_dict(state)
        except (OSError, KeyError, TypeError, RuntimeError, ValueError) as error:
            raise UserError(f"{str(directory)!r}: the tiny model is damaged ({error}).") from None
        policy.source = str(directory)
        return policy
    if directory.is_dir() and (directory / "config.json").exists():
        return _load_hf(directory)
    raise UserError(
        f"{str(directory)!r} is not a model: expected a directory with model.json (from "
        "`autotelic lm-pretrain`) or config.json (a Hugging Face causal LM saved locally)."
    )


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _load_hf(directory: Path) -> LMPolicy:
    if not transformers_available():
        raise UserError(
            f"{str(directory)!r} is a Hugging Face model, and loading it needs the `transformers` "
            "package: pip install 'autotelic[lm]'."
        )
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except Exception as error:  # the library raises several kinds for a bad config
        raise UserError(
            f"{str(directory)!r}: config.json is not a model config ({error})."
        ) from None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    except ValueError:
        raise UserError(
            f"{str(directory)!r} holds a {type(config).__name__} ({config.model_type!r}), which is "
            "not a causal language model; GRPO needs a model that generates text left to right "
            "(one AutoModelForCausalLM can load)."
        ) from None
    except OSError as error:
        raise UserError(
            f"{str(directory)!r}: the model weights are unreadable ({error})."
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as error:
        raise UserError(
            f"{str(directory)!r} has no usable tokenizer ({error}); save the tokenizer next to "
            "the model with tokenizer.save_pretrained."
        ) from None
    model.eval()  # no dropout: sampling and the loss must see the same policy
    return LMPolicy(_HFModule(model), HFTokenizer(tokenizer), "hf", str(directory))
