"""Rasterizer benchmark: forward and forward+backward time and planned peak memory per backend.

``python -m launch.bench_raster`` renders these scenes (``--scenes``):
  (a) a head-sized shell of pixel-aligned Gaussians, one per pixel of 4 input views of 64^2
      (16,384 Gaussians) -> 4 target views of 128^2;  (b) 4 x 256^2 = 262,144 -> 4 x 512^2;
  (c) 4 x 512^2 = 1,048,576 -> 4 x 512^2;  (train) the paper's training render, the same
      1,048,576 Gaussians -> 8 orbit views of 512^2;  (large) 32,768 random Gaussians of 3-15 mm
      (tens of tiles each) -> 4 x 512^2;  (train64) the CPU training case, 16,384 -> 4 x 64^2.
Times are medians of ``--repeats`` jitted calls after a warm-up; memory is XLA's plan for the whole
jitted function (arguments + outputs + temporaries); each run also records a float64 fingerprint
of its gradients, so kernel variants can be checked equal. ``--variants=...`` also times other
Triton kernel settings and tile sizes on the GPU (:func:`parse_variant`; ``--variant_scenes`` limits
them to some scenes); ``--profile`` adds each kernel's device time in the pallas fwd+bwd. ``--gsplat`` renders
the same scenes through ``gsplat.rasterization`` in a separate process
(``launch/bench_raster_gsplat.py``) and prints both times, their ratio and how far the images and
gradients are apart. ``--json=PATH`` writes every number.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from launch.kernel_profile import device_kernel_ms

SCENES = flags.DEFINE_list("scenes", ["a", "b"], "Scenes to run: a, b, c, train, large, train64.")
BACKENDS = flags.DEFINE_list("backends", ["pallas", "xla", "reference"], "Rasterizer backends to time.")
REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per measurement (median reported).")
VARIANTS = flags.DEFINE_list(
    "variants",
    [],
    "Extra Triton kernel settings to time: CHUNKxWARPSxROWSxCOLS[+OPTION...][@SCENE/...] (see parse_variant).",
)
VARIANT_SCENES = flags.DEFINE_list("variant_scenes", None, "Scenes the --variants run on (default: all of --scenes).")
REFERENCE_LIMIT_GIB = flags.DEFINE_float("reference_limit_gib", 60.0, "Skip a run whose planned memory exceeds this.")
JSON_PATH = flags.DEFINE_string("json", None, "Write all results to this JSON file.")
TILE_SIZE = flags.DEFINE_integer("tile_size", 16, "Tile size in pixels.")
BUFFER = flags.DEFINE_integer("max_intersections", 0, "Per-view intersection buffer (0: the scene's own).")
CHECK = flags.DEFINE_bool("check", False, "First compare every backend with the reference on a small shell (forward and gradients).")
PROFILE = flags.DEFINE_bool("profile", False, "Also record the device time per kernel of the pallas fwd+bwd (profiler trace).")
PROFILE_TOP = flags.DEFINE_integer("profile_top", 16, "Kernels listed per profile (largest first).")
COMPOSITE_ONLY = flags.DEFINE_bool("composite_only", True, "Also time the pallas compositor alone on precomputed bins.")
GSPLAT = flags.DEFINE_bool("gsplat", False, "Also render every scene through gsplat (its own process) and compare.")
GSPLAT_PREBUILT = flags.DEFINE_string("gsplat_prebuilt", None, "A gsplat_cuda.so from an earlier run (skips its JIT build).")


@dataclasses.dataclass(frozen=True)
class SceneSpec:
    kind: str  # "shell": pixel-aligned head shell; "large": random large Gaussians
    size: int  # shell: input resolution (size^2 Gaussians per input view); large: number of Gaussians
    target: int  # target image resolution (square)
    cameras: int  # target views
    capacity: int  # per-view buffer at 16-pixel tiles; 0 (and at other sizes): 1.2x the busiest view's, in steps of 65,536
    max_tiles: int = 16  # max_tiles_per_gaussian at 16-pixel tiles (scaled by the tile area at other sizes)


SCENE_SPECS = {
    "a": SceneSpec("shell", 64, 128, 4, 1 << 16),
    "b": SceneSpec("shell", 256, 512, 4, 655360),
    "c": SceneSpec("shell", 512, 512, 4, 0),
    "train": SceneSpec("shell", 512, 512, 8, 0),
    "large": SceneSpec("large", 32768, 512, 4, 0, max_tiles=256),
    "train64": SceneSpec("shell", 64, 64, 4, 1 << 16),
}
HEAD_AXES = (0.08, 0.11, 0.095)  # metres: ellipsoid semi-axes of the head-sized shell
NEAR, FAR = 0.01, 100.0
GSPLAT_PARAMETERS = ("means", "quats", "scales", "opacities", "colors")  # activated, gsplat's names
TRITON_CALL = "__gpu$xla.gpu.triton"  # XLA's custom-call target of a Pallas Triton kernel
GRAPHS_PROFILED = {"xla_enable_command_buffers_during_profiling": True}  # --profile then sees the CUDA graphs as they run
XLA_OPTION_SETS = {  # ``+xNAME``: XLA:GPU compile options of the timed fwd and fwd+bwd (command buffers: CUDA graphs)
    "off": {"xla_gpu_enable_command_buffer": ""},  # no command buffers: every kernel launched by the host
    "prof": GRAPHS_PROFILED,  # XLA's defaults
    "min1": {"xla_gpu_graph_min_graph_size": 1, **GRAPHS_PROFILED},  # graphs of any length (XLA's minimum: 5 thunks)
    "conc": {"xla_gpu_command_buffer_scheduling_mode": "CONCURRENT", **GRAPHS_PROFILED},  # independent kernels of a graph overlap
}


def shell_parameters(num_views: int, resolution: int, seed: int = 0) -> dict:
    """Activated parameters (``GSPLAT_PARAMETERS``) of Gaussians on an ellipsoid shell,
    ``resolution^2`` per input view (each view covers an azimuth sector), oriented along the surface
    and sized to the grid spacing."""
    import jax.numpy as jnp
    import numpy as np

    from avat3r_jax.geometry import rotation_to_quaternion

    rng = np.random.default_rng(seed)
    u = (np.arange(resolution) + 0.5) / resolution
    view, row, col = np.meshgrid(np.arange(num_views), u, u, indexing="ij")
    azimuth = 2 * np.pi * (view + col) / num_views
    elevation = np.deg2rad(-80 + 160 * row)
    axes = np.asarray(HEAD_AXES)
    unit = np.stack([np.cos(elevation) * np.sin(azimuth), np.sin(elevation), np.cos(elevation) * np.cos(azimuth)], -1)
    means = (unit * axes).reshape(-1, 3)
    normal = (unit / axes).reshape(-1, 3)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    tangent = np.cross(np.array([0.0, 1.0, 0.0]), normal)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=-1, keepdims=True), 1e-9)
    bitangent = np.cross(normal, tangent)
    rotation = np.stack([tangent, bitangent, normal], -1)  # columns: local x, y, z axes
    radius = float(np.mean(axes))
    spacing_azimuth = 2 * np.pi * radius * np.cos(elevation).reshape(-1) / (num_views * resolution)
    spacing_elevation = np.deg2rad(160) * radius / resolution
    scales = np.stack(
        [
            0.7 * np.maximum(spacing_azimuth, 0.3 * spacing_elevation),
            np.full_like(spacing_azimuth, 0.7 * spacing_elevation),
            np.full_like(spacing_azimuth, 2e-4),
        ],
        -1,
    )
    colors = 0.5 + 0.4 * np.sin(means * np.array([40.0, 55.0, 70.0])) + rng.uniform(-0.05, 0.05, means.shape)
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return {
        "means": f32(means),
        "quats": rotation_to_quaternion(f32(rotation)),
        "scales": f32(scales),
        "opacities": f32(rng.uniform(0.5, 0.95, len(means))),
        "colors": f32(np.clip(colors, 0, 1)),
    }


def large_parameters(count: int, seed: int = 0) -> dict:
    """Activated parameters of ``count`` random Gaussians in a 10 cm ball: scales log-uniform in
    3-15 mm per axis (about 5-25 px at 0.6 m in a 512^2 view of 30 degrees, so tens of tiles each),
    random rotations, opacities U(0.05, 0.5), random colours."""
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    means = 0.1 * direction * rng.uniform(0, 1, (count, 1)) ** (1 / 3)
    quats = rng.normal(size=(count, 4))
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    return {
        "means": f32(means),
        "quats": f32(quats / np.linalg.norm(quats, axis=-1, keepdims=True)),
        "scales": f32(np.exp(rng.uniform(np.log(3e-3), np.log(15e-3), (count, 3)))),
        "opacities": f32(rng.uniform(0.05, 0.5, count)),
        "colors": f32(rng.uniform(0, 1, (count, 3))),
    }


def orbit_views(count: int, resolution: int):
    """``count`` target cameras at 0.6 m around the head, 30 degree field of view, square images."""
    import jax.numpy as jnp

    from avat3r_jax.geometry import Cameras, intrinsics_from_fov, orbit_cameras

    w2c = orbit_cameras(count, 0.6, elevation_degrees=10.0, azimuth_range_degrees=(20.0, 380.0))
    return Cameras(jnp.broadcast_to(intrinsics_from_fov(30.0, resolution, resolution), (count, 3, 3)), w2c)


def gaussians_of(params: dict):
    from avat3r_jax.gaussians import from_activated

    return from_activated(params["means"], params["scales"], params["quats"], params["opacities"], params["colors"])


def head_shell_scene(num_views: int, resolution: int, target_resolution: int, seed: int = 0):
    """(Gaussians, 4 target cameras) of the shell of :func:`shell_parameters`."""
    return gaussians_of(shell_parameters(num_views, resolution, seed)), orbit_views(4, target_resolution)


def scene(name: str, tile_size: int | None = None):
    """(activated parameters, cameras, per-view buffer, max tiles per Gaussian) of scene ``name``
    binned in tiles of ``tile_size`` pixels (default ``--tile_size``)."""
    return _scene(name, tile_size or TILE_SIZE.value)


@functools.cache
def _scene(name: str, tile_size: int):
    spec = SCENE_SPECS[name]
    params = shell_parameters(4, spec.size) if spec.kind == "shell" else large_parameters(spec.size)
    cameras = orbit_views(spec.cameras, spec.target)
    max_tiles = max(1, math.ceil(spec.max_tiles * (16 / tile_size) ** 2))
    fixed = spec.capacity if tile_size == 16 else 0  # a fixed buffer is sized for 16-pixel tiles
    capacity = BUFFER.value or fixed or _sized_buffer(params, cameras, spec, tile_size, max_tiles)
    return params, cameras, capacity, max_tiles


def _sized_buffer(params: dict, cameras, spec: SceneSpec, tile_size: int, max_tiles: int) -> int:
    """1.2x the intersections of the busiest view, rounded up to a multiple of 65,536."""
    import jax
    import jax.numpy as jnp

    from avat3r_jax.render import project
    from avat3r_jax.render.binning import tiles_touched
    from avat3r_jax.render.project import covariances_3d

    @jax.jit
    def per_view(params):
        g = gaussians_of(params)
        with jax.default_matmul_precision("highest"):
            covariances = covariances_3d(g.scales, g.quaternions)
            p = project(g.means, covariances, g.opacities, cameras.K, cameras.world_to_cam, (spec.target,) * 2, NEAR, FAR)
        touched = tiles_touched(p.means2d, p.radii, p.visible, (spec.target,) * 2, tile_size)
        return jnp.sum(jnp.minimum(touched, max_tiles), -1)

    busiest = int(jnp.max(per_view(params)))
    return max(1, math.ceil(1.2 * busiest / 65536)) * 65536


def _median_ms(fn, arg, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(arg))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _planned_gib(compiled) -> float:
    analysis = compiled.memory_analysis()
    total = analysis.temp_size_in_bytes + analysis.output_size_in_bytes + analysis.argument_size_in_bytes
    return total / 2**30


def _project_and_bin(gaussians, cameras, size, capacity, tile_size, max_tiles, write_slots):
    """The stages before compositing (slots written by ``write_slots``; None: XLA's): the splat table ``[V, N, 10]`` and the sorted bins."""
    import jax
    import jax.numpy as jnp

    from avat3r_jax.render import bin_gaussians, project
    from avat3r_jax.render.project import covariances_3d

    with jax.default_matmul_precision("highest"):
        covariances = covariances_3d(gaussians.scales, gaussians.quaternions)
        p = project(gaussians.means, covariances, gaussians.opacities, cameras.K, cameras.world_to_cam, size, NEAR, FAR)
        bins = bin_gaussians(p.means2d, p.radii, p.depths, p.visible, size, tile_size, max_tiles, capacity, (NEAR, FAR), write_slots)
        opacities = jnp.broadcast_to(gaussians.opacities, p.depths.shape)
        colors = jnp.broadcast_to(gaussians.colors, p.means2d.shape[:-1] + (3,))
        table = jnp.concatenate([p.means2d, p.conics, opacities[..., None], colors, p.depths[..., None]], -1)
        return table, bins


def _composite_only_ms(table, bins, size, tile_size, kernels, repeats: int) -> tuple[float, float]:
    """Forward and forward+backward time of the tile compositor alone (gather, kernels, gradient reduction)."""
    import jax
    import jax.numpy as jnp

    from avat3r_jax.render.tiled import composite_pallas

    composite = lambda t: composite_pallas(kernels, t, bins, size, tile_size)[:2]
    weights = jax.random.uniform(jax.random.key(2), (table.shape[0], *size, 4))

    def loss(t):
        features, transmittance = composite(t)
        return jnp.sum(features * weights) + jnp.sum(transmittance)

    return _median_ms(jax.jit(composite), table, repeats), _median_ms(jax.jit(jax.grad(loss)), table, repeats)


def _render(name: str, backend: str, tile_size: int | None = None):
    """``gaussians -> RenderOutput`` of scene ``name`` through ``backend`` (tiles of ``tile_size``, default ``--tile_size``)."""
    import jax.numpy as jnp

    from avat3r_jax.render import rasterize

    tile_size = tile_size or TILE_SIZE.value
    _, cameras, capacity, max_tiles = scene(name, tile_size)
    size = (SCENE_SPECS[name].target,) * 2
    options = dict(backend=backend, max_intersections=capacity, tile_size=tile_size, max_tiles_per_gaussian=max_tiles)
    return lambda g: rasterize(g, cameras, size, jnp.ones(3), **options)


@dataclasses.dataclass(frozen=True)
class Variant:
    """What one ``--variants`` entry times: Triton kernel settings, a tile size, the tile sort's keys, the tile search."""

    kernels: object  # pallas_triton.TritonKernels
    tile_size: int | None = None  # None: --tile_size
    wide_keys: bool = False  # the tile sort on int32 keys (binning.SHORT_KEY_LIMIT = 0), as before uint16 keys
    search_loop: bool = False  # the tile ranges' binary search as a while loop (binning.TILE_SEARCH = "scan"), as before
    xla_options: str = ""  # a key of XLA_OPTION_SETS: the fwd and fwd+bwd compiled with those options ("": XLA's defaults)
    scenes: tuple[str, ...] = ()  # run only on these scenes (empty: --variant_scenes)


def run_case(name: str, backend: str, repeats: int, variant: Variant | None = None) -> dict:
    """Times scene ``name`` through ``backend`` (``variant``: kernel settings and tile size other than the default)."""
    from avat3r_jax.render import binning, renderer

    tile_size = (variant and variant.tile_size) or TILE_SIZE.value
    params, cameras, capacity, max_tiles = scene(name, tile_size)
    gaussians = gaussians_of(params)
    default_kernels, short_keys, search = renderer.pallas_kernels, binning.SHORT_KEY_LIMIT, binning.TILE_SEARCH
    if variant is not None:  # the module constants are read while tracing: every case traces anew
        renderer.pallas_kernels = lambda platform, interpret, k=variant.kernels: k
        binning.SHORT_KEY_LIMIT = 0 if variant.wide_keys else short_keys
        binning.TILE_SEARCH = "scan" if variant.search_loop else search
    try:
        return _run_case(name, backend, repeats, variant, tile_size, gaussians, cameras, capacity, max_tiles)
    finally:
        renderer.pallas_kernels, binning.SHORT_KEY_LIMIT, binning.TILE_SEARCH = default_kernels, short_keys, search


def _run_case(name, backend, repeats, variant, tile_size, gaussians, cameras, capacity, max_tiles) -> dict:
    import jax
    import jax.numpy as jnp

    from avat3r_jax.render import renderer

    spec = SCENE_SPECS[name]
    size = (spec.target, spec.target)
    render = _render(name, backend, tile_size)
    weights = jax.random.uniform(jax.random.key(0), (spec.cameras, *size, 3))

    def loss(g):
        out = render(g)
        return jnp.sum(out.images * weights) + jnp.sum(out.alpha) + 1e-3 * jnp.sum(out.depth)

    options = XLA_OPTION_SETS[variant.xla_options] if variant and variant.xla_options else {}
    compiled = lambda fn: jax.jit(fn).lower(gaussians).compile(compiler_options=options or None)
    result = {"scene": name, "backend": backend, "gaussians": gaussians.count, "views": spec.cameras, "image": spec.target}
    result.update(capacity=capacity, tile=tile_size, max_tiles=max_tiles)
    if variant is not None:
        result["kernels"] = variant_label(variant)
    forward = forward_backward = None
    for stage, fn in (("fwd", render), ("fwd_bwd", jax.grad(loss))):
        try:
            fn = compiled(fn)
            if stage == "fwd":
                forward = fn
            else:
                forward_backward = fn
            gib = _planned_gib(fn)
            result[f"{stage}_gib"] = round(gib, 3)
            if gib > REFERENCE_LIMIT_GIB.value:
                result[f"{stage}_ms"] = f"skipped: plans {gib:.0f} GiB"
                continue
            result[f"{stage}_ms"] = round(_median_ms(fn, gaussians, repeats), 3)
        except Exception as error:  # a backend that cannot run this size (e.g. out of memory) is reported, not fatal
            result[f"{stage}_ms"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    if backend != "reference" and not options:  # compile options leave the stages timed here alone
        tile_kernels = variant.kernels if variant else renderer.pallas_kernels(jax.default_backend(), interpret=False)
        write_slots = tile_kernels.slot_writer() if backend == "pallas" else None  # as the renderer's backend does
        prepare = jax.jit(lambda g: _project_and_bin(g, cameras, size, capacity, tile_size, max_tiles, write_slots))
        result["project_bin_ms"] = round(_median_ms(prepare, gaussians, repeats), 3)
        if backend == "pallas" and COMPOSITE_ONLY.value:
            table, bins = prepare(gaussians)
            times = _composite_only_ms(table, bins, size, tile_size, tile_kernels, repeats)
            result["composite_fwd_ms"], result["composite_fwd_bwd_ms"] = (round(t, 3) for t in times)
            del table, bins
    if forward_backward is not None:
        result["fwd_bwd_thunks"] = program_thunks(forward_backward.as_text())
    if backend == "pallas" and PROFILE.value and forward_backward is not None:
        result["fwd_bwd_device_ms"] = device_kernel_ms(forward_backward, gaussians, top=PROFILE_TOP.value)
    if isinstance(result["fwd_ms"], float):
        stats = forward(gaussians).stats
        result["intersections"] = int(jnp.sum(stats.intersections))
        result["overflow_gaussians"] = int(jnp.sum(stats.overflow_gaussians))
        result["dropped"] = int(jnp.sum(stats.dropped_intersections))
    if isinstance(result["fwd_bwd_ms"], float):  # kernel variants must give the same gradients (a race would not)
        result["grad_fingerprint"] = gradient_fingerprint(forward_backward(gaussians))
    return result


def program_thunks(optimized_hlo: str) -> dict[str, int]:
    """What the device runs of a compiled program, from its optimized HLO text: ``ops`` (the entry
    computation's instructions other than parameters, constants, tuples and bitcasts: one thunk
    each) and ``triton_calls`` (those that are Triton kernels). Command buffers do not show here: jax
    0.11's XLA:GPU groups thunks into CUDA graphs after the HLO (compare ``+xoff``)."""
    start = optimized_hlo.find("\nENTRY ")
    entry = optimized_hlo[start:].split("\n}\n", 1)[0].splitlines()[1:] if start >= 0 else []
    skipped = (" parameter(", " constant(", " tuple(", " get-tuple-element(", " bitcast(")
    ops = [line for line in entry if " = " in line and not any(op in line for op in skipped)]
    return {"ops": len(ops), "triton_calls": sum(TRITON_CALL in line for line in ops)}


def gradient_fingerprint(grads) -> dict[str, list[float]]:
    """Per parameter field of a Gaussians gradient: [sum, sum of absolute values] in float64."""
    import numpy as np

    fields = ("means", "log_scales", "quaternions", "opacity_logits", "colors")
    return {
        f: [float(np.sum(np.asarray(getattr(grads, f), np.float64))), float(np.sum(np.abs(np.asarray(getattr(grads, f), np.float64))))]
        for f in fields
    }


def parse_variant(text: str) -> Variant:
    """Triton kernel settings from ``CHUNKxWARPSxROWSxCOLS`` (rows fetched ahead, warps and pixel
    block per program), then optionally ``+bROWSxCOLSxWARPS`` (the backward's own pixel block and
    warps), ``+zROWS`` (the backward's zeros stored in blocks of ROWS), ``+gN`` (Gaussians per
    program of the gradient sum), ``+cN`` (the backward's own chunk), ``+tTILE`` (the tile size in
    pixels), ``+d`` (rows gathered and transposed for the kernels, not read through the sorted ids),
    ``+w`` (int32 tile-sort keys), ``+j0`` (the projection's gradient by XLA's autodiff, not the
    kernel), ``+e0`` (gradient rows at sorted positions, each rank's found through the sorted
    positions, not at unsorted slots), ``+s0`` (the slot kernel with one thread per rank, not by
    slots), ``+l`` (the tile ranges' binary search as a while loop), ``+xNAME`` (the fwd and fwd+bwd compiled
    with the XLA options ``XLA_OPTION_SETS[NAME]``) and last ``@SCENE/SCENE...``
    (only on those scenes); e.g. ``4x1x8x8+b16x16x4+z32+g32+c2+t8+d@train``."""
    from avat3r_jax.render.pallas_triton import TritonKernels

    numbers = lambda part, count: tuple(int(v) for v in part.split("x")) if len(part.split("x")) == count else None
    settings_text, _, scene_text = text.partition("@")
    scenes = tuple(scene_text.split("/")) if scene_text else ()
    if any(s not in SCENE_SPECS for s in scenes):
        raise SystemExit(f"error: kernel variant {text!r}: unknown scenes in {scene_text!r}; expected some of {sorted(SCENE_SPECS)}")
    base, *options = settings_text.split("+")
    settings = numbers(base, 4) if all(v.isdigit() for v in base.split("x")) else None
    if settings is None:
        raise SystemExit(f"error: kernel variant {text!r}: expected CHUNKxWARPSxROWSxCOLS[+bROWSxCOLSxWARPS][+zROWS][+gN]")
    chunk, warps, rows, cols = settings
    fields = dict(chunk=chunk, num_warps=warps, group_rows=rows, group_cols=cols)
    tile_size, wide_keys, search_loop, xla_options = None, False, False, ""
    for option in options:
        if option.startswith("b") and all(v.isdigit() for v in option[1:].split("x")) and numbers(option[1:], 3):
            fields["backward_block"] = numbers(option[1:], 3)
        elif option.startswith("z") and option[1:].isdigit():
            fields["zero_block_rows"] = int(option[1:])
        elif option.startswith("g") and option[1:].isdigit():
            fields["gaussians_per_program"] = int(option[1:])
        elif option.startswith("c") and option[1:].isdigit() and int(option[1:]) > 0:
            fields["backward_chunk"] = int(option[1:])
        elif option.startswith("t") and option[1:].isdigit() and int(option[1:]) > 0:
            tile_size = int(option[1:])
        elif option == "d":
            fields["indirect_rows"] = False
        elif option == "w":
            wide_keys = True
        elif option == "l":
            search_loop = True
        elif option == "e0":
            fields["emission_rows"] = False
        elif option == "s0":
            fields["slot_search"] = False
        elif option == "j0":
            fields["projection_gradient"] = False
        elif option.startswith("x") and option[1:] in XLA_OPTION_SETS:
            xla_options = option[1:]
        else:
            expected = f"bROWSxCOLSxWARPS, zROWS, gN, cN, tTILE, d, w, l, e0, s0, j0 or x{{{','.join(XLA_OPTION_SETS)}}}"
            raise SystemExit(f"error: kernel variant {text!r}: unknown option {option!r} (expected {expected})")
    return Variant(TritonKernels(**fields), tile_size, wide_keys, search_loop, xla_options, scenes)


def variant_label(variant: Variant) -> str:
    """The settings of ``variant`` in words (chunk: the forward's / the backward's)."""
    kernels = variant.kernels
    backward = kernels.backward_block or (kernels.group_rows, kernels.group_cols, kernels.num_warps)
    tile = f" tile={variant.tile_size}" if variant.tile_size else ""
    chunk = f"{kernels.chunk}/{kernels.backward_rows_per_step(variant.tile_size or TILE_SIZE.value)}"
    extras = ("" if kernels.indirect_rows else " gathered_rows") + (" int32_tile_keys" if variant.wide_keys else "")
    extras += " search_loop" if variant.search_loop else ""
    extras += ("" if kernels.emission_rows else " sorted_gradient_rows") + ("" if kernels.slot_search else " rank_slot_kernel")
    extras += "" if kernels.projection_gradient else " xla_projection_gradient"
    extras += f" xla_options={variant.xla_options}" if variant.xla_options else ""
    return (
        f"chunk={chunk} fwd={kernels.group_rows}x{kernels.group_cols}/{kernels.num_warps}w "
        f"bwd={backward[0]}x{backward[1]}/{backward[2]}w zero_blocks={kernels.zero_block_rows} sum_block={kernels.gaussians_per_program}"
        + tile
        + extras
    )


def write_gsplat_scene(name: str, path: pathlib.Path, repeats: int) -> None:
    """Scene ``name`` as ``launch/bench_raster_gsplat.py`` reads it."""
    import numpy as np

    params, cameras, _, _ = scene(name)
    spec = SCENE_SPECS[name]
    arrays = {k: np.asarray(v) for k, v in params.items()}
    arrays.update(viewmats=np.asarray(cameras.world_to_cam), Ks=np.asarray(cameras.K), weights=_comparison_weights(name))
    np.savez(path, **arrays, height=spec.target, width=spec.target, background=np.ones(3, np.float32), near=NEAR, far=FAR, repeats=repeats)


def _comparison_weights(name: str):
    import numpy as np

    spec = SCENE_SPECS[name]
    return np.random.default_rng(7).uniform(0, 1, (spec.cameras, spec.target, spec.target, 4)).astype(np.float32)


def run_gsplat(names: list[str], repeats: int, work_dir: pathlib.Path) -> dict[str, dict]:
    """Renders ``names`` through gsplat in a child process; -> per scene its times and arrays."""
    import numpy as np

    paths = []
    for name in names:
        paths.append(work_dir / f"{name}.npz")
        write_gsplat_scene(name, paths[-1], repeats)
    command = [sys.executable, "-m", "launch.bench_raster_gsplat", f"--out={work_dir}", *map(str, paths)]
    if GSPLAT_PREBUILT.value:
        command.append(f"--prebuilt={GSPLAT_PREBUILT.value}")
    subprocess.run(command, check=True)
    return {name: dict(np.load(work_dir / f"{name}.gsplat.npz")) for name in names}


def compare_with_gsplat(name: str, reference: dict, backend: str = "pallas") -> dict:
    """Our render of scene ``name`` (through ``backend``) against gsplat's: max abs image and alpha differences,
    and per parameter the relative gradient error ``|g - g_gsplat| / |g_gsplat|`` (L2 norms) of
    the loss ``sum(images * w[..., :3]) + sum(alpha * w[..., 3:])``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    params = scene(name)[0]
    render = _render(name, backend)
    weights = jnp.asarray(_comparison_weights(name))

    def loss(params):
        out = render(gaussians_of(params))
        return jnp.sum(out.images * weights[..., :3]) + jnp.sum(out.alpha * weights[..., 3:]), out

    grads, out = jax.jit(jax.grad(loss, has_aux=True))(params)
    relative = lambda a, b: float(np.linalg.norm(np.asarray(a) - b) / max(np.linalg.norm(b), 1e-30))
    return {
        "image_max_abs": float(np.max(np.abs(np.asarray(out.images) - reference["images"]))),
        "alpha_max_abs": float(np.max(np.abs(np.asarray(out.alpha) - reference["alpha"]))),
        "grad_rel": {k: round(relative(grads[k], reference[f"grad_{k}"]), 6) for k in GSPLAT_PARAMETERS},
    }


def check_against_reference(backends: list[str]) -> None:
    """Max abs forward error and max relative gradient error of each backend (tiles of ``--tile_size``) vs the dense reference."""
    import jax
    import jax.numpy as jnp

    from avat3r_jax.render import rasterize

    gaussians, cameras = head_shell_scene(4, 12, 40, seed=1)  # 576 Gaussians -> 4 x 40 x 48
    size = (40, 48)
    weights = jax.random.normal(jax.random.key(1), (4, *size, 5))
    tiles = dict(tile_size=TILE_SIZE.value, max_tiles_per_gaussian=max(16, 16 * (16 // TILE_SIZE.value) ** 2))

    def loss(g, backend):
        out = rasterize(g, cameras, size, jnp.array([0.2, 0.5, 0.8]), backend=backend, **tiles)
        value = jnp.sum(out.images * weights[..., :3]) + jnp.sum(out.alpha * weights[..., 3:4]) + jnp.sum(out.depth * weights[..., 4:])
        return value, out

    run = lambda backend: jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(gaussians, backend)
    (_, ref), ref_grads = run("reference")
    for backend in backends:
        (_, out), grads = run(backend)
        forward = {k: float(jnp.max(jnp.abs(getattr(out, k) - getattr(ref, k)))) for k in ("images", "alpha")}
        forward["depth*alpha"] = float(jnp.max(jnp.abs(out.depth * out.alpha - ref.depth * ref.alpha)))
        gradient = {
            k: float(jnp.max(jnp.abs(getattr(grads, k) - getattr(ref_grads, k))) / jnp.max(jnp.abs(getattr(ref_grads, k))))
            for k in ("means", "log_scales", "quaternions", "opacity_logits", "colors")
        }
        ok = max(forward.values()) < 1e-5 and max(gradient.values()) < 1e-4
        print(json.dumps({"check": backend, "ok": ok, "max_abs_forward": forward, "max_rel_grad": gradient}), flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    unknown = [s for s in SCENES.value if s not in SCENE_SPECS]
    if unknown:
        raise SystemExit(f"error: unknown scenes {unknown}; expected some of {sorted(SCENE_SPECS)}")
    if GSPLAT.value:  # leave PyTorch (in its own process) room on the GPU
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    variants = [parse_variant(v) for v in VARIANTS.value]  # bad settings fail before any work
    import jax

    device = jax.devices()[0].device_kind
    print(f"device: {device}, jax {jax.__version__}, backend {jax.default_backend()}", flush=True)
    if CHECK.value:
        check_against_reference([b for b in BACKENDS.value if b != "reference"])
    gsplat = {}
    if GSPLAT.value:
        with tempfile.TemporaryDirectory() as work_dir:
            gsplat = run_gsplat(SCENES.value, REPEATS.value, pathlib.Path(work_dir))
    results, side_by_side = [], []
    for name in SCENES.value:
        for backend in BACKENDS.value:
            results.append(run_case(name, backend, REPEATS.value))
            print(json.dumps(results[-1]), flush=True)
            if backend == "pallas" and name in gsplat:
                side_by_side.append(_side_by_side(results[-1], gsplat[name], compare_with_gsplat(name, gsplat[name])))
                print(json.dumps(side_by_side[-1]), flush=True)
        for variant in variants:
            if name not in (variant.scenes or VARIANT_SCENES.value or SCENES.value):
                continue
            try:
                results.append(run_case(name, "pallas", REPEATS.value, variant))
            except Exception as error:  # one variant that does not build or run must not stop the others
                results.append({"scene": name, "kernels": variant_label(variant), "failed": f"{type(error).__name__}: {error}"[:300]})
            print(json.dumps(results[-1]), flush=True)
    if JSON_PATH.value:
        with open(JSON_PATH.value, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "results": results, "gsplat": side_by_side}, f, indent=1)
    _print_tables(results, side_by_side)


def _side_by_side(ours: dict, gsplat: dict, comparison: dict) -> dict:
    ratio = lambda a, b: round(a / b, 3) if isinstance(a, float) else "-"
    fwd, fwd_bwd = float(gsplat["fwd_ms"]), float(gsplat["fwd_bwd_ms"])
    return {
        "scene": ours["scene"],
        "ours_fwd_ms": ours["fwd_ms"],
        "gsplat_fwd_ms": round(fwd, 3),
        "fwd_ratio": ratio(ours["fwd_ms"], fwd),
        "ours_fwd_bwd_ms": ours["fwd_bwd_ms"],
        "gsplat_fwd_bwd_ms": round(fwd_bwd, 3),
        "fwd_bwd_ratio": ratio(ours["fwd_bwd_ms"], fwd_bwd),
        "gsplat_peak_mib": round(float(gsplat["peak_mib"]), 1),
        **comparison,
    }


def _print_tables(results: list[dict], side_by_side: list[dict]) -> None:
    header = "| scene | backend | size | intersections (dropped) | project+bin ms | composite fwd, fwd+bwd ms "
    print(header + "| fwd ms | fwd+bwd ms | GiB fwd, fwd+bwd |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if "failed" in r:
            print(f"| {r['scene']} | pallas {r['kernels']} | failed: {r['failed'][:120]} |")
            continue
        name = r["backend"] + (f" {r['kernels']}" if "kernels" in r else "")
        print(
            f"| {r['scene']} | {name} | {r['gaussians']:,} -> {r['views']}x{r['image']}^2 | {r.get('intersections', '-')} "
            f"({r.get('dropped', '-')}) | {r.get('project_bin_ms', '-')} | {r.get('composite_fwd_ms', '-')} / "
            f"{r.get('composite_fwd_bwd_ms', '-')} | {r['fwd_ms']} | {r['fwd_bwd_ms']} "
            f"| {r.get('fwd_gib', '-')} / {r.get('fwd_bwd_gib', '-')} |"
        )
    if side_by_side:
        print("| scene | ours fwd | gsplat fwd | ratio | ours fwd+bwd | gsplat fwd+bwd | ratio | image max abs diff | grad rel err (max) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for s in side_by_side:
            worst = max(s["grad_rel"], key=s["grad_rel"].get)
            print(
                f"| {s['scene']} | {s['ours_fwd_ms']} | {s['gsplat_fwd_ms']} | {s['fwd_ratio']} | {s['ours_fwd_bwd_ms']} "
                f"| {s['gsplat_fwd_bwd_ms']} | {s['fwd_bwd_ratio']} | {s['image_max_abs']:.2e} | {s['grad_rel'][worst]:.2e} ({worst}) |"
            )


if __name__ == "__main__":
    app.run(main)
