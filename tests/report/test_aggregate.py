"""Repeats folded into means with 95% confidence intervals, checked against numbers worked out by hand."""

import math

import pytest

from pipeline.report.aggregate import aggregate
from pipeline.report.table import add_derived, cell

T_975_2 = 4.303  # Student t, 97.5% quantile, 2 degrees of freedom (any t table)
CI_3 = T_975_2 * 10 / math.sqrt(3)  # 3 repeats with sample std 10: 24.84


def run(name: str, world_size: int, samples_per_second: float, step_s: float = 0.1, seed: int = 0,
        val_accuracy: tuple[float, float] = (0.5, 0.9)) -> dict:
    return {"name": name, "world_size": world_size, "device": "cpu", "batch_size_per_rank": 32,
            "hostname": "host", "oversubscribed": False, "seed": seed, "repeat": int(name[-1]) if "-r" in name else 0,
            "samples_per_second": samples_per_second, "mean_step_s": step_s, "mean_data_s": 0.001,
            "mean_forward_backward_s": step_s - 0.011, "mean_optimizer_s": 0.01, "mean_allreduce_s": 0.005,
            "peak_memory_bytes": 300 * 2**20, "train_wall_s": 360.0, "test_eer": None,
            "history": [{"epoch": 1, "train_loss": 1.0, "val_accuracy": val_accuracy[0], "resumed_mid_epoch": False},
                        {"epoch": 2, "train_loss": 0.5, "val_accuracy": val_accuracy[1],
                         "resumed_mid_epoch": False}]}


def test_repeats_become_their_mean_with_a_student_t_interval():
    rows = [run("ws2-cpu-bs32-r2", 2, 110.0, seed=1, val_accuracy=(0.6, 0.8)),
            run("ws2-cpu-bs32-r1", 2, 100.0, seed=0, val_accuracy=(0.4, 0.9)),
            run("ws2-cpu-bs32-r3", 2, 120.0, seed=2, val_accuracy=(0.5, 1.0))]
    (row,) = aggregate(rows)
    assert row["name"] == "ws2-cpu-bs32" and row["repeats"] == 3
    assert row["repeat_names"] == ["ws2-cpu-bs32-r1", "ws2-cpu-bs32-r2", "ws2-cpu-bs32-r3"]
    assert row["seeds"] == [0, 1, 2] and "seed" not in row and "repeat" not in row
    assert row["samples_per_second"] == 110.0
    assert row["samples_per_second_std"] == pytest.approx(10.0)
    assert row["samples_per_second_ci95"] == pytest.approx(CI_3, rel=1e-3)
    assert round(row["samples_per_second_ci95"], 2) == 24.84
    # Settings that every repeat shares stay what they were; a value equal in all repeats has a zero spread.
    assert row["world_size"] == 2 and isinstance(row["world_size"], int) and row["world_size_ci95"] is None
    assert row["mean_step_s"] == pytest.approx(0.1) and row["mean_step_s_ci95"] == pytest.approx(0.0)
    assert (row["hostname"], row["oversubscribed"], row["test_eer"]) == ("host", False, None)
    first, last = row["history"]
    assert (first["epoch"], first["repeats"]) == (1, 3)
    assert first["val_accuracy"] == pytest.approx(0.5)
    assert first["val_accuracy_ci95"] == pytest.approx(T_975_2 * 0.1 / math.sqrt(3), rel=1e-3)
    assert last["val_accuracy"] == pytest.approx(0.9) and last["train_loss"] == 0.5


def test_a_configuration_of_one_run_keeps_its_name_and_has_no_interval():
    rows = aggregate([run("ws1-cpu-bs32", 1, 100.0), run("ws2-cpu-bs32", 2, 150.0)])
    assert [r["name"] for r in rows] == ["ws1-cpu-bs32", "ws2-cpu-bs32"]
    assert rows[1]["repeats"] == 1 and rows[1]["repeat_names"] == ["ws2-cpu-bs32"]
    assert rows[1]["samples_per_second"] == 150.0
    assert rows[1]["samples_per_second_ci95"] is None and rows[1]["samples_per_second_std"] is None
    assert rows[1]["history"][1]["val_accuracy"] == 0.9 and rows[1]["history"][1]["val_accuracy_ci95"] is None
    add_derived(rows)
    assert rows[1]["speedup"] == 1.5 and rows[1]["speedup_ci95"] is None and rows[1]["efficiency_ci95"] is None
    assert cell(rows[1], "samples_per_second") == "150.0" and cell(rows[1], "speedup") == "1.500"


def test_speedup_interval_propagates_both_relative_intervals():
    rows = aggregate([run(f"ws1-cpu-bs32-r{k}", 1, s, step_s=t) for k, s, t in [(1, 100.0, 0.30), (2, 110.0, 0.32),
                                                                                 (3, 120.0, 0.34)]]
                     + [run(f"ws2-cpu-bs32-r{k}", 2, s) for k, s in [(1, 200.0), (2, 210.0), (3, 220.0)]])
    add_derived(rows)
    base, two = rows
    # 210 / 110 = 1.909; relative CIs 24.84 / 110 = 0.2258 and 24.84 / 210 = 0.1183, combined sqrt(sum of squares)
    # = 0.2549, so +- 0.4867 on the speedup and half that on the efficiency (2 ranks).
    assert two["speedup"] == pytest.approx(1.90909, rel=1e-4)
    assert two["speedup_ci95"] == pytest.approx(0.4867, rel=1e-3)
    assert two["efficiency"] == pytest.approx(0.95455, rel=1e-4)
    assert two["efficiency_ci95"] == pytest.approx(0.2433, rel=1e-3)
    assert base["speedup"] == 1.0 and base["speedup_ci95"] is None  # 1 by definition
    # ms columns carry the interval of the seconds they come from: step 0.30/0.32/0.34 s has std 0.02 s.
    assert base["step_ms"] == pytest.approx(320.0)
    assert base["step_ms_ci95"] == pytest.approx(T_975_2 * 20 / math.sqrt(3), rel=1e-3)
    assert cell(two, "samples_per_second") == "210.0 ± 24.8"
    assert cell(two, "speedup") == "1.909 ± 0.487"
    assert cell(base, "speedup") == "1.000"


def test_a_ratio_with_a_single_run_has_no_interval():
    rows = aggregate([run("ws1-cpu-bs32-r1", 1, 100.0)]
                     + [run(f"ws2-cpu-bs32-r{k}", 2, s) for k, s in [(1, 200.0), (2, 210.0), (3, 220.0)]])
    add_derived(rows)
    assert rows[0]["repeats"] == 1 and rows[1]["samples_per_second_ci95"] is not None
    assert rows[1]["speedup"] == pytest.approx(2.1) and rows[1]["speedup_ci95"] is None
