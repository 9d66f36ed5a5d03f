"""The device an entry point runs on, from its config key (``auto`` | ``cpu`` | ``cuda[:N]``)."""

from __future__ import annotations

import torch


def resolve_device(name: str, key: str) -> torch.device:
    """``auto`` -> CUDA when visible, else CPU; a CUDA name with no visible GPU is an error naming ``key``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{key}={name} but no CUDA device is visible: use {key}=cpu or auto")
    return torch.device(name)
