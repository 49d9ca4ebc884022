"""The TPU paths lowered from this CPU host: each platform gets its own kernels, and the pod mesh shards.

The tiny config's full train step (Pallas TPU attention, loss, rasterizer, optimiser) is lowered
for TPU v5p and v6e on an abstract 2x2x2 data/fsdp/tensor mesh; the rasterizer and the exported
encode/decode are lowered for each platform from one traced function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax.export.exporting import export_model
from avat3r_jax.export.params import param_shapes
from avat3r_jax.model import abstract_model
from avat3r_jax.render import rasterize
from avat3r_jax.train.trainer import build_model_state
from configs.tiny import get_config
from launch import pod_plan
from tests.render.scenes import IMAGE_SIZE, random_cameras, random_gaussians

RASTER_KERNELS = {"splat_forward_tpu", "splat_backward_tpu"}
FLASH_KERNELS = {"_flash_attention_kernel", "_flash_attention_dkv_kernel", "_flash_attention_dq_kernel"}
GPU = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="cuda")
TPU_V5P = pod_plan.abstract_tpu_mesh((1, 1, 1), pod_plan.CHIPS["v5p"]).abstract_device


def tiny_tpu_config():
    config = get_config()
    config.model.patch_size = 4  # 2 views x (32 / 4)^2 = 128 tokens: the flash kernel's block
    return config


def target(device: jax.sharding.AbstractDevice):
    """Trace and lower for ``device`` with no mesh: an abstract mesh without axes that names the device."""
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=device))


@functools.cache
def train_step_plan(topology: str) -> dict:
    return pod_plan.plan(tiny_tpu_config(), topology, "2,2,2", per_chip_batch=1, with_collectives=False)


@pytest.mark.parametrize("topology", ["v5p-16", "v6e-8"])
def test_train_step_lowers_for_tpu_with_mosaic_kernels_only(topology):
    result = train_step_plan(topology)
    assert result["chips"] == 8 and result["global_batch"] == 4
    assert set(result["mosaic_kernels"]) == RASTER_KERNELS | FLASH_KERNELS
    assert result["triton_kernels"] == 0
    # The rasterizer runs per example (shard_map over data/fsdp), replicated over the tensor axis:
    # its gradient is summed over "tensor" by collectives written into the module.
    assert result["module_collectives"].get("all_reduce", 0) >= 1
    assert "ESTIMATES FROM LOWERING" in pod_plan.format_plan(result)


def test_train_state_and_activations_are_sharded_on_the_pod_mesh():
    """A sharding rule that replicates parameters or the batch axis would break these bounds."""
    result = train_step_plan("v5p-16")
    per_chip, total = result["bytes_per_chip"], result["bytes_total"]
    # Matrices split over fsdp x tensor (4 ways); small leaves (biases, norms, 3-channel kernels) less.
    assert per_chip["params"] < 0.36 * total["params"], per_chip
    assert per_chip["opt_state"] < 0.36 * total["opt_state"], per_chip
    largest = result["largest_activations_per_chip"]
    assert largest and all(a["bytes"] * 4 <= a["global_bytes"] for a in largest), largest  # batch over data x fsdp


def test_no_large_parameter_is_replicated():
    mesh = pod_plan.abstract_tpu_mesh((2, 2, 2), pod_plan.CHIPS["v5p"])
    state = build_model_state(tiny_tpu_config(), mesh)[2]
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        if np.prod(leaf.shape) * leaf.dtype.itemsize >= 32 * 1024:
            assert leaf.sharding.shard_shape(leaf.shape) != tuple(leaf.shape), f"{jax.tree_util.keystr(path)} {leaf.shape} is replicated"


def _raster_loss(gaussians, cameras):
    return jnp.sum(rasterize(gaussians, cameras, IMAGE_SIZE, jnp.ones(3), backend="auto").images)


@pytest.mark.parametrize(("platform", "device"), [("cuda", GPU), ("tpu", TPU_V5P)])
def test_rasterizer_gradient_carries_the_kernels_of_each_platform(platform, device):
    """Backend "auto", no patched default backend: Triton on cuda, Mosaic on tpu (and XLA on cpu,
    where a Pallas kernel would not even lower, as every CPU test shows)."""
    rng = np.random.default_rng(0)
    cameras = random_cameras(rng, 2, batch=(2,))
    gaussians = random_gaussians(rng, 40, batch=(2,), behind=cameras)
    with target(device):
        text = jax.jit(jax.grad(_raster_loss)).trace(gaussians, cameras).lower(lowering_platforms=(platform,)).as_text()
    triton, mosaic = text.count(pod_plan.TRITON_CALL), pod_plan.mosaic_kernels(text)
    if platform == "cuda":
        # binner's slots, forward, backward, per-Gaussian gradient sum and projection gradient kernels
        assert triton == 5 and not mosaic, (triton, mosaic)
    else:
        assert triton == 0 and set(mosaic) == RASTER_KERNELS, (triton, mosaic)


def test_exported_encode_decode_carry_flash_attention_only_for_tpu():
    config = tiny_tpu_config()
    config.model.attention_impl = "pallas_tpu"
    config.model.cross_attn_from_layer = 1  # one self-attention block in encode, one in decode
    config.model.depth = 2
    _, params = abstract_model(config)
    flat = {name: jax.ShapeDtypeStruct(shape, jnp.float32) for name, shape in param_shapes(params).items()}
    with target(pod_plan.abstract_tpu_mesh((1, 1, 1), pod_plan.CHIPS["v6e"]).abstract_device):
        for_tpu = export_model(config, flat, platforms=("tpu",))
    portable = export_model(config, flat, platforms=("cpu", "cuda"))
    for name in ("encode", "decode"):
        tpu_text, portable_text = for_tpu[name].mlir_module(), portable[name].mlir_module()
        assert set(pod_plan.mosaic_kernels(tpu_text)) == {"_flash_attention_kernel"}, name  # forward only
        assert "tpu_custom_call" not in portable_text and pod_plan.TRITON_CALL not in portable_text, name
