"""What every framework and tool must agree on about the model, with no JAX needed.

``ModelSpec.from_config`` reads the model's dimensions from a config by field name (an
``ml_collections.ConfigDict`` or the plain nested dict of a bundle's ``config.json``); its
properties derive the sizes the modules use. ``output_layout`` is the Gaussian head's output
channel layout (JAX model, PyTorch model and the weight converter index it alike), and
``batch_shapes`` the batch contract of docs/INTERFACES.md as code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

# Config path of each spec field that is not ``model.<field name>``.
FIELD_PATHS = {
    "image_height": "data.image_height",
    "image_width": "data.image_width",
    "num_views": "data.num_input_views",
    "feature_channels": "data.feature_channels",
    "feature_height": "data.feature_height",
    "feature_width": "data.feature_width",
    "expression_dim": "data.expression_dim",
    "dtype_name": "model.dtype",
}
# How expression tokens enter the blocks: cross-attended to, or appended to the self-attention sequence.
EXPRESSION_INJECTIONS = ("cross_attention", "token")
_CASTS = {"int": int, "float": float, "bool": bool, "str": str}

MIN_DEPTH = 1e-3  # Depths below this (points behind or at the camera) size initial Gaussians as if at 1 mm.
# Opacity logit of masked pixels (posmap_valid == 0): sigmoid ~ 1e-13, under the rasterizer's 1/255 cut.
MASKED_OPACITY_LOGIT = -30.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """The model's function and parameter shapes; hashable, so it can live in a static graph."""

    image_height: int
    image_width: int
    num_views: int
    feature_channels: int
    feature_height: int
    feature_width: int
    expression_dim: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qk_norm: bool
    layer_norm_affine: bool = True  # absent from configs exported before the option existed
    num_expression_tokens: int
    cross_attn_from_layer: int
    expression_injection: str = "cross_attention"  # absent from configs exported before the option existed
    use_posmap: bool
    use_features: bool
    use_plucker: bool
    use_view_embedding: bool
    posmap_scale: float
    head_channels: int
    max_offset: float
    max_ray_offset: float
    log_scale_min: float
    log_scale_max: float
    init_scale_pixels: float
    init_opacity: float
    sh_degree: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """Reads every field of ``cls`` from ``config`` (see ``FIELD_PATHS``), then ``validate()``s."""
        values, missing = {}, []
        for field in dataclasses.fields(cls):
            path = FIELD_PATHS.get(field.name, f"model.{field.name}")
            section, key = path.split(".")
            if key in config[section]:
                values[field.name] = _CASTS[field.type](config[section][key])
            elif field.default is dataclasses.MISSING:
                missing.append(path)
        if missing:
            raise ValueError(f"config is missing fields {missing} (exported by another version of avat3r_jax?)")
        spec = cls(**values)
        spec.validate()
        return spec

    def problems(self) -> list[tuple[bool, str]]:
        """``(ok, message)`` per consistency check; subclasses add theirs."""
        return [
            (self.patch_size > 0, f"model.patch_size must be positive, got {self.patch_size}"),
            (
                self.patch_size > 0 and self.image_height % self.patch_size == 0 and self.image_width % self.patch_size == 0,
                f"data.image_height/width ({self.image_height}x{self.image_width}) must be multiples of "
                f"model.patch_size ({self.patch_size})",
            ),
            (self.width % self.num_heads == 0, f"model.width ({self.width}) must be a multiple of model.num_heads ({self.num_heads})"),
            (self.depth >= 1, f"model.depth must be >= 1, got {self.depth}"),
            (
                0 <= self.cross_attn_from_layer < self.depth,
                f"model.cross_attn_from_layer must be in [0, depth={self.depth}) so that some block sees the "
                f"expression, got {self.cross_attn_from_layer}",
            ),
            (
                self.expression_injection in EXPRESSION_INJECTIONS,
                f"model.expression_injection must be one of {EXPRESSION_INJECTIONS}, got {self.expression_injection!r}",
            ),
            (self.num_expression_tokens >= 1, f"model.num_expression_tokens must be >= 1, got {self.num_expression_tokens}"),
            (self.posmap_scale > 0, f"model.posmap_scale must be positive, got {self.posmap_scale}"),
            (
                self.log_scale_min < self.log_scale_max,
                f"model.log_scale_min ({self.log_scale_min}) must be below model.log_scale_max ({self.log_scale_max})",
            ),
            (self.init_scale_pixels > 0, f"model.init_scale_pixels must be positive, got {self.init_scale_pixels}"),
            (0.0 < self.init_opacity < 1.0, f"model.init_opacity must be in (0, 1), got {self.init_opacity}"),
            (0 <= self.sh_degree <= 3, f"model.sh_degree must be in 0..3, got {self.sh_degree}"),
            (self.num_views >= 1, f"data.num_input_views must be >= 1, got {self.num_views}"),
        ]

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first inconsistent config field."""
        for ok, message in self.problems():
            if not ok:
                raise ValueError(message)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_width(self) -> int:
        return round(self.width * self.mlp_ratio)

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(h, w)`` of one view."""
        return self.image_height // self.patch_size, self.image_width // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Patch tokens of all input views: ``V * h * w``."""
        return self.num_views * self.grid[0] * self.grid[1]

    @property
    def pixel_channels(self) -> int:
        """Channels of the per-pixel input: RGB, then posmap xyz + validity, then Plücker rays."""
        return 3 + 4 * self.use_posmap + 6 * self.use_plucker

    @property
    def num_sh_rest(self) -> int:
        return (self.sh_degree + 1) ** 2 - 1

    @property
    def model_input_keys(self) -> tuple[str, ...]:
        """The batch entries the model reads (besides ``expression``), in ``batch_shapes`` order."""
        keys = ["images", "K", "world_to_cam"]
        if self.use_posmap:
            keys += ["posmaps", "posmap_valid"]
        if self.use_features:
            keys.append("features")
        return tuple(keys)


def output_layout(spec: ModelSpec) -> dict[str, slice]:
    """Channel slices of the Gaussian head's raw per-pixel output ``[..., num_outputs(spec)]``."""
    sizes = {"offset": 3, "log_scale": 3, "quaternion": 4, "opacity": 1, "color": 3, "sh_rest": 3 * spec.num_sh_rest}
    if not spec.use_posmap:
        sizes["ray_offset"] = 1
    layout, start = {}, 0
    for name, size in sizes.items():
        layout[name] = slice(start, start + size)
        start += size
    return layout


def num_outputs(spec: ModelSpec) -> int:
    """Channels of the Gaussian head's raw output."""
    return max(piece.stop for piece in output_layout(spec).values())


# A batch: docs/INTERFACES.md's entries (``batch_shapes``) as numpy arrays, ``jax.Array``s or torch tensors.
Batch = dict[str, Any]


class ArraySpec(NamedTuple):
    """Shape and dtype name of one batch entry (``jax.ShapeDtypeStruct(*spec)``, ``np.zeros(*spec)`` take it)."""

    shape: tuple[int, ...]
    dtype: str


class StoredAs(NamedTuple):
    """How a batch entry travels from the data pipeline to the device: its dtype, and the divisor
    that turns it into the float32 values the model and the losses compute with."""

    dtype: str
    divisor: float


# The batch entries that travel in a cheaper dtype than float32 (a third of the bytes of a float32
# batch at the paper's shape); every other entry is float32, except the int32 ids.
BATCH_STORAGE = {
    "images": StoredAs("uint8", 255.0),  # round(255 * value), value in [0, 1]
    "masks": StoredAs("uint8", 255.0),
    "target_images": StoredAs("uint8", 255.0),
    "target_masks": StoredAs("uint8", 255.0),
    "posmap_valid": StoredAs("uint8", 1.0),  # 0 or 1
    "posmaps": StoredAs("float16", 1.0),  # the records' own precision
    "features": StoredAs("float16", 1.0),
}
ID_KEYS = ("subject", "frame")  # int32


def batch_dtype(key: str) -> str:
    """The dtype name of batch entry ``key`` in ``batch_shapes``."""
    if key in BATCH_STORAGE:
        return BATCH_STORAGE[key].dtype
    return "int32" if key in ID_KEYS else "float32"


def float32_divisor(key: str, dtype_name: str) -> float | None:
    """What turns entry ``key`` of dtype ``dtype_name`` (``"uint8"``, ``"float16"``, ...) into float32
    values: cast to float32, then divide by the returned number; None when nothing is to be done
    (float32 already, or an entry that is not in ``BATCH_STORAGE``). A float dtype is taken as
    values already (e.g. float32 images in [0, 1]). Raises ``ValueError`` naming the entry for any
    other dtype."""
    stored = BATCH_STORAGE.get(key)
    if stored is None or dtype_name == "float32":
        return None
    if dtype_name == stored.dtype:
        return stored.divisor
    if dtype_name.startswith(("float", "bfloat")):
        return 1.0
    raise ValueError(f"batch entry {key!r} is {dtype_name}; expected {stored.dtype} (or float32 values)")


def to_stored(key: str, values: Any) -> np.ndarray:
    """Float32 values of batch entry ``key`` -> numpy in its ``batch_shapes`` dtype (uint8 rounded and
    clipped; the inverse of ``float32_divisor`` up to that rounding)."""
    dtype = batch_dtype(key)
    if key in BATCH_STORAGE and dtype == "uint8":
        scaled = np.asarray(values, np.float32) * np.float32(BATCH_STORAGE[key].divisor)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.asarray(values, dtype)


def from_stored(key: str, values: Any) -> np.ndarray:
    """Numpy entry ``key`` (its ``batch_shapes`` dtype, or float) -> float32 values (host side; the
    device side is ``avat3r_jax.batch_dtypes.to_float32``)."""
    values = np.asarray(values)
    divisor = float32_divisor(key, values.dtype.name)
    if divisor is None:
        return values
    return values.astype(np.float32) / np.float32(divisor)


def batch_shapes(spec: ModelSpec, batch_size: int, *, num_views: int | None = None, num_target_views: int = 0) -> dict[str, ArraySpec]:
    """docs/INTERFACES.md's batch table: every entry of ``batch_size`` examples, in its ``batch_dtype``.

    ``num_views`` defaults to ``data.num_input_views``; the ``target_*`` entries (and ``subject``,
    ``frame``) are included when ``num_target_views`` > 0.
    """
    b, v, t = batch_size, spec.num_views if num_views is None else num_views, num_target_views
    h, w = spec.image_height, spec.image_width
    shapes = {
        "images": (b, v, h, w, 3),
        "masks": (b, v, h, w, 1),
        "posmaps": (b, v, h, w, 3),
        "posmap_valid": (b, v, h, w, 1),
        "features": (b, v, spec.feature_height, spec.feature_width, spec.feature_channels),
        "K": (b, v, 3, 3),
        "world_to_cam": (b, v, 4, 4),
        "expression": (b, spec.expression_dim),
        "input_view_valid": (b, v),  # 1: the slot holds a view; 0: absent (ignored by the model)
    }
    if t:
        shapes |= {
            "target_images": (b, t, h, w, 3),
            "target_masks": (b, t, h, w, 1),
            "target_K": (b, t, 3, 3),
            "target_world_to_cam": (b, t, 4, 4),
            "subject": (b,),
            "frame": (b,),
        }
    return {key: ArraySpec(shape, batch_dtype(key)) for key, shape in shapes.items()}


def model_input_shapes(spec: ModelSpec, batch_size: int) -> dict[str, ArraySpec]:
    """The entries of ``batch_shapes`` that the model's ``encode`` reads (``spec.model_input_keys``), as
    float32 values: the form exported functions take (the model itself takes both)."""
    shapes = batch_shapes(spec, batch_size)
    return {key: ArraySpec(shapes[key].shape, "float32") for key in spec.model_input_keys}
