"""One writer per run (`pipeline.run_lock`): a live holder refuses a second writer by name, a gone one is taken over,
what cannot be checked is refused with how to remove the lock, and a takeover has exactly one winner. Real
processes throughout; SLURM through a stand-in `squeue`, and through the local cluster when it runs."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import run_lock, stages
from pipeline.config import load_config
from pipeline.run_lock import Holder, RunLock, RunLockHeld
from tests.conftest import tiny_experiment
from tests.slurm.conftest import slurm_cluster, wait_for  # noqa: F401  (slurm_cluster: a fixture)

ROOT = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.run_lock import RunLock
    lock = RunLock(Path(sys.argv[1]), sys.argv[3], sys.argv[4])
    lock.acquire()
    Path(sys.argv[2]).write_text("held")
    time.sleep(300)
""")


def hold(path: Path, tmp_path: Path, stage: str = "train", configuration: str = "ws1-cpu-bs4") -> subprocess.Popen:
    """A live process on this host holding the lock at `path` (it never releases it: kill it when done)."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}"
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(ready), stage, configuration], cwd=ROOT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline, "the holder did not take the lock"
        time.sleep(0.02)
    return process


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(path: Path, **fields: object) -> None:
    """A lock file as another process would have left it."""
    data = {"host": socket.gethostname(), "pid": dead_pid(), "stage": "train", "configuration": "ws1-cpu-bs4",
            "since": "2025-01-01T00:00:00+00:00", "nonce": os.urandom(8).hex(), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))


def held_by(path: Path) -> dict:
    return json.loads(path.read_text())


def fake_squeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, status: int = 0) -> Path:
    """A `squeue` on PATH that answers every question with `output` (stdout on 0, stderr otherwise)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stream = "" if status == 0 else ">&2"
    (bin_dir / "squeue").write_text(f"#!/bin/bash\necho \"$@\" >> {tmp_path}/squeue.txt\n"
                                    f"echo '{output}' {stream}\nexit {status}\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "squeue.txt"


def test_the_lock_says_who_holds_it_and_goes_when_the_block_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    path = tmp_path / "run" / "configs" / "ws1-cpu-bs4" / "train.lock"
    with RunLock(path, "train", "ws1-cpu-bs4"):
        found = held_by(path)
        assert (found["host"], found["pid"], found["stage"], found["configuration"]) == \
            (socket.gethostname(), os.getpid(), "train", "ws1-cpu-bs4")
        assert (found["slurm_job_id"], found["slurm_restart_count"]) == ("4242", 2)
        assert found["pid_start"] == run_lock.process_start(os.getpid()) and found["since"].startswith("20")
    assert not path.exists()
    with pytest.raises(KeyError), RunLock(path, "train", "ws1-cpu-bs4"):
        raise KeyError("an error inside the block")
    assert not path.exists()


def test_a_second_writer_is_refused_naming_the_live_holder(tmp_path):
    path = tmp_path / "train.lock"
    holder = hold(path, tmp_path)
    try:
        with pytest.raises(RunLockHeld) as refused:
            RunLock(path, "train", "ws1-cpu-bs4").acquire()
        message = str(refused.value)
        assert f"host {socket.gethostname()}, pid {holder.pid}, since 20" in message
        assert f"pid {holder.pid} is running on this host" in message and f"kill {holder.pid}" in message
        assert str(path) in message and held_by(path)["pid"] == holder.pid  # the lock is untouched
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("case", ["exited", "zombie", "reused pid", "rebooted", "unreadable"])
def test_a_lock_whose_holder_is_gone_is_taken_over(tmp_path, case, capfd):
    path = tmp_path / "train.lock"
    zombie = None
    if case == "exited":
        write_lock(path)
    elif case == "zombie":  # exited, not yet reaped: os.kill(pid, 0) still succeeds
        zombie = subprocess.Popen([sys.executable, "-c", "pass"])
        wait_for(lambda: run_lock.process_gone(zombie.pid, None), 30, "the child to exit", every=0.05)
        write_lock(path, pid=zombie.pid)
    elif case == "reused pid":  # the pid runs, but it is a process started at another time than the holder
        write_lock(path, pid=os.getppid(), pid_start=run_lock.process_start(os.getppid()) + 1)
    elif case == "rebooted":
        write_lock(path, pid=os.getppid(), boot_id="a-boot-before-this-one")
    else:
        path.write_text("")
        os.utime(path, (time.time() - 60, time.time() - 60))
    with RunLock(path, "train", "ws1-cpu-bs4"):
        assert held_by(path)["pid"] == os.getpid()
    assert "took over the stale lock" in capfd.readouterr().err
    if zombie is not None:
        zombie.wait()


def test_a_lock_file_of_the_wrong_shape_counts_as_unreadable(tmp_path):
    path = tmp_path / "train.lock"
    for text in ['{"host": "h", "pid": "1"}', "[1, 2]", '{"host": "h", "pid": 0}', "\xff"]:
        path.write_text(text)
        assert run_lock.read_holder(path).unreadable, text


def test_a_holder_on_another_host_without_slurm_is_refused_with_how_to_remove_the_lock(tmp_path):
    path = tmp_path / "train.lock"
    write_lock(path, host="login-7", pid=12345)
    with pytest.raises(RunLockHeld) as refused:
        RunLock(path, "train", "ws1-cpu-bs4").acquire()
    message = str(refused.value)
    assert "host login-7, pid 12345" in message and "cannot be told from here" in message
    assert f"`ssh login-7 ps -p 12345`), remove {path} and run the same command again" in message


@pytest.mark.parametrize(("answer", "status", "outcome"), [
    ("RUNNING", 0, "refused"), ("COMPLETING", 0, "refused"), ("SUSPENDED", 0, "refused"),
    ("", 0, "taken"), ("PENDING", 0, "taken"), ("CANCELLED", 0, "taken"),
    ("slurm_load_jobs error: Invalid job id specified", 1, "taken"),
    ("slurm_load_jobs error: Unable to contact slurm controller", 1, "unknown"),
])
def test_a_holder_on_another_host_is_judged_by_its_slurm_job(tmp_path, monkeypatch, answer, status, outcome):
    asked = fake_squeue(tmp_path, monkeypatch, answer, status)
    path = tmp_path / "train.lock"
    write_lock(path, host="gpu-03", pid=777, slurm_job_id="4242")
    lock = RunLock(path, "train", "ws1-cpu-bs4")
    if outcome == "taken":
        lock.acquire()
        lock.release()
    else:
        with pytest.raises(RunLockHeld) as refused:
            lock.acquire()
        message = str(refused.value)
        assert "host gpu-03, pid 777, SLURM job 4242 (start 1)" in message
        if outcome == "refused":
            assert f"SLURM job 4242 is {answer}" in message and "scancel 4242" in message
        else:
            assert "Unable to contact slurm controller" in message and f"remove {path}" in message
    assert asked.read_text().split() == ["-h", "-j", "4242", "-o", "%T"]


def test_without_squeue_a_holder_on_another_host_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    path = tmp_path / "train.lock"
    write_lock(path, host="gpu-03", pid=777, slurm_job_id="4242")
    with pytest.raises(RunLockHeld, match="squeue is not on PATH here.*`squeue -j 4242`, `ssh gpu-03 ps -p 777`"):
        RunLock(path, "train", "ws1-cpu-bs4").acquire()


def test_a_requeued_job_takes_over_the_lock_of_its_previous_start_on_another_host(tmp_path, monkeypatch):
    """SLURM starts a requeued job only after its previous start has ended, although squeue says the job (this
    start) is RUNNING: the earlier restart count is what tells them apart."""
    fake_squeue(tmp_path, monkeypatch, "RUNNING")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    path = tmp_path / "train.lock"
    write_lock(path, host="gpu-03", pid=777, slurm_job_id="4242", slurm_restart_count=0)
    with RunLock(path, "train", "ws1-cpu-bs4"):
        assert held_by(path)["slurm_restart_count"] == 1
    write_lock(path, host="gpu-03", pid=777, slurm_job_id="4242", slurm_restart_count=1)  # the same start
    with pytest.raises(RunLockHeld, match="SLURM job 4242 is RUNNING"):
        RunLock(path, "train", "ws1-cpu-bs4").acquire()


def test_a_requeued_job_waits_for_its_previous_start_still_running_here(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "PREVIOUS_START_WAIT_S", 1.0)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    path = tmp_path / "train.lock"
    previous = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        write_lock(path, pid=previous.pid, pid_start=run_lock.process_start(previous.pid), slurm_job_id="4242")
        started = time.monotonic()
        with pytest.raises(RunLockHeld, match="previous start of SLURM job 4242 .* is still running here"):
            RunLock(path, "train", "ws1-cpu-bs4").acquire()
        assert time.monotonic() - started >= 1.0
        monkeypatch.setattr(run_lock, "PREVIOUS_START_WAIT_S", 30.0)
        subprocess.Popen(["bash", "-c", f"sleep 1; kill {previous.pid}"])
        with RunLock(path, "train", "ws1-cpu-bs4"):  # once it is gone
            assert held_by(path)["pid"] == os.getpid()
    finally:
        previous.kill()
        previous.wait()


RACE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from pipeline.run_lock import RunLock, RunLockHeld
    path, go = Path(sys.argv[1]), Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    try:
        with RunLock(path, "train", "ws1-cpu-bs4"):
            print("won", flush=True)
            time.sleep(2)
    except RunLockHeld as err:
        print("refused:", err, flush=True)
""")


@pytest.mark.parametrize("round_", range(3))
def test_of_racers_taking_over_one_stale_lock_exactly_one_wins(tmp_path, round_):
    path, go = tmp_path / "train.lock", tmp_path / "go"
    write_lock(path)
    racers = [subprocess.Popen([sys.executable, "-c", RACE, str(path), str(go)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(6)]
    time.sleep(1.5)  # every racer imported and waits for the start
    go.touch()
    results = [racer.communicate(timeout=120) for racer in racers]
    outcomes = [out.strip().split(":")[0] for out, _ in results]
    assert outcomes.count("won") == 1, results
    winner = racers[outcomes.index("won")].pid
    assert all(f"pid {winner}" in out for out, _ in results if out.startswith("refused")), results
    assert not path.exists() and not list(tmp_path.glob("train.lock.*"))  # no marker left


def test_the_lock_is_not_removed_once_another_process_holds_it(tmp_path, capfd):
    path = tmp_path / "train.lock"
    lock = RunLock(path, "train", "ws1-cpu-bs4")
    lock.acquire()
    path.unlink()
    write_lock(path, pid=os.getppid())  # taken over by a process that judged this one gone
    lock.release()
    assert held_by(path)["pid"] == os.getppid() and "not removed: it is now held by" in capfd.readouterr().err


def test_a_holder_of_the_record_round_trips():
    me = Holder.of_this_process("train", "ws1-cpu-bs4")
    assert Holder.from_json(me.to_json(), token="t") == me


def test_a_second_preprocess_of_one_run_folder_is_refused_and_a_dead_holder_is_taken_over(tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir)
    run_dir = tmp_path / "run"
    assert _pipeline("data", "manifest", str(config)).returncode == 0
    path = run_lock.lock_path(run_dir, "preprocess")
    holder = hold(path, tmp_path, "preprocess", "tiny")
    refused = _pipeline("preprocess", str(config))
    holder.kill()  # SIGKILL: it leaves its lock behind
    holder.wait()
    assert refused.returncode == 2, refused.stderr
    assert f"{path}: preprocess of tiny is locked by host {socket.gethostname()}, pid {holder.pid}" \
        in refused.stderr
    assert not (run_dir / "features").exists()  # refused before it touched anything
    done = _pipeline("preprocess", str(config))
    assert done.returncode == 0, done.stderr
    assert f"took over the stale lock of host {socket.gethostname()}, pid {holder.pid}" in done.stderr
    assert (run_dir / "features" / "index.csv").is_file() and not path.exists()


def _pipeline(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, check=False,
                          timeout=600, cwd=ROOT)


JOB = textwrap.dedent("""\
    #!{python}
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from pipeline.run_lock import RunLock
    RunLock(Path({lock!r}), "train", "ws1-cpu-bs4").acquire()
    with open({out!r}, "a") as out:
        out.write(f"held {{os.environ.get('SLURM_RESTART_COUNT', '0')}} {{os.getpid()}}\\n")
    time.sleep(300)
""")


@pytest.mark.usefixtures("slurm_cluster")
def test_a_requeued_slurm_job_takes_over_the_lock_its_killed_first_start_left(tmp_path):
    lock, out = tmp_path / "train.lock", tmp_path / "held.txt"
    script = tmp_path / "job.py"
    script.write_text(JOB.format(python=sys.executable, root=str(ROOT), lock=str(lock), out=str(out)))
    job = subprocess.run(["sbatch", "--parsable", "--requeue", "--open-mode=append", f"--output={tmp_path}/job.out",
                          str(script)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        first = wait_for(lambda: out.exists() and out.read_text().split(), 60, "the first start to lock", 0.2)
        subprocess.run(["scontrol", "requeue", job], check=True)  # SLURM kills it: its lock stays
        lines = wait_for(lambda: len(out.read_text().splitlines()) == 2 and out.read_text().splitlines(), 120,
                         "the second start to lock", 0.5)
        assert lines[1].split()[0:1] == ["held"] and lines[1].split()[1] == "1"
        assert held_by(lock)["slurm_restart_count"] == 1 and held_by(lock)["slurm_job_id"] == job
        assert f"took over the stale lock of host {socket.gethostname()}, pid {first[2]}" in \
            (tmp_path / "job.out").read_text()
    finally:
        subprocess.run(["scancel", job], check=False)


@pytest.mark.usefixtures("slurm_cluster")
def test_a_lock_of_a_running_slurm_job_elsewhere_holds_until_the_job_ends(tmp_path):
    job = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "sleep 120"], capture_output=True,
                         text=True, check=True).stdout.strip()
    path = tmp_path / "train.lock"
    try:
        wait_for(lambda: run_lock.slurm_job_state(job)[0] == "RUNNING", 60, "the job to run", 0.2)
        write_lock(path, host="node-elsewhere", pid=777, slurm_job_id=job)
        with pytest.raises(RunLockHeld, match=f"SLURM job {job} is RUNNING.*scancel {job}"):
            RunLock(path, "train", "ws1-cpu-bs4").acquire()
    finally:
        subprocess.run(["scancel", job], check=False)
    wait_for(lambda: run_lock.slurm_job_state(job)[0] not in run_lock.SLURM_LIVE, 60, "the job to end", 0.2)
    with RunLock(path, "train", "ws1-cpu-bs4"):
        assert held_by(path)["pid"] == os.getpid()


@pytest.mark.parametrize(("cluster", "first"), [("local", True), ("slurm", True), ("mpi", False)])
def test_preprocessing_locks_before_its_cluster_starts_except_under_dask_mpi(tmp_path, monkeypatch, cluster, first):
    """Under dask-mpi every MPI rank runs the stage and only the client rank comes out of `dask_executor`: the lock
    is taken there, or all ranks but one would be refused. Elsewhere it comes first: a refused run starts no
    cluster (dask-jobqueue's would submit worker jobs)."""
    from pipeline.preprocess import cluster as cluster_module
    from pipeline.preprocess import run as run_module

    config = load_config(tiny_experiment(tmp_path, tmp_path, preprocess={"cluster": cluster}))
    lock = run_lock.lock_path(tmp_path / "run", "preprocess")
    seen = []

    @contextlib.contextmanager
    def executor(pre, log_dir=None):
        seen.append(("cluster", lock.exists()))
        yield None

    def preprocess(config, executor):
        seen.append(("preprocess", lock.exists()))
        run = SimpleNamespace(tasks=0, chunks=0, seconds=0.0)
        return SimpleNamespace(runs=[run], chunks=0, files=0, tasks=0, rejected_files=0)

    monkeypatch.setattr(cluster_module, "dask_executor", executor)
    monkeypatch.setattr(run_module, "preprocess", preprocess)
    stages.preprocess_stage(config)
    assert seen == [("cluster", first), ("preprocess", True)] and not lock.exists()
