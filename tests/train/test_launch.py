import json
from pathlib import Path

from pipeline.config import load_config
from pipeline.preprocess.run import preprocess
from pipeline.stages import data_stage
from pipeline.train.environment import available_cores
from pipeline.train.launch import pick_device, plan, train_all
from tests.conftest import tiny_experiment


def test_configurations_beyond_the_cores_are_skipped_with_a_reason(tmp_path, speech_dir):
    too_many = available_cores() + 1
    config = load_config(tiny_experiment(tmp_path, speech_dir, train={"world_sizes": [too_many], "device": "cpu"}))
    data_stage(config)
    preprocess(config)
    assert [r.name for r in plan(config)] == [f"ws{too_many}-cpu-bs8"]
    (folder,) = train_all(config, tmp_path / "unused.yaml")
    skipped = json.loads((Path(folder) / "skipped.json").read_text())
    assert skipped["world_size"] == too_many
    assert f"the machine gives {available_cores()}" in skipped["reason"]
    assert not (Path(folder) / "metrics.json").exists()


def test_auto_device_is_cpu_without_gpus():
    assert pick_device("auto", 1) == "cpu"
    assert pick_device("cpu", 4) == "cpu"
