"""AdaFocusNet: glance (f_G) -> policy (pi) -> batched crop -> local CNN (f_L) -> classifier (f_C).

Paper Sec. 3.1 (Fig. 2) for the components, Sec. 3.4 for the offline path that runs f_G and f_L over all frames in
one batch. Frames are float ``[B, T, 3, H, W]``. With ``skip_policy=True`` the network is AdaFocus+ (Sec. 3.3,
Fig. 4): a second recurrent policy pi' decides per frame whether f_L runs at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution

from adafocus_pl.models.classifier import build_classifier
from adafocus_pl.models.patches import (
    check_patch_size,
    crop_patches,
    fixed_policy_offsets,
    frame_pair,
    grid_offsets,
)
from adafocus_pl.models.policy import PatchPolicy, categorical_actions, choose_patches
from adafocus_pl.models.registry import create_backbone
from adafocus_pl.models.skipping import keep_mask

PATCH_POLICIES = ("learned", "random", "centre", "gaussian", "given", "none")


class AdaFocusNet(nn.Module):
    """The AdaFocus network, built from plain values (Hydra-instantiable, savable as hparams).

    Sub-modules: ``glance`` (f_G), ``local`` (f_L), ``policy`` (pi), ``classifier`` (f_C).
    ``frame_size`` is the (H, W) of the input frames; it fixes the candidate grid and the policy's input size.
    """

    locations_per_clip = None  # a patch location per frame (AdaFocus-TSM: one per video)

    def __init__(
        self,
        num_classes: int,
        patch_size: int,
        frame_size: int | Sequence[int] = 224,
        glance_backbone: str = "mobilenet_v2",
        local_backbone: str = "resnet50",
        glance_kwargs: dict[str, Any] | None = None,
        local_kwargs: dict[str, Any] | None = None,
        glance_pretrained: str | None = None,
        local_pretrained: str | None = None,
        glance_size: int | Sequence[int] | None = None,
        grid_size: int = 7,
        policy_conv_channels: int = 32,
        policy_hidden: int = 1024,
        classifier: str = "gru",
        classifier_hidden: int = 1024,
        dropout: float = 0.8,
        use_glance_features: bool = True,
        gaussian_std: float = 0.25,
        skip_policy: bool = False,
    ):
        super().__init__()
        self.frame_hw = frame_pair(frame_size)
        self.patch_size = int(patch_size)
        check_patch_size(self.frame_hw, self.patch_size)
        self.glance_hw = None if glance_size is None else frame_pair(glance_size)
        self.grid_size = int(grid_size)
        self.use_glance_features = bool(use_glance_features)
        self.gaussian_std = float(gaussian_std)

        self.glance = create_backbone(glance_backbone, pretrained=glance_pretrained, **dict(glance_kwargs or {}))
        self.local = create_backbone(local_backbone, pretrained=local_pretrained, **dict(local_kwargs or {}))
        self.register_buffer("grid", grid_offsets(self.grid_size, self.frame_hw, self.patch_size), persistent=False)

        self.glance_map_hw = self._glance_map_hw()
        self.policy = PatchPolicy(
            self.glance.num_features,
            self.glance_map_hw,
            self.grid_size**2,
            conv_channels=policy_conv_channels,
            hidden=policy_hidden,
        )
        # AdaFocus+ (Sec. 3.3): pi' has pi's inputs and architecture, one Bernoulli logit (Eq. 8)
        self.skip_policy = (
            PatchPolicy(self.glance.num_features, self.glance_map_hw, 1, conv_channels=policy_conv_channels,
                        hidden=policy_hidden)
            if skip_policy else None
        )
        in_features = self.local.num_features + (self.glance.num_features if self.use_glance_features else 0)
        self.classifier = build_classifier(classifier, in_features, num_classes, classifier_hidden, dropout)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def num_actions(self) -> int:
        return self.grid_size**2

    @property
    def has_skip_policy(self) -> bool:
        """True for AdaFocus+ (a pi' that can skip f_L on a frame)."""
        return self.skip_policy is not None

    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    @property
    def feature_dims(self) -> dict[str, int]:
        """Channel counts: ``glance`` (F_G), ``local`` (F_L) and ``classifier`` (f_C's input)."""
        return {
            "glance": self.glance.num_features,
            "local": self.local.num_features,
            "classifier": self.classifier.in_features,
        }

    @torch.no_grad()
    def _glance_map_hw(self) -> tuple[int, int]:
        was_training = self.glance.training
        self.glance.eval()
        probe = torch.zeros(1, 3, *(self.glance_hw or self.frame_hw))
        map_h, map_w = self.glance.forward_features(probe).shape[-2:]
        self.glance.train(was_training)
        return int(map_h), int(map_w)

    def _check_frames(self, frames: Tensor) -> None:
        if frames.dim() != 5 or frames.shape[2] != 3 or tuple(frames.shape[-2:]) != self.frame_hw:
            raise ValueError(
                f"expected frames [B, T, 3, {self.frame_hw[0]}, {self.frame_hw[1]}] (frame_size of the model), "
                f"got {list(frames.shape)}"
            )

    # ------------------------------------------------------------------------------------------ building blocks
    def glance_inputs(self, frames: Tensor) -> Tensor:
        """f_G's input ``[B*T, 3, h_G, w_G]``: all frames flattened, resized to ``glance_size`` when it is set."""
        flat = frames.flatten(0, 1)
        if self.glance_hw is not None and tuple(flat.shape[-2:]) != self.glance_hw:
            flat = F.interpolate(flat, size=self.glance_hw, mode="bilinear", align_corners=False, antialias=True)
        return flat

    def glance_maps(self, frames: Tensor) -> Tensor:
        """Eq. (1): e_G ``[B, T, C, h, w]``, f_G run over all B*T frames at once."""
        return self.glance.forward_features(self.glance_inputs(frames)).unflatten(0, frames.shape[:2])

    def policy_rollout(self, glance_maps: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. (3): pi's ``(logits [B, T, A], values [B, T])`` over a clip of e_G maps."""
        return self.policy.rollout(glance_maps)

    def skip_rollout(self, glance_maps: Tensor) -> tuple[Tensor, Tensor]:
        """Eq. (8): pi''s ``(logits [B, T], values [B, T])``; p_t^B = sigmoid(logit) is Pr(b_t = 1), keep the frame."""
        if self.skip_policy is None:
            raise RuntimeError("this network has no skip policy pi' (AdaFocus+ is off: build it with skip_policy=True)")
        logits, values = self.skip_policy.rollout(glance_maps)
        return logits.squeeze(-1), values

    def actions_to_offsets(self, actions: Tensor) -> Tensor:
        """Grid candidate indices ``[...]`` (row-major) -> top-left ``(y, x)`` offsets ``[..., 2]``."""
        return self.grid[actions]

    def crop(self, frames: Tensor, offsets: Tensor) -> Tensor:
        """Patches ``[B, T, 3, P, P]`` at ``offsets [B, T, 2]``: one gather over B*T frames."""
        batch, steps = frames.shape[:2]
        patches = crop_patches(frames.flatten(0, 1), offsets.reshape(-1, 2), self.patch_size)
        return patches.unflatten(0, (batch, steps))

    def local_features(self, patches: Tensor, local: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Eq. (2) + pooling: e_L-bar ``[B, T, F_L]``, f_L run over all B*T patches at once. ``local`` runs f_L
        instead of ``self.local`` (the fast inference path's prepared copy)."""
        batch, steps = patches.shape[:2]
        return (local or self.local)(patches.flatten(0, 1)).unflatten(0, (batch, steps))

    def kept_local_features(self, frames: Tensor, offsets: Tensor, keep: Tensor,
                            local: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """AdaFocus+ (Sec. 3.3): e_L-bar ``[B, T, F_L]`` with f_L run on the kept frames only (``keep [B, T]``);
        skipped frames get zeros and never reach the crop or f_L. ``local`` as in :meth:`local_features`."""
        batch, steps = frames.shape[:2]
        kept = keep.reshape(-1).nonzero().squeeze(1)
        out = frames.new_zeros(batch * steps, self.local.num_features)
        if kept.numel():
            patches = crop_patches(frames.flatten(0, 1), offsets.reshape(-1, 2)[kept], self.patch_size,
                                   frame_index=kept)
            out = out.index_put((kept,), (local or self.local)(patches).to(out.dtype))
        return out.unflatten(0, (batch, steps))

    def classifier_inputs(self, glance_features: Tensor, local_features: Tensor, keep: Tensor | None = None) -> Tensor:
        """``[e_G-bar, e_L-bar]`` (Eq. 4), or e_L-bar alone without glance reuse (Table 4).

        ``keep`` ``[...]`` (0/1) multiplies e_L-bar, as AdaFocus+'s b_t does (Eq. 9).
        """
        if keep is not None:
            local_features = local_features * keep.unsqueeze(-1).to(local_features.dtype)
        if not self.use_glance_features:
            return local_features
        return torch.cat([glance_features, local_features], dim=-1)

    def classify(self, glance_features: Tensor, local_features: Tensor, keep: Tensor | None = None) -> Tensor:
        """Eq. (4): per-step logits ``[B, T, K]`` from e_G-bar ``[B, T, F_G]`` and e_L-bar ``[B, T, F_L]``."""
        return self.classifier(self.classifier_inputs(glance_features, local_features, keep))

    def action_distribution(self, policy_logits: Tensor) -> Distribution:
        """pi's categorical distribution over the grid candidates (Eq. 3), for PPO's log-probabilities."""
        return Categorical(logits=policy_logits.float())

    def score_patches(self, frames: Tensor, glance_maps: Tensor, offsets: Sequence[Tensor],
                      keep: Tensor | None = None, focus_frames: Tensor | None = None) -> list[Tensor]:
        """f_C's logits ``[B, T, K]`` for alternative patches scored from the same h_{t-1} (Stage II's rewards).

        ``offsets[0]`` (the policy's patches ``[B, T, 2]``) advances f_C's state, the others (e.g. one random patch
        per frame, Eq. 7) are only scored; f_L runs once over all of them. With AdaFocus+'s ``keep [B, T]`` (b_t)
        the list also ends with the logits for zero local features (the frame skipped, Eq. 10), and the state
        advances with the policy's patch where b_t = 1 and with zeros where b_t = 0.
        """
        if focus_frames is not None:
            raise ValueError("AdaFocusNet glances at and focuses on the same frames: leave data.num_focus_segments null")
        batch, steps = frames.shape[:2]
        n = len(offsets)
        local = self.local_features(torch.cat([self.crop(frames, o) for o in offsets])).chunk(n)
        glance = glance_maps.mean(dim=(-2, -1))
        zeros = local[0].new_zeros(local[0][:, 0].shape)
        state = self.classifier.init_state(batch, frames.device)
        scores: list[list[Tensor]] = [[] for _ in range(n + (keep is not None))]
        for t in range(steps):
            stepped = [self.classifier.step(self.classifier_inputs(glance[:, t], part[:, t]), state) for part in local]
            for i, (logits, _) in enumerate(stepped):
                scores[i].append(logits)
            new_state = stepped[0][1]
            if keep is not None:
                logits_skip, state_skip = self.classifier.step(self.classifier_inputs(glance[:, t], zeros), state)
                scores[-1].append(logits_skip)
                new_state = torch.where(keep[:, t, None], new_state, state_skip)
            state = new_state
        return [torch.stack(s, dim=1) for s in scores]

    def select_actions(self, policy_logits: Tensor, sample: bool = False, generator: torch.Generator | None = None):
        """Argmax of pi (test time) or a draw from its categorical distribution (training), shape ``[...]``."""
        return categorical_actions(policy_logits, sample=sample, generator=generator)

    def fixed_offsets(
        self, patch_policy: str, batch: int, steps: int, device, generator: torch.Generator | None = None
    ) -> Tensor:
        """Offsets ``[B, T, 2]`` of the fixed policies "random" (Eq. 5), "centre" and "gaussian" (Table 5)."""
        offsets = fixed_policy_offsets(patch_policy, batch * steps, self.frame_hw, self.patch_size,
                                       gaussian_std=self.gaussian_std, generator=generator, device=device)
        return offsets.reshape(batch, steps, 2)

    # ------------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        frames: Tensor,
        patch_policy: str = "learned",
        actions: Tensor | None = None,
        sample: bool = False,
        generator: torch.Generator | None = None,
        offsets: Tensor | None = None,
        keep: Tensor | None = None,
        keep_threshold: float | None = None,
        batch_keep_ratio: float | None = None,
        focus_frames: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """Offline path (Sec. 3.4): f_G over all frames, pi steps on cheap features, one crop, f_L over all patches,
        f_C steps.

        ``patch_policy``: "learned" (argmax of pi, or a draw when ``sample``), "random", "centre", "gaussian",
        "given" (``actions [B, T]`` grid indices, or raw ``offsets [B, T, 2]``), or "none" (glance only: f_L never
        runs, e_L-bar is zero). Returns a dict with ``logits
        [B, T, K]``, ``actions [B, T]`` (None unless on the grid), ``offsets [B, T, 2]``, ``policy_logits
        [B, T, A]`` and ``values [B, T]`` (None for non-learned policies), ``glance_features [B, T, F_G]``,
        ``local_features [B, T, F_L]``.

        AdaFocus+ (Sec. 3.3): ``keep [B, T]`` (bool) gives b_t directly; otherwise, with a pi' and a
        ``keep_threshold`` rho, b_t = [p_t^B >= rho]. Skipped frames are not cropped and never reach f_L; their e_L-bar
        is zero. The dict then also has ``keep [B, T]``, ``skip_logits`` and ``skip_values`` ``[B, T]``.
        ``batch_keep_ratio`` eta (training): keep the top eta of this batch's p_t^B (rho solved on the batch).
        """
        if patch_policy not in PATCH_POLICIES:
            raise ValueError(f"patch_policy must be one of {PATCH_POLICIES}, got {patch_policy!r}")
        if focus_frames is not None:
            raise ValueError("AdaFocusNet glances at and focuses on the same frames: leave data.num_focus_segments "
                             "null (separate focus frames are for AdaFocus-TSM, model=adafocus_tsm)")
        self._check_frames(frames)
        batch, steps = frames.shape[:2]
        glance_maps = self.glance_maps(frames)
        glance_features = glance_maps.mean(dim=(-2, -1))

        if patch_policy == "none":
            local_features = glance_features.new_zeros(batch, steps, self.local.num_features)
            return {"logits": self.classify(glance_features, local_features), "actions": None, "offsets": None,
                    "policy_logits": None, "values": None, "glance_features": glance_features,
                    "local_features": local_features, "keep": None, "skip_logits": None, "skip_values": None}
        actions, offsets, policy_logits, values = choose_patches(
            self, patch_policy, glance_maps, partial(self.fixed_offsets, patch_policy, batch, steps, frames.device,
                                                     generator),
            actions=actions, offsets=offsets, sample=sample, generator=generator)

        skip_logits = skip_values = None
        if self.skip_policy is not None:
            skip_logits, skip_values = self.skip_rollout(glance_maps)
            if keep is None:
                keep = keep_mask(skip_logits, keep_threshold, batch_keep_ratio)
        elif keep_threshold is not None or batch_keep_ratio is not None:
            raise ValueError("keep_threshold needs AdaFocus+'s skip policy pi' (model.skip_policy=true)")
        if keep is None:
            local_features = self.local_features(self.crop(frames, offsets))
        else:
            keep = keep.to(device=frames.device, dtype=torch.bool)
            local_features = self.kept_local_features(frames, offsets, keep)
        logits = self.classify(glance_features, local_features)
        return {
            "logits": logits,
            "actions": actions,
            "offsets": offsets,
            "policy_logits": policy_logits,
            "values": values,
            "glance_features": glance_features,
            "local_features": local_features,
            "keep": keep,
            "skip_logits": skip_logits,
            "skip_values": skip_values,
        }

    def online(self, **kwargs) -> OnlineAdaFocus:
        """An ``OnlineAdaFocus`` stepping this network frame by frame."""
        return OnlineAdaFocus(self, **kwargs)


class OnlineAdaFocus:
    """Online recognition (Sec. 3.1): one frame at a time, keeping pi's and f_C's hidden states.

    ``step(frame [B, 3, H, W]) -> logits [B, K]``, the prediction after this frame. In eval mode with the argmax
    policy it reproduces the offline ``AdaFocusNet.forward`` logits at every step.
    """

    def __init__(
        self,
        net: AdaFocusNet,
        patch_policy: str = "learned",
        sample: bool = False,
        generator: torch.Generator | None = None,
        keep_threshold: float | None = None,
    ):
        if patch_policy not in PATCH_POLICIES or patch_policy in ("given", "none"):
            raise ValueError(f"online patch_policy must be learned/random/centre/gaussian, got {patch_policy!r}")
        if keep_threshold is not None and not net.has_skip_policy:
            raise ValueError("keep_threshold needs AdaFocus+'s skip policy pi' (model.skip_policy=true)")
        self.net, self.patch_policy, self.sample, self.generator = net, patch_policy, sample, generator
        self.keep_threshold = keep_threshold
        self.reset()

    def reset(self, batch_size: int | None = None) -> None:
        """Start a new clip: zero pi's and f_C's hidden states (built at the first step when no batch size)."""
        self.policy_state = self.classifier_state = self.skip_state = None
        self.last_actions = self.last_offsets = self.last_keep = None
        self.steps = 0
        if batch_size is not None:
            device = self.net.grid.device
            self.policy_state = self.net.policy.init_state(batch_size, device)
            self.classifier_state = self.net.classifier.init_state(batch_size, device)

    def step(self, frame: Tensor) -> Tensor:
        """Process one frame ``[B, 3, H, W]``; return f_C's logits ``[B, K]`` given frames 1..t."""
        net = self.net
        frames = frame.unsqueeze(1)  # [B, 1, 3, H, W]
        net._check_frames(frames)
        glance_maps = net.glance_maps(frames)
        glance_features = glance_maps.mean(dim=(-2, -1))[:, 0]
        if self.patch_policy == "learned":
            policy_logits, _, self.policy_state = net.policy.step(glance_maps[:, 0], self.policy_state)
            actions = net.select_actions(policy_logits, sample=self.sample, generator=self.generator)
            offsets = net.actions_to_offsets(actions)
            self.last_actions = actions
        else:
            offsets = net.fixed_offsets(self.patch_policy, frame.shape[0], 1, frame.device, self.generator)[:, 0]
        self.last_offsets = offsets
        if self.keep_threshold is None:
            local_features = net.local_features(net.crop(frames, offsets[:, None]))[:, 0]
        else:  # AdaFocus+: pi' steps on the same e_G; f_L runs only where p_t^B >= rho
            skip_logit, _, self.skip_state = net.skip_policy.step(glance_maps[:, 0], self.skip_state)
            keep = torch.sigmoid(skip_logit.squeeze(-1).float()) >= self.keep_threshold
            local_features = net.kept_local_features(frames, offsets[:, None], keep[:, None])[:, 0]
            self.last_keep = keep
        inputs = net.classifier_inputs(glance_features, local_features)
        logits, self.classifier_state = net.classifier.step(inputs, self.classifier_state)
        self.steps += 1
        return logits
