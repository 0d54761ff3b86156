"""The sweep of train.scaling: which configurations weak, strong and both scaling plan, and the refusals."""

import pytest

from pipeline.config import ConfigError, ExperimentConfig, load_config
from pipeline.config_checks import check_config
from pipeline.sweep import TrainingRun, configurations, plan


def _config(scaling: str, world_sizes=(1, 2, 4), batch_sizes=(32,), repeats: int = 1) -> ExperimentConfig:
    config = load_config("configs/demo.yaml")
    config.train.scaling, config.train.world_sizes = scaling, list(world_sizes)
    config.train.batch_sizes, config.train.repeats = list(batch_sizes), repeats
    return config


def test_weak_keeps_the_batch_per_rank_and_strong_the_global_batch():
    assert configurations(_config("weak").train) == [(1, 32), (2, 32), (4, 32)]
    assert configurations(_config("strong").train) == [(1, 32), (2, 16), (4, 8)]


def test_strong_starts_from_the_fewest_ranks_configured():
    assert configurations(_config("strong", world_sizes=(2, 4, 8), batch_sizes=(16,)).train) == \
        [(2, 16), (4, 8), (8, 4)]


def test_both_plans_the_union_once_with_the_baselines_shared():
    config = _config("both", batch_sizes=(32, 64), repeats=2)
    assert configurations(config.train) == [(1, 32), (1, 64), (2, 32), (2, 16), (2, 64), (4, 32), (4, 8),
                                            (4, 64), (4, 16)]
    names = [run.name for run in plan(config, lambda requested, n: "cpu")]
    assert len(names) == len(set(names)) == 18
    assert names[:4] == ["ws1-cpu-bs32-r1", "ws1-cpu-bs32-r2", "ws1-cpu-bs64-r1", "ws1-cpu-bs64-r2"]


def test_a_strong_run_name_is_accepted_and_one_outside_the_sweep_is_refused():
    config = _config("strong")
    assert TrainingRun.parse("ws4-cpu-bs8", config) == TrainingRun(4, "cpu", 8)
    with pytest.raises(ValueError, match=r"batch size 32 per rank is not in the sweep at 4 ranks, \[8\].*"
                                         r"train.scaling strong"):
        TrainingRun.parse("ws4-cpu-bs32", config)


def test_a_global_batch_that_does_not_divide_is_refused_naming_the_keys():
    config = _config("strong", world_sizes=(1, 2, 4), batch_sizes=(6,))
    with pytest.raises(ConfigError, match=r"'train.scaling: strong' keeps the global batch 6 .* 4 of "
                                          r"'train.world_sizes' does not divide it; choose batch sizes that are a "
                                          r"multiple of 4"):
        check_config(config, "exp.yaml")
    check_config(_config("weak", batch_sizes=(6,)), "exp.yaml")


def test_an_unknown_scaling_is_a_config_error(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train: {scaling: linear}\n")
    with pytest.raises(ConfigError, match="train.scaling"):
        load_config(path)
