"""Orbax checkpoints of the train state together with the data iterator's state and the config.

One checkpoint step holds three items: ``state`` (params, optimiser state, step, rng, counters),
``data`` (the Grain iterator state, one file per process) and ``config`` (JSON). Saves are
asynchronous; ``restore`` places arrays on whatever shardings the caller's abstract state names,
so a checkpoint written on 8 devices restores on 1 and vice versa. If the newest checkpoint
cannot be read (corrupt or half-written files), it falls back to the next older one with a warning.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """No readable checkpoint could be restored."""


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run under ``directory``."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: Any = None, config: dict | None = None, *, force: bool = False) -> bool:
        """Starts an (async) save of ``state`` and, if given, the iterator state and config."""
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore(self, abstract_state: Any, data_iterator: Any = None, *, step: int | None = None) -> tuple[int, Any]:
        """Restores ``(step, state)`` onto the shardings of ``abstract_state`` (and the iterator in place).

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set. Without
        ``step``, tries the newest checkpoint first and falls back to older ones if it is unreadable.
        """
        self.wait()
        candidates = [step] if step is not None else list(reversed(self.all_steps()))
        if not candidates:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        errors = []
        for candidate in candidates:
            items = {"state": ocp.args.StandardRestore(abstract_state)}
            if data_iterator is not None:
                items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
            try:
                restored = self._manager.restore(candidate, args=ocp.args.Composite(**items))
                state = restored["state"]
                _check_structure(state, abstract_state)
            except Exception as error:
                errors.append(f"step {candidate}: {type(error).__name__}: {error}")
                log.warning("checkpoint at step %d in %s is unreadable (%s); trying an older one", candidate, self.directory, error)
                continue
            if errors:
                log.warning("restored step %d after skipping unreadable newer checkpoints", candidate)
            return candidate, state
        raise CheckpointError(f"no readable checkpoint in {self.directory}:\n" + "\n".join(errors))

    def restore_config(self, step: int | None = None) -> dict:
        """The JSON config saved with a checkpoint (the newest by default)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _check_structure(state: Any, abstract_state: Any) -> None:
    """Raises if the restored tree does not match the expected structure and shapes."""
    restored_shapes = jax.tree.map(lambda x: tuple(x.shape), state)
    expected_shapes = jax.tree.map(lambda x: tuple(x.shape), abstract_state)
    if restored_shapes != expected_shapes:
        raise CheckpointError(f"checkpoint tree does not match the model: {restored_shapes} vs {expected_shapes}")
