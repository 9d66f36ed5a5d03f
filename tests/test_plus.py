"""AdaFocus+ (paper Sec. 3.3): rho solving, skipped frames never reaching f_L, the Eq. 10 reward, and the
Stage II+ -> III+ -> eval chain on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adafocus_pl.eval import run as run_eval
from adafocus_pl.inference.benchmark import run_checkpoint_exit_benchmark
from adafocus_pl.models.adafocus import AdaFocusNet
from adafocus_pl.models.skipping import batch_keep_mask, solve_rho, solve_rhos
from adafocus_pl.stages.rewards import skip_reward
from adafocus_pl.stages.runner import run_stage
from tests.conftest import tiny_overrides


def tiny_plus_net(**kwargs) -> AdaFocusNet:
    torch.manual_seed(0)
    return AdaFocusNet(
        num_classes=5, patch_size=32, frame_size=96, glance_backbone="tiny_glance", local_backbone="tiny_local",
        glance_kwargs={"widths": [8, 16, 16]}, local_kwargs={"widths": [8, 16, 16, 32]}, policy_conv_channels=4,
        policy_hidden=32, classifier_hidden=32, dropout=0.0, skip_policy=True, **kwargs,
    ).eval()


# ------------------------------------------------------------------------------------------------ rho
@pytest.mark.parametrize("eta", [0.9, 0.7, 0.5, 0.25, 1.0])
def test_rho_keeps_exactly_the_top_eta_of_the_frames_it_was_solved_on(eta):
    probs = torch.rand(300, 16, generator=torch.Generator().manual_seed(1))
    rho = solve_rho(probs, eta)
    kept = probs >= rho
    assert int(kept.sum()) == round(eta * probs.numel())
    assert probs[kept].min() >= probs[~kept].max() if (~kept).any() else True  # the kept ones are the top ones


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), eta=st.floats(0.01, 1.0), seed=st.integers(0, 10_000))
def test_rho_property_any_size_and_eta(n, eta, seed):
    probs = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    probs = probs + torch.arange(n) * 1e-7  # distinct values (float32 draws can tie)
    kept = probs >= solve_rho(probs, eta)
    assert int(kept.sum()) == min(n, max(1, round(eta * n)))


def test_rho_rejects_bad_eta_and_empty_sets():
    with pytest.raises(ValueError, match="kept fraction eta"):
        solve_rho(torch.rand(10), 0.0)
    with pytest.raises(ValueError, match="kept fraction eta"):
        solve_rho(torch.rand(10), 1.5)
    with pytest.raises(ValueError, match="empty"):
        solve_rho(torch.rand(0), 0.5)


def test_smaller_eta_gives_a_higher_threshold_and_batch_mask_matches():
    probs = torch.rand(64, 8, generator=torch.Generator().manual_seed(2))
    rhos = solve_rhos(probs, [0.9, 0.7, 0.5])
    assert rhos[0.9] < rhos[0.7] < rhos[0.5]
    assert int(batch_keep_mask(probs, 0.5).sum()) == 256


# ------------------------------------------------------------------------------------------------ the network
def test_skipped_frames_never_reach_the_local_cnn():
    net = tiny_plus_net()
    frames = torch.randn(2, 4, 3, 96, 96)
    keep = torch.tensor([[True, False, True, False], [False, False, False, True]])
    seen: list[torch.Tensor] = []
    hook = net.local.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    with torch.no_grad():
        out = net(frames, keep=keep)
        full = net(frames, patch_policy="given", offsets=out.offsets)
    hook.remove()
    # one f_L call with exactly the 3 kept patches, in order, equal to the crops of those frames
    assert len(seen) == 2 and seen[0].shape[0] == 3
    expected = torch.stack([frames[b, t, :, y:y + 32, x:x + 32] for b, t in keep.nonzero().tolist()
                            for y, x in [out.offsets[b, t].tolist()]])
    assert torch.equal(seen[0], expected)
    assert torch.count_nonzero(out.local_features[~keep]) == 0
    torch.testing.assert_close(out.local_features[keep], full.local_features[keep])


def test_keep_all_frames_equals_plain_adafocus_and_nothing_kept_skips_f_l_entirely():
    net = tiny_plus_net()
    frames = torch.randn(2, 3, 3, 96, 96)
    calls = []
    net.local.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        plain = net(frames)
        all_kept = net(frames, keep=torch.ones(2, 3, dtype=torch.bool))
        calls.clear()
        none_kept = net(frames, keep=torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(plain.logits, all_kept.logits)
    assert calls == [] and torch.count_nonzero(none_kept.local_features) == 0


def test_threshold_keeps_frames_by_p_and_online_matches_offline():
    net = tiny_plus_net()
    frames = torch.randn(3, 5, 3, 96, 96)
    with torch.no_grad():
        probs = torch.sigmoid(net(frames).skip_logits)
        rho = float(probs.median())
        offline = net(frames, rho=rho)
        online = net.online(rho=rho)
        steps = [online.step(frames[:, t]) for t in range(5)]
    assert torch.equal(offline.keep, probs >= rho)
    torch.testing.assert_close(torch.stack(steps, 1), offline.logits)


def test_keep_threshold_without_skip_policy_is_a_clear_error():
    net = tiny_plus_net()
    plain = AdaFocusNet(num_classes=5, patch_size=32, frame_size=96, glance_backbone="tiny_glance",
                        local_backbone="tiny_local", policy_hidden=16, classifier_hidden=16)
    assert net.capabilities.has_skip_policy and not plain.capabilities.has_skip_policy
    with pytest.raises(ValueError, match="skip_policy"):
        plain(torch.randn(1, 2, 3, 96, 96), rho=0.5)


# ------------------------------------------------------------------------------------------------ Eq. 10
def test_eq10_reward_by_hand():
    conf_keep = torch.tensor([[0.6, 0.9, 0.5]])
    conf_skip = torch.tensor([[0.2, 0.88, 0.7]])
    keep = torch.tensor([[True, True, False]])
    reward = skip_reward(conf_keep, conf_skip, keep, cost=1e-6 * 32**2)
    # kept: gain - lambda P^2 = 0.4 - 0.001024 and 0.02 - 0.001024; skipped: 0
    torch.testing.assert_close(reward, torch.tensor([[0.398976, 0.018976, 0.0]]))


# ------------------------------------------------------------------------------------------------ the chain
def test_plus_runs_in_their_own_directories_and_stage2_trains_only_the_policies(plus_chain):
    dirs, _ = plus_chain
    assert dirs["stage2_plus"].parts[-3] == "stage2_plus" and dirs["stage3_plus"].parts[-3] == "stage3_plus"
    s1 = torch.load(dirs["stage1"] / "checkpoints" / "last.ckpt", weights_only=False)
    s2 = torch.load(dirs["stage2_plus"] / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any(k.startswith("net.skip_policy.") for k in s1["state_dict"])  # pi' is born in Stage II
    assert s2["hyper_parameters"]["net"]["skip_policy"] is True
    for key, value in s1["state_dict"].items():  # f_G, f_L, f_C frozen
        if not key.startswith("net.policy."):
            assert torch.equal(value, s2["state_dict"][key]), key
    logged = (next((dirs["stage2_plus"] / "csv").glob("version_*/metrics.csv"))).read_text()
    assert "model/gflops_per_video" in logged.splitlines()[0]  # every run logs its cost
    metrics = json.loads((dirs["stage3_plus"] / "metrics.json").read_text())
    assert 0.0 < metrics["test/keep_fraction"] <= 1.0
    s3 = torch.load(dirs["stage3_plus"] / "checkpoints" / "last.ckpt", weights_only=False)
    assert 0.0 < s3["adafocus_rho"]["rho"] < 1.0


def test_plus_stage3_from_a_plain_stage2_is_a_clear_error(plus_chain, tmp_path):
    dirs, make = plus_chain
    plain_s2 = make("stage=stage2", f"paths.log_dir={tmp_path}",
                    f"init_from={dirs['stage1'] / 'checkpoints' / 'last.ckpt'}")
    run_stage(plain_s2)
    cfg = make("stage=stage3", "plus=on", f"init_from={Path(plain_s2.paths.output_dir) / 'checkpoints/last.ckpt'}",
               f"paths.log_dir={tmp_path}")
    with pytest.raises(ValueError, match="plus=on"):
        run_stage(cfg)


def test_eval_writes_one_row_per_eta_with_measured_kept_fractions_and_figures(plus_chain, tiny_synthetic, tmp_path):
    dirs, make = plus_chain
    cfg = make("plus=on", f"ckpt_path={dirs['stage3_plus'] / 'checkpoints' / 'last.ckpt'}",
               f"eval.out_dir={tmp_path / 'eval'}", "eval.etas=[0.9,0.5]", "logger=default", config="eval")
    result = run_eval(cfg)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) >= {"AdaFocus (learned policy)", "AdaFocus+ (eta=0.9)", "AdaFocus+ (eta=0.5)",
                         "random patches (same weights)", "centre patches (same weights)"}
    for eta in (0.9, 0.5):
        row = rows[f"AdaFocus+ (eta={eta:g})"]
        # rho solved on the training split keeps exactly eta of its frames (up to rounding of 24 videos x 8)
        assert abs(row["keep_fraction_on_threshold_split"] - eta) < 1 / (24 * 8) + 1e-9
        assert len(row["online"]) == 8
    assert rows["AdaFocus+ (eta=0.5)"]["gflops_per_video"] < rows["AdaFocus+ (eta=0.9)"]["gflops_per_video"]
    # early exit (eval.exit_budgets): one row per budget for the main row and each eta row
    for source in ("AdaFocus", "AdaFocus+ (eta=0.9)", "AdaFocus+ (eta=0.5)"):
        full = rows["AdaFocus (learned policy)" if source == "AdaFocus" else source]
        exits = [r for r in result["rows"] if r["family"] == f"{source} early exit"]
        assert [r["budget"] for r in exits] == [0.3, 0.4, 0.5, 0.6, 0.8]
        for row in exits:
            assert row["full_gflops_per_video"] == pytest.approx(full["gflops_per_video"])
            assert row["gflops_per_video"] < full["gflops_per_video"]
            assert 1.0 <= row["mean_frames_read"] < 8.0 and sum(row["exit_fractions"]) == pytest.approx(1.0)
            # solved on the 24 training videos: each one moves the mean cost by at most 1/24 of the full cost
            spent = row["gflops_on_threshold_split"] / row["full_gflops_on_threshold_split"]
            assert abs(spent - row["budget"]) <= 2 / 24, (row["method"], spent)
        assert exits[0]["gflops_per_video"] < exits[-1]["gflops_per_video"]
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert [r["method"] for r in saved["rows"]] == [r["method"] for r in result["rows"]]
    # the fast path with the saved thresholds stops each test video where eval did: the same top-1 and GFLOPs
    timed = run_checkpoint_exit_benchmark(cfg.ckpt_path, 0.5, batch_size=4, repeats=1, warmup=0,
                                          overrides=tiny_overrides(tiny_synthetic, tmp_path / "logs"),
                                          results_path=tmp_path / "eval" / "results.json", progress=False)
    row = rows["AdaFocus early exit (budget 50%)"]
    assert timed["top1"]["early exit"] == row["top1"] and timed["top1"]["whole clip"] == pytest.approx(
        rows["AdaFocus (learned policy)"]["top1"])
    assert timed["gflops_per_video"]["early exit"] == pytest.approx(row["gflops_per_video"])
    assert timed["mean_frames_read"] == pytest.approx(row["mean_frames_read"]) and timed["videos"] == 8
    for name in ("accuracy_vs_gflops.png", "online.png", "patches.png", "patches_plus.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 1000, name
    assert "| AdaFocus+ (eta=0.5) |" in (tmp_path / "eval" / "results.md").read_text()
    assert "| AdaFocus+ (eta=0.5) early exit (budget 60%) |" in (tmp_path / "eval" / "results.md").read_text()
    # the table and figures went to an offline W&B run (job type eval) in the output directory
    runs = list((tmp_path / "eval" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 1000
    media = runs[0].parent / "files" / "media"
    assert len(list((media / "images" / "eval").glob("*.png"))) == 4
    table = json.loads(next((media / "table" / "eval" / "table").glob("results_*.table.json")).read_text())
    assert [r[0] for r in table["data"]] == [r["method"] for r in result["rows"]]

