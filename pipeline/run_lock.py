"""One writer per run: a lock file per stage and folder, so two processes never write the same outputs at once.

Two `pipeline train` of one configuration (one by hand while the submitted job runs, or a requeued job whose
previous start is still writing its last checkpoint) would interleave checkpoints and outputs; two preprocessings of
one run folder would race on its shards and index. The process that owns the folder for the stage (`pipeline
preprocess`, and per configuration the `pipeline train` process that starts torchrun or srun) holds
`<folder>/<stage>.lock` while it writes:

    with RunLock(folder / "train.lock", "train", "ws2-cpu-bs32"):
        ...

The lock is a file created with O_CREAT|O_EXCL (atomic on local disks, NFS v3+ and Lustre, where flock may not
work), holding JSON that says who holds it: host, pid and its start time, boot id, SLURM job id, restart count and
step, stage, configuration, since when. A second writer is refused with that holder and what to do. A lock whose
holder is gone is taken over (`judge`): on the same host, the pid is gone (or is another process now: its start
time differs, or the host rebooted); on another host, SLURM says its job is no longer running, or it is the previous
start of this very job. What cannot be checked (another host, no SLURM to ask) is refused, saying how to remove it.

Takeover is race-free: the taker first creates, with O_EXCL, a marker named after the stale lock's content
(`<lock>.takeover-<token>`); of all processes that found the same stale lock only the one that made the marker
replaces it, and its O_EXCL create of the new lock still loses to a process that found no lock at all.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Literal

from pipeline.io import disk_full

PREVIOUS_START_WAIT_S = 60.0
"""How long a requeued job waits for its previous start, still alive on this host, to finish its last write."""
TAKEOVER_TIMEOUT_S = 30.0
"""A takeover marker older than this was left by a taker that died mid-takeover (which takes milliseconds)."""
UNREADABLE_GRACE_S = 10.0
"""A lock that stays unreadable longer than this was left half-created (its creator died between create and write)."""
ACQUIRE_TIMEOUT_S = 120.0
"""Give up on a lock that keeps changing hands for this long."""
POLL_S = 0.05
SLURM_LIVE = {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING",
              "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}
"""squeue states in which a job may still have processes that write: anything else (PENDING, the end states, a job
SLURM no longer knows) means its processes are gone."""


_TEXT, _INT, _MAYBE_TEXT, _MAYBE_INT = (str,), (int,), (str, type(None)), (int, type(None))
FIELD_TYPES = {"host": _TEXT, "pid": _INT, "stage": _TEXT, "configuration": _TEXT, "since": _TEXT,
               "pid_start": _MAYBE_INT, "boot_id": _MAYBE_TEXT, "slurm_job_id": _MAYBE_TEXT,
               "slurm_restart_count": _INT, "slurm_step_id": _MAYBE_TEXT, "nonce": _TEXT}
"""What each field of a lock file must be: a lock file is input from a shared folder like any other."""


class RunLockHeld(RuntimeError):
    """Another process holds the lock (or may: it cannot be checked from here)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says. `token` is not written: the reader derives it from the file (inode and
    content hash), so two readers agree which lock they saw whatever the file claims."""

    host: str
    pid: int
    stage: str = ""
    configuration: str = ""
    since: str = ""
    pid_start: int | None = None
    """Start time of the pid, in clock ticks after boot (/proc/<pid>/stat): tells a reused pid from the holder."""
    boot_id: str | None = None
    slurm_job_id: str | None = None
    slurm_restart_count: int = 0
    slurm_step_id: str | None = None
    nonce: str = ""
    """Makes each lock's content unique, so a new lock of the same process never looks like an old one."""
    token: str = field(default="", compare=False)
    unreadable: bool = False

    @classmethod
    def of_this_process(cls, stage: str, configuration: str) -> Holder:
        job = os.environ.get("SLURM_JOB_ID")
        return cls(host=socket.gethostname(), pid=os.getpid(), stage=stage, configuration=configuration,
                   since=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                   pid_start=process_start(os.getpid()), boot_id=boot_id(), slurm_job_id=job,
                   slurm_restart_count=int(os.environ.get("SLURM_RESTART_COUNT") or 0) if job else 0,
                   slurm_step_id=os.environ.get("SLURM_STEP_ID") if job else None, nonce=uuid.uuid4().hex)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k not in ("token", "unreadable") and v is not None}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, token: str) -> Holder:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in fields(cls)} - {"token", "unreadable"}
        holder = cls(**{k: v for k, v in data.items() if k in known}, token=token)
        holder.check()
        return holder

    def check(self) -> None:
        """Refuse (ValueError) a lock whose fields have the wrong types: it is read as unreadable then."""
        wrong = [name for name, allowed in FIELD_TYPES.items() if type(getattr(self, name)) not in allowed]
        if wrong or self.pid <= 0:
            raise ValueError(f"lock fields of the wrong type: {wrong or ['pid']}")

    def describe(self) -> str:
        if self.unreadable:
            return f"an unreadable lock file (written {self.since})"
        job = f", SLURM job {self.slurm_job_id} (start {self.slurm_restart_count + 1})" if self.slurm_job_id else ""
        return f"host {self.host}, pid {self.pid}{job}, since {self.since}"


@dataclass(frozen=True)
class Verdict:
    """Whether a lock's holder is gone (take it over), alive (refuse), or finishing (wait), or cannot be checked."""

    state: Literal["gone", "alive", "wait", "unknown"]
    why: str


class RunLock:
    """The lock of one stage of one folder: `with RunLock(path, stage, configuration):` holds it while the block
    runs, and releases it on the way out, whatever ends the block (an exception, a signal the code turns into
    one, KeyboardInterrupt). A process killed outright leaves its lock, which the next writer recognises as stale."""

    def __init__(self, path: Path, stage: str, configuration: str) -> None:
        self.path, self.stage, self.configuration = Path(path), stage, configuration
        self.token: str | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        """Create the lock, or take over a stale one; raise `RunLockHeld` naming the holder otherwise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = Holder.of_this_process(self.stage, self.configuration)
        started = time.monotonic()
        while not self._create(me):
            found = read_holder(self.path)
            if found is None:
                continue  # released between our create and our read: create again
            verdict = judge(found, me)
            if verdict.state == "gone" and self._take_over(found, me, verdict.why):
                return
            waited = time.monotonic() - started
            if verdict.state in ("alive", "unknown") or (verdict.state == "wait" and waited > PREVIOUS_START_WAIT_S):
                raise RunLockHeld(refusal(self.path, found, verdict))
            if waited > ACQUIRE_TIMEOUT_S:
                raise RunLockHeld(f"{self.path}: not taken in {ACQUIRE_TIMEOUT_S:.0f} s, it kept changing hands "
                                  f"(last {found.describe()}); run the same command again")
            time.sleep(POLL_S)

    def _create(self, me: Holder) -> bool:
        """Whether this process created the lock (O_EXCL); its token is then set."""
        try:
            self.token = create(self.path, me)
        except FileExistsError:
            return False
        return True

    def _take_over(self, stale: Holder, me: Holder, why: str) -> bool:
        """Replace the stale lock `stale` with this process's; False when another process got there first."""
        marker = self.path.with_name(f"{self.path.name}.takeover-{stale.token}")
        try:
            create(marker, me)
        except FileExistsError:
            _clear_abandoned(marker)
            return False
        try:
            current = read_holder(self.path)
            if current is None or current.token != stale.token:
                return False  # released, or taken over by a process that read it before us
            self.path.unlink(missing_ok=True)
            if not self._create(me):
                return False  # a process that found no lock at all created it first
        finally:
            marker.unlink(missing_ok=True)
        print(f"{self.path}: took over the stale lock of {stale.describe()}: {why}", file=sys.stderr, flush=True)
        return True

    def release(self) -> None:
        """Remove the lock if it is still this process's (it is, unless another process judged this one gone)."""
        if self.token is None:
            return
        current = read_holder(self.path)
        if current is not None and current.token == self.token:
            self.path.unlink(missing_ok=True)
        elif current is not None:
            print(f"{self.path}: not removed: it is now held by {current.describe()}", file=sys.stderr, flush=True)
        self.token = None


def lock_path(folder: Path, stage: str) -> Path:
    """Where the lock of `stage` on `folder` lives: a stage's run folder or a configuration's folder."""
    return Path(folder) / f"{stage}.lock"


def create(path: Path, holder: Holder) -> str:
    """Create `path` holding `holder` with O_EXCL (FileExistsError if it exists); its token (`read_holder`)."""
    text = holder.to_json().encode()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, text)
        os.fsync(fd)
        inode = os.fstat(fd).st_ino
    except OSError as err:
        os.close(fd)
        path.unlink(missing_ok=True)
        full = disk_full(path, err)
        if full is None:
            raise
        raise full from err
    os.close(fd)
    return _token(inode, text)


def _token(inode: int, content: bytes) -> str:
    return f"{inode}-{hashlib.sha256(content).hexdigest()[:16]}"


def read_holder(path: Path) -> Holder | None:
    """The holder of the lock at `path`, or None when there is none. A lock just created but not yet written is
    read again for up to a second; one that stays unreadable comes back as an `unreadable` holder."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            with open(path, "rb") as lock:
                stat, content = os.fstat(lock.fileno()), lock.read(65536)
        except FileNotFoundError:
            return None
        token = _token(stat.st_ino, content)
        try:
            return Holder.from_json(content.decode(), token)
        except (ValueError, TypeError, UnicodeDecodeError):
            if time.monotonic() > deadline:
                written = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.UTC)
                return Holder(host="", pid=0, since=written.isoformat(timespec="seconds"), token=token,
                              unreadable=True)
            time.sleep(POLL_S)


def judge(holder: Holder, me: Holder) -> Verdict:
    """Whether the process `holder` names may still write, as far as `me` can tell."""
    if holder.unreadable:
        age = time.time() - datetime.datetime.fromisoformat(holder.since).timestamp()
        if age > UNREADABLE_GRACE_S:
            return Verdict("gone", f"the lock file has been unreadable for {age:.0f} s (its creator died)")
        return Verdict("wait", "the lock file is being written")
    if holder.host == me.host:
        return _judge_here(holder, me)
    return _judge_elsewhere(holder, me)


def _previous_start(holder: Holder, me: Holder) -> bool:
    """Whether `holder` is an earlier start of the SLURM job `me` runs in (requeued since)."""
    return bool(holder.slurm_job_id) and holder.slurm_job_id == me.slurm_job_id \
        and holder.slurm_restart_count < me.slurm_restart_count


def _judge_here(holder: Holder, me: Holder) -> Verdict:
    if holder.boot_id and me.boot_id and holder.boot_id != me.boot_id:
        return Verdict("gone", f"{holder.host} has rebooted since")
    gone = process_gone(holder.pid, holder.pid_start)
    if gone:
        return Verdict("gone", gone)
    if _previous_start(holder, me):
        return Verdict("wait", f"the previous start of SLURM job {holder.slurm_job_id} (pid {holder.pid}) is still "
                       "running here")
    return Verdict("alive", f"pid {holder.pid} is running on this host")


def _judge_elsewhere(holder: Holder, me: Holder) -> Verdict:
    if _previous_start(holder, me):
        # SLURM starts a requeued job again only after every process of its previous start has ended.
        return Verdict("gone", f"it is the previous start of this SLURM job {me.slurm_job_id}, which SLURM ended "
                       "before starting it again")
    if not holder.slurm_job_id:
        return Verdict("unknown", f"a process on {holder.host} cannot be checked from {me.host}")
    state, problem = slurm_job_state(holder.slurm_job_id)
    if state is None:
        return Verdict("unknown", f"SLURM cannot be asked about job {holder.slurm_job_id}: {problem}")
    if state in SLURM_LIVE:
        return Verdict("alive", f"SLURM job {holder.slurm_job_id} is {state}")
    return Verdict("gone", f"SLURM job {holder.slurm_job_id} is {state}")


def refusal(path: Path, holder: Holder, verdict: Verdict) -> str:
    """The error of a refused writer: who holds the lock, why it counts as held, and what to do."""
    what = f"{holder.stage} of {holder.configuration}" if holder.configuration else holder.stage or "this stage"
    head = f"{path}: {what} is locked by {holder.describe()}"
    if verdict.state == "unknown" or holder.unreadable:
        check = f"`squeue -j {holder.slurm_job_id}`, " if holder.slurm_job_id else ""
        return (f"{head}, and whether it still runs cannot be told from here ({verdict.why}). If it does not "
                f"({check}`ssh {holder.host} ps -p {holder.pid}`), remove {path} and run the same command again.")
    stop = f"scancel {holder.slurm_job_id}" if holder.slurm_job_id else f"kill {holder.pid} on {holder.host}"
    return (f"{head} ({verdict.why}). Two writers would mix their checkpoints and outputs, so this one stops: wait "
            f"for that one to finish, or stop it ({stop}), then run the same command again.")


def _clear_abandoned(marker: Path) -> None:
    """Remove a takeover marker whose taker died mid-takeover, so the stale lock can be taken over again."""
    try:
        if time.time() - marker.stat().st_mtime > TAKEOVER_TIMEOUT_S:
            marker.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def process_gone(pid: int, start: int | None) -> str | None:
    """Why process `pid` (started `start` clock ticks after boot, when known) is gone; None while it runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"pid {pid} has exited"
    except PermissionError:
        pass  # it exists, as another user's process
    stat = _proc_stat(pid)
    if stat is None:
        return None  # no /proc here: os.kill's answer is all there is
    state, started = stat
    if state in ("Z", "X"):
        return f"pid {pid} has exited"
    if start is not None and started != start:
        return f"pid {pid} has exited (the number now belongs to another process)"
    return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks after boot) of `pid` from /proc/<pid>/stat, or None without it."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()  # the command name, in parentheses, may hold spaces
    return rest[0], int(rest[19])


def process_start(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def slurm_job_state(job_id: str, timeout_s: float = 30.0) -> tuple[str | None, str | None]:
    """(SLURM's state of `job_id`, None), `NOT_FOUND` for a job SLURM no longer knows; or (None, why not) where
    SLURM cannot be asked (no squeue, no controller)."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None, "squeue is not on PATH here"
    try:
        result = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"squeue failed: {err}"
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return "NOT_FOUND", None
        return None, f"squeue -j {job_id} failed: {result.stderr.strip() or f'exit {result.returncode}'}"
    states = result.stdout.split()
    live = [s for s in states if s in SLURM_LIVE]
    return (live or states or ["NOT_FOUND"])[0], None
