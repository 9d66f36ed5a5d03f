"""TSN segment sampling (as the authors' release samples clips): T equal segments, one frame from each.

- ``train``: one uniformly random frame in each segment;
- ``val`` / ``test``: the centre frame of each segment (for an even length, the one just after the centre,
  as in the release's ``int(tick / 2 + tick * k)``).

Segment ``k`` covers frames ``[floor(k N / T), floor((k + 1) N / T))``, so all N frames are covered and segment
lengths differ by at most one frame. Videos with fewer than T frames take every frame, then repeat the last one.
"""

from __future__ import annotations

import torch

SAMPLING_MODES = ("train", "val", "test")


class SegmentSampler:
    """Return the 0-based frame indices of one clip of ``num_segments`` frames."""

    def __init__(self, num_segments: int, mode: str = "train"):
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        if mode not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {mode!r}; use one of {SAMPLING_MODES}")
        self.num_segments = num_segments
        self.mode = mode

    def __repr__(self) -> str:
        return f"SegmentSampler(num_segments={self.num_segments}, mode={self.mode!r})"

    def __call__(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        """Indices in ``[0, num_frames)``, non-decreasing; ``generator`` drives the train-mode draws."""
        if num_frames < 1:
            raise ValueError(f"cannot sample a clip from a video with {num_frames} frames")
        t = self.num_segments
        if num_frames < t:  # short video: every frame, then the last one repeated
            return list(range(num_frames)) + [num_frames - 1] * (t - num_frames)
        starts = torch.arange(t + 1, dtype=torch.int64) * num_frames // t  # exact integer floor(k N / T)
        lengths = starts[1:] - starts[:-1]  # >= 1 since N >= T
        if self.mode == "train":
            offsets = (torch.rand(t, generator=generator, dtype=torch.float64) * lengths).long()
            offsets = torch.minimum(offsets, lengths - 1)  # guard against rand() rounding up to 1.0
        else:
            offsets = lengths // 2  # = the release's int(tick / 2 + tick * k) when T divides N
        return (starts[:-1] + offsets).tolist()


class GlanceFocusSampler:
    """Two TSN clips of one video, concatenated: ``num_segments`` glance frames, then ``num_focus_segments`` focus
    frames (AdaFocus-TSM, paper Sec. 4.2: 8 frames for f_G, 12 for f_L). Both are drawn over the whole video."""

    def __init__(self, num_segments: int, num_focus_segments: int, mode: str = "train"):
        self.glance = SegmentSampler(num_segments, mode)
        self.focus = SegmentSampler(num_focus_segments, mode)
        self.num_segments, self.num_focus_segments, self.mode = num_segments, num_focus_segments, mode

    def __repr__(self) -> str:
        return (f"GlanceFocusSampler(num_segments={self.num_segments}, num_focus_segments={self.num_focus_segments}, "
                f"mode={self.mode!r})")

    def __call__(self, num_frames: int, generator: torch.Generator | None = None) -> list[int]:
        return self.glance(num_frames, generator) + self.focus(num_frames, generator)
