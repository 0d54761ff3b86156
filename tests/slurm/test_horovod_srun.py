"""train.backend horovod under `pipeline submit` on the real single-host SLURM cluster: srun starts the ranks (no
horovodrun, no MPI), the training job's launcher runs Horovod's gloo rendezvous, and a 4-rank job spans both
virtual nodes. Skipped where Horovod is not built (`./setup.sh --with-horovod`; CI builds it)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import tiny_experiment
from tests.slurm.conftest import wait_for
from tests.slurm.test_local_cluster import SLURM, TRAIN, finished, submit

pytestmark = pytest.mark.skipif(importlib.util.find_spec("horovod") is None,
                                reason="horovod is not built here (./setup.sh --with-horovod builds it)")


def test_horovod_ranks_under_srun_on_one_and_two_nodes(slurm_cluster, tmp_path, speech_dir):
    config = tiny_experiment(tmp_path, speech_dir, train={**TRAIN, "world_sizes": [2, 4], "backend": "horovod"},
                             slurm=SLURM)
    ids = submit(config)
    assert list(ids) == ["preprocess", "ws2-cpu-bs8-horovod", "ws4-cpu-bs8-horovod", "report"]
    run = tmp_path / "run"
    rows = wait_for(lambda: finished(run), 480, "every job to finish", every=2)
    assert [r["state"] for r in rows] == ["COMPLETED"] * 4, rows
    for name, world, nodes in [("ws2-cpu-bs8-horovod", 2, 1), ("ws4-cpu-bs8-horovod", 4, 2)]:
        metrics = json.loads((run / "configs" / name / "metrics.json").read_text())
        assert (metrics["backend"], metrics["world_size"], metrics["nodes"], metrics["launcher"]) == \
            ("horovod", world, nodes, "srun")
        assert metrics["rank_max_param_difference"] == 0.0
        assert metrics["mean_allreduce_s"] > 0
    assert "| ws4-cpu-bs8-horovod |" in (run / "report.md").read_text()
