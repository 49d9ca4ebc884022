"""train.time_budget: the planned schedule fits the measured step time (a real budgeted run: tests/train/test_trainer.py)."""

from __future__ import annotations

import json
import time
import typing

import jax.numpy as jnp
import numpy as np
import pytest

from avat3r_jax.train import optimizer, time_budget
from avat3r_jax.train.state import TrainState
from avat3r_jax.train.trainer import StopFlag, TrainResult
from configs import tiny


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


def test_traced_horizon_schedule_equals_make_schedule():
    """The time budget's schedule (horizon in the optimiser state) against optax's warm-up + cosine."""
    train = tiny.get_config().train
    train.num_steps, train.warmup_steps, train.learning_rate, train.end_learning_rate_factor = 300, 20, 1e-3, 0.1
    reference = optimizer.make_schedule(train)
    ours = optimizer.warmup_cosine(1e-3, 1e-4, jnp.float32(20), jnp.float32(300))
    steps = np.array([0, 1, 7, 19, 20, 21, 150, 299, 300, 301, 1000])
    np.testing.assert_allclose([float(ours(s)) for s in steps], [float(reference(s)) for s in steps], rtol=1e-5, atol=1e-9)


def test_set_horizon_replaces_the_schedule_in_the_optimiser_state():
    train = tiny.get_config().train
    train.num_steps, train.warmup_steps, train.time_budget = 1000, 10, 60.0
    params, grads = {"w": jnp.ones((3, 2))}, {"w": jnp.ones((3, 2))}
    tx = optimizer.make_optimizer(train, params)
    planned = optimizer.set_horizon(tx.init(params), num_steps=40, warmup_steps=4)
    unplanned = tx.init(params)
    for _ in range(40):
        _, planned = tx.update(grads, planned, params)
        _, unplanned = tx.update(grads, unplanned, params)
    (hyper,) = [node for node in planned if hasattr(node, "hyperparams")]
    assert float(hyper.hyperparams["num_steps"]) == 40 and float(hyper.hyperparams["warmup_steps"]) == 4
    # The 41st update uses the learning rate at count 40: the planned schedule's end, the configured one's near peak.
    # Constant gradients: Adam's direction is 1, plus decoupled weight decay on the ones parameter.
    lr, end = train.learning_rate, train.learning_rate * train.end_learning_rate_factor
    step_of = lambda state: -float(tx.update(grads, state, params)[0]["w"][0, 0]) / (1.0 + train.weight_decay)
    assert step_of(planned) == pytest.approx(end, rel=1e-3)
    assert step_of(unplanned) == pytest.approx(float(optimizer.warmup_cosine(lr, end, 10.0, 1000.0)(40)), rel=1e-3)


class ClockedTrainer:
    """Stands in for a Trainer: each step advances a fake clock by the next of ``durations``."""

    def __init__(self, durations):
        self.durations, self.step, self.now = list(durations), 0, 0.0

    def clock(self) -> float:
        return self.now

    def train_steps(self, num_steps, stop=None):
        for _ in range(num_steps):
            self.now += self.durations.pop(0)
            self.step += 1


def test_calibration_plans_from_the_median_step_not_one_slow_one():
    """A step slowed tenfold by the machine's other jobs (as seen on the shared 2-core CPU) must not
    cut the schedule to a tenth."""
    config = tiny.get_config()
    config.train.num_steps, config.train.warmup_steps, config.train.time_budget = 100_000, 10, 1000.0
    trainer = ClockedTrainer([60.0, 2.0, 20.0, 2.0, 2.0, 2.0])  # compile, then one slow step among five
    plan = time_budget._calibrate(trainer, config, seconds_left=1000.0, stop=time_budget.DeadlineStop(float("inf")), clock=trainer.clock)
    assert trainer.step == time_budget.CALIBRATION_STEPS
    assert plan.seconds_per_step == 2.0
    reserve = 0.5 * 60.0 + 2 * config.train.eval_batches * 2.0
    assert plan.num_steps == trainer.step + int((1000.0 - trainer.now - reserve) * time_budget.SAFETY / 2.0)


class DeadlineTrainer:
    """Stands in for a Trainer whose planned run is cut short by the deadline."""

    instances: typing.ClassVar[list] = []

    def __init__(self, config, workdir, make_iterator, devices=None):
        self.config, self.step, self.evaluations, self.state = config, 0, [], TrainState(0, {}, (), None, 0, 0)
        DeadlineTrainer.instances.append(self)

    def train_steps(self, num_steps, stop=None):
        if self.step < time_budget.CALIBRATION_STEPS:
            self.step += num_steps
            return TrainResult(self.step, {}, stopped_by_signal=False)
        self.step += 3
        return TrainResult(self.step, {}, stopped_by_signal=True)  # the deadline passed three steps in

    def evaluate(self):
        self.evaluations.append(self.step)

    def save(self, force=False):
        raise AssertionError("a deadline stop has saved already")

    def close(self):
        pass


@pytest.mark.parametrize("eval_every", [0, 200])
def test_a_deadline_stop_evaluates_where_the_config_evaluates(monkeypatch, tmp_path, eval_every):
    """The quickstart reports held-out PSNR from this evaluation when the machine was slower than planned."""
    monkeypatch.setattr(time_budget, "Trainer", DeadlineTrainer)
    config = tiny.get_config()
    config.train.num_steps, config.train.time_budget, config.train.eval_every = 1000, 600.0, eval_every
    result, _ = time_budget.train_within_budget(config, tmp_path, make_iterator=None)
    trainer = DeadlineTrainer.instances[-1]
    assert result.stopped_by_signal
    assert trainer.evaluations == ([time_budget.CALIBRATION_STEPS + 3] if eval_every else [])


class InstantTrainer:
    """Stands in for a Trainer whose steps take no time; like ``Trainer.train_steps`` it checks the
    stop flag before each step. Setting it up takes 20 ms."""

    def __init__(self, config, workdir, make_iterator, devices=None):
        time.sleep(0.02)
        self.config, self.step, self.saved, self.state = config, 0, [], TrainState(0, {}, (), None, 0, 0)

    def train_steps(self, num_steps, stop=None):
        target = min(self.config.train.num_steps, self.step + num_steps)
        while self.step < target:
            if stop:
                self.save(force=True)
                return TrainResult(self.step, {}, stopped_by_signal=True)
            self.step += 1
        return TrainResult(self.step, {}, stopped_by_signal=False)

    def save(self, force=False):
        self.saved.append(self.step)

    def close(self):
        pass


def test_a_budget_used_up_by_setting_up_still_trains_and_plans_one_step(monkeypatch, tmp_path):
    """Under load, building the trainer took longer than a test's budget: the run must still end
    with a trained step and a one-step plan (an empty plan would make every resume train nothing)."""
    monkeypatch.setattr(time_budget, "Trainer", InstantTrainer)
    config = tiny.get_config()
    config.train.num_steps, config.train.time_budget = 1000, 0.01
    result, plan = time_budget.train_within_budget(config, tmp_path, make_iterator=None)
    assert (result.step, plan.num_steps) == (1, 1) and not result.stopped_by_signal
    assert "used up the time budget" in plan.reason
    assert json.loads((tmp_path / time_budget.PLAN_FILE).read_text())["num_steps"] == 1


def test_a_run_stopped_before_its_first_step_keeps_no_plan(monkeypatch, tmp_path):
    """SIGTERM while setting up: the quickstart says to run it again, and that run must calibrate afresh."""
    monkeypatch.setattr(time_budget, "Trainer", InstantTrainer)
    config = tiny.get_config()
    config.train.num_steps, config.train.time_budget = 1000, 600.0
    stop = StopFlag()
    stop.set()
    result, _ = time_budget.train_within_budget(config, tmp_path, make_iterator=None, stop=stop)
    assert result.stopped_by_signal and result.step == 0
    assert not (tmp_path / time_budget.PLAN_FILE).exists()
