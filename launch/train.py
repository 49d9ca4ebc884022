"""Train AVAT3R: ``python -m launch.train --config=configs/synthetic.py --workdir=runs/synthetic``.

Resumes from the newest checkpoint in ``--workdir``. SIGTERM (preemption) and SIGINT (Ctrl-C) save
and exit cleanly. The config is validated before any work; a ``data.dir`` that does not exist is an
error unless ``--generate_data`` asks for the synthetic dataset there.
Multi-host: pass ``--coordinator_address/--num_processes/--process_id`` (or set AVAT3R_COORDINATOR,
AVAT3R_NUM_PROCESSES, AVAT3R_PROCESS_ID), or ``--distributed_auto`` on TPU pods / SLURM.
"""

from __future__ import annotations

import logging as std_logging
import pathlib

from absl import flags, logging

from launch.config_cli import CONFIG, run_app

WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, eval images).", required=True)
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
DISTRIBUTED_AUTO = flags.DEFINE_bool("distributed_auto", False, "jax.distributed.initialize() auto-detection (TPU pods).")
GENERATE_DATA = flags.DEFINE_bool(
    "generate_data", False, "Generate the synthetic dataset at a data.dir that does not exist yet (the default location always is)."
)


class _QuietLibraries(std_logging.Filter):
    """Drops Orbax's and Grain's per-save/per-worker INFO lines, which drown the progress line."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or not any(f"/{lib}/" in record.pathname for lib in ("orbax", "grain"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    from avat3r_jax.train import distributed

    distributed.maybe_initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value, auto=DISTRIBUTED_AUTO.value)
    import jax

    from avat3r_jax.train.trainer import StopFlag, train
    from launch.train_data import DataDirError, grain_iterators, prepare_dataset

    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    logging.info("devices: %s", jax.devices())
    stop = StopFlag()
    stop.install()
    config, workdir = CONFIG.value, pathlib.Path(WORKDIR.value)
    try:
        data_dir = prepare_dataset(config, workdir, generate=GENERATE_DATA.value)
    except DataDirError as error:
        raise SystemExit(f"error: {error}") from None
    if config.train.time_budget > 0:  # the schedule is fitted to the budget (avat3r_jax/train/time_budget.py)
        from avat3r_jax.train.time_budget import train_within_budget

        result, _ = train_within_budget(config, workdir, grain_iterators(config, data_dir), stop)
    else:
        result = train(config, workdir, grain_iterators(config, data_dir), stop)
    logging.info("finished at step %d (stopped by signal: %s): %s", result.step, result.stopped_by_signal, result.metrics)


def run() -> None:
    flags.mark_flag_as_required("config")
    run_app(main)


if __name__ == "__main__":
    run()
