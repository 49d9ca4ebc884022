import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax.render import rasterize
from avat3r_jax.train.objective import render_in_passes
from tests.render.scenes import IMAGE_SIZE, random_cameras, random_gaussians

BATCH = 4


def render_loss(gaussians, cameras, background, examples_per_pass):
    render = functools.partial(rasterize, image_size=IMAGE_SIZE, backend="xla", tile_size=8)
    render_fn = lambda g, c, bg: render(g, c, background=bg)
    out = render_in_passes(render_fn, examples_per_pass, gaussians, cameras, background)
    weights = jnp.linspace(0.5, 1.5, out.images.size).reshape(out.images.shape)  # every pixel matters differently
    return jnp.sum(weights * out.images) + jnp.sum(out.alpha), out


# One jit for the module (its file runs on one xdist worker): the one-pass program compiles once for all.
grad_fn = jax.jit(jax.value_and_grad(render_loss, has_aux=True), static_argnums=3)


@pytest.mark.slow
def test_rendering_in_passes_matches_one_pass(rng):
    """Two passes of two examples: several passes, each of several examples (one example per pass is
    the same code with a pass axis of one; its program would be one more compile of the rasterizer)."""
    examples_per_pass = 2
    gaussians = random_gaussians(rng, 48, batch=(BATCH,))
    cameras = random_cameras(rng, 2, batch=(BATCH,))
    background = jnp.asarray(rng.uniform(size=(BATCH, 1, 3)), jnp.float32)
    (loss_all, out_all), grads_all = grad_fn(gaussians, cameras, background, 0)
    (loss, out), grads = grad_fn(gaussians, cameras, background, examples_per_pass)
    assert out.images.shape == (BATCH, 2, *IMAGE_SIZE, 3)
    np.testing.assert_allclose(out.images, out_all.images, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out.stats.intersections, out_all.stats.intersections)
    np.testing.assert_allclose(loss, loss_all, rtol=1e-6)
    assert float(jnp.max(jnp.abs(grads_all.means))) > 0
    for name in ("means", "log_scales", "quaternions", "opacity_logits", "colors"):  # float32 sums in another order
        expected = getattr(grads_all, name)
        atol = 1e-5 * float(jnp.max(jnp.abs(expected)))
        np.testing.assert_allclose(getattr(grads, name), expected, rtol=1e-4, atol=atol, err_msg=name)


def test_examples_per_pass_must_divide_the_batch(rng):
    gaussians = random_gaussians(rng, 8, batch=(BATCH,))
    cameras = random_cameras(rng, 1, batch=(BATCH,))
    with pytest.raises(ValueError, match="examples_per_pass=3 does not divide"):
        render_loss(gaussians, cameras, jnp.ones((BATCH, 1, 3)), 3)
