"""The PyTorch mirror takes present views only: a batch with an absent view is refused in one line."""

import numpy as np
import pytest

from avat3r_jax.export.params import flatten_params
from avat3r_jax.export.to_pytorch import write_pytorch
from avat3r_jax.spec import ModelSpec
from configs import tiny
from tests.export.examples import random_batch, random_params

torch = pytest.importorskip("torch")

from avat3r_jax.torch import load_model  # noqa: E402


def test_absent_views_are_refused_and_all_present_views_accepted(tmp_path):
    config = tiny.get_config()
    _, params = random_params(config, np.random.default_rng(0))
    write_pytorch(tmp_path, config, flatten_params(params))
    model = load_model(tmp_path)
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
