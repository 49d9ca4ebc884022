"""avat3r-jax: animatable 3D Gaussian head avatars from a few photos, in JAX."""

__version__ = "0.1.0"
