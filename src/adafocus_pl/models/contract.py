"""The contract every recognition network of this suite implements, and the registry of architectures.

Stages, evaluation and inference talk to a network only through :class:`VideoNet`: its ``forward`` (one
:class:`NetOutput`), its :class:`Capabilities` (what it has and accepts), its named parts (the units a stage trains
or freezes), the settings that fix its parameter shapes (checkpoint compatibility), the FLOPs probes of its parts
and, for networks with a patch policy, the policy half used by Stage II (Sec. 3.2) and by online recognition.

The base ``forward`` checks a request against the capabilities once — an unknown patch policy, AdaFocus+ settings
on a network without pi', separate focus frames on a network that glances at and focuses on the same frames — and
hands the network only what it supports (:meth:`VideoNet.recognise`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from adafocus_pl.models.patch_policies import PatchPolicySpec, get_patch_policy

# the parts a stage may train or freeze (skip_policy: AdaFocus+'s pi'); a network has a subset of them
PARTS = ("glance", "policy", "skip_policy", "local", "classifier")


@dataclass(frozen=True)
class Capabilities:
    has_policy: bool            # a learned patch policy pi (Sec. 3.1)
    has_skip_policy: bool       # AdaFocus+'s pi' (Sec. 3.3)
    per_clip: bool              # one patch location and one prediction per clip (AdaFocus-TSM, Sec. 4.2)
    uses_glance_features: bool  # f_C reads e_G-bar beside e_L-bar (Eq. 4; off in Table 4's ablation)
    crops_patches: bool = True  # f_L sees P x P patches (False: whole frames, the full-frame baselines)
    separate_focus_frames: bool = False  # f_L may read other frames than f_G (AdaFocus-TSM's T_L != T_G)


@dataclass
class NetOutput:
    """What a forward returns. ``S`` is the number of predictions: T (one per frame) or 1 (per clip).

    ``logits [B, S, K]``; the offline prediction is the last step's (Sec. 3.4). ``offsets [B, T, 2]`` are the
    patches' top-left corners (None without patches); ``actions`` the grid indices (None unless pi or the caller
    chose on the grid); ``policy_logits``/``values`` pi's (learned policy only); ``keep [B, T]`` AdaFocus+'s b_t and
    ``skip_logits``/``skip_values`` pi''s outputs (networks with pi' only); ``part_logits`` per-part predictions
    beside the clip's (Stage 0's heads). ``exit_steps [B]``: only from an engine that stops reading a video once it
    is confident (early exit): the 0-based step after which each video stopped; the frames after it were never
    read, so their logits repeat the exit step's (``logits[:, -1]`` is still the prediction), their ``actions`` and
    ``offsets`` are -1 and their ``keep`` False.
    """

    logits: Tensor
    glance_features: Tensor | None = None
    local_features: Tensor | None = None
    actions: Tensor | None = None
    offsets: Tensor | None = None
    policy_logits: Tensor | None = None
    values: Tensor | None = None
    keep: Tensor | None = None
    skip_logits: Tensor | None = None
    skip_values: Tensor | None = None
    part_logits: dict[str, Tensor] = field(default_factory=dict)
    exit_steps: Tensor | None = None


@dataclass(frozen=True)
class PatchRequest:
    """Where f_L looks: a registered policy, with the caller's ``actions``/``offsets`` for "given"."""

    policy: PatchPolicySpec
    actions: Tensor | None = None
    offsets: Tensor | None = None
    sample: bool = False
    generator: torch.Generator | None = None


@dataclass(frozen=True)
class SkipRequest:
    """AdaFocus+'s b_t (Sec. 3.3): given directly (``keep``), p_t^B >= ``rho``, or the top ``batch_eta`` of the
    batch's p_t^B (training). All None: every frame runs f_L."""

    keep: Tensor | None = None
    rho: float | None = None
    batch_eta: float | None = None

    @property
    def active(self) -> bool:
        return self.keep is not None or self.rho is not None or self.batch_eta is not None


@dataclass(frozen=True)
class FlopsProbe:
    """One component's inference work: ``fn(module, *inputs)`` traced once (``adafocus_pl.evaluation.flops``)."""

    module: nn.Module
    fn: Callable[..., Any]
    inputs: tuple[Tensor, ...]


class VideoNet(nn.Module):
    """Base class of the networks. Subclasses set ``architecture``, ``shape_keys`` and ``capabilities`` and the
    parts they have (``glance``, ``policy``, ``skip_policy``, ``local``, ``classifier``; absent ones are None),
    and implement :meth:`recognise` and :meth:`flops_probes`."""

    architecture: ClassVar[str] = ""
    # constructor settings that fix parameter shapes: a checkpoint and the run loading it must agree on them
    shape_keys: ClassVar[tuple[str, ...]] = ()
    # ... and those a Stage 0 checkpoint (backbones trained on whole frames, no patch, no policy) must share
    backbone_keys: ClassVar[tuple[str, ...]] = ("architecture", "glance_backbone", "local_backbone")

    capabilities: Capabilities
    frame_hw: tuple[int, int]
    patch_size: int
    # parts (absent ones are None or unset): glance, policy, skip_policy, local, classifier

    # ------------------------------------------------------------------------------------------ description
    @property
    def num_classes(self) -> int:
        return self.classifier.num_classes

    def parts(self) -> dict[str, nn.Module]:
        """The parts this network has, by name (a subset of :data:`PARTS`, in that order)."""
        return {name: module for name in PARTS if (module := self._modules.get(name)) is not None}

    def flops_probes(self) -> dict[str, FlopsProbe]:
        """One probe per component, for one frame (per clip when ``capabilities.per_clip``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ recognition
    def forward(self, frames: Tensor, patch_policy: str = "learned", *, actions: Tensor | None = None,
                offsets: Tensor | None = None, sample: bool = False, generator: torch.Generator | None = None,
                focus_frames: Tensor | None = None, keep: Tensor | None = None, rho: float | None = None,
                batch_eta: float | None = None) -> NetOutput:
        """Offline recognition of ``frames [B, T, 3, H, W]``.

        ``patch_policy``: a registered policy name (:mod:`adafocus_pl.models.patch_policies`); "given" takes
        exactly one of ``actions`` (grid indices) or ``offsets``; ``sample`` draws from pi instead of its argmax;
        ``generator`` drives the random draws. ``focus_frames``: f_L's own frames (AdaFocus-TSM). AdaFocus+:
        ``keep``, ``rho`` or ``batch_eta`` (see :class:`SkipRequest`).
        """
        policy = get_patch_policy(patch_policy)
        caps = self.capabilities
        if policy.kind == "learned" and not caps.has_policy and caps.crops_patches:
            raise ValueError(f"{type(self).__name__} has no learned patch policy")
        if policy.kind == "given" and (actions is None) == (offsets is None):
            raise ValueError('patch_policy="given" needs exactly one of actions (grid indices) or offsets (y, x)')
        skip = SkipRequest(keep, rho, batch_eta)
        if skip.active and not caps.has_skip_policy:
            raise ValueError("keep / rho / batch_eta need AdaFocus+'s skip policy pi' (model.skip_policy=true, "
                             "plus=on)")
        if focus_frames is not None and not caps.separate_focus_frames:
            raise ValueError(f"{type(self).__name__} glances at and focuses on the same frames: set "
                             f"data.num_focus_segments=null (separate focus frames are for AdaFocus-TSM, "
                             f"model=adafocus_tsm)")
        return self.recognise(frames, PatchRequest(policy, actions, offsets, sample, generator), skip, focus_frames)

    def recognise(self, frames: Tensor, patches: PatchRequest, skip: SkipRequest,
                  focus_frames: Tensor | None) -> NetOutput:
        raise NotImplementedError

    def draw_offsets(self, patch_policy: str, batch: int, steps: int, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
        """Offsets ``[B, L, 2]`` of a fixed policy, L = ``steps`` locations per clip (1 when ``per_clip``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ the policy half
    # Networks with ``capabilities.has_policy`` implement these (Stage II's PPO, Sec. 3.2; AdaFocus+ Sec. 3.3).
    def glance_maps(self, frames: Tensor) -> Tensor:
        """e_G ``[B, T, C, h, w]`` (Eq. 1)."""
        raise NotImplementedError

    def policy_rollout(self, glance_maps: Tensor) -> tuple[Tensor, Tensor]:
        """pi's ``(logits [B, L, A], values [B, L])`` (Eq. 3)."""
        raise NotImplementedError

    def skip_rollout(self, glance_maps: Tensor) -> tuple[Tensor, Tensor]:
        """pi''s ``(logits [B, T], values [B, T])`` (Eq. 8)."""
        raise RuntimeError(f"{type(self).__name__} has no skip policy pi' (AdaFocus+ is off: build it with "
                           f"skip_policy=True)")

    def action_distribution(self, policy_logits: Tensor) -> Distribution:
        raise NotImplementedError

    def select_actions(self, policy_logits: Tensor, sample: bool = False,
                       generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def actions_to_offsets(self, actions: Tensor) -> Tensor:
        raise NotImplementedError

    def score_patches(self, frames: Tensor, glance_maps: Tensor, offsets: Sequence[Tensor],
                      keep: Tensor | None = None, focus_frames: Tensor | None = None) -> list[Tensor]:
        """f_C's logits for alternative patches scored from the same state (Stage II's rewards, Eq. 7/10)."""
        raise NotImplementedError


class PerFrameBlocks(Protocol):
    """The building blocks of a network with one patch per frame (``capabilities.has_policy`` and not
    ``per_clip``: :class:`~adafocus_pl.models.adafocus.AdaFocusNet`), which the fast inference path and Stage 0
    compose with their own prepared backbones. ``local`` runs f_L instead of the network's own."""

    def check_frames(self, frames: Tensor) -> None: ...

    def glance_inputs(self, frames: Tensor) -> Tensor: ...

    def crop(self, frames: Tensor, offsets: Tensor) -> Tensor: ...

    def local_features(self, patches: Tensor, local: Callable[[Tensor], Tensor] | None = None) -> Tensor: ...

    def kept_local_features(self, frames: Tensor, offsets: Tensor, keep: Tensor,
                            local: Callable[[Tensor], Tensor] | None = None) -> Tensor: ...

    def classifier_inputs(self, glance_features: Tensor, local_features: Tensor,
                          keep: Tensor | None = None) -> Tensor: ...


def has_per_frame_blocks(net: VideoNet) -> bool:
    """Whether ``net`` offers :class:`PerFrameBlocks` (a patch per frame chosen by a policy)."""
    caps = net.capabilities
    return caps.has_policy and caps.crops_patches and not caps.per_clip


@torch.no_grad()
def feature_map_hw(backbone: nn.Module, input_hw: tuple[int, int], frames: int = 1) -> tuple[int, int]:
    """The ``(h, w)`` of ``backbone.forward_features`` on ``frames`` inputs of ``input_hw`` (pi's input size);
    the backbone's train/eval mode is left as it was."""
    was_training = backbone.training
    backbone.eval()
    map_h, map_w = backbone.forward_features(torch.zeros(frames, 3, *input_hw)).shape[-2:]
    backbone.train(was_training)
    return int(map_h), int(map_w)


# ------------------------------------------------------------------------------------------------ architectures
_ARCHITECTURES: dict[str, Callable[..., VideoNet]] = {}


def register_architecture(name: str):
    """Class decorator registering a :class:`VideoNet` under ``model.architecture=name``."""

    def decorator(cls):
        if name in _ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        cls.architecture = name
        _ARCHITECTURES[name] = cls
        return cls

    return decorator


def _ensure_builtin_architectures() -> None:
    from adafocus_pl.models import adafocus, adafocus_tsm, full_frame  # noqa: F401  (they register themselves)


def list_architectures() -> list[str]:
    _ensure_builtin_architectures()
    return sorted(_ARCHITECTURES)


def architecture_class(name: str) -> type[VideoNet]:
    _ensure_builtin_architectures()
    if name not in _ARCHITECTURES:
        raise ValueError(f"model.architecture={name!r}: choose one of {', '.join(sorted(_ARCHITECTURES))}")
    return _ARCHITECTURES[name]
