"""Counts read off an optimised HLO module's text (``jax.stages.Compiled.as_text()``)."""

from __future__ import annotations

import re


def fusion_fan_ins(hlo_text: str) -> list[int]:
    """How many operands each fusion of an optimised HLO module takes."""
    return [operands.count("%") for operands in re.findall(r"= \S+ fusion\((.*?)\), kind=", hlo_text)]
