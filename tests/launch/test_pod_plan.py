"""launch.pod_plan's parsing: slice types, meshes, and the collectives of a compiled sharded program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from launch import pod_plan


@pytest.mark.parametrize(
    ("topology", "kind", "chips"), [("v5p-256", "TPU v5p", 128), ("v6e-64", "TPU v6 lite", 64), ("v5litepod-16", "TPU v5 lite", 16)]
)
def test_topology_counts_chips(topology, kind, chips):
    chip, count = pod_plan.parse_topology(topology)
    assert (chip.device_kind, count) == (kind, chips)


@pytest.mark.parametrize(
    ("topology", "mesh", "message"),
    [
        ("v9-8", "-1,1,1", "unknown topology"),
        ("v5p-7", "-1,1,1", "not a whole number"),
        ("v5p-16", "4,4,1", "does not split"),
        ("v5p-16", "2,2", "needs"),
    ],
)
def test_bad_topology_or_mesh_is_one_clear_error(topology, mesh, message):
    with pytest.raises(ValueError, match=message):
        pod_plan.parse_mesh(mesh, pod_plan.parse_topology(topology)[1])


def test_mesh_fills_the_free_axis():
    assert pod_plan.parse_mesh("-1,8,2", 128) == (8, 8, 2)


def test_collectives_of_an_fsdp_gradient_are_found_with_their_sizes():
    """Data x FSDP on 2 x 2 CPU devices: the weight is all-gathered over fsdp (2 chips, full size per chip)."""
    mesh = jax.make_mesh((2, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=jax.devices()[:4])
    w = jax.device_put(np.ones((64, 32), np.float32), NamedSharding(mesh, PartitionSpec("fsdp", None)))
    x = jax.device_put(np.ones((16, 64), np.float32), NamedSharding(mesh, PartitionSpec(("data", "fsdp"), None)))
    grad = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w) ** 2)), out_shardings=w.sharding)
    found = pod_plan.collectives(grad.lower(w, x).compile().as_text(), num_devices=4)
    ops = {c.op for c in found}
    assert "all-gather" in ops and ops & {"all-reduce", "reduce-scatter"}, found
    gathered = [c for c in found if c.op == "all-gather"]
    assert any(c.bytes == 64 * 32 * 4 and c.group == 2 for c in gathered), gathered


def test_wire_bytes_follow_ring_algorithms():
    assert pod_plan.wire_bytes("all-reduce", 1000, 4) == 1500.0
    assert pod_plan.wire_bytes("all-gather", 1000, 4) == 750.0
    assert pod_plan.wire_bytes("reduce-scatter", 250, 4) == 750.0
    assert pod_plan.wire_bytes("all-reduce", 1000, 1) == 0.0


def test_constrained_activations_are_divided_by_their_mesh_axes():
    text = (
        'sdy.mesh @mesh = <["data"=2, "fsdp"=4, "tensor"=2]>\n'
        'sdy.sharding_constraint %1 <@mesh, [{"data", "fsdp"}, {}, {"tensor"}]> : tensor<8x16x4xbf16>\n'
        "sdy.sharding_constraint %2 <@mesh, [{}, {}]> : tensor<4x4xf32>\n"
    )
    assert pod_plan.constrained_activations(text) == [(64, 1024, "8x16x4xbf16"), (64, 64, "4x4xf32")]


def test_model_flops_per_chip_split_the_blocks_over_tensor_and_the_rest_over_the_batch():
    from configs.tiny import get_config
    from launch.model_info import analytic_forward_flops

    config = get_config()
    forward = analytic_forward_flops(pod_plan.ModelSettings.from_config(config))
    total = sum(forward.values())
    data_parallel = pod_plan.model_flops_per_chip(config, (8, 1, 1), batch_size=8)
    assert data_parallel == pytest.approx(3 * total)  # one example per chip
    tensor_parallel = pod_plan.model_flops_per_chip(config, (2, 2, 2), batch_size=4)
    # 8 chips share 4 examples: the blocks once, everything else once per tensor-parallel pair.
    assert 8 * tensor_parallel == pytest.approx(3 * 4 * (total + total - forward["blocks"]))


def test_group_sizes_of_each_replica_group_format():
    mesh_axes = "%p = f32[1,16]{1,0} all-reduce(%x), replica_groups=mesh['data'=4,'fsdp'=2,'tensor'=1] {'tensor'}, to_apply=%r"
    assert pod_plan._group_size(mesh_axes, 8) == 1
    assert pod_plan._group_size(mesh_axes.replace("{'tensor'}", "{'data','fsdp'}"), 8) == 8
    assert pod_plan._group_size("all-gather(%x), replica_groups=[2,4]<=[8], dimensions={0}", 8) == 4
    assert pod_plan._group_size("all-gather(%x), replica_groups={{0,1},{2,3}}, dimensions={0}", 8) == 2
