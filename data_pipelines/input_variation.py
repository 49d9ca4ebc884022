"""What an example's input views go through after loading: view count, corruption, random features.

``InputVariation.from_config(config.data)`` bundles ``view_sampling.ViewCounts``,
``corruption.Corruption`` and (``data.feature_source = "random_encoder"``) the
``random_features.RandomFeatureEncoder``; with the defaults it does nothing and draws nothing.
The randomness comes from the pipeline's per-example generator: one child generator per example,
drawn only when corruption is on.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from avat3r_jax.spec import from_stored
from data_pipelines.corruption import Corruption
from data_pipelines.random_features import RandomFeatureEncoder
from data_pipelines.view_sampling import ViewCounts, mark_present_views


@dataclasses.dataclass(frozen=True)
class InputVariation:
    view_counts: ViewCounts | None = None
    corruption: Corruption = dataclasses.field(default_factory=Corruption)
    feature_encoder: RandomFeatureEncoder | None = None

    @classmethod
    def from_config(cls, data) -> InputVariation:
        encoder = None
        if data.feature_source == "random_encoder":
            encoder = RandomFeatureEncoder(int(data.feature_encoder_seed), int(data.feature_channels))
        return cls(ViewCounts.from_config(data), Corruption.from_config(data), encoder)

    def draw(self, rng: np.random.Generator, max_views: int) -> tuple[int, np.random.Generator | None]:
        """The example's number of present views and its corruption generator (None when off)."""
        present = max_views if self.view_counts is None else self.view_counts.sample(rng)
        view_rng = np.random.default_rng(rng.integers(2**63)) if self.corruption.active else None
        return present, view_rng

    def vary_view(self, example: dict[str, np.ndarray], slot: int, view_rng: np.random.Generator | None) -> None:
        """Replaces the features and corrupts the position map of loaded input view ``slot`` in place."""
        if self.feature_encoder is not None:
            self.feature_encoder(from_stored("images", example["images"][slot]), example["features"][slot])
        if view_rng is not None:
            self.corruption.apply(example["posmaps"][slot], example["posmap_valid"][slot], example["world_to_cam"][slot], view_rng)

    @staticmethod
    def finish(example: dict[str, np.ndarray], present: int) -> None:
        """Marks the first ``present`` slots present and clears the others."""
        mark_present_views(example, present)


NO_VARIATION = InputVariation()  # every view present, no corruption, the records' features
