"""Orbax checkpoints of the train state together with the data iterator's state and the config.

One checkpoint step holds three items: ``state`` (params, optimiser state, step, rng, counters),
``data`` (the Grain iterator state, one file per process) and ``config`` (JSON). Saves are
asynchronous; ``restore`` places arrays on whatever shardings the caller's abstract state names,
so a checkpoint written on 8 devices restores on 1 and vice versa.

Integrity: once a save is committed (noticed at the next ``save`` or ``wait``), the SHA-256 of
every file of its step is recorded in ``<step>/checksums.json`` together with whether the saved
state was finite, in a background thread so training goes on meanwhile. ``restore`` verifies those
checksums, refuses a state that restores non-finite, and falls back to the newest checkpoint that
passes (one warning line per refused one); a refused checkpoint is moved to ``corrupt/`` (not
deleted), so the run saves that step afresh when it passes it again. A checkpoint is *good* once it
is committed from a finite state, or once it restored finite. Rotation keeps the ``keep`` newest
checkpoints and never removes the newest good one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import shutil
import threading
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from avat3r_jax.pytrees import all_finite

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.json"
CORRUPT_DIR = "corrupt"
_HASH_CHUNK = 1 << 22
_all_finite = jax.jit(all_finite)


class CheckpointError(RuntimeError):
    """No readable checkpoint could be restored."""


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run under ``directory`` (plus the newest good one)."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = pathlib.Path(directory).absolute()
        self.keep = keep
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._is_primary = jax.process_index() == 0
        self._pending: list[tuple[int, bool]] = []  # (step, state was finite) saved, maybe not yet committed
        self._hashing: threading.Thread | None = None  # records checksums of committed steps
        # Every process decides rotation from this set, so they all delete the same steps.
        self._good = {step for step in self.all_steps() if _read_record(self._step_dir(step)).get("finite") is True}

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def good_steps(self) -> list[int]:
        """Steps committed from a finite state, or that restored finite."""
        return sorted(self._good & set(self.all_steps()))

    def save(self, step: int, state: Any, data_iterator: Any = None, config: dict | None = None, *, force: bool = False) -> bool:
        """Starts an (async) save of ``state`` and, if given, the iterator state and config."""
        self._finish_pending()
        finite = bool(_all_finite(state))
        if not finite:
            log.warning("saving a non-finite state at step %d: it will not count as a good checkpoint", step)
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        if config is not None:
            items["config"] = ocp.args.JsonSave(config)
        saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            self._pending.append((step, finite))
        return saved

    def restore(self, abstract_state: Any, data_iterator: Any = None, *, step: int | None = None) -> tuple[int, Any]:
        """Restores ``(step, state)`` onto the shardings of ``abstract_state`` (and the iterator in place).

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with ``sharding`` set. Without
        ``step``, tries the newest checkpoint first and falls back to older ones when one fails its
        checksums, cannot be read, does not fit ``abstract_state`` or holds non-finite values
        (damaged ones are moved to ``corrupt/``). With ``step``, only that one, and nothing is moved.
        """
        self.wait()
        candidates = [step] if step is not None else list(reversed(self.all_steps()))
        if not candidates:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        refused = []
        for candidate in candidates:
            state, problem, damaged = self._try_restore(candidate, abstract_state, data_iterator)
            if problem is None:
                if candidate not in self._good and step is None:  # A reader writes nothing.
                    self._record(candidate, finite=True)
                if refused:
                    log.warning("restored step %d after refusing newer checkpoints %s", candidate, [r.split(":")[0] for r in refused])
                return candidate, state
            if step is not None:  # A reader asking for one step (e.g. the exporter) moves nothing.
                raise CheckpointError(f"checkpoint at step {step} in {self.directory} refused: {problem}")
            where = f"moved to {self._quarantine(candidate)}" if damaged else "its files are intact: another model?"
            log.warning("checkpoint at step %d refused: %s (%s); trying an older one", candidate, problem, where)
            refused.append(f"step {candidate}: {problem}")
        raise CheckpointError(f"no usable checkpoint in {self.directory} (damaged ones moved to {CORRUPT_DIR}/): " + "; ".join(refused))

    def restore_config(self, step: int | None = None) -> dict:
        """The JSON config saved with a checkpoint (the newest by default)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        """Blocks until pending async saves are committed and their checksums recorded."""
        self._manager.wait_until_finished()
        self._finish_pending(block=True)

    def close(self) -> None:
        self.wait()
        self._manager.close()

    def _step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def _finish_pending(self, block: bool = False) -> None:
        """Once saves are committed: counts the finite ones good, rotates old checkpoints out and
        records checksums in a background thread (``block`` waits for that thread too)."""
        if self._pending:
            self._manager.wait_until_finished()
            committed, self._pending = self._pending, []
            self._join_hashing()
            self._good.update(step for step, finite in committed if finite)
            self._rotate()
            if self._is_primary:
                self._hashing = threading.Thread(target=self._record_all, args=(committed,), name="checkpoint-checksums", daemon=True)
                self._hashing.start()
        if block:
            self._join_hashing()

    def _join_hashing(self) -> None:
        if self._hashing is not None:
            self._hashing.join()
            self._hashing = None

    def _record_all(self, committed: list[tuple[int, bool]]) -> None:
        for step, finite in committed:
            try:
                self._record(step, finite)
            except OSError as error:  # Removed or unwritable meanwhile: the step stays unrecorded.
                log.warning("could not record the checksums of checkpoint step %d: %s", step, error)

    def _record(self, step: int, finite: bool) -> None:
        """Writes ``<step>/checksums.json`` (primary process) and counts a finite step good."""
        if self._is_primary:
            step_dir = self._step_dir(step)
            record = {"finite": finite, "sha256": file_checksums(step_dir)}
            partial = step_dir / (CHECKSUMS_FILE + ".tmp")
            partial.write_text(json.dumps(record, indent=1, sort_keys=True))
            partial.replace(step_dir / CHECKSUMS_FILE)
        if finite:
            self._good.add(step)

    def _rotate(self) -> None:
        steps = self.all_steps()
        good = [step for step in steps if step in self._good]
        kept = set(steps[-self.keep :]) | set(good[-1:])
        for step in steps:
            if step not in kept:
                self._manager.delete(step)
                self._good.discard(step)

    def _try_restore(self, step: int, abstract_state: Any, data_iterator: Any) -> tuple[Any, str | None, bool]:
        """``(state, None, False)``, or ``(None, why in one line, whether the checkpoint is damaged)``.

        Damaged: failed checksums, non-finite, or unreadable without a checksum record (a
        half-written save). Unreadable with verified files is not damage (a different model).
        """
        step_dir = self._step_dir(step)
        problem = verify_checksums(step_dir)
        if problem:
            return None, problem, True
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            state = self._manager.restore(step, args=ocp.args.Composite(**items))["state"]
            _check_structure(state, abstract_state)
        except Exception as error:
            return None, f"unreadable ({type(error).__name__}: {_first_line(error)})", not _read_record(step_dir)
        if not bool(_all_finite(state)):
            return None, "it holds non-finite parameters or optimiser state", True
        return state, None, False

    def _quarantine(self, step: int) -> pathlib.Path:
        """Moves a refused step under ``corrupt/`` (kept for inspection, out of Orbax's sight)."""
        target = self.directory / CORRUPT_DIR / str(step)
        suffix = 1
        while target.exists():
            target = self.directory / CORRUPT_DIR / f"{step}.{suffix}"
            suffix += 1
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} checked")
        if self._is_primary and self._step_dir(step).exists():
            target.parent.mkdir(exist_ok=True)
            shutil.move(self._step_dir(step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} moved")
        self._good.discard(step)
        self._manager.reload()
        return target


def file_checksums(step_dir: pathlib.Path) -> dict[str, str]:
    """SHA-256 of every file under ``step_dir`` (relative POSIX paths), the checksum record excluded."""
    checksums = {}
    for path in sorted(step_dir.rglob("*")):
        relative = path.relative_to(step_dir).as_posix()
        if path.is_file() and relative != CHECKSUMS_FILE:
            digest = hashlib.sha256()
            with open(path, "rb") as file:
                while chunk := file.read(_HASH_CHUNK):
                    digest.update(chunk)
            checksums[relative] = digest.hexdigest()
    return checksums


def verify_checksums(step_dir: pathlib.Path) -> str | None:
    """None when the files match the recorded checksums (or none were recorded), else what differs."""
    record = _read_record(step_dir)
    if not record:
        return None
    expected = record.get("sha256")
    if not isinstance(expected, dict):
        return f"its {CHECKSUMS_FILE} is unreadable"
    actual = file_checksums(step_dir)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            return f"file {name} is missing"
        if name not in expected:
            return f"file {name} was not part of the checkpoint"
        if actual[name] != expected[name]:
            return f"file {name} does not match its checksum (corrupt)"
    return None


def _read_record(step_dir: pathlib.Path) -> dict:
    """The checksum record of a step ({} when there is none; ``sha256`` None when it is unreadable)."""
    path = step_dir / CHECKSUMS_FILE
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return {"sha256": None}
    return record if isinstance(record, dict) else {"sha256": None}


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= 200 else line[:197] + "..."


def _check_structure(state: Any, abstract_state: Any) -> None:
    """Raises if the restored tree does not match the expected structure and shapes."""
    restored_shapes = jax.tree.map(lambda x: tuple(x.shape), state)
    expected_shapes = jax.tree.map(lambda x: tuple(x.shape), abstract_state)
    if restored_shapes != expected_shapes:
        raise CheckpointError(f"checkpoint tree does not match the model: {restored_shapes} vs {expected_shapes}")
