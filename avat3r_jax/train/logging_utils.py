"""Run outputs: TensorBoard + JSON-lines metrics, the progress line, and PNG eval grids."""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
from PIL import Image


class MetricWriter:
    """Writes scalars to TensorBoard (``workdir/tb``) and ``workdir/metrics.jsonl``; a no-op when disabled.

    TensorBoard files come from tensorboardX, not clu's metric writers: clu 0.0.12 installs without
    TensorFlow, but ``from clu import metric_writers`` imports it (its SummaryWriter is tf.summary's)
    and fails without it, and TensorFlow stays out of the default install.
    """

    def __init__(self, workdir: pathlib.Path, enabled: bool = True, resume_step: int = 0):
        """``resume_step``: the step the run restarts from; records of later steps already in
        ``metrics.jsonl`` (logged before a crash, replayed now) are dropped, so each step is there once."""
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / "metrics.jsonl"
        truncate_after(path, resume_step)
        self._tb = SummaryWriter(str(workdir / "tb"))
        self._jsonl = open(path, "a")  # noqa: SIM115 - closed in close().

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **scalars}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def truncate_after(path: pathlib.Path, step: int) -> None:
    """Drops the records of ``path`` (JSON lines with a ``step``) beyond ``step``, and a torn last line;
    rewrites the file atomically, and only when something is dropped."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line if line.endswith("\n") else line + "\n" for line in lines if _step_of(line) is not None and _step_of(line) <= step]
    if kept == lines:
        return
    partial = path.with_name(path.name + ".tmp")
    partial.write_text("".join(kept))
    partial.replace(path)


def _step_of(line: str) -> int | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) else None


class ProgressClock:
    """Estimates the time left from the average step time since creation."""

    def __init__(self, start_step: int):
        self.start_step, self.start_time = start_step, time.perf_counter()

    def eta_seconds(self, step: int, total_steps: int) -> float:
        done = step - self.start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self.start_time) / done * (total_steps - step)


def format_duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_progress(step: int, total_steps: int, metrics: dict[str, float], eta_seconds: float) -> str:
    """``step 120/3000 | loss 0.0712 | psnr 18.31 | 12.3 ex/s | ETA 5m12s`` (+ skipped updates if any)."""
    parts = [f"step {step}/{total_steps}", f"loss {metrics.get('loss', float('nan')):.4f}"]
    if "psnr" in metrics:
        parts.append(f"psnr {metrics['psnr']:.2f}")
    if "examples_per_sec" in metrics:
        parts.append(f"{metrics['examples_per_sec']:.1f} ex/s")
    parts.append(f"ETA {format_duration(eta_seconds)}")
    if metrics.get("nonfinite_total"):
        parts.append(f"skipped {int(metrics['nonfinite_total'])}")
    return " | ".join(parts)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_eval_grid(path: pathlib.Path, inputs: np.ndarray, predicted: np.ndarray, target: np.ndarray) -> None:
    """One row per example: its input views, then predicted and ground-truth target views.

    ``inputs [B, V, H, W, 3]``, ``predicted``/``target [B, T, H, W, 3]``, all in [0, 1].
    """
    rows = []
    for example in range(inputs.shape[0]):
        tiles = [*inputs[example], *predicted[example], *target[example]]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8(grid)).save(path)
