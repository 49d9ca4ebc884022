"""``launch.bench_data``'s stage profile: every stage is found and timed, the example's bytes are the
batch contract's, and the shared-memory round trip leaves no block behind."""

import os
import pathlib

import numpy as np

from avat3r_jax.spec import ModelSpec, batch_shapes
from launch import bench_data


def test_profile_times_every_stage_of_the_contract_sized_example(tiny_dataset, tiny_config):
    shm = pathlib.Path("/dev/shm")
    before = set(os.listdir(shm)) if shm.is_dir() else set()
    result = bench_data.profile_stages(tiny_config, tiny_dataset, 2)
    if shm.is_dir():
        assert set(os.listdir(shm)) - before == set()
    shapes = batch_shapes(ModelSpec.from_config(tiny_config), 1, num_target_views=tiny_config.data.num_target_views)
    assert result["example_mb"] == sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize for s in shapes.values()) / 1e6
    stages = [f"  {name}" for name in bench_data._ASSEMBLY_STAGES]
    for key in ["assembly (worker)", *stages, "batch into shared memory (worker)", "shared memory open, read, release (main)"]:
        assert result[key] > 0, key  # a stage whose function was not seen by the profiler reads 0
