"""The model's static settings, read once from the ml-collections config and validated."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

ATTENTION_IMPLS = ("xla", "cudnn", "pallas_tpu")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# jax.checkpoint_policies entries that are policies themselves (not policy factories).
REMAT_POLICIES = (
    "none",
    "full",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "checkpoint_dots",
    "checkpoint_dots_with_no_batch_dims",
    "everything_saveable",
    "nothing_saveable",
)


def checkpoint_policy(name: str):
    """The ``jax.checkpoint`` policy named ``name``; ``None`` (save nothing) for ``"full"``."""
    if name not in REMAT_POLICIES or name == "none":
        raise ValueError(f"no checkpoint policy for remat_policy={name!r}; choose from {REMAT_POLICIES[1:]}")
    return None if name == "full" else getattr(jax.checkpoint_policies, name)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """Everything the modules need to know; hashable, so it can live in the static graph."""

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
    layer_norm_affine: bool
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
    dtype_name: str
    attention_impl: str
    remat_policy: str
    scan_layers: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> ModelSettings:
        m, d = config.model, config.data
        settings = cls(
            image_height=int(d.image_height),
            image_width=int(d.image_width),
            num_views=int(d.num_input_views),
            feature_channels=int(d.feature_channels),
            expression_dim=int(d.expression_dim),
            patch_size=int(m.patch_size),
            width=int(m.width),
            depth=int(m.depth),
            num_heads=int(m.num_heads),
            mlp_ratio=float(m.mlp_ratio),
            qk_norm=bool(m.qk_norm),
            layer_norm_affine=bool(m.layer_norm_affine),
            num_expression_tokens=int(m.num_expression_tokens),
            cross_attn_from_layer=int(m.cross_attn_from_layer),
            use_posmap=bool(m.use_posmap),
            use_features=bool(m.use_features),
            use_plucker=bool(m.use_plucker),
            use_view_embedding=bool(m.use_view_embedding),
            posmap_scale=float(m.posmap_scale),
            head_channels=int(m.head_channels),
            max_offset=float(m.max_offset),
            max_ray_offset=float(m.max_ray_offset),
            log_scale_min=float(m.log_scale_min),
            log_scale_max=float(m.log_scale_max),
            init_scale_pixels=float(m.init_scale_pixels),
            init_opacity=float(m.init_opacity),
            sh_degree=int(m.sh_degree),
            dtype_name=str(m.dtype),
            attention_impl=str(m.attention_impl),
            remat_policy=str(m.remat_policy),
            scan_layers=bool(m.scan_layers),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first inconsistent config field."""
        checks = [
            (self.patch_size > 0, f"model.patch_size must be positive, got {self.patch_size}"),
            (
                self.image_height % self.patch_size == 0 and self.image_width % self.patch_size == 0,
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
            (self.num_expression_tokens >= 1, f"model.num_expression_tokens must be >= 1, got {self.num_expression_tokens}"),
            (self.posmap_scale > 0, f"model.posmap_scale must be positive, got {self.posmap_scale}"),
            (
                self.log_scale_min < self.log_scale_max,
                f"model.log_scale_min ({self.log_scale_min}) must be below model.log_scale_max ({self.log_scale_max})",
            ),
            (self.init_scale_pixels > 0, f"model.init_scale_pixels must be positive, got {self.init_scale_pixels}"),
            (0.0 < self.init_opacity < 1.0, f"model.init_opacity must be in (0, 1), got {self.init_opacity}"),
            (0 <= self.sh_degree <= 3, f"model.sh_degree must be in 0..3, got {self.sh_degree}"),
            (self.dtype_name in DTYPES, f"model.dtype must be one of {sorted(DTYPES)}, got {self.dtype_name!r}"),
            (
                self.attention_impl in ATTENTION_IMPLS,
                f"model.attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}",
            ),
            (
                self.attention_impl != "cudnn" or self.dtype_name == "bfloat16",
                "model.attention_impl='cudnn' needs model.dtype='bfloat16' (cuDNN flash attention has no float32 kernel)",
            ),
            (self.remat_policy in REMAT_POLICIES, f"model.remat_policy must be one of {REMAT_POLICIES}, got {self.remat_policy!r}"),
            (self.num_views >= 1, f"data.num_input_views must be >= 1, got {self.num_views}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def dtype(self) -> jnp.dtype:
        return DTYPES[self.dtype_name]

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
    def pixel_channels(self) -> int:
        """Channels of the per-pixel input: RGB, then posmap xyz + validity, then Plücker rays."""
        return 3 + 4 * self.use_posmap + 6 * self.use_plucker

    @property
    def num_sh_rest(self) -> int:
        return (self.sh_degree + 1) ** 2 - 1
