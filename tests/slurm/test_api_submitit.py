"""`Experiment.submit_with_submitit` against the real single-host SLURM cluster: the jobs of `pipeline submit`
(dependencies, resources, requeue) as submitit job handles, recorded for `pipeline status`."""

from __future__ import annotations

import json
import subprocess

from pipeline import Experiment
from pipeline.slurm import jobs
from tests.conftest import tiny_experiment
from tests.slurm.conftest import wait_for
from tests.slurm.test_local_cluster import SLURM, TRAIN, finished, pipeline


def test_submitit_runs_the_experiment_with_the_dependencies_of_pipeline_submit(slurm_cluster, tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={**TRAIN, "world_sizes": [1, 2]}, slurm=SLURM)
    submitted = Experiment.load(config).submit_with_submitit()
    run = tmp_path / "run"
    pre, report = submitted.preprocess.job_id, submitted.report.job_id
    trains = [submitted.train[name].job_id for name in ("ws1-cpu-bs8", "ws2-cpu-bs8")]
    for handle in submitted.train.values():
        script = handle.paths.submission_file.read_text()
        assert f"#SBATCH --dependency=afterok:{pre}\n" in script and "#SBATCH --kill-on-invalid-dep=yes\n" in script
        assert "#SBATCH --signal=USR1@90\n" in script and "#SBATCH --requeue\n" in script
    assert f"#SBATCH --dependency=afterany:{trains[0]}:{trains[1]}\n" in \
        submitted.report.paths.submission_file.read_text()

    assert submitted.wait() == run / "report.md"
    assert submitted.preprocess.result() == run / "features" / "summary.json"
    for name, world in [("ws1-cpu-bs8", 1), ("ws2-cpu-bs8", 2)]:
        metrics = json.loads(submitted.train[name].result().read_text())
        assert (metrics["world_size"], metrics["launcher"]) == (world, "srun")
    summary = json.loads((run / "features" / "summary.json").read_text())
    assert set(summary["tasks_per_node"]) == {"node1", "node2"}, summary["tasks_per_node"]
    report_text = (run / "report.md").read_text()
    assert "| ws1-cpu-bs8 |" in report_text and "| ws2-cpu-bs8 |" in report_text
    assert "Configurations without results" not in report_text

    rows = wait_for(lambda: finished(run), 120, "sacct to see every job end", every=2)
    assert [(r["stage"], r["job"], r["state"]) for r in rows] == [
        ("preprocess", pre, "COMPLETED"), ("train", trains[0], "COMPLETED"), ("train", trains[1], "COMPLETED"),
        ("report", report, "COMPLETED")]
    assert all(r["log"].startswith(str(run / "slurm" / "submitit")) for r in rows)
    status = pipeline("status", str(run))
    assert status.returncode == 0 and status.stdout.count("COMPLETED") == 4, status.stdout
    assert "Job completed successfully" in submitted.report.stdout()


def test_a_signalled_submitit_training_job_requeues_and_resumes(slurm_cluster, tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={**TRAIN, "world_sizes": [2], "epochs": 60,
                                                          "checkpoint_every_steps": 2}, slurm=SLURM)
    submitted = Experiment.load(config).submit_with_submitit()
    run, handle = tmp_path / "run", submitted.train["ws2-cpu-bs8"]
    train_log = run / "configs" / "ws2-cpu-bs8" / "train.log"
    wait_for(lambda: train_log.exists() and "epoch 3/60" in train_log.read_text(), 240, "training to reach epoch 3")
    # What SLURM does slurm.signal_seconds before the time limit: USR1 to the tasks of the job's steps (the ranks).
    subprocess.run(["scancel", "--signal=USR1", handle.job_id], check=True)
    metrics = json.loads(handle.result().read_text())
    assert metrics["restarts"] == 1 and metrics["resumed_from"]["epoch"] >= 3 and metrics["epochs_run"] == 60
    text = train_log.read_text()
    assert f"requeued SLURM job {handle.job_id}" in text and "(SLURM start 2)" in text
    assert "SLURM requeued the job; it resumes from that checkpoint" in handle.stdout()
    assert submitted.report.result() == run / "report.md"
    rows = wait_for(lambda: finished(run), 120, "sacct to see every job end", every=2)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 3, rows
    _, records = jobs.load(run)
    assert [r.job_id for r in records] == [j.job_id for j in submitted.all]
