"""adafocus_pl.plan: the steps of one sweep point and the one function that places their runs."""

from __future__ import annotations

from pathlib import Path

from adafocus_pl.chain import plan_steps, run_dir
from adafocus_pl.evaluation.report import FAMILIES
from adafocus_pl.plan import (
    ADAFOCUS,
    ADAFOCUS_PLUS,
    BASELINES,
    PLAN,
    final_model,
    point_dir,
    run_directory,
    select,
)
from adafocus_pl.utils.config import compose


def test_the_layout():
    assert run_directory("/logs", "synthetic", "stage1", 32, 0) == "/logs/synthetic/stage1/p32/seed0"
    assert run_directory("/logs", "synthetic", "stage0", None, 2) == "/logs/synthetic/stage0/seed2"
    assert point_dir("*", "*") == "p*/seed*"


def test_every_run_of_the_plan_is_placed_by_the_layout_function(tmp_path):
    steps = plan_steps([f"paths.log_dir={tmp_path}", "model.patch_size=48", "seed=3"], (ADAFOCUS, ADAFOCUS_PLUS),
                       stage0=True, baselines=True)
    assert len(steps) == len([step for step in PLAN if step.kind == "train"])
    for step in steps:
        cfg = compose("train", step.overrides, return_hydra_config=True)
        shared = step.name == "stage0"  # Stage 0 serves every patch size
        expected = run_directory(tmp_path, "synthetic", cfg.stage.name, None if shared else 48, 3)
        assert cfg.paths.run_dir == cfg.hydra.run.dir == expected == str(run_dir(step.overrides)), step.name
        if step.after and not step.name.startswith("baseline_"):  # a stage starts from the run before it
            before = next(s for s in steps if s.name == step.after)
            assert cfg.init_from == str(Path(run_dir(before.overrides)) / "checkpoints" / "last.ckpt")


def test_the_sweep_and_train_multirun_directories_use_the_layout(tmp_path):
    cfg = compose("sweep", [f"paths.log_dir={tmp_path}", "plus=on", "seed=1"], return_hydra_config=True)
    assert cfg.hydra.run.dir == run_directory(tmp_path, "synthetic", "sweep", 32, 1) + "/adafocus_plus"
    assert f"{cfg.hydra.sweep.dir}/{cfg.hydra.sweep.subdir}" == cfg.hydra.run.dir
    train = compose("train", [f"paths.log_dir={tmp_path}", "stage=stage0"], return_hydra_config=True)
    assert train.hydra.sweep.subdir == "stage0/p32/seed0"  # a multirun keeps one folder per patch size


def test_each_variant_chains_its_steps_and_the_report_names_them_as_the_plan_does():
    assert [s.name for s in select((ADAFOCUS,))] == ["stage1", "stage2", "stage3"]
    assert [(s.name, s.after) for s in select((ADAFOCUS_PLUS,), stage0=True)] == [
        ("stage0", ""), ("stage1", "stage0"), ("stage2_plus", "stage1"), ("stage3_plus", "stage2_plus")]
    assert final_model(ADAFOCUS) == "stage3" and final_model(ADAFOCUS_PLUS) == "stage3_plus"
    assert FAMILIES[("learned", False)] == "AdaFocus" and FAMILIES[("learned", True)] == "AdaFocus+"
    assert {FAMILIES[(policy, False)] for _, policy in BASELINES} == {label for label, _ in BASELINES}
