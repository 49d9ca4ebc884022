"""The training objective: predict Gaussians, render the target views, compare with ground truth."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from avat3r_jax import sharding
from avat3r_jax.batch_dtypes import to_float32
from avat3r_jax.geometry import Cameras
from avat3r_jax.render import rasterize_with_config
from avat3r_jax.spec import Batch
from avat3r_jax.train import losses, metrics, perceptual


def composite_on(images: jax.Array, masks: jax.Array, background: jax.Array) -> jax.Array:
    """Ground truth ``[B, T, H, W, 3]`` over ``background [B, 1, 3]`` using alpha ``[B, T, H, W, 1]``."""
    return images * masks + background[:, :, None, None, :] * (1.0 - masks)


def render_targets(model: nnx.Module, batch: Batch, config: ml_collections.ConfigDict, background: jax.Array):
    """Predicts the avatar and renders it into the target cameras; background ``[B, 1, 3]``.

    Under a mesh whose batch axes split the batch, each device renders its own examples
    (``shard_map``): the rasterizer's sorts and scatters never leave the device.
    """
    gaussians = model(batch)
    cameras = Cameras(batch["target_K"], batch["target_world_to_cam"])
    image_size = tuple(batch["target_images"].shape[-3:-1])
    render = functools.partial(render_batch, image_size=image_size, render_config=config.render)
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        spec = sharding.logical_to_spec(("batch",), (background.shape[0],), mesh)
        if spec != jax.sharding.PartitionSpec(None):
            render = jax.shard_map(render, in_specs=spec, out_specs=spec, check_vma=False)
    return render(gaussians, cameras, background)


def default_background(render_config: ml_collections.ConfigDict, batch_size: int) -> jax.Array:
    """``render.background`` for every example -> ``[B, 1, 3]``."""
    return jnp.broadcast_to(jnp.asarray(render_config.background, jnp.float32), (batch_size, 1, 3))


def render_batch(gaussians, cameras: Cameras, background: jax.Array, *, image_size: tuple[int, int], render_config):
    """Gaussians ``[B, N]`` into ``cameras [B, T]`` over ``background [B, 1, 3]`` with ``config.render``,
    ``render.examples_per_pass`` examples at a time."""
    render = lambda g, c, bg: rasterize_with_config(g, c, image_size, render_config, background=bg)
    return render_in_passes(render, render_config.examples_per_pass, gaussians, cameras, background)


def render_in_passes(render, examples_per_pass: int, gaussians, cameras: Cameras, background: jax.Array):
    """``render(gaussians [B, N], cameras [B, T], background [B, 1, 3])``, ``examples_per_pass`` examples
    at a time (all at once for 0).

    The passes run in a ``lax.map``, so the rasterizer's per-intersection buffers (forward and
    backward) hold one pass's views at a time instead of the whole batch's; the result is the same.
    """
    batch = background.shape[0]
    if examples_per_pass <= 0 or examples_per_pass >= batch:
        return render(gaussians, cameras, background)
    if batch % examples_per_pass:
        raise ValueError(f"render.examples_per_pass={examples_per_pass} does not divide the (per-device) batch of {batch}")
    passes = batch // examples_per_pass
    grouped = jax.tree.map(lambda x: x.reshape((passes, examples_per_pass) + x.shape[1:]), (gaussians, cameras, background))
    rendered = jax.lax.map(lambda args: render(*args), grouped)
    return jax.tree.map(lambda x: x.reshape((batch,) + x.shape[2:]), rendered)


def load_extras(train_config: ml_collections.ConfigDict) -> dict:
    """Frozen loss inputs: the LPIPS VGG16 weights when ``train.perceptual_weight > 0`` (local file only)."""
    if train_config.perceptual_weight <= 0:
        return {}
    if not train_config.perceptual_weights_path:
        raise ValueError("train.perceptual_weight > 0 needs train.perceptual_weights_path (a local VGG16/LPIPS .npz)")
    return {"vgg": perceptual.load_vgg_npz(train_config.perceptual_weights_path, require_lpips=True)}


def make_loss_fn(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict):
    """``loss_fn(params, batch, rng, extras) -> (loss, metrics)`` for ``avat3r_jax.train.step``.

    With ``train.random_background`` each example's targets are composited over a random colour
    (and rendered over the same one), so the model cannot paint the background into Gaussians.
    ``extras`` is ``load_extras(config.train)``; its VGG weights drive the LPIPS term.
    """

    def loss_fn(params: nnx.State, batch: Batch, rng: jax.Array, extras: dict):
        model = nnx.merge(graphdef, params)
        batch = to_float32(batch)  # on the device, inside the jitted step
        batch_size = batch["target_images"].shape[0]
        if config.train.random_background:
            background = jax.random.uniform(rng, (batch_size, 1, 3))
        else:
            background = default_background(config.render, batch_size)
        rendered = render_targets(model, batch, config, background)
        target = composite_on(batch["target_images"], batch["target_masks"], background)
        perceptual_fn = functools.partial(perceptual.lpips, extras["vgg"]) if extras and "vgg" in extras else None
        loss, terms = losses.photometric_loss(
            rendered.images, target, rendered.alpha, batch["target_masks"], config.train, perceptual_fn=perceptual_fn
        )
        scalars = {f"{name}_loss": jnp.mean(value) for name, value in terms.items()}  # ssim_loss is 1 - SSIM
        scalars["psnr"] = jnp.mean(metrics.psnr(jnp.clip(rendered.images, 0.0, 1.0), target))
        # Binning overflow is never silent: averaged per view like the other metrics.
        scalars["dropped_intersections"] = jnp.mean(rendered.stats.dropped_intersections.astype(jnp.float32))
        scalars["overflow_gaussians"] = jnp.mean(rendered.stats.overflow_gaussians.astype(jnp.float32))
        return loss, scalars

    return loss_fn


def evaluate_batch(model: nnx.Module, batch: Batch, config: ml_collections.ConfigDict):
    """Per-example eval metrics and the renders, over the configured (fixed) background."""
    batch = to_float32(batch)
    batch_size = batch["target_images"].shape[0]
    background = default_background(config.render, batch_size)
    rendered = render_targets(model, batch, config, background)
    target = composite_on(batch["target_images"], batch["target_masks"], background)
    prediction = jnp.clip(rendered.images, 0.0, 1.0)
    scores = {
        "psnr": jnp.mean(metrics.psnr(prediction, target), axis=-1),
        "ssim": jnp.mean(metrics.ssim(prediction, target), axis=-1),
        "mean_color_psnr": jnp.mean(metrics.mean_color_psnr(target), axis=-1),
    }
    return scores, prediction, target
