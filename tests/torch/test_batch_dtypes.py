"""The PyTorch mirror takes the batch in its stored dtypes (uint8 images and masks, float16 maps) as
the JAX model does: the same Gaussians as from the float32 values, and a wrong dtype named in one line."""

import numpy as np
import pytest

from avat3r_jax.spec import ModelSpec, from_stored, to_stored
from configs import tiny
from tests.export.examples import random_batch
from tests.torch.tiny_models import random_torch_model

torch = pytest.importorskip("torch")


def test_stored_dtypes_give_the_float_gaussians_and_wrong_dtypes_are_named(tmp_path):
    config = tiny.get_config()
    model = random_torch_model(tmp_path, config)
    stored = {key: to_stored(key, value) for key, value in random_batch(np.random.default_rng(1), ModelSpec.from_config(config)).items()}
    assert stored["images"].dtype == np.uint8 and stored["posmaps"].dtype == np.float16
    tensors = lambda batch: {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in batch.items()}
    with torch.no_grad():
        from_bytes = model(tensors(stored))
        from_floats = model(tensors({key: from_stored(key, value) for key, value in stored.items()}))
        for field in from_floats:
            torch.testing.assert_close(from_bytes[field], from_floats[field], rtol=0, atol=0)
        with pytest.raises(ValueError, match=r"^batch entry 'images' is int32; expected uint8 \(or float32 values\)$"):
            model(tensors(stored | {"images": stored["images"].astype(np.int32)}))
