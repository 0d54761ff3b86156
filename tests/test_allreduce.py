"""`pipeline bench --allreduce`: a real 2-rank gloo measurement (spawned here, and as the ranks of a job), the bus
bandwidth formula, the fit on synthetic timings, and the train stage's measurement that a rerun keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline import allreduce
from pipeline.allreduce import Settings, bus_factor, feasible, fit, result_row
from pipeline.cli import main
from pipeline.config import ReportConfig
from pipeline.layout import RunLayout
from pipeline.report.interconnect import load_link
from pipeline.stages import _measure_link
from pipeline.train.environment import available_cores

TINY = ["--message-sizes", "4K", "4M", "--repeats", "2", "--quick"]


def check_record(record: dict, world_size: int, sizes: list[int]) -> None:
    assert record["kind"] == "pipeline-bench-allreduce" and (record["device"], record["backend"]) == ("cpu", "gloo")
    assert {"hostname", "cpu_model", "versions"} <= set(record["hardware"])
    assert {"wall_s", "loadavg_before", "loadavg_after"} <= set(record["busy"])
    assert [(r["world_size"], r["bytes"]) for r in record["results"]] == [(world_size, n) for n in sizes]
    for row in record["results"]:
        time_s, algbw, busbw = row["time_s"], row["algbw_bytes_s"], row["busbw_bytes_s"]
        assert 0 < time_s["min"] <= time_s["median"] <= time_s["max"] and len(time_s["values"]) == row["repeats"]
        assert algbw["median"] == pytest.approx(row["bytes"] / time_s["median"]) and algbw["min"] > 0
        for key in ("min", "median", "max"):
            assert busbw[key] == pytest.approx(algbw[key] * bus_factor(world_size))
    (found,) = record["fits"]
    assert found["world_size"] == world_size and found["latency_s"] >= 0 and found["bus_bandwidth_bytes_s"] > 0


def test_two_spawned_gloo_ranks(tmp_path, capsys):
    out = tmp_path / "allreduce.json"
    assert main(["bench", "--allreduce", "--device", "cpu", "--world-sizes", "2", str(available_cores() + 1),
                 "1", *TINY, "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    check_record(record, 2, [4096, 4 * 2**20])
    assert record["launcher"] == "spawn" and record["settings"]["repeats"] == 2
    assert [s["world_size"] for s in record["skipped"]] == [1, available_cores() + 1]
    assert "core each" in record["skipped"][1]["reason"]
    printed = capsys.readouterr().out
    assert "fit 2 ranks: latency" in printed and str(out) in printed
    # The report reads what the bench wrote.
    link = load_link(tmp_path, ReportConfig(), "cpu")
    assert link.source == "measured" and link.world_sizes == [2]
    assert link.latency_s(2) == pytest.approx(record["fits"][0]["latency_s"])


def test_one_rank_of_a_job_measures_at_its_world_size(tmp_path):
    """As torchrun starts them: each process with RANK, WORLD_SIZE and the rendezvous; rank 0 writes the JSON."""
    out = tmp_path / "allreduce.json"
    env = {**os.environ, "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(allreduce.free_port())}
    command = [sys.executable, "-m", "pipeline", "bench", "--allreduce", "--device", "cpu", *TINY, "--out", str(out)]
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    record = json.loads(out.read_text())
    check_record(record, 2, [4096, 4 * 2**20])
    assert record["launcher"] == "torchrun" and record["skipped"] == []
    assert "fit 2 ranks" in outputs[0] and outputs[1] == ""


def test_bus_bandwidth_is_the_ring_share_of_the_algorithm_bandwidth():
    row = result_row(4, 1, 2**20, 10, [0.002, 0.001, 0.004])
    assert row["time_s"] == {"min": 0.001, "median": 0.002, "max": 0.004, "values": [0.002, 0.001, 0.004]}
    assert row["algbw_bytes_s"] == {"min": 2**20 / 0.004, "median": 2**20 / 0.002, "max": 2**20 / 0.001}
    assert row["busbw_bytes_s"]["median"] == pytest.approx(2**20 / 0.002 * 1.5)  # 2 x 3/4
    assert bus_factor(2) == 1.0 and bus_factor(8) == 1.75


@pytest.mark.parametrize("world_size", [2, 8])
def test_fit_recovers_latency_and_bandwidth(world_size):
    latency, bandwidth = 40e-6, 3e9
    sizes = [4096 * 4**k for k in range(8)]
    rows = [result_row(world_size, 1, m, 5, [latency + m * bus_factor(world_size) / bandwidth] * 3) for m in sizes]
    found = fit(world_size, rows)
    assert found["latency_s"] == pytest.approx(latency, rel=1e-6)
    assert found["bus_bandwidth_bytes_s"] == pytest.approx(bandwidth, rel=1e-6)
    assert found["max_relative_residual"] < 1e-9 and found["sizes"] == 8
    # Times below the latency a fit would put negative: latency 0, the bandwidth through the origin.
    rows = [result_row(2, 1, m, 5, [m / bandwidth]) for m in sizes]
    assert fit(2, rows)["latency_s"] >= 0
    assert fit(2, rows)["bus_bandwidth_bytes_s"] == pytest.approx(bandwidth, rel=1e-6)


def test_fit_needs_two_sizes_and_growing_times():
    with pytest.raises(ValueError, match="at least 2 message sizes"):
        fit(2, [result_row(2, 1, 4096, 5, [1e-4])])
    with pytest.raises(ValueError, match="do not grow"):
        fit(2, [result_row(2, 1, 4096, 5, [2e-4]), result_row(2, 1, 2**20, 5, [1e-4])])


def test_feasible_world_sizes_and_settings():
    run, skipped = feasible([4, 2, 1, 2], "cpu")
    assert 2 in run or available_cores() < 2
    assert skipped[0] == {"world_size": 1, "reason": "an all-reduce over one rank moves nothing"}
    assert Settings([4096, 2**26]).iterations(4096) == 100 and Settings([4096, 2**26]).iterations(2**26) == 5
    assert allreduce.parse_size("64M") == 2**26 and allreduce.parse_size("4KiB") == 4096


def test_measure_for_run_measures_once(tmp_path, capsys):
    path = RunLayout(tmp_path).allreduce
    assert allreduce.measure_for_run(tmp_path, "cpu", [1]) is None and not path.exists()
    assert allreduce.measure_for_run(tmp_path, "cpu", [1, 2]) == path
    written = path.read_text()
    check_record(json.loads(written), 2, allreduce.QUICK.sizes)
    assert "allreduce: gloo on cpu, 2 ranks: latency" in capsys.readouterr().out
    # A rerun keeps it, whatever it is asked for.
    assert allreduce.measure_for_run(tmp_path, "cpu", [2, 4]) == path
    assert path.read_text() == written and "exists, kept" in capsys.readouterr().out


def test_train_stage_measures_at_the_sweeps_world_sizes(tmp_path, capsys, monkeypatch):
    layout = RunLayout(tmp_path)
    for name, device, ranks in (("ws1-cpu-bs8", "cpu", 1), ("ws1-cuda-bs8", "cuda", 1)):
        layout.training(name).folder.mkdir(parents=True)
        layout.training(name).metrics.write_text(json.dumps({"device": device, "world_size": ranks}))
    _measure_link(layout, "torchrun")  # one rank everywhere: nothing to measure, nothing said
    assert not layout.allreduce.exists() and capsys.readouterr().out == ""
    layout.training("ws2-cpu-bs8").folder.mkdir()
    layout.training("ws2-cpu-bs8").metrics.write_text(json.dumps({"device": "cpu", "world_size": 2}))
    # Under srun it measures over the job's own tasks (tests/slurm/test_local_cluster.py), none in a 1-task job.
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    _measure_link(layout, "srun")
    assert not layout.allreduce.exists() and capsys.readouterr().out == ""
    layout.allreduce.write_text("{}")
    _measure_link(layout, "torchrun")
    assert layout.allreduce.read_text() == "{}" and "kept" in capsys.readouterr().out
