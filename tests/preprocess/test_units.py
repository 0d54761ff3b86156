import numpy as np
import pytest
import torch
import torchaudio.transforms as T

from pipeline.config import PreprocessConfig
from pipeline.preprocess import shards
from pipeline.preprocess.chunking import split_into_chunks
from pipeline.preprocess.features import FeatureExtractor
from pipeline.preprocess.images import colormap_table, render


def chunk_bounds(n: int, chunk: int, hop: int, last: str, min_last: float) -> list[tuple[int, int]]:
    """The chunker's (start, end) of `n` samples, at 1 Hz so that seconds are samples."""
    config = PreprocessConfig(chunk_seconds=chunk, hop_seconds=hop, last_chunk=last, min_last_chunk=min_last)
    return split_into_chunks(np.ones(n, np.float32), config, 1).bounds


def test_chunk_bounds_drop_and_pad():
    assert chunk_bounds(10, 4, 4, "drop", 0.5) == [(0, 4), (4, 8)]
    assert chunk_bounds(10, 4, 4, "pad", 0.5) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(9, 4, 4, "pad", 0.5) == [(0, 4), (4, 8)]  # 1 sample left is under half a chunk
    assert chunk_bounds(3, 4, 4, "drop", 0.5) == []
    assert chunk_bounds(3, 4, 4, "pad", 0.5) == [(0, 3)]


def test_overlapping_chunks_start_every_hop_and_pad_only_uncovered_samples():
    assert chunk_bounds(10, 4, 2, "drop", 0.5) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    assert chunk_bounds(10, 4, 2, "pad", 0.25) == [(0, 4), (2, 6), (4, 8), (6, 10)]  # nothing left uncovered
    assert chunk_bounds(11, 4, 3, "pad", 0.25) == [(0, 4), (3, 7), (6, 10), (9, 11)]  # sample 10 was uncovered


def test_silent_chunks_are_dropped_and_keep_their_position():
    rate = 100
    loud = np.sin(np.arange(rate) * 0.3).astype(np.float32) * 0.5  # about -9 dBFS
    quiet = loud * 1e-4  # about -89 dBFS
    samples = np.concatenate([loud, quiet, loud])
    config = PreprocessConfig(chunk_seconds=1.0, silence_threshold_db=-50.0)
    chunks = split_into_chunks(samples, config, rate)
    assert chunks.total == 3 and chunks.index == [0, 2] and chunks.bounds == [(0, 100), (200, 300)]
    assert np.array_equal(chunks.samples[1], loud)
    everything = split_into_chunks(samples, PreprocessConfig(chunk_seconds=1.0), rate)
    assert everything.index == [0, 1, 2]


def test_mel_band_limits_move_the_filterbank():
    tone = torch.sin(2 * torch.pi * 3000 * torch.arange(16000) / 16000).unsqueeze(0)
    wide = FeatureExtractor(PreprocessConfig(n_mels=32), 16000)(tone)["logmel"]
    low = FeatureExtractor(PreprocessConfig(n_mels=32, f_max=2000.0), 16000)(tone)["logmel"]
    # The 3 kHz tone is the loudest bin of the full band; under a 2 kHz ceiling it is out of every band.
    assert wide.mean(dim=2).max() - low.mean(dim=2).max() > 20


def test_a_short_last_chunk_is_zero_padded():
    config = PreprocessConfig(chunk_seconds=4, last_chunk="pad", min_last_chunk=0.5)
    chunks = split_into_chunks(np.arange(1, 11, dtype=np.float32), config, 1)
    assert chunks.samples.shape == (3, 4)
    assert chunks.samples[2].tolist() == [9, 10, 0, 0]


def test_features_match_torchaudio_mfcc_and_do_not_depend_on_batching():
    config = PreprocessConfig(n_mfcc=13, n_mels=40, n_fft=400, hop_length=160)
    extractor = FeatureExtractor(config, 16000)
    torch.manual_seed(0)
    chunks = torch.randn(3, 16000) * torch.tensor([[1.0], [0.01], [0.1]])
    out = extractor(chunks)
    assert out["logmel"].shape == (3, 40, 101)
    assert out["mfcc"].shape == (3, 13, 101)
    reference = T.MFCC(16000, n_mfcc=13, melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 40})(chunks[1])
    torch.testing.assert_close(out["mfcc"][1], reference, rtol=1e-4, atol=1e-3)
    alone = extractor(chunks[1:2])
    torch.testing.assert_close(out["logmel"][1:2], alone["logmel"])


def test_render_uses_the_colormap_table_with_low_bins_at_the_bottom():
    ramp = torch.linspace(0, 1, 16).view(1, 16, 1).expand(1, 16, 16)
    image = render(ramp, 16, "viridis")
    table = colormap_table("viridis")
    assert image.shape == (1, 16, 16, 3) and image.dtype == np.uint8
    assert (image[0, -1, 0] == table[0]).all()  # lowest bin, bottom row, darkest colour
    assert (image[0, 0, 0] == table[255]).all()
    with pytest.raises(ValueError, match="unknown matplotlib colormap 'nope'"):
        colormap_table("nope")


def test_palette_png_decodes_to_the_rendered_pixels_and_jpeg_close_to_them():
    import io

    from PIL import Image

    from pipeline.preprocess.images import colour_indices, encode

    torch.manual_seed(1)
    features = torch.randn(2, 64, 301).cumsum(2)
    rgb = render(features, 224, "magma")
    indices = colour_indices(features, 224)
    with Image.open(io.BytesIO(encode(indices[0], "magma", "png"))) as png:
        assert png.format == "PNG" and np.array_equal(np.asarray(png.convert("RGB")), rgb[0])
    with Image.open(io.BytesIO(encode(indices[1], "magma", "jpeg"))) as jpeg:
        decoded = np.asarray(jpeg.convert("RGB")).astype(int)
        assert jpeg.format == "JPEG" and np.abs(decoded - rgb[1]).mean() < 4


def test_the_device_path_looks_up_the_same_pixels_and_encodes_jpeg_close_to_pillows():
    """`rgb` and `encode_jpeg_batch` are what a GPU feature worker runs (`task._encoded`); here on CPU tensors, the
    same code with torchvision's CPU encoder in place of nvJPEG (tests/gpu runs it on CUDA)."""
    import io

    from PIL import Image

    from pipeline.preprocess.images import colormap_table, colour_indices, encode, encode_jpeg_batch, rgb

    torch.manual_seed(2)
    indices = colour_indices(torch.randn(3, 32, 101).cumsum(2), 96)
    assert np.array_equal(rgb(indices, "viridis").numpy(), np.take(colormap_table("viridis"), indices.numpy(), 0))
    files = encode_jpeg_batch(indices, "viridis")
    assert len(files) == 3 and encode_jpeg_batch(indices[:0], "viridis") == []
    for data, picture in zip(files, indices, strict=True):
        with Image.open(io.BytesIO(data)) as ours, Image.open(io.BytesIO(encode(picture, "viridis", "jpeg"))) as pil:
            assert ours.format == "JPEG" and ours.size == (96, 96)
            difference = np.abs(np.asarray(ours.convert("RGB")).astype(int) - np.asarray(pil.convert("RGB")))
            assert difference.mean() < 3, difference.mean()


def test_a_shard_folder_gets_the_permissions_of_the_features_folder(tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    features.chmod(0o2750)  # group-readable, setgid: as on a project's shared file system
    rows = [{"path": "a.wav", "label": "x", "split": "train", "chunk": 0, "start_s": 0.0, "end_s": 1.0}]
    summary = shards.TaskSummary(task_id=3, files=1, chunks=1, rejects=[], train_stats={})
    shard = shards.write_shard(features, 3, {"logmel": np.zeros((1, 2, 3))}, rows, summary)
    assert shard.stat().st_mode & 0o7777 == 0o2750
