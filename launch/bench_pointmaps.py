"""DUSt3R point-map benchmark: our Flax network against the PyTorch reference, plus global alignment.

``python -m launch.bench_pointmaps`` times, on one accelerator, DUSt3R at the released 512-DPT size
with random weights on ``--views`` images of ``--height x --width`` (4 at 384 x 512: 12 ordered
pairs):

- the PyTorch reference (mini-dust3r's ``AsymmetricCroCo3DStereo``, built from the released
  checkpoint's ``args.model`` as dust3r's ``load_model`` does), all pairs in one batch symmetrized
  as dust3r's inference feeds it, float32 (TF32 matmuls, as CroCo sets) and under bfloat16 autocast;
  run first, in its own process, so the two frameworks do not share GPU memory;
- ours (``predict_pairs``, every view encoded once), ``--variants`` of: float32, bfloat16
  encoder/decoder with float32 heads (what autocast does in the reference), bfloat16 throughout;
- ``avat3r_jax.frontend.alignment.global_align`` on the first variant's outputs, when it exists.

Each time is the median of ``--repeats`` runs after ``--warmup`` untimed ones, synchronised on the
outputs. Progress goes to stderr as it happens; the table goes to stdout and, with JSON, to
``--out`` (default ``$OUT``). The reference needs ``mini-dust3r``, ``roma`` and ``beartype`` beside
torch (``pip install --no-deps``). A CPU smoke test of our side: ``--size=tiny --views=2 --height=32
--width=32``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from absl import app, flags

VIEWS = flags.DEFINE_integer("views", 4, "Images (all ordered pairs are predicted).")
HEIGHT = flags.DEFINE_integer("height", 384, "Image height (multiple of 16).")
WIDTH = flags.DEFINE_integer("width", 512, "Image width (multiple of 16).")
REPEATS = flags.DEFINE_integer("repeats", 10, "Timed runs per variant.")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed runs first (compilation, autotuning).")
SIZE = flags.DEFINE_enum("size", "released", ["released", "tiny"], "Our network's size (tiny: a CPU smoke test, no reference).")
REFERENCE = flags.DEFINE_bool("reference", True, "Also time the PyTorch reference (needs torch and mini-dust3r).")
VARIANTS = flags.DEFINE_list(
    "variants", ["float32", "bfloat16"], "Our precisions to time (one compilation each): float32, bfloat16-heads-float32, bfloat16."
)
REFERENCE_ONLY = flags.DEFINE_bool("reference_only", False, "Internal: time only the reference, print JSON.")
OUT_DIR = flags.DEFINE_string("out", os.environ.get("OUT"), "Folder for bench_pointmaps.md/.json.")


def progress(line: str) -> None:
    """One progress line on stderr, unbuffered (a killed run still shows how far it got)."""
    print(line, file=sys.stderr, flush=True)


def median_seconds(run: Callable[[], object], sync: Callable[[object], None], repeats: int, warmup: int) -> float:
    """Median wall time of ``run()`` (synchronised by ``sync`` on its result) over ``repeats`` runs."""
    for _ in range(warmup):
        sync(run())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(run())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_times(views: int, height: int, width: int, repeats: int, warmup: int) -> dict[str, float]:
    """The PyTorch reference's seconds per run: ``{"float32": s, "bfloat16 autocast": s}``."""
    import itertools

    import torch
    from mini_dust3r.model import AsymmetricCroCo3DStereo, inf  # noqa: F401 (the args string names both)

    from avat3r_jax.frontend.dust3r import RELEASED_512_DPT_ARGS  # imports JAX, which stays off the GPU here

    start = time.perf_counter()
    args = RELEASED_512_DPT_ARGS.replace("ManyAR_PatchEmbed", "PatchEmbedDust3R")[:-1] + ", landscape_only=False)"
    with torch.device("cuda"):
        model = eval(args).eval()
    progress(f"reference: imported and built in {time.perf_counter() - start:.1f} s")
    rows = [p for i, j in itertools.combinations(range(views), 2) for p in ((i, j), (j, i))]
    images = torch.rand((views, 3, height, width), device="cuda") * 2 - 1
    shape = torch.tensor([[height, width]] * len(rows), device="cuda")

    def view(side: int) -> dict:
        picks = [row[side] for row in rows]
        return dict(img=images[picks], true_shape=shape, instance=[str(k) for k in picks], idx=picks)

    view1, view2 = view(0), view(1)

    def forward(autocast: bool):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            return model(view1, view2)

    def sync(_):
        torch.cuda.synchronize()

    times: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, autocast in (("float32", False), ("bfloat16 autocast", True)):
        times[name] = median_seconds(lambda a=autocast: forward(a), sync, repeats, warmup)
        progress(f"reference {name}: {1e3 * times[name]:.1f} ms")
    return times


def our_times(views: int, height: int, width: int, repeats: int, warmup: int, size: str, names: list[str]) -> tuple[dict[str, float], dict]:
    """Our seconds per run for each precision variant, and the alignment's (or why it was not timed)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from avat3r_jax.frontend.dust3r import Dust3r, Dust3rSettings, predict_pairs
    from avat3r_jax.frontend.pairs import ordered_pairs

    pairs = ordered_pairs(views)
    images = jax.random.uniform(jax.random.key(1), (views, height, width, 3), jnp.float32)
    base = Dust3rSettings.released_512_dpt() if size == "released" else Dust3rSettings.tiny()
    flash = "cudnn" if jax.default_backend() == "gpu" else "xla"  # cuDNN flash attention for bfloat16 on NVIDIA GPUs
    known = {
        "float32": base,
        "bfloat16-heads-float32": dataclasses.replace(base, dtype=jnp.bfloat16, attention_impl=flash),
        "bfloat16": dataclasses.replace(base, dtype=jnp.bfloat16, head_dtype=jnp.bfloat16, attention_impl=flash),
    }
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"unknown --variants {unknown}; choose from {sorted(known)}")
    variants = {name: known[name] for name in names}

    def sync(out):
        jax.block_until_ready(out)

    times, state, first_out = {}, None, None
    for name, settings in variants.items():
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda s=settings: Dust3r(s, rngs=nnx.Rngs(0))))
        state = random_weights(abstract) if state is None else state  # the same weights (float32) in every variant
        model = nnx.merge(graphdef, state)
        start = time.perf_counter()
        out = predict_pairs(model, images, pairs)
        sync(out)
        progress(f"ours {name}: first call (compilation) {time.perf_counter() - start:.1f} s")
        times[name] = median_seconds(lambda m=model: predict_pairs(m, images, pairs), sync, repeats, warmup)
        progress(f"ours {name}: {1e3 * times[name]:.1f} ms")
        first_out = out if first_out is None else first_out
    return times, alignment_time(first_out, repeats, warmup)


def random_weights(abstract_state, seed: int = 0):
    """Normal(0, 0.02) arrays for every parameter of an abstract state, drawn on the host (no compilation)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(0.02 * rng.standard_normal(leaf.shape, np.float32)), abstract_state)


def alignment_time(predictions, repeats: int, warmup: int) -> dict:
    """Seconds of ``global_align`` on the network's outputs, or why it was not timed."""
    import jax

    try:
        from avat3r_jax.frontend import alignment
    except ImportError as error:
        return {"note": f"avat3r_jax.frontend.alignment not importable: {error}"}
    align = getattr(alignment, "global_align", None)
    if align is None:
        return {"note": "avat3r_jax.frontend.alignment has no global_align"}
    settings = alignment.AlignmentSettings()
    start = time.perf_counter()
    jax.block_until_ready(align(predictions, settings))
    compile_s = time.perf_counter() - start
    seconds = median_seconds(lambda: align(predictions, settings), jax.block_until_ready, repeats, warmup)
    return {"seconds": seconds, "first_call_s": compile_s, "iterations": settings.iterations}


def table(reference: dict, ours: dict, align: dict, views: int, height: int, width: int) -> str:
    pairs = views * (views - 1)
    lines = [
        f"DUSt3R {SIZE.value} size (random weights), {views} views at {width}x{height} = {pairs} ordered pairs, one batch",
        "",
        "| network | precision | ms per run (median) | time / PyTorch float32 |",
        "| --- | --- | --- | --- |",
    ]
    base = reference.get("float32")
    for name in ("float32", "bfloat16 autocast"):
        if name in reference:
            lines.append(f"| PyTorch (mini-dust3r) | {name} | {1e3 * reference[name]:.1f} | {reference[name] / base:.2f}x |")
    for name, seconds in ours.items():
        ratio = f"{seconds / base:.2f}x" if base else "n/a"
        lines.append(f"| ours (Flax) | {name} | {1e3 * seconds:.1f} | {ratio} |")
    if "seconds" in align:
        lines += ["", f"global alignment ({align['iterations']} Adam steps, {views} views): {1e3 * align['seconds']:.1f} ms"]
        lines.append(f"(first call incl. compilation {align['first_call_s']:.1f} s)")
    else:
        lines += ["", f"global alignment not timed: {align['note']}"]
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    shape = (VIEWS.value, HEIGHT.value, WIDTH.value, REPEATS.value, WARMUP.value)
    if REFERENCE_ONLY.value:
        print("REFERENCE_JSON " + json.dumps(reference_times(*shape)), flush=True)
        return
    reference: dict = {}
    if REFERENCE.value and SIZE.value == "released":
        command = [sys.executable, "-m", "launch.bench_pointmaps", "--reference_only", *sys.argv[1:]]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)  # its progress: our stderr
        lines = [line for line in done.stdout.splitlines() if line.startswith("REFERENCE_JSON ")]
        if done.returncode or not lines:
            raise SystemExit(f"the PyTorch reference failed (exit {done.returncode}); its output is above")
        reference = json.loads(lines[-1][len("REFERENCE_JSON ") :])
    import jax

    ours, align = our_times(*shape, SIZE.value, VARIANTS.value)
    text = table(reference, ours, align, VIEWS.value, HEIGHT.value, WIDTH.value)
    text += f"\n\ndevice: {jax.devices()[0].device_kind}, jax {jax.__version__}, {time.strftime('%Y-%m-%d', time.gmtime())}"
    print(text)
    if OUT_DIR.value:
        out = pathlib.Path(OUT_DIR.value)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_pointmaps.md").write_text(text + "\n")
        (out / "bench_pointmaps.json").write_text(json.dumps({"reference": reference, "ours": ours, "alignment": align}, indent=1))


if __name__ == "__main__":
    app.run(main)
