"""A batch's stored entries (uint8 images and masks, float16 maps: ``spec.BATCH_STORAGE``) as float32 values.

The data pipeline hands batches over in those dtypes (a third of the bytes of a float32 batch);
the jitted train and eval steps and the model's ``encode`` call ``to_float32`` first, so the
conversion runs on the device. Float entries pass through (already values), so float32 batches
work unchanged.
"""

from __future__ import annotations

import jax.numpy as jnp

from avat3r_jax.spec import Batch, float32_divisor


def to_float32(batch: Batch) -> Batch:
    """``batch`` with every ``BATCH_STORAGE`` entry as float32 values (uint8 images in [0, 1]); other
    entries unchanged. Raises ``ValueError`` naming an entry of a dtype the contract does not allow."""
    out = dict(batch)
    for key, value in batch.items():
        divisor = float32_divisor(key, jnp.dtype(value.dtype).name)
        if divisor is not None:
            value = jnp.asarray(value, jnp.float32)
            out[key] = value if divisor == 1.0 else value / divisor
    return out
