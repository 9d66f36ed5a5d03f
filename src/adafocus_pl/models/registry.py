"""Backbone registry (timm-style): ``register_backbone``, ``create_backbone``, ``list_backbones``.

A backbone is an ``nn.Module`` with ``num_features``, ``forward_features(x) -> [N, C, h, w]`` and
``forward(x) -> [N, C]`` (global average pool). Its parameter names follow torchvision's layout, minus the head,
so a torchvision state dict loads into it directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

_BACKBONES: dict[str, Callable[..., nn.Module]] = {}
_TORCHVISION_WEIGHTS: dict[str, str] = {}

# Keys of a classification head: our backbones drop the head, so these are ignored when loading.
HEAD_PREFIXES = ("fc.", "classifier.")
_SHOW = 5  # offending keys shown per category in an error message


class BackboneWeightsError(RuntimeError):
    """A pretrained-weights file does not fit the backbone it is loaded into."""


def register_backbone(name: str, torchvision_weights: str | None = None):
    """Decorator registering a backbone constructor under ``name``.

    ``torchvision_weights`` names the torchvision weights enum (e.g. ``"ResNet50_Weights.IMAGENET1K_V1"``) used
    when ``create_backbone(name, pretrained="torchvision")`` is asked for.
    """

    def decorator(constructor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = constructor
        if torchvision_weights is not None:
            _TORCHVISION_WEIGHTS[name] = torchvision_weights
        return constructor

    return decorator


def _ensure_builtin_backbones() -> None:
    from adafocus_pl.models import backbones  # noqa: F401  (registers the built-in backbones)


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    _ensure_builtin_backbones()
    return sorted(_BACKBONES)


def create_backbone(name: str, pretrained: str | os.PathLike | None = None, temporal_shift: int | None = None,
                    shift_fold_div: int = 8, **kwargs) -> nn.Module:
    """Build backbone ``name`` with ``kwargs``; optionally with a temporal shift and pretrained weights.

    ``temporal_shift``: None, or the frames per clip T for a TSM backbone (:mod:`adafocus_pl.models.temporal_shift`;
    ``shift_fold_div`` = 8 moves C/8 channels each way); it then takes whole clips ``[N * T, 3, H, W]``. The shift
    keeps every parameter name, so the same weights files load with or without it.

    ``pretrained``: None (random init), a path to a local file holding a torchvision-layout state dict (or a dict
    with a ``"state_dict"`` entry), or the string ``"torchvision"`` for torchvision's ImageNet weights (the only
    choice that may download).
    """
    _ensure_builtin_backbones()
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(_BACKBONES))}")
    model = _BACKBONES[name](**kwargs)
    if temporal_shift:
        from adafocus_pl.models.temporal_shift import add_temporal_shift

        add_temporal_shift(model, temporal_shift, shift_fold_div)
    if pretrained is None:
        return model
    if isinstance(pretrained, str) and pretrained == "torchvision":
        if name not in _TORCHVISION_WEIGHTS:
            have = ", ".join(sorted(_TORCHVISION_WEIGHTS))
            raise ValueError(f"backbone {name!r} has no torchvision weights (backbones that do: {have})")
        import torchvision

        weights = torchvision.models.get_weight(_TORCHVISION_WEIGHTS[name])
        state = weights.get_state_dict(progress=True)
        load_backbone_weights(model, state, source=f"torchvision:{_TORCHVISION_WEIGHTS[name]}", name=name)
        return model
    path = Path(pretrained)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights for backbone {name!r}: no such file {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_backbone_weights(model, state, source=str(path), name=name)
    return model


def _shape(t) -> str:
    return str(list(t.shape)) if hasattr(t, "shape") else type(t).__name__


def _listing(title: str, items: list[str]) -> str:
    shown = "; ".join(items[:_SHOW]) + (f"; ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")
    return f"\n  {title} ({len(items)}): {shown}"


def load_backbone_weights(model: nn.Module, state: Mapping, source: str, name: str = "") -> None:
    """Load a torchvision-layout state dict into ``model``; raise ``BackboneWeightsError`` when it does not fit.

    Head keys (``fc.*``, ``classifier.*``) are dropped and a ``module.`` prefix (DataParallel) is stripped.
    Only ``num_batches_tracked`` buffers may be missing.
    """
    if not isinstance(state, Mapping):
        raise BackboneWeightsError(f"{source}: expected a state dict, got {type(state).__name__}")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    expected = model.state_dict()
    missing = [
        f"{k} {_shape(v)}" for k, v in expected.items() if k not in state and not k.endswith("num_batches_tracked")
    ]
    unexpected = [f"{k} {_shape(v)}" for k, v in state.items() if k not in expected]
    mismatched = [
        f"{k}: file {_shape(v)} vs model {_shape(expected[k])}"
        for k, v in state.items()
        if k in expected and (not torch.is_tensor(v) or v.shape != expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        msg = f"cannot load pretrained weights for backbone {name or type(model).__name__!r} from {source}:"
        if missing:
            msg += _listing("missing keys", missing)
        if unexpected:
            msg += _listing("unexpected keys", unexpected)
        if mismatched:
            msg += _listing("shape mismatches", mismatched)
        msg += (
            "\nThe file must hold a torchvision-layout state dict of this very architecture (or a dict with a "
            "'state_dict' entry); head keys fc.*/classifier.* and a 'module.' prefix are handled automatically. "
            "Check the backbone name and its kwargs (e.g. width_mult, widths), or rename the file's keys "
            "(e.g. strip a Lightning prefix such as 'net.local.')."
        )
        raise BackboneWeightsError(msg)
    model.load_state_dict(state, strict=False)
