"""Stage checkpoints: written atomically, read with clear errors, checked against the run that loads them.

- :class:`AtomicCheckpointIO` (every trainer config's ``plugins``): a kill during a save leaves the previous file;
- :func:`read_checkpoint` (from :mod:`adafocus_pl.checkpoint_file`: weights-only, so a file that would run code is
  refused) / :func:`resume_problems` / :func:`network_mismatches`: used by ``init_from`` (weights of an earlier
  stage) and by the checks a resumed run (``ckpt_path``) makes before training (:mod:`adafocus_pl.preflight`);
  the messages say which setting differs and how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins.io import TorchCheckpointIO

# the one reader of checkpoint files (no Lightning, nothing in the file runs): re-exported for the stages
from adafocus_pl.checkpoint_file import CheckpointError, UnsafeCheckpointError, read_checkpoint

__all__ = ["AtomicCheckpointIO", "CheckpointError", "UnsafeCheckpointError", "read_checkpoint", "network_mismatches",
           "resume_problems", "SHAPE_KEYS", "BACKBONE_KEYS", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write ``<dir>/.<name>.<pid>.tmp`` in the checkpoint's own directory, fsync it, then ``os.replace`` it onto
    ``<name>``: a process killed at any point leaves the old checkpoint or the new one, never a truncated one.

    Lightning's own save is atomic only when the system temp directory and the checkpoint share a filesystem: it
    writes through fsspec to a file in ``$TMPDIR`` and moves it, and a move across filesystems (node-local /tmp,
    logs on NFS or Lustre, the usual cluster layout) is a copy straight into the target. It also never fsyncs.
    Remote paths (``s3://`` ...) keep Lightning's fsspec transaction. A temp file left by a killed save is removed
    by the next save to that name.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
        try:
            with open(tmp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)  # the rename itself survives a crash of the machine
        for stale in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):  # left by a killed save
            stale.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


# the network settings that must agree between a checkpoint and the run that loads it
SHAPE_KEYS = ("architecture", "num_classes", "patch_size", "glance_backbone", "local_backbone", "grid_size", "classifier",
              "location_policy", "glance_frames", "focus_frames", "temporal_shift", "use_glance")
# ... and those that a Stage 0 checkpoint (backbones trained on whole frames, no patch, no policy) must share
BACKBONE_KEYS = ("architecture", "glance_backbone", "local_backbone")


def network_mismatches(theirs: Mapping, ours: Mapping, path: str | Path, key: str,
                       names: tuple[str, ...] = SHAPE_KEYS) -> list[str]:
    """One message per network setting (``model.*`` among ``names``) that differs between a checkpoint and this
    run."""
    problems = [
        f"{key}={path} was trained with model.{name}={theirs.get(name)!r} but this run has model.{name}="
        f"{ours.get(name)!r}: set model.{name}={theirs.get(name)!r} or use a checkpoint trained with "
        f"{ours.get(name)!r}"
        for name in names if theirs.get(name) != ours.get(name)
    ]
    return problems


def resume_problems(path: str | Path, stage_id: int, net: Mapping) -> list[str]:
    """What stops ``ckpt_path=path`` from resuming a stage ``stage_id`` run of network ``net`` (empty: fine)."""
    try:
        ckpt = read_checkpoint(path, "ckpt_path")
    except (OSError, CheckpointError) as err:
        return [str(err)]
    problems = []
    if ckpt["adafocus_stage"] != stage_id:
        problems.append(
            f"ckpt_path={path} is a stage {ckpt['adafocus_stage']} checkpoint but this run is stage {stage_id}: "
            f"resume it with stage=stage{ckpt['adafocus_stage']}, or start stage {stage_id} from its weights with "
            f"init_from={path} ckpt_path=null")
    theirs = ckpt["hyper_parameters"].get("net", {})
    # a Stage 0 run serves every patch size and grid (it never cuts a patch): only its backbones must agree
    problems += network_mismatches(theirs, net, path, "ckpt_path",
                                   names=BACKBONE_KEYS if ckpt["adafocus_stage"] == 0 else SHAPE_KEYS)
    if bool(theirs.get("skip_policy")) != bool(net.get("skip_policy")):  # init_from may add pi' (Stage II+)
        plus = bool(theirs.get("skip_policy"))
        problems.append(f"ckpt_path={path} is {'an AdaFocus+' if plus else 'an AdaFocus'} checkpoint: resume it "
                        f"with {'plus=on' if plus else 'plus=off'}")
    return problems
