"""Train several runs at once on one accelerator, evaluate each on held-out subjects, write one table.

    python -m launch.run_table --config=configs/synthetic.py --table=configs/sweeps/issue22.py \\
        --workdir=runs/table [--steps=N] [--concurrency=K] [--deadline_s=S] [--solo_steps=N]

A table file defines ``get_runs() -> {name: overrides}`` (``config.*`` keys, as in sweep files),
``get_conditions() -> {name: config.data.* overrides}`` (evaluation conditions, ``launch/eval_heldout.py``)
and optionally ``COMMON`` (overrides of every run). Every run gets the same steps and seed.

What happens: (1) the dataset is generated once (``WORKDIR/data``) and shared by every run; (2) with
``--solo_steps`` the first run's configuration trains alone for that many steps (``WORKDIR/solo``),
the throughput baseline; (3) up to ``--concurrency`` runs train at once, each ``python -m
launch.train`` with ``XLA_PYTHON_CLIENT_MEM_FRACTION`` = ``--mem_fraction`` (default 0.9 /
concurrency) so their memory pools share the device; a run still training ``--deadline_s`` after
the start gets SIGTERM (it checkpoints and exits) and is evaluated at the step it reached; (4) each
run, once trained, is evaluated under every condition. ``WORKDIR/table.json`` and ``table.md`` are
rewritten as each run finishes. SIGTERM or SIGINT to the launcher passes SIGTERM on to its children
(a trainer checkpoints at its next step; one still compiling gets SIGKILL after 120 s), starts and
evaluates nothing more, and leaves the table of the finished rows.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import pathlib
import signal
import sys
import threading
import time
from typing import Any

from absl import flags
from ml_collections import config_flags

from launch import sweep_overrides
from launch.config_cli import CONFIG, run_app
from launch.table_runs import (
    Overrides,
    child_env,
    load_table,
    run_overrides,
    run_until,
    throughput_summary,
    train_and_evaluate,
    train_throughput,
    write_table,
)

TABLE = flags.DEFINE_string("table", None, "Table file with get_runs() and get_conditions().", required=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Base directory: data/, solo/, one folder per run, table.json/.md.", required=True)
STEPS = flags.DEFINE_integer("steps", None, "train.num_steps of every run (default: the config's).")
CONCURRENCY = flags.DEFINE_integer("concurrency", 8, "Runs training at once.")
MEM_FRACTION = flags.DEFINE_float("mem_fraction", None, "XLA_PYTHON_CLIENT_MEM_FRACTION per run (default 0.9 / concurrency).")
DEADLINE_S = flags.DEFINE_float("deadline_s", 0.0, "Seconds after the start at which runs still training get SIGTERM (0: none).")
SOLO_STEPS = flags.DEFINE_integer("solo_steps", 0, "Steps of the first run's configuration alone first (throughput baseline; 0: skip).")
ONLY = flags.DEFINE_list("only", None, "Run only these runs of the table.")
PREPARE_DATA_ONLY = flags.DEFINE_bool("prepare_data_only", False, "Internal: generate WORKDIR/data and exit.")


def prepare_data(config, common: Overrides, base: pathlib.Path) -> None:
    """Generates the shared dataset at ``base/data`` from the config with the table's common overrides."""
    from launch.train_data import prepare_dataset

    config = copy.deepcopy(config)
    config.update_from_flattened_dict(common, "config.")
    prepare_dataset(config, base, generate=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    base = pathlib.Path(WORKDIR.value).absolute()
    data_dir = base / "data"
    try:
        common, runs, conditions = load_table(TABLE.value)
        if PREPARE_DATA_ONLY.value:
            prepare_data(CONFIG.value, common, base)
            return
        if ONLY.value:
            unknown = sorted(set(ONLY.value) - set(runs))
            if unknown:
                raise ValueError(f"--only names runs the table lacks: {unknown}")
            runs = {n: o for n, o in runs.items() if n in ONLY.value}
        overrides = {name: run_overrides(common, run, STEPS.value, data_dir) for name, run in runs.items()}
        sweep_overrides.check_overrides(config_path, list(overrides.values()))
        sweep_overrides.check_overrides(config_path, [{**o, **c} for o in overrides.values() for c in conditions.values()])
    except ValueError as e:
        sys.exit(f"error: {e}")
    start = time.time()
    deadline = start + DEADLINE_S.value if DEADLINE_S.value > 0 else None
    stop = threading.Event()  # SIGTERM/SIGINT: stop the children (they checkpoint), evaluate nothing more
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    base.mkdir(parents=True, exist_ok=True)
    conditions_path = base / "conditions.json"
    conditions_path.write_text(json.dumps(conditions, indent=2) + "\n")
    concurrency = max(1, min(CONCURRENCY.value, len(runs)))
    cache = base / "compile_cache"
    env = child_env(MEM_FRACTION.value or 0.9 / concurrency, cache)
    if not data_dir.exists():
        data_args = ["-m", "launch.run_table", *sys.argv[1:], "--prepare_data_only"]
        result = run_until(data_args, base / "data.log", child_env(0.9, cache), None, stop)
        if result["returncode"] != 0:
            sys.exit(f"error: dataset generation failed (see {base / 'data.log'})")
        print(f"dataset ready in {result['seconds']:.0f} s", flush=True)
    payload: dict[str, Any] = {"config": config_path, "table": TABLE.value, "steps": STEPS.value, "solo": None, "rows": {}}
    first = next(iter(overrides))
    if SOLO_STEPS.value > 0:
        solo_dir = base / "solo"
        solo_dir.mkdir(exist_ok=True)
        solo_overrides = {**overrides[first], "config.train.num_steps": SOLO_STEPS.value}
        payload["solo"] = {
            "run": first,
            **run_until(
                sweep_overrides.train_args(config_path, str(solo_dir), solo_overrides),
                solo_dir / "train.log",
                child_env(0.9, cache),
                deadline,
                stop,
            ),
        }
        payload["solo"].update(train_throughput(solo_dir / "metrics.jsonl", payload["solo"]["started"]))
        print(f"solo {first}: {payload['solo']}", flush=True)
    lock = threading.Lock()

    def finish(name: str, row: dict[str, Any]) -> None:
        with lock:
            payload["rows"][name] = row
            payload["rows"] = {n: payload["rows"][n] for n in overrides if n in payload["rows"]}  # table order
            payload["throughput"] = throughput_summary(payload["solo"], payload["rows"])
            write_table(base, payload, list(conditions))
        print(f"{name}: step {row.get('step')} {row.get('results') or row.get('error')}", flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {
            pool.submit(train_and_evaluate, name, config_path, base, overrides[name], conditions_path, env, deadline, stop): name
            for name in overrides
        }
        for future in concurrent.futures.as_completed(futures):
            finish(futures[future], future.result())
    print((base / "table.md").read_text(), end="")
    failed = [name for name, row in payload["rows"].items() if "error" in row]
    if failed:
        sys.exit(f"error: runs without results: {failed}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    run_app(main)
