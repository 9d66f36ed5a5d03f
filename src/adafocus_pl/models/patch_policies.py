"""The patch-policy registry: every way of choosing where f_L looks, declared once.

A policy has a ``name`` (the value of ``patch_policy`` in code and configs), a ``label`` (rows of tables and plots)
and a ``kind``:

- ``learned``: pi's choice (paper Sec. 3.1, Eq. 3) — its argmax at test time, a draw while training;
- ``fixed``: a rule that needs no training, given by its offsets function (random patches of Eq. 5, the centre and
  Gaussian patches of Table 5);
- ``given``: offsets or grid indices supplied by the caller (the evaluation's per-video random draws);
- ``none``: no patch at all (the glance-only network: f_L never runs, e_L-bar is zero).

Fixed policies and ``none`` are also the baselines of Table 5: each is fine-tuned with Stage III's budget from the
Stage I weights. Adding a fixed policy is one :func:`register_fixed_policy` on its offsets function; the networks,
the stages, the evaluation, the experiment plan and the report all read this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from adafocus_pl.models.patches import FrameSize, centre_offsets, gaussian_offsets, random_offsets

KINDS = ("learned", "fixed", "given", "none")

# offsets(n, frame_hw, patch_size, generator=..., device=..., gaussian_std=...) -> LongTensor [n, 2]
OffsetsFn = Callable[..., Tensor]


@dataclass(frozen=True)
class PatchPolicySpec:
    name: str
    label: str                      # e.g. "random patches": a row of the results table
    kind: str                       # one of KINDS
    offsets: OffsetsFn | None = None  # fixed policies only
    baseline: bool = False          # fine-tuned as a Table 5 baseline by the experiment plan

    @property
    def is_fixed(self) -> bool:
        return self.kind == "fixed"

    @property
    def uses_local(self) -> bool:
        """False for ``none``: f_L never runs."""
        return self.kind != "none"

    def draw(self, n: int, frame_hw: FrameSize, patch_size: int, generator: torch.Generator | None = None,
             device: torch.device | str | None = None, gaussian_std: float = 0.25) -> Tensor:
        """Offsets ``[n, 2]`` of a fixed policy."""
        if self.offsets is None:
            raise ValueError(f"patch policy {self.name!r} ({self.kind}) has no offsets rule of its own")
        return self.offsets(n, frame_hw, patch_size, generator=generator, device=device, gaussian_std=gaussian_std)


_POLICIES: dict[str, PatchPolicySpec] = {}


def register_patch_policy(spec: PatchPolicySpec) -> PatchPolicySpec:
    if spec.kind not in KINDS:
        raise ValueError(f"patch policy kind must be one of {KINDS}, got {spec.kind!r}")
    if spec.name in _POLICIES:
        raise ValueError(f"patch policy {spec.name!r} is already registered")
    if (spec.offsets is not None) != spec.is_fixed:
        raise ValueError(f"patch policy {spec.name!r}: fixed policies, and only they, have an offsets function")
    _POLICIES[spec.name] = spec
    return spec


def register_fixed_policy(name: str, label: str, baseline: bool = True) -> Callable[[OffsetsFn], OffsetsFn]:
    """Decorator: register an offsets function ``fn(n, frame_hw, patch_size, *, generator, device, gaussian_std)
    -> [n, 2]`` as the fixed patch policy ``name`` (a Table 5 baseline unless ``baseline=False``)."""

    def decorator(fn: OffsetsFn) -> OffsetsFn:
        register_patch_policy(PatchPolicySpec(name, label, "fixed", fn, baseline))
        return fn

    return decorator


def get_patch_policy(name: str) -> PatchPolicySpec:
    """The registered policy ``name``; a clear error listing the known ones otherwise."""
    try:
        return _POLICIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown patch_policy {name!r}: choose one of {', '.join(_POLICIES)}") from None


def patch_policy_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered names (of one ``kind``), in registration order."""
    return tuple(name for name, spec in _POLICIES.items() if kind is None or spec.kind == kind)


def fixed_policy_names() -> tuple[str, ...]:
    return patch_policy_names("fixed")


def baseline_policies() -> tuple[PatchPolicySpec, ...]:
    """The Table 5 baselines, in registration order: the glance-only network first, then the fixed policies."""
    return tuple(spec for spec in _POLICIES.values() if spec.baseline)


def trainable_policy_names() -> tuple[str, ...]:
    """The policies a Stage III run can fine-tune with (every kind but ``given``)."""
    return tuple(name for name, spec in _POLICIES.items() if spec.kind != "given")


register_patch_policy(PatchPolicySpec("learned", "AdaFocus (learned policy)", "learned"))
register_patch_policy(PatchPolicySpec("none", "glance only", "none", baseline=True))
register_patch_policy(PatchPolicySpec("given", "given patches", "given"))


@register_fixed_policy("random", "random patches")
def _random(n, frame_hw, patch_size, *, generator=None, device=None, gaussian_std=0.25):
    return random_offsets(n, frame_hw, patch_size, generator=generator, device=device)  # Eq. 5


@register_fixed_policy("centre", "centre patches")
def _centre(n, frame_hw, patch_size, *, generator=None, device=None, gaussian_std=0.25):
    return centre_offsets(n, frame_hw, patch_size, device=device)  # Table 5


@register_fixed_policy("gaussian", "Gaussian patches")
def _gaussian(n, frame_hw, patch_size, *, generator=None, device=None, gaussian_std=0.25):
    return gaussian_offsets(n, frame_hw, patch_size, std=gaussian_std, generator=generator, device=device)  # Table 5
