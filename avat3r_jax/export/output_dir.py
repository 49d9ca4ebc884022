"""Output folders of the commands: a non-empty one is refused unless overwriting was asked for,
and overwriting clears exactly what the command writes (stale files of an earlier run go, nothing else)."""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Sequence


class OutputDirError(ValueError):
    """The output folder holds files and overwriting was not asked for."""


def prepare_output_dir(out: str | pathlib.Path, outputs: Sequence[str], overwrite: bool) -> pathlib.Path:
    """Makes ``out`` ready for a command that writes ``outputs`` (file or folder names directly in it).

    A non-empty ``out`` is refused unless ``overwrite``; then each of ``outputs`` is removed first
    (a folder with everything in it), and any other file in ``out`` is left alone.
    """
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out={out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputDirError(
                f"--out={out} is not empty; pass --overwrite to replace the outputs of an earlier run ({', '.join(outputs)})"
            )
        for name in outputs:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out
