"""Report generation from recorded metrics."""

import csv
import json

import pytest

from pipeline.report.curves import curves
from pipeline.report.report import honesty_notes, write_report
from pipeline.report.table import add_units
from tests.report.fixtures import metrics, record, skipped


def test_speedup_efficiency_and_honesty_notes(tmp_path):
    record(tmp_path, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.01))
    record(tmp_path, "ws2-cpu-bs32", metrics(2, 150.0, 0.42, 0.12))
    record(tmp_path, "ws4-cpu-bs32", metrics(4, 160.0, 0.80, 0.3))
    record(tmp_path, "ws8-cpu-bs32", skipped(8, "needs 8 cores, the machine gives 2"), "skipped")
    report = write_report(tmp_path).read_text()
    with open(tmp_path / "scaling.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["ws2-cpu-bs32"]["speedup"]) == 1.5
    assert float(rows["ws2-cpu-bs32"]["efficiency"]) == 0.75
    assert float(rows["ws4-cpu-bs32"]["efficiency"]) == 0.4
    # The compact table: 12 columns, the rest in the detail tables.
    assert ("| configuration | ranks | device | batch | samples/s | speedup | efficiency | step ms | all-reduce | "
            "test acc | device-h | flags |") in report
    assert "| ws2-cpu-bs32 | 2 | cpu | 32/rank, 64 global | 150.0 | 1.500 | 0.750 | 420.0 | 29% | 0.880 | 0.200 " \
        "rank-h |  |" in report
    assert "| ws4-cpu-bs32 | 4 | cpu | 32/rank, 128 global | 160.0 | 1.600 | 0.400 | 800.0 | 38% | 0.880 | 0.400 " \
        "rank-h | <75%, oversubscribed |" in report
    assert rows["ws4-cpu-bs32"]["flags"] == "<75%, oversubscribed" and rows["ws2-cpu-bs32"]["scaling"] == "weak"
    assert "weak, cpu, 32/rank: worth asking for up to 2 CPU ranks (ws2-cpu-bs32, efficiency 0.750); under it: " \
        "ws4-cpu-bs32 (0.400)." in report
    assert "## Strong scaling" not in report  # train.scaling defaults to weak
    assert float(rows["ws4-cpu-bs32"]["device_hours"]) == 0.4  # 360 s x 4 ranks
    assert "ws4-cpu-bs32 oversubscribes the CPU: 4 ranks x 1 threads on 2 cores" in report
    assert ("ws2-cpu-bs32 (weak, cpu, 32/rank) reaches 75% efficiency. The all-reduce is 29% of the step at 2 CPU "
            "ranks (120.0 of 420.0 ms, launch to completion; it overlaps backward, so not all of it is lost). The "
            "step grew from 320.0 ms at 1 CPU rank to 420.0 ms, mostly in forward+backward (+100.0 ms).") in report
    assert "ws8-cpu-bs32 was not run: needs 8 cores, the machine gives 2." in report
    assert "CPU processes, not GPUs" in report
    assert "Each figure is one training run per configuration (train.repeats 1" in report
    assert not [line for line in report.splitlines() if line.startswith("| ws") and "±" in line]
    for name in ("speedup_weak", "step_split", "curves"):
        for fmt in ("png", "svg"):
            assert (tmp_path / f"{name}.{fmt}").stat().st_size > 5000, name
        assert "![" in report and f"]({name}.png)" in report
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 4 and "ws8-cpu-bs32 was not run" in page
    scaling = json.loads((tmp_path / "scaling.json").read_text())
    assert set(scaling["columns"]) == set(rows["ws1-cpu-bs32"])
    assert [c["speedup"] for c in scaling["configurations"]] == [1.0, 1.5, 1.6]


def test_a_busy_machine_is_named_in_the_notes():
    rows = [{"name": "ws1-cpu-bs32", **metrics(1, 100.0, 0.3, 0.0, load_average_1m=1.1)},
            {"name": "ws2-cpu-bs32", **metrics(2, 190.0, 0.33, 0.01, load_average_1m=3.9)}]
    for row in rows:
        add_units(row)
    found = curves(rows, ["weak"])
    notes = honesty_notes(rows, found, [])
    assert any(n.startswith("ws2-cpu-bs32 shared the machine: the load average was 3.9") for n in notes)
    assert not any(n.startswith("ws1-cpu-bs32 shared") for n in notes)


def test_repeats_are_reported_as_mean_plus_minus_interval_and_listed_one_by_one(tmp_path):
    for k, (one, two) in enumerate([(100.0, 150.0), (110.0, 160.0), (120.0, 170.0)], start=1):
        record(tmp_path, f"ws1-cpu-bs32-r{k}", metrics(1, one, 0.32, 0.01, seed=k - 1, repeat=k))
        record(tmp_path, f"ws2-cpu-bs32-r{k}", metrics(2, two, 0.42, 0.12, seed=k - 1, repeat=k))
    for k in (1, 2, 3):
        record(tmp_path, f"ws8-cpu-bs32-r{k}", skipped(8, "needs 8 cores"), "skipped")
    report = write_report(tmp_path).read_text()
    assert "Each figure is the mean of 3 training runs per configuration" in report
    assert "± is the half-width of the 95% confidence interval" in report
    assert "| ws1-cpu-bs32 |" in report and "-r1 |" not in report
    assert "| 32/rank, 32 global | 110.0 ± 24.8 |" in report  # batch, then samples/s
    assert "| 32/rank, 64 global | 160.0 ± 24.8 |" in report
    assert report.count("ws8-cpu-bs32 was not run: needs 8 cores.") == 1
    with open(tmp_path / "scaling.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"ws1-cpu-bs32", "ws2-cpu-bs32"}
    assert float(rows["ws1-cpu-bs32"]["samples_per_second_ci95"]) == pytest.approx(24.84, abs=0.01)
    assert float(rows["ws2-cpu-bs32"]["speedup"]) == pytest.approx(160 / 110)
    assert float(rows["ws2-cpu-bs32"]["speedup_ci95"]) > 0
    with open(tmp_path / "scaling_repeats.csv", newline="") as f:
        repeats = list(csv.DictReader(f))
    assert [r["name"] for r in repeats] == [f"ws{n}-cpu-bs32-r{k}" for n in (1, 2) for k in (1, 2, 3)]
    assert list(repeats[0]) == list(rows["ws1-cpu-bs32"])
    assert [float(r["samples_per_second"]) for r in repeats[3:]] == [150.0, 160.0, 170.0]
    assert float(repeats[3]["speedup"]) == pytest.approx(150 / 110)  # against the baseline's mean
    assert all(r["repeats"] == "1" and r["samples_per_second_ci95"] == "" for r in repeats)



def test_configurations_from_other_code_or_machines_are_named_in_the_notes(tmp_path):
    code = {"package": "0.1.0", "source_sha256": "aaaa000011112222", "commit": "abc"}
    record(tmp_path, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.01, code=code))
    record(tmp_path, "ws2-cpu-bs32", metrics(2, 150.0, 0.42, 0.12, code={**code, "source_sha256": "bbbb"},
                                             hostname="other-host"))
    report = write_report(tmp_path).read_text()
    assert "Code: audio-ddp-pipeline 0.1.0, source digest aaaa000011112222, commit abc." in report
    assert "not all measured with the same code version: ws1-cpu-bs32: {" in report
    assert "not all measured with the same machine: ws1-cpu-bs32: " in report and "ws2-cpu-bs32: 'other-host'" \
        in report

    record(tmp_path, "ws2-cpu-bs32", metrics(2, 150.0, 0.42, 0.12, code=code))
    assert "not all measured" not in write_report(tmp_path).read_text()


def test_a_sweep_on_two_devices_names_the_gpu_and_each_device_is_its_own_baseline(tmp_path):
    """`train.device: auto` on a 1-GPU machine: ws1 on the GPU, ws2 on the CPU. The CPU row sorts first, yet the
    hardware line names the GPU, and the notes say which device each got and why."""
    gpu = {"gpu_model": "NVIDIA H200", "cuda": "13.0", "gpu_count": 1}
    record(tmp_path, "ws1-cuda-bs32", metrics(1, 900.0, 0.03, 0.0, device="cuda", **gpu,
                                              device_reason="train.device auto and a GPU per rank (1 rank, this "
                                                            "machine has 1)"))
    record(tmp_path, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.01))  # an older run: no device_reason recorded
    record(tmp_path, "ws2-cpu-bs32", metrics(2, 150.0, 0.42, 0.12,
                                             device_reason="train.device auto and 2 ranks need 2 GPUs, this machine "
                                                           "has 1"))
    report = write_report(tmp_path).read_text()
    assert "2 CPU cores available, GPU NVIDIA H200. Versions:" in report
    assert ("These configurations did not all run on the same device: ws1-cpu-bs32, ws2-cpu-bs32 on cpu "
            "(train.device auto and 2 ranks need 2 GPUs, this machine has 1); ws1-cuda-bs32 on cuda (train.device "
            "auto and a GPU per rank (1 rank, this machine has 1)). Each device is its own speedup baseline") in report
    with open(tmp_path / "scaling.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["ws1-cuda-bs32"]["speedup"]) == 1.0 and float(rows["ws2-cpu-bs32"]["speedup"]) == 1.5


def test_one_device_has_no_mixed_device_note_and_a_cpu_run_names_no_gpu(tmp_path):
    record(tmp_path, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.01, device_reason="train.device cpu"))
    report = write_report(tmp_path).read_text()
    assert "did not all run on the same device" not in report and ", GPU " not in report
    assert "peak reserved by the CUDA allocator on GPU" in (tmp_path / "scaling.json").read_text()
    assert "torch.cuda.max_memory_reserved" in report
