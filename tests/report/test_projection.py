"""The projection model: ring all-reduce time, efficiency and expected throughput, worked out by hand."""

import pytest
import yaml

from pipeline.config import ReportConfig
from pipeline.report.aggregate import aggregate
from pipeline.report.projection import comm_seconds, model_efficiency, project, report_config
from pipeline.report.table import add_derived
from tests.report.fixtures import metrics

GRADIENT = 100e6  # 100 MB of gradients per step


def rows(*runs: dict) -> list[dict]:
    configurations = aggregate([{"name": f"ws{m['world_size']}-{m['device']}-bs{m['batch_size_per_rank']}", **m}
                                for m in runs])
    add_derived(configurations)
    return configurations


def test_ring_allreduce_time_and_efficiency_by_hand():
    # 100 Gbit/s = 12.5e9 bytes/s; at 8 ranks each link carries 2 x 7/8 x 100 MB.
    assert comm_seconds(8, GRADIENT, 100.0) == pytest.approx(2 * 7 / 8 * 1e8 / 12.5e9)
    assert comm_seconds(8, GRADIENT, 100.0) == pytest.approx(0.014)
    assert model_efficiency(8, 0.1, GRADIENT, 100.0) == pytest.approx(0.1 / 0.114)
    assert comm_seconds(1, GRADIENT, 100.0) == 0.0
    # The ring's cost per rank levels off at twice the gradient over the link, whatever the ranks.
    assert comm_seconds(10_000, GRADIENT, 100.0) == pytest.approx(2 * 1e8 / 12.5e9, rel=1e-3)
    assert model_efficiency(8, 0.1, GRADIENT, 200.0) == pytest.approx(0.1 / 0.107)


def test_projection_from_measured_rows():
    measured = rows(metrics(1, 100.0, 0.1, 0.0, gradient_bytes=int(GRADIENT)),
                    metrics(2, 150.0, 0.2, 0.05, gradient_bytes=int(GRADIENT)))
    (model,), missing = project(measured, ReportConfig(interconnect_gbit_s=100.0, projection_world_sizes=[8, 16, 32]))
    assert missing == []
    assert (model.device, model.baseline, model.compute_s) == ("cpu", "ws1-cpu-bs32", pytest.approx(0.1))
    assert [p.world_size for p in model.projected] == [8, 16, 32]
    at8 = model.projected[0]
    assert at8.comm_s == pytest.approx(0.014)
    assert at8.step_s == pytest.approx(0.114)
    assert at8.efficiency == pytest.approx(0.1 / 0.114)
    assert at8.samples_per_second == pytest.approx(100.0 * 8 * 0.1 / 0.114)
    assert model.projected[2].efficiency == pytest.approx(0.1 / (0.1 + 2 * 31 / 32 * 0.008))
    # Beside each measured world size: the model (2 ranks: t_comm = 2 x 1/2 x 8 ms) and what was measured (75%).
    one, two = model.at_measured
    assert (one.efficiency, one.measured_efficiency) == (1.0, 1.0)
    assert two.efficiency == pytest.approx(0.1 / 0.108)
    assert two.measured_efficiency == pytest.approx(0.75)


def test_efficiency_is_against_the_fewest_ranks_measured():
    measured = rows(metrics(2, 100.0, 0.1, 0.0, gradient_bytes=int(GRADIENT)),
                    metrics(4, 180.0, 0.11, 0.01, gradient_bytes=int(GRADIENT)))
    (model,), _ = project(measured, ReportConfig(projection_world_sizes=[8]))
    assert model.at_measured[0].efficiency == 1.0
    assert model.projected[0].efficiency == pytest.approx((0.1 + 0.008) / (0.1 + 0.014))
    assert model.projected[0].samples_per_second == pytest.approx(100.0 * 4 * model.projected[0].efficiency)


def test_no_projection_without_gradient_bytes():
    old = rows(metrics(1, 100.0, 0.1, 0.0), metrics(2, 150.0, 0.2, 0.05))
    assert "gradient_bytes" not in old[0]
    projections, missing = project(old, ReportConfig())
    assert projections == []
    assert len(missing) == 1 and missing[0].startswith("cpu, batch 32/rank") and "gradient_bytes" in missing[0]


def test_report_config_from_the_run_folder(tmp_path):
    assert report_config(tmp_path) == ReportConfig()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"name": "x", "report": {"interconnect_gbit_s": 200, "projection_world_sizes": [64, 128]}}))
    assert report_config(tmp_path) == ReportConfig(200.0, [64, 128])
    # A config.yaml of an older version, with a key renamed since, still gives its report section.
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"name": "x", "preprocess": {"image_feature": "logmel"}, "report": {"interconnect_gbit_s": 25}}))
    assert report_config(tmp_path) == ReportConfig(interconnect_gbit_s=25.0)
