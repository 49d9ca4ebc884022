"""launch/table_runs.py and launch/eval_conditions.py: concurrent runs, deadline stop, held-out table."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

from launch import eval_conditions, table_runs
from tests.train.trainer_fixtures import subprocess_env

REPO = pathlib.Path(__file__).resolve().parents[2]

# One run and a warm-up of its program: the run must load the warm-up's compiled train step. It trains
# the warm-up's steps (--steps = --warm_steps, warm-up steps as the warm-up's), so it also loads its
# compiled initialisation, whose optimiser state starts from the schedule's horizon. One transformer
# block: the children's programs are their own (a process of one device), and compile faster so.
TINY_TABLE = """
COMMON = {"config.train.eval_every": 0, "config.train.checkpoint_every": 0, "config.train.log_every": 1,
          "config.train.time_budget": 1e9, "config.train.warmup_steps": 1, "config.model.depth": 1}
def get_runs():
    return {"base": {}}
def get_conditions():
    return {"views1": {"config.data.view_count_probs": (1.0, 0.0)}, "views2": {}}
"""


def write(tmp_path: pathlib.Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.slow
def test_a_warmed_up_table_compiles_once_and_gives_held_out_rows(tmp_path):
    table = write(tmp_path, "table.py", TINY_TABLE)
    workdir, mirror = tmp_path / "table", tmp_path / "results"
    env = dict(subprocess_env(1), PYTHONPATH=str(REPO), JAX_LOG_COMPILES="1")
    args = [f"--table={table}", f"--workdir={workdir}", f"--results_dir={mirror}", "--steps=2", "--warm_steps=2"]
    result = subprocess.run(
        [sys.executable, "-m", "launch.run_table", "--config=configs/tiny.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    payload = json.loads((workdir / "table.json").read_text())
    assert payload["programs"] == {"base": ["base"]} and list(payload["warm"]) == ["base"]
    assert payload["warm"]["base"]["step"] == 2 and set(payload["warm"]["base"]["results"]) == {"views1", "views2"}
    row = payload["rows"]["base"]
    assert row["step"] == 2 and row["train"]["returncode"] == 0 and not row["train"]["stopped_at_deadline"]
    assert row["overrides"]["config.data.dir"] == str(workdir / "data")  # the shared dataset
    for log in ("train.log", "eval.log"):  # the warm-up compiled both the train step and the evaluation
        text = (workdir / "base" / log).read_text()
        assert "Persistent compilation cache hit for 'jit_step'" in text or log == "eval.log", text[-3000:]
        assert "Persistent compilation cache hit for 'jit__lambda'" in text or log == "train.log", text[-3000:]
    results = row["results"]
    assert set(results) == {"views1", "views2"}
    for scores in results.values():
        assert scores["examples"] > 0 and 0.0 < scores["ssim"] < 1.0 and 5.0 < scores["psnr"] < 60.0
    assert results["views1"]["psnr"] != results["views2"]["psnr"]  # the condition reached the inputs
    assert json.loads((workdir / "base" / "heldout.json").read_text())["conditions"]["views1"] == {
        "config.data.view_count_probs": [1.0, 0.0]
    }
    lines = (workdir / "table.md").read_text().splitlines()
    assert lines[0] == "| run | steps | train s | examples/s | views1 | views2 |"
    assert lines[2].startswith("| base | 2 |") and "1 concurrent runs" in lines[-1]
    assert (mirror / "table.md").read_text() == (workdir / "table.md").read_text()


def test_a_run_past_the_deadline_gets_sigterm_and_may_finish_cleanly(tmp_path):
    script = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\ntime.sleep(60)\n"
    start = time.time()
    result = table_runs.run_until(["-c", script], tmp_path / "log", dict(os.environ), deadline=time.time() + 1.0)
    assert result["stopped_at_deadline"] and result["returncode"] == 0
    assert time.time() - start < 30
    done = table_runs.run_until(["-c", "pass"], tmp_path / "log", dict(os.environ), deadline=time.time() + 30)
    assert not done["stopped_at_deadline"] and done["returncode"] == 0


def test_a_stopped_launcher_stops_its_children_and_starts_no_more(tmp_path):
    script = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\ntime.sleep(60)\n"
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    start = time.time()
    result = table_runs.run_until(["-c", script], tmp_path / "log", dict(os.environ), deadline=None, stop=stop)
    assert result["stopped_by_launcher"] and not result["stopped_at_deadline"] and result["returncode"] == 3
    assert time.time() - start < 30
    row = table_runs.train_and_evaluate("x", "configs/tiny.py", tmp_path, {}, tmp_path / "c.json", dict(os.environ), None, stop)
    assert row["error"].startswith("not started") and not (tmp_path / "x").exists()


def test_throughput_skips_the_compiling_window_and_compares_with_solo(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rates = [0.5, 10.0, 12.0, 11.0]
    lines = [{"step": 10 * (i + 1), "time": 100.0 + i, "train/examples_per_sec": r} for i, r in enumerate(rates)]
    lines.insert(2, {"step": 20, "time": 101.5, "eval/psnr": 20.0})  # other records are skipped
    metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert table_runs.train_throughput(metrics, started=60.0) == {
        "examples_per_sec": 11.0,
        "last_logged_step": 40,
        "seconds_to_first_log": 40.0,
    }
    absent = {"examples_per_sec": None, "last_logged_step": None, "seconds_to_first_log": None}
    assert table_runs.train_throughput(tmp_path / "absent.jsonl", started=1.0) == absent
    rows = {"a": {"train": {"examples_per_sec": 4.0}}, "b": {"train": {"examples_per_sec": 6.0}}, "c": {"error": "x"}}
    summary = table_runs.throughput_summary({"examples_per_sec": 8.0}, rows)
    assert summary == {
        "solo_examples_per_sec": 8.0,
        "concurrent_runs": 2,
        "concurrent_mean_examples_per_sec": 5.0,
        "concurrent_total_examples_per_sec": 10.0,
        "total_over_solo": 1.25,
    }


def test_children_share_one_compilation_cache_unless_the_caller_names_one(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    env = table_runs.child_env(0.09, tmp_path / "cache")
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "cache") and env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.0900"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    assert table_runs.child_env(0.5, tmp_path / "cache")["JAX_COMPILATION_CACHE_DIR"] == "/elsewhere"


def test_markdown_rows_show_missing_results_as_dashes():
    rows = {
        "a": {"step": 5, "train": {"seconds": 12.3, "examples_per_sec": 7.25}, "results": {"v1": {"psnr": 20.123, "ssim": 0.71234}}},
        "b": {"train": {"seconds": 3.0, "examples_per_sec": None}, "error": "see log"},
    }
    lines = table_runs.markdown_table(rows, ["v1", "v2"]).splitlines()
    assert lines[2] == "| a | 5 | 12 | 7.2 | 20.12 / 0.712 | - |"
    assert lines[3] == "| b | - | 3 | - | - | - |"


def test_table_files_are_checked(tmp_path):
    common, runs, conditions = table_runs.load_table(str(REPO / "configs/sweeps/issue22.py"))
    assert runs["views4"] == {} and conditions["views4"] == {"config.data.view_count_probs": (0.0, 0.0, 0.0, 1.0)}
    assert all(
        c["config.data.view_count_probs"] == conditions["views4"]["config.data.view_count_probs"]
        for n, c in conditions.items()
        if not n.startswith("views")
    )
    assert conditions["views1"] == {"config.data.view_count_probs": (1.0, 0.0, 0.0, 0.0)}
    overrides = [table_runs.run_overrides(common, run, 10, tmp_path / "data") for run in runs.values()]
    assert all(o["config.model.depth"] == 8 and o["config.train.num_steps"] == 10 for o in overrides)
    table_runs.sweep_overrides.check_overrides(
        str(REPO / "configs/synthetic.py"), [{**o, **c} for o in overrides for c in conditions.values()]
    )
    with pytest.raises(ValueError, match="no get_conditions"):
        table_runs.load_table(write(tmp_path, "a.py", "def get_runs():\n    return {'x': {}}\n"))
    bad_condition = "def get_runs():\n    return {'x': {}}\ndef get_conditions():\n    return {'c': {'config.model.depth': 2}}\n"
    with pytest.raises(ValueError, match=r"condition 'c': bad override keys \['config.model.depth'\]"):
        table_runs.load_table(write(tmp_path, "b.py", bad_condition))
    with pytest.raises(ValueError, match="must be letters"):
        table_runs.load_table(
            write(tmp_path, "c.py", "def get_runs():\n    return {'a/b': {}}\ndef get_conditions():\n    return {'c': {}}\n")
        )


def test_eval_conditions_are_checked_and_applied(tmp_path):
    from configs import tiny

    conditions = eval_conditions.load_conditions(write(tmp_path, "c.json", json.dumps({"v1": {"config.data.view_count_probs": [1, 0]}})))
    config = eval_conditions.condition_config(tiny.get_config(), conditions["v1"])
    assert config.data.view_count_probs == (1, 0)
    assert tiny.get_config().data.view_count_probs == ()
    with pytest.raises(ValueError, match=r"config\.data"):
        eval_conditions.load_conditions(write(tmp_path, "d.json", json.dumps({"v": {"config.model.depth": 1}})))
    with pytest.raises(ValueError, match="unreadable"):
        eval_conditions.load_conditions(write(tmp_path, "e.json", "{"))
    assert eval_conditions.mean_scores(iter([{"psnr": [1.0, 2.0]}, {"psnr": [3.0]}])) == {"psnr": 2.0, "examples": 3}


def test_runs_differing_only_in_data_options_share_a_program():
    runs = {
        "views4": {"config.model.depth": 8},
        "no_posmap": {"config.model.depth": 8, "config.model.use_posmap": False},
        "corrupted": {"config.model.depth": 8, "config.data.corruption.depth_noise": 0.01},
        "token": {"config.model.expression_injection": "token", "config.model.depth": 8},
        "same_frame": {"config.data.different_frame_prob": 0.0, "config.model.depth": 8},
        # Data options that change the batches' shapes change the program.
        "batch8": {"config.model.depth": 8, "config.data.batch_size": 8},
        "views3": {"config.model.depth": 8, "config.data.num_input_views": 3},
        "targets4": {"config.model.depth": 8, "config.data.num_target_views": 4},
        "image128": {"config.model.depth": 8, "config.data.image_height": 128, "config.data.image_width": 128},
    }
    assert table_runs.program_groups(runs) == {
        "views4": ["views4", "corrupted", "same_frame"],
        "no_posmap": ["no_posmap"],
        "token": ["token"],
        "batch8": ["batch8"],
        "views3": ["views3"],
        "targets4": ["targets4"],
        "image128": ["image128"],
    }


def test_warm_up_runs_need_a_traced_schedule_horizon():
    warm = table_runs.warm_overrides({"config.train.time_budget": 1e9, "config.model.depth": 8}, 10)
    assert warm == {"config.train.time_budget": 1e9, "config.model.depth": 8, "config.train.num_steps": 10, "config.train.warmup_steps": 5}
    with pytest.raises(ValueError, match="time_budget > 0"):
        table_runs.warm_overrides({"config.model.depth": 8}, 10)


def test_table_steps_fit_the_time_left():
    # 10 runs at once, 20 steps/s alone, no gain from concurrency: 2 steps/s each for 0.85 * 300 - 20 - 15 s.
    assert table_runs.table_steps(300.0, 20.0, 10, 10, 20.0, 15.0) == 440
    # Twice the aggregate rate: twice the steps.
    assert table_runs.table_steps(300.0, 20.0, 10, 10, 20.0, 15.0, speedup=2.0) == 880
    # 5 at a time: two waves, each paying start-up and evaluation.
    assert table_runs.table_steps(300.0, 20.0, 10, 5, 20.0, 15.0) == int((0.85 * 150 - 35) * 4) // 10 * 10
    assert table_runs.table_steps(30.0, 20.0, 10, 10, 20.0, 15.0) == 0


def test_aggregate_rate_counts_only_the_span_when_every_run_trains(tmp_path):
    # Run a: 10 steps/s from t=0; run b starts at t=5 at 5 steps/s and stops at t=15; a goes on to t=20.
    a = [(float(t), 10 * t) for t in range(0, 21)]
    b = [(float(t), 10 + 5 * (t - 5)) for t in range(5, 16)]
    assert table_runs.aggregate_steps_per_sec([a, b], skip_steps=10) == pytest.approx(15.0)
    assert table_runs.aggregate_steps_per_sec([a], skip_steps=0) == pytest.approx(10.0)
    assert table_runs.aggregate_steps_per_sec([a, [(30.0, 20), (31.0, 30)]], skip_steps=0) is None  # never together
    assert table_runs.aggregate_steps_per_sec([a, []], skip_steps=0) is None
    metrics = tmp_path / "metrics.jsonl"
    records = [{"step": 10, "time": 1.0, "train/examples_per_sec": 4.0}, {"step": 10, "time": 1.5, "eval/psnr": 20.0}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert table_runs.logged_steps(metrics) == [(1.0, 10)] and table_runs.logged_steps(tmp_path / "absent") == []


def test_the_plan_keeps_the_configs_warm_up_unless_the_run_is_short():
    plan = table_runs.plan_table(
        seconds_left=300.0, steps_per_sec=20.0, speedup=1.0, startup_s=20.0, eval_s=15.0, runs=10, concurrency=10, config_warmup=200
    )
    assert plan["steps"] == 440 and plan["warmup_steps"] == 88 and plan["seconds_left"] == 300.0
    long = table_runs.plan_table(
        seconds_left=3000.0, steps_per_sec=20.0, speedup=1.0, startup_s=20.0, eval_s=15.0, runs=10, concurrency=10, config_warmup=200
    )
    assert long["warmup_steps"] == 200
