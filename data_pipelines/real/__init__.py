"""Readers of real multi-view head layouts (Ava-256, NeRSemble) into view-record datasets."""

from data_pipelines.real import ava256, nersemble

CONVERTERS = {"ava256": ava256.convert, "nersemble": nersemble.convert}

__all__ = ["CONVERTERS", "ava256", "nersemble"]
