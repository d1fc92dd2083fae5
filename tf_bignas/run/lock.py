"""The workdir lock (``run.lock``): one writer at a time, naming its holder.

Every stage that writes into a workdir (training, search, export, the
benchmarks, the latency table) holds the lock while it writes. The lock file
names its holder (host, pid, start time, command) and is removed when the
holder ends, however it ends short of SIGKILL. On a local file system it is
held with ``flock`` (exclusive, non-blocking), which the kernel releases when
the process dies: a lock file left by a killed process on the same host is
recognised as stale (its process is gone) and taken over, saying so. A lock
naming another host is never taken over automatically, since its process
cannot be checked from here: the error says to delete the file once that
process is known to be gone.

On remote storage (``gs://...``) there is no atomic create-if-absent and no
``flock``: the lock is written if none exists and read back, which catches a
second writer started after the first one's lock is visible, but two started
within the same second or so can both pass. There, the user must ensure that
one job at a time writes to a workdir; a stale lock left by a killed job on
another host must be deleted by hand (``gsutil rm gs://.../run.lock``).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import tensorflow as tf

from tf_bignas.run import workdir as wd
from tf_bignas.run.validation import is_remote


class WorkdirBusyError(wd.WorkdirError):
    """Another run holds the workdir's lock."""


# ---- the lock ---------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _describe(holder: Mapping[str, Any]) -> str:
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')!r} since {holder.get('started')}"
        + (f" ({holder['command']})" if holder.get("command") else "")
    )


class WorkdirLock:
    """One run at a time per workdir: `run.lock`, naming its holder.

    Use as a context manager; see the module docstring for local and remote
    behaviour.

    Args:
        workdir: The workdir (created if missing when the lock is taken).
        log: Where a note about a stale lock goes.
        reentrant: A lock this process already holds is taken again as a
            no-op (a stage run inside another, as the chain does) instead of
            refused.
    """

    def __init__(
        self, workdir: str, log: Callable[[str], None] = print, reentrant: bool = False
    ) -> None:
        self.workdir = workdir
        self.reentrant = reentrant
        self.path = os.path.join(workdir, wd.LOCK_FILE)
        self.log = log
        self._fd: int | None = None
        self._held = False
        self._created_dir = False
        self._nested = False
        self._token = uuid.uuid4().hex

    def _holder(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "token": self._token,
        }

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            WorkdirBusyError: If another live run holds it (or a run on another
                host whose state cannot be checked from here).
        """
        if is_remote(self.workdir):
            self._acquire_remote()
        else:
            self._acquire_local()
        self._held = True

    def _busy(self, holder: Mapping[str, Any], why: str) -> WorkdirBusyError:
        return WorkdirBusyError(
            f"workdir {self.workdir!r} is in use by another run: {_describe(holder)}{why}. "
            f"Wait for it to end, or stop it; if it is gone, delete {self.path}"
        )

    def _read(self) -> dict[str, Any]:
        try:
            with tf.io.gfile.GFile(self.path, "r") as f:
                value = json.loads(f.read() or "{}")
            return value if isinstance(value, dict) else {}
        except (OSError, ValueError, tf.errors.OpError):
            return {}

    def _acquire_local(self) -> None:
        if not os.path.isdir(self.workdir):
            try:
                os.makedirs(self.workdir)
            except OSError as e:
                raise wd.WorkdirError(
                    f"cannot create workdir {self.workdir!r}: {e.strerror or e}"
                ) from e
            self._created_dir = True
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise wd.WorkdirError(
                    f"workdir {self.workdir!r} is not writable: cannot create {self.path} "
                    f"({e.strerror or e})"
                ) from e
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                holder = self._read()
                if self.reentrant and _is_this_process(
                    holder
                ):  # a stage inside a stage (the chain): nested
                    self._nested = True
                    return
                raise self._busy(holder, " (it holds the lock file)") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # The previous holder removed the file as we opened it: retry.
                os.close(fd)
                continue
            with os.fdopen(os.dup(fd), "r", encoding="utf-8") as f:
                text = f.read()
            previous: dict[str, Any] = {}
            with contextlib.suppress(ValueError):
                previous = json.loads(text) if text.strip() else {}
            if previous:
                host = socket.gethostname()
                if previous.get("host") not in (None, host):
                    os.close(fd)
                    raise self._busy(
                        previous,
                        f"; that host's process cannot be checked from {host!r}",
                    )
                state = (
                    "is gone"
                    if not _pid_alive(int(previous.get("pid", -1)))
                    else "no longer holds it (the pid now belongs to another process)"
                )
                self.log(
                    f"workdir lock {self.path} was stale ({_describe(previous)}; that process "
                    f"{state}): taking it over"
                )
            data = json.dumps(self._holder(), indent=2).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
            self._fd = fd
            return
        raise WorkdirBusyError(f"could not take the lock {self.path}: it keeps changing")

    def _acquire_remote(self) -> None:
        # No atomic create-if-absent on object stores: write if absent, read back.
        tf.io.gfile.makedirs(self.workdir)
        if tf.io.gfile.exists(self.path):
            previous = self._read()
            if self.reentrant and _is_this_process(previous):
                self._nested = True
                return
            same_host = previous.get("host") == socket.gethostname()
            if not same_host or _pid_alive(int(previous.get("pid", -1))):
                raise self._busy(
                    previous,
                    "" if same_host else "; on remote storage a lock cannot be checked",
                )
            self.log(
                f"workdir lock {self.path} was stale ({_describe(previous)}; that process is "
                "gone): taking it over"
            )
        with tf.io.gfile.GFile(self.path, "w") as f:
            f.write(json.dumps(self._holder(), indent=2))
        if self._read().get("token") != self._token:
            raise self._busy(self._read(), " (it wrote the lock at the same time)")

    def release(self) -> None:
        """Removes the lock file (if still ours) and, if the lock created the
        workdir and nothing else was written, the empty workdir too."""
        if not self._held:
            return
        self._held = False
        if self._nested:  # the outer holder releases it
            self._nested = False
            return
        if is_remote(self.workdir):
            if self._read().get("token") == self._token:
                with contextlib.suppress(tf.errors.OpError):
                    tf.io.gfile.remove(self.path)
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding flock: no one can take it in between
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._created_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self.workdir)  # only if empty


def _is_this_process(holder: Mapping[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()


def enclosing_workdir(path: str) -> str:
    """The workdir that holds `path` (the nearest folder up with a run record), else `path`.

    Args:
        path: A workdir, or a folder or file inside one (an export folder, a
            latency table), or a standalone folder.

    Returns:
        The workdir to lock (a standalone folder locks itself).
    """
    folder = (
        os.path.dirname(path) if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path) else path
    )
    here = folder if is_remote(folder) else os.path.abspath(folder)
    probe = here
    while True:
        if any(tf.io.gfile.exists(os.path.join(probe, n)) for n in (wd.RUN_FILE, wd.CONFIG_FILE)):
            return probe
        parent = os.path.dirname(probe)
        if not parent or parent == probe:
            return here
        probe = parent


@contextlib.contextmanager
def locked_for(path: str, log: Callable[[str], None] = print) -> Iterator[WorkdirLock]:
    """`with locked_for(export_dir): ...` holds the lock of the workdir holding `path`.

    The stages after training (search, export, the benchmarks, the latency
    table) write into a workdir through this; a process already holding that
    lock (the chain) takes it again as a no-op.
    """
    lock = WorkdirLock(enclosing_workdir(path), log, reentrant=True)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def locked(workdir: str, log: Callable[[str], None] = print) -> Iterator[WorkdirLock]:
    """`with locked(workdir): ...` holds the workdir's lock for the block."""
    lock = WorkdirLock(workdir, log)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
