"""Stage checkpoints, read, checked and loaded in one place: training (``init_from``, the ``ckpt_path`` resume
checks, the W&B run id), evaluation, prediction and the fast inference path all come here. No Lightning needed
(Lightning writes the files, through :class:`adafocus_pl.stages.checkpoint_io.AtomicCheckpointIO`).

- :func:`read_checkpoint`: the file as a dict, or a clear error (:func:`read_torch_file`: any torch file, read
  the same safe way; the converter of the authors' checkpoints, :mod:`adafocus_pl.release`, reads them with it);
- :func:`load_checkpoint`: the network it holds, rebuilt in eval mode, with its stage, patch policy and rho;
- :func:`network_mismatches` / :func:`resume_problems`: which settings differ from the run that loads it (a
  checkpoint converted from the release, marked by :data:`CONVERTED_KEY`, holds weights only and is never resumed);
- :func:`load_init_weights`: an earlier stage's weights into this stage's network (``init_from``).

The file is unpickled with ``torch.load(weights_only=True)``: only tensors, plain containers and the few torch
types ``torch.load`` allows by default can come out of it. A pickle that asks for any other Python object (a
crafted file whose ``__reduce__`` calls ``os.system``, a checkpoint that holds a pickled class) is refused before
anything in it runs. Every failure is an exception whose message names the setting that pointed at the file
(``ckpt_path``, ``init_from``), the file, and what to do:

- no such file (or a directory): :class:`MissingCheckpointError`, a :class:`FileNotFoundError`;
- truncated, not a torch file, random bytes: :class:`CheckpointError`;
- Python objects that are not plain data: :class:`UnsafeCheckpointError` (a :class:`CheckpointError`);
- a readable torch file that is not a stage checkpoint (no ``adafocus_stage`` / ``hyper_parameters``):
  :class:`CheckpointError`.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adafocus_pl.models.build import architecture_of, build_network, shape_keys
from adafocus_pl.models.contract import VideoNet

# The globals this loader allows on top of ``torch.load(weights_only=True)``'s defaults: none. Every checkpoint a
# stage writes (Stage 0, I, II, II+, III, III+, the full-frame baselines, the best-epoch and last checkpoints, a
# mid-epoch step checkpoint with the StatefulDataLoader's state, one with the W&B run id) holds only tensors and
# dicts / lists / tuples of str, int, float, bool and None: the runner hands the modules plain containers, not
# OmegaConf objects, and Lightning's loop, optimiser, scheduler and callback states are plain data too. A type
# added here can be built, and its ``__setstate__`` run, by any file this loader reads: add one only when a
# checkpoint of this project really holds it. The list is passed to ``torch.serialization.safe_globals`` around
# the one ``torch.load`` call, so it never widens what other ``torch.load`` calls in the process accept.
SAFE_GLOBALS: tuple[Any, ...] = ()

# the entries every stage checkpoint has (``adafocus_stage``: written by the stage module's on_save_checkpoint)
STAGE_KEYS = ("adafocus_stage", "hyper_parameters")

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6: a zip archive; older files are a bare pickle


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the run that loads it."""

    reason: str = ""  # for a file that cannot be read: why, in a few words (the message says it too)


class MissingCheckpointError(FileNotFoundError):
    """No checkpoint file where the setting points (a :class:`FileNotFoundError`, told apart from other missing
    files by the entry points that report it)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose pickle needs Python objects that are not plain data; refused without running them."""

    def __init__(self, message: str, needed: str):
        super().__init__(message)
        self.needed = needed  # the global (module.name) torch's weights-only unpickler refused


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict[str, Any]:
    """The contents of the adafocus-pl stage checkpoint at ``path``, tensors on the CPU (memory-mapped: only what is
    used is read from disk). ``key`` is the setting or argument that named the file (``ckpt_path``, ``init_from``);
    the error messages start with ``key=path``.

    Raises :class:`MissingCheckpointError` (a :class:`FileNotFoundError`), :class:`CheckpointError` or
    :class:`UnsafeCheckpointError` (see the module docstring); nothing in the file is executed in any case.
    """
    ckpt = read_torch_file(path, key)
    if not isinstance(ckpt, Mapping) or any(name not in ckpt for name in STAGE_KEYS):
        found = (f"its top-level keys are {', '.join(map(repr, list(ckpt)[:8]))}" if isinstance(ckpt, Mapping)
                 else f"it holds a {type(ckpt).__name__}")
        raise CheckpointError(
            f"{key}={path} is a torch file but not an adafocus-pl stage checkpoint (no 'adafocus_stage' / "
            f"'hyper_parameters' entries; {found}). Point {key} at a checkpoint written by python -m "
            f"adafocus_pl.train (<run dir>/checkpoints/last.ckpt or epochNNN.ckpt); backbone weights in a plain "
            f"state_dict go in model.glance_pretrained / model.local_pretrained instead; a checkpoint of the "
            f"authors' release is converted by python -m adafocus_pl.convert")
    return dict(ckpt)


def read_torch_file(path: str | Path, key: str = "ckpt_path", safe_globals: tuple[Any, ...] = SAFE_GLOBALS) -> Any:
    """What ``torch.save`` wrote to ``path`` (tensors on the CPU, memory-mapped), unpickled weights-only with
    ``safe_globals`` allowed on top of torch's defaults (entries as ``torch.serialization.safe_globals`` takes
    them: an object, or ``(object, "the.name.it.is.pickled.under")``). The errors are :func:`read_checkpoint`'s,
    without its check that the file is a stage checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise MissingCheckpointError(
            f"{key}={path} is a directory, not a checkpoint file: give the file, e.g. {key}={path}/checkpoints/"
            f"last.ckpt for a run directory")
    if not path.is_file():
        raise MissingCheckpointError(
            f"{key}={path} does not exist: give an existing checkpoint file (a stage run writes "
            f"<run dir>/checkpoints/last.ckpt and epochNNN.ckpt)")
    if path.stat().st_size == 0:
        raise _unreadable(path, key, "the file is empty (0 bytes)")
    with open(path, "rb") as handle:
        head = handle.read(512)
    zip_format = head.startswith(_ZIP_MAGIC)
    try:
        # torch warns about what it finds odd in a file (a TorchScript archive, a newer pickle protocol) before it
        # fails: the error below says it once, in the user's terms
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            warnings.simplefilter("ignore")
            # mmap needs the zip format; a bare pickle (never written by this project) is still read weights-only
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zip_format)
    except Exception as err:  # truncated zip, garbage, not a torch file, a refused object, unreadable disk
        # from None: torch's own text (with its advice to retry with weights_only=False) stays out of the report
        raise _refusal(path, key, err, head, safe_globals) from None


def _refusal(path: Path, key: str, err: Exception, head: bytes, safe_globals: tuple[Any, ...] = SAFE_GLOBALS,
             ) -> CheckpointError:
    """The error to raise for a file ``torch.load`` failed on (``head``: its first bytes; ``safe_globals``: what
    the load allowed besides torch's defaults)."""
    zip_format = head.startswith(_ZIP_MAGIC)
    if isinstance(err, pickle.UnpicklingError):
        reason = f"UnpicklingError: {_unpickler_reason(err)}"
        needed = _refused_global(reason)
    elif isinstance(err, EOFError):
        reason, needed = "EOFError: the file ends before the data it announces", None
    else:
        reason, needed = f"{type(err).__name__}: {_first_line(str(err))}", None
    # a bare pickle (pickle.dump of a crafted object) fails at an opcode before its first object: find that object
    needed = needed or (None if zip_format else _disallowed_global_in_pickle(path, safe_globals))
    if needed is not None:
        return _unsafe(path, key, needed)
    if "TorchScript" in str(err):
        return _unreadable(path, key, "it is a TorchScript archive (torch.jit.save), not a torch.save checkpoint")
    kind = None if zip_format else _file_kind(head)
    return _unreadable(path, key, f"it is {kind}, not a torch file" if kind else reason)


def _unsafe(path: Path, key: str, needed: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{key}={path} was refused and nothing in it was run: it holds Python objects that are not plain data (it "
        f"needs {needed}, which torch.load(weights_only=True) does not allow). Loading it could run code, and this "
        f"project's own checkpoints never need that: they hold only tensors, numbers, strings and lists/dicts of "
        f"them. Point {key} at a checkpoint written by an adafocus-pl stage run (<run dir>/checkpoints/last.ckpt); "
        f"do not open this file with weights_only=False unless you know who made it and why", needed)


def _unreadable(path: Path, key: str, reason: str) -> CheckpointError:
    error = CheckpointError(
        f"{key}={path} cannot be read ({reason}); the file is truncated or not a checkpoint. Point {key} at "
        f"another checkpoint of {path.parent} (last.ckpt, epochNNN.ckpt) or of the run that should have written "
        f"it (with ckpt_path=auto, deleting this file makes the stage start over)")
    error.reason = reason
    return error


# how other files a ckpt_path may point at by mistake begin
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"%PDF", "a PDF document"), (b"\x1f\x8b", "gzip-compressed"), (b"\x89HDF", "an HDF5 file"),
          (b"\x1a\x45\xdf\xa3", "a Matroska/WebM video"))


def _file_kind(head: bytes) -> str | None:
    """What a file that is not torch's zip format looks like from its first bytes, when that is clear."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:  # not merely a multi-byte character cut at the end of ``head``
            return None
        text = head[:err.start].decode("utf-8")
    return "a text file" if all(c.isprintable() or c in "\t\r\n" for c in text) else None


def _unpickler_reason(err: pickle.UnpicklingError) -> str:
    """The weights-only unpickler's own words: ``torch.load`` re-raises them wrapped in advice to retry with
    ``weights_only=False`` (``raise ... from None``, which keeps the original as ``__context__``)."""
    original = err.__context__ if isinstance(err.__context__, pickle.UnpicklingError) else err
    text = str(original)
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\nCheck the documentation|$)", text, re.S)
    return _first_line(match.group(1) if match and original is err else text)


def _refused_global(reason: str) -> str | None:
    """The Python object (``module.name``, or how torch names it) that made the unpickler refuse the file; None
    when the refusal is about broken bytes, not about a disallowed object."""
    for pattern in (r"GLOBAL (\S+) was not an allowed global", r"unsupported GLOBAL (\S+) whose module",
                    r"unrecognized function (.+)$", r"(?:create new object|build) .* but got (.+)$"):
        match = re.search(pattern, reason)
        if match:
            return match.group(1).strip()
    return None


def global_names(safe_globals: tuple[Any, ...]) -> set[str]:
    """The dotted names a pickle uses for ``safe_globals`` (entries as ``torch.serialization.safe_globals`` takes
    them: an object, or ``(object, "the.name.it.is.pickled.under")``)."""
    return {g[1] if isinstance(g, tuple) else f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', g)}"
            for g in safe_globals}


def _disallowed_global_in_pickle(path: Path, safe_globals: tuple[Any, ...] = SAFE_GLOBALS) -> str | None:
    """The first Python object a bare pickle file (not torch's zip format) asks for that the weights-only unpickler
    does not allow, found by reading its opcodes without executing any (``pickletools``). The unpickler itself
    stops earlier on such files, at opcodes of pickle protocols above 2, and would otherwise only say that."""
    try:
        allowed = set(torch._weights_only_unpickler._get_allowed_globals())
    except AttributeError:  # a torch without that table: no verdict, the file is reported as unreadable
        return None
    allowed |= global_names(safe_globals)
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, arg, _ in pickletools.genops(handle):
                if isinstance(arg, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
                    strings.append(str(arg))
                name = {"GLOBAL": str(arg).replace(" ", "."),
                        "STACK_GLOBAL": ".".join(strings[-2:]) if len(strings) >= 2 else None}.get(opcode.name)
                if name and name not in allowed:
                    return name
    except Exception:  # bytes that are no pickle: nothing disallowed was met before them
        return None
    return None


def _first_line(text: str) -> str:
    """The first line of a torch error, without its advice to retry with ``weights_only=False``."""
    text = text.replace(torch.serialization.UNSAFE_MESSAGE, "")
    text = re.sub(r"\s*This is an internal miniz error.*", "", text, flags=re.S).strip()
    return text.splitlines()[0].strip() if text else "no details"


# ------------------------------------------------------------------------------------------------ the network in it
NET_PREFIX = "net."  # the stage modules hold the network as ``self.net``
RHO_KEY = "adafocus_rho"  # AdaFocus+ Stage III+: {"eta": eta, "rho": rho} solved on the training split (Sec. 3.3)
_LEGACY_RHO_KEY = "adafocus_keep_threshold"  # the same, as files written before the entry was renamed hold it
# a checkpoint made by python -m adafocus_pl.convert from the authors' release: its source file, epoch, best_acc
CONVERTED_KEY = "adafocus_converted_from"


def network_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state dict out of a stage checkpoint (the ``net.`` prefix dropped)."""
    return {k[len(NET_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}


def saved_rho(ckpt: Mapping[str, Any]) -> float | None:
    """The rho a Stage III+ checkpoint stores (None for any other checkpoint)."""
    if RHO_KEY in ckpt:
        return ckpt[RHO_KEY]["rho"]
    legacy = ckpt.get(_LEGACY_RHO_KEY) or {}
    return legacy.get("threshold")


@dataclass
class LoadedCheckpoint:
    net: VideoNet
    stage: int
    patch_policy: str  # the policy the checkpoint's f_L/f_C were trained with
    path: Path
    hparams: dict = field(default_factory=dict)
    rho: float | None = None  # AdaFocus+ Stage III+: the rho solved on the training split (Sec. 3.3)


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the network of a stage checkpoint in eval mode (evaluation, prediction, the fast path).

    A missing file raises :class:`MissingCheckpointError`, an unreadable, unsafe or foreign one
    :class:`CheckpointError`, each with a message that starts ``ckpt_path=PATH``."""
    path = Path(path)
    ckpt = read_checkpoint(path, "ckpt_path")
    hparams = ckpt["hyper_parameters"]
    net = build_network(hparams["net"])
    net.load_state_dict(network_state(ckpt))
    stage = int(ckpt["adafocus_stage"])
    policy = hparams.get("patch_policy") or ("random" if stage == 1 else "learned")
    return LoadedCheckpoint(net=net.eval(), stage=stage, patch_policy=policy, path=path, hparams=hparams,
                            rho=saved_rho(ckpt))


# ------------------------------------------------------------------------------------------------ fitting a run
def network_mismatches(theirs: Mapping, ours: Mapping, path: str | Path, key: str,
                       backbones_only: bool = False) -> list[str]:
    """One message per network setting (``model.*``) that differs between a checkpoint's ``theirs`` and this run's
    ``ours``: the settings that fix parameter shapes (each architecture's ``shape_keys``), or with
    ``backbones_only`` those a Stage 0 checkpoint must share (``backbone_keys``)."""
    architectures = dict.fromkeys((architecture_of(theirs), architecture_of(ours)))
    if backbones_only:
        names = VideoNet.backbone_keys
    else:
        try:
            names = shape_keys(*architectures)
        except ValueError as err:  # an architecture this version does not know
            return [f"{key}={path}: {err}"]
    return [
        f"{key}={path} was trained with model.{name}={theirs.get(name)!r} but this run has model.{name}="
        f"{ours.get(name)!r}: set model.{name}={theirs.get(name)!r} or use a checkpoint trained with "
        f"{ours.get(name)!r}"
        for name in names if theirs.get(name) != ours.get(name)
    ]


def resume_problems(path: str | Path, stage_id: int, net: Mapping) -> list[str]:
    """What stops ``ckpt_path=path`` from resuming a stage ``stage_id`` run of network ``net`` (empty: fine)."""
    try:
        ckpt = read_checkpoint(path, "ckpt_path")
    except (OSError, CheckpointError) as err:
        return [str(err)]
    if CONVERTED_KEY in ckpt:  # weights only: no optimiser, loop or epoch to continue from
        return [f"ckpt_path={path} holds weights converted from the authors' release (python -m adafocus_pl.convert),"
                f" with no training state to resume: start a stage from them with init_from={path} ckpt_path=null, "
                f"or evaluate them with python -m adafocus_pl.eval ckpt_path={path}"]
    problems = []
    if ckpt["adafocus_stage"] != stage_id:
        problems.append(
            f"ckpt_path={path} is a stage {ckpt['adafocus_stage']} checkpoint but this run is stage {stage_id}: "
            f"resume it with stage=stage{ckpt['adafocus_stage']}, or start stage {stage_id} from its weights with "
            f"init_from={path} ckpt_path=null")
    theirs = ckpt["hyper_parameters"].get("net", {})
    # a Stage 0 run serves every patch size and grid (it never cuts a patch): only its backbones must agree
    problems += network_mismatches(theirs, net, path, "ckpt_path", backbones_only=ckpt["adafocus_stage"] == 0)
    if bool(theirs.get("skip_policy")) != bool(net.get("skip_policy")):  # init_from may add pi' (Stage II+)
        plus = bool(theirs.get("skip_policy"))
        problems.append(f"ckpt_path={path} is {'an AdaFocus+' if plus else 'an AdaFocus'} checkpoint: resume it "
                        f"with {'plus=on' if plus else 'plus=off'}")
    return problems


def load_init_weights(net: VideoNet, ours: Mapping, path: str | Path, stage_id: int,
                      accepts: tuple[int, ...], trainable: list[str]) -> None:
    """``init_from``: load the network weights of an earlier stage's checkpoint into ``net`` (built from the
    ``model`` settings ``ours``), after checking that it fits this run (stage ``stage_id``, which starts from the
    stages in ``accepts`` and trains ``trainable``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"init_from checkpoint not found: {path}. Run the previous stage first (same experiment_name, "
            f"model.patch_size and seed), or pass init_from=/path/to/stage.ckpt (init_from=null to start fresh)."
        )
    ckpt = read_checkpoint(path, "init_from")
    stage = ckpt["adafocus_stage"]
    if stage not in accepts:
        raise CheckpointError(
            f"init_from={path} is a stage {stage} checkpoint, but stage {stage_id} starts from stage "
            f"{' or '.join(map(str, accepts))}. Point init_from at the right stage's checkpoint."
        )
    theirs = ckpt["hyper_parameters"]["net"]
    state, own = network_state(ckpt), net.state_dict()
    if stage == 0:  # Stage 0 trained backbones on whole frames only: take those, keep the rest as built
        parts = tuple(ckpt["hyper_parameters"].get("trainable", ("glance", "local")))
        mismatches = network_mismatches(theirs, ours, path, "init_from", backbones_only=True)
        state = {k: v for k, v in state.items() if k.split(".", 1)[0] in parts}
        own = {k: v for k, v in own.items() if k.split(".", 1)[0] in parts}
    else:
        mismatches = network_mismatches(theirs, ours, path, "init_from")
    if mismatches:
        raise CheckpointError("; ".join(mismatches))
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
           if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    fresh_skip = [k for k in missing if k.startswith("skip_policy.")]
    if fresh_skip and "skip_policy" in trainable and not theirs.get("skip_policy"):
        # AdaFocus+: pi' is new in Stage II (Sec. 3.3) and starts from scratch beside the loaded parts
        missing = [k for k in missing if not k.startswith("skip_policy.")]
        state.update({k: own[k] for k in fresh_skip})
    elif fresh_skip:
        raise ValueError(
            f"{path} has no AdaFocus+ skip policy pi', which this stage needs trained: point init_from at a "
            f"Stage II checkpoint trained with plus=on, or run with plus=off.")
    extra = sorted(k for k in set(state) - set(own) if k.startswith("skip_policy."))
    if extra:
        raise ValueError(f"{path} is an AdaFocus+ checkpoint (it has pi'); run with plus=on to use it.")
    if bad or missing:
        raise ValueError(f"{path} does not fit this network: shape mismatches {bad[:5]}, missing keys {missing[:5]}")
    net.load_state_dict(state, strict=stage != 0)
