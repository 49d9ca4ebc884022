"""Plot a run's ``metrics.jsonl`` to PNG (no plotting library: PIL only).

    python -m launch.plot_metrics --metrics=runs/synthetic/metrics.jsonl --out=docs/synthetic_curve.png

Draws the training PSNR and every ``eval/*psnr`` series against the step, or the series ``--keys``
names (e.g. ``--keys=train/loss``).
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags
from PIL import Image, ImageDraw

METRICS = flags.DEFINE_string("metrics", None, "A metrics.jsonl written by the trainer.", required=True)
OUT = flags.DEFINE_string("out", None, "Output PNG path.", required=True)
KEYS = flags.DEFINE_list("keys", None, "Metric keys to draw (default: train/psnr and every eval/*psnr).")

MARKED_POINTS = 20  # Series with at most this many points also get a dot per point.
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]


def is_psnr(key: str) -> bool:
    return key == "train/psnr" or (key.startswith("eval/") and key.endswith("psnr"))


def read_series(path: pathlib.Path, keys: list[str] | None = None) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key in keys if keys else is_psnr(key):
                series.setdefault(key, []).append((record["step"], float(value)))
    return series


def plot(series: dict[str, list[tuple[int, float]]], size=(900, 520), margin=70) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    steps = [s for points in series.values() for s, _ in points]
    values = [v for points in series.values() for _, v in points]
    pad = 1.0 if all(map(is_psnr, series)) else 0.05 * (max(values) - min(values) or 1.0)
    unit = " dB" if all(map(is_psnr, series)) else ""
    x0, x1, y0, y1 = min(steps), max(steps), min(values) - pad, max(values) + pad
    width, height = size[0] - 2 * margin, size[1] - 2 * margin
    to_px = lambda s, v: (margin + (s - x0) / max(x1 - x0, 1) * width, margin + (1 - (v - y0) / (y1 - y0)) * height)
    draw.rectangle([margin, margin, margin + width, margin + height], outline="black")
    for k in range(6):
        v = y0 + k * (y1 - y0) / 5
        y = to_px(x0, v)[1]
        draw.line([margin - 5, y, margin, y], fill="black")
        draw.text((8, y - 6), f"{v:.1f}{unit}" if unit else f"{v:.3g}", fill="black")
        s = x0 + k * (x1 - x0) / 5
        x = to_px(s, y0)[0]
        draw.text((x - 12, margin + height + 8), f"{int(s)}", fill="black")
    draw.text((margin + width // 2 - 20, size[1] - 24), "step", fill="black")
    for index, (name, points) in enumerate(sorted(series.items())):
        color = COLORS[index % len(COLORS)]
        draw.line([to_px(s, v) for s, v in points], fill=color, width=2)
        if len(points) <= MARKED_POINTS:  # e.g. one evaluation at the end: a line of one point is invisible
            for x, y in (to_px(s, v) for s, v in points):
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        draw.text((margin + 10, margin + 8 + 16 * index), name, fill=color)
    return image


def main(argv: list[str]) -> None:
    del argv
    series = read_series(pathlib.Path(METRICS.value), KEYS.value)
    if not series:
        raise SystemExit(f"error: no {'series ' + ','.join(KEYS.value) if KEYS.value else 'PSNR series'} in {METRICS.value}")
    plot(series).save(OUT.value)


if __name__ == "__main__":
    app.run(main)
