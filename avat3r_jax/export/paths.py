"""Containment of file names read from untrusted manifests (``inputs.json``, a bundle's manifest)."""

from __future__ import annotations

import pathlib
from typing import Any


def contained(directory: str | pathlib.Path, name: Any) -> pathlib.Path | None:
    """``directory / name`` resolved when ``name`` is a relative path that stays inside ``directory``, else None.

    Refused: non-strings, empty names, NUL or backslash characters, absolute paths (POSIX or
    Windows), any ``..`` part, and names that resolve out of ``directory`` through a symbolic link.
    Decided from the name and the links inside ``directory`` alone, before anything is read, so a
    refusal says nothing about whether the target exists.
    """
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        return None
    relative = pathlib.PurePosixPath(name)
    if relative.is_absolute() or pathlib.PureWindowsPath(name).is_absolute() or ".." in relative.parts:
        return None
    root = pathlib.Path(directory).resolve()
    target = (root / relative).resolve()
    return target if target.is_relative_to(root) else None
