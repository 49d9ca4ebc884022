"""Human-readable views of a dataset: counts and a contact sheet of one pipeline example."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from avat3r_jax.spec import from_stored
from data_pipelines import grain_pipeline, sources, storage


def summary(data_dir: str | os.PathLike) -> str:
    """Counts per split (records, subjects, frames, cameras) and the dataset's parameters."""
    info = sources.load_info(data_dir)
    lines = [
        f"dataset {data_dir}: source {info.source}, {len(info.subject_names)} subjects, {len(info.camera_names)} cameras, "
        f"expression dim {info.expression_dim}, {info.feature_channels} feature channels"
    ]
    for split in storage.STORED_SPLITS:
        index = sources.open_source(data_dir, (split,)).index
        frames = len(np.unique(index[:, :2], axis=0))
        lines.append(
            f"  {split:16s} {len(index):8d} views  {len(np.unique(index[:, 0])):5d} subjects  {frames:7d} frames  "
            f"{len(np.unique(index[:, 2])):4d} cameras"
        )
    lines.append(f"  parameters: {info.parameters}")
    return "\n".join(lines)


def inspection_config(
    data_dir: str | os.PathLike, image_size: tuple[int, int], data_config: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """``data_config`` (the schema's data section) matched to the dataset (expression/feature sizes,
    camera count), one example per batch, no workers."""
    info = sources.load_info(data_dir)
    config = ml_collections.ConfigDict(data_config.to_dict())
    config.update(
        image_height=image_size[0],
        image_width=image_size[1],
        num_input_views=min(4, len(info.camera_names)),
        num_target_views=min(4, len(info.camera_names)),
        feature_channels=max(info.feature_channels, 1),
        expression_dim=info.expression_dim,
        batch_size=1,
        num_workers=0,
        num_threads=1,
        prefetch_batches=1,
    )
    return config


def _to_rgb(values: np.ndarray) -> np.ndarray:
    """``[..., C]`` -> displayable ``[..., 3]`` in [0, 1]: the first three channels, each min-max scaled."""
    values = values[..., :3]
    if values.shape[-1] < 3:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 3 - values.shape[-1]), values.dtype)], -1)
    low = values.min(axis=tuple(range(values.ndim - 1)), keepdims=True)
    high = values.max(axis=tuple(range(values.ndim - 1)), keepdims=True)
    return (values - low) / np.maximum(high - low, 1e-9)


def _upsample(image: np.ndarray, height: int, width: int) -> np.ndarray:
    rows = np.arange(height) * image.shape[0] // height
    cols = np.arange(width) * image.shape[1] // width
    return image[rows[:, None], cols[None, :]]


def contact_sheet(example: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 ``[4H, max(V, T) W, 3]``: input images, their position maps (masked by validity),
    their feature maps (first three channels), and the target images. ``example`` is one batch element."""
    example = {key: from_stored(key, value) for key, value in example.items()}
    images, targets = example["images"], example["target_images"]
    num_views, height, width = images.shape[:3]
    posmaps = _to_rgb(example["posmaps"]) * example["posmap_valid"]
    features = np.stack([_upsample(f, height, width) for f in _to_rgb(example["features"])])
    columns = max(num_views, targets.shape[0])

    def row(views: np.ndarray) -> np.ndarray:
        padded = np.ones((columns, height, width, 3), np.float32)
        padded[: len(views)] = views
        return np.concatenate(list(padded), axis=1)

    sheet = np.concatenate([row(images), row(posmaps), row(features), row(targets)], axis=0)
    return np.round(np.clip(sheet, 0, 1) * 255).astype(np.uint8)


def sample_example(
    data_dir: str | os.PathLike, split: str, image_size: tuple[int, int], data_config: ml_collections.ConfigDict, seed: int = 0
) -> dict[str, np.ndarray]:
    """One example (batch element 0) of ``split`` through the Grain pipeline, with ``data_config``'s
    other settings (the schema's data section)."""
    config = inspection_config(data_dir, image_size, data_config)
    batch = next(iter(grain_pipeline.make_dataset(config, data_dir, split=split, seed=seed, num_epochs=1, shuffle=True)))
    return {key: value[0] for key, value in batch.items()}
