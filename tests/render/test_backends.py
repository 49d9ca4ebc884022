"""The tiled backends (plain XLA, Pallas Triton and TPU kernels) against the dense reference."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax.render import rasterize, renderer, resolve_backend
from avat3r_jax.render.pallas_tpu import TpuKernels
from avat3r_jax.render.pallas_triton import TritonKernels
from tests.render.scenes import IMAGE_SIZE, random_cameras, random_gaussians

GRAD_FIELDS = ("means", "log_scales", "quaternions", "opacity_logits", "colors")
ON_GPU = jax.default_backend() == "gpu"
# On a GPU machine the compiled kernels are checked too (RENDER_TEST_BACKENDS overrides the list).
BACKENDS = os.environ.get("RENDER_TEST_BACKENDS", "xla,pallas_interpret" + (",pallas" if ON_GPU else "")).split(",")


def _scene():
    rng = np.random.default_rng(11)
    cameras = random_cameras(rng, 2, batch=(2,))  # 2 avatars x 2 cameras
    gaussians = random_gaussians(rng, 40, batch=(2,), behind=cameras)
    background = jnp.asarray(rng.uniform(size=(2, 2, 3)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(2, 2, *IMAGE_SIZE, 5)), jnp.float32)
    return gaussians, cameras, background, weights


def _loss_and_output(gaussians, cameras, background, weights, backend, tile_size=16):
    max_tiles = (16 // tile_size) ** 2 * 16  # room for every footprint of the scene at any tile size (asserted: none dropped)
    out = rasterize(gaussians, cameras, IMAGE_SIZE, background, backend=backend, tile_size=tile_size, max_tiles_per_gaussian=max_tiles)
    loss = jnp.sum(out.images * weights[..., :3]) + jnp.sum(out.alpha * weights[..., 3:4]) + jnp.sum(out.depth * weights[..., 4:])
    return loss, out


@functools.cache
def _rendered(backend: str):
    gaussians, cameras, background, weights = _scene()
    loss = functools.partial(_loss_and_output, cameras=cameras, background=background, weights=weights, backend=backend)
    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(gaussians)
    return out, grads


def assert_matches_reference(out, grads, same_tiles=True):
    ref_out, ref_grads = _rendered("reference")
    assert float(jnp.min(ref_out.alpha)) == 0.0 and float(jnp.max(ref_out.alpha)) > 0.99  # empty and opaque pixels
    np.testing.assert_allclose(out.images, ref_out.images, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.alpha, ref_out.alpha, rtol=0, atol=1e-5)
    # Depth is composited as sum(weight * z) (checked absolutely) then divided by alpha.
    np.testing.assert_allclose(out.depth * out.alpha, ref_out.depth * ref_out.alpha, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out.depth, ref_out.depth, rtol=1e-5, atol=1e-5 * float(jnp.max(ref_out.depth)))
    if same_tiles:  # the reference counts intersections with 16-pixel tiles
        np.testing.assert_array_equal(out.stats.intersections, ref_out.stats.intersections)
    assert int(jnp.sum(out.stats.dropped_intersections)) == 0
    for field in GRAD_FIELDS:
        got, expected = getattr(grads, field), getattr(ref_grads, field)
        scale = float(jnp.max(jnp.abs(expected)))
        assert scale > 0, field
        error = float(jnp.max(jnp.abs(got - expected))) / scale
        assert error < 1e-4, f"{field}: relative gradient error {error:.2e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_and_gradients_match_reference(backend):
    assert_matches_reference(*_rendered(backend))


def test_tpu_kernels_match_reference_in_interpret_mode(monkeypatch):
    monkeypatch.setattr(renderer, "pallas_kernels", lambda platform, interpret: TpuKernels(chunk=8, interpret=True))
    gaussians, cameras, background, weights = _scene()
    loss = functools.partial(_loss_and_output, cameras=cameras, background=background, weights=weights, backend="pallas_interpret")
    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(gaussians)
    assert_matches_reference(out, grads)


TRITON_VARIANTS = [
    (8, TritonKernels(chunk=2, group_rows=2, group_cols=8)),
    (4, TritonKernels()),
    (
        16,
        TritonKernels(group_rows=8, group_cols=16, backward_block=(16, 16, 4), backward_chunk=2, gaussians_per_program=128),
    ),  # one backward program per tile, with its own chunk
    (8, TritonKernels(chunk=2, backward_block=(4, 8, 1), zero_block_rows=4)),  # several masked zero blocks per tile
    (8, TritonKernels()),  # the default kernels at 8-pixel tiles (the GPU setting of configs/paper.py): one program per tile
    # Rows gathered in sorted order and transposed (not read through the ids), gradient rows at sorted positions
    # (not at unsorted slots), one slot-kernel thread per rank (not a search by slot), the projection's gradient by XLA.
    (8, TritonKernels(indirect_rows=False, emission_rows=False, slot_search=False, projection_gradient=False)),
]


def test_triton_backward_chunk_is_two_for_whole_tile_programs_unless_set():
    assert TritonKernels().backward_rows_per_step(16) == 4  # 8x8 blocks: 4 programs per tile, the forward's chunk
    assert TritonKernels().backward_rows_per_step(8) == 2 and TritonKernels(backward_chunk=3).backward_rows_per_step(8) == 3


@pytest.mark.parametrize("tile_size, kernels", TRITON_VARIANTS)
def test_triton_kernels_match_reference_for_other_tiles_and_pixel_blocks(monkeypatch, tile_size, kernels):
    monkeypatch.setattr(renderer, "pallas_kernels", lambda platform, interpret: dataclasses.replace(kernels, interpret=True))
    gaussians, cameras, background, weights = _scene()
    loss = functools.partial(
        _loss_and_output, cameras=cameras, background=background, weights=weights, backend="pallas_interpret", tile_size=tile_size
    )
    (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(gaussians)
    assert_matches_reference(out, grads, same_tiles=False)


def test_reference_gradients_match_finite_differences(x64):
    """Central differences in float64 along random directions, per parameter group."""
    rng = np.random.default_rng(12)
    cameras = jax.tree.map(lambda x: x.astype(jnp.float64), random_cameras(rng, 2, image_size=(9, 11)))
    gaussians = random_gaussians(rng, 6, spread=0.5).astype(jnp.float64)
    weights = jnp.asarray(rng.normal(size=(2, 9, 11, 5)))

    def loss(g):
        out = rasterize(g, cameras, (9, 11), jnp.array([0.3, 0.5, 0.7]), backend="reference")
        return jnp.sum(out.images * weights[..., :3]) + jnp.sum(out.alpha * weights[..., 3:4]) + jnp.sum(out.depth * weights[..., 4:])

    loss = jax.jit(loss)
    grads = jax.grad(loss)(gaussians)
    eps = 1e-6
    for field in GRAD_FIELDS:
        direction = jnp.asarray(rng.normal(size=getattr(gaussians, field).shape))
        shifted = lambda s, field=field, direction=direction: jax.tree.map(
            lambda x, name: x + s * direction if name == field else x, gaussians, _field_names(gaussians)
        )
        numeric = (loss(shifted(eps)) - loss(shifted(-eps))) / (2 * eps)
        analytic = jnp.sum(getattr(grads, field) * direction)
        assert abs(float(numeric - analytic)) <= 1e-6 * max(1.0, abs(float(analytic))), field


def _field_names(gaussians):
    return type(gaussians)(*(f for f in ("means", "log_scales", "quaternions", "opacity_logits", "colors", "sh_rest")))


def test_auto_backend_is_xla_on_cpu():
    assert resolve_backend("auto") == ("pallas" if jax.default_backend() in ("gpu", "tpu") else "xla")


def test_buffer_overflow_is_counted_not_silent():
    gaussians, cameras, background, _ = _scene()
    render = jax.jit(lambda g, cap: rasterize(g, cameras, IMAGE_SIZE, background, backend="xla", max_intersections=cap), static_argnums=1)
    full, capped = render(gaussians, None), render(gaussians, 12)
    assert int(jnp.max(capped.stats.intersections)) == 12
    np.testing.assert_array_equal(capped.stats.intersections + capped.stats.dropped_intersections, full.stats.intersections)
    assert float(jnp.max(jnp.abs(capped.images - full.images))) > 1e-3
