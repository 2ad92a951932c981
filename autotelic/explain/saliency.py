"""Chosen-action saliency maps for image-like observations, and the weight-randomization check.

The model is a function of one observation,

    logits_fn(params, obs [H, W, C] float32) -> logits [A]

(policy logits, or Q-values with `score="logit"`). Observations are cast to float32 before the
call, so a network that scales uint8 pixels itself keeps working. Maps are computed for a batch
`obs: [N, H, W, C]` with the chosen actions `actions: [N]` (default: the greedy action).

Both maps score the *chosen* action only: scoring the whole output vector gives maps that barely
depend on the output layer ("Benchmarking Perturbation-based Saliency Maps for Explaining Atari
Agents", Huber, Limmer, Andre 2022). The score is `log pi(a* | x)` (default) or the
raw logit / Q-value `z_{a*}(x)`.

Saliency maps are exploratory, not explanatory ("Exploratory Not Explanatory: Counterfactual
Analysis of Saliency Maps for Deep Reinforcement Learning", Atrey, Clary, Jensen 2020): check them
with `randomization_check` and with deletion curves (`autotelic.explain.deletion`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from .shapley import AttributionInputError

Array = jax.Array
LogitsFn = Callable[[Any, Array], Array]
Score = Literal["log_prob", "logit"]
ChannelReduction = Literal["max_abs", "sum", "none"]


def chosen_action_score(
    logits_fn: LogitsFn, params: Any, obs: Array, action: Array, score: Score = "log_prob"
) -> Array:
    """`log pi(action | obs)` or `logits[action]` for one observation `[H, W, C]` -> scalar."""
    logits = logits_fn(params, obs.astype(jnp.float32))
    if score == "log_prob":
        return jax.nn.log_softmax(logits)[action]
    if score == "logit":
        return logits[action]
    raise AttributionInputError(f"score must be 'log_prob' or 'logit', got {score!r}.")


def _check_obs(obs: Any) -> Array:
    obs = jnp.asarray(obs)
    if obs.ndim != 4:
        raise AttributionInputError(
            f"observations must be a batch of images [N, H, W, C], got shape {obs.shape}. "
            "Add a batch axis for one observation and a channel axis for grey images."
        )
    return obs.astype(jnp.float32)


def _chosen_actions(logits_fn: LogitsFn, params: Any, obs: Array, actions: Any) -> Array:
    if actions is None:
        return jnp.argmax(jax.vmap(lambda o: logits_fn(params, o))(obs), axis=-1)
    actions = jnp.asarray(actions, dtype=jnp.int32).reshape(-1)
    if actions.shape[0] != obs.shape[0]:
        raise AttributionInputError(
            f"need one action per observation: {obs.shape[0]} observations, "
            f"{actions.shape[0]} actions."
        )
    return actions


# ---------------------------------------------------------------------------------------------
# Gradient saliency
# ---------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("logits_fn", "score", "times_input", "channel_reduction"))
def _gradient_maps(
    logits_fn: LogitsFn,
    params: Any,
    obs: Array,
    actions: Array,
    score: Score,
    times_input: bool,
    channel_reduction: ChannelReduction,
) -> Array:
    def one(single_obs: Array, action: Array) -> Array:
        grad = jax.grad(lambda o: chosen_action_score(logits_fn, params, o, action, score))(
            single_obs
        )
        return grad * single_obs if times_input else grad

    maps = jax.vmap(one)(obs, actions)  # [N, H, W, C]
    if channel_reduction == "max_abs":
        return jnp.max(jnp.abs(maps), axis=-1)
    if channel_reduction == "sum":
        return jnp.sum(maps, axis=-1)
    return maps


def gradient_saliency(
    logits_fn: LogitsFn,
    params: Any,
    obs: Any,
    actions: Any = None,
    *,
    score: Score = "log_prob",
    times_input: bool = False,
    channel_reduction: ChannelReduction = "max_abs",
) -> Array:
    """Gradient of the chosen action's score with respect to the observation.

    `S(x) = d score(a* | x) / dx` ("Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", Simonyan, Vedaldi, Zisserman 2014, Section 3.1, the
    first-order Taylor weight `w = dS_c/dI`), or with `times_input` the element-wise product
    `x * dS/dx` (the "Gradient * Input" method as defined in "Sanity Checks for Saliency Maps",
    Adebayo et al. 2018, Section 2).

    Parameters
    ----------
    logits_fn, params
        The model, see the module docstring.
    obs
        `[N, H, W, C]` observations.
    actions
        `[N]` chosen actions; default the greedy action of each observation.
    score
        "log_prob" or "logit".
    times_input
        Multiply the gradient by the input.
    channel_reduction
        "max_abs" (largest magnitude over channels, as in Simonyan et al.), "sum" (keeps the sign;
        natural with `times_input`) or "none".

    Returns
    -------
    `[N, H, W]` float32 maps (`[N, H, W, C]` with "none").
    """
    if channel_reduction not in ("max_abs", "sum", "none"):
        raise AttributionInputError(
            f"channel_reduction must be 'max_abs', 'sum' or 'none', got {channel_reduction!r}."
        )
    obs = _check_obs(obs)
    actions = _chosen_actions(logits_fn, params, obs, actions)
    return _gradient_maps(logits_fn, params, obs, actions, score, times_input, channel_reduction)


# ---------------------------------------------------------------------------------------------
# Perturbation saliency
# ---------------------------------------------------------------------------------------------


def patch_masks(height: int, width: int, radius: float, stride: int) -> np.ndarray:
    """Soft patches centred on a grid: `[Gh * Gw, H, W]` float32, peak 1.

    Patch `g` is a Gaussian bump `exp(-d^2 / (2 radius^2))` around grid point `g`; the grid has
    points every `stride` pixels, starting `stride // 2` from the top-left corner, row-major.
    """
    if stride < 1 or radius <= 0:
        raise AttributionInputError(f"need stride >= 1 and radius > 0, got {stride}, {radius}.")
    rows = np.arange(stride // 2, height, stride)
    cols = np.arange(stride // 2, width, stride)
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    centres_y = np.repeat(rows, len(cols))
    centres_x = np.tile(cols, len(rows))
    squared = (yy[None] - centres_y[:, None, None]) ** 2 + (
        xx[None] - centres_x[:, None, None]
    ) ** 2
    return np.exp(-squared / (2.0 * radius**2)).astype(np.float32)


def gaussian_blur(image: Array, sigma: float) -> Array:
    """Blur `[H, W, C]` with a Gaussian of standard deviation `sigma` pixels (edges repeated)."""
    half = max(1, math.ceil(3 * sigma))
    taps = np.exp(-(np.arange(-half, half + 1) ** 2) / (2.0 * sigma**2))
    taps = jnp.asarray(taps / taps.sum(), dtype=jnp.float32)
    channels = image.shape[-1]
    padded = jnp.pad(image, ((half, half), (half, half), (0, 0)), mode="edge")[None]
    # Separable: one vertical and one horizontal depthwise convolution.
    vertical = jnp.tile(taps[:, None, None, None], (1, 1, 1, channels))
    horizontal = jnp.tile(taps[None, :, None, None], (1, 1, 1, channels))
    dims = ("NHWC", "HWIO", "NHWC")
    out = jax.lax.conv_general_dilated(
        padded, vertical, (1, 1), "VALID", dimension_numbers=dims, feature_group_count=channels
    )
    out = jax.lax.conv_general_dilated(
        out, horizontal, (1, 1), "VALID", dimension_numbers=dims, feature_group_count=channels
    )
    return out[0]


@partial(
    jax.jit,
    static_argnames=(
        "logits_fn",
        "score",
        "mode",
        "radius",
        "stride",
        "blur_sigma",
        "upsample",
        "batch_size",
    ),
)
def _perturbation_maps(
    logits_fn: LogitsFn,
    params: Any,
    obs: Array,
    actions: Array,
    fill_value: Array,
    score: Score,
    mode: str,
    radius: float,
    stride: int,
    blur_sigma: float,
    upsample: bool,
    batch_size: int | None,
) -> Array:
    height, width = obs.shape[1:3]
    masks_np = patch_masks(height, width, radius, stride)
    masks = jnp.asarray(masks_np)[..., None]  # [G, H, W, 1]

    def score_of(o: Array, action: Array) -> Array:
        return chosen_action_score(logits_fn, params, o, action, score)

    def one(inputs: tuple[Array, Array]) -> Array:
        single_obs, action = inputs
        if mode == "blur":
            replacement = gaussian_blur(single_obs, blur_sigma)
        else:
            replacement = jnp.full_like(single_obs, fill_value)
        perturbed = single_obs[None] * (1.0 - masks) + replacement[None] * masks  # [G, H, W, C]
        drops = score_of(single_obs, action) - jax.vmap(score_of, in_axes=(0, None))(
            perturbed, action
        )  # [G]
        if upsample:
            # Spread each patch's score over the pixels it covered, weighted by the patch.
            weights = masks[..., 0]
            return jnp.tensordot(drops, weights, axes=1) / jnp.sum(weights, axis=0)
        rows = len(range(stride // 2, height, stride))
        return drops.reshape(rows, -1)

    return jax.lax.map(one, (obs, actions), batch_size=batch_size)


def perturbation_saliency(
    logits_fn: LogitsFn,
    params: Any,
    obs: Any,
    actions: Any = None,
    *,
    mode: Literal["blur", "occlude"] = "blur",
    radius: float = 5.0,
    stride: int = 5,
    blur_sigma: float = 3.0,
    fill_value: float = 0.0,
    score: Score = "log_prob",
    upsample: bool = True,
    batch_size: int | None = 8,
) -> Array:
    """How much the chosen action's score drops when a soft patch of the input is perturbed.

    For patch `M_g` (a Gaussian bump, see `patch_masks`), the perturbed input is
    `x'_g = x (1 - M_g) + A(x) M_g`, where `A(x)` is the blurred image ("blur") or a constant
    ("occlude"), and the saliency is `score(a* | x) - score(a* | x'_g)` ("Visualizing and
    Understanding Atari Agents", Greydanus et al. 2018, the perturbation and saliency-score
    equations of its saliency section, with the whole-output distance
    replaced by the chosen action's score as recommended by Huber et al. 2022). Positive values
    mark regions that support the chosen action.

    Parameters
    ----------
    logits_fn, params
        The model, see the module docstring.
    obs
        `[N, H, W, C]` observations.
    actions
        `[N]` chosen actions; default the greedy action of each observation.
    mode
        "blur" (replace with a `blur_sigma` Gaussian blur of the frame) or "occlude"
        (replace with `fill_value`).
    radius, stride
        Patch size (standard deviation, pixels) and grid spacing; the defaults match the 80x80
        Atari setting of Greydanus et al.
    score
        "log_prob" or "logit".
    upsample
        Return full-resolution `[N, H, W]` maps, each pixel the patch-weighted mean of the
        scores of the patches covering it; otherwise the grid `[N, Gh, Gw]`.
    batch_size
        Observations processed at once (memory grows as batch_size x patches x H x W x C);
        None processes all of them together.
    """
    if mode not in ("blur", "occlude"):
        raise AttributionInputError(f"mode must be 'blur' or 'occlude', got {mode!r}.")
    obs = _check_obs(obs)
    actions = _chosen_actions(logits_fn, params, obs, actions)
    return _perturbation_maps(
        logits_fn,
        params,
        obs,
        actions,
        jnp.float32(fill_value),
        score,
        mode,
        float(radius),
        int(stride),
        float(blur_sigma),
        bool(upsample),
        batch_size,
    )


# ---------------------------------------------------------------------------------------------
# Model-parameter randomization check
# ---------------------------------------------------------------------------------------------


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two maps (flattened; ties get their average rank).

    The Pearson correlation of the ranks ("The Proof and Measurement of Association between Two
    Things", Spearman 1904). NaN when either map is constant.
    """
    ranks_a = _average_ranks(np.asarray(a, dtype=np.float64).reshape(-1))
    ranks_b = _average_ranks(np.asarray(b, dtype=np.float64).reshape(-1))
    if ranks_a.shape != ranks_b.shape:
        raise AttributionInputError(f"maps differ in size: {ranks_a.size} vs {ranks_b.size}.")
    ranks_a -= ranks_a.mean()
    ranks_b -= ranks_b.mean()
    denominator = np.sqrt(np.sum(ranks_a**2) * np.sum(ranks_b**2))
    if denominator == 0:
        return float("nan")
    return float(np.sum(ranks_a * ranks_b) / denominator)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts_group = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(starts_group) - 1
    starts = np.flatnonzero(starts_group)
    ends = np.append(starts[1:], len(values))
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends - 1) / 2.0)[group]
    return ranks


def parameter_groups(params: Any) -> list[str]:
    """Names of the parameter groups (layers) of a pytree, in flattening order.

    A leaf's group is its path without the last key, e.g. `params/Dense_1` for
    `params["params"]["Dense_1"]["kernel"]`; a top-level leaf is its own group.
    """
    names: list[str] = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = _group_name(path)
        if name not in names:
            names.append(name)
    return names


def _group_name(path: tuple[Any, ...]) -> str:
    keys = [_key_text(k) for k in path]
    return "/".join(keys[:-1] if len(keys) > 1 else keys)


def _key_text(key: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


@dataclass(frozen=True)
class RandomizationCheck:
    """Rank correlation between the original maps and the maps of a randomized model.

    Attributes
    ----------
    stages : list[str]
        What was randomized at each stage ("+"-joined group names, output side first).
    spearman : [num_stages, N] float64
        Per observation, Spearman correlation of original and randomized maps. A faithful
        saliency method gives low values; values near 1 mean the map ignores the weights.
    """

    stages: list[str]
    spearman: np.ndarray

    @property
    def median(self) -> np.ndarray:
        """[num_stages] median over observations (NaN-ignoring)."""
        return np.nanmedian(self.spearman, axis=1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stages": list(self.stages),
            "spearman": self.spearman.tolist(),
            "median": self.median.tolist(),
        }


def randomize(
    params: Any,
    groups: Sequence[str],
    key: Array,
    *,
    noise_scale: float | None = None,
    random_params: Any = None,
) -> Any:
    """A copy of `params` with the leaves of `groups` randomized.

    Each leaf in a listed group becomes, by precedence: the matching leaf of `random_params`
    (e.g. a fresh `model.init` with another key); `leaf + noise_scale * std(leaf) * eps`
    (a perturbation, with `noise_scale`); or `std(leaf) * eps` (a scale-matched re-draw),
    `eps ~ N(0, 1)`. A constant leaf (std 0, e.g. zero biases or unit norm scales) is kept.
    The noise of a leaf depends only on `key` and the leaf's position, so randomizing more
    groups with the same key extends, rather than redraws, an earlier randomization.
    """
    wanted = set(groups)
    known = set(parameter_groups(params))
    missing = wanted - known
    if missing:
        raise AttributionInputError(
            f"unknown parameter groups {sorted(missing)}; the model has {sorted(known)}."
        )
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    replacement_leaves = None
    if random_params is not None:
        replacement_leaves = jax.tree_util.tree_leaves(random_params)
        if len(replacement_leaves) != len(flat):
            raise AttributionInputError(
                "random_params must have the same structure as params "
                f"({len(flat)} leaves), got {len(replacement_leaves)} leaves."
            )
    # One draw for the whole model, sliced per leaf: a leaf's noise depends only on the key and
    # its position, and JAX compiles one sampler instead of one per leaf shape.
    sizes = [int(np.size(leaf)) for _, leaf in flat]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    all_noise = None
    if replacement_leaves is None:
        all_noise = np.asarray(jax.random.normal(key, (int(offsets[-1]),), jnp.float32))
    new_leaves = []
    for index, (path, leaf) in enumerate(flat):
        if _group_name(path) not in wanted:
            new_leaves.append(leaf)
            continue
        if replacement_leaves is not None:
            new_leaves.append(replacement_leaves[index])
            continue
        values = np.asarray(leaf)
        std = float(np.std(values))
        noise = all_noise[offsets[index] : offsets[index + 1]].reshape(values.shape)
        if noise_scale is None:
            changed = std * noise if std > 0 else values
        else:
            changed = values + noise_scale * std * noise
        new_leaves.append(jnp.asarray(changed, dtype=values.dtype))
    return jax.tree_util.tree_unflatten(treedef, new_leaves)


def randomization_check(
    saliency_fn: Callable[[Any], Any],
    params: Any,
    *,
    key: Array,
    mode: Literal["cascading", "full"] = "cascading",
    layers: Sequence[str] | None = None,
    noise_scale: float | None = None,
    random_params: Any = None,
    absolute: bool = False,
) -> RandomizationCheck:
    """Model-parameter randomization test for a saliency method.

    Randomize the weights — cascading from the output layer towards the input, or all at once —
    recompute the maps and report their Spearman rank correlation with the original maps
    ("Sanity Checks for Saliency Maps", Adebayo et al. 2018, the model parameter randomization
    test, cascading and independent). Maps of a method that explains the model
    must change (low correlation); a method whose maps survive randomization shows the input,
    not the model.

    Parameters
    ----------
    saliency_fn
        `saliency_fn(params) -> maps [N, ...]`; close over the observations and keep the
        *original* chosen actions fixed, e.g.
        `lambda p: gradient_saliency(logits_fn, p, obs, actions)`.
    params
        The trained parameters.
    key
        Randomness for the new weights.
    mode
        "cascading": stage k randomizes the first k groups of `layers`; "full": one stage with
        every group randomized.
    layers
        Parameter groups from the output towards the input (see `parameter_groups`). Default:
        the reverse of the flattening order, right for networks whose layers are named in input
        to output order (Dense_0, Dense_1, ...; check it when there are 10 or more layers, as
        names sort as text).
    noise_scale, random_params
        How a leaf is randomized, see `randomize`. A small `noise_scale` (e.g. 0.01) checks the
        opposite property: maps should be stable under a tiny change of the weights.
    absolute
        Correlate absolute values of the maps (ignores the sign).
    """
    if mode not in ("cascading", "full"):
        raise AttributionInputError(f"mode must be 'cascading' or 'full', got {mode!r}.")
    order = list(layers) if layers is not None else parameter_groups(params)[::-1]
    if not order:
        raise AttributionInputError("the model has no parameters to randomize.")
    stages = [order[: k + 1] for k in range(len(order))] if mode == "cascading" else [order]

    def maps_of(p: Any) -> np.ndarray:
        maps = np.asarray(saliency_fn(p), dtype=np.float64)
        return np.abs(maps) if absolute else maps

    original = maps_of(params)
    correlations = np.empty((len(stages), len(original)))
    for stage_index, groups in enumerate(stages):
        changed = randomize(
            params, groups, key, noise_scale=noise_scale, random_params=random_params
        )
        randomized = maps_of(changed)
        for row in range(len(original)):
            correlations[stage_index, row] = spearman(original[row], randomized[row])
    return RandomizationCheck(stages=["+".join(g) for g in stages], spearman=correlations)
