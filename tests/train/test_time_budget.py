"""train.time_budget: the planned schedule fits the measured step time, and a real run ends in time."""

from __future__ import annotations

import json
import time

import pytest

from avat3r_jax.checkpoint import Checkpointer
from avat3r_jax.train import time_budget
from avat3r_jax.train.trainer import StopFlag
from configs import tiny
from data_pipelines import synthetic
from launch.train_data import grain_iterators
from tests.train.trainer_fixtures import logged_losses, tiny_train_config


def test_plan_fits_the_budget_and_scales_warmup():
    train = tiny.get_config().train
    train.num_steps, train.warmup_steps, train.time_budget = 3000, 200, 600.0
    plan = time_budget.plan_steps(train, seconds_per_step=2.0, seconds_left=500.0, steps_done=4, reserve_seconds=50.0)
    assert plan.num_steps == 4 + int(450 * time_budget.SAFETY / 2.0)
    assert (plan.num_steps - 4) * 2.0 <= 450.0
    assert plan.warmup_steps == round(200 * plan.num_steps / 3000)
    assert "over the time budget of 10m00s" in plan.reason and f"training {plan.num_steps} steps" in plan.reason


def test_plan_keeps_the_full_schedule_when_it_fits():
    train = tiny.get_config().train
    train.num_steps, train.warmup_steps, train.time_budget = 3000, 200, 600.0
    plan = time_budget.plan_steps(train, seconds_per_step=0.05, seconds_left=590.0, steps_done=4, reserve_seconds=20.0)
    assert (plan.num_steps, plan.warmup_steps) == (3000, 200)
    assert "the full schedule fits" in plan.reason


def test_deadline_stop_follows_the_clock_and_the_outer_flag():
    assert not time_budget.DeadlineStop(time.monotonic() + 60)
    assert time_budget.DeadlineStop(time.monotonic() - 1)
    outer = StopFlag()
    flag = time_budget.DeadlineStop(time.monotonic() + 60, outer)
    outer.set()
    assert flag


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("budget_data")
    synthetic.ensure_dataset(tiny_train_config(directory).data, directory)
    return directory


def test_a_budgeted_run_ends_within_its_budget_with_a_fitted_schedule(data_dir, tmp_path):
    budget = 25.0
    config = tiny_train_config(data_dir, num_steps=100_000, warmup_steps=10, time_budget=budget)
    start = time.monotonic()
    result, plan = time_budget.train_within_budget(config, tmp_path, grain_iterators(config, data_dir))
    elapsed = time.monotonic() - start
    # The deadline is checked before every step: past it, only the step in flight and the final save remain.
    assert elapsed <= budget + 10.0, elapsed
    assert time_budget.CALIBRATION_STEPS < plan.num_steps < 100_000
    assert result.step <= plan.num_steps and max(logged_losses(tmp_path)) == result.step
    saved = json.loads((tmp_path / time_budget.PLAN_FILE).read_text())
    assert saved["num_steps"] == plan.num_steps and saved["seconds_per_step"] > 0
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    try:
        assert checkpoints.latest_step() == result.step
        assert checkpoints.restore_config()["train"]["num_steps"] == plan.num_steps  # the schedule trained is the planned one
    finally:
        checkpoints.close()
