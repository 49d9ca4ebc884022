"""Procedural multi-view head videos: SDF heads, sphere tracing, a camera dome, dataset generation."""

from data_pipelines.synthetic.dataset import SyntheticSpec, ensure_dataset, generate

__all__ = ["SyntheticSpec", "ensure_dataset", "generate"]
