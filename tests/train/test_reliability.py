"""Bad starts and crashes of a run: the config and data.dir refused before any work, metrics
records of replayed steps dropped on resume."""

import json

import pytest

from avat3r_jax.train.logging_utils import MetricWriter, truncate_after
from tests.cli import run_module


def write_records(path, steps, torn_tail=False):
    text = "".join(json.dumps({"step": step, "train/loss": float(step)}) + "\n" for step in steps)
    path.write_text(text + ('{"step": 9, "train/lo' if torn_tail else ""))


def steps_in(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_truncate_after_drops_later_steps_and_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_records(path, [1, 2, 3, 4, 5, 6], torn_tail=True)
    truncate_after(path, 4)
    assert steps_in(path) == [1, 2, 3, 4]
    before = path.stat().st_mtime_ns
    truncate_after(path, 4)  # Nothing to drop: the file is left alone.
    assert path.stat().st_mtime_ns == before


def test_metric_writer_on_resume_holds_each_step_once(tmp_path):
    write_records(tmp_path / "metrics.jsonl", [1, 2, 3, 4, 5])  # Logged before a crash; checkpoint at 3.
    writer = MetricWriter(tmp_path, resume_step=3)
    for step in (4, 5, 6):
        writer.write(step, {"train/loss": float(step)})
    writer.close()
    assert steps_in(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]


def test_fresh_run_replaces_old_records(tmp_path):
    write_records(tmp_path / "metrics.jsonl", [1, 2])
    MetricWriter(tmp_path, resume_step=0).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--config.train.learning_rate=nan", "train.learning_rate must be a finite number"),
        ("--config.render.background=red", "render.background must be three numbers in [0, 1]"),
    ],
)
def test_train_cli_refuses_a_bad_config_before_any_work(tmp_path, override, expected):
    workdir = tmp_path / "run"
    result = run_module("launch.train", "--config=configs/tiny.py", f"--workdir={workdir}", override)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: bad config: {expected}"), result.stderr
    assert not workdir.exists()  # Nothing generated, nothing written.


def test_train_cli_refuses_a_data_dir_that_does_not_exist(tmp_path):
    typo = tmp_path / "datta"
    result = run_module("launch.train", "--config=configs/tiny.py", f"--workdir={tmp_path / 'run'}", f"--config.data.dir={typo}")
    assert result.returncode == 1, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: data.dir='{typo}' does not exist") and "--generate_data" in last, result.stderr
    assert not typo.exists()
