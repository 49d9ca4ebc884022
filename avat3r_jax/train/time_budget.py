"""Training within a wall-clock budget (``train.time_budget`` seconds): the schedule is fitted to it.

A few calibration steps measure the step time on this machine; the run then trains
``min(train.num_steps, steps that fit)`` steps, with warm-up and cosine decay scaled to that length,
so the learning rate reaches its end value as the budget runs out, without compiling the step
again. A deadline stop still saves, evaluates (where the config evaluates) and returns if the machine
turns out slower than measured. The plan is written to
``workdir/time_budget.json`` and reused when the run resumes, so the schedule never changes mid-run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import ml_collections

from avat3r_jax.train.logging_utils import format_duration
from avat3r_jax.train.optimizer import set_horizon
from avat3r_jax.train.trainer import IteratorFactory, StopFlag, Trainer, TrainResult

log = logging.getLogger(__name__)

PLAN_FILE = "time_budget.json"
CALIBRATION_STEPS = 6  # The first one compiles; the others are timed one by one, and their median counts.
SAFETY = 0.9  # Share of the remaining budget planned for steps (the rest absorbs load changes and evaluation).


@dataclasses.dataclass(frozen=True)
class BudgetPlan:
    num_steps: int
    warmup_steps: int
    seconds_per_step: float
    budget_seconds: float
    reason: str


def plan_steps(
    train_config: ml_collections.ConfigDict, seconds_per_step: float, seconds_left: float, steps_done: int, reserve_seconds: float
) -> BudgetPlan:
    """The step count that fits ``seconds_left`` (after ``reserve_seconds`` for compiling and
    evaluation), at most ``train_config.num_steps``; warm-up keeps its share of the schedule."""
    configured = int(train_config.num_steps)
    budget = float(train_config.time_budget)
    fits = steps_done + int(max(seconds_left - reserve_seconds, 0.0) * SAFETY / max(seconds_per_step, 1e-9))
    full = f"{configured} steps at {seconds_per_step:.3g} s/step take {format_duration(configured * seconds_per_step)}"
    if fits >= configured:
        return BudgetPlan(configured, int(train_config.warmup_steps), seconds_per_step, budget, f"{full}: the full schedule fits")
    num_steps = max(fits, steps_done + 1)
    warmup = min(max(1, round(int(train_config.warmup_steps) * num_steps / configured)), num_steps - 1)
    reason = (
        f"{full}, over the time budget of {format_duration(budget)}: training {num_steps} steps "
        f"(warm-up {warmup}, cosine decay to the end value at step {num_steps})"
    )
    return BudgetPlan(num_steps, warmup, seconds_per_step, budget, reason)


def planned_config(config: ml_collections.ConfigDict, plan: BudgetPlan) -> ml_collections.ConfigDict:
    """``config`` with the plan's schedule; a shortened schedule evaluates at its end (if the config evaluates)."""
    planned = config.copy_and_resolve_references()
    with planned.unlocked():
        planned.train.num_steps = plan.num_steps
        planned.train.warmup_steps = plan.warmup_steps
        if plan.num_steps < config.train.num_steps and config.train.eval_every:  # 0 keeps evaluation off
            planned.train.eval_every = plan.num_steps
    return planned


class DeadlineStop(StopFlag):
    """A stop flag that is also set once ``deadline`` (``time.monotonic()``) has passed."""

    def __init__(self, deadline: float, outer: StopFlag | None = None):
        super().__init__()
        self.deadline, self.outer = deadline, outer

    def __bool__(self) -> bool:
        return bool(self.outer) or time.monotonic() >= self.deadline or super().__bool__()


def train_within_budget(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    make_iterator: IteratorFactory,
    stop: StopFlag | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> tuple[TrainResult, BudgetPlan]:
    """Calibrates (or reads the saved plan), then trains the planned schedule before the deadline.

    The step is compiled once: with ``train.time_budget > 0`` the optimiser keeps its schedule's
    horizon in its state (``optimizer.set_horizon``), which the plan then sets.
    """
    budget = float(config.train.time_budget)
    if budget <= 0:
        raise ValueError(f"train.time_budget must be > 0 seconds here, got {budget}")
    start = time.monotonic()
    workdir = pathlib.Path(workdir)
    plan_path = workdir / PLAN_FILE
    deadline = DeadlineStop(start + budget, stop)
    trainer = Trainer(config, workdir, make_iterator, devices)
    try:
        if plan_path.is_file():  # a resumed run: the restored optimiser state holds the plan's horizon
            plan = BudgetPlan(**json.loads(plan_path.read_text()))
            log.info("time budget: resuming the saved plan (%s)", plan.reason)
        else:
            steps_before = trainer.step
            plan = _calibrate(trainer, config, budget - (time.monotonic() - start), deadline)
            if trainer.step == steps_before:  # the caller stopped it before its first step: no plan to keep
                return TrainResult(trainer.step, {}, stopped_by_signal=True), plan
            workdir.mkdir(parents=True, exist_ok=True)
            plan_path.write_text(json.dumps(dataclasses.asdict(plan), indent=2))
            log.info("time budget %s: %s", format_duration(budget), plan.reason)
        trainer.config = planned_config(config, plan)
        trainer.state = trainer.state.replace(opt_state=set_horizon(trainer.state.opt_state, plan.num_steps, plan.warmup_steps))
        result = trainer.train_steps(plan.num_steps, deadline)
        if result.stopped_by_signal and not deadline.outer:
            log.warning("time budget used up at step %d of %d: checkpoint saved", trainer.step, plan.num_steps)
            if config.train.eval_every:  # the planned end's evaluation, at the step reached instead
                trainer.evaluate()
        elif not result.stopped_by_signal:
            trainer.save(force=True)
        return result, plan
    finally:
        trainer.close()


def _calibrate(
    trainer: Trainer,
    config: ml_collections.ConfigDict,
    seconds_left: float,
    stop: DeadlineStop,
    clock: Callable[[], float] = time.monotonic,
) -> BudgetPlan:
    """Times ``CALIBRATION_STEPS`` steps of ``trainer`` (the first compiles) and plans the rest.

    The first step runs even if setting up used up the budget (only ``stop.outer`` stops it), so a
    run always trains at least one step and its saved plan is never an empty schedule.
    The step time is the median of the timed steps: on a shared machine one of them can take ten
    times the others (seen on the 2-core CPU), and a mean would then plan a tenth of the steps.
    """
    first = clock()
    trainer.train_steps(1, stop.outer)
    compile_seconds = clock() - first
    durations = []
    while trainer.step < CALIBRATION_STEPS and not stop:
        started, step = clock(), trainer.step
        trainer.train_steps(1, stop)
        if trainer.step == step:
            break
        durations.append(clock() - started)
    if not durations:  # compiling alone used up the budget
        reason = f"compiling and the first {trainer.step} steps used up the time budget of {format_duration(config.train.time_budget)}"
        return BudgetPlan(trainer.step, 0, compile_seconds, float(config.train.time_budget), reason)
    seconds_per_step = statistics.median(durations)
    # Evaluation at the end compiles its own (forward-only) step and runs both splits.
    reserve = 0.5 * compile_seconds + 2 * config.train.eval_batches * seconds_per_step
    return plan_steps(config.train, seconds_per_step, seconds_left - (clock() - first), trainer.step, reserve)
