"""How Lightning writes stage checkpoints: :class:`AtomicCheckpointIO` (every trainer config's ``plugins``), so
that a kill during a save leaves the previous file. Reading and checking them is :mod:`adafocus_pl.checkpoint`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.plugins.io import TorchCheckpointIO

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
