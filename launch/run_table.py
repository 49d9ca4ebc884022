"""Train several runs at once on one accelerator, evaluate each on held-out subjects, write one table.

    python -m launch.run_table --config=configs/synthetic.py --table=configs/sweeps/issue22.py \\
        --workdir=runs/table [--steps=N|auto] [--concurrency=K] [--deadline_s=S] [--solo_steps=N] \\
        [--warm_steps=N --compile_concurrency=K] [--compare_xla_flags=FLAGS] [--results_dir=DIR]

A table file defines ``get_runs() -> {name: overrides}`` (``config.*`` keys, as in sweep files),
``get_conditions() -> {name: config.data.* overrides}`` (evaluation conditions, ``launch/eval_heldout.py``)
and optionally ``COMMON`` (overrides of every run). Every run gets the same steps and seed.

What happens: (1) the dataset is generated once (``WORKDIR/data``) and shared by every run; (2) with
``--warm_steps`` each distinct program (runs differing only in ``config.data.*`` share one,
``table_runs.program_groups``) is compiled once, ``--compile_concurrency`` at a time: a short run of
its first run (``WORKDIR/warm``) and its evaluation fill the persistent compilation cache that
every later process reads (the table's ``COMMON`` must set ``config.train.time_budget`` > 0, so
the step count is not part of the program); (3) with ``--solo_steps`` the first run's
configuration trains alone for that many steps (``WORKDIR/solo``), the throughput baseline;
``--compare_xla_flags`` also compiles and times it alone under other ``XLA_FLAGS``; (4)
``--steps=auto`` sizes the steps so that every run ends before ``--deadline_s`` from the solo rate
(``table_runs.table_steps``, assuming ``--assumed_speedup`` for concurrency); (5) up to
``--concurrency`` runs train at once, each ``python -m launch.train`` with
``XLA_PYTHON_CLIENT_MEM_FRACTION`` = ``--mem_fraction`` (default 0.9 / concurrency) so their memory
pools share the device; a run still training at the deadline gets SIGTERM (it checkpoints and
exits) and is evaluated at the step it reached; (6) each run, once trained, is evaluated under
every condition. ``WORKDIR/table.json`` and ``table.md`` (and copies in ``--results_dir``) are
rewritten after each phase and as each run finishes. SIGTERM or SIGINT to the launcher passes
SIGTERM on to its children (a trainer checkpoints at its next step; one still compiling gets
SIGKILL after 120 s), starts and evaluates nothing more, and leaves the table of the finished rows.
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
    aggregate_steps_per_sec,
    child_env,
    load_table,
    logged_steps,
    plan_table,
    program_groups,
    run_overrides,
    run_until,
    short_run,
    throughput_summary,
    train_and_evaluate,
    train_throughput,
    warm_overrides,
    write_table,
)

TABLE = flags.DEFINE_string("table", None, "Table file with get_runs() and get_conditions().", required=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Base directory: data/, warm/, solo/, one folder per run, table.json/.md.", required=True)
STEPS = flags.DEFINE_string("steps", None, "train.num_steps of every run: a number, 'auto' (fit the deadline) or unset (the config's).")
CONCURRENCY = flags.DEFINE_integer("concurrency", 8, "Runs training at once.")
MEM_FRACTION = flags.DEFINE_float("mem_fraction", None, "XLA_PYTHON_CLIENT_MEM_FRACTION per run (default 0.9 / concurrency).")
DEADLINE_S = flags.DEFINE_float("deadline_s", 0.0, "Seconds after the start at which runs still training get SIGTERM (0: none).")
SOLO_STEPS = flags.DEFINE_integer("solo_steps", 0, "Steps of the first run's configuration alone first (throughput baseline; 0: skip).")
WARM_STEPS = flags.DEFINE_integer("warm_steps", 0, "Steps of each program's warm-up run, which compiles it once first (0: skip).")
COMPILE_CONCURRENCY = flags.DEFINE_integer("compile_concurrency", 8, "Warm-up runs (compilations) at once.")
COMPARE_XLA_FLAGS = flags.DEFINE_string("compare_xla_flags", None, "Also warm up and time the first run alone with XLA_FLAGS set to this.")
PROBE_CONCURRENCY = flags.DEFINE_integer(
    "probe_concurrency", 0, "After the solo run: this many copies of it at once, the concurrency gain (0: skip)."
)
PROBE_STEPS = flags.DEFINE_integer("probe_steps", 100, "Steps of each --probe_concurrency copy.")
ASSUMED_SPEEDUP = flags.DEFINE_float(
    "assumed_speedup", 1.0, "--steps=auto without a probe: aggregate rate of concurrent runs over one alone."
)
EVAL_RESERVE_S = flags.DEFINE_float(
    "eval_reserve_s", None, "--steps=auto: seconds kept for each evaluation (default: the longest warm-up one)."
)
RESULTS_DIR = flags.DEFINE_string("results_dir", None, "Also write table.json and table.md here whenever they change.")
ONLY = flags.DEFINE_list("only", None, "Run only these runs of the table.")
PREPARE_DATA_ONLY = flags.DEFINE_bool("prepare_data_only", False, "Internal: generate WORKDIR/data and exit.")

XLA_VARIANT = "_xla"  # Suffix of the --compare_xla_flags runs' folder names.
RATE_FROM_STEP = 10  # Throughput probes count steps from here on (the calibration steps before it sync one by one).


def prepare_data(config, common: Overrides, base: pathlib.Path) -> None:
    """Generates the shared dataset at ``base/data`` from the config with the table's common overrides."""
    from launch.train_data import prepare_dataset

    config = copy.deepcopy(config)
    config.update_from_flattened_dict(common, "config.")
    prepare_dataset(config, base, generate=True)


def parse_steps(text: str | None) -> int | str | None:
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--steps must be a number or 'auto', got {text!r}") from None


def config_value(overrides: Overrides, field: str) -> Any:
    """``field`` (``"train.warmup_steps"``) of ``--config`` with ``overrides`` applied."""
    config = copy.deepcopy(CONFIG.value)
    config.update_from_flattened_dict(overrides, "config.")
    return config[field.split(".")[0]][field.split(".")[1]]


def run_many(jobs: dict[str, tuple[pathlib.Path, Overrides, dict[str, str]]], concurrency: int, job, done) -> None:
    """``job(name, base, overrides, env)`` for each job, ``concurrency`` at a time; ``done(name, row)`` as each ends."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(jobs)))) as pool:
        futures = {pool.submit(job, name, *spec): name for name, spec in jobs.items()}
        for future in concurrent.futures.as_completed(futures):
            done(futures[future], future.result())


def probe(config_path: str, base: pathlib.Path, overrides: Overrides, cache: pathlib.Path, deadline, stop) -> dict[str, Any]:
    """``--probe_concurrency`` copies of one short run at once (no evaluation) -> their aggregate steps/s."""
    count = PROBE_CONCURRENCY.value
    env = child_env(0.9 / count, cache)

    def train_only(name: str) -> dict[str, Any]:
        workdir = base / name
        workdir.mkdir(parents=True, exist_ok=True)
        return run_until(sweep_overrides.train_args(config_path, str(workdir), overrides), workdir / "train.log", env, deadline, stop)

    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        results = list(pool.map(train_only, [f"copy{i}" for i in range(count)]))
    series = [logged_steps(base / f"copy{i}" / "metrics.jsonl") for i in range(count)]
    startups = [train_throughput(base / f"copy{i}" / "metrics.jsonl", r["started"])["seconds_to_first_log"] for i, r in enumerate(results)]
    return {
        "startup_s": max((s for s in startups if s is not None), default=None),
        "runs": count,
        "steps": overrides["config.train.num_steps"],
        "seconds": max(r["seconds"] for r in results),
        "returncodes": [r["returncode"] for r in results],
        "aggregate_steps_per_sec": aggregate_steps_per_sec(series, RATE_FROM_STEP),
    }


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"error: unexpected arguments {argv[1:]}")
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    base = pathlib.Path(WORKDIR.value).absolute()
    data_dir = base / "data"
    mirror = pathlib.Path(RESULTS_DIR.value).absolute() if RESULTS_DIR.value else None
    try:
        steps = parse_steps(STEPS.value)
        if steps == "auto" and not (WARM_STEPS.value > 0 and SOLO_STEPS.value > 0 and DEADLINE_S.value > 0):
            raise ValueError("--steps=auto needs --warm_steps, --solo_steps and --deadline_s")
        common, runs, conditions = load_table(TABLE.value)
        if PREPARE_DATA_ONLY.value:
            prepare_data(CONFIG.value, common, base)
            return
        if ONLY.value:
            unknown = sorted(set(ONLY.value) - set(runs))
            if unknown:
                raise ValueError(f"--only names runs the table lacks: {unknown}")
            runs = {n: o for n, o in runs.items() if n in ONLY.value}
        fixed_steps = steps if isinstance(steps, int) else None
        overrides = {name: run_overrides(common, run, fixed_steps, data_dir) for name, run in runs.items()}
        groups = program_groups(overrides)
        warm = {name: warm_overrides(overrides[name], WARM_STEPS.value) for name in groups} if WARM_STEPS.value > 0 else {}
        sweep_overrides.check_overrides(config_path, [*overrides.values(), *warm.values()])
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
    cache = base / "compile_cache"
    solo_env = child_env(0.9, cache)
    compare = COMPARE_XLA_FLAGS.value is not None
    with_xla = lambda env: dict(env, XLA_FLAGS=COMPARE_XLA_FLAGS.value)
    if not data_dir.exists():
        data_args = ["-m", "launch.run_table", *sys.argv[1:], "--prepare_data_only"]
        result = run_until(data_args, base / "data.log", solo_env, None, stop)
        if result["returncode"] != 0:
            sys.exit(f"error: dataset generation failed (see {base / 'data.log'})")
        print(f"dataset ready in {result['seconds']:.0f} s", flush=True)
    payload: dict[str, Any] = {
        "config": config_path,
        "table": TABLE.value,
        "steps": steps,
        "xla_flags": solo_env.get("XLA_FLAGS"),
        "programs": groups,
        "warm": {},
        "solo": None,
        "rows": {},
    }
    lock = threading.Lock()

    def publish() -> None:
        payload["throughput"] = throughput_summary(payload["solo"], payload["rows"])
        write_table(base, payload, list(conditions), mirror)

    def finish(section: str, name: str, row: dict[str, Any]) -> None:
        with lock:
            payload[section][name] = row
            if section == "rows":
                payload["rows"] = {n: payload["rows"][n] for n in overrides if n in payload["rows"]}  # table order
            publish()
        print(f"{section} {name}: step {row.get('step')} {row.get('results') or row.get('error')}", flush=True)

    def job(name, run_base, run_overrides_, env):
        return train_and_evaluate(name, config_path, run_base, run_overrides_, conditions_path, env, deadline, stop)

    first = next(iter(overrides))
    if warm:
        warm_env = child_env(0.9 / max(1, min(COMPILE_CONCURRENCY.value, len(warm) + compare)), cache)
        jobs = {name: (base / "warm", o, warm_env) for name, o in warm.items()}
        if compare:
            jobs[first + XLA_VARIANT] = (base / "warm", warm[first], with_xla(warm_env))
        run_many(jobs, COMPILE_CONCURRENCY.value, job, lambda name, row: finish("warm", name, row))
    if SOLO_STEPS.value > 0:
        solos = {"solo": solo_env} | ({"solo" + XLA_VARIANT: with_xla(solo_env)} if compare else {})
        for key, env in solos.items():
            if stop.is_set():
                break
            solo_dir = base / key
            solo_dir.mkdir(exist_ok=True)
            solo = run_until(
                sweep_overrides.train_args(config_path, str(solo_dir), short_run(overrides[first], SOLO_STEPS.value)),
                solo_dir / "train.log",
                env,
                deadline,
                stop,
            )
            payload[key] = {"run": first, **solo, **train_throughput(solo_dir / "metrics.jsonl", solo["started"])}
            with lock:
                publish()
            print(f"{key} {first}: {payload[key]}", flush=True)
    solo_rate = aggregate_steps_per_sec([logged_steps(base / "solo" / "metrics.jsonl")], RATE_FROM_STEP) if payload["solo"] else None
    speedup = ASSUMED_SPEEDUP.value
    if PROBE_CONCURRENCY.value > 1 and solo_rate and not stop.is_set():
        payload["probe"] = probe(config_path, base / "probe", short_run(overrides[first], PROBE_STEPS.value), cache, deadline, stop)
        payload["probe"]["solo_steps_per_sec"] = solo_rate
        if payload["probe"]["aggregate_steps_per_sec"]:
            speedup = payload["probe"]["speedup"] = payload["probe"]["aggregate_steps_per_sec"] / solo_rate
        with lock:
            publish()
        print(f"probe: {payload['probe']}", flush=True)
    if steps == "auto":
        if stop.is_set():
            sys.exit("error: stopped before the table's runs started")
        if not solo_rate:
            sys.exit(f"error: no solo throughput to size the steps with (see {base / 'solo' / 'train.log'})")
        warm_evals = [row.get("eval", {}).get("seconds", 0.0) for row in payload["warm"].values()]
        plan = payload["plan"] = plan_table(
            seconds_left=deadline - time.time(),
            steps_per_sec=solo_rate,
            speedup=speedup,
            startup_s=(payload.get("probe") or {}).get("startup_s") or payload["solo"]["seconds_to_first_log"],
            eval_s=max(warm_evals) if EVAL_RESERVE_S.value is None else EVAL_RESERVE_S.value,
            runs=len(overrides),
            concurrency=CONCURRENCY.value,
            config_warmup=int(config_value(overrides[first], "train.warmup_steps")),
        )
        print(f"steps per run: {plan}", flush=True)
        if plan["warmup_steps"] < 1:
            sys.exit(f"error: no steps fit the deadline ({plan})")
        schedule = {"config.train.num_steps": plan["steps"], "config.train.warmup_steps": plan["warmup_steps"]}
        overrides = {name: {**o, **schedule} for name, o in overrides.items()}
    concurrency = max(1, min(CONCURRENCY.value, len(overrides)))
    env = child_env(MEM_FRACTION.value or 0.9 / concurrency, cache)
    run_many({name: (base, o, env) for name, o in overrides.items()}, concurrency, job, lambda name, row: finish("rows", name, row))
    print((base / "table.md").read_text(), end="")
    failed = [name for name, row in payload["rows"].items() if "error" in row]
    if failed:
        sys.exit(f"error: runs without results: {failed}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    run_app(main)
