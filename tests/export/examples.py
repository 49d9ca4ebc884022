"""Small random model inputs with valid cameras, shared by the export and torch tests."""

import numpy as np

from avat3r_jax.export.params import param_shapes, unflatten_params
from avat3r_jax.geometry import look_at, make_intrinsics
from avat3r_jax.model import abstract_model
from avat3r_jax.spec import ModelSpec, batch_shapes


def random_example(rng: np.random.Generator, spec: ModelSpec, views: int | None = None) -> dict[str, np.ndarray]:
    """One example of ``spec``'s input shapes without the batch axis (``views`` defaults to the spec's):
    random images, masks, maps and features, cameras looking at the origin."""
    shapes = {key: entry.shape[1:] for key, entry in batch_shapes(spec, 1, num_views=views).items()}
    views, height, width = shapes["images"][:3]
    eye = np.stack([np.array([np.sin(a), 0.1, np.cos(a)]) for a in np.linspace(-0.5, 0.5, views)]).astype(np.float32)
    focal = 2.8 * width
    intrinsics = (focal, focal * 1.01, width / 2, height / 2 - 0.5)
    return {
        "images": rng.uniform(size=shapes["images"]).astype(np.float32),
        "masks": (rng.uniform(size=shapes["masks"]) > 0.5).astype(np.float32),
        "K": np.asarray(make_intrinsics(*(np.full(views, value, np.float32) for value in intrinsics))),
        "world_to_cam": np.asarray(look_at(eye, np.zeros_like(eye))),
        "posmaps": rng.normal(scale=0.1, size=shapes["posmaps"]).astype(np.float32),
        "posmap_valid": (rng.uniform(size=shapes["posmap_valid"]) > 0.3).astype(np.float32),
        "features": rng.normal(size=shapes["features"]).astype(np.float32),
    }


def random_batch(rng: np.random.Generator, spec: ModelSpec, views: int | None = None) -> dict[str, np.ndarray]:
    """``random_example`` with a batch axis of 1 and an expression code ``[1, D]``."""
    batch = {key: value[None] for key, value in random_example(rng, spec, views).items()}
    batch["expression"] = rng.normal(size=(1, spec.expression_dim)).astype(np.float32)
    return batch


def random_params(config, rng: np.random.Generator, scale: float = 0.05):
    """``(graphdef, params)`` of the model with random values (normal(0, scale), norm scales around 1), without compiling an init."""
    graphdef, abstract = abstract_model(config)
    flat = {
        name: (rng.normal(scale=scale, size=shape) + (1.0 if name.endswith("norm/scale") else 0.0)).astype(np.float32)
        for name, shape in param_shapes(abstract).items()
    }
    return graphdef, unflatten_params(flat, abstract, "random params")
