"""Every config composes, every data config builds its datamodule, and settings have one source of truth."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from adafocus_pl.utils.config import compose, config_dir
from adafocus_pl.utils.instantiate import instantiate_group

CONF = Path(config_dir())
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_every_experiment_and_stage_composes_and_resolves(experiment, stage):
    cfg = compose("train", [f"experiment={experiment}", f"stage={stage}", "paths.output_dir=/tmp/x"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["num_classes"] == resolved["data"]["num_classes"]
    assert resolved["model"]["frame_size"] == resolved["data"]["eval_crop"] == resolved["data"]["train_size"]
    assert resolved["trainer"]["max_epochs"] == resolved["stage"]["max_epochs"]
    assert resolved["stage"]["module"]["net"] == resolved["model"]


USER_DATA = ("videos", "frames")  # a user's own material: the folder and the class count are theirs to give


@pytest.mark.parametrize("data", DATASETS)
def test_every_data_config_builds_a_datamodule(data, tmp_path):
    mine = [f"data.root={tmp_path}/mine", "data.num_classes=3"] if data in USER_DATA else []
    cfg = compose("train", [f"data={data}", f"paths.data_dir={tmp_path}", *mine])
    dm = instantiate(cfg.data, _recursive_=False, _convert_="all")
    assert dm.num_classes == cfg.data.num_classes and dm.num_segments == cfg.data.num_segments
    assert str(dm.root).startswith(str(tmp_path))


@pytest.mark.parametrize("data", USER_DATA)
def test_user_data_configs_carry_no_synthetic_keys_and_ask_for_the_folder(data, tmp_path):
    from omegaconf.errors import MissingMandatoryValue

    cfg = compose("train", [f"data={data}"])
    assert "synthetic" not in cfg.data and cfg.data.cache_dir is None and cfg.data.check_files == "probe"
    with pytest.raises(MissingMandatoryValue, match="data.root"):
        _ = cfg.data.root
    with pytest.raises(MissingMandatoryValue, match="data.num_classes"):
        _ = compose("train", [f"data={data}", f"data.root={tmp_path}"]).data.num_classes


def test_a_logger_entry_without_target_is_an_error():
    cfg = compose("train", ["logger=none", "+logger.wandb.project=x"])
    with pytest.raises(ValueError, match="logger.wandb"):
        instantiate_group(cfg.logger, "logger")


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ADAFOCUS_DATA", str(tmp_path))
    cfg = compose("train", [])
    assert cfg.data.root == f"{tmp_path}/synthetic"
