"""Run locks (harness/runlock.py): one owner per run directory or evaluation output, waiting, --no-wait, and the
take-over of a dead owner's lock; two table scripts started together train every stage once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.runlock import RunLock, RunLockedError, dead_reason, run_lock

ROOT = Path(__file__).resolve().parent.parent


def _write_lock(path: Path, **owner) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": "then", "token": "t", **owner}))


def test_a_held_lock_refuses_a_second_owner_naming_the_first(tmp_path):
    lock = run_lock(tmp_path / "run").acquire()
    owner = json.loads((tmp_path / "run" / ".lock").read_text())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(RunLockedError, match=rf"{socket.gethostname()}:{os.getpid()}"):
        run_lock(tmp_path / "run").acquire(wait=False)
    lock.release()
    assert not (tmp_path / "run" / ".lock").exists()
    run_lock(tmp_path / "run").acquire(wait=False).release()  # free again


def test_a_waiting_process_gets_the_lock_when_the_owner_releases_it(tmp_path):
    first = run_lock(tmp_path).acquire()
    threading.Timer(1.5, first.release).start()
    second = run_lock(tmp_path, log=lambda _m: None).acquire()
    assert second.waited_s >= 1.0 and second.took_over is None
    second.release()


def test_owners_never_overlap_under_contention(tmp_path):
    inside, overlaps = [0], []

    def work():
        for _ in range(5):
            with RunLock(tmp_path / "x.lock", "x", log=lambda _m: None).held():
                inside[0] += 1
                overlaps.append(inside[0])
                time.sleep(0.01)
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [1] * 20


def test_a_dead_owners_lock_is_taken_over_and_logged(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)  # exited (and reaped): no such process now
    _write_lock(tmp_path / ".lock", pid=dead_pid)
    said = []
    lock = run_lock(tmp_path, log=said.append).acquire(wait=False)
    assert lock.took_over["pid"] == dead_pid
    assert said and f"took over the lock of {socket.gethostname()}:{dead_pid}" in said[0] and "is gone" in said[0]
    lock.release()


def test_a_lock_from_another_host_is_dead_only_when_its_heartbeat_stops(tmp_path):
    _write_lock(tmp_path / ".lock", host="node-elsewhere", pid=1)
    with pytest.raises(RunLockedError, match="node-elsewhere:1"):
        run_lock(tmp_path).acquire(wait=False)
    old = time.time() - 3600
    os.utime(tmp_path / ".lock", (old, old))
    assert "no heartbeat for" in dead_reason({"host": "node-elsewhere", "pid": 1}, old)
    lock = run_lock(tmp_path, log=lambda _m: None).acquire(wait=False)
    assert lock.took_over["host"] == "node-elsewhere"
    lock.release()


def test_the_owner_keeps_its_heartbeat(tmp_path, monkeypatch):
    import harness.runlock as runlock

    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.2)
    lock = run_lock(tmp_path).acquire()
    old = time.time() - 3600
    os.utime(tmp_path / ".lock", (old, old))
    time.sleep(0.6)
    assert time.time() - (tmp_path / ".lock").stat().st_mtime < 5  # the heartbeat thread touched it again
    lock.release()


# ---------------------------------------------------------------------------------------------
# Two table scripts at once (real `python -m train` processes; tests/lock_table_script.py declares a tiny table).


def _table(runs: Path, results: Path) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "tests" / "lock_table_script.py"), "--runs-dir", str(runs), "--results-dir", str(results),
               "--data-root", str(runs.parent)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _owner_of_a_run_lock(runs: Path, first: subprocess.Popen, deadline_s: float = 300) -> int:
    """The pid of the `python -m train` process holding a run lock under `runs`, as soon as one appears."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and first.poll() is None:
        for lock in runs.glob("*-*/.lock"):
            try:
                return int(json.loads(lock.read_text())["pid"])
            except (OSError, ValueError, KeyError):  # released meanwhile, or not written yet
                pass
        time.sleep(0.005)
    raise AssertionError(f"the first table script held no run lock (exit {first.poll()}): {first.communicate()[0]}")


def test_two_table_scripts_at_once_train_every_stage_once_and_write_what_one_alone_writes(tmp_path):
    """The overlap is made, not left to timing: the first script's trainer is paused (SIGSTOP) while it holds a run
    lock, the second script is started, and the trainer resumes only once the second has said it waits for that lock.
    Then both go on at their own pace (the second may wait again, or reuse what the first finished)."""
    import signal

    from train.stages import trainings

    start = time.perf_counter()
    shared = tmp_path / "shared" / "runs"
    first = _table(shared, tmp_path / "results0")
    owner = _owner_of_a_run_lock(shared, first)
    os.kill(owner, signal.SIGSTOP)
    try:
        second = _table(shared, tmp_path / "results1")
        said: list[str] = []
        reader = threading.Thread(target=lambda: said.extend(second.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 300
        while not any("waiting for" in line for line in said) and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("waiting for" in line for line in said), "".join(said)  # the second waits for the paused owner
    finally:
        os.kill(owner, signal.SIGCONT)
    outputs = [first.communicate(timeout=600)[0]]
    second.wait(timeout=600)
    reader.join(timeout=60)
    outputs.append("".join(said))
    assert [first.returncode, second.returncode] == [0, 0], outputs
    together = time.perf_counter() - start
    alone = _table(tmp_path / "alone" / "runs", tmp_path / "results_alone")
    out = alone.communicate(timeout=600)[0]
    assert alone.returncode == 0, out

    runs = sorted(shared.glob("*-*"))
    assert [r.name.split("-")[0] for r in runs] == ["tokenizer", "unified"]
    for run in runs:
        assert trainings(run) == 1, (run, (run / "attempts.jsonl").read_text())
        steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) == list(range(1, steps[-1] + 1))  # one writer of the metrics
    written = [(tmp_path / f"results{i}" / "lavit_table1.csv").read_bytes() for i in range(2)]
    assert written[0] == written[1] == (tmp_path / "results_alone" / "lavit_table1.csv").read_bytes()
    print(f"two table scripts together: {together:.1f} s")
