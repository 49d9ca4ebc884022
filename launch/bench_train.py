"""Train-step benchmark: step time, examples/s, MFU and the model/rasterizer split.

Runs on random inputs of the config's shapes (no data pipeline), so it measures the device work
of one optimisation step. Example (one GPU, the paper config at batch 1):

    python -m launch.bench_train --config=configs/paper.py

Several meshes in one call (same process, so the 1-device baseline is measured alongside):

    python -m launch.bench_train --config=configs/paper.py --meshes=1,0,0:2,1,1:1,2,1 --per_device_batch=1

Each mesh is ``data,fsdp,tensor`` (0 = 1). Scaling efficiency = (examples/s on n devices) /
(n x examples/s on one device). MFU counts the model's FLOPs (3x the analytic forward count of
``launch.model_info``: backward = 2x forward; remat recomputation is not counted) against ``--peak_tflops`` per device.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from avat3r_jax import sharding
from avat3r_jax.geometry import Cameras, intrinsics_from_fov, orbit_cameras
from avat3r_jax.model import ModelSettings
from avat3r_jax.render import rasterize_with_config
from avat3r_jax.train import objective
from avat3r_jax.train.step import make_train_step
from avat3r_jax.train.trainer import build_model_state
from launch.config_cli import CONFIG, run_app
from launch.model_info import analytic_forward_flops

MESHES = flags.DEFINE_string("meshes", "", "Semicolon/colon-separated data,fsdp,tensor meshes; empty = the config's mesh.")
PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", 0, "Examples per device (0 = config.data.batch_size for the first mesh).")
STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")
PEAK_TFLOPS = flags.DEFINE_float("peak_tflops", 989.0, "Per-device dense bf16 peak (H100/H200 SXM datasheet: 989).")
SPLIT = flags.DEFINE_bool("split", True, "Also time the model alone and the rasterizer alone.")
OUT = flags.DEFINE_string("out", "", "Append JSON results to this file.")


def random_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch of the config's shapes: heads-sized point maps in front of orbit cameras."""
    d = config.data
    v, t, h, w = d.num_input_views, d.num_target_views, d.image_height, d.image_width
    K = np.asarray(intrinsics_from_fov(20.0, h, w))
    cams = np.asarray(orbit_cameras(v + t, radius=1.0, azimuth_range_degrees=(-80.0, 80.0)))
    posmaps = rng.normal(scale=0.08, size=(batch_size, v, h, w, 3)).astype(np.float32)
    return {
        "images": rng.uniform(size=(batch_size, v, h, w, 3)).astype(np.float32),
        "masks": np.ones((batch_size, v, h, w, 1), np.float32),
        "posmaps": posmaps,
        "posmap_valid": np.ones((batch_size, v, h, w, 1), np.float32),
        "features": rng.normal(size=(batch_size, v, d.feature_height, d.feature_width, d.feature_channels)).astype(np.float32),
        "K": np.broadcast_to(K, (batch_size, v, 3, 3)).copy(),
        "world_to_cam": np.broadcast_to(cams[:v], (batch_size, v, 4, 4)).copy(),
        "expression": rng.normal(size=(batch_size, d.expression_dim)).astype(np.float32),
        "target_images": rng.uniform(size=(batch_size, t, h, w, 3)).astype(np.float32),
        "target_masks": np.ones((batch_size, t, h, w, 1), np.float32),
        "target_K": np.broadcast_to(K, (batch_size, t, 3, 3)).copy(),
        "target_world_to_cam": np.broadcast_to(cams[v:], (batch_size, t, 4, 4)).copy(),
    }


def time_fn(fn, *args, steps: int) -> float:
    """Median seconds per call after two warm-up calls (each call synchronised)."""
    out = None
    for _ in range(2):
        out = fn(*args)
        jax.block_until_ready(out)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    del out
    return float(np.median(times))


def peak_memory_gib() -> float:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    return max(s.get("peak_bytes_in_use", 0) for s in stats) / 2**30


def bench_mesh(config, mesh_sizes: tuple[int, int, int], per_device_batch: int) -> dict:
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_sizes
    num_devices = int(np.prod(mesh_sizes))
    batch_size = per_device_batch * num_devices // mesh_sizes[2]  # tensor-parallel devices share examples
    devices = jax.devices()[:num_devices]
    mesh = sharding.make_mesh(config.mesh, devices)
    graphdef, tx, _, state_shardings, init = build_model_state(config, mesh)
    with jax.set_mesh(mesh):
        state = init()
        host_batch = random_batch(config, batch_size, np.random.default_rng(0))
        batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in host_batch.items()}
        loss_fn = objective.make_loss_fn(graphdef, config)
        step = jax.jit(make_train_step(loss_fn, tx, config.train.grad_accum_steps), in_shardings=(state_shardings, None),
                       out_shardings=(state_shardings, None), donate_argnums=0)
        # Warm-up and timing through a closure that carries the donated state forward.
        holder = {"state": state}

        def one_step(b):
            holder["state"], metrics = step(holder["state"], b)
            return metrics

        step_time = time_fn(one_step, batch, steps=STEPS.value)
        result = {
            "mesh": dict(zip(sharding.MESH_AXES, mesh_sizes)),
            "devices": num_devices,
            "device_kind": devices[0].device_kind,
            "batch": batch_size,
            "step_ms": step_time * 1e3,
            "examples_per_s": batch_size / step_time,
            "peak_mem_gib": peak_memory_gib(),
        }
        if SPLIT.value:
            result.update(split_times(graphdef, holder["state"].params, batch, config))
            flops = 3.0 * batch_size * sum(analytic_forward_flops(ModelSettings.from_config(config)).values())
            result["model_tflops_per_example"] = flops / batch_size / 1e12
            peak = PEAK_TFLOPS.value * 1e12 * num_devices
            result["mfu_model_part"] = flops / (result["model_ms"] * 1e-3) / peak
            result["mfu_step"] = flops / step_time / peak
    return result


def split_times(graphdef, params, batch, config) -> dict:
    """Model forward+backward alone, and rasterizer forward+backward alone on the model's Gaussians."""

    def model_loss(p):
        g = nnx.merge(graphdef, p)(batch)
        return sum(jnp.mean(jnp.square(leaf)) for leaf in jax.tree.leaves(g))

    model_grad = jax.jit(jax.grad(model_loss))
    model_time = time_fn(model_grad, params, steps=STEPS.value)

    gaussians = jax.jit(lambda p: nnx.merge(graphdef, p)(batch))(params)
    cameras = Cameras(batch["target_K"], batch["target_world_to_cam"])
    size = tuple(batch["target_images"].shape[-3:-1])

    def render_loss(g):
        return jnp.mean(rasterize_with_config(g, cameras, size, config.render).images)

    render_grad = jax.jit(jax.grad(render_loss))
    render_time = time_fn(render_grad, gaussians, steps=STEPS.value)
    stats = jax.jit(lambda g: rasterize_with_config(g, cameras, size, config.render).stats)(gaussians)
    return {
        "model_ms": model_time * 1e3,
        "render_ms": render_time * 1e3,
        "render_stats": {k: int(np.sum(v)) for k, v in jax.device_get(vars(stats)).items()},
    }


def parse_meshes(text: str, config) -> list[tuple[int, int, int]]:
    if not text:
        return [(config.mesh.data if config.mesh.data > 0 else jax.device_count(), config.mesh.fsdp, config.mesh.tensor)]
    meshes = []
    for item in text.replace(";", ":").split(":"):
        sizes = tuple(max(int(x), 1) for x in item.split(","))
        if len(sizes) != 3:
            raise SystemExit(f"error: mesh {item!r} is not data,fsdp,tensor")
        meshes.append(sizes)
    return meshes


def main(argv) -> None:
    del argv
    config = CONFIG.value
    per_device = PER_DEVICE_BATCH.value or config.data.batch_size
    results = []
    for sizes in parse_meshes(MESHES.value, config):
        if int(np.prod(sizes)) > jax.device_count():
            print(f"skip mesh {sizes}: only {jax.device_count()} devices")
            continue
        result = bench_mesh(config, sizes, per_device)
        results.append(result)
        print(json.dumps(result), flush=True)
    base = next((r for r in results if r["devices"] == 1), None)
    header = ("mesh (data,fsdp,tensor)", "batch", "step ms", "ex/s", "model ms", "render ms", "MFU model", "peak GiB", "scaling")
    print("\n" + " ".join(f"{h:>10}" for h in header))
    for r in results:
        scaling = r["examples_per_s"] / (r["devices"] * base["examples_per_s"]) if base else float("nan")
        m = r["mesh"]
        row = (f"{m['data']},{m['fsdp']},{m['tensor']}", r["batch"], f"{r['step_ms']:.2f}", f"{r['examples_per_s']:.2f}",
               f"{r.get('model_ms', float('nan')):.2f}", f"{r.get('render_ms', float('nan')):.2f}",
               f"{r.get('mfu_model_part', float('nan')):.3f}", f"{r['peak_mem_gib']:.2f}", f"{scaling:.3f}")
        print(" ".join(f"{x!s:>10}" for x in row))
        r["scaling_efficiency"] = scaling
    if OUT.value:
        with open(OUT.value, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


def run() -> None:
    flags.mark_flag_as_required("config")
    run_app(main)


if __name__ == "__main__":
    run()
