"""Whether this torch build has the oneDNN operators that Inductor emits on a CPU, which the fast path calls
directly (:mod:`~adafocus_pl.inference.linear`, :mod:`~adafocus_pl.inference.fusion`). They are private to torch,
so every caller checks first and keeps a plain fallback."""

from __future__ import annotations

import torch


def onednn_has(*operators: str) -> bool:
    """True when oneDNN is usable and ``torch.ops.mkldnn`` has every one of ``operators``."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return all(hasattr(torch.ops.mkldnn, name) for name in operators)
    except (AttributeError, RuntimeError):
        return False
