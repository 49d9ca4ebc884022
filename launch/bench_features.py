"""Sapiens feature extraction: ours (JAX, bf16) against a PyTorch ViT of the same size, same GPU, same run.

``python -m launch.bench_features`` (defaults: Sapiens-2B, batch 4 at 1024 x 768) builds a PyTorch
ViT with Sapiens' module names and random weights (patch conv, class token, learned position
embedding resized bicubically, pre-norm blocks on ``F.scaled_dot_product_attention``, exact GELU,
final LayerNorm), loads the same weights into ours through the checkpoint loader
(``sapiens_from_state_dict``: the mmengine key names), and times, for each, normalised images in
[0, 1] -> float32 feature map ``[B, h, w, C]`` in bfloat16 compute: median of ``--iters`` calls
after ``--warmup`` (compilation included there), each synchronised. Also the outputs' relative
difference (both bf16), and TFLOP/s from the analytic forward FLOPs (``sapiens.forward_flops``).
On a CPU, ``--size=tiny --height=64 --width=48 --attention=xla`` is a smoke test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and PyTorch share the GPU

import jax
import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags
from flax import nnx

from avat3r_jax.frontend.sapiens import IMAGE_MEAN, IMAGE_STD, SapiensSettings, extract_features, forward_flops
from avat3r_jax.frontend.sapiens_checkpoint import abstract_sapiens, sapiens_from_state_dict

SIZE = flags.DEFINE_string("size", "2b", "Sapiens size: 0.3b, 0.6b, 1b, 2b or tiny.")
BATCH = flags.DEFINE_integer("batch", 4, "Images per call.")
HEIGHT = flags.DEFINE_integer("height", 1024, "Image height.")
WIDTH = flags.DEFINE_integer("width", 768, "Image width.")
ITERS = flags.DEFINE_integer("iters", 10, "Timed calls (median reported).")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed calls first.")
ATTENTION = flags.DEFINE_list("attention", ["cudnn", "xla"], "Our attention implementations to time.")
JSON_PATH = flags.DEFINE_string("json", None, "Also write the numbers to this JSON file.")


class TorchFfn(torch.nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        up = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU())
        self.layers = torch.nn.Sequential(up, torch.nn.Linear(hidden, width))

    def forward(self, x):
        return self.layers(x)


class TorchAttention(torch.nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.proj = torch.nn.Linear(width, width)

    def forward(self, x):  # [B, L, C]
        b, length, c = x.shape
        q, k, v = self.qkv(x).reshape(b, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, length, c))


class TorchBlock(torch.nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(width, eps=1e-6)
        self.attn = TorchAttention(width, heads)
        self.ln2 = torch.nn.LayerNorm(width, eps=1e-6)
        self.ffn = TorchFfn(width, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class TorchSapiens(torch.nn.Module):
    """A plain PyTorch ViT with the state-dict names of Sapiens' backbone (without the ``backbone.`` prefix)."""

    def __init__(self, s: SapiensSettings):
        super().__init__()
        self.grid0 = s.pretrain_grid
        self.patch_embed = torch.nn.Module()
        self.patch_embed.projection = torch.nn.Conv2d(3, s.width, s.patch_size, s.patch_size)
        self.cls_token = torch.nn.Parameter(0.02 * torch.randn(1, 1, s.width))
        self.pos_embed = torch.nn.Parameter(0.02 * torch.randn(1, 1 + s.pretrain_grid[0] * s.pretrain_grid[1], s.width))
        self.layers = torch.nn.ModuleList(TorchBlock(s.width, s.num_heads, s.mlp_width) for _ in range(s.depth))
        self.ln1 = torch.nn.LayerNorm(s.width, eps=1e-6)
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images):  # [B, 3, H, W] in [0, 1] -> [B, h, w, C] float32
        x = ((images * 255.0 - self.mean) / self.std).to(self.cls_token.dtype)
        x = self.patch_embed.projection(x)
        b, c, h, w = x.shape
        grid = self.pos_embed[:, 1:].reshape(1, *self.grid0, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(x.dtype)
        pos = torch.cat([self.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + pos
        for layer in self.layers:
            x = layer(x)
        return self.ln1(x)[:, 1:].reshape(b, h, w, c).float()


def median_ms(call, sync, warmup: int, iters: int) -> tuple[float, float]:
    """(first call's ms, median ms of ``iters`` calls after ``warmup``), each call synchronised."""
    start = time.perf_counter()
    sync(call())
    first = 1e3 * (time.perf_counter() - start)
    for _ in range(max(warmup - 1, 0)):
        sync(call())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(call())
        times.append(1e3 * (time.perf_counter() - start))
    return first, statistics.median(times)


def settings_for(size: str, **overrides) -> SapiensSettings:
    return SapiensSettings.tiny(**overrides) if size == "tiny" else SapiensSettings.released(size, **overrides)


def main(argv) -> None:
    del argv
    base = settings_for(SIZE.value)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        reference = TorchSapiens(base).eval()
    weights = {f"backbone.{key}": value.detach().cpu().numpy() for key, value in reference.state_dict().items()}
    reference = reference.to(torch.bfloat16)
    ours = sapiens_from_state_dict(weights, dataclasses.replace(base, dtype_name="bfloat16"), what="bench weights")
    del weights
    _, state = nnx.split(ours)

    rng = np.random.default_rng(0)
    images = rng.random((BATCH.value, HEIGHT.value, WIDTH.value, 3), dtype=np.float32)
    flops = BATCH.value * forward_flops(base, HEIGHT.value, WIDTH.value)
    torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    sync_torch = lambda out: torch.cuda.synchronize() if device == "cuda" else out
    with torch.inference_mode():
        torch_first, torch_ms = median_ms(lambda: reference(torch_images), sync_torch, WARMUP.value, ITERS.value)
        torch_out = reference(torch_images).cpu().numpy()
    reference = None  # frees the GPU memory before ours runs
    if device == "cuda":
        torch.cuda.empty_cache()

    jax_images = jax.device_put(images)
    results = {
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "size": SIZE.value,
        "batch": BATCH.value,
        "image": [HEIGHT.value, WIDTH.value],
        "tflop_per_image": flops / BATCH.value / 1e12,
        "torch_bf16": {
            "first_ms": torch_first,
            "ms": torch_ms,
            "images_per_s": 1e3 * BATCH.value / torch_ms,
            "tflops": flops / torch_ms / 1e9,
        },
    }
    for impl in ATTENTION.value:
        graphdef, _ = nnx.split(abstract_sapiens(dataclasses.replace(base, dtype_name="bfloat16", attention_impl=impl)))
        model = nnx.merge(graphdef, state)
        try:
            first, ms = median_ms(lambda model=model: extract_features(model, jax_images), jax.block_until_ready, WARMUP.value, ITERS.value)
        except Exception as error:  # a kernel that does not run here is reported, not fatal
            results[f"jax_bf16_{impl}"] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"}
            continue
        out = np.asarray(extract_features(model, jax_images))
        results[f"jax_bf16_{impl}"] = {
            "first_ms": first,
            "ms": ms,
            "images_per_s": 1e3 * BATCH.value / ms,
            "tflops": flops / ms / 1e9,
            "speedup_vs_torch": torch_ms / ms,
            "relative_difference_vs_torch": float(np.linalg.norm(out - torch_out) / np.linalg.norm(torch_out)),
        }
    print(json.dumps(results, indent=1))
    if JSON_PATH.value:
        with open(JSON_PATH.value, "w") as file:
            json.dump(results, file, indent=1)


if __name__ == "__main__":
    app.run(main)
