"""Features on the GPU: the extractor on cuda agrees with the CPU, and the Dask LocalCluster starts one feature
worker per GPU, each seeing only its own device, beside CPU workers that see none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import PreprocessConfig
from pipeline.preprocess import gpus
from pipeline.preprocess.cluster import dask_executor
from pipeline.preprocess.features import FeatureExtractor
from pipeline.preprocess.run import preprocess
from tests.preprocess.compare import prepared, serial_run


def test_cuda_features_match_the_cpu():
    chunks = torch.randn(64, 48000) * 0.1
    config = PreprocessConfig()
    cpu = FeatureExtractor(config, 16000, "cpu")(chunks)
    gpu = FeatureExtractor(config, 16000, "cuda")(chunks)
    for name in ("logmel", "mfcc"):
        assert gpu[name].device.type == "cpu"
        assert torch.allclose(cpu[name], gpu[name], atol=1e-2, rtol=1e-3), name


def test_cuda_images_are_made_on_the_device_and_match_the_cpu_render():
    """JPEG from features left on the GPU (nvJPEG) decodes close to the CPU's Pillow JPEG of the same features; PNG
    from the GPU (indices resized on the device, crossing to the host, Pillow encoding) close to the CPU's PNG: the
    device's float rounding may move a level here and there."""
    import io

    from PIL import Image

    from pipeline.preprocess.task import _encoded

    chunks = torch.randn(16, 48000) * 0.1
    on_gpu = FeatureExtractor(PreprocessConfig(), 16000, "cuda").on_device(chunks)["logmel"]
    assert on_gpu.is_cuda
    for image_format in ("jpeg", "png"):
        config = PreprocessConfig(image_format=image_format, image_size=224)
        gpu_files, cpu_files = _encoded(on_gpu, config), _encoded(on_gpu.cpu(), config)
        assert len(gpu_files) == len(cpu_files) == 16
        for ours, theirs in zip(gpu_files, cpu_files, strict=True):
            with Image.open(io.BytesIO(ours)) as a, Image.open(io.BytesIO(theirs)) as b:
                assert a.format == image_format.upper()
                difference = np.abs(np.asarray(a.convert("RGB")).astype(int) - np.asarray(b.convert("RGB")))
                assert difference.mean() < (4 if image_format == "jpeg" else 1), (image_format, difference.mean())


def _devices_seen() -> tuple[str, int]:
    import os

    import torch

    return os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), torch.cuda.device_count()


def test_one_pinned_feature_worker_per_gpu_and_close_to_a_cpu_run(tmp_path, speech_dir):
    reference = serial_run(tmp_path / "a", speech_dir, device="cpu")
    _, config = prepared(tmp_path / "b", speech_dir, device="cuda")
    plan = gpus.local_plan(config.preprocess.workers, "cuda")
    with dask_executor(config.preprocess) as executor:
        assert isinstance(executor, gpus.SplitExecutor)
        seen = executor._client.run(_devices_seen)
        preprocess(config, executor)
    gpu_workers = sorted(v for v in seen.values() if v[0] != "")
    assert gpu_workers == sorted((device, 1) for device in plan.gpu_devices)
    assert sum(1 for v in seen.values() if v == ("", 0)) == plan.cpu_workers
    a, b = Path(reference) / "features", Path(config.run_dir) / "features"
    assert (a / "index.csv").read_text() == (b / "index.csv").read_text()
    for shard in sorted(p.name for p in a.glob("shard-*")):
        x, y = np.load(a / shard / "logmel.npy"), np.load(b / shard / "logmel.npy")
        assert np.allclose(x, y, atol=1e-2), shard
