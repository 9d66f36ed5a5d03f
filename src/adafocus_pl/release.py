"""The authors' released AdaFocus checkpoints (their ActivityNet / FCVID / Mini-Kinetics code) and how their
tensors map onto :class:`~adafocus_pl.models.adafocus.AdaFocusNet`; ``python -m adafocus_pl.convert`` is the
command line.

A release checkpoint is a ``torch.save``\\ d dict with ``epoch``, ``best_acc``, ``model_state_dict`` (the whole
model), its parts ``glancer``, ``focuser``, ``fc`` and ``policy`` (None for a random-patch run, i.e. Stage I), and
the training state (``scaler``, ``optimizer``). Names may start with ``module.`` (DataParallel / DDP). The model's
tensors, and ours:

===========================================  ==================  =============================================
release                                      ours                what
===========================================  ==================  =============================================
``glancer.net.*`` (torchvision MobileNetV2)  ``glance.*``        f_G (Eq. 1)
``glancer.net.classifier.*``                 (dropped)           f_G's head from the release's stage 0
``focuser.net.*`` (torchvision ResNet)       ``local.*``         f_L (Eq. 2)
``focuser.net.fc.*``                         (dropped)           f_L's head from the release's stage 0
``focuser.policy.policy_old.*``              ``policy.*``        pi (Eq. 3): ``state_encoder.0`` (1x1 conv) ->
                                                                 ``reduce.0``, ``state_encoder.3`` (Linear) ->
                                                                 ``embed.0``, ``actor.0`` / ``critic.0`` ->
                                                                 ``actor`` / ``critic``, ``gru``
``focuser.policy.policy.*``                  (dropped)           PPO's trainable copy of pi (checked equal)
``classifier.gru.*``, ``classifier.fc.*``    ``classifier.*``    f_C (Eq. 4)
===========================================  ==================  =============================================

The release's recurrent layers are one-layer ``nn.GRU``\\ s (``weight_ih_l0``, ...), ours ``nn.GRUCell``\\ s with
the same gate order (r, z, n) and the same tensors under names without ``_l0``.

The Something-Something code's checkpoints have another layout (TSM backbones under ``base_model.``, a Gaussian
location policy under ``ppo_continuous``) and another network (the two branches' logits summed): they are
recognised and refused (:func:`release_contents`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adafocus_pl.checkpoint import (
    CONVERTED_KEY,
    STAGE_KEYS,
    CheckpointError,
    UnsafeCheckpointError,
    global_names,
    read_torch_file,
)

# Besides torch's weights-only defaults, a release file may hold numpy scalars and arrays (e.g. a ``best_acc``
# computed with numpy): data only, rebuilt from bytes; any object inside them still has to pass the same check.
# Each under numpy 2's name and the numpy 1 name a file written by numpy 1 asks for.
_NUMPY_CORE = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
RELEASE_SAFE_GLOBALS: tuple[Any, ...] = (
    np.dtype, np.ndarray, _NUMPY_CORE.scalar, _NUMPY_CORE._reconstruct,
    (_NUMPY_CORE.scalar, "numpy.core.multiarray.scalar"),
    (_NUMPY_CORE._reconstruct, "numpy.core.multiarray._reconstruct"),
    *(getattr(np.dtypes, name) for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType",
                                            "BoolDType") if hasattr(np, "dtypes")),
)

DP_PREFIX = "module."  # DataParallel / DistributedDataParallel
MAPPED_PARTS = ("glance", "local", "policy", "classifier")  # the parts of ours a release model fills
PART_LABELS = {"glance": "f_G", "local": "f_L", "policy": "pi", "classifier": "f_C"}
# (release prefix, our prefix, part): the rest of the name is kept (torchvision names on both sides), but for
# nn.GRU's "_l0" suffix (see _GRU_PREFIXES)
MAPPED_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("glancer.net.", "glance.", "glance"),
    ("focuser.net.", "local.", "local"),
    ("focuser.policy.policy_old.state_encoder.0.", "policy.reduce.0.", "policy"),
    ("focuser.policy.policy_old.state_encoder.3.", "policy.embed.0.", "policy"),
    ("focuser.policy.policy_old.gru.", "policy.gru.", "policy"),
    ("focuser.policy.policy_old.actor.0.", "policy.actor.", "policy"),
    ("focuser.policy.policy_old.critic.0.", "policy.critic.", "policy"),
    ("classifier.gru.", "classifier.gru.", "classifier"),
    ("classifier.fc.", "classifier.fc.", "classifier"),
)
_GRU_PREFIXES = ("focuser.policy.policy_old.gru.", "classifier.gru.")
# (release prefix, why it has no counterpart); matched before MAPPED_PREFIXES
DROPPED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("glancer.net.classifier.", "f_G's classification head from the release's stage 0 (our f_G has none)"),
    ("focuser.net.fc.", "f_L's classification head from the release's stage 0 (our f_L has none)"),
    ("focuser.policy.policy.", "PPO's trainable copy of pi; the release acts with policy_old"),
)
POLICY_OLD, POLICY_COPY = "focuser.policy.policy_old.", "focuser.policy.policy."
CLASSIFIER_WEIGHT = "classifier.fc.weight"
# the sub-dicts of a release file and where their names sit in the whole model's state dict
SUB_DICTS = {"glancer": "glancer.", "focuser": "focuser.", "fc": "classifier."}
# markers of the Something-Something code's checkpoints
_SS_MARKERS = ("base_model.", "ppo_continuous")
# what to set when a tensor of ours has another shape than the release's: (our prefix, settings), first match
_SHAPE_HINTS = (
    ("glance.", "model.glance_backbone / model.glance_kwargs (the release: mobilenet_v2, width 1.0)"),
    ("local.", "model.local_backbone / model.local_kwargs (the release: resnet50)"),
    ("policy.reduce.", "model.policy_conv_channels (the release: 32)"),
    ("policy.embed.0.weight", "model.policy_hidden (1024), and the glance map size: data.eval_crop / "
                              "model.glance_size (the release's f_G sees 224x224 frames: a 7x7 map)"),
    ("policy.actor.", "model.grid_size (grid_size^2 candidates; the release: 7) / model.policy_hidden"),
    ("policy.", "model.policy_hidden (the release: 1024)"),
    ("classifier.fc.", "data.num_classes / model.classifier_hidden (the release: 1024)"),
    ("classifier.gru.weight_ih", "model.classifier_hidden / model.use_glance_features (the release: 1024, true)"),
    ("classifier.", "model.classifier_hidden (the release: 1024)"),
)
_SHOW = 8  # tensors named per kind of problem in a message (all of them are in the JSON report)


class ReleaseError(ValueError):
    """A file that is not a convertible release checkpoint, or one that does not fit the network."""


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class ReleaseFile:
    """A release checkpoint's model tensors under the release's names (``module.`` stripped) and what it records."""

    state: dict[str, Tensor]
    layout: str  # where the tensors came from: "model_state_dict", "sub-dicts glancer/focuser/fc", ...
    has_policy: bool | None  # the file's ``policy`` entry is not None; None: the file does not say
    epoch: int | None = None
    best_acc: float | None = None
    stripped_prefix: bool = False  # names started with "module."


def read_release(path: str | Path, trust_pickle: bool = False) -> ReleaseFile:
    """Read a release checkpoint safely: weights only (tensors, plain containers, numpy scalars and arrays); a file
    that needs any other Python object is refused, naming it, unless ``trust_pickle`` (then it is unpickled with
    ``weights_only=False``, which runs whatever the file asks for)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise ReleaseError(f"{path} {what}: give the release's checkpoint file (e.g. model_best.pth.tar)")
    if trust_pickle:
        print(f"[convert] warning: --trust-pickle: unpickling {path} with weights_only=False, which runs any code "
              f"the file asks for", file=sys.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            contents = torch.load(path, map_location="cpu", weights_only=False)
    else:
        try:
            contents = read_torch_file(path, "RELEASE_CKPT", RELEASE_SAFE_GLOBALS)
        except UnsafeCheckpointError as err:
            raise ReleaseError(
                f"{path} was refused and nothing in it was run: it holds Python objects that are not plain data "
                f"({', '.join(_unsafe_globals(path) or [err.needed])}), which a release checkpoint (tensors, "
                f"numbers, numpy scalars, dicts of them) does not need. If you know who made this file and trust "
                f"it, rerun with --trust-pickle (it then unpickles with weights_only=False, which can run code)"
            ) from None
        except CheckpointError as err:  # empty, truncated, not a torch file
            raise ReleaseError(f"{path} cannot be read ({err.reason}): give the release's checkpoint file (e.g. "
                               f"model_best.pth.tar)") from None
    return release_contents(contents, path)


def _unsafe_globals(path: Path) -> list[str]:
    """Every object a zip-format torch file asks for beyond torch's defaults and :data:`RELEASE_SAFE_GLOBALS`,
    found without unpickling it (empty when torch cannot tell)."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a bare pickle, or a torch without this function
        return []
    allowed = global_names(RELEASE_SAFE_GLOBALS)
    return [name for name in needed if name not in allowed]


def _strip(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], bool]:
    """The tensors of ``state`` with every leading ``module.`` removed (non-tensors are left out)."""
    out, stripped = {}, False
    for name, value in state.items():
        if not torch.is_tensor(value):
            continue
        while name.startswith(DP_PREFIX):
            name, stripped = name[len(DP_PREFIX):], True
        out[name] = value
    return out, stripped


def _number(value: Any) -> float | None:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None


def release_contents(contents: Any, source: str | Path = "the file") -> ReleaseFile:
    """The model tensors of a loaded release checkpoint: its ``model_state_dict`` (or ``state_dict``), else its
    sub-dicts ``glancer``, ``focuser``, ``fc`` (and ``policy``, when ``focuser`` has no pi), else the dict itself
    when it is a bare state dict. Refuses adafocus-pl checkpoints and the Something-Something code's."""
    if not isinstance(contents, Mapping):
        raise ReleaseError(f"{source} holds a {type(contents).__name__}, not a checkpoint dict: give the release's "
                           f"checkpoint file (a dict with model_state_dict, glancer, focuser, fc, policy, ...)")
    if all(key in contents for key in STAGE_KEYS):
        raise ReleaseError(f"{source} is already an adafocus-pl stage checkpoint: give it to eval / predict / "
                           f"init_from as it is")
    has_policy = (contents["policy"] is not None) if "policy" in contents else None
    stripped = False
    whole = next((key for key in ("model_state_dict", "state_dict") if isinstance(contents.get(key), Mapping)), None)
    if whole:
        state, stripped = _strip(contents[whole])
        layout = whole
    elif any(isinstance(contents.get(key), Mapping) for key in SUB_DICTS):
        state, present = {}, []
        for key, prefix in SUB_DICTS.items():
            if isinstance(contents.get(key), Mapping):
                part, cut = _strip(contents[key])
                state.update({prefix + name: value for name, value in part.items()})
                stripped |= cut
                present.append(key)
        policy = contents.get("policy")
        if isinstance(policy, Mapping) and not any(name.startswith("focuser.policy.") for name in state):
            part, cut = _strip(policy)
            # pi alone (state_encoder.*, ...) or the release's pair of copies (policy_old.*, policy.*)
            pair = any(name.startswith(("policy_old.", "policy.")) for name in part)
            state.update({("focuser.policy." if pair else POLICY_OLD) + name: value for name, value in part.items()})
            stripped |= cut
            present.append("policy")
        layout = f"sub-dicts {'/'.join(present)}"
    else:
        state, stripped = _strip(contents)
        if not state or len(state) < len(contents):
            shown = ", ".join(map(repr, list(contents)[:10]))
            raise ReleaseError(f"{source} is not a release checkpoint: no model_state_dict, no glancer/focuser/fc "
                               f"sub-dicts, and not a state dict of tensors (top-level keys: {shown})")
        layout = "a bare state dict"
    markers = sorted({marker for name in [*state, *contents] for marker in _SS_MARKERS if marker in str(name)})
    if markers:
        raise ReleaseError(
            f"{source} looks like a checkpoint of the release's Something-Something code (names with "
            f"{' and '.join(repr(m) for m in markers)}): not converted. Its layout (TSM backbones under "
            f"'base_model.', a Gaussian location policy under 'ppo_continuous') is not mapped, and its network sums "
            f"the logits of its two branches, while our AdaFocus-TSM (model=adafocus_tsm, location_policy=gaussian) "
            f"feeds their concatenated features to one linear f_C: its weights would not give its predictions "
            f"here. Only checkpoints of the ActivityNet/FCVID/Mini-Kinetics code convert")
    return ReleaseFile(state=state, layout=layout, has_policy=has_policy, epoch=_int(contents.get("epoch")),
                       best_acc=_number(contents.get("best_acc")), stripped_prefix=stripped)


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def release_num_classes(state: Mapping[str, Tensor]) -> int | None:
    """The class count of a release model: the rows of f_C's output layer (None when it has none)."""
    weight = state.get(CLASSIFIER_WEIGHT)
    return int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None


# ------------------------------------------------------------------------------------------------ mapping
def map_name(name: str) -> tuple[str | None, str]:
    """``(our name, part)`` of a release tensor name, ``(None, why it is dropped)``, or ``(None, "")`` when no rule
    knows it."""
    for prefix, reason in DROPPED_PREFIXES:
        if name.startswith(prefix):
            return None, reason
    for prefix, ours, part in MAPPED_PREFIXES:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if prefix in _GRU_PREFIXES:
                rest = rest.removesuffix("_l0")  # the one layer of nn.GRU: the tensors of an nn.GRUCell
            return ours + rest, part
    return None, ""


@dataclass
class ConversionPlan:
    """Every release tensor and every tensor of our network, sorted: what goes where, and what does not fit."""

    state: dict[str, Tensor] = field(default_factory=dict)  # our name -> the release's tensor
    mapped: list[dict[str, Any]] = field(default_factory=list)  # release, ours, part, shape
    dropped: list[dict[str, Any]] = field(default_factory=list)  # release, shape, reason
    unknown: list[str] = field(default_factory=list)  # release names no rule knows
    no_counterpart: list[tuple[str, str]] = field(default_factory=list)  # (release, ours) ours does not have
    mismatched: list[dict[str, Any]] = field(default_factory=list)  # release, ours, release_shape, our_shape, hint
    missing: list[str] = field(default_factory=list)  # our names no release tensor fills
    copy_differs: list[dict[str, Any]] = field(default_factory=list)  # release, max_abs_diff (policy vs policy_old)

    def counts(self) -> dict[str, int]:
        """Mapped tensors per part (``glance``, ``local``, ``policy``, ``classifier``)."""
        return {part: sum(m["part"] == part for m in self.mapped) for part in MAPPED_PARTS}

    def problems(self) -> list[str]:
        """What stops a strict load, one line per kind, naming the tensors (empty: it loads)."""
        out = []
        if self.mismatched:
            out.append(_listing("shape mismatches", [
                f"{m['release']} is {m['release_shape']} in the release but this network's {m['ours']} is "
                f"{m['our_shape']} (set {m['hint']})" for m in self.mismatched]))
        if self.missing:
            out.append(_listing("tensors of this network missing from the release file", self.missing))
        if self.unknown:
            out.append(_listing("release tensors of no known part", self.unknown))
        if self.no_counterpart:
            out.append(_listing("release tensors this network has no place for",
                                [f"{release} (would be {ours})" for release, ours in self.no_counterpart]))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"mapped": self.mapped, "dropped": self.dropped, "missing": self.missing, "unknown": self.unknown,
                "no_counterpart": [{"release": r, "ours": o} for r, o in self.no_counterpart],
                "shape_mismatches": self.mismatched, "policy_copy_differs": self.copy_differs,
                "counts": {"mapped": len(self.mapped), "dropped": len(self.dropped), **self.counts()}}


def _listing(title: str, items: list[str]) -> str:
    more = f", and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {title}: {'; '.join(items[:_SHOW])}{more}"


def _hint(ours: str) -> str:
    return next((hint for prefix, hint in _SHAPE_HINTS if ours.startswith(prefix)), "the model.* settings")


def plan_conversion(release: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> ConversionPlan:
    """Sort the ``release`` tensors (release names) against ``own``, our network's state dict."""
    plan = ConversionPlan()
    for name, tensor in release.items():
        ours, part = map_name(name)
        shape = list(tensor.shape)
        if ours is None and part:
            plan.dropped.append({"release": name, "shape": shape, "reason": part})
        elif ours is None:
            plan.unknown.append(name)
        elif ours not in own:
            plan.no_counterpart.append((name, ours))
        elif own[ours].shape != tensor.shape:
            plan.mismatched.append({"release": name, "ours": ours, "release_shape": shape,
                                    "our_shape": list(own[ours].shape), "hint": _hint(ours)})
        else:
            plan.state[ours] = tensor
            plan.mapped.append({"release": name, "ours": ours, "part": part, "shape": shape})
    filled = set(plan.state) | {m["ours"] for m in plan.mismatched}
    plan.missing = [name for name in own if name not in filled]
    for name, tensor in release.items():  # PPO's two copies of pi: the same after every update
        if name.startswith(POLICY_COPY):
            old = release.get(POLICY_OLD + name[len(POLICY_COPY):])
            if old is None or old.shape != tensor.shape:
                plan.copy_differs.append({"release": name, "max_abs_diff": None})
            elif not torch.equal(old, tensor):
                diff = (old.double() - tensor.double()).abs().max().item()
                plan.copy_differs.append({"release": name, "max_abs_diff": diff})
    return plan


# ------------------------------------------------------------------------------------------------ writing
def provenance(path: str | Path, release: ReleaseFile) -> dict[str, Any]:
    """What a converted checkpoint records about its source (plain data: loadable weights-only)."""
    from adafocus_pl.version import __version__

    path = Path(path).resolve()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"source": str(path), "sha256": digest.hexdigest(), "epoch": release.epoch,
            "best_acc": release.best_acc, "layout": release.layout, "converted_by": f"adafocus-pl {__version__}"}


def converted_checkpoint(module, source: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint a stage run of ``module`` (a stage LightningModule holding the converted network) would write
    for its weights: state dict, hyper-parameters and the stage's own entries, plus ``source`` (the release file
    it came from) under :data:`~adafocus_pl.checkpoint.CONVERTED_KEY`. No training state: it cannot be resumed."""
    import pytorch_lightning as pl

    ckpt = {"pytorch-lightning_version": pl.__version__, "state_dict": module.state_dict(),
            "hparams_name": "kwargs", "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    ckpt[CONVERTED_KEY] = dict(source)
    return ckpt


def save_checkpoint(ckpt: Mapping[str, Any], out: str | Path) -> None:
    """Write ``ckpt`` to ``out`` the way stage runs write theirs (atomically: a killed write leaves no half file)."""
    from adafocus_pl.stages.checkpoint_io import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint(dict(ckpt), Path(out))


def report_path(out: str | Path) -> Path:
    """The JSON report beside a converted checkpoint: ``OUT.json`` (``release.ckpt`` -> ``release.ckpt.json``)."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def write_report(out: str | Path, report: Mapping[str, Any]) -> Path:
    """``report`` as ``OUT.json`` (a tensor's shape on one line)."""
    path = report_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = re.sub(r"\[\s+(\d+(?:,\s+\d+)*)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]",
                  json.dumps(report, indent=1))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def write_converted(release: ReleaseFile, release_path: str | Path, module, out: str | Path,
                    report: Mapping[str, Any], where: str = "") -> tuple[ConversionPlan, dict[str, Any]]:
    """Map ``release`` onto ``module.net`` (``module``: the stage module of the run that would have trained it),
    load it strictly and write the checkpoint ``out`` and its report ``OUT.json`` (``report`` with the tensors and
    the source added, also returned). When the network does not fit, only the report is written (with
    ``refused``) and :class:`ReleaseError` names the tensors (``where``: the network's settings, for the message).
    """
    plan = plan_conversion(release.state, module.net.state_dict())
    source = {**provenance(release_path, release), "stage": module.stage_id}
    report = {**report, "source": source, **plan.as_dict()}
    problems = plan.problems()
    if problems:
        write_report(out, {**report, "refused": problems})
        raise ReleaseError(f"{release_path} does not fit this network ({where}; nothing converted, every tensor "
                           f"listed in {report_path(out)}): " + "; ".join(problems))
    module.net.load_state_dict(plan.state, strict=True)
    save_checkpoint(converted_checkpoint(module, source), out)
    write_report(out, report)
    return plan, report


def summary_lines(plan: ConversionPlan) -> list[str]:
    """The report printed by the converter: mapped tensors per part, dropped ones per prefix, missing ones."""
    lines = [f"mapped {len(plan.mapped)} tensors (strict load):"]
    for part, count in plan.counts().items():
        release = os.path.commonprefix([prefix for prefix, _, of in MAPPED_PREFIXES if of == part])
        lines.append(f"  {PART_LABELS[part]:<4}{count:>5}  {release}* -> {part}.*")
    dropped: dict[str, list[dict[str, Any]]] = {}
    for d in plan.dropped:
        dropped.setdefault(next(p for p, _ in DROPPED_PREFIXES if d["release"].startswith(p)), []).append(d)
    lines.append(f"dropped {len(plan.dropped)} tensors" + (":" if plan.dropped else ""))
    for prefix, items in dropped.items():
        same = ", equal to it here" if prefix == POLICY_COPY and not plan.copy_differs else ""
        lines.append(f"  {len(items):>4}  {prefix}*: {items[0]['reason']}{same}")
    lines.append(f"missing {len(plan.missing)} tensors" + (f": {', '.join(plan.missing)}" if plan.missing else ""))
    return lines
