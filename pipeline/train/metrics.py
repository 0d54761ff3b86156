"""Evaluation metrics for the classifier, in plain numpy so the worker needs no scikit-learn.

Accuracy alone hides what an imbalanced speaker or spoof/bona-fide split does, so the worker also reports
balanced accuracy, macro F1, the confusion matrix and, for two classes, the equal error rate (EER) that
ASVspoof ranks systems by.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from pipeline.io import atomic_write, atomic_write_text


def classification_metrics(targets: np.ndarray, scores: np.ndarray, labels: list[str]) -> dict:
    """JSON-ready metrics of `scores` [n, C] (class probabilities) against `targets` [n] (class ids).

    The prediction is the arg-max class (ties go to the lower id). Undefined ratios are reported as 0.0: precision
    of a class never predicted, recall of a class absent from `targets` (its `support` is 0 then). Balanced accuracy
    averages recall over the classes present in `targets`; macro F1 averages F1 over the classes that are predicted
    or present, so a class seen in neither does not drag the mean down, while one present but never predicted
    counts with F1 0. `eer`/`eer_threshold` are given for two classes only (see `equal_error_rate`), else None.
    """
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64)
    n_classes = len(labels)
    if scores.ndim != 2 or scores.shape != (len(targets), n_classes):
        raise ValueError(f"scores must be [n, {n_classes}] for n={len(targets)} targets, got {scores.shape}")
    if len(targets) == 0:
        raise ValueError("no samples: metrics are undefined")
    if targets.min() < 0 or targets.max() >= n_classes:
        raise ValueError(f"targets must be class ids in [0, {n_classes})")

    predictions = scores.argmax(axis=1)
    confusion = np.bincount(targets * n_classes + predictions, minlength=n_classes * n_classes)
    confusion = confusion.reshape(n_classes, n_classes)
    true_pos = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = np.divide(true_pos, predicted, out=np.zeros(n_classes), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros(n_classes), where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros(n_classes), where=both > 0)

    eer = threshold = None
    if n_classes == 2:
        eer, threshold = equal_error_rate(scores[:, 1], targets == 1)
    return {
        "n": int(len(targets)),
        "accuracy": float(true_pos.sum() / len(targets)),
        "balanced_accuracy": float(recall[support > 0].mean()),
        "macro_f1": float(f1[(support > 0) | (predicted > 0)].mean()),
        "eer": eer,
        "eer_threshold": threshold,
        "confusion": confusion.tolist(),
        "per_class": [
            {"label": label, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        ],
    }


def equal_error_rate(scores: np.ndarray, positive: np.ndarray) -> tuple[float | None, float | None]:
    """(EER, threshold) of a detector that accepts a sample as positive when its score is >= the threshold.

    Candidate thresholds are +inf (accept nothing: FAR 0, FRR 1) and every distinct score, high to low, down to the
    lowest (accept all: FAR 1, FRR 0); tied scores therefore always move together, whatever their input order. At
    each, FAR is the share of negatives scored >= it and FRR the share of positives scored below it. The EER is
    where FAR and FRR cross: between the last point with FAR < FRR and the first with FAR >= FRR, both rates are
    interpolated linearly and the EER is their common value. The threshold is interpolated between the two scores
    with the same weight; when the upper point is the +inf one, the top score is given. Only the order of the
    scores matters for the EER, so any strictly increasing transform of them leaves it unchanged. With only one
    class present there is no FAR or FRR to trade: (None, None).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    pos, neg = np.sort(scores[positive]), np.sort(scores[~positive])
    if len(pos) == 0 or len(neg) == 0:
        return None, None
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    far = (len(neg) - np.searchsorted(neg, thresholds, side="left")) / len(neg)
    frr = np.searchsorted(pos, thresholds, side="left") / len(pos)
    gap = frr - far  # 1 at +inf, -1 at the lowest score: it crosses 0 somewhere
    i = int(np.argmax(gap <= 0))
    weight = gap[i - 1] / (gap[i - 1] - gap[i])
    eer = far[i - 1] + weight * (far[i] - far[i - 1])
    upper = thresholds[i - 1] if i > 1 else thresholds[i]
    return float(eer), float(upper + weight * (thresholds[i] - upper))


def write_confusion(path_stem: Path, confusion: list[list[int]], labels: list[str], title: str) -> None:
    """Write `<stem>.csv` (counts, rows = true class) and `<stem>.png` (annotated heat map), each atomically.

    The colour is normalised per row (the share of each true class going to each prediction), so a small class's
    errors are as visible as a large one's; the cells still show raw counts.
    """
    path_stem = Path(path_stem)
    counts = np.asarray(confusion, dtype=np.int64).reshape(len(labels), len(labels))

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["true\\predicted", *labels])
    writer.writerows([label, *map(int, row)] for label, row in zip(labels, counts, strict=True))
    atomic_write_text(path_stem.with_name(path_stem.name + ".csv"), out.getvalue())

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    side = max(4.0, 0.6 * len(labels) + 2.0)
    fig, ax = plt.subplots(figsize=(side, side))
    try:
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
        for (row, col), count in np.ndenumerate(counts):
            ax.text(col, row, str(count), ha="center", va="center",
                    color="white" if shares[row, col] > 0.5 else "black")
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels, rotation=45, ha="right")
        ax.set_yticks(ticks, labels)
        ax.set(xlabel="predicted", ylabel="true", title=title)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=120)
    finally:
        plt.close(fig)
    atomic_write(path_stem.with_name(path_stem.name + ".png"), lambda tmp: tmp.write_bytes(png.getvalue()))
