"""End-to-end trainer tests on the tiny config: sharding equivalence, exact resume, guards, a time budget, multi-process.

The expensive part is compiling the train step; the persistent compilation cache (tests/conftest.py)
lets the later trainers of a session reuse the first one's programs. The module runs on one xdist
worker, first (``--dist=loadfile``, tests/conftest.py), so the reference run and each program are made once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import jax
import numpy as np
import optax
import pytest

from avat3r_jax import compile_options
from avat3r_jax.checkpoint import Checkpointer
from avat3r_jax.train import time_budget
from avat3r_jax.train.trainer import NonFiniteError, StopFlag
from data_pipelines import synthetic
from launch.train_data import grain_iterators
from tests.train.trainer_fixtures import logged_losses, make_trainer, start_training, tiny_train_config

NUM_STEPS = 12  # The schedule length of every run here (the losses compared depend on it).

pytestmark = pytest.mark.slow


class InjectedBatches:
    """Serves chosen batches in place of the data iterator, while checkpointing the real one's state."""

    def __init__(self, inner, batches):
        self.inner, self.batches = inner, list(batches)

    def __iter__(self):
        return self

    def __next__(self):
        return self.batches.pop(0)

    def get_state(self) -> bytes:  # Grain saves iterators that are not DatasetIterators as bytes.
        return json.dumps(self.inner.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.inner.set_state(json.loads(state))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_data")
    synthetic.ensure_dataset(tiny_train_config(directory).data, directory)
    return directory


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """An uninterrupted single-device run: its per-step losses."""
    workdir = tmp_path_factory.mktemp("reference")
    trainer = make_trainer(tiny_train_config(data_dir, num_steps=NUM_STEPS), workdir)
    trainer.train_steps(NUM_STEPS)
    trainer.close()
    return logged_losses(workdir)


def test_resume_past_a_garbled_checkpoint_continues_exactly(data_dir, reference, tmp_path):
    config = tiny_train_config(data_dir, num_steps=NUM_STEPS)
    first = make_trainer(config, tmp_path)
    first.train_steps(2)
    first.save(force=True)
    first.train_steps(1)
    first.save(force=True)
    first.close()
    # 64 bytes garbled inside the newest checkpoint's largest file, its size unchanged.
    victim = max((p for p in (tmp_path / "checkpoints" / "3" / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(range(64))
    victim.write_bytes(bytes(data))
    resumed = make_trainer(config, tmp_path)
    assert resumed.step == 2  # Fell back to the older, verified checkpoint.
    assert (tmp_path / "checkpoints" / "corrupt" / "3").is_dir()
    resumed.train_steps(2)
    resumed.save(force=True)
    resumed.checkpointer.wait()
    assert resumed.checkpointer.good_steps() == [2, 4]  # Step 3 was never saved again (no checkpoint_every).
    resumed.close()
    assert logged_losses(tmp_path) == {step: reference[step] for step in range(1, 5)}  # Bitwise: same data order, same programs.
    assert logged_steps(tmp_path) == [1, 2, 3, 4]  # Step 3 replayed, logged once.


def logged_steps(workdir) -> list[int]:
    """The step of every training record in ``metrics.jsonl``, in file order."""
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [record["step"] for record in records if "train/loss" in record]


def test_sigint_and_sigterm_stop_the_loop_with_a_save(data_dir, tmp_path):
    previous = {signum: signal.getsignal(signum) for signum in StopFlag.SIGNALS}
    flags = {}
    try:
        for signum in StopFlag.SIGNALS:
            flags[signum] = StopFlag()
            flags[signum].install()
            os.kill(os.getpid(), signum)
            time.sleep(0.01)  # The handler runs in the main thread at the next bytecode boundary.
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert all(flags.values())
    trainer = make_trainer(tiny_train_config(data_dir, num_steps=NUM_STEPS), tmp_path)
    result = trainer.train_steps(NUM_STEPS, flags[signal.SIGINT])
    trainer.close()
    assert result.stopped_by_signal and trainer.checkpointer.all_steps() == [0]


def test_the_train_step_compiles_with_the_many_calls_options(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(compile_options.MANY_CALLS, "cpu", {"xla_no_such_option": True})
    run = make_trainer(tiny_train_config(data_dir, num_steps=NUM_STEPS), tmp_path)
    with pytest.raises(Exception, match="xla_no_such_option"):
        run.train_steps(1)
    run.close()


def test_eight_device_mesh_matches_one_device_and_restores_on_one(data_dir, reference, tmp_path):
    config = sharded_config(data_dir, num_steps=NUM_STEPS)
    sharded = make_trainer(config, tmp_path, num_devices=8)
    assert dict(sharded.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    sharded.train_steps(3)
    sharded.save(force=True)
    sharded.close()
    losses = logged_losses(tmp_path)
    np.testing.assert_allclose([losses[s] for s in (1, 2, 3)], [reference[s] for s in (1, 2, 3)], rtol=2e-4)

    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    single = make_trainer(config, tmp_path)  # Restores the 8-device checkpoint.
    assert single.step == 3
    assert all(leaf.sharding.num_devices == 1 for leaf in jax.tree.leaves(single.state))
    single.train_steps(1)
    single.close()
    np.testing.assert_allclose(logged_losses(tmp_path)[4], reference[4], rtol=2e-4)


def test_overfit_one_batch_lowers_the_loss(data_dir, tmp_path):
    config = tiny_train_config(data_dir, num_steps=NUM_STEPS)
    trainer = make_trainer(config, tmp_path)
    batch = next(trainer.train_iter)
    trainer.train_iter = InjectedBatches(trainer.train_iter, [batch] * 12)
    trainer.train_steps(12)
    trainer.close()
    losses = logged_losses(tmp_path)
    curve = np.array([losses[s] for s in range(1, 13)])
    assert curve[-1] < 0.93 * curve[0], curve
    assert np.sum(np.diff(curve) < 0) >= 9, curve  # Falls at (nearly) every step, not by one lucky jump.


def test_non_finite_batches_are_skipped_then_stop_the_run(data_dir, tmp_path):
    config = tiny_train_config(data_dir, max_consecutive_nonfinite=2, num_steps=NUM_STEPS)
    trainer = make_trainer(config, tmp_path)
    good = next(trainer.train_iter)
    # A NaN in the float16 features keeps the stored dtypes, so the step program is the cached one.
    features = good["features"].copy()
    features.flat[7] = np.nan
    bad = dict(good, features=features)
    trainer.train_iter = InjectedBatches(trainer.train_iter, [bad, good, bad, bad, good])
    trainer.train_steps(2)
    assert int(trainer.state.nonfinite_total) == 1 and int(trainer.state.nonfinite_in_a_row) == 0
    with pytest.raises(NonFiniteError, match="2 consecutive skipped updates"):
        trainer.train_steps(3)
    trainer.close()
    assert trainer.checkpointer.latest_step() == trainer.step == 4  # Stopped at the second bad step in a row.
    assert int(trainer.state.nonfinite_total) == 3
    # Only the one good step reached the optimiser; skipped ones left its state (and step counts) alone.
    counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(trainer.state.opt_state, "count")]
    assert counts and all(c == 1 for c in counts), counts


def test_a_budgeted_run_stops_at_its_deadline_with_a_fitted_schedule(data_dir, tmp_path):
    # Its step program is the other tests' (the schedule's horizon is optimiser state): the budget
    # goes to calibrating and training, not to compiling (except where this test runs first).
    budget = 30.0
    config = tiny_train_config(data_dir, num_steps=100_000, warmup_steps=10, time_budget=budget)
    start = time.time()
    result, plan = time_budget.train_within_budget(config, tmp_path, grain_iterators(config, data_dir), devices=jax.devices()[:1])
    returned = time.time()
    assert result.step <= plan.num_steps < 100_000
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    finished = {r["step"]: r["time"] for r in records if "train/loss" in r}  # when each step ended (log_every=1)
    assert max(finished, default=0) == result.step
    # No step starts after the deadline (setting up and compiling the first step cannot be interrupted).
    starts = [finished[step - 1] for step in finished if step - 1 in finished]
    assert all(t <= start + budget + 1.0 for t in starts), [t - start for t in starts]
    # It returns soon after the deadline (what passed it: compiling the first step, or the last step, and a checkpoint).
    longest = max([finished[1] - start, *np.diff(sorted(finished.values()))])
    assert returned <= start + max(budget, finished[1] - start) + longest + 10.0, (returned - start, longest)
    if 0 < result.step < plan.num_steps:  # stopped early: only because the deadline passed
        assert finished[result.step] >= start + budget - 2 * max(np.diff(sorted(finished.values())), default=budget)
    saved = json.loads((tmp_path / time_budget.PLAN_FILE).read_text())
    assert saved["num_steps"] == plan.num_steps
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    try:
        assert checkpoints.latest_step() == result.step
        if result.step > time_budget.CALIBRATION_STEPS:  # trained past calibration: the planned schedule is the one saved
            assert checkpoints.restore_config()["train"]["num_steps"] == plan.num_steps
    finally:
        checkpoints.close()


def wait_for_step(workdir, step: int, process: subprocess.Popen, timeout: float = 600.0, until=lambda: True) -> None:
    """Waits until ``process`` has logged ``step`` and ``until()`` holds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (workdir / "metrics.jsonl").exists() and max(logged_losses(workdir), default=0) >= step and until():
            return
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.stdout.read()}")
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


def sharded_config(data_dir, **train_overrides):
    config = tiny_train_config(data_dir, **train_overrides)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    return config


def test_sigkill_then_resume_then_sigint_match_uninterrupted(data_dir, reference, tmp_path):
    # On the eight-device mesh of the test above, in a process of eight devices: the compilation cache
    # key holds the process's device topology, so these runs load that test's compiled programs (a
    # process of one device compiles its own). Its losses match the single-device run's.
    # ``launch.train`` trains within the (never reached) time budget, as the quickstart does: it
    # calibrates over the first CALIBRATION_STEPS steps, saves its plan, and a resumed run reuses it.
    every = time_budget.CALIBRATION_STEPS // 2
    config = sharded_config(data_dir, num_steps=NUM_STEPS, checkpoint_every=every)
    plan_file = tmp_path / time_budget.PLAN_FILE
    # 1) SIGKILL between checkpoints, once the plan is saved (after calibrating) and the first checkpoint
    #    verified (its checksums are recorded when the second one is saved, at the end of calibration).
    run = start_training(config, tmp_path, device_count=8)
    verified = tmp_path / "checkpoints" / str(every) / "checksums.json"
    wait_for_step(tmp_path, time_budget.CALIBRATION_STEPS + 1, run, until=lambda: verified.exists() and plan_file.exists())
    run.kill()
    run.communicate()
    killed_after = max(logged_losses(tmp_path))
    plan = json.loads(plan_file.read_text())
    assert (plan["num_steps"], plan["warmup_steps"]) == (NUM_STEPS, config.train.warmup_steps), plan  # the full schedule fits
    # 2) Resume: it replays the steps after the last checkpoint; Ctrl-C (SIGINT, handled like
    #    SIGTERM's preemption) once it is past the kill makes it save where it is and exit cleanly.
    run = start_training(config, tmp_path, device_count=8)
    wait_for_step(tmp_path, killed_after + 1, run)
    run.send_signal(signal.SIGINT)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0, output
    assert "stop requested" in output and "Traceback" not in output, output
    assert "resuming the saved plan" in output, output
    restored = re.search(r"restored checkpoint at step (\d+)", output)
    assert restored, output
    assert int(restored.group(1)) < killed_after, (restored.group(0), killed_after)  # The kill came before the third checkpoint
    stopped_at = max(logged_losses(tmp_path))
    assert (tmp_path / "checkpoints" / str(stopped_at) / "checksums.json").exists(), "no verified checkpoint after SIGINT"
    # Every step's loss equals the uninterrupted run's; replayed steps are logged once.
    losses = logged_losses(tmp_path)
    assert logged_steps(tmp_path) == list(range(1, stopped_at + 1))
    np.testing.assert_allclose([losses[s] for s in sorted(losses)], [reference[s] for s in sorted(losses)], rtol=2e-4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_checkpoint(data_dir, tmp_path):
    # One device per process, parameters split over both (fsdp = 2): every step gathers across the
    # process boundary. (Four simulated devices each made the two compiles and steps 2-3x slower on 2 cores.)
    # Its programs are its own (no other test splits a mesh over processes): one transformer block
    # halves the model part of the two concurrent compiles.
    # (jax_share_binary_between_hosts, one process compiling for both, hung the first cross-process
    # collective on XLA:CPU.) Without a time budget, ``launch.train`` runs the plain ``train`` loop,
    # with the optimiser's schedule a constant of the program.
    config = tiny_train_config(data_dir, num_steps=3, checkpoint_every=3, time_budget=0.0)
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 2, 1
    config.model.depth = 1
    port = free_port()
    runs = [
        start_training(config, tmp_path, f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}")
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n\n".join(outputs)
    losses = logged_losses(tmp_path)  # Written by process 0 only.
    assert sorted(losses) == [1, 2, 3] and all(np.isfinite(list(losses.values())))
    assert (tmp_path / "checkpoints" / "3").is_dir()
    assert "process 0 of 2" in outputs[0] or "process 0 of 2" in outputs[1]
