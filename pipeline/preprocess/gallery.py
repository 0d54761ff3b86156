"""One figure per feature with a panel per class, with axes and a colorbar: for people to look at what the model
sees (seed 001 showed one MFCC plot per speaker). The per-chunk images stay axis-less, as the models train on them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.io import atomic_write
from pipeline.layout import RunLayout

AXIS_LABELS = {"logmel": ("mel band", "dB"), "mfcc": ("MFCC coefficient", "value")}


def write_galleries(run_dir: Path, index: list[dict], hop_length: int, sample_rate: int) -> list[Path]:
    """RUN_DIR/gallery/<feature>.png showing the first chunk of each class (from the training split if it has
    one), read back from the shards so the figure shows exactly what was stored."""
    layout = RunLayout(run_dir)
    first: dict[str, dict] = {}
    for row in sorted(index, key=lambda r: r["split"] != "train"):
        first.setdefault(row["label"], row)
    written = []
    for feature, (y_label, unit) in AXIS_LABELS.items():
        examples = {label: _stored(layout, row, feature) for label, row in sorted(first.items())}
        if not examples or any(x is None for x in examples.values()):
            continue
        path = layout.gallery / f"{feature}.png"
        atomic_write(path, lambda tmp, f=feature, e=examples, y=y_label, u=unit:
                     _draw(tmp, f, e, y, u, hop_length / sample_rate))
        written.append(path)
    return written


def _stored(layout: RunLayout, row: dict, feature: str) -> np.ndarray | None:
    array = layout.features.shard(row["shard"]) / f"{feature}.npy"
    return np.load(array, mmap_mode="r")[int(row["row"])].astype(np.float32) if array.is_file() else None


def _draw(path: Path, feature: str, examples: dict[str, np.ndarray], y_label: str, unit: str, frame_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(examples))
    rows = math.ceil(len(examples) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns + 1, 3 * rows), squeeze=False, sharey=True)
    fig.subplots_adjust(left=0.07, right=0.88, bottom=0.15, top=0.82, wspace=0.12, hspace=0.5)
    # One colour scale for all classes, so that panels compare directly (and one colorbar draws faster than many).
    low = min(float(x.min()) for x in examples.values())
    high = max(float(x.max()) for x in examples.values())
    for ax, (label, x) in zip(axes.flat, examples.items(), strict=False):
        shown = ax.imshow(x, origin="lower", aspect="auto", cmap="magma", vmin=low, vmax=high, interpolation="nearest",
                          extent=(0, x.shape[1] * frame_s, 0, x.shape[0]))
        ax.set(title=label, xlabel="time (s)")
    for ax in axes[:, 0]:
        ax.set_ylabel(y_label)
    fig.colorbar(shown, ax=axes, label=unit, fraction=0.03, pad=0.02)
    for ax in list(axes.flat)[len(examples):]:
        ax.axis("off")
    fig.suptitle(f"{feature}: first chunk of each class")
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
