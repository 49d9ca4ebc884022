"""A contact sheet of procedural subjects without and with the optional head variety (no dataset written)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from avat3r_jax import geometry
from data_pipelines.synthetic import dataset, head, render

_PORTRAIT_YAWS_DEGREES = (0.0, 50.0)  # front and three-quarter
_PORTRAIT_FRAMING = 0.42  # metres seen across the image at 1 m (long hair included)


def portrait_cameras(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``K [2, 3, 3]``, ``world_to_cam [2, 4, 4]``: a front and a three-quarter view 1 m from the head."""
    yaw = np.deg2rad(_PORTRAIT_YAWS_DEGREES)
    eyes = np.stack([np.sin(yaw), np.full(2, 0.05), np.cos(yaw)], -1).astype(np.float32)
    world_to_cam = np.asarray(geometry.look_at(eyes, np.tile([[0.0, -0.05, 0.0]], (2, 1)).astype(np.float32)))
    focal = np.full(2, size / _PORTRAIT_FRAMING, np.float32)
    return np.asarray(geometry.make_intrinsics(focal, focal, size / 2, size / 2)), world_to_cam


def variety_sheet(spec: dataset.SyntheticSpec, subjects: int, size: int, columns: int = 8) -> np.ndarray:
    """uint8 ``[rows * size, columns * size, 3]``: for each group of ``columns`` subjects, a row of
    front views with the variety off (``dataset.VARIETY_OFF``), then the same subjects' front and
    three-quarter views under ``spec``; neutral expressions, all heads traced in one call."""
    plain = dataclasses.replace(spec, **dataset.VARIETY_OFF)
    identities = [dataset.sample_subject(s, i).identity for s in (plain, spec) for i in range(subjects)]
    K, world_to_cam = portrait_cameras(size)
    count = len(identities)
    views = render.render_batch(
        jax.tree.map(lambda *fields: np.stack(fields), *identities),
        np.tile(head.NEUTRAL_EXPRESSION, (count, 1)),
        np.tile(K, (count, 1, 1, 1)),
        np.tile(world_to_cam, (count, 1, 1, 1)),
        np.ones(3, np.float32),
        height=size,
        width=size,
        steps=spec.render_steps,
    )
    tiles = np.asarray(views.image).reshape(2, subjects, 2, size, size, 3)  # [variety off/on, subject, view, H, W, 3]
    blank = np.ones((size, size, 3), np.float32)
    rows = []
    for first in range(0, subjects, columns):
        group = range(first, first + columns)
        for variety, view in ((0, 0), (1, 0), (1, 1)):
            rows.append(np.concatenate([tiles[variety, i, view] if i < subjects else blank for i in group], 1))
    return (np.clip(np.concatenate(rows, 0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
