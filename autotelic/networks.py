"""Policy/value networks: an encoder, an optional GRU core, a policy head and one value head per
reward source (head 0 is the extrinsic reward).

Every network has the same step signature, recurrent or not, so the training loop has one code path:

    apply(params, carry, obs, episode_start) -> (carry, logits, values)
    carry: [N, C] f32   obs: [N, *obs_shape]   episode_start: [N] bool
    logits: [N, num_actions] f32   values: [N, num_heads] f32

`episode_start[i]` is true when `obs[i]` is the first observation of an episode; a recurrent core
zeroes its hidden state there before reading the observation.

NetHack observations (obs_kind "nethack", from `autotelic.envs.host`) always enter through
`NetHackEncoder`, whatever the kind; `kind=nethack` names that encoder explicitly (feed-forward),
and `kind=gru` puts the GRU core after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .config import NetworkConfig
from .envs.base import EnvSpec
from .envs.host import nethack_layout
from .errors import UserError

Array = jax.Array


def dense(features: int, scale: float = np.sqrt(2)) -> nn.Dense:
    """A dense layer with orthogonal initialization (gain `scale`), used by every network here."""
    return nn.Dense(features, kernel_init=nn.initializers.orthogonal(scale))


def grid_one_hot(obs: Array, categories: tuple[int, ...]) -> Array:
    """`obs: [..., H, W, C]` integer codes -> `[..., H, W, sum(categories)]` f32 one-hot."""
    channels = [jax.nn.one_hot(obs[..., c], n) for c, n in enumerate(categories)]
    return jnp.concatenate(channels, axis=-1)


class Encoder(nn.Module):
    """Observation -> feature vector.

    cnn on grids: the MiniGrid-style stack (conv 2x2 16, [max-pool 2x2], conv 2x2 32, conv 2x2 64,
    ReLU after each) on the codes as numbers (`encoding=raw`) or one-hot (`encoding=one_hot`);
    the pool is used only when the grid is at least 8 wide, so 5x5 grids still keep a spatial map.
    """

    spec: EnvSpec
    kind: str
    hidden: int
    encoding: str = "raw"

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        spec = self.spec
        if spec.obs_kind == "nethack":
            return NetHackEncoder(spec, self.hidden)(obs)
        if spec.obs_kind == "grid" and self.encoding == "one_hot":
            x = grid_one_hot(obs, spec.obs_categories)
        else:
            x = obs.astype(jnp.float32)
        spatial = x.ndim >= 4
        if self.kind in ("cnn", "gru") and spatial:
            x = nn.relu(Conv2x2(16)(x))
            if min(spec.obs_shape[0], spec.obs_shape[1]) >= 8:
                x = max_pool_2x2(x)
            x = nn.relu(Conv2x2(32)(x))
            x = nn.relu(Conv2x2(64)(x))
            x = x.reshape(x.shape[0], -1)
            return nn.relu(dense(self.hidden, np.sqrt(2))(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.tanh(dense(self.hidden, np.sqrt(2))(x))
        return nn.tanh(dense(self.hidden, np.sqrt(2))(x))


class NetHackEncoder(nn.Module):
    """NetHack observation -> feature vector, small enough to train on 2 CPU cores.

    Reads the int32 vector `[crop*crop + blstats (+ message_bytes)]` laid out by
    `autotelic.envs.host.encode_nethack`:

    * glyph window: a learned 16-d embedding per glyph id (NLE's glyph ids are categories, not
      magnitudes), two 2x2 convolutions (32 channels), flattened, dense `hidden`;
    * bottom-line stats: `sign(x) log(1 + |x|)` (they range from 0/1 flags to score and turn
      counters in the thousands), dense `hidden`;
    * message bytes, when present: a 16-d byte embedding averaged over the non-NUL bytes, dense
      `hidden`;
    * the parts concatenated, dense `hidden`, ReLU throughout.
    """

    spec: EnvSpec
    hidden: int
    glyph_features: int = 16

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        layout = nethack_layout(self.spec)
        crop, num_blstats = layout["crop"], layout["blstats"]
        num_message = layout.get("message_bytes", 0)
        obs = obs.astype(jnp.int32)
        batch = obs.shape[0]
        glyphs = obs[:, : crop * crop].reshape(batch, crop, crop)
        x = nn.Embed(layout["num_glyphs"], self.glyph_features)(glyphs)
        x = nn.relu(Conv2x2(32)(x))
        x = nn.relu(Conv2x2(32)(x))
        parts = [nn.relu(dense(self.hidden)(x.reshape(batch, -1)))]
        stats = obs[:, crop * crop : crop * crop + num_blstats].astype(jnp.float32)
        stats = jnp.sign(stats) * jnp.log1p(jnp.abs(stats))
        parts.append(nn.relu(dense(self.hidden)(stats)))
        if num_message:
            message = obs[:, crop * crop + num_blstats :]
            present = (message > 0).astype(jnp.float32)[..., None]
            embedded = nn.Embed(256, self.glyph_features)(message) * present
            pooled = embedded.sum(1) / jnp.maximum(present.sum(1), 1.0)
            parts.append(nn.relu(dense(self.hidden)(pooled)))
        return nn.relu(dense(self.hidden)(jnp.concatenate(parts, axis=-1)))


class Conv2x2(nn.Module):
    """A 2x2 'valid' convolution written as one matmul over the four shifted views.

    Mathematically `nn.Conv(features, (2, 2), padding="VALID")`; XLA's CPU convolution is slow for
    such tiny kernels and channel counts (and its gradient slower still), a dense matmul is not.
    """

    features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:  # [B, H, W, C] -> [B, H-1, W-1, features]
        patches = jnp.concatenate(
            [x[:, :-1, :-1], x[:, :-1, 1:], x[:, 1:, :-1], x[:, 1:, 1:]], axis=-1
        )
        return dense(self.features, np.sqrt(2))(patches)


def max_pool_2x2(x: Array) -> Array:
    """2x2 max-pool with stride 2 (floor), as a reshape: `[B, H, W, C] -> [B, H//2, W//2, C]`."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ActorCritic(nn.Module):
    spec: EnvSpec
    config: NetworkConfig
    num_heads: int

    @nn.compact
    def __call__(
        self, carry: Array, obs: Array, episode_start: Array
    ) -> tuple[Array, Array, Array]:
        features = Encoder(self.spec, self.config.kind, self.config.hidden, self.config.encoding)(
            obs
        )
        if self.config.kind == "gru":
            carry = jnp.where(episode_start[:, None], jnp.zeros_like(carry), carry)
            carry, features = nn.GRUCell(self.config.gru_hidden)(carry, features)
        actor = nn.tanh(dense(self.config.hidden, np.sqrt(2))(features))
        logits = dense(self.spec.num_actions, 0.01)(actor)
        critic = nn.tanh(dense(self.config.hidden, np.sqrt(2))(features))
        values = dense(self.num_heads, 1.0)(critic)
        return carry, logits, values


@dataclass(frozen=True)
class Network:
    """A built network: `init(key)`, `apply(params, carry, obs, start)`, `initial_carry(n)`."""

    module: ActorCritic
    carry_size: int

    def initial_carry(self, num_envs: int) -> Array:
        return jnp.zeros((num_envs, self.carry_size), dtype=jnp.float32)

    def init(self, key: Array) -> Any:
        obs = jnp.zeros((1, *self.module.spec.obs_shape), dtype=self.module.spec.obs_dtype)
        return self.module.init(key, self.initial_carry(1), obs, jnp.zeros((1,), dtype=bool))

    def apply(
        self, params: Any, carry: Array, obs: Array, episode_start: Array
    ) -> tuple[Array, Array, Array]:
        return self.module.apply(params, carry, obs, episode_start)

    @property
    def recurrent(self) -> bool:
        return self.module.config.kind == "gru"


def make_network(spec: EnvSpec, config: NetworkConfig, num_heads: int) -> Network:
    if config.kind == "nethack" and spec.obs_kind != "nethack":
        raise UserError(
            f"network.kind=nethack reads NetHack observations (gym:NetHack*, gym:MiniHack-*); "
            f"{spec.env_id} has {spec.obs_kind} observations: use network.kind=cnn, mlp or gru."
        )
    carry_size = config.gru_hidden if config.kind == "gru" else 1
    return Network(ActorCritic(spec, config, num_heads), carry_size)
