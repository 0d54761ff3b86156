"""Report generation from recorded metrics."""

import csv
import json
from pathlib import Path

from pipeline.report.report import honesty_notes, write_report
from pipeline.report.table import add_derived


def metrics(world_size: int, samples_per_second: float, step_s: float, allreduce_s: float, **extra) -> dict:
    return {
        "world_size": world_size, "device": "cpu", "model": "cnn", "feature": "logmel", "input": "features",
        "init": "from scratch (no pretrained_weights)",
        "batch_size_per_rank": 32, "global_batch_size": 32 * world_size, "epochs": 2,
        "samples_per_second": samples_per_second, "mean_step_s": step_s, "mean_data_s": 0.001,
        "mean_forward_backward_s": step_s - 0.011, "mean_optimizer_s": 0.01, "mean_allreduce_s": allreduce_s,
        "peak_memory_bytes": 300 * 2**20, "nodes": 1, "precision": "fp32", "train_wall_s": 360.0,
        "history": [{"epoch": 1, "train_loss": 1.0, "val_accuracy": 0.5}, {"epoch": 2, "train_loss": 0.5,
                                                                          "val_accuracy": 0.9}],
        "epoch_time_s": 1000 / samples_per_second, "final_val_accuracy": 0.9, "test_accuracy": 0.88,
        "hostname": "host", "cpu_model": "Test CPU", "cpu_cores_available": 2, "threads_per_rank": 1,
        "launcher": "torchrun", "oversubscribed": world_size > 2, "measured_at": "2026-11-22T00:00:00+00:00",
        "versions": {"python": "3.11.7", "torch": "2.11.0"}, **extra,
    }


def record(run: Path, name: str, data: dict, kind: str = "metrics") -> None:
    (run / "configs" / name).mkdir(parents=True)
    (run / "configs" / name / f"{kind}.json").write_text(json.dumps(data))


def test_speedup_efficiency_and_honesty_notes(tmp_path):
    record(tmp_path, "ws1-cpu-bs32", metrics(1, 100.0, 0.32, 0.01))
    record(tmp_path, "ws2-cpu-bs32", metrics(2, 150.0, 0.42, 0.12))
    record(tmp_path, "ws4-cpu-bs32", metrics(4, 160.0, 0.80, 0.3))
    record(tmp_path, "ws8-cpu-bs32", {"world_size": 8, "reason": "needs 8 cores, the machine gives 2"}, "skipped")
    report = write_report(tmp_path).read_text()
    with open(tmp_path / "scaling.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows["ws2-cpu-bs32"]["speedup"]) == 1.5
    assert float(rows["ws2-cpu-bs32"]["efficiency"]) == 0.75
    assert float(rows["ws4-cpu-bs32"]["efficiency"]) == 0.4
    assert "| ws2-cpu-bs32 | cnn | features | from scratch (no pretrained_weights) | 1 | 2 | cpu | fp32 | 32 | 64 |" \
        in report
    assert float(rows["ws4-cpu-bs32"]["device_hours"]) == 0.4  # 360 s x 4 ranks
    assert "ws4-cpu-bs32 oversubscribes the CPU: 4 ranks x 1 threads on 2 cores" in report
    assert ("ws2-cpu-bs32 reaches 75% efficiency. Its step takes 420.0 ms against 320.0 ms for ws1-cpu-bs32: "
            "forward+backward 409.0 vs 309.0 ms, data wait 1.0 vs 1.0 ms, optimizer 10.0 vs 10.0 ms. "
            "The gradient all-reduce takes 120.0 ms (29% of the step") in report
    assert "ws8-cpu-bs32 was not run: needs 8 cores, the machine gives 2." in report
    assert "CPU processes, not GPUs" in report
    for name in ("speedup", "step_split", "curves"):
        for fmt in ("png", "svg"):
            assert (tmp_path / f"{name}.{fmt}").stat().st_size > 5000, name
        assert "![" in report and f"]({name}.png)" in report
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 3 and "ws8-cpu-bs32 was not run" in page
    scaling = json.loads((tmp_path / "scaling.json").read_text())
    assert set(scaling["columns"]) == set(rows["ws1-cpu-bs32"])
    assert [c["speedup"] for c in scaling["configurations"]] == [1.0, 1.5, 1.6]


def test_a_busy_machine_is_named_in_the_notes():
    rows = [{"name": "ws1-cpu-bs32", **metrics(1, 100.0, 0.3, 0.0, load_average_1m=1.1)},
            {"name": "ws2-cpu-bs32", **metrics(2, 190.0, 0.33, 0.01, load_average_1m=3.9)}]
    add_derived(rows)
    notes = honesty_notes(rows, [])
    assert any(n.startswith("ws2-cpu-bs32 shared the machine: the load average was 3.9") for n in notes)
    assert not any(n.startswith("ws1-cpu-bs32 shared") for n in notes)
