"""Readers of real multi-view head releases (Ava-256, NeRSemble) into view-record datasets."""

from __future__ import annotations

from data_pipelines import storage
from data_pipelines.real import ava256, nersemble
from data_pipelines.real.common import SHEET_FILE, ConversionError

CONVERTERS = {"ava256": ava256.convert, "nersemble": nersemble.convert}


def format_layouts(info: storage.DatasetInfo) -> str:
    """Per recognised release: subjects, frames, views, skipped frames; then the conventions applied."""
    lines = [f"converted {info.source}:"]
    for release, counts in info.parameters.get("layouts", {}).items():
        lines.append(
            f"  {release}: {counts['subjects']} subjects, {counts['frames']} frames, {counts['views']} views, "
            f"{counts['skipped_frames']} frames skipped"
        )
    lines += [f"  {key}: {value}" for key, value in info.parameters.get("conventions", {}).items()]
    return "\n".join(lines)


__all__ = ["CONVERTERS", "SHEET_FILE", "ConversionError", "ava256", "format_layouts", "nersemble"]
