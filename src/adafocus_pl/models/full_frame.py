"""The full-frame baselines AdaFocus is measured against (paper Sec. 4.1, Table 1): the same backbones with no
policy and no patch, f_L on every whole frame.

- ``glance_backbone`` set: MobileNetV2 + ResNet-50 on all full frames, f_C on ``[e_G-bar, e_L-bar]`` (AdaFocus with
  P = H = W, the upper bound on its cost);
- ``glance_backbone=None``: ResNet-50 alone, f_C on e_L-bar.

f_C is the same classifier as AdaFocus's (Eq. 4), so the only difference in cost is f_L's input size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from adafocus_pl.models.classifier import build_classifier
from adafocus_pl.models.patches import frame_pair
from adafocus_pl.models.registry import create_backbone


class FullFrameNet(nn.Module):
    """f_G (optional) and f_L over all frames in one batch each, then f_C: logits ``[B, T, K]``."""

    def __init__(
        self,
        num_classes: int,
        frame_size: int | Sequence[int] = 224,
        glance_backbone: str | None = "mobilenet_v2",
        local_backbone: str = "resnet50",
        glance_kwargs: dict[str, Any] | None = None,
        local_kwargs: dict[str, Any] | None = None,
        classifier: str = "gru",
        classifier_hidden: int = 1024,
        dropout: float = 0.8,
    ):
        super().__init__()
        self.frame_hw = frame_pair(frame_size)
        self.glance = (None if glance_backbone is None
                       else create_backbone(glance_backbone, pretrained=None, **dict(glance_kwargs or {})))
        self.local = create_backbone(local_backbone, pretrained=None, **dict(local_kwargs or {}))
        in_features = self.local.num_features + (0 if self.glance is None else self.glance.num_features)
        self.classifier = build_classifier(classifier, in_features, num_classes, classifier_hidden, dropout)

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def classifier_inputs(self, glance_features: Tensor | None, local_features: Tensor) -> Tensor:
        """``[e_G-bar, e_L-bar]`` or e_L-bar alone (no f_G)."""
        return local_features if glance_features is None else torch.cat([glance_features, local_features], dim=-1)

    def features(self, frames: Tensor, glance: Callable[[Tensor], Tensor] | None = None,
                 local: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor | None, Tensor]:
        """e_G-bar (None without f_G) and e_L-bar ``[B, T, F]`` of ``frames [B, T, 3, H, W]``, each backbone over
        all B*T frames in one batch. ``glance`` / ``local`` run instead of the network's backbones (the fast
        inference path's prepared copies)."""
        if frames.dim() != 5 or tuple(frames.shape[-2:]) != self.frame_hw:
            raise ValueError(f"expected frames [B, T, 3, {self.frame_hw[0]}, {self.frame_hw[1]}], "
                             f"got {list(frames.shape)}")
        flat, batch_steps = frames.flatten(0, 1), frames.shape[:2]
        glance_features = None if self.glance is None else (glance or self.glance)(flat).unflatten(0, batch_steps)
        return glance_features, (local or self.local)(flat).unflatten(0, batch_steps)

    def forward(self, frames: Tensor) -> dict[str, Tensor | None]:
        """``frames [B, T, 3, H, W]`` -> ``{"logits": [B, T, K], "glance_features", "local_features"}``."""
        glance, local = self.features(frames)
        return {"logits": self.classifier(self.classifier_inputs(glance, local)), "glance_features": glance,
                "local_features": local}
