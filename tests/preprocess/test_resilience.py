"""Nothing is lost when processes die: a Dask worker killed mid-run, and the whole run stopped by Ctrl-C or killed
like a SLURM job, then run again. Every outcome must be the outputs of an uninterrupted serial run, exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pipeline.preprocess import shards
from pipeline.preprocess.cluster import dask_executor
from pipeline.preprocess.run import preprocess
from pipeline.preprocess.task import Task
from tests.preprocess.compare import assert_same_outputs, complete_shards, prepared, serial_run
from tests.slurm.conftest import wait_for

RESILIENCE = {"files_per_task": 1, "hop_seconds": 0.1}
"""One file per task (20 tasks) and overlapping chunks, so a run lasts long enough to be hit mid-way."""
TASKS = 20


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, speech_dir: Path) -> Path:
    return serial_run(tmp_path_factory.mktemp("serial"), speech_dir, **RESILIENCE)


def test_a_worker_killed_mid_run_has_its_tasks_redone(tmp_path, speech_dir, reference):
    from dask.distributed import default_client

    _, config = prepared(tmp_path, speech_dir, **RESILIENCE)
    features = Path(config.run_dir) / "features"
    killed: dict[str, int] = {}

    def kill_a_busy_worker(client) -> None:
        """Once a few shards are done, SIGKILL the process of a worker the scheduler has tasks running on."""
        def busy():
            processing = {w: keys for w, keys in client.processing().items() if keys}
            return len(complete_shards(features)) >= 2 and processing
        worker = next(iter(wait_for(busy, 120, "a worker with running tasks", every=0.01)))
        pid = client.run(os.getpid, workers=[worker])[worker]
        os.kill(pid, signal.SIGKILL)
        killed[worker] = pid

    with dask_executor(config.preprocess) as executor:
        client = default_client()
        killer = threading.Thread(target=kill_a_busy_worker, args=(client,))
        killer.start()
        summary = preprocess(config, executor)
        killer.join()
        (worker, pid), = killed.items()
        removal = [event for _, event in client.get_events(worker) if event.get("action") == "remove-worker"]
        pids_now = set(client.run(os.getpid).values())

    assert removal and removal[0]["processing-tasks"], f"the kill of {worker} lost no task: {removal}"
    assert pid not in pids_now  # the nanny replaced it with a new process
    assert summary.tasks == TASKS
    assert_same_outputs(reference, Path(config.run_dir))


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed-job"])
def test_an_interrupted_run_resumes_from_its_complete_shards(tmp_path, speech_dir, reference, how):
    config_path, config = prepared(tmp_path, speech_dir, **RESILIENCE)
    features = Path(config.run_dir) / "features"
    command = [sys.executable, "-m", "pipeline", "preprocess", str(config_path)]
    # Its own session, so that the signal goes to its whole process group, workers included: what Ctrl-C on a
    # terminal does, and what SLURM does to the processes of a job it kills.
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        wait_for(lambda: len(complete_shards(features)) >= 3 or run.poll() is not None, 240,
                 "3 complete shards", every=0.01)
        os.killpg(run.pid, how)
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    assert run.returncode == (130 if how == signal.SIGINT else -signal.SIGKILL), output
    if how == signal.SIGINT:
        assert "interrupted; rerun the same command to resume" in output
    wait_for(lambda: not _alive_in_group(run.pid), 60, "every process of the run to exit")

    done = complete_shards(features)
    assert 3 <= len(done) < TASKS, f"{len(done)} shards complete: interrupt came too late to test anything"
    assert set(features.glob("shard-*")) == set(done), "a shard folder without its summary looks complete"
    for shard in done:
        rows = len(shards.read_chunks(shard))
        assert all(np.load(array).shape[0] == rows for array in shard.glob("*.npy")), shard
    kept = {p: p.stat().st_mtime_ns for shard in done for p in shard.iterdir()}

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{TASKS} tasks, {len(done)} already complete, running {TASKS - len(done)}" in rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert_same_outputs(reference, Path(config.run_dir))


def test_a_retried_attempt_of_a_finished_task_keeps_the_first_shard(tmp_path, speech_dir):
    """Two attempts of one task (the first on a worker presumed dead) may both finish; the second must neither
    fail nor replace the shard the first one completed."""
    from pipeline.data.manifest import read_manifest
    from pipeline.preprocess.task import run_task

    _, config = prepared(tmp_path, speech_dir, **RESILIENCE)
    task = Task(0, (read_manifest(Path(config.run_dir) / "manifest.csv")[0],))
    features = Path(config.run_dir) / "features"
    features.mkdir()
    first = run_task(task, config.preprocess, config.data.sample_rate, config.run_dir, config.data.root)
    before = {p.name: p.stat().st_mtime_ns for p in shards.shard_dir(features, 0).iterdir()}
    late = shards.TaskSummary(task_id=0, node="late", files=1, chunks=0, rejects=[], train_stats={})
    shards.write_shard(features, 0, {"logmel": np.zeros((1, 2, 3))}, [], late)
    assert shards.read_summary(features, 0) == first
    assert {p.name: p.stat().st_mtime_ns for p in shards.shard_dir(features, 0).iterdir()} == before
    assert not list(features.glob(".shard-*"))


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of process group `pgid` that still run (zombies waiting to be reaped do not count)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def test_a_ctrl_c_that_python_swallows_in_a_destructor_is_still_seen():
    """SIGINT during a `__del__` (as Dask's Futures release their keys) raises KeyboardInterrupt where Python only
    prints "Exception ignored": the flag of `_ctrl_c_kept` still says it came, so the driver stops after the task
    at hand instead of running to the end (which CI saw once)."""
    from pipeline.preprocess.run import _ctrl_c_kept

    class Releases:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes of this frame
                pass

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever an earlier test left installed
    try:
        with _ctrl_c_kept() as pressed:
            thing = Releases()
            del thing  # "Exception ignored in ... KeyboardInterrupt"
            assert pressed.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
