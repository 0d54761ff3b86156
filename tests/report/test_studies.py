"""Weak and strong scaling in one report, the compact tables, the efficiency threshold and the flags."""

import csv

import pytest

from pipeline.config import ReportConfig
from pipeline.report.curves import curves
from pipeline.report.report import write_report
from pipeline.report.studies import COMPACT, threshold_lines
from pipeline.report.table import add_units
from tests.report.fixtures import metrics, record


def _both(run):
    """A sweep of train.scaling: both from 32 per rank at 1 rank: weak 32/rank at 1, 2; strong global 32 at 1, 2, 4."""
    (run / "config.yaml").write_text("train: {scaling: both}\n")
    record(run, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.0))
    record(run, "ws2-cpu-bs32", metrics(2, 180.0, 0.36, 0.05))
    record(run, "ws2-cpu-bs16", metrics(2, 150.0, 0.21, 0.05, batch=16))
    record(run, "ws4-cpu-bs8", metrics(4, 160.0, 0.2, 0.1, batch=8))


def test_both_studies_each_with_its_own_baseline_table_and_figure(tmp_path):
    _both(tmp_path)
    report = write_report(tmp_path).read_text()
    with open(tmp_path / "scaling.csv", newline="") as f:
        rows = [(r["scaling"], r["name"], float(r["speedup"]), r["baseline"]) for r in csv.DictReader(f)]
    assert rows == [("weak", "ws1-cpu-bs32", 1.0, "ws1-cpu-bs32"), ("weak", "ws2-cpu-bs32", 1.8, "ws1-cpu-bs32"),
                    ("strong", "ws1-cpu-bs32", 1.0, "ws1-cpu-bs32"), ("strong", "ws2-cpu-bs16", 1.5, "ws1-cpu-bs32"),
                    ("strong", "ws4-cpu-bs8", 1.6, "ws1-cpu-bs32")]
    weak = report.index("## Weak scaling: the batch per rank is fixed")
    strong = report.index("## Strong scaling: the global batch is fixed")
    assert weak < strong and "](speedup_weak.png)" in report[weak:strong] and "](speedup_strong.png)" in report
    assert "| ws4-cpu-bs8 | 4 | cpu | 8/rank, 32 global | 160.0 | 1.600 | 0.400 |" in report[strong:]
    assert "weak, cpu, 16/rank" not in report  # ws2-bs16 is on the strong curve, not a weak curve of its own
    assert "- strong, cpu, global batch 32: worth asking for up to 2 CPU ranks (ws2-cpu-bs16, efficiency 0.750); " \
        "under it: ws4-cpu-bs8 (0.400)." in report  # 75% is at the threshold, not under it
    assert ("ws4-cpu-bs8 (strong, cpu, global batch 32) reaches 40% efficiency") in report
    for scale in ("weak", "strong"):
        assert (tmp_path / f"speedup_{scale}.png").stat().st_size > 5000
    for line in report.splitlines():
        if line.startswith("| configuration | ranks | device | batch |"):
            assert line.count("|") - 1 == len(COMPACT) <= 12


def test_the_threshold_names_the_largest_scale_above_it_and_unsettled_intervals():
    rows = []
    for n, rates in [(1, [100.0, 101.0, 99.0]), (2, [150.0, 160.0, 140.0]), (4, [240.0, 250.0, 230.0])]:
        rows.append({"name": f"ws{n}-cpu-bs32", **metrics(n, sum(rates) / 3, 0.3),
                     "samples_per_second_ci95": 24.8 if n > 1 else 2.5, "repeats": 3})
    for row in rows:
        add_units(row)
    found = curves(rows, ["weak"])
    lines = threshold_lines(found, ReportConfig(min_efficiency=0.7))
    assert lines[0].startswith("weak, cpu, 32/rank: worth asking for up to 2 CPU ranks (ws2-cpu-bs32, efficiency "
                               "0.750 ± 0.125); under it: ws4-cpu-bs32 (0.600 ± 0.064).")
    assert "The interval of ws2-cpu-bs32 reaches across 70%: more repeats would settle" in lines[0]
    assert threshold_lines(found, ReportConfig(min_efficiency=0.5))[0].startswith(
        "weak, cpu, 32/rank: worth asking for up to 4 CPU ranks")


def test_an_input_bound_configuration_is_flagged_and_explained(tmp_path):
    """Steps against steps: real-data steps of 0.42 s (0.1 s of it waiting for the batch) against synthetic ones of
    0.3 s is input-bound; 0.32 s against 0.3 s is not; slower without the wait is explained, not flagged."""
    record(tmp_path, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.0, synthetic_samples_per_second=106.7,
                                             synthetic_step_s=0.3))
    record(tmp_path, "ws2-cpu-bs32", metrics(2, 150.0, 0.42, 0.05, mean_data_s=0.1,
                                             synthetic_samples_per_second=213.3, synthetic_step_s=0.3))
    record(tmp_path, "ws4-cpu-bs32", metrics(4, 300.0, 0.42, 0.05, synthetic_samples_per_second=426.7,
                                             synthetic_step_s=0.3))
    report = write_report(tmp_path).read_text()
    with open(tmp_path / "scaling.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["ws2-cpu-bs32"]["real_over_synthetic"]) == pytest.approx(0.3 / 0.42)
    assert float(rows["ws2-cpu-bs32"]["step_samples_per_second"]) == pytest.approx(64 / 0.42)
    assert rows["ws2-cpu-bs32"]["flags"] == "input-bound" and rows["ws1-cpu-bs32"]["flags"] == ""
    assert "input-bound" not in rows["ws4-cpu-bs32"]["flags"]
    assert ("ws2-cpu-bs32 is input-bound: its training steps reach 152.4 samples/s with real data against 213.3 on "
            "data made on the device (71%), and 24% of a step waits for the batch.") in report
    assert "ws4-cpu-bs32: its training steps reach 304.8 samples/s" in report and "not the loader's wait" in report
    assert "| step samples/s | synthetic samples/s | real/synthetic |" in report  # the timing detail table


def test_an_efficiency_above_one_is_called_noise_or_explained(tmp_path):
    record(tmp_path, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.0))
    record(tmp_path, "ws2-cpu-bs32", metrics(2, 220.0, 0.30, 0.01))
    report = write_report(tmp_path).read_text()
    assert ("ws2-cpu-bs32 (weak, cpu, 32/rank) shows 110% efficiency, above 100% from single runs "
            "(train.repeats would tell noise from it): each rank's steps ran faster per sample than those of "
            "ws1-cpu-bs32") in report
