"""The full-frame baselines AdaFocus is measured against (paper Sec. 4.1, Table 1): the same backbones with no
policy and no patch, f_L on every whole frame.

- ``glance_backbone`` set: MobileNetV2 + ResNet-50 on all full frames, f_C on ``[e_G-bar, e_L-bar]`` (AdaFocus with
  P = H = W, the upper bound on its cost);
- ``glance_backbone=None``: ResNet-50 alone, f_C on e_L-bar.

f_C is the same classifier as AdaFocus's (Eq. 4), so the only difference in cost is f_L's input size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor

from adafocus_pl.models.classifier import build_classifier
from adafocus_pl.models.contract import (
    Capabilities,
    FlopsProbe,
    NetOutput,
    PatchRequest,
    SkipRequest,
    VideoNet,
    register_architecture,
)
from adafocus_pl.models.patches import frame_pair
from adafocus_pl.models.registry import create_backbone


@register_architecture("full_frame")
class FullFrameNet(VideoNet):
    """f_G (optional) and f_L over all frames in one batch each, then f_C: logits ``[B, T, K]``. It has no
    policy: every patch policy but "none" means the whole frame."""

    shape_keys = ("architecture", "num_classes", "glance_backbone", "local_backbone", "classifier")
    supports_skip_policy = False

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
        self.patch_size = self.frame_hw[0]  # f_L's input is the whole frame
        self.capabilities = Capabilities(has_policy=False, has_skip_policy=False, per_clip=False,
                                         uses_glance_features=self.glance is not None, crops_patches=False)

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

    def recognise(self, frames: Tensor, patches: PatchRequest, skip: SkipRequest,
                  focus_frames: Tensor | None) -> NetOutput:
        """``frames [B, T, 3, H, W]`` -> logits ``[B, T, K]`` with both backbones on every whole frame."""
        if not patches.policy.uses_local:
            raise ValueError("a full-frame baseline always runs f_L (patch_policy=none is for patch models)")
        glance, local = self.features(frames)
        return NetOutput(self.classifier(self.classifier_inputs(glance, local)), glance, local)

    def flops_probes(self) -> dict[str, FlopsProbe]:
        """One whole frame through f_G (if any) and f_L, one step of f_C."""
        param = next(self.parameters())
        zeros = partial(torch.zeros, device=param.device, dtype=param.dtype)
        frame = zeros(1, 3, *self.frame_hw)
        probes = {"local": FlopsProbe(self.local, lambda f, x: f(x), (frame,)),
                  "classifier": FlopsProbe(self.classifier, lambda c, x: c.step(x)[0],
                                           (zeros(1, self.classifier.in_features),))}
        if self.glance is not None:
            probes["glance"] = FlopsProbe(self.glance, lambda g, x: g(x), (frame,))
        return probes
