"""Run configuration: frozen dataclasses, read from YAML and `key=value` overrides, validated with
errors that say what is wrong and how to fix it.

A config is plain data. `to_dict` / `from_dict` round-trip it, which is how `config.yaml` in a run
directory is written and read back for `--resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError, close_matches
from .feedback.settings import FeedbackSettings


@dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters (clipped surrogate, GAE).

    Defaults: the usual MiniGrid PPO settings (4 epochs x 4 minibatches, clip 0.2, entropy 0.01,
    GAE lambda 0.95) with a learning rate of 1e-3 annealed to 0, which learned navix DoorKey-5x5
    in about 200k env steps here (2.5e-4 needed several times more).
    """

    num_envs: int = 32
    num_steps: int = 64  # rollout length per env and update
    update_epochs: int = 4
    num_minibatches: int = 4
    learning_rate: float = 1e-3
    anneal_lr: bool = True
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    clip_value: bool = True
    normalize_advantage: bool = True


@dataclass(frozen=True)
class NetworkConfig:
    """Policy/value network.

    kind:     cnn (MiniGrid-style conv), mlp, gru (the cnn/mlp encoder feeding a GRU core), or
              nethack (glyph embedding + conv and blstats MLP, for gym:NetHack*/MiniHack* envs)
    encoding: how integer grid codes enter the net: "raw" (the codes as numbers, as MiniGrid's
              reference CNN reads them; cheapest) or "one_hot" (one channel per code value)
    """

    kind: str = "cnn"
    encoding: str = "raw"
    hidden: int = 64
    gru_hidden: int = 128


@dataclass(frozen=True)
class ExtrinsicConfig:
    """The environment's reward: always value head 0, episodic."""

    coef: float = 1.0
    gamma: float = 0.99


@dataclass(frozen=True)
class SILConfig:
    """Self-imitation learning (`--self-imitation`; see `autotelic.sil` for the paper and each
    deviation). Defaults: the paper's released code, except the buffer, which keeps the best
    episodes."""

    enabled: bool = False
    capacity: int = 16384  # transitions kept, those of the highest-return episodes
    window: int = 256  # steps per env kept until their episode ends
    min_return: float = 0.0  # store only episodes whose extrinsic return exceeds this
    updates: int = 4  # SIL gradient steps per PPO update
    batch_size: int = 512
    value_coef: float = 0.01  # beta_sil
    ent_coef: float = 0.01
    clip_advantage: float = 1.0
    clip_nlogp: float = 5.0
    min_batch: float = 64.0  # losses are divided by max(#samples with R > V, min_batch)
    alpha: float = 0.6  # priority exponent
    beta: float = 1.0  # importance-weight exponent
    # `shared`: SIL steps go through PPO's Adam, moments and schedule, as the paper's released
    # code; `own`: an Adam of their own (see `autotelic.sil`).
    optimizer: str = "shared"
    loss_weight: float = 0.1  # the SIL loss's scale (released code: 0.1 with PPO, 1.0 with A2C)


# The `feedback:` section is the feedback pipeline's own settings class (one definition; its
# docstring documents each field).
FeedbackConfig = FeedbackSettings


@dataclass(frozen=True)
class Config:
    env: str = "navix:Navix-DoorKey-5x5-v0"
    env_options: dict[str, Any] = field(default_factory=dict)
    steps: int = 200_000
    seeds: tuple[int, ...] = (0,)
    rewards: tuple[str, ...] = ()
    # Per-source settings, keyed by source name: coef, gamma, episodic, normalize and the
    # source's own parameters. Missing keys take the source's defaults.
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    extrinsic: ExtrinsicConfig = field(default_factory=ExtrinsicConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    sil: SILConfig = field(default_factory=SILConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    checkpoint_every: int = 10  # updates between checkpoints
    # Local devices the seeds are spread over, each device training its share vmapped (see
    # `autotelic.train.seed_devices`): 0 = as many as divide the number of seeds (on a CPU, one
    # per seed, as threads); 1 = every seed on one device.
    devices: int = 0
    out: str = ""

    @property
    def batch_size(self) -> int:
        return self.ppo.num_envs * self.ppo.num_steps

    @property
    def num_updates(self) -> int:
        return max(1, math.ceil(self.steps / self.batch_size))


NETWORK_KINDS = ("cnn", "mlp", "gru", "nethack")
ENCODINGS = ("raw", "one_hot")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def validate(config: Config) -> Config:
    """Range and consistency checks that need no environment. Returns the config unchanged."""
    ppo = config.ppo
    _check(config.steps >= 1, f"steps must be >= 1, got {config.steps}.")
    _check(len(config.seeds) >= 1, "seeds must list at least one seed, e.g. --seeds 0,1,2.")
    _check(len(set(config.seeds)) == len(config.seeds), f"seeds repeat: {list(config.seeds)}.")
    _check(all(s >= 0 for s in config.seeds), f"seeds must be >= 0, got {list(config.seeds)}.")
    _check(ppo.num_envs >= 1, f"ppo.num_envs must be >= 1, got {ppo.num_envs}.")
    _check(ppo.num_steps >= 1, f"ppo.num_steps must be >= 1, got {ppo.num_steps}.")
    _check(ppo.update_epochs >= 1, f"ppo.update_epochs must be >= 1, got {ppo.update_epochs}.")
    _check(
        ppo.num_minibatches >= 1, f"ppo.num_minibatches must be >= 1, got {ppo.num_minibatches}."
    )
    _check(
        ppo.learning_rate > 0 and math.isfinite(ppo.learning_rate),
        f"ppo.learning_rate must be a positive number, got {ppo.learning_rate}.",
    )
    _check(0 <= ppo.gae_lambda <= 1, f"ppo.gae_lambda must be in [0, 1], got {ppo.gae_lambda}.")
    _check(ppo.clip_eps > 0, f"ppo.clip_eps must be > 0, got {ppo.clip_eps}.")
    _check(ppo.ent_coef >= 0, f"ppo.ent_coef must be >= 0, got {ppo.ent_coef}.")
    _check(ppo.vf_coef >= 0, f"ppo.vf_coef must be >= 0, got {ppo.vf_coef}.")
    _check(ppo.max_grad_norm > 0, f"ppo.max_grad_norm must be > 0, got {ppo.max_grad_norm}.")
    _check(
        0 <= config.extrinsic.gamma <= 1,
        f"extrinsic.gamma must be in [0, 1], got {config.extrinsic.gamma}.",
    )
    _check(
        config.network.kind in NETWORK_KINDS,
        f"network.kind must be one of {', '.join(NETWORK_KINDS)}, got {config.network.kind!r}.",
    )
    _check(
        config.network.encoding in ENCODINGS,
        f"network.encoding must be one of {', '.join(ENCODINGS)}, got {config.network.encoding!r}.",
    )
    _check(config.network.hidden >= 1, "network.hidden must be >= 1.")
    _check(config.network.gru_hidden >= 1, "network.gru_hidden must be >= 1.")
    _check(
        config.checkpoint_every >= 1,
        f"checkpoint_every must be >= 1 update, got {config.checkpoint_every}.",
    )
    _check(
        config.devices >= 0,
        f"devices must be >= 0 (0: as many as divide the seeds), got {config.devices}.",
    )
    _check(
        config.devices == 0 or len(config.seeds) % config.devices == 0,
        f"devices={config.devices} does not divide the {len(config.seeds)} seeds; each device "
        "trains the same number of seeds. Choose a divisor, or 0 to pick one.",
    )
    if config.network.kind == "gru":
        _check(
            ppo.num_envs % ppo.num_minibatches == 0,
            f"with network.kind=gru minibatches split the envs: ppo.num_envs ({ppo.num_envs}) "
            f"must be divisible by ppo.num_minibatches ({ppo.num_minibatches}).",
        )
    else:
        _check(
            config.batch_size % ppo.num_minibatches == 0,
            f"the batch ppo.num_envs * ppo.num_steps = {config.batch_size} must be divisible by "
            f"ppo.num_minibatches ({ppo.num_minibatches}); change one of them.",
        )
    sil = config.sil
    if sil.enabled:
        _check(
            config.network.kind != "gru",
            "self-imitation replays single transitions and needs a feed-forward policy: "
            "use network.kind=cnn or mlp, or drop --self-imitation.",
        )
        for name in ("capacity", "window", "updates", "batch_size"):
            _check(getattr(sil, name) >= 1, f"sil.{name} must be >= 1, got {getattr(sil, name)}.")
        for name in ("value_coef", "ent_coef", "alpha", "beta"):
            _check(getattr(sil, name) >= 0, f"sil.{name} must be >= 0, got {getattr(sil, name)}.")
        _check(
            sil.optimizer in ("own", "shared"),
            f"sil.optimizer must be 'own' or 'shared', got {sil.optimizer!r}.",
        )
        for name in ("clip_advantage", "clip_nlogp", "min_batch", "loss_weight"):
            _check(getattr(sil, name) > 0, f"sil.{name} must be > 0, got {getattr(sil, name)}.")
    _check(len(set(config.rewards)) == len(config.rewards), f"rewards repeat: {config.rewards}.")
    for name in config.sources:
        _check(
            name in config.rewards,
            f"sources.{name} configures a reward source that is not in use "
            f"(rewards: {', '.join(config.rewards) or 'none'}); add it with --reward {name}.",
        )
    return config


# ----------------------------------------------------------------------------- dict round trip


def to_dict(config: Any) -> Any:
    """Plain YAML-safe data for a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """`value` converted to `annotation`, or a UserError naming `path`."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise UserError(f"{path} must be a mapping, got {value!r}.")
        return from_dict(annotation, value, path + ".")
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() != "none" else []
        elif not isinstance(value, list | tuple):
            value = [value]
        return tuple(_coerce(v, item_type, path) for v in value)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise UserError(f"{path} must be a mapping, got {value!r}.")
        return {str(k): v for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{path} must be true or false, got {value!r}.")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{path} must be an integer, got {value!r}.")
        if isinstance(value, float) and not value.is_integer():
            raise UserError(f"{path} must be an integer, got {value!r}.")
        return int(value)
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e30 or 3e-4 (no dot) as strings; people mean numbers.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{path} must be a number, got {value!r}.")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{path} must be a string, got {value!r}.")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys with close matches."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            matches = close_matches(key, names)
            hint = f" Did you mean {prefix}{matches[0]}?" if matches else ""
            raise UserError(f"unknown option '{prefix}{key}'.{hint} Options: {', '.join(names)}.")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    return cls(**kwargs)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override to nested dict `data` (value parsed as YAML)."""
    if "=" not in assignment:
        raise UserError(
            f"override {assignment!r} is not key=value; write e.g. ppo.learning_rate=3e-4."
        )
    key, text = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"override {assignment!r} has an empty key.")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {assignment!r}: {part} is not a section.")
        node = child
    node[parts[-1]] = _parse_value(text)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping; UserError if it is missing, unreadable or malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"config file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read config file {str(path)!r}: {error}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of options.")
    return data


def build(data: dict[str, Any]) -> Config:
    """A validated `Config` from nested plain data."""
    return validate(from_dict(Config, data))


def dump(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
