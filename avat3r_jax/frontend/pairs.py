"""Pairwise point-map predictions: what the DUSt3R network gives and global alignment consumes."""

from __future__ import annotations

import dataclasses
import itertools

import jax


def ordered_pairs(num_views: int) -> tuple[tuple[int, int], ...]:
    """Every ordered pair ``(i, j)``, ``i != j``, of ``num_views`` views (DUSt3R's symmetrized graph)."""
    if num_views < 2:
        raise ValueError(f"point maps need at least 2 views, got {num_views}")
    return tuple(itertools.permutations(range(num_views), 2))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PairPredictions:
    """DUSt3R's output for ``P`` image pairs at the network's resolution ``H x W``.

    ``pts_i [P, H, W, 3]``: view i's points in view i's camera frame; ``pts_j [P, H, W, 3]``: view j's
    points in view i's camera frame; ``conf_i``, ``conf_j [P, H, W]``: confidences (>= 1, DUSt3R's
    ``1 + exp(x)``). ``pairs``: the ``(i, j)`` view indices of each row (static).
    """

    pts_i: jax.Array
    conf_i: jax.Array
    pts_j: jax.Array
    conf_j: jax.Array
    pairs: tuple[tuple[int, int], ...] = dataclasses.field(metadata=dict(static=True))
