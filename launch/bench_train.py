"""Train-step benchmark: step time, examples/s, MFU and the model/rasterizer split.

Runs on random inputs of the config's shapes (no data pipeline), so it measures the device work
of one optimisation step. Example (one GPU, the paper config at batch 1):

    python -m launch.bench_train --config=configs/paper.py

The model's forward+backward alone, split into its parts (no train step, no rasterizer), at batch 2:

    python -m launch.bench_train --config=configs/paper.py --model_only --per_device_batch=2

Several meshes in one call (same process, so the 1-device baseline is measured alongside):

    python -m launch.bench_train --config=configs/paper.py --meshes=1,0,0:2,1,1:1,2,1 --per_device_batch=1

Each mesh is ``data,fsdp,tensor`` (0 = 1). Scaling efficiency = (examples/s on n devices) /
(n x examples/s on one device). MFU counts the model's FLOPs (3x the analytic forward count of
``launch.model_info``: backward = 2x forward; remat recomputation is not counted) against ``--peak_tflops`` per device.
With ``--parts`` the model's forward+backward is also timed part by part (tokenizer with the
expression encoder, transformer blocks, Gaussian head with its activations), each compiled alone on
the inputs the whole model gives it, with its own analytic FLOPs, MFU and XLA temp memory; the sum
of the parts against the whole model shows what fusing across part boundaries gains or loses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from avat3r_jax import sharding
from avat3r_jax.batch_dtypes import to_float32
from avat3r_jax.geometry import Cameras, intrinsics_from_fov, orbit_cameras
from avat3r_jax.model import ModelSettings
from avat3r_jax.model.anchors import pixel_anchors
from avat3r_jax.model.gaussian_head import gaussians_from_raw
from avat3r_jax.model.tokenizer import pixel_inputs
from avat3r_jax.spec import ID_KEYS, batch_shapes, to_stored
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
PARTS = flags.DEFINE_bool("parts", True, "With --split or --model_only: also time the model's parts (tokenizer, blocks, head) alone.")
MODEL_ONLY = flags.DEFINE_bool("model_only", False, "Time only the model's forward+backward (and --parts); no train step, no rasterizer.")
PROFILE_DIR = flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of 3 model forward+backward calls to this directory.")
OUT = flags.DEFINE_string("out", "", "Append JSON results to this file.")

# The model's parts timed by --parts, each with the analytic_forward_flops entries it covers.
PART_FLOPS = {"tokenizer": ("tokenizer", "expression_encoder"), "blocks": ("blocks",), "head": ("head",)}


def random_batch(config, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch of every entry of ``spec.batch_shapes``: heads-sized point maps in front of orbit cameras."""
    spec = ModelSettings.from_config(config)
    v, t = spec.num_views, config.data.num_target_views
    K = np.asarray(intrinsics_from_fov(20.0, spec.image_height, spec.image_width))
    cams = np.asarray(orbit_cameras(v + t, radius=1.0, azimuth_range_degrees=(-80.0, 80.0)))
    fixed = {"K": K, "target_K": K, "world_to_cam": cams[:v], "target_world_to_cam": cams[v:]}
    uniform, normal = ("images", "target_images"), {"posmaps": 0.08, "features": 1.0, "expression": 1.0}
    batch = {}
    for key, (shape, _) in batch_shapes(spec, batch_size, num_target_views=t).items():
        if key in fixed:
            value = np.broadcast_to(fixed[key], shape)
        elif key in uniform:
            value = rng.uniform(size=shape)
        elif key in normal:
            value = rng.normal(scale=normal[key], size=shape)
        else:  # masks, posmap_valid; subject and frame ids
            value = np.zeros(shape) if key in ID_KEYS else np.ones(shape)
        batch[key] = np.ascontiguousarray(to_stored(key, value))  # in the entry's batch dtype
    return batch


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


def compile_and_time(fn: Callable, *args) -> tuple[float, float, jax.stages.Compiled]:
    """Compiles ``jax.jit(fn)`` for ``args``: (median seconds per call, XLA temp memory in GiB, the executable)."""
    compiled = jax.jit(fn).lower(*args).compile()
    temp_gib = compiled.memory_analysis().temp_size_in_bytes / 2**30
    return time_fn(compiled, *args, steps=STEPS.value), temp_gib, compiled


def square_mean(tree) -> jax.Array:
    """Sum over ``tree``'s non-empty leaves of their mean square: a scalar loss that reads every output."""
    return sum(jnp.mean(jnp.square(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree) if leaf.size)


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
        result = {
            "mesh": dict(zip(sharding.MESH_AXES, mesh_sizes)),
            "devices": num_devices,
            "device_kind": devices[0].device_kind,
            "batch": batch_size,
            "remat_policy": config.model.remat_policy,
        }
        flops = 3.0 * batch_size * sum(analytic_forward_flops(ModelSettings.from_config(config)).values())
        peak = PEAK_TFLOPS.value * 1e12 * num_devices
        model_rates = lambda ms: {"model_tflops_per_example": flops / batch_size / 1e12, "mfu_model_part": flops / (ms * 1e-3) / peak}
        if MODEL_ONLY.value:
            result.update(model_times(graphdef, state.params, batch, config), peak_mem_gib=peak_memory_gib())
            result.update(model_rates(result["model_ms"]), model_examples_per_s=batch_size / (result["model_ms"] * 1e-3))
            return result
        loss_fn = objective.make_loss_fn(graphdef, config)
        step = jax.jit(
            make_train_step(loss_fn, tx, config.train.grad_accum_steps),
            in_shardings=(state_shardings, None),
            out_shardings=(state_shardings, None),
            donate_argnums=0,
        )
        # Warm-up and timing through a closure that carries the donated state forward.
        holder = {"state": state}

        def one_step(b):
            holder["state"], metrics = step(holder["state"], b)
            return metrics

        step_time = time_fn(one_step, batch, steps=STEPS.value)
        result.update(step_ms=step_time * 1e3, examples_per_s=batch_size / step_time, peak_mem_gib=peak_memory_gib())
        if SPLIT.value:
            result.update(split_times(graphdef, holder["state"].params, batch, config))
            result.update(model_rates(result["model_ms"]), mfu_step=flops / step_time / peak)
    return result


def model_times(graphdef, params, batch, config) -> dict:
    """The model's forward+backward (gradient of a loss on its Gaussians) alone, and with ``--parts`` per part."""

    def model_loss(p, b):  # the batch is an argument, not a constant XLA could fold
        return square_mean(nnx.merge(graphdef, p)(b))

    model_time, temp_gib, compiled = compile_and_time(jax.grad(model_loss), params, batch)
    result = {"model_ms": model_time * 1e3, "model_temp_gib": temp_gib}
    if PROFILE_DIR.value:  # The trace of 3 calls, next to the optimised HLO that names its kernels.
        with jax.profiler.trace(PROFILE_DIR.value):
            for _ in range(3):
                jax.block_until_ready(compiled(params, batch))
        with open(f"{PROFILE_DIR.value}/model_grad.hlo.txt", "w") as f:
            f.write(compiled.as_text())
    if PARTS.value:
        result["parts"] = part_times(graphdef, params, batch, config)
    return result


def part_times(graphdef, params, batch, config) -> dict[str, dict]:
    """Forward+backward of each model part alone, on the inputs the whole model's forward gives it.

    Each part's gradient is taken with respect to its parameters and its activation inputs (what
    the whole model's backward computes): tokenizer + expression encoder (from the batch), the
    prefix and cross-attention blocks (tokens, expression tokens), the Gaussian head with
    ``gaussians_from_raw`` (tokens; pixels and anchors are constants). Per part: ``ms``,
    ``tflop`` (3x its analytic forward FLOPs, whole batch), ``mfu`` and XLA ``temp_gib``.
    """
    model = nnx.merge(graphdef, params)
    s = model.settings
    batch = jax.jit(to_float32)(batch)  # the parts below read the model's inputs directly, not through encode
    batch_size = batch["images"].shape[0]
    features = batch["features"] if s.use_features else None
    pixels, anchors = jax.jit(lambda b: (pixel_inputs(b, s), pixel_anchors(b, s)))(batch)
    defs, states = zip(*(nnx.split(m) for m in (model.tokenizer, model.expression_encoder, model.prefix_blocks, model.blocks, model.head)))
    tokenizer, encoder, prefix, blocks, head = (lambda p, d=d: nnx.merge(d, p) for d in defs)

    def tokenizer_loss(p, b):  # p: (tokenizer, expression encoder) states; b: the batch, an argument XLA cannot fold
        b_features = b["features"] if s.use_features else None
        return square_mean((tokenizer(p[0])(pixel_inputs(b, s), b_features), encoder(p[1])(b["expression"])))

    def run_blocks(p, tokens, expression_tokens):  # p: (prefix blocks, cross blocks) states
        return blocks(p[1])(prefix(p[0])(tokens, None), expression_tokens)

    def head_loss(p, tokens):
        return square_mean(gaussians_from_raw(head(p)(tokens, pixels), anchors, s))

    tokens, expression_tokens = jax.jit(lambda p: (tokenizer(p[0])(pixels, features), encoder(p[1])(batch["expression"])))(states[:2])
    head_tokens = jax.jit(run_blocks)(states[2:4], tokens, expression_tokens)
    parts = {
        "tokenizer": (jax.grad(tokenizer_loss), (states[:2], batch)),
        "blocks": (jax.grad(lambda *a: square_mean(run_blocks(*a)), argnums=(0, 1, 2)), (states[2:4], tokens, expression_tokens)),
        "head": (jax.grad(head_loss, argnums=(0, 1)), (states[4], head_tokens)),
    }
    analytic = analytic_forward_flops(s)
    peak = PEAK_TFLOPS.value * 1e12 * len(batch["images"].sharding.device_set)
    result = {}
    for name, (fn, args) in parts.items():
        seconds, temp_gib, _ = compile_and_time(fn, *args)
        flops = 3.0 * batch_size * sum(analytic[key] for key in PART_FLOPS[name])
        result[name] = {"ms": seconds * 1e3, "tflop": flops / 1e12, "mfu": flops / seconds / peak, "temp_gib": temp_gib}
    return result


def split_times(graphdef, params, batch, config) -> dict:
    """Model forward+backward alone (with ``--parts``, per part), and rasterizer forward+backward alone on the model's Gaussians."""
    result = model_times(graphdef, params, batch, config)

    gaussians = jax.jit(lambda p: nnx.merge(graphdef, p)(batch))(params)
    cameras = Cameras(batch["target_K"], batch["target_world_to_cam"])
    size = tuple(batch["target_images"].shape[-3:-1])

    background = objective.default_background(config.render, batch["images"].shape[0])
    render = lambda g: objective.render_batch(g, cameras, background, image_size=size, render_config=config.render)
    render_grad = jax.jit(jax.grad(lambda g: jnp.mean(render(g).images)))
    render_time = time_fn(render_grad, gaussians, steps=STEPS.value)
    stats = jax.jit(lambda g: render(g).stats)(gaussians)
    result.update(render_ms=render_time * 1e3, render_stats={k: int(np.sum(v)) for k, v in jax.device_get(vars(stats)).items()})
    return result


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


def print_parts(result: dict) -> None:
    """The per-part table of one mesh's result: time, analytic fwd+bwd TFLOP, MFU, XLA temp memory."""
    m = result["mesh"]
    print(
        f"\nmodel forward+backward by part, mesh {m['data']},{m['fsdp']},{m['tensor']}, batch {result['batch']}, "
        f"remat {result['remat_policy']}"
    )
    print(f"{'part':>16} {'ms':>9} {'TFLOP':>9} {'TFLOP/s':>9} {'MFU':>7} {'temp GiB':>9}")
    parts = dict(result["parts"])
    parts["sum of parts"] = {key: sum(p[key] for p in result["parts"].values()) for key in ("ms", "tflop")}
    parts["whole model"] = {
        "ms": result["model_ms"],
        "tflop": result["model_tflops_per_example"] * result["batch"],
        "temp_gib": result["model_temp_gib"],
    }
    peak = PEAK_TFLOPS.value * result["devices"]
    for name, p in parts.items():
        rate = p["tflop"] / (p["ms"] * 1e-3)
        print(f"{name:>16} {p['ms']:>9.2f} {p['tflop']:>9.3f} {rate:>9.1f} {rate / peak:>7.3f} {p.get('temp_gib', float('nan')):>9.2f}")


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
    throughput = lambda r: r.get("examples_per_s", r.get("model_examples_per_s", float("nan")))
    base = next((r for r in results if r["devices"] == 1), None)
    nan = float("nan")
    header = ("mesh (data,fsdp,tensor)", "batch", "step ms", "ex/s", "model ms", "render ms", "MFU model", "peak GiB", "scaling")
    print("\n" + " ".join(f"{h:>10}" for h in header))
    for r in results:
        scaling = throughput(r) / (r["devices"] * throughput(base)) if base else nan
        m = r["mesh"]
        row = (
            f"{m['data']},{m['fsdp']},{m['tensor']}",
            r["batch"],
            f"{r.get('step_ms', nan):.2f}",
            f"{throughput(r):.2f}",
            f"{r.get('model_ms', nan):.2f}",
            f"{r.get('render_ms', nan):.2f}",
            f"{r.get('mfu_model_part', nan):.3f}",
            f"{r['peak_mem_gib']:.2f}",
            f"{scaling:.3f}",
        )
        print(" ".join(f"{x!s:>10}" for x in row))
        r["scaling_efficiency"] = scaling
    for r in results:
        if "parts" in r:
            print_parts(r)
    if OUT.value:
        with open(OUT.value, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


def run() -> None:
    flags.mark_flag_as_required("config")
    run_app(main)


if __name__ == "__main__":
    run()
