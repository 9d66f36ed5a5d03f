"""Reading an adafocus-pl stage checkpoint file: the one loader that training (``init_from``, the ``ckpt_path``
resume checks, the W&B run id), evaluation, prediction and the fast inference path all use. No Lightning needed.

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
from pathlib import Path
from typing import Any

import torch

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
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            warnings.simplefilter("ignore")
            # mmap needs the zip format; a bare pickle (never written by this project) is still read weights-only
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zip_format)
    except Exception as err:  # truncated zip, garbage, not a torch file, a refused object, unreadable disk
        # from None: torch's own text (with its advice to retry with weights_only=False) stays out of the report
        raise _refusal(path, key, err, head) from None
    if not isinstance(ckpt, Mapping) or any(name not in ckpt for name in STAGE_KEYS):
        found = (f"its top-level keys are {', '.join(map(repr, list(ckpt)[:8]))}" if isinstance(ckpt, Mapping)
                 else f"it holds a {type(ckpt).__name__}")
        raise CheckpointError(
            f"{key}={path} is a torch file but not an adafocus-pl stage checkpoint (no 'adafocus_stage' / "
            f"'hyper_parameters' entries; {found}). Point {key} at a checkpoint written by python -m "
            f"adafocus_pl.train (<run dir>/checkpoints/last.ckpt or epochNNN.ckpt); backbone weights in a plain "
            f"state_dict go in model.glance_pretrained / model.local_pretrained instead")
    return dict(ckpt)


def _refusal(path: Path, key: str, err: Exception, head: bytes) -> CheckpointError:
    """The error to raise for a file ``torch.load`` failed on (``head``: its first bytes)."""
    zip_format = head.startswith(_ZIP_MAGIC)
    if isinstance(err, pickle.UnpicklingError):
        reason = f"UnpicklingError: {_unpickler_reason(err)}"
        needed = _refused_global(reason)
    elif isinstance(err, EOFError):
        reason, needed = "EOFError: the file ends before the data it announces", None
    else:
        reason, needed = f"{type(err).__name__}: {_first_line(str(err))}", None
    # a bare pickle (pickle.dump of a crafted object) fails at an opcode before its first object: find that object
    needed = needed or (None if zip_format else _disallowed_global_in_pickle(path))
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
    return CheckpointError(
        f"{key}={path} cannot be read ({reason}); the file is truncated or not a checkpoint. Point {key} at "
        f"another checkpoint of {path.parent} (last.ckpt, epochNNN.ckpt) or of the run that should have written "
        f"it (with ckpt_path=auto, deleting this file makes the stage start over)")


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


def _disallowed_global_in_pickle(path: Path) -> str | None:
    """The first Python object a bare pickle file (not torch's zip format) asks for that the weights-only unpickler
    does not allow, found by reading its opcodes without executing any (``pickletools``). The unpickler itself
    stops earlier on such files, at opcodes of pickle protocols above 2, and would otherwise only say that."""
    try:
        allowed = set(torch._weights_only_unpickler._get_allowed_globals())
    except AttributeError:  # a torch without that table: no verdict, the file is reported as unreadable
        return None
    allowed |= {f"{getattr(g, '__module__', '')}.{getattr(g, '__qualname__', g)}" for g in SAFE_GLOBALS}
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
