"""The PyTorch mirror takes present views only: a batch with an absent view is refused in one line."""

import numpy as np
import pytest

from avat3r_jax.spec import ModelSpec
from configs import tiny
from tests.export.examples import random_batch
from tests.torch.tiny_models import random_torch_model

torch = pytest.importorskip("torch")


def test_absent_views_are_refused_and_all_present_views_accepted(tmp_path):
    config = tiny.get_config()
    model = random_torch_model(tmp_path, config)
    batch = {key: torch.from_numpy(value) for key, value in random_batch(np.random.default_rng(1), ModelSpec.from_config(config)).items()}
    views = batch["images"].shape[1]
    with torch.no_grad():
        plain = model(batch)
        present = model(batch | {"input_view_valid": torch.ones(1, views)})
        for field in plain:
            torch.testing.assert_close(present[field], plain[field], rtol=0, atol=0)
        absent = torch.ones(1, views)
        absent[0, -1] = 0.0
        with pytest.raises(ValueError, match="takes present views only"):
            model(batch | {"input_view_valid": absent})
