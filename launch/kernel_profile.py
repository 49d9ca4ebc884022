"""Per-kernel device time of a jitted call, from a JAX profiler trace (no TensorBoard needed).

``device_kernel_ms(fn, arg, repeats)`` traces ``repeats`` calls of ``fn(arg)`` and sums the device
events of each name on the accelerator's stream lines (kernels, memcpys), per call. Host-only
platforms (the CPU) record no device streams and give an empty list. Templated CUDA kernel names
(CUB's sorts) are cut before their template arguments. Two more entries per call: ``events``, the
device events of one call, and ``idle``, the time the streams sat idle between them (gaps between
consecutive events, less the ``repeats - 1`` longest: those lie between calls).
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
    spans = []  # (start, end) ns of every device event
    for plane in profile.planes:
        if not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            if line.name.startswith("Stream"):
                for event in line.events:
                    totals[short_name(event.name)] += event.duration_ns
                    spans.append((event.start_ns, event.end_ns))
    per_call = [(name, round(ns / repeats / 1e6, 4)) for name, ns in totals.most_common(top)]
    tail = [("total", round(sum(totals.values()) / repeats / 1e6, 4))]
    if spans:
        tail += [("events", round(len(spans) / repeats, 1)), ("idle", round(idle_ns(spans, repeats) / repeats / 1e6, 4))]
    return per_call + tail


def idle_ns(spans: list[tuple[float, float]], calls: int) -> float:
    """Time no event of ``spans`` ((start, end) ns, any order, possibly overlapping) covers between the
    first start and the last end, less the ``calls - 1`` longest gaps (the host's time between calls)."""
    gaps, reached = [], None
    for start, end in sorted(spans):
        if reached is not None and start > reached:
            gaps.append(start - reached)
        reached = end if reached is None else max(reached, end)
    return sum(sorted(gaps)[: max(0, len(gaps) - (calls - 1))])


def short_name(name: str) -> str:
    """``void cub::...::DeviceRadixSortOnesweepKernel<...>(...)`` -> ``cub::...::DeviceRadixSortOnesweepKernel``."""
    return name.removeprefix("void ").split("<", 1)[0].split("(", 1)[0]
