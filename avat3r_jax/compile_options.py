"""XLA compiler options by how often a program runs, per platform.

``XLA_FLAGS`` set one optimisation level for every program of a process; these options set it per
program. XLA:CPU compiles without LLVM optimisation (level 0) in a fraction of the time and runs
the program slower: right for a program that runs once (the tiny config's init compiles in 4.6 s
instead of 24.9 s and runs in 0.1 s instead of 0.02 s), wrong for one that runs many times or
loops long (the tiny train step runs about 4x slower). The test suite compiles at level 0 by
default (tests/conftest.py); ``MANY_CALLS`` keeps the train step at XLA's full optimisation (the
synthetic data's sphere tracer states the same for itself: data_pipelines/synthetic/render.py).
"""

from __future__ import annotations

Options = dict[str, dict[str, int]]  # platform -> XLA debug option -> value

ONE_CALL: Options = {"cpu": {"xla_backend_optimization_level": 0}}
MANY_CALLS: Options = {"cpu": {"xla_backend_optimization_level": 3}}  # XLA's default level


def for_platform(options: Options, platform: str) -> dict[str, int]:
    """The options for ``platform`` (``"cpu"``, ``"cuda"``, ``"tpu"``, ...); empty for a platform it does not name."""
    return dict(options.get(platform, {}))
