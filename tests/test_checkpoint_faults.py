"""Checkpoints survive a kill during their write, and a killed run resumes from what is left, mid-epoch included."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from pytorch_lightning.plugins.io import TorchCheckpointIO

from adafocus_pl.stages.checkpoint_io import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[1]


def interrupt_torch_save(monkeypatch) -> None:
    """The next ``torch.save`` into a file writes half of its bytes, then the process is 'killed'."""
    real_save = torch.save

    def half(obj, handle, *args, **kwargs):
        if not hasattr(handle, "fileno"):  # Lightning's own IO serialises into memory first
            return real_save(obj, handle, *args, **kwargs)
        import io

        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(torch, "save", half)


def test_an_interrupted_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.arange(1000.0)}, target)
    interrupt_torch_save(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(1000)}, target)
    monkeypatch.undo()
    assert torch.load(target)["step"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # the partial temp file is gone
    AtomicCheckpointIO().save_checkpoint({"step": 3}, target)
    assert torch.load(target)["step"] == 3


def test_lightnings_own_save_breaks_the_file_when_tmp_is_on_another_filesystem(tmp_path, monkeypatch):
    """Why AtomicCheckpointIO exists: Lightning writes to $TMPDIR and moves the file; across filesystems (node-local
    /tmp, logs on NFS) the move is a copy into the target, and a kill during that copy truncates ``last.ckpt``."""
    target = tmp_path / "last.ckpt"
    TorchCheckpointIO().save_checkpoint({"step": 1, "w": torch.arange(1000.0)}, target)
    real_rename = os.rename

    def cross_device_rename(src, dst, *args, **kwargs):
        if str(dst) == str(target):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_rename(src, dst, *args, **kwargs)

    def copy_half(src, dst, *args, **kwargs):
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed while copying")

    monkeypatch.setattr(os, "rename", cross_device_rename)
    monkeypatch.setattr(shutil, "copyfile", copy_half)
    with pytest.raises(KeyboardInterrupt):
        TorchCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(1000)}, target)
    monkeypatch.undo()
    with pytest.raises(RuntimeError):  # truncated zip archive
        torch.load(target)
    # the same interrupted cross-filesystem conditions cannot reach AtomicCheckpointIO: it renames in place
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)
    monkeypatch.setattr(os, "rename", cross_device_rename)
    monkeypatch.setattr(shutil, "copyfile", copy_half)
    AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target)["step"] == 2


def read_batches(path: Path) -> list[tuple[int, int, int, list[int]]]:
    rows = []
    for line in path.read_text().splitlines():
        epoch, batch, step, *videos = map(int, line.split())
        rows.append((epoch, batch, step, videos))
    return rows


def test_a_run_killed_while_writing_a_checkpoint_resumes_mid_epoch_from_what_is_left(tiny_synthetic, tmp_path):
    """Checkpoints every 2 steps and after each epoch; the 7th save (global step 10, in epoch 1 of 2) is killed
    halfway through its write. The rerun of the same command resumes from step 8 and sees exactly the videos of
    epoch 1 it had not trained on yet."""
    marker, batches = tmp_path / "killed.txt", tmp_path / "batches.txt"
    command = [
        sys.executable, "-m", "adafocus_pl.train", *tiny_overrides(tiny_synthetic, tmp_path / "logs"),
        "data.num_workers=1", "trainer.max_epochs=2", "trainer.limit_train_batches=1.0", "ckpt_path=auto",
        "callbacks.step_checkpoint.every_n_train_steps=2",
        "+callbacks.kill._target_=tests.kill_callback.KillDuringSave", f"+callbacks.kill.marker={marker}",
        "+callbacks.kill.save=7",
        "+callbacks.record._target_=tests.kill_callback.RecordBatches", f"+callbacks.record.path={batches}",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}  # this checkout's code
    killed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoints = next((tmp_path / "logs").glob("synthetic/stage1/*/seed0/checkpoints"))
    partial = list(checkpoints.glob(".last.ckpt.*.tmp"))
    assert len(partial) == 1 and partial[0].name in marker.read_text() and "global step 10" in marker.read_text()
    with pytest.raises(RuntimeError):
        torch.load(partial[0], weights_only=False)  # what the kill left half written ...
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)  # ... never replaced the last good one
    assert (last["epoch"], last["global_step"]) == (1, 8)
    trained_before = read_batches(batches)
    assert [step for _, _, step, _ in trained_before] == list(range(1, 11))

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "resuming stage 1 from" in output and "not resumable" not in output
    assert (checkpoints.parent / "metrics.json").is_file() and not list(checkpoints.glob(".*.tmp"))
    after = read_batches(batches)[len(trained_before):]
    assert [(epoch, batch, step) for epoch, batch, step, _ in after] == [(1, b, b + 7) for b in range(2, 6)]
    # epoch 1 = its first two batches (kept in the step-8 checkpoint) + the four resumed ones: every video once
    epoch1 = [v for epoch, _, step, videos in trained_before if epoch == 1 and step <= 8 for v in videos]
    epoch1 += [v for _, _, _, videos in after for v in videos]
    assert sorted(epoch1) == list(range(24))
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 12
