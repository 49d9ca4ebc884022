"""The model's settings read from the exported ``config.json`` (plain JSON: no JAX or ml-collections needed)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class TorchSettings:
    image_height: int
    image_width: int
    num_views: int
    feature_channels: int
    expression_dim: int
    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qk_norm: bool
    num_expression_tokens: int
    cross_attn_from_layer: int
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
    layer_norm_affine: bool = True  # absent from configs exported before the option existed

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TorchSettings:
        """From the config as a nested dict (``config.json`` of a bundle or of ``avat3r-export --to_pytorch``)."""
        data, model = config["data"], config["model"]
        fields = {field.name for field in dataclasses.fields(cls)}
        values = {name: model[name] for name in fields if name in model}
        values |= {
            "image_height": data["image_height"],
            "image_width": data["image_width"],
            "num_views": data["num_input_views"],
            "feature_channels": data["feature_channels"],
            "expression_dim": data["expression_dim"],
        }
        required = {field.name for field in dataclasses.fields(cls) if field.default is dataclasses.MISSING}
        missing = sorted(required - set(values))
        if missing:
            raise ValueError(f"config is missing model fields {missing} (exported by another version of avat3r_jax?)")
        return cls(**values)

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_width(self) -> int:
        return round(self.width * self.mlp_ratio)

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_height // self.patch_size, self.image_width // self.patch_size

    @property
    def pixel_channels(self) -> int:
        return 3 + 4 * self.use_posmap + 6 * self.use_plucker

    @property
    def num_sh_rest(self) -> int:
        return (self.sh_degree + 1) ** 2 - 1
