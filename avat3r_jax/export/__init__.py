"""Leaving training: inference bundles, jax.export, .ply avatars, videos and PyTorch conversion."""
