"""`pipeline report A B`: two runs side by side, from recorded metrics."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.report.compare import write_comparison
from tests.report.fixtures import metrics, record, skipped


def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Run A: an older code version at 1, 2 and 4 ranks; run B: a newer one on another host, 1 and 2 ranks plus a
    batch size A never ran."""
    run_a, run_b = tmp_path / "old", tmp_path / "new"
    old = {"hostname": "host-a", "cpu_model": "Old CPU", "versions": {"python": "3.11.7", "torch": "2.10.0"}}
    record(run_a, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, **old, measured_at="2026-11-20T10:00:00+00:00"))
    record(run_a, "ws2-cpu-bs32", metrics(2, 150.0, 0.42, **old, measured_at="2026-11-20T11:00:00+00:00"))
    record(run_a, "ws4-cpu-bs32", metrics(4, 160.0, 0.80, **old, measured_at="2026-11-20T12:00:00+00:00"))
    new = {"hostname": "host-b", "cpu_model": "New CPU", "measured_at": "2026-11-22T09:00:00+00:00"}
    record(run_b, "ws1-cpu-bs32", metrics(1, 200.0, 0.16, **new))
    record(run_b, "ws2-cpu-bs32", metrics(2, 390.0, 0.40, **new, test_accuracy=0.91))
    record(run_b, "ws1-cpu-bs64", metrics(1, 210.0, 0.30, batch=64, **new))
    record(run_b, "ws4-cpu-bs64", skipped(4, "needs 4 cores, the machine gives 2", batch=64), "skipped")
    return run_a, run_b


def test_every_configuration_of_either_run_gets_a_row(tmp_path):
    run_a, run_b = two_runs(tmp_path)
    out = tmp_path / "comparison"
    page = write_comparison(run_a, run_b, out).read_text()

    with open(out / "compare.csv", newline="") as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["ws1-cpu-bs32", "ws2-cpu-bs32", "ws4-cpu-bs32", "ws1-cpu-bs64"]
    assert float(rows["ws1-cpu-bs32"]["ratio_b_over_a"]) == 2.0
    assert float(rows["ws2-cpu-bs32"]["ratio_b_over_a"]) == pytest.approx(2.6)
    assert float(rows["ws2-cpu-bs32"]["efficiency_a"]) == 0.75
    assert float(rows["ws2-cpu-bs32"]["efficiency_b"]) == pytest.approx(0.975)  # 390 / 200 / 2 ranks
    assert float(rows["ws2-cpu-bs32"]["step_ms_b"]) == pytest.approx(400.0)
    assert rows["ws4-cpu-bs32"]["samples_per_second_b"] == rows["ws4-cpu-bs32"]["ratio_b_over_a"] == ""
    assert rows["ws1-cpu-bs64"]["samples_per_second_a"] == "" and rows["ws1-cpu-bs64"]["samples_per_second_b"]

    assert ("| configuration | samples/s A | samples/s B | B/A | efficiency A | efficiency B | step ms A | step ms B "
            "| test acc A | test acc B |") in page
    assert "| ws2-cpu-bs32 | 150.0 | 390.0 | 2.600 | 0.750 | 0.975 | 420.0 | 400.0 | 0.880 | 0.910 |" in page
    assert "| ws4-cpu-bs32 | 160.0 | n/a | n/a | 0.400 | n/a | 800.0 | n/a | 0.880 | n/a |" in page
    assert "| ws1-cpu-bs64 | n/a | 210.0 | n/a | n/a | 1.000 | n/a | 300.0 | n/a | 0.880 |" in page
    assert "| ws4-cpu-bs64 |" not in page  # skipped in B, never measured in A

    assert "| measured at | 2026-11-20T10:00:00+00:00 to 2026-11-20T12:00:00+00:00 | 2026-11-22T09:00:00+00:00 |" \
        in page
    assert "| host | host-a | host-b |" in page and "| CPU | Old CPU | New CPU |" in page
    assert "| GPU | none | none |" in page and "| runs per configuration | 1 | 1 |" in page
    assert "| torch | 2.10.0 | 2.11.0 |" in page and "| python | 3.11.7 | 3.11.7 |" in page
    assert "- torch: 2.10.0 (A) vs 2.11.0 (B)" in page and "- python:" not in page
    assert "no configuration in common" not in page

    for fmt in ("png", "svg"):
        assert (out / f"compare.{fmt}").stat().st_size > 5000
    assert "](compare.png)" in page
    html = (out / "compare.html").read_text()
    assert html.count("<img") == html.count("src='data:image/png;base64,") == 1
    assert "<td>ws4-cpu-bs32</td><td>160.0</td><td>n/a</td>" in html and "host-b" in html


def test_runs_without_a_shared_configuration_are_compared_on_the_figure(tmp_path):
    """CPU against GPU: the names differ, so no row has both sides, and the GPU is named."""
    run_a, run_b = tmp_path / "cpu", tmp_path / "gpu"
    record(run_a, "ws1-cpu-bs32", metrics(1, 100.0, 0.32))
    record(run_a, "ws2-cpu-bs32", metrics(2, 150.0, 0.42))
    gpu = {"device": "cuda", "gpu_model": "NVIDIA H100 80GB HBM3"}
    record(run_b, "ws1-cuda-bs32", metrics(1, 5000.0, 0.006, **gpu))
    record(run_b, "ws2-cuda-bs32", metrics(2, 9500.0, 0.0067, **gpu))
    page = write_comparison(run_a, run_b).read_text()
    out = run_b / "compare-cpu"
    assert (out / "compare.html").exists() and (out / "compare.png").exists()
    assert "| GPU | none | NVIDIA H100 80GB HBM3 |" in page
    assert "| ws2-cuda-bs32 | n/a | 9500.0 | n/a | n/a | 0.950 | n/a | 6.700 | n/a | 0.880 |" in page
    assert "no configuration in common" in page


def test_repeated_configurations_are_compared_as_means_with_intervals(tmp_path):
    """Two repeats per side: each side is the mean with its 95% Student-t interval, t(0.975, 1) = 12.706, and B/A
    combines the two relative intervals."""
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    for k, (rate_a, rate_b) in enumerate([(100.0, 200.0), (110.0, 220.0)], start=1):
        record(run_a, f"ws1-cpu-bs32-r{k}", metrics(1, rate_a, 0.32, repeat=k, seed=k - 1))
        record(run_b, f"ws1-cpu-bs32-r{k}", metrics(1, rate_b, 0.16, repeat=k, seed=k - 1))
    record(run_b, "ws2-cpu-bs32", metrics(2, 300.0, 0.2))
    page = write_comparison(run_a, run_b).read_text()
    with open(run_b / "compare-a" / "compare.csv", newline="") as f:
        rows = {r["configuration"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["ws1-cpu-bs32", "ws2-cpu-bs32"]
    ci_a, ci_b = 12.7062 * 5 * 2**0.5 / 2**0.5, 12.7062 * 10 * 2**0.5 / 2**0.5  # t x std / sqrt(n)
    assert float(rows["ws1-cpu-bs32"]["samples_per_second_a"]) == 105.0
    assert float(rows["ws1-cpu-bs32"]["samples_per_second_a_ci95"]) == pytest.approx(ci_a, rel=1e-4)
    assert float(rows["ws1-cpu-bs32"]["samples_per_second_b_ci95"]) == pytest.approx(ci_b, rel=1e-4)
    assert float(rows["ws1-cpu-bs32"]["ratio_b_over_a_ci95"]) == pytest.approx(2 * 2**0.5 * ci_a / 105, rel=1e-4)
    assert rows["ws2-cpu-bs32"]["samples_per_second_b_ci95"] == ""  # a single run has no interval
    assert "| ws1-cpu-bs32 | 105.0 ± 63.5 | 210.0 ± 127.1 | 2.000 ± 1.711 | 1.000 | 1.000 |" in page
    assert "| runs per configuration | 2 | 1 / 2 |" in page
    assert "| ws1-cpu-bs32-r1 |" not in page


def test_a_run_without_metrics_is_an_error_naming_its_folder(tmp_path):
    run_a, _ = two_runs(tmp_path)
    (tmp_path / "empty" / "configs" / "ws1-cpu-bs32").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'empty'}: no configs/\\*/metrics.json"):
        write_comparison(run_a, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'missing'}: no such run folder"):
        write_comparison(tmp_path / "missing", run_a)
    assert not (tmp_path / "empty" / "compare-old").exists()


def pipeline(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    command = Path(sys.executable).parent / "pipeline"
    return subprocess.run([str(command), *args], capture_output=True, text=True, check=False, timeout=300)


def test_pipeline_report_with_two_runs(tmp_path):
    run_a, run_b = two_runs(tmp_path)
    result = pipeline("report", str(run_a), str(run_b))
    assert result.returncode == 0, result.stdout + result.stderr
    out = run_b / "compare-old"
    assert result.stdout.strip() == f"report: {out / 'compare.md'}"
    assert {p.name for p in out.iterdir()} == {"compare.md", "compare.html", "compare.csv", "compare.png",
                                               "compare.svg"}
    assert not (run_b / "report.md").exists()  # a comparison does not write either run's own report

    elsewhere = tmp_path / "shared" / "cpu-vs-gpu"
    result = pipeline("report", str(run_a), str(run_b), "--out", str(elsewhere))
    assert result.returncode == 0 and (elsewhere / "compare.html").exists(), result.stderr

    result = pipeline("report", str(run_a), str(tmp_path / "empty"))
    assert result.returncode == 2 and f"{tmp_path / 'empty'}: no such run folder" in result.stderr
    result = pipeline("report", str(run_a), "--out", str(elsewhere))
    assert result.returncode == 2 and "--out needs a second run folder" in result.stderr

    help_text = " ".join(pipeline("report", "--help").stdout.split())
    assert "RUN_A [RUN_B]" in help_text and "default: RUN_B/compare-<name of RUN_A>" in help_text
