"""Credentials made for one run, so that only their holder can talk to the run's Dask cluster.

A Dask scheduler or worker that listens on plain TCP runs whatever a connecting client sends it, as the job's owner:
any user who can reach the node could run code in the workers. Every cluster of the preprocessing therefore speaks
TLS with mutual authentication (`Security(require_encryption=True)`: Dask sets `CERT_REQUIRED` on both sides), and
its certificate is signed by a CA made for this run alone:

- `make(folder)` writes a fresh CA certificate (`ca.pem`) and one certificate and key for every role of the cluster
  (`cluster.pem`, `cluster-key.pem`) into a folder only the owner can open (0700, files 0600), next to the scheduler
  file, where the workers on other nodes read them through the shared file system (slurm/preprocess.sbatch,
  `cluster: slurm`). The CA's own key is never written: nobody, the owner included, can sign another certificate
  that this cluster accepts, and a certificate of another run (another CA) is refused.
- `load(folder)` reads them back for a client attached through a scheduler file (`preprocess.scheduler_file`).
- `in_memory()` is Dask's `Security.temporary()` for clusters whose processes all start from this one
  (LocalCluster): nothing is left on disk, and nothing else needs to find the keys.
- `mpi_config(comm)` hands in-memory credentials from rank 0 to every rank of a dask-mpi launch.

Holding the key files is what grants access, so they are as safe as the owner's account and file system. A CLI
makes them for the batch script before it starts `dask scheduler` (it prints the folder, nothing secret):

    python -m pipeline.preprocess.security make DIR
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: the batch script's `make` needs neither Dask nor its start-up time
    from distributed.security import Security

CA_FILE = "ca.pem"
CERT_FILE = "cluster.pem"
KEY_FILE = "cluster-key.pem"
VALID_DAYS = 31
"""Longer than any SLURM time limit a run gets: the certificate must outlive its cluster. A copy of the key is of no
use once the run's cluster has stopped, as every run trusts only its own CA."""
CLOCK_SKEW = datetime.timedelta(hours=1)
"""The certificate is valid from this long before it was made, for a node whose clock is behind the one that made
it (a not-yet-valid certificate is refused like a wrong one)."""
NAME = "pipeline-dask"
"""Subject of the certificates. Dask does not check host names (`check_hostname = False`): the CA is the identity."""


@dataclass(frozen=True)
class Credentials:
    """The files of one run's credentials in `folder`."""

    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / CA_FILE

    @property
    def cert_file(self) -> Path:
        return self.folder / CERT_FILE

    @property
    def key_file(self) -> Path:
        return self.folder / KEY_FILE

    def security(self) -> Security:
        """Dask's Security for every role (scheduler, workers, client) from these files, TLS required. One
        certificate serves all roles: every process of the cluster is the owner's, and whoever holds any role's
        key could connect as a client anyway, so separate ones would add files, not protection."""
        from distributed.security import Security

        cert, key = str(self.cert_file), str(self.key_file)
        return Security(require_encryption=True, tls_ca_file=str(self.ca_file), tls_client_cert=cert,
                        tls_client_key=key, tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert,
                        tls_worker_key=key)

    def dask_options(self) -> list[str]:
        """The command-line options of `dask scheduler` and `dask worker` for these files."""
        return ["--tls-ca-file", str(self.ca_file), "--tls-cert", str(self.cert_file), "--tls-key",
                str(self.key_file)]


def generate() -> dict[str, bytes]:
    """PEM texts of a new CA certificate and a certificate and key it signed, by file name. The certificate serves
    both ends of a connection (serverAuth and clientAuth): a worker is a client of the scheduler and a server to the
    other workers. EC P-256 keys: quick to make, and every TLS 1.2+ implementation takes them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{NAME} run CA")])
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])

    def builder(subject: x509.Name, public_key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    usage = {name: False for name in ("content_commitment", "data_encipherment", "key_agreement", "encipher_only",
                                      "decipher_only")}
    ca = (builder(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False, key_cert_sign=True,
                                       crl_sign=True, **usage), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (builder(name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, **usage), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {CA_FILE: ca.public_bytes(pem), CERT_FILE: cert.public_bytes(pem),
            KEY_FILE: key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}


def make(folder: Path) -> Credentials:
    """New credentials in `folder` (replacing any there), made atomically: the files are written into a private
    temporary folder beside it, which is then renamed, so a scheduler or worker never reads half a key, and the
    key is never readable by anyone else, not even for a moment (created 0600 in a folder created 0700)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))  # mode 0700
    try:
        for name, text in generate().items():
            descriptor = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
        remove(folder)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Credentials(folder)


def load(folder: Path) -> Credentials:
    """The credentials in `folder`, as `make` wrote them. Missing files name the folder and how it is made; a key
    that others may read is refused, as ssh refuses such a key: anyone who can read it can use the cluster."""
    credentials = Credentials(Path(folder))
    missing = [p.name for p in (credentials.ca_file, credentials.cert_file, credentials.key_file) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Dask TLS credentials: {folder} lacks {', '.join(missing)}; the scheduler's "
                                "credentials are made beside its scheduler file (`python -m "
                                "pipeline.preprocess.security make DIR`, as slurm/preprocess.sbatch does) and the "
                                "scheduler and workers start with the same files")
    mode = stat.S_IMODE(credentials.key_file.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"Dask TLS credentials: {credentials.key_file} has mode {mode:o}, so other users may "
                              "read the key and use the cluster; it must be 0600 (chmod 600, or make new ones)")
    return credentials


def folder_for(scheduler_file: Path) -> Path:
    """Where the credentials of a scheduler file live: beside it, `dask-scheduler-<job>.json` ->
    `dask-tls-<job>/` (any other file name F.json -> `dask-tls-F/`)."""
    scheduler_file = Path(scheduler_file)
    return scheduler_file.parent / f"dask-tls-{scheduler_file.stem.removeprefix('dask-scheduler-')}"


def remove(folder: Path) -> None:
    """Delete a credentials folder (nothing if it is gone): once the cluster has stopped, the keys are of no use."""
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def run_credentials(folder: Path) -> Iterator[Credentials]:
    """New credentials in `folder` for as long as the block runs, then removed, also when it fails."""
    try:
        yield make(folder)
    finally:
        remove(folder)


def in_memory() -> Security:
    """Credentials for a cluster whose scheduler and workers are this process and its children (LocalCluster):
    Dask's `Security.temporary()`, a self-signed certificate and key that exist only in memory, handed to the
    worker processes through the nanny's pipe. Nothing else has to find them, so no file is written that could be
    left behind or read; a process of another user on the same machine has no way to get them."""
    from distributed.security import Security

    return Security.temporary()


def mpi_config(comm) -> dict[str, object]:
    """Dask configuration for TLS in a dask-mpi launch, the same on every rank: rank 0 makes the credentials in
    memory and broadcasts them over MPI, so no file is needed on a shared file system. dask-mpi's Scheduler takes no
    `security` argument, so Security() reads these from Dask's configuration on every rank (scheduler, workers and
    the client, including dask-mpi's own `send_close_signal`). Collective: every rank must call it."""
    pems = comm.bcast({name: text.decode() for name, text in generate().items()} if comm.Get_rank() == 0 else None,
                      root=0)
    cert, key = pems[CERT_FILE], pems[KEY_FILE]
    config: dict[str, object] = {"distributed.comm.require-encryption": True,
                                 "distributed.comm.tls.ca-file": pems[CA_FILE]}
    for role in ("scheduler", "worker", "client"):
        config[f"distributed.comm.tls.{role}.cert"] = cert
        config[f"distributed.comm.tls.{role}.key"] = key
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.preprocess.security",
                                     description="Make the TLS credentials of one run's Dask cluster.")
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make", help="write a new CA, certificate and key into DIR (0700, files 0600)")
    make_parser.add_argument("folder", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    credentials = make(args.folder)
    print(f"security: TLS credentials for Dask in {credentials.folder}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
