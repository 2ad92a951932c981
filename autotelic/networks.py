"""Policy/value networks: an encoder, an optional GRU core, a policy head and one value head per
reward source (head 0 is the extrinsic reward).

Every network has the same step signature, recurrent or not, so the training loop has one code path:

    apply(params, carry, obs, episode_start) -> (carry, logits, values)
    carry: [N, C] f32   obs: [N, *obs_shape]   episode_start: [N] bool
    logits: [N, num_actions] f32   values: [N, num_heads] f32

`episode_start[i]` is true when `obs[i]` is the first observation of an episode; a recurrent core
zeroes its hidden state there before reading the observation.
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
    ReLU after each) on one-hot codes; the pool is used only when the grid is at least 8 wide, so
    5x5 grids still keep a spatial map.
    """

    spec: EnvSpec
    kind: str
    hidden: int
    encoding: str = "raw"

    @nn.compact
    def __call__(self, obs: Array) -> Array:
        spec = self.spec
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
    carry_size = config.gru_hidden if config.kind == "gru" else 1
    return Network(ActorCritic(spec, config, num_heads), carry_size)
