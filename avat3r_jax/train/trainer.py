"""The training loop: sharded init or restore, guarded steps, logging, evaluation, checkpoints.

Side effects (files, logs, signals) live here; the math lives in ``step``/``objective``/``losses``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx

from avat3r_jax import compile_options, sharding
from avat3r_jax.checkpoint import Checkpointer
from avat3r_jax.model import Avat3r, abstract_model
from avat3r_jax.spec import Batch, from_stored
from avat3r_jax.train import objective, optimizer
from avat3r_jax.train.distributed import barrier
from avat3r_jax.train.logging_utils import MetricWriter, ProgressClock, format_progress, save_eval_grid
from avat3r_jax.train.state import TrainState, create_train_state
from avat3r_jax.train.step import make_train_step

log = logging.getLogger(__name__)

EVAL_SPLITS = ("val_subjects", "val_expressions")

# ``(split, num_epochs) -> iterator`` of this process's share of each batch (numpy arrays, the
# ``spec.batch_shapes`` entries); ``num_epochs=None`` repeats forever. The train split's iterator is
# checkpointed with the state, so it must be a Grain iterator (``get_state``/``set_state``).
IteratorFactory = Callable[[str, int | None], Iterator[Batch]]


class NonFiniteError(RuntimeError):
    """Too many consecutive skipped updates (non-finite loss, gradients, params or optimiser state)."""


@dataclasses.dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    stopped_by_signal: bool


class StopFlag:
    """Set by SIGTERM (preemption) or SIGINT (Ctrl-C); the loop saves a checkpoint and returns at the next step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self._event = threading.Event()

    def set(self, *_):
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                signal.signal(signum, self.set)


def compiled_for_one_call(jitted, mesh: jax.sharding.Mesh, *args):
    """``jitted`` compiled for ``args`` with the ``compile_options.ONE_CALL`` options of the mesh's platform."""
    options = compile_options.for_platform(compile_options.ONE_CALL, mesh.devices.flat[0].platform)
    return jitted.lower(*args).compile(compiler_options=options)


def build_model_state(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
    """The model's graphdef, the optimiser and the sharded abstract/initial train state."""
    graphdef, abstract_params = abstract_model(config)
    tx = optimizer.make_optimizer(config.train, abstract_params)
    abstract_state = jax.eval_shape(lambda p: create_train_state(p, tx, config.seed), abstract_params)
    state_shardings = sharding.state_shardings(abstract_state, abstract_params, mesh)

    def initial_state() -> TrainState:
        params = nnx.split(Avat3r(config, rngs=nnx.Rngs(config.seed)), nnx.Param)[1]
        return create_train_state(params, tx, config.seed)

    jitted = jax.jit(initial_state, out_shardings=state_shardings)
    init = lambda: compiled_for_one_call(jitted, mesh)()
    abstract_state = jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s), abstract_state, state_shardings)
    return graphdef, tx, abstract_state, state_shardings, init


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """Assembles each process's share of the batch into global arrays sharded over the batch axis."""
    return {key: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, value.ndim), value) for key, value in batch.items()}


class Trainer:
    """Owns a run's mesh, model state, data iterators (made by ``make_iterator``) and checkpoints."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str | pathlib.Path,
        make_iterator: IteratorFactory,
        devices: Sequence[jax.Device] | None = None,
    ):
        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.is_chief = jax.process_index() == 0
        self.mesh = sharding.make_mesh(config.mesh, devices)
        self.make_iterator = make_iterator
        self.graphdef, self.tx, self.abstract_state, self.state_shardings, init = build_model_state(config, self.mesh)
        self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=config.train.keep_checkpoints)
        self.train_iter = make_iterator("train", None)
        if self.checkpointer.latest_step() is not None:
            step, self.state = self.checkpointer.restore(self.abstract_state, self.train_iter)
            log.info("restored checkpoint at step %d from %s", step, self.checkpointer.directory)
        else:
            with jax.set_mesh(self.mesh):
                self.state = init()
        self.extras = objective.load_extras(config.train)
        loss_fn = objective.make_loss_fn(self.graphdef, config)
        step_fn = make_train_step(loss_fn, self.tx, config.train.grad_accum_steps)
        self._train_step = jax.jit(
            step_fn,
            in_shardings=(self.state_shardings, None, None),
            out_shardings=(self.state_shardings, None),
            donate_argnums=0,
            compiler_options=compile_options.for_platform(compile_options.MANY_CALLS, self.mesh.devices.flat[0].platform),
        )
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        self._eval_step = jax.jit(self._eval_fn, out_shardings=replicated)
        self.step = int(self.state.step)
        # Records of steps after the restored one are dropped: the run logs them again as it replays them.
        self.writer = MetricWriter(self.workdir, enabled=self.is_chief, resume_step=self.step)

    def _eval_fn(self, params, batch):
        return objective.evaluate_batch(nnx.merge(self.graphdef, params), batch, self.config)

    def save(self, force: bool = False) -> None:
        if self.checkpointer.latest_step() == self.step:
            return
        self.checkpointer.save(self.step, self.state, self.train_iter, config=self.config.to_dict(), force=force)

    def train_steps(self, num_steps: int, stop: StopFlag | None = None) -> TrainResult:
        """Runs up to ``num_steps`` more steps (not beyond ``train.num_steps``)."""
        cfg = self.config.train
        target = min(cfg.num_steps, self.step + num_steps)
        last: dict[str, float] = {}
        examples_per_step = self.config.data.batch_size
        window_start, window_steps = time.perf_counter(), 0
        clock = ProgressClock(self.step)
        while self.step < target:
            if stop:
                log.warning("stop requested at step %d: saving a checkpoint and exiting", self.step)
                self.save(force=True)
                self.checkpointer.wait()
                return TrainResult(self.step, last, stopped_by_signal=True)
            batch = to_global(next(self.train_iter), self.mesh)
            with jax.set_mesh(self.mesh):
                if jax.process_count() > 1 and not isinstance(self._train_step, jax.stages.Compiled):
                    # Compile first, then meet: processes that compile at different speeds would
                    # otherwise time out in the collectives' (30 s) first rendezvous.
                    self._train_step = self._train_step.lower(self.state, batch, self.extras).compile()
                    barrier("train step compiled")
                self.state, step_metrics = self._train_step(self.state, batch, self.extras)
            self.step += 1
            window_steps += 1
            step = self.step
            in_a_row = int(step_metrics["nonfinite_in_a_row"])  # A scalar sync per step: ~ms against 100s of ms.
            if in_a_row >= cfg.max_consecutive_nonfinite:
                self._stop_non_finite(in_a_row)
            if step % cfg.log_every == 0 or step == target:
                last = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                last["nonfinite_total"] = int(self.state.nonfinite_total)
                elapsed = time.perf_counter() - window_start
                last["examples_per_sec"] = window_steps * examples_per_step / max(elapsed, 1e-9)
                self.writer.write(step, {f"train/{k}": v for k, v in last.items()})
                if self.is_chief:
                    log.info(format_progress(step, cfg.num_steps, last, clock.eta_seconds(step, cfg.num_steps)))
                window_start, window_steps = time.perf_counter(), 0
            if cfg.eval_every and step % cfg.eval_every == 0:
                self.evaluate()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                self.save()
        return TrainResult(self.step, last, stopped_by_signal=False)

    def _stop_non_finite(self, count: int) -> None:
        self.save(force=True)
        self.checkpointer.wait()
        raise NonFiniteError(
            f"{count} consecutive skipped updates (non-finite loss, gradients or update) at step {self.step} "
            f"(limit train.max_consecutive_nonfinite={self.config.train.max_consecutive_nonfinite}); "
            f"checkpoint saved in {self.checkpointer.directory}"
        )

    def evaluate(self) -> dict[str, float]:
        """PSNR/SSIM (and the mean-colour baseline) on held-out subjects and held-out expressions."""
        results = {}
        for split in EVAL_SPLITS:
            scores: dict[str, list[np.ndarray]] = {}
            iterator = self.make_iterator(split, 1)
            for index in range(self.config.train.eval_batches):
                try:
                    local = next(iterator)
                except StopIteration:
                    break
                batch = to_global(local, self.mesh)
                with jax.set_mesh(self.mesh):
                    batch_scores, prediction, target = self._eval_step(self.state.params, batch)
                for name, value in jax.device_get(batch_scores).items():
                    scores.setdefault(name, []).append(np.asarray(value))
                if index == 0 and self.is_chief:
                    save_eval_grid(
                        self.workdir / "eval" / f"{split}_step{self.step:07d}.png",
                        from_stored("images", local["images"]),
                        np.asarray(prediction)[: local["images"].shape[0]],
                        np.asarray(target)[: local["images"].shape[0]],
                    )
            for name, values in scores.items():
                results[f"{split}/{name}"] = float(np.mean(np.concatenate(values)))
        self.writer.write(self.step, {f"eval/{k}": v for k, v in results.items()})
        if self.is_chief and results:
            log.info("eval step %d: %s", self.step, json.dumps({k: round(v, 4) for k, v in results.items()}))
        return results

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()
        self.writer.close()


def train(
    config: ml_collections.ConfigDict, workdir: str | pathlib.Path, make_iterator: IteratorFactory, stop: StopFlag | None = None
) -> TrainResult:
    """Trains until ``train.num_steps`` (resuming from ``workdir`` if it holds a checkpoint)."""
    trainer = Trainer(config, workdir, make_iterator)
    try:
        result = trainer.train_steps(config.train.num_steps, stop)
        if not result.stopped_by_signal:
            trainer.save(force=True)
        return result
    finally:
        trainer.close()
