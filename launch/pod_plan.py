"""Plan a TPU pod run from this CPU host: lower the train step for a TPU slice and read its costs off.

    python -m launch.pod_plan --config=configs/paper.py --topology=v5p-256 --mesh=16,8,1

Everything printed is an estimate from lowering and compiling, not a measurement on a TPU:

- The train step (model with ``attention_impl="pallas_tpu"``, loss, rasterizer, optimiser) is
  traced on an ``AbstractMesh`` of the slice's chips whose ``AbstractDevice`` is the TPU, and
  lowered for ``tpu``: the Mosaic kernels (``tpu_custom_call``) it holds are counted by name.
- Per chip bytes of parameters, optimiser state and gradients come from the train state's
  shardings (gradients at their parameters' sharding and dtype).
- XLA inserts collectives only when it compiles (SPMD partitioning), and XLA:TPU is not on this
  host, so the same step is also compiled for a CPU mesh of the same shape (``--collectives``): the
  CPU branches of the kernel choice run there (XLA rasterizer, XLA attention), per shard like the
  TPU kernels, so the partitioned program has the same collectives. From it: each collective with
  its per-chip size, the largest per-chip arrays, and XLA:CPU's memory analysis (CPU kernels, so
  only indicative of a TPU's). XLA:TPU's own memory analysis is not available here.
- Step time: model FLOPs per chip (3x the analytic forward count of ``launch.model_info``) over the
  chip's published bf16 peak, and collective bytes on the wire over its ICI bandwidth. The
  rasterizer is not FLOP-bound and is not in the compute estimate.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import re
import sys

import jax
import ml_collections
import numpy as np
from absl import flags

from avat3r_jax import sharding
from avat3r_jax.model import ModelSettings
from avat3r_jax.spec import batch_shapes
from avat3r_jax.train import objective
from avat3r_jax.train.step import make_train_step
from avat3r_jax.train.trainer import build_model_state
from launch.config_cli import CONFIG, run_app
from launch.model_info import analytic_forward_flops

TOPOLOGY = flags.DEFINE_string(
    "topology", "v5p-256", "Slice type, e.g. v5p-256, v6e-64, v5litepod-16 (TensorCores for v5p, chips otherwise)."
)
MESH = flags.DEFINE_string("mesh", "-1,1,1", "data,fsdp,tensor sizes over the slice's chips (one may be -1).")
PER_CHIP_BATCH = flags.DEFINE_integer("per_chip_batch", 1, "Examples per data/fsdp chip (tensor-parallel chips share examples).")
COLLECTIVES = flags.DEFINE_bool("collectives", True, "Also compile the step for a CPU mesh of the same shape (collectives, memory).")
JSON_OUT = flags.DEFINE_string("json_out", "", "Append the plan as one JSON line to this file.")

# Assumed model MFU for the second step-time estimate: the model part's 40.5% at batch 8 measured on
# one H100 (docs/PERFORMANCE.md); an assumption for a TPU, not a measurement.
ASSUMED_MODEL_MFU = 0.405


@dataclasses.dataclass(frozen=True)
class Chip:
    """A TPU generation's published per-chip figures."""

    device_kind: str  # jax Device.device_kind (what Mosaic's chip lookup reads)
    cores_per_chip: int  # TensorCores per chip (a v5p-N slice has N / 2 chips)
    peak_bf16_tflops: float
    hbm_gib: float
    ici_gbytes_per_s: float  # bidirectional inter-chip interconnect bandwidth per chip
    source: str


# Per-chip specifications as published by Google Cloud (checked 2026-12-01).
CHIPS = {
    "v5p": Chip("TPU v5p", 2, 459.0, 95.0, 1200.0, "https://docs.cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6 lite", 1, 918.0, 32.0, 800.0, "https://docs.cloud.google.com/tpu/docs/v6e"),
    "v5litepod": Chip("TPU v5 lite", 1, 197.0, 16.0, 400.0, "https://docs.cloud.google.com/tpu/docs/v5e"),
}

COLLECTIVE_OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = dict(pred=1, s8=1, u8=1, s16=2, u16=2, f16=2, bf16=2, s32=4, u32=4, f32=4, s64=8, u64=8, f64=8)
_SHAPE = re.compile(r"\b(" + "|".join(DTYPE_BYTES) + r")\[([\d,]*)\]")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.-]+) = (.+?) ([a-z-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MOSAIC_NAME = re.compile(r'tpu_custom_call.*?kernel_name = "([^"]+)"')


def parse_topology(topology: str) -> tuple[Chip, int]:
    """``"v5p-256"`` -> (the chip, 128 chips)."""
    generation, _, count = topology.rpartition("-")
    if generation not in CHIPS or not count.isdigit():
        raise ValueError(f"unknown topology {topology!r}; expected <generation>-<size> with generation in {sorted(CHIPS)}")
    chip = CHIPS[generation]
    cores = int(count)
    if cores % chip.cores_per_chip:
        raise ValueError(f"{topology}: {cores} is not a whole number of {generation} chips ({chip.cores_per_chip} TensorCores each)")
    return chip, cores // chip.cores_per_chip


def parse_mesh(mesh: str, num_chips: int) -> tuple[int, int, int]:
    """``"D,F,T"`` (one may be -1: the rest of the chips) -> sizes whose product is ``num_chips``."""
    sizes = [int(part) for part in mesh.split(",")]
    if len(sizes) != 3 or sizes.count(-1) > 1 or any(size == 0 or size < -1 for size in sizes):
        raise ValueError(f"--mesh needs data,fsdp,tensor sizes (positive, at most one -1), got {mesh!r}")
    if -1 in sizes:
        sizes[sizes.index(-1)] = num_chips // -math.prod(sizes)
    if math.prod(sizes) != num_chips:
        raise ValueError(f"mesh {mesh} does not split the slice's {num_chips} chips")
    return tuple(sizes)


def abstract_tpu_mesh(sizes: tuple[int, int, int], chip: Chip) -> jax.sharding.AbstractMesh:
    """A ``('data', 'fsdp', 'tensor')`` mesh of abstract TPU chips (Auto axes, like the trainer's)."""
    device = jax.sharding.AbstractDevice(device_kind=chip.device_kind, num_cores=1, platform="tpu")
    return jax.sharding.AbstractMesh(tuple(sizes), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, abstract_device=device)


def tpu_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with the TPU kernels: Pallas TPU attention and the per-platform rasterizer choice."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.attention_impl = "pallas_tpu"
    config.render.backend = "auto"
    return config


def global_batch_size(sizes: tuple[int, int, int], per_chip_batch: int) -> int:
    return per_chip_batch * sizes[0] * sizes[1]


def abstract_batch(config: ml_collections.ConfigDict, batch_size: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The training batch (docs/INTERFACES.md) as shapes, sharded over the batch axes of ``mesh``."""
    shapes = batch_shapes(ModelSettings.from_config(config), batch_size, num_target_views=config.data.num_target_views)
    return {
        key: jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding.batch_sharding(mesh, len(spec.shape)))
        for key, spec in shapes.items()
        if key not in ("subject", "frame")  # bookkeeping entries the loss does not read
    }


def traced_train_step(config: ml_collections.ConfigDict, mesh, batch_size: int, platform: str):
    """``(jax.stages.Lowered, abstract train state)``: the sharded train step on ``mesh``, lowered for ``platform``.

    The abstract state is built outside the mesh context (``nnx.eval_shape`` would read the logical
    axis names as mesh axes); tracing and lowering run inside it, as the trainer's step does.
    """
    graphdef, tx, abstract_state, state_shardings, _ = build_model_state(config, mesh)
    batch = abstract_batch(config, batch_size, mesh)
    step = make_train_step(objective.make_loss_fn(graphdef, config), tx, config.train.grad_accum_steps)
    batch_shardings = {key: value.sharding for key, value in batch.items()}
    jitted = jax.jit(step, in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, None), donate_argnums=0)
    context = jax.sharding.use_abstract_mesh(mesh) if isinstance(mesh, jax.sharding.AbstractMesh) else jax.set_mesh(mesh)
    with context:
        return jitted.trace(abstract_state, batch).lower(lowering_platforms=(platform,)), abstract_state


def lower_for_tpu(config: ml_collections.ConfigDict, sizes: tuple[int, int, int], chip: Chip, per_chip_batch: int = 1):
    """The train step lowered for ``chip`` on an abstract mesh of ``sizes``: ``(Lowered, abstract state)``."""
    return traced_train_step(config, abstract_tpu_mesh(sizes, chip), global_batch_size(sizes, per_chip_batch), "tpu")


def compile_on_cpu_mesh(config: ml_collections.ConfigDict, sizes: tuple[int, int, int], per_chip_batch: int = 1) -> jax.stages.Compiled:
    """The same train step compiled for a CPU mesh of ``sizes`` (needs that many CPU devices)."""
    devices = jax.devices("cpu")
    if len(devices) < math.prod(sizes):
        raise ValueError(f"a {sizes} CPU mesh needs {math.prod(sizes)} CPU devices, this process has {len(devices)}")
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, sizes))), devices[: math.prod(sizes)])
    lowered, _ = traced_train_step(config, mesh, global_batch_size(sizes, per_chip_batch), "cpu")
    return lowered.compile()


def mosaic_kernels(module_text: str) -> collections.Counter:
    """Mosaic kernel name -> number of ``tpu_custom_call``s in a lowered module's text."""
    names = collections.Counter(_MOSAIC_NAME.findall(module_text))
    unnamed = module_text.count("tpu_custom_call") - sum(names.values())
    if unnamed:
        names["<unnamed>"] += unnamed
    return names


_SDY_MESH = re.compile(r"sdy\.mesh @(\w+) = <\[([^\]]*)\]>")
_CONSTRAINT = re.compile(r"sdy\.sharding_constraint %\S+ <@(\w+), \[(.*?)\]> : tensor<([^>]*)>")
_STABLEHLO_COLLECTIVE = re.compile(r"stablehlo\.(all_reduce|all_gather|reduce_scatter|all_to_all|collective_permute)\b")
TRITON_CALL = "__gpu$xla.gpu.triton"


def _tensor_bytes(tensor_type: str) -> int:
    """``"4x128x64xf32"`` -> bytes."""
    *dims, dtype = tensor_type.split("x")
    return math.prod(int(d) for d in dims) * DTYPE_BYTES[{"i32": "s32", "i8": "s8", "i1": "pred", "i64": "s64"}.get(dtype, dtype)]


def constrained_activations(module_text: str) -> list[tuple[int, int, str]]:
    """Every ``sharding_constraint`` of a lowered (Shardy) module: (per-chip bytes, global bytes, tensor type), largest first."""
    meshes = {name: {axis: int(size) for axis, size in re.findall(r'"(\w+)"=(\d+)', axes)} for name, axes in _SDY_MESH.findall(module_text)}
    found = []
    for mesh, dims, tensor_type in _CONSTRAINT.findall(module_text):
        split = math.prod(meshes[mesh][axis] for axis in re.findall(r'"(\w+)"', dims))
        total = _tensor_bytes(tensor_type)
        found.append((total // split, total, tensor_type))
    return sorted(found, reverse=True)


def module_collectives(module_text: str) -> collections.Counter:
    """Collectives written into a lowered module before partitioning (e.g. by ``shard_map`` transposes)."""
    return collections.Counter(_STABLEHLO_COLLECTIVE.findall(module_text))


def per_chip_bytes(tree) -> int:
    """Bytes one chip holds of ``tree``'s sharded ``ShapeDtypeStruct``/array leaves."""
    return sum(math.prod(leaf.sharding.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def total_bytes(tree) -> int:
    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def _shape_bytes(type_text: str) -> int:
    return sum(DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d) for dtype, dims in _SHAPE.findall(type_text))


def _group_size(line: str, num_devices: int) -> int:
    """Chips per replica group: ``mesh['data'=4,...] {'data'}``, iota ``[G,S]<=[N]`` or explicit ``{{0,1},...}`` groups."""
    if match := re.search(r"replica_groups=mesh\[([^\]]*)\] \{([^}]*)\}", line):
        sizes = {axis: int(size) for axis, size in re.findall(r"'(\w+)'=(\d+)", match.group(1))}
        return math.prod(sizes[axis] for axis in re.findall(r"'(\w+)'", match.group(2)))
    if match := re.search(r"replica_groups=\[(\d+),(\d+)\]<=", line):
        return int(match.group(2))
    if match := re.search(r"replica_groups=\{\{([\d,]*)\}", line):
        return len(match.group(1).split(","))
    return num_devices


def wire_bytes(op: str, output_bytes: int, group: int) -> float:
    """Bytes each chip sends for one collective of a ring algorithm over ``group`` chips."""
    if group <= 1:
        return 0.0
    fraction = (group - 1) / group
    return {
        "all-reduce": 2 * fraction * output_bytes,
        "all-gather": fraction * output_bytes,
        "reduce-scatter": (group - 1) * output_bytes,
        "all-to-all": fraction * output_bytes,
        "collective-permute": float(output_bytes),
    }[op]


@dataclasses.dataclass(frozen=True)
class Collective:
    op: str
    bytes: int  # per-chip output bytes
    group: int  # chips taking part in each group
    source: str  # the JAX op it came from (HLO metadata)


def collectives(hlo_text: str, num_devices: int) -> list[Collective]:
    """Every collective of a compiled (partitioned) HLO module, with its per-chip output size."""
    found = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        op = match.group(3).removesuffix("-start")
        if op in COLLECTIVE_OPS:
            name = _OP_NAME.search(line)
            found.append(Collective(op, _shape_bytes(match.group(2)), _group_size(line, num_devices), name.group(1) if name else ""))
    return found


def largest_arrays(hlo_text: str, count: int = 5) -> list[tuple[int, str, str]]:
    """The ``count`` largest per-chip arrays a compiled module computes: (bytes, shape, JAX op)."""
    arrays = []
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match and match.group(3) not in ("parameter", "tuple", "get-tuple-element", "bitcast") and not match.group(2).startswith("("):
            name = _OP_NAME.search(line)
            arrays.append((_shape_bytes(match.group(2)), match.group(2).split("{")[0], name.group(1) if name else match.group(1)))
    return sorted(arrays, reverse=True)[:count]


def model_flops_per_chip(config: ml_collections.ConfigDict, sizes: tuple[int, int, int], batch_size: int) -> float:
    """3x the analytic forward FLOPs of one chip's share: the blocks split over every chip (heads and
    MLP over ``tensor``), the tokenizer, expression encoder and head only over ``data`` x ``fsdp``
    (their activations are not split over ``tensor``, so tensor-parallel chips repeat them)."""
    forward = analytic_forward_flops(ModelSettings.from_config(config))
    examples = batch_size / (sizes[0] * sizes[1])
    return 3.0 * examples * (forward["blocks"] / sizes[2] + sum(v for k, v in forward.items() if k != "blocks"))


def plan(config: ml_collections.ConfigDict, topology: str, mesh: str, per_chip_batch: int, with_collectives: bool) -> dict:
    """Everything ``main`` prints, as a dict (sizes in bytes, times in ms)."""
    chip, num_chips = parse_topology(topology)
    sizes = parse_mesh(mesh, num_chips)
    config = tpu_config(config)
    batch_size = global_batch_size(sizes, per_chip_batch)
    lowered, state = lower_for_tpu(config, sizes, chip, per_chip_batch)
    module = lowered.as_text()
    params = state.params
    result = {
        "topology": topology,
        "chips": num_chips,
        "device_kind": chip.device_kind,
        "mesh": dict(zip(sharding.MESH_AXES, sizes)),
        "global_batch": batch_size,
        "mosaic_kernels": dict(mosaic_kernels(module)),
        "triton_kernels": module.count(TRITON_CALL),
        "module_collectives": dict(module_collectives(module)),
        "largest_activations_per_chip": [
            {"bytes": chip_bytes, "global_bytes": total, "tensor": tensor}
            for chip_bytes, total, tensor in constrained_activations(module)[:5]
        ],
        "bytes_per_chip": {
            "params": per_chip_bytes(params),
            "opt_state": per_chip_bytes(state.opt_state),
            "grads": per_chip_bytes(params),
        },
        "bytes_total": {"params": total_bytes(params), "opt_state": total_bytes(state.opt_state)},
        "hbm_gib": chip.hbm_gib,
        "xla_tpu_memory_analysis": "not available: XLA:TPU does not run on this host",
    }
    model_flops = model_flops_per_chip(config, sizes, batch_size)
    peak = chip.peak_bf16_tflops * 1e12
    result["model_tflop_per_chip"] = model_flops / 1e12
    result["compute_ms_at_peak"] = model_flops / peak * 1e3
    result["compute_ms_at_assumed_mfu"] = model_flops / (peak * ASSUMED_MODEL_MFU) * 1e3
    if with_collectives:
        compiled = compile_on_cpu_mesh(config, sizes, per_chip_batch)
        text = compiled.as_text()
        found = collectives(text, num_chips)
        summary: dict[str, dict] = {}
        for c in found:
            entry = summary.setdefault(c.op, {"count": 0, "bytes": 0, "wire_bytes": 0.0})
            entry["count"] += 1
            entry["bytes"] += c.bytes
            entry["wire_bytes"] += wire_bytes(c.op, c.bytes, c.group)
        result["collectives"] = summary
        result["largest_collectives"] = [dataclasses.asdict(c) for c in sorted(found, key=lambda c: -c.bytes)[:5]]
        result["collective_ms_at_ici_peak"] = sum(e["wire_bytes"] for e in summary.values()) / (chip.ici_gbytes_per_s * 1e9) * 1e3
        result["largest_arrays_per_chip"] = [{"bytes": b, "shape": s, "op": o} for b, s, o in largest_arrays(text)]
        memory = compiled.memory_analysis()
        result["xla_cpu_memory_analysis"] = {
            "arguments": memory.argument_size_in_bytes,
            "outputs": memory.output_size_in_bytes,
            "aliased": memory.alias_size_in_bytes,
            "temp": memory.temp_size_in_bytes,
        }
        result["xla_cpu_flops_per_chip"] = float((compiled.cost_analysis() or {}).get("flops", 0.0))
    return result


def size(num_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes:.0f} B"


def format_plan(result: dict) -> str:
    mesh = ",".join(str(v) for v in result["mesh"].values())
    lines = [
        f"{result['topology']}: {result['chips']} x {result['device_kind']}, mesh data,fsdp,tensor = {mesh}, "
        f"global batch {result['global_batch']}",
        "ESTIMATES FROM LOWERING ON A CPU HOST, NOT MEASUREMENTS.",
        f"Mosaic kernels in the TPU module: {result['mosaic_kernels']}",
        "per chip (from the shardings): "
        + ", ".join(f"{name} {size(value)}" for name, value in result["bytes_per_chip"].items())
        + f" (of {result['hbm_gib']:.0f} GiB HBM; totals: params {size(result['bytes_total']['params'])}, "
        f"optimiser {size(result['bytes_total']['opt_state'])})",
        f"collectives written into the TPU module (shard_map transposes; XLA adds the rest when it partitions): "
        f"{result['module_collectives']}",
        "largest activations per chip (the module's sharding constraints): "
        + ", ".join(f"{size(a['bytes'])} of {a['tensor']}" for a in result["largest_activations_per_chip"]),
        f"XLA:TPU memory analysis: {result['xla_tpu_memory_analysis']}",
        f"model FLOPs per chip and step: {result['model_tflop_per_chip']:.3f} TFLOP -> {result['compute_ms_at_peak']:.2f} ms at the "
        f"published bf16 peak, {result['compute_ms_at_assumed_mfu']:.2f} ms at {ASSUMED_MODEL_MFU:.1%} MFU (rasterizer not included)",
    ]
    if "collectives" in result:
        lines.append("collectives per step (CPU-compiled twin of the partitioned step; per-chip output bytes):")
        for op, entry in sorted(result["collectives"].items()):
            lines.append(f"  {op}: {entry['count']} ops, {size(entry['bytes'])}, {size(entry['wire_bytes'])} on the wire")
        lines.append(f"  -> {result['collective_ms_at_ici_peak']:.2f} ms at the published ICI bandwidth (no overlap with compute assumed)")
        for c in result["largest_collectives"]:
            lines.append(f"  largest: {c['op']} {size(c['bytes'])} over {c['group']} chips from {c['source']}")
        lines.append("largest per-chip arrays (CPU twin): ")
        lines += [f"  {size(a['bytes'])} {a['shape']} {a['op']}" for a in result["largest_arrays_per_chip"]]
        mem = result["xla_cpu_memory_analysis"]
        lines.append("XLA:CPU memory analysis of the twin (CPU kernels): " + ", ".join(f"{k} {size(v)}" for k, v in mem.items()))
    return "\n".join(lines)


def _ensure_cpu_devices() -> None:
    """Re-runs this command with as many simulated CPU devices as the slice has chips (for the CPU twin)."""
    if not COLLECTIVES.value:
        return
    _, num_chips = parse_topology(TOPOLOGY.value)
    if len(jax.devices("cpu")) >= num_chips:
        return
    flags_env = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    env = dict(os.environ, XLA_FLAGS=f"{flags_env} --xla_force_host_platform_device_count={num_chips}".strip(), JAX_PLATFORMS="cpu")
    os.execve(sys.executable, [sys.executable, "-m", "launch.pod_plan", *sys.argv[1:]], env)


def main(argv: list[str]) -> None:
    del argv
    _ensure_cpu_devices()
    result = plan(CONFIG.value, TOPOLOGY.value, MESH.value, PER_CHIP_BATCH.value, COLLECTIVES.value)
    print(format_plan(result))
    if JSON_OUT.value:
        with open(JSON_OUT.value, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    run_app(main)
