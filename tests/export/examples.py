"""Small random model inputs with valid cameras, shared by the export and torch tests."""

import numpy as np

from avat3r_jax.export.params import param_shapes, unflatten_params
from avat3r_jax.geometry import look_at, make_intrinsics
from avat3r_jax.model import abstract_model


def random_example(rng: np.random.Generator, views: int, size: int = 32, feature_size: int = 8, channels: int = 6) -> dict[str, np.ndarray]:
    """One example without the batch axis: ``images [V, size, size, 3]``, cameras looking at the origin, maps."""
    eye = np.stack([np.array([np.sin(a), 0.1, np.cos(a)]) for a in np.linspace(-0.5, 0.5, views)]).astype(np.float32)
    focal = 2.8 * size
    return {
        "images": rng.uniform(size=(views, size, size, 3)).astype(np.float32),
        "masks": (rng.uniform(size=(views, size, size, 1)) > 0.5).astype(np.float32),
        "K": np.asarray(make_intrinsics(*(np.full(views, v, np.float32) for v in (focal, focal * 1.01, size / 2, size / 2 - 0.5)))),
        "world_to_cam": np.asarray(look_at(eye, np.zeros_like(eye))),
        "posmaps": rng.normal(scale=0.1, size=(views, size, size, 3)).astype(np.float32),
        "posmap_valid": (rng.uniform(size=(views, size, size, 1)) > 0.3).astype(np.float32),
        "features": rng.normal(size=(views, feature_size, feature_size, channels)).astype(np.float32),
    }


def random_batch(rng: np.random.Generator, views: int, expression_dim: int, **sizes) -> dict[str, np.ndarray]:
    """``random_example`` with a batch axis of 1 and an expression code ``[1, D]``."""
    batch = {key: value[None] for key, value in random_example(rng, views, **sizes).items()}
    batch["expression"] = rng.normal(size=(1, expression_dim)).astype(np.float32)
    return batch


def random_params(config, rng: np.random.Generator, scale: float = 0.05):
    """``(graphdef, params)`` of the model with random values (normal(0, scale), norm scales around 1), without compiling an init."""
    graphdef, abstract = abstract_model(config)
    flat = {
        name: (rng.normal(scale=scale, size=shape) + (1.0 if name.endswith("norm/scale") else 0.0)).astype(np.float32)
        for name, shape in param_shapes(abstract).items()
    }
    return graphdef, unflatten_params(flat, abstract, "random params")
