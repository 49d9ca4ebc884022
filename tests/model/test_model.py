"""The full model on tiny configs: shapes, init, expression/view structure, ablations, render at init."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avat3r_jax.geometry import Cameras, camera_rays, transform_points
from avat3r_jax.model import Avat3r, ModelSettings
from avat3r_jax.model.blocks import BlockStack
from avat3r_jax.render import rasterize
from tests.model.scene import rngs, sphere_batch, tiny_config

forward = nnx.jit(lambda model, batch: model(batch))
encode = nnx.jit(lambda model, batch: model.encode(batch))
decode = nnx.jit(lambda model, context, expression: model.decode(context, expression))


def assert_gaussians_close(a, b, atol):
    for name in ("means", "log_scales", "quaternions", "opacity_logits", "colors", "sh_rest"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=atol, err_msg=name)


def randomize_output_layer(model: Avat3r, seed: int) -> None:
    """Gives the head's (partly zero-initialised) last projection random weights, so every output moves."""
    kernel = model.head.out.kernel
    kernel[...] = 0.5 * jax.random.normal(jax.random.key(seed), kernel.shape)


@pytest.fixture(scope="module")
def config():
    return tiny_config(cross_attn_from_layer=1)


@pytest.fixture(scope="module")
def model(config):
    return Avat3r(config, rngs=rngs(0))


@pytest.fixture(scope="module")
def batch(config):
    return sphere_batch(config, batch_size=2)


def test_shapes_finite_and_float32(model, batch, config):
    gaussians = forward(model, batch)
    b, v, h, w = batch["images"].shape[:4]
    n = v * h * w
    assert gaussians.batch_shape == (b,) and gaussians.count == n
    assert gaussians.means.shape == (b, n, 3) and gaussians.quaternions.shape == (b, n, 4)
    assert gaussians.sh_rest.shape == (b, n, 0, 3)
    for leaf in jax.tree.leaves(gaussians):
        assert leaf.dtype == jnp.float32
        assert np.isfinite(np.asarray(leaf)).all()


def test_call_is_decode_of_encode(model, batch):
    context = encode(model, batch)
    assert context.tokens.shape == (2, 2 * 4 * 4, 64)
    split = decode(model, context, batch["expression"])
    assert_gaussians_close(split, forward(model, batch), atol=0.0)


def test_untrained_model_sits_on_its_inputs(model, batch, config):
    """xyz = posmap, colour = pixel exactly; opacity near init; std = init_scale_pixels * depth / f."""
    g = forward(model, batch)
    b, v, h, w = batch["images"].shape[:4]
    np.testing.assert_array_equal(g.means, batch["posmaps"].reshape(b, -1, 3))
    np.testing.assert_array_equal(g.colors, batch["images"].reshape(b, -1, 3))
    opacity = np.asarray(g.opacities)
    assert abs(opacity.mean() - config.model.init_opacity) < 0.02 and opacity.min() > 0.2 and opacity.max() < 0.4
    depth = transform_points(batch["world_to_cam"], batch["posmaps"].reshape(b, v, -1, 3))[..., 2]  # [B, V, H*W]
    expected = config.model.init_scale_pixels * depth / batch["K"][:, :, 0, 0][..., None]
    scales = np.asarray(g.scales).reshape(b, v, h * w, 3)
    np.testing.assert_allclose(scales, np.broadcast_to(expected[..., None], scales.shape), rtol=0.1)
    np.testing.assert_allclose(jnp.linalg.norm(g.quaternions, axis=-1), 1.0, rtol=1e-6)


def test_initial_model_renders_its_input_views(model, batch, config):
    """Rendered from an input camera, the untrained avatar reproduces that photo: PSNR > 24 dB.

    (A constant image of the mean colour scores about 14 dB on this scene; measured ~26-27 dB.)
    """
    gaussians = forward(model, batch)
    cameras = Cameras(jnp.asarray(batch["K"]), jnp.asarray(batch["world_to_cam"]))
    size = batch["images"].shape[2:4]
    rendered = jax.jit(lambda g, c: rasterize(g, c, size, jnp.zeros(3), backend="reference"))(gaussians, cameras)
    mse = np.mean((np.asarray(rendered.images) - batch["images"]) ** 2, axis=(2, 3, 4))  # [B, V]
    psnr = -10 * np.log10(mse)
    assert psnr.min() > 24.0, psnr
    baseline = np.mean((batch["images"] - batch["images"].mean(axis=(2, 3), keepdims=True)) ** 2, axis=(2, 3, 4))
    assert (psnr > -10 * np.log10(baseline) + 8).all()


def test_expression_changes_gaussians_and_nothing_else(config, batch):
    model = Avat3r(config, rngs=rngs(1))
    randomize_output_layer(model, seed=2)
    other = dict(batch, expression=batch["expression"][::-1] + 1.0)
    context = encode(model, batch)
    # The expression-independent part is literally independent of the expression ...
    np.testing.assert_array_equal(encode(model, other).tokens, context.tokens)
    first, second = decode(model, context, batch["expression"]), decode(model, context, other["expression"])
    # ... and the expression moves every per-Gaussian quantity of every Gaussian set.
    for name in ("means", "log_scales", "quaternions", "opacity_logits", "colors"):
        change = np.abs(np.asarray(getattr(first, name)) - np.asarray(getattr(second, name)))
        assert (change.reshape(2, -1).max(axis=1) > 1e-5).all(), name
    # Changing one sample's expression leaves the other sample untouched.
    one = np.asarray(batch["expression"]).copy()
    one[0] += 1.0
    third = decode(model, context, one)
    np.testing.assert_array_equal(third.means[1], first.means[1])
    assert np.abs(np.asarray(third.means[0] - first.means[0])).max() > 1e-5


@pytest.mark.parametrize("use_view_embedding", [False, True])
def test_view_permutation_permutes_per_view_gaussians(batch, use_view_embedding):
    model = Avat3r(tiny_config(cross_attn_from_layer=1, use_view_embedding=use_view_embedding), rngs=rngs(3))
    randomize_output_layer(model, seed=4)
    permutation = np.array([1, 0])
    permuted = {key: value if key == "expression" else value[:, permutation] for key, value in batch.items()}
    b, v, h, w = batch["images"].shape[:4]
    blocks = lambda x: np.asarray(x).reshape(b, v, h * w, *x.shape[2:])  # [B, V, H*W, ...]
    original, shuffled = forward(model, batch), forward(model, permuted)
    differences = [
        np.abs(blocks(getattr(original, field))[:, permutation] - blocks(getattr(shuffled, field))).max()
        for field in ("means", "log_scales", "quaternions", "opacity_logits", "colors")
    ]
    if use_view_embedding:
        assert max(differences) > 1e-4  # the learned view embedding is the only view-order dependence
    else:
        assert max(differences) < 2e-5, differences


@pytest.mark.parametrize(
    ("switch", "dropped_key"),
    [("use_posmap", "posmaps"), ("use_features", "features"), ("use_plucker", None), ("use_view_embedding", None)],
)
def test_each_optional_input_can_be_switched_off(batch, switch, dropped_key):
    config = tiny_config(cross_attn_from_layer=1, **{switch: False})
    model = Avat3r(config, rngs=rngs(5))
    inputs = {k: v for k, v in batch.items() if k not in (dropped_key, "posmap_valid" if dropped_key == "posmaps" else None)}
    gaussians = forward(model, inputs)
    assert gaussians.means.shape == (2, 2 * 32 * 32, 3)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(gaussians))
    if switch == "use_plucker":
        # Plücker rays gone: the cameras only size the Gaussians, a camera rotation about its own
        # axis keeps every depth and focal length and so changes nothing.
        flip = np.diag([-1.0, -1.0, 1.0, 1.0]).astype(np.float32)
        turned = dict(inputs, world_to_cam=flip @ inputs["world_to_cam"])
        assert_gaussians_close(forward(model, turned), gaussians, atol=1e-6)
    if switch == "use_posmap":
        # Without position maps each Gaussian starts on its pixel's ray, at the origin's depth.
        origins, dirs = camera_rays(jnp.asarray(batch["K"]), jnp.asarray(batch["world_to_cam"]), 32, 32)
        means = np.asarray(gaussians.means).reshape(origins.shape)
        off_ray = np.cross(means - np.asarray(origins), np.asarray(dirs))
        assert np.abs(off_ray).max() < 1e-5
        camera_z = transform_points(batch["world_to_cam"], means.reshape(2, 2, -1, 3))[..., 2]
        np.testing.assert_allclose(camera_z, np.broadcast_to(batch["world_to_cam"][:, :, 2, 3][..., None], camera_z.shape), rtol=1e-5)


def test_untrusted_posmap_pixels_are_masked(model, batch):
    valid = np.ones_like(batch["posmap_valid"])
    valid[:, :, :16] = 0.0
    noisy = batch["posmaps"].copy()
    noisy[:, :, :16] += 0.05
    tokens = lambda posmaps, posmap_valid: encode(model, dict(batch, posmaps=posmaps, posmap_valid=posmap_valid)).tokens
    np.testing.assert_array_equal(tokens(noisy, valid), tokens(batch["posmaps"], valid))
    assert np.abs(np.asarray(tokens(noisy, np.ones_like(valid)) - tokens(batch["posmaps"], np.ones_like(valid)))).max() > 1e-4


def test_every_parameter_gets_a_finite_nonzero_gradient(config, batch):
    model = Avat3r(config, rngs=rngs(6))  # one block without, one with cross-attention
    randomize_output_layer(model, seed=8)

    def loss(model: Avat3r) -> jax.Array:
        g = model(batch)
        terms = (g.means**2, g.log_scales, g.quaternions[..., 1:] ** 2, g.colors * g.opacities[..., None])
        return sum(jnp.sum(term) for term in terms)

    grads = nnx.jit(nnx.grad(loss))(model)
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        name, leaf = jax.tree_util.keystr(path), np.asarray(leaf)
        assert np.isfinite(leaf).all(), name
        assert np.abs(leaf).max() > 0.0, name


@pytest.mark.slow
def test_scan_with_remat_equals_python_loop_with_gradients(rng):
    """Blocks stacked under nnx.scan + remat compute the unrolled loop's function and gradients."""
    loop_settings = ModelSettings.from_config(tiny_config(depth=3))
    scan_settings = ModelSettings.from_config(tiny_config(depth=3, scan_layers=True, remat_policy="dots_saveable"))
    loop = BlockStack(loop_settings, 3, cross=True, rngs=rngs(6))
    scanned = BlockStack(scan_settings, 3, cross=True, rngs=rngs(7))
    state = nnx.state(scanned)
    layers = [nnx.to_pure_dict(nnx.state(block)) for block in loop.blocks]
    nnx.replace_by_pure_dict(state, {"blocks": jax.tree.map(lambda *xs: np.stack(xs), *layers)})
    nnx.update(scanned, state)
    assert scanned.blocks.mlp.up.kernel.shape == (3, 64, 256)

    tokens = jnp.asarray(rng.normal(size=(2, 12, 64)), jnp.float32)
    expression = jnp.asarray(rng.normal(size=(2, 4, 64)), jnp.float32)
    loss = lambda stack, tokens: jnp.sum(jnp.sin(stack(tokens, expression)))
    grad = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1)))
    loss_loop, (params_loop, tokens_loop) = grad(loop, tokens)
    loss_scan, (params_scan, tokens_scan) = grad(scanned, tokens)
    np.testing.assert_allclose(loss_scan, loss_loop, rtol=1e-5)
    np.testing.assert_allclose(tokens_scan, tokens_loop, rtol=1e-4, atol=1e-6)
    stacked_loop = jax.tree.map(lambda *xs: np.stack(xs), *[nnx.to_pure_dict(layer) for layer in params_loop["blocks"].values()])
    for got, want in zip(jax.tree.leaves(nnx.to_pure_dict(params_scan)["blocks"]), jax.tree.leaves(stacked_loop)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_matches_float32(batch):
    f32 = Avat3r(tiny_config(cross_attn_from_layer=1), rngs=rngs(9))
    bf16 = Avat3r(tiny_config(cross_attn_from_layer=1, dtype="bfloat16"), rngs=rngs(9))
    for model in (f32, bf16):
        randomize_output_layer(model, seed=10)
    assert bf16.head.out.kernel[...].dtype == jnp.float32  # parameters stay float32
    a, b = forward(f32, batch), forward(bf16, batch)
    assert b.means.dtype == jnp.float32
    np.testing.assert_allclose(b.means, a.means, atol=2e-3)  # offsets are bounded by 0.02 m
    np.testing.assert_allclose(b.opacity_logits, a.opacity_logits, atol=0.15)


def test_bad_configs_and_batches_are_named():
    with pytest.raises(ValueError, match="patch_size"):
        Avat3r(tiny_config(patch_size=5), rngs=rngs(0))
    with pytest.raises(ValueError, match="num_heads"):
        Avat3r(tiny_config(num_heads=3), rngs=rngs(0))
    with pytest.raises(ValueError, match="cross_attn_from_layer"):
        Avat3r(tiny_config(cross_attn_from_layer=2), rngs=rngs(0))
    with pytest.raises(ValueError, match="attention_impl"):
        Avat3r(tiny_config(attention_impl="flash"), rngs=rngs(0))
    with pytest.raises(ValueError, match="cuDNN flash attention has no float32"):
        Avat3r(tiny_config(attention_impl="cudnn"), rngs=rngs(0))
    with pytest.raises(ValueError, match="remat_policy"):
        Avat3r(tiny_config(remat_policy="sometimes"), rngs=rngs(0))


def test_bad_batches_are_named(model, batch):
    with pytest.raises(ValueError, match="posmaps"):
        encode(model, {k: v for k, v in batch.items() if k != "posmaps"})
    with pytest.raises(ValueError, match="images must be"):
        encode(model, dict(batch, images=batch["images"][:, :, :16]))
    with pytest.raises(ValueError, match="world_to_cam"):
        encode(model, dict(batch, world_to_cam=batch["world_to_cam"][:, :1]))
    with pytest.raises(ValueError, match="feature_channels"):
        encode(model, dict(batch, features=batch["features"][..., :3]))
    context = encode(model, batch)
    with pytest.raises(ValueError, match="expression must have shape"):
        decode(model, context, batch["expression"][:, :3])
