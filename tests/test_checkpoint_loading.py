"""Every checkpoint file goes through one weights-only loader (``adafocus_pl.checkpoint``): the project's own
checkpoints of every stage load through it unchanged, a crafted one that would run code is refused at every entry
(eval / predict / the fast path, ``init_from``, the resume checks of ``ckpt_path``, the W&B run id) without running
anything, and a truncated or foreign file gives one clear message, also on the command line."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from pytorch_lightning.plugins.io import TorchCheckpointIO

from adafocus_pl.checkpoint import (
    SAFE_GLOBALS,
    CheckpointError,
    MissingCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    read_checkpoint,
)
from adafocus_pl.models.build import build_network

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ real checkpoints
@pytest.fixture(scope="module")
def stage_checkpoints(plus_chain, tiny_synthetic, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of every kind a stage run writes: Stage I, II+ and III+ (the session's ``plus_chain``; Stage II
    and III differ from them only in the network settings), Stage I's best epoch, a Stage 0 (its own module and
    hyper-parameters), and a mid-epoch step checkpoint (with the StatefulDataLoader's state) of a run logging to
    W&B (with the run id)."""
    from adafocus_pl.stages.runner import run_stage
    from adafocus_pl.utils.config import compose

    dirs, _ = plus_chain
    logs = tmp_path_factory.mktemp("ckpt_kinds")
    files = {name: dirs[name] / "checkpoints" / "last.ckpt" for name in ("stage1", "stage2_plus", "stage3_plus")}
    files["stage1_best"] = next((dirs["stage1"] / "checkpoints").glob("epoch*.ckpt"))

    def run(*overrides: str) -> Path:
        cfg = compose("train", tiny_overrides(tiny_synthetic, logs) + list(overrides))
        run_stage(cfg)
        return Path(cfg.paths.output_dir) / "checkpoints"

    files["stage0"] = run("stage=stage0", "schedule.stage0.epochs=1") / "last.ckpt"
    # 3 training batches, a step checkpoint after the 2nd: saved mid-epoch, under its own name so that the
    # end-of-epoch last.ckpt does not replace it; a loader worker, so that the state holds its snapshot too
    files["mid_epoch_wandb"] = run("stage=stage1", "logger=default", "data.num_workers=1",
                                   "callbacks.step_checkpoint.filename=step",
                                   "callbacks.step_checkpoint.every_n_train_steps=2",
                                   f"paths.output_dir={logs / 'mid'}") / "step.ckpt"
    return files


def unrestricted_load(path: Path) -> dict:
    """How eval, predict and the fast path read a checkpoint before the weights-only loader (trusted files only)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def test_every_kind_of_stage_checkpoint_needs_no_global_beyond_torchs_defaults(stage_checkpoints):
    """Why ``SAFE_GLOBALS`` is empty: no checkpoint this project writes holds anything but tensors and plain data,
    and the weights-only load gives exactly what the unrestricted one gave."""
    assert SAFE_GLOBALS == ()
    for name, path in stage_checkpoints.items():
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == [], name
        safe, reference = read_checkpoint(path, "ckpt_path"), unrestricted_load(path)
        assert set(safe) == set(reference), name
        for key in reference:
            if key == "state_dict":
                assert all(torch.equal(safe[key][k], v) for k, v in reference[key].items()), name
            elif key != "optimizer_states":  # tensors inside: compared through the network outputs below
                assert repr(safe[key]) == repr(reference[key]), (name, key)
    stages = {name: read_checkpoint(path)["adafocus_stage"] for name, path in stage_checkpoints.items()}
    assert stages == {"stage1": 1, "stage2_plus": 2, "stage3_plus": 3, "stage1_best": 1, "stage0": 0,
                      "mid_epoch_wandb": 1}
    mid = read_checkpoint(stage_checkpoints["mid_epoch_wandb"])
    assert mid["global_step"] == 2 and isinstance(mid["adafocus_wandb_run_id"], str)
    loader_state = mid["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["_snapshot"]
    assert loader_state["_main_snapshot"]["_sampler_iter_state"]["samples_yielded"] == 8  # 2 batches of 4
    assert set(loader_state["_worker_snapshots"]) == {"worker_0"}


def test_load_checkpoint_gives_the_networks_outputs_of_the_unrestricted_load(stage_checkpoints):
    frames = torch.randn(2, 8, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    for name in ("stage1", "stage2_plus", "stage3_plus"):
        path = stage_checkpoints[name]
        loaded = load_checkpoint(path)
        reference = unrestricted_load(path)
        net = build_network(reference["hyper_parameters"]["net"])
        net.load_state_dict({k[len("net."):]: v for k, v in reference["state_dict"].items() if k.startswith("net.")})
        net.eval()
        rho = (reference.get("adafocus_rho") or {}).get("rho")
        assert loaded.rho == rho and loaded.stage == reference["adafocus_stage"]
        assert loaded.net.capabilities.has_skip_policy == (name != "stage1") and (rho is not None) == (name == "stage3_plus")
        with torch.no_grad():
            ours = loaded.net(frames, patch_policy="learned", rho=rho)
            theirs = net(frames, patch_policy="learned", rho=rho)
        assert torch.equal(ours.logits, theirs.logits), name
        assert torch.equal(ours.offsets, theirs.offsets), name


def test_the_loader_does_not_widen_what_other_torch_loads_accept(stage_checkpoints):
    before = list(torch.serialization.get_safe_globals())
    read_checkpoint(stage_checkpoints["stage1"])
    assert list(torch.serialization.get_safe_globals()) == before


# ------------------------------------------------------------------------------------------------ crafted pickles
class RunsCode:
    """Unpickling this runs ``touch MARKER``: what a crafted checkpoint would do with something worse."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def crafted_checkpoint(path: Path, marker: Path, form: str = "torch.save") -> Path:
    """A file that looks like a stage checkpoint and runs ``touch marker`` when unpickled: torch.save's zip format,
    or a bare ``pickle.dump``."""
    payload = {"adafocus_stage": 1, "hyper_parameters": {"net": {}}, "state_dict": {}, "x": RunsCode(marker)}
    if form == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    return path


@pytest.mark.parametrize("form", ["torch.save", "pickle.dump"])
def test_the_crafted_file_really_runs_code_when_unpickled_without_restriction(tmp_path, form):
    """The marker is a working witness: an unrestricted load creates it (so its absence below means a refusal)."""
    marker = tmp_path / "MARKER"
    path = crafted_checkpoint(tmp_path / "crafted.ckpt", marker, form)
    if form == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.is_file()


def assert_refused(error: BaseException, path: Path, key: str = "ckpt_path") -> None:
    message = str(error)
    assert f"{key}={path} was refused and nothing in it was run" in message, message
    assert "not plain data" in message and "posix.system" in message and "could run code" in message
    assert "this project's own checkpoints never need that" in message


@pytest.mark.parametrize("form", ["torch.save", "pickle.dump"])
def test_load_checkpoint_refuses_a_crafted_file_without_running_it(tmp_path, form):
    """``load_checkpoint`` is what ``python -m adafocus_pl.eval``, ``python -m adafocus_pl.predict`` and the fast
    inference path read checkpoints with."""
    marker = tmp_path / "MARKER"
    path = crafted_checkpoint(tmp_path / "crafted.ckpt", marker, form)
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_checkpoint(path)
    assert not marker.exists()
    assert_refused(refused.value, path)
    assert isinstance(refused.value, CheckpointError) and refused.value.needed == "posix.system"


def test_eval_on_a_crafted_file_exits_with_the_message_and_runs_nothing(tmp_path):
    from adafocus_pl.eval import main

    marker = tmp_path / "MARKER"
    path = crafted_checkpoint(tmp_path / "crafted.ckpt", marker)
    with pytest.raises(SystemExit) as stopped:
        main([f"ckpt_path={path}"])
    assert not marker.exists()
    assert str(stopped.value.code).startswith("error: ckpt_path=")
    assert_refused(stopped.value.code, path)


@pytest.mark.parametrize("key", ["init_from", "ckpt_path"])
def test_training_refuses_a_crafted_file_before_lightning_reads_it(compose_tiny, tmp_path, monkeypatch, key):
    """``init_from`` (weights of an earlier stage) and the resume checks of ``ckpt_path`` read the file with the
    same loader. Lightning never gets to read a resumed file the checks refused."""
    from adafocus_pl.preflight import PreflightError
    from adafocus_pl.stages.runner import run_stage

    lightning_reads = []
    monkeypatch.setattr(TorchCheckpointIO, "load_checkpoint", lambda self, *a, **k: lightning_reads.append(a))
    marker = tmp_path / "MARKER"
    path = crafted_checkpoint(tmp_path / "crafted.ckpt", marker)
    cfg = compose_tiny(f"{key}={path}")
    with pytest.raises(PreflightError if key == "ckpt_path" else UnsafeCheckpointError) as refused:
        run_stage(cfg)
    assert not marker.exists() and lightning_reads == []
    assert_refused(refused.value, path, key)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_the_wandb_run_id_is_read_without_running_the_file(tmp_path):
    from omegaconf import OmegaConf

    from adafocus_pl.utils.wandb_run import resume_wandb_run

    marker = tmp_path / "MARKER"
    path = crafted_checkpoint(tmp_path / "crafted.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError):
        resume_wandb_run(OmegaConf.create({"logger": {"wandb": {"id": None}}}), str(path))
    assert not marker.exists()


def test_lightnings_own_checkpoint_load_defaults_to_weights_only_in_this_version(tmp_path):
    """``trainer.fit(ckpt_path=...)`` reads the file through ``TorchCheckpointIO.load_checkpoint``, by default with
    ``weights_only=None``, which ``torch.load`` (>= 2.6) takes as True unless TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is
    set: Lightning refuses the crafted file too, with torch's own message; the resume checks refuse it first."""
    marker = tmp_path / "MARKER"
    path = crafted_checkpoint(tmp_path / "crafted.ckpt", marker)
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        TorchCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_the_runner_asks_lightning_for_a_weights_only_load_whatever_the_environment(plus_chain, compose_tiny,
                                                                                   monkeypatch):
    """``train=false ckpt_path=...`` (validate and test a checkpoint) is Lightning's read of a whole checkpoint, the
    same call as a resume: the runner passes weights_only=True, which TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot undo."""
    from adafocus_pl.stages.runner import run_stage

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    asked, real_load = [], TorchCheckpointIO.load_checkpoint

    def spy(self, path, map_location=None, weights_only=None):
        asked.append(weights_only)
        return real_load(self, path, map_location=map_location, weights_only=weights_only)

    monkeypatch.setattr(TorchCheckpointIO, "load_checkpoint", spy)
    ckpt = plus_chain[0]["stage1"] / "checkpoints" / "last.ckpt"
    metrics = run_stage(compose_tiny(f"ckpt_path={ckpt}", "train=false"))
    assert asked and all(flag is True for flag in asked) and "test/top1" in metrics


# ------------------------------------------------------------------------------------------------ unreadable files
def truncated(real: Path, tmp_path: Path) -> Path:
    path = tmp_path / "cut.ckpt"
    path.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    return path


FOREIGN = {
    "truncated": (truncated, r"cannot be read \(RuntimeError: PytorchStreamReader failed reading zip archive"),
    "text": (lambda real, d: write(d / "notes.ckpt", b"epoch 3: top-1 0.71\n"), r"cannot be read \(it is a text file"),
    "png": (lambda real, d: write(d / "image.ckpt", b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
            r"cannot be read \(it is a PNG image, not a torch file\)"),
    "jpeg": (lambda real, d: write(d / "photo.ckpt", b"\xff\xd8\xff\xe0\x00\x10JFIF" + bytes(range(256))),
             r"cannot be read \(it is a JPEG image, not a torch file\)"),
    "random bytes": (lambda real, d: write(d / "noise.ckpt", bytes((7 * k + 3) % 256 for k in range(3000))),
                     r"cannot be read \(UnpicklingError: "),
    "empty": (lambda real, d: write(d / "empty.ckpt", b""), r"cannot be read \(the file is empty \(0 bytes\)\)"),
    "weights only": (lambda real, d: save(d / "weights.ckpt", {"conv.weight": torch.zeros(2)}),
                     r"is a torch file but not an adafocus-pl stage checkpoint \(no 'adafocus_stage' / "
                     r"'hyper_parameters' entries; its top-level keys are 'conv.weight'\)"),
}


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_load_checkpoint_explains_an_unreadable_or_foreign_file(plus_chain, tmp_path, kind):
    make, expected = FOREIGN[kind]
    path = make(plus_chain[0]["stage1"] / "checkpoints" / "last.ckpt", tmp_path)
    with pytest.raises(CheckpointError, match=rf"^ckpt_path={path} {expected}") as failed:
        load_checkpoint(path)
    assert not isinstance(failed.value, UnsafeCheckpointError)
    message = str(failed.value)
    assert "Point ckpt_path at" in message and "weights_only=False" not in message and "\n" not in message


def test_load_checkpoint_explains_a_missing_file_or_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^ckpt_path={tmp_path}/nope.ckpt does not exist: give an existing"):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(MissingCheckpointError, match=rf"^ckpt_path={tmp_path} is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("kind", ["truncated"])  # the other kinds' messages: test_load_checkpoint_explains_...
def test_the_eval_command_prints_one_clear_message_for_a_bad_checkpoint(plus_chain, tmp_path, kind):
    make, expected = FOREIGN[kind]
    path = make(plus_chain[0]["stage1"] / "checkpoints" / "last.ckpt", tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "adafocus_pl.eval", f"ckpt_path={path}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: ckpt_path={path} "), done.stderr[-3000:]
    assert re.search(expected, lines[-1])
