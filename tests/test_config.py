from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config, load_experiment

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_demo_config_loads_with_types():
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert config.train.world_sizes == [1, 2]
    assert config.preprocess.n_mfcc == 13
    assert isinstance(config.preprocess.chunk_seconds, float)


def test_every_config_writes_where_git_does_not_track_but_the_references():
    """A new user's run must never land in (and skip work because of) a committed reference run."""
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        run_dir = load_config(path).run_dir
        reference = path.stem.endswith("-reference")
        assert run_dir.startswith("results/reference/" if reference else "runs/"), (path.name, run_dir)


def test_a_run_folder_loads_in_place_of_its_config_with_run_dir_where_it_is_now(tmp_path):
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "config.yaml").write_text("run_dir: somewhere/else\ntrain:\n  lr: 0.01\n")
    config = load_experiment(moved, ["train.epochs=7"])
    assert (config.run_dir, config.train.lr, config.train.epochs) == (str(moved), 0.01, 7)
    with pytest.raises(ConfigError, match="a folder without config.yaml"):
        load_experiment(tmp_path)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  batch_sise: 64\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: unknown key 'train\.batch_sise'"):
        load_config(path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = write(tmp_path, "preprocess:\n  n_mfcc: thirteen\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: 'preprocess\.n_mfcc' must be int, got 'thirteen'"):
        load_config(path)


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="'train.epochs' must be int"):
        load_config(write(tmp_path, "train:\n  epochs: true\n"))


def test_choice_and_list_items_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="'train.device' must be one of"):
        load_config(write(tmp_path, "train:\n  device: tpu\n"))
    with pytest.raises(ConfigError, match=r"'train\.world_sizes\[1\]' must be int"):
        load_config(write(tmp_path, "train:\n  world_sizes: [1, two]\n"))


def test_image_layout_defaults_to_shards_and_takes_files_only(tmp_path):
    assert load_config(write(tmp_path, "name: x\n")).preprocess.image_layout == "shards"
    assert load_config(write(tmp_path, "preprocess:\n  image_layout: files\n")).preprocess.image_layout == "files"
    with pytest.raises(ConfigError, match=r"exp\.yaml: 'preprocess\.image_layout' must be one of 'shards', 'files', "
                                          r"got 'tar'"):
        load_config(write(tmp_path, "preprocess:\n  image_layout: tar\n"))


def test_impossible_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match="'preprocess.chunk_seconds' has an impossible value -1.0"):
        load_config(write(tmp_path, "preprocess:\n  chunk_seconds: -1\n"))


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 16\n")
    config = load_config(path, ["train.batch_size=64", "preprocess.chunk_seconds=5", "train.world_sizes=[1,2]"])
    assert config.train.batch_size == 64
    assert config.preprocess.chunk_seconds == 5.0
    assert config.train.world_sizes == [1, 2]
    with pytest.raises(ConfigError, match="unknown key 'train.batchsize'"):
        load_config(path, ["train.batchsize=64"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["train.batch_size"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [\n"))


def test_config_command_prints_one_resolved_key(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "c.yaml"
    path.write_text("run_dir: results/x\n")
    run = [sys.executable, "-m", "pipeline", "config", str(path), "--set", "run_dir=results/y"]
    result = subprocess.run([*run, "--get", "run_dir"], capture_output=True, text=True)
    assert result.stdout == "results/y\n"
    missing = subprocess.run([*run, "--get", "train.nope"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no key 'train.nope'" in missing.stderr


def test_pipeline_config_still_names_everything_its_split_modules_hold():
    """The sections, the coercion and the checks live in config_types, config_schema and config_checks; the rest of
    the package imports them from pipeline.config, as before the split."""
    import pipeline.config as config
    from pipeline import config_checks, config_schema, config_types

    for name in ["ExperimentConfig", "DataConfig", "SplitConfig", "PreprocessConfig", "DaskSlurmConfig",
                 "TrainConfig", "SlurmConfig", "ReportConfig", "ConfigError", "build", "check_slurm", "input_shape",
                 "slurm_time_seconds", "load_config", "load_experiment", "save_config", "to_dict"]:
        assert name in config.__all__ and hasattr(config, name), name
    assert config.TrainConfig is config_types.TrainConfig and config.ConfigError is config_schema.ConfigError
    assert config.input_shape is config_checks.input_shape
