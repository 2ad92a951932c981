"""Chosen-action saliency: closed forms on a linear policy, the weight-randomization check, and
deletion curves of a saliency map on a policy that looks at one corner of the image."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autotelic.explain import deletion, saliency, shapley

HEIGHT, WIDTH, CHANNELS, ACTIONS = 10, 10, 3, 4


def linear_policy(params, obs):
    """logits [A] = W [A, H*W*C] @ obs."""
    return params["head"]["kernel"] @ obs.reshape(-1)


def mlp_policy(params, obs):
    hidden = obs.reshape(-1)
    for name in ("Dense_0", "Dense_1"):
        hidden = jax.nn.relu(hidden @ params[name]["kernel"] + params[name]["bias"])
    return hidden @ params["Dense_2"]["kernel"] + params["Dense_2"]["bias"]


def mlp_params(key):
    sizes = [(HEIGHT * WIDTH * CHANNELS, 64), (64, 64), (64, ACTIONS)]
    keys = jax.random.split(key, len(sizes))
    return {
        f"Dense_{i}": {
            "kernel": jax.random.normal(k, size) * np.sqrt(2.0 / size[0]),
            "bias": jnp.zeros(size[1]),
        }
        for i, (k, size) in enumerate(zip(keys, sizes, strict=True))
    }


@pytest.fixture(scope="module")
def observations():
    return jax.random.uniform(jax.random.key(1), (16, HEIGHT, WIDTH, CHANNELS))


def test_gradient_saliency_has_the_closed_form_of_a_linear_policy(observations):
    kernel = jax.random.normal(jax.random.key(0), (ACTIONS, HEIGHT * WIDTH * CHANNELS))
    params = {"head": {"kernel": kernel}}
    actions = jnp.arange(len(observations)) % ACTIONS
    logit_maps = saliency.gradient_saliency(
        linear_policy, params, observations, actions, score="logit", channel_reduction="none"
    )
    expected = kernel[actions].reshape(-1, HEIGHT, WIDTH, CHANNELS)
    np.testing.assert_allclose(logit_maps, expected, rtol=1e-5, atol=1e-6)
    # d log pi(a|x) / dx = W_a - sum_b pi(b|x) W_b
    probs = jax.nn.softmax(observations.reshape(len(observations), -1) @ kernel.T)
    expected_log = (kernel[actions] - probs @ kernel).reshape(-1, HEIGHT, WIDTH, CHANNELS)
    log_maps = saliency.gradient_saliency(
        linear_policy, params, observations, actions, times_input=True, channel_reduction="sum"
    )
    np.testing.assert_allclose(log_maps, np.sum(expected_log * observations, -1), atol=1e-5)


def test_occlusion_saliency_has_the_closed_form_of_a_linear_policy(observations):
    kernel = jax.random.normal(jax.random.key(0), (ACTIONS, HEIGHT * WIDTH * CHANNELS))
    params = {"head": {"kernel": kernel}}
    actions = jnp.arange(len(observations)) % ACTIONS
    maps = saliency.perturbation_saliency(
        linear_policy,
        params,
        observations,
        actions,
        mode="occlude",
        fill_value=0.0,
        radius=1.5,
        stride=2,
        score="logit",
        upsample=False,
    )
    assert maps.shape == (len(observations), 5, 5)
    # Occluding patch M to 0 lowers the logit by W_a . (x * M).
    masks = saliency.patch_masks(HEIGHT, WIDTH, radius=1.5, stride=2)
    weights = kernel[actions].reshape(-1, HEIGHT, WIDTH, CHANNELS)
    expected = np.einsum("nhwc,ghw->ng", weights * observations, masks).reshape(-1, 5, 5)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-4)


def test_spearman_with_ties():
    assert saliency.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert saliency.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / np.sqrt(22.5))


def test_maps_change_under_weight_randomization_and_not_otherwise(observations):
    params = mlp_params(jax.random.key(0))
    actions = jnp.argmax(jax.vmap(lambda o: mlp_policy(params, o))(observations), axis=-1)
    methods = {
        "gradient": lambda p: saliency.gradient_saliency(mlp_policy, p, observations, actions),
        "blur": lambda p: saliency.perturbation_saliency(
            mlp_policy, p, observations, actions, radius=1.5, stride=2
        ),
    }
    key = jax.random.key(2)
    for name, method in methods.items():
        full = saliency.randomization_check(method, params, key=key, mode="full")
        assert full.median[0] < 0.3, (name, full.median)
        cascading = saliency.randomization_check(method, params, key=key, mode="cascading")
        assert cascading.stages == ["Dense_2", "Dense_2+Dense_1", "Dense_2+Dense_1+Dense_0"]
        assert np.all(cascading.median < 0.5), (name, cascading.median)
        unchanged = saliency.randomization_check(method, params, key=key, noise_scale=0.0)
        np.testing.assert_allclose(unchanged.spearman, 1.0)
        nudged = saliency.randomization_check(method, params, key=key, noise_scale=0.01)
        assert nudged.median[0] > 0.95, (name, nudged.median)


def test_occlusion_map_deletion_beats_random_on_a_corner_policy(observations):
    # Action 0's logit reads only the top-left 3x3 corner; the other logits are 0.
    kernel = np.zeros((ACTIONS, HEIGHT, WIDTH, CHANNELS), dtype=np.float32)
    kernel[0, :3, :3, :] = 0.2
    params = {"head": {"kernel": jnp.asarray(kernel.reshape(ACTIONS, -1))}}
    image = observations[:1]
    maps = saliency.perturbation_saliency(
        linear_policy, params, image, jnp.array([0]), mode="occlude", radius=1.5, stride=2
    )
    corner_map = np.asarray(maps[0])
    assert np.unravel_index(np.argmax(corner_map), corner_map.shape) < (3, 3)
    assert corner_map[:6, :6].sum() > 0.95 * np.abs(corner_map).sum()

    def log_prob_of_action_0(inputs):
        logits = jnp.asarray(inputs).reshape(len(inputs), -1) @ params["head"]["kernel"].T
        return np.asarray(jax.nn.log_softmax(logits)[:, 0])

    pixels = np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH, 1)
    game = shapley.FeatureGame(
        log_prob_of_action_0, image[0], fill="baseline", baseline=0.0, groups=pixels
    )
    result = deletion.evaluate(game, corner_map, num_random_orders=20, num_steps=20, batched=True)
    assert result.deletion.standard_errors_better_than_random() > 3
    assert result.deletion.standard_deviations_better_than_random() > 1
