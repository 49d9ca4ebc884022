"""Per-kernel device time of a jitted call, from a JAX profiler trace (no TensorBoard needed).

``device_kernel_ms(fn, arg, repeats)`` traces ``repeats`` calls of ``fn(arg)`` and sums the device
events of each name on the accelerator's stream lines (kernels, memcpys), per call. Host-only
platforms (the CPU) record no device streams and give an empty list. Templated CUDA kernel names
(CUB's sorts) are cut before their template arguments.
"""

from __future__ import annotations

import collections
import pathlib
import tempfile


def device_kernel_ms(fn, arg, repeats: int = 5, top: int = 12) -> list[tuple[str, float]]:
    """``[(event name, ms per call), ...]``, the ``top`` largest first, plus ``("total", ms)`` last."""
    import jax

    jax.block_until_ready(fn(arg))
    with tempfile.TemporaryDirectory() as log_dir:
        with jax.profiler.trace(log_dir):
            for _ in range(repeats):
                jax.block_until_ready(fn(arg))
        (path,) = pathlib.Path(log_dir).glob("plugins/profile/*/*.xplane.pb")
        profile = jax.profiler.ProfileData.from_file(str(path))
    totals: collections.Counter[str] = collections.Counter()
    for plane in profile.planes:
        if not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            if line.name.startswith("Stream"):
                for event in line.events:
                    totals[short_name(event.name)] += event.duration_ns
    per_call = [(name, round(ns / repeats / 1e6, 4)) for name, ns in totals.most_common(top)]
    return per_call + [("total", round(sum(totals.values()) / repeats / 1e6, 4))]


def short_name(name: str) -> str:
    """``void cub::...::DeviceRadixSortOnesweepKernel<...>(...)`` -> ``cub::...::DeviceRadixSortOnesweepKernel``."""
    return name.removeprefix("void ").split("<", 1)[0].split("(", 1)[0]
