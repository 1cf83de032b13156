"""Run locks: one process at a time owns a run directory (training) or an evaluation output (one task).

A lock is a file, `<dir>/.lock` (training) or `<task dir>.lock` (evaluation), created with O_CREAT|O_EXCL and
holding JSON: host, pid, the process's start time, a SLURM job id when there is one, and when the lock was taken.
While the owner works, a daemon thread rewrites the file's mtime every `HEARTBEAT_S` seconds (the heartbeat).

Why a file and a heartbeat rather than `flock`: the runs directory of a SLURM cluster is a shared filesystem
(NFS, Lustre), where `flock` is either not shared between nodes or not released when a node dies. A file that
appears atomically (O_EXCL) and a heartbeat that anyone can read work on both, and locally.

A lock is *dead* -- and is taken over, with a log line -- when
- its owner ran on this host and that process is gone (pid absent, or reused by a process that started later), or
- its heartbeat is older than `STALE_AFTER_S` (an owner on another node that died, or a SLURM job that ended).
The take-over renames the dead lock aside (only one of several contenders' renames succeeds), then creates its own.

A process that finds a live lock waits for it (printing who owns it) and then goes on: the caller re-checks what
the owner left (a finished run is reused, an unfinished one resumed from its verified checkpoint). With
`wait=False` it raises `RunLockedError` naming the owner instead.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from harness.errors import InputError

HEARTBEAT_S = float(os.environ.get("VLM_LOCK_HEARTBEAT_S", "15"))
STALE_AFTER_S = float(os.environ.get("VLM_LOCK_STALE_AFTER_S", "120"))  # 8 missed heartbeats
POLL_S = 1.0


class RunLockedError(InputError):
    """The run or evaluation is owned by a live process, and the caller asked not to wait."""


def _process_start(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux /proc), or None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces; fields after its closing parenthesis are fixed.
            return float(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _owner_record() -> dict:
    pid = os.getpid()
    record = {"host": socket.gethostname(), "pid": pid, "process_start": _process_start(pid), "token": uuid.uuid4().hex,
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if os.environ.get("SLURM_JOB_ID"):
        record["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return record


def describe_owner(owner: dict) -> str:
    job = f", SLURM job {owner['slurm_job']}" if owner.get("slurm_job") else ""
    return f"{owner.get('host', '?')}:{owner.get('pid', '?')}{job} since {owner.get('since', '?')}"


def _read(path: Path) -> tuple[dict | None, float | None]:
    """The lock's owner record and heartbeat time (mtime), or (None, None) when there is no lock. A lock being
    written this very moment reads as an empty record: only its heartbeat can declare it dead."""
    try:
        heartbeat = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    try:
        return json.loads(text or "{}"), heartbeat
    except ValueError:
        return {}, heartbeat


def _pid_state(pid: int) -> str | None:
    """"gone", "zombie" or None (alive, or unknown off Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return "zombie" if f.read().rsplit(")", 1)[1].split()[0] == "Z" else None
    except FileNotFoundError:
        return "gone"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass
    return None


def dead_reason(owner: dict, heartbeat: float, now: float | None = None) -> str | None:
    """Why the lock's owner is dead, or None while it may be alive."""
    now = time.time() if now is None else now
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int):
        state = _pid_state(pid)
        if state is not None:
            return f"process {pid} is {'gone' if state == 'gone' else 'a zombie (it has exited)'}"
        started = _process_start(pid)
        if owner.get("process_start") is not None and started is not None and started != owner["process_start"]:
            return f"process {pid} is gone (its pid now belongs to a later process)"
    if now - heartbeat > STALE_AFTER_S:
        return f"no heartbeat for {now - heartbeat:.0f} s (limit {STALE_AFTER_S:.0f} s)"
    return None


class RunLock:
    """An exclusive lock on `path` (the lock file). Use as `with RunLock(...).held(): ...` or acquire/release."""

    def __init__(self, path: str | Path, what: str, log: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.what = what  # "run runs/tokenizer-ab12", "evaluation runs/.../eval/mini_vqa": for messages
        self.log = log or (lambda message: print(message, flush=True))
        self.record: dict | None = None
        self.took_over: dict | None = None  # the dead owner's record, when this lock was taken over
        self.waited_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _try_create(self) -> bool:
        record = _owner_record()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(record))
            f.flush()
            os.fsync(f.fileno())
        self.record = record
        return True

    def _take_over(self, owner: dict, reason: str) -> None:
        aside = self.path.with_name(f"{self.path.name}.dead-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)  # only one contender's rename finds the file
        except FileNotFoundError:
            return
        # Between our read and the rename another contender may have taken the lock over and created a live one:
        # that is the file we moved if its token differs from the dead owner's. Put it back and keep waiting.
        moved, _ = _read(aside)
        if moved is not None and moved.get("token") != owner.get("token"):
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        self.took_over = owner
        self.log(f"[lock] {self.what}: took over the lock of {describe_owner(owner)} ({reason})")

    def acquire(self, wait: bool = True) -> "RunLock":
        start, last_said = time.monotonic(), -1e9
        while not self._try_create():
            owner, heartbeat = _read(self.path)
            if owner is None:  # released between our attempt and the read
                continue
            reason = dead_reason(owner, heartbeat)
            if reason is not None:
                self._take_over(owner, reason)
                continue
            if not wait:
                raise RunLockedError(f"{self.what} is owned by {describe_owner(owner)} (lock {self.path}); "
                                     "wait for it, or remove the lock file if that process is gone")
            if time.monotonic() - last_said >= 60:
                self.log(f"[lock] {self.what}: waiting for {describe_owner(owner)} (lock {self.path})")
                last_said = time.monotonic()
            time.sleep(POLL_S)
        self.waited_s = time.monotonic() - start
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        owner, _ = _read(self.path)
        if owner is not None and self.record is not None and owner.get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)
        self.record = None

    @contextmanager
    def held(self, wait: bool = True) -> Iterator["RunLock"]:
        self.acquire(wait)
        try:
            yield self
        finally:
            self.release()


def run_lock(run_dir: str | Path, log: Callable[[str], None] | None = None) -> RunLock:
    """The lock of a training run directory."""
    return RunLock(Path(run_dir) / ".lock", f"run {run_dir}", log)


def eval_lock(task_dir: str | Path, log: Callable[[str], None] | None = None) -> RunLock:
    """The lock of one task's evaluation output (beside it, so that deleting the output keeps the lock)."""
    task_dir = Path(task_dir)
    return RunLock(task_dir.with_name(task_dir.name + ".lock"), f"evaluation {task_dir}", log)
