"""Assignment of (subject, frame) to stored splits: held-out identities and held-out expressions."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """The last ``test_subjects`` subjects are ``test``, the ``val_subjects`` before them ``val_subjects``.

    Of every remaining (training) subject, the last ``heldout_frames`` frames go to
    ``val_expressions`` and the rest to ``train``. Frames are the subject's video order, so the
    held-out expressions are a contiguous tail of the video, not interleaved neighbours of
    training frames.
    """

    num_subjects: int
    val_subjects: int
    test_subjects: int
    heldout_frames: int

    def __post_init__(self):
        if min(self.val_subjects, self.test_subjects, self.heldout_frames) < 0:
            raise ValueError(f"split sizes must be >= 0, got {self}")
        if self.num_subjects - self.val_subjects - self.test_subjects < 1:
            raise ValueError(
                f"{self.num_subjects} subjects leave none for training after {self.val_subjects} validation "
                f"and {self.test_subjects} test subjects"
            )

    def subject_split(self, subject: int) -> str:
        if not 0 <= subject < self.num_subjects:
            raise ValueError(f"subject {subject} out of range [0, {self.num_subjects})")
        if subject >= self.num_subjects - self.test_subjects:
            return "test"
        if subject >= self.num_subjects - self.test_subjects - self.val_subjects:
            return "val_subjects"
        return "train"

    def split_of(self, subject: int, frame: int, num_frames: int) -> str:
        """Stored split of frame ``frame`` of a subject whose video has ``num_frames`` frames."""
        split = self.subject_split(subject)
        if split != "train":
            return split
        if self.heldout_frames >= num_frames:
            raise ValueError(f"subject {subject} has {num_frames} frames; holding out {self.heldout_frames} leaves none for training")
        return "val_expressions" if frame >= num_frames - self.heldout_frames else "train"
