"""Test-wide setup: 8 simulated CPU devices (for sharding tests) before JAX is imported."""

import collections
import os
import tempfile

# Without LLVM optimisation: most of the suite's programs run once, and XLA:CPU compiles them about a
# fifth faster so (the programs that run many times keep full optimisation: avat3r_jax/compile_options.py).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Trainer tests compile the same programs several times (also in subprocesses): cache them on disk.
# A subprocess loads a program compiled here only with the same device count (the key holds the topology).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "avat3r_jax_test_compile_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # also the many small ones: subprocesses share them

import jax
import numpy as np
import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with the most ``slow`` tests run first (the rest in collection order): pytest-xdist hands
    out whole files in this order (``--dist=loadfile --no-loadscope-reorder`` in pyproject.toml), so
    a long file collected last would make the run's tail long while the other worker sits idle."""
    slow_tests = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow_tests[item.path])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield
