"""The gsplat side-by-side plumbing of launch/bench_raster.py (gsplat itself needs CUDA: GPU runs only)."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from launch import bench_raster


@pytest.fixture
def parsed_flags():
    """The bench's flag defaults (``--tile_size=16``) readable without a command line."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@pytest.fixture
def tiny_scene(monkeypatch, parsed_flags):
    monkeypatch.setitem(bench_raster.SCENE_SPECS, "tiny", bench_raster.SceneSpec("large", 40, 32, 2, 0, max_tiles=4))
    bench_raster._scene.cache_clear()
    yield "tiny"
    bench_raster._scene.cache_clear()


def test_scene_file_holds_what_the_gsplat_runner_reads(tiny_scene, tmp_path):
    bench_raster.write_gsplat_scene(tiny_scene, tmp_path / "tiny.npz", repeats=3)
    scene = np.load(tmp_path / "tiny.npz")
    shapes = {k: scene[k].shape for k in scene}
    assert shapes["means"] == shapes["scales"] == shapes["colors"] == (40, 3) and shapes["quats"] == (40, 4)
    assert shapes["opacities"] == (40,) and shapes["viewmats"] == (2, 4, 4) and shapes["Ks"] == (2, 3, 3)
    assert shapes["weights"] == (2, 32, 32, 4) and int(scene["height"]) == int(scene["width"]) == 32 and int(scene["repeats"]) == 3
    np.testing.assert_allclose(np.linalg.norm(scene["quats"], axis=-1), 1.0, rtol=1e-5)
    _, _, capacity, _ = bench_raster.scene(tiny_scene)
    assert capacity % 65536 == 0  # sized from the busiest view, in steps of 65,536


def test_comparison_is_zero_against_itself_and_sees_a_change(tiny_scene):
    params = bench_raster.scene(tiny_scene)[0]
    weights = jnp.asarray(bench_raster._comparison_weights(tiny_scene))
    render = bench_raster._render(tiny_scene, "reference")

    def loss(params):
        out = render(bench_raster.gaussians_of(params))
        return jnp.sum(out.images * weights[..., :3]) + jnp.sum(out.alpha * weights[..., 3:]), out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(params)
    assert float(jnp.max(out.alpha)) > 0.1  # the scene is seen
    reference = {"images": np.asarray(out.images), "alpha": np.asarray(out.alpha)}
    reference |= {f"grad_{k}": np.asarray(grads[k]) for k in bench_raster.GSPLAT_PARAMETERS}
    same = bench_raster.compare_with_gsplat(tiny_scene, reference, backend="reference")
    assert same["image_max_abs"] < 1e-6 and max(same["grad_rel"].values()) < 1e-6
    reference["grad_means"] = 2 * reference["grad_means"]
    reference["images"] = reference["images"] + 0.25
    changed = bench_raster.compare_with_gsplat(tiny_scene, reference, backend="reference")
    assert changed["image_max_abs"] == pytest.approx(0.25, abs=1e-5) and changed["grad_rel"]["means"] == pytest.approx(0.5, abs=1e-4)


def test_gsplat_runner_names_a_missing_scene_file(tmp_path):
    missing = tmp_path / "absent.npz"
    command = [sys.executable, "-m", "launch.bench_raster_gsplat", f"--out={tmp_path}", str(missing)]
    run = subprocess.run(command, capture_output=True, text=True)
    assert run.returncode != 0 and f"error: no scene file {missing}" in run.stderr


def test_profile_idle_time_is_the_gaps_within_calls():
    from launch.kernel_profile import idle_ns

    # Two calls: events [0, 10], [12, 20] (overlapping [15, 18]) then, after the host's gap, [100, 105], [109, 110].
    spans = [(100, 105), (0, 10), (15, 18), (12, 20), (109, 110)]
    assert idle_ns(spans, calls=2) == 2 + 4  # the gap of 80 between the calls is left out
    assert idle_ns(spans, calls=1) == 2 + 80 + 4 and idle_ns([(0, 5)], calls=3) == 0


def test_profile_names_drop_template_arguments():
    from launch.kernel_profile import short_name

    cub = "void cub::_V_3::detail::radix_sort::DeviceRadixSortOnesweepKernel<cub::policy<int>, int>(int*, int const*)"
    assert short_name(cub) == "cub::_V_3::detail::radix_sort::DeviceRadixSortOnesweepKernel"
    assert short_name("splat_backward") == "splat_backward" and short_name("sort_3_1__14") == "sort_3_1__14"


def test_kernel_variants_parse_into_triton_settings_and_bad_ones_are_named(parsed_flags):
    from avat3r_jax.render.pallas_triton import TritonKernels

    Variant = bench_raster.Variant
    assert bench_raster.parse_variant("2x1x8x16") == Variant(TritonKernels(chunk=2, num_warps=1, group_rows=8, group_cols=16))
    variant = bench_raster.parse_variant("4x1x8x8+b16x16x4")
    assert variant == Variant(TritonKernels(backward_block=(16, 16, 4)))
    assert bench_raster.variant_label(variant) == "chunk=4/2 fwd=8x8/1w bwd=16x16/4w zero_blocks=32 sum_block=32"
    variant = bench_raster.parse_variant("4x1x8x8+z16+g128+c3+t8")
    assert variant == Variant(TritonKernels(zero_block_rows=16, gaussians_per_program=128, backward_chunk=3), tile_size=8)
    assert bench_raster.variant_label(variant) == "chunk=4/3 fwd=8x8/1w bwd=8x8/1w zero_blocks=16 sum_block=128 tile=8"
    assert bench_raster.variant_label(Variant(TritonKernels())).startswith("chunk=4/4 ")  # 16-pixel tiles: 4 blocks per tile
    variant = bench_raster.parse_variant("4x1x8x8+d+w+t8@train/large")
    assert variant == Variant(TritonKernels(indirect_rows=False), tile_size=8, wide_keys=True, scenes=("train", "large"))
    assert bench_raster.variant_label(variant).endswith("tile=8 gathered_rows int32_tile_keys")
    variant = bench_raster.parse_variant("4x1x8x8+e0+s0+l+j0")
    assert variant == Variant(TritonKernels(emission_rows=False, slot_search=False, projection_gradient=False), search_loop=True)
    label = bench_raster.variant_label(variant)
    assert label.endswith("sum_block=32 search_loop sorted_gradient_rows rank_slot_kernel xla_projection_gradient")
    variant = bench_raster.parse_variant("4x1x8x8+xmin1")
    assert variant == Variant(TritonKernels(), xla_options="min1")
    assert bench_raster.variant_label(variant).endswith("sum_block=32 xla_options=min1")
    bad_options = ("q", "v", "b16x16", "z", "gx", "t0", "t", "k", "c0", "i", "d2", "e", "s1", "y", "j", "w@nowhere", "x", "xnone")
    for bad in ("4x1x8", "ax1x8x8", *(f"4x1x8x8+{option}" for option in bad_options)):
        with pytest.raises(SystemExit, match=re.escape(f"kernel variant '{bad}'")):
            bench_raster.parse_variant(bad)


def test_scene_buffer_and_tile_bound_follow_the_tile_size(tiny_scene):
    _, _, capacity16, max_tiles16 = bench_raster.scene(tiny_scene, 16)
    _, _, capacity8, max_tiles8 = bench_raster.scene(tiny_scene, 8)
    assert (max_tiles16, max_tiles8) == (4, 16)  # the same footprint area in pixels
    assert capacity8 % 65536 == 0 and capacity8 >= capacity16


def test_gradient_fingerprint_is_float64_sums_per_field():
    from avat3r_jax.gaussians import from_activated

    rng = np.random.default_rng(3)
    params = {
        k: jnp.asarray(rng.uniform(0.1, 1, shape), jnp.float32)
        for k, shape in (("m", (5, 3)), ("s", (5, 3)), ("q", (5, 4)), ("o", (5,)), ("c", (5, 3)))
    }
    grads = from_activated(params["m"], params["s"], params["q"], params["o"], params["c"])
    fingerprint = bench_raster.gradient_fingerprint(grads)
    assert set(fingerprint) == {"means", "log_scales", "quaternions", "opacity_logits", "colors"}
    means = np.asarray(grads.means, np.float64)
    assert fingerprint["means"] == [pytest.approx(means.sum(), rel=1e-12), pytest.approx(np.abs(means).sum(), rel=1e-12)]


def test_xla_option_sets_compile_and_thunks_are_counted_from_the_entry():
    x = jnp.arange(8.0)
    for options in bench_raster.XLA_OPTION_SETS.values():  # every field name is one XLA knows (else: "No such compile option")
        compiled = jax.jit(lambda v: jnp.sin(v) * 2).lower(x).compile(compiler_options=options)
        np.testing.assert_allclose(compiled(x), np.sin(np.arange(8.0)) * 2, rtol=1e-6)
    hlo = """HloModule m

%fused (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %s = f32[4]{0} sine(%p)
}

ENTRY %main (a: f32[4]) -> (f32[4], f32[4]) {
  %a = f32[4]{0} parameter(0)
  %c = f32[] constant(1)
  %call = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused
  %k = f32[4]{0} custom-call(%call), custom_call_target="__gpu$xla.gpu.triton"
  %b = f32[4]{0} bitcast(%k)
  ROOT %t = (f32[4]{0}, f32[4]{0}) tuple(%call, %b)
}
"""
    assert bench_raster.program_thunks(hlo) == {"ops": 2, "triton_calls": 1}
