"""Multi-host start: ``jax.distributed.initialize`` from explicit flags or the environment."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

# Environment variables read when no flag is given (the same names on every launcher we ship).
COORDINATOR_ENV = "AVAT3R_COORDINATOR"
NUM_PROCESSES_ENV = "AVAT3R_NUM_PROCESSES"
PROCESS_ID_ENV = "AVAT3R_PROCESS_ID"


def maybe_initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> bool:
    """Initialises multi-process JAX when asked to; returns whether it did.

    Explicit arguments win over ``AVAT3R_*`` environment variables. ``auto=True`` with nothing
    given calls ``jax.distributed.initialize()`` with no arguments, which detects TPU pods and
    SLURM/Open MPI clusters. With neither, JAX stays single-process.
    """
    coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
    if num_processes is None and os.environ.get(NUM_PROCESSES_ENV):
        num_processes = int(os.environ[NUM_PROCESSES_ENV])
    if process_id is None and os.environ.get(PROCESS_ID_ENV):
        process_id = int(os.environ[PROCESS_ID_ENV])
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError(
                "multi-process start needs all of coordinator address, number of processes and process id "
                f"(got {explicit}); set the flags or {COORDINATOR_ENV}/{NUM_PROCESSES_ENV}/{PROCESS_ID_ENV}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process id {process_id} is outside [0, {num_processes})")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
    elif auto:
        jax.distributed.initialize()
    else:
        return False
    log.info(
        "process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name`` (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
