"""slurm/preprocess.sbatch on the real local SLURM cluster admits only holders of the job's key: while its scheduler
and the workers on both nodes run, a client without credentials, one with credentials of its own and a plain TCP
connection are refused, one with the job's credentials (beside the scheduler file) gets in; the dashboard listens
on localhost only, and the key folder is gone when the job ends.

`pipeline preprocess` in the job is held back (PYTHON is a wrapper that waits for a file) until the probes are done,
so the cluster is up for as long as they take, however fast the tiny run would otherwise be."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from distributed import Client

from pipeline.preprocess import security
from tests.preprocess.compare import prepared
from tests.preprocess.test_security import assert_refused, assert_strangers_refused, http_hosts
from tests.slurm.conftest import ROOT, wait_for
from tests.slurm.test_dask_clusters import NODES, _finished_state

HOLD = """#!/bin/bash
# The job's python, except that `pipeline preprocess` waits (at most 5 minutes) for the file GO: the test probes
# the scheduler and workers before the run uses them and the job ends.
if [ "${1:-} ${2:-} ${3:-}" = "-m pipeline preprocess" ]; then
    for _ in $(seq 1500); do [ -e GO ] && break; sleep 0.2; done
fi
exec PY "$@"
"""


def test_preprocess_sbatch_admits_only_the_holders_of_the_jobs_key(slurm_cluster, tmp_path, speech_dir):
    config_path, config = prepared(tmp_path, speech_dir)
    python = tmp_path / "python-held"
    python.write_text(HOLD.replace("GO", str(tmp_path / "GO")).replace("PY", sys.executable))
    python.chmod(0o755)
    log = tmp_path / "preprocess.out"
    env = {**os.environ, "CONFIG": str(config_path), "PYTHON": str(python)}
    job = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--cpus-per-task=1", f"--output={log}",
                          str(ROOT / "slurm" / "preprocess.sbatch")], capture_output=True, text=True, env=env,
                         cwd=ROOT, check=True).stdout.strip().split(";")[0]
    try:
        scheduler_file = Path(config.run_dir) / "slurm" / f"dask-scheduler-{job}.json"
        wait_for(scheduler_file.is_file, 120, f"the scheduler file of job {job}", every=0.5)
        tls_dir = Path(config.run_dir) / "slurm" / f"dask-tls-{job}"
        _check_private(tls_dir)
        credentials = security.load(tls_dir)
        with Client(scheduler_file=str(scheduler_file), security=credentials.security(), timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            nodes = client.run(lambda: os.environ.get("SLURMD_NODENAME"))
            assert set(nodes.values()) == NODES, nodes  # a worker on each node, both in with the job's key
            assert all(address.startswith("tls://") for address in nodes), nodes
            assert client.run_on_scheduler(http_hosts) == ["127.0.0.1"]  # the dashboard
            assert list(client.run(http_hosts).values()) == [["127.0.0.1"]] * 2  # the workers' metrics
            worker = next(iter(nodes))
        assert_strangers_refused(json.loads(scheduler_file.read_text())["address"], credentials, tmp_path)
        assert_strangers_refused(worker, credentials, tmp_path)
        # What `pipeline preprocess` did before: a client of the scheduler file without credentials.
        assert_refused(TypeError, "TLS expects a `ssl_context`", scheduler_file=str(scheduler_file))
    finally:
        (tmp_path / "GO").touch()
    state = wait_for(lambda: _finished_state(job), 300, f"preprocess job {job} to finish", every=2)
    text = log.read_text()
    assert state == "COMPLETED", text[-3000:]
    assert "dask: attached to tls://" in text and "(localhost only; from another machine: ssh -L " in text, text
    assert (Path(config.run_dir) / "features" / "summary.json").is_file()
    assert not tls_dir.exists(), "the job's key folder was left behind"


def _check_private(folder: Path) -> None:
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == dict.fromkeys((security.CA_FILE, security.CERT_FILE, security.KEY_FILE), 0o600), modes
