"""Run a sweep of training jobs as an xmanager experiment (local executor).

    python -m launch.xm_launch --config=configs/synthetic.py --sweep=configs/sweeps/lr_sweep.py \\
        --workdir=runs/lr_sweep [--parallel] [--dry-run]

A sweep file's ``get_sweep()`` returns one dict of config overrides per work unit, e.g.
``{"config.train.learning_rate": 1e-4}``. Work unit ``i`` (1-based, as xmanager numbers them) runs
``python -m launch.train --config=CONFIG --workdir=WORKDIR/i --config.train.learning_rate=0.0001``.
Every override is checked against the config before anything starts. ``--dry-run`` prints the
commands and needs no xmanager; a real launch needs the optional extra: ``pip install -e '.[xm]'``.
By default work units run one after another (one accelerator); ``--parallel`` starts them all.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shlex
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from launch.config_cli import CONFIG  # noqa: F401 - defines the shared --config flag (configs/X.py).
from launch.sweep_overrides import REPO_ROOT, Overrides, check_overrides, load_sweep, train_args

SWEEP = flags.DEFINE_string("sweep", None, "Sweep file with get_sweep(), e.g. configs/sweeps/lr_sweep.py.", required=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Base run directory; work unit i writes to WORKDIR/i.", required=True)
NAME = flags.DEFINE_string("experiment_name", None, "Experiment title (default: avat3r-<sweep file name>).")
PARALLEL = flags.DEFINE_bool("parallel", False, "Start all work units at once instead of one after another.")
DRY_RUN = flags.DEFINE_bool("dry-run", False, "Print each work unit's command instead of launching (no xmanager needed).")


def work_unit_workdir(base: str, work_unit_id: int) -> str:
    return f"{base.rstrip('/')}/{work_unit_id}"


def dry_run(config_path: str, base_workdir: str, sweep: Sequence[Overrides]) -> None:
    for work_unit_id, overrides in enumerate(sweep, start=1):
        args = train_args(config_path, work_unit_workdir(base_workdir, work_unit_id), overrides)
        print(f"work unit {work_unit_id}: {shlex.join(['python', *args])}")


def _import_xmanager():
    try:
        from xmanager import xm, xm_local

        xm_local.create_experiment  # noqa: B018 - xmanager loads lazily: reach a dependency-heavy module now.
    except ImportError as e:
        raise SystemExit(
            f"error: xmanager or one of its dependencies is missing ({e}). Install the optional extra with `pip install -e '.[xm]'`, "
            "or pass --dry-run to print the commands."
        ) from e
    return xm, xm_local


async def launch(config_path: str, base_workdir: str, sweep: Sequence[Overrides], title: str, parallel: bool) -> None:
    """One local-executor work unit per override dict, each ``python -m launch.train`` in this environment."""
    xm, xm_local = _import_xmanager()
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath)  # The local executor replaces the whole environment.
    async with xm_local.create_experiment(experiment_title=title) as experiment:
        [executable] = experiment.package([xm.binary(executor_spec=xm_local.LocalSpec(), path=sys.executable, env_vars=env)])

        async def add_job(work_unit, overrides: Overrides):
            workdir = work_unit_workdir(base_workdir, work_unit.work_unit_id)
            args = train_args(config_path, workdir, overrides)
            print(f"work unit {work_unit.work_unit_id}: {shlex.join(['python', *args])}", flush=True)
            work_unit.add(xm.Job(executable, executor=xm_local.Local(experimental_stream_output=True), args=args))

        for overrides in sweep:
            work_unit = await experiment.add(add_job, args={"overrides": overrides})
            if not parallel:
                await work_unit.wait_until_complete()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])  # The shared --config flag's file.
    try:
        sweep = load_sweep(SWEEP.value)
        check_overrides(config_path, sweep)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if DRY_RUN.value:
        dry_run(config_path, WORKDIR.value, sweep)
        return
    title = NAME.value or f"avat3r-{pathlib.Path(SWEEP.value).stem}"
    asyncio.run(launch(config_path, WORKDIR.value, sweep, title, PARALLEL.value))


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
