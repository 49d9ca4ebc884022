"""The pieces of ``launch/run_table.py`` (no flags): table files, child processes, throughput, the markdown table."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from avat3r_jax.spec import FIELD_PATHS
from launch import sweep_overrides

REPO_ROOT = sweep_overrides.REPO_ROOT
Overrides = dict[str, Any]
KILL_GRACE_S = 120.0  # After SIGTERM: time to save the checkpoint before SIGKILL.
POLL_S = 0.5  # How often a waiting launcher thread looks at the deadline and the stop event.
STEPS_SAFETY = 0.85  # Share of the time left that ``table_steps`` plans for (load changes, slower evaluation).


def load_table(path: str) -> tuple[Overrides, dict[str, Overrides], dict[str, Overrides]]:
    """``(common overrides, runs, conditions)`` of a table file; every key must look like ``config.x.y``."""
    module = sweep_overrides.load_module(path, "table")
    for name in ("get_runs", "get_conditions"):
        if not hasattr(module, name):
            raise ValueError(f"table file {path!r} has no {name}() function")
    common, runs, conditions = dict(getattr(module, "COMMON", {})), dict(module.get_runs()), dict(module.get_conditions())
    if not runs or not conditions:
        raise ValueError(f"table file {path!r} needs at least one run and one condition")
    for what, table in (("run", runs), ("condition", conditions)):
        for name, overrides in table.items():
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"{what} name {name!r} must be letters, digits, '_' or '-' (it names a folder)")
            bad = [k for k in overrides if not k.startswith("config.data." if what == "condition" else "config.")]
            if bad:
                raise ValueError(f"{what} {name!r}: bad override keys {bad}")
    return common, runs, conditions


def run_overrides(common: Overrides, run: Overrides, steps: int | None, data_dir: pathlib.Path) -> Overrides:
    """One run's overrides: the table's common ones, the run's own, the shared steps and dataset."""
    out = {**common, **run, "config.data.dir": str(data_dir)}
    if steps is not None:
        out["config.train.num_steps"] = steps
    return out


# The ``config.data.*`` fields that shape the batches, hence the compiled program: the model's own and the batch's.
SHAPING_DATA_FIELDS = frozenset(
    [f"config.{path}" for path in FIELD_PATHS.values() if path.startswith("data.")]
    + ["config.data.batch_size", "config.data.num_target_views"]
)


def program_groups(runs: Mapping[str, Overrides]) -> dict[str, list[str]]:
    """Runs that compile to one program: equal overrides apart from ``config.data.*`` options that
    change only the batches' contents (not ``SHAPING_DATA_FIELDS``). ``{first run of the group: [its
    runs, in table order]}``."""
    groups: dict[str, list[str]] = {}
    leaders: dict[str, str] = {}
    for name, overrides in runs.items():
        key = repr(sorted((k, v) for k, v in overrides.items() if not k.startswith("config.data.") or k in SHAPING_DATA_FIELDS))
        groups.setdefault(leaders.setdefault(key, name), []).append(name)
    return groups


def short_run(overrides: Overrides, steps: int) -> Overrides:
    """``overrides`` for ``steps`` steps (warm-up half of them)."""
    return {**overrides, "config.train.num_steps": steps, "config.train.warmup_steps": steps // 2}


def warm_overrides(overrides: Overrides, steps: int) -> Overrides:
    """A short run of ``overrides`` that compiles the same train step as the full run: the schedule's
    horizon must be traced (``config.train.time_budget`` > 0), so ``num_steps`` is not in the program."""
    if not float(overrides.get("config.train.time_budget", 0.0)) > 0:
        raise ValueError("warm-up runs compile the table's programs only with config.train.time_budget > 0 in COMMON (a traced horizon)")
    return short_run(overrides, steps)


def table_steps(
    seconds_left: float, steps_per_sec: float, runs: int, concurrency: int, startup_s: float, eval_s: float, speedup: float = 1.0
) -> int:
    """Steps per run such that ``runs`` runs, ``concurrency`` at a time, end within ``seconds_left``.

    ``steps_per_sec`` is one run's rate alone and ``speedup`` the assumed aggregate rate of
    ``concurrency`` runs over it (1.0: time-slicing gains nothing); each run also spends
    ``startup_s`` before its first step and ``eval_s`` after its last. ``STEPS_SAFETY`` of the time
    is planned; the result is a multiple of 10 (0 when nothing fits)."""
    slots = min(concurrency, runs)
    waves = -(-runs // slots)
    per_run_rate = steps_per_sec * speedup / slots
    train_s = STEPS_SAFETY * seconds_left / waves - startup_s - eval_s
    return max(0, int(train_s * per_run_rate) // 10 * 10)


def plan_table(
    *,
    seconds_left: float,
    steps_per_sec: float,
    speedup: float,
    startup_s: float,
    eval_s: float,
    runs: int,
    concurrency: int,
    config_warmup: int,
) -> dict[str, float | int]:
    """``--steps=auto``: the inputs, the steps per run (``table_steps``) and the warm-up (the config's, at
    most a fifth of the steps)."""
    steps = table_steps(seconds_left, steps_per_sec, runs, concurrency, startup_s, eval_s, speedup)
    plan = {"seconds_left": seconds_left, "steps_per_sec": steps_per_sec, "speedup": speedup, "startup_s": startup_s, "eval_s": eval_s}
    return plan | {"steps": steps, "warmup_steps": min(config_warmup, steps // 5)}


def child_env(mem_fraction: float, compile_cache: pathlib.Path) -> dict[str, str]:
    """The children's environment: their share of device memory and one persistent compilation cache,
    so runs whose programs are identical (e.g. differing only in data options) compile once; a cache
    the caller's environment already names is kept."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_MEM_FRACTION=f"{mem_fraction:.4f}")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(compile_cache))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
    return env


def run_until(
    args: Sequence[str], log_path: pathlib.Path, env: Mapping[str, str], deadline: float | None, stop: threading.Event | None = None
) -> dict[str, Any]:
    """Runs ``python args`` (output to ``log_path``); SIGTERM at ``deadline`` (``time.time()``) or once
    ``stop`` is set (the launcher was told to stop), SIGKILL ``KILL_GRACE_S`` later. Returns
    ``{"returncode", "started" (time.time()), "seconds", "stopped_at_deadline", "stopped_by_launcher"}``."""
    start = time.time()
    at_deadline = by_launcher = False
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=REPO_ROOT)
        while process.poll() is None:
            at_deadline = deadline is not None and time.time() >= deadline
            by_launcher = stop is not None and stop.is_set()
            if at_deadline or by_launcher:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=KILL_GRACE_S)
                except subprocess.TimeoutExpired:  # e.g. still compiling: a trainer stops only between steps
                    process.kill()
                    process.wait()
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=POLL_S)
    return {
        "returncode": process.returncode,
        "started": start,
        "seconds": round(time.time() - start, 2),
        "stopped_at_deadline": at_deadline,
        "stopped_by_launcher": by_launcher and not at_deadline,
    }


def train_throughput(metrics_path: pathlib.Path, started: float | None = None) -> dict[str, float | None]:
    """Median examples/s over the logged windows after the first (which holds the compilation), the last
    logged step, and the seconds from ``started`` (process start) to the first log (start-up and compilation)."""
    records = []
    if metrics_path.exists():
        records = [r for r in map(json.loads, metrics_path.read_text().splitlines()) if "train/examples_per_sec" in r]
    rates = [r["train/examples_per_sec"] for r in records]
    return {
        "examples_per_sec": statistics.median(rates[1:]) if len(rates) > 1 else None,
        "last_logged_step": records[-1]["step"] if records else None,
        "seconds_to_first_log": round(records[0]["time"] - started, 2) if records and started is not None else None,
    }


def logged_steps(metrics_path: pathlib.Path) -> list[tuple[float, int]]:
    """``(time, step)`` of each logged training window in a ``metrics.jsonl`` (empty when absent)."""
    if not metrics_path.exists():
        return []
    records = map(json.loads, metrics_path.read_text().splitlines())
    return [(r["time"], r["step"]) for r in records if "train/examples_per_sec" in r]


def steps_at(series: Sequence[tuple[float, int]], t: float) -> float:
    """The step count at time ``t``, linear between logged ``(time, step)`` points."""
    times, steps = zip(*series, strict=True)
    return float(np.interp(t, times, steps))


def aggregate_steps_per_sec(series: Sequence[Sequence[tuple[float, int]]], skip_steps: int) -> float | None:
    """Steps per second of several runs together over the span when all were training: from the
    latest time any run logged step ``skip_steps`` (start-up and compilation behind it) to the
    earliest last log. None when the runs never trained at the same time."""
    series = [[(t, s) for t, s in run if s >= skip_steps] for run in series]
    if not series or any(len(run) < 2 for run in series):
        return None
    start, end = max(run[0][0] for run in series), min(run[-1][0] for run in series)
    if end <= start:
        return None
    return sum(steps_at(run, end) - steps_at(run, start) for run in series) / (end - start)


def eval_args(config_path: str, workdir: pathlib.Path, overrides: Overrides, conditions_path: pathlib.Path) -> list[str]:
    return [
        "-m",
        "launch.eval_heldout",
        f"--config={config_path}",
        f"--workdir={workdir}",
        f"--conditions={conditions_path}",
        f"--out={workdir / 'heldout.json'}",
    ] + [sweep_overrides.format_override(k, v) for k, v in overrides.items()]


def train_and_evaluate(
    name: str,
    config_path: str,
    base: pathlib.Path,
    overrides: Overrides,
    conditions_path: pathlib.Path,
    env,
    deadline: float | None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """One row: train (until done, the deadline or ``stop``), then evaluate every condition (not after ``stop``)."""
    row: dict[str, Any] = {"overrides": overrides}
    if stop is not None and stop.is_set():
        return row | {"error": "not started: the launcher was stopped"}
    workdir = base / name
    workdir.mkdir(parents=True, exist_ok=True)
    row["train"] = run_until(sweep_overrides.train_args(config_path, str(workdir), overrides), workdir / "train.log", env, deadline, stop)
    row["train"].update(train_throughput(workdir / "metrics.jsonl", row["train"]["started"]))
    if stop is not None and stop.is_set():
        return row | {"error": f"not evaluated: the launcher was stopped (checkpoint, if saved, in {workdir / 'checkpoints'})"}
    row["eval"] = run_until(eval_args(config_path, workdir, overrides, conditions_path), workdir / "eval.log", env, None, stop)
    heldout = workdir / "heldout.json"
    if row["eval"]["returncode"] == 0 and heldout.exists():
        payload = json.loads(heldout.read_text())
        row["step"], row["results"] = payload["step"], payload["results"]
    else:
        row["error"] = f"see {workdir / ('eval.log' if row['train']['returncode'] == 0 else 'train.log')}"
    return row


def markdown_table(rows: Mapping[str, Mapping[str, Any]], conditions: Sequence[str]) -> str:
    """Rows x conditions, each cell ``PSNR / SSIM`` on held-out subjects; steps and examples/s per row."""
    lines = [
        "| run | steps | train s | examples/s | " + " | ".join(conditions) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in conditions) + " |",
    ]
    for name, row in rows.items():
        train = row.get("train", {})
        rate = train.get("examples_per_sec")
        cells = [
            f"{row['results'][c]['psnr']:.2f} / {row['results'][c]['ssim']:.3f}" if c in row.get("results", {}) else "-" for c in conditions
        ]
        prefix = [name, str(row.get("step", "-")), f"{train.get('seconds', 0):.0f}", "-" if rate is None else f"{rate:.1f}"]
        lines.append("| " + " | ".join(prefix + cells) + " |")
    return "\n".join(lines) + "\n"


def throughput_summary(solo: Mapping[str, Any] | None, rows: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Per-run and aggregate examples/s of the concurrent runs against the solo baseline."""
    rates = [r["train"]["examples_per_sec"] for r in rows.values() if r.get("train", {}).get("examples_per_sec")]
    solo_rate = solo.get("examples_per_sec") if solo else None
    mean = statistics.fmean(rates) if rates else None
    return {
        "solo_examples_per_sec": solo_rate,
        "concurrent_runs": len(rates),
        "concurrent_mean_examples_per_sec": mean,
        "concurrent_total_examples_per_sec": sum(rates) if rates else None,
        "total_over_solo": sum(rates) / solo_rate if rates and solo_rate else None,
    }


def write_table(base: pathlib.Path, payload: Mapping[str, Any], conditions: Sequence[str], mirror: pathlib.Path | None = None) -> None:
    """``base/table.json`` and ``table.md`` (and copies in ``mirror``, e.g. a folder that outlives ``base``)."""
    t = payload["throughput"]
    fmt = lambda x, spec: "-" if x is None else format(x, spec)
    summary = (
        f"\nThroughput: alone {fmt(t['solo_examples_per_sec'], '.1f')} examples/s; {t['concurrent_runs']} concurrent runs "
        f"{fmt(t['concurrent_mean_examples_per_sec'], '.1f')} each, {fmt(t['concurrent_total_examples_per_sec'], '.1f')} together "
        f"({fmt(t['total_over_solo'], '.2f')}x alone).\n"
    )
    plan = payload.get("plan")
    if plan:
        summary += (
            f"Steps per run: {plan['steps']} ({plan['seconds_left']:.0f} s left at planning, {plan['steps_per_sec']:.1f} steps/s alone, "
            f"speedup {plan['speedup']:.2f}, start-up {plan['startup_s']:.0f} s, evaluation {plan['eval_s']:.0f} s).\n"
        )
    texts = {"table.json": json.dumps(payload, indent=2) + "\n", "table.md": markdown_table(payload["rows"], conditions) + summary}
    for folder in filter(None, (base, mirror)):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            (folder / name).write_text(text)
