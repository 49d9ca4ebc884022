"""How many input views an example has: 1 to ``V`` drawn per example, in ``V`` static slots.

``data.view_count_probs`` gives P(1 view), ..., P(V views); empty puts all mass on ``V`` (no draw
is made, so such configs see the same random stream as before the option existed). The present
views fill the first slots; absent slots hold zeros and slot 0's camera, and ``input_view_valid [V]``
marks them 0 (the model ignores them: ``avat3r_jax/model/view_mask.py``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# The example entries with one slot per input view, cleared in absent slots.
VIEW_MAPS = ("images", "masks", "posmaps", "posmap_valid", "features")
VIEW_CAMERAS = ("K", "world_to_cam")


@dataclasses.dataclass(frozen=True)
class ViewCounts:
    """The distribution of view counts ``1..max_views``: ``probs[k - 1]`` = P(k views)."""

    max_views: int
    probs: tuple[float, ...] = ()

    @classmethod
    def from_config(cls, data) -> ViewCounts:
        return cls(int(data.num_input_views), tuple(float(p) for p in data.view_count_probs))

    @property
    def varies(self) -> bool:
        return bool(self.probs) and self.probs[-1] < 1.0

    def sample(self, rng: np.random.Generator) -> int:
        """A view count in ``1..max_views`` (``max_views`` without a draw when the count never varies)."""
        if not self.varies:
            return self.max_views
        p = np.asarray(self.probs, np.float64)
        return int(rng.choice(self.max_views, p=p / p.sum())) + 1


def mark_present_views(example: dict[str, np.ndarray], present: int) -> None:
    """Sets ``example["input_view_valid"] [V]`` and clears the slots from ``present`` on in place."""
    slots = example["images"].shape[0]
    valid = np.zeros(slots, np.float32)
    valid[:present] = 1.0
    example["input_view_valid"] = valid
    for key in VIEW_MAPS:
        example[key][present:] = 0.0
    for key in VIEW_CAMERAS:
        example[key][present:] = example[key][0]
