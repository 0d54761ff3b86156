"""The projection model on scaling curves: ring all-reduce time per bucket, the overlap with backward, weak and
strong scaling, and the link it used, worked out by hand."""

import pytest
import yaml

from pipeline.config import ReportConfig
from pipeline.report.aggregate import aggregate
from pipeline.report.curves import curves
from pipeline.report.interconnect import Link, LinkFit, assumed
from pipeline.report.projection import BUCKET_BYTES, FIRST_BUCKET_BYTES, buckets, project, report_config
from pipeline.report.table import add_derived
from tests.report.fixtures import metrics

GRADIENT = 100e6  # 100 MB of gradients per step: 1 MiB, three of 25 MiB, and the rest
SMALL = 1e6  # 1 MB: one bucket, so nothing overlaps
LAST = GRADIENT - FIRST_BUCKET_BYTES - 3 * BUCKET_BYTES


def rows(*runs: dict) -> list[dict]:
    configurations = aggregate([{"name": f"ws{m['world_size']}-{m['device']}-bs{m['batch_size_per_rank']}", **m}
                                for m in runs])
    add_derived(configurations)
    return configurations


def weak(*runs: dict) -> list:
    return curves(rows(*runs), ["weak"])


def link_of(gbit_s: float) -> Link:
    return assumed(ReportConfig(interconnect_gbit_s=gbit_s))


def test_ring_allreduce_time_by_hand():
    link = link_of(100.0)  # 12.5e9 bytes/s; at 8 ranks each link carries 2 x 7/8 x 100 MB
    assert link.seconds(GRADIENT, 8) == pytest.approx(2 * 7 / 8 * 1e8 / 12.5e9) == pytest.approx(0.014)
    assert link.seconds(GRADIENT, 1) == 0.0
    # The ring's cost per rank levels off at twice the message over the link, whatever the ranks.
    assert link.seconds(GRADIENT, 10_000) == pytest.approx(2 * 1e8 / 12.5e9, rel=1e-3)


def test_ddp_buckets():
    assert buckets(SMALL) == [SMALL]
    assert buckets(GRADIENT) == [FIRST_BUCKET_BYTES, BUCKET_BYTES, BUCKET_BYTES, BUCKET_BYTES, LAST]
    assert sum(buckets(GRADIENT)) == GRADIENT


def test_one_bucket_hides_nothing():
    measured = weak(metrics(1, 100.0, 0.1, 0.0, gradient_bytes=int(SMALL)),
                    metrics(2, 150.0, 0.2, 0.05, gradient_bytes=int(SMALL)))
    # 1 Gbit/s moves 1 MB over 8 ranks in 2 x 7/8 x 1e6 / 1.25e8 = 14 ms, all of it exposed.
    (model,), missing = project(measured, ReportConfig(interconnect_gbit_s=1.0, projection_world_sizes=[8, 16, 32]),
                                link_of(1.0))
    assert missing == []
    assert (model.scaling, model.device, model.batch, model.curve) == ("weak", "cpu", 32, "weak, cpu, 32/rank")
    assert (model.baseline, model.compute_s, model.link.source) == ("ws1-cpu-bs32", pytest.approx(0.1), "assumed")
    assert [p.world_size for p in model.projected] == [8, 16, 32]
    at8 = model.projected[0]
    assert at8.comm_s == at8.exposed_comm_s == pytest.approx(0.014)
    assert at8.step_s == pytest.approx(0.114)
    assert at8.efficiency == pytest.approx(0.1 / 0.114)
    assert at8.samples_per_second == pytest.approx(100.0 * 8 * 0.1 / 0.114)
    assert model.projected[2].efficiency == pytest.approx(0.1 / (0.1 + 2 * 31 / 32 * 0.008))
    # Beside each measured world size: the model (2 ranks: t_comm = 2 x 1/2 x 8 ms) and what was measured (75%).
    one, two = model.at_measured
    assert (one.efficiency, one.measured_efficiency) == (1.0, 1.0)
    assert two.efficiency == pytest.approx(0.1 / 0.108)
    assert two.measured_efficiency == pytest.approx(0.75)


def test_overlap_hides_all_buckets_but_the_last_under_backward():
    measured = weak(metrics(1, 100.0, 0.1, 0.0, gradient_bytes=int(GRADIENT)))
    backward = 2 / 3 * (0.1 - 0.011)  # the fixture's forward+backward is the step less 11 ms
    # 100 Gbit/s: 14 ms of all-reduce at 8 ranks, all of it under backward but the last bucket's share.
    (fast,), _ = project(measured, ReportConfig(projection_world_sizes=[8]), link_of(100.0))
    at8 = fast.projected[0]
    assert fast.backward_s == pytest.approx(backward)
    assert at8.comm_s == pytest.approx(0.014)
    assert at8.exposed_comm_s == pytest.approx(2 * 7 / 8 * LAST / 12.5e9)
    assert at8.efficiency == pytest.approx(0.1 / (0.1 + at8.exposed_comm_s))
    # 10 Gbit/s: 140 ms of all-reduce outlasts backward; what backward cannot cover adds to the step.
    (slow,), _ = project(measured, ReportConfig(projection_world_sizes=[8]), link_of(10.0))
    at8 = slow.projected[0]
    assert at8.comm_s == pytest.approx(0.14)
    assert at8.exposed_comm_s == pytest.approx(0.14 - backward)
    assert at8.step_s == pytest.approx(0.1 + 0.14 - backward)


def test_strong_scaling_shrinks_the_per_sample_work_and_keeps_the_gradient():
    # Global batch 32: 1 rank x 32, 2 ranks x 16.
    measured = curves(rows(metrics(1, 100.0, 0.1, 0.0, gradient_bytes=int(SMALL)),
                           metrics(2, 180.0, 0.06, 0.01, batch=16, gradient_bytes=int(SMALL))), ["strong"])
    report = ReportConfig(projection_world_sizes=[8, 64])
    (model,), missing = project(measured, report, link_of(1.0))
    assert (model.scaling, model.batch, model.curve) == ("strong", 32, "strong, cpu, global batch 32")
    (at8,) = model.projected  # 64 ranks would get half a sample each
    assert missing == ["strong, cpu, global batch 32 at 64 ranks: a global batch of 32 gives under one sample "
                       "per rank"]
    # forward+backward (89 ms) and the data wait (1 ms) shrink to 1/8; the optimizer's 10 ms stays.
    assert at8.compute_s == pytest.approx(0.1 - 0.090 * 7 / 8)
    assert at8.exposed_comm_s == pytest.approx(0.014)  # one 1 MB bucket at 1 Gbit/s: all of it exposed
    speedup = 0.1 / at8.step_s  # the same global batch per step, in less time
    assert at8.samples_per_second == pytest.approx(100.0 * speedup)
    assert at8.efficiency == pytest.approx(speedup / 8)
    two = model.at_measured[1]
    assert two.measured_efficiency == pytest.approx(0.9)
    assert two.compute_s == pytest.approx(0.1 - 0.090 / 2)


def test_measured_link_adds_its_latency_per_bucket():
    link = Link("measured", (LinkFit(2, 50e-6, 2e9), LinkFit(4, 100e-6, 1e9)), "allreduce.json", "gloo", "cpu")
    measured = weak(metrics(1, 100.0, 0.1, 0.0, gradient_bytes=int(GRADIENT)))
    (model,), _ = project(measured, ReportConfig(projection_world_sizes=[4, 16]), link)
    at4, at16 = model.projected
    assert model.link is link
    assert at4.comm_s == pytest.approx(5 * 100e-6 + 1.5 * GRADIENT / 1e9)
    # Beyond 4 ranks: B_4, and the latency grows with the ring's steps, 100 us x 15/3.
    assert at16.comm_s == pytest.approx(5 * 500e-6 + 2 * 15 / 16 * GRADIENT / 1e9)
    assert at16.exposed_comm_s == pytest.approx(at16.comm_s - model.backward_s)


def test_a_link_of_another_device_is_replaced_by_the_assumed_one():
    cuda_link = Link("measured", (LinkFit(2, 10e-6, 100e9),), "allreduce.json", "nccl", "cuda")
    measured = rows(metrics(1, 100.0, 0.1, 0.0, gradient_bytes=int(SMALL)),
                    metrics(1, 1000.0, 0.01, 0.0, device="cuda", gradient_bytes=int(SMALL)))
    found, _ = project(curves(measured, ["weak"]), ReportConfig(), cuda_link)
    by_device = {p.device: p.link for p in found}
    assert by_device["cuda"] is cuda_link
    assert by_device["cpu"].source == "assumed" and "measured on cuda, not cpu" in by_device["cpu"].note
    # A link per device, as interconnect.load_links gives them.
    found, _ = project(curves(measured, ["weak"]), ReportConfig(), {"cuda": cuda_link})
    assert {p.device: p.link.source for p in found} == {"cpu": "assumed", "cuda": "measured"}


def test_efficiency_is_against_the_fewest_ranks_measured():
    measured = weak(metrics(2, 100.0, 0.1, 0.0, gradient_bytes=int(SMALL)),
                    metrics(4, 180.0, 0.11, 0.01, gradient_bytes=int(SMALL)))
    (model,), _ = project(measured, ReportConfig(projection_world_sizes=[8]), link_of(1.0))
    assert model.at_measured[0].efficiency == 1.0
    assert model.projected[0].efficiency == pytest.approx((0.1 + 0.008) / (0.1 + 0.014))
    assert model.projected[0].samples_per_second == pytest.approx(100.0 * 4 * model.projected[0].efficiency)


def test_no_projection_without_gradient_bytes():
    old = weak(metrics(1, 100.0, 0.1, 0.0), metrics(2, 150.0, 0.2, 0.05))
    assert "gradient_bytes" not in old[0].baseline
    projections, missing = project(old, ReportConfig(), link_of(100.0))
    assert projections == []
    assert len(missing) == 1 and missing[0].startswith("weak, cpu, 32/rank") and "gradient_bytes" in missing[0]


def test_report_config_from_the_run_folder(tmp_path):
    assert report_config(tmp_path) == ReportConfig()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"name": "x", "report": {"interconnect_gbit_s": 200, "projection_world_sizes": [64, 128]}}))
    assert report_config(tmp_path) == ReportConfig(200.0, [64, 128])
    # A config.yaml of an older version, with a key renamed since, still gives its report section.
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"name": "x", "preprocess": {"image_feature": "logmel"}, "report": {"interconnect_gbit_s": 25}}))
    assert report_config(tmp_path) == ReportConfig(interconnect_gbit_s=25.0)
