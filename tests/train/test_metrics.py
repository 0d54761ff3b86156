import csv

import numpy as np
import pytest
from PIL import Image

from pipeline.train.metrics import classification_metrics, equal_error_rate, write_confusion


def one_hot_scores(predictions: list[int], n_classes: int) -> np.ndarray:
    """Probabilities whose arg-max is the given prediction (0.6 there, the rest shared out)."""
    scores = np.full((len(predictions), n_classes), 0.4 / (n_classes - 1))
    scores[np.arange(len(predictions)), predictions] = 0.6
    return scores


def binary(positive_scores: list[float], negative_scores: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(targets, [n, 2] scores) with scores[:, 1] the given class-1 scores."""
    s = np.array(positive_scores + negative_scores, dtype=float)
    targets = np.array([1] * len(positive_scores) + [0] * len(negative_scores))
    return targets, np.stack([1 - s, s], axis=1)


# Imbalanced 3 classes: 5 x a, 3 x b, 2 x c.
#   a -> a a a a b    b -> b b a    c -> c a
# confusion (rows true, cols predicted):  a [4 1 0]   b [1 2 0]   c [1 0 1]
TARGETS = [0, 0, 0, 0, 0, 1, 1, 1, 2, 2]
PREDICTIONS = [0, 0, 0, 0, 1, 1, 1, 0, 2, 0]


def test_accuracy_balanced_accuracy_and_macro_f1_by_hand():
    m = classification_metrics(np.array(TARGETS), one_hot_scores(PREDICTIONS, 3), ["a", "b", "c"])
    assert m["n"] == 10
    assert m["confusion"] == [[4, 1, 0], [1, 2, 0], [1, 0, 1]]
    # accuracy: (4 + 2 + 1) / 10
    assert m["accuracy"] == pytest.approx(0.7)
    # recall a 4/5, b 2/3, c 1/2 -> (24/30 + 20/30 + 15/30) / 3 = 59/90
    assert m["balanced_accuracy"] == pytest.approx(59 / 90)
    # precision: a 4/(4+1+1) = 2/3, b 2/(1+2) = 2/3, c 1/1 = 1
    # f1: a 2*(2/3)(4/5)/(2/3+4/5) = (16/15)/(22/15) = 8/11; b 2/3; c 2*1*(1/2)/(3/2) = 2/3
    # macro: (8/11 + 2/3 + 2/3) / 3 = (24/33 + 22/33 + 22/33) / 3 = 68/99
    assert m["macro_f1"] == pytest.approx(68 / 99)
    per_class = {row["label"]: row for row in m["per_class"]}
    assert [row["label"] for row in m["per_class"]] == ["a", "b", "c"]
    assert per_class["a"] == pytest.approx({"label": "a", "precision": 2 / 3, "recall": 0.8, "f1": 8 / 11,
                                            "support": 5})
    assert per_class["c"] == pytest.approx({"label": "c", "precision": 1.0, "recall": 0.5, "f1": 2 / 3,
                                            "support": 2})
    assert m["eer"] is None and m["eer_threshold"] is None  # C = 3


def test_a_class_seen_nowhere_is_left_out_of_the_means_but_a_missed_one_counts():
    # A fourth class "d", neither present nor predicted: the means are those of the 3-class case.
    m = classification_metrics(np.array(TARGETS), one_hot_scores(PREDICTIONS, 4), ["a", "b", "c", "d"])
    assert m["balanced_accuracy"] == pytest.approx(59 / 90)
    assert m["macro_f1"] == pytest.approx(68 / 99)
    assert m["per_class"][3] == {"label": "d", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # c present (2) but never predicted (both go to a): c has F1 0 and still counts in the means.
    predictions = [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    m = classification_metrics(np.array(TARGETS), one_hot_scores(predictions, 3), ["a", "b", "c"])
    # a: p 4/7, r 4/5 -> f1 2*(4/7)(4/5)/(4/7+4/5) = (32/35)/(48/35) = 2/3; b: p 2/3, r 2/3 -> 2/3; c: 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # recall a 4/5, b 2/3, c 0
    assert m["balanced_accuracy"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    # d predicted once but never present: it counts in macro F1 (with F1 0), not in balanced accuracy
    m = classification_metrics(np.array([0, 0, 1]), one_hot_scores([0, 3, 1], 4), ["a", "b", "c", "d"])
    # a: p 1, r 1/2 -> 2/3; b: 1; d: 0  -> macro over a, b, d
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1) / 2)


def test_confusion_rows_are_true_classes_and_columns_predictions():
    m = classification_metrics(np.array([0, 0, 0, 2]), one_hot_scores([1, 1, 1, 2], 3), ["x", "y", "z"])
    assert m["confusion"] == [[0, 3, 0], [0, 0, 0], [0, 0, 1]]
    assert m["per_class"][0]["support"] == 3 and m["per_class"][1]["support"] == 0


def test_eer_perfect_separation_is_zero():
    m = classification_metrics(*binary([0.9, 0.8], [0.2, 0.1]), ["bonafide", "spoof"])
    assert m["eer"] == 0.0
    assert m["eer_threshold"] == pytest.approx(0.8)  # accepting >= 0.8 makes no error


def test_eer_all_scores_equal_is_half():
    m = classification_metrics(*binary([0.5] * 3, [0.5] * 5), ["neg", "pos"])
    assert m["eer"] == pytest.approx(0.5)
    assert m["eer_threshold"] == pytest.approx(0.5)


def test_eer_interpolates_between_the_points_either_side_of_the_crossing():
    # positives 0.9 0.8 0.3, negatives 0.85 0.2 0.1 0.05 (P = 3, N = 4)
    #   t     FAR (neg >= t)   FRR (pos < t)   FRR - FAR
    #   inf   0                1                1
    #   0.9   0                2/3              2/3
    #   0.85  1/4              2/3              5/12
    #   0.8   1/4              1/3              1/12
    #   0.3   1/4              0               -1/4      <- crossed between 0.8 and 0.3
    # weight = (1/12) / (1/12 + 1/4) = 1/4: FAR 1/4 + 0 = 1/4, FRR 1/3 - (1/4)(1/3) = 1/4
    # threshold 0.8 + (1/4)(0.3 - 0.8) = 0.675
    targets, scores = binary([0.9, 0.8, 0.3], [0.85, 0.2, 0.1, 0.05])
    m = classification_metrics(targets, scores, ["neg", "pos"])
    assert m["eer"] == pytest.approx(0.25)
    assert m["eer_threshold"] == pytest.approx(0.675)


def test_tied_scores_move_together_whatever_the_input_order():
    # positives 0.9 0.5 0.5, negatives 0.5 0.5 0.1
    #   inf: FAR 0, FRR 1;  0.9: FAR 0, FRR 2/3;  0.5: FAR 2/3, FRR 0  (the four 0.5s cross together)
    # weight = (2/3) / (2/3 + 2/3) = 1/2 -> EER 1/3, threshold 0.9 + (1/2)(0.5 - 0.9) = 0.7
    # (Breaking the tie positives-first would give 0, negatives-first 2/3.)
    targets, scores = binary([0.9, 0.5, 0.5], [0.5, 0.5, 0.1])
    for order in (np.arange(6), np.arange(6)[::-1], np.array([3, 1, 0, 5, 2, 4])):
        m = classification_metrics(targets[order], scores[order], ["neg", "pos"])
        assert m["eer"] == pytest.approx(1 / 3)
        assert m["eer_threshold"] == pytest.approx(0.7)


def test_eer_is_invariant_to_a_monotonic_transform_of_the_scores():
    rng = np.random.default_rng(0)
    positive = rng.random(200) < 0.3
    scores = np.clip(rng.normal(0.5 + 0.2 * positive, 0.2), 0.01, 0.99).round(2)  # rounding makes ties
    eer, _ = equal_error_rate(scores, positive)
    assert 0 < eer < 0.5
    for transform in (np.log, lambda s: s**3, lambda s: np.log(s / (1 - s)), lambda s: 10 * s - 3):
        assert equal_error_rate(transform(scores), positive)[0] == pytest.approx(eer)


def test_eer_needs_both_classes():
    # Only one class in the targets: no FAR (or no FRR) exists, so no EER.
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    for present in (0, 1):
        m = classification_metrics(np.array([present, present]), scores, ["neg", "pos"])
        assert m["eer"] is None and m["eer_threshold"] is None
        assert m["accuracy"] == 0.5


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1]), np.ones((2, 3)), ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 2]), np.ones((2, 2)), ["a", "b"])


def test_write_confusion_writes_a_csv_that_reads_back_and_a_png(tmp_path):
    confusion = [[4, 1, 0], [1, 2, 0], [1, 0, 1]]
    labels = ["alpha", "beta", "gamma"]
    stem = tmp_path / "out" / "confusion_val"
    write_confusion(stem, confusion, labels, "validation, epoch 3")

    with (tmp_path / "out" / "confusion_val.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["true\\predicted", *labels]
    assert [row[0] for row in rows[1:]] == labels
    assert [[int(x) for x in row[1:]] for row in rows[1:]] == confusion

    png = tmp_path / "out" / "confusion_val.png"
    assert png.stat().st_size > 0
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.mode == "RGBA"
        assert image.size[0] > 0 and image.size[1] > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["confusion_val.csv", "confusion_val.png"]
