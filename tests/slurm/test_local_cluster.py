"""`pipeline submit` against the real single-host SLURM cluster: 2 virtual nodes with 4 fake GPUs each, training
on CPU gloo ranks placed by srun (the fake GPUs only shape the allocation)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.slurm import jobs
from tests.conftest import tiny_experiment
from tests.slurm.conftest import wait_for

SLURM = {"gpus_per_node": 2, "preprocess_nodes": 2, "preprocess_cpus_per_node": 1, "time_train": "00:15:00"}
TRAIN = {"device": "cpu", "skip_oversubscribed": False}


def pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, check=False,
                          timeout=300)


def submit(config: Path) -> dict[str, str]:
    """Submit; returns configuration (or stage) -> job id."""
    result = pipeline("submit", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    _, records = jobs.load(config.parent / "run")
    return {r.configuration or r.stage: r.job_id for r in records}


def finished(run_dir: Path) -> list[dict] | None:
    rows = jobs.status_table(run_dir)
    return rows if all(r["state"] in jobs.FINISHED for r in rows) else None


def test_experiment_end_to_end_on_two_nodes_at_1_2_and_4_gpus(slurm_cluster, tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={**TRAIN, "world_sizes": [1, 2, 4]}, slurm=SLURM)
    ids = submit(config)
    assert list(ids) == ["preprocess", "ws1-cpu-bs8", "ws2-cpu-bs8", "ws4-cpu-bs8", "report"]
    run = tmp_path / "run"
    rows = wait_for(lambda: finished(run), 480, "every job to finish", every=2)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 5, rows

    summary = json.loads((run / "features" / "summary.json").read_text())
    assert set(summary["tasks_per_node"]) == {"node1", "node2"}, summary["tasks_per_node"]
    for name, world, nodes in [("ws1-cpu-bs8", 1, 1), ("ws2-cpu-bs8", 2, 1), ("ws4-cpu-bs8", 4, 2)]:
        metrics = json.loads((run / "configs" / name / "metrics.json").read_text())
        assert (metrics["world_size"], metrics["nodes"], metrics["launcher"]) == (world, nodes, "srun")
        assert metrics["rank_max_param_difference"] == 0.0
        log = (run / "slurm" / "logs" / f"train-{name}-{ids[name]}.out").read_text()
        assert f"train: job {ids[name]} (start 1) on node" in log
    report = (run / "report.md").read_text()
    for name in ("ws1-cpu-bs8", "ws2-cpu-bs8", "ws4-cpu-bs8"):
        assert f"| {name} |" in report
    assert "Configurations without results" not in report
    # The 4-rank job measured the all-reduce over its own tasks on both nodes, and the projection used it.
    link = json.loads((run / "allreduce.json").read_text())
    assert [(f["world_size"], r["nodes"]) for f in link["fits"] for r in link["results"][:1]] == [(4, 2)], link
    assert "Link: measured (gloo on cpu, `allreduce.json`" in report
    assert not list(run.glob("allreduce.json.*"))

    status = pipeline("status", str(run))
    assert status.returncode == 0 and status.stdout.count("COMPLETED") == 5, status.stdout


def test_a_signalled_training_job_requeues_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={**TRAIN, "world_sizes": [2], "epochs": 60,
                                                          "checkpoint_every_steps": 2}, slurm=SLURM)
    ids = submit(config)
    run, job = tmp_path / "run", ids["ws2-cpu-bs8"]
    train_log = run / "configs" / "ws2-cpu-bs8" / "train.log"
    wait_for(lambda: train_log.exists() and "epoch 3/60" in train_log.read_text(), 240, "training to reach epoch 3")
    # What SLURM does 90 s before the time limit (--signal=USR1@90): USR1 to every task of the job's steps.
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    rows = wait_for(lambda: finished(run), 300, "the requeued job and the report to finish", every=2)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 3, rows

    text = train_log.read_text()
    assert "stopped by signal 10" in text and f"requeued SLURM job {job}" in text
    assert "resumed from" in text and "(SLURM start 2)" in text
    metrics = json.loads((run / "configs" / "ws2-cpu-bs8" / "metrics.json").read_text())
    assert metrics["restarts"] == 1 and metrics["resumed_from"]["epoch"] >= 3
    assert metrics["epochs_run"] == 60
    log = (run / "slurm" / "logs" / f"train-ws2-cpu-bs8-{job}.out").read_text()
    assert "(start 1)" in log and "(start 2)" in log  # --open-mode=append keeps both runs' output


def test_a_cancelled_configuration_is_named_in_the_report(slurm_cluster, tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={**TRAIN, "world_sizes": [1, 2]}, slurm=SLURM)
    ids = submit(config)
    run = tmp_path / "run"
    subprocess.run(["scancel", ids["ws2-cpu-bs8"]], check=True)
    rows = wait_for(lambda: finished(run), 300, "the other jobs to finish", every=2)
    states = {r["configuration"] or r["stage"]: r["state"] for r in rows}
    assert states == {"preprocess": "COMPLETED", "ws1-cpu-bs8": "COMPLETED", "ws2-cpu-bs8": "CANCELLED",
                      "report": "COMPLETED"}
    report = (run / "report.md").read_text()
    assert "## Configurations without results" in report
    assert f"ws2-cpu-bs8: job {ids['ws2-cpu-bs8']} ended CANCELLED" in report
    assert "| ws1-cpu-bs8 |" in report


def test_cancel_stops_every_unfinished_job(slurm_cluster, tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={**TRAIN, "world_sizes": [1, 2]}, slurm=SLURM)
    submit(config)
    result = pipeline("cancel", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert "4 unfinished jobs cancelled" in result.stdout
    rows = wait_for(lambda: finished(tmp_path / "run"), 60, "the cancelled jobs to leave the queue")
    assert {r["state"] for r in rows} == {"CANCELLED"}, rows
