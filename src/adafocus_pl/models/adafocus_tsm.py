"""AdaFocus-TSM (paper Sec. 4.2, Table 3): AdaFocus on top of temporal-shift backbones, for Something-Something.

- f_G: a TSM backbone (MobileNetV2) over ``glance_frames`` full frames (8);
- pi: the recurrent policy of Sec. 3.1 (unchanged architecture) reads all glance frames, then picks **one patch
  location for the whole video** from its last state (categorical over the grid; the release's continuous Gaussian
  location with ``location_policy="gaussian"``);
- f_L: a TSM backbone (ResNet-50) over the P x P patch at that location in each of ``focus_frames`` frames (12);
- f_C: one linear layer on ``[mean_t e_G-bar, mean_t e_L-bar]``. By linearity this equals averaging the linear
  layer's frame-wise predictions (logits), the TSM design the paper follows.

The full-frame baselines of Table 3 are the same class with ``location_policy="full"`` (f_L sees whole frames, no
pi): TSM+ (both backbones, ``focus_frames = glance_frames``) and TSM (``use_glance=False``: ResNet-50 alone).

Outputs are :class:`~adafocus_pl.models.contract.NetOutput` with one step: ``logits [B, 1, K]``; ``actions``,
``policy_logits``, ``values`` have one entry per video; ``offsets [B, T_L, 2]`` repeat the video's location for
every focus frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, Normal

from adafocus_pl.models.contract import (
    Capabilities,
    FlopsProbe,
    NetOutput,
    PatchRequest,
    SkipRequest,
    VideoNet,
    feature_map_hw,
    register_architecture,
)
from adafocus_pl.models.patch_policies import get_patch_policy
from adafocus_pl.models.patches import check_patch_size, crop_patches, frame_pair, grid_offsets
from adafocus_pl.models.policy import PatchPolicy, categorical_actions, choose_patches
from adafocus_pl.models.registry import create_backbone

LOCATION_POLICIES = ("categorical", "gaussian", "full")


class ConcatLinearClassifier(nn.Module):
    """f_C of AdaFocus-TSM: ``Dropout -> Linear`` on the clip-averaged ``[e_G-bar, e_L-bar]`` -> logits ``[B, K]``."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.dropout(features))


@register_architecture("adafocus_tsm")
class AdaFocusTSMNet(VideoNet):
    """AdaFocus-TSM and the TSM / TSM+ baselines (see the module docstring), built from plain values.

    Frames are ``[B, T_G, 3, H, W]`` (glance) and ``focus_frames [B, T_L, 3, H, W]`` (focus; the glance frames
    when None, then T_G must equal T_L). ``temporal_shift=False`` builds the same network without TSM (the
    no-shift ablation).
    """

    shape_keys = ("architecture", "num_classes", "patch_size", "glance_backbone", "local_backbone", "grid_size",
                  "location_policy", "glance_frames", "focus_frames", "temporal_shift", "use_glance")
    # AdaFocus+ (frame skipping) is not defined for one location per video: paper Sec. 4.2 evaluates AdaFocus only
    supports_skip_policy = False

    def __init__(
        self,
        num_classes: int,
        patch_size: int,
        frame_size: int | Sequence[int] = 224,
        glance_frames: int = 8,
        focus_frames: int | None = 12,
        temporal_shift: bool = True,
        shift_fold_div: int = 8,
        glance_backbone: str = "mobilenet_v2",
        local_backbone: str = "resnet50",
        glance_kwargs: dict[str, Any] | None = None,
        local_kwargs: dict[str, Any] | None = None,
        glance_pretrained: str | None = None,
        local_pretrained: str | None = None,
        use_glance: bool = True,
        location_policy: str = "categorical",
        grid_size: int = 7,
        policy_conv_channels: int = 32,
        policy_hidden: int = 1024,
        location_std: float = 0.25,
        dropout: float = 0.5,
        gaussian_std: float = 0.25,
    ):
        super().__init__()
        if location_policy not in LOCATION_POLICIES:
            raise ValueError(f"model.location_policy must be one of {LOCATION_POLICIES}, got {location_policy!r}")
        if location_policy != "full" and not use_glance:
            raise ValueError("model.use_glance=false leaves the policy nothing to look at: it is only for the "
                             "full-frame TSM baseline (model.location_policy=full)")
        self.frame_hw = frame_pair(frame_size)
        self.glance_hw = None
        self.full_frame = location_policy == "full"
        self.patch_size = self.frame_hw[0] if self.full_frame else int(patch_size)
        if self.full_frame and self.frame_hw[0] != self.frame_hw[1]:
            raise ValueError(f"location_policy=full needs square frames, got {self.frame_hw}")
        if not self.full_frame:
            check_patch_size(self.frame_hw, self.patch_size)
        self.glance_frames = int(glance_frames)
        self.focus_frames = self.glance_frames if focus_frames is None else int(focus_frames)
        if min(self.glance_frames, self.focus_frames) < 1:
            raise ValueError(f"glance_frames and focus_frames must be >= 1, got {glance_frames}, {focus_frames}")
        self.location_policy = location_policy
        self.grid_size = int(grid_size)
        self.location_std = float(location_std)
        self.gaussian_std = float(gaussian_std)

        def backbone(name, pretrained, kwargs, frames):
            shift = frames if temporal_shift else None
            return create_backbone(name, pretrained=pretrained, temporal_shift=shift, shift_fold_div=shift_fold_div,
                                   **dict(kwargs or {}))

        self.glance = backbone(glance_backbone, glance_pretrained, glance_kwargs, self.glance_frames) if use_glance \
            else None
        self.local = backbone(local_backbone, local_pretrained, local_kwargs, self.focus_frames)
        self.register_buffer("grid", grid_offsets(self.grid_size, self.frame_hw, self.patch_size)
                             if not self.full_frame else torch.zeros(1, 2, dtype=torch.long), persistent=False)
        self.policy = None
        if not self.full_frame:
            self.glance_map_hw = feature_map_hw(self.glance, self.frame_hw, frames=self.glance_frames)
            actions = 2 if location_policy == "gaussian" else self.grid_size**2
            self.policy = PatchPolicy(self.glance.num_features, self.glance_map_hw, actions,
                                      conv_channels=policy_conv_channels, hidden=policy_hidden)
        in_features = self.local.num_features + (self.glance.num_features if use_glance else 0)
        self.classifier = ConcatLinearClassifier(in_features, num_classes, dropout=dropout)
        self.capabilities = Capabilities(has_policy=self.policy is not None, has_skip_policy=False, per_clip=True,
                                         uses_glance_features=use_glance, crops_patches=not self.full_frame,
                                         separate_focus_frames=not self.full_frame)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def num_actions(self) -> int:
        return 0 if self.policy is None else self.policy.num_actions

    def _check(self, frames: Tensor, steps: int, what: str) -> None:
        if frames.dim() != 5 or frames.shape[1] != steps or frames.shape[2] != 3 or \
                tuple(frames.shape[-2:]) != self.frame_hw:
            raise ValueError(
                f"expected {what} frames [B, {steps}, 3, {self.frame_hw[0]}, {self.frame_hw[1]}] (model.{what}_frames"
                f" and frame_size; set data.num_segments / data.num_focus_segments to match), got {list(frames.shape)}"
            )

    # ------------------------------------------------------------------------------------------ building blocks
    def glance_maps(self, frames: Tensor) -> Tensor:
        """e_G ``[B, T_G, C, h, w]``: the TSM f_G over all B*T_G frames at once."""
        self._check(frames, self.glance_frames, "glance")
        return self.glance.forward_features(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])

    def policy_rollout(self, glance_maps: Tensor) -> tuple[Tensor, Tensor]:
        """pi reads all glance frames; its last state decides: ``(logits [B, 1, A], values [B, 1])``."""
        logits, values = self.policy.rollout(glance_maps)
        return logits[:, -1:], values[:, -1:]

    def action_distribution(self, policy_logits: Tensor) -> Distribution:
        """pi's distribution over actions: categorical over the grid, or (release) a Gaussian location in
        ``[0, 1]^2`` with mean sigmoid(output) and std ``location_std``."""
        if self.location_policy == "gaussian":
            mean = torch.sigmoid(policy_logits.float())
            return Independent(Normal(mean, torch.full_like(mean, self.location_std)), 1)
        return Categorical(logits=policy_logits.float())

    def select_actions(self, policy_logits: Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """The mode of pi (test time) or a draw (training): grid indices ``[B, 1]`` or locations ``[B, 1, 2]``."""
        if self.location_policy == "gaussian":
            mean = torch.sigmoid(policy_logits.detach().float())
            if not sample:
                return mean
            return mean + self.location_std * torch.randn(mean.shape, generator=generator, device=mean.device)
        return categorical_actions(policy_logits, sample=sample, generator=generator)

    def actions_to_offsets(self, actions: Tensor) -> Tensor:
        """Grid indices ``[...]`` or Gaussian locations ``[..., 2]`` (clamped to [0, 1]) -> offsets ``[..., 2]``."""
        if self.location_policy == "gaussian":
            span = torch.tensor([self.frame_hw[0] - self.patch_size, self.frame_hw[1] - self.patch_size],
                                device=actions.device, dtype=torch.float32)
            return torch.round(actions.float().clamp(0.0, 1.0) * span).long()
        return self.grid[actions]

    def draw_offsets(self, patch_policy: str, batch: int, steps: int = 1, device=None,
                     generator: torch.Generator | None = None) -> Tensor:
        """One location per video ``[B, 1, 2]`` of a fixed policy (``steps`` is ignored: the location holds for the
        whole clip)."""
        return get_patch_policy(patch_policy).draw(batch, self.frame_hw, self.patch_size, generator=generator,
                                                   device=device, gaussian_std=self.gaussian_std)[:, None]

    def local_features(self, focus_frames: Tensor, offsets: Tensor | None) -> Tensor:
        """e_L-bar ``[B, T_L, F_L]``: the video's patch (``offsets [B, 1, 2]``) cropped from every focus frame in
        one gather, the TSM f_L over all of them at once; whole frames when ``offsets`` is None."""
        batch, steps = focus_frames.shape[:2]
        flat = focus_frames.flatten(0, 1)
        if offsets is not None:
            flat = crop_patches(flat, offsets.reshape(batch, 2).repeat_interleave(steps, 0), self.patch_size)
        return self.local(flat).unflatten(0, (batch, steps))

    def classify(self, glance_features: Tensor | None, local_features: Tensor) -> Tensor:
        """Logits ``[B, 1, K]`` from e_G-bar ``[B, T_G, F_G]`` and e_L-bar ``[B, T_L, F_L]`` (clip averages)."""
        parts = [local_features.mean(1)]
        if self.glance is not None:
            parts.insert(0, glance_features.mean(1))
        return self.classifier(torch.cat(parts, dim=-1))[:, None]

    def score_patches(self, frames: Tensor, glance_maps: Tensor, offsets: Sequence[Tensor],
                      keep: Tensor | None = None, focus_frames: Tensor | None = None) -> list[Tensor]:
        """f_C's logits ``[B, 1, K]`` for each alternative location ``offsets[i] [B, 1, 2]`` (Stage II's reward,
        Eq. 7: the policy's location against a random one); f_L runs once over all alternatives."""
        if keep is not None:
            raise ValueError("AdaFocus-TSM has no frame skipping (AdaFocus+): run it with plus=off")
        focus = frames if focus_frames is None else focus_frames
        glance = glance_maps.mean(dim=(-2, -1))
        n = len(offsets)
        local = self.local_features(focus.repeat(n, 1, 1, 1, 1), torch.cat(list(offsets)))
        return [self.classify(glance, part) for part in local.chunk(n)]

    # ------------------------------------------------------------------------------------------------- forward
    def recognise(self, frames: Tensor, patches: PatchRequest, skip: SkipRequest,
                  focus_frames: Tensor | None) -> NetOutput:
        """Offline recognition of a clip (see the class docstring), one location per video ("given": ``actions``
        or ``offsets [B, 1, 2]``)."""
        focus = frames if focus_frames is None else focus_frames
        self._check(focus, self.focus_frames, "focus")
        batch = frames.shape[0]
        glance_maps = glance_features = None
        if self.glance is not None:
            glance_maps = self.glance_maps(frames)
            glance_features = glance_maps.mean(dim=(-2, -1))
        actions = offsets = policy_logits = values = None
        if self.full_frame:
            if not patches.policy.uses_local:
                raise ValueError("a full-frame baseline always runs f_L (patch_policy=none is for patch models)")
        elif not patches.policy.uses_local:
            local = glance_features.new_zeros(batch, self.focus_frames, self.local.num_features)
            return NetOutput(self.classify(glance_features, local), glance_features, local)
        else:
            actions, offsets, policy_logits, values = choose_patches(
                self, patches, glance_maps,
                partial(self.draw_offsets, patches.policy.name, batch, device=frames.device,
                        generator=patches.generator))
            if patches.policy.kind == "given":  # one location per video: [B, 1, 2]
                offsets = offsets.reshape(batch, -1, 2)[:, :1]
        local = self.local_features(focus, offsets)
        clip_offsets = None if offsets is None else offsets.expand(batch, self.focus_frames, 2)
        return NetOutput(self.classify(glance_features, local), glance_features, local, actions=actions,
                         offsets=clip_offsets, policy_logits=policy_logits, values=values)

    def flops_probes(self) -> dict[str, FlopsProbe]:
        """One clip through each component (Table 3): f_G over the T_G glance frames, T_G steps of pi then its
        actor once, f_L over the T_L patches (whole frames for the TSM / TSM+ baselines), one linear f_C."""
        param = next(self.parameters())
        zeros = partial(torch.zeros, device=param.device, dtype=param.dtype)
        probes = {"local": FlopsProbe(self.local, lambda f, x: f(x),
                                      (zeros(self.focus_frames, 3, self.patch_size, self.patch_size),)),
                  "classifier": FlopsProbe(self.classifier, lambda c, x: c(x),
                                           (zeros(1, self.classifier.in_features),))}
        if self.glance is not None:
            probes["glance"] = FlopsProbe(self.glance, lambda g, x: g.forward_features(x),
                                          (zeros(self.glance_frames, 3, *self.frame_hw),))
        if self.policy is not None:
            maps = zeros(self.glance_frames, self.glance.num_features, *self.glance_map_hw)
            probes["policy"] = FlopsProbe(self.policy, _policy_over_clip, (maps, self.policy.init_state(1, param.device)))
        return probes


def _policy_over_clip(policy: PatchPolicy, glance_maps: Tensor, h: Tensor) -> Tensor:
    """AdaFocus-TSM's pi at inference: T_G steps over the glance maps ``[T_G, C, h, w]``, then its actor once."""
    for t in range(glance_maps.shape[0]):
        h = policy.gru(policy.encode(glance_maps[t:t + 1]), h)
    return policy.actor(h)
