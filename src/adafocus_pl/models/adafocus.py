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
from torch import Tensor
from torch.distributions import Categorical, Distribution

from adafocus_pl.models.classifier import build_classifier
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
from adafocus_pl.models.policy import PatchPolicy, categorical_actions, choose_patches, policy_decision
from adafocus_pl.models.registry import create_backbone
from adafocus_pl.models.skipping import keep_mask

# how glance_inputs resizes frames to glance_size: antialiased bilinear (ours; the paper does not say), or nearest
# neighbour, which is F.interpolate's default and so what the authors' release does
GLANCE_RESIZE_MODES = ("bilinear", "nearest")

@register_architecture("adafocus")
class AdaFocusNet(VideoNet):
    """The AdaFocus network, built from plain values (Hydra-instantiable, savable as hparams).

    Sub-modules: ``glance`` (f_G), ``local`` (f_L), ``policy`` (pi), ``classifier`` (f_C).
    ``frame_size`` is the (H, W) of the input frames; it fixes the candidate grid and the policy's input size.
    """

    shape_keys = ("architecture", "num_classes", "patch_size", "glance_backbone", "local_backbone", "grid_size",
                  "classifier")
    supports_skip_policy = True

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
        glance_resize: str = "bilinear",
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
        if glance_resize not in GLANCE_RESIZE_MODES:
            raise ValueError(f"model.glance_resize={glance_resize!r}: use 'bilinear' (antialiased, the default) or "
                             f"'nearest' (the authors' release); it applies only when model.glance_size differs "
                             f"from the frame size")
        self.glance_resize = glance_resize
        self.grid_size = int(grid_size)
        self.use_glance_features = bool(use_glance_features)
        self.gaussian_std = float(gaussian_std)

        self.glance = create_backbone(glance_backbone, pretrained=glance_pretrained, **dict(glance_kwargs or {}))
        self.local = create_backbone(local_backbone, pretrained=local_pretrained, **dict(local_kwargs or {}))
        self.register_buffer("grid", grid_offsets(self.grid_size, self.frame_hw, self.patch_size), persistent=False)

        self.glance_map_hw = feature_map_hw(self.glance, self.glance_hw or self.frame_hw)
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
        self.capabilities = Capabilities(has_policy=True, has_skip_policy=skip_policy, per_clip=False,
                                         uses_glance_features=self.use_glance_features)

    # ----------------------------------------------------------------------------------------------- properties
    @property
    def num_actions(self) -> int:
        return self.grid_size**2

    @property
    def feature_dims(self) -> dict[str, int]:
        """Channel counts: ``glance`` (F_G), ``local`` (F_L) and ``classifier`` (f_C's input)."""
        return {
            "glance": self.glance.num_features,
            "local": self.local.num_features,
            "classifier": self.classifier.in_features,
        }

    def check_frames(self, frames: Tensor) -> None:
        """Raise a clear error unless ``frames`` is ``[B, T, 3, H, W]`` at the model's frame size."""
        if frames.dim() != 5 or frames.shape[2] != 3 or tuple(frames.shape[-2:]) != self.frame_hw:
            raise ValueError(
                f"expected frames [B, T, 3, {self.frame_hw[0]}, {self.frame_hw[1]}] (frame_size of the model), "
                f"got {list(frames.shape)}"
            )

    # ------------------------------------------------------------------------------------------ building blocks
    def glance_inputs(self, frames: Tensor) -> Tensor:
        """f_G's input ``[B*T, 3, h_G, w_G]``: all frames flattened, resized to ``glance_size`` when it is set
        (``glance_resize``: antialiased bilinear, or the release's nearest neighbour)."""
        flat = frames.flatten(0, 1)
        if self.glance_hw is not None and tuple(flat.shape[-2:]) != self.glance_hw:
            if self.glance_resize == "nearest":
                flat = F.interpolate(flat, size=self.glance_hw, mode="nearest")
            else:
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

    def draw_offsets(self, patch_policy: str, batch: int, steps: int, device=None,
                     generator: torch.Generator | None = None) -> Tensor:
        """Offsets ``[B, T, 2]`` of a fixed policy: "random" (Eq. 5), "centre" and "gaussian" (Table 5), ..."""
        offsets = get_patch_policy(patch_policy).draw(batch * steps, self.frame_hw, self.patch_size,
                                                      generator=generator, device=device,
                                                      gaussian_std=self.gaussian_std)
        return offsets.reshape(batch, steps, 2)

    # ------------------------------------------------------------------------------------------------- forward
    def recognise(self, frames: Tensor, patches: PatchRequest, skip: SkipRequest,
                  focus_frames: Tensor | None) -> NetOutput:
        """Offline path (Sec. 3.4): f_G over all frames, pi steps on cheap features, one crop, f_L over all patches,
        f_C steps. Outputs ``[B, T, ...]`` (see :class:`NetOutput`); with the "none" policy f_L never runs and
        e_L-bar is zero.

        AdaFocus+ (Sec. 3.3): ``skip.keep`` gives b_t directly; otherwise b_t = [p_t^B >= rho], or (training) the
        top ``batch_eta`` of this batch's p_t^B. Skipped frames are not cropped and never reach f_L; their e_L-bar
        is zero. pi' runs whenever the network has it, so ``skip_logits`` are always there for AdaFocus+.
        """
        self.check_frames(frames)
        batch, steps = frames.shape[:2]
        glance_maps = self.glance_maps(frames)
        glance_features = glance_maps.mean(dim=(-2, -1))

        if not patches.policy.uses_local:
            local_features = glance_features.new_zeros(batch, steps, self.local.num_features)
            return NetOutput(self.classify(glance_features, local_features), glance_features, local_features)
        actions, offsets, policy_logits, values = choose_patches(
            self, patches, glance_maps,
            partial(self.draw_offsets, patches.policy.name, batch, steps, frames.device, patches.generator))

        keep = skip.keep
        skip_logits = skip_values = None
        if self.skip_policy is not None:
            skip_logits, skip_values = self.skip_rollout(glance_maps)
            if keep is None:
                keep = keep_mask(skip_logits, skip.rho, skip.batch_eta)
        if keep is None:
            local_features = self.local_features(self.crop(frames, offsets))
        else:
            keep = keep.to(device=frames.device, dtype=torch.bool)
            local_features = self.kept_local_features(frames, offsets, keep)
        return NetOutput(self.classify(glance_features, local_features), glance_features, local_features,
                         actions=actions, offsets=offsets, policy_logits=policy_logits, values=values, keep=keep,
                         skip_logits=skip_logits, skip_values=skip_values)

    def flops_probes(self) -> dict[str, FlopsProbe]:
        """One frame through each component (Sec. 3.4): f_G on the (glance-sized) frame, one decision of pi (and
        of pi'), f_L on one P x P patch, one step of f_C."""
        param = next(self.parameters())
        zeros = partial(torch.zeros, device=param.device, dtype=param.dtype)
        glance_map = zeros(1, self.glance.num_features, *self.glance_map_hw)
        probes = {
            "glance": FlopsProbe(self.glance, lambda g, x: g.forward_features(x),
                                 (zeros(1, 3, *(self.glance_hw or self.frame_hw)),)),
            "policy": FlopsProbe(self.policy, policy_decision, (glance_map, self.policy.init_state(1, param.device))),
            "local": FlopsProbe(self.local, lambda f, x: f(x), (zeros(1, 3, self.patch_size, self.patch_size),)),
            # the classifier's state starts inside the trace (the "fc" f_C's state is not a tensor)
            "classifier": FlopsProbe(self.classifier, lambda c, x: c.step(x)[0],
                                     (zeros(1, self.classifier.in_features),)),
        }
        if self.skip_policy is not None:
            probes["skip_policy"] = FlopsProbe(self.skip_policy, policy_decision,
                                               (glance_map, self.skip_policy.init_state(1, param.device)))
        return probes

    def online(self, **kwargs) -> OnlineAdaFocus:
        """An ``OnlineAdaFocus`` stepping this network frame by frame."""
        return OnlineAdaFocus(self, **kwargs)


class OnlineAdaFocus:
    """Online recognition (Sec. 3.1): one frame at a time, keeping pi's and f_C's hidden states.

    ``step(frame [B, 3, H, W]) -> logits [B, K]``, the prediction after this frame. In eval mode with the argmax
    policy it reproduces the offline ``AdaFocusNet.forward`` logits at every step. ``rho``: AdaFocus+'s threshold
    on p_t^B (f_L runs where p_t^B >= rho).
    """

    def __init__(
        self,
        net: AdaFocusNet,
        patch_policy: str = "learned",
        sample: bool = False,
        generator: torch.Generator | None = None,
        rho: float | None = None,
    ):
        policy = get_patch_policy(patch_policy)
        if policy.kind not in ("learned", "fixed"):
            raise ValueError(f"online patch_policy must be learned or a fixed policy, got {patch_policy!r}")
        if rho is not None and not net.capabilities.has_skip_policy:
            raise ValueError("rho needs AdaFocus+'s skip policy pi' (model.skip_policy=true)")
        self.net, self.patch_policy, self.sample, self.generator = net, policy, sample, generator
        self.rho = rho
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
        net.check_frames(frames)
        glance_maps = net.glance_maps(frames)
        glance_features = glance_maps.mean(dim=(-2, -1))[:, 0]
        if self.patch_policy.kind == "learned":
            policy_logits, _, self.policy_state = net.policy.step(glance_maps[:, 0], self.policy_state)
            actions = net.select_actions(policy_logits, sample=self.sample, generator=self.generator)
            offsets = net.actions_to_offsets(actions)
            self.last_actions = actions
        else:
            offsets = net.draw_offsets(self.patch_policy.name, frame.shape[0], 1, frame.device, self.generator)[:, 0]
        self.last_offsets = offsets
        if self.rho is None:
            local_features = net.local_features(net.crop(frames, offsets[:, None]))[:, 0]
        else:  # AdaFocus+: pi' steps on the same e_G; f_L runs only where p_t^B >= rho
            skip_logit, _, self.skip_state = net.skip_policy.step(glance_maps[:, 0], self.skip_state)
            keep = keep_mask(skip_logit.squeeze(-1), self.rho)
            local_features = net.kept_local_features(frames, offsets[:, None], keep[:, None])[:, 0]
            self.last_keep = keep
        inputs = net.classifier_inputs(glance_features, local_features)
        logits, self.classifier_state = net.classifier.step(inputs, self.classifier_state)
        self.steps += 1
        return logits
