"""Which link the projection uses: RUN_DIR/allreduce.json when it was measured on the curve's device, else the
assumed `report.interconnect_gbit_s`; a malformed file is an error naming it; the extrapolation rule by hand."""

import json

import pytest

from pipeline.config import ReportConfig
from pipeline.layout import RunLayout
from pipeline.report.interconnect import EXTRAPOLATION, load_link, load_links

REPORT = ReportConfig(interconnect_gbit_s=100.0)


def write(run_dir, device="cpu", fits=None, **extra) -> None:
    fits = [{"world_size": 2, "latency_s": 50e-6, "bus_bandwidth_bytes_s": 2e9},
            {"world_size": 4, "latency_s": 120e-6, "bus_bandwidth_bytes_s": 1.5e9}] if fits is None else fits
    record = {"kind": "pipeline-bench-allreduce", "device": device, "backend": "gloo" if device == "cpu" else "nccl",
              "fits": fits, **extra}
    RunLayout(run_dir).allreduce.write_text(json.dumps(record))


def test_no_file_assumes_the_configured_link(tmp_path):
    link = load_link(tmp_path, REPORT, "cuda")
    assert (link.source, link.gbit_s, link.file, link.note) == ("assumed", 100.0, None, "")
    assert link.latency_s(8) == 0.0 and link.bus_bandwidth(8) == 12.5e9
    assert link.seconds(1e8, 8) == pytest.approx(2 * 7 / 8 * 1e8 / 12.5e9)
    assert link.applies_to("cpu") and link.applies_to("cuda")
    text = link.describe()
    assert "assumed, 100 Gbit/s = 12.5 GB/s" in text and "`report.interconnect_gbit_s`" in text
    assert "`pipeline bench --allreduce --out RUN_DIR/allreduce.json`" in text


def test_a_file_measured_on_the_device_is_used(tmp_path):
    write(tmp_path)
    link = load_link(tmp_path, REPORT, "cpu")
    assert (link.source, link.file, link.backend, link.device, link.world_sizes) == (
        "measured", "allreduce.json", "gloo", "cpu", [2, 4])
    assert link.seconds(1e6, 2) == pytest.approx(50e-6 + 1e6 / 2e9)
    assert link.seconds(1e6, 4) == pytest.approx(120e-6 + 1.5 * 1e6 / 1.5e9)
    assert link.seconds(1e6, 1) == 0.0
    assert not link.applies_to("cuda")
    text = link.describe()
    assert "measured (gloo on cpu, `allreduce.json`" in text
    assert "2 ranks: latency 50.0 us, bus bandwidth 2.000 GB/s; 4 ranks: latency 120.0 us" in text
    assert EXTRAPOLATION in text


def test_extrapolation_beyond_and_between_the_measured_world_sizes(tmp_path):
    write(tmp_path, fits=[{"world_size": 2, "latency_s": 50e-6, "bus_bandwidth_bytes_s": 2e9},
                          {"world_size": 8, "latency_s": 140e-6, "bus_bandwidth_bytes_s": 1e9}])
    link = load_link(tmp_path, REPORT, "cpu")
    # Beyond 8: B_8, and the latency of the ring's 2(N-1) steps at the per-step latency of 8 ranks (140 us / 14).
    assert link.bus_bandwidth(32) == 1e9
    assert link.latency_s(32) == pytest.approx(140e-6 * 31 / 7) == pytest.approx(62 * 10e-6)
    assert link.seconds(1e6, 32) == pytest.approx(620e-6 + 2 * 31 / 32 * 1e6 / 1e9)
    # Between 2 and 8: the fit of the next measured world size above, the slower side.
    assert (link.latency_s(4), link.bus_bandwidth(4)) == (140e-6, 1e9)


def test_a_file_of_another_device_is_not_used(tmp_path):
    write(tmp_path, device="cpu")
    link = load_link(tmp_path, REPORT, "cuda")
    assert link.source == "assumed" and link.note == "allreduce.json was measured on cpu, not cuda"
    assert "allreduce.json was measured on cpu, not cuda" in link.describe()
    links = load_links(tmp_path, REPORT, ["cuda", "cpu", "cpu"])
    assert {device: link.source for device, link in links.items()} == {"cpu": "measured", "cuda": "assumed"}


def test_a_file_that_measured_nothing_is_not_used(tmp_path):
    write(tmp_path, fits=[])
    link = load_link(tmp_path, REPORT, "cpu")
    assert link.source == "assumed" and "measured no world size" in link.note


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"device": "cpu", "backend": "gloo"}),
    json.dumps({"device": "cpu", "backend": "gloo", "fits": [{"world_size": 2, "latency_s": 1e-5}]}),
    json.dumps({"device": "cpu", "backend": "gloo",
                "fits": [{"world_size": 2, "latency_s": 1e-5, "bus_bandwidth_bytes_s": 0}]}),
    json.dumps(["a list"]),
])
def test_a_malformed_file_is_an_error_naming_it(tmp_path, content):
    path = RunLayout(tmp_path).allreduce
    path.write_text(content)
    with pytest.raises(ValueError, match="allreduce.json: not an all-reduce measurement"):
        load_link(tmp_path, REPORT, "cpu")
    try:
        load_link(tmp_path, REPORT, "cpu")
    except ValueError as err:
        assert str(path) in str(err)


def test_no_run_folder_assumes_the_link():
    assert load_link(None, REPORT, "cpu").source == "assumed"
