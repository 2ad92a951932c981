"""Rewards from language-model feedback on captions, counted per episode: `retrieval`,
`classifier` and `ranking`.

"Online Intrinsic Rewards for Decision Making Agents from Large Language Model Feedback", Zheng,
Henaff, Zhang, Grover, Amos 2024 (arXiv 2410.23022) (ONI) has an annotator label the agent's
captions (NetHack messages) while it trains, distils the labels into a reward model, and pays each
caption's reward divided by a power of how often the caption has already appeared in the episode.
Its total reward is

    r = c_ext r_ext + c_llm r_llm(caption) / N_ep(caption)^beta,   beta = 3

(the paper's total-reward equation; `--beta_count_exponent` in its code), with N_ep(caption) the
number of times the caption has appeared in the current episode of that env, this appearance
included: the first sighting pays r_llm, the second r_llm / 8, the third r_llm / 27.

The three sources differ only in the model that gives r_llm(caption); ONI's names in parentheses:

* `retrieval` (Retrieval, `online_cls`): the caption's own label, 1 helpful / 0 unhelpful; a
  caption without a label pays 0 until its label arrives.
* `classifier` (Classification, `online_cls_reward_model`): 1[P(helpful | caption) > 0.5] from a
  small text classifier trained online on the labels, so unseen captions are rewarded too (the
  threshold is `feedback.classifier_threshold`).
* `ranking` (Ranking, `online_motif`): a Bradley-Terry score trained on caption pairs, normalized
  and thresholded as in "Motif: Intrinsic Motivation from Artificial Intelligence Feedback"
  (Klissarov et al. 2024, arXiv 2310.00166): 1[r_hat >= eps] r_hat, r_hat = (r - mu) / sigma.
  The normalization is applied (ONI's code computes it but pays the raw score).

Split of the work. The models train on the host (`autotelic.feedback.online.OnlineFeedback`, in
a background thread) and their answers reach the policy through one array in this source's state,
`table[caption id] = r_llm(caption)`, which the host rewrites between PPO updates. Inside the
jitted rollout this source only looks the caption up and counts it. Labels that arrive during a
rollout reach the reward at the next update (ONI instead rewards lazily at learning time, so a
late label also pays for data already buffered).

Count semantics (exact, per env): each env keeps `episode_slots` (caption id, count) slots. A
caption is matched exactly against the ids in the slots; a new one takes the first free slot with
count 1. The counts of an env clear when its episode ends, *after* the final step has been paid
and counted in the episode it belongs to. Caption id 0 (no caption) pays 0 and is not counted.
When all slots of an env are taken, a caption that is not already in them is **not recorded and
pays 0** (`overflow` counts these sightings). Paying it as a first sighting instead would pay the
full reward at every repetition once the slots are full, which a policy could farm. Raise
`episode_slots` if `overflow` grows; slots cost 8 bytes each per env. Caption ids >= `vocab_size`
have no table entry and also pay 0 (`out_of_table` counts them; raise `vocab_size`).

Heads: episodic (ONI adds the count-scaled reward to the extrinsic one, so its returns stop where
the extrinsic return does), gamma 0.99, no reward normalization (the values are already on a fixed
scale). Coefficients: autotelic weights each head's *advantage* (`coef`); GAE is linear in the
rewards and values, so with equal discounts and no reward normalization this amounts to weighting
the rewards, as ONI does. ONI's Score setting (README: c_ext 0.1, c_llm 0.4) is therefore
`extrinsic.coef=0.1 sources.<name>.coef=0.4` (with `extrinsic.gamma` equal to this head's
`gamma`); its other tasks use c_ext 10, and c_ext 0 is the reward-free setting.

These sources need an env that gives captions (`Transition.caption`), i.e. the host path with
`--env gym:NetHackScore-v0`, `gym:MiniHack-...` or `gym:MiniGrid-...`, and `OnlineFeedback`
attached to the training loop to fill the table; without it the table stays 0 and so does the
reward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ..envs.base import EnvSpec
from ..errors import UserError
from .base import HeadConfig, RewardSource, SourceEntry, Transition, register

Array = jax.Array

FEEDBACK_SOURCES = ("retrieval", "classifier", "ranking")
CAPTION_FAMILIES = ("minigrid", "nethack")  # host-env families whose captions are on by default
MAX_VOCAB_SIZE = 2**24
MAX_EPISODE_SLOTS = 4096


@dataclass(frozen=True)
class FeedbackParams(HeadConfig):
    """coef:          advantage weight; ONI's Score ratio is extrinsic.coef=0.1 with coef=0.4
    beta:          count exponent: r_llm / N_ep(caption)^beta (ONI: 3)
    vocab_size:    table entries, i.e. caption ids 0 .. vocab_size-1 can be rewarded (4 bytes each
                   per seed, twice: the table and the per-caption sighting counts)
    episode_slots: distinct captions counted per env per episode; a caption that finds them all
                   taken pays 0 (see the module docstring)
    """

    coef: float = 1.0
    gamma: float = 0.99
    episodic: bool = True
    normalize: str = "none"
    beta: float = 3.0
    vocab_size: int = 65536
    episode_slots: int = 256


class FeedbackState(NamedTuple):
    """table:        [V] f32 r_llm per caption id, written by the host between updates
    slot_ids:     [N, K] i32 caption ids counted in each env's current episode (0: free slot)
    slot_counts:  [N, K] i32 their counts N_ep
    seen:         [V] i32 steps with each caption id since the run began (index 0 unused)
    overflow:     [] i32 sightings that found all K slots of their env taken (paid 0)
    out_of_table: [] i32 sightings of caption ids >= V (paid 0)
    rewarded:     [] i32 steps with a nonzero reward since the last update
    """

    table: Array
    slot_ids: Array
    slot_counts: Array
    seen: Array
    overflow: Array
    out_of_table: Array
    rewarded: Array


def no_captions_error(name: str, spec: EnvSpec) -> UserError:
    return UserError(
        f"reward source {name!r} rewards captions, and {spec.env_id} gives none. Use an env with "
        "captions, e.g. --env gym:NetHackScore-v0, gym:MiniHack-Room-5x5-v0 or "
        "gym:MiniGrid-DoorKey-8x8-v0 (with env option captions=true, the default)."
    )


def env_has_captions(spec: EnvSpec) -> bool:
    """Whether the env described by `spec` fills `Transition.caption`.

    Read from a `captions` attribute of the spec or a `captions` entry of `spec.options` when the
    env declares one; otherwise from the host-env family (`options["family"]`: MiniGrid and
    NetHack/MiniHack caption by default). JAX-native envs declare neither and give no captions.
    """
    flag = getattr(spec, "captions", None)
    if flag is not None:
        return bool(flag)
    options = dict(spec.options)
    if "captions" in options:
        return bool(options["captions"])
    return options.get("family") in CAPTION_FAMILIES


def count_captions(
    slot_ids: Array, slot_counts: Array, caption: Array
) -> tuple[Array, Array, Array, Array]:
    """Count this step's caption of each env in its episode slots.

    slot_ids, slot_counts: [N, K] i32; caption: [N] i32 (0: none).
    Returns (slot_ids, slot_counts, n, lost): n [N] i32 is N_ep(caption) including this sighting
    (0 for no caption or a caption that was not recorded), lost [N] bool marks captions that found
    every slot taken.
    """
    valid = caption > 0
    match = (slot_ids == caption[:, None]) & valid[:, None]  # at most one slot per env
    found = match.any(axis=1)
    free = slot_ids == 0  # slots fill in order and clear together: the free ones are a suffix
    has_free = free.any(axis=1)
    new = valid & ~found & has_free
    lost = valid & ~found & ~has_free
    insert = (jnp.arange(slot_ids.shape[1]) == jnp.argmax(free, axis=1)[:, None]) & new[:, None]
    slot_ids = jnp.where(insert, caption[:, None], slot_ids)
    hit = match | insert
    slot_counts = slot_counts + hit.astype(slot_counts.dtype)
    n = jnp.where(hit, slot_counts, 0).sum(axis=1)
    return slot_ids, slot_counts, n, lost


def make_build(name: str):
    def build(params: FeedbackParams, spec: EnvSpec) -> RewardSource:
        size, slots, beta = params.vocab_size, params.episode_slots, params.beta

        def init(key: Array, spec: EnvSpec, num_envs: int) -> FeedbackState:
            zero = jnp.zeros((), jnp.int32)
            return FeedbackState(
                table=jnp.zeros((size,), jnp.float32),
                slot_ids=jnp.zeros((num_envs, slots), jnp.int32),
                slot_counts=jnp.zeros((num_envs, slots), jnp.int32),
                seen=jnp.zeros((size,), jnp.int32),
                overflow=zero,
                out_of_table=zero,
                rewarded=zero,
            )

        def reward(state: FeedbackState, transition: Transition) -> tuple[Array, FeedbackState]:
            if transition.caption is None:  # the check should have caught this before compiling
                raise no_captions_error(name, spec)
            caption = transition.caption.astype(jnp.int32)
            slot_ids, slot_counts, n, lost = count_captions(
                state.slot_ids, state.slot_counts, caption
            )
            in_table = (caption > 0) & (caption < size)
            index = jnp.where(in_table, caption, 0)
            value = jnp.where(in_table, state.table[index], 0.0)
            # r_llm / N_ep^beta (ONI's total-reward equation); n = 0 (no caption, not recorded)
            # pays 0
            paid = n > 0
            scale = jnp.where(paid, n, 1).astype(jnp.float32) ** beta
            r = jnp.where(paid, value / scale, 0.0)
            done = transition.done[:, None]
            state = FeedbackState(
                table=state.table,
                slot_ids=jnp.where(done, 0, slot_ids),
                slot_counts=jnp.where(done, 0, slot_counts),
                seen=state.seen.at[index].add(in_table.astype(jnp.int32)),
                overflow=state.overflow + lost.sum(dtype=jnp.int32),
                out_of_table=state.out_of_table
                + ((caption >= size) & (caption > 0)).sum(dtype=jnp.int32),
                rewarded=state.rewarded + (r != 0).sum(dtype=jnp.int32),
            )
            return r, state

        def update(
            state: FeedbackState, rollout: Transition, key: Array
        ) -> tuple[FeedbackState, dict[str, Array]]:
            # the models train on the host (OnlineFeedback); here only the bookkeeping
            if rollout.caption is None:
                raise no_captions_error(name, spec)
            steps = rollout.caption.size
            metrics = {
                "caption_fraction": (rollout.caption > 0).mean(),
                "rewarded_fraction": state.rewarded / steps,
                "table_nonzero": (state.table != 0).sum(),
                "overflow": state.overflow,
                "out_of_table": state.out_of_table,
            }
            return state._replace(rewarded=jnp.zeros_like(state.rewarded)), metrics

        return RewardSource(init, reward, update)

    return build


def make_check(name: str):
    def check(params: FeedbackParams, spec: EnvSpec) -> None:
        if not 2 <= params.vocab_size <= MAX_VOCAB_SIZE:
            raise UserError(
                f"sources.{name}.vocab_size must be between 2 and {MAX_VOCAB_SIZE}, "
                f"got {params.vocab_size}."
            )
        if not 1 <= params.episode_slots <= MAX_EPISODE_SLOTS:
            raise UserError(
                f"sources.{name}.episode_slots must be between 1 and {MAX_EPISODE_SLOTS}, "
                f"got {params.episode_slots}."
            )
        if not params.beta >= 0:
            raise UserError(f"sources.{name}.beta must be >= 0, got {params.beta}.")
        if not env_has_captions(spec):
            raise no_captions_error(name, spec)

    return check


_SUMMARIES = {
    "retrieval": "LLM labels of captions, exact lookup, / N_ep^3 (ONI retrieval)",
    "classifier": "text classifier trained online on LLM caption labels, / N_ep^3 (ONI)",
    "ranking": "Bradley-Terry caption ranking from LLM labels, normalized, / N_ep^3 (ONI)",
}

for _name in FEEDBACK_SOURCES:
    register(
        SourceEntry(
            name=_name,
            params_class=FeedbackParams,
            build=make_build(_name),
            check=make_check(_name),
            summary=_SUMMARIES[_name],
            needs_captions=True,
        )
    )
