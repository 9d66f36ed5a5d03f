"""`make search`'s pieces (adafocus_pl.search): the config group, a trial's own run directories and W&B group, the
stages a trial shares, the missing-metric error, and a killed search's trial running again. The search end to end
(a 2-trial search over the sweep's runs, its re-run and its missing metric) is in tests/test_sweep.py, where it
finds the sweep's Stage I done."""

from __future__ import annotations

import json

import pytest

from adafocus_pl.plan import run_directory, trial_key
from adafocus_pl.search import MissingMetricError, objective, resume_study, trial_steps
from adafocus_pl.utils.config import compose


def test_the_config_group_searches_stage_two_keys_of_the_schedule(tmp_path):
    cfg = compose("sweep", [f"paths.log_dir={tmp_path}", "hparams_search=stage2_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("ResumingOptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"schedule.stage2.optimizer.lr", "schedule.stage2.entropy_weight"}
    assert cfg.hydra.sweep.dir == f"{tmp_path}/synthetic/search/stage2_optuna"
    assert sweeper.storage == f"sqlite:///{tmp_path}/synthetic/search/stage2_optuna/optuna.db"
    assert cfg.search.metric == "val/top1" and not cfg.baselines and not cfg.plus.enabled
    # Stage II reads the schedule's entropy weight, with the value it had as a constant (make train unchanged)
    stage2 = compose("train", ["stage=stage2"])
    assert stage2.stage.module.entropy_weight == 0.01
    assert compose("train", ["stage=stage2", "schedule.stage2.entropy_weight=0.05"]).stage.module.entropy_weight \
        == 0.05


def test_each_trial_has_its_own_run_directories_and_wandb_group(tmp_path):
    groups, dirs = set(), set()
    for key in (trial_key({"schedule.stage2.optimizer.lr": 1e-3}), trial_key({"schedule.stage2.optimizer.lr": 2e-3})):
        trial = [f"paths.log_dir={tmp_path}", f"trial.key={key}", "trial.stages=[stage2,stage3]"]
        stage3 = compose("train", [*trial, "stage=stage3"], return_hydra_config=True)
        assert stage3.paths.run_dir == run_directory(tmp_path, "synthetic", "stage3", 32, 0, key)
        assert stage3.init_from == run_directory(tmp_path, "synthetic", "stage2", 32, 0, key) + \
            "/checkpoints/last.ckpt"
        stage2 = compose("train", [*trial, "stage=stage2"], return_hydra_config=True)
        assert stage2.init_from == run_directory(tmp_path, "synthetic", "stage1", 32, 0) + "/checkpoints/last.ckpt"
        groups.add(stage3.logger.wandb.group)
        dirs.add(stage3.paths.run_dir)
    assert len(groups) == 2 and len(dirs) == 2
    assert trial_key({"a.lr": 1.0000001e-3}) != trial_key({"a.lr": 1.0000002e-3})  # round alike, differ


def test_a_trial_shares_stages_zero_and_one_and_runs_its_own_stage_two_and_three(tmp_path):
    lr = "schedule.stage2.optimizer.lr=0.002"
    steps = trial_steps([f"paths.log_dir={tmp_path}", lr, "seed=1"], ["schedule.stage2.optimizer.lr"], False, "k1")
    assert [step.name for step in steps] == ["stage0", "stage1", "stage2", "stage3"]  # the synthetic schedule's
    stage0, stage1, stage2, stage3 = steps
    for step in (stage0, stage1):  # they do not read schedule.stage2: one run serves every trial
        assert lr not in step.overrides and not any(o.startswith(("trial.", "tags=")) for o in step.overrides)
    for step in (stage2, stage3):
        assert lr in step.overrides and "trial.key='k1'" in step.overrides
        assert "trial.stages=[stage2,stage3]" in step.overrides
    # Stage I is make train's own run (the same config, so the chain finds it done)
    assert compose("train", stage1.overrides) == compose("train", [f"paths.log_dir={tmp_path}", "seed=1",
                                                                     "stage=stage1", "plus=off"])


def test_objective_names_the_metric_the_file_and_what_it_has(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"val/top1": 0.5, "test/top1": 0.4}))
    assert objective(tmp_path, "val/top1") == 0.5
    with pytest.raises(MissingMetricError, match=r"no val/mAP in .*metrics\.json; it has val/top1\. Set monitor="):
        objective(tmp_path, "val/mAP")


def test_a_killed_searchs_running_trial_runs_again_with_its_values_once():
    import optuna  # after adafocus_pl.search, which quiets SQLAlchemy's notice on importing it

    study = optuna.create_study(direction="maximize")
    finished = study.ask()
    finished.suggest_float("lr", 1e-4, 1e-2, log=True)
    study.tell(finished, 0.5)
    killed = study.ask()  # a trial the search was running when it was killed
    lr = killed.suggest_float("lr", 1e-4, 1e-2, log=True)
    assert resume_study(study) == 1 and resume_study(study) == 0  # queued once, however often it restarts
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                      optuna.trial.TrialState.WAITING]
    again = study.ask()
    assert again.suggest_float("lr", 1e-4, 1e-2, log=True) == lr
