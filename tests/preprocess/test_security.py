"""The run's TLS credentials (`preprocess.security`): private files, and a real Dask cluster that lets in only the
holders of its key. A plain client, one with freshly made credentials of its own, one that trusts the run's CA but
has no key of the run, and a bare TLS handshake without a certificate are each refused within seconds, with the
error Dask (or the ssl module) gives; the scheduler's workers refuse them the same way."""

from __future__ import annotations

import gc
import importlib.util
import os
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from distributed import Client, LocalCluster
from distributed.comm.core import FatalCommClosedError
from distributed.security import Security

from pipeline.config import load_config
from pipeline.preprocess import security
from pipeline.preprocess.cluster import dask_executor
from tests.conftest import tiny_experiment

REFUSED_WITHIN_S = 10
"""A refusal must come as an error this soon, not as a hang until some long connect timeout."""
SERVER_REFUSAL = r"(?i)unknown ca|certificate required|EOF occurred in violation of protocol|reset by peer"
"""How a server's refusal of the client's certificate reaches the client. Under TLS 1.3 the client's side of the
handshake is done before the server has checked the client: the server's alert (unknown CA, certificate required)
then comes with the client's first read, or, when the server has already closed the connection under data the
client sent, an EOF or a reset in its place. An accepted client gets none of these: Dask's handshake answers."""


def test_credentials_are_private_files_in_a_private_folder(tmp_path):
    folder = tmp_path / "slurm" / "dask-tls-7"
    credentials = security.make(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == sorted([security.CA_FILE, security.CERT_FILE,
                                                               security.KEY_FILE])  # the CA's key is not kept
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == dict.fromkeys(
        (security.CA_FILE, security.CERT_FILE, security.KEY_FILE), 0o600)
    ca = x509.load_pem_x509_certificate(credentials.ca_file.read_bytes())
    cert = x509.load_pem_x509_certificate(credentials.cert_file.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert list(folder.parent.iterdir()) == [folder]  # no staging folder left beside it

    again = security.make(folder)  # a rerun replaces them: a new CA, the old certificate is no longer signed by it
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(again.ca_file.read_bytes()))
    assert list(folder.parent.iterdir()) == [folder]


def test_a_key_that_others_may_read_or_a_missing_folder_is_refused(tmp_path):
    credentials = security.make(tmp_path / "dask-tls-1")
    assert security.load(credentials.folder) == credentials
    credentials.key_file.chmod(0o640)
    with pytest.raises(PermissionError, match="cluster-key.pem has mode 640, so other users may read the key"):
        security.load(credentials.folder)
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'dask-tls-2'} lacks ca.pem, cluster.pem, "
                                                "cluster-key.pem"):
        security.load(tmp_path / "dask-tls-2")


def test_the_credentials_folder_of_a_scheduler_file_is_beside_it(tmp_path):
    assert security.folder_for(tmp_path / "dask-scheduler-123.json") == tmp_path / "dask-tls-123"
    assert security.folder_for(tmp_path / "scheduler.json") == tmp_path / "dask-tls-scheduler"


def test_the_cli_makes_the_folder_and_prints_no_secret(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline.preprocess.security", "make", str(tmp_path / "tls")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"security: TLS credentials for Dask in {tmp_path / 'tls'}\n"
    assert "PRIVATE" not in result.stdout + result.stderr
    assert security.load(tmp_path / "tls").key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, security.Credentials]]:
    """A LocalCluster (one worker process) with files of the run's credentials, as the SLURM modes use them."""
    credentials = security.make(tmp_path_factory.mktemp("run") / "dask-tls-1")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, protocol="tls",
                      security=credentials.security(), dashboard_address="127.0.0.1:0") as local:
        yield local, credentials


def test_a_client_with_the_credentials_is_let_in(cluster):
    local, credentials = cluster
    assert local.scheduler_address.startswith("tls://")
    with Client(local.scheduler_address, security=credentials.security(), timeout=30) as client:
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
        assert all(address.startswith("tls://") for address in client.scheduler_info()["workers"])


@pytest.mark.parametrize("target", ["scheduler", "worker"])
def test_a_client_without_the_runs_key_is_refused(cluster, target, tmp_path):
    """The scheduler, and a worker too (it runs what a connected client sends it)."""
    local, credentials = cluster
    address = local.scheduler_address if target == "scheduler" else next(iter(local.scheduler_info["workers"]))
    assert_strangers_refused(address, credentials, tmp_path)
    assert_refused(FatalCommClosedError, "TLS certificate does not match", address,
                   security=Security.temporary())  # Dask's own throwaway credentials


def assert_strangers_refused(address: str, credentials: security.Credentials, tmp_path: Path) -> None:
    """A plain client, plain TCP to the TLS port, a client with freshly made credentials of its own, and one that
    trusts the run's CA (its certificate is no secret) but holds another key: each refused, promptly."""
    assert address.startswith("tls://"), address
    assert_refused(TypeError, "TLS expects a `ssl_context` argument", address)
    assert_refused(OSError, "Connection reset by peer|closed", address.replace("tls://", "tcp://"))
    other = security.make(tmp_path / "dask-tls-other")
    assert_refused(FatalCommClosedError, "TLS certificate does not match", address, security=other.security())
    pretender = Security(require_encryption=True, tls_ca_file=str(credentials.ca_file),
                         tls_client_cert=str(other.cert_file), tls_client_key=str(other.key_file))
    assert_refused(OSError, SERVER_REFUSAL, address, security=pretender)  # the server checks the client's key


def assert_refused(error: type[BaseException], pattern: str, *args, **kwargs) -> None:
    """`Client(*args, **kwargs)` raises `error` matching `pattern`, within REFUSED_WITHIN_S. The Client whose
    constructor raised is collected here and now: left to the garbage collector, its `__del__` can run in the
    thread a later Client starts its event loop in, and deadlock that start (distributed's LoopRunner)."""
    started = time.monotonic()
    with pytest.raises(error, match=pattern):
        Client(*args, timeout=REFUSED_WITHIN_S, **kwargs)
    gc.collect()
    assert time.monotonic() - started < REFUSED_WITHIN_S, f"{error.__name__} after {time.monotonic() - started} s"


def test_a_tls_handshake_without_a_certificate_is_refused_by_the_scheduler(cluster):
    local, credentials = cluster
    host, port = local.scheduler_address.removeprefix("tls://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(credentials.ca_file))
    context.check_hostname = False
    with socket.create_connection((host, int(port)), timeout=REFUSED_WITHIN_S) as raw, \
            context.wrap_socket(raw) as tls, pytest.raises(OSError, match=SERVER_REFUSAL):
        tls.sendall(b"\0" * 8)  # TLS 1.3: the server's verdict on the client certificate comes with the first read
        tls.recv(1)


def test_the_local_cluster_of_the_preprocessing_speaks_tls_with_a_localhost_dashboard(tmp_path, speech_dir,
                                                                                      capsys):
    """`preprocess.cluster: local`: Dask's in-memory credentials (nothing written), TLS, dashboard on 127.0.0.1."""
    config = load_config(tiny_experiment(tmp_path, speech_dir, preprocess={"workers": 1}))
    with dask_executor(config.preprocess) as executor:
        client = executor._client
        address = client.scheduler.address
        assert address.startswith("tls://")
        assert "\n" in client.security.tls_client_key  # in memory, not a path
        assert client.run_on_scheduler(http_hosts) == ["127.0.0.1"]  # the dashboard
        assert list(client.run(http_hosts).values()) == [["127.0.0.1"]]  # the worker's metrics
        port = client.scheduler_info()["services"]["dashboard"]
        assert executor.submit(sum, [2, 3]).result(timeout=30) == 5
        assert_refused(TypeError, "TLS expects a `ssl_context`", address)
    host = socket.gethostname()
    assert f"dask: 1 workers (TLS), dashboard at http://localhost:{port}/status on {host} (localhost only; from " \
           f"another machine: ssh -L {port}:localhost:{port} {host})" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.pem"))


def test_an_attached_run_without_the_credentials_names_the_folder(tmp_path, speech_dir):
    scheduler_file = tmp_path / "slurm" / "dask-scheduler-9.json"
    scheduler_file.parent.mkdir()
    scheduler_file.write_text('{"address": "tls://127.0.0.1:1"}')
    config = load_config(tiny_experiment(tmp_path, speech_dir, preprocess={"scheduler_file": str(scheduler_file)}))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'slurm' / 'dask-tls-9'} lacks ca.pem"), \
            dask_executor(config.preprocess):
        pass


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="the mpi extra is not installed")
def test_dask_mpi_configuration_gives_every_role_tls(tmp_path):
    """What `cluster: mpi` sets on every rank, here on a one-rank communicator: a scheduler and worker made
    without any `security` argument (as dask-mpi makes them) speak TLS, and a plain client is refused."""
    import dask
    from mpi4py import MPI

    with dask.config.set(security.mpi_config(MPI.COMM_SELF)), \
            LocalCluster(n_workers=1, processes=False, protocol="tls", dashboard_address="127.0.0.1:0") as local:
        with Client(local) as client:
            assert client.submit(sum, [1, 1]).result(timeout=30) == 2
        with dask.config.set({"distributed.comm.require-encryption": False, "distributed.comm.tls.client.key": None,
                              "distributed.comm.tls.client.cert": None}):
            assert_refused(TypeError, "TLS expects a `ssl_context`", local.scheduler_address)
    assert not os.listdir(tmp_path)


def http_hosts(dask_scheduler=None, dask_worker=None) -> list[str]:
    """The addresses a scheduler's or worker's HTTP server (dashboard, metrics) listens on."""
    server = (dask_scheduler or dask_worker).http_server
    return sorted({s.getsockname()[0] for s in server._sockets.values()})
