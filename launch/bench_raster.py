"""Rasterizer benchmark: forward and forward+backward time and planned peak memory per backend.

``python -m launch.bench_raster`` renders head-sized shells of pixel-aligned Gaussians (one per
pixel of 4 input views spread over the shell) into 4 target views:
  (a) 4 x 64^2 = 16,384 Gaussians -> 4 x 128^2;  (b) 4 x 256^2 = 262,144 Gaussians -> 4 x 512^2.
``--scenes=train64`` adds the CPU training case (16,384 Gaussians -> 4 x 64^2). Times are medians
of ``--repeats`` jitted calls after a warm-up; memory is XLA's plan for the whole jitted function
(arguments + outputs + temporaries). ``--variants=CHUNKxWARPSxROWSxCOLS,...`` also times other Triton
kernel settings on the GPU; ``--profile`` adds each kernel's device time in the pallas fwd+bwd.
``--json=PATH`` writes every number.
"""

from __future__ import annotations

import json
import statistics
import time

from absl import app, flags

from launch.kernel_profile import device_kernel_ms

SCENES = flags.DEFINE_list("scenes", ["a", "b"], "Scenes to run: a, b, train64.")
BACKENDS = flags.DEFINE_list("backends", ["pallas", "xla", "reference"], "Rasterizer backends to time.")
REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per measurement (median reported).")
VARIANTS = flags.DEFINE_list("variants", [], "Extra Triton kernel settings CHUNKxWARPSxROWSxCOLS (pixel block per program) to time.")
REFERENCE_LIMIT_GIB = flags.DEFINE_float("reference_limit_gib", 60.0, "Skip a run whose planned memory exceeds this.")
JSON_PATH = flags.DEFINE_string("json", None, "Write all results to this JSON file.")
TILE_SIZE = flags.DEFINE_integer("tile_size", 16, "Tile size in pixels.")
BUFFER = flags.DEFINE_integer("max_intersections", 0, "Per-view intersection buffer (0: the scene's default below).")
CHECK = flags.DEFINE_bool("check", False, "First compare every backend with the reference on a small shell (forward and gradients).")
PROFILE = flags.DEFINE_bool("profile", False, "Also record the device time per kernel of the pallas fwd+bwd (profiler trace).")

# name: (input views, input resolution (Gaussians per view = res^2), target resolution, per-view buffer)
SCENE_SHAPES = {"a": (4, 64, 128, 1 << 16), "b": (4, 256, 512, 655360), "train64": (4, 64, 64, 1 << 16)}
GSPLAT = {"a": (0.86, 1.72), "b": (1.57, 3.61)}  # DESIGN.md section 4: gsplat 1.5.3 on the H100, fwd / fwd+bwd ms
HEAD_AXES = (0.08, 0.11, 0.095)  # metres: ellipsoid semi-axes of the head-sized shell


def head_shell_scene(num_views: int, resolution: int, target_resolution: int, seed: int = 0):
    """Gaussians on an ellipsoid shell, ``resolution^2`` per input view (each view covers an azimuth
    sector), oriented along the surface and sized to the grid spacing; 4 target cameras around it."""
    import jax.numpy as jnp
    import numpy as np

    from avat3r_jax.gaussians import from_activated
    from avat3r_jax.geometry import Cameras, intrinsics_from_fov, orbit_cameras, rotation_to_quaternion

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
    gaussians = from_activated(
        f32(means),
        f32(scales),
        rotation_to_quaternion(f32(rotation)),
        f32(rng.uniform(0.5, 0.95, len(means))),
        f32(np.clip(colors, 0, 1)),
    )
    w2c = orbit_cameras(4, 0.6, elevation_degrees=10.0, azimuth_range_degrees=(20.0, 380.0))
    K = jnp.broadcast_to(intrinsics_from_fov(30.0, target_resolution, target_resolution), (4, 3, 3))
    return gaussians, Cameras(K, w2c)


def _median_ms(fn, arg, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn(arg))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _planned_gib(fn, arg) -> float:
    analysis = fn.lower(arg).compile().memory_analysis()
    total = analysis.temp_size_in_bytes + analysis.output_size_in_bytes + analysis.argument_size_in_bytes
    return total / 2**30


def _project_and_bin(gaussians, cameras, size, capacity, tile_size):
    """The stages before compositing: the splat table ``[V, N, 10]`` and the sorted bins."""
    import jax
    import jax.numpy as jnp

    from avat3r_jax.render import bin_gaussians, project
    from avat3r_jax.render.project import covariances_3d

    with jax.default_matmul_precision("highest"):
        covariances = covariances_3d(gaussians.scales, gaussians.quaternions)
        p = project(gaussians.means, covariances, gaussians.opacities, cameras.K, cameras.world_to_cam, size, 0.01, 100.0)
        bins = bin_gaussians(p.means2d, p.radii, p.depths, p.visible, size, tile_size, 16, capacity)
        opacities = jnp.broadcast_to(gaussians.opacities, p.depths.shape)
        colors = jnp.broadcast_to(gaussians.colors, p.means2d.shape[:-1] + (3,))
        table = jnp.concatenate([p.means2d, p.conics, opacities[..., None], colors, p.depths[..., None]], -1)
        return table, bins


def _composite_only_ms(table, bins, size, tile_size, kernels, repeats: int) -> tuple[float, float]:
    """Forward and forward+backward time of the tile compositor alone (gather, kernels, segment_sum)."""
    import jax
    import jax.numpy as jnp

    from avat3r_jax.render.tiled import composite_pallas

    composite = lambda t: composite_pallas(kernels, t, bins, size, tile_size)[:2]
    weights = jax.random.uniform(jax.random.key(2), (table.shape[0], *size, 4))

    def loss(t):
        features, transmittance = composite(t)
        return jnp.sum(features * weights) + jnp.sum(transmittance)

    return _median_ms(jax.jit(composite), table, repeats), _median_ms(jax.jit(jax.grad(loss)), table, repeats)


def run_case(scene: str, backend: str, repeats: int, kernels=None) -> dict:
    import jax
    import jax.numpy as jnp

    from avat3r_jax.render import rasterize, renderer

    views, resolution, target, capacity = SCENE_SHAPES[scene]
    capacity, tile_size = BUFFER.value or capacity, TILE_SIZE.value
    gaussians, cameras = head_shell_scene(views, resolution, target)
    size = (target, target)
    if kernels is not None:
        renderer.pallas_kernels = lambda platform, interpret, k=kernels: k
    render = lambda g: rasterize(g, cameras, size, jnp.ones(3), backend=backend, max_intersections=capacity, tile_size=tile_size)
    weights = jax.random.uniform(jax.random.key(0), (4, target, target, 3))

    def loss(g):
        out = render(g)
        return jnp.sum(out.images * weights) + jnp.sum(out.alpha) + 1e-3 * jnp.sum(out.depth)

    forward = jax.jit(lambda g: render(g))
    forward_backward = jax.jit(jax.grad(loss))
    result = {"scene": scene, "backend": backend, "gaussians": gaussians.count, "image": target, "capacity": capacity, "tile": tile_size}
    if kernels is not None:
        result["kernels"] = f"chunk={kernels.chunk} warps={kernels.num_warps} pixels/program={kernels.group_rows}x{kernels.group_cols}"
    for name, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
        try:
            gib = _planned_gib(fn, gaussians)
            result[f"{name}_gib"] = round(gib, 3)
            if gib > REFERENCE_LIMIT_GIB.value:
                result[f"{name}_ms"] = f"skipped: plans {gib:.0f} GiB"
                continue
            result[f"{name}_ms"] = round(_median_ms(fn, gaussians, repeats), 3)
        except Exception as error:  # a backend that cannot run this size (e.g. out of memory) is reported, not fatal
            result[f"{name}_ms"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    if backend != "reference":
        prepare = jax.jit(lambda g: _project_and_bin(g, cameras, size, capacity, tile_size))
        result["project_bin_ms"] = round(_median_ms(prepare, gaussians, repeats), 3)
        if backend == "pallas":
            table, bins = prepare(gaussians)
            times = _composite_only_ms(
                table, bins, size, tile_size, kernels or renderer.pallas_kernels(jax.default_backend(), interpret=False), repeats
            )
            result["composite_fwd_ms"], result["composite_fwd_bwd_ms"] = (round(t, 3) for t in times)
            if PROFILE.value:
                result["fwd_bwd_device_ms"] = device_kernel_ms(forward_backward, gaussians)
    if isinstance(result["fwd_ms"], float):
        stats = forward(gaussians).stats
        result["intersections"] = int(jnp.sum(stats.intersections))
        result["overflow_gaussians"] = int(jnp.sum(stats.overflow_gaussians))
        result["dropped"] = int(jnp.sum(stats.dropped_intersections))
    return result


def check_against_reference(backends: list[str]) -> None:
    """Max abs forward error and max relative gradient error of each backend vs the dense reference."""
    import jax
    import jax.numpy as jnp

    from avat3r_jax.render import rasterize

    gaussians, cameras = head_shell_scene(4, 12, 40, seed=1)  # 576 Gaussians -> 4 x 40 x 48
    size = (40, 48)
    weights = jax.random.normal(jax.random.key(1), (4, *size, 5))

    def loss(g, backend):
        out = rasterize(g, cameras, size, jnp.array([0.2, 0.5, 0.8]), backend=backend)
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
    import jax

    from avat3r_jax.render.pallas_triton import TritonKernels

    device = jax.devices()[0].device_kind
    print(f"device: {device}, jax {jax.__version__}, backend {jax.default_backend()}")
    if CHECK.value:
        check_against_reference([b for b in BACKENDS.value if b != "reference"])
    results = []
    for scene in SCENES.value:
        if scene not in SCENE_SHAPES:
            raise SystemExit(f"error: unknown scene {scene!r}; expected one of {sorted(SCENE_SHAPES)}")
        for backend in BACKENDS.value:
            results.append(run_case(scene, backend, REPEATS.value))
            print(json.dumps(results[-1]), flush=True)
        for variant in VARIANTS.value:
            chunk, warps, rows, cols = (int(v) for v in variant.split("x"))
            kernels = TritonKernels(chunk=chunk, num_warps=warps, group_rows=rows, group_cols=cols)
            results.append(run_case(scene, "pallas", REPEATS.value, kernels))
            print(json.dumps(results[-1]), flush=True)
    if JSON_PATH.value:
        with open(JSON_PATH.value, "w") as f:
            json.dump({"device": device, "jax": jax.__version__, "results": results}, f, indent=1)
    header = "| scene | backend | size | intersections (dropped) | project+bin ms | composite fwd, fwd+bwd ms "
    print(header + "| fwd ms | fwd+bwd ms | GiB fwd, fwd+bwd | gsplat |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        name = r["backend"] + (f" {r['kernels']}" if "kernels" in r else "")
        gsplat = "{} / {}".format(*GSPLAT[r["scene"]]) if r["scene"] in GSPLAT else "-"
        print(
            f"| {r['scene']} | {name} | {r['gaussians']:,} -> 4x{r['image']}^2 | {r.get('intersections', '-')} ({r.get('dropped', '-')}) "
            f"| {r.get('project_bin_ms', '-')} | {r.get('composite_fwd_ms', '-')} / {r.get('composite_fwd_bwd_ms', '-')} "
            f"| {r['fwd_ms']} | {r['fwd_bwd_ms']} | {r.get('fwd_gib', '-')} / {r.get('fwd_bwd_gib', '-')} | {gsplat} |"
        )


if __name__ == "__main__":
    app.run(main)
