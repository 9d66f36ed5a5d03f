"""One entry point from a ``model`` config (plain dict) to a network: ``architecture`` picks the registered class
(:func:`~adafocus_pl.models.contract.register_architecture`).

- ``adafocus`` (default): :class:`~adafocus_pl.models.adafocus.AdaFocusNet` (paper Sec. 3, per-frame patches);
- ``adafocus_tsm``: :class:`~adafocus_pl.models.adafocus_tsm.AdaFocusTSMNet` (Sec. 4.2: TSM backbones, one patch
  location per video) and the TSM / TSM+ full-frame baselines;
- ``full_frame``: :class:`~adafocus_pl.models.full_frame.FullFrameNet` (Table 1's full-frame baselines).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adafocus_pl.models.contract import VideoNet, architecture_class

DEFAULT_ARCHITECTURE = "adafocus"  # a model config without an ``architecture`` key


def architecture_of(config: Mapping[str, Any]) -> str:
    """The ``architecture`` a ``model`` config names."""
    return config.get("architecture", DEFAULT_ARCHITECTURE)


def build_network(config: Mapping[str, Any]) -> VideoNet:
    """The network of a ``model`` config; every key but ``architecture`` is a constructor argument.
    ``skip_policy`` (AdaFocus+, Sec. 3.3) is refused with a clear message by architectures that cannot skip."""
    architecture = architecture_of(config)
    kwargs = {k: v for k, v in config.items() if k != "architecture"}
    cls = architecture_class(architecture)
    if not cls.supports_skip_policy:
        if kwargs.pop("skip_policy", False):
            raise ValueError(f"AdaFocus+ (frame skipping, model.skip_policy=true) is not defined for "
                             f"model.architecture={architecture} ({cls.__name__}); AdaFocus-TSM picks one location "
                             f"per video and paper Sec. 4.2 evaluates AdaFocus only: run it with plus=off")
    return cls(**kwargs)


def shape_keys(*architectures: str) -> tuple[str, ...]:
    """The settings that fix parameter shapes for networks of these architectures (all of their keys, in order)."""
    keys: list[str] = []
    for name in architectures:
        keys += [k for k in architecture_class(name).shape_keys if k not in keys]
    return tuple(keys)
