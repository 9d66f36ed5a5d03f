"""One entry point from a ``model`` config (plain dict) to a network: ``architecture`` picks the class.

- ``adafocus`` (default): :class:`~adafocus_pl.models.adafocus.AdaFocusNet` (paper Sec. 3, per-frame patches);
- ``adafocus_tsm``: :class:`~adafocus_pl.models.adafocus_tsm.AdaFocusTSMNet` (Sec. 4.2: TSM backbones, one patch
  location per video) and the TSM / TSM+ full-frame baselines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

ARCHITECTURES = ("adafocus", "adafocus_tsm")


def build_network(config: Mapping[str, Any]) -> nn.Module:
    """The network of a ``model`` config; every key but ``architecture`` is a constructor argument."""
    kwargs = dict(config)
    architecture = kwargs.pop("architecture", "adafocus")
    if architecture == "adafocus":
        from adafocus_pl.models.adafocus import AdaFocusNet

        return AdaFocusNet(**kwargs)
    if architecture == "adafocus_tsm":
        from adafocus_pl.models.adafocus_tsm import AdaFocusTSMNet

        return AdaFocusTSMNet(**kwargs)
    raise ValueError(f"model.architecture={architecture!r}: choose one of {', '.join(ARCHITECTURES)}")
