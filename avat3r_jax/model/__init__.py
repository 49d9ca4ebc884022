"""The AVAT3R model in Flax NNX: tokenizer, transformer blocks, Gaussian head."""

from avat3r_jax.model.avat3r import Avat3r, Context, abstract_model, validate_batch
from avat3r_jax.model.settings import ModelSettings

__all__ = ["Avat3r", "Context", "ModelSettings", "abstract_model", "validate_batch"]
