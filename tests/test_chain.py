"""adafocus_pl.chain without training: which stages a sweep point runs, and skip / resume / replace decisions."""

from __future__ import annotations

import json
import threading
import time

import yaml
from omegaconf import OmegaConf

from adafocus_pl.chain import Step, run_chain, run_dir, run_lock, stage_chain
from adafocus_pl.utils.config import compose


def fake_train(calls: list):
    """Stands in for ``python -m adafocus_pl.train``: writes what a finished run leaves behind."""
    def runner(overrides: list[str]) -> None:
        calls.append(overrides)
        directory = run_dir(overrides)
        (directory / ".hydra").mkdir(parents=True, exist_ok=True)
        cfg = OmegaConf.to_container(compose("train", overrides), resolve=False)
        (directory / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        (directory / "metrics.json").write_text(json.dumps({"test/top1": 0.5}))
    return runner


def test_adafocus_plus_shares_stage_one_and_drops_the_users_stage_and_plus():
    plain = stage_chain(["model.patch_size=24", "stage=stage3"], plus=False)
    plus = stage_chain(["model.patch_size=24", "plus=on"], plus=True)
    assert [s.overrides for s in plain][0] == [s.overrides for s in plus][0] == \
        ["model.patch_size=24", "stage=stage1", "plus=off"]
    assert plus[1].overrides[-2:] == ["stage=stage2", "plus=on"] and plain[2].overrides[-2:] == ["stage=stage3",
                                                                                               "plus=off"]


def test_finished_stages_are_skipped_and_a_changed_config_is_moved_aside(tmp_path):
    base = [f"paths.log_dir={tmp_path}", "model.patch_size=24"]
    calls: list = []
    first = run_chain(base, plus=False, runner=fake_train(calls))  # the synthetic schedule has a Stage 0
    assert [step.overrides[-2] for step, *_ in first] == ["stage=stage0", "stage=stage1", "stage=stage2",
                                                          "stage=stage3"]
    assert [state for *_, state in first] == ["fresh"] * 4 and len(calls) == 4
    assert all("ckpt_path=auto" in c for c in calls)  # an interrupted stage resumes from its last.ckpt

    second = run_chain(base, plus=True, runner=fake_train(calls))
    assert [state for *_, state in second] == ["done", "done", "fresh", "fresh"] and len(calls) == 6

    stage3 = first[3][1]
    (stage3 / "metrics.json").unlink()  # killed before it finished: resumed, not moved
    assert [state for *_, state in run_chain(base, plus=False, runner=fake_train(calls))] == ["done", "done", "done",
                                                                                              "resume"]

    (stage3 / "mine.txt").write_text("a user's notes")
    changed = run_chain(base + ["model.dropout=0.3"], plus=False, runner=fake_train(calls))
    assert [state for *_, state in changed] == ["replaced"] * 4
    kept = list((tmp_path / "synthetic" / "_replaced").rglob("mine.txt"))
    assert len(kept) == 1 and kept[0].read_text() == "a user's notes"  # nothing the user made is lost


def test_the_baselines_start_from_stage_one_with_stage_three_s_budget(tmp_path):
    steps = stage_chain([f"paths.log_dir={tmp_path}", "model.patch_size=48", "plus=on"], plus=False, stage0=True,
                        baselines=True)
    assert [s.name for s in steps] == ["stage0", "stage1", "stage2", "stage3", "baseline_none", "baseline_random",
                                       "baseline_centre", "baseline_gaussian"]
    stage1_ckpt = tmp_path / "synthetic" / "stage1" / "p48" / "seed0" / "checkpoints" / "last.ckpt"
    for step in steps[4:]:
        policy = step.name.removeprefix("baseline_")
        assert step.after == "stage1" and "plus=off" in step.overrides  # the user's plus=on is dropped
        assert {"stage=stage3", f"stage.module.patch_policy={policy}", f"init_from={stage1_ckpt}"} <= set(step.overrides)
        assert run_dir(step.overrides) == tmp_path / "synthetic" / f"stage3_{policy}" / "p48" / "seed0"


def test_stage_0_serves_every_patch_size(tmp_path):
    base = [f"paths.log_dir={tmp_path}"]
    calls: list = []
    at32 = run_chain(base + ["model.patch_size=32"], plus=False, runner=fake_train(calls))
    at48 = run_chain(base + ["model.patch_size=48", "model.grid_size=5"], plus=False, runner=fake_train(calls))
    assert at32[0][1] == at48[0][1] == tmp_path / "synthetic" / "stage0" / "seed0"  # no patch-size level
    assert [state for *_, state in at48] == ["done", "fresh", "fresh", "fresh"]  # Stage 0 is not redone
    assert compose("train", base + ["model.patch_size=48", "stage=stage1"]).init_from == \
        str(tmp_path / "synthetic" / "stage0" / "seed0" / "checkpoints" / "last.ckpt")
    assert compose("train", base + ["stage=stage1", "schedule=paper"]).init_from is None  # the paper: no Stage 0


def test_a_directory_without_a_saved_config_is_never_overwritten(tmp_path):
    step = stage_chain([f"paths.log_dir={tmp_path}"], plus=False)[0]
    directory = run_dir(step.overrides)
    directory.mkdir(parents=True)
    (directory / "result.txt").write_text("x")
    calls: list = []
    run_chain([f"paths.log_dir={tmp_path}"], plus=False, runner=fake_train(calls))
    assert list((tmp_path / "synthetic" / "_replaced").rglob("result.txt"))


def test_a_run_started_from_another_checkpoint_is_a_different_config(tmp_path):
    """The run layout is part of a run's config: a saved ``init_from`` that points elsewhere is another run."""
    base = [f"paths.log_dir={tmp_path}", "model.patch_size=24"]
    calls: list = []
    first = run_chain(base, plus=False, runner=fake_train(calls))
    assert [state for *_, state in run_chain(base, plus=False, runner=fake_train(calls))] == ["done"] * 4
    stage3 = first[3][1] / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(stage3.read_text())
    cfg["stage"]["init_from"] = cfg["stage"]["init_from"].replace("stage2", "stage1")
    stage3.write_text(yaml.safe_dump(cfg))
    assert [state for *_, state in run_chain(base, plus=False, runner=fake_train(calls))][-1] == "replaced"


def test_the_run_lock_serialises_jobs_sharing_a_stage(tmp_path):
    order = []

    def job(name):
        with run_lock(tmp_path / "stage1" / "p32" / "seed0"):
            order.append(f"{name} in")
            time.sleep(0.2)
            order.append(f"{name} out")

    threads = [threading.Thread(target=job, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


def test_the_documented_submitit_command_composes():
    cfg = compose("sweep", ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                            "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4",
                            "hydra.launcher.nodes=1", "hydra.launcher.timeout_min=2880",
                            "hydra.launcher.max_num_timeout=3", "experiment=activitynet", "trainer=ddp",
                            "trainer.devices=4", "trainer.num_nodes=1"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices == 4
    assert cfg.hydra.sweep.subdir == "p128/seed0/adafocus"


def test_step_is_a_plain_record():
    assert Step("x", ["a=1"]).overrides == ["a=1"]
